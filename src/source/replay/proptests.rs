//! Property tests of trace CSVs: generated traces (random headers, optional columns, gaps,
//! cells written in several ways) read back to what was generated, and CSV-like garbage and
//! raw bytes refused with an error naming the file and line, never a panic or an
//! allocation beyond [`MAX_BUCKETS`].

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::proptest_support::config;

const FILE: &str = "gen/trace.csv";

/// A non-negative number as a trace may write it, and its value.
fn number() -> impl Strategy<Value = (String, f64)> {
    prop_oneof![
        (0u32..100_000).prop_map(|v| (v.to_string(), f64::from(v))),
        (0.0..1e9f64).prop_map(|v| (v.to_string(), v)),
        (0u32..1000).prop_map(|v| (format!(" {v}e2 "), f64::from(v) * 100.0)),
        Just(("0.0".to_owned(), 0.0)),
    ]
}

/// A cell as written, and its value.
type Cell = (String, f64);

/// `(timestamp, value, latency cell, replicas cell)`.
type Row = (i64, Cell, Option<Cell>, Option<Cell>);

/// A generated trace file: which columns, and the rows on a grid with gaps.
#[derive(Debug, Clone)]
struct Gen {
    /// Column names after the first two, e.g. `latency`, `replicas`, `note`.
    extra: Vec<&'static str>,
    rows: Vec<Row>,
}

fn generated() -> impl Strategy<Value = Gen> {
    let extra =
        prop::sample::subsequence(vec!["latency", "replicas", "note"], 0..=3).prop_shuffle();
    let grid = (1i64..=3_600, -1_000_000_000i64..4_000_000_000);
    let rows = prop::collection::btree_set(0i64..400, 2..60);
    let cells = prop::collection::vec(
        (
            number(),
            prop::option::of(number()),
            prop::option::of(number()),
        ),
        60,
    );
    (extra, grid, rows, cells).prop_map(|(extra, (step, start), ks, cells)| Gen {
        extra,
        rows: ks
            .into_iter()
            .zip(cells)
            .map(|(k, (v, l, r))| (start + k * step, v, l, r))
            .collect(),
    })
}

impl Gen {
    fn text(&self) -> String {
        let mut out = format!("timestamp_seconds, value{}\n", self.header_tail());
        for (ts, v, l, r) in &self.rows {
            out.push_str(&format!("{ts},{}", v.0));
            for c in &self.extra {
                let cell = match *c {
                    "latency" => l.as_ref().map_or("", |x| x.0.as_str()),
                    "replicas" => r.as_ref().map_or("", |x| x.0.as_str()),
                    _ => "n/a",
                };
                out.push(',');
                out.push_str(cell);
            }
            out.push('\n');
        }
        out
    }

    fn header_tail(&self) -> String {
        self.extra.iter().map(|c| format!(", {c}")).collect()
    }

    /// The grid step: the most common gap among the first 1000, the smaller on a tie.
    fn step(&self) -> i64 {
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for w in self.rows.windows(2).take(1000) {
            *counts.entry(w[1].0 - w[0].0).or_default() += 1;
        }
        let most = counts.values().copied().max().unwrap_or(0);
        counts
            .into_iter()
            .find(|(_, n)| *n == most)
            .map_or(1, |(g, _)| g)
    }
}

/// A cell of a CSV-like file: numbers of every size, words and nothing.
fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        (-5i64..5).prop_map(|k| (k * 60).to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| v.to_string()),
        prop_oneof![
            Just("NaN"),
            Just("inf"),
            Just("-inf"),
            Just("1e300"),
            Just("-1e300"),
            Just("1e12"),
            Just("9223372036854775807"),
            Just("-9223372036854775808"),
            Just("1e19"),
            Just("0.5"),
            Just("latency"),
            Just("replicas"),
            Just("\"1\""),
            Just(" 7 ")
        ]
        .prop_map(str::to_owned),
        "[ -~]{0,6}",
    ]
}

fn csv_like() -> impl Strategy<Value = String> {
    let line = prop::collection::vec(cell(), 0..5).prop_map(|c| c.join(","));
    prop::collection::vec(line, 0..30).prop_map(|lines| lines.join("\n"))
}

/// A trace of two columns whose timestamps, sorted, may be anywhere an `f64` reaches.
fn far_apart() -> impl Strategy<Value = String> {
    let ts = prop_oneof![
        any::<i64>().prop_map(|t| t as f64),
        -1e13..1e13f64,
        prop::sample::select(vec![
            0.0, 1.0, 60.0, 1e11, 1e12, 1e13, 9e18, -9e18, 1e300, -1e300
        ]),
    ];
    prop::collection::vec(ts, 2..6).prop_map(|mut ts| {
        ts.sort_by(f64::total_cmp);
        let rows: String = ts.iter().map(|t| format!("{t},1\n")).collect();
        format!("timestamp_seconds,value\n{rows}")
    })
}

/// Whatever a file holds: a trace within the bucket cap whose grid covers its rows, or an
/// error that names the file.
fn check_any(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Trace::read(bytes, Path::new(FILE)) {
        Ok(t) => {
            prop_assert!(t.step >= 1);
            prop_assert!(t.counts.len() >= 2 && t.counts.len() <= MAX_BUCKETS);
            for col in [&t.latency, &t.replicas].into_iter().flatten() {
                prop_assert_eq!(col.len(), t.counts.len());
            }
            let ends = (t.timestamp(0), t.timestamp(t.counts.len() - 1));
            let src = ReplaySource::new(t, 0);
            let got = src.samples(
                ends.0,
                ends.1.saturating_add(src.trace.step),
                src.trace.step,
            );
            let got = got.expect("the trace's own step");
            prop_assert!(got.len() <= src.trace.counts.len());
        }
        Err(e) => {
            prop_assert!(e.to_string().starts_with(FILE), "{}", e);
            if let TraceError::Row { line, .. } = e {
                // Lines are counted from 1, the header being line 1.
                let lines = bytes.iter().filter(|b| matches!(b, b'\n' | b'\r')).count() as u64 + 1;
                prop_assert!(
                    line >= 2 && line <= lines.max(2),
                    "line {} of {}",
                    line,
                    lines
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(5_000))]

    /// A generated trace reads back as generated: each row in its bucket, the rest gaps,
    /// the optional columns where their headers are.
    #[test]
    fn generated_traces_read_back(g in generated()) {
        let t = Trace::read(g.text().as_bytes(), Path::new(FILE));
        let step = g.step();
        let start = g.rows[0].0;
        if g.rows.iter().any(|r| (r.0 - start) % step != 0) {
            let e = t.expect_err("rows off the grid").to_string();
            prop_assert!(e.starts_with(FILE) && e.contains("off the"), "{}", e);
            return Ok(());
        }
        let t = t.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!((t.start, t.step), (start, step));
        let last = g.rows[g.rows.len() - 1].0;
        prop_assert_eq!(t.counts.len() as i64, (last - start) / step + 1);
        prop_assert_eq!(t.latency.is_some(), g.extra.contains(&"latency"));
        prop_assert_eq!(t.replicas.is_some(), g.extra.contains(&"replicas"));
        let finite = t.counts.iter().filter(|v| !v.is_nan()).count();
        prop_assert_eq!(finite, g.rows.len());
        for (ts, v, l, r) in &g.rows {
            let i = ((ts - start) / step) as usize;
            prop_assert_eq!(t.counts[i], v.1);
            let cell = |c: Option<&(String, f64)>| c.map(|x| x.1);
            if t.latency.is_some() {
                prop_assert_eq!(Some(t.latency(i)).filter(|x| !x.is_nan()), cell(l.as_ref()));
            }
            if t.replicas.is_some() {
                prop_assert_eq!(Some(t.replicas(i)).filter(|x| !x.is_nan()), cell(r.as_ref()));
            }
        }
    }

    /// A bad cell after blank lines and cells quoted over two lines: the error names the
    /// line it is on.
    #[test]
    fn a_bad_cell_is_named_by_its_line(
        g in generated(),
        bad in any::<prop::sample::Index>(),
        blank in prop::collection::vec(any::<bool>(), 60),
        quoted in prop::collection::vec(any::<bool>(), 60),
    ) {
        let bad = bad.index(g.rows.len());
        let mut text = "timestamp_seconds,value\n".to_owned();
        let mut line = 1;
        let mut want = 0;
        for (i, (ts, v, _, _)) in g.rows.iter().enumerate() {
            if blank[i] {
                text.push('\n');
                line += 1;
            }
            line += 1;
            if i == bad {
                want = line;
                text.push_str(&format!("{ts},x\n"));
            } else if quoted[i] {
                text.push_str(&format!("{ts},\"{}\n\"\n", v.0));
                line += 1;
            } else {
                text.push_str(&format!("{ts},{}\n", v.0));
            }
        }
        let e = Trace::read(text.as_bytes(), Path::new(FILE)).expect_err("a bad cell").to_string();
        prop_assert!(e.starts_with(&format!("{FILE}:{want}: bad value `x`")), "{}\n{}", e, text);
    }

    /// CSV-like text of random cells: a trace within the cap, or an error naming the file.
    #[test]
    fn csv_like_garbage_is_refused_by_name(text in csv_like()) {
        check_any(text.as_bytes())?;
    }

    /// Rows anywhere in time: a trace within the cap, or an error naming the file.
    #[test]
    fn rows_far_apart_are_refused_by_name(text in far_apart()) {
        check_any(text.as_bytes())?;
    }
}

proptest! {
    #![proptest_config(config(20_000))]

    /// Raw bytes: no panic; an error names the file.
    #[test]
    fn raw_bytes_are_refused_by_name(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_any(&bytes)?;
    }
}

/// Found by `rows_far_apart_are_refused_by_name`: rows far apart overflowed the gap
/// arithmetic (a panic) or asked for one bucket per step between them (an allocation of
/// hundreds of gigabytes, which aborts).
#[test]
fn rows_too_far_apart_are_refused_before_allocating() {
    for (text, want) in [
        ("timestamp_seconds,value\n-9e18,1\n9e18,1\n", "out of range"),
        (
            "timestamp_seconds,value\n0,1\n1,1\n100000000000,1\n",
            "buckets",
        ),
    ] {
        let e = Trace::read(text.as_bytes(), Path::new(FILE))
            .expect_err(text)
            .to_string();
        assert!(e.starts_with(FILE) && e.contains(want), "{e}");
    }
}

/// Found by `a_bad_cell_is_named_by_its_line`: the line was counted in records, so after a
/// blank line or a cell quoted over two lines the error named the wrong line.
#[test]
fn the_line_of_a_bad_cell_counts_blank_lines_and_quoted_breaks() {
    for (text, want) in [
        ("timestamp_seconds,value\n\n0,x\n", ":3: bad value `x`"),
        (
            "timestamp_seconds,value\n0,\"1\n\"\n60,x\n",
            ":4: bad value `x`",
        ),
    ] {
        let e = Trace::read(text.as_bytes(), Path::new(FILE))
            .expect_err(text)
            .to_string();
        assert!(e.starts_with(&format!("{FILE}{want}")), "{e}");
    }
}
