//! The configuration's unit tests: defaults, every error naming file and key, secrets,
//! receivers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::decide::balance::Strategy;
use crate::decide::{RateKind, Rules, Select};

const MINIMAL: &str = r#"
[prometheus]
url = "http://127.0.0.1:9090"

[server]
listen = "127.0.0.1:8080"

[[target]]
name = "web"
request_rate = 'sum(rate(http_requests_total{job="web"}[5m]))'
capacity_rps = 150
startup = "3m"
min_replicas = 2
max_replicas = 40
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn minimal_config_gets_defaults() {
    let c = parse(MINIMAL).unwrap();
    let t = &c.targets[0];
    assert_eq!(t.name, "web");
    assert_eq!(t.startup, Duration::from_secs(180));
    assert_eq!(t.interval, Duration::from_secs(30));
    assert_eq!(t.history, Duration::from_secs(14 * 86_400));
    assert_eq!(t.step, Duration::from_secs(60));
    assert_eq!(t.stale_after, Duration::from_secs(180));
    assert_eq!(t.mode, Mode::Act);
    assert_eq!(t.initial_replicas, None);
    assert_eq!(c.forecast.level, 0.95);
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
}

/// Each broken config must fail with an error naming the file, the key and the
/// expectation.
#[test]
fn errors_name_file_key_and_expectation() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "max_replicas = 40",
            "max_replicas = 40\ncapcity = 3",
            &["test.toml", "capcity", "expected one of"],
        ),
        (
            "startup = \"3m\"",
            "startup = \"3 parsecs\"",
            &["test.toml", "startup", "parsecs"],
        ),
        (
            "min_replicas = 2",
            "min_replicas = 50",
            &["test.toml", "target[web].min_replicas", "max_replicas"],
        ),
        (
            "max_replicas = 40",
            "max_replicas = 40\ninitial_replicas = 41",
            &["test.toml", "target[web].initial_replicas", "41", "2..=40"],
        ),
        (
            "max_replicas = 40",
            "max_replicas = 40\ninitial_replicas = 1",
            &[
                "test.toml",
                "target[web].initial_replicas",
                "min_replicas..=max_replicas",
            ],
        ),
        (
            "name = \"web\"",
            "name = \"\"",
            &["test.toml", "target[0].name", "non-empty"],
        ),
        (
            "capacity_rps = 150",
            "capacity_rps = -1",
            &["target[web].capacity_rps", "positive"],
        ),
        (
            "max_replicas = 40",
            "max_replicas = 40\nstep = \"1500ms\"",
            &["target[web].step", "whole seconds"],
        ),
        (
            "max_replicas = 40",
            "max_replicas = 40\nlatency_slo = \"250ms\"",
            &["target[web].latency_slo", "`latency` query"],
        ),
        (
            "max_replicas = 40",
            "max_replicas = 40\nmode = \"sometimes\"",
            &["test.toml", "sometimes", "act", "forecast-only"],
        ),
        (
            "url = \"http://127.0.0.1:9090\"",
            "url = \"nope\"",
            &["prometheus.url", "not a URL"],
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"localhost\"",
            &["server.listen", "IP:PORT"],
        ),
    ];
    for (from, to, wants) in cases {
        assert!(MINIMAL.contains(from), "case `{from}` changes nothing");
        let text = MINIMAL.replace(from, to);
        let err = parse(&text).expect_err(to).to_string();
        for want in *wants {
            assert!(err.contains(want), "error for `{to}` lacks `{want}`: {err}");
        }
    }
}

/// The decision, behaviour, budget and rebalance keys: each broken value names its key.
#[test]
fn scaling_keys_are_validated() {
    let cases: &[(&str, &[&str])] = &[
        (
            "target_utilization = 1.5",
            &["target[web].target_utilization", "(0, 1]"],
        ),
        (
            "prediction_utilization = 0",
            &["target[web].prediction_utilization", "(0, 1]"],
        ),
        ("tolerance = 1", &["target[web].tolerance", "[0, 1)"]),
        ("risk = 1.5", &["target[web].risk", "[0, 1]", "lean"]),
        (
            "risk = \"reckless\"",
            &["target[web].risk", "`reckless`", "safe"],
        ),
        (
            "interval_share = 3",
            &["target[web].interval_share", "[0, 2]"],
        ),
        ("headroom = -1", &["target[web].headroom", ">= 0"]),
        (
            "[target.behavior.scale_down]\npolicies = [{ type = \"Pods\", value = 0, period = \"1m\" }]",
            &[
                "target[web].behavior.scale_down.policies[0].value",
                "at least 1",
            ],
        ),
        (
            "[target.behavior.scale_up]\npolicies = [{ type = \"Pods\", value = 2, period = \"500ms\" }]",
            &[
                "target[web].behavior.scale_up.policies[0].period",
                "whole seconds",
            ],
        ),
        (
            "[target.behavior.scale_up]\nselect_policy = \"Sometimes\"",
            &["test.toml", "Sometimes", "Max", "Disabled"],
        ),
        (
            "scale_in_window = \"5m\"\n[target.behavior.scale_down]\nstabilization_window = \"10m\"",
            &[
                "target[web].behavior.scale_down.stabilization_window",
                "scale_in_window",
            ],
        ),
        (
            "[target.rebalance]\nmax_drained_fraction = 1.5",
            &["target[web].rebalance.max_drained_fraction", "[0, 1)"],
        ),
        (
            "[target.rebalance]\nstrategy = \"random\"",
            &["test.toml", "random", "least_response_time"],
        ),
        (
            "[target.rebalance]\nz_threshold = 0",
            &["target[web].rebalance.z_threshold", "above 0"],
        ),
        (
            "[target.rebalance.capacity]\n\"10.0.0.1:80\" = -2",
            &["target[web].rebalance.capacity.\"10.0.0.1:80\"", "positive"],
        ),
    ];
    for (extra, wants) in cases {
        let err = parse(&format!("{MINIMAL}{extra}\n"))
            .expect_err(extra)
            .to_string();
        for want in *wants {
            assert!(
                err.contains(want),
                "error for `{extra}` lacks `{want}`: {err}"
            );
        }
    }
    let err = parse(&format!("[budget]\nmax_replicas = 0\n{MINIMAL}"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("budget.max_replicas"), "{err}");
}

#[test]
fn scaling_keys_are_read() {
    let text = format!(
        "[budget]\nmax_replicas = 100\n{MINIMAL}target_utilization = 0.7\npriority = 3\n\
         scale_in_window = \"10m\"\n\
         [target.behavior.scale_down]\nselect_policy = \"Min\"\n\
         policies = [{{ type = \"Percent\", value = 10, period = \"1m\" }}, {{ type = \"Pods\", value = 4, period = \"1m\" }}]\n\
         [target.rebalance]\nstrategy = \"capacity\"\ncapacity = {{ \"a:80\" = 2 }}\n"
    );
    let c = parse(&text).unwrap();
    let t = &c.targets[0];
    assert_eq!(c.budget, Some(100));
    assert_eq!((t.target_utilization, t.priority), (0.7, 3));
    assert_eq!(t.scale_down.stabilization_window, 600);
    assert_eq!(t.scale_down.select, Select::Min);
    assert_eq!(t.scale_down.policies.len(), 2);
    assert_eq!(t.scale_down.policies[0].kind, RateKind::Percent);
    assert_eq!(t.scale_up, Rules::default_scale_up());
    assert_eq!(t.rebalance.strategy, Strategy::Capacity);
    assert_eq!(t.rebalance.capacity["a:80"], 2.0);
    // Defaults as the Kubernetes HPA.
    let d = parse(MINIMAL).unwrap();
    assert_eq!(d.targets[0].scale_down, Rules::default_scale_down());
    assert_eq!(d.targets[0].tolerance, 0.1);
    assert_eq!(d.budget, None);
}

/// `risk` sets the defaults of the keys it moves; each key given overrides it.
#[test]
fn the_risk_dial_sets_defaults_and_keys_override_it() {
    let d = parse(MINIMAL).unwrap();
    let t = &d.targets[0];
    assert_eq!(t.risk, crate::decide::risk::Risk::BALANCED);
    assert_eq!(
        (t.interval_share, t.scale_down.stabilization_window),
        (1.0, 300)
    );
    let safe = parse(&format!("{MINIMAL}risk = \"safe\"\n")).unwrap();
    let t = &safe.targets[0];
    assert_eq!(
        (t.interval_share, t.scale_down.stabilization_window),
        (1.25, 600)
    );
    assert!((t.target_utilization - 0.625).abs() < 1e-12);
    let text = format!("{MINIMAL}risk = 0\ntarget_utilization = 0.5\nscale_in_window = \"20m\"\n");
    let lean = parse(&text).unwrap();
    let t = &lean.targets[0];
    assert_eq!((t.prediction_utilization, t.target_utilization), (1.0, 0.5));
    assert_eq!(
        (t.interval_share, t.scale_down.stabilization_window),
        (0.0, 1200)
    );
    // A window set by hand holds even while recurring bursts are planned for; the dial's
    // gives way to the leanest.
    assert_eq!(t.policy().recurring_scale_in, None);
    assert_eq!(safe.targets[0].policy().recurring_scale_in, Some(300));
    assert_eq!(d.targets[0].policy().recurring_scale_in, Some(60));
    let by_behavior =
        format!("{MINIMAL}[target.behavior.scale_down]\nstabilization_window = \"10m\"\n");
    let t = &parse(&by_behavior).unwrap().targets[0];
    assert_eq!(t.policy().recurring_scale_in, None);
    let replayed = t.with_risk(crate::decide::risk::Risk::SAFE);
    assert_eq!(replayed.policy().recurring_scale_in, Some(300));
}

#[test]
fn capacity_may_be_left_to_learn_only_with_latency_slo_and_replicas() {
    let without = MINIMAL.replace("capacity_rps = 150\n", "");
    let err = parse(&without).unwrap_err().to_string();
    assert!(
        err.contains("target[web].capacity_rps") && err.contains("to learn it from"),
        "{err}"
    );
    let learnable = without.replace(
        "max_replicas = 40",
        "max_replicas = 40\nlatency = 'p95'\nlatency_slo = \"250ms\"\nreplicas = 'count(up)'",
    );
    assert_eq!(parse(&learnable).unwrap().targets[0].capacity_rps, None);
    let c = parse(&MINIMAL.replace(
        "[[target]]",
        "[forecast]\nrefit_every = \"30m\"\nmodels_dir = \"/var/lib/prescale\"\n\n[[target]]",
    ))
    .unwrap();
    assert_eq!(c.forecast.refit_every, Duration::from_secs(1800));
    assert_eq!(c.forecast.models_dir, PathBuf::from("/var/lib/prescale"));
    let c = Config::parse(MINIMAL, Path::new("/etc/prescale/prescale.toml")).unwrap();
    assert_eq!(c.forecast.models_dir, PathBuf::from("/etc/prescale/models"));
    let err = parse(&MINIMAL.replace("[[target]]", "[forecast]\nhorizon = \"2d\"\n\n[[target]]"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("forecast.horizon") && err.contains("at most 1d"),
        "{err}"
    );
}

#[test]
fn duplicate_targets_are_refused() {
    let text = format!(
        "{MINIMAL}\n{}",
        &MINIMAL[MINIMAL.find("[[target]]").unwrap()..]
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("target[1].name") && err.contains("duplicate target `web`"),
        "{err}"
    );
}

#[test]
fn webhook_secret_from_env_or_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
    let text = format!(
        "{MINIMAL}\n[target.platform]\nurl = \"http://127.0.0.1:9000/scale\"\nsecret_file = \"secret\"\n"
    );
    let c = Config::parse(&text, &dir.path().join("p.toml")).unwrap();
    assert_eq!(
        c.targets[0].platform.as_ref().unwrap().secret.expose(),
        "s3cret"
    );

    let text = format!(
        "{MINIMAL}\n[target.platform]\nurl = \"http://127.0.0.1:9000/scale\"\nsecret_env = \"PRESCALE_TEST_UNSET_VARIABLE\"\n"
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("target[web].platform.secret_env")
            && err.contains("PRESCALE_TEST_UNSET_VARIABLE"),
        "{err}"
    );

    let text = format!("{MINIMAL}\n[target.platform]\nurl = \"http://127.0.0.1:9000/scale\"\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("no signing secret"), "{err}");
}

#[test]
fn state_alertmanager_rotation_and_haproxy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("new"), "new-secret\n").unwrap();
    std::fs::write(dir.path().join("old"), "old-secret\n").unwrap();
    let text = format!(
        "{MINIMAL}\n[target.platform]\nurl = \"http://127.0.0.1:9000/scale\"\nsecret_file = \"new\"\n\
         previous_secret_file = \"old\"\n\n[target.balancer]\nkind = \"haproxy\"\n\
         runtime_api = \"unix:/run/haproxy/admin.sock\"\nbackend = \"web\"\n\n\
         [state]\ndir = \"var\"\n\n[alertmanager]\nurl = \"http://127.0.0.1:9093\"\nlead = \"10m\"\n"
    );
    let c = Config::parse(&text, &dir.path().join("p.toml")).unwrap();
    let t = &c.targets[0];
    let p = t.platform.as_ref().unwrap();
    assert_eq!(
        (
            p.secret.expose(),
            p.previous_secret.as_ref().unwrap().expose()
        ),
        ("new-secret", "old-secret")
    );
    assert!(t.balancer.is_none());
    let h = t.haproxy.as_ref().unwrap();
    assert_eq!(
        (&h.runtime_api, h.backend.as_str(), h.timeout),
        (
            &RuntimeApi::Unix("/run/haproxy/admin.sock".into()),
            "web",
            Duration::from_secs(2)
        )
    );
    assert_eq!(c.state.dir, dir.path().join("var"));
    let am = c.alertmanager.as_ref().unwrap();
    assert_eq!(
        (am.lead, am.resend),
        (Duration::from_secs(600), Duration::from_secs(60))
    );

    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.state.dir, Path::new("state"));
    assert_eq!(c.delivery.max_age, Duration::from_secs(3600));
    assert!(c.alertmanager.is_none());

    let tcp = MINIMAL.to_owned()
        + "\n[target.balancer]\nkind = \"haproxy\"\nruntime_api = \"127.0.0.1:9999\"\nbackend = \"b\"\n";
    let c = parse(&tcp).unwrap();
    assert_eq!(
        c.targets[0].haproxy.as_ref().unwrap().runtime_api,
        RuntimeApi::Tcp("127.0.0.1:9999".into())
    );
}

/// A webhook secret written `whsec_<base64>` is the decoded key of the Standard Webhooks
/// signature; any other secret its UTF-8 bytes; a `whsec_` secret that is not padded,
/// standard base64 is refused naming the key, without showing the secret.
#[test]
fn whsec_secrets_are_decoded_or_refused_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = |table: &str, key: &str, secret: &str| {
        std::fs::write(dir.path().join("s"), secret).unwrap();
        std::fs::write(dir.path().join("good"), "plain").unwrap();
        let extra = if key == "secret_file" {
            "secret_file = \"s\"".to_owned()
        } else {
            format!("secret_file = \"good\"\n{key} = \"s\"")
        };
        let text =
            format!("{MINIMAL}\n[target.{table}]\nurl = \"http://127.0.0.1:9000/h\"\n{extra}\n");
        Config::parse(&text, &dir.path().join("p.toml"))
    };

    let c = config("platform", "secret_file", "whsec_b2xkLWtleQ==\n").unwrap();
    let secret = &c.targets[0].platform.as_ref().unwrap().secret;
    assert_eq!(secret.expose(), "whsec_b2xkLWtleQ==", "kept as written");
    assert_eq!(secret.standard_webhook_key().unwrap().as_ref(), b"old-key");
    let c = config("balancer", "previous_secret_file", "s3cret").unwrap();
    let hook = c.targets[0].balancer.as_ref().unwrap();
    assert_eq!(
        hook.previous_secret
            .as_ref()
            .unwrap()
            .standard_webhook_key()
            .unwrap()
            .as_ref(),
        b"s3cret"
    );
    assert_eq!(
        hook.secret.standard_webhook_key().unwrap().as_ref(),
        b"plain"
    );

    let refused = [
        ("platform", "secret_file", "whsec_not-base64!", "position 4"),
        ("platform", "secret_file", "whsec_b2xkLWtleQ", "padding"),
        (
            "platform",
            "secret_file",
            "whsec_b2xk_WtleQ==",
            "position 5",
        ),
        ("balancer", "previous_secret_file", "whsec_ \n", "alone"),
        (
            "balancer",
            "previous_secret_file",
            "whsec_b2xkLWtleR==",
            "stray bits",
        ),
    ];
    for (table, key, secret, why) in refused {
        let err = config(table, key, secret).expect_err(secret).to_string();
        for want in [&format!("target[web].{table}.{key}"), "whsec_", why] {
            assert!(err.contains(want), "{secret:?}: `{err}` lacks `{want}`");
        }
        let rest = secret.trim().trim_start_matches("whsec_");
        assert!(
            rest.is_empty() || !err.contains(rest),
            "{err} shows the secret"
        );
    }
}

/// Each broken balancer, state or alertmanager table fails naming its key.
#[test]
fn balancer_state_and_alertmanager_errors() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[target.balancer]\nkind = \"nginx\"\n",
            &["target[web].balancer.kind", "`nginx`", "haproxy"],
        ),
        (
            "[target.balancer]\nkind = \"haproxy\"\nbackend = \"web\"\n",
            &["target[web].balancer.runtime_api", "missing"],
        ),
        (
            "[target.balancer]\nkind = \"haproxy\"\nruntime_api = \"nowhere\"\nbackend = \"web\"\n",
            &["target[web].balancer.runtime_api", "`nowhere`"],
        ),
        (
            "[target.balancer]\nkind = \"haproxy\"\nruntime_api = \"/s.sock\"\n",
            &["target[web].balancer.backend", "missing"],
        ),
        (
            "[target.balancer]\nkind = \"haproxy\"\nruntime_api = \"/s.sock\"\nbackend = \"b\"\nurl = \"http://x\"\n",
            &["target[web].balancer.url", "kind = \"webhook\""],
        ),
        (
            "[target.balancer]\nbackend = \"b\"\n",
            &["target[web].balancer.backend", "kind = \"haproxy\""],
        ),
        (
            "[target.balancer]\nsecret_env = \"X\"\n",
            &["target[web].balancer.url", "missing"],
        ),
        (
            "[target.platform]\nurl = \"http://127.0.0.1:1/\"\nsecret_file = \"/nonexistent/s\"\nprevious_secret_env = \"PRESCALE_TEST_UNSET\"\n",
            &["target[web].platform.secret_file", "/nonexistent/s"],
        ),
    ];
    for (extra, wants) in cases {
        let err = parse(&format!("{MINIMAL}\n{extra}"))
            .expect_err(extra)
            .to_string();
        for want in *wants {
            assert!(
                err.contains(want),
                "error for `{extra}` lacks `{want}`: {err}"
            );
        }
    }
    let top: &[(&str, &[&str])] = &[
        (
            "[alertmanager]\nurl = \"ftp://x\"\n",
            &["alertmanager.url", "http or https"],
        ),
        (
            "[alertmanager]\nurl = \"http://x\"\nlead = \"0s\"\n",
            &["alertmanager.lead"],
        ),
        ("[state]\ndir = \"\"\n", &["state.dir", "empty"]),
        ("[delivery]\nmax_age = \"0s\"\n", &["delivery.max_age"]),
    ];
    for (extra, wants) in top {
        let text = format!("{extra}\n{MINIMAL}");
        let err = parse(&text).expect_err(extra).to_string();
        for want in *wants {
            assert!(
                err.contains(want),
                "error for `{extra}` lacks `{want}`: {err}"
            );
        }
    }
}

#[test]
fn shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prescale.toml");
    let c = Config::load(&path).unwrap();
    assert_eq!(c.targets[0].name, "web");
    assert_eq!(c.targets[0].capacity_rps, Some(150.0));
}

/// Names become model file names: `.`, `..` and names too long for a file are refused.
#[test]
fn names_that_cannot_name_a_file_are_refused() {
    let long = "a".repeat(300);
    for (name, want) in [
        (".", "not `.` or `..`"),
        ("..", "not `.` or `..`"),
        (long.as_str(), "300 characters long; expected at most 128"),
    ] {
        let text = MINIMAL.replace("name = \"web\"", &format!("name = \"{name}\""));
        let e = parse(&text).expect_err(name).to_string();
        assert!(
            e.contains("target[0].name") && e.contains(want),
            "{name}: {e}"
        );
        assert!(e.len() < 400, "the error quotes a long name in part: {e}");
    }
    let ok = MINIMAL.replace("name = \"web\"", &format!("name = \"{}\"", "a".repeat(128)));
    assert!(parse(&ok).is_ok());
}

/// Credentials in the URL and an auth section would silently compete: refused.
#[test]
fn credentials_in_the_url_and_an_auth_section_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret").unwrap();
    let text = MINIMAL.replace(
        "url = \"http://127.0.0.1:9090\"",
        &format!(
            "url = \"http://alice:pw@127.0.0.1:9090\"\n[prometheus.basic_auth]\nusername = \"bob\"\npassword_file = \"{}\"",
            password.display()
        ),
    );
    let e = parse(&text).expect_err("both").to_string();
    assert!(
        e.contains("prometheus.url") && e.contains("expected one of them"),
        "{e}"
    );
    assert!(!e.contains("pw@"), "the error shows no password: {e}");
    let only_url = MINIMAL.replace("http://127.0.0.1", "http://alice:pw@127.0.0.1");
    let c = parse(&only_url).expect("credentials in the URL alone are fine");
    let shown = crate::summary(&c);
    assert!(
        shown.contains("http://***@127.0.0.1:9090") && !shown.contains("pw"),
        "{shown}"
    );
}

/// A `models_dir` that is a file cannot hold models: refused at start, not at the first
/// refit.
#[test]
fn a_models_dir_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models");
    std::fs::write(&file, "not a directory").unwrap();
    let text = format!(
        "{MINIMAL}\n[forecast]\nmodels_dir = \"{}\"\n",
        file.display()
    );
    let e = parse(&text).expect_err("a file").to_string();
    assert!(
        e.contains("forecast.models_dir") && e.contains("not a directory"),
        "{e}"
    );
}

#[test]
fn max_answer_bytes_defaults_and_has_a_floor() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(
        c.prometheus.expect("configured").max_answer_bytes,
        DEFAULT_MAX_ANSWER_BYTES
    );
    let text = MINIMAL.replace(
        "url = \"http://127.0.0.1:9090\"",
        "url = \"http://127.0.0.1:9090\"\nmax_answer_bytes = 100",
    );
    let e = parse(&text).expect_err("too small").to_string();
    assert!(
        e.contains("prometheus.max_answer_bytes") && e.contains("1024"),
        "{e}"
    );
}

#[test]
fn max_concurrency_defaults_and_is_bounded() {
    let with = |line: &str| {
        let text = MINIMAL.replace(
            "url = \"http://127.0.0.1:9090\"",
            &format!("url = \"http://127.0.0.1:9090\"\n{line}"),
        );
        parse(&text).map(|c| c.prometheus.expect("configured").max_concurrency)
    };
    #[track_caller]
    fn check(got: Result<usize, ConfigError>, expected: Result<usize, &[&str]>) {
        match (got, expected) {
            (Ok(n), Ok(want)) => assert_eq!(n, want),
            (Err(e), Err(want)) => {
                let e = e.to_string();
                assert!(want.iter().all(|w| e.contains(w)), "{e}");
            }
            (got, want) => panic!("got {got:?}, expected {want:?}"),
        }
    }
    check(with(""), Ok(DEFAULT_MAX_CONCURRENCY));
    check(with("max_concurrency = 1"), Ok(1));
    check(with("max_concurrency = 256"), Ok(256));
    let range = [
        "test.toml",
        "prometheus.max_concurrency",
        "expected 1 to 256",
    ];
    check(with("max_concurrency = 0"), Err(&range));
    check(with("max_concurrency = 257"), Err(&range));
    check(
        with("max_concurrency = -3"),
        Err(&["test.toml", "max_concurrency = -3"]),
    );
}

/// Credentials in a URL that did not parse, or in a line the TOML parser quotes, are
/// hidden; the rest of the text stays.
#[test]
fn credentials_in_text_are_redacted() {
    let check = |text: &str, want: &str| assert_eq!(super::redact_text(text), want, "{text}");
    check(
        "url = \"https://user:secret@h:99999/p\" at line 2",
        "url = \"https://***@h:99999/p\" at line 2",
    );
    check(
        "http://token@h and ftp://a:b@c",
        "http://***@h and ftp://***@c",
    );
    check("no URL here, a@b", "no URL here, a@b");
    check("http://h/p?x=a@b", "http://h/p?x=a@b");
    let path = std::path::Path::new("/etc/prescale.toml");
    for bad in ["ftp://u:secret@h/", "http://u:secret@h:99999/"] {
        let text = format!("[prometheus]\nurl = \"{bad}\"\n");
        let e = Config::parse(&text, path).expect_err(bad).to_string();
        assert!(e.contains("prometheus.url") && !e.contains("secret"), "{e}");
    }
    let e = Config::parse("[prometheus]\nurl = \"http://u:secret@h\n", path)
        .expect_err("unterminated string")
        .to_string();
    assert!(!e.contains("secret"), "{e}");
}

/// `[[target.schedule]]`: read into windows, and each broken one names file, target and key.
#[test]
fn schedules_are_read_and_validated() {
    let window = |body: &str| format!("{MINIMAL}\n[[target.schedule]]\n{body}\n");
    let c = parse(&window(
        "cron = \"0 8 * * MON-FRI\"\nduration = \"10h\"\ntimezone = \"Europe/Berlin\"\nmin_replicas = 10",
    ))
    .unwrap();
    let w = &c.targets[0].schedule[0];
    assert_eq!(
        (
            w.expression.as_str(),
            w.timezone.name(),
            w.duration,
            w.min_replicas,
            w.max_replicas
        ),
        ("0 8 * * MON-FRI", "Europe/Berlin", 36_000, Some(10), None)
    );
    let c = parse(&window(
        "cron = \"0 22 * * *\"\nduration = \"8h\"\nmax_replicas = 2",
    ))
    .unwrap();
    assert_eq!(c.targets[0].schedule[0].timezone.name(), "UTC");
    assert_eq!(c.targets[0].policy().schedule.len(), 1);

    let key = "target[web].schedule[0]";
    let cases: &[(&str, &[&str])] = &[
        (
            "cron = \"0 8 * *\"\nduration = \"1h\"\nmin_replicas = 3",
            &["cron", "4 fields", "expected 5"],
        ),
        (
            "cron = \"0 0 8 * * *\"\nduration = \"1h\"\nmin_replicas = 3",
            &["cron", "6 fields", "expected 5"],
        ),
        (
            "cron = \"0 25 * * *\"\nduration = \"1h\"\nmin_replicas = 3",
            &["cron", "`0 25 * * *` is not a cron expression"],
        ),
        (
            "cron = \"0 0 31 2 *\"\nduration = \"1h\"\nmin_replicas = 3",
            &["cron", "matches no time"],
        ),
        (
            "cron = \"0 8 * * *\"\nduration = \"1h\"\ntimezone = \"Europe/Atlantis\"\nmin_replicas = 3",
            &[
                "timezone",
                "`Europe/Atlantis` is not a known time zone",
                "IANA",
            ],
        ),
        (
            "cron = \"0 8 * * *\"\nduration = \"0s\"\nmin_replicas = 3",
            &["duration", "at least 1s"],
        ),
        (
            "cron = \"0 8 * * *\"\nduration = \"1h\"",
            &["min_replicas", "max_replicas", "at least one bound"],
        ),
        (
            "cron = \"0 8 * * *\"\nduration = \"1h\"\nmin_replicas = 9\nmax_replicas = 5",
            &["min_replicas", "9 is above the window's max_replicas 5"],
        ),
        (
            "cron = \"0 8 * * *\"\nduration = \"1h\"\nmin_replicas = 41",
            &["min_replicas", "above the target's max_replicas 40"],
        ),
        (
            "cron = \"0 8 * * *\"\nduration = \"1h\"\nmax_replicas = 1",
            &["max_replicas", "below the target's min_replicas 2"],
        ),
        (
            "cron = \"0 8 * * *\"\nduration = \"1h\"\nmax_replicas = 0\nmin_replicas = 0",
            &["max_replicas", "is 0"],
        ),
    ];
    for (body, wants) in cases {
        let err = parse(&window(body)).expect_err(body).to_string();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains(key), "error for `{body}` lacks `{key}`: {err}");
        for want in *wants {
            assert!(
                err.contains(want),
                "error for `{body}` lacks `{want}`: {err}"
            );
        }
    }
    // An unknown key is refused by the parser, naming it.
    let err = parse(&window(
        "cron = \"0 8 * * *\"\nduration = \"1h\"\nminimum = 3",
    ))
    .expect_err("unknown key")
    .to_string();
    assert!(err.contains("minimum"), "{err}");
}

#[test]
fn change_cost_defaults_to_five_minutes_and_zero_turns_it_off() {
    let cost = |extra: &str| {
        let text = MINIMAL.replace("[[target]]\n", &format!("[[target]]\n{extra}"));
        parse(&text).unwrap().targets[0].policy().change_cost
    };
    assert_eq!(cost(""), 300);
    assert_eq!(cost("change_cost = \"2m\"\n"), 120);
    assert_eq!(cost("change_cost = \"0s\"\n"), 0);
    let err = parse(&MINIMAL.replace("[[target]]\n", "[[target]]\nchange_cost = \"soon\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("change_cost"), "{err}");
}
