//! The NASA HTTP July 1995 trace and its last days as a Prometheus counter, written as an
//! OpenMetrics file for `promtool` to backfill a TSDB with.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::process::now_secs;

/// The counter the backfill and the exporter write: `http_requests_total{job="web",instance="trace"}`.
pub const COUNTER: &str = "http_requests_total";
/// The request rate as the shipped configuration asks for it.
pub const RATE_QUERY: &str = r#"sum(rate(http_requests_total{job="web"}[5m]))"#;

/// The NASA HTTP July 1995 trace: `timestamp_seconds,value`, requests per 60 s bucket.
pub fn trace_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/traces/nasa_http_jul95_1min.csv")
}

/// The rows of a `timestamp_seconds,value` trace.
pub fn read_trace(path: &Path) -> Vec<(i64, f64)> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read trace {}: {e}", path.display()));
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (ts, v) = l
                .split_once(',')
                .unwrap_or_else(|| panic!("{}: bad row `{l}`", path.display()));
            let ts = ts
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{}: `{l}`: {e}", path.display()));
            let v = v
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{}: `{l}`: {e}", path.display()));
            (ts, v)
        })
        .collect()
}

/// One minute of the backfilled counter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minute {
    /// The end of the minute's bucket: the counter's sample time (Unix seconds).
    pub ts: i64,
    /// Requests in the bucket (the trace value).
    pub requests: f64,
    /// The counter after the bucket: the sum of `requests` so far.
    pub total: f64,
}

/// The last days of the trace as the counter `http_requests_total{job="web",instance="trace"}`,
/// one sample a minute, shifted so that the last sample is one minute before the current
/// minute. `rate(http_requests_total[5m])` is then about the trace value / 60.
#[derive(Debug, Clone)]
pub struct Backfill {
    minutes: Vec<Minute>,
    gap: Option<Range<i64>>,
}

impl Backfill {
    /// The last `days` days of the NASA trace, ending a minute before the current minute.
    pub fn from_trace(days: u32) -> Self {
        Self::ending_at(days, (now_secs() / 60) * 60 - 60)
    }

    /// The last `days` days of the NASA trace, the last sample at `end` (a multiple of 60).
    pub fn ending_at(days: u32, end: i64) -> Self {
        assert!(end % 60 == 0, "end {end} is not on the minute");
        let trace = read_trace(&trace_path());
        let last = trace.last().map(|r| r.0).expect("the trace is empty");
        // The trace's timestamps are bucket starts; a sample is stamped at its bucket's end.
        let shift = end - (last + 60);
        let since = last + 60 - i64::from(days) * 86_400;
        let mut total = 0.0;
        let minutes = trace
            .into_iter()
            .filter(|(ts, _)| *ts >= since)
            .map(|(ts, requests)| {
                total += requests;
                Minute {
                    ts: ts + 60 + shift,
                    requests,
                    total,
                }
            })
            .collect();
        Self { minutes, gap: None }
    }

    /// Leaves out the samples stamped in `[end − minutes.end min, end − minutes.start min)`,
    /// `end` being the last sample (which stays): a scrape outage. The counter keeps
    /// counting across it, as a real one would.
    pub fn with_gap(mut self, minutes: Range<u32>) -> Self {
        assert!(
            minutes.start >= 1,
            "the gap must leave the last sample in place"
        );
        let end = self.end();
        self.gap = Some(end - i64::from(minutes.end) * 60..end - i64::from(minutes.start) * 60);
        self
    }

    /// Every minute, those in the gap included.
    pub fn minutes(&self) -> &[Minute] {
        &self.minutes
    }

    /// The timestamps left out, `[start, end)`.
    pub fn gap(&self) -> Option<Range<i64>> {
        self.gap.clone()
    }

    /// Whether the sample at `ts` is written (it exists and is not in the gap).
    pub fn has_sample(&self, ts: i64) -> bool {
        self.minute(ts).is_some() && !self.gap.as_ref().is_some_and(|g| g.contains(&ts))
    }

    /// The minute whose sample is at `ts`.
    pub fn minute(&self, ts: i64) -> Option<Minute> {
        let first = self.start();
        if ts < first || (ts - first) % 60 != 0 {
            return None;
        }
        self.minutes.get(((ts - first) / 60) as usize).copied()
    }

    /// The first sample time.
    pub fn start(&self) -> i64 {
        self.minutes.first().map_or(0, |m| m.ts)
    }

    /// The last sample time.
    pub fn end(&self) -> i64 {
        self.minutes.last().map_or(0, |m| m.ts)
    }

    /// The counter at the last sample (what a live exporter should continue from).
    pub fn total(&self) -> f64 {
        self.minutes.last().map_or(0.0, |m| m.total)
    }

    /// `rate(http_requests_total[window])` at a minute `ts` when samples lie on both ends of
    /// the window: `(total(ts) - total(ts - window)) / window`.
    pub fn rate(&self, ts: i64, window: i64) -> Option<f64> {
        let now = self.minute(ts)?;
        let then = self.minute(ts - window)?;
        Some((now.total - then.total) / window as f64)
    }

    /// The samples as an OpenMetrics file for `promtool tsdb create-blocks-from openmetrics`.
    ///
    /// OpenMetrics names the counter *family* `http_requests` and its samples
    /// `http_requests_total`; the TSDB stores the sample name, so PromQL sees
    /// `http_requests_total`. Timestamps are in seconds. The file must end with `# EOF`.
    pub fn to_openmetrics(&self) -> String {
        let mut out = String::with_capacity(self.minutes.len() * 64);
        out.push_str("# HELP http_requests Requests served, replayed from a trace.\n");
        out.push_str("# TYPE http_requests counter\n");
        for m in self.minutes.iter().filter(|m| self.has_sample(m.ts)) {
            let _ = writeln!(
                out,
                "{COUNTER}{{job=\"web\",instance=\"trace\"}} {} {}",
                m.total, m.ts
            );
        }
        out.push_str("# EOF\n");
        out
    }
}
