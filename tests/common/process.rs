//! Child processes and waiting: a guard that kills and reaps a child on drop, free ports on
//! 127.0.0.1, and polling a condition with a deadline instead of sleeping.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a started server may take to become ready (generous: the suite must pass on a
/// machine whose cores are all busy).
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A port on 127.0.0.1 that was free a moment ago and that no other call in this process
/// has given out, taken from below the kernel's ephemeral range.
///
/// Port 0 would be chosen from the ephemeral range, where every outgoing connection on the
/// machine also takes its local port: between this call and the server binding it, a busy
/// machine's client may take it (CI saw etcd fail with "address already in use"). Below that
/// range only explicit binds land, and within this process each port is given out once.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let (low, high) = explicit_port_range();
    let span = u32::from(high - low);
    let next = NEXT.get_or_init(|| {
        // Apart from other test binaries that may run at the same time.
        let seed = std::process::id().wrapping_mul(7919) ^ now_secs() as u32;
        AtomicU32::new(seed % span)
    });
    for _ in 0..span {
        let port = low + (next.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {low}..{high}");
}

/// Ports below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`, 32768 by
/// default), from 10000 up.
fn explicit_port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    assert!(
        ephemeral_low > 12_000,
        "the ephemeral port range starts at {ephemeral_low}: the tests need ports 10000..12000 \
         outside it (sysctl net.ipv4.ip_local_port_range)"
    );
    (10_000, ephemeral_low)
}

/// `127.0.0.1:`[`free_port`].
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Unix time now, in seconds.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Calls `probe` until it gives `Some`, at most until `deadline` has passed, with a short
/// pause between attempts; panics naming `what` on timeout.
#[track_caller]
pub fn poll_until<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`poll_until`] for async tests (does not block the test's runtime while waiting). The
/// deadline is real time, also when the test's clock is paused.
pub async fn poll_until_async<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Panics naming the Debian package when `cmd arg` (e.g. `haproxy -v`) cannot be run.
pub fn require_tool(cmd: &str, arg: &str, package: &str) {
    if let Err(e) = Command::new(cmd).arg(arg).output() {
        panic!(
            "`{cmd}` is needed by this test but cannot be run ({e}); \
             install Debian package {package} (apt-get install -y {package})"
        );
    }
}

/// A child process that is killed (SIGKILL) and reaped when dropped, also when the test
/// panics, so that no server outlives its test.
pub struct ChildGuard {
    child: Child,
    what: String,
}

impl ChildGuard {
    /// Spawns `cmd`; panics naming `what` and the Debian `package` that provides it.
    pub fn spawn(cmd: &mut Command, what: &str, package: &str) -> Self {
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start {what} ({e}); install Debian package {package}")
        });
        Self {
            child,
            what: what.to_owned(),
        }
    }

    /// Guards a child spawned elsewhere.
    pub fn new(child: Child, what: &str) -> Self {
        Self {
            child,
            what: what.to_owned(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child, e.g. to take its piped output.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Panics with `log` when the process has already exited (e.g. while waiting for it
    /// to become ready).
    #[track_caller]
    pub fn assert_running(&mut self, log: impl FnOnce() -> String) {
        if let Some(status) = self.exited() {
            panic!("{} exited early ({status}); its log:\n{}", self.what, log());
        }
    }

    /// SIGKILL and reap: the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap {}: {e}", self.what))
    }

    /// Sends SIGINT (Ctrl-C) with `kill -INT`.
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    /// Sends the signal `name` (e.g. `HUP`, `TERM`) with `kill -<name>`.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot send SIG{name} to {}", self.what);
    }

    /// Sends SIGTERM (what a service manager sends to stop it) with `kill -TERM`.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Waits until it exits by itself, at most `deadline`; panics naming it on timeout.
    #[track_caller]
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.what);
        poll_until(&what, deadline, || self.exited())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
