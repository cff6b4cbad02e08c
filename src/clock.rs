//! The clock the live pipeline and the API read `now` from: the system clock in production,
//! an accelerated one in the demo. The pure core never reads a clock; it is handed `now`.
//!
//! An accelerated clock measures elapsed time with tokio's `Instant`, so under
//! `tokio::time::pause()` it follows the runtime's virtual time: tests drive the live loop
//! and the outbox worker with `advance` instead of waiting.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Unix seconds, either the system's or running `speed` times faster from an origin.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// `None`: the system clock.
    accelerated: Option<Accelerated>,
}

#[derive(Debug, Clone, Copy)]
struct Accelerated {
    real_origin: Instant,
    virtual_origin: f64,
    speed: f64,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { accelerated: None }
    }

    /// A clock that reads `start` (Unix s) now and runs `speed` (> 0) times faster than real
    /// time.
    pub fn accelerated(start: i64, speed: f64) -> Self {
        let speed = if speed.is_finite() && speed > 0.0 {
            speed
        } else {
            1.0
        };
        Self {
            accelerated: Some(Accelerated {
                real_origin: Instant::now(),
                virtual_origin: start as f64,
                speed,
            }),
        }
    }

    /// Now, in Unix seconds.
    pub fn now(&self) -> i64 {
        match self.accelerated {
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            Some(a) => (a.virtual_origin + a.real_origin.elapsed().as_secs_f64() * a.speed) as i64,
        }
    }

    /// How long `d` of this clock's time lasts in real time.
    pub fn real(&self, d: Duration) -> Duration {
        match self.accelerated {
            None => d,
            Some(a) => d.div_f64(a.speed).max(Duration::from_millis(1)),
        }
    }

    /// How many times faster than real time it runs.
    pub fn speed(&self) -> f64 {
        self.accelerated.map_or(1.0, |a| a.speed)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerated_clock_starts_at_its_origin_and_scales_durations() {
        let c = Clock::accelerated(1_000, 60.0);
        assert!((1_000..1_010).contains(&c.now()));
        assert_eq!(c.real(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(
            Clock::system().real(Duration::from_secs(7)),
            Duration::from_secs(7)
        );
        assert_eq!(Clock::accelerated(0, -3.0).speed(), 1.0);
    }
}
