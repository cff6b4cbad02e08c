//! Property tests of Prometheus answers: generated `query_range` answers served by a real
//! HTTP server on 127.0.0.1 and read by [`PrometheusClient`], the same answers and raw
//! garbage through [`parse`], and the bounded grid a series makes of what is admitted.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::proptest_support::config;
use crate::series::Series;
use crate::source::admit;

/// A sample value as a misbehaving Prometheus may write it.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0.0..1e6f64).prop_map(|v| v.to_string()),
        1 => Just("NaN".to_owned()),
        1 => Just("+Inf".to_owned()),
        1 => Just("-Inf".to_owned()),
        1 => Just("-50".to_owned()),
        1 => Just("-0".to_owned()),
        1 => Just("1e308".to_owned()),
        1 => Just("1e309".to_owned()),
        1 => any::<f64>().prop_map(|v| v.to_string()),
        1 => (0u64..u64::MAX).prop_map(|v| v.to_string()),
    ]
}

/// A timestamp relative to the aligned start, in steps, or far away from the range.
#[derive(Debug, Clone, Copy)]
enum When {
    Steps(i64),
    /// Seconds after the end of the range (a year, 10^12 s, …).
    After(i64),
    /// Seconds before the start.
    Before(i64),
}

fn when(n: i64) -> impl Strategy<Value = When> {
    prop_oneof![
        8 => (-4..n + 4).prop_map(When::Steps),
        1 => prop_oneof![Just(31_536_000i64), Just(1_000_000_000_000), Just(1 << 52), 1..i64::MAX / 4]
            .prop_map(When::After),
        1 => prop_oneof![Just(31_536_000i64), Just(1_000_000_000_000), 1..i64::MAX / 4]
            .prop_map(When::Before),
    ]
}

/// One generated range query and the answer to it.
#[derive(Debug, Clone)]
struct Case {
    start: i64,
    end: i64,
    step: i64,
    /// Per series: `(timestamp, value text)`, timestamps strictly increasing.
    series: Vec<Vec<(i64, String)>>,
}

fn case() -> impl Strategy<Value = Case> {
    let step = prop_oneof![
        8 => prop_oneof![Just(1i64), Just(15), Just(60), 1..=3_600i64],
        1 => 86_400..=3_155_760_000i64,
        1 => (1i64 << 40)..i64::MAX / 1024,
    ];
    (
        step,
        1_500_000_000i64..1_900_000_000,
        0i64..300,
        0i64..3_600,
    )
        .prop_flat_map(|(step, start, n, jitter)| {
            // A huge step spans few points.
            let n = n.min(i64::MAX / 4 / step);
            let end = start + n * step + jitter % step;
            let samples = prop::collection::vec((when(n), value()), 0..120);
            prop::collection::vec(samples, 0..4).prop_map(move |raw| {
                let base = align_down(start, step);
                let at = |w: When| match w {
                    When::Steps(k) => base + k * step,
                    When::After(s) => end.saturating_add(s),
                    When::Before(s) => start.saturating_sub(s),
                };
                let series = raw
                    .into_iter()
                    .map(|s| {
                        let mut pts: Vec<(i64, String)> =
                            s.into_iter().map(|(w, v)| (at(w), v)).collect();
                        pts.sort_by_key(|p| p.0);
                        pts.dedup_by_key(|p| p.0);
                        pts
                    })
                    .collect();
                Case {
                    start,
                    end,
                    step,
                    series,
                }
            })
        })
}

impl Case {
    fn body(&self) -> String {
        let result: Vec<serde_json::Value> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let values: Vec<serde_json::Value> =
                    s.iter().map(|(t, v)| json!([*t as f64, v])).collect();
                json!({"metric": {"instance": format!("i{i}"), "job": "web"}, "values": values})
            })
            .collect();
        json!({"status": "success", "data": {"resultType": "matrix", "result": result}}).to_string()
    }

    /// What the client must answer: the finite, non-negative samples within a step of the
    /// aligned range, per series left with any, and what was dropped.
    fn expected(&self) -> (Vec<(String, Vec<Sample>)>, Dropped) {
        let (from, to) = (
            align_down(self.start, self.step),
            align_down(self.end, self.step),
        );
        let mut dropped = Dropped::default();
        let mut kept = Vec::new();
        for (i, s) in self.series.iter().enumerate() {
            let mut samples = Vec::new();
            let mut newest = None;
            for (ts, text) in s {
                let v = parse_value(text).expect("generated values are numbers");
                // A timestamp as the JSON float it was sent as, read back: huge ones may
                // meet, and only the first of a time is read.
                let ts = (*ts as f64).round() as i64;
                if !v.is_finite() {
                    dropped.non_finite += 1;
                } else if newest.replace(ts) == Some(ts) {
                    continue;
                } else if v < 0.0 {
                    dropped.negative += 1;
                } else if ts < from - self.step || ts > to + self.step {
                    dropped.out_of_range += 1;
                } else {
                    samples.push(Sample { ts, value: v });
                }
            }
            if !samples.is_empty() {
                kept.push((format!("i{i}"), samples));
            }
        }
        (kept, dropped)
    }
}

/// A Prometheus stand-in on 127.0.0.1 that answers every `query_range` with `body`.
struct Server {
    runtime: tokio::runtime::Runtime,
    body: Arc<Mutex<String>>,
    client: PrometheusClient,
    /// Clients reading at most 1, 2, 4 and 8 KiB.
    capped: Vec<(usize, PrometheusClient)>,
}

impl Server {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let body = Arc::new(Mutex::new(String::new()));
        let served = body.clone();
        let app = axum::Router::new().route(
            "/api/v1/query_range",
            axum::routing::get(move || {
                let body = served.lock().expect("body").clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        runtime.spawn(async move { axum::serve(listener, app).await });
        let url = Url::parse(&format!("http://{addr}")).expect("url");
        let client = Self::client(&url, crate::config::DEFAULT_MAX_ANSWER_BYTES);
        let capped = [1_024, 2_048, 4_096, 8_192]
            .into_iter()
            .map(|cap| (cap, Self::client(&url, cap)))
            .collect();
        Self {
            runtime,
            body,
            client,
            capped,
        }
    }

    /// A client of the server at `url` reading answers of at most `max_answer_bytes`.
    fn client(url: &Url, max_answer_bytes: usize) -> PrometheusClient {
        let cfg = PrometheusConfig {
            url: url.clone(),
            auth: None,
            timeout: Duration::from_secs(30),
            max_answer_bytes,
            max_concurrency: crate::config::DEFAULT_MAX_CONCURRENCY,
        };
        PrometheusClient::new(&cfg).expect("client")
    }
}

/// A JSON value of any shape, a few levels deep.
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        prop_oneof![value(), "[a-z]{0,6}"].prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("metric".to_owned()),
                    Just("values".to_owned()),
                    Just("instance".to_owned()),
                    "[a-z]{1,5}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An answer shaped like Prometheus' envelope whose parts may be of any shape.
fn envelope() -> impl Strategy<Value = String> {
    let status = prop_oneof![Just("success"), Just("error"), Just("other")];
    let kind = prop_oneof![Just("matrix"), Just("vector"), Just("scalar")];
    (status, kind, any_json(), any::<bool>()).prop_map(|(status, kind, result, data)| {
        let mut v = json!({"status": status, "errorType": "bad_data", "error": "no"});
        if data {
            v["data"] = json!({"resultType": kind, "result": result});
        }
        v.to_string()
    })
}

proptest! {
    #![proptest_config(config(4_000))]

    /// A well-formed answer, served over HTTP, yields exactly its finite, non-negative
    /// samples within a step of the range asked for; far-future timestamps are dropped
    /// and the series' grid never outgrows its buffer.
    #[test]
    fn the_client_keeps_exactly_the_usable_samples(case in case(), capacity in 1usize..500) {
        thread_local!(static SERVER: Server = Server::start());
        let (range, grouped) = SERVER.with(|s| {
            *s.body.lock().expect("body") = case.body();
            s.runtime.block_on(async {
                let range = s.client.range("q", case.start, case.end, case.step).await;
                let grouped = s.client.range_by("q", "instance", case.start, case.end, case.step).await;
                (range, grouped)
            })
        });
        let (kept, dropped) = case.expected();
        match (kept.len(), &range) {
            (0, Err(SourceError::Unusable { dropped: d, .. })) => {
                prop_assert!(dropped.total() > 0);
                prop_assert_eq!(*d, dropped);
            }
            (0, Err(SourceError::Empty { .. })) => prop_assert_eq!(dropped.total(), 0),
            (1, Ok(samples)) => prop_assert_eq!(samples, &kept[0].1),
            (n, Err(SourceError::ManySeries { count, .. })) if n > 1 => prop_assert_eq!(*count, n),
            (n, other) => prop_assert!(false, "{} usable series, got {:?}", n, other),
        }
        if let Ok(g) = grouped {
            let got: Vec<(String, Vec<Sample>)> = g.into_iter().collect();
            prop_assert_eq!(got, kept.clone());
        } else {
            prop_assert!(kept.is_empty(), "{:?}", grouped);
        }
        if let Ok(samples) = range {
            let mut series = Series::new(case.step, capacity);
            series.extend(samples);
            let (_, grid) = series.to_grid().expect("samples were kept");
            prop_assert!(grid.len() <= capacity);
        }
    }

    /// An answer whose timestamps come in any order, repeated and off the grid: what the
    /// client keeps is still sorted, unique and within a step of the range.
    #[test]
    fn the_client_keeps_samples_sorted_and_in_range(
        case in case(),
        shuffle in any::<prop::sample::Index>(),
        offsets in prop::collection::vec(-100i64..100, 0..10),
    ) {
        let mut case = case;
        for (i, s) in case.series.iter_mut().enumerate() {
            let extra: Vec<(i64, String)> = s.iter().zip(&offsets).map(|(p, o)| (p.0 + o, p.1.clone())).collect();
            s.extend(extra);
            let k = shuffle.index(s.len().max(1)).min(s.len());
            s.rotate_left(k);
            if i % 2 == 1 {
                s.reverse();
            }
        }
        thread_local!(static SERVER: Server = Server::start());
        let grouped = SERVER.with(|s| {
            *s.body.lock().expect("body") = case.body();
            s.runtime.block_on(s.client.range_by("q", "instance", case.start, case.end, case.step))
        });
        let (from, to) = (align_down(case.start, case.step), align_down(case.end, case.step));
        for samples in grouped.into_iter().flat_map(|g| g.into_values()) {
            prop_assert!(samples.windows(2).all(|w| w[0].ts < w[1].ts), "{:?}", samples);
            prop_assert!(samples.iter().all(|x| x.ts >= from - case.step && x.ts <= to + case.step));
        }
    }

    /// Any answer of Prometheus' shape, under any status: no panic; an error names the
    /// query; an answer keeps only finite samples and counts the others.
    #[test]
    fn any_envelope_is_read_or_refused_by_name(body in envelope(), status in 100u16..600) {
        check_parse(status, body.as_bytes())?;
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    /// An answer of any size against any cap: refused as too large exactly when it is
    /// larger than the cap (so nothing larger is ever held), read as usual otherwise.
    #[test]
    fn answers_larger_than_the_cap_are_refused(case in case(), pad in 0usize..6_000, which in 0usize..4) {
        thread_local!(static SERVER: Server = Server::start());
        let body = format!("{}{}", case.body(), " ".repeat(pad));
        let (cap, got) = SERVER.with(|s| {
            *s.body.lock().expect("body") = body.clone();
            let (cap, client) = &s.capped[which];
            (*cap, s.runtime.block_on(client.range("q", case.start, case.end, case.step)))
        });
        let too_large = matches!(got, Err(SourceError::TooLarge { limit, .. }) if limit == cap);
        prop_assert_eq!(too_large, body.len() > cap, "{} bytes, cap {}: {:?}", body.len(), cap, got);
    }
}

proptest! {
    #![proptest_config(config(20_000))]

    /// Raw bytes as an answer: no panic, and an error names the query.
    #[test]
    fn garbage_is_refused_by_name(body in prop::collection::vec(any::<u8>(), 0..200), status in 100u16..600) {
        check_parse(status, &body)?;
    }

    /// Whatever samples a source lets through, the grid is never larger than the buffer.
    #[test]
    fn the_grid_never_outgrows_the_buffer(
        samples in prop::collection::vec((any::<i64>(), any::<f64>()), 0..50),
        step in prop_oneof![1i64..=86_400, any::<i64>()],
        capacity in 1usize..5_000,
        range in (any::<i64>(), any::<i64>()),
    ) {
        let samples: Vec<Sample> = samples.into_iter().map(|(ts, value)| Sample { ts, value }).collect();
        let (kept, dropped) = admit(samples.clone(), range.0, range.1, step);
        prop_assert_eq!(kept.len() + dropped.total(), samples.len());
        prop_assert!(kept.iter().all(|s| s.value.is_finite() && s.value >= 0.0));
        let mut series = Series::new(step, capacity);
        series.extend(samples);
        if let Some((start, grid)) = series.to_grid() {
            prop_assert!(grid.len() <= capacity);
            let last = series.last().expect("not empty");
            prop_assert_eq!(last.value, grid[grid.len() - 1]);
            prop_assert!(start <= last.ts);
        }
    }
}

fn check_parse(status: u16, body: &[u8]) -> Result<(), TestCaseError> {
    match parse("the-query", "http://p/api/v1/query_range", status, body) {
        Ok(answer) => {
            prop_assert!((200..300).contains(&status));
            for s in &answer.series {
                prop_assert!(s.samples.iter().all(|x| x.value.is_finite()));
            }
        }
        Err(e) => prop_assert!(e.to_string().contains("`the-query`"), "{}", e),
    }
    Ok(())
}

/// Found by `the_client_keeps_samples_sorted_and_in_range`: an answer out of order was
/// passed on out of order (a [`Source`] promises sorted samples), so a series dropped the
/// samples after the newest one it had seen.
#[test]
fn samples_out_of_order_or_repeated_are_sorted_once_each() {
    let body = r#"{"status":"success","data":{"resultType":"matrix","result":[
        {"metric":{},"values":[[120,"2"],[60,"1"],[180,"3"],[60,"9"]]}]}}"#;
    let answer = parse("q", "http://p", 200, body.as_bytes()).expect("a matrix");
    let ts: Vec<i64> = answer.series[0].samples.iter().map(|s| s.ts).collect();
    assert_eq!(ts, [60, 120, 180]);
}
