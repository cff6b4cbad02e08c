//! HTTP on 127.0.0.1 for the other fixtures: a plain synchronous GET, and an axum router
//! served by a runtime on a thread of its own.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use axum::Router;
use tokio::sync::oneshot;

/// A plain HTTP/1.0 GET (no chunked encoding) to 127.0.0.1: the status and the body.
/// Synchronous, so that the harness works from any test, async or not.
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // One write: a request in pieces waits for delayed ACKs (about 40 ms a request).
    stream.set_nodelay(true)?;
    let request = format!("GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head}")))?;
    Ok((status, body.to_owned()))
}

/// [`http_get`] of a JSON body: `Some` only for a 200 whose body parses.
pub fn get_json(addr: SocketAddr, path_and_query: &str) -> Option<serde_json::Value> {
    match http_get(addr, path_and_query) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// An axum router served on 127.0.0.1 by a runtime on its own thread, so that it answers
/// whatever the test's runtime is doing (blocked, paused, or absent). Stopped on drop.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its runtime, whose clock is real (for timers that must not follow a paused test).
    pub handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// On a free port.
    pub fn start(router: Router) -> Self {
        Self::start_on(router, 0)
    }

    /// On a given port (0: a free one).
    pub fn start_on(router: Router, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        let addr = listener.local_addr().expect("local address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a runtime");
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("test-server-{addr}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    // Dropping the server future on stop closes every connection at once,
                    // so that a drop never waits for a client.
                    tokio::select! {
                        r = axum::serve(listener, router) => r.expect("serve"),
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn the server thread");
        Self {
            addr,
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How many decisions a page of `GET /api/v1/decisions` records stands for (a record of
/// equal holds stands for `repeats` of them).
pub fn decisions_made(records: &[serde_json::Value]) -> u64 {
    records
        .iter()
        .map(|d| d["repeats"].as_u64().unwrap_or(0))
        .sum()
}
