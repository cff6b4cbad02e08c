//! Starting prescale and waiting until it is ready: [`App`] runs `prescale::serve` in the
//! test's runtime; [`AppProcess`] runs the `prescale` binary as a child process (for
//! `kill -9`, signals and the demo).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use prescale::config::Config;
use serde_json::Value;
use tokio::sync::oneshot;

use super::config::TempConfig;
use super::http::{get_json, http_get};
use super::process::{ChildGuard, READY_DEADLINE, free_addr, poll_until, poll_until_async};

/// How long prescale may take to stop once asked (generous: a busy machine).
pub const STOP_DEADLINE: Duration = Duration::from_secs(60);

/// `prescale::serve` on a free 127.0.0.1 port in the test's runtime; stopped and joined by
/// [`App::stop`] (dropped without it, the task is aborted with the runtime).
pub struct App {
    /// Where the API listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl App {
    /// Loads `config` (panicking on an invalid one) and serves it.
    pub async fn start(config: &TempConfig) -> Self {
        let config = Config::load(config.path()).expect("a valid test configuration");
        Self::start_with(config).await
    }

    /// Serves `config` as it is (its `[server] listen` is ignored: a free port is used).
    pub async fn start_with(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(prescale::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// `GET path` as JSON, `None` unless 200 (blocking I/O, run off the test's runtime).
    pub async fn get_json(&self, path: &str) -> Option<Value> {
        let (addr, path) = (self.addr, path.to_owned());
        tokio::task::spawn_blocking(move || get_json(addr, &path))
            .await
            .expect("GET task")
    }

    /// `GET path`: status and body (blocking I/O, run off the test's runtime).
    pub async fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let (addr, path) = (self.addr, path.to_owned());
        tokio::task::spawn_blocking(move || http_get(addr, &path))
            .await
            .expect("GET task")
    }

    /// Waits until `/readyz` answers 200 (every target backfilled), at most
    /// [`READY_DEADLINE`].
    pub async fn wait_ready(&self) {
        poll_until_async("prescale to be ready (/readyz)", READY_DEADLINE, || async {
            matches!(self.get("/readyz").await, Ok((200, _))).then_some(())
        })
        .await;
    }

    /// Asks it to stop and waits (at most [`STOP_DEADLINE`]) until it has; panics unless it
    /// stopped cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(STOP_DEADLINE, self.task)
            .await
            .unwrap_or_else(|_| panic!("serve did not stop within {STOP_DEADLINE:?}"))
            .expect("the serve task")
            .expect("serve returns Ok");
    }
}

/// The `prescale` binary as a child process, its output in files; killed on drop.
pub struct AppProcess {
    child: ChildGuard,
    /// Where its API listens.
    pub addr: SocketAddr,
    stdout: PathBuf,
    stderr: PathBuf,
    _logs: Option<tempfile::TempDir>,
}

impl AppProcess {
    /// `prescale serve --config …` listening on `addr` (what the configuration says); its
    /// output appended to `prescale.stdout` and `prescale.log` beside the configuration,
    /// so that a restart adds to the same files.
    pub fn serve(config: &TempConfig, addr: SocketAddr) -> Self {
        let args = [
            OsStr::new("serve"),
            OsStr::new("--config"),
            config.path().as_os_str(),
        ];
        Self::spawn(&args, addr, config.dir(), None)
    }

    /// `prescale demo` on a free port, `speed` times faster than real time.
    pub fn demo(speed: f64) -> Self {
        let addr = free_addr();
        let logs = tempfile::Builder::new()
            .prefix("prescale-demo-test-")
            .tempdir()
            .expect("create a temporary directory");
        let (listen, speed) = (addr.to_string(), speed.to_string());
        let args = ["demo", "--listen", &listen, "--speed", &speed].map(OsStr::new);
        let dir = logs.path().to_owned();
        Self::spawn(&args, addr, &dir, Some(logs))
    }

    fn spawn(
        args: &[&OsStr],
        addr: SocketAddr,
        dir: &Path,
        logs: Option<tempfile::TempDir>,
    ) -> Self {
        let (stdout, stderr) = (dir.join("prescale.stdout"), dir.join("prescale.log"));
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_prescale"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(open(&stdout))
            .stderr(open(&stderr));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", env!("CARGO_BIN_EXE_prescale")));
        let child = ChildGuard::new(child, "prescale");
        Self {
            child,
            addr,
            stdout,
            stderr,
            _logs: logs,
        }
    }

    /// `GET path` as JSON, `None` unless 200.
    pub fn get_json(&self, path: &str) -> Option<Value> {
        get_json(self.addr, path)
    }

    /// `POST path` with `token` as its bearer token and no body; panics unless it answers
    /// 200 (e.g. pausing or resuming a target).
    pub fn post(&self, path: &str, token: &str) {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(self.addr).expect("connect");
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n",
            self.addr
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        assert!(
            answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
            "POST {path}: {answer}"
        );
    }

    /// `GET path`: status and body.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.addr, path)
    }

    /// Waits until `/readyz` answers 200 (every target backfilled), at most
    /// [`READY_DEADLINE`]; panics with its log when it exits or times out.
    pub fn wait_ready(&mut self) {
        poll_until("prescale to be ready (/readyz)", READY_DEADLINE, || {
            if let Some(status) = self.child.exited() {
                panic!(
                    "prescale exited early ({status}); its log:\n{}",
                    self.stderr()
                );
            }
            matches!(self.get("/readyz"), Ok((200, _))).then_some(())
        });
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything it logged (stderr) so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Everything it logged so far, without the terminal's colour codes (`ESC [ … m`), so
    /// that fields read `key=value`.
    pub fn plain_log(&self) -> String {
        let log = self.stderr();
        let mut out = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// SIGKILL (`kill -9`) and reap: the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        self.child.kill()
    }

    /// Sends SIGINT (Ctrl-C).
    pub fn interrupt(&self) {
        self.child.interrupt();
    }

    /// Sends the signal `name` (e.g. `HUP`, `TERM`).
    pub fn signal(&self, name: &str) {
        self.child.signal(name);
    }

    /// Its exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.exited()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.child.terminate();
    }

    /// Waits until it exits, at most [`STOP_DEADLINE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.child.wait_exit(STOP_DEADLINE)
    }
}
