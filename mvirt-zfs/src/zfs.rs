//! The `zfs` command-line wrapper: datasets, properties, snapshots, clones, send/receive.
//!
//! Works the same on kernel ZFS and on zfs-fuse, so it uses only what both have: no `-p` on
//! `zfs list` (values come from `zfs get -H -p`), no `clones` property (dependents are found by
//! scanning `origin`). zfs-fuse sometimes answers "dataset is busy" right after a create or
//! mount; the mutating calls that hit it are retried with a bounded backoff.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use mvirt_common::{ErrorKind, HasErrorKind};

use crate::command::{self, CommandError};

const ZFS: &str = "zfs";
/// Attempts for operations that zfs-fuse may report as busy (about 6 s in total).
const BUSY_ATTEMPTS: u32 = 12;

/// Mutating `zfs` calls run one at a time in this process. zfs-fuse (what the tests run on)
/// has been seen to hang for good when two `zfs create` run at the same moment in one pool;
/// kernel ZFS serializes such changes in its transaction group anyway, so queueing them here
/// costs next to nothing. Reads (`get`, `list`) are not queued.
static MUTATIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Failure of a `zfs` call, classified from its stderr.
#[derive(Debug, thiserror::Error)]
pub enum ZfsError {
    #[error("dataset {0} does not exist")]
    NotFound(String),
    #[error("dataset {0} already exists")]
    AlreadyExists(String),
    #[error("dataset {0} has dependent clones")]
    HasDependents(String),
    #[error("dataset {0} is busy")]
    Busy(String),
    #[error("zfs failed")]
    Command(#[source] CommandError),
    #[error("unexpected zfs output: {0}")]
    Parse(String),
}

impl HasErrorKind for ZfsError {
    fn kind(&self) -> ErrorKind {
        match self {
            ZfsError::NotFound(_) => ErrorKind::NotFound,
            ZfsError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            ZfsError::HasDependents(_) | ZfsError::Busy(_) => ErrorKind::FailedPrecondition,
            ZfsError::Command(_) | ZfsError::Parse(_) => ErrorKind::Internal,
        }
    }
}

fn classify(target: &str, err: CommandError) -> ZfsError {
    let stderr = err.stderr();
    if stderr.contains("does not exist") {
        ZfsError::NotFound(target.to_string())
    } else if stderr.contains("already exists") {
        ZfsError::AlreadyExists(target.to_string())
    } else if stderr.contains("dependent clones") {
        ZfsError::HasDependents(target.to_string())
    } else if stderr.contains("busy") {
        ZfsError::Busy(target.to_string())
    } else {
        ZfsError::Command(err)
    }
}

/// Property values of one dataset, by property name.
pub type Properties = BTreeMap<String, String>;

/// Thin typed access to the `zfs` program.
#[derive(Debug, Clone, Default)]
pub struct Zfs;

impl Zfs {
    async fn zfs(&self, target: &str, args: &[&str]) -> Result<String, ZfsError> {
        command::run(ZFS, args)
            .await
            .map_err(|err| classify(target, err))
    }

    /// Runs a mutating call (one at a time, see [`MUTATIONS`]), retrying while zfs-fuse says the
    /// dataset is busy.
    async fn zfs_retrying(&self, target: &str, args: &[&str]) -> Result<String, ZfsError> {
        let _one_at_a_time = MUTATIONS.lock().await;
        let mut delay = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.zfs(target, args).await {
                Err(ZfsError::Busy(_)) if attempt < BUSY_ATTEMPTS => {
                    tracing::debug!(target, attempt, "dataset busy, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(1000));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Whether the dataset (or snapshot) exists.
    pub async fn exists(&self, dataset: &str) -> Result<bool, ZfsError> {
        match self
            .zfs(dataset, &["get", "-H", "-o", "value", "type", dataset])
            .await
        {
            Ok(_) => Ok(true),
            Err(ZfsError::NotFound(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// `zfs create [-p] -o k=v ... dataset`.
    pub async fn create(
        &self,
        dataset: &str,
        parents: bool,
        props: &[(&str, &str)],
    ) -> Result<(), ZfsError> {
        let opts: Vec<String> = props.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["create"];
        if parents {
            args.push("-p");
        }
        for opt in &opts {
            args.push("-o");
            args.push(opt);
        }
        args.push(dataset);
        match self.zfs_retrying(dataset, &args).await {
            // zfs-fuse sometimes creates the dataset but fails to mount it under load.
            Err(ZfsError::Command(err))
                if err
                    .stderr()
                    .contains("successfully created, but not mounted") =>
            {
                tracing::warn!(dataset, "dataset created but not mounted, mounting it");
                self.mount(dataset).await
            }
            other => other.map(drop),
        }
    }

    /// `zfs mount dataset`, retried a few times (zfs-fuse under load).
    pub async fn mount(&self, dataset: &str) -> Result<(), ZfsError> {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.zfs(dataset, &["mount", dataset]).await {
                Ok(_) => return Ok(()),
                Err(ZfsError::Command(err)) if err.stderr().contains("already mounted") => {
                    return Ok(())
                }
                Err(_) if attempt < BUSY_ATTEMPTS => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(1000));
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// `zfs set k=v dataset`.
    pub async fn set(&self, dataset: &str, key: &str, value: &str) -> Result<(), ZfsError> {
        let kv = format!("{key}={value}");
        self.zfs_retrying(dataset, &["set", &kv, dataset])
            .await
            .map(drop)
    }

    /// Property values of `dataset` (and its descendants when `recursive`), parsed from
    /// `zfs get -H -p`. Unset values are `-`.
    pub async fn get(
        &self,
        dataset: &str,
        props: &[&str],
        recursive: bool,
    ) -> Result<BTreeMap<String, Properties>, ZfsError> {
        let list = props.join(",");
        let mut args = vec!["get", "-H", "-p"];
        if recursive {
            args.push("-r");
        }
        args.extend(["-o", "name,property,value", &list, dataset]);
        let out = self.zfs(dataset, &args).await?;
        let mut result: BTreeMap<String, Properties> = BTreeMap::new();
        for line in out.lines().filter(|l| !l.is_empty()) {
            let mut fields = line.splitn(3, '\t');
            let (Some(name), Some(prop), Some(value)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(ZfsError::Parse(line.to_string()));
            };
            result
                .entry(name.to_string())
                .or_default()
                .insert(prop.to_string(), value.to_string());
        }
        Ok(result)
    }

    /// Property values of several datasets or snapshots (one `zfs get` call).
    pub async fn get_each(
        &self,
        names: &[String],
        props: &[&str],
    ) -> Result<BTreeMap<String, Properties>, ZfsError> {
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let list = props.join(",");
        let mut args = vec!["get", "-H", "-p", "-o", "name,property,value", &list];
        args.extend(names.iter().map(String::as_str));
        let out = self.zfs(&names[0], &args).await?;
        let mut result: BTreeMap<String, Properties> = BTreeMap::new();
        for line in out.lines().filter(|l| !l.is_empty()) {
            let mut fields = line.splitn(3, '\t');
            let (Some(name), Some(prop), Some(value)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(ZfsError::Parse(line.to_string()));
            };
            result
                .entry(name.to_string())
                .or_default()
                .insert(prop.to_string(), value.to_string());
        }
        Ok(result)
    }

    /// One numeric property of one dataset.
    pub async fn get_u64(&self, dataset: &str, prop: &str) -> Result<u64, ZfsError> {
        let props = self.get(dataset, &[prop], false).await?;
        let value = props
            .get(dataset)
            .and_then(|p| p.get(prop))
            .ok_or_else(|| ZfsError::Parse(format!("no {prop} for {dataset}")))?;
        value
            .parse()
            .map_err(|_| ZfsError::Parse(format!("{prop} of {dataset} = {value:?}")))
    }

    /// Names of the snapshots directly under `dataset`, oldest first (by creation txg:
    /// `creation` has a resolution of one second).
    pub async fn snapshots(&self, dataset: &str) -> Result<Vec<String>, ZfsError> {
        let out = self
            .zfs(
                dataset,
                &[
                    "list",
                    "-H",
                    "-t",
                    "snapshot",
                    "-o",
                    "name",
                    "-s",
                    "createtxg",
                    "-r",
                    dataset,
                ],
            )
            .await?;
        let prefix = format!("{dataset}@");
        Ok(out
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(str::to_string)
            .collect())
    }

    /// `zfs snapshot dataset@name`.
    pub async fn snapshot(&self, snapshot: &str) -> Result<(), ZfsError> {
        self.zfs_retrying(snapshot, &["snapshot", snapshot])
            .await
            .map(drop)
    }

    /// `zfs clone -o k=v ... snapshot dataset`.
    pub async fn clone_snapshot(
        &self,
        snapshot: &str,
        dataset: &str,
        props: &[(&str, &str)],
    ) -> Result<(), ZfsError> {
        let opts: Vec<String> = props.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut args = vec!["clone"];
        for opt in &opts {
            args.push("-o");
            args.push(opt);
        }
        args.push(snapshot);
        args.push(dataset);
        self.zfs_retrying(dataset, &args).await.map(drop)
    }

    /// `zfs destroy [-r] target`.
    pub async fn destroy(&self, target: &str, recursive: bool) -> Result<(), ZfsError> {
        let mut args = vec!["destroy"];
        if recursive {
            args.push("-r");
        }
        args.push(target);
        self.zfs_retrying(target, &args).await.map(drop)
    }

    /// Destroys `target` if it exists (recursively): for clean-up paths.
    pub async fn destroy_if_exists(&self, target: &str) -> Result<(), ZfsError> {
        match self.destroy(target, true).await {
            Err(ZfsError::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// `zfs rollback -r snapshot` (newer snapshots are destroyed).
    pub async fn rollback(&self, snapshot: &str) -> Result<(), ZfsError> {
        self.zfs_retrying(snapshot, &["rollback", "-r", snapshot])
            .await
            .map(drop)
    }

    /// `zfs send snapshot | zfs recv dataset`, the two processes joined by a pipe (no shell).
    /// A full stream: `dataset` (which must not exist) depends on nothing.
    pub async fn send_receive(&self, snapshot: &str, dataset: &str) -> Result<(), ZfsError> {
        self.pipe_send_receive(vec!["send".into(), snapshot.into()], dataset, false)
            .await
    }

    /// `zfs send -I from to | zfs recv -F dataset`: every snapshot after `from` up to `to`, onto
    /// a dataset that already holds `from` (received earlier).
    pub async fn send_receive_incremental(
        &self,
        from: &str,
        to: &str,
        dataset: &str,
    ) -> Result<(), ZfsError> {
        self.pipe_send_receive(
            vec!["send".into(), "-I".into(), from.into(), to.into()],
            dataset,
            true,
        )
        .await
    }

    async fn pipe_send_receive(
        &self,
        send_args: Vec<String>,
        dataset: &str,
        force: bool,
    ) -> Result<(), ZfsError> {
        tracing::debug!(?send_args, dataset, "zfs send | zfs recv");
        let ds = dataset.to_string();
        let joined =
            tokio::task::spawn_blocking(move || send_receive_blocking(&send_args, &ds, force))
                .await;
        match joined {
            Ok(result) => result,
            Err(err) => Err(ZfsError::Parse(format!("zfs send/recv task: {err}"))),
        }
    }

    /// `zfs unmount dataset`; a dataset that is not mounted is fine.
    pub async fn unmount(&self, dataset: &str) -> Result<(), ZfsError> {
        match self.zfs_retrying(dataset, &["unmount", dataset]).await {
            Err(ZfsError::Command(err)) if err.stderr().contains("not currently mounted") => Ok(()),
            other => other.map(drop),
        }
    }

    /// Renames a filesystem (possibly to another parent) and mounts it at its new place.
    ///
    /// zfs-fuse answers "dataset is busy" when a mounted filesystem is renamed, so it is
    /// unmounted first (kernel ZFS does the same internally). The rename itself is atomic: on
    /// failure the dataset keeps its old name (and is mounted again).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ZfsError> {
        self.unmount(from).await?;
        if let Err(err) = self.zfs_retrying(from, &["rename", from, to]).await {
            if let Err(mount_err) = self.mount(from).await {
                tracing::warn!(dataset = from, error = %mount_err, "cannot mount again after a failed rename");
            }
            return Err(err);
        }
        self.mount(to).await
    }

    /// The user properties (`module:name`) set locally on `dataset`.
    pub async fn local_user_properties(&self, dataset: &str) -> Result<Properties, ZfsError> {
        let out = self
            .zfs(
                dataset,
                &[
                    "get",
                    "-H",
                    "-p",
                    "-s",
                    "local",
                    "-o",
                    "property,value",
                    "all",
                    dataset,
                ],
            )
            .await?;
        let mut props = Properties::new();
        for line in out.lines().filter(|l| !l.is_empty()) {
            let Some((key, value)) = line.split_once('\t') else {
                return Err(ZfsError::Parse(line.to_string()));
            };
            if key.contains(':') {
                props.insert(key.to_string(), value.to_string());
            }
        }
        Ok(props)
    }

    /// `zfs inherit prop dataset`: removes a locally set (user) property.
    pub async fn inherit(&self, dataset: &str, prop: &str) -> Result<(), ZfsError> {
        self.zfs_retrying(dataset, &["inherit", prop, dataset])
            .await
            .map(drop)
    }
}

fn send_receive_blocking(send_args: &[String], dataset: &str, force: bool) -> Result<(), ZfsError> {
    let snapshot = send_args.last().map(String::as_str).unwrap_or_default();
    use std::io::Read;
    use std::process::Command;
    let spawn_err = |program: &str, source| {
        ZfsError::Command(CommandError::Spawn {
            program: program.to_string(),
            source,
        })
    };
    let mut send = Command::new(ZFS)
        .args(send_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_err("zfs send", e))?;
    let Some(send_out) = send.stdout.take() else {
        let _ = send.kill();
        let _ = send.wait();
        return Err(ZfsError::Parse("zfs send has no stdout".into()));
    };
    let recv_args: &[&str] = if force {
        &["recv", "-F", dataset]
    } else {
        &["recv", dataset]
    };
    let recv = Command::new(ZFS)
        .args(recv_args)
        .stdin(Stdio::from(send_out))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let mut send_stderr = String::new();
    if let Some(mut err) = send.stderr.take() {
        let _ = err.read_to_string(&mut send_stderr);
    }
    let send_status = send.wait();
    let recv = recv.map_err(|e| spawn_err("zfs recv", e))?;
    if !recv.status.success() {
        return Err(classify(
            dataset,
            CommandError::Failed {
                program: ZFS.into(),
                args: recv_args.join(" "),
                status: recv.status,
                stderr: String::from_utf8_lossy(&recv.stderr).trim().to_string(),
            },
        ));
    }
    match send_status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(classify(
            snapshot,
            CommandError::Failed {
                program: ZFS.into(),
                args: send_args.join(" "),
                status,
                stderr: send_stderr.trim().to_string(),
            },
        )),
        Err(source) => Err(ZfsError::Command(CommandError::Io {
            program: ZFS.into(),
            args: send_args.join(" "),
            source,
        })),
    }
}

/// Parses a `compressratio` value such as `1.53x` (or `1.53`).
pub fn parse_ratio(value: &str) -> Option<f64> {
    value.trim().trim_end_matches('x').parse().ok()
}
