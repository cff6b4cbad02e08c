//! `prescale demo` as a newcomer runs it: the binary alone serves a moving pipeline, scales
//! its simulated platform by signed webhook, and stops cleanly on Ctrl-C (SIGINT).

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::poll_until;

fn get_json(addr: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
    match common::http_get(addr, path) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

#[test]
fn demo_runs_the_pipeline_on_its_own_and_stops_on_ctrl_c() {
    let port = common::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_prescale"))
        .args(["demo", "--listen", &addr.to_string(), "--speed", "1800"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prescale demo");
    // Drain the output while the demo runs, so a full pipe never stalls it.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out_reader = drain(Box::new(child.stdout.take().unwrap()));
    let err_reader = drain(Box::new(child.stderr.take().unwrap()));

    let first = poll_until(
        "the demo to be ready with data",
        Duration::from_secs(60),
        || {
            let t = get_json(addr, "/api/v1/targets/demo")?;
            (t["status"] == "ok")
                .then(|| t["signals"]["request_rate"]["newest"].as_i64())
                .flatten()
        },
    );
    // Simulated time moves: new samples keep arriving and the replica count changes as the
    // synthetic day (and its flash crowd) goes by.
    let replicas = poll_until("the replica count to move", Duration::from_secs(60), || {
        let d = get_json(addr, "/api/v1/decisions?target=demo&limit=1000")?;
        let seen: BTreeSet<u64> = d["decisions"]
            .as_array()?
            .iter()
            .filter_map(|d| d["to"].as_u64())
            .collect();
        (seen.len() >= 3).then_some(seen)
    });
    let later = get_json(addr, "/api/v1/targets/demo").expect("target");
    let newest = later["signals"]["request_rate"]["newest"].as_i64().unwrap();
    assert!(
        newest >= first + 600,
        "simulated time advanced from {first} to {newest}"
    );
    let f = get_json(addr, "/api/v1/targets/demo/forecast?horizon=2h").expect("forecast");
    assert!(f["points"].as_array().is_some_and(|p| p.len() > 100), "{f}");
    let (status, page) = common::http_get(addr, "/").expect("dashboard");
    assert!(
        status == 200 && page.contains("demand-chart"),
        "dashboard served"
    );

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = poll_until("the demo to exit", Duration::from_secs(20), || {
        child.try_wait().ok().flatten()
    });
    let out = out_reader.join().expect("stdout");
    let err = err_reader.join().expect("stderr");
    assert!(status.success(), "exit {status}: {err}");
    assert!(
        out.contains(&format!("dashboard: http://{addr}/")),
        "tells where to look: {out}"
    );
    assert!(
        err.contains("demo platform received a scale webhook"),
        "the platform was scaled by webhook ({replicas:?}): {err}"
    );
    assert!(!err.contains("bad signature"), "{err}");
    assert!(
        out.contains("API token (pause, resume, refit): "),
        "prints the token: {out}"
    );
}
