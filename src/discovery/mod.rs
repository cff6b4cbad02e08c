//! Targets discovered from Prometheus (`[[discovery]]`): every `refresh`, each discovery's
//! query runs as an instant query and each series it gives is a target, rendered from the
//! template with the series' labels ([`crate::config::DiscoveryConfig::render`]).
//!
//! [`Registry`] is the shared state: the series each discovery has seen and when, its last
//! refresh and error, and the targets they make ([`Registry::merged`]: the file's targets
//! and the discovered ones). `task.rs` runs the queries ([`run`]) and says when the set of
//! discovered targets changed; `serve` then starts and stops target loops through the
//! reload machinery ([`crate::reload::Changes`]), so unchanged targets keep their state.
//!
//! Rules:
//! - a series becomes a target at the first refresh that sees it;
//! - a series absent for `remove_after` stops being one at the next successful refresh;
//!   a failed query changes nothing (targets are never removed because Prometheus is
//!   down), its error is shown until a refresh succeeds;
//! - a name taken by a configured target, or by a discovered target seen earlier (by the
//!   first refresh that saw it, then discovery order, then labels), is a clash: the
//!   clashing series is not started, and the clash is shown in the API and logged;
//! - a removed target's receivers stay known until the process stops, so actions already
//!   in its outbox lane are still delivered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::{Config, DiscoveryConfig, Labels, TargetConfig};
use crate::metrics::{DiscoveryLabels, DiscoveryOutcomeLabels, Metrics};
use crate::source::SourceError;
use crate::telemetry::condition::{Condition, Note};

mod task;
#[cfg(test)]
mod tests;

pub use task::run;

/// The discovered targets and each discovery's state; cheap to clone, clones share it.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    metrics: Metrics,
    /// Woken when the discoveries change (a reload), so the task re-reads them.
    reconfigured: Arc<Notify>,
    clock: Clock,
}

struct Inner {
    discoveries: Vec<Discovery>,
    /// The configured (file) targets' names: a discovered name equal to one is a clash.
    configured: BTreeSet<String>,
    /// Discovered targets that were removed, kept for their receivers.
    retired: BTreeMap<String, TargetConfig>,
    /// Grows at every reconfiguration; a refresh started before one is dropped.
    epoch: u64,
    /// The problems last logged, so each is logged once while it lasts.
    logged: BTreeSet<String>,
}

/// One `[[discovery]]` and what it has seen.
struct Discovery {
    config: DiscoveryConfig,
    /// When a refresh last succeeded (Unix seconds).
    last_refresh: Option<i64>,
    /// The last refresh's error, until one succeeds.
    error: Option<String>,
    /// Refreshes failing: logged when it starts, every few minutes and when it ends.
    failing: Condition,
    /// Each series seen and not yet removed.
    series: BTreeMap<Labels, Seen>,
    /// When it is next due (tokio time).
    next: tokio::time::Instant,
}

/// A series and its target.
struct Seen {
    /// The rendered target, or why the series makes none.
    target: Result<TargetConfig, String>,
    first_seen: i64,
    last_seen: i64,
}

/// Why a series is not a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Its labels do not make a valid target (a missing label, an invalid name, …).
    Template,
    /// Its name is a configured target's; the configured one is kept.
    ClashWithConfigured,
    /// Its name is taken by another discovered series (seen earlier).
    ClashWithDiscovered,
}

/// A series that is not a target, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Why, as a kind.
    pub kind: ProblemKind,
    /// The series' labels.
    pub labels: Labels,
    /// The target name it renders to, when it renders.
    pub name: Option<String>,
    /// What is wrong, naming the discovery, the series and the clash.
    pub message: String,
}

/// A discovered target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The target's name.
    pub name: String,
    /// The series' labels.
    pub labels: Labels,
    /// When the series was first seen (Unix seconds).
    pub first_seen: i64,
    /// When it was last seen (Unix seconds).
    pub last_seen: i64,
}

/// What one discovery shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Its place among the `[[discovery]]` tables.
    pub index: usize,
    /// Its query.
    pub query: String,
    /// Its refresh, seconds.
    pub refresh: u64,
    /// Its `remove_after`, seconds.
    pub remove_after: u64,
    /// When a refresh last succeeded (Unix seconds).
    pub last_refresh: Option<i64>,
    /// The last refresh's error, until one succeeds.
    pub error: Option<String>,
    /// Its targets.
    pub targets: Vec<Found>,
    /// Its series that are not targets.
    pub problems: Vec<Problem>,
}

/// The discovered targets and the problems, per discovery.
struct Resolved {
    targets: Vec<(usize, Found, TargetConfig)>,
    problems: Vec<(usize, Problem)>,
}

impl Registry {
    /// The discoveries of `config`, nothing seen yet, all due now; their refreshes,
    /// targets and problems counted in `metrics`.
    pub fn new(config: &Config, clock: Clock, metrics: Metrics) -> Self {
        let inner = Inner {
            discoveries: config
                .discovery
                .iter()
                .cloned()
                .map(Discovery::new)
                .collect(),
            configured: config.targets.iter().map(|t| t.name.clone()).collect(),
            retired: BTreeMap::new(),
            epoch: 0,
            logged: BTreeSet::new(),
        };
        Self {
            inner: Arc::new(Mutex::new(inner)),
            metrics,
            reconfigured: Arc::new(Notify::new()),
            clock,
        }
    }

    /// Locks the state; never held across an `.await`.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the discoveries and configured targets of a reloaded `config`: a discovery
    /// configured as before keeps what it has seen; a changed or new one starts afresh.
    pub fn reconfigure(&self, config: &Config) {
        let mut inner = self.lock();
        let mut old: Vec<Option<Discovery>> = std::mem::take(&mut inner.discoveries)
            .into_iter()
            .map(Some)
            .collect();
        inner.discoveries = config
            .discovery
            .iter()
            .map(|c| {
                let kept = old
                    .iter_mut()
                    .find(|d| d.as_ref().is_some_and(|d| same(&d.config, c)))
                    .and_then(Option::take);
                kept.unwrap_or_else(|| Discovery::new(c.clone()))
            })
            .collect();
        for d in old.into_iter().flatten() {
            inner.retire(d.series.into_values());
        }
        inner.configured = config.targets.iter().map(|t| t.name.clone()).collect();
        inner.epoch += 1;
        drop(inner);
        self.reconfigured.notify_one();
    }

    /// The discoveries of `config` that [`Registry::reconfigure`] would start afresh (new
    /// or changed), as (index in `config`, query): a reload runs each once before it is
    /// applied, and refuses the file if one fails, so that their targets are never dropped
    /// on a query that fails.
    pub fn fresh(&self, config: &Config) -> Vec<(usize, String)> {
        let inner = self.lock();
        let mut taken = vec![false; inner.discoveries.len()];
        let mut fresh = Vec::new();
        for (i, c) in config.discovery.iter().enumerate() {
            let kept = (inner.discoveries.iter().enumerate())
                .position(|(j, d)| !taken[j] && same(&d.config, c));
            match kept {
                Some(j) => taken[j] = true,
                None => fresh.push((i, c.query.clone())),
            }
        }
        fresh
    }

    /// [`Registry::reconfigure`], then each fresh discovery starts from the series its
    /// query answered (`answers`, by index in `config`, from [`Registry::fresh`]), so that
    /// its targets are there at once rather than after its first refresh.
    pub fn reconfigure_with(&self, config: &Config, answers: Vec<(usize, Vec<Labels>)>) {
        self.reconfigure(config);
        let epoch = self.lock().epoch;
        for (index, sets) in answers {
            self.observe(index, epoch, Ok(sets));
        }
    }

    /// `file` with the discovered targets after its own.
    pub fn merged(&self, file: &Config) -> Config {
        let mut config = file.clone();
        config
            .targets
            .extend(self.lock().resolve().targets.into_iter().map(|(_, _, t)| t));
        config
    }

    /// `effective` (from [`Registry::merged`]) with the removed discovered targets too, for
    /// the receivers: what is already in their outbox lanes is still delivered.
    pub fn with_retired(&self, effective: &Config) -> Config {
        let mut config = effective.clone();
        let inner = self.lock();
        for (name, t) in &inner.retired {
            if config.target(name).is_none() {
                config.targets.push(t.clone());
            }
        }
        config
    }

    /// What each discovery shows, in file order.
    pub fn status(&self) -> Vec<Status> {
        let inner = self.lock();
        let resolved = inner.resolve();
        inner
            .discoveries
            .iter()
            .enumerate()
            .map(|(i, d)| d.status(i, &resolved))
            .collect()
    }

    /// The names and tables of the discovered targets, to tell whether they changed.
    fn fingerprint(&self) -> Vec<String> {
        let inner = self.lock();
        let resolved = inner.resolve();
        resolved
            .targets
            .iter()
            .map(|(_, _, t)| format!("{t:?}"))
            .collect()
    }

    /// Takes the outcome of discovery `index`'s query (started at `epoch`): the series
    /// seen now, or the error, which keeps every target. Logs a failure when it starts,
    /// every few minutes while it lasts and when it ends.
    fn observe(&self, index: usize, epoch: u64, result: Result<Vec<Labels>, SourceError>) {
        let now = self.clock.now();
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        let Some(d) = inner.discoveries.get_mut(index) else {
            return;
        };
        d.next = tokio::time::Instant::now() + d.config.refresh;
        let outcome = result.as_ref().map_or_else(|e| e.metric_label(), |_| "ok");
        let labels = DiscoveryOutcomeLabels {
            discovery: index.to_string(),
            outcome: outcome.to_owned(),
        };
        self.metrics
            .discovery_refreshes
            .get_or_create(&labels)
            .inc();
        let removed = match result {
            Ok(sets) => {
                if let Some(n) = d.failing.clears(now) {
                    tracing::info!(discovery = index, failed_for = %n.duration(), "discovery query succeeds again");
                }
                d.seen(sets, now)
            }
            Err(e) => {
                let error = e.to_string();
                let kept = d.series.len();
                match d.failing.holds(e.metric_label(), now) {
                    Some(Note::Started) => {
                        tracing::warn!(discovery = index, %error, kept, "discovery query failed; the series it had seen are kept as they were");
                    }
                    Some(n) => {
                        tracing::warn!(discovery = index, %error, kept, failing_for = %n.duration(), "discovery query still failing; the series it had seen are kept as they were");
                    }
                    None => tracing::debug!(discovery = index, %error, "discovery query failed"),
                }
                d.error = Some(error);
                Vec::new()
            }
        };
        for name in removed.iter().filter_map(|s| s.target.as_ref().ok()) {
            tracing::info!(discovery = index, target = %name.name, "discovered target removed: its series is gone");
        }
        inner.retire(removed.into_iter());
        inner.log_problems();
        let resolved = inner.resolve();
        for i in 0..inner.discoveries.len() {
            let labels = DiscoveryLabels {
                discovery: i.to_string(),
            };
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            let targets = resolved.targets.iter().filter(|t| t.0 == i).count();
            let problems = resolved.problems.iter().filter(|p| p.0 == i).count();
            self.metrics
                .discovered_targets
                .get_or_create(&labels)
                .set(count(targets));
            self.metrics
                .discovery_problems
                .get_or_create(&labels)
                .set(count(problems));
        }
    }
}

/// Whether two discoveries are configured alike (through `Debug`, as reloads compare).
fn same(a: &DiscoveryConfig, b: &DiscoveryConfig) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

impl Inner {
    /// Keeps removed series' targets for their receivers.
    fn retire(&mut self, removed: impl Iterator<Item = Seen>) {
        for s in removed {
            if let Ok(t) = s.target {
                self.retired.insert(t.name.clone(), t);
            }
        }
    }

    /// The targets, each name given to the series that had it first, and the problems.
    fn resolve(&self) -> Resolved {
        let mut all: Vec<(usize, &Labels, &Seen)> = self
            .discoveries
            .iter()
            .enumerate()
            .flat_map(|(i, d)| d.series.iter().map(move |(l, s)| (i, l, s)))
            .collect();
        all.sort_by(|a, b| (a.2.first_seen, a.0, a.1).cmp(&(b.2.first_seen, b.0, b.1)));
        let mut claimed: BTreeMap<&str, (usize, &Labels)> = BTreeMap::new();
        let mut out = Resolved {
            targets: Vec::new(),
            problems: Vec::new(),
        };
        for (i, labels, seen) in all {
            let problem = |kind, name: Option<&str>, message: String| Problem {
                kind,
                labels: labels.clone(),
                name: name.map(str::to_owned),
                message,
            };
            let shown = crate::config::show_labels(labels);
            let t = match &seen.target {
                Err(e) => {
                    let p = problem(ProblemKind::Template, None, e.clone());
                    out.problems.push((i, p));
                    continue;
                }
                Ok(t) => t,
            };
            let name = t.name.as_str();
            let p = if self.configured.contains(name) {
                problem(
                    ProblemKind::ClashWithConfigured,
                    Some(name),
                    format!(
                        "discovery[{i}]: the series {shown} makes target `{name}`, which is configured in the file; the configured target is kept and this series is not started"
                    ),
                )
            } else if let Some((j, other)) = claimed.get(name) {
                problem(
                    ProblemKind::ClashWithDiscovered,
                    Some(name),
                    format!(
                        "discovery[{i}]: the series {shown} makes target `{name}`, already made by discovery[{j}]'s series {}; the first is kept and this series is not started",
                        crate::config::show_labels(other)
                    ),
                )
            } else {
                claimed.insert(name, (i, labels));
                let found = Found {
                    name: name.to_owned(),
                    labels: labels.clone(),
                    first_seen: seen.first_seen,
                    last_seen: seen.last_seen,
                };
                out.targets.push((i, found, t.clone()));
                continue;
            };
            out.problems.push((i, p));
        }
        out
    }

    /// Logs the problems not logged while they lasted.
    fn log_problems(&mut self) {
        let now: BTreeSet<String> = self
            .resolve()
            .problems
            .into_iter()
            .map(|(_, p)| p.message)
            .collect();
        for message in now.difference(&self.logged) {
            tracing::error!(%message, "discovered series not started");
        }
        self.logged = now;
    }
}

impl Discovery {
    fn new(config: DiscoveryConfig) -> Self {
        Self {
            config,
            last_refresh: None,
            error: None,
            failing: Condition::default(),
            series: BTreeMap::new(),
            next: tokio::time::Instant::now(),
        }
    }

    /// Takes the series of a successful refresh at `now`; returns those removed (absent
    /// for `remove_after`).
    fn seen(&mut self, sets: Vec<Labels>, now: i64) -> Vec<Seen> {
        self.last_refresh = Some(now);
        self.error = None;
        let present: BTreeSet<&Labels> = sets.iter().collect();
        let remove_after = i64::try_from(self.config.remove_after.as_secs()).unwrap_or(i64::MAX);
        let gone: Vec<Labels> = self
            .series
            .iter()
            .filter(|(l, s)| {
                !present.contains(l) && now.saturating_sub(s.last_seen) >= remove_after
            })
            .map(|(l, _)| l.clone())
            .collect();
        let removed = gone.iter().filter_map(|l| self.series.remove(l)).collect();
        for labels in sets {
            let config = &self.config;
            let seen = self.series.entry(labels).or_insert_with_key(|labels| Seen {
                target: config.render(labels).map_err(|e| e.to_string()),
                first_seen: now,
                last_seen: now,
            });
            seen.last_seen = now;
        }
        removed
    }

    fn status(&self, index: usize, resolved: &Resolved) -> Status {
        let targets = (resolved.targets.iter())
            .filter(|(i, _, _)| *i == index)
            .map(|(_, found, _)| found.clone())
            .collect();
        Status {
            index,
            query: self.config.query.clone(),
            refresh: self.config.refresh.as_secs(),
            remove_after: self.config.remove_after.as_secs(),
            last_refresh: self.last_refresh,
            error: self.error.clone(),
            targets,
            problems: (resolved.problems.iter())
                .filter(|(i, _)| *i == index)
                .map(|(_, p)| p.clone())
                .collect(),
        }
    }
}
