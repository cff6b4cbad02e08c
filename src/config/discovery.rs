//! `[[discovery]]`: targets made from the series of a Prometheus query. [`DiscoveryConfig`]
//! holds the validated query, timing and templates; [`DiscoveryConfig::render`] makes one
//! series' target, validated as a `[[target]]` table is.
//!
//! The template is checked at start by rendering it with a sample label set (each label it
//! uses set to `sample`): a template that cannot make a valid target fails then, naming
//! the file, the discovery and the key, rather than at the first series.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use super::parse::{RawDiscovery, RawTarget};
use super::target::TargetConfig;
use super::template::{Escape, Template};
use super::{ConfigError, Validator};

pub use super::template::Labels;

/// The default of `[[discovery]] refresh`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(60);

/// The default of `[[discovery]] remove_after`.
pub const DEFAULT_REMOVE_AFTER: Duration = Duration::from_secs(600);

/// The `[[target]]` keys holding PromQL, whose placeholders are escaped for PromQL.
const QUERY_KEYS: [&str; 6] = [
    "request_rate",
    "latency",
    "replicas",
    "instance_rate",
    "instance_latency",
    "instance_errors",
];

/// The value every label takes when the template is checked at start.
const SAMPLE_VALUE: &str = "sample";

/// A validated `[[discovery]]`.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Its place among the `[[discovery]]` tables (0 first), as errors name it.
    pub index: usize,
    /// The configuration file (for messages and relative secret paths).
    pub file: PathBuf,
    /// The PromQL whose series are the services.
    pub query: String,
    /// How often the query runs.
    pub refresh: Duration,
    /// A series absent this long stops being a target.
    pub remove_after: Duration,
    /// The labels the name and the template use.
    pub labels: BTreeSet<String>,
    /// The name template as written, e.g. `${namespace}-${deployment}`.
    pub name_template: String,
    name: Template,
    template: toml::Table,
}

impl DiscoveryConfig {
    /// The target of the series with these labels, validated as a `[[target]]` table; the
    /// error names the file, this discovery and the key (a label the series lacks, a value
    /// that makes an invalid name, …).
    pub fn render(&self, labels: &Labels) -> Result<TargetConfig, ConfigError> {
        let validator = Validator { file: &self.file };
        let at = |key: String, message: String| validator.err(key, message);
        let i = self.index;
        let missing = |key: String, what: String| {
            at(key, format!("the series {} {what}", show_labels(labels)))
        };
        let name = self
            .name
            .render(labels)
            .map_err(|l| missing(format!("discovery[{i}].name"), l))?;
        let mut table = render_table(&self.template, "", labels)
            .map_err(|(key, l)| missing(format!("discovery[{i}].template.{key}"), l))?;
        table.insert("name".to_owned(), toml::Value::String(name.clone()));
        let raw: RawTarget = toml::Value::Table(table).try_into().map_err(|e| {
            at(
                format!("discovery[{i}].template"),
                format!("is not a [[target]] table: {}", e.to_string().trim_end()),
            )
        })?;
        validator
            .target(i, raw)
            .map_err(|e| self.relocate(e, &name))
    }

    /// A target's validation error as the discovery's: `target[NAME].k` is
    /// `discovery[i].template.k`, and the name's key is `discovery[i].name`.
    fn relocate(&self, e: ConfigError, name: &str) -> ConfigError {
        let ConfigError::Invalid { file, key, message } = e else {
            return e;
        };
        let i = self.index;
        let key = if key == format!("target[{i}].name") {
            format!("discovery[{i}].name")
        } else if let Some(rest) = key.strip_prefix(&format!("target[{name}].")) {
            format!("discovery[{i}].template.{rest}")
        } else {
            key
        };
        ConfigError::Invalid { file, key, message }
    }
}

/// `{a="1", b="2"}`, for messages.
pub(crate) fn show_labels(labels: &Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// How the string at `path` (dotted, from the template's root) is escaped.
fn escape_of(path: &str) -> Escape {
    let last = path.rsplit('.').next().unwrap_or(path);
    let last = last.split('[').next().unwrap_or(last);
    if QUERY_KEYS.contains(&path) {
        Escape::PromQl
    } else if last == "url" {
        Escape::Url
    } else {
        Escape::Plain
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Every string of `table` with its templates parsed, by path (`platform.url`,
/// `schedule[0].cron`); the error is the path and what is wrong.
fn templates(table: &toml::Table, path: &str) -> Result<Vec<(String, Template)>, (String, String)> {
    let mut out = Vec::new();
    for (key, value) in table {
        collect(value, join(path, key), &mut out)?;
    }
    Ok(out)
}

fn collect(
    value: &toml::Value,
    path: String,
    out: &mut Vec<(String, Template)>,
) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(s) => {
            let t = Template::parse(s, escape_of(&path)).map_err(|e| (path.clone(), e))?;
            out.push((path, t));
        }
        toml::Value::Table(t) => out.extend(templates(t, &path)?),
        toml::Value::Array(items) => {
            for (n, item) in items.iter().enumerate() {
                collect(item, format!("{path}[{n}]"), out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `table` with every placeholder replaced; the error is the path and what of the series
/// cannot be rendered.
fn render_table(
    table: &toml::Table,
    path: &str,
    labels: &Labels,
) -> Result<toml::Table, (String, String)> {
    table
        .iter()
        .map(|(key, value)| Ok((key.clone(), render_value(value, join(path, key), labels)?)))
        .collect()
}

fn render_value(
    value: &toml::Value,
    path: String,
    labels: &Labels,
) -> Result<toml::Value, (String, String)> {
    Ok(match value {
        toml::Value::String(s) => {
            // Parsed at start already: a failure here cannot happen, and is reported.
            let t = Template::parse(s, escape_of(&path)).map_err(|e| (path.clone(), e))?;
            toml::Value::String(t.render(labels).map_err(|l| (path, l))?)
        }
        toml::Value::Table(t) => toml::Value::Table(render_table(t, &path, labels)?),
        toml::Value::Array(items) => toml::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(n, v)| render_value(v, format!("{path}[{n}]"), labels))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// The labels a query's result can carry when it is an aggregation `op by (a, b) (…)`;
/// `None` when that cannot be told this simply (then any label is allowed).
fn grouping_labels(query: &str) -> Option<BTreeSet<String>> {
    const OPS: [&str; 8] = [
        "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar",
    ];
    let q = query.trim_start();
    let op_end = q.find(|c: char| !c.is_ascii_alphabetic())?;
    if !OPS.contains(&&q[..op_end]) {
        return None;
    }
    let rest = q[op_end..].trim_start().strip_prefix("by")?;
    let rest = rest.trim_start().strip_prefix('(')?;
    let list = &rest[..rest.find(')')?];
    Some(
        list.split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

impl Validator<'_> {
    /// The labels `name` and the template's `strings` use, each with the first key using
    /// it; an error when the query's `by (…)` cannot give one of them.
    fn labels_used(
        &self,
        i: usize,
        query: &str,
        name: &Template,
        strings: &[(String, Template)],
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let key = |k: &str| format!("discovery[{i}].{k}");
        let mut used: BTreeMap<String, String> = BTreeMap::new();
        for l in name.labels() {
            used.entry(l.to_owned()).or_insert_with(|| key("name"));
        }
        for (path, t) in strings {
            for l in t.labels() {
                used.entry(l.to_owned())
                    .or_insert_with(|| key(&format!("template.{path}")));
            }
        }
        if let Some(kept) = grouping_labels(query)
            && let Some((label, at)) = used.iter().find(|(l, _)| !kept.contains(*l))
        {
            let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
            return Err(self.err(
                at.clone(),
                format!(
                    "uses `${{{label}}}`, which the query's series cannot carry: its `by ({})` keeps only those labels",
                    kept.join(", ")
                ),
            ));
        }
        Ok(used)
    }

    /// Validates the `i`-th `[[discovery]]` and renders its template once with a sample
    /// label set.
    pub(super) fn discovery(
        &self,
        i: usize,
        d: RawDiscovery,
    ) -> Result<DiscoveryConfig, ConfigError> {
        let key = |k: &str| format!("discovery[{i}].{k}");
        if d.query.trim().is_empty() {
            return Err(self.err(key("query"), "is empty; expected a PromQL expression"));
        }
        let refresh = d.refresh.unwrap_or(DEFAULT_REFRESH);
        if refresh < Duration::from_secs(1) {
            return Err(self.err(key("refresh"), "expected at least 1s, e.g. 1m"));
        }
        let remove_after = d.remove_after.unwrap_or(DEFAULT_REMOVE_AFTER);
        if remove_after < refresh {
            return Err(self.err(
                key("remove_after"),
                format!(
                    "{} is shorter than refresh ({}); expected at least one refresh, e.g. 10m",
                    humantime::format_duration(remove_after),
                    humantime::format_duration(refresh)
                ),
            ));
        }
        if d.template.contains_key("name") {
            return Err(self.err(
                key("template.name"),
                "is set in the template; expected the name template in `name` of [[discovery]]",
            ));
        }
        let name = Template::parse(&d.name, Escape::Plain).map_err(|e| self.err(key("name"), e))?;
        if name.is_plain() {
            return Err(self.err(
                key("name"),
                format!(
                    "`{}` uses no label; expected a template such as \"${{namespace}}-${{deployment}}\", so that each series has its own name",
                    d.name
                ),
            ));
        }
        let strings = templates(&d.template, "")
            .map_err(|(k, e)| self.err(key(&format!("template.{k}")), e))?;
        let used = self.labels_used(i, &d.query, &name, &strings)?;
        let config = DiscoveryConfig {
            index: i,
            file: self.file.to_owned(),
            query: d.query,
            refresh,
            remove_after,
            labels: used.keys().cloned().collect(),
            name_template: d.name,
            name,
            template: d.template,
        };
        let sample: Labels = config
            .labels
            .iter()
            .map(|l| (l.clone(), SAMPLE_VALUE.to_owned()))
            .collect();
        config.render(&sample).map_err(|e| match e {
            ConfigError::Invalid { file, key, message } => ConfigError::Invalid {
                file,
                key,
                message: format!(
                    "{message} (the template rendered with the sample labels {})",
                    show_labels(&sample)
                ),
            },
            e => e,
        })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = r#"
[prometheus]
url = "http://127.0.0.1:9090"

[[discovery]]
query = "sum by (namespace, deployment) (rate(x[2m]))"
name = "${namespace}-${deployment}"
[discovery.template]
request_rate = 'sum(rate(x{namespace="${namespace}", deployment="${deployment}"}[2m]))'
capacity_rps = 1
startup = "1m"
max_replicas = 5
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, std::path::Path::new("/etc/prescale.toml"))
    }

    /// `BASE` with `from` replaced by `to` is refused at `key` with a message holding
    /// `needle`.
    #[track_caller]
    fn refused(from: &str, to: &str, key: &str, needle: &str) {
        assert!(BASE.contains(from), "{from}");
        let e = parse(&BASE.replace(from, to)).expect_err(to);
        let ConfigError::Invalid {
            key: k, message, ..
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!(k, key, "{e}");
        assert!(message.contains(needle), "{e}");
    }

    #[test]
    fn a_discovery_alone_is_a_valid_configuration_with_defaults() {
        let c = parse(BASE).expect("valid");
        assert!(c.targets.is_empty());
        let d = &c.discovery[0];
        assert_eq!(
            (d.refresh, d.remove_after),
            (DEFAULT_REFRESH, DEFAULT_REMOVE_AFTER)
        );
        assert_eq!(
            d.labels.iter().collect::<Vec<_>>(),
            ["deployment", "namespace"]
        );
        let no_target = parse(&BASE.replace("[[discovery]]", "[[nothing]]"));
        assert!(no_target.is_err());
    }

    #[test]
    fn bad_discoveries_are_refused_with_their_key() {
        refused(
            "query = \"sum",
            "query = \" \" #",
            "discovery[0].query",
            "empty",
        );
        refused(
            "name = \"${namespace}-${deployment}\"",
            "name = \"web\"",
            "discovery[0].name",
            "uses no label",
        );
        refused(
            "name = \"${namespace}-${deployment}\"",
            "name = \"web-${namespace\"",
            "discovery[0].name",
            "not closed",
        );
        refused(
            "[discovery.template]",
            "refresh = \"1m\"\nremove_after = \"30s\"\n[discovery.template]",
            "discovery[0].remove_after",
            "shorter than refresh",
        );
        refused(
            "[2m]))'",
            "[${deployment}]))'",
            "discovery[0].template.request_rate",
            "outside",
        );
        refused(
            "max_replicas = 5",
            "max_replicas = 5\nlatency = 'up{pod=\"${pod}\"}'",
            "discovery[0].template.latency",
            "`${pod}`",
        );
        refused(
            "max_replicas = 5",
            "max_replicas = 5\nmin_replicas = 9",
            "discovery[0].template.min_replicas",
            "sample labels",
        );
        refused(
            "max_replicas = 5",
            "max_replicas = 5\nname = \"x\"",
            "discovery[0].template.name",
            "`name` of [[discovery]]",
        );
        refused(
            "max_replicas = 5",
            "max_replicas = \"five\"",
            "discovery[0].template",
            "not a [[target]] table",
        );
    }

    #[test]
    fn a_series_renders_its_target_or_names_what_is_wrong() {
        let c = parse(BASE).expect("valid");
        let d = &c.discovery[0];
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let t = d
            .render(&labels(&[("namespace", "shop"), ("deployment", "web")]))
            .expect("a target");
        assert_eq!(t.name, "shop-web");
        assert_eq!(
            t.queries.request_rate,
            r#"sum(rate(x{namespace="shop", deployment="web"}[2m]))"#
        );
        let e = d
            .render(&labels(&[("namespace", "shop")]))
            .expect_err("no deployment");
        assert!(
            e.to_string().contains(
                "key `discovery[0].name`: the series {namespace=\"shop\"} has no label `deployment`"
            ),
            "{e}"
        );
        let e = d
            .render(&labels(&[("namespace", "a b"), ("deployment", "web")]))
            .expect_err("a space");
        assert!(
            e.to_string()
                .contains("key `discovery[0].name`: `a b-web` is not a valid name"),
            "{e}"
        );
    }

    #[test]
    fn the_escape_follows_the_key() {
        assert_eq!(escape_of("request_rate"), Escape::PromQl);
        assert_eq!(escape_of("instance_errors"), Escape::PromQl);
        assert_eq!(escape_of("platform.url"), Escape::Url);
        assert_eq!(escape_of("balancer.url"), Escape::Url);
        assert_eq!(escape_of("balancer.backend"), Escape::Plain);
        assert_eq!(escape_of("schedule[0].cron"), Escape::Plain);
        assert_eq!(escape_of("platform.request_rate"), Escape::Plain);
    }

    #[test]
    fn grouping_labels_are_read_from_a_leading_aggregation() {
        let set = |l: &[&str]| l.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(
            grouping_labels("sum by (namespace, deployment) (rate(x[2m]))"),
            Some(set(&["namespace", "deployment"]))
        );
        assert_eq!(grouping_labels(" max by(a)(x)"), Some(set(&["a"])));
        assert_eq!(grouping_labels("sum without (pod) (x)"), None);
        assert_eq!(grouping_labels("rate(x[2m])"), None);
        assert_eq!(grouping_labels("sum(x) by (a)"), None);
        assert_eq!(grouping_labels("topk by (a) (1, x)"), None);
    }
}
