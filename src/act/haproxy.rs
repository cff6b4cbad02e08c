//! Balancer weights through HAProxy's runtime API (`stats socket … level admin`).
//!
//! A rebalance action's weights (`{instance: weight}`) are applied to the servers of one
//! backend, each instance mapped to the server whose address (`srv_addr:srv_port` in
//! `show servers state`) it names:
//!
//! - weight 0: `set server BACKEND/SERVER state drain` (no new connections);
//! - weight N > 0: `set server BACKEND/SERVER state ready` first if the server was drained
//!   or in maintenance by hand, then `set server BACKEND/SERVER weight N`.
//!
//! Each command is one connection (the API's non-interactive mode: HAProxy answers and
//! closes). Applying the same weights twice is harmless, so a retry needs no idempotency
//! key. An unreachable socket is worth retrying; an answer that is not empty (an unknown
//! backend, a static balancing algorithm) is final.

use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use super::Attempt;
use crate::config::{HaproxyConfig, RuntimeApi};

/// `srv_admin_state` flags meaning "set to maintenance or drain by hand" (forced
/// maintenance 0x01, forced drain 0x08).
const ADMIN_FORCED_MAINT: u32 = 0x01;
const ADMIN_FORCED_DRAIN: u32 = 0x08;

/// Why the runtime API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    /// Connecting, writing or reading failed, or timed out: worth retrying.
    #[error("HAProxy runtime API {api}: {error}")]
    Unreachable {
        /// The API address.
        api: String,
        /// What failed.
        error: String,
    },
    /// HAProxy answered a command with an error.
    #[error("HAProxy runtime API {api}: `{command}` answered: {answer}")]
    Refused {
        /// The API address.
        api: String,
        /// The command.
        command: String,
        /// HAProxy's answer.
        answer: String,
    },
    /// The answer could not be understood, or nothing maps.
    #[error("HAProxy runtime API {api}: {message}")]
    Unusable {
        /// The API address.
        api: String,
        /// What is wrong.
        message: String,
    },
}

/// One server as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// Server name.
    pub name: String,
    /// `srv_addr:srv_port`.
    pub address: String,
    /// Operational state (`srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping).
    pub op_state: u32,
    /// Administrative flags (`srv_admin_state`; 0x08 forced drain, 0x01 forced maint).
    pub admin_state: u32,
    /// User weight (`srv_uweight`).
    pub weight: u32,
}

impl ServerState {
    /// Whether it was drained by hand (`state drain`).
    pub fn is_drained(&self) -> bool {
        self.admin_state & ADMIN_FORCED_DRAIN != 0
    }
}

/// Sends one command and returns HAProxy's whole answer.
pub async fn command(cfg: &HaproxyConfig, command: &str) -> Result<String, HaproxyError> {
    let unreachable = |error: String| HaproxyError::Unreachable {
        api: cfg.runtime_api.to_string(),
        error,
    };
    let exchange = async {
        let line = format!("{command}\n");
        let mut answer = Vec::new();
        match &cfg.runtime_api {
            RuntimeApi::Unix(path) => {
                let mut s = tokio::net::UnixStream::connect(path).await?;
                s.write_all(line.as_bytes()).await?;
                s.read_to_end(&mut answer).await?;
            }
            RuntimeApi::Tcp(addr) => {
                let mut s = tokio::net::TcpStream::connect(addr.as_str()).await?;
                s.write_all(line.as_bytes()).await?;
                s.read_to_end(&mut answer).await?;
            }
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(cfg.timeout, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "timed out after {}",
            humantime::format_duration(cfg.timeout)
        ))),
    }
}

/// The servers of the configured backend (`show servers state BACKEND`).
pub async fn servers(cfg: &HaproxyConfig) -> Result<Vec<ServerState>, HaproxyError> {
    let cmd = format!("show servers state {}", cfg.backend);
    let answer = command(cfg, &cmd).await?;
    parse_servers_state(&answer).map_err(|message| {
        if answer.lines().count() <= 2 && !answer.trim_start().starts_with('1') {
            HaproxyError::Refused {
                api: cfg.runtime_api.to_string(),
                command: cmd.clone(),
                answer: answer.trim().to_owned(),
            }
        } else {
            HaproxyError::Unusable {
                api: cfg.runtime_api.to_string(),
                message,
            }
        }
    })
}

/// Parses `show servers state`: a version line (`1`), a `# name name …` header, then one
/// line per server.
pub fn parse_servers_state(answer: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    match lines.next().map(str::trim) {
        Some("1") => {}
        other => {
            return Err(format!(
                "`show servers state` answered {other:?}; expected format version 1"
            ));
        }
    }
    let header: Vec<&str> = lines
        .next()
        .and_then(|h| h.strip_prefix('#'))
        .ok_or("`show servers state` has no `#` header line")?
        .split_whitespace()
        .collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("`show servers state` has no `{name}` column"))
    };
    let (name, addr, port, op, admin, weight) = (
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_port")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
        col("srv_uweight")?,
    );
    lines
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let field = |i: usize| {
                f.get(i)
                    .copied()
                    .ok_or_else(|| format!("short line in `show servers state`: {line}"))
            };
            let number = |i: usize| -> Result<u32, String> {
                field(i)?
                    .parse()
                    .map_err(|_| format!("bad number in `show servers state`: {line}"))
            };
            Ok(ServerState {
                name: field(name)?.to_owned(),
                address: format!("{}:{}", field(addr)?, field(port)?),
                op_state: number(op)?,
                admin_state: number(admin)?,
                weight: number(weight)?,
            })
        })
        .collect()
}

/// Applies `weights` (`{instance address: weight}`) to the backend's servers; returns the
/// commands sent. Instances without a server are skipped with a warning; none matching at
/// all is an error.
pub async fn apply(
    cfg: &HaproxyConfig,
    weights: &BTreeMap<String, u32>,
) -> Result<Vec<String>, HaproxyError> {
    let servers = servers(cfg).await?;
    let plan = plan(&cfg.backend, &servers, weights);
    if plan.commands.is_empty() && !weights.is_empty() && plan.unmatched.len() == weights.len() {
        let known: Vec<&str> = servers.iter().map(|s| s.address.as_str()).collect();
        return Err(HaproxyError::Unusable {
            api: cfg.runtime_api.to_string(),
            message: format!(
                "no instance of {:?} is a server address of backend `{}` (servers: {})",
                plan.unmatched,
                cfg.backend,
                known.join(", ")
            ),
        });
    }
    if !plan.unmatched.is_empty() {
        warn!(backend = %cfg.backend, instances = ?plan.unmatched, "instances with no HAProxy server; skipped");
    }
    for cmd in &plan.commands {
        let answer = command(cfg, cmd).await?;
        if !answer.trim().is_empty() {
            return Err(HaproxyError::Refused {
                api: cfg.runtime_api.to_string(),
                command: cmd.clone(),
                answer: answer.trim().to_owned(),
            });
        }
    }
    info!(backend = %cfg.backend, commands = plan.commands.len(), "HAProxy weights applied");
    Ok(plan.commands)
}

/// The commands that set `weights`, and the instances matching no server.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Runtime API commands, in order.
    pub commands: Vec<String>,
    /// Instances with no server of that address.
    pub unmatched: Vec<String>,
}

/// Pure: the commands that bring `servers` of `backend` to `weights`.
pub fn plan(backend: &str, servers: &[ServerState], weights: &BTreeMap<String, u32>) -> Plan {
    let mut out = Plan::default();
    for (instance, &weight) in weights {
        let Some(s) = servers.iter().find(|s| &s.address == instance) else {
            out.unmatched.push(instance.clone());
            continue;
        };
        let server = format!("{backend}/{}", s.name);
        if weight == 0 {
            out.commands
                .push(format!("set server {server} state drain"));
        } else {
            if s.admin_state & (ADMIN_FORCED_DRAIN | ADMIN_FORCED_MAINT) != 0 {
                out.commands
                    .push(format!("set server {server} state ready"));
            }
            out.commands
                .push(format!("set server {server} weight {}", weight.min(256)));
        }
    }
    out
}

/// One attempt at a rebalance body (`{"weights": {…}}`) for the outbox.
pub async fn apply_body(cfg: &HaproxyConfig, body: &[u8]) -> Attempt {
    let weights = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::from_value::<BTreeMap<String, u32>>(v["weights"].clone()).ok());
    let Some(weights) = weights else {
        return Attempt::Final {
            error: "the action has no `weights` object of whole numbers".to_owned(),
            status: None,
            body: String::new(),
        };
    };
    match apply(cfg, &weights).await {
        Ok(_) => Attempt::Success(None),
        Err(e @ HaproxyError::Unreachable { .. }) => Attempt::Retry {
            error: e.to_string(),
            status: None,
            retry_after: None,
        },
        Err(e) => Attempt::Final {
            error: e.to_string(),
            status: None,
            body: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 web 1 a 127.0.0.1 2 0 100 100 12 1 0 0 0 0 0 0 - 41001 - 0 0 - - 0
3 web 2 b 127.0.0.1 2 8 50 50 12 1 0 0 0 0 0 0 - 41002 - 0 0 - - 0
";

    #[test]
    fn parses_servers_state() {
        let s = parse_servers_state(STATE).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            ServerState {
                name: "b".into(),
                address: "127.0.0.1:41002".into(),
                op_state: 2,
                admin_state: 8,
                weight: 50,
            }
        );
        assert!(s[1].is_drained() && !s[0].is_drained());
        assert!(
            parse_servers_state("Can't find backend.\n")
                .unwrap_err()
                .contains("version 1")
        );
        assert!(parse_servers_state("1\n").unwrap_err().contains("header"));
    }

    /// weights → commands for servers a (ready) and b (drained).
    #[test]
    fn plans_weights_drains_and_restores() {
        let servers = parse_servers_state(STATE).unwrap();
        let check = |weights: &[(&str, u32)], commands: &[&str], unmatched: &[&str]| {
            let w = weights.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            assert_eq!(
                plan("web", &servers, &w),
                Plan {
                    commands: commands.iter().map(|c| c.to_string()).collect(),
                    unmatched: unmatched.iter().map(|c| c.to_string()).collect(),
                },
                "{weights:?}"
            );
        };
        check(
            &[("127.0.0.1:41001", 80)],
            &["set server web/a weight 80"],
            &[],
        );
        check(
            &[("127.0.0.1:41001", 0), ("127.0.0.1:41002", 100)],
            &[
                "set server web/a state drain",
                "set server web/b state ready",
                "set server web/b weight 100",
            ],
            &[],
        );
        check(
            &[("10.0.0.9:80", 5), ("127.0.0.1:41001", 999)],
            &["set server web/a weight 256"],
            &["10.0.0.9:80"],
        );
    }
}
