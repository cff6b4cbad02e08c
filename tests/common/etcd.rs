//! A real etcd cluster (Debian `etcd-server`) of one or more members on free 127.0.0.1
//! ports, in a temporary directory: started, waited for until healthy, members killed and
//! restarted, all killed on drop. Clients may be served over TLS ([`Etcd::start_tls`]);
//! health is read from each member's plain-HTTP metrics port either way.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::http::http_get;
use super::process::{ChildGuard, READY_DEADLINE, free_addr, poll_until, require_tool};

/// One member: its ports and, while it runs, its process.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    metrics: SocketAddr,
    child: Option<ChildGuard>,
}

/// A real etcd cluster. Killed on drop.
pub struct Etcd {
    // First, so that the processes are gone before their directory is removed.
    members: Vec<Member>,
    dir: tempfile::TempDir,
    initial_cluster: String,
    token: String,
    /// The server certificate and key (PEM files) when clients are served over TLS.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Etcd {
    /// Starts `size` members and waits until each is healthy (a leader elected and the
    /// member serving).
    pub fn start(size: usize) -> Self {
        Self::start_with(size, None)
    }

    /// [`Etcd::start`] serving clients over TLS with this certificate and key (PEM files).
    pub fn start_tls(size: usize, cert: PathBuf, key: PathBuf) -> Self {
        Self::start_with(size, Some((cert, key)))
    }

    fn start_with(size: usize, tls: Option<(PathBuf, PathBuf)>) -> Self {
        require_tool("etcd", "--version", "etcd-server");
        let dir = tempfile::Builder::new()
            .prefix("prescale-etcd-")
            .tempdir()
            .expect("create a temporary directory");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_addr(),
                peer: free_addr(),
                metrics: free_addr(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let token = dir
            .path()
            .file_name()
            .map_or("prescale".to_owned(), |n| n.to_string_lossy().into_owned());
        let mut etcd = Self {
            members,
            dir,
            initial_cluster,
            token,
            tls,
        };
        for i in 0..size {
            etcd.spawn(i);
        }
        for i in 0..size {
            etcd.wait_healthy(i);
        }
        etcd
    }

    /// The client URLs of every member, e.g. `http://127.0.0.1:41234`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://{}", self.scheme(), m.client))
            .collect()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// How many members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    /// Member `i`'s log (all its runs).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("open the etcd log");
        let m = &self.members[i];
        let scheme = self.scheme();
        let mut cmd = Command::new("etcd");
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", self.data_dir(i).display()))
            .arg(format!("--listen-client-urls={scheme}://{}", m.client))
            .arg(format!("--advertise-client-urls={scheme}://{}", m.client))
            .arg(format!("--listen-metrics-urls=http://{}", m.metrics))
            .arg(format!("--listen-peer-urls=http://{}", m.peer))
            .arg(format!("--initial-advertise-peer-urls=http://{}", m.peer))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg(format!("--initial-cluster-token={}", self.token))
            // Ignored once the data directory exists (a restart).
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        if let Some((cert, key)) = &self.tls {
            cmd.arg(format!("--cert-file={}", cert.display()))
                .arg(format!("--key-file={}", key.display()));
        }
        let child = ChildGuard::spawn(&mut cmd, &format!("etcd member {}", m.name), "etcd-server");
        self.members[i].child = Some(child);
    }

    /// Whether member `i` answers `/health` with `true` (it serves and has a leader).
    pub fn is_healthy(&self, i: usize) -> bool {
        matches!(http_get(self.members[i].metrics, "/health"),
            Ok((200, body)) if body.contains("\"true\""))
    }

    /// Waits until member `i` is healthy; panics with its log when it exits or times out.
    #[track_caller]
    pub fn wait_healthy(&mut self, i: usize) {
        let what = format!("etcd member {} to be healthy", self.members[i].name);
        poll_until(&what, READY_DEADLINE, || {
            if let Some(child) = self.members[i].child.as_mut()
                && let Some(status) = child.exited()
            {
                panic!(
                    "etcd member {i} exited early ({status}); its log:\n{}",
                    self.log(i)
                );
            }
            self.is_healthy(i).then_some(())
        });
    }

    /// SIGKILLs member `i` (its data stays for [`Etcd::restart`]).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill();
        }
    }

    /// Sends member `i` the signal `name` (`STOP` freezes it, as a paused VM; `CONT` thaws it).
    pub fn signal(&self, i: usize, name: &str) {
        let child = self.members[i].child.as_ref();
        child.expect("member {i} is running").signal(name);
    }

    /// Starts member `i` again on its ports and data, without waiting.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// Waits until every running member is healthy.
    #[track_caller]
    pub fn wait_all_healthy(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                self.wait_healthy(i);
            }
        }
    }

    /// Waits until no running member is healthy (quorum is lost), at most `deadline`.
    #[track_caller]
    pub fn wait_no_quorum(&self, deadline: Duration) {
        poll_until("etcd to lose its quorum", deadline, || {
            let running = (0..self.members.len()).filter(|i| self.members[*i].child.is_some());
            running.clone().all(|i| !self.is_healthy(i)).then_some(())
        });
    }
}
