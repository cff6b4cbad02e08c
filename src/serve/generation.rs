//! One configuration at work ([`Generation`]: its store and its targets' loops) and the
//! switch to the next: at a reload of the file, or when the discovered targets change.
//! Everything that can fail is done before anything running is touched.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Shared, Sources, receivers};
use crate::{act, api, config, models, pipeline, reload, source, store};

/// One configuration at work: its store and its targets' loops.
pub(super) struct Generation {
    /// The configuration file's, as validated.
    pub(super) file: config::Config,
    /// `file` with the discovered targets: what runs.
    pub(super) config: config::Config,
    pub(super) source: Arc<dyn source::Source>,
    pub(super) store: store::Store,
    stop: watch::Sender<bool>,
    loops: tokio::task::JoinSet<()>,
}

impl Generation {
    /// A store for `config`'s targets (`file`'s and the discovered ones), attached to the
    /// outbox; no loop runs yet.
    pub(super) fn new(
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
    pub(super) fn spawn_loops(&mut self, shared: &Shared) {
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
            persisting: Default::default(),
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
    pub(super) fn router(&self, shared: &Shared) -> axum::Router {
        api::router(
            self.store.clone(),
            api::ApiAuth::from_config(&self.config.server),
            shared.fleet.clone(),
        )
    }

    /// Stops the loops and waits for them.
    pub(super) async fn stop(&mut self) {
        let _ = self.stop.send(true);
        while self.loops.join_next().await.is_some() {}
    }

    /// Takes over `old`'s state: a target kept as it was keeps all of it; a changed one
    /// keeps its pause, last delivery and decision history.
    pub(super) fn take_over(&self, old: &store::Store, changes: &reload::Changes) {
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
pub(super) async fn reload_config(
    running: Generation,
    sources: &Sources,
    shared: &Shared,
) -> Generation {
    let file = running.config.file.clone();
    let (config, source) = match prepare_reload(&running.config, sources) {
        Ok(ready) => ready,
        Err(e) => {
            let error = one_line(&format!("{e:#}"));
            tracing::error!(file = %file.display(), %error, "configuration reload refused; the running configuration is kept");
            return running;
        }
    };
    let answers = match fresh_discoveries(&config, source.as_ref(), shared).await {
        Ok(answers) => answers,
        Err(error) => {
            tracing::error!(file = %file.display(), %error, "configuration reload refused; the running configuration is kept");
            return running;
        }
    };
    shared.discovery.reconfigure_with(&config, answers);
    switch(running, config, source, shared, Switch::Reloaded).await
}

/// The series each new or changed `[[discovery]]` of `config` answers now: asked before a
/// reload is applied, so that one whose query fails refuses the reload (naming it) rather
/// than dropping the targets the running discovery found.
async fn fresh_discoveries(
    config: &config::Config,
    source: &dyn source::Source,
    shared: &Shared,
) -> Result<Vec<(usize, Vec<config::Labels>)>, String> {
    let mut answers = Vec::new();
    for (index, query) in shared.discovery.fresh(config) {
        match source.label_sets(&query).await {
            Ok(sets) => answers.push((index, sets)),
            Err(e) => {
                return Err(format!(
                    "discovery[{index}] (new or changed): its query `{query}` failed: {e}"
                ));
            }
        }
    }
    Ok(answers)
}

/// Why the loops are started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Switch {
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
pub(super) async fn switch(
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
    keep_floors(&running.config, &changes.removed, shared);
    let receivers = match receivers(&with_floors(shared.discovery.with_retired(&config), shared)) {
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
    shared.receivers.replace(&receivers);
    release_removed(&running, &changes.removed, shared).await;
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

/// Keeps the `hpa-floor` targets among `removed` (of `running`) for the receivers.
fn keep_floors(running: &config::Config, removed: &[String], shared: &Shared) {
    let mut kept = shared
        .removed_floors
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for t in removed.iter().filter_map(|n| running.target(n)) {
        let floor = t
            .kubernetes
            .as_ref()
            .is_some_and(|k| k.mode == config::KubernetesMode::HpaFloor);
        if floor && !kept.iter().any(|k| k.name == t.name) {
            kept.push(t.clone());
        }
    }
}

/// `config` with the removed `hpa-floor` targets it no longer has, for the receivers.
fn with_floors(mut config: config::Config, shared: &Shared) -> config::Config {
    let kept = shared
        .removed_floors
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for t in kept.iter() {
        if config.target(&t.name).is_none() {
            config.targets.push(t.clone());
        }
    }
    config
}

/// Gives back the HPA floors of the `hpa-floor` targets `removed` from `running` that
/// acted: a release written to the outbox (at this instance's epoch in a fleet, only by
/// the target's owner), delivered as any action. A failure to write is logged; the floor
/// then stays where prescale last set it.
async fn release_removed(running: &Generation, removed: &[String], shared: &Shared) {
    let now = running.store.now();
    for t in removed.iter().filter_map(|n| running.config.target(n)) {
        if t.mode != config::Mode::Act {
            continue;
        }
        let epoch = match &shared.cluster {
            None => None,
            Some(c) => match c.epoch(&t.name) {
                Some(e) => Some(e),
                None => continue,
            },
        };
        let asked = running
            .store
            .target(&t.name)
            .and_then(|s| s.memory.asked.map(|a| a.replicas));
        let Some(action) = act::kubernetes::release_action(t, asked, now, "removed") else {
            continue;
        };
        let floor = action.to;
        match shared
            .outbox
            .enqueue_at(vec![act::Action::Scale(action)], epoch)
            .await
        {
            Ok(_) => {
                tracing::info!(target = %t.name, floor, "removed: the HPA's floor is given back (written to the outbox)");
            }
            Err(e) => {
                tracing::warn!(target = %t.name, error = %e, "removed: cannot write the release of the HPA's floor; it stays where prescale last set it");
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
