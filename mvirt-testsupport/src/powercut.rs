//! A FUSE file system that loses, on a simulated power cut, everything that was not synced.
//!
//! `kill -9` keeps the page cache, so a crash test built on it never notices a missing fsync.
//! [`PowerCutFs`] mounts a directory (through `/dev/fuse`, with the pure-Rust mount of the
//! `fuser` crate) in front of a *backing* directory and serves every read from memory:
//!
//! - **Writes** (`write`, `truncate`, `O_TRUNC`) change the file's *volatile* content only. An
//!   `fsync` or `fdatasync` of the file makes its content and size durable (both are treated
//!   the same: `fdatasync` also keeps the size, since the data could not be read back
//!   without it).
//! - **Names** (create, mkdir, unlink, rmdir, rename) change the directory's volatile entries
//!   only; an `fsync` of the directory makes all of its entries durable. This is the
//!   conservative POSIX model: an `fsync` of a new file does not make its name durable, a
//!   rename not followed by an `fsync` of the directory (both directories, when it moves a
//!   file between two) is lost, and a file whose name was never made durable disappears with
//!   its data. A file whose name became durable before its data did comes back empty (or with
//!   its last synced content).
//! - **The backing directory** always holds exactly the durable state (the durable names
//!   with their synced content): every sync writes it through. Mounting an existing backing
//!   directory starts from its content.
//! - [`PowerCutFs::cut`] is the power cut: at that instant every volatile change is dropped
//!   (files, sizes and names go back to their durable state, inodes without a durable name
//!   vanish) and every later operation fails with `EIO` until [`PowerCutFs::power_on`] — so
//!   a process killed right after the cut cannot make anything durable that it wrote after it.
//!
//! Not modelled: permissions, ownership and timestamps are kept as set (they are not reverted
//! by a cut); hard links and symbolic links are refused (`EPERM`); `fallocate` only extends.
//! Entries and attributes are answered with a zero TTL and files are opened without
//! `FOPEN_KEEP_CACHE`, so the kernel drops its cached pages of a file at every open: a process
//! started after a cut reads the durable content, not what its predecessor wrote.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const ROOT: u64 = 1;
const PAGE: u64 = 4096;
const TTL: Duration = Duration::ZERO;

/// What syncs and cuts did, for tests that must show their cut had something to drop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// `fsync`/`fdatasync` calls on files.
    pub file_syncs: u64,
    /// `fsync` calls on directories.
    pub dir_syncs: u64,
    /// Power cuts so far.
    pub cuts: u64,
    /// Bytes of file content (pages, counted whole) the cuts discarded.
    pub dropped_bytes: u64,
    /// Directory entries the cuts discarded or brought back (creates, renames, unlinks).
    pub dropped_names: u64,
}

enum Kind {
    File {
        data: Vec<u8>,
        durable: Vec<u8>,
        /// Pages changed since the last sync (a size change marks the pages it touches).
        dirty: BTreeSet<u64>,
    },
    Dir {
        entries: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

struct Node {
    kind: Kind,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl Node {
    fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Node {
        let now = SystemTime::now();
        Node {
            kind,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, nlink) = match &self.kind {
            Kind::File { data, .. } => (FileType::RegularFile, data.len() as u64, 1),
            Kind::Dir { entries, .. } => (FileType::Directory, 4096, 2 + entries.len() as u32),
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind,
            perm: self.perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }
}

struct Inner {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Between a cut and `power_on`: every operation fails with EIO.
    off: bool,
    backing: PathBuf,
    stats: Stats,
}

fn mark_pages(dirty: &mut BTreeSet<u64>, from: u64, to: u64) {
    if to <= from {
        return;
    }
    for p in from / PAGE..to.div_ceil(PAGE) {
        dirty.insert(p);
    }
}

/// Sets `data`'s length, marking the pages between the old and the new end dirty.
fn resize(data: &mut Vec<u8>, dirty: &mut BTreeSet<u64>, len: u64) {
    let old = data.len() as u64;
    mark_pages(dirty, old.min(len), old.max(len));
    data.resize(len as usize, 0);
}

impl Inner {
    fn load(backing: &Path) -> anyhow::Result<Inner> {
        let mut inner = Inner {
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            off: false,
            backing: backing.to_path_buf(),
            stats: Stats::default(),
        };
        let root = inner.load_node(backing)?;
        inner.nodes.insert(ROOT, root);
        Ok(inner)
    }

    fn load_node(&mut self, path: &Path) -> anyhow::Result<Node> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).with_context(|| path.display().to_string())?;
        let perm = (meta.mode() & 0o7777) as u16;
        let kind = if meta.is_dir() {
            let mut entries = BTreeMap::new();
            for e in std::fs::read_dir(path).with_context(|| path.display().to_string())? {
                let e = e?;
                let child = self.load_node(&e.path())?;
                let ino = self.next_ino;
                self.next_ino += 1;
                self.nodes.insert(ino, child);
                entries.insert(e.file_name(), ino);
            }
            Kind::Dir {
                durable: entries.clone(),
                entries,
            }
        } else if meta.is_file() {
            let data = std::fs::read(path).with_context(|| path.display().to_string())?;
            Kind::File {
                durable: data.clone(),
                data,
                dirty: BTreeSet::new(),
            }
        } else {
            bail!(
                "{}: only regular files and directories can be mounted with power cuts",
                path.display()
            );
        };
        Ok(Node::new(kind, perm, meta.uid(), meta.gid()))
    }

    fn node(&self, ino: u64) -> Result<&Node, i32> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, i32> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn entries(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, i32> {
        match &self.node(ino)?.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            Kind::File { .. } => Err(libc::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, i32> {
        let node = self.node_mut(ino)?;
        node.mtime = SystemTime::now();
        node.ctime = node.mtime;
        match &mut node.kind {
            Kind::Dir { entries, .. } => Ok(entries),
            Kind::File { .. } => Err(libc::ENOTDIR),
        }
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, i32> {
        self.entries(parent)?.get(name).copied().ok_or(libc::ENOENT)
    }

    /// Every path (relative to the backing dir) under which `ino` is durable.
    fn durable_paths(&self, ino: u64) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, PathBuf::new())];
        while let Some((at, path)) = stack.pop() {
            if at == ino {
                out.push(path.clone());
            }
            if let Some(Node {
                kind: Kind::Dir { durable, .. },
                ..
            }) = self.nodes.get(&at)
            {
                for (name, child) in durable {
                    stack.push((*child, path.join(name)));
                }
            }
        }
        out
    }

    fn is_ancestor(&self, ancestor: u64, ino: u64) -> bool {
        let mut stack = vec![ancestor];
        while let Some(at) = stack.pop() {
            if at == ino {
                return true;
            }
            if let Ok(entries) = self.entries(at) {
                stack.extend(entries.values().copied());
            }
        }
        false
    }

    fn new_node(&mut self, parent: u64, name: &OsStr, node: Node) -> Result<(u64, FileAttr), i32> {
        if name.len() > 255 {
            return Err(libc::ENAMETOOLONG);
        }
        if self.entries(parent)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let attr = node.attr(ino);
        self.nodes.insert(ino, node);
        self.entries_mut(parent)?.insert(name.to_os_string(), ino);
        Ok((ino, attr))
    }

    fn set_len(&mut self, ino: u64, len: u64) -> Result<(), i32> {
        let node = self.node_mut(ino)?;
        node.mtime = SystemTime::now();
        node.ctime = node.mtime;
        match &mut node.kind {
            Kind::File { data, dirty, .. } => {
                resize(data, dirty, len);
                Ok(())
            }
            Kind::Dir { .. } => Err(libc::EISDIR),
        }
    }

    fn write(&mut self, ino: u64, offset: u64, buf: &[u8]) -> Result<(), i32> {
        let node = self.node_mut(ino)?;
        node.mtime = SystemTime::now();
        node.ctime = node.mtime;
        let Kind::File { data, dirty, .. } = &mut node.kind else {
            return Err(libc::EISDIR);
        };
        let end = offset + buf.len() as u64;
        if end as usize > data.len() {
            resize(data, dirty, end);
        }
        data[offset as usize..end as usize].copy_from_slice(buf);
        mark_pages(dirty, offset, end);
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file: its content becomes durable, in memory and in the
    /// backing dir under each of its durable names.
    fn sync_file(&mut self, ino: u64) -> Result<(), i32> {
        self.stats.file_syncs += 1;
        let paths = self.durable_paths(ino);
        let backing = self.backing.clone();
        let Kind::File {
            data,
            durable,
            dirty,
        } = &mut self.node_mut(ino)?.kind
        else {
            // fsync on a directory opened as a file: the kernel sends FSYNCDIR for those.
            return Err(libc::EISDIR);
        };
        let len = data.len();
        durable.resize(len, 0);
        let mut ranges = Vec::new();
        for p in std::mem::take(dirty) {
            let start = (p * PAGE) as usize;
            if start >= len {
                continue;
            }
            let end = (start + PAGE as usize).min(len);
            durable[start..end].copy_from_slice(&data[start..end]);
            ranges.push((start, end));
        }
        for rel in paths {
            let path = backing.join(rel);
            let write = || -> std::io::Result<()> {
                let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(len as u64)?;
                for (start, end) in &ranges {
                    f.write_all_at(&data[*start..*end], *start as u64)?;
                }
                Ok(())
            };
            write().map_err(|e| {
                tracing::error!(path = %path.display(), "powercut: backing write: {e}");
                libc::EIO
            })?;
        }
        Ok(())
    }

    /// Writes `ino`'s durable state (content or subtree) to `path` in the backing dir.
    fn materialize(&self, ino: u64, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let Some(node) = self.nodes.get(&ino) else {
            return Ok(());
        };
        match &node.kind {
            Kind::File { durable, .. } => {
                let mut f = std::fs::File::create(path)?;
                f.write_all(durable)?;
            }
            Kind::Dir { durable, .. } => {
                std::fs::create_dir(path)?;
                for (name, child) in durable {
                    self.materialize(*child, &path.join(name))?;
                }
            }
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(u32::from(node.perm)))
    }

    /// `fsync` of a directory: all its entries become durable.
    fn sync_dir(&mut self, ino: u64) -> Result<(), i32> {
        self.stats.dir_syncs += 1;
        let paths = self.durable_paths(ino);
        let (old, new) = match &self.node(ino)?.kind {
            Kind::Dir { entries, durable } => (durable.clone(), entries.clone()),
            Kind::File { .. } => return Err(libc::ENOTDIR),
        };
        if let Kind::Dir { durable, .. } = &mut self.node_mut(ino)?.kind {
            *durable = new.clone();
        }
        for rel in paths {
            let dir = self.backing.join(rel);
            let apply = || -> std::io::Result<()> {
                for (name, child) in &old {
                    if new.get(name) != Some(child) {
                        let p = dir.join(name);
                        if std::fs::symlink_metadata(&p)?.is_dir() {
                            std::fs::remove_dir_all(&p)?;
                        } else {
                            std::fs::remove_file(&p)?;
                        }
                    }
                }
                for (name, child) in &new {
                    if old.get(name) != Some(child) {
                        self.materialize(*child, &dir.join(name))?;
                    }
                }
                Ok(())
            };
            apply().map_err(|e| {
                tracing::error!(dir = %dir.display(), "powercut: backing dir sync: {e}");
                libc::EIO
            })?;
        }
        Ok(())
    }

    /// The power cut: everything volatile goes back to its durable state.
    fn cut(&mut self) {
        self.off = true;
        self.stats.cuts += 1;
        for node in self.nodes.values_mut() {
            match &mut node.kind {
                Kind::File {
                    data,
                    durable,
                    dirty,
                } => {
                    self.stats.dropped_bytes += dirty.len() as u64 * PAGE;
                    if data.len() != durable.len() && dirty.is_empty() {
                        self.stats.dropped_bytes += PAGE;
                    }
                    *data = durable.clone();
                    dirty.clear();
                }
                Kind::Dir { entries, durable } => {
                    let changed = entries
                        .iter()
                        .filter(|(n, i)| durable.get(*n) != Some(*i))
                        .count()
                        + durable.keys().filter(|n| !entries.contains_key(*n)).count();
                    self.stats.dropped_names += changed as u64;
                    *entries = durable.clone();
                }
            }
        }
        // Inodes without a durable name are gone (their numbers are never reused).
        let mut reachable = BTreeSet::new();
        let mut stack = vec![ROOT];
        while let Some(at) = stack.pop() {
            if reachable.insert(at) {
                if let Ok(entries) = self.entries(at) {
                    stack.extend(entries.values().copied());
                }
            }
        }
        self.nodes.retain(|ino, _| reachable.contains(ino));
    }
}

/// The FUSE side: every request takes the shared state's lock.
struct Fs {
    inner: Arc<Mutex<Inner>>,
}

impl Fs {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` unless the power is off (then EIO).
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T, i32>) -> Result<T, i32> {
        let mut inner = self.lock();
        if inner.off {
            return Err(libc::EIO);
        }
        f(&mut inner)
    }
}

fn name_ok(name: &OsStr) -> Result<(), i32> {
    if name.is_empty() || name == "." || name == ".." {
        Err(libc::EINVAL)
    } else if name.len() > 255 {
        Err(libc::ENAMETOOLONG)
    } else {
        Ok(())
    }
}

impl Filesystem for Fs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.with(|s| {
            let ino = s.lookup(parent, name)?;
            Ok(s.node(ino)?.attr(ino))
        }) {
            Ok(attr) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.with(|s| Ok(s.node(ino)?.attr(ino))) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let when = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        match self.with(|s| {
            if let Some(len) = size {
                s.set_len(ino, len)?;
            }
            let node = s.node_mut(ino)?;
            if let Some(m) = mode {
                node.perm = (m & 0o7777) as u16;
            }
            if let Some(u) = uid {
                node.uid = u;
            }
            if let Some(g) = gid {
                node.gid = g;
            }
            if let Some(t) = atime {
                node.atime = when(t);
            }
            if let Some(t) = mtime {
                node.mtime = when(t);
            }
            node.ctime = SystemTime::now();
            Ok(node.attr(ino))
        }) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(libc::EPERM);
            return;
        }
        match self.with(|s| {
            name_ok(name)?;
            let kind = Kind::File {
                data: Vec::new(),
                durable: Vec::new(),
                dirty: BTreeSet::new(),
            };
            let perm = (mode & !umask & 0o7777) as u16;
            s.new_node(parent, name, Node::new(kind, perm, req.uid(), req.gid()))
        }) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.with(|s| {
            name_ok(name)?;
            let kind = Kind::Dir {
                entries: BTreeMap::new(),
                durable: BTreeMap::new(),
            };
            let perm = (mode & !umask & 0o7777) as u16;
            s.new_node(parent, name, Node::new(kind, perm, req.uid(), req.gid()))
        }) {
            Ok((_, attr)) => reply.entry(&TTL, &attr, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|s| {
            let ino = s.lookup(parent, name)?;
            if matches!(s.node(ino)?.kind, Kind::Dir { .. }) {
                return Err(libc::EISDIR);
            }
            s.entries_mut(parent)?.remove(name);
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self.with(|s| {
            let ino = s.lookup(parent, name)?;
            if !s.entries(ino)?.is_empty() {
                return Err(libc::ENOTEMPTY);
            }
            s.entries_mut(parent)?.remove(name);
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(libc::EPERM);
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _newparent: u64,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(libc::EPERM);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        match self.with(|s| {
            name_ok(newname)?;
            if flags & libc::RENAME_EXCHANGE != 0 {
                return Err(libc::EINVAL);
            }
            let ino = s.lookup(parent, name)?;
            let src_dir = matches!(s.node(ino)?.kind, Kind::Dir { .. });
            if src_dir && s.is_ancestor(ino, newparent) {
                return Err(libc::EINVAL);
            }
            if let Ok(target) = s.lookup(newparent, newname) {
                if target == ino {
                    return Ok(());
                }
                if flags & libc::RENAME_NOREPLACE != 0 {
                    return Err(libc::EEXIST);
                }
                match (&s.node(target)?.kind, src_dir) {
                    (Kind::Dir { entries, .. }, true) if !entries.is_empty() => {
                        return Err(libc::ENOTEMPTY)
                    }
                    (Kind::Dir { .. }, false) => return Err(libc::EISDIR),
                    (Kind::File { .. }, true) => return Err(libc::ENOTDIR),
                    _ => {}
                }
            }
            s.entries(newparent)?;
            s.entries_mut(parent)?.remove(name);
            s.entries_mut(newparent)?
                .insert(newname.to_os_string(), ino);
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.with(|s| s.entries(ino).map(|_| ())) {
            Ok(()) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        match self.with(|s| {
            if matches!(s.node(ino)?.kind, Kind::Dir { .. }) {
                return Err(libc::EISDIR);
            }
            if flags & libc::O_TRUNC != 0 {
                s.set_len(ino, 0)?;
            }
            Ok(())
        }) {
            // No FOPEN_KEEP_CACHE: the kernel drops the file's cached pages at every open.
            Ok(()) => reply.opened(0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let inner = self.lock();
        if inner.off {
            reply.error(libc::EIO);
            return;
        }
        match inner.node(ino).map(|n| &n.kind) {
            Ok(Kind::File { data, .. }) => {
                let start = (offset.max(0) as usize).min(data.len());
                let end = (start + size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Ok(Kind::Dir { .. }) => reply.error(libc::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if offset < 0 {
            reply.error(libc::EINVAL);
            return;
        }
        match self.with(|s| s.write(ino, offset as u64, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        match self.with(|s| s.sync_file(ino)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let list = self.with(|s| {
            let mut list = vec![
                (ino, FileType::Directory, OsString::from(".")),
                (ino, FileType::Directory, OsString::from("..")),
            ];
            for (name, child) in s.entries(ino)? {
                let kind = match s.node(*child)?.kind {
                    Kind::Dir { .. } => FileType::Directory,
                    Kind::File { .. } => FileType::RegularFile,
                };
                list.push((*child, kind, name.clone()));
            }
            Ok(list)
        });
        match list {
            Ok(list) => {
                for (i, (child, kind, name)) in list.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(child, i as i64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _ds: bool, reply: ReplyEmpty) {
        match self.with(|s| s.sync_dir(ino)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        // Generous fixed figures: the content lives in memory.
        reply.statfs(
            1 << 24,
            1 << 23,
            1 << 23,
            1 << 20,
            1 << 19,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        match self.with(|s| s.node(ino).map(|_| ())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.with(|s| {
            name_ok(name)?;
            if let Ok(ino) = s.lookup(parent, name) {
                // O_CREAT without O_EXCL on an existing name (the kernel usually opens it).
                if flags & libc::O_EXCL != 0 {
                    return Err(libc::EEXIST);
                }
                if flags & libc::O_TRUNC != 0 {
                    s.set_len(ino, 0)?;
                }
                return Ok(s.node(ino)?.attr(ino));
            }
            let kind = Kind::File {
                data: Vec::new(),
                durable: Vec::new(),
                dirty: BTreeSet::new(),
            };
            let perm = (mode & !umask & 0o7777) as u16;
            s.new_node(parent, name, Node::new(kind, perm, req.uid(), req.gid()))
                .map(|(_, a)| a)
        }) {
            Ok(attr) => reply.created(&TTL, &attr, 0, 0, 0),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            reply.error(libc::EOPNOTSUPP);
            return;
        }
        match self.with(|s| {
            let want = (offset + length) as u64;
            let len = match &s.node(ino)?.kind {
                Kind::File { data, .. } => data.len() as u64,
                Kind::Dir { .. } => return Err(libc::EISDIR),
            };
            if want > len {
                s.set_len(ino, want)?;
            }
            Ok(())
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted power-cut file system; unmounted on drop.
pub struct PowerCutFs {
    inner: Arc<Mutex<Inner>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl PowerCutFs {
    /// Mounts `mountpoint` (created if missing) in front of `backing` (created if missing;
    /// its content is the initial durable state). Needs root and `/dev/fuse`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> anyhow::Result<PowerCutFs> {
        std::fs::create_dir_all(backing).with_context(|| backing.display().to_string())?;
        std::fs::create_dir_all(mountpoint).with_context(|| mountpoint.display().to_string())?;
        anyhow::ensure!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: the power-cut file system needs the fuse kernel module"
        );
        let inner = Arc::new(Mutex::new(Inner::load(backing)?));
        let fs = Fs {
            inner: inner.clone(),
        };
        let options = [
            MountOption::FSName("mvirt-powercut".into()),
            MountOption::Subtype("powercut".into()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount2(fs, mountpoint, &options)
            .with_context(|| format!("mount the power-cut fs on {}", mountpoint.display()))?;
        Ok(PowerCutFs {
            inner,
            mountpoint: mountpoint.to_path_buf(),
            session: Some(session),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn backing(&self) -> PathBuf {
        self.lock().backing.clone()
    }

    /// The power cut: drops every unsynced change at once; from now on every operation fails
    /// with `EIO` until [`PowerCutFs::power_on`]. Kill the processes using the mount right
    /// after it, and wait for them to exit, before powering on.
    pub fn cut(&self) {
        self.lock().cut();
    }

    /// Power back on: the mount serves the durable state.
    pub fn power_on(&self) {
        self.lock().off = false;
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        // Ends the session and its thread, unmounting; should that unmount fail (EBUSY: a
        // process still holds a file), a lazy one leaves no dead mount behind.
        drop(self.session.take());
        let _ = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File, OpenOptions};
    use std::os::unix::fs::FileExt;

    fn setup() -> (tempfile::TempDir, PowerCutFs) {
        crate::require_root();
        let dir = tempfile::tempdir().unwrap();
        let fs = PowerCutFs::mount(&dir.path().join("backing"), &dir.path().join("mnt")).unwrap();
        (dir, fs)
    }

    fn sync_dir(p: &Path) {
        File::open(p).unwrap().sync_all().unwrap();
    }

    /// Cuts, checks that the mount refuses I/O while off, and powers on again.
    fn power_cycle(fs: &PowerCutFs) {
        fs.cut();
        let err = fs::read_dir(fs.mountpoint()).map(|_| ()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        fs.power_on();
    }

    #[test]
    fn unsynced_writes_are_lost_and_synced_ones_kept() {
        let (_d, fs) = setup();
        let m = fs.mountpoint().to_path_buf();
        // Two files, both with durable names; one synced, one not.
        fs::write(m.join("kept"), b"first version").unwrap();
        fs::write(m.join("lost"), b"never synced").unwrap();
        File::open(m.join("kept")).unwrap().sync_all().unwrap();
        sync_dir(&m);
        let f = OpenOptions::new().write(true).open(m.join("kept")).unwrap();
        f.write_all_at(b"SECOND", 0).unwrap();
        drop(f);
        // Readers see the volatile content before the cut.
        assert_eq!(fs::read(m.join("kept")).unwrap(), b"SECONDversion");
        assert_eq!(fs.lock().stats.file_syncs, 1);
        power_cycle(&fs);
        assert_eq!(fs::read(m.join("kept")).unwrap(), b"first version");
        // The unsynced file's name was synced (with the directory), its data was not.
        assert_eq!(fs::read(m.join("lost")).unwrap(), b"");
        // The backing dir holds exactly the durable state.
        let b = fs.backing();
        assert_eq!(fs::read(b.join("kept")).unwrap(), b"first version");
        assert_eq!(fs::read(b.join("lost")).unwrap(), b"");
        let s = fs.stats();
        assert_eq!(s.cuts, 1);
        assert!(s.dropped_bytes >= 2 * PAGE, "{s:?}");
    }

    #[test]
    fn fdatasync_keeps_data_and_size_across_a_cut() {
        let (_d, fs) = setup();
        let m = fs.mountpoint().to_path_buf();
        let f = File::create(m.join("wal")).unwrap();
        sync_dir(&m);
        // 3 pages and a bit, written page by page as SQLite does, then fdatasync.
        let body: Vec<u8> = (0..3 * PAGE as usize + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        for (i, chunk) in body.chunks(PAGE as usize).enumerate() {
            f.write_all_at(chunk, i as u64 * PAGE).unwrap();
        }
        f.sync_data().unwrap();
        // More after the sync: an append and an overwrite in the middle, not synced.
        f.write_all_at(&[0xee; 5000], body.len() as u64).unwrap();
        f.write_all_at(b"overwritten", 10).unwrap();
        drop(f);
        power_cycle(&fs);
        assert_eq!(fs::read(m.join("wal")).unwrap(), body);
        assert_eq!(fs::read(fs.backing().join("wal")).unwrap(), body);
        // A second file on the same mount keeps working after the power comes back.
        let f = OpenOptions::new().write(true).open(m.join("wal")).unwrap();
        f.write_all_at(b"after", 0).unwrap();
        f.sync_data().unwrap();
        drop(f);
        power_cycle(&fs);
        let mut want = body.clone();
        want[..5].copy_from_slice(b"after");
        assert_eq!(fs::read(m.join("wal")).unwrap(), want);
    }

    #[test]
    fn a_new_file_needs_its_directory_synced() {
        let (_d, fs) = setup();
        let m = fs.mountpoint().to_path_buf();
        fs::create_dir(m.join("sub")).unwrap();
        sync_dir(&m);
        // Data synced, directory not: the file is gone after the cut.
        let f = File::create(m.join("sub/orphan")).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_all().unwrap();
        drop(f);
        // Directory synced, data synced: kept.
        let f = File::create(m.join("sub/named")).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_all().unwrap();
        drop(f);
        sync_dir(&m.join("sub"));
        // Created after the directory's sync: gone again.
        fs::write(m.join("sub/late"), b"x").unwrap();
        assert!(fs::read(fs.backing().join("sub/orphan")).is_ok());
        power_cycle(&fs);
        let mut names: Vec<String> = fs::read_dir(m.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        // `orphan` was named in the same directory sync as `named`: both kept.
        assert_eq!(names, ["named", "orphan"]);
        assert_eq!(fs::read(m.join("sub/named")).unwrap(), b"data");
        // A directory created but never synced into its parent vanishes with its content.
        fs::create_dir(m.join("unsynced-dir")).unwrap();
        let f = File::create(m.join("unsynced-dir/file")).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_all().unwrap();
        drop(f);
        sync_dir(&m.join("unsynced-dir"));
        power_cycle(&fs);
        assert!(!m.join("unsynced-dir").exists());
        assert!(!fs.backing().join("unsynced-dir").exists());
        // A file whose data is synced but whose name never was: lost.
        let f = File::create(m.join("nameless")).unwrap();
        f.write_all_at(b"data", 0).unwrap();
        f.sync_all().unwrap();
        drop(f);
        power_cycle(&fs);
        assert!(!m.join("nameless").exists());
    }

    #[test]
    fn truncation_follows_the_same_rule() {
        let (_d, fs) = setup();
        let m = fs.mountpoint().to_path_buf();
        let f = File::create(m.join("t")).unwrap();
        sync_dir(&m);
        f.write_all_at(&[7u8; 10_000], 0).unwrap();
        f.sync_all().unwrap();
        // Unsynced truncate: undone by the cut.
        f.set_len(100).unwrap();
        drop(f);
        power_cycle(&fs);
        assert_eq!(fs::read(m.join("t")).unwrap(), vec![7u8; 10_000]);
        // Synced truncate, then a write past the end: the gap reads as zeros.
        let f = OpenOptions::new().write(true).open(m.join("t")).unwrap();
        f.set_len(100).unwrap();
        f.write_all_at(b"end", 8_000).unwrap();
        f.sync_data().unwrap();
        drop(f);
        // O_TRUNC without a sync: undone.
        fs::write(m.join("t"), b"short").unwrap();
        power_cycle(&fs);
        let got = fs::read(m.join("t")).unwrap();
        let mut want = vec![7u8; 100];
        want.resize(8_000, 0);
        want.extend_from_slice(b"end");
        assert_eq!(got, want);
        assert_eq!(fs::read(fs.backing().join("t")).unwrap(), want);
    }

    #[test]
    fn renames_and_unlinks_need_the_directory_synced() {
        let (_d, fs) = setup();
        let m = fs.mountpoint().to_path_buf();
        for (name, body) in [("a", "A"), ("b", "B"), ("c", "C")] {
            let f = File::create(m.join(name)).unwrap();
            f.write_all_at(body.as_bytes(), 0).unwrap();
            f.sync_all().unwrap();
        }
        fs::create_dir(m.join("d2")).unwrap();
        sync_dir(&m);
        // Unsynced: rename a over b (atomic replace, as write-then-rename does), unlink c, and
        // move a file into another directory syncing only the target directory.
        fs::rename(m.join("a"), m.join("b")).unwrap();
        fs::remove_file(m.join("c")).unwrap();
        fs::write(m.join("moved"), b"M").unwrap();
        File::open(m.join("moved")).unwrap().sync_all().unwrap();
        sync_dir(&m); // `moved` is durable in the root now
        fs::rename(m.join("moved"), m.join("d2/moved")).unwrap();
        sync_dir(&m.join("d2")); // ... and in d2, but its removal from the root is not
        assert_eq!(fs::read(m.join("b")).unwrap(), b"A");
        assert!(!m.join("c").exists());
        power_cycle(&fs);
        // The root's last sync came after the rename and the unlink above: they are kept.
        assert_eq!(fs::read(m.join("b")).unwrap(), b"A");
        assert!(!m.join("a").exists() && !m.join("c").exists());
        // The move was synced in the target only: the file is under both names (conservative).
        assert_eq!(fs::read(m.join("moved")).unwrap(), b"M");
        assert_eq!(fs::read(m.join("d2/moved")).unwrap(), b"M");
        // Now an unsynced rename over an existing name and an unsynced unlink: both undone.
        fs::rename(m.join("b"), m.join("moved")).unwrap();
        fs::remove_file(m.join("d2/moved")).unwrap();
        power_cycle(&fs);
        assert_eq!(fs::read(m.join("b")).unwrap(), b"A");
        assert_eq!(fs::read(m.join("moved")).unwrap(), b"M");
        assert_eq!(fs::read(m.join("d2/moved")).unwrap(), b"M");
        // The backing dir holds the same tree.
        let b = fs.backing();
        assert_eq!(fs::read(b.join("b")).unwrap(), b"A");
        assert_eq!(fs::read(b.join("d2/moved")).unwrap(), b"M");
        assert!(!b.join("a").exists() && !b.join("c").exists());
        assert!(fs.stats().dropped_names >= 2, "{:?}", fs.stats());
    }

    #[test]
    fn a_remount_starts_from_the_backing_dir() {
        crate::require_root();
        let dir = tempfile::tempdir().unwrap();
        let (backing, mnt) = (dir.path().join("backing"), dir.path().join("mnt"));
        {
            let fs = PowerCutFs::mount(&backing, &mnt).unwrap();
            let f = File::create(mnt.join("x")).unwrap();
            f.write_all_at(b"synced", 0).unwrap();
            f.sync_all().unwrap();
            fs::write(mnt.join("y"), b"not synced").unwrap();
            sync_dir(&mnt);
            let f = OpenOptions::new().write(true).open(mnt.join("x")).unwrap();
            f.write_all_at(b"SYNCED-NOT", 0).unwrap();
            drop(f);
            drop(fs);
        }
        let fs2 = PowerCutFs::mount(&backing, &mnt).unwrap();
        assert_eq!(fs::read(mnt.join("x")).unwrap(), b"synced");
        assert_eq!(fs::read(mnt.join("y")).unwrap(), b"");
        drop(fs2);
    }
}
