//! The API through its router: auth, paging, errors, the OpenAPI document.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, header};
use tower::ServiceExt;

use super::*;
use crate::config::TargetConfig;
use crate::decide::Decision;
use crate::metrics::Metrics;
use crate::series::Sample;
use crate::store::DecisionRecord;

pub(super) fn store() -> Store {
    let t = TargetConfig::example("web", 10.0, Duration::from_secs(60));
    let store = Store::new(&[t], Metrics::new());
    let now = crate::clock::Clock::system().now() / 60 * 60;
    {
        let mut s = store.target("web").unwrap();
        s.rate.extend((0..120).map(|k| Sample {
            ts: now - 60 * (119 - k),
            value: 42.0,
        }));
        s.backfill_tried = true;
    }
    store
}

pub(super) async fn get(store: &Store, uri: &str) -> (StatusCode, serde_json::Value) {
    let res = router(store.clone(), ApiAuth::default(), None)
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

pub(super) async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn mutations_need_the_right_token() {
    let s = store();
    let secret = crate::config::Secret::new("s3cret");
    let open = router(s.clone(), ApiAuth::default(), None);
    let guarded = router(s.clone(), ApiAuth::new(Some(&secret), false), None);
    // (router, token, status, code)
    let cases: [(&Router, Option<&str>, StatusCode, &str); 4] = [
        (
            &open,
            Some("s3cret"),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ), // no token configured: never acts
        (&guarded, None, StatusCode::UNAUTHORIZED, "unauthorized"),
        (&guarded, Some("wrong"), StatusCode::FORBIDDEN, "forbidden"),
        (
            &guarded,
            Some("s3cret-but-longer"),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ];
    for (app, token, status, code) in cases {
        let (st, b) = call(app, "POST", "/api/v1/targets/web/pause", token).await;
        assert_eq!(
            (st, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{token:?}: {b}"
        );
        assert!(
            !s.target("web").unwrap().paused,
            "refused requests never act"
        );
    }
    let (st, b) = call(
        &guarded,
        "POST",
        "/api/v1/targets/web/pause",
        Some("s3cret"),
    )
    .await;
    assert_eq!(
        (st, b["action"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{b}"
    );
    assert!(s.target("web").unwrap().paused);
    let (_, b) = call(&guarded, "GET", "/api/v1/targets", None).await;
    assert_eq!(
        b["targets"][0]["paused"], true,
        "reads stay open by default: {b}"
    );
    let (st, _) = call(
        &guarded,
        "POST",
        "/api/v1/targets/web/resume",
        Some("s3cret"),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(!s.target("web").unwrap().paused);
    let (st, _) = call(
        &guarded,
        "POST",
        "/api/v1/targets/web/refit",
        Some("s3cret"),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(s.target("web").unwrap().refit_requested);
    let (st, b) = call(
        &guarded,
        "POST",
        "/api/v1/targets/nope/pause",
        Some("s3cret"),
    )
    .await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("unknown_target"))
    );
}

#[tokio::test]
async fn reads_can_require_the_token() {
    let s = store();
    let secret = crate::config::Secret::new("s3cret");
    let app = router(s, ApiAuth::new(Some(&secret), true), None);
    assert_eq!(
        call(&app, "GET", "/api/v1/targets", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&app, "GET", "/api/v1/targets", Some("nope")).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&app, "GET", "/api/v1/targets", Some("s3cret")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/healthz", None).await.0,
        StatusCode::OK,
        "health stays open"
    );
}

/// Every route the router serves is in the OpenAPI document, and every operation in the
/// document is served (not the fallback).
#[tokio::test]
async fn every_route_is_in_the_openapi_document() {
    let s = store();
    let secret = crate::config::Secret::new("t");
    let (app, served) = routes(
        ApiState {
            store: s,
            fleet: None,
            frontiers: frontier::Frontiers::default(),
        },
        ApiAuth::new(Some(&secret), false),
    );
    let (_, doc) = call(&app, "GET", "/api/v1/openapi.json", None).await;
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = served
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(served, documented, "router and OpenAPI document differ");
    for (method, path) in &documented {
        let uri = path.replace("{name}", "web");
        let (st, b) = call(&app, &method.to_uppercase(), &uri, Some("t")).await;
        assert!(
            st != StatusCode::METHOD_NOT_ALLOWED && b["error"]["code"] != "not_found",
            "{method} {path}: {st} {b}"
        );
    }
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
}

#[tokio::test]
async fn lists_are_paginated() {
    let s = store();
    for k in 0..5 {
        s.record_decision(DecisionRecord::new(
            "web",
            Decision {
                at: k,
                from: 1,
                to: 2,
                reasons: Vec::new(),
                peak: None,
            },
            crate::config::Mode::Act,
        ));
    }
    let app = router(s, ApiAuth::default(), None);
    let (_, b) = call(&app, "GET", "/api/v1/decisions?limit=2&offset=1", None).await;
    let at: Vec<i64> = b["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["at"].as_i64().unwrap())
        .collect();
    assert_eq!(
        (at, b["total"].as_u64(), b["next_offset"].as_u64()),
        (vec![3, 2], Some(5), Some(3))
    );
    let (_, b) = call(&app, "GET", "/api/v1/decisions?limit=2&offset=4", None).await;
    assert!(b["next_offset"].is_null(), "{b}");
    let (_, b) = call(&app, "GET", "/api/v1/targets?limit=1", None).await;
    assert_eq!(
        (b["total"].as_u64(), b["targets"].as_array().map(Vec::len)),
        (Some(1), Some(1))
    );
    let (st, b) = call(&app, "GET", "/api/v1/targets?offset=-1", None).await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (st, b) = call(&app, "GET", "/api/v1/decisions?colour=blue", None).await;
    assert_eq!(
        (st, b["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request")),
        "unknown parameters are refused: {b}"
    );
}

#[tokio::test]
async fn errors_are_json_with_codes() {
    let s = store();
    let check = |status: StatusCode, code: &'static str, body: serde_json::Value| {
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        status
    };
    let (st, b) = get(&s, "/api/v1/targets/nope").await;
    assert_eq!(check(st, "unknown_target", b), StatusCode::NOT_FOUND);
    let (st, b) = get(&s, "/api/v1/targets/nope/forecast").await;
    assert_eq!(check(st, "unknown_target", b), StatusCode::NOT_FOUND);
    for bad in ["horizon=abc", "horizon=0s", "horizon=30d"] {
        let (st, b) = get(&s, &format!("/api/v1/targets/web/forecast?{bad}")).await;
        assert_eq!(
            check(st, "bad_request", b),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    for bad in ["limit=0", "limit=x", "limit=100000"] {
        let (st, b) = get(&s, &format!("/api/v1/decisions?{bad}")).await;
        assert_eq!(
            check(st, "bad_request", b),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let (st, b) = get(&s, "/api/v1/decisions?target=nope").await;
    assert_eq!(check(st, "unknown_target", b), StatusCode::NOT_FOUND);
    for bad in ["signal=volume", "since=yesterday"] {
        let (st, b) = get(&s, &format!("/api/v1/targets/web/history?{bad}")).await;
        assert_eq!(
            check(st, "bad_request", b),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let (st, b) = get(&s, "/nowhere").await;
    assert_eq!(check(st, "not_found", b), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn forecast_covers_the_horizon() {
    let s = store();
    let (st, b) = get(&s, "/api/v1/targets/web/forecast?horizon=30m").await;
    assert_eq!(st, StatusCode::OK, "{b}");
    assert_eq!(b["target"], "web");
    assert_eq!(b["step_seconds"], 60);
    let points = b["points"].as_array().unwrap();
    let generated = b["generated_at"].as_i64().unwrap();
    let last = points.last().unwrap()["timestamp"].as_i64().unwrap();
    assert!(
        last <= generated + 1800 && last > generated + 1800 - 60,
        "{last} vs {generated}"
    );
    for p in points {
        let (v, lo, hi) = (
            p["value"].as_f64().unwrap(),
            p["lower"].as_f64().unwrap(),
            p["upper"].as_f64().unwrap(),
        );
        assert!(lo <= v && v <= hi && (v - 42.0).abs() < 1e-9, "{p}");
    }
}

#[tokio::test]
async fn readiness_waits_for_backfill() {
    let s = store();
    assert_eq!(get(&s, "/readyz").await.0, StatusCode::OK);
    s.target("web").unwrap().backfill_tried = false;
    let (st, b) = get(&s, "/readyz").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        b["reasons"][0]
            .as_str()
            .unwrap()
            .contains("web: not backfilled"),
        "{b}"
    );
}

/// An `offset` near `usize::MAX` is an empty last page, not an overflow (a panic in debug
/// builds, a wrapped page in release ones).
#[tokio::test]
async fn huge_offsets_give_an_empty_last_page() {
    let s = store();
    for k in 0..3 {
        s.record_decision(DecisionRecord::new(
            "web",
            Decision {
                at: k,
                from: 1,
                to: 2,
                reasons: Vec::new(),
                peak: None,
            },
            crate::config::Mode::Act,
        ));
    }
    let dir = tempfile::tempdir().expect("state dir");
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
    s.set_outbox(outbox);
    let app = router(s, ApiAuth::default(), None);
    let max = usize::MAX;
    // (uri, list key, total)
    let cases = [
        (
            format!("/api/v1/decisions?offset={max}"),
            "decisions",
            Some(3),
        ),
        (
            format!("/api/v1/decisions?offset={}&limit=1", max - 1),
            "decisions",
            Some(3),
        ),
        (
            format!("/api/v1/deliveries?offset={max}"),
            "deliveries",
            None,
        ),
        (
            format!("/api/v1/deliveries?offset={max}&limit=10000&target=web"),
            "deliveries",
            None,
        ),
        (format!("/api/v1/targets?offset={max}"), "targets", Some(1)),
    ];
    for (uri, key, total) in cases {
        let (st, b) = call(&app, "GET", &uri, None).await;
        assert_eq!(st, StatusCode::OK, "{uri}: {b}");
        assert_eq!(b[key].as_array().map(Vec::len), Some(0), "{uri}: {b}");
        assert!(b["next_offset"].is_null(), "{uri}: {b}");
        assert_eq!(b["total"].as_u64(), total, "{uri}: {b}");
    }
    let (_, b) = call(&app, "GET", "/api/v1/deliveries?offset=1&limit=1", None).await;
    assert_eq!(b["deliveries"][0]["id"], 1, "the rest still pages: {b}");
}

/// Why `schema` (at `at`) does not describe its fields, if it does not: a bare object with
/// neither properties nor a value type, here or in any field, item or variant within.
fn bare_object(doc: &serde_json::Value, schema: &serde_json::Value, at: &str) -> Option<String> {
    let mut todo = vec![(schema, at.to_owned())];
    let mut seen = std::collections::HashSet::new();
    while let Some((s, at)) = todo.pop() {
        if let Some(r) = s["$ref"].as_str() {
            if seen.insert(r.to_owned()) {
                let name = r.rsplit('/').next().unwrap_or(r);
                let target = &doc["components"]["schemas"][name];
                if target.is_null() {
                    return Some(format!("{at}: dangling {r}"));
                }
                todo.push((target, format!("{at} → {name}")));
            }
            continue;
        }
        let is_object = match &s["type"] {
            serde_json::Value::String(t) => t == "object",
            serde_json::Value::Array(ts) => ts.iter().any(|t| t == "object"),
            _ => false,
        };
        let composed = ["allOf", "oneOf", "anyOf"]
            .iter()
            .any(|k| s.get(*k).is_some());
        let values = s.get("additionalProperties").filter(|v| v.is_object());
        if is_object && s.get("properties").is_none() && values.is_none() && !composed {
            return Some(format!("{at}: an object without properties"));
        }
        for (name, p) in s["properties"].as_object().into_iter().flatten() {
            todo.push((p, format!("{at}.{name}")));
        }
        for k in ["allOf", "oneOf", "anyOf"] {
            for v in s[k].as_array().into_iter().flatten() {
                todo.push((v, at.clone()));
            }
        }
        for k in ["items", "additionalProperties"] {
            if s[k].is_object() {
                todo.push((&s[k], format!("{at}[]")));
            }
        }
    }
    None
}

/// Every JSON answer of every operation has a schema that names its fields (only the
/// OpenAPI document itself is described by its own standard).
#[tokio::test]
async fn every_answer_has_a_described_schema() {
    let (_, doc) = call(
        &router(store(), ApiAuth::default(), None),
        "GET",
        "/api/v1/openapi.json",
        None,
    )
    .await;
    let mut checked = 0;
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("operations") {
            for (status, res) in op["responses"].as_object().expect("responses") {
                let Some(json) = res["content"].get("application/json") else {
                    continue;
                };
                let at = format!("{method} {path} {status}");
                match json.get("schema") {
                    None if path == "/api/v1/openapi.json" => {}
                    None => problems.push(format!("{at}: no schema")),
                    Some(schema) => {
                        checked += 1;
                        problems.extend(bare_object(&doc, schema, &at));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(checked >= 30, "only {checked} answers checked");
}

#[test]
fn the_bare_object_check_finds_bare_objects() {
    let doc = serde_json::json!({"components": {"schemas": {
        "Good": {"type": "object", "properties": {"a": {"type": "integer"}}},
        "Bad": {"type": "object", "properties": {"inner": {"type": ["object", "null"]}}},
    }}});
    let check = |schema: serde_json::Value, bad: bool| {
        assert_eq!(bare_object(&doc, &schema, "x").is_some(), bad, "{schema}");
    };
    check(
        serde_json::json!({"$ref": "#/components/schemas/Good"}),
        false,
    );
    check(
        serde_json::json!({"$ref": "#/components/schemas/Bad"}),
        true,
    );
    check(serde_json::json!({"type": "object"}), true);
    check(
        serde_json::json!({"type": "array", "items": {"type": "object"}}),
        true,
    );
    check(
        serde_json::json!({"type": "object", "additionalProperties": {"type": "integer"}}),
        false,
    );
    check(
        serde_json::json!({"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Bad"}]}),
        true,
    );
    check(
        serde_json::json!({"$ref": "#/components/schemas/Missing"}),
        true,
    );
}

/// Each target keeps its own history: 50 targets holding every second for an hour do not
/// push out one change of another target (the old shared ring of 10,000 kept ~200 s), and
/// the holds are summarised. Across targets the listing is newest first.
#[tokio::test]
async fn a_busy_fleet_keeps_every_targets_changes_and_summarises_holds() {
    let mut targets = vec![TargetConfig::example("web", 10.0, Duration::from_secs(60))];
    targets.extend(
        (0..50).map(|k| TargetConfig::example(&format!("busy{k}"), 10.0, Duration::from_secs(60))),
    );
    let s = Store::new(&targets, Metrics::new());
    let decision = |at, from, to| Decision {
        at,
        from,
        to,
        reasons: Vec::new(),
        peak: None,
    };
    let act = crate::config::Mode::Act;
    s.record_decision(DecisionRecord::new("web", decision(0, 2, 5), act));
    for at in 1..=3600 {
        for k in 0..50 {
            s.record_decision(DecisionRecord::new(
                format!("busy{k}"),
                decision(at, 3, 3),
                act,
            ));
        }
    }
    let (_, b) = get(&s, "/api/v1/decisions?target=web").await;
    assert_eq!(b["total"], 1, "{b}");
    assert_eq!(
        (
            b["decisions"][0]["from"].as_u64(),
            b["decisions"][0]["to"].as_u64()
        ),
        (Some(2), Some(5))
    );
    let (_, b) = get(&s, "/api/v1/decisions?target=busy7").await;
    let held = &b["decisions"][0];
    assert_eq!(
        (
            held["since"].as_i64(),
            held["at"].as_i64(),
            held["repeats"].as_u64()
        ),
        (Some(1), Some(3600), Some(3600)),
        "{b}"
    );
    let (_, b) = get(&s, "/api/v1/decisions?limit=1000").await;
    assert_eq!(b["total"], 51, "{b}");
    let names: Vec<&str> = b["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["target"].as_str())
        .collect();
    assert_eq!(names.last(), Some(&"web"), "the oldest last: {names:?}");
    assert_eq!(names[0], "busy49", "the newest first: {names:?}");
}

/// The history endpoint: the rate as observed, the replicas as steps (the first and last
/// decision of each count; the count in force at `since` from `since`).
#[tokio::test]
async fn history_serves_the_rate_and_the_replica_steps() {
    let s = store();
    let now = crate::clock::Clock::system().now() / 60 * 60;
    {
        let mut t = s.target("web").unwrap();
        // Decisions every 30 s over the last hour: 3 replicas, then 5 from 20 minutes ago.
        t.replicas_history.extend((0..120).map(|k| Sample {
            ts: now - 3_600 + 30 * k,
            value: if k < 80 { 3.0 } else { 5.0 },
        }));
    }
    let since = now - 1_800;
    let (st, b) = get(&s, &format!("/api/v1/targets/web/history?since={since}")).await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let points = b["points"].as_array().unwrap();
    assert_eq!(points.len(), 31, "{b}");
    assert_eq!(points[0]["timestamp"], since, "{b}");
    assert_eq!(points[30]["value"], 42.0, "{b}");
    let (st, b) = get(
        &s,
        &format!("/api/v1/targets/web/history?signal=replicas&since={since}"),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    let got: Vec<(i64, f64)> = b["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["timestamp"].as_i64().unwrap(),
                p["value"].as_f64().unwrap(),
            )
        })
        .collect();
    let first5 = now - 3_600 + 30 * 80;
    let last = now - 3_600 + 30 * 119;
    assert_eq!(
        got,
        [(since, 3.0), (first5 - 30, 3.0), (first5, 5.0), (last, 5.0)]
    );
}

/// Without a fleet, targets have no owner, `scope` is checked, and `/api/v1/cluster` says
/// there is no cluster.
#[tokio::test]
async fn without_a_fleet_there_is_no_owner_and_no_cluster() {
    let s = store();
    for uri in [
        "/api/v1/targets",
        "/api/v1/targets?scope=local",
        "/api/v1/targets?scope=fleet",
    ] {
        let (st, b) = get(&s, uri).await;
        assert_eq!(st, StatusCode::OK, "{uri}: {b}");
        assert_eq!(
            b["targets"][0]["owner"],
            serde_json::Value::Null,
            "{uri}: {b}"
        );
    }
    let (st, b) = get(&s, "/api/v1/targets/web").await;
    assert_eq!(
        (st, &b["owner"]),
        (StatusCode::OK, &serde_json::Value::Null)
    );
    let (st, b) = get(&s, "/api/v1/targets?scope=all").await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        b["error"]["message"].as_str().unwrap().contains("scope"),
        "{b}"
    );
    let (st, b) = get(&s, "/api/v1/cluster").await;
    assert_eq!(
        (st, &b["error"]["code"]),
        (StatusCode::NOT_FOUND, &serde_json::json!("no_cluster"))
    );
}

/// The API's status is the store's, plus `unreachable`.
#[test]
fn the_status_view_serialises_as_the_stores() {
    use crate::store::TargetStatus;
    for s in [
        TargetStatus::Backfilling,
        TargetStatus::Degraded,
        TargetStatus::Paused,
        TargetStatus::BudgetLimited,
        TargetStatus::Ok,
    ] {
        let view = serde_json::to_value(views::Status::from(s)).unwrap();
        assert_eq!(view, serde_json::to_value(s).unwrap());
        assert_eq!(view, s.as_str());
    }
    let unreachable = serde_json::to_value(views::Status::Unreachable).unwrap();
    assert_eq!(unreachable, "unreachable");
    let elsewhere = serde_json::to_value(views::Status::OwnedElsewhere).unwrap();
    assert_eq!(elsewhere, "owned-elsewhere");
}

/// `scope=local` on an instance that does not run a target (`[cluster]`: another owns it)
/// shows it as owned elsewhere, not as backfilling (what its reset state would say).
#[tokio::test]
async fn a_target_run_elsewhere_is_shown_as_owned_elsewhere() {
    let s = store();
    s.target("web").unwrap().reset();
    let (_, b) = get(&s, "/api/v1/targets?scope=local").await;
    assert_eq!(b["targets"][0]["status"], "backfilling", "{b}");
    s.target("web").unwrap().owned_here = false;
    let (_, b) = get(&s, "/api/v1/targets?scope=local").await;
    assert_eq!(b["targets"][0]["status"], "owned-elsewhere", "{b}");
    let (_, b) = get(&s, "/api/v1/targets/web").await;
    assert_eq!(b["status"], "owned-elsewhere", "{b}");
}
