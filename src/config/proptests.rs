//! Property tests of the configuration: TOML built from random keys and values near the
//! real schema (durations from zero to beyond `u64` seconds, NaN and infinite numbers,
//! values of the wrong type, misspelt keys), valid configurations that must read back as
//! generated, and raw text. No input panics; every error names the file, and a refused
//! value its key; an accepted configuration has bounded buffers and usable policies.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use toml::{Table, Value};

use super::*;
use crate::proptest_support::config;

const FILE: &str = "gen/prescale.toml";

type Val = BoxedStrategy<Value>;

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn pick(values: &[&str]) -> Val {
    let values: Vec<Value> = values.iter().map(|v| s(v)).collect();
    prop::sample::select(values).boxed()
}

/// One of `valid` mostly, one of `invalid` one time in eleven.
fn pick2(valid: &[&str], invalid: &[&str]) -> Val {
    prop_oneof![10 => pick(valid), 1 => pick(invalid)].boxed()
}

/// A duration as written: mostly usable, sometimes zero, beyond `u64` seconds, malformed
/// or of the wrong type.
fn dur() -> Val {
    prop_oneof![
        20 => pick(&["1s", "15s", "30s", "1m", "3m", "5m", "1h", "14d"]),
        10 => (1u64..100_000).prop_map(|n| s(&format!("{n}s"))),
        1 => pick(&["0s", "1500ms", "1ns", "1y", "100y", "5000y", "584542046090y",
            "18446744073709551615s", "9223372036854775807s", "10000000000000000000s"]),
        1 => any::<u64>().prop_map(|n| s(&format!("{n}s"))),
        1 => prop_oneof![pick(&["3 parsecs", "", "-1s"]), any::<i64>().prop_map(Value::Integer)],
    ]
    .boxed()
}

fn int() -> Val {
    prop_oneof![
        30 => (1i64..50).prop_map(Value::Integer),
        1 => prop::sample::select(vec![0i64, 1000, 1024, 4_294_967_295, 4_294_967_296, i64::MAX])
            .prop_map(Value::Integer),
        1 => prop_oneof![any::<i64>().prop_map(Value::Integer), Just(s("7")), Just(Value::Float(1.5))],
    ]
    .boxed()
}

fn float() -> Val {
    prop_oneof![
        30 => (0.05..1.0f64).prop_map(Value::Float),
        1 => prop::sample::select(vec![0.0, 1.0, -0.0, -0.1, 1.5, 150.0, 1e308, f64::NAN, f64::INFINITY, f64::NEG_INFINITY])
            .prop_map(Value::Float),
        1 => prop_oneof![any::<f64>().prop_map(Value::Float), (0i64..200).prop_map(Value::Integer)],
    ]
    .boxed()
}

fn text() -> Val {
    prop_oneof![
        20 => pick(&["web", "sum(rate(x[5m]))"]),
        1 => pick(&["", " ", "."]),
        1 => any::<String>().prop_map(Value::String),
    ]
    .boxed()
}

fn url() -> Val {
    prop_oneof![
        10 => pick(&["http://127.0.0.1:9090", "http://[::1]:1", "https://h/prom"]),
        1 => pick(&["https://u:pw@h/prom", "ftp://h", "not a url", ""]),
    ]
    .boxed()
}

fn secret_env() -> Val {
    prop_oneof![10 => pick(&["PATH"]), 1 => pick(&["PRESCALE_PROPTEST_UNSET", ""])].boxed()
}

fn secret_file() -> Val {
    pick(&[
        concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
        "missing",
        "/",
        "",
    ])
}

/// Keys some table requires: present but for one time in 40.
const REQUIRED: [&str; 9] = [
    "url",
    "username",
    "name",
    "request_rate",
    "startup",
    "max_replicas",
    "type",
    "value",
    "period",
];

/// A table with each of `keys` present with probability `p` (a required one almost
/// always), and sometimes a misspelt key.
fn table(keys: Vec<(&'static str, Val)>, p: f64) -> BoxedStrategy<Table> {
    let fields: Vec<_> = keys
        .into_iter()
        .map(|(k, v)| {
            let p = if REQUIRED.contains(&k) { 0.975 } else { p };
            prop::option::weighted(p, v).prop_map(move |v| (k, v))
        })
        .collect();
    (fields, prop::option::weighted(0.005, int()))
        .prop_map(|(fields, typo)| {
            let mut t: Table = fields
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?)))
                .collect();
            if let Some(v) = typo {
                t.insert("capcity".to_owned(), v);
            }
            t
        })
        .boxed()
}

fn sub(keys: Vec<(&'static str, Val)>, p: f64) -> Val {
    table(keys, p).prop_map(Value::Table).boxed()
}

fn webhook() -> Val {
    sub(
        vec![
            ("url", url()),
            ("secret_env", secret_env()),
            ("secret_file", secret_file()),
            ("previous_secret_env", secret_env()),
        ],
        0.6,
    )
}

fn balancer() -> Val {
    sub(
        vec![
            ("kind", pick2(&["webhook", "haproxy"], &["nginx"])),
            ("url", url()),
            ("secret_env", secret_env()),
            (
                "runtime_api",
                pick2(&["unix:/run/h.sock", "/s", "h:1"], &["h:99999", ":1", "x"]),
            ),
            ("backend", pick2(&["web"], &[" "])),
            ("timeout", dur()),
        ],
        0.5,
    )
}

fn rules() -> Val {
    let policy = sub(
        vec![
            ("type", pick2(&["Pods", "Percent"], &["pods"])),
            ("value", int()),
            ("period", dur()),
        ],
        0.9,
    );
    sub(
        vec![
            ("stabilization_window", dur()),
            (
                "select_policy",
                pick2(&["Max", "Min", "Disabled"], &["max"]),
            ),
            (
                "policies",
                prop::collection::vec(policy, 0..3)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
        ],
        0.5,
    )
}

fn rebalance() -> Val {
    let capacity = prop::collection::btree_map("[a-z0-9.:]{1,8}", float(), 0..3)
        .prop_map(|m| Value::Table(m.into_iter().collect()))
        .boxed();
    sub(
        vec![
            (
                "strategy",
                pick2(
                    &["equal", "capacity", "least_requests", "least_response_time"],
                    &["random"],
                ),
            ),
            ("capacity", capacity),
            ("failover", any::<bool>().prop_map(Value::Boolean).boxed()),
            ("window", dur()),
            ("z_threshold", float()),
            ("max_drained_fraction", float()),
            ("threshold", int()),
        ],
        0.4,
    )
}

/// `[[target.schedule]]` tables: cron expressions valid, malformed or random, known and
/// unknown time zones, bounds of any size.
fn schedule() -> Val {
    let cron = prop_oneof![
        10 => pick(&["0 8 * * MON-FRI", "30 2 * * *", "*/15 * * * *", "0 0 1 * *", "@daily"]),
        2 => pick(&["", "0 8 * *", "0 0 8 * * *", "0 25 * * *", "0 0 31 2 *", "61 * * * *"]),
        2 => "[0-9*/,LW#?A-Z@ -]{0,24}".prop_map(|c| s(&c)),
    ];
    let tz = pick2(
        &["UTC", "Europe/Berlin", "America/New_York"],
        &["Mars/Olympus", ""],
    );
    let window = sub(
        vec![
            ("cron", cron.boxed()),
            ("duration", dur()),
            ("timezone", tz),
            ("min_replicas", int()),
            ("max_replicas", int()),
        ],
        0.6,
    );
    prop::collection::vec(window, 1..3)
        .prop_map(Value::Array)
        .boxed()
}

fn target() -> Val {
    let optional = table(
        vec![
            ("latency", text()),
            ("latency_slo", dur()),
            ("replicas", text()),
            ("instance_rate", text()),
            ("min_replicas", int()),
            ("interval", dur()),
            ("history", dur()),
            ("step", dur()),
            ("stale_after", dur()),
            ("scale_in_window", dur()),
            ("target_utilization", float()),
            ("prediction_utilization", float()),
            ("tolerance", float()),
            ("headroom", float()),
            ("change_cost", dur()),
            ("priority", int()),
            ("mode", pick2(&["act", "forecast-only"], &["off"])),
            ("platform", webhook()),
            ("balancer", balancer()),
            ("rebalance", rebalance()),
            ("schedule", schedule()),
            (
                "behavior",
                sub(vec![("scale_up", rules()), ("scale_down", rules())], 0.5),
            ),
        ],
        0.25,
    );
    let name = prop_oneof![
        10 => pick(&["web", "api"]),
        1 => pick(&[".", "..", "a b", ""]),
        1 => "[A-Za-z0-9._-]{1,140}".prop_map(|n| s(&n)),
    ];
    let required = table(
        vec![
            ("name", name.boxed()),
            ("request_rate", text()),
            ("capacity_rps", float()),
            ("startup", dur()),
            ("max_replicas", int()),
        ],
        0.93,
    );
    (required, optional)
        .prop_map(|(mut r, o)| {
            r.extend(o);
            Value::Table(r)
        })
        .boxed()
}

/// A configuration near the schema: every section, each key present at random.
fn near_schema() -> impl Strategy<Value = String> {
    let sections = vec![
        (
            "prometheus",
            sub(
                vec![
                    ("url", url()),
                    ("timeout", dur()),
                    ("bearer_token_env", secret_env()),
                    (
                        "max_answer_bytes",
                        prop_oneof![10 => (1024i64..1 << 40).prop_map(Value::Integer), 1 => int()]
                            .boxed(),
                    ),
                    (
                        "max_concurrency",
                        prop_oneof![10 => (1i64..=256).prop_map(Value::Integer), 1 => int()]
                            .boxed(),
                    ),
                    (
                        "basic_auth",
                        sub(
                            vec![
                                ("username", text()),
                                ("password_env", secret_env()),
                                ("password_file", secret_file()),
                            ],
                            0.6,
                        ),
                    ),
                ],
                0.15,
            ),
        ),
        (
            "server",
            sub(
                vec![
                    (
                        "listen",
                        pick2(&["127.0.0.1:8080", "[::1]:0"], &["localhost:80", ""]),
                    ),
                    ("api_token_env", secret_env()),
                    ("auth_reads", any::<bool>().prop_map(Value::Boolean).boxed()),
                ],
                0.4,
            ),
        ),
        (
            "forecast",
            sub(
                vec![
                    ("level", float()),
                    ("refit_every", dur()),
                    ("horizon", dur()),
                    ("models_dir", pick2(&["models"], &["Cargo.toml", ""])),
                ],
                0.4,
            ),
        ),
        (
            "delivery",
            sub(
                vec![
                    ("timeout", dur()),
                    ("max_attempts", int()),
                    ("initial_backoff", dur()),
                    ("max_backoff", dur()),
                    ("max_age", dur()),
                ],
                0.4,
            ),
        ),
        (
            "state",
            sub(
                vec![
                    ("dir", pick2(&["state", "/tmp/x"], &[""])),
                    ("retention", dur()),
                ],
                0.4,
            ),
        ),
        (
            "alertmanager",
            sub(
                vec![("url", url()), ("lead", dur()), ("resend", dur())],
                0.7,
            ),
        ),
        ("budget", sub(vec![("max_replicas", int())], 0.8)),
    ];
    let targets = prop::collection::vec(target(), 1..4);
    (table(sections, 0.3), prop::option::weighted(0.95, targets)).prop_map(|(mut t, targets)| {
        if let Some(targets) = targets {
            t.insert("target".to_owned(), Value::Array(targets));
        }
        toml::to_string(&t).expect("a table serialises")
    })
}

/// Every error names the file; a refused value names its key under a known section.
fn check_error(e: &ConfigError) -> Result<(), TestCaseError> {
    let shown = e.to_string();
    prop_assert!(shown.starts_with(FILE), "{}", shown);
    if let ConfigError::Parse { message, .. } = e {
        prop_assert!(message.contains("line"), "{}", shown);
    }
    if let ConfigError::Invalid { key, message, .. } = e {
        let sections = [
            "prometheus",
            "server",
            "forecast",
            "delivery",
            "state",
            "alertmanager",
            "budget",
            "target",
        ];
        prop_assert!(
            sections.iter().any(|s| key.starts_with(s)),
            "key `{}`: {}",
            key,
            message
        );
        prop_assert!(!message.is_empty(), "{}", shown);
    }
    Ok(())
}

/// What the rest of prescale derives from an accepted configuration is bounded and usable.
fn check_accepted(c: &Config) -> Result<(), TestCaseError> {
    for t in &c.targets {
        prop_assert!(t.step_secs() >= 1 && t.min_replicas <= t.max_replicas);
        prop_assert!(
            t.history_points() <= 1_000_001,
            "{} points",
            t.history_points()
        );
        let p = t.step_policy(&c.forecast, c.alertmanager.as_ref());
        prop_assert!(p.stale_after >= p.step && p.startup >= 0 && p.decide.interval >= 1);
        prop_assert!(p.decide.lookahead >= p.startup);
        let f = &p.forecast;
        prop_assert!(f.refit_every >= 1 && f.horizon >= f.step);
        prop_assert!(
            f.horizon / f.step <= 1_000_000,
            "a forecast of {} points",
            f.horizon / f.step
        );
        for r in [&p.decide.scale_up, &p.decide.scale_down] {
            prop_assert!(r.stabilization_window >= 0);
            prop_assert!(r.policies.iter().all(|x| x.period >= 1));
        }
        prop_assert!(p.rebalance.window >= 1);
        // Windows evaluate without panicking, at any time, into usable bounds.
        for now in [0, 1_774_746_000, 1_792_889_400, 4_102_444_800] {
            let b = p.decide.bounds(now);
            prop_assert!(b.min <= b.max, "{b:?}");
        }
        if let Some(a) = p.alert {
            prop_assert!(a.lead >= 1 && a.resend >= 1);
        }
    }
    Ok(())
}

/// A valid target, as generated.
#[derive(Debug, Clone)]
struct GenTarget {
    name: String,
    capacity: f64,
    startup: u64,
    min: u32,
    max: u32,
    step: u64,
    interval: u64,
    history_steps: u64,
    utilization: f64,
}

fn gen_target() -> impl Strategy<Value = GenTarget> {
    (
        "[a-z][a-z0-9_.-]{0,30}",
        0.1..1e5f64,
        0u64..7_200,
        0u32..10,
        0u32..500,
        1u64..600,
        1u64..600,
        2u64..5_000,
        0.01..=1.0f64,
    )
        .prop_map(
            |(name, capacity, startup, min, span, step, interval, history_steps, utilization)| {
                GenTarget {
                    name,
                    capacity,
                    startup,
                    min,
                    max: (min + span).max(1),
                    step,
                    interval,
                    history_steps,
                    utilization,
                }
            },
        )
}

impl GenTarget {
    fn toml(&self) -> String {
        format!(
            "[[target]]\nname = {:?}\nrequest_rate = 'sum(rate(x[5m]))'\ncapacity_rps = {:?}\nstartup = \"{}s\"\n\
             min_replicas = {}\nmax_replicas = {}\nstep = \"{}s\"\ninterval = \"{}s\"\nhistory = \"{}s\"\n\
             target_utilization = {:?}\n",
            self.name,
            self.capacity,
            self.startup,
            self.min,
            self.max,
            self.step,
            self.interval,
            self.step * self.history_steps,
            self.utilization
        )
    }
}

proptest! {
    #![proptest_config(config(6_000))]

    /// TOML near the schema: accepted and usable, or refused naming the file and key.
    #[test]
    fn configurations_near_the_schema_are_accepted_or_refused_by_name(text in near_schema()) {
        match Config::parse(&text, Path::new(FILE)) {
            Ok(c) => check_accepted(&c)?,
            Err(e) => check_error(&e)?,
        }
    }

    /// Valid targets read back as generated, their defaults derived from them.
    #[test]
    fn valid_configurations_read_back(targets in prop::collection::vec(gen_target(), 1..4)) {
        let mut targets = targets;
        targets.sort_by(|a, b| a.name.cmp(&b.name));
        targets.dedup_by(|a, b| a.name == b.name);
        let text: String = targets.iter().map(GenTarget::toml).collect();
        let c = Config::parse(&text, Path::new(FILE)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(c.targets.len(), targets.len());
        for (t, g) in c.targets.iter().zip(&targets) {
            prop_assert_eq!(&t.name, &g.name);
            prop_assert_eq!(t.capacity_rps, Some(g.capacity));
            prop_assert_eq!(t.startup, Duration::from_secs(g.startup));
            prop_assert_eq!((t.min_replicas, t.max_replicas), (g.min, g.max));
            prop_assert_eq!(t.step, Duration::from_secs(g.step));
            prop_assert_eq!(t.interval, Duration::from_secs(g.interval));
            prop_assert_eq!(t.history_points() as u64, g.history_steps + 1);
            prop_assert_eq!(t.target_utilization, g.utilization);
            prop_assert_eq!(t.stale_after, Duration::from_secs(2 * g.step + 2 * g.interval));
        }
        check_accepted(&c)?;
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    /// A file of any bytes (not UTF-8, TOML or not): `Config::load` refuses it naming the
    /// file, or loads it.
    #[test]
    fn any_file_is_loaded_or_refused_by_name(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            near_schema().prop_map(String::into_bytes),
        ],
    ) {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("prescale.toml");
        std::fs::write(&path, &bytes).expect("written");
        match Config::load(&path) {
            Ok(c) => check_accepted(&c)?,
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(shown.starts_with(&path.display().to_string()), "{}", shown);
            }
        }
    }
}

proptest! {
    #![proptest_config(config(20_000))]

    /// Any text: no panic, and an error names the file.
    #[test]
    fn any_text_is_refused_by_name(text in prop_oneof![any::<String>(), "(\\[+[a-z.]{0,12}\\]+\n|[a-z_]{1,12} = [-0-9a-z\"'.]{0,12}\n){0,8}"]) {
        if let Err(e) = Config::parse(&text, Path::new(FILE)) {
            check_error(&e)?;
        }
    }
}

/// Found by `configurations_near_the_schema_are_accepted_or_refused_by_name`: a startup of
/// a century was accepted, and each cycle would have forecast 52 million points.
#[test]
fn a_startup_spanning_more_than_a_million_steps_is_refused() {
    let text = "[[target]]\ncapacity_rps = 0.3\nmax_replicas = 1\nname = \"A\"\n\
                request_rate = \"web\"\nstartup = \"100y\"\n";
    let e = Config::parse(text, Path::new(FILE))
        .expect_err("a startup of 100y")
        .to_string();
    assert!(
        e.contains("target[A].startup") && e.contains("steps"),
        "{e}"
    );
}

/// Found by `configurations_near_the_schema_are_accepted_or_refused_by_name`: a step of
/// more than 2⁶³ seconds panicked (`2 * step` overflowed) instead of being refused.
/// Durations are now refused beyond a century, where they are read.
#[test]
fn a_step_beyond_half_of_u64_seconds_is_refused() {
    let text = "[[target]]\ncapacity_rps = 0.3\nmax_replicas = 1\nname = \"A\"\n\
                request_rate = \"web\"\nstartup = \"1s\"\nstep = \"18446744073709551615s\"\n";
    let e = Config::parse(text, Path::new(FILE))
        .expect_err("a step of u64::MAX seconds")
        .to_string();
    assert!(e.contains("step") && e.contains("at most 100 years"), "{e}");
}

/// Found by `configurations_near_the_schema_are_accepted_or_refused_by_name`: a
/// `stale_after` of 584,542,046,090 years was accepted and became a negative number of
/// seconds (every signal always stale).
#[test]
fn durations_beyond_a_century_are_refused() {
    let text = "[[target]]\ncapacity_rps = 0.05\nmax_replicas = 1\nname = \"web\"\n\
                request_rate = \"web\"\nstale_after = \"584542046090y\"\nstartup = \"1s\"\n";
    let e = Config::parse(text, Path::new(FILE))
        .expect_err("a stale_after of 584542046090y")
        .to_string();
    assert!(
        e.contains("stale_after") && e.contains("at most 100 years"),
        "{e}"
    );
}

/// Found by `configurations_near_the_schema_are_accepted_or_refused_by_name`: an
/// Alertmanager `lead` of 1ns was accepted and became 0 s (no alert ever early enough).
#[test]
fn an_alert_lead_under_a_second_is_refused() {
    let text = "[alertmanager]\nlead = \"1ns\"\nurl = \"http://127.0.0.1:9090\"\n\n\
                [[target]]\ncapacity_rps = 0.05\nmax_replicas = 1\nname = \"0\"\n\
                request_rate = \"web\"\nstartup = \"1s\"\n";
    let e = Config::parse(text, Path::new(FILE))
        .expect_err("a lead of 1ns")
        .to_string();
    assert!(
        e.contains("alertmanager.lead") && e.contains("at least 1s"),
        "{e}"
    );
}
