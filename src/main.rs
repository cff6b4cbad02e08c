//! The `prescale` command: parses arguments, loads the configuration, initialises logging
//! and calls into the library.

// Functions stay under `too-many-lines-threshold` (clippy.toml) lines.
#![warn(clippy::too_many_lines)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use prescale::config::{Config, ForecastConfig, TargetConfig};
use prescale::source::replay::Trace;
use prescale::telemetry::progress::Progress;

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

/// What `backtest` and `tune` replay: a trace or a Prometheus range, and the target.
#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Trace CSV: `timestamp_seconds,value[,latency][,replicas]`, value = requests in the
    /// bucket, latency in seconds, replicas running.
    #[arg(
        long,
        required_unless_present = "prometheus",
        conflicts_with = "prometheus"
    )]
    trace: Option<PathBuf>,
    /// Replay a range of Prometheus series instead of a trace file.
    #[arg(long, requires_all = ["query", "from", "to"])]
    prometheus: Option<url::Url>,
    /// PromQL giving the request rate (requests/s) as one series.
    #[arg(long)]
    query: Option<String>,
    /// PromQL giving the latency (seconds, e.g. a p95) as one series (with `--prometheus`).
    #[arg(long, requires = "prometheus")]
    latency_query: Option<String>,
    /// PromQL giving the replicas running as one series (with `--prometheus`).
    #[arg(long, requires = "prometheus")]
    replicas_query: Option<String>,
    /// Start of the range: RFC 3339 (`2026-01-01T00:00:00Z`) or Unix seconds.
    #[arg(long, value_parser = parse_time)]
    from: Option<i64>,
    /// End of the range: RFC 3339 or Unix seconds.
    #[arg(long, value_parser = parse_time)]
    to: Option<i64>,
    /// Resolution of the replayed range (with `--prometheus`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1m")]
    step: Duration,
    /// Requests/s one replica serves. Without it, capacity is learned from the latency
    /// and replicas series against `--latency-slo` (or the config's `latency_slo`).
    #[arg(long)]
    capacity: Option<f64>,
    /// The latency objective, e.g. `250ms`: enables the performance policy and learned
    /// capacity when the replay has latency (and replicas) series.
    #[arg(long, value_parser = humantime::parse_duration)]
    latency_slo: Option<Duration>,
    /// Time from asking for a replica to it serving, e.g. `5m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    startup: Duration,
    /// Take the policy (min/max replicas, windows, risk) from this config's target.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The `[[target]]` of `--config` to take the policy from (needed when it has several).
    #[arg(long, requires = "config")]
    target: Option<String>,
    /// Warm-up left out of the scores, e.g. `2d`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    skip: Duration,
}

/// `prescale backtest`.
#[derive(Debug, clap::Args)]
struct BacktestArgs {
    #[command(flatten)]
    replay: ReplayArgs,
    /// Where to write the decisions CSV.
    #[arg(long)]
    out: PathBuf,
    /// Also write the scores (prescale, the HPA at 0.5–0.9, clairvoyant) as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Also draw demand, forecast band, serving capacity and replicas as SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// `prescale tune`.
#[derive(Debug, clap::Args)]
struct TuneArgs {
    #[command(flatten)]
    replay: ReplayArgs,
    /// Tune on the history before this time (RFC 3339 or Unix seconds) and report the
    /// result on the rest; the whole trace when absent.
    #[arg(long, value_parser = parse_time)]
    train_until: Option<i64>,
    /// What to tune for: `cost=hpa` (fewest lost requests at no more replica-hours than
    /// the HPA at 70 %), `lost=0.1%` (cheapest losing at most that), `cost=N` (replica-hours).
    #[arg(long, default_value = "cost=hpa")]
    objective: prescale::simulate::tune::Objective,
    /// Steps of the dial from 0 to 1 (each a replay).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=200))]
    steps: u32,
    /// Dials replayed between the recommended step and the next one beyond the objective,
    /// to recommend finer than the steps (0: none).
    #[arg(long, default_value_t = prescale::simulate::tune::REFINE, value_parser = clap::value_parser!(u32).range(0..=50))]
    refine: u32,
    /// Write a configuration with one `[[target]]` holding the recommended dial here
    /// (usable as `backtest --config`).
    #[arg(long)]
    write: Option<PathBuf>,
    /// Draw the frontier as SVG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also write the whole result as JSON here.
    #[arg(long)]
    summary: Option<PathBuf>,
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
    Backtest(Box<BacktestArgs>),
    /// Replay a trace across the risk dial (in parallel), print prescale's frontier beside
    /// the HPA's and the clairvoyant scaler's cost, and recommend the dial for an objective.
    Tune(Box<TuneArgs>),
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
        /// Take `[forecast]` settings and the target's history from this config.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The `[[target]]` of `--config` to take the history from (needed when it has
        /// several).
        #[arg(long, requires = "config")]
        target: Option<String>,
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
        // The reader of stdout has gone (`| head`): it has what it wanted, as when
        // everything fitted in the pipe before it left.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            note(format_args!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` comes from writing to a pipe whose reader has gone.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes `text` to stdout. An error (a closed pipe) is returned, and ends the command:
/// quietly when the reader has gone.
fn out(text: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

/// Writes a line to stderr; an error writing it is ignored (there is nobody to tell).
fn note(text: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                // First, so that a SIGHUP never ends the process: it reloads the file.
                let reloads = prescale::hangups().context("handling SIGHUP")?;
                prescale::ignore_user_signals().context("handling SIGUSR1 and SIGUSR2")?;
                let config = Config::load(&config)?;
                let listener = tokio::net::TcpListener::bind(config.server.listen)
                    .await
                    .with_context(|| format!("listening on {}", config.server.listen))?;
                let shutdown = prescale::shutdown_signal();
                prescale::serve_reloading(config, listener, shutdown, reloads).await
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
            runtime.block_on(async {
                // A SIGHUP (a log rotation, say) never ends the demo: it has no file to reload.
                let mut hangups = prescale::hangups().context("handling SIGHUP")?;
                prescale::ignore_user_signals().context("handling SIGUSR1 and SIGUSR2")?;
                tokio::spawn(async move {
                    while hangups.recv().await.is_some() {
                        tracing::info!(
                            "SIGHUP: the demo has no configuration file to reload; it goes on"
                        );
                    }
                });
                prescale::demo::run(opts, prescale::shutdown_signal()).await
            })
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            out(format_args!(
                "{}: ok\n{}",
                file.display(),
                prescale::summary(&config)
            ))
        }
        Command::Backtest(args) => backtest(*args),
        Command::Tune(args) => tune(*args),
        Command::Forecast {
            trace,
            horizon,
            out,
            config,
            target,
            skip,
        } => forecast(
            &trace,
            horizon,
            &out,
            config.as_deref(),
            target.as_deref(),
            skip,
        ),
    }
}

/// `prescale forecast`: rolling forecasts written to `out_path`, their accuracy printed.
fn forecast(
    trace: &std::path::Path,
    horizon: Duration,
    out_path: &std::path::Path,
    config: Option<&std::path::Path>,
    target: Option<&str>,
    skip: i64,
) -> anyhow::Result<()> {
    let trace = Trace::load(trace)?;
    let (forecast, history) = match config {
        Some(path) => {
            let c = Config::load(path)?;
            let history = c.replayed_target(target)?.history;
            (c.forecast, history)
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
    let mut target = TargetConfig::example("forecast", 1.0, Duration::ZERO);
    target.history = history;
    let progress = Progress::new("forecasting", trace.counts.len());
    let rows =
        prescale::simulate::rolling_forecasts(&trace, horizon_s, &target, &forecast, |done| {
            progress.set(done)
        });
    progress.finish();
    write_csv(out_path, &rows)?;
    out(format_args!(
        "{:<22} {:>7} {:>6} {:>7} {:>9}\n",
        "model", "rows", "mase", "smape%", "coverage%"
    ))?;
    for a in prescale::simulate::accuracy(&trace, &rows, skip) {
        out(format_args!(
            "{:<22} {:>7} {:>6.3} {:>7.2} {:>9.2}\n",
            a.model, a.rows, a.mase, a.smape, a.coverage
        ))?;
    }
    Ok(())
}

/// The target, the `[forecast]` settings and the trace a replay runs on.
fn load_replay(a: &ReplayArgs) -> anyhow::Result<(TargetConfig, ForecastConfig, Trace)> {
    if let Some(c) = a.capacity {
        anyhow::ensure!(
            c.is_finite() && c > 0.0,
            "--capacity {c}: expected a positive number of requests/s"
        );
    }
    let (mut target, level) = match &a.config {
        Some(path) => {
            let c = Config::load(path)?;
            (
                c.replayed_target(a.target.as_deref())?.clone(),
                c.forecast.level,
            )
        }
        None => (TargetConfig::example("backtest", 1.0, a.startup), 0.95),
    };
    target.capacity_rps = a.capacity.or(a.config.as_ref().and(target.capacity_rps));
    target.latency_slo = a.latency_slo.or(target.latency_slo);
    target.startup = a.startup;
    anyhow::ensure!(
        target.capacity_rps.is_some() || target.latency_slo.is_some(),
        "--capacity is required unless capacity is learned: give --latency-slo with a trace \
         that has latency and replicas columns (or --latency-query and --replicas-query)"
    );
    let trace = match (&a.trace, &a.prometheus) {
        (Some(path), _) => Trace::load(path)?,
        (None, Some(url)) => prometheus_trace(url, a)?,
        _ => anyhow::bail!("expected --trace FILE or --prometheus URL --query Q --from T --to T"),
    };
    let forecast = ForecastConfig {
        level,
        ..Default::default()
    };
    Ok((target, forecast, trace))
}

/// `prescale backtest`: replays, writes the decisions, prints and writes the scores.
fn backtest(a: BacktestArgs) -> anyhow::Result<()> {
    let (mut target, forecast, trace) = load_replay(&a.replay)?;
    let progress = Progress::new("replaying", trace.counts.len());
    let rows = prescale::simulate::backtest(&trace, &target, &forecast, |done| progress.set(done));
    progress.finish();
    write_csv(&a.out, &rows)?;
    // Scored by the capacity decided with at the end (configured, or learned).
    let capacity = rows.last().map_or(f64::NAN, |r| r.capacity_rps);
    anyhow::ensure!(
        capacity.is_finite(),
        "no capacity was learned from the replay (see the reasons in {}); give --capacity",
        a.out.display()
    );
    target.capacity_rps = Some(capacity);
    let skip = a.replay.skip.as_secs() as i64;
    let scores = prescale::simulate::Summary::of(&trace, &target, &rows, skip);
    out(scores.table())?;
    if let Some(path) = &a.summary {
        write_json(path, &scores)?;
    }
    if let Some(path) = &a.plot {
        let asked: Vec<u32> = rows.iter().map(|r| r.replicas).collect();
        let delay = a.replay.startup.as_secs().div_ceil(trace.step as u64) as usize;
        let serving = prescale::simulate::ready(&asked, delay);
        let svg = prescale::simulate::plot::svg(&rows, &serving, capacity)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `prescale tune`: replays the dial, prints the frontier and the recommendation, and
/// writes the configuration, the plot and the JSON asked for.
fn tune(a: TuneArgs) -> anyhow::Result<()> {
    use prescale::simulate::tune;
    let (target, forecast, trace) = load_replay(&a.replay)?;
    anyhow::ensure!(
        target.capacity_rps.is_some(),
        "tune needs the capacity per replica: give --capacity (or capacity_rps in --config)"
    );
    if let Some(t) = a.train_until {
        anyhow::ensure!(
            t > trace.start && t < trace.timestamp(trace.counts.len()),
            "--train-until {t}: expected a time within the trace ({} to {})",
            trace.start,
            trace.timestamp(trace.counts.len())
        );
    }
    let opts = tune::Options {
        dials: tune::dial(a.steps),
        train_until: a.train_until,
        skip: a.replay.skip.as_secs() as i64,
        objective: a.objective,
        threads: std::thread::available_parallelism().map_or(1, usize::from),
        refine: a.refine,
        min_scored: tune::MIN_SCORED,
    };
    let train_steps = a.train_until.map_or(trace.counts.len(), |t| {
        ((t - trace.start) / trace.step) as usize
    });
    let progress = Progress::new(
        "replaying the dial",
        train_steps * (opts.dials.len() + opts.refine as usize),
    );
    let tuning = tune::tune(&trace, &target, &forecast, &opts, &|n| progress.set(n));
    progress.finish();
    let tuning = tuning?;
    out(tuning.table())?;
    report_tuning(&tuning, &a, &target)
}

/// The recommendation and its test, and the files `tune` was asked for.
fn report_tuning(
    t: &prescale::simulate::tune::Tuning,
    a: &TuneArgs,
    target: &TargetConfig,
) -> anyhow::Result<()> {
    let Some(risk) = t.recommended else {
        anyhow::bail!("{}", t.unmet());
    };
    out(format_args!(
        "recommended: risk = {}\n",
        prescale::simulate::tune::label(risk)
    ))?;
    if let Some(test) = &t.test {
        out(format_args!(
            "on the rest of the trace (after {}):\n{}",
            t.train_until,
            test.table()
        ))?;
    }
    if let Some(path) = &a.write {
        let text = tuned_config(target, &a.replay, risk)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        note(format_args!("configuration written to {}", path.display()));
    }
    if let Some(path) = &a.plot {
        let svg = prescale::simulate::plot::frontier_svg(t)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.summary {
        write_json(path, t)?;
    }
    Ok(())
}

/// A configuration with one `[[target]]` at the recommended dial: the given `--config`
/// with the tuned target's dial replaced (and the keys that override the dial removed),
/// or a minimal one that `backtest --config` and `check-config` accept.
fn tuned_config(target: &TargetConfig, r: &ReplayArgs, risk: f64) -> anyhow::Result<String> {
    let mut doc: toml::Table = match &r.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            text.parse()
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => toml::toml! {
            [prometheus]
            url = "http://127.0.0.1:9090"
        },
    };
    let mut t = doc
        .get("target")
        .and_then(|t| {
            t.as_array()?
                .iter()
                .filter_map(toml::Value::as_table)
                .find(|t| t.get("name").and_then(toml::Value::as_str) == Some(&target.name))
                .cloned()
        })
        .unwrap_or_default();
    for key in [
        "interval_share",
        "prediction_utilization",
        "target_utilization",
        "scale_in_window",
    ] {
        t.remove(key);
    }
    t.entry("name")
        .or_insert_with(|| target.name.clone().into());
    let query = r
        .query
        .clone()
        .unwrap_or_else(|| "sum(rate(http_requests_total[5m]))".to_owned());
    t.entry("request_rate").or_insert_with(|| query.into());
    if let Some(c) = target.capacity_rps {
        t.insert("capacity_rps".into(), c.into());
    }
    t.insert(
        "startup".into(),
        humantime::format_duration(r.startup).to_string().into(),
    );
    t.entry("min_replicas")
        .or_insert_with(|| i64::from(target.min_replicas).into());
    t.entry("max_replicas")
        .or_insert_with(|| i64::from(target.max_replicas).into());
    t.insert("risk".into(), ((risk * 100.0).round() / 100.0).into());
    doc.insert("target".into(), toml::Value::Array(vec![t.into()]));
    let header = "# Written by `prescale tune`: the recommended risk dial for this target.\n";
    Ok(format!("{header}{}", toml::to_string(&doc)?))
}

/// Writes `value` as pretty JSON to `path`.
fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
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

/// A range of Prometheus series as a trace: the request rate × step requests per bucket,
/// and the latency and replicas series when asked for. A sample at `t` covers the bucket
/// that ended at `t`.
fn prometheus_trace(url: &url::Url, a: &ReplayArgs) -> anyhow::Result<Trace> {
    use prescale::source::Source;
    use prescale::source::replay::TraceRow;
    let (Some(query), Some(from), Some(to)) = (&a.query, a.from, a.to) else {
        anyhow::bail!("--prometheus needs --query, --from and --to");
    };
    let step = a.step.as_secs() as i64;
    anyhow::ensure!(step >= 1, "--step: expected whole seconds, at least 1s");
    anyhow::ensure!(from < to, "--from {from} is not before --to {to}");
    let cfg = prescale::config::PrometheusConfig {
        url: url.clone(),
        auth: None,
        timeout: Duration::from_secs(30),
        max_answer_bytes: prescale::config::DEFAULT_MAX_ANSWER_BYTES,
        max_concurrency: prescale::config::DEFAULT_MAX_CONCURRENCY,
    };
    let client = prescale::source::prometheus::PrometheusClient::new(&cfg)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let shown = prescale::redacted(url);
    let fetch = |q: &str| {
        runtime
            .block_on(client.range(q, from, to, step))
            .with_context(|| format!("querying {shown} for `{q}`"))
    };
    let by_ts = |q: &Option<String>| -> anyhow::Result<std::collections::BTreeMap<i64, f64>> {
        Ok(match q {
            Some(q) => fetch(q)?.iter().map(|s| (s.ts, s.value)).collect(),
            None => Default::default(),
        })
    };
    let (latency, replicas) = (by_ts(&a.latency_query)?, by_ts(&a.replicas_query)?);
    let rows: Vec<TraceRow> = fetch(query)?
        .iter()
        .map(|s| TraceRow {
            ts: s.ts - step,
            value: s.value * step as f64,
            latency: latency.get(&s.ts).copied(),
            replicas: replicas.get(&s.ts).copied(),
        })
        .collect();
    Trace::from_trace_rows(&rows, a.latency_query.is_some(), a.replicas_query.is_some())
        .map_err(|e| anyhow::anyhow!("{shown} `{query}` from {from} to {to}: {e}"))
}

/// Writes `rows` as CSV with a header to `path`, and says so on stderr.
fn write_csv<T: serde::Serialize>(path: &std::path::Path, rows: &[T]) -> anyhow::Result<()> {
    let context = || format!("writing {}", path.display());
    let mut w = csv::Writer::from_path(path).with_context(context)?;
    for row in rows {
        w.serialize(row).with_context(context)?;
    }
    w.flush().with_context(context)?;
    note(format_args!(
        "{} rows written to {}",
        rows.len(),
        path.display()
    ));
    Ok(())
}
