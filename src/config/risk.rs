//! `risk`: one dial for a target's trade-off between cost and lost requests
//! (`decide::risk`), as a number in [0, 1] or a name.

use super::parse::{RawRisk, RawTarget};
use super::target::target_key;
use super::{ConfigError, Validator};
use crate::decide::risk::Risk;

impl Validator<'_> {
    /// The target's `risk`, `balanced` when absent.
    pub(super) fn risk(&self, t: &RawTarget) -> Result<Risk, ConfigError> {
        let key = || target_key(&t.name, "risk");
        match &t.risk {
            None => Ok(Risk::default()),
            Some(RawRisk::Value(v)) => Risk::new(*v).ok_or_else(|| {
                self.err(
                    key(),
                    format!("{v} is out of range; expected a number in [0, 1] or lean, balanced, safe"),
                )
            }),
            Some(RawRisk::Name(n)) => Risk::named(n).ok_or_else(|| {
                self.err(
                    key(),
                    format!("`{n}` is not a risk setting; expected lean, balanced, safe or a number in [0, 1]"),
                )
            }),
        }
    }

    /// The target's `interval_share`, the dial's when absent.
    pub(super) fn interval_share(&self, t: &RawTarget, risk: Risk) -> Result<f64, ConfigError> {
        let v = t
            .interval_share
            .unwrap_or_else(|| risk.planning().interval_share);
        if (0.0..=2.0).contains(&v) {
            Ok(v)
        } else {
            Err(self.err(
                target_key(&t.name, "interval_share"),
                format!(
                    "{v} is out of range; expected a number in [0, 2], e.g. 1 (the upper bound)"
                ),
            ))
        }
    }
}

impl super::TargetConfig {
    /// This target with every setting the dial moves taken from `risk` (keys that
    /// override the dial are replaced too): what `prescale tune` replays.
    pub fn with_risk(&self, risk: Risk) -> Self {
        let p = risk.planning();
        let mut t = self.clone();
        t.risk = risk;
        t.interval_share = p.interval_share;
        t.prediction_utilization = p.prediction_utilization;
        t.target_utilization = p.target_utilization;
        t.scale_in_window = std::time::Duration::from_secs(p.scale_in_window as u64);
        t.scale_down.stabilization_window = p.scale_in_window;
        t.scale_in_from_dial = true;
        t
    }
}
