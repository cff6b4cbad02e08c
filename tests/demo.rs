//! `prescale demo` as a newcomer runs it: the binary alone serves a moving pipeline, scales
//! its simulated platform by signed webhook, and stops cleanly on Ctrl-C (SIGINT).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{AppProcess, poll_until};

/// Simulated seconds per real second.
const SPEED: f64 = 1800.0;
/// How long the demo may take for what is awaited, in real time. At [`SPEED`] a minute is
/// 30 simulated hours; a busy machine slows the pipeline, never the simulated clock.
const DEADLINE: Duration = Duration::from_secs(60);
/// How far simulated time must move while the test watches.
const ADVANCE: i64 = 600;

/// The newest request-rate sample's timestamp: how far the demo's pipeline has got in
/// simulated time. (Not its status: at this speed a busy machine makes the data look stale
/// for a moment.)
fn newest_sample(demo: &AppProcess) -> Option<i64> {
    let t = demo.get_json("/api/v1/targets/demo")?;
    t["signals"]["request_rate"]["newest"].as_i64()
}

/// The replica counts asked for by decisions made at or after `since` (simulated time).
fn counts_since(demo: &AppProcess, since: i64) -> Option<BTreeSet<u64>> {
    let d = demo.get_json("/api/v1/decisions?target=demo&limit=1000")?;
    let counts = d["decisions"]
        .as_array()?
        .iter()
        .filter(|d| d["at"].as_i64().is_some_and(|at| at >= since))
        .filter_map(|d| d["to"].as_u64())
        .collect();
    Some(counts)
}

#[test]
fn demo_runs_the_pipeline_on_its_own_goes_on_after_sighup_and_stops_on_ctrl_c() {
    let mut demo = AppProcess::demo(SPEED);
    let first = poll_until("the demo to be ready with data", DEADLINE, || {
        let ready = matches!(demo.get("/readyz"), Ok((200, _)));
        ready.then(|| newest_sample(&demo)).flatten()
    });
    // Simulated time moves, as the API reports it: new samples keep arriving. Waiting on
    // this (not on anything else) makes a stalled clock or pipeline fail here.
    let what = format!("simulated time to advance {ADVANCE} s past {first}");
    let later = poll_until(&what, DEADLINE, || {
        newest_sample(&demo).filter(|n| *n >= first + ADVANCE)
    });
    // The replica count follows the synthetic day (and its flash crowd): decisions made
    // since the test started watching ask for at least three different counts.
    let replicas = poll_until("the replica count to move twice", DEADLINE, || {
        counts_since(&demo, first).filter(|seen| seen.len() >= 3)
    });
    let f = demo
        .get_json("/api/v1/targets/demo/forecast?horizon=2h")
        .expect("forecast");
    assert!(f["points"].as_array().is_some_and(|p| p.len() > 100), "{f}");
    let (status, page) = demo.get("/").expect("dashboard");
    assert!(
        status == 200 && page.contains("demand-chart"),
        "dashboard served"
    );

    // A SIGHUP does not stop it: it says so and goes on serving.
    demo.signal("HUP");
    poll_until("the demo to log the SIGHUP", DEADLINE, || {
        demo.stderr().contains("SIGHUP").then_some(())
    });
    assert!(demo.exited().is_none(), "the demo exited on SIGHUP");
    assert!(matches!(demo.get("/readyz"), Ok((200, _))), "still serving");

    demo.interrupt();
    let status = demo.wait_exit();
    let (out, err) = (demo.stdout(), demo.stderr());
    assert!(status.success(), "exit {status}: {err}");
    assert!(
        out.contains(&format!("dashboard: http://{}/", demo.addr)),
        "tells where to look: {out}"
    );
    assert!(
        err.contains("demo platform received a scale webhook"),
        "the platform was scaled by webhook ({first} → {later}: {replicas:?}): {err}"
    );
    assert!(!err.contains("bad signature"), "{err}");
    assert!(!err.contains("panicked"), "no task panicked: {err}");
    let token = out
        .split("API token (pause, resume, refit, frontier): ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("prints the token: {out}"));
    assert!(
        out.contains(&format!("dashboard: http://{}/#token={token} ", demo.addr)),
        "the dashboard's address carries the token, so that its buttons act: {out}"
    );
}
