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
//! - [`store`]: the one shared handle on state; [`api`] serves it over HTTP (and, with
//!   `[server] keda_listen`, to KEDA over gRPC: [`api::keda`]).
//! - [`simulate`]: backtests, the same forecast and decide code on a virtual clock.
//! - [`demo`]: the whole pipeline on a synthetic workload and a simulated platform.
//! - [`cluster`]: instances sharing the targets through etcd: who owns which target, at
//!   which epoch; [`fleet`] fences the outbox with it.
//! - [`clock`]: where the live pipeline reads `now` (the system's, or the demo's faster one).
//! - [`metrics`], [`telemetry`]: prescale's own metrics and logs.
//! - [`reload`]: what a reload of the configuration (SIGHUP) changes, and what it may not.
//! - [`discovery`]: targets made from the series of a Prometheus query (`[[discovery]]`),
//!   started and stopped through the same machinery as a reload.

// Functions stay under `too-many-lines-threshold` (clippy.toml) lines.
#![warn(clippy::too_many_lines)]

pub mod act;
pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod decide;
pub mod demo;
pub mod discovery;
pub mod fleet;
pub mod forecast;
pub mod metrics;
pub mod models;
pub mod pipeline;
#[cfg(test)]
mod proptest_support;
pub mod reload;
pub mod series;
pub mod simulate;
pub mod source;
pub mod step;
pub mod store;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

/// Runs the pipeline for every target and the HTTP API on `listener` until `shutdown`
/// completes, then stops every task and returns.
pub async fn serve(
    config: config::Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (_none, reloads) = mpsc::channel(1);
    serve_reloading(config, listener, shutdown, reloads).await
}

/// [`serve`], reloading the configuration from its file each time `reloads` yields (see
/// [`reload`]; `prescale serve` sends one at every SIGHUP, [`hangups`]). A file that is
/// invalid, or that changes what needs a restart, is refused with an error in the log and
/// the running configuration is kept.
pub async fn serve_reloading(
    config: config::Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let sources = Sources(Box::new(prometheus_source));
    run(
        config,
        sources,
        clock::Clock::system(),
        listener,
        shutdown,
        reloads,
    )
    .await
}

/// The Prometheus client of `config`'s `[prometheus]`.
fn prometheus_source(config: &config::Config) -> SourceResult {
    let prom = config.prometheus.as_ref().with_context(|| {
        format!(
            "{}: key `prometheus`: missing; expected a [prometheus] table with `url`",
            config.file.display()
        )
    })?;
    Ok(Arc::new(source::prometheus::PrometheusClient::new(prom)?))
}

/// [`serve`] over any [`source::Source`] (a replayed trace, say) with `now` read from
/// `clock` (the demo's runs faster than real time). There is no reload.
pub async fn serve_with(
    config: config::Config,
    source: Arc<dyn source::Source>,
    clock: clock::Clock,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (_none, reloads) = mpsc::channel(1);
    let sources = Sources(Box::new(move |_| Ok(source.clone())));
    run(config, sources, clock, listener, shutdown, reloads).await
}

/// The source of a configuration.
type SourceResult = anyhow::Result<Arc<dyn source::Source>>;

/// Makes the source of a configuration (again at every reload).
struct Sources(Box<dyn Fn(&config::Config) -> SourceResult + Send + Sync>);

/// What lives as long as the process serves, across reloads.
struct Shared {
    outbox: act::outbox::Outbox,
    metrics: metrics::Metrics,
    clock: clock::Clock,
    /// The outbox worker's receivers; a reload replaces them in place.
    receivers: act::Receivers,
    /// This instance's membership, with `[cluster]`.
    cluster: Option<Arc<cluster::Cluster>>,
    /// The API's view of the other instances (forwarding to owners), with `[cluster]`.
    fleet: Option<api::Fleet>,
    /// The targets discovered from Prometheus (`[[discovery]]`), across reloads.
    discovery: discovery::Registry,
}

/// The receivers of `config`, with a new webhook client.
fn receivers(config: &config::Config) -> anyhow::Result<act::Receivers> {
    let sender =
        act::webhook::WebhookSender::new(config.delivery).context("building the webhook client")?;
    Ok(act::Receivers::new(config, sender))
}

/// Serves until `shutdown`, reloading at each message on `reloads`: the outbox, its
/// worker and the listener stay; the targets' loops, the store and the API's router are
/// replaced (see [`reload`]).
async fn run(
    config: config::Config,
    sources: Sources,
    clock: clock::Clock,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reloads: mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    // The outbox first: a state directory that cannot be used stops everything here.
    let outbox = act::outbox::Outbox::open_with_clock(&config.state.dir, clock)?;
    let keda = api::keda::bind(config.server.keda_listen).await?;
    let source = (sources.0)(&config)?;
    let metrics = metrics::Metrics::new();
    let registry = discovery::Registry::new(&config, clock, metrics.clone());
    // Before the worker: what the outbox holds for discovered targets needs their receivers.
    registry.refresh_now(&*source).await;
    let effective = registry.merged(&config);
    let receivers = receivers(&registry.with_retired(&effective))?;
    let cluster = join(&config).await?;
    let fleet = cluster
        .clone()
        .map(api::Fleet::new)
        .transpose()
        .context("building the client of the other instances' APIs")?;
    let shared = Shared {
        fleet,
        outbox,
        metrics,
        clock,
        receivers,
        cluster,
        discovery: registry,
    };
    let mut running = Generation::new(config, effective, source.clone(), &shared);
    let (store_tx, store_rx) = watch::channel(running.store.clone());
    let worker = start_worker(&shared, &running.config, store_rx).await?;
    running.spawn_loops(&shared);
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(worker.run(stop_rx.clone()));
    let (source_tx, source_rx) = watch::channel(source);
    let (found_tx, mut found) = watch::channel(0);
    let discovering = (shared.discovery.clone(), stop_rx.clone());
    let discovering = tokio::spawn(discovery::run(
        discovering.0,
        source_rx,
        found_tx,
        discovering.1,
    ));
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, targets = running.config.targets.len(), "serving");
    let (router_tx, router_rx) = watch::channel(running.router(&shared));
    let keda_now = |g: &Generation| api::keda::Current::new(&g.store, &g.config.server);
    let (keda_tx, keda_rx) = watch::channel(keda_now(&running));
    let keda = keda.map(|l| {
        tokio::spawn(api::keda::serve(
            l,
            keda_rx,
            shared.fleet.clone(),
            stop_rx.clone(),
        ))
    });
    let mut stop = stop_rx;
    let server = axum::serve(listener, reload::current_router(router_rx)).with_graceful_shutdown(
        async move {
            let _ = stop.changed().await;
        },
    );
    let server = tokio::spawn(async move { server.await });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = reloads.recv() => {
                running = reload_config(running, &sources, &shared).await;
                source_tx.send_replace(running.source.clone());
            }
            Ok(()) = found.changed() => {
                let (file, source) = (running.file.clone(), running.source.clone());
                running = switch(running, file, source, &shared, Switch::Discovered).await;
            }
        }
        store_tx.send_replace(running.store.clone());
        let _ = router_tx.send_replace(running.router(&shared));
        keda_tx.send_replace(keda_now(&running));
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    running.stop().await;
    let _ = worker.await;
    let _ = discovering.await;
    if let Some(c) = &shared.cluster {
        c.leave().await;
    }
    server
        .await
        .context("HTTP server task")?
        .context("HTTP server")?;
    if let Some(keda) = keda {
        keda.await.context("KEDA external scaler task")??;
    }
    Ok(())
}

/// The outbox worker, reporting each finished action to the store `current` holds (it
/// keeps the last one per target).
async fn start_worker(
    shared: &Shared,
    config: &config::Config,
    current: watch::Receiver<store::Store>,
) -> anyhow::Result<act::outbox::Worker> {
    let settings = act::outbox::Settings {
        delivery: config.delivery,
        retention: config.state.retention,
    };
    let delivered = shared.cluster.as_ref().map(|c| {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(fleet::share_delivered(c.clone(), rx));
        tx
    });
    let outcomes = Outcomes { current, delivered };
    let fence = shared
        .cluster
        .as_ref()
        .map(|c| Arc::new(fleet::Owners(c.clone())) as Arc<dyn act::outbox::Fence>);
    let worker = shared
        .outbox
        .fenced_worker(
            settings,
            shared.receivers.clone(),
            &shared.metrics,
            act::outbox::Hooks {
                outcomes: Some(Box::new(outcomes)),
                fence,
            },
        )
        .await?;
    Ok(worker)
}

/// Where the worker reports finished actions: each target's last delivery in the store
/// `current` holds, and, with `[cluster]`, each delivered count to share.
struct Outcomes {
    current: watch::Receiver<store::Store>,
    delivered: Option<mpsc::UnboundedSender<fleet::Delivered>>,
}

impl act::outbox::OutcomeSink for Outcomes {
    fn finished(&self, target: &str, record: act::DeliveryRecord) {
        let store = self.current.borrow().clone();
        if let Some(mut t) = store.target(target) {
            t.last_delivery = Some(record);
        }
    }

    fn delivered_scale(&self, target: &str, mark: act::outbox::ScaleMark, epoch: Option<u64>) {
        if let (Some(tx), Some(epoch)) = (&self.delivered, epoch) {
            let _ = tx.send((target.to_owned(), mark, epoch));
        }
    }
}

/// Joins the cluster of `[cluster]`, if any.
async fn join(config: &config::Config) -> anyhow::Result<Option<Arc<cluster::Cluster>>> {
    let Some(c) = &config.cluster else {
        return Ok(None);
    };
    let joined = cluster::Cluster::join(c).await.with_context(|| {
        format!(
            "{}: [cluster]: instance `{}` cannot join over {}",
            config.file.display(),
            c.name,
            c.etcd.iter().map(redacted).collect::<Vec<_>>().join(", ")
        )
    })?;
    tracing::info!(name = %c.name, advertise = %c.advertise, "sharing targets through etcd");
    Ok(Some(Arc::new(joined)))
}

/// One configuration at work: its store and its targets' loops.
struct Generation {
    /// The configuration file's, as validated.
    file: config::Config,
    /// `file` with the discovered targets: what runs.
    config: config::Config,
    source: Arc<dyn source::Source>,
    store: store::Store,
    stop: watch::Sender<bool>,
    loops: tokio::task::JoinSet<()>,
}

impl Generation {
    /// A store for `config`'s targets (`file`'s and the discovered ones), attached to the
    /// outbox; no loop runs yet.
    fn new(
        file: config::Config,
        config: config::Config,
        source: Arc<dyn source::Source>,
        shared: &Shared,
    ) -> Self {
        let store = store::Store::with_clock(&config.targets, shared.metrics.clone(), shared.clock);
        store.set_outbox(shared.outbox.clone());
        store.set_discovery(shared.discovery.clone());
        Self {
            file,
            config,
            source,
            store,
            stop: watch::channel(false).0,
            loops: tokio::task::JoinSet::new(),
        }
    }

    /// Starts a loop per target, polling its source; with `[cluster]`, one per target this
    /// instance owns, following ownership ([`pipeline::run_owned`]).
    fn spawn_loops(&mut self, shared: &Shared) {
        let c = &self.config;
        let source = self.source.clone();
        let store = self.store.clone();
        let outbox = shared.outbox.clone();
        let (alerts, budget, forecast) = (c.alertmanager.clone(), c.budget, c.forecast.clone());
        let models = models::ModelsDir::new(&c.forecast.models_dir);
        let receivers = shared.receivers.clone();
        let make = move |target: Arc<config::TargetConfig>, ownership| pipeline::TargetLoop {
            kubernetes: receivers.kubernetes(&target.name),
            target,
            source: source.clone(),
            store: store.clone(),
            outbox: outbox.clone(),
            alerts: alerts.clone(),
            budget,
            forecast: forecast.clone(),
            models: models.clone(),
            ownership,
        };
        let targets = c.targets.iter().map(|t| Arc::new(t.clone()));
        match &shared.cluster {
            None => {
                for t in targets {
                    self.loops.spawn(make(t, None).run(self.stop.subscribe()));
                }
            }
            Some(cluster) => {
                let owned = pipeline::run_owned(
                    cluster.clone(),
                    targets.collect(),
                    self.store.clone(),
                    move |t, o| make(t, Some(o)),
                    self.stop.subscribe(),
                );
                self.loops.spawn(owned);
            }
        }
    }

    /// The API over this store, guarded as `[server]` says.
    fn router(&self, shared: &Shared) -> axum::Router {
        api::router(
            self.store.clone(),
            api::ApiAuth::from_config(&self.config.server),
            shared.fleet.clone(),
        )
    }

    /// Stops the loops and waits for them.
    async fn stop(&mut self) {
        let _ = self.stop.send(true);
        while self.loops.join_next().await.is_some() {}
    }

    /// Takes over `old`'s state: a target kept as it was keeps all of it; a changed one
    /// keeps its pause, last delivery and decision history.
    fn take_over(&self, old: &store::Store, changes: &reload::Changes) {
        for name in self.store.names() {
            let (Some(mut was), Some(mut now)) = (old.target(name), self.store.target(name)) else {
                continue;
            };
            if changes.keeps(name) {
                std::mem::swap(&mut *was, &mut *now);
                std::mem::swap(&mut was.config, &mut now.config);
            } else {
                now.paused = was.paused;
                now.last_delivery = was.last_delivery.take();
                now.decisions = std::mem::take(&mut was.decisions);
            }
        }
        self.store.continue_decisions_after(old);
    }
}

/// Reads the configuration file again and, if it is valid and needs no restart, stops the
/// running loops and starts new ones with it; otherwise logs why and keeps `running`.
async fn reload_config(running: Generation, sources: &Sources, shared: &Shared) -> Generation {
    let file = running.config.file.clone();
    let (config, source) = match prepare_reload(&running.config, sources) {
        Ok(ready) => ready,
        Err(e) => {
            let error = one_line(&format!("{e:#}"));
            tracing::error!(file = %file.display(), %error, "configuration reload refused; the running configuration is kept");
            return running;
        }
    };
    shared.discovery.reconfigure(&config);
    switch(running, config, source, shared, Switch::Reloaded).await
}

/// Why the loops are started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// The configuration file was read again (SIGHUP).
    Reloaded,
    /// The discovered targets changed.
    Discovered,
}

impl Switch {
    fn as_str(self) -> &'static str {
        match self {
            Self::Reloaded => "configuration reloaded",
            Self::Discovered => "discovered targets changed",
        }
    }
}

/// Runs `file` with the targets discovered now: stops the running loops and starts new
/// ones, unless `file` is the running one and no target was added, removed or changed.
async fn switch(
    mut running: Generation,
    file: config::Config,
    source: Arc<dyn source::Source>,
    shared: &Shared,
    why: Switch,
) -> Generation {
    let config = shared.discovery.merged(&file);
    let changes = reload::Changes::between(&running.config, &config);
    let same_targets =
        changes.added.is_empty() && changes.removed.is_empty() && changes.changed.is_empty();
    if why == Switch::Discovered && same_targets {
        return running;
    }
    let what = why.as_str();
    let receivers = match receivers(&shared.discovery.with_retired(&config)) {
        Ok(r) => r,
        Err(e) => {
            let error = format!("{e:#}");
            tracing::error!(%error, "{what}, but the receivers cannot be built; the running targets are kept");
            return running;
        }
    };
    running.stop().await;
    for name in &changes.removed {
        if let Some(t) = running.config.target(name) {
            let signals: Vec<&str> = t.signals().iter().map(|(s, _)| s.as_str()).collect();
            shared.metrics.forget_target(name, &signals);
        }
    }
    let acted: Vec<String> = changes
        .removed
        .iter()
        .filter(|n| {
            running
                .config
                .target(n)
                .is_some_and(|t| t.mode == config::Mode::Act)
        })
        .cloned()
        .collect();
    release_removed(&acted, &shared.receivers).await;
    shared.receivers.replace(&receivers);
    let mut next = Generation::new(file, config, source, shared);
    next.take_over(&running.store, &changes);
    next.spawn_loops(shared);
    let list = |names: &[String]| names.join(",");
    tracing::info!(
        file = %next.file.file.display(),
        added = %list(&changes.added),
        removed = %list(&changes.removed),
        changed = %list(&changes.changed),
        sections = %changes.sections.join(","),
        targets = next.config.targets.len(),
        "{what}"
    );
    next
}

/// Gives back the HPA floors of targets that acted and were removed from the configuration
/// (Kubernetes `hpa-floor`): prescale stops acting on them. A failure is logged;
/// the floor then stays where prescale last set it.
async fn release_removed(removed: &[String], receivers: &act::Receivers) {
    for name in removed {
        let Some(k) = receivers.kubernetes(name) else {
            continue;
        };
        match k.release().await {
            Ok(Some(floor)) => {
                tracing::info!(target = %name, floor, "removed: the HPA's floor is given back");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(target = %name, error = %e, "removed: cannot give the HPA its floor back");
            }
        }
    }
}

/// A message of several lines (a TOML error quoting the line) on one line, for the log.
fn one_line(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|")
        .collect();
    parts.join(" ")
}

/// The configuration read again from `running`'s file, validated, checked against what
/// needs a restart, with its source and receivers built: everything that can fail, done
/// before anything running is touched.
fn prepare_reload(
    running: &config::Config,
    sources: &Sources,
) -> anyhow::Result<(config::Config, Arc<dyn source::Source>)> {
    let config = config::Config::load(&running.file)?;
    let restart = reload::needs_restart(running, &config);
    anyhow::ensure!(
        restart.is_empty(),
        "{} changed; this needs a restart (nothing of the file was applied)",
        restart.join(", ")
    );
    let source = (sources.0)(&config)?;
    // Built here to refuse a file whose receivers cannot be, before anything changes.
    receivers(&config)?;
    Ok((config, source))
}

/// A message at every SIGHUP (none on other platforms). Installing the handler stops
/// SIGHUP from ending the process, so call it before anything else. Hang-ups that arrive
/// while a reload is still to begin are one reload.
pub fn hangups() -> std::io::Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::debug!("SIGHUP: reloading the configuration");
                if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                    break;
                }
            }
        });
    }
    // Elsewhere the sender is dropped: `serve_reloading` then never reloads.
    #[cfg(not(unix))]
    drop(tx);
    Ok(rx)
}

/// Logs and ignores SIGUSR1 and SIGUSR2 (whose default action ends the process at once,
/// without stopping cleanly): they mean nothing to prescale, and a stray one (a log tool,
/// a mistaken `kill -USR1`) must not stop it. Call it before anything else.
pub fn ignore_user_signals() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        for (kind, name) in [
            (SignalKind::user_defined1(), "SIGUSR1"),
            (SignalKind::user_defined2(), "SIGUSR2"),
        ] {
            let mut s = signal(kind)?;
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    tracing::warn!(
                        signal = name,
                        "signal ignored: it means nothing to prescale"
                    );
                }
            });
        }
    }
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

pub use config::redacted;
pub use config::summary;
