//! `prescale tune`: replays a trace across the risk dial, in parallel on every core, and
//! picks the dial for an objective on the history before `train_until`; then replays the
//! whole trace at that dial and scores it on the rest, which it never saw.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use super::score::{Score, clairvoyant, hpa, ready};
use super::{Summary, backtest};
use crate::config::{ForecastConfig, TargetConfig};
use crate::decide::risk::Risk;
use crate::source::replay::Trace;

/// Dials replayed, by default, between the recommendation and its neighbour beyond the
/// objective (see [`Options::refine`]).
pub const REFINE: u32 = 4;

/// The HPA's target utilisations drawn beside prescale's frontier.
pub const HPA_FRONTIER: [f64; 7] = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// The least training stretch `prescale tune` scores (after the warm-up), seconds: a day,
/// one cycle of the daily pattern. On less, every dial scores alike (often nothing at all)
/// and a recommendation would be noise.
pub const MIN_SCORED: i64 = 86_400;

/// Why `tune` refuses to recommend: it could not score what it was given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TuneError {
    /// The training stretch left after the warm-up is under [`Options::min_scored`].
    #[error(
        "{scored} s of the trace would be scored ({trained} s trained on, {skip} s of it skipped \
         as warm-up); tuning needs at least {needed} s scored: give a longer trace, a \
         shorter --skip or a later --train-until"
    )]
    TooShort {
        /// Seconds needed.
        needed: i64,
        /// Seconds of the training stretch (from the trace's start to `train_until`).
        trained: i64,
        /// Seconds skipped as warm-up.
        skip: i64,
        /// Seconds left to score (may be negative: the warm-up is longer than the stretch).
        scored: i64,
    },
    /// A loss cap every setting meets: nothing to choose between.
    #[error("objective `{0}`: expected a share of lost requests under 100%")]
    Objective(Objective),
}

/// What to tune for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Objective {
    /// The fewest lost requests at no more replica-hours than the HPA at 70 % (`cost=hpa`).
    CostOfHpa,
    /// The fewest replica-hours losing at most this % of requests (`lost=0.1%`).
    LostPct(f64),
    /// The fewest lost requests within this many replica-hours (`cost=N`).
    ReplicaHours(f64),
}

impl std::str::FromStr for Objective {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}`: expected cost=hpa, cost=N (replica-hours) or lost=P% (e.g. lost=0.1%)")
        };
        let (k, v) = s.split_once('=').ok_or_else(bad)?;
        let number = |v: &str| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(bad)
        };
        match (k.trim(), v.trim()) {
            ("cost", "hpa") => Ok(Self::CostOfHpa),
            ("cost", n) => number(n).map(Self::ReplicaHours),
            ("lost", p) => {
                let pct = number(p.strip_suffix('%').unwrap_or(p))?;
                let o = Self::LostPct(pct);
                o.check().map_err(|e| e.to_string())?;
                Ok(o)
            }
            _ => Err(bad()),
        }
    }
}

impl Objective {
    /// Whether it can choose between settings: a loss cap under 100 %.
    fn check(self) -> Result<(), TuneError> {
        match self {
            Self::LostPct(p) if p >= 100.0 || !p.is_finite() => Err(TuneError::Objective(self)),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::CostOfHpa => f.write_str("cost=hpa"),
            Self::LostPct(p) => write!(f, "lost={p}%"),
            Self::ReplicaHours(n) => write!(f, "cost={n}"),
        }
    }
}

/// One replay: the dial and how it scored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// The dial.
    pub risk: f64,
    /// Its score.
    pub score: Score,
}

/// The references on the same stretch of trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct References {
    /// The HPA at each of [`HPA_FRONTIER`]'s utilisations.
    pub hpa: Vec<(f64, Score)>,
    /// The clairvoyant scaler.
    pub clairvoyant: Score,
}

/// What `tune` found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tuning {
    /// The objective.
    pub objective: Objective,
    /// Seconds of each replay left out of the training scores (the forecaster's warm-up).
    pub skip_seconds: i64,
    /// Where training ends (Unix s): the frontier is scored before it.
    pub train_until: i64,
    /// prescale across the dial, on the training stretch.
    pub frontier: Vec<Point>,
    /// The references on the training stretch.
    pub references: References,
    /// The dial recommended; `None` when no dial meets the objective.
    pub recommended: Option<f64>,
    /// The recommended dial on the rest of the trace (from `train_until` on), with the
    /// references there; `None` when nothing is left after `train_until`.
    pub test: Option<Summary>,
}

/// How to tune.
#[derive(Debug, Clone)]
pub struct Options {
    /// The dial values to replay.
    pub dials: Vec<Risk>,
    /// Training ends here (Unix s); the trace's end when `None`.
    pub train_until: Option<i64>,
    /// Warm-up left out of the training scores, seconds.
    pub skip: i64,
    /// What to tune for.
    pub objective: Objective,
    /// Replays run at once.
    pub threads: usize,
    /// Dials replayed between the recommendation and its neighbour beyond the objective,
    /// so the recommendation is not limited by the grid's resolution (0: none).
    pub refine: u32,
    /// The least training stretch scored after the warm-up, seconds (the CLI's:
    /// [`MIN_SCORED`]); one step at least, whatever it says.
    pub min_scored: i64,
}

/// The dial from 0 to 1 in `n` steps (`n + 1` values).
pub fn dial(n: u32) -> Vec<Risk> {
    (0..=n)
        .filter_map(|k| Risk::new(f64::from(k) / f64::from(n.max(1))))
        .collect()
}

/// Replays `trace` at every dial of `opts` (the first `train_until` of it), recommends one
/// for the objective, and scores it on the rest. `progress` is called with the number of
/// steps replayed so far, from any thread. Refused, before anything is replayed, when
/// less than `opts.min_scored` of the training stretch is left after the warm-up, or when
/// the objective is a loss cap of 100 % or more.
pub fn tune(
    trace: &Trace,
    target: &TargetConfig,
    forecast: &ForecastConfig,
    opts: &Options,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Tuning, TuneError> {
    opts.objective.check()?;
    let end = trace.timestamp(trace.counts.len());
    let train_until = opts.train_until.unwrap_or(end).min(end);
    let trained = train_until - trace.start;
    let scored = trained - opts.skip.max(0);
    let needed = opts.min_scored.max(trace.step.max(1));
    if scored < needed {
        return Err(TuneError::TooShort {
            needed,
            trained,
            skip: opts.skip,
            scored,
        });
    }
    let train = trace.truncated(((train_until - trace.start) / trace.step.max(1)).max(0) as usize);
    let done = AtomicUsize::new(0);
    let mut frontier = replay_all(&train, target, forecast, opts, &opts.dials, &done, progress);
    let references = references(&train, target, opts.skip);
    let mut recommended = recommend(&frontier, &references, opts.objective);
    let finer = refinement(&frontier, recommended, opts.objective, opts.refine);
    if !finer.is_empty() {
        frontier.extend(replay_all(
            &train, target, forecast, opts, &finer, &done, progress,
        ));
        frontier.sort_by(|a, b| a.risk.total_cmp(&b.risk));
        recommended = recommend(&frontier, &references, opts.objective);
    }
    let test = recommended
        .filter(|_| train_until < end)
        .and_then(Risk::new)
        .map(|r| {
            let t = target.with_risk(r);
            let rows = backtest(trace, &t, forecast, |_| {});
            Summary::of(trace, &t, &rows, train_until - trace.start)
        });
    Ok(Tuning {
        objective: opts.objective,
        skip_seconds: opts.skip,
        train_until,
        frontier,
        references,
        recommended,
        test,
    })
}

/// `refine` dials evenly between the `recommended` one and its neighbour on the side the
/// objective forbids (the next costlier for a cost cap, the next cheaper for a loss cap):
/// the best setting lies between them.
fn refinement(
    frontier: &[Point],
    recommended: Option<f64>,
    objective: Objective,
    refine: u32,
) -> Vec<Risk> {
    let Some(r) = recommended else {
        return Vec::new();
    };
    let beyond = match objective {
        Objective::LostPct(_) => frontier.iter().rev().find(|p| p.risk < r),
        Objective::CostOfHpa | Objective::ReplicaHours(_) => frontier.iter().find(|p| p.risk > r),
    };
    let Some(b) = beyond else {
        return Vec::new();
    };
    // Rounded to a thousandth (as printed and written), each once.
    let mut dials: Vec<Risk> = (1..=refine)
        .map(|k| r + (b.risk - r) * f64::from(k) / f64::from(refine + 1))
        .map(|d| (d * 1000.0).round() / 1000.0)
        .filter(|&d| d != r && d != b.risk)
        .filter_map(Risk::new)
        .collect();
    dials.dedup();
    dials
}

/// A dial value as printed: two decimals, or three for a refined one.
pub fn label(risk: f64) -> String {
    if ((risk * 100.0).round() - risk * 100.0).abs() < 1e-6 {
        format!("{risk:.2}")
    } else {
        format!("{risk:.3}")
    }
}

/// Every one of `dials` replayed on `trace`, `opts.threads` at a time, in dial order;
/// `done` counts the steps replayed, for `progress`.
fn replay_all(
    trace: &Trace,
    target: &TargetConfig,
    forecast: &ForecastConfig,
    opts: &Options,
    dials: &[Risk],
    done: &AtomicUsize,
    progress: &(dyn Fn(usize) + Sync),
) -> Vec<Point> {
    let next = AtomicUsize::new(0);
    let points = Mutex::new(Vec::with_capacity(dials.len()));
    std::thread::scope(|s| {
        for _ in 0..opts.threads.clamp(1, dials.len().max(1)) {
            s.spawn(|| {
                while let Some(&r) = dials.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let t = target.with_risk(r);
                    let mut seen = 0;
                    let rows = backtest(trace, &t, forecast, |n| {
                        let total = done.fetch_add(n - seen, Ordering::Relaxed) + n - seen;
                        seen = n;
                        progress(total);
                    });
                    let s = score_rows(trace, &t, &rows, opts.skip);
                    let point = Point {
                        risk: r.value(),
                        score: s,
                    };
                    points.lock().unwrap_or_else(|e| e.into_inner()).push(point);
                }
            });
        }
    });
    let mut points = points.into_inner().unwrap_or_else(|e| e.into_inner());
    points.sort_by(|a, b| a.risk.total_cmp(&b.risk));
    points
}

/// `target` replayed on `trace` as configured (its own dial and any keys that override
/// it), scored from `skip` seconds on: where it sits beside the frontier.
pub fn as_configured(
    trace: &Trace,
    target: &TargetConfig,
    forecast: &ForecastConfig,
    skip: i64,
) -> Score {
    let rows = backtest(trace, target, forecast, |_| {});
    score_rows(trace, target, &rows, skip)
}

/// The rows' score from `skip` seconds on.
fn score_rows(trace: &Trace, target: &TargetConfig, rows: &[super::Row], skip: i64) -> Score {
    let asked: Vec<u32> = rows.iter().map(|r| r.replicas).collect();
    let (from, delay) = steps(trace, target, skip);
    let cap = target.capacity_rps.unwrap_or(f64::NAN);
    Score::of(trace, cap, &asked, &ready(&asked, delay), from)
}

/// The first scored step and the start-up delay, in steps.
fn steps(trace: &Trace, target: &TargetConfig, skip: i64) -> (usize, usize) {
    let step = trace.step.max(1);
    let from = ((skip.max(0) + step - 1) / step) as usize;
    let delay = (target.startup.as_secs() as i64 + step - 1) / step;
    (from, delay.max(0) as usize)
}

/// The HPA across [`HPA_FRONTIER`] and the clairvoyant scaler on `trace`.
fn references(trace: &Trace, target: &TargetConfig, skip: i64) -> References {
    let (from, delay) = steps(trace, target, skip);
    let cap = target.capacity_rps.unwrap_or(f64::NAN);
    let hpa = HPA_FRONTIER
        .iter()
        .map(|&u| {
            let asked = hpa(trace, target, u);
            (
                u,
                Score::of(trace, cap, &asked, &ready(&asked, delay), from),
            )
        })
        .collect();
    let oracle = clairvoyant(trace, target);
    References {
        hpa,
        clairvoyant: Score::of(trace, cap, &oracle, &oracle, from),
    }
}

/// The HPA at 70 %'s replica-hours, the `cost=hpa` budget.
fn hpa_cost(references: &References) -> Option<f64> {
    references
        .hpa
        .iter()
        .find(|(u, _)| (u - 0.7).abs() < 1e-9)
        .map(|(_, s)| s.replica_hours)
}

/// The dial that best meets `objective` on the frontier, if any does.
pub fn recommend(frontier: &[Point], references: &References, objective: Objective) -> Option<f64> {
    let fewest_lost_within = |cap: f64| {
        frontier
            .iter()
            .filter(|p| p.score.replica_hours <= cap)
            .min_by(|a, b| {
                (a.score.lost_pct, a.score.replica_hours)
                    .partial_cmp(&(b.score.lost_pct, b.score.replica_hours))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|p| p.risk)
    };
    match objective {
        Objective::CostOfHpa => hpa_cost(references).and_then(fewest_lost_within),
        Objective::ReplicaHours(cap) => fewest_lost_within(cap),
        Objective::LostPct(lost) => frontier
            .iter()
            .filter(|p| p.score.lost_pct <= lost)
            .min_by(|a, b| a.score.replica_hours.total_cmp(&b.score.replica_hours))
            .map(|p| p.risk),
    }
}

impl Tuning {
    /// Why no dial meets the objective: the nearest point of the frontier against what
    /// was asked for.
    pub fn unmet(&self) -> String {
        let o = self.objective;
        let cheapest = self.frontier.first().map(|p| p.score);
        let safest = self.frontier.last().map(|p| p.score);
        let why = match (o, cheapest, safest) {
            (Objective::LostPct(want), _, Some(s)) => format!(
                "the safest point of the dial loses {:.3} % of requests, more than {want} %",
                s.lost_pct
            ),
            (Objective::CostOfHpa, Some(c), _) => format!(
                "the leanest point of the dial takes {:.1} replica-hours, more than the HPA at 70 %'s {:.1}",
                c.replica_hours,
                hpa_cost(&self.references).unwrap_or(f64::NAN)
            ),
            (Objective::ReplicaHours(cap), Some(c), _) => format!(
                "the leanest point of the dial takes {:.1} replica-hours, more than {cap}",
                c.replica_hours
            ),
            _ => "nothing was replayed".to_owned(),
        };
        format!("no point of the dial meets {o} on the training history: {why}")
    }

    /// The frontier, the references and the recommendation, as a table for people.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = format!("{:<14} {:>8} {:>12}\n", "scaler", "lost%", "replica-h");
        for p in &self.frontier {
            let mark = if Some(p.risk) == self.recommended {
                " <"
            } else {
                ""
            };
            let name = format!("risk {}", label(p.risk));
            let _ = writeln!(
                s,
                "{name:<14} {:>8.3} {:>12.1}{mark}",
                p.score.lost_pct, p.score.replica_hours
            );
        }
        for (u, h) in &self.references.hpa {
            let _ = writeln!(
                s,
                "{:<14} {:>8.3} {:>12.1}",
                format!("hpa@{u}"),
                h.lost_pct,
                h.replica_hours
            );
        }
        let c = &self.references.clairvoyant;
        let _ = writeln!(
            s,
            "{:<14} {:>8.3} {:>12.1}",
            "clairvoyant", c.lost_pct, c.replica_hours
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn score(lost_pct: f64, replica_hours: f64) -> Score {
        Score {
            lost_pct,
            under_provisioned_pct: 0.0,
            replica_hours,
            scale_changes: 0,
        }
    }

    #[test]
    fn objectives_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!("cost=hpa".parse(), Ok(Objective::CostOfHpa));
        assert_eq!("lost=0.1%".parse(), Ok(Objective::LostPct(0.1)));
        assert_eq!("lost = 0.5".parse(), Ok(Objective::LostPct(0.5)));
        assert_eq!("cost=1200".parse(), Ok(Objective::ReplicaHours(1200.0)));
        for bad in ["cheap", "cost=", "lost=-1%", "speed=9"] {
            let e = bad.parse::<Objective>().expect_err(bad);
            assert!(e.contains("cost=hpa") && e.contains(bad), "{e}");
        }
        // A loss cap every setting meets chooses nothing.
        for bad in ["lost=100%", "lost=150%"] {
            let e = bad.parse::<Objective>().expect_err(bad);
            assert!(e.contains("under 100%") && e.contains(&bad[5..]), "{e}");
        }
    }

    /// What cannot be scored is refused before anything is replayed: a warm-up longer than
    /// the trace, a trace of three rows, a loss cap of 100 % or more.
    #[test]
    fn what_cannot_be_scored_is_refused() {
        let trace = |rows: usize| Trace {
            start: 1_000_020,
            step: 60,
            counts: vec![600.0; rows],
            ..Trace::default()
        };
        let target = TargetConfig::example("t", 1.0, Duration::from_secs(300));
        let opts = |skip: i64, objective: Objective| Options {
            dials: dial(4),
            train_until: None,
            skip,
            objective,
            threads: 1,
            refine: 0,
            min_scored: MIN_SCORED,
        };
        let refused = |t: &Trace, o: &Options| {
            let replayed = AtomicUsize::new(0);
            let r = tune(t, &target, &ForecastConfig::default(), o, &|n| {
                replayed.store(n, Ordering::Relaxed);
            });
            assert_eq!(replayed.load(Ordering::Relaxed), 0, "nothing replayed");
            r.expect_err("refused").to_string()
        };
        let two_days = trace(2 * 1440);
        let e = refused(&two_days, &opts(3 * 86_400, Objective::CostOfHpa));
        assert!(
            e.contains("-86400 s of the trace would be scored") && e.contains("--skip"),
            "{e}"
        );
        let e = refused(&trace(3), &opts(0, Objective::CostOfHpa));
        assert!(e.contains("180 s of the trace would be scored"), "{e}");
        let e = refused(&two_days, &opts(0, Objective::LostPct(150.0)));
        assert!(e.contains("lost=150%") && e.contains("under 100%"), "{e}");
    }

    #[test]
    fn recommends_per_objective() {
        let frontier: Vec<Point> = [(0.0, 2.0, 100.0), (0.5, 0.5, 130.0), (1.0, 0.1, 180.0)]
            .into_iter()
            .map(|(risk, lost, cost)| Point {
                risk,
                score: score(lost, cost),
            })
            .collect();
        let refs = References {
            hpa: vec![(0.7, score(1.0, 140.0))],
            clairvoyant: score(0.0, 90.0),
        };
        let pick = |o| recommend(&frontier, &refs, o);
        assert_eq!(pick(Objective::CostOfHpa), Some(0.5));
        assert_eq!(pick(Objective::LostPct(0.5)), Some(0.5));
        assert_eq!(pick(Objective::LostPct(0.2)), Some(1.0));
        assert_eq!(pick(Objective::LostPct(0.01)), None);
        assert_eq!(pick(Objective::ReplicaHours(100.0)), Some(0.0));
        assert_eq!(pick(Objective::ReplicaHours(50.0)), None);
        // Refinement looks past the recommendation, towards what the objective forbids.
        let near = |v: Vec<Risk>, want: &[f64]| {
            v.len() == want.len()
                && v.iter()
                    .zip(want)
                    .all(|(r, w)| (r.value() - w).abs() < 1e-9)
        };
        let cost = refinement(&frontier, Some(0.5), Objective::CostOfHpa, 4);
        assert!(near(cost, &[0.6, 0.7, 0.8, 0.9]));
        let lost = refinement(&frontier, Some(0.5), Objective::LostPct(0.5), 1);
        assert!(near(lost, &[0.25]));
        assert!(refinement(&frontier, Some(1.0), Objective::CostOfHpa, 4).is_empty());
        assert!(refinement(&frontier, None, Objective::CostOfHpa, 4).is_empty());
        assert!(refinement(&frontier, Some(0.5), Objective::CostOfHpa, 0).is_empty());
        // Three decimals at most, each once, none already replayed.
        let fine = refinement(&frontier, Some(0.5), Objective::CostOfHpa, 2000);
        assert_eq!(fine.len(), 499);
        assert_eq!(
            (label(0.15), label(0.175), label(1.0)),
            ("0.15".into(), "0.175".into(), "1.00".into())
        );
    }

    /// A week of a daily cycle with noise: replays across the dial cost more and lose less
    /// as it grows, and the test stretch is scored after `train_until` only.
    #[test]
    fn the_dial_trades_cost_for_lost_requests() {
        let n = 5 * 1440;
        let counts = (0..n)
            .map(|i| {
                let day = (i % 1440) as f64 / 1440.0 * std::f64::consts::TAU;
                600.0 + 400.0 * day.sin() + f64::from((i * 7919 % 97) as u32) * 2.0
            })
            .collect();
        let trace = Trace {
            start: 1_000_020,
            step: 60,
            counts,
            ..Trace::default()
        };
        let target = TargetConfig::example("t", 1.0, Duration::from_secs(300));
        let opts = Options {
            dials: vec![
                Risk::new(0.0).unwrap(),
                Risk::BALANCED,
                Risk::new(1.0).unwrap(),
            ],
            train_until: Some(trace.timestamp(4 * 1440)),
            skip: 2 * 86_400,
            objective: Objective::CostOfHpa,
            threads: 2,
            refine: 0,
            min_scored: MIN_SCORED,
        };
        let t = tune(&trace, &target, &ForecastConfig::default(), &opts, &|_| {})
            .expect("two days scored");
        let f = &t.frontier;
        assert_eq!(
            f.iter().map(|p| p.risk).collect::<Vec<_>>(),
            [0.0, 0.5, 1.0]
        );
        for w in f.windows(2) {
            assert!(w[1].score.replica_hours > w[0].score.replica_hours, "{f:?}");
            assert!(w[1].score.lost_pct <= w[0].score.lost_pct, "{f:?}");
        }
        assert_eq!(t.references.hpa.len(), HPA_FRONTIER.len());
        let test = t.test.expect("a stretch after train_until");
        assert_eq!(test.skip_seconds, 4 * 86_400);
        // One day scored (not the training days): near the clairvoyant scaler's cost.
        let (ours, oracle) = (test.prescale.replica_hours, test.clairvoyant.replica_hours);
        assert!(
            (0.8 * oracle..3.0 * oracle).contains(&ours),
            "{ours} vs {oracle}"
        );
        // About 11 rps at 1 rps per replica: a day is 120 to 480 replica-hours.
        assert!((120.0..480.0).contains(&oracle), "{oracle}");
    }
}
