//! The `prescale` command: parses arguments, loads the configuration, initialises logging
//! and calls into the library.

// Functions stay under `too-many-lines-threshold` (clippy.toml) lines.
#![warn(clippy::too_many_lines)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use prescale::config::{Config, TargetConfig};
use prescale::source::replay::Trace;

/// A predictive autoscaler: forecasts demand from Prometheus and scales ahead of it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once; the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Poll Prometheus, forecast, decide, send webhooks and serve the HTTP API.
    Serve {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the whole pipeline on a synthetic workload (or a trace) with a simulated
    /// platform, the API and the dashboard: nothing else needed.
    Demo {
        /// Where the API and the dashboard listen.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Replay this trace (CSV `timestamp_seconds,value`) instead of the synthetic workload.
        #[arg(long)]
        trace: Option<PathBuf>,
        /// How many times faster than real time the simulation runs (900: an hour every 4 s).
        #[arg(long, default_value_t = 900.0)]
        speed: f64,
    },
    /// Validate a configuration file and print a summary.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Replay a trace through the forecast and decision code on a virtual clock.
    Backtest {
        /// Trace CSV: `timestamp_seconds,value`, value = requests in the bucket.
        #[arg(
            long,
            required_unless_present = "prometheus",
            conflicts_with = "prometheus"
        )]
        trace: Option<PathBuf>,
        /// Replay a range of a Prometheus series instead of a trace file.
        #[arg(long, requires_all = ["query", "from", "to"])]
        prometheus: Option<url::Url>,
        /// PromQL giving the request rate (requests/s) as one series.
        #[arg(long)]
        query: Option<String>,
        /// Start of the range: RFC 3339 (`2026-01-01T00:00:00Z`) or Unix seconds.
        #[arg(long, value_parser = parse_time)]
        from: Option<i64>,
        /// End of the range: RFC 3339 or Unix seconds.
        #[arg(long, value_parser = parse_time)]
        to: Option<i64>,
        /// Resolution of the replayed range (with `--prometheus`).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1m")]
        step: Duration,
        /// Requests/s one replica serves.
        #[arg(long)]
        capacity: f64,
        /// Time from asking for a replica to it serving, e.g. `5m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        startup: Duration,
        /// Where to write the decisions CSV.
        #[arg(long)]
        out: PathBuf,
        /// Take the policy (min/max replicas, windows) from this config's first target.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also write the scores (prescale, the HPA at 0.5–0.9, clairvoyant) as JSON here.
        #[arg(long)]
        summary: Option<PathBuf>,
        /// Also draw demand, forecast band, serving capacity and replicas as SVG here.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Warm-up left out of the scores, e.g. `2d`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        skip: Duration,
    },
    /// Rolling forecasts over a trace, `--horizon` ahead of every step; prints the accuracy
    /// per model (MASE against the daily seasonal naive, sMAPE, interval coverage).
    Forecast {
        /// Trace CSV: `timestamp_seconds,value`, value = requests in the bucket.
        #[arg(long)]
        trace: PathBuf,
        /// How far ahead, e.g. `15m` or `1h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        horizon: Duration,
        /// Where to write the forecasts CSV.
        #[arg(long)]
        out: PathBuf,
        /// Take `[forecast]` settings and the first target's history from this config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Seconds at the start of the trace left out of the printed scores.
        #[arg(long, default_value_t = 604_800)]
        skip: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    prescale::telemetry::init(matches!(cli.log_format, LogFormat::Json));
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.server.listen)
                    .await
                    .with_context(|| format!("listening on {}", config.server.listen))?;
                prescale::serve(config, listener, prescale::shutdown_signal()).await
            })
        }
        Command::Demo {
            listen,
            trace,
            speed,
        } => {
            anyhow::ensure!(
                speed.is_finite() && speed > 0.0,
                "--speed {speed}: expected a positive number"
            );
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let opts = prescale::demo::DemoOptions {
                listen,
                trace,
                speed,
            };
            runtime.block_on(prescale::demo::run(opts, prescale::shutdown_signal()))
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!("{}: ok", file.display());
            print!("{}", prescale::summary(&config));
            Ok(())
        }
        Command::Backtest {
            trace,
            prometheus,
            query,
            from,
            to,
            step,
            capacity,
            startup,
            out,
            config,
            summary,
            plot,
            skip,
        } => {
            anyhow::ensure!(
                capacity.is_finite() && capacity > 0.0,
                "--capacity {capacity}: expected a positive number of requests/s"
            );
            let (mut target, level) = match config {
                Some(path) => {
                    let c = Config::load(&path)?;
                    (c.targets[0].clone(), c.forecast.level)
                }
                None => (TargetConfig::example("backtest", capacity, startup), 0.95),
            };
            target.capacity_rps = Some(capacity);
            target.startup = startup;
            let trace = match (trace, prometheus, query, from, to) {
                (Some(path), ..) => Trace::load(&path)?,
                (None, Some(url), Some(query), Some(from), Some(to)) => {
                    prometheus_trace(url, &query, from, to, step)?
                }
                _ => anyhow::bail!(
                    "expected --trace FILE or --prometheus URL --query Q --from T --to T"
                ),
            };
            let started = std::time::Instant::now();
            let bar = progress_bar(trace.counts.len());
            let rows = prescale::simulate::backtest(&trace, &target, level, |done| {
                bar.set_position(done as u64)
            });
            bar.finish_and_clear();
            write_csv(&out, &rows)?;
            let skip = skip.as_secs() as i64;
            let scores = prescale::simulate::Summary::of(&trace, &target, &rows, skip);
            print!("{}", scores.table());
            if let Some(path) = summary {
                let json = serde_json::to_string_pretty(&scores)?;
                std::fs::write(&path, json + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = plot {
                let asked: Vec<u32> = rows.iter().map(|r| r.replicas).collect();
                let delay = startup.as_secs().div_ceil(trace.step as u64) as usize;
                let serving = prescale::simulate::ready(&asked, delay);
                let svg = prescale::simulate::plot::svg(&rows, &serving, capacity)
                    .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
                std::fs::write(&path, svg)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            tracing::debug!(elapsed = ?started.elapsed(), "backtest done");
            Ok(())
        }
        Command::Forecast {
            trace,
            horizon,
            out,
            config,
            skip,
        } => {
            let trace = Trace::load(&trace)?;
            let (forecast, history) = match config {
                Some(path) => {
                    let c = Config::load(&path)?;
                    (c.forecast, c.targets[0].history)
                }
                None => (
                    prescale::config::ForecastConfig::default(),
                    TargetConfig::example("forecast", 1.0, Duration::ZERO).history,
                ),
            };
            let horizon_s = horizon.as_secs() as i64;
            anyhow::ensure!(
                horizon_s > 0 && horizon_s % trace.step == 0,
                "--horizon {}: expected a positive multiple of the trace step ({}s)",
                humantime::format_duration(horizon),
                trace.step
            );
            let settings = forecast.settings(trace.step, horizon_s);
            let rows = prescale::simulate::rolling_forecasts(
                &trace,
                horizon_s,
                history.as_secs() as i64,
                settings,
            );
            write_csv(&out, &rows)?;
            println!(
                "{:<22} {:>7} {:>6} {:>7} {:>9}",
                "model", "rows", "mase", "smape%", "coverage%"
            );
            for a in prescale::simulate::accuracy(&trace, &rows, skip) {
                println!(
                    "{:<22} {:>7} {:>6.3} {:>7.2} {:>9.2}",
                    a.model, a.rows, a.mase, a.smape, a.coverage
                );
            }
            Ok(())
        }
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress_bar(steps: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(steps as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("replaying {bar:40} {pos}/{len} steps, {eta} left")
    {
        bar.set_style(style);
    }
    bar
}

/// A time given as RFC 3339 or Unix seconds.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs);
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| {
            format!("`{s}`: {e}; expected RFC 3339 (2026-01-01T00:00:00Z) or Unix seconds")
        })
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .map_err(|_| format!("`{s}` is before 1970"))
        })
}

/// A range of a Prometheus series as a trace (rate × step requests per bucket).
fn prometheus_trace(
    url: url::Url,
    query: &str,
    from: i64,
    to: i64,
    step: Duration,
) -> anyhow::Result<Trace> {
    use prescale::source::Source;
    let step = step.as_secs() as i64;
    anyhow::ensure!(step >= 1, "--step: expected whole seconds, at least 1s");
    anyhow::ensure!(from < to, "--from {from} is not before --to {to}");
    let cfg = prescale::config::PrometheusConfig {
        url: url.clone(),
        auth: None,
        timeout: Duration::from_secs(30),
    };
    let client = prescale::source::prometheus::PrometheusClient::new(&cfg)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let samples = runtime
        .block_on(client.range(query, from, to, step))
        .with_context(|| format!("querying {url} for `{query}`"))?;
    let rows: Vec<(i64, f64)> = samples
        .iter()
        .map(|s| (s.ts, s.value * step as f64))
        .collect();
    Trace::from_rows(&rows).map_err(|e| anyhow::anyhow!("{url} `{query}` from {from} to {to}: {e}"))
}

/// Writes `rows` as CSV with a header to `path`, and says so on stderr.
fn write_csv<T: serde::Serialize>(path: &std::path::Path, rows: &[T]) -> anyhow::Result<()> {
    let context = || format!("writing {}", path.display());
    let mut w = csv::Writer::from_path(path).with_context(context)?;
    for row in rows {
        w.serialize(row).with_context(context)?;
    }
    w.flush().with_context(context)?;
    eprintln!("{} rows written to {}", rows.len(), path.display());
    Ok(())
}
