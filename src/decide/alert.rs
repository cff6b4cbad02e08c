//! Predicted bottlenecks that scaling cannot prevent, as alerts: pure.
//!
//! [`predicted_breach`] turns a forecast and what the target may still reach into a
//! [`Bottleneck`] (plain data), and [`AlertState::step`] decides what to send: a firing
//! alert when one appears (re-sent every `resend` so Alertmanager keeps it active), a
//! resolved one (`endsAt` = now) when the prediction clears. The per-target step calls both
//! each cycle; `act::alert` turns the [`AlertAction`] into Alertmanager's body.
//!
//! The breach computed here is "the upper forecast within the lead exceeds the capacity of
//! the most replicas the target may have" (`max_replicas`, the budget's grant, or the
//! current count in `forecast-only` mode).

use crate::forecast::Forecast;

/// Why scaling cannot prevent a breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The target already may not exceed `max_replicas`.
    MaxReplicas,
    /// The target is in `forecast-only` mode: prescale will not scale it.
    ForecastOnly,
    /// The shared budget grants the target no more replicas.
    Budget,
}

impl Limit {
    /// `max_replicas`, `forecast_only` or `budget`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxReplicas => "max_replicas",
            Self::ForecastOnly => "forecast_only",
            Self::Budget => "budget",
        }
    }
}

/// A predicted breach that scaling cannot prevent: plain data.
#[derive(Debug, Clone, PartialEq)]
pub struct Bottleneck {
    /// The target.
    pub target: String,
    /// The breached signal (`request_rate` for capacity).
    pub signal: &'static str,
    /// What stops scaling from preventing it.
    pub limit: Limit,
    /// When the forecast first crosses the limit (Unix s).
    pub breach_at: i64,
    /// `breach_at - now`, seconds (0 when already breached).
    pub time_to_breach_secs: i64,
    /// The highest upper forecast within the lead, requests/s.
    pub peak_rps: f64,
    /// What the reachable replicas serve, requests/s.
    pub capacity_rps: f64,
    /// `peak_rps - capacity_rps`, requests/s.
    pub shortfall_rps: f64,
    /// Replicas missing at the peak beyond those reachable.
    pub shortfall_replicas: u32,
}

/// The first point within `[now, now + lead]` whose upper forecast exceeds what
/// `replicas` × `capacity_per_replica` serve, with the worst shortfall in that window;
/// `None` when there is none (or the inputs are not usable).
pub fn predicted_breach(
    target: &str,
    forecast: &Forecast,
    now: i64,
    lead: i64,
    capacity_per_replica: f64,
    replicas: u32,
    limit: Limit,
) -> Option<Bottleneck> {
    if !(capacity_per_replica.is_finite() && capacity_per_replica > 0.0) {
        return None;
    }
    let capacity = f64::from(replicas) * capacity_per_replica;
    let window: Vec<_> = forecast
        .points
        .iter()
        .filter(|p| p.timestamp >= now && p.timestamp <= now + lead && p.upper.is_finite())
        .collect();
    let first = window.iter().find(|p| p.upper > capacity)?;
    let peak = window.iter().map(|p| p.upper).fold(f64::MIN, f64::max);
    let needed = (peak / capacity_per_replica - 1e-9).ceil().max(0.0) as u32;
    Some(Bottleneck {
        target: target.to_owned(),
        signal: "request_rate",
        limit,
        breach_at: first.timestamp,
        time_to_breach_secs: (first.timestamp - now).max(0),
        peak_rps: peak,
        capacity_rps: capacity,
        shortfall_rps: peak - capacity,
        shortfall_replicas: needed.saturating_sub(replicas),
    })
}

/// An alert to post to Alertmanager: a bottleneck firing, or resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertAction {
    /// The bottleneck (for a resolved alert: the last one that fired).
    pub bottleneck: Bottleneck,
    /// When it started firing (Unix s).
    pub starts_at: i64,
    /// Firing: until when Alertmanager should keep it without hearing again; resolved:
    /// when it cleared (Unix s).
    pub ends_at: i64,
    /// Whether it is resolved.
    pub resolved: bool,
    /// When this was issued (Unix s).
    pub issued_at: i64,
}

/// What a target remembers of its alert between cycles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertState {
    /// The firing alert: its bottleneck, start and last send (Unix s).
    firing: Option<(Bottleneck, i64, i64)>,
}

impl AlertState {
    /// Whether an alert is firing.
    pub fn is_firing(&self) -> bool {
        self.firing.is_some()
    }

    /// What to send at `now` given the bottleneck predicted now (`None`: none): a firing
    /// alert when it starts or every `resend` while it lasts (`endsAt` four resends ahead,
    /// so it expires if prescale stops), a resolved one when it clears, otherwise nothing.
    pub fn step(
        &mut self,
        current: Option<Bottleneck>,
        now: i64,
        resend: i64,
    ) -> Option<AlertAction> {
        let resend = resend.max(1);
        match (current, self.firing.take()) {
            (Some(b), None) => {
                self.firing = Some((b.clone(), now, now));
                Some(AlertAction {
                    bottleneck: b,
                    starts_at: now,
                    ends_at: now + 4 * resend,
                    resolved: false,
                    issued_at: now,
                })
            }
            (Some(b), Some((_, start, last))) => {
                let due = now - last >= resend;
                self.firing = Some((b.clone(), start, if due { now } else { last }));
                due.then(|| AlertAction {
                    bottleneck: b,
                    starts_at: start,
                    ends_at: now + 4 * resend,
                    resolved: false,
                    issued_at: now,
                })
            }
            (None, Some((b, start, _))) => Some(AlertAction {
                bottleneck: b,
                starts_at: start,
                ends_at: now,
                resolved: true,
                issued_at: now,
            }),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::Point;

    /// Upper bounds at now, now+60, … .
    fn forecast(now: i64, uppers: &[f64]) -> Forecast {
        Forecast {
            generated_at: now,
            step_seconds: 60,
            model: "test",
            level: 0.95,
            planned: None,
            points: uppers
                .iter()
                .enumerate()
                .map(|(i, &u)| Point {
                    timestamp: now + 60 * i as i64,
                    value: u * 0.8,
                    lower: u * 0.6,
                    upper: u,
                })
                .collect(),
        }
    }

    /// (uppers, lead, replicas) → (time to breach, shortfall rps, shortfall replicas), with
    /// 10 rps per replica.
    #[test]
    fn breaches() {
        let check = |uppers: &[f64], lead: i64, replicas: u32, want: Option<(i64, f64, u32)>| {
            let got = predicted_breach(
                "web",
                &forecast(1000, uppers),
                1000,
                lead,
                10.0,
                replicas,
                Limit::MaxReplicas,
            )
            .map(|b| (b.time_to_breach_secs, b.shortfall_rps, b.shortfall_replicas));
            assert_eq!(got, want, "{uppers:?} lead {lead} replicas {replicas}");
        };
        check(&[10.0, 20.0, 30.0], 600, 3, None);
        check(&[10.0, 20.0, 31.0], 600, 3, Some((120, 1.0, 1)));
        check(&[10.0, 45.0, 31.0], 600, 3, Some((60, 15.0, 2)));
        check(&[10.0, 20.0, 31.0], 60, 3, None);
        check(&[50.0], 60, 3, Some((0, 20.0, 2)));
        check(&[f64::NAN, 50.0], 600, 3, Some((60, 20.0, 2)));
        check(&[], 600, 3, None);
        assert_eq!(
            predicted_breach(
                "web",
                &forecast(0, &[5.0]),
                0,
                60,
                0.0,
                1,
                Limit::ForecastOnly
            ),
            None
        );
    }

    fn bottleneck(shortfall: f64) -> Bottleneck {
        predicted_breach(
            "web",
            &forecast(0, &[30.0 + shortfall]),
            0,
            60,
            10.0,
            3,
            Limit::ForecastOnly,
        )
        .expect("a breach")
    }

    #[test]
    fn fires_resends_and_resolves() {
        let mut s = AlertState::default();
        assert_eq!(s.step(None, 0, 60), None);
        let first = s.step(Some(bottleneck(5.0)), 100, 60).expect("fires");
        assert_eq!(
            (first.starts_at, first.ends_at, first.resolved),
            (100, 340, false)
        );
        assert!(s.is_firing());
        assert_eq!(s.step(Some(bottleneck(6.0)), 130, 60), None, "not yet due");
        let again = s.step(Some(bottleneck(7.0)), 160, 60).expect("re-sent");
        assert_eq!((again.starts_at, again.ends_at), (100, 400));
        assert_eq!(again.bottleneck.shortfall_rps, 7.0);
        let resolved = s.step(None, 170, 60).expect("resolves");
        assert_eq!(
            (resolved.starts_at, resolved.ends_at, resolved.resolved),
            (100, 170, true)
        );
        assert!(!s.is_firing());
        assert_eq!(s.step(None, 180, 60), None);
    }
}
