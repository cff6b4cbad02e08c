//! The progress of long work (`backtest`, `tune`, `forecast`) on stderr, given to the
//! library's replays as a callback: they report, this shows. stdout is never touched.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};

/// The progress of a long replay on stderr: a bar on a terminal; otherwise (a file, a
/// pipe, CI) a plain line at every tenth of the way. Given to the library as a callback.
pub struct Progress {
    what: &'static str,
    total: u64,
    /// The bar, on a terminal.
    bar: Option<indicatif::ProgressBar>,
    /// Tenths already reported as lines (without a terminal).
    tenths: AtomicU64,
    started: std::time::Instant,
}

impl Progress {
    /// Progress of `total` steps of `what` (e.g. "replaying"), shown from now.
    pub fn new(what: &'static str, total: usize) -> Self {
        let total = total as u64;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total),
                indicatif::ProgressDrawTarget::stderr(),
            );
            let template = format!("{what} {{bar:40}} {{pos}}/{{len}} steps, {{eta}} left");
            if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
                bar.set_style(style);
            }
            bar
        });
        Self {
            what,
            total,
            bar,
            tenths: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    /// `done` steps of the total are done (from any thread).
    pub fn set(&self, done: usize) {
        let done = (done as u64).min(self.total);
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let Some(line) = tenth_line(self.total, done, &self.tenths) else {
            return;
        };
        let elapsed = std::time::Duration::from_secs(self.started.elapsed().as_secs());
        // An error writing it is ignored: there is nobody to tell.
        let _ = writeln!(
            std::io::stderr(),
            "{}: {}% ({done}/{} steps, {} elapsed)",
            self.what,
            line * 10,
            self.total,
            humantime::format_duration(elapsed)
        );
    }

    /// The work is done: the bar, if any, is cleared.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The tenth of the way that `done` of `total` steps has newly reached, if any: each of
/// 1 to 10 once, the highest reached when several are passed at once.
fn tenth_line(total: u64, done: u64, reported: &AtomicU64) -> Option<u64> {
    if total == 0 {
        return None;
    }
    let tenth = done * 10 / total;
    let before = reported.fetch_max(tenth, Ordering::Relaxed);
    (tenth > before).then_some(tenth)
}

#[cfg(test)]
mod tests {
    use super::tenth_line;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn each_tenth_is_reported_once_and_jumps_report_the_highest() {
        let reported = AtomicU64::new(0);
        let lines: Vec<Option<u64>> = [5, 10, 10, 35, 100, 100]
            .into_iter()
            .map(|done| tenth_line(100, done, &reported))
            .collect();
        assert_eq!(lines, [None, Some(1), None, Some(3), Some(10), None]);
        assert_eq!(tenth_line(0, 0, &AtomicU64::new(0)), None, "nothing to do");
    }
}
