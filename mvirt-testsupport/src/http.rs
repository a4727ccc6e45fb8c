//! A minimal HTTP/1.1 file server for template import sources (mvirt-zfs's import tests, and
//! node tests that need an import to stay in flight).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A minimal HTTP/1.1 file server on 127.0.0.1 for import sources.
///
/// `GET /<file>` serves the file from its directory; `GET /stall/<file>` announces the whole
/// file, sends its first MiB and then stalls until the client goes away (to catch an import in
/// the middle of its download); `GET /slow/<file>` sends 256 KiB every 25 ms (about 10 MB/s).
/// Missing files are 404.
pub struct HttpServer {
    pub addr: SocketAddr,
    /// The path of every request received, in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    pub async fn start(root: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let root = root.to_path_buf();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let root = root.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(stream, &root, &log).await;
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// Whether a request for `path` (as in [`HttpServer::url`]) has arrived.
    pub fn requested(&self, path: &str) -> bool {
        self.requests.lock().unwrap().iter().any(|p| p == path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    Slow,
    Stall,
}

async fn serve_connection(
    mut stream: tokio::net::TcpStream,
    root: &Path,
    log: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || request.len() > 16 * 1024 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&request);
    let path = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or("/")
        .trim_start_matches('/')
        .to_string();
    log.lock().unwrap().push(path.clone());
    let (mode, name) = if let Some(rest) = path.strip_prefix("stall/") {
        (Mode::Stall, rest.to_string())
    } else if let Some(rest) = path.strip_prefix("slow/") {
        (Mode::Slow, rest.to_string())
    } else {
        (Mode::Full, path)
    };
    let file_path = root.join(&name);
    if name.contains("..") || !file_path.is_file() {
        let body = b"not found";
        stream
            .write_all(
                format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
        stream.write_all(body).await?;
        return Ok(());
    }
    let mut file = tokio::fs::File::open(&file_path).await?;
    let len = file.metadata().await?.len();
    stream
        .write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    if mode == Mode::Slow {
        let mut piece = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut piece).await?;
            if n == 0 {
                break;
            }
            stream.write_all(&piece[..n]).await?;
            stream.flush().await?;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        return Ok(());
    }
    if mode == Mode::Stall {
        let mut first = vec![0u8; (1 << 20).min(len as usize)];
        file.read_exact(&mut first).await?;
        stream.write_all(&first).await?;
        stream.flush().await?;
        // Hold the connection open without sending more, until the client closes it.
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? > 0 {}
        return Ok(());
    }
    // 1 MiB reads: tokio::io::copy's 8 KiB buffer makes each file read a blocking-pool round
    // trip, which made this server (not the client) the bottleneck of a 1 GiB download.
    let mut file = tokio::io::BufReader::with_capacity(1 << 20, file);
    tokio::io::copy_buf(&mut file, &mut stream).await?;
    stream.flush().await?;
    Ok(())
}
