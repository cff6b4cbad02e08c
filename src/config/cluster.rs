//! `[cluster]`: several instances sharing the targets through etcd. [`ClusterConfig`] and
//! its validation.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::parse::RawCluster;
use super::{ConfigError, Secret, ServerConfig, Validator, redacted};

/// The default of `[cluster] lease_ttl`.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// The shortest `lease_ttl`: etcd raises shorter leases to its own minimum (1.5 × its
/// election timeout, 2 s with its defaults), so a shorter one would not mean what it says.
const SHORTEST_LEASE: Duration = Duration::from_secs(2);

/// The longest `lease_ttl`: past it a dead instance's targets wait too long for a new owner.
const LONGEST_LEASE: Duration = Duration::from_secs(300);

/// The longest instance name, as for a target.
const MAX_NAME: usize = 128;

/// Validated `[cluster]`. Compared by value (a reload that changes it needs a restart):
/// secrets and the PEM text of the files, not their paths alone.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd endpoints, all `http` or all `https`, without credentials.
    pub etcd: Vec<Url>,
    /// This instance's name, unique in the cluster: letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// The URL other instances reach this instance's API at.
    pub advertise: Url,
    /// TTL of this instance's lease, whole seconds.
    pub lease_ttl: Duration,
    /// Prefix of every key, starting with `/`, without a trailing `/`.
    pub prefix: String,
    /// etcd credentials.
    pub auth: Option<EtcdAuth>,
    /// TLS to etcd; `Some` exactly when the endpoints are `https`.
    pub tls: Option<EtcdTls>,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let etcd: Vec<String> = self.etcd.iter().map(redacted).collect();
        f.debug_struct("ClusterConfig")
            .field("etcd", &etcd)
            .field("name", &self.name)
            .field("advertise", &redacted(&self.advertise))
            .field("lease_ttl", &self.lease_ttl)
            .field("prefix", &self.prefix)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .finish()
    }
}

/// etcd user name and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    /// User name.
    pub username: String,
    /// Password (its `Debug` is redacted).
    pub password: Secret,
}

/// TLS to etcd: the CA to trust, and a client identity for mutual TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA file, for messages.
    pub ca_file: PathBuf,
    /// Its PEM text, read at validation.
    pub ca_pem: String,
    /// Client certificate and key (PEM), read at validation.
    pub identity: Option<(String, Secret)>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_file", &self.ca_file)
            .field("client_identity", &self.identity.is_some())
            .finish()
    }
}

impl Validator<'_> {
    /// `[cluster]`; `server` gives the default `advertise`.
    pub(super) fn cluster(
        &self,
        c: RawCluster,
        server: &ServerConfig,
    ) -> Result<ClusterConfig, ConfigError> {
        let etcd = self.etcd_endpoints(&c.etcd)?;
        let name = match c.name.clone() {
            Some(name) => name,
            None => host_name().ok_or_else(|| {
                self.err(
                    "cluster.name",
                    "is not set and the host name cannot be read; expected a unique instance name",
                )
            })?,
        };
        self.instance_name(&name)?;
        let advertise = match &c.advertise {
            Some(a) => self.url("cluster.advertise", a)?,
            None => self.default_advertise(server.listen)?,
        };
        let lease_ttl = c.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
        if !(SHORTEST_LEASE..=LONGEST_LEASE).contains(&lease_ttl) || lease_ttl.subsec_nanos() != 0 {
            return Err(self.err(
                "cluster.lease_ttl",
                format!(
                    "{} is out of range; expected whole seconds from 2s to 5m, e.g. 10s",
                    humantime::format_duration(lease_ttl)
                ),
            ));
        }
        let prefix = self.prefix(c.prefix.as_deref().unwrap_or("/prescale"))?;
        let auth = self.etcd_auth(&c)?;
        let https = etcd.iter().any(|u| u.scheme() == "https");
        let tls = self.etcd_tls(&c, https)?;
        Ok(ClusterConfig {
            etcd,
            name,
            advertise,
            lease_ttl,
            prefix,
            auth,
            tls,
        })
    }

    fn etcd_endpoints(&self, raw: &[String]) -> Result<Vec<Url>, ConfigError> {
        if raw.is_empty() {
            return Err(self.err(
                "cluster.etcd",
                "is empty; expected at least one endpoint, e.g. [\"http://127.0.0.1:2379\"]",
            ));
        }
        let mut out = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let key = format!("cluster.etcd[{i}]");
            let url = self.url(&key, s)?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(self.err(
                    key,
                    format!(
                        "`{}` has credentials; expected them in `cluster.username` and `cluster.password_env` or `password_file`",
                        redacted(&url)
                    ),
                ));
            }
            if url.path() != "/" || url.query().is_some() || url.port().is_none() {
                return Err(self.err(
                    key,
                    format!(
                        "`{url}` is not a bare endpoint; expected scheme://host:port, e.g. http://127.0.0.1:2379"
                    ),
                ));
            }
            if out
                .first()
                .is_some_and(|first: &Url| first.scheme() != url.scheme())
            {
                return Err(self.err(
                    key,
                    "mixes http and https endpoints; expected all of one scheme",
                ));
            }
            out.push(url);
        }
        Ok(out)
    }

    fn instance_name(&self, name: &str) -> Result<(), ConfigError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if valid {
            return Ok(());
        }
        let shown: String = name.chars().take(40).collect();
        Err(self.err(
            "cluster.name",
            format!(
                "`{shown}` is not a valid instance name; expected 1 to {MAX_NAME} letters, digits, `.`, `_` or `-`"
            ),
        ))
    }

    fn default_advertise(&self, listen: SocketAddr) -> Result<Url, ConfigError> {
        if listen.ip().is_unspecified() {
            return Err(self.err(
                "cluster.advertise",
                format!(
                    "is not set and `server.listen` ({listen}) is not an address other instances can reach; expected the URL of this instance's API, e.g. http://10.0.0.5:{}",
                    listen.port()
                ),
            ));
        }
        self.url("cluster.advertise", &format!("http://{listen}"))
    }

    fn prefix(&self, prefix: &str) -> Result<String, ConfigError> {
        let trimmed = prefix.trim_end_matches('/');
        let valid = trimmed.starts_with('/')
            && trimmed.len() > 1
            && !trimmed.chars().any(|c| c.is_control() || c.is_whitespace());
        if !valid {
            return Err(self.err(
                "cluster.prefix",
                format!("`{prefix}` is not a key prefix; expected a path like /prescale"),
            ));
        }
        Ok(trimmed.to_owned())
    }

    fn etcd_auth(&self, c: &RawCluster) -> Result<Option<EtcdAuth>, ConfigError> {
        let password = self.secret(
            "cluster.password",
            c.password_env.as_deref(),
            c.password_file.as_deref(),
        )?;
        match (&c.username, password) {
            (Some(username), Some(password)) if !username.is_empty() => Ok(Some(EtcdAuth {
                username: username.clone(),
                password,
            })),
            (Some(_), Some(_)) => Err(self.err("cluster.username", "is empty; expected a user")),
            (Some(_), None) => Err(self.err(
                "cluster.username",
                "is set without a password; expected `password_env` or `password_file` too",
            )),
            (None, Some(_)) => Err(self.err(
                "cluster.password",
                "is set without `cluster.username`; expected both",
            )),
            (None, None) => Ok(None),
        }
    }

    fn etcd_tls(&self, c: &RawCluster, https: bool) -> Result<Option<EtcdTls>, ConfigError> {
        let Some(ca_file) = &c.ca_file else {
            if https {
                return Err(self.err(
                    "cluster.ca_file",
                    "is not set and the etcd endpoints are https; expected the PEM file of their CA",
                ));
            }
            if c.cert_file.is_some() || c.key_file.is_some() {
                return Err(self.err(
                    "cluster.cert_file",
                    "is set without https endpoints and `cluster.ca_file`; expected both",
                ));
            }
            return Ok(None);
        };
        if !https {
            return Err(self.err(
                "cluster.ca_file",
                "is set and the etcd endpoints are http; expected https endpoints",
            ));
        }
        let ca_file = self.relative(ca_file);
        let ca_pem = self.pem("cluster.ca_file", &ca_file)?;
        let identity = match (&c.cert_file, &c.key_file) {
            (Some(cert), Some(key)) => Some((
                self.pem("cluster.cert_file", &self.relative(cert))?,
                Secret::new(self.pem("cluster.key_file", &self.relative(key))?),
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(self.err("cluster.cert_file", "is set without `key_file`"));
            }
            (None, Some(_)) => {
                return Err(self.err("cluster.key_file", "is set without `cert_file`"));
            }
        };
        Ok(Some(EtcdTls {
            ca_file,
            ca_pem,
            identity,
        }))
    }

    /// A PEM file's text; an error names `key` when it cannot be read or holds no PEM.
    fn pem(&self, key: &str, path: &Path) -> Result<String, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| self.err(key, format!("cannot read `{}`: {e}", path.display())))?;
        if !text.contains("-----BEGIN ") {
            return Err(self.err(
                key,
                format!("`{}` holds no PEM block; expected PEM text", path.display()),
            ));
        }
        Ok(text)
    }
}

/// The host name (Linux), for the default instance name.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::Config;

    const BASE: &str = r#"
[prometheus]
url = "http://127.0.0.1:9090"

[server]
listen = "127.0.0.1:8080"

[[target]]
name = "web"
request_rate = 'sum(rate(http_requests_total[5m]))'
capacity_rps = 150
startup = "3m"
max_replicas = 40
"#;

    fn parse(cluster: &str) -> Result<Config, String> {
        Config::parse(
            &format!("{BASE}\n[cluster]\n{cluster}"),
            Path::new("test.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn absent_section_is_one_process() {
        let c = Config::parse(BASE, Path::new("test.toml")).expect("valid");
        assert!(c.cluster.is_none());
    }

    /// A budget would be allocated in full by each instance over the targets it owns.
    #[test]
    fn a_budget_is_refused_with_a_cluster() {
        let text = format!(
            "{BASE}\n[budget]\nmax_replicas = 50\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nname = \"a\""
        );
        let e = Config::parse(&text, Path::new("test.toml"))
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("test.toml") && e.contains("budget.max_replicas") && e.contains("[cluster]"),
            "{e}"
        );
    }

    #[test]
    fn defaults() {
        let c = parse("etcd = [\"http://127.0.0.1:2379\"]\nname = \"a\"")
            .expect("valid")
            .cluster
            .expect("cluster");
        assert_eq!(c.name, "a");
        assert_eq!(c.advertise.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.prefix, "/prescale");
        assert!(c.auth.is_none() && c.tls.is_none());
        // The host name is the default name (the test machine has one).
        let c = parse("etcd = [\"http://127.0.0.1:2379\"]").expect("valid");
        assert!(!c.cluster.expect("cluster").name.is_empty());
    }

    #[test]
    fn keys_are_read() {
        let c = parse(
            "etcd = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\nname = \"b-1\"\n\
             advertise = \"http://10.0.0.9:8080\"\nlease_ttl = \"3s\"\nprefix = \"/x/y/\"",
        )
        .expect("valid")
        .cluster
        .expect("cluster");
        assert_eq!(c.etcd.len(), 2);
        assert_eq!(c.advertise.as_str(), "http://10.0.0.9:8080/");
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.prefix, "/x/y");
    }

    /// Each broken `[cluster]` fails with an error naming its key and what was expected.
    #[test]
    fn errors_name_the_key() {
        let ep = "etcd = [\"http://127.0.0.1:2379\"]\nname = \"a\"\n";
        let cases: &[(&str, &[&str])] = &[
            ("name = \"a\"", &["test.toml", "etcd", "missing field"]),
            ("etcd = []", &["cluster.etcd", "at least one endpoint"]),
            ("etcd = [\"nope\"]", &["cluster.etcd[0]", "not a URL"]),
            (
                "etcd = [\"http://127.0.0.1:2379/v3\"]",
                &["cluster.etcd[0]", "scheme://host:port"],
            ),
            (
                "etcd = [\"http://h:1\", \"https://h:2\"]",
                &["cluster.etcd[1]", "mixes http and https"],
            ),
            (
                "etcd = [\"https://h:2\"]",
                &["cluster.ca_file", "PEM file of their CA"],
            ),
            (
                "etcd = [\"http://h:1\"]\nname = \"a b\"",
                &["cluster.name", "letters, digits"],
            ),
            (
                "etcd = [\"http://h:1\"]\nname = \"a\"\nlease_ttl = \"1s\"",
                &["cluster.lease_ttl", "2s to 5m"],
            ),
            (
                "etcd = [\"http://h:1\"]\nname = \"a\"\nlease_ttl = \"2500ms\"",
                &["cluster.lease_ttl", "whole seconds"],
            ),
            (
                "etcd = [\"http://h:1\"]\nname = \"a\"\nprefix = \"prescale\"",
                &["cluster.prefix", "/prescale"],
            ),
            (
                "etcd = [\"http://h:1\"]\nname = \"a\"\nadvertise = \"ftp://h\"",
                &["cluster.advertise", "http or https"],
            ),
            (
                "etcd = [\"http://h:1\"]\nname = \"a\"\nusername = \"u\"",
                &["cluster.username", "password_env"],
            ),
            (
                "etcd = [\"http://h:1\"]\nname = \"a\"\nca_file = \"ca.pem\"",
                &["cluster.ca_file", "https endpoints"],
            ),
            (
                "etcd = [\"http://h:1\"]\nname = \"a\"\nleasettl = \"3s\"",
                &["test.toml", "leasettl"],
            ),
            (
                "etcd = [\"https://h:1\"]\nname = \"a\"\nca_file = \"/nonexistent/ca.pem\"",
                &["cluster.ca_file", "cannot read", "/nonexistent/ca.pem"],
            ),
        ];
        assert!(parse(ep).is_ok());
        for (text, wants) in cases {
            let err = parse(text).expect_err(text);
            for want in *wants {
                assert!(
                    err.contains(want),
                    "error for `{text}` lacks `{want}`: {err}"
                );
            }
        }
    }

    #[test]
    fn unspecified_listen_needs_advertise() {
        let text = BASE.replace("127.0.0.1:8080", "0.0.0.0:8080")
            + "\n[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nname = \"a\"\n";
        let err = Config::parse(&text, Path::new("t.toml")).expect_err("no advertise");
        let err = err.to_string();
        assert!(
            err.contains("cluster.advertise") && err.contains("0.0.0.0:8080"),
            "{err}"
        );
        let ok = text + "advertise = \"http://10.0.0.5:8080\"\n";
        assert!(Config::parse(&ok, Path::new("t.toml")).is_ok());
    }

    /// Passwords and keys never show: not in errors, not in `Debug` (what `check-config`
    /// and logs could print).
    #[test]
    fn credentials_are_redacted() {
        let err = parse("etcd = [\"http://u:hunter2@127.0.0.1:2379\"]\nname = \"a\"")
            .expect_err("credentials in URL");
        assert!(
            err.contains("cluster.etcd[0]") && !err.contains("hunter2"),
            "{err}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "hunter2\n").expect("write");
        let text = format!(
            "etcd = [\"http://127.0.0.1:2379\"]\nname = \"a\"\nusername = \"u\"\npassword_file = \"{}\"",
            pass.display()
        );
        let c = parse(&text).expect("valid").cluster.expect("cluster");
        let auth = c.auth.as_ref().expect("auth");
        assert_eq!(
            (auth.username.as_str(), auth.password.expose()),
            ("u", "hunter2")
        );
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
    }
}
