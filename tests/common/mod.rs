//! The harness shared by the integration tests: real processes and real servers on free
//! `127.0.0.1` ports, one file per fixture.
//!
//! - [`process`]: a guard that kills and reaps a child on drop ([`ChildGuard`]), free
//!   ports, and waiting on a condition with a deadline ([`poll_until`]).
//! - [`http`]: a plain GET ([`http_get`]) and a router served on a thread of its own.
//! - [`backfill`]: the NASA trace as a Prometheus counter ([`Backfill`]).
//! - [`prometheus`]: a real `prometheus` whose TSDB `promtool` filled ([`Prometheus`]),
//!   and a live [`Exporter`] it can scrape.
//! - [`exporter`]: a `/metrics` whose series the test adds and removes ([`SeriesExporter`]).
//! - [`receivers`]: HTTP servers that record every request and answer a script
//!   ([`Receiver`], [`Reply`]).
//! - [`haproxy`], [`alertmanager`]: the real servers ([`Haproxy`], [`Alertmanager`]).
//! - [`etcd`]: a real etcd cluster of one or more members ([`Etcd`]), members killed
//!   and restarted; [`etcd_client`]: a plain client of it ([`EtcdClient`]).
//! - [`kube_api`]: a stand-in for the Kubernetes API server, following its published
//!   contract ([`KubeApi`]), because no real API server can run here.
//! - [`config`]: configuration files ([`TestConfig`], [`TestTarget`], [`TempConfig`]).
//! - [`app`]: prescale itself, in process ([`App`]) or as the binary ([`AppProcess`]).
//!
//! Nothing here waits by sleeping: readiness is polled with a deadline and a timeout
//! panics with what was awaited and what the server logged.
// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod alertmanager;
pub mod app;
pub mod backfill;
pub mod config;
pub mod etcd;
pub mod etcd_client;
pub mod exporter;
pub mod haproxy;
pub mod http;
pub mod kube_api;
pub mod process;
pub mod prometheus;
pub mod receivers;

pub use alertmanager::Alertmanager;
pub use app::{App, AppProcess, STOP_DEADLINE};
pub use backfill::{Backfill, COUNTER, Minute, RATE_QUERY, read_trace, trace_path};
pub use config::{TempConfig, TestConfig, TestTarget, minimal_config};
pub use etcd::Etcd;
pub use etcd_client::EtcdClient;
pub use exporter::SeriesExporter;
pub use haproxy::Haproxy;
pub use http::{decisions_made, get_json, http_get};
pub use kube_api::{Call, KubeApi};
pub use process::{
    ChildGuard, READY_DEADLINE, free_addr, free_port, now_secs, poll_until, poll_until_async,
};
pub use prometheus::{Exporter, Options, Prometheus};
pub use receivers::{Receiver, Recorded, Reply};
