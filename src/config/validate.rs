//! Validation: [`RawConfig`] → [`Config`], each section checked and given its defaults;
//! every error names the file, the key and what was expected. Targets are validated in
//! `target.rs`, secrets read in `secrets.rs`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::parse::{
    RawAlertmanager, RawConfig, RawDelivery, RawForecast, RawPrometheus, RawServer, RawState,
    RawTarget,
};
use super::target::TargetConfig;
use super::{
    AlertmanagerConfig, Config, ConfigError, DeliveryConfig, ForecastConfig, PrometheusAuth,
    PrometheusConfig, ServerConfig, StateConfig, Validator,
};

impl Validator<'_> {
    /// The whole configuration, section by section in file order.
    pub(super) fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let prometheus = raw.prometheus.map(|p| self.prometheus(p)).transpose()?;
        let server = self.server(raw.server)?;
        let forecast = self.forecast(raw.forecast)?;
        let delivery = self.delivery(raw.delivery)?;
        let state = self.state(raw.state)?;
        let alertmanager = raw.alertmanager.map(|a| self.alertmanager(a)).transpose()?;
        let discovery = (raw.discovery.into_iter().enumerate())
            .map(|(i, d)| self.discovery(i, d))
            .collect::<Result<Vec<_>, _>>()?;
        let targets = self.targets(raw.targets, !discovery.is_empty())?;
        if raw.budget.max_replicas == Some(0) {
            return Err(self.err("budget.max_replicas", "is 0; expected at least 1"));
        }
        let cluster = raw.cluster.map(|c| self.cluster(c, &server)).transpose()?;
        if cluster.is_some() && raw.budget.max_replicas.is_some() {
            return Err(self.err(
                "budget.max_replicas",
                "is set with [cluster]; a budget across targets is allocated by one instance \
                 over the targets it owns, so instances sharing targets would each allocate it \
                 in full. Remove one of the two",
            ));
        }
        Ok(Config {
            file: self.file.to_owned(),
            prometheus,
            server,
            forecast,
            delivery,
            state,
            alertmanager,
            targets,
            budget: raw.budget.max_replicas,
            cluster,
            discovery,
        })
    }

    fn server(&self, s: RawServer) -> Result<ServerConfig, ConfigError> {
        let listen = s.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen: SocketAddr = listen.parse().map_err(|_| {
            self.err(
                "server.listen",
                format!("`{listen}` is not an address; expected IP:PORT, e.g. 127.0.0.1:8080"),
            )
        })?;
        let api_token = self.secret(
            "server.api_token",
            s.api_token_env.as_deref(),
            s.api_token_file.as_deref(),
        )?;
        let auth_reads = s.auth_reads.unwrap_or(false);
        if auth_reads && api_token.is_none() {
            return Err(self.err(
                "server.auth_reads",
                "is true without a token; expected `api_token_env` or `api_token_file` too",
            ));
        }
        let keda_listen = s
            .keda_listen
            .as_deref()
            .map(|a| self.keda_listen(a, listen))
            .transpose()?;
        Ok(ServerConfig {
            listen,
            api_token,
            auth_reads,
            keda_listen,
        })
    }

    /// `[server] keda_listen`: an address, not the HTTP API's.
    fn keda_listen(&self, addr: &str, listen: SocketAddr) -> Result<SocketAddr, ConfigError> {
        let key = "server.keda_listen";
        let parsed: SocketAddr = addr.parse().map_err(|_| {
            self.err(
                key,
                format!("`{addr}` is not an address; expected IP:PORT, e.g. 127.0.0.1:9090"),
            )
        })?;
        if parsed.port() != 0 && parsed.port() == listen.port() && clash(parsed, listen) {
            return Err(self.err(
                key,
                format!(
                    "`{addr}` is also `server.listen`; expected another port for the gRPC server"
                ),
            ));
        }
        Ok(parsed)
    }

    fn forecast(&self, f: RawForecast) -> Result<ForecastConfig, ConfigError> {
        let level = f.level.unwrap_or(0.95);
        if !(level > 0.0 && level < 1.0) {
            return Err(self.err(
                "forecast.level",
                format!("{level} is out of range; expected a number between 0 and 1, e.g. 0.95"),
            ));
        }
        let def = ForecastConfig::default();
        let refit_every = f.refit_every.unwrap_or(def.refit_every);
        if refit_every < Duration::from_secs(1) {
            return Err(self.err("forecast.refit_every", "expected at least 1s, e.g. 1h"));
        }
        let horizon = f.horizon.unwrap_or(def.horizon);
        if horizon.is_zero() || horizon > Duration::from_secs(86_400) {
            return Err(self.err(
                "forecast.horizon",
                "is out of range; expected above 0 and at most 1d, e.g. 1h",
            ));
        }
        // Relative to the configuration file, like secret files.
        let models_dir = self.relative(&f.models_dir.unwrap_or(def.models_dir));
        if models_dir.exists() && !models_dir.is_dir() {
            return Err(self.err(
                "forecast.models_dir",
                format!(
                    "{} exists and is not a directory; expected a directory (created if missing)",
                    models_dir.display()
                ),
            ));
        }
        Ok(ForecastConfig {
            level,
            refit_every,
            horizon,
            models_dir,
        })
    }

    /// The targets, with unique names; at least one unless some are `discovered`.
    fn targets(
        &self,
        raw: Vec<RawTarget>,
        discovered: bool,
    ) -> Result<Vec<TargetConfig>, ConfigError> {
        if raw.is_empty() && !discovered {
            return Err(self.err(
                "target",
                "no target; expected at least one [[target]] or [[discovery]] table",
            ));
        }
        let mut seen = HashSet::new();
        let mut targets = Vec::with_capacity(raw.len());
        for (i, t) in raw.into_iter().enumerate() {
            let t = self.target(i, t)?;
            if !seen.insert(t.name.clone()) {
                return Err(self.err(
                    format!("target[{i}].name"),
                    format!("duplicate target `{}`; expected unique names", t.name),
                ));
            }
            targets.push(t);
        }
        Ok(targets)
    }

    fn prometheus(&self, p: RawPrometheus) -> Result<PrometheusConfig, ConfigError> {
        let url = self.url("prometheus.url", &p.url)?;
        let timeout = p.timeout.unwrap_or(Duration::from_secs(10));
        if timeout.is_zero() {
            return Err(self.err("prometheus.timeout", "expected a duration above zero"));
        }
        let bearer = self.secret(
            "prometheus.bearer_token",
            p.bearer_token_env.as_deref(),
            p.bearer_token_file.as_deref(),
        )?;
        if (!url.username().is_empty() || url.password().is_some())
            && (bearer.is_some() || p.basic_auth.is_some())
        {
            return Err(self.err(
                "prometheus.url",
                "has credentials and [prometheus] sets a bearer token or basic auth too; expected one of them",
            ));
        }
        let auth = match (bearer, p.basic_auth) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    "prometheus.basic_auth",
                    "both a bearer token and basic auth are set; expected at most one",
                ));
            }
            (Some(token), None) => Some(PrometheusAuth::Bearer(token)),
            (None, Some(b)) => {
                let password = self
                    .secret(
                        "prometheus.basic_auth.password",
                        b.password_env.as_deref(),
                        b.password_file.as_deref(),
                    )?
                    .ok_or_else(|| {
                        self.err(
                            "prometheus.basic_auth",
                            "no password; expected `password_env` or `password_file`",
                        )
                    })?;
                Some(PrometheusAuth::Basic {
                    username: b.username,
                    password,
                })
            }
            (None, None) => None,
        };
        let max_answer_bytes = match p.max_answer_bytes {
            None => super::DEFAULT_MAX_ANSWER_BYTES,
            Some(n) if n >= 1024 => usize::try_from(n).unwrap_or(usize::MAX),
            Some(n) => {
                return Err(self.err(
                    "prometheus.max_answer_bytes",
                    format!("{n} is too small; expected at least 1024 bytes"),
                ));
            }
        };
        let max_concurrency = match p.max_concurrency {
            None => super::DEFAULT_MAX_CONCURRENCY,
            Some(n @ 1..=super::MAX_CONCURRENCY_LIMIT) => n as usize,
            Some(n) => {
                return Err(self.err(
                    "prometheus.max_concurrency",
                    format!(
                        "{n} is out of range; expected 1 to {} requests in flight",
                        super::MAX_CONCURRENCY_LIMIT
                    ),
                ));
            }
        };
        Ok(PrometheusConfig {
            url,
            auth,
            timeout,
            max_answer_bytes,
            max_concurrency,
        })
    }

    fn delivery(&self, d: RawDelivery) -> Result<DeliveryConfig, ConfigError> {
        let def = DeliveryConfig::default();
        let out = DeliveryConfig {
            timeout: d.timeout.unwrap_or(def.timeout),
            max_attempts: d.max_attempts.unwrap_or(def.max_attempts),
            initial_backoff: d.initial_backoff.unwrap_or(def.initial_backoff),
            max_backoff: d.max_backoff.unwrap_or(def.max_backoff),
            max_age: d.max_age.unwrap_or(def.max_age),
        };
        if out.max_age.is_zero() {
            return Err(self.err("delivery.max_age", "expected a duration above zero"));
        }
        if out.timeout.is_zero() {
            return Err(self.err("delivery.timeout", "expected a duration above zero"));
        }
        if out.max_attempts == 0 {
            return Err(self.err("delivery.max_attempts", "expected at least 1"));
        }
        if out.max_backoff < out.initial_backoff {
            return Err(self.err(
                "delivery.max_backoff",
                "is shorter than delivery.initial_backoff; expected max_backoff >= initial_backoff",
            ));
        }
        Ok(out)
    }

    fn state(&self, s: RawState) -> Result<StateConfig, ConfigError> {
        let dir = s.dir.unwrap_or_else(|| "state".into());
        if dir.as_os_str().is_empty() {
            return Err(self.err("state.dir", "is empty; expected a directory path"));
        }
        let dir = self.relative(&dir);
        let retention = s.retention.unwrap_or(Duration::from_secs(7 * 86_400));
        Ok(StateConfig { dir, retention })
    }

    fn alertmanager(&self, a: RawAlertmanager) -> Result<AlertmanagerConfig, ConfigError> {
        let url = self.url("alertmanager.url", &a.url)?;
        let lead = a.lead.unwrap_or(Duration::from_secs(1_800));
        // In whole seconds: a lead under 1s would be none.
        if lead < Duration::from_secs(1) {
            return Err(self.err("alertmanager.lead", "expected at least 1s"));
        }
        let resend = a.resend.unwrap_or(Duration::from_secs(60));
        if resend < Duration::from_secs(1) {
            return Err(self.err("alertmanager.resend", "expected at least 1s"));
        }
        Ok(AlertmanagerConfig { url, lead, resend })
    }
}

/// Whether two addresses on the same port would take the same socket: the same IP, or
/// either unspecified (0.0.0.0 or ::, every interface).
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn with_server(server: &str) -> Result<Config, String> {
        let text = format!(
            "[server]\n{server}\n[[target]]\nname = \"web\"\nrequest_rate = \"up\"\n\
             capacity_rps = 1\nstartup = \"1m\"\nmax_replicas = 4\n"
        );
        Config::parse(&text, Path::new("/etc/prescale.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn keda_listen_is_optional_and_validated() {
        let none = with_server("").expect("valid");
        assert_eq!(none.server.keda_listen, None);
        let set = with_server("keda_listen = \"127.0.0.1:9090\"").expect("valid");
        assert_eq!(
            set.server.keda_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        let other_ip = "listen = \"127.0.0.1:9090\"\nkeda_listen = \"127.0.0.2:9090\"";
        assert!(with_server(other_ip).is_ok());
        for (server, says) in [
            (
                "keda_listen = \"localhost\"",
                "`localhost` is not an address",
            ),
            (
                "keda_listen = \"127.0.0.1:8080\"",
                "is also `server.listen`",
            ),
            (
                "listen = \"0.0.0.0:7000\"\nkeda_listen = \"127.0.0.1:7000\"",
                "is also `server.listen`",
            ),
        ] {
            let e = with_server(server).expect_err(server);
            assert!(
                e.contains("/etc/prescale.toml")
                    && e.contains("key `server.keda_listen`")
                    && e.contains(says),
                "{server}: {e}"
            );
        }
        let e = with_server("keda_listen = 9090").expect_err("a number");
        assert!(e.contains("keda_listen"), "{e}");
    }
}
