//! Fuzzing what a registry controls in a pull: manifest, index and config JSON, and the tar
//! layers. The layer target builds archives from a small vocabulary of names so that entries
//! collide: whiteouts (also `.wh.`, `.wh..`, `.wh...`), opaque markers, `..` and absolute
//! paths, symlinks out of the root (relative and absolute, into a sentinel directory next to
//! it), hard links to outside files, directories replacing files and back, long names, oversized
//! long-name records, huge declared sizes; then sometimes gzips and sometimes corrupts the
//! bytes. Each case unpacks two such layers into `<case>/rootfs` and asserts that nothing
//! outside it changed (the sentinel's files, directories and contents), besides no panic, a
//! deadline and an allocation cap.
//!
//! Short run: `cargo test -p mvirt-one --test fuzz_oci`. Long run:
//! `MVIRT_FUZZ_CASES=100000 cargo test --release -p mvirt-one --test fuzz_oci`.
//! Needs root only for ownership (`chown` of unpacked entries); symlink targets never point
//! anywhere but the case's own directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use mvirt_one::image::parse_config;
use mvirt_one::unpack::{unpack_layer, LayerCompression, UnpackError, MAX_METADATA_ENTRY};
use mvirt_testsupport::fuzz::{bytes, mutate, peak_allocation, CountingAlloc, Target};
use oci_client::manifest::{OciImageIndex, OciImageManifest, OciManifest};
use rand::rngs::StdRng;
use rand::Rng;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1234},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","size":42,"annotations":{"a":"b"}}],"annotations":{"org.opencontainers.image.created":"2024-01-01T00:00:00Z"}}"#;
const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":500,"platform":{"architecture":"amd64","os":"linux","variant":"v1","os.features":["x"]}}]}"#;
const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","echo hi"],"Env":["PATH=/bin","A=1"],"WorkingDir":"/w","User":"1000:1000"},"rootfs":{"type":"layers","diff_ids":["sha256:dd"]},"history":[{"created_by":"x"}]}"#;

/// JSON-ish token soup: brackets, strings, numbers, the documents' own keys.
fn json_soup(rng: &mut StdRng) -> Vec<u8> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "null",
        "true",
        "-1",
        "1e999",
        "9223372036854775808",
        "\"schemaVersion\"",
        "\"mediaType\"",
        "\"config\"",
        "\"layers\"",
        "\"manifests\"",
        "\"size\"",
        "\"digest\"",
        "\"Env\"",
        "\"Cmd\"",
        "\"os\"",
        "\"architecture\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "[[[[[[[[[[[[[[[[",
        "{\"a\":",
    ];
    let mut out = Vec::new();
    for _ in 0..rng.gen_range(0..64) {
        out.extend_from_slice(TOKENS[rng.gen_range(0..TOKENS.len())].as_bytes());
    }
    out
}

#[test]
fn manifests_indexes_and_configs_never_panic_hang_or_allocate_without_bound() {
    Target::new("oci/json", 3000).alloc_limit(1 << 20).run(
        |rng| match rng.gen_range(0..4) {
            0 => mutate(rng, MANIFEST.as_bytes().to_vec()),
            1 => mutate(rng, INDEX.as_bytes().to_vec()),
            2 => mutate(rng, CONFIG.as_bytes().to_vec()),
            _ => json_soup(rng),
        },
        |input| {
            let _ = serde_json::from_slice::<OciManifest>(input);
            let _ = serde_json::from_slice::<OciImageManifest>(input);
            let _ = serde_json::from_slice::<OciImageIndex>(input);
            let _ = parse_config("fuzz", input);
        },
    );
}

/// One entry of a generated layer.
#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    /// A GNU long-name record of this many bytes (then a regular file).
    LongName(usize),
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    kind: Kind,
    /// A declared size that differs from the data (huge or short).
    declared: Option<u64>,
}

#[derive(Debug)]
struct LayerCase {
    layers: Vec<(Vec<Entry>, bool, Option<u64>)>,
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "f",
    "d",
    "link",
    "alink",
    "..",
    ".",
    ".wh.a",
    ".wh.f",
    ".wh.d",
    ".wh.link",
    ".wh..wh..opq",
    ".wh.",
    ".wh..",
    ".wh...",
    "outside",
    "etc",
];

fn path(rng: &mut StdRng) -> String {
    let depth = rng.gen_range(1..=4);
    let mut parts: Vec<String> = (0..depth)
        .map(|_| NAMES[rng.gen_range(0..NAMES.len())].to_string())
        .collect();
    if rng.gen_bool(0.02) {
        parts.push("x".repeat(rng.gen_range(90..300)));
    }
    let joined = parts.join("/");
    match rng.gen_range(0..10) {
        0 => format!("/{joined}"),
        1 => format!("./{joined}"),
        2 => format!("{joined}/"),
        _ => joined,
    }
}

/// Link targets: inside the root, or out of it into the sentinel (never anywhere else).
fn target(rng: &mut StdRng, sentinel: &Path) -> String {
    let s = sentinel.display();
    match rng.gen_range(0..8) {
        0 => format!("{s}"),
        1 => format!("{s}/f"),
        2 => format!("{s}/d"),
        3 => "../outside".into(),
        4 => "../../outside/f".into(),
        5 => "../outside/d".into(),
        _ => path(rng).trim_start_matches('/').to_string(),
    }
}

fn entry(rng: &mut StdRng, sentinel: &Path) -> Entry {
    let kind = match rng.gen_range(0..12) {
        0..=3 => Kind::File(bytes(rng, 0..64)),
        4..=5 => Kind::Dir,
        6..=8 => Kind::Symlink(target(rng, sentinel)),
        9..=10 => Kind::Hardlink(target(rng, sentinel)),
        _ => Kind::LongName(if rng.gen_bool(0.1) {
            MAX_METADATA_ENTRY as usize + 1
        } else {
            rng.gen_range(1..5000)
        }),
    };
    let declared = rng
        .gen_bool(0.03)
        .then(|| [u64::MAX >> 30, 1 << 33, 0, 7][rng.gen_range(0..4)]);
    Entry {
        path: path(rng),
        kind,
        declared,
    }
}

/// A tar header with raw name and link bytes (the `tar` builder refuses `..`).
fn header(name: &[u8], kind: tar::EntryType, size: u64, link: &[u8]) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let old = h.as_old_mut();
    let n = name.len().min(100);
    old.name[..n].copy_from_slice(&name[..n]);
    let l = link.len().min(100);
    old.linkname[..l].copy_from_slice(&link[..l]);
    h.set_cksum();
    h
}

fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    for e in entries {
        let name = e.path.as_bytes();
        if name.len() > 100 {
            let h = header(
                b"././@LongLink",
                tar::EntryType::GNULongName,
                name.len() as u64 + 1,
                b"",
            );
            let mut data = name.to_vec();
            data.push(0);
            out.append(&h, data.as_slice()).expect("append");
        }
        let (kind, data, link): (_, Vec<u8>, &[u8]) = match &e.kind {
            Kind::File(d) => (tar::EntryType::Regular, d.clone(), b""),
            Kind::Dir => (tar::EntryType::Directory, vec![], b""),
            Kind::Symlink(t) => (tar::EntryType::Symlink, vec![], t.as_bytes()),
            Kind::Hardlink(t) => (tar::EntryType::Link, vec![], t.as_bytes()),
            Kind::LongName(n) => {
                let h = header(
                    b"././@LongLink",
                    tar::EntryType::GNULongName,
                    *n as u64,
                    b"",
                );
                out.append(&h, vec![b'n'; *n].as_slice()).expect("append");
                (tar::EntryType::Regular, b"x".to_vec(), b"")
            }
        };
        if link.len() > 100 {
            let h = header(
                b"././@LongLink",
                tar::EntryType::GNULongLink,
                link.len() as u64,
                b"",
            );
            out.append(&h, link).expect("append");
        }
        let size = e.declared.unwrap_or(data.len() as u64);
        let h = header(name, kind, size, link);
        out.append(&h, data.as_slice()).expect("append");
    }
    out.into_inner().expect("tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// Everything under `dir` (not following symlinks), except `skip`: type and contents.
fn snapshot(dir: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, String> {
    let mut seen = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if skip.contains(&p) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&p).expect("metadata");
            let what = if meta.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", meta.permissions().mode())
            } else if meta.file_type().is_symlink() {
                format!("link {:?}", std::fs::read_link(&p).ok())
            } else {
                format!("file {:?} nlink {}", std::fs::read(&p).ok(), nlink(&meta))
            };
            seen.insert(p, what);
        }
    }
    seen
}

fn nlink(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::nlink(meta)
}

/// A case directory: `rootfs/` (the target), `outside/` with a file `f` and a directory
/// `d/` holding `g` (what escapes would hit), and a file `sibling`.
fn case_dir(base: &Path, index: u64) -> PathBuf {
    let dir = base.join(format!("case{index}"));
    std::fs::create_dir_all(dir.join("rootfs")).expect("rootfs");
    std::fs::create_dir_all(dir.join("outside/d")).expect("outside");
    std::fs::write(dir.join("outside/f"), b"sentinel f").expect("f");
    std::fs::write(dir.join("outside/d/g"), b"sentinel g").expect("g");
    std::fs::write(dir.join("sibling"), b"sentinel sibling").expect("sibling");
    dir
}

fn apply(dir: &Path, layer: &[u8], gzipped: bool) -> Result<(), UnpackError> {
    let blob = dir.join("layer");
    std::fs::write(&blob, layer).expect("layer");
    let compression = if gzipped {
        LayerCompression::Gzip
    } else {
        LayerCompression::None
    };
    unpack_layer(&blob, compression, &dir.join("rootfs"))
}

#[test]
fn layers_never_write_outside_the_root_panic_hang_or_allocate_without_bound() {
    let base = tempfile::tempdir().expect("tempdir");
    // The sentinel path is the same for every case (case dirs are reused per index below).
    let generate_base = base.path().to_path_buf();
    let mut index = 0u64;
    Target::new("oci/layers", 300).alloc_limit(8 << 20).run(
        |rng| {
            let sentinel = generate_base.join("current/outside");
            let layers = (0..rng.gen_range(1..=2))
                .map(|_| {
                    let entries: Vec<Entry> = (0..rng.gen_range(1..12))
                        .map(|_| entry(rng, &sentinel))
                        .collect();
                    let corrupt = rng.gen_bool(0.2).then(|| rng.gen());
                    (entries, rng.gen_bool(0.3), corrupt)
                })
                .collect();
            LayerCase { layers }
        },
        |case| {
            index += 1;
            let dir = base.path().join("current");
            let _ = std::fs::remove_dir_all(&dir);
            let made = case_dir(base.path(), index);
            std::fs::rename(&made, &dir).expect("rename case dir");
            let skip = [dir.join("rootfs"), dir.join("layer")];
            let before = snapshot(&dir, &skip);
            for (entries, gzipped, corrupt) in &case.layers {
                let mut layer = tar_bytes(entries);
                if let Some(seed) = corrupt {
                    let mut rng = <StdRng as rand::SeedableRng>::seed_from_u64(*seed);
                    layer = mutate(&mut rng, layer);
                }
                if *gzipped {
                    layer = gzip(&layer);
                }
                let _ = apply(&dir, &layer, *gzipped);
            }
            let after = snapshot(&dir, &skip);
            assert_eq!(
                before, after,
                "the layer changed something outside the root"
            );
        },
    );
}

/// A long-name record of 64 MiB, gzipped to a few KiB: refused before `tar` buffers it.
#[test]
fn a_gzip_bomb_in_a_long_name_record_is_refused_without_buffering_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("rootfs");
    std::fs::create_dir(&root).expect("rootfs");
    let size = 64usize << 20;
    let mut tar = Vec::new();
    {
        let mut out = tar::Builder::new(&mut tar);
        let h = header(
            b"././@LongLink",
            tar::EntryType::GNULongName,
            size as u64,
            b"",
        );
        out.append(&h, std::io::Read::take(std::io::repeat(b'a'), size as u64))
            .expect("append");
        let h = header(b"f", tar::EntryType::Regular, 1, b"");
        out.append(&h, &b"x"[..]).expect("append");
        out.finish().expect("finish");
    }
    let layer = gzip(&tar);
    drop(tar);
    let (result, peak) = peak_allocation(|| apply(dir.path(), &layer, true));
    assert!(
        matches!(result, Err(UnpackError::OversizedMetadata { .. })),
        "{result:?}"
    );
    assert!(peak < 4 << 20, "{peak} bytes held while refusing the layer");
}

/// Whiteouts naming the directory itself or its parent: `.wh...` at the top deleted the
/// root's parent directory (everything next to the image).
#[test]
fn whiteouts_of_dot_and_dot_dot_are_refused_and_delete_nothing() {
    for name in [".wh..", ".wh...", ".wh.", "d/.wh...", "d/.wh."] {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = case_dir(base.path(), 0);
        std::fs::create_dir_all(dir.join("rootfs/d/e")).expect("d");
        let skip = [dir.join("layer")];
        let before = snapshot(&dir, &skip);
        let layer = tar_bytes(&[Entry {
            path: name.into(),
            kind: Kind::File(vec![]),
            declared: None,
        }]);
        let result = apply(&dir, &layer, false);
        assert!(
            matches!(result, Err(UnpackError::BadWhiteout { .. })),
            "{name}: {result:?}"
        );
        assert_eq!(before, snapshot(&dir, &skip), "{name} deleted something");
    }
}

/// A symlink out of the root, then a directory entry through it where the outside has a file
/// (and a file entry where it has a directory): the type-replacement removed the outside
/// file or directory before `tar` refused the path.
#[test]
fn replacing_an_entry_through_a_symlink_out_of_the_root_removes_nothing_outside() {
    let base = tempfile::tempdir().expect("tempdir");
    let dir = case_dir(base.path(), 0);
    let skip = [dir.join("rootfs"), dir.join("layer")];
    let before = snapshot(&dir, &skip);
    let outside = dir.join("outside");
    let layer = tar_bytes(&[
        Entry {
            path: "link".into(),
            kind: Kind::Symlink(outside.display().to_string()),
            declared: None,
        },
        Entry {
            path: "link/f/".into(),
            kind: Kind::Dir,
            declared: None,
        },
        Entry {
            path: "link/d".into(),
            kind: Kind::File(b"x".to_vec()),
            declared: None,
        },
    ]);
    let result = apply(&dir, &layer, false);
    assert!(
        matches!(result, Err(UnpackError::UnsafePath { .. })),
        "{result:?}"
    );
    assert_eq!(before, snapshot(&dir, &skip));
}
