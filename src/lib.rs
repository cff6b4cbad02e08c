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
