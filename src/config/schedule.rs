//! `[[target.schedule]]`: validating scheduled windows into [`Window`]s.

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;

use super::parse::{RawSchedule, RawTarget};
use super::target::target_key;
use super::{ConfigError, Validator};
use crate::decide::schedule::{Window, parse_cron};

impl Validator<'_> {
    /// The target's windows; `min_replicas` is the target's (default applied).
    pub(super) fn schedules(
        &self,
        t: &RawTarget,
        min_replicas: u32,
    ) -> Result<Vec<Window>, ConfigError> {
        t.schedule
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let key = |k: &str| target_key(&t.name, &format!("schedule[{i}].{k}"));
                self.window(s, min_replicas, t.max_replicas, key)
            })
            .collect()
    }

    /// One window: its cron expression, time zone, duration and bounds; each bound it
    /// leaves out is the target's, and together they must hold `min <= max`.
    fn window(
        &self,
        s: &RawSchedule,
        min_replicas: u32,
        max_replicas: u32,
        key: impl Fn(&str) -> String,
    ) -> Result<Window, ConfigError> {
        let cron = self.cron(&s.cron, &key("cron"))?;
        let timezone = match &s.timezone {
            None => Tz::UTC,
            Some(name) => name.parse::<Tz>().map_err(|_| {
                self.err(
                    key("timezone"),
                    format!(
                        "`{name}` is not a known time zone; expected an IANA name such as `Europe/Berlin` or `UTC`"
                    ),
                )
            })?,
        };
        if s.duration.as_secs() == 0 {
            return Err(self.err(key("duration"), "expected at least 1s"));
        }
        let (min, max) = (s.min_replicas, s.max_replicas);
        match (min, max) {
            (None, None) => {
                return Err(self.err(
                    key("min_replicas"),
                    "is missing, and so is max_replicas; expected at least one bound for the window",
                ));
            }
            (_, Some(0)) => {
                return Err(self.err(key("max_replicas"), "is 0; expected at least 1"));
            }
            (Some(lo), Some(hi)) if lo > hi => {
                return Err(self.err(
                    key("min_replicas"),
                    format!("{lo} is above the window's max_replicas {hi}; expected min_replicas <= max_replicas"),
                ));
            }
            (Some(lo), None) if lo > max_replicas => {
                return Err(self.err(
                    key("min_replicas"),
                    format!("{lo} is above the target's max_replicas {max_replicas}; expected at most that, or a max_replicas for the window"),
                ));
            }
            (None, Some(hi)) if hi < min_replicas => {
                return Err(self.err(
                    key("max_replicas"),
                    format!("{hi} is below the target's min_replicas {min_replicas}; expected at least that, or a min_replicas for the window"),
                ));
            }
            _ => {}
        }
        Ok(Window {
            expression: s.cron.trim().to_owned(),
            cron,
            timezone,
            duration: s.duration.as_secs() as i64,
            min_replicas: min,
            max_replicas: max,
        })
    }

    /// A cron expression of 5 fields that matches some time.
    fn cron(&self, expr: &str, key: &str) -> Result<Cron, ConfigError> {
        let fields = expr.split_whitespace().count();
        if fields != 5 && !expr.trim_start().starts_with('@') {
            return Err(self.err(
                key,
                format!("`{expr}` has {fields} fields; expected 5: minute, hour, day of month, month, day of week, e.g. \"0 8 * * MON-FRI\""),
            ));
        }
        let cron = parse_cron(expr).map_err(|e| {
            self.err(
                key,
                format!("`{expr}` is not a cron expression ({e}); expected 5 fields, e.g. \"0 8 * * MON-FRI\""),
            )
        })?;
        // An expression that matches no date (say 31 February) would never open, and
        // searching for it would be slow at every decision.
        let start = Utc.timestamp_opt(946_684_800, 0).single();
        let matches = start.is_some_and(|t| cron.find_next_occurrence(&t, true).is_ok());
        if !matches {
            return Err(self.err(
                key,
                format!("`{expr}` matches no time; expected an expression that occurs"),
            ));
        }
        Ok(cron)
    }
}
