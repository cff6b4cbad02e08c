//! `serve` and `backtest` run the same per-target step: one trace with `latency` and
//! `replicas` columns goes through both — the live loop polling a real Prometheus whose
//! TSDB holds the trace, the backtest replaying the trace — and the decisions match at
//! every step, learned capacity and `Performance` decisions included.

mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use common::{Options, Prometheus};
use prescale::act::outbox::Outbox;
use prescale::config::{ForecastConfig, PrometheusConfig, Queries, TargetConfig};
use prescale::metrics::Metrics;
use prescale::models::ModelsDir;
use prescale::pipeline::TargetLoop;
use prescale::simulate;
use prescale::source::prometheus::PrometheusClient;
use prescale::source::replay::Trace;
use prescale::store::Store;

const STEP: i64 = 60;
/// Two and a half days: a daily cycle, a learned latency curve and an incident.
const STEPS: usize = 3_600;

/// A daily cycle served by 10 replicas whose p95 latency follows a queueing curve (the
/// SLO of 100 ms is met up to 30 rps per replica), a latency incident at moderate load on
/// the second afternoon, and a replica count that changes now and then.
fn trace(start: i64) -> Trace {
    let mut t = Trace {
        start,
        step: STEP,
        ..Trace::default()
    };
    let (mut latency, mut replicas) = (Vec::new(), Vec::new());
    for i in 0..STEPS {
        let daily = ((i % 1440) as f64 / 1440.0 * std::f64::consts::TAU).sin();
        let rps = 200.0 + 150.0 * daily + (i * 37 % 11) as f64;
        let n = if (i / 180) % 3 == 0 { 12.0 } else { 10.0 };
        let load = rps / n;
        let incident = (1440 + 900..1440 + 1020).contains(&i);
        t.counts.push(rps * STEP as f64);
        latency.push(if incident {
            0.3
        } else {
            0.05 + 0.02 / (1.0 - load / 50.0)
        });
        replicas.push(n);
    }
    t.latency = Some(latency);
    t.replicas = Some(replicas);
    t
}

/// One column of a trace: bucket index → value.
type Column = fn(&Trace, usize) -> f64;

/// The trace as gauges, each sample stamped at the end of its bucket (as a Prometheus
/// rate covers the window that ends at its timestamp).
fn openmetrics(t: &Trace) -> String {
    let mut out = String::new();
    let columns: [(&str, Column); 3] = [
        ("trace_rps", Trace::rps),
        ("trace_latency", Trace::latency),
        ("trace_replicas", Trace::replicas),
    ];
    for (name, value) in columns {
        let _ = writeln!(out, "# TYPE {name} gauge");
        for i in 0..t.counts.len() {
            let ts = t.timestamp(i) + STEP;
            let _ = writeln!(out, "{name} {:?} {ts}", value(t, i));
        }
    }
    out.push_str("# EOF\n");
    out
}

fn target() -> TargetConfig {
    let mut t = TargetConfig::example("web", 1.0, Duration::from_secs(300));
    t.capacity_rps = None;
    t.latency_slo = Some(Duration::from_millis(100));
    t.interval = Duration::from_secs(STEP as u64);
    t.step = Duration::from_secs(STEP as u64);
    t.queries = Queries {
        request_rate: "trace_rps".to_owned(),
        latency: Some("trace_latency".to_owned()),
        replicas: Some("trace_replicas".to_owned()),
        ..Queries::default()
    };
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_backtest_decide_the_same_at_the_same_times() {
    // The trace ends an hour before now, so that Prometheus keeps it.
    let now = common::now_secs() / STEP * STEP;
    let start = now - 3_600 - STEPS as i64 * STEP;
    let trace = trace(start);
    let prom = Prometheus::start_async(Options {
        openmetrics: Some(openmetrics(&trace)),
        ..Options::default()
    })
    .await;

    let target = target();
    let forecast = ForecastConfig::default();
    let rows = simulate::backtest(&trace, &target, &forecast, |_| {});

    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::new(std::slice::from_ref(&target), Metrics::new());
    let client = PrometheusClient::new(&PrometheusConfig {
        url: prom.url().parse().expect("url"),
        auth: None,
        timeout: Duration::from_secs(30),
        max_answer_bytes: prescale::config::DEFAULT_MAX_ANSWER_BYTES,
        max_concurrency: prescale::config::DEFAULT_MAX_CONCURRENCY,
    })
    .expect("client");
    let live = TargetLoop {
        target: Arc::new(target.clone()),
        source: Arc::new(client),
        store: store.clone(),
        outbox: Outbox::open(&dir.path().join("state")).expect("outbox"),
        alerts: None,
        budget: None,
        forecast,
        models: ModelsDir::new(dir.path().join("models")),
        ownership: None,
        kubernetes: None,
        persisting: Default::default(),
    };
    let mut performance = 0;
    for (i, row) in rows.iter().enumerate() {
        live.cycle(trace.timestamp(i)).await;
        let state = store.target("web").expect("the target");
        let d = state.last_decision.as_ref().expect("a decision");
        let got = (d.at, d.to, d.reason_codes());
        let want = (row.timestamp, row.replicas, row.reason.clone());
        assert_eq!(
            got, want,
            "step {i}: serve (left) and backtest (right) differ"
        );
        let capacity = state.memory.capacity.as_ref().and_then(|c| c.effective_rps);
        assert_eq!(
            capacity.unwrap_or(f64::NAN).to_bits(),
            row.capacity_rps.to_bits(),
            "step {i}: capacity"
        );
        performance += usize::from(row.reason.starts_with("Performance"));
    }
    let last = rows.last().expect("rows");
    assert!(
        (last.capacity_rps - 30.0).abs() < 4.0,
        "learned {} rps per replica",
        last.capacity_rps
    );
    assert!(performance > 30, "{performance} Performance decisions");
}
