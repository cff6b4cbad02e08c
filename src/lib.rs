//! prescale: a predictive autoscaler.
//!
//! Data flows one way, **poll → forecast → decide → act**, and the HTTP API reads what the
//! pipeline produced:
//!
//! - [`config`]: the TOML file, validated once into [`config::Config`].
//! - [`source`]: where series come from: Prometheus over HTTP, or a replayed CSV trace.
//! - [`series`]: step-aligned samples in bounded buffers.
//! - [`forecast`]: pure; a series and `now` in, a forecast with intervals out; a stateful
//!   per-target [`forecast::Forecaster`] selects and updates models; learned capacity and
//!   predicted bottlenecks.
//! - [`models`]: each target's fitted forecaster saved in the models directory.
//! - [`decide`]: pure; forecast, observations, policy and `now` in, a decision with reasons out.
//! - [`act`]: where decisions go: a durable outbox, then signed webhooks to the platform and
//!   the balancer, HAProxy's runtime API, and Alertmanager.
//! - [`pipeline`]: the per-target loop that strings the four together on the wall clock.
//! - [`store`]: the one shared handle on state; [`api`] serves it over HTTP.
//! - [`simulate`]: backtests, the same forecast and decide code on a virtual clock.
//! - [`demo`]: the whole pipeline on a synthetic workload and a simulated platform.
//! - [`clock`]: where the live pipeline reads `now` (the system's, or the demo's faster one).
//! - [`metrics`], [`telemetry`]: prescale's own metrics and logs.

// Functions stay under `too-many-lines-threshold` (clippy.toml) lines.
#![warn(clippy::too_many_lines)]

pub mod act;
pub mod api;
pub mod clock;
pub mod config;
pub mod decide;
pub mod demo;
pub mod forecast;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod series;
pub mod simulate;
pub mod source;
pub mod step;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

/// Runs the pipeline for every target and the HTTP API on `listener` until `shutdown`
/// completes, then stops every task and returns.
pub async fn serve(
    config: config::Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let prom = config.prometheus.as_ref().with_context(|| {
        format!(
            "{}: key `prometheus`: missing; expected a [prometheus] table with `url`",
            config.file.display()
        )
    })?;
    let source: Arc<dyn source::Source> =
        Arc::new(source::prometheus::PrometheusClient::new(prom)?);
    serve_with(config, source, clock::Clock::system(), listener, shutdown).await
}

/// [`serve`] over any [`source::Source`] (a replayed trace, say) with `now` read from
/// `clock` (the demo's runs faster than real time).
pub async fn serve_with(
    config: config::Config,
    source: Arc<dyn source::Source>,
    clock: clock::Clock,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context;
    // The outbox first: a state directory that cannot be used stops everything here.
    let outbox = act::outbox::Outbox::open_with_clock(&config.state.dir, clock)?;
    let metrics = metrics::Metrics::new();
    let store = store::Store::with_clock(&config.targets, metrics.clone(), clock);
    store.set_outbox(outbox.clone());
    let sender =
        act::webhook::WebhookSender::new(config.delivery).context("building the webhook client")?;
    let receivers = act::Receivers::new(&config, sender);
    let settings = act::outbox::Settings {
        delivery: config.delivery,
        retention: config.state.retention,
    };
    // The worker reports each finished action; the store keeps the last one per target.
    let report = store.clone();
    let last_delivery = move |target: &str, record: act::DeliveryRecord| {
        if let Some(mut t) = report.target(target) {
            t.last_delivery = Some(record);
        }
    };
    let worker = outbox
        .worker(settings, receivers, &metrics, Some(Box::new(last_delivery)))
        .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(worker.run(stop_rx.clone()));
    for t in &config.targets {
        let target_loop = pipeline::TargetLoop {
            target: Arc::new(t.clone()),
            source: source.clone(),
            store: store.clone(),
            outbox: outbox.clone(),
            alerts: config.alertmanager.clone(),
            budget: config.budget,
            forecast: config.forecast.clone(),
            models: models::ModelsDir::new(&config.forecast.models_dir),
        };
        tasks.spawn(target_loop.run(stop_rx.clone()));
    }
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, targets = config.targets.len(), "serving");
    let app = api::router(store, api::ApiAuth::from_config(&config.server));
    let mut stop = stop_rx.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.changed().await;
    });
    let server = tokio::spawn(async move { server.await });
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    server
        .await
        .context("HTTP server task")?
        .context("HTTP server")?;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// `url` with any credentials in it replaced by `***`.
pub fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    if !url.username().is_empty() || url.password().is_some() {
        let _ = shown.set_username("***");
        let _ = shown.set_password(None);
    }
    shown.to_string()
}

/// A human summary of a validated configuration, as `check-config` prints it.
pub fn summary(config: &config::Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let prom = config
        .prometheus
        .as_ref()
        .map_or("not configured".to_owned(), |p| redacted(&p.url));
    let _ = writeln!(s, "prometheus: {prom}");
    let _ = writeln!(s, "listen: {}", config.server.listen);
    let _ = writeln!(s, "state: {}", config.state.dir.display());
    if let Some(am) = &config.alertmanager {
        let _ = writeln!(s, "alertmanager: {}", am.url);
    }
    let _ = writeln!(s, "targets: {}", config.targets.len());
    if let Some(budget) = config.budget {
        let _ = writeln!(s, "budget: {budget} replicas across targets");
    }
    for t in &config.targets {
        let _ = writeln!(
            s,
            "  {}: {:?} mode, {}..={} replicas, {} rps/replica, startup {}, every {}, step {}, history {}{}{}",
            t.name,
            t.mode,
            t.min_replicas,
            t.max_replicas,
            t.capacity_rps
                .map_or("learned".to_owned(), |c| c.to_string()),
            humantime::format_duration(t.startup),
            humantime::format_duration(t.interval),
            humantime::format_duration(t.step),
            humantime::format_duration(t.history),
            if t.platform.is_some() {
                ", platform webhook"
            } else {
                ""
            },
            if t.balancer.is_some() {
                ", balancer webhook"
            } else if t.haproxy.is_some() {
                ", HAProxy balancer"
            } else {
                ""
            },
        );
    }
    s
}
