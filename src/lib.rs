//! prescale: a predictive autoscaler.
//!
//! Data flows one way, **poll → forecast → decide → act**, and the HTTP API reads what the
//! pipeline produced:
//!
//! - [`config`]: the TOML file, validated once into [`config::Config`].
//! - [`source`]: where series come from: Prometheus over HTTP, or a replayed CSV trace.
//! - [`series`]: step-aligned samples in bounded buffers.
//! - [`forecast`]: pure; a series and `now` in, a forecast with intervals out; a stateful
//!   per-target [`forecast::Forecaster`] selects and updates models; learned capacity and
//!   predicted bottlenecks.
//! - [`models`]: each target's fitted forecaster saved in the models directory.
//! - [`decide`]: pure; forecast, observations, policy and `now` in, a decision with reasons out.
//! - [`act`]: where decisions go: a durable outbox, then signed webhooks to the platform and
//!   the balancer, HAProxy's runtime API, and Alertmanager.
//! - [`pipeline`]: the per-target loop that strings the four together on the wall clock.
//! - [`store`]: the one shared handle on state; [`api`] serves it over HTTP (and, with
//!   `[server] keda_listen`, to KEDA over gRPC: [`api::keda`]).
//! - [`simulate`]: backtests, the same forecast and decide code on a virtual clock.
//! - [`demo`]: the whole pipeline on a synthetic workload and a simulated platform.
//! - [`cluster`]: instances sharing the targets through etcd: who owns which target, at
//!   which epoch; [`fleet`] fences the outbox with it.
//! - [`clock`]: where the live pipeline reads `now` (the system's, or the demo's faster one).
//! - [`metrics`], [`telemetry`]: prescale's own metrics and logs.
//! - `serve` ([`serve()`], [`serve_reloading`]): everything above started together and
//!   stopped together, the targets' loops switched at a reload or when discovery changes.
//! - `signals` ([`hangups`], [`shutdown_signal`], [`ignore_user_signals`]): the process's.
//! - [`reload`]: what a reload of the configuration (SIGHUP) changes, and what it may not.
//! - [`discovery`]: targets made from the series of a Prometheus query (`[[discovery]]`),
//!   started and stopped through the same machinery as a reload.

// Functions stay under `too-many-lines-threshold` (clippy.toml) lines.
#![warn(clippy::too_many_lines)]

pub mod act;
pub mod api;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod decide;
pub mod demo;
pub mod discovery;
pub mod fleet;
pub mod forecast;
pub mod metrics;
pub mod models;
pub mod pipeline;
#[cfg(test)]
mod proptest_support;
pub mod reload;
pub mod series;
mod serve;
mod signals;
pub mod simulate;
pub mod source;
pub mod step;
pub mod store;
pub mod telemetry;

pub use config::redacted;
pub use config::summary;
pub use serve::{serve, serve_reloading, serve_with};
pub use signals::{hangups, ignore_user_signals, shutdown_signal};
