//! `mvirt-pod-image`: builds the pod boot artefacts (`vmlinuz`, `initramfs.img`,
//! `manifest.json`) into a directory, or checks a directory against its manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mvirt_podimage::image::{self, BuildConfig, Outcome};
use mvirt_podimage::Manifest;

/// Builds the kernel and initramfs mvirt's pod microVMs boot (mvirt-one as /init), from Debian
/// packages (or a kernel directory), reproducibly; does nothing when the output already matches its inputs.
#[derive(Parser)]
#[command(name = "mvirt-pod-image", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Builds DIR/vmlinuz, DIR/initramfs.img and DIR/manifest.json; prints the version.
    Build {
        /// Output directory.
        #[arg(long, value_name = "DIR", env = "MVIRT_POD_IMAGE_OUT")]
        out: PathBuf,
        /// The mvirt-one binary [default: `mvirt-one` next to this program, else on PATH].
        #[arg(long, value_name = "PATH", env = "MVIRT_POD_IMAGE_MVIRT_ONE")]
        mvirt_one: Option<PathBuf>,
        /// The Debian kernel package [default: the one `linux-image-amd64` depends on].
        #[arg(
            long,
            value_name = "linux-image-...",
            env = "MVIRT_POD_IMAGE_KERNEL_PACKAGE"
        )]
        kernel_package: Option<String>,
        /// Instead of a Debian package: a kernel built elsewhere, as a directory holding
        /// `bzImage` (or `vmlinuz`) and `lib/modules/<release>/` — e.g. nixpkgs' `linux`. apt is
        /// not asked.
        #[arg(
            long,
            value_name = "DIR",
            env = "MVIRT_POD_IMAGE_KERNEL_DIR",
            conflicts_with = "kernel_package"
        )]
        kernel_dir: Option<PathBuf>,
        /// Where downloaded, unpacked kernels are kept
        /// [default: $XDG_CACHE_HOME/mvirt-pod-image or ~/.cache/mvirt-pod-image].
        #[arg(long, value_name = "DIR", env = "MVIRT_POD_IMAGE_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// The CA bundle put into the image.
        #[arg(long, value_name = "PATH", env = "MVIRT_POD_IMAGE_CA_BUNDLE", default_value = image::CA_BUNDLE)]
        ca_bundle: PathBuf,
    },
    /// Checks DIR's files against DIR/manifest.json; prints the version.
    Verify {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn default_mvirt_one() -> PathBuf {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("mvirt-one")))
        .filter(|p| p.is_file());
    beside
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join("mvirt-one"))
                    .find(|p| p.is_file())
            })
        })
        .unwrap_or_else(|| PathBuf::from("mvirt-one"))
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("mvirt-pod-image")
}

/// The error and its causes, one per line.
fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    text
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Build {
            out,
            mvirt_one,
            kernel_package,
            kernel_dir,
            cache_dir,
            ca_bundle,
        } => {
            let cache_dir = cache_dir.unwrap_or_else(default_cache_dir);
            let kernel = match &kernel_dir {
                Some(dir) => mvirt_podimage::kernel::import_dir(&cache_dir, dir),
                None => image::kernel_package(kernel_package.as_deref()),
            };
            let kernel = match kernel {
                Ok(kernel) => kernel,
                Err(e) => {
                    eprintln!("mvirt-pod-image: {}", report(&e));
                    return ExitCode::FAILURE;
                }
            };
            let config = BuildConfig {
                out_dir: out,
                mvirt_one: mvirt_one.unwrap_or_else(default_mvirt_one),
                kernel,
                cache_dir,
                ca_bundle,
            };
            match image::build(&config) {
                Ok((manifest, outcome)) => {
                    let what = match outcome {
                        Outcome::Built => "built",
                        Outcome::Cached => "up to date",
                    };
                    eprintln!(
                        "mvirt-pod-image: {} {what}: kernel {}, mvirt-one {}, {} modules",
                        config.out_dir.display(),
                        manifest.kernel_release,
                        &manifest.mvirt_one_sha256[..12],
                        manifest.modules.len()
                    );
                    println!("{}", manifest.version);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mvirt-pod-image: {}", report(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Verify { out } => {
            match Manifest::read(&out).and_then(|m| m.verify(&out).map(|()| m)) {
                Ok(manifest) => {
                    println!("{}", manifest.version);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mvirt-pod-image: {}", report(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}
