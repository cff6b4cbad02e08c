//! A replayed CSV trace behind the [`Source`](super::Source) interface, for backtests and the demo.
//!
//! The trace format is the one in `shared/traces`: a header `timestamp_seconds,value`, one
//! row per bucket, the value being the number of requests in the bucket that starts at the
//! timestamp. Missing rows are gaps, never zeros. Two optional columns, found by their
//! header, carry the other signals of a target: `latency` (seconds, e.g. the p95 over the
//! bucket) and `replicas` (the count running in the bucket); an empty cell is a gap.

use std::path::{Path, PathBuf};

use super::{InMemory, SourceError};
use crate::series::Sample;

/// The most buckets a trace may span (first to last row): 80 MB a column, about 19 years
/// at one minute. More is refused before anything is allocated.
pub const MAX_BUCKETS: usize = 10_000_000;

/// Timestamps beyond ±10¹² s (about 31,700 years) are refused: no arithmetic on them
/// can then overflow.
const MAX_TIMESTAMP: f64 = 1e12;

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be opened or read.
    #[error("{file}: {message}")]
    Read {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A row is malformed.
    #[error(
        "{file}:{line}: {message}; expected `timestamp_seconds,value[,latency][,replicas]` with numbers"
    )]
    Row {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The trace cannot be put on a regular grid.
    #[error("{file}: {message}")]
    Shape {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A trace on a regular grid: `counts[i]` requests in the bucket `[start + i·step, +step)`;
/// `NaN` where the trace has no row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Trace {
    /// Start of the first bucket, Unix s.
    pub start: i64,
    /// Bucket length, seconds.
    pub step: i64,
    /// Requests per bucket; `NaN` for a missing bucket.
    pub counts: Vec<f64>,
    /// Latency per bucket, seconds (`NaN`: none), when the trace has a `latency` column.
    pub latency: Option<Vec<f64>>,
    /// Replicas running per bucket (`NaN`: none), when the trace has a `replicas` column.
    pub replicas: Option<Vec<f64>>,
}

/// One row of a trace file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRow {
    /// Start of the bucket, Unix s.
    pub ts: i64,
    /// Requests in the bucket.
    pub value: f64,
    /// Latency over the bucket, seconds.
    pub latency: Option<f64>,
    /// Replicas running in the bucket.
    pub replicas: Option<f64>,
}

/// Where the optional columns are in a trace file's header.
#[derive(Debug, Clone, Copy, Default)]
struct Columns {
    latency: Option<usize>,
    replicas: Option<usize>,
}

impl Trace {
    /// Reads a trace file.
    pub fn load(path: &Path) -> Result<Self, TraceError> {
        let data = std::fs::File::open(path).map_err(|e| TraceError::Read {
            file: path.to_owned(),
            message: e.to_string(),
        })?;
        Self::read(data, path)
    }

    /// Reads a trace from `data`; `path` names it in errors.
    pub fn read(mut data: impl std::io::Read, path: &Path) -> Result<Self, TraceError> {
        let file = || path.to_owned();
        // Held whole, so that an error can name the line it is on.
        let mut text = Vec::new();
        data.read_to_end(&mut text).map_err(|e| TraceError::Read {
            file: file(),
            message: e.to_string(),
        })?;
        let mut reader = csv::Reader::from_reader(text.as_slice());
        let header = reader.headers().map_err(|e| TraceError::Read {
            file: file(),
            message: e.to_string(),
        })?;
        let find = |name: &str| header.iter().position(|h| h.trim() == name);
        let columns = Columns {
            latency: find("latency"),
            replicas: find("replicas"),
        };
        let mut rows: Vec<TraceRow> = Vec::new();
        for (k, record) in reader.records().enumerate() {
            let byte = match &record {
                Ok(r) => r.position(),
                Err(e) => e.position(),
            }
            .map(csv::Position::byte);
            // Counted only for an error: counting for every row is quadratic.
            let row_error = |message: String| TraceError::Row {
                file: file(),
                line: byte.map_or(k as u64 + 2, |b| line_at(&text, b)),
                message,
            };
            let record = record.map_err(|e| row_error(e.to_string()))?;
            let row = parse_row(&record, columns).map_err(row_error)?;
            if let Some(prev) = rows.last()
                && row.ts <= prev.ts
            {
                return Err(row_error(format!(
                    "timestamp {} is not after {}; expected sorted rows",
                    row.ts, prev.ts
                )));
            }
            rows.push(row);
        }
        Self::from_trace_rows(&rows, columns.latency.is_some(), columns.replicas.is_some()).map_err(
            |message| TraceError::Shape {
                file: file(),
                message,
            },
        )
    }

    /// Puts sorted `(timestamp, count)` rows on a grid whose step is the most common gap.
    pub fn from_rows(rows: &[(i64, f64)]) -> Result<Self, String> {
        let rows: Vec<TraceRow> = rows
            .iter()
            .map(|&(ts, value)| TraceRow {
                ts,
                value,
                latency: None,
                replicas: None,
            })
            .collect();
        Self::from_trace_rows(&rows, false, false)
    }

    /// Puts sorted rows on a grid whose step is the most common gap, keeping the latency
    /// and replicas columns when `latency`/`replicas` say the trace has them.
    pub fn from_trace_rows(
        rows: &[TraceRow],
        latency: bool,
        replicas: bool,
    ) -> Result<Self, String> {
        if rows.len() < 2 {
            return Err(format!("{} row(s); expected at least two", rows.len()));
        }
        let mut gaps: Vec<i64> = rows
            .windows(2)
            .take(1000)
            .map(|w| w[1].ts.saturating_sub(w[0].ts))
            .collect();
        gaps.sort_unstable();
        // The most common gap (the smaller on a tie): missing rows only make gaps longer.
        let step = gaps
            .chunk_by(|a, b| a == b)
            .max_by(|a, b| a.len().cmp(&b.len()).then(b[0].cmp(&a[0])))
            .map_or(1, |run| run[0]);
        if step < 1 {
            return Err("rows are not sorted by timestamp".to_owned());
        }
        let start = rows[0].ts;
        let n = buckets(start, rows[rows.len() - 1].ts, step)?;
        let mut trace = Self {
            start,
            step,
            counts: vec![f64::NAN; n],
            latency: latency.then(|| vec![f64::NAN; n]),
            replicas: replicas.then(|| vec![f64::NAN; n]),
        };
        for r in rows {
            if (r.ts - start) % step != 0 {
                return Err(format!(
                    "timestamp {} is off the {step}s grid starting at {start}",
                    r.ts
                ));
            }
            let i = ((r.ts - start) / step) as usize;
            trace.counts[i] = r.value;
            let set = |col: &mut Option<Vec<f64>>, v: Option<f64>| {
                if let (Some(c), Some(v)) = (col.as_mut(), v) {
                    c[i] = v;
                }
            };
            set(&mut trace.latency, r.latency);
            set(&mut trace.replicas, r.replicas);
        }
        Ok(trace)
    }

    /// Start of bucket `i`.
    pub fn timestamp(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }

    /// Requests/s in bucket `i` (`NaN` when missing).
    pub fn rps(&self, i: usize) -> f64 {
        self.counts[i] / self.step as f64
    }

    /// The mean request rate over the buckets that are not missing, requests/s; `None`
    /// when every bucket is missing.
    pub fn mean_rps(&self) -> Option<f64> {
        let (sum, n) = (self.counts.iter())
            .filter(|v| v.is_finite())
            .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        (n > 0).then(|| sum / n as f64 / self.step as f64)
    }

    /// Latency in bucket `i`, seconds (`NaN` when missing or not in the trace).
    pub fn latency(&self, i: usize) -> f64 {
        self.latency.as_ref().map_or(f64::NAN, |c| c[i])
    }

    /// Replicas running in bucket `i` (`NaN` when missing or not in the trace).
    pub fn replicas(&self, i: usize) -> f64 {
        self.replicas.as_ref().map_or(f64::NAN, |c| c[i])
    }

    /// The first `n` buckets as a trace.
    pub fn truncated(&self, n: usize) -> Self {
        let n = n.min(self.counts.len());
        Self {
            start: self.start,
            step: self.step,
            counts: self.counts[..n].to_vec(),
            latency: self.latency.as_ref().map(|c| c[..n].to_vec()),
            replicas: self.replicas.as_ref().map(|c| c[..n].to_vec()),
        }
    }
}

/// The line (from 1) of the record the reader started at `byte`: the blank lines it skips
/// and every line break before it counted (`\n`, `\r\n` or a lone `\r`, as the reader).
fn line_at(text: &[u8], byte: u64) -> u64 {
    let byte = usize::try_from(byte).unwrap_or(usize::MAX).min(text.len());
    let blank = text[byte..]
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let before = &text[..byte + blank];
    let breaks = before
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && before.get(i + 1) != Some(&b'\n')))
        .count();
    breaks as u64 + 1
}

/// How many buckets of `step` seconds span `first` to `last`, both included; an error
/// beyond [`MAX_BUCKETS`].
fn buckets(first: i64, last: i64, step: i64) -> Result<usize, String> {
    let n = (i128::from(last) - i128::from(first)) / i128::from(step) + 1;
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= MAX_BUCKETS)
        .ok_or_else(|| {
            format!(
                "the rows from {first} to {last} span {n} buckets of {step}s; expected at most {MAX_BUCKETS}"
            )
        })
}

/// One CSV record as a row: timestamp and count in the first two fields, the optional
/// columns where the header put them (an empty cell is a gap).
fn parse_row(record: &csv::StringRecord, columns: Columns) -> Result<TraceRow, String> {
    let field = |i: usize| record.get(i).map(str::trim).unwrap_or("");
    let ts: f64 = field(0)
        .parse()
        .map_err(|_| format!("bad timestamp `{}`", field(0)))?;
    let value: f64 = field(1)
        .parse()
        .map_err(|_| format!("bad value `{}`", field(1)))?;
    if !ts.is_finite() || !value.is_finite() || value < 0.0 {
        return Err("non-finite or negative number".into());
    }
    if ts.abs() > MAX_TIMESTAMP {
        return Err(format!(
            "timestamp `{}` is out of range; expected Unix seconds within ±10^12",
            field(0)
        ));
    }
    let optional = |col: Option<usize>, name: &str| -> Result<Option<f64>, String> {
        let Some(i) = col else { return Ok(None) };
        let text = field(i);
        if text.is_empty() {
            return Ok(None);
        }
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
            _ => Err(format!(
                "bad {name} `{text}`: expected a number ≥ 0 or an empty cell"
            )),
        }
    };
    Ok(TraceRow {
        ts: ts as i64,
        value,
        latency: optional(columns.latency, "latency")?,
        replicas: optional(columns.replicas, "replicas")?,
    })
}

/// A [`Source`](super::Source) that answers every query with the trace's request rate, its timestamps moved
/// by `offset` seconds. As with a Prometheus rate, the sample at `t` is the rate over the
/// bucket that ended at `t`, so a bucket is visible only once it has ended.
#[derive(Debug, Clone)]
pub struct ReplaySource {
    trace: Trace,
    offset: i64,
}

impl ReplaySource {
    /// Replays `trace` with timestamps moved by `offset` seconds.
    pub fn new(trace: Trace, offset: i64) -> Self {
        Self { trace, offset }
    }

    /// The samples in `[start, end]` at `step` (a multiple of the trace step; buckets are
    /// averaged), without gaps.
    pub fn samples(&self, start: i64, end: i64, step: i64) -> Result<Vec<Sample>, String> {
        let ts = self.trace.step;
        if step <= 0 || step % ts != 0 {
            return Err(format!(
                "step {step}s is not a multiple of the trace's {ts}s"
            ));
        }
        let per = (step / ts) as usize;
        let first_end = self.trace.start + self.offset + ts;
        let mut out = Vec::new();
        // Sample times are multiples of `step`; each averages the `per` buckets ending there.
        let mut t = crate::series::align_down(start.max(first_end), step);
        if t < start.max(first_end) {
            t += step;
        }
        while t <= end {
            let last = (t - first_end) / ts; // index of the bucket ending at t
            if last >= self.trace.counts.len() as i64 {
                break;
            }
            if last + 1 >= per as i64 {
                let lo = (last + 1) as usize - per;
                let window = &self.trace.counts[lo..=last as usize];
                if window.iter().all(|v| v.is_finite()) {
                    let mean = window.iter().sum::<f64>() / per as f64 / ts as f64;
                    out.push(Sample { ts: t, value: mean });
                }
            }
            t += step;
        }
        Ok(out)
    }
}

impl InMemory for ReplaySource {
    fn instance(&self) -> &'static str {
        "replay"
    }

    fn answer(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<Vec<Sample>, SourceError> {
        let samples = self
            .samples(start, end, step)
            .map_err(|message| SourceError::Decode {
                query: query.to_owned(),
                message,
            })?;
        if samples.is_empty() {
            return Err(SourceError::Empty {
                query: query.to_owned(),
            });
        }
        Ok(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_on_a_grid_with_gaps() {
        let t = Trace::from_rows(&[(0, 60.0), (60, 120.0), (180, 30.0)]).unwrap();
        assert_eq!((t.start, t.step, t.counts.len()), (0, 60, 4));
        assert!(t.counts[2].is_nan());
        assert_eq!(t.rps(1), 2.0);
        // (1 + 2 + 0.5) rps / 3 buckets with data; the gap is not a zero.
        assert_eq!(t.mean_rps(), Some(3.5 / 3.0));
        let empty = Trace {
            counts: vec![f64::NAN; 3],
            step: 60,
            ..Trace::default()
        };
        assert_eq!(empty.mean_rps(), None);
    }

    #[test]
    fn bad_traces_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let check = |body: &str, want: &str| {
            let p = dir.path().join("t.csv");
            std::fs::write(&p, body).unwrap();
            let e = Trace::load(&p).unwrap_err().to_string();
            assert!(e.contains("t.csv") && e.contains(want), "{e}");
        };
        check("timestamp_seconds,value\n0,1\n60,x\n", ":3: bad value `x`");
        check("timestamp_seconds,value\n60,1\n0,1\n", "not after");
        check("timestamp_seconds,value\n0,1\n", "at least two");
        check(
            "timestamp_seconds,value\n0,1\n60,2\n120,2\n150,1\n",
            "off the 60s grid",
        );
    }

    #[test]
    fn replay_shows_a_bucket_once_it_has_ended() {
        let t = Trace::from_rows(&[(0, 60.0), (60, 120.0), (120, f64::NAN), (180, 240.0)]).unwrap();
        let src = ReplaySource::new(t, 1020);
        let s = src.samples(0, 1260, 60).unwrap();
        let got: Vec<(i64, f64)> = s.iter().map(|s| (s.ts, s.value)).collect();
        // Bucket [1020,1080) ends at 1080; the missing bucket leaves a gap at 1200.
        assert_eq!(got, [(1080, 1.0), (1140, 2.0), (1260, 4.0)]);
        let whole = Trace::from_rows(&[(0, 60.0), (60, 120.0), (120, 180.0)]).unwrap();
        let coarse = ReplaySource::new(whole, 0).samples(0, 1000, 120).unwrap();
        assert_eq!(
            coarse,
            [Sample {
                ts: 120,
                value: 1.5
            }]
        );
        let s = src.samples(1100, 1150, 60).unwrap();
        assert_eq!(s.len(), 1);
        assert!(src.samples(0, 2000, 90).is_err());
    }
}

#[cfg(test)]
mod proptests;
