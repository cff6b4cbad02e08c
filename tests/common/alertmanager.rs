//! A real `prometheus-alertmanager` on 127.0.0.1, alone (no cluster), routing to a receiver
//! that sends nothing: what it holds is read back with `GET /api/v2/alerts`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use super::http::http_get;
use super::process::{ChildGuard, READY_DEADLINE, free_addr, poll_until, require_tool};

/// A real `prometheus-alertmanager` on a free port, no clustering, one receiver that
/// sends nothing. Killed on drop.
pub struct Alertmanager {
    // First, so that the process is gone before its directory is removed.
    child: ChildGuard,
    dir: tempfile::TempDir,
    /// Its address.
    pub addr: SocketAddr,
}

impl Alertmanager {
    /// Starts it and waits until `/-/ready` answers 200.
    pub fn start() -> Self {
        require_tool(
            "prometheus-alertmanager",
            "--version",
            "prometheus-alertmanager",
        );
        let dir = tempfile::Builder::new()
            .prefix("prescale-alertmanager-")
            .tempdir()
            .expect("create a temporary directory");
        let addr = free_addr();
        let cfg = dir.path().join("alertmanager.yml");
        std::fs::write(
            &cfg,
            "route:\n  receiver: nowhere\n  group_wait: 1s\nreceivers:\n  - name: nowhere\n",
        )
        .expect("write alertmanager.yml");
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).expect("log");
        let child = ChildGuard::spawn(
            Command::new("prometheus-alertmanager")
                .arg(format!("--config.file={}", cfg.display()))
                .arg(format!(
                    "--storage.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--cluster.listen-address=")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log handle"))
                .stderr(log),
            "alertmanager",
            "prometheus-alertmanager",
        );
        let mut am = Self { dir, child, addr };
        poll_until("alertmanager to be ready", READY_DEADLINE, || {
            if let Some(status) = am.child.exited() {
                panic!(
                    "alertmanager exited early ({status}); its log:\n{}",
                    am.log()
                );
            }
            matches!(http_get(addr, "/-/ready"), Ok((200, _))).then_some(())
        });
        am
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /api/v2/alerts`: the alerts it holds (active, silenced and inhibited).
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let (status, body) = http_get(self.addr, "/api/v2/alerts").expect("GET /api/v2/alerts");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .unwrap_or_else(|e| panic!("not a list of alerts ({e}): {body}"))
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }
}
