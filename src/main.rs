//! The `prescale` command: parses arguments, loads the configuration, initialises logging
//! and calls into the library.

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Poll Prometheus, forecast, decide, send webhooks and serve the HTTP API.
    Serve {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and print a summary.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Replay a trace through the forecast and decision code on a virtual clock.
    Backtest {
        /// Trace CSV: `timestamp_seconds,value`, value = requests in the bucket.
        #[arg(long)]
        trace: PathBuf,
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
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!("{}: ok", file.display());
            print!("{}", prescale::summary(&config));
            Ok(())
        }
        Command::Backtest {
            trace,
            capacity,
            startup,
            out,
            config,
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
            let trace = Trace::load(&trace)?;
            let rows = prescale::simulate::backtest(&trace, &target, level);
            let mut w = csv::Writer::from_path(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            for row in &rows {
                w.serialize(row)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            w.flush()
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("{} rows written to {}", rows.len(), out.display());
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
            let mut w = csv::Writer::from_path(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            for row in &rows {
                w.serialize(row)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
            w.flush()
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("{} rows written to {}", rows.len(), out.display());
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
