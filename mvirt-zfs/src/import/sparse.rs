//! Writing a stream into a file with all-zero blocks left as holes.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{io_err, ImportError, CHUNK};

/// Zero blocks of this size are skipped (left as holes) when writing images.
pub(super) const SPARSE_BLOCK: usize = 64 * 1024;
static ZEROS: [u8; SPARSE_BLOCK] = [0; SPARSE_BLOCK];

/// Writes a stream into a file, leaving all-zero blocks as holes.
pub(super) struct SparseWriter {
    file: tokio::fs::File,
    path: PathBuf,
    buf: Vec<u8>,
    pos: u64,
    seek_pending: bool,
}

impl SparseWriter {
    pub(super) async fn create(path: &Path) -> Result<Self, ImportError> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(io_err(format!("cannot create {}", path.display())))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            buf: Vec::with_capacity(CHUNK + SPARSE_BLOCK),
            pos: 0,
            seek_pending: false,
        })
    }

    pub(super) async fn write(&mut self, data: &[u8]) -> Result<(), ImportError> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush(false).await?;
        }
        Ok(())
    }

    pub(super) async fn flush(&mut self, all: bool) -> Result<(), ImportError> {
        let n = if all {
            self.buf.len()
        } else {
            self.buf.len() / SPARSE_BLOCK * SPARSE_BLOCK
        };
        let context = || format!("cannot write {}", self.path.display());
        // Consecutive data blocks go out in one write (fewer syscalls and FUSE requests);
        // all-zero blocks are skipped with a seek and stay holes.
        let mut offset = 0;
        while offset < n {
            let is_zero = |block: &[u8]| block == &ZEROS[..block.len()];
            let block_len = |at: usize| SPARSE_BLOCK.min(n - at);
            if is_zero(&self.buf[offset..offset + block_len(offset)]) {
                self.seek_pending = true;
                self.pos += block_len(offset) as u64;
                offset += block_len(offset);
                continue;
            }
            let mut end = offset + block_len(offset);
            while end < n && !is_zero(&self.buf[end..end + block_len(end)]) {
                end += block_len(end);
            }
            if self.seek_pending {
                self.file
                    .seek(SeekFrom::Start(self.pos))
                    .await
                    .map_err(io_err(context()))?;
                self.seek_pending = false;
            }
            self.file
                .write_all(&self.buf[offset..end])
                .await
                .map_err(io_err(context()))?;
            self.pos += (end - offset) as u64;
            offset = end;
        }
        self.buf.drain(..n);
        Ok(())
    }

    /// Flushes, sets the final length (trailing holes) and syncs. Returns the length.
    pub(super) async fn finish(mut self) -> Result<u64, ImportError> {
        self.flush(true).await?;
        let context = format!("cannot finish {}", self.path.display());
        self.file
            .set_len(self.pos)
            .await
            .map_err(io_err(context.clone()))?;
        self.file.sync_all().await.map_err(io_err(context))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn zero_blocks_become_holes_and_data_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut writer = SparseWriter::create(&path).await.unwrap();
        let mut data = vec![0u8; 8 * 1024 * 1024];
        data[100] = 1;
        data[5 * 1024 * 1024 + 7] = 2;
        for piece in data.chunks(300_000) {
            writer.write(piece).await.unwrap();
        }
        assert_eq!(writer.finish().await.unwrap(), data.len() as u64);
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back, data);
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < 1024 * 1024, "allocated {allocated} bytes");
    }

    #[tokio::test]
    async fn runs_of_data_and_holes_across_chunks_come_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let mut writer = SparseWriter::create(&path).await.unwrap();
        // Data runs of 1..5 blocks between holes of 1..3 blocks, and a tail of 1000 bytes.
        let mut data = Vec::new();
        let mut byte = 1u8;
        for i in 0..60usize {
            let run = (i % 5 + 1) * SPARSE_BLOCK;
            data.extend(std::iter::repeat_n(byte, run));
            byte = byte.wrapping_add(1).max(1);
            data.extend(std::iter::repeat_n(0u8, (i % 3 + 1) * SPARSE_BLOCK));
        }
        data.extend(std::iter::repeat_n(7u8, 1000));
        for piece in data.chunks(777_777) {
            writer.write(piece).await.unwrap();
        }
        assert_eq!(writer.finish().await.unwrap(), data.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }
}
