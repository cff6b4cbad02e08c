//! Property tests of the API's query parameters and path segments, through the real
//! router (`tower::ServiceExt::oneshot`): random keys and values, percent-encoded or raw,
//! never give a 500 or a panic; every error is the JSON error body and a 400 names the
//! parameter; valid parameters give the page, history or forecast they ask for.

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use tower::ServiceExt;

use super::*;
use crate::config::TargetConfig;
use crate::metrics::Metrics;
use crate::proptest_support::config;
use crate::series::Sample;

/// The app under test: one target `web` with two hours of data and two deliveries in a
/// real outbox. (No decisions: how a record is built is the decision log's business, and
/// the paging is the same as for targets and deliveries.)
struct App {
    runtime: tokio::runtime::Runtime,
    router: Router,
    store: Store,
    _dir: tempfile::TempDir,
}

impl App {
    fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let t = TargetConfig::example("web", 10.0, Duration::from_secs(60));
        let store = Store::new(&[t], Metrics::new());
        let now = store.now() / 60 * 60;
        {
            let mut s = store.target("web").expect("web");
            s.rate.extend((0..120).map(|k| Sample {
                ts: now - 60 * (119 - k),
                value: 42.0 + (k % 7) as f64,
            }));
            s.backfill_tried = true;
        }
        let dir = tempfile::tempdir().expect("state dir");
        let outbox = runtime.block_on(async {
            let outbox = crate::act::outbox::Outbox::open(dir.path()).expect("outbox");
            let rebalance = |at| {
                crate::act::Action::Rebalance(crate::act::RebalanceAction {
                    target: "web".into(),
                    weights: [("a:80".to_owned(), 1)].into(),
                    issued_at: at,
                })
            };
            outbox
                .enqueue(vec![rebalance(1), rebalance(2)])
                .await
                .expect("enqueue");
            outbox
        });
        store.set_outbox(outbox);
        let router = router(store.clone(), ApiAuth::default(), None);
        Self {
            runtime,
            router,
            store,
            _dir: dir,
        }
    }

    fn get(&self, uri: &str) -> (StatusCode, serde_json::Value) {
        self.runtime.block_on(async {
            let request = Request::get(uri).body(Body::empty()).expect("a valid URI");
            let res = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("infallible");
            let status = res.status();
            let bytes = axum::body::to_bytes(res.into_body(), 64 << 20)
                .await
                .expect("body");
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            });
            (status, body)
        })
    }
}

thread_local!(static APP: App = App::start());

/// A parameter value: the ones that mean something somewhere, extremes, and any text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "", "0", "1", "2", "3", "50", "1000", "1001", "10000", "10001", "-1", "+1", " 1", "1.0", "1e3",
            "18446744073709551615", "18446744073709551616", "9223372036854775807", "abc",
            "30m", "1h", "7d", "8d", "0s", "1ns", "6h", "584542046090y", "99999999999999999999s",
            "rate", "latency", "replicas", "fleet", "local", "pending", "delivered", "dead", "superseded", "web", "nope",
        ]).prop_map(str::to_owned),
        1 => any::<u64>().prop_map(|v| v.to_string()),
        1 => any::<i64>().prop_map(|v| v.to_string()),
        1 => any::<String>(),
    ]
}

/// One endpoint with the parameters it knows.
const ENDPOINTS: [(&str, &[&str]); 5] = [
    ("/api/v1/targets", &["limit", "offset", "scope"]),
    ("/api/v1/decisions", &["target", "limit", "offset"]),
    (
        "/api/v1/deliveries",
        &["state", "target", "limit", "offset"],
    ),
    ("/api/v1/targets/web/forecast", &["horizon"]),
    ("/api/v1/targets/web/history", &["signal", "since"]),
];

/// `(endpoint index, params, raw suffix)`: keys mostly the endpoint's own.
fn request() -> impl Strategy<Value = (usize, Vec<(String, String)>, String)> {
    (0..ENDPOINTS.len()).prop_flat_map(|e| {
        let known: Vec<String> = ENDPOINTS[e].1.iter().map(|k| (*k).to_owned()).collect();
        let key = prop_oneof![6 => prop::sample::select(known), 1 => "[a-zA-Z_]{0,8}", 1 => any::<String>()];
        let raw = prop::sample::select(vec!["", "&", "&&", "=", "&=x", "&limit", "&%FF=1", "&limit=%FF", "&offset=%", "&a=%zz"]);
        (Just(e), prop::collection::vec((key, value()), 0..4), raw.prop_map(str::to_owned))
    })
}

fn encode(params: &[(String, String)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        q.append_pair(k, v);
    }
    q.finish()
}

/// What the parameters must give when they are all well-formed: `None` if one is not.
fn valid(e: usize, params: &[(String, String)]) -> Option<bool> {
    let mut seen = std::collections::HashSet::new();
    let mut known_target = true;
    for (k, v) in params {
        if !seen.insert(k.as_str()) || !ENDPOINTS[e].1.contains(&k.as_str()) {
            return None;
        }
        let max_limit = if e == 2 { 10_000 } else { 1_000 };
        let ok = match k.as_str() {
            "limit" => v
                .parse::<usize>()
                .is_ok_and(|n| (1..=max_limit).contains(&n)),
            "offset" => v.parse::<usize>().is_ok(),
            "state" => crate::act::outbox::DeliveryState::parse(v).is_some(),
            "signal" => ["rate", "latency", "replicas"].contains(&v.as_str()),
            "scope" => ["fleet", "local"].contains(&v.as_str()),
            "horizon" => humantime::parse_duration(v)
                .is_ok_and(|d| d >= Duration::from_secs(1) && d <= Duration::from_secs(7 * 86_400)),
            "since" => {
                v.parse::<i64>().is_ok_and(|t| t >= 0) || humantime::parse_duration(v).is_ok()
            }
            _ => {
                known_target &= v == "web";
                true
            }
        };
        if !ok {
            return None;
        }
    }
    Some(known_target)
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The answer to well-formed parameters: the page, history or forecast asked for.
fn check_answer(
    app: &App,
    e: usize,
    params: &[(String, String)],
    b: &serde_json::Value,
) -> Result<(), TestCaseError> {
    let number = |k: &str, default: usize| {
        param(params, k).map_or(default, |v| v.parse().unwrap_or(default))
    };
    let (limit, offset) = (number("limit", 50), number("offset", 0));
    let list = |key: &str, total: usize| -> Result<(), TestCaseError> {
        let n = b[key].as_array().map(Vec::len);
        prop_assert_eq!(n, Some(limit.min(total.saturating_sub(offset))), "{}", b);
        let next = offset.checked_add(limit).filter(|&end| end < total);
        prop_assert_eq!(b["next_offset"].as_u64(), next.map(|n| n as u64), "{}", b);
        Ok(())
    };
    match e {
        0 => list("targets", 1)?,
        1 => {
            let total = b["total"].as_u64().map(|n| n as usize);
            prop_assert_eq!(total, Some(0), "{}", b);
            list("decisions", 0)?;
        }
        2 => {
            // Two deliveries in all; a state keeps those in it.
            let n = b["deliveries"].as_array().map_or(0, Vec::len);
            let page = limit.min(2 - offset.min(2));
            if param(params, "state").is_none() {
                prop_assert_eq!(n, page, "{}", b);
            }
            prop_assert!(n <= page, "{}", b);
        }
        3 => {
            let horizon = humantime::parse_duration(param(params, "horizon").unwrap_or("1h"))
                .map_or(0, |d| d.as_secs() as i64);
            let points = b["points"].as_array().map_or(0, Vec::len) as i64;
            prop_assert!(
                points >= 1 && points <= horizon / 60 + 1,
                "{} points for {}s",
                points,
                horizon
            );
        }
        _ => {
            let now = app.store.now();
            let since = param(params, "since").map_or(now - 86_400, |s| match s.parse::<i64>() {
                Ok(t) if t >= 0 => t,
                _ => humantime::parse_duration(s).map_or(0, |d| {
                    now.saturating_sub(d.as_secs().min(i64::MAX as u64) as i64)
                }),
            });
            let points = b["points"].as_array().cloned().unwrap_or_default();
            prop_assert!(
                points
                    .iter()
                    .all(|p| p["timestamp"].as_i64().is_some_and(|t| t >= since - 1)),
                "{}",
                b
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(8_000))]

    /// Random query strings on each list, history and forecast endpoint.
    #[test]
    fn query_parameters_are_answered_or_refused_by_name(req in request()) {
        let (e, params, raw) = req;
        let uri = format!("{}?{}{}", ENDPOINTS[e].0, encode(&params), raw);
        let (status, b) = APP.with(|app| app.get(&uri));
        prop_assert!(matches!(status.as_u16(), 200 | 400 | 404 | 503), "{} {}: {}", uri, status, b);
        if status != StatusCode::OK {
            prop_assert!(b["error"]["code"].is_string() && b["error"]["message"].is_string(), "{}: {}", uri, b);
        }
        let expected = if raw.is_empty() { valid(e, &params) } else { None };
        match expected {
            Some(true) => {
                prop_assert_eq!(status, StatusCode::OK, "{}: {}", uri, b);
                APP.with(|app| check_answer(app, e, &params, &b))?;
            }
            Some(false) => prop_assert_eq!(status, StatusCode::NOT_FOUND, "{}: {}", uri, b),
            None if raw.is_empty() => {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}: {}", uri, b);
                let message = b["error"]["message"].as_str().unwrap_or_default();
                let named = params.iter().any(|(k, _)| !k.is_empty() && message.contains(k.as_str()))
                    || message.contains("query string");
                prop_assert!(named, "{}: {}", uri, message);
            }
            None => {}
        }
    }

    /// Random path segments where a target name or a delivery id goes.
    #[test]
    fn path_segments_are_answered_or_refused_as_json(segment in prop_oneof![value(), "(%[0-9A-Fa-f]{2}|[a-z0-9]){0,6}"], which in 0usize..4) {
        let raw = segment.contains('%') && segment.bytes().all(|b| b == b'%' || b.is_ascii_alphanumeric());
        let encoded = if raw && which % 2 == 0 { segment.clone() } else {
            url::form_urlencoded::byte_serialize(segment.as_bytes()).collect::<String>().replace('+', "%20")
        };
        let uri = match which {
            0 | 1 => format!("/api/v1/deliveries/{encoded}"),
            _ => format!("/api/v1/targets/{encoded}/history"),
        };
        if encoded.is_empty() {
            return Ok(());
        }
        let (status, b) = APP.with(|app| app.get(&uri));
        prop_assert!(matches!(status.as_u16(), 200 | 400 | 404), "{} {}: {}", uri, status, b);
        if status != StatusCode::OK {
            prop_assert!(b["error"]["code"].is_string(), "{} {}: {}", uri, status, b);
        }
    }
}

/// Found by `path_segments_are_answered_or_refused_as_json`: a path segment that is not
/// UTF-8 was refused with axum's plain-text body, not the JSON error.
#[test]
fn a_path_segment_that_is_not_utf8_gets_the_json_error() {
    let (status, b) = APP.with(|app| app.get("/api/v1/targets/%aA/history"));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["error"]["code"], "bad_request", "{b}");
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("UTF-8"), "{b}");
}

/// Found by `query_parameters_are_answered_or_refused_by_name`: `horizon=1ns` was
/// accepted and answered an empty forecast.
#[test]
fn a_horizon_under_a_second_is_refused() {
    for horizon in ["1ns", "999ms"] {
        let uri = format!("/api/v1/targets/web/forecast?horizon={horizon}");
        let (status, b) = APP.with(|app| app.get(&uri));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {b}");
        let message = b["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("horizon") && message.contains("at least 1s"),
            "{b}"
        );
    }
}
