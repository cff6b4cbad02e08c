//! Load test of the forecast endpoint: a running server with 100 targets polling a replayed
//! trace every second, and an open-loop load of `RATE` requests/s (default 2,000) on
//! `GET /api/v1/targets/{name}/forecast?horizon=1h` for `SECONDS` (default 10).
//!
//! Latency is measured from when each request was due, so a stalled server cannot hide
//! behind a slowed-down client (no coordinated omission).
//!
//! Run: `cargo run --release --example api_load [RATE] [SECONDS]`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prescale::clock::Clock;
use prescale::config::Config;
use prescale::source::replay::{ReplaySource, Trace};

const TARGETS: usize = 100;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rate: f64 = args.next().map_or(Ok(2_000.0), |s| s.parse())?;
    let seconds: f64 = args.next().map_or(Ok(10.0), |s| s.parse())?;

    // 100 targets over the NASA trace, its 21st day placed at now: 14 days of history each.
    let trace_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces/nasa_http_jul95_1min.csv");
    let trace = Trace::load(&trace_path)?;
    let now = Clock::system().now() / 60 * 60;
    let offset = now - (trace.start + 21 * 86_400);
    let source = Arc::new(ReplaySource::new(trace, offset));
    let mut toml = String::new();
    for i in 0..TARGETS {
        toml.push_str(&format!(
            "[[target]]\nname = \"t{i}\"\nrequest_rate = \"replay\"\ncapacity_rps = 0.1\nstartup = \"5m\"\n\
             max_replicas = 500\ninterval = \"1s\"\nhistory = \"14d\"\n\n"
        ));
    }
    let state = tempfile::tempdir()?;
    let config = Config::parse(&toml, &state.path().join("prescale.toml"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(prescale::serve_with(
        config,
        source,
        Clock::system(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .build()?;
    let started = Instant::now();
    loop {
        let r = client.get(format!("http://{addr}/readyz")).send().await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "server not ready within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{TARGETS} targets backfilled in {:.1} s; loading {rate} req/s for {seconds} s",
        started.elapsed().as_secs_f64()
    );

    let total = (rate * seconds) as usize;
    let period = Duration::from_secs_f64(1.0 / rate);
    let t0 = Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = t0 + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let client = client.clone();
        let url = format!(
            "http://{addr}/api/v1/targets/t{}/forecast?horizon=1h",
            i % TARGETS
        );
        tasks.push(tokio::spawn(async move {
            let ok = match client.get(url).send().await {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            (due.elapsed(), ok)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        let (latency, ok) = t.await?;
        latencies.push(latency);
        errors += usize::from(!ok);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "forecast endpoint, {TARGETS} targets polling every 1 s: {total} requests in {elapsed:.1} s ({:.0} req/s), {errors} errors; latency ms: p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
        total as f64 / elapsed,
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    let _ = stop.send(());
    server.await??;
    Ok(())
}
