//! The risk dial on each shared real trace: as it grows, replica-hours rise and lost
//! requests fall, each within 1 % of monotone. Five days of each trace (AMZN's 5-minute
//! buckets: twelve), scored after a two-day warm-up, at five points of the dial, replayed
//! in parallel by `prescale tune`'s own code.

use std::path::Path;
use std::time::Duration;

use prescale::config::{ForecastConfig, TargetConfig};
use prescale::decide::risk::Risk;
use prescale::simulate::tune::{self, Objective, Options};
use prescale::source::replay::Trace;

/// (file, days replayed): the requests per bucket, with capacity set so that the mean
/// demand needs 8 replicas, as the judge's `--mean-replicas 8`.
const TRACES: [(&str, usize); 3] = [
    ("nasa_http_jul95_1min.csv", 5),
    ("nab_twitter_volume_amzn_5min.csv", 12),
    ("twitter_stream_aug2021_1min.csv", 5),
];

fn trace(file: &str, days: usize) -> Trace {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/traces")
        .join(file);
    let t = Trace::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    t.truncated(days * 86_400 / t.step as usize)
}

#[test]
fn along_the_dial_cost_rises_and_lost_requests_fall() {
    let dials: Vec<Risk> = [0.0, 0.25, 0.5, 0.75, 1.0]
        .into_iter()
        .filter_map(Risk::new)
        .collect();
    for (file, days) in TRACES {
        let trace = trace(file, days);
        let mean_rps = trace.mean_rps().expect("a trace with data");
        let target = TargetConfig::example(file, mean_rps / 8.0, Duration::from_secs(300));
        let opts = Options {
            dials: dials.clone(),
            train_until: None,
            skip: 2 * 86_400,
            objective: Objective::CostOfHpa,
            threads: 2,
            // The grid alone: refined dials would crowd one stretch of it.
            refine: 0,
            min_scored: tune::MIN_SCORED,
        };
        let t = tune::tune(&trace, &target, &ForecastConfig::default(), &opts, &|_| {})
            .expect("five days and more, two skipped: scored");
        let f = &t.frontier;
        assert_eq!(f.len(), dials.len(), "{file}");
        for w in f.windows(2) {
            let (a, b) = (&w[0].score, &w[1].score);
            assert!(
                b.replica_hours >= a.replica_hours * 0.99,
                "{file}: replica-hours fell from risk {} to {}: {f:#?}",
                w[0].risk,
                w[1].risk
            );
            assert!(
                b.lost_pct <= a.lost_pct * 1.01 + 1e-3,
                "{file}: lost requests rose from risk {} to {}: {f:#?}",
                w[0].risk,
                w[1].risk
            );
        }
        // The dial spans a real trade-off, not one point.
        let (lean, safe) = (&f[0].score, &f[f.len() - 1].score);
        assert!(
            safe.replica_hours > lean.replica_hours * 1.2,
            "{file}: {f:#?}"
        );
        assert!(safe.lost_pct < lean.lost_pct, "{file}: {f:#?}");
    }
}
