//! prescale configuration files for tests: a builder ([`TestConfig`], [`TestTarget`]) that
//! writes a `prescale.toml` into a temporary directory ([`TempConfig`]), and the minimal
//! configuration as text.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::backfill::RATE_QUERY;

/// A prescale configuration file (`prescale.toml`) in its own temporary directory, beside
/// which secret files can be written (relative paths in the file resolve against it).
pub struct TempConfig {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl TempConfig {
    /// Writes `toml` to `prescale.toml` in a new temporary directory.
    pub fn write(toml: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("prescale-config-")
            .tempdir()
            .expect("create a temporary directory");
        let path = dir.path().join("prescale.toml");
        std::fs::write(&path, toml).expect("write prescale.toml");
        Self { dir, path }
    }

    /// The configuration file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes another file beside it (e.g. a secret) and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

/// A minimal valid configuration: Prometheus at `prometheus_url`, the API on `listen`, and
/// one target `web` reading [`RATE_QUERY`]; `extra` is appended to the `[[target]]` table
/// (e.g. `mode = "forecast-only"`, or sub-tables such as `[target.platform]`).
pub fn minimal_config(prometheus_url: &str, listen: SocketAddr, extra: &str) -> String {
    format!(
        r#"[prometheus]
url = "{prometheus_url}"

[server]
listen = "{listen}"

[[target]]
name = "web"
request_rate = '{RATE_QUERY}'
capacity_rps = 150
startup = "3m"
min_replicas = 2
max_replicas = 40
{extra}
"#
    )
}

/// A prescale configuration built in code, e.g.
/// `TestConfig::new().prometheus(&url).listen(addr).target(TestTarget::web().set("interval", "1s")).write()`.
/// Values are written as TOML values, so queries need no escaping.
#[derive(Debug, Clone, Default)]
pub struct TestConfig {
    root: toml::Table,
    targets: Vec<TestTarget>,
}

impl TestConfig {
    /// No tables and no targets yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `[prometheus] url`.
    pub fn prometheus(self, url: &str) -> Self {
        self.set("prometheus", "url", url)
    }

    /// `[server] listen`.
    pub fn listen(self, addr: SocketAddr) -> Self {
        self.set("server", "listen", addr.to_string())
    }

    /// `[alertmanager] url` and `lead` (e.g. `"30m"`).
    pub fn alertmanager(self, url: &str, lead: &str) -> Self {
        self.set("alertmanager", "url", url)
            .set("alertmanager", "lead", lead)
    }

    /// Sets `key` in the top-level table `[table]`, e.g. `set("delivery", "max_attempts", 1000)`.
    pub fn set(mut self, table: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        let entry = self
            .root
            .entry(table)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(t) = entry else {
            panic!("`{table}` is not a table");
        };
        t.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a `[[target]]`.
    pub fn target(mut self, target: TestTarget) -> Self {
        self.targets.push(target);
        self
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let mut root = self.root.clone();
        if !self.targets.is_empty() {
            let targets = self
                .targets
                .iter()
                .map(|t| toml::Value::Table(t.table.clone()))
                .collect();
            root.insert("target".to_owned(), toml::Value::Array(targets));
        }
        toml::to_string(&root).expect("a TOML table serialises")
    }

    /// Writes it to `prescale.toml` in a new temporary directory.
    pub fn write(&self) -> TempConfig {
        TempConfig::write(&self.to_toml())
    }

    /// Writes it over `cfg`'s `prescale.toml` (e.g. to restart on another port).
    pub fn write_over(&self, cfg: &TempConfig) {
        cfg.write_file("prescale.toml", &self.to_toml());
    }
}

/// One `[[target]]` of a [`TestConfig`].
#[derive(Debug, Clone)]
pub struct TestTarget {
    table: toml::Table,
}

impl TestTarget {
    /// A target with only a name and a request-rate query.
    pub fn new(name: &str, request_rate: &str) -> Self {
        let mut table = toml::Table::new();
        table.insert("name".to_owned(), name.into());
        table.insert("request_rate".to_owned(), request_rate.into());
        Self { table }
    }

    /// The target of [`minimal_config`]: `web` reading [`RATE_QUERY`], 150 rps per replica,
    /// 3 minutes to start, 2 to 40 replicas.
    pub fn web() -> Self {
        Self::new("web", RATE_QUERY)
            .set("capacity_rps", 150)
            .set("startup", "3m")
            .set("min_replicas", 2)
            .set("max_replicas", 40)
    }

    /// Sets `key`, e.g. `set("interval", "1s")` or `set("capacity_rps", 0.05)`.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.table.insert(key.to_owned(), value.into());
        self
    }

    /// `[target.platform]`: a signed scale webhook to `url`, its secret in `secret_file`
    /// (relative to the configuration file).
    pub fn platform(self, url: &str, secret_file: &str) -> Self {
        self.sub("platform", [("url", url), ("secret_file", secret_file)])
    }

    /// `[target.balancer]`: a signed weights webhook to `url`.
    pub fn balancer(self, url: &str, secret_file: &str) -> Self {
        self.sub("balancer", [("url", url), ("secret_file", secret_file)])
    }

    /// `[target.balancer]` of kind `haproxy`: its runtime API on the unix socket `socket`.
    pub fn haproxy(self, socket: &Path, backend: &str) -> Self {
        let api = format!("unix:{}", socket.display());
        self.sub(
            "balancer",
            [
                ("kind", "haproxy"),
                ("runtime_api", &api),
                ("backend", backend),
            ],
        )
    }

    fn sub<const N: usize>(mut self, name: &str, pairs: [(&str, &str); N]) -> Self {
        let table = pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), toml::Value::from(v)))
            .collect();
        self.table
            .insert(name.to_owned(), toml::Value::Table(table));
        self
    }
}
