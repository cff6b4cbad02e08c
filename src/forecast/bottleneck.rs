//! Predicted bottlenecks: the first time within a forecast at which demand outgrows the
//! capacity of the replicas running now, as plain data.
//!
//! Two signals are checked at each forecast point: the upper forecast against
//! `replicas × capacity per replica` (`request_rate`), and, with a learned latency curve and
//! an SLO, the latency predicted at the point forecast's load per replica (`latency`).

use serde::Serialize;

use super::capacity::LatencyCurve;
use super::types::Forecast;

/// Which signal breaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreachSignal {
    /// The upper forecast exceeds the capacity of the running replicas.
    RequestRate,
    /// The latency predicted from the point forecast exceeds the SLO.
    Latency,
}

/// The first predicted breach.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breach {
    /// When (Unix s).
    pub at: i64,
    /// Seconds from `now` to then.
    pub seconds_to_breach: i64,
    /// Which signal breaches first.
    pub signal: BreachSignal,
    /// Largest (point forecast − capacity) over the horizon, requests/s; 0 when only the
    /// upper bound crosses.
    pub expected_shortfall_rps: f64,
    /// Largest (upper forecast − capacity) over the horizon, requests/s.
    pub upper_shortfall_rps: f64,
    /// Latency predicted at the breach, seconds (with a latency curve).
    pub predicted_latency_seconds: Option<f64>,
}

/// A target's predicted bottleneck.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bottleneck {
    /// Replicas counted on.
    pub replicas: u32,
    /// Requests/s the running replicas serve within their SLO.
    pub capacity_rps: f64,
    /// Capacity minus the demand now, requests/s (negative when short already).
    pub headroom_now_rps: Option<f64>,
    /// Demand now over capacity.
    pub utilisation_now: Option<f64>,
    /// End of the horizon checked (Unix s).
    pub horizon_end: i64,
    /// The first breach within the horizon, if any.
    pub breach: Option<Breach>,
}

impl Bottleneck {
    /// Seconds to the breach; `+∞` when none is predicted within the horizon.
    pub fn seconds_to_breach(&self) -> f64 {
        self.breach
            .as_ref()
            .map_or(f64::INFINITY, |b| b.seconds_to_breach as f64)
    }
}

/// What a bottleneck is predicted from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The demand forecast, requests/s.
    pub forecast: &'a Forecast,
    /// Now (Unix s); points before it are ignored.
    pub now: i64,
    /// Replicas running now.
    pub replicas: u32,
    /// Requests/s one replica serves within its SLO.
    pub capacity_per_replica: f64,
    /// Demand now, requests/s.
    pub demand_now: Option<f64>,
    /// Latency curve and SLO (s), when learned.
    pub latency: Option<(LatencyCurve, f64)>,
}

/// The first breach of the running capacity within the forecast.
pub fn predict(inputs: Inputs<'_>) -> Bottleneck {
    let capacity = f64::from(inputs.replicas) * inputs.capacity_per_replica;
    let points: Vec<_> = inputs
        .forecast
        .points
        .iter()
        .filter(|p| p.timestamp >= inputs.now)
        .collect();
    let latency_at = |rps: f64| {
        inputs
            .latency
            .map(|(curve, _)| curve.latency(rps / f64::from(inputs.replicas.max(1))))
    };
    let first = points.iter().find_map(|p| {
        if p.upper > capacity {
            return Some((p, BreachSignal::RequestRate));
        }
        match (latency_at(p.value), inputs.latency) {
            (Some(l), Some((_, slo))) if l > slo => Some((p, BreachSignal::Latency)),
            _ => None,
        }
    });
    let breach = first.map(|(p, signal)| Breach {
        at: p.timestamp,
        seconds_to_breach: p.timestamp - inputs.now,
        signal,
        expected_shortfall_rps: points
            .iter()
            .map(|q| q.value - capacity)
            .fold(0.0, f64::max),
        upper_shortfall_rps: points
            .iter()
            .map(|q| q.upper - capacity)
            .fold(0.0, f64::max),
        predicted_latency_seconds: latency_at(p.value),
    });
    Bottleneck {
        replicas: inputs.replicas,
        capacity_rps: capacity,
        headroom_now_rps: inputs.demand_now.map(|d| capacity - d),
        utilisation_now: inputs
            .demand_now
            .filter(|_| capacity > 0.0)
            .map(|d| d / capacity),
        horizon_end: points.last().map_or(inputs.now, |p| p.timestamp),
        breach,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::types::Point;

    fn forecast(values: &[(f64, f64)]) -> Forecast {
        Forecast {
            generated_at: 1_000,
            step_seconds: 60,
            model: "test",
            level: 0.95,
            planned: None,
            points: values
                .iter()
                .enumerate()
                .map(|(k, &(value, upper))| Point {
                    timestamp: 1_000 + 60 * k as i64,
                    value,
                    lower: 0.0,
                    upper,
                })
                .collect(),
        }
    }

    #[test]
    fn first_breach_signal_and_shortfall() {
        let curve = LatencyCurve {
            base: 0.05,
            gain: 0.05,
            saturation: 20.0,
        };
        // (forecast (value, upper), replicas, capacity/replica, latency, want: (seconds, signal, expected, upper))
        type Want = Option<(i64, BreachSignal, f64, f64)>;
        type Case<'a> = (
            &'a [(f64, f64)],
            u32,
            f64,
            Option<(LatencyCurve, f64)>,
            Want,
        );
        let cases: &[Case<'_>] = &[
            (&[(10.0, 12.0), (15.0, 18.0)], 2, 10.0, None, None),
            (
                &[(10.0, 12.0), (18.0, 22.0), (25.0, 30.0)],
                2,
                10.0,
                None,
                Some((60, BreachSignal::RequestRate, 5.0, 10.0)),
            ),
            // Latency at 15 rps over 1 replica: 0.05 + 0.05 / 0.25 = 0.25 s > 0.2 s SLO.
            (
                &[(5.0, 6.0), (15.0, 16.0)],
                1,
                100.0,
                Some((curve, 0.2)),
                Some((60, BreachSignal::Latency, 0.0, 0.0)),
            ),
        ];
        for (k, &(values, replicas, cap, latency, want)) in cases.iter().enumerate() {
            let b = predict(Inputs {
                forecast: &forecast(values),
                now: 1_000,
                replicas,
                capacity_per_replica: cap,
                demand_now: Some(values[0].0),
                latency,
            });
            let got = b.breach.as_ref().map(|b| {
                (
                    b.seconds_to_breach,
                    b.signal,
                    b.expected_shortfall_rps,
                    b.upper_shortfall_rps,
                )
            });
            assert_eq!(got, want, "case {k}");
            assert_eq!(
                b.headroom_now_rps,
                Some(f64::from(replicas) * cap - values[0].0)
            );
            if want.is_none() {
                assert_eq!(b.seconds_to_breach(), f64::INFINITY);
            }
        }
    }
}
