//! The Alertmanager (API v2) body of a predicted-bottleneck alert. What to alert and when
//! is decided in the pure core ([`crate::decide::alert`]); this is only its wire form.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

pub use crate::decide::alert::{AlertAction, AlertState, Bottleneck, Limit, predicted_breach};

/// The `alertname` label of every alert prescale sends.
pub const ALERT_NAME: &str = "PrescaleBottleneck";

impl AlertAction {
    /// The Alertmanager v2 body: a list with one alert. Labels (`alertname`, `target`,
    /// `signal`) identify it; annotations carry the numbers.
    pub fn payload(&self) -> Value {
        let b = &self.bottleneck;
        json!([{
            "labels": {
                "alertname": ALERT_NAME,
                "target": b.target,
                "signal": b.signal,
                "severity": "warning",
            },
            "annotations": {
                "summary": format!(
                    "{}: {} predicted to exceed capacity ({}) in {}",
                    b.target,
                    b.signal,
                    b.limit.as_str(),
                    humantime::format_duration(Duration::from_secs(b.time_to_breach_secs as u64))
                ),
                "time_to_breach": humantime::format_duration(Duration::from_secs(b.time_to_breach_secs as u64)).to_string(),
                "time_to_breach_seconds": b.time_to_breach_secs.to_string(),
                "breach_at": rfc3339(b.breach_at),
                "shortfall_rps": format!("{:.2}", b.shortfall_rps),
                "shortfall_replicas": b.shortfall_replicas.to_string(),
                "peak_rps": format!("{:.2}", b.peak_rps),
                "capacity_rps": format!("{:.2}", b.capacity_rps),
                "limit": b.limit.as_str(),
            },
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(self.ends_at),
        }])
    }
}

fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bottleneck(shortfall: f64) -> Bottleneck {
        Bottleneck {
            target: "web".to_owned(),
            signal: "request_rate",
            limit: Limit::ForecastOnly,
            breach_at: 0,
            time_to_breach_secs: 0,
            peak_rps: 30.0 + shortfall,
            capacity_rps: 30.0,
            shortfall_rps: shortfall,
            shortfall_replicas: 1,
        }
    }

    #[test]
    fn alertmanager_body() {
        let a = AlertAction {
            bottleneck: bottleneck(5.0),
            starts_at: 1_700_000_000,
            ends_at: 1_700_000_240,
            resolved: false,
            issued_at: 1_700_000_000,
        };
        let body = a.payload();
        let alert = &body[0];
        assert_eq!(
            alert["labels"],
            json!({"alertname": ALERT_NAME, "target": "web", "signal": "request_rate", "severity": "warning"})
        );
        assert_eq!(alert["annotations"]["shortfall_rps"], "5.00");
        assert_eq!(alert["annotations"]["shortfall_replicas"], "1");
        assert_eq!(alert["annotations"]["time_to_breach_seconds"], "0");
        assert_eq!(alert["annotations"]["limit"], "forecast_only");
        assert_eq!(alert["startsAt"], "2023-11-14T22:13:20Z");
        assert_eq!(alert["endsAt"], "2023-11-14T22:17:20Z");
    }
}
