//! The deployable package: the systemd unit passes `systemd-analyze verify` and its
//! commands are ones the real binary accepts; the Dockerfile builds in one stage and ships
//! only the binary, as a non-root user, with a command the binary accepts.
//!
//! No Docker engine runs on these machines (only the client), so the image itself is not
//! built here: the Dockerfile is checked for its shape, and its command run against the
//! binary it would ship.

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const BIN: &str = env!("CARGO_BIN_EXE_prescale");
const UNIT_BIN: &str = "/usr/local/bin/prescale";

/// Runs the real binary with `args`, failing with its output unless it succeeds.
fn accepts(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().expect("run prescale");
    assert!(
        out.status.success(),
        "prescale {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The unit's `Key=value` lines under `[Service]`.
fn service_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_systemd_unit_verifies_and_runs_commands_the_binary_has() {
    let unit = repo("deploy/systemd/prescale.service");
    // systemd-analyze checks that ExecStart's binary exists: point it at the one built.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("prescale.service");
    std::fs::write(&path, unit.replace(UNIT_BIN, BIN)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("prescale.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    // Each command line, with its config replaced by the shipped example's (which passes).
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prescale.toml");
    let example = example.to_str().expect("utf-8 path");
    for line in service_values(&unit, "ExecStartPre")
        .into_iter()
        .chain(service_values(&unit, "ExecStart"))
    {
        let line = line.replace("/etc/prescale/prescale.toml", example);
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.first(), Some(&UNIT_BIN), "{line}");
        match words[1] {
            // `serve` would run: check that it takes these arguments.
            "serve" => accepts(&[&words[1..], &["--help"]].concat()),
            _ => accepts(&words[1..]),
        }
    }
    assert_eq!(
        service_values(&unit, "ExecReload"),
        ["/bin/kill -HUP $MAINPID"],
        "SIGHUP reloads the configuration"
    );
    assert_eq!(service_values(&unit, "DynamicUser"), ["yes"], "not root");
    assert_eq!(service_values(&unit, "StateDirectory"), ["prescale"]);
}

/// The Dockerfile's stages: (`FROM` line, the lines after it).
fn stages(dockerfile: &str) -> Vec<(String, Vec<String>)> {
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    let mut logical = String::new();
    for raw in dockerfile.lines() {
        let line = raw.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        logical.push_str(line.trim_end_matches('\\'));
        logical.push(' ');
        if line.ends_with('\\') {
            continue;
        }
        let done = std::mem::take(&mut logical).trim().to_owned();
        if done.starts_with("FROM ") {
            stages.push((done, Vec::new()));
        } else if let Some((_, lines)) = stages.last_mut() {
            lines.push(done);
        }
    }
    stages
}

/// The JSON array of an exec-form instruction, e.g. `CMD ["serve"]`.
fn exec_form(lines: &[String], instruction: &str) -> Vec<String> {
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("no {instruction} in the final stage"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{instruction} in exec form: {e}"))
}

#[test]
fn the_dockerfile_ships_only_the_binary_as_non_root() {
    let stages = stages(&repo("Dockerfile"));
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let (from, build) = &stages[0];
    assert!(from.ends_with(" AS build"), "{from}");
    let build = build.join("\n");
    // The protobuf definitions are compiled in Rust: no `protoc` to install.
    assert!(!build.contains("protobuf-compiler"), "{build}");
    assert!(build.contains("cargo build --release --locked"), "{build}");
    let (_, run) = stages.last().expect("a final stage");
    // Nothing but the binary is copied in, and nothing is run there.
    let copies: Vec<&String> = run.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(
        copies,
        [&format!("COPY --from=build /out/prescale {UNIT_BIN}")],
        "{run:?}"
    );
    assert!(!run.iter().any(|l| l.starts_with("RUN")), "{run:?}");
    let user = run
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("numeric uid");
    assert_ne!(uid, 0, "non-root");
    assert_eq!(exec_form(run, "ENTRYPOINT"), [UNIT_BIN]);
    let cmd = exec_form(run, "CMD");
    assert_eq!(cmd.first().map(String::as_str), Some("serve"), "{cmd:?}");
    let mut args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    args.push("--help");
    accepts(&args);
    let ignored = repo(".dockerignore");
    assert!(
        ignored.lines().any(|l| l.trim() == "target"),
        "the build context skips target/"
    );
}
