//! One dial for a target's whole trade-off between cost and lost requests.
//!
//! `risk` runs from 0 (leanest: fewest replica-hours, most requests lost) to 1 (safest);
//! `balanced` (0.5) is exactly the defaults of the separate keys. Every setting it moves
//! moves the same way as the dial grows, so a larger value plans for more and releases
//! later:
//!
//! | at | interval share | prediction utilisation | target utilisation | scale-in window | with recurring bursts |
//! |---|---|---|---|---|---|
//! | 0 (leanest) | 0 | 1.00 | 0.95 | 75 s | 60 s |
//! | 0.25 `lean` | 0.5 | 0.95 | 0.825 | 150 s | 60 s |
//! | 0.5 `balanced` | 1.0 | 0.90 | 0.70 | 300 s | 60 s |
//! | 0.75 `safe` | 1.25 | 0.85 | 0.625 | 600 s | 300 s |
//! | 1 (safest) | 1.5 | 0.80 | 0.55 | 1200 s | 1200 s |
//!
//! The interval share is how much of the prediction interval above the point forecast is
//! planned for (1: the upper bound; 0: the point forecast alone; in between, the quantile a
//! normal error would put that far, read from the target's calibrated errors). The
//! lean half moves faster than the safe half: below the defaults the forecast's own margin
//! is what is given up first. When the load planned for comes from the target's recurring
//! bursts (a quantile of what followed at the same phase and time since a burst), the
//! share stands for the quantile a normal error would put there, and scale-in waits the
//! last column's window: that plan already holds capacity where a burst may come back.

use serde::Serialize;

/// A point on the dial, in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
pub struct Risk(f64);

/// What the dial sets: each the default of a separate key, which overrides it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Planning {
    /// Share of the prediction interval above the point forecast planned for.
    pub interval_share: f64,
    /// The prediction policy's utilisation of capacity.
    pub prediction_utilization: f64,
    /// The demand policy's utilisation of capacity.
    pub target_utilization: f64,
    /// The scale-down stabilisation window, seconds.
    pub scale_in_window: i64,
    /// The scale-down stabilisation window while the load planned for comes from the
    /// target's recurring bursts, seconds: that plan already keeps capacity where a burst
    /// may come back, so one minute up to `balanced`, then rising to the safest.
    pub recurring_scale_in_window: i64,
}

impl Risk {
    /// The leanest named setting.
    pub const LEAN: Self = Self(0.25);
    /// The default.
    pub const BALANCED: Self = Self(0.5);
    /// The safest named setting.
    pub const SAFE: Self = Self(0.75);

    /// A dial value in [0, 1]; `None` outside it (or not finite).
    pub fn new(v: f64) -> Option<Self> {
        (0.0..=1.0).contains(&v).then_some(Self(v))
    }

    /// A named setting: `lean`, `balanced` or `safe`.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "lean" => Some(Self::LEAN),
            "balanced" => Some(Self::BALANCED),
            "safe" => Some(Self::SAFE),
            _ => None,
        }
    }

    /// The value, in [0, 1].
    pub fn value(self) -> f64 {
        self.0
    }

    /// The settings at this point of the dial.
    pub fn planning(self) -> Planning {
        let d = self.0;
        let lean = d < 0.5;
        Planning {
            interval_share: if lean { 2.0 * d } else { 0.5 + d },
            prediction_utilization: 1.0 - 0.2 * d,
            target_utilization: if lean { 0.95 - 0.5 * d } else { 0.85 - 0.3 * d },
            scale_in_window: window(d),
            recurring_scale_in_window: if lean || d == 0.5 {
                RECURRING_LEANEST
            } else {
                window(2.0 * d - 1.0)
            },
        }
    }
}

/// The scale-in window with recurring bursts up to `balanced`, seconds: one minute, since
/// the cost of a change ([`calm`](super::calm)) is what holds a count the plan asks for
/// again, and a longer window only delays each fall.
const RECURRING_LEANEST: i64 = 60;

/// The scale-in window at `d` on the dial: 75 s at 0, 300 s at ½, 1200 s at 1.
fn window(d: f64) -> i64 {
    (300.0 * 4f64.powf(2.0 * d - 1.0)).round() as i64
}

impl Default for Risk {
    fn default() -> Self {
        Self::BALANCED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_is_the_defaults_and_every_setting_moves_one_way() {
        let b = Risk::BALANCED.planning();
        assert_eq!(b.interval_share, 1.0);
        assert!((b.prediction_utilization - 0.9).abs() < 1e-12);
        assert!((b.target_utilization - 0.7).abs() < 1e-12);
        assert_eq!(b.scale_in_window, 300);
        assert_eq!(b.recurring_scale_in_window, 60);
        assert_eq!(Risk::SAFE.planning().recurring_scale_in_window, 300);
        assert_eq!(
            Risk::new(1.0)
                .expect("in range")
                .planning()
                .recurring_scale_in_window,
            1200
        );
        let dial: Vec<Planning> = (0..=20)
            .map(|k| Risk::new(f64::from(k) / 20.0).expect("in range").planning())
            .collect();
        for w in dial.windows(2) {
            assert!(w[1].interval_share > w[0].interval_share);
            assert!(w[1].prediction_utilization < w[0].prediction_utilization);
            assert!(w[1].target_utilization < w[0].target_utilization);
            assert!(w[1].scale_in_window >= w[0].scale_in_window);
            assert!(w[1].recurring_scale_in_window >= w[0].recurring_scale_in_window);
            assert!(w[1].recurring_scale_in_window <= w[1].scale_in_window);
        }
        assert!(Risk::new(1.01).is_none() && Risk::new(f64::NAN).is_none());
        assert_eq!(Risk::named("safe"), Some(Risk::SAFE));
        assert_eq!(Risk::named("reckless"), None);
    }
}
