//! `prescale demo`: the whole pipeline with nothing else installed.
//!
//! A synthetic workload (daily and weekly cycles, a trend, noise and a flash crowd), or a
//! replayed trace, is served by an in-process [`Source`] on an accelerated [`Clock`]. A
//! simulated platform starts replicas `startup` after it is asked and removes them at once;
//! its webhook receiver runs in-process, checks each signature and logs what it gets. The
//! pipeline, the API and the dashboard are the production ones.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::{Config, Secret, WebhookConfig};
use crate::series::{Sample, align_down};
use crate::simulate::Platform;
use crate::source::replay::{ReplaySource, Trace};
use crate::source::{InMemory, Source, SourceError};

/// The demo's request-rate query.
const DEMAND_QUERY: &str = "demand";
/// The demo's replica-count query (the count the platform was asked for).
const REPLICAS_QUERY: &str = "replicas";
/// History generated before the demo starts.
const HISTORY_DAYS: i64 = 14;
const DAY: i64 = 86_400;

/// How to run the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the API and the dashboard listen.
    pub listen: SocketAddr,
    /// A trace to replay instead of the synthetic workload.
    pub trace: Option<PathBuf>,
    /// How many times faster than real time the simulated clock runs.
    pub speed: f64,
}

/// The synthetic workload: a pure function of time, in requests/s.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Requests/s at the daily peak of a weekday, at `origin`.
    pub peak_rps: f64,
    /// Time the trend is measured from (Unix s).
    pub origin: i64,
    /// Growth per week (0.05 = 5 %).
    pub weekly_growth: f64,
    /// Relative noise amplitude.
    pub noise: f64,
    /// Start of the flash crowd (Unix s).
    pub flash_start: i64,
    /// Length of the flash crowd, seconds.
    pub flash_secs: i64,
    /// Peak multiplier of the flash crowd.
    pub flash_factor: f64,
}

impl Workload {
    /// The demo's default workload; the flash crowd comes 90 minutes after `start`.
    pub fn demo(start: i64) -> Self {
        Self {
            peak_rps: 200.0,
            origin: start,
            weekly_growth: 0.05,
            noise: 0.08,
            flash_start: start + 90 * 60,
            flash_secs: 40 * 60,
            flash_factor: 2.5,
        }
    }

    /// Requests/s at `t`.
    pub fn rps(&self, t: i64) -> f64 {
        use std::f64::consts::TAU;
        let hour = t.rem_euclid(DAY) as f64 / 3_600.0;
        // Low at 04:00 UTC, high at 16:00 UTC: from 20 % to 100 % of the peak.
        let daily = 0.6 - 0.4 * ((hour - 4.0) / 24.0 * TAU).cos();
        // 1970-01-01 was a Thursday: days 2 and 3 of each week are the weekend.
        let weekday = (t.div_euclid(DAY) + 4).rem_euclid(7); // 0 = Sunday
        let weekly = if weekday == 0 || weekday == 6 {
            0.6
        } else {
            1.0
        };
        let trend = 1.0 + self.weekly_growth * (t - self.origin) as f64 / (7 * DAY) as f64;
        let flash = {
            let into = (t - self.flash_start) as f64 / self.flash_secs as f64;
            if (0.0..1.0).contains(&into) {
                // Quick rise, slow decay.
                1.0 + (self.flash_factor - 1.0) * (into * 10.0).min(1.0) * (1.0 - into)
            } else {
                1.0
            }
        };
        let noise = 1.0 + self.noise * unit_noise(t);
        (self.peak_rps * daily * weekly * trend.max(0.1) * flash * noise).max(0.0)
    }
}

/// A deterministic pseudo-random value in [-1, 1] for `t` (splitmix64).
fn unit_noise(t: i64) -> f64 {
    let mut z = (t as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

/// Where the demo's demand comes from.
enum Demand {
    Synthetic(Workload),
    Replay(ReplaySource),
}

/// The demo's [`Source`]: demand from the workload or trace, replicas from the platform;
/// nothing after the clock's `now`.
struct DemoSource {
    demand: Demand,
    platform: Arc<Mutex<Platform>>,
    clock: Clock,
}

impl InMemory for DemoSource {
    fn instance(&self) -> &'static str {
        "demo"
    }

    fn answer(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<Sample>, SourceError> {
        let end = end.min(self.clock.now());
        let mut t = align_down(start, step);
        if t < start {
            t += step;
        }
        let grid = std::iter::successors(Some(t), |t| Some(t + step)).take_while(|t| *t <= end);
        let samples: Vec<Sample> = match query {
            DEMAND_QUERY => match &self.demand {
                // The rate over the bucket ending at `t`, as a Prometheus rate would be.
                Demand::Synthetic(w) => grid
                    .map(|t| Sample {
                        ts: t,
                        value: w.rps(t - step / 2),
                    })
                    .collect(),
                Demand::Replay(r) => {
                    r.samples(start, end, step)
                        .map_err(|message| SourceError::Decode {
                            query: query.to_owned(),
                            message,
                        })?
                }
            },
            REPLICAS_QUERY => {
                let p = self.platform.lock().unwrap_or_else(|e| e.into_inner());
                grid.map(|t| Sample {
                    ts: t,
                    value: f64::from(p.asked_at(t)),
                })
                .collect()
            }
            _ => Vec::new(),
        };
        if samples.is_empty() {
            return Err(SourceError::Empty {
                query: query.to_owned(),
            });
        }
        Ok(samples)
    }
}

/// The in-process platform receiver's state.
#[derive(Clone)]
struct Receiver {
    platform: Arc<Mutex<Platform>>,
    clock: Clock,
    secret: Arc<Secret>,
}

async fn receive_scale(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature = headers
        .get(crate::act::webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let wall = Clock::system().now();
    if let Err(e) =
        crate::act::webhook::verify(r.secret.expose().as_bytes(), signature, &body, wall, 300)
    {
        warn!(error = %e, "demo platform: refused a webhook with a bad signature");
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let Some(to) = v["to"].as_u64().and_then(|n| u32::try_from(n).ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    let key = headers
        .get(crate::act::webhook::IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let reasons: Vec<&str> = v["reasons"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["code"].as_str()).collect())
        .unwrap_or_default();
    info!(target = v["target"].as_str().unwrap_or(""), from = v["from"].as_u64(), to, reasons = %reasons.join("+"), key, "demo platform received a scale webhook");
    r.platform
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .scale(r.clock.now(), to);
    StatusCode::OK
}

/// Where the demand comes from, the capacity per replica that makes the mean demand need
/// about 8 replicas (10 rps for the synthetic workload), and what it is, for people.
fn demand(trace: Option<&std::path::Path>, start: i64) -> anyhow::Result<(Demand, f64, String)> {
    let Some(path) = trace else {
        let what = "a synthetic workload".to_owned();
        return Ok((Demand::Synthetic(Workload::demo(start)), 10.0, what));
    };
    let trace = Trace::load(path)?;
    let n = trace.counts.len() as i64;
    anyhow::ensure!(
        n * trace.step > 2 * DAY,
        "{}: expected more than two days of trace",
        path.display()
    );
    // Two weeks of history (or all but a day of a shorter trace) before `now`.
    let history = (HISTORY_DAYS * DAY).min(n * trace.step - DAY);
    let offset = start - (trace.start + history);
    let capacity = (trace.mean_rps().unwrap_or(0.0) / 8.0).max(1e-6);
    let what = format!("the trace {}", path.display());
    Ok((
        Demand::Replay(ReplaySource::new(trace, offset)),
        capacity,
        what,
    ))
}

/// Runs the demo until `shutdown` completes.
pub async fn run(
    opts: DemoOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let wall = Clock::system().now();
    let start = align_down(wall, 60);
    let (demand, capacity, what) = demand(opts.trace.as_deref(), start)?;
    let clock = Clock::accelerated(start, opts.speed);
    let startup = 180;
    let platform = Arc::new(Mutex::new(Platform::new(
        startup,
        start - HISTORY_DAYS * DAY,
        2,
    )));
    let secret = Arc::new(Secret::new(format!("{:032x}", rand::random::<u128>())));

    let receiver = Router::new()
        .route("/scale", post(receive_scale))
        .with_state(Receiver {
            platform: platform.clone(),
            clock,
            secret: secret.clone(),
        });
    let receiver_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo platform receiver")?;
    let receiver_addr = receiver_listener.local_addr()?;
    let (stop_receiver, receiver_stopped) = tokio::sync::oneshot::channel::<()>();
    let receiver_task = tokio::spawn(async move {
        axum::serve(receiver_listener, receiver)
            .with_graceful_shutdown(async move {
                let _ = receiver_stopped.await;
            })
            .await
    });

    let toml = format!(
        r#"[server]
listen = "{listen}"

[[target]]
name = "demo"
request_rate = "{DEMAND_QUERY}"
replicas = "{REPLICAS_QUERY}"
capacity_rps = {capacity}
startup = "{startup}s"
min_replicas = 2
max_replicas = 200
stale_after = "{stale}s"
"#,
        listen = opts.listen,
        // Two real seconds at least: at 900x, three simulated minutes are a fifth of a
        // second, and a busy machine would keep the target degraded.
        stale = (opts.speed * 2.0).ceil().max(180.0) as u64,
    );
    // The outbox lives in a directory of its own, removed when the demo ends.
    let state_dir = std::env::temp_dir().join(format!("prescale-demo-{}", std::process::id()));
    let mut config = Config::parse(&toml, &state_dir.join("demo.toml"))?;
    config.targets[0].platform = Some(WebhookConfig {
        url: format!("http://{receiver_addr}/scale")
            .parse()
            .context("receiver URL")?,
        secret: (*secret).clone(),
        previous_secret: None,
    });
    let token = format!("{:032x}", rand::random::<u128>());
    config.server.api_token = Some(Secret::new(token.clone()));
    let source: Arc<dyn Source> = Arc::new(DemoSource {
        demand,
        platform,
        clock,
    });
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let hour = Duration::from_secs(3_600).div_f64(clock.speed());
    // The banner is for a person at a terminal; a closed stdout does not stop the demo.
    let _ = writeln!(
        std::io::stdout(),
        "prescale demo: replaying {what} at {}x (a simulated hour every {:.1} s).\n  dashboard: http://{addr}/#token={token} (the token lets its buttons act; the page keeps it for this tab only)\n  API:       http://{addr}/api/v1/targets\n  metrics:   http://{addr}/metrics\n  API token (pause, resume, refit, frontier): {token}\n    e.g. curl -X POST -H 'Authorization: Bearer {token}' http://{addr}/api/v1/targets/demo/pause\n  Ctrl-C stops.",
        clock.speed(),
        hour.as_secs_f64()
    );
    let result = crate::serve_with(config, source, clock, listener, shutdown).await;
    if let Err(e) = std::fs::remove_dir_all(&state_dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(dir = %state_dir.display(), error = %e, "could not remove the demo's state directory");
    }
    let _ = stop_receiver.send(());
    let _ = receiver_task.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_has_daily_and_weekly_cycles_and_a_flash_crowd() {
        // 2025-11-17 was a Monday.
        let monday = 1_763_337_600;
        let w = Workload {
            noise: 0.0,
            ..Workload::demo(monday)
        };
        let at = |day: i64, hour: i64| w.rps(monday + day * DAY + hour * 3_600);
        assert!(
            at(7, 16) > 4.0 * at(7, 4),
            "daily: {} vs {}",
            at(7, 16),
            at(7, 4)
        );
        let flat = Workload {
            weekly_growth: 0.0,
            ..w
        };
        let sat =
            flat.rps(monday + 12 * DAY + 16 * 3_600) / flat.rps(monday + 7 * DAY + 16 * 3_600);
        assert!((sat - 0.6).abs() < 1e-9, "Saturday is 0.6 of Monday: {sat}");
        assert!(at(14, 16) > at(7, 16), "trend grows");
        let flash = w.rps(w.flash_start + 5 * 60);
        let before = w.rps(w.flash_start - 60);
        assert!(flash > 1.8 * before, "flash crowd: {flash} vs {before}");
        assert!((-1.0..=1.0).contains(&unit_noise(12_345)));
    }
}
