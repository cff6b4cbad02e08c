//! The Prometheus client against a real Prometheus (backfilled from a real trace) and real
//! misbehaving HTTP servers, driven through the `Source` trait.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Backfill, Exporter, Options, Prometheus, RATE_QUERY, Receiver, Reply, free_port};
use prescale::config::{PrometheusAuth, PrometheusConfig, Secret};
use prescale::series::Sample;
use prescale::source::prometheus::PrometheusClient;
use prescale::source::{Dropped, Source, SourceError};

fn client_with(url: &str, auth: Option<PrometheusAuth>, timeout: Duration) -> PrometheusClient {
    let cfg = PrometheusConfig {
        url: url.parse().expect("a URL"),
        auth,
        timeout,
        max_answer_bytes: prescale::config::DEFAULT_MAX_ANSWER_BYTES,
        max_concurrency: prescale::config::DEFAULT_MAX_CONCURRENCY,
    };
    PrometheusClient::new(&cfg).expect("build the client")
}

fn client(url: &str) -> PrometheusClient {
    client_with(url, None, Duration::from_secs(10))
}

fn timestamps(samples: &[Sample]) -> Vec<i64> {
    samples.iter().map(|s| s.ts).collect()
}

#[track_caller]
fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

#[tokio::test]
async fn backfill_over_several_chunks_is_complete_and_step_aligned() {
    let prom = Prometheus::backfilled(2);
    let fill = prom.backfill().expect("backfilled");
    let source: &dyn Source = &client(&prom.url());
    let end = fill.end();
    let start = end - 86_400;

    // One day at 5s is 17,281 points: more than one request may carry.
    let samples = source
        .range(RATE_QUERY, start, end, 5)
        .await
        .expect("the rate");
    assert_eq!(samples.len(), 17_281);
    assert_eq!(samples.first().map(|s| s.ts), Some(start));
    assert_eq!(samples.last().map(|s| s.ts), Some(end));
    assert!(
        samples.windows(2).all(|w| w[1].ts - w[0].ts == 5),
        "not every 5s"
    );
    // At the minute, rate[5m] has samples at both ends of its window: exactly the trace.
    for ts in [start, start + 3_600, start + 50_040, end - 600, end] {
        let got = samples
            .iter()
            .find(|s| s.ts == ts)
            .expect("a sample at the minute");
        let want = fill.rate(ts, 300).expect("trace rate");
        assert_close(got.value, want, &format!("rate at {ts}"));
    }

    // Unaligned bounds are aligned down; three requests.
    let (start, end) = (end - 45 * 3_600 + 3, end - 2);
    let samples = source
        .range(RATE_QUERY, start, end, 15)
        .await
        .expect("the rate");
    let aligned = (start.div_euclid(15) * 15, end.div_euclid(15) * 15);
    assert_eq!(samples.len() as i64, (aligned.1 - aligned.0) / 15 + 1);
    assert_eq!(samples.first().map(|s| s.ts), Some(aligned.0));
    assert_eq!(samples.last().map(|s| s.ts), Some(aligned.1));
    assert!(samples.windows(2).all(|w| w[1].ts - w[0].ts == 15));
}

#[tokio::test]
async fn nan_and_infinite_values_are_dropped() {
    let prom = Prometheus::backfilled(1);
    let fill = prom.backfill().expect("backfilled");
    let source: &dyn Source = &client(&prom.url());
    let (start, end) = (fill.end() - 6 * 3_600, fill.end());
    let plain = source
        .range(RATE_QUERY, start, end, 60)
        .await
        .expect("the rate");
    assert_eq!(plain.len(), 361);

    // `nonzero` is 0 every third minute, 1 otherwise: dividing by it gives ±Inf there,
    // and 0/0 gives NaN.
    let nonzero = "(vector(time() % 180) > bool 0)";
    let cases = [
        (format!("{RATE_QUERY} / {nonzero}"), 1.0, "+Inf"),
        (format!("{RATE_QUERY} * {nonzero} / {nonzero}"), 1.0, "NaN"),
    ];
    // -Inf where `nonzero` is 0, negative elsewhere: nothing usable is left.
    let negative = format!("-{RATE_QUERY} / {nonzero}");
    let err = source
        .range(&negative, start, end, 60)
        .await
        .expect_err("-Inf and negative values");
    assert!(
        matches!(&err, SourceError::Unusable { dropped, .. }
            if dropped.total() == 361 && dropped.non_finite >= 120 && dropped.negative >= 240),
        "{err:?}"
    );
    for (query, sign, what) in cases {
        let got = source.range(&query, start, end, 60).await.expect(&query);
        let want: Vec<Sample> = plain
            .iter()
            .filter(|s| s.ts % 180 != 0)
            .map(|s| Sample {
                ts: s.ts,
                value: sign * s.value,
            })
            .collect();
        assert!(want.len() < plain.len() && !got.is_empty());
        assert_eq!(got, want, "{what}: {query}");
    }
}

#[tokio::test]
async fn a_series_of_only_non_finite_values_is_unusable_not_empty() {
    let prom = Prometheus::backfilled(1);
    let end = prom.backfill().expect("backfilled").end();
    let source: &dyn Source = &client(&prom.url());
    let query = format!("{RATE_QUERY} / 0");
    let err = source
        .range(&query, end - 3_600, end, 60)
        .await
        .expect_err("only +Inf");
    assert!(
        matches!(&err, SourceError::Unusable { query: q, dropped }
            if *q == query && dropped.non_finite == 61 && dropped.total() == 61),
        "{err:?}"
    );
    assert!(err.to_string().contains("61 non-finite"), "{err}");
}

/// Negative samples are gaps, never demand: a series of only negative values is unusable
/// (the target is then degraded and holds), and in a mixed one they leave gaps.
#[tokio::test]
async fn negative_values_are_dropped_at_the_door() {
    let prom = Prometheus::backfilled(1);
    let end = prom.backfill().expect("backfilled").end();
    let source: &dyn Source = &client(&prom.url());
    let err = source
        .range("vector(-50)", end - 3_600, end, 60)
        .await
        .expect_err("only negative values");
    assert!(
        matches!(&err, SourceError::Unusable { dropped, .. } if dropped.negative == 61),
        "{err:?}"
    );
    assert!(err.to_string().contains("61 negative"), "{err}");
    // -10 at every multiple of 180 s, +10 elsewhere.
    let mixed = "(vector(time() % 180) > bool 0) * 20 - 10";
    let checked = source
        .range_checked(mixed, end - 3_600, end, 60)
        .await
        .expect("the positive samples");
    let want: Vec<i64> = (0..=60)
        .map(|k| end - 3_600 + 60 * k)
        .filter(|ts| ts % 180 != 0)
        .collect();
    let samples = checked.value;
    assert!(samples.iter().all(|s| s.value == 10.0));
    assert_eq!(timestamps(&samples), want);
    // And the dropped ones are counted, by reason.
    assert_eq!(
        checked.dropped,
        Dropped {
            negative: 61 - want.len(),
            ..Dropped::default()
        }
    );
}

/// A server that stamps samples far outside the range asked for (a year, or 10^12 s,
/// ahead) cannot stretch a series: those samples are dropped and counted.
#[tokio::test]
async fn samples_outside_the_range_asked_for_are_dropped() {
    let matrix = |values: &str| {
        format!(
            r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{}},"values":[{values}]}}]}}}}"#
        )
    };
    let mixed = matrix(r#"[60,"1"],[120,"2"],[31536120,"3"],[1000000000000,"4"]"#);
    let far = matrix(r#"[1000000000000,"4"],[-1000000000000,"5"]"#);
    let receiver = Receiver::with_replies(
        vec![Reply::body(200, mixed), Reply::body(200, far)],
        Reply::status(500),
    );
    let source: &dyn Source = &client(&receiver.url("/"));
    let samples = source
        .range("up", 0, 600, 60)
        .await
        .expect("the samples in range");
    assert_eq!(timestamps(&samples), [60, 120]);
    let err = source
        .range("up", 0, 600, 60)
        .await
        .expect_err("none in range");
    assert!(
        matches!(&err, SourceError::Unusable { dropped, .. } if dropped.out_of_range == 2),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_query_matching_nothing_is_empty_and_named() {
    let prom = Prometheus::backfilled(1);
    let end = prom.backfill().expect("backfilled").end();
    let source: &dyn Source = &client(&prom.url());
    let query = r#"sum(rate(http_requests_total{job="nope"}[5m]))"#;
    let err = source
        .range(query, end - 3_600, end, 60)
        .await
        .expect_err("no series");
    assert!(
        matches!(&err, SourceError::Empty { query: q } if q == query),
        "{err:?}"
    );
    assert!(err.to_string().contains(query), "{err}");
}

#[tokio::test]
async fn several_series_are_refused_and_named() {
    let prom = Prometheus::backfilled(1);
    let end = prom.backfill().expect("backfilled").end();
    let source: &dyn Source = &client(&prom.url());
    let query = format!(
        r#"label_replace({RATE_QUERY}, "copy", "a", "", "") or label_replace({RATE_QUERY}, "copy", "b", "", "")"#
    );
    let err = source
        .range(&query, end - 3_600, end, 60)
        .await
        .expect_err("two series");
    assert!(
        matches!(&err, SourceError::ManySeries { query: q, count: 2 } if *q == query),
        "{err:?}"
    );
    assert!(err.to_string().contains(&query), "{err}");
}

#[tokio::test]
async fn a_syntax_error_passes_on_prometheus_message() {
    let prom = Prometheus::backfilled(1);
    let source: &dyn Source = &client(&prom.url());
    let query = "sum(rate(http_requests_total[5m])";
    let end = common::now_secs();
    let err = source
        .range(query, end - 600, end, 60)
        .await
        .expect_err("bad syntax");
    match &err {
        SourceError::Prometheus {
            query: q,
            error_type,
            message,
        } => {
            assert_eq!(q, query);
            assert_eq!(error_type, "bad_data");
            assert!(message.contains("parse error"), "{message}");
        }
        other => panic!("expected a Prometheus error, got {other:?}"),
    }
}

/// A 503 is asked again twice after a jittered pause; the last one is the error.
#[tokio::test]
async fn an_http_error_without_a_prometheus_body_keeps_status_and_body() {
    let receiver = Receiver::with_replies(vec![], Reply::body(503, "upstream connect error"));
    let source: &dyn Source = &client(&receiver.url("/"));
    let err = source.range("up", 0, 600, 60).await.expect_err("a 503");
    match &err {
        SourceError::Http {
            query,
            url,
            status,
            body,
        } => {
            assert_eq!((query.as_str(), *status), ("up", 503));
            assert_eq!(url, &receiver.url("/api/v1/query_range"));
            assert_eq!(body, "upstream connect error");
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
    assert_eq!(receiver.requests().len(), 3, "asked three times in all");
}

/// An overloaded Prometheus (503) that answers the retry is as good as one that answered
/// at once; a refusal of the query itself (400) is not asked again.
#[tokio::test]
async fn a_transient_failure_is_retried_a_refusal_is_not() {
    let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[60,"1"],[120,"2"]]}]}}"#;
    let receiver = Receiver::with_replies(vec![Reply::body(503, "busy")], Reply::body(200, matrix));
    let source: &dyn Source = &client(&receiver.url("/"));
    let samples = source
        .range("up", 60, 120, 60)
        .await
        .expect("the retry's answer");
    assert_eq!(samples.len(), 2);
    assert_eq!(receiver.requests().len(), 2);
    let refused = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
    let receiver = Receiver::with_replies(vec![], Reply::body(400, refused));
    let source: &dyn Source = &client(&receiver.url("/"));
    let err = source.range("up(", 60, 120, 60).await.expect_err("refused");
    assert!(matches!(err, SourceError::Prometheus { .. }), "{err:?}");
    assert_eq!(receiver.requests().len(), 1, "a refusal is final");
}

#[tokio::test]
async fn a_prometheus_error_body_wins_over_the_status() {
    let body = r#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#;
    let receiver = Receiver::with_replies(vec![Reply::body(503, body)], Reply::body(422, body));
    let source: &dyn Source = &client(&receiver.url("/"));
    for _ in 0..2 {
        let err = source
            .range("up", 0, 600, 60)
            .await
            .expect_err("an error body");
        assert!(
            matches!(&err, SourceError::Prometheus { error_type, message, .. }
                if error_type == "timeout" && message == "query timed out in expression evaluation"),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    // Accepts and holds every connection without ever answering.
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let source = client_with(&format!("http://{addr}"), None, Duration::from_millis(300));
    let source: &dyn Source = &source;
    let began = Instant::now();
    let err = source.range("up", 0, 600, 60).await.expect_err("no answer");
    assert!(
        matches!(&err, SourceError::Timeout { query, timeout_ms: 300, .. } if query == "up"),
        "{err:?}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "took {:?}",
        began.elapsed()
    );
    silent.abort();
}

#[tokio::test]
async fn a_refused_connection_is_unreachable() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let source: &dyn Source = &client(&url);
    let err = source
        .range("up", 0, 600, 60)
        .await
        .expect_err("nobody listens");
    match &err {
        SourceError::Unreachable { query, url: u, .. } => {
            assert_eq!(query, "up");
            assert!(u.starts_with(&url), "{u}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn gaps_are_skipped_not_filled() {
    let fill = Backfill::from_trace(1).with_gap(60..90);
    let gap = fill.gap().expect("a gap");
    let prom = Prometheus::start(Options {
        backfill: Some(fill.clone()),
        ..Options::default()
    });
    let source: &dyn Source = &client(&prom.url());
    let (start, end) = (fill.end() - 3 * 3_600, fill.end());
    let samples = source
        .range(RATE_QUERY, start, end, 60)
        .await
        .expect("the rate");
    let got: BTreeSet<i64> = timestamps(&samples).into_iter().collect();

    // rate[5m] needs two samples in its window: none while the window lies in the gap,
    // all before the gap and from the second sample after it.
    let silent = gap.start + 300..gap.end;
    assert!(
        silent.clone().step_by(60).all(|ts| !got.contains(&ts)),
        "{samples:?}"
    );
    let covered = (start..gap.start).chain(gap.end + 60..=end).step_by(60);
    assert!(covered.clone().all(|ts| got.contains(&ts)), "{samples:?}");
    assert!(samples.len() <= 181 - 25, "{} samples", samples.len());
    for s in &samples {
        if let Some(want) = fill.rate(s.ts, 300).filter(|_| s.ts < gap.start) {
            assert_close(s.value, want, &format!("rate at {}", s.ts));
        }
    }
}

#[tokio::test]
async fn range_by_groups_series_by_label() {
    let prom = Prometheus::backfilled(1);
    let fill = prom.backfill().expect("backfilled");
    let source: &dyn Source = &client(&prom.url());
    let (start, end) = (fill.end() - 3_600, fill.end());
    let per_instance = "sum by (instance) (rate(http_requests_total[5m]))";
    let query = format!(
        r#"{per_instance} or label_replace(2 * {per_instance}, "instance", "copy", "", "")"#
    );
    let grouped = source
        .range_by(&query, "instance", start, end, 60)
        .await
        .expect("grouped");
    assert_eq!(grouped.keys().collect::<Vec<_>>(), ["copy", "trace"]);
    let (trace, copy) = (&grouped["trace"], &grouped["copy"]);
    assert_eq!(trace.len(), 61);
    assert_eq!(timestamps(trace), timestamps(copy));
    for (t, c) in trace.iter().zip(copy) {
        assert_close(c.value, 2.0 * t.value, "copy = 2 × trace");
        assert_close(t.value, fill.rate(t.ts, 300).expect("trace rate"), "trace");
    }
}

#[tokio::test]
async fn range_by_refuses_missing_labels_and_duplicates() {
    let prom = Prometheus::backfilled(1);
    let end = prom.backfill().expect("backfilled").end();
    let source: &dyn Source = &client(&prom.url());
    let per_instance = "sum by (instance) (rate(http_requests_total[5m]))";

    let err = source
        .range_by(RATE_QUERY, "instance", end - 600, end, 60)
        .await
        .expect_err("no instance label");
    assert!(
        matches!(&err, SourceError::MissingLabel { query, label } if query == RATE_QUERY && label == "instance"),
        "{err:?}"
    );

    let query =
        format!(r#"{per_instance} or label_replace({per_instance}, "job", "other", "", "")"#);
    let err = source
        .range_by(&query, "instance", end - 600, end, 60)
        .await
        .expect_err("two series for one instance");
    assert!(
        matches!(&err, SourceError::ManySeries { count: 2, .. }),
        "{err:?}"
    );

    let query = r#"sum by (instance) (rate(http_requests_total{job="nope"}[5m]))"#;
    let err = source
        .range_by(query, "instance", end - 600, end, 60)
        .await
        .expect_err("no series");
    assert!(matches!(&err, SourceError::Empty { .. }), "{err:?}");
}

/// A Prometheus answer with one series of two samples, one of them NaN.
const MATRIX: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[600,"1.5"],[660,"NaN"]]}]}}"#;

#[tokio::test]
async fn credentials_and_path_prefix_are_sent() {
    let receiver = Receiver::with_replies(vec![], Reply::body(200, MATRIX));
    let cases = [
        (
            Some(PrometheusAuth::Bearer(Secret::new("s3cret-token"))),
            Some("Bearer s3cret-token"),
        ),
        (
            Some(PrometheusAuth::Basic {
                username: "alice".to_owned(),
                password: Secret::new("pw"),
            }),
            Some("Basic YWxpY2U6cHc="),
        ),
        (None, None),
    ];
    for (i, (auth, want)) in cases.into_iter().enumerate() {
        let source = client_with(&receiver.url("/prom"), auth, Duration::from_secs(5));
        let source: &dyn Source = &source;
        let samples = source.range("up", 601, 719, 60).await.expect("one series");
        assert_eq!(
            samples,
            [Sample {
                ts: 600,
                value: 1.5
            }]
        );

        let requests = receiver.wait_for(i + 1, Duration::from_secs(5)).await;
        let request = &requests[i];
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/prom/api/v1/query_range");
        assert_eq!(request.header("authorization"), want);
        let mut params = request.query_pairs();
        params.sort();
        let want_params = [
            ("end", "660"),
            ("query", "up"),
            ("start", "600"),
            ("step", "60"),
        ];
        let want_params: Vec<(String, String)> = want_params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(params, want_params);
    }
}

/// The harness itself: scraped samples continue the backfilled series (one series, no
/// gap at the seam), and a restart keeps both.
#[tokio::test]
async fn live_scrapes_continue_the_backfilled_series() {
    let fill = Backfill::from_trace(1);
    let exporter = Exporter::start(fill.total(), 10.0);
    let mut prom = Prometheus::start(Options {
        backfill: Some(fill.clone()),
        scrape: Some(exporter.addr()),
        ..Options::default()
    });
    let scraped = r#"count_over_time(http_requests_total{job="web"}[10s])"#;
    common::poll_until("five scrapes", Duration::from_secs(30), || {
        let rows = prom.instant(scraped, None);
        let count = rows.first().and_then(|(_, v)| v.parse::<f64>().ok());
        count.filter(|&c| c >= 5.0)
    });

    let source: &dyn Source = &client(&prom.url());
    let now = common::now_secs();
    let seam = source
        .range(
            r#"http_requests_total{job="web"}"#,
            fill.end() - 600,
            now,
            1,
        )
        .await
        .expect("one series across the seam");
    assert_eq!(seam.first().map(|s| s.ts), Some(fill.end() - 600));
    assert!(
        seam.windows(2).all(|w| w[1].ts - w[0].ts == 1),
        "a hole at the seam"
    );
    assert!(
        seam.windows(2).all(|w| w[1].value >= w[0].value),
        "the counter went down"
    );
    // Between live samples the counter grew at the exporter's rate.
    let live: Vec<&Sample> = seam.iter().filter(|s| s.value > fill.total()).collect();
    let (Some(first), Some(last)) = (live.first(), live.last()) else {
        panic!(
            "no live sample: {:?}",
            &seam[seam.len().saturating_sub(10)..]
        )
    };
    assert!(last.ts - first.ts >= 2, "too few live samples: {live:?}");
    let rate = (last.value - first.value) / (last.ts - first.ts) as f64;
    assert!((rate - 10.0).abs() < 2.0, "live rate {rate}: {live:?}");

    prom.restart();
    let after = source
        .range(RATE_QUERY, fill.end() - 600, fill.end(), 60)
        .await
        .expect("backfill after restart");
    assert_eq!(after.len(), 11);
    let live = source
        .range(r#"http_requests_total{job="web"}"#, now - 1, now, 1)
        .await
        .expect("live samples after restart");
    assert!(live.iter().all(|s| s.value > fill.total()), "{live:?}");
}

/// An answer larger than `max_answer_bytes` is refused with a clear error instead of being
/// read whole into memory; the same answer under the limit is read.
#[tokio::test]
async fn an_answer_larger_than_the_limit_is_refused() {
    let values: Vec<String> = (0..5_000).map(|k| format!(r#"[{},"1"]"#, k * 60)).collect();
    let body = format!(
        r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{}},"values":[{}]}}]}}}}"#,
        values.join(",")
    );
    assert!(body.len() > 16 * 1024);
    let receiver = Receiver::with_replies(Vec::new(), Reply::body(200, body.clone()));
    let limited = |max_answer_bytes| {
        PrometheusClient::new(&PrometheusConfig {
            url: receiver.url("/").parse().expect("a URL"),
            auth: None,
            timeout: Duration::from_secs(10),
            max_answer_bytes,
            max_concurrency: prescale::config::DEFAULT_MAX_CONCURRENCY,
        })
        .expect("build the client")
    };
    let small: &dyn Source = &limited(16 * 1024);
    let err = small
        .range("up", 0, 299_940, 60)
        .await
        .expect_err("too large");
    assert!(
        matches!(&err, SourceError::TooLarge { query, limit: 16_384, .. } if query == "up"),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_answer_bytes"), "{err}");
    let large: &dyn Source = &limited(body.len());
    let samples = large
        .range("up", 0, 299_940, 60)
        .await
        .expect("under the limit");
    assert_eq!(samples.len(), 5_000);
}
