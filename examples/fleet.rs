//! Many targets on one instance: the time of one decision cycle over all of them, and the
//! resident memory each takes.
//!
//! `TARGETS` targets (default 10,000), each with one signal (the request rate) polled from
//! a synthetic in-memory source, 14 days of one-minute history, a platform webhook and a
//! fitted forecaster, run the live pipeline's cycle ([`TargetLoop::cycle`]: poll → step →
//! record, actions written to a real outbox) as `serve` runs it, every target a task.
//!
//! - **Memory**: `VmRSS` before the targets exist and after each has backfilled its 14
//!   days and decided once, divided by the count; and again after the timed cycles.
//! - **Cycle**: `CYCLES` cycles (default 8), `interval` (30 s) apart on a virtual clock,
//!   so every other one polls a new one-minute sample; the median of each kind. The
//!   forecasters are fitted before the first cycle (a few shapes, one fit each, cloned),
//!   so this is the steady state; the time of one refit is measured on its own.
//! - **Long run**: memory again once every target's decision and replica histories are as
//!   full as 14 days of a change every 10 minutes leave them (their bounds, not their
//!   start, then count).
//!
//! Run: `cargo run --release --example fleet [TARGETS] [CYCLES]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use prescale::act::outbox::Outbox;
use prescale::clock::Clock;
use prescale::config::{ForecastConfig, Secret, TargetConfig, WebhookConfig};
use prescale::demo::Workload;
use prescale::forecast::{Forecaster, History};
use prescale::metrics::Metrics;
use prescale::models::ModelsDir;
use prescale::pipeline::TargetLoop;
use prescale::series::{Sample, Series, align_down};
use prescale::source::{InMemory, SourceError};
use prescale::store::Store;

const STEP: i64 = 60;
const DAY: i64 = 86_400;
/// Workload shapes: each a peak rate; target `i` has shape `i % SHAPES`.
const SHAPES: usize = 8;

/// The synthetic source: query `shape:K` is workload `K`'s rate over the bucket ending at
/// each step (as a Prometheus rate).
struct Synthetic {
    shapes: Vec<Workload>,
}

impl Synthetic {
    fn new(origin: i64) -> Self {
        let shapes = (0..SHAPES)
            .map(|k| Workload {
                peak_rps: 20.0 + 40.0 * k as f64,
                flash_factor: 1.0,
                ..Workload::demo(origin)
            })
            .collect();
        Self { shapes }
    }

    fn samples(&self, shape: usize, start: i64, end: i64) -> Vec<Sample> {
        let w = &self.shapes[shape];
        let first = align_down(start + STEP - 1, STEP);
        (0..)
            .map(|i| first + i * STEP)
            .take_while(|t| *t <= end)
            .map(|t| Sample {
                ts: t,
                value: w.rps(t - STEP / 2),
            })
            .collect()
    }
}

impl InMemory for Synthetic {
    fn answer(
        &self,
        query: &str,
        start: i64,
        end: i64,
        _step: i64,
    ) -> Result<Vec<Sample>, SourceError> {
        let shape = query
            .strip_prefix("shape:")
            .and_then(|k| k.parse::<usize>().ok())
            .filter(|k| *k < SHAPES);
        match shape.map(|k| self.samples(k, start, end)) {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(SourceError::Empty {
                query: query.to_owned(),
            }),
        }
    }

    fn instance(&self) -> &'static str {
        "synthetic"
    }
}

/// This process's resident memory, bytes (`VmRSS`), and its peak (`VmHWM`).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn median(mut xs: Vec<Duration>) -> Option<Duration> {
    xs.sort();
    xs.get(xs.len() / 2).copied()
}

fn target(i: usize) -> TargetConfig {
    let mut t = TargetConfig::example(&format!("svc-{i:05}"), 10.0, Duration::from_secs(120));
    t.queries.request_rate = format!("shape:{}", i % SHAPES);
    t.initial_replicas = Some(2);
    t.platform = Some(WebhookConfig {
        // Never contacted: no outbox worker runs here.
        url: "http://127.0.0.1:9/scale".parse().expect("a valid URL"),
        secret: Secret::new("fleet"),
        previous_secret: None,
    });
    t
}

/// One forecaster per shape fitted on 14 days up to `now`, and the time of one fit.
fn fitted(source: &Synthetic, config: &TargetConfig, now: i64) -> (Vec<Forecaster>, Duration) {
    let policy = config.step_policy(&ForecastConfig::default(), None);
    let mut fits = Vec::new();
    let mut took = Vec::new();
    for k in 0..SHAPES {
        let mut series = Series::new(STEP, config.history_points());
        series.extend(source.samples(k, now - 14 * DAY, now));
        let (start, values) = series.to_grid().expect("history");
        let mut f = Forecaster::new(policy.forecast);
        let started = Instant::now();
        f.refit(
            History {
                start,
                step: STEP,
                values: &values,
            },
            now,
        )
        .expect("a fit");
        took.push(started.elapsed());
        fits.push(f);
    }
    (fits, median(took).unwrap_or_default())
}

/// Runs every loop's cycle at `now`, each a task as in `serve`; the wall time.
async fn cycle(loops: &[Arc<TargetLoop>], now: i64) -> Duration {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for l in loops {
        let l = l.clone();
        tasks.spawn(async move { l.cycle(now).await });
    }
    while tasks.join_next().await.is_some() {}
    started.elapsed()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let targets: usize = args.next().map_or(Ok(10_000), |s| s.parse())?;
    let cycles: usize = args.next().map_or(Ok(8), |s| s.parse())?;

    let now0 = align_down(Clock::system().now(), STEP);
    let source = Arc::new(Synthetic::new(now0 - 14 * DAY));
    let state = tempfile::tempdir()?;
    let outbox = Outbox::open_with_clock(state.path(), Clock::system())?;
    let (fits, refit) = fitted(&source, &target(0), now0);
    let forecast = ForecastConfig {
        models_dir: state.path().join("models"),
        ..ForecastConfig::default()
    };
    let (before, _) = rss();

    let configs: Vec<TargetConfig> = (0..targets).map(target).collect();
    let store = Store::new(&configs, Metrics::new());
    store.set_outbox(outbox.clone());
    let loops: Vec<Arc<TargetLoop>> = configs
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if let Some(mut s) = store.target(&t.name) {
                s.memory.forecaster = Some(fits[i % SHAPES].clone());
            }
            Arc::new(TargetLoop {
                target: Arc::new(t),
                source: source.clone(),
                store: store.clone(),
                outbox: outbox.clone(),
                alerts: None,
                budget: None,
                forecast: forecast.clone(),
                models: ModelsDir::new(&forecast.models_dir),
                ownership: None,
                kubernetes: None,
                persisting: Default::default(),
            })
        })
        .collect();
    let backfill = cycle(&loops, now0).await;
    let (built, peak) = rss();
    let points: usize = store
        .names()
        .filter_map(|n| store.target(n).map(|t| t.rate.len()))
        .sum();
    println!(
        "{targets} targets, {:.0} one-minute points each; backfill and first decision: {:.1} s",
        points as f64 / targets as f64,
        backfill.as_secs_f64()
    );
    let per_target = built.saturating_sub(before) as f64 / targets as f64;
    println!(
        "resident memory: {:.0} MB before the targets, {:.0} MB after (peak {:.0} MB): {:.1} KB per target",
        mb(before),
        mb(built),
        mb(peak),
        per_target / 1e3
    );

    let interval = target(0).interval.as_secs() as i64;
    let (mut polled, mut held) = (Vec::new(), Vec::new());
    for k in 1..=cycles as i64 {
        let now = now0 + k * interval;
        let took = cycle(&loops, now).await;
        // A new one-minute sample each step; between, the cycle finds nothing new.
        if align_down(now, STEP) > align_down(now - interval, STEP) {
            polled.push(took);
        } else {
            held.push(took);
        }
    }
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    println!(
        "one cycle over all targets (median of {cycles}): {:.0} ms with a new sample, {:.0} ms without",
        ms(median(polled)),
        ms(median(held))
    );
    let (after, peak) = rss();
    println!(
        "after the cycles: {:.0} MB resident (peak {:.0} MB): {:.1} KB per target",
        mb(after),
        mb(peak),
        after.saturating_sub(before) as f64 / targets as f64 / 1e3
    );
    let every = forecast.refit_every.as_secs().max(1) as f64;
    let per_cycle = targets as f64 * interval as f64 / every;
    println!(
        "one refit (14 days, one minute): {:.0} ms; all {targets} targets refit every {every} s: \
         {:.0} s of CPU, spread by phase over the hour: about {per_cycle:.0} refits, {:.2} s of CPU, a cycle",
        ms(Some(refit)),
        refit.as_secs_f64() * targets as f64,
        refit.as_secs_f64() * per_cycle
    );
    let now = now0 + cycles as i64 * interval;
    age(&store, now);
    let (aged, peak) = rss();
    println!(
        "as after 14 days of a change every {} min (full decision and replica histories): \
         {:.0} MB resident (peak {:.0} MB): {:.1} KB per target",
        CHANGE_EVERY / 60,
        mb(aged),
        mb(peak),
        aged.saturating_sub(before) as f64 / targets as f64 / 1e3
    );
    Ok(())
}

/// How often the aged targets changed their count, seconds.
const CHANGE_EVERY: i64 = 600;

/// Fills every target's decision history and replica history as 14 days of a change every
/// [`CHANGE_EVERY`] would (copies of its last decision, changed; after `now`, so that the
/// store's own histories take them, within their own bounds).
fn age(store: &Store, now: i64) {
    let names: Vec<String> = store.names().map(str::to_owned).collect();
    for name in names {
        let Some(last) = store.target(&name).and_then(|t| t.last_decision.clone()) else {
            continue;
        };
        let mode = store.target(&name).map(|t| t.config.mode);
        for k in 1..=14 * DAY / CHANGE_EVERY {
            let at = now + k * CHANGE_EVERY;
            let to = last.to + (k % 2) as u32;
            let d = prescale::decide::Decision {
                at,
                from: last.to + 1 - (k % 2) as u32,
                to,
                ..last.clone()
            };
            if let Some(mode) = mode {
                store.record_decision(prescale::store::DecisionRecord::new(name.clone(), d, mode));
            }
            // A decision every 30 s, the count changing every `CHANGE_EVERY`.
            if let Some(mut t) = store.target(&name) {
                t.replicas_history
                    .extend((0..CHANGE_EVERY / 30).map(|i| Sample {
                        ts: at + i * 30,
                        value: f64::from(to),
                    }));
            }
        }
    }
}
