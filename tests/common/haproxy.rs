//! A real `haproxy` fronting local HTTP servers, with its runtime API on a unix socket and
//! a TCP port.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::process::{ChildGuard, READY_DEADLINE, free_addr, poll_until, require_tool};

/// A real `haproxy` in the foreground: an HTTP frontend on a free port, balancing
/// (round robin, weight 100 each) over backend `web` with one server per address, and the
/// runtime API at admin level on a unix socket and a TCP port. Killed on drop.
pub struct Haproxy {
    // First, so that the process is gone before its directory is removed.
    child: ChildGuard,
    dir: tempfile::TempDir,
    /// The frontend.
    pub frontend: SocketAddr,
    /// The runtime API's TCP address.
    pub api_tcp: SocketAddr,
}

impl Haproxy {
    /// Starts it and waits until the frontend and both API sockets answer.
    pub fn start(servers: &[SocketAddr]) -> Self {
        require_tool("haproxy", "-v", "haproxy");
        let dir = tempfile::Builder::new()
            .prefix("prescale-haproxy-")
            .tempdir()
            .expect("create a temporary directory");
        let frontend = free_addr();
        let api_tcp = free_addr();
        let mut cfg = format!(
            "global\n  stats socket {}/admin.sock level admin\n  stats socket ipv4@{api_tcp} level admin\n\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\n\
             frontend fe\n  bind {frontend}\n  default_backend web\n\n\
             backend web\n  balance roundrobin\n",
            dir.path().display()
        );
        for (i, s) in servers.iter().enumerate() {
            let _ = writeln!(cfg, "  server s{i} {s} weight 100");
        }
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, cfg).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy.log");
        let child = ChildGuard::spawn(
            Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log handle"))
                .stderr(log),
            "haproxy",
            "haproxy",
        );
        let mut h = Self {
            dir,
            child,
            frontend,
            api_tcp,
        };
        let socket = h.socket();
        poll_until("haproxy to listen", READY_DEADLINE, || {
            if let Some(status) = h.child.exited() {
                panic!("haproxy exited early ({status}); its log:\n{}", h.log());
            }
            let ready = socket.exists()
                && TcpStream::connect(frontend).is_ok()
                && TcpStream::connect(api_tcp).is_ok();
            ready.then_some(())
        });
        h
    }

    /// The runtime API's unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// One runtime API command over the unix socket; HAProxy's whole answer.
    pub fn command(&self, cmd: &str) -> String {
        let mut s = std::os::unix::net::UnixStream::connect(self.socket()).expect("admin socket");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        writeln!(s, "{cmd}").expect("write the command");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read the answer");
        out
    }

    /// `(server name, address, admin state, weight)` from `show servers state web`.
    pub fn servers(&self) -> Vec<(String, String, u32, u32)> {
        let text = self.command("show servers state web");
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        assert_eq!(lines.next(), Some("1"), "{text}");
        let header: Vec<&str> = lines
            .next()
            .expect("header")
            .trim_start_matches("# ")
            .split(' ')
            .collect();
        let col = |n: &str| {
            header
                .iter()
                .position(|h| *h == n)
                .unwrap_or_else(|| panic!("no {n}: {text}"))
        };
        lines
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (
                    f[col("srv_name")].to_owned(),
                    format!("{}:{}", f[col("srv_addr")], f[col("srv_port")]),
                    f[col("srv_admin_state")].parse().expect("admin state"),
                    f[col("srv_uweight")].parse().expect("weight"),
                )
            })
            .collect()
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}
