//! cloud-init NoCloud seeds, written by the daemon itself: a vfat filesystem labelled `CIDATA`
//! holding `user-data`, `meta-data` (with `instance-id` = VM id and `local-hostname`) and, when
//! given, `network-config`. It is attached to the VM as a read-only virtio disk (a vfat seed
//! cannot be read from a CD-ROM drive).
//!
//! The image is built with `mkfs.vfat` and `mcopy` (dosfstools, mtools), run through
//! [`mvirt_common::command`], which logs the command line and returns the program's stderr on
//! failure.

use std::path::{Path, PathBuf};

use mvirt_common::command::{CommandError, ExternalCommand};

use crate::model::CloudInitSpec;

#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    #[error("cannot build the seed image (mkfs.vfat and mcopy: dosfstools and mtools, see scripts/setup.sh)")]
    Tool(#[source] CommandError),
    #[error("cannot write seed file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `program` with `args` through [`mvirt_common::command`] (argv, logged, bounded in
/// time, stderr in the error).
async fn run_tool(program: &'static str, args: &[&std::ffi::OsStr]) -> Result<(), CloudInitError> {
    ExternalCommand::new(program)
        .args(args)
        .run()
        .await
        .map(drop)
        .map_err(CloudInitError::Tool)
}

/// `mkfs.vfat -C <image> <size KiB> -n CIDATA`.
async fn mkfs_vfat(image: &Path, size_kib: u64) -> Result<(), CloudInitError> {
    let size = size_kib.to_string();
    run_tool(
        "mkfs.vfat",
        &[
            "-C".as_ref(),
            image.as_os_str(),
            size.as_ref(),
            "-n".as_ref(),
            "CIDATA".as_ref(),
        ],
    )
    .await
}

/// `mcopy -o -i <image> <file> ::<name>`.
async fn mcopy(image: &Path, file: &Path, name: &str) -> Result<(), CloudInitError> {
    let target = format!("::{name}");
    run_tool(
        "mcopy",
        &[
            "-o".as_ref(),
            "-i".as_ref(),
            image.as_os_str(),
            file.as_os_str(),
            target.as_ref(),
        ],
    )
    .await
}

/// The `meta-data` document: `instance-id`, `local-hostname` and, when there are any,
/// `public-keys`. It is block-style YAML, one key a line, because the simplest readers (a test
/// guest's init script) read it line by line; every value is a JSON string, which YAML reads as
/// a double-quoted scalar, so a key or hostname cannot break out of its line.
pub fn meta_data(vm_id: &str, hostname: &str, public_keys: &[String]) -> String {
    let quoted = |value: &str| serde_json::Value::from(value).to_string();
    let mut text = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        quoted(vm_id),
        quoted(hostname)
    );
    if !public_keys.is_empty() {
        text.push_str("public-keys:\n");
        for key in public_keys {
            text.push_str(&format!("  - {}\n", quoted(key)));
        }
    }
    text
}

/// Writes the seed image to `image` (replacing it). `default_hostname` is used when the spec
/// names none.
pub async fn write_seed(
    image: &Path,
    vm_id: &str,
    default_hostname: &str,
    spec: &CloudInitSpec,
) -> Result<PathBuf, CloudInitError> {
    let dir = image.parent().unwrap_or(Path::new("/tmp"));
    let staging = dir.join("cidata.staging");
    let _ = tokio::fs::remove_dir_all(&staging).await;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| CloudInitError::Io { path, source }
    };
    tokio::fs::create_dir_all(&staging)
        .await
        .map_err(io(&staging))?;
    let hostname = if spec.hostname.is_empty() {
        default_hostname
    } else {
        &spec.hostname
    };
    let mut files = vec![
        ("user-data", spec.user_data.clone()),
        (
            "meta-data",
            meta_data(vm_id, hostname, &spec.ssh_authorized_keys),
        ),
    ];
    if !spec.network_config.is_empty() {
        files.push(("network-config", spec.network_config.clone()));
    }
    let total: usize = files.iter().map(|(_, c)| c.len()).sum();
    let size_kib = (1024 + (total as u64 / 1024) * 2).max(1024);
    let tmp_image = dir.join("cidata.img.tmp");
    let _ = tokio::fs::remove_file(&tmp_image).await;
    mkfs_vfat(&tmp_image, size_kib).await?;
    for (name, contents) in &files {
        let path = staging.join(name);
        tokio::fs::write(&path, contents).await.map_err(io(&path))?;
        mcopy(&tmp_image, &path, name).await?;
    }
    tokio::fs::rename(&tmp_image, image)
        .await
        .map_err(io(image))?;
    let _ = tokio::fs::remove_dir_all(&staging).await;
    Ok(image.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_data_carries_the_vm_id_the_hostname_and_the_public_keys() {
        let keys = vec![
            "ssh-ed25519 AAAA alice@x".to_string(),
            "ssh-rsa BBBB \"quoted\"\ninstance-id: evil".to_string(),
        ];
        let text = meta_data("id-1", "web", &keys);
        let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(doc["instance-id"].as_str(), Some("id-1"));
        assert_eq!(doc["local-hostname"].as_str(), Some("web"));
        let parsed: Vec<String> = serde_yaml::from_value(doc["public-keys"].clone()).unwrap();
        assert_eq!(parsed, keys);
        // One key a line: a key cannot add a line of its own.
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("instance-id:"))
                .count(),
            1
        );
    }

    #[test]
    fn meta_data_without_keys_has_no_public_keys_entry() {
        assert_eq!(
            meta_data("id-1", "web", &[]),
            "instance-id: \"id-1\"\nlocal-hostname: \"web\"\n"
        );
    }

    #[tokio::test]
    async fn the_seed_is_a_vfat_image_labelled_cidata_with_the_documents() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("cidata.img");
        let spec = CloudInitSpec {
            user_data: "#cloud-config\nruncmd: [echo hi]\n".into(),
            network_config: "version: 2\n".into(),
            ..Default::default()
        };
        write_seed(&image, "vm-1", "web-1", &spec).await.unwrap();
        let label = std::process::Command::new("blkid")
            .args(["-o", "value", "-s", "LABEL"])
            .arg(&image)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "CIDATA");
        let out = std::process::Command::new("mtype")
            .arg("-i")
            .arg(&image)
            .arg("::meta-data")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "instance-id: \"vm-1\"\nlocal-hostname: \"web-1\"\n"
        );
        let out = std::process::Command::new("mtype")
            .arg("-i")
            .arg(&image)
            .arg("::network-config")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "version: 2\n");
    }
}
