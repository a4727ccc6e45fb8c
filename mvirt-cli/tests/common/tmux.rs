//! A tmux server of our own (`-L <socket>`) running the real `mvirt tui` against a test API,
//! killed on drop even when the test fails. Used by `tests/tui_tmux_pods.rs` (as a path module,
//! so `common/mod.rs` stays as it is).

use std::process::Command;
use std::time::Duration;

pub struct Tmux {
    pub socket: String,
    pub session: String,
}

impl Tmux {
    /// Starts `mvirt tui` in a 160×48 pane pointed at `api`.
    pub fn tui(api: &super::common::Api) -> Tmux {
        let t = Tmux {
            socket: format!("mvirt-cli-test-{}", mvirt_testsupport::unique_suffix()),
            session: "tui".into(),
        };
        let out = t.tmux(&[
            "new-session",
            "-d",
            "-s",
            &t.session,
            "-x",
            "160",
            "-y",
            "48",
            "-e",
            &format!("MVIRT_URL={}", api.url),
            "-e",
            &format!("MVIRT_TOKEN={}", api.token),
            "-e",
            &format!("MVIRT_CONFIG={}", api.config.display()),
            "-e",
            &format!("MVIRT_CA_FILE={}", api.ca_file.display()),
            "-e",
            "TERM=xterm-256color",
            env!("CARGO_BIN_EXE_mvirt"),
            "tui",
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    pub fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(
            &self
                .tmux(&["capture-pane", "-p", "-t", &self.session])
                .stdout,
        )
        .into_owned()
    }

    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.session.as_str()];
        args.extend_from_slice(keys);
        let out = self.tmux(&args);
        assert!(
            out.status.success(),
            "send-keys {keys:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn text(&self, text: &str) {
        let out = self.tmux(&["send-keys", "-t", &self.session, "-l", text]);
        assert!(out.status.success());
    }

    pub async fn wait_for(&self, what: &str) -> String {
        let mut last = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            last = self.screen();
            if last.contains(what) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the TUI never showed {what:?}; last screen:\n{last}");
    }

    /// Sends `q` and waits until the TUI has exited.
    pub async fn quit(&self) {
        self.keys(&["q"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self
            .tmux(&["has-session", "-t", &self.session])
            .status
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the TUI did not exit on q:\n{}",
                self.screen()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}
