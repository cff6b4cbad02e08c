//! Where series come from: a Prometheus server over HTTP ([`prometheus`]) or a replayed CSV
//! trace ([`replay`]), behind one [`Source`] trait.
//!
//! A source answers range queries on a step grid. It never invents data: a query that
//! matches nothing is [`SourceError::Empty`], not a series of zeros, and non-finite samples
//! (NaN, ±Inf) are dropped, leaving gaps that the forecasters fill.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use crate::series::Sample;

pub mod prometheus;
pub mod replay;

/// A boxed future, so that [`Source`] can be held as `Arc<dyn Source>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Series grouped by the value of one label (e.g. `instance`).
pub type Grouped = BTreeMap<String, Vec<Sample>>;

/// A series' labels, by name.
pub type Labels = BTreeMap<String, String>;

/// A provider of step-aligned series.
pub trait Source: Send + Sync {
    /// The one series `query` gives over `[start, end]` (Unix seconds, inclusive) at `step`
    /// seconds, and what was dropped at the door to give it. Samples are step-aligned,
    /// sorted and finite. More than one series is an error; none is [`SourceError::Empty`].
    fn range_checked<'a>(
        &'a self,
        query: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> BoxFuture<'a, Result<Checked<Vec<Sample>>, SourceError>>;

    /// The series `query` gives, keyed by the value of `label` (e.g. per `instance`), and
    /// what was dropped at the door. A series without that label is an error; no series is
    /// [`SourceError::Empty`].
    fn range_by_checked<'a>(
        &'a self,
        query: &'a str,
        label: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> BoxFuture<'a, Result<Checked<Grouped>, SourceError>>;

    /// [`Source::range_checked`] for older history, loaded after the recent hours: a
    /// source with a limit on its requests in flight lets it wait behind polls (see
    /// [`Priority`]). The range is asked as one request when it spans at most
    /// [`prometheus::MAX_POINTS_PER_REQUEST`] steps.
    fn history_checked<'a>(
        &'a self,
        query: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> BoxFuture<'a, Result<Checked<Vec<Sample>>, SourceError>> {
        self.range_checked(query, start, end, step)
    }

    /// The label sets of the series `query` gives now (an instant query): the services a
    /// `[[discovery]]` finds. No series is an empty list, not an error. Sources that answer
    /// range queries only (replayed traces) refuse it with [`SourceError::Unsupported`].
    fn label_sets<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Vec<Labels>, SourceError>> {
        Box::pin(async move {
            Err(SourceError::Unsupported {
                query: query.to_owned(),
            })
        })
    }

    /// [`Source::range_checked`]'s series alone.
    fn range<'a>(
        &'a self,
        query: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> BoxFuture<'a, Result<Vec<Sample>, SourceError>> {
        let checked = self.range_checked(query, start, end, step);
        Box::pin(async move { checked.await.map(|c| c.value) })
    }

    /// [`Source::range_by_checked`]'s series alone.
    fn range_by<'a>(
        &'a self,
        query: &'a str,
        label: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> BoxFuture<'a, Result<Grouped, SourceError>> {
        let checked = self.range_by_checked(query, label, start, end, step);
        Box::pin(async move { checked.await.map(|c| c.value) })
    }
}

/// Whose request it is, when a source limits its requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A poll, the recent hours of a backfill, or a discovery: what a decision waits for.
    Poll,
    /// Older history, loaded while the targets already decide: it takes at most half
    /// the slots.
    History,
}

/// What a query gave, with the samples dropped at the door to give it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked<T> {
    /// The series.
    pub value: T,
    /// What was dropped, and why.
    pub dropped: Dropped,
}

/// A source that answers from memory without waiting (a replayed trace, the demo's
/// workload). Every such type is a [`Source`]: a grouped query answers its one series
/// under [`InMemory::instance`].
pub trait InMemory: Send + Sync {
    /// The series for `query` over `[start, end]` at `step`, as [`Source::range`].
    fn answer(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<Sample>, SourceError>;

    /// The instance name a grouped query gives its one series.
    fn instance(&self) -> &'static str;
}

impl<T: InMemory> Source for T {
    fn range_checked<'a>(
        &'a self,
        query: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> BoxFuture<'a, Result<Checked<Vec<Sample>>, SourceError>> {
        Box::pin(async move {
            let value = self.answer(query, start, end, step)?;
            Ok(Checked {
                value,
                dropped: Dropped::default(),
            })
        })
    }

    fn range_by_checked<'a>(
        &'a self,
        query: &'a str,
        _label: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> BoxFuture<'a, Result<Checked<Grouped>, SourceError>> {
        Box::pin(async move {
            let series = self.answer(query, start, end, step)?;
            Ok(Checked {
                value: Grouped::from([(self.instance().to_owned(), series)]),
                dropped: Dropped::default(),
            })
        })
    }
}

/// Why a query gave no usable series. Every variant names the query.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The query matched no series in the range.
    #[error("query `{query}` matched no series")]
    Empty {
        /// The query.
        query: String,
    },
    /// One series was expected, several came back.
    #[error(
        "query `{query}` returned {count} series; expected exactly one (aggregate it, e.g. with sum())"
    )]
    ManySeries {
        /// The query.
        query: String,
        /// How many series.
        count: usize,
    },
    /// A series lacked the label to group by.
    #[error(
        "query `{query}` returned a series without the label `{label}`; expected every series to carry it"
    )]
    MissingLabel {
        /// The query.
        query: String,
        /// The label.
        label: String,
    },
    /// Prometheus answered `status: "error"`; its message is passed on.
    #[error("Prometheus refused query `{query}`: {error_type}: {message}")]
    Prometheus {
        /// The query.
        query: String,
        /// Prometheus' `errorType` (e.g. `bad_data`, `timeout`).
        error_type: String,
        /// Prometheus' `error` message.
        message: String,
    },
    /// A non-success HTTP status without a Prometheus error body.
    #[error("query `{query}`: HTTP {status} from {url}: {body}")]
    Http {
        /// The query.
        query: String,
        /// The URL asked.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The request timed out.
    #[error("query `{query}`: no answer from {url} within {timeout_ms} ms")]
    Timeout {
        /// The query.
        query: String,
        /// The URL asked.
        url: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The server could not be reached (refused, reset, DNS).
    #[error("query `{query}`: cannot reach {url}: {message}")]
    Unreachable {
        /// The query.
        query: String,
        /// The URL asked.
        url: String,
        /// The transport error.
        message: String,
    },
    /// The answer was not the expected JSON.
    #[error("query `{query}`: unreadable answer: {message}")]
    Decode {
        /// The query.
        query: String,
        /// What was wrong.
        message: String,
    },
    /// The answer was larger than `[prometheus] max_answer_bytes`.
    #[error(
        "query `{query}`: the answer from {url} is larger than {limit} bytes; narrow the query or raise [prometheus] max_answer_bytes"
    )]
    TooLarge {
        /// The query.
        query: String,
        /// The URL asked.
        url: String,
        /// The limit, bytes.
        limit: usize,
    },
    /// The source cannot answer this kind of query (an instant query of a replayed trace).
    #[error("query `{query}`: this source answers range queries only; discovery needs Prometheus")]
    Unsupported {
        /// The query.
        query: String,
    },
    /// Series came back, but every sample was dropped at the door.
    #[error(
        "query `{query}` returned no usable sample: {} (non-finite, negative, and outside the range asked for are dropped)",
        .dropped
    )]
    Unusable {
        /// The query.
        query: String,
        /// What was dropped, and why.
        dropped: Dropped,
    },
}

/// Samples dropped at the door, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// `NaN` or infinite values.
    pub non_finite: usize,
    /// Negative values (no signal prescale reads can be negative).
    pub negative: usize,
    /// Timestamps outside the range asked for (beyond one step of tolerance).
    pub out_of_range: usize,
}

/// Why a sample was dropped at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// `NaN` or infinite.
    NonFinite,
    /// Negative.
    Negative,
    /// Its timestamp outside the range asked for.
    OutOfRange,
}

impl DropReason {
    /// The name, as in the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NonFinite => "non_finite",
            Self::Negative => "negative",
            Self::OutOfRange => "out_of_range",
        }
    }
}

impl Dropped {
    /// The counts by reason.
    pub fn by_reason(&self) -> [(DropReason, usize); 3] {
        [
            (DropReason::NonFinite, self.non_finite),
            (DropReason::Negative, self.negative),
            (DropReason::OutOfRange, self.out_of_range),
        ]
    }

    /// Samples dropped in all.
    pub fn total(&self) -> usize {
        self.non_finite + self.negative + self.out_of_range
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: Dropped) {
        self.non_finite += other.non_finite;
        self.negative += other.negative;
        self.out_of_range += other.out_of_range;
    }
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} non-finite, {} negative, {} outside the range asked for",
            self.non_finite, self.negative, self.out_of_range
        )
    }
}

/// Keeps the samples that may be used: finite, not negative, and stamped within
/// `[start − step, end + step]`; counts the others. A misbehaving source can then neither
/// turn a gap into negative demand nor stretch a series a year into the future.
pub fn admit(samples: Vec<Sample>, start: i64, end: i64, step: i64) -> (Vec<Sample>, Dropped) {
    let step = step.max(1);
    let (lo, hi) = (start.saturating_sub(step), end.saturating_add(step));
    let mut dropped = Dropped::default();
    let kept = samples
        .into_iter()
        .filter(|s| {
            let why = if !s.value.is_finite() {
                &mut dropped.non_finite
            } else if s.value < 0.0 {
                &mut dropped.negative
            } else if s.ts < lo || s.ts > hi {
                &mut dropped.out_of_range
            } else {
                return true;
            };
            *why += 1;
            false
        })
        .collect();
    (kept, dropped)
}

impl SourceError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Empty { .. } => "empty",
            Self::ManySeries { .. } => "many_series",
            Self::MissingLabel { .. } => "missing_label",
            Self::Prometheus { .. } => "prometheus_error",
            Self::Http { .. } => "http",
            Self::Timeout { .. } => "timeout",
            Self::Unreachable { .. } => "unreachable",
            Self::Decode { .. } => "decode",
            Self::Unusable { .. } => "unusable",
            Self::TooLarge { .. } => "too_large",
            Self::Unsupported { .. } => "unsupported",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_keeps_finite_non_negative_samples_within_a_step_of_the_range() {
        let s = |ts, value| Sample { ts, value };
        let (kept, dropped) = admit(
            vec![
                s(-120, 1.0),
                s(-60, 1.0),
                s(0, f64::NAN),
                s(60, -1.0),
                s(120, 0.0),
                s(660, 2.0),
                s(720, 3.0),
                s(i64::MAX, 4.0),
            ],
            0,
            600,
            60,
        );
        assert_eq!(kept, [s(-60, 1.0), s(120, 0.0), s(660, 2.0)]);
        let want = Dropped {
            non_finite: 1,
            negative: 1,
            out_of_range: 3,
        };
        assert_eq!(dropped, want);
        assert_eq!(dropped.total(), 5);
        let (kept, _) = admit(vec![s(i64::MIN, 1.0)], i64::MIN, i64::MAX, i64::MAX);
        assert_eq!(kept.len(), 1, "no overflow at the edges");
    }
}
