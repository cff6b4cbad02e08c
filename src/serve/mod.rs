//! Serving: the outbox, its worker, the HTTP API (and KEDA's), the targets' loops and
//! discovery, started together and stopped together on shutdown; [`generation`] runs one
//! configuration's loops and switches to the next at a reload (SIGHUP) or a change of the
//! discovered targets.

mod generation;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::{act, api, clock, cluster, config, discovery, fleet, metrics, reload, source, store};
use generation::{Generation, Switch, reload_config, switch};

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
/// [`crate::reload`]; `prescale serve` sends one at every SIGHUP, [`crate::hangups`]). A file that is
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
    /// `hpa-floor` targets removed from the configuration, kept for their receivers until
    /// the process stops: the release of their floor is delivered.
    removed_floors: std::sync::Mutex<Vec<config::TargetConfig>>,
}

/// The receivers of `config`, with a new webhook client.
fn receivers(config: &config::Config) -> anyhow::Result<act::Receivers> {
    let sender =
        act::webhook::WebhookSender::new(config.delivery).context("building the webhook client")?;
    Ok(act::Receivers::new(config, sender))
}

/// Serves until `shutdown`, reloading at each message on `reloads`: the outbox, its
/// worker and the listener stay; the targets' loops, the store and the API's router are
/// replaced (see [`crate::reload`]).
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
        removed_floors: std::sync::Mutex::default(),
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
            c.etcd
                .iter()
                .map(config::redacted)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    tracing::info!(name = %c.name, advertise = %c.advertise, "sharing targets through etcd");
    Ok(Some(Arc::new(joined)))
}
