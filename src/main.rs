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
            target.capacity_rps = capacity;
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
    }
}
