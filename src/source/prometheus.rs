//! Prometheus HTTP API client (placeholder).
