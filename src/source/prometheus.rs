//! A Prometheus server as a [`Source`]: range queries over the HTTP API
//! (`GET {base}/api/v1/query_range`).
//!
//! Prometheus refuses a range query of more than 11,000 points per series, so a long range
//! (a backfill of weeks at a fine step) is split into consecutive chunks of at most
//! [`MAX_POINTS_PER_REQUEST`] steps, asked one after the other and concatenated. Start and
//! end are aligned down to the step first, so that every sample lies on the step grid and
//! successive polls ask for the same timestamps.
//!
//! Non-finite values (`NaN`, `+Inf`, `-Inf`, e.g. from a division by a zero rate) are
//! dropped, leaving gaps; a series with no finite value in the range counts as absent.
//!
//! Every request waits for one of `[prometheus] max_concurrency` slots ([`slots`]), shared
//! by every clone of the client, and a transient failure (unreachable, 429/502/503/504) is
//! asked again after a jittered pause. Chunks are kept small (a day at a one-minute step)
//! so that a request that times out leaves little work running in Prometheus.

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::{debug, warn};
use url::Url;

use super::{BoxFuture, Checked, Dropped, Grouped, Labels, Priority, Source, SourceError, admit};
use crate::config::{PrometheusAuth, PrometheusConfig};
use crate::series::{Sample, align_down};
#[cfg(test)]
use answer::parse_value;
use answer::result_of;
use answer::{Answer, Labelled, parse};
use slots::{ATTEMPTS, Slots, pause, worth_retrying};

/// Most steps asked of Prometheus in one request: a day at a one-minute step. Prometheus
/// refuses more than 11,000; fewer keep each request short, so that one that times out
/// leaves little work running there, and a long backfill shares the slots in small turns.
pub const MAX_POINTS_PER_REQUEST: i64 = 1_440;

/// The client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The HTTP client could not be built (e.g. the TLS backend failed to initialise).
    #[error("cannot build the HTTP client for Prometheus")]
    Http(#[source] reqwest::Error),
    /// The query endpoint could not be derived from the base URL.
    #[error("cannot derive the query endpoint from the Prometheus URL `{url}`: {source}")]
    Url {
        /// The base URL (without credentials).
        url: String,
        /// Why.
        source: url::ParseError,
    },
}

/// A client of the Prometheus HTTP API, answering [`Source`] range queries.
///
/// Cheap to clone (the HTTP connection pool is shared).
#[derive(Debug, Clone)]
pub struct PrometheusClient {
    http: reqwest::Client,
    /// `{base}/api/v1/query_range`, the path prefix of the base kept.
    endpoint: Url,
    /// The endpoint without credentials, for messages.
    shown: String,
    /// `{base}/api/v1/query`, for instant queries (discovery).
    instant: Url,
    /// `instant` without credentials, for messages.
    instant_shown: String,
    auth: Option<PrometheusAuth>,
    timeout: Duration,
    max_answer_bytes: usize,
    /// The requests in flight, shared by the clones.
    slots: Slots,
}

impl PrometheusClient {
    /// A client for the server at `cfg.url` (a path prefix such as `/prometheus` is kept),
    /// sending `cfg.auth` with every request, at most `cfg.max_concurrency` at once, and
    /// giving up on one after `cfg.timeout` (counted from when it has its slot).
    ///
    /// Installs rustls' `ring` provider as the process default unless one is installed
    /// already, since reqwest is built without a provider of its own.
    pub fn new(cfg: &PrometheusConfig) -> Result<Self, BuildError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .build()
            .map_err(BuildError::Http)?;
        let mut base = cfg.url.clone();
        // `join` replaces the last path segment unless the path ends with `/`:
        // `http://h/prom` + `api/v1/query_range` must give `http://h/prom/api/v1/...`.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);
        let join = |path: &str| {
            base.join(path).map_err(|source| BuildError::Url {
                url: redacted(&cfg.url),
                source,
            })
        };
        let endpoint = join("api/v1/query_range")?;
        let instant = join("api/v1/query")?;
        Ok(Self {
            http,
            shown: redacted(&endpoint),
            endpoint,
            instant_shown: redacted(&instant),
            instant,
            auth: cfg.auth.clone(),
            timeout: cfg.timeout,
            max_answer_bytes: cfg.max_answer_bytes,
            slots: Slots::new(cfg.max_concurrency),
        })
    }

    /// Every series `query` gives over the aligned range, chunk by chunk, concatenated;
    /// samples that are non-finite, negative or outside the chunk asked for (beyond a step)
    /// are dropped, series left without a sample are left out, and an answer with none
    /// left at all is [`SourceError::Unusable`]; with what was dropped.
    async fn fetch(
        &self,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
        priority: Priority,
    ) -> Result<(Vec<Labelled>, Dropped), SourceError> {
        let step = step.max(1);
        let mut merged: BTreeMap<Labels, Vec<Sample>> = BTreeMap::new();
        let mut dropped = Dropped::default();
        for (from, to) in chunks(start, end, step) {
            let mut answer = self
                .retrying(query, || {
                    self.query_range(query, (from, to, step), priority)
                })
                .await?;
            dropped.non_finite += answer.dropped;
            for s in &mut answer.series {
                let (kept, out) = admit(std::mem::take(&mut s.samples), from, to, step);
                s.samples = kept;
                dropped.add(Dropped {
                    non_finite: 0,
                    ..out
                });
            }
            debug!(
                query,
                start = from,
                end = to,
                step,
                series = answer.series.len(),
                points = answer.series.iter().map(|s| s.samples.len()).sum::<usize>(),
                dropped = answer.dropped,
                "query_range"
            );
            for w in &answer.warnings {
                warn!(query, warning = %w, "Prometheus warned about a query");
            }
            for s in answer.series {
                let held = merged.entry(s.labels).or_default();
                // Chunks do not overlap and come in order; this only guards the invariant
                // (strictly increasing timestamps) against a misbehaving server.
                let newest = held.last().map_or(i64::MIN, |l| l.ts);
                held.extend(s.samples.into_iter().filter(|x| x.ts > newest));
            }
        }
        let usable: Vec<Labelled> = merged
            .into_iter()
            .filter(|(_, samples)| !samples.is_empty())
            .map(|(labels, samples)| Labelled { labels, samples })
            .collect();
        if dropped.negative + dropped.out_of_range > 0 {
            warn!(query, %dropped, "samples dropped at the door");
        }
        if usable.is_empty() && dropped.total() > 0 {
            return Err(SourceError::Unusable {
                query: query.to_owned(),
                dropped,
            });
        }
        Ok((usable, dropped))
    }

    /// `attempt` until it succeeds, fails for good or has been tried [`ATTEMPTS`] times,
    /// pausing (without a slot) before each retry.
    async fn retrying<T, F: Future<Output = Result<T, SourceError>>>(
        &self,
        query: &str,
        attempt: impl Fn() -> F,
    ) -> Result<T, SourceError> {
        let mut retry = 0;
        loop {
            match attempt().await {
                Err(e) if retry + 1 < ATTEMPTS && worth_retrying(&e) => {
                    let wait = pause(retry, rand::random::<f64>());
                    debug!(query, error = %e, retry = retry + 1, wait_ms = wait.as_millis() as u64, "query failed; retrying");
                    tokio::time::sleep(wait).await;
                    retry += 1;
                }
                result => return result,
            }
        }
    }

    /// One request for `[start, end]`, both on the step grid.
    async fn query_range(
        &self,
        query: &str,
        (start, end, step): (i64, i64, i64),
        priority: Priority,
    ) -> Result<Answer, SourceError> {
        let params = [
            ("query", query.to_owned()),
            ("start", start.to_string()),
            ("end", end.to_string()),
            ("step", step.to_string()),
        ];
        let (status, body) = self
            .send(&self.endpoint, &self.shown, query, &params, priority)
            .await?;
        parse(query, &self.shown, status, &body)
    }

    /// One GET of `endpoint` (shown as `shown`) with `params`, authenticated, once it has
    /// a slot: the status and the body, read up to `max_answer_bytes`. The slot is held
    /// until the body is read, and the timeout counts from when it was taken.
    async fn send(
        &self,
        endpoint: &Url,
        shown: &str,
        query: &str,
        params: &[(&str, String)],
        priority: Priority,
    ) -> Result<(u16, Vec<u8>), SourceError> {
        let _slot = self.slots.take(priority).await;
        let mut request = self
            .http
            .get(endpoint.clone())
            .timeout(self.timeout)
            .query(params);
        request = match &self.auth {
            Some(PrometheusAuth::Bearer(token)) => request.bearer_auth(token.expose()),
            Some(PrometheusAuth::Basic { username, password }) => {
                request.basic_auth(username, Some(password.expose()))
            }
            None => request,
        };
        // A pooled keep-alive connection may have been closed by the server (e.g. a
        // restarted Prometheus) without the pool noticing yet; the request then fails after
        // connecting. A query is idempotent, so it is sent once more, on a new
        // connection. A refused connection or a timeout is not retried.
        let retry = request.try_clone();
        let response = match (request.send().await, retry) {
            (Err(e), Some(retry)) if !e.is_timeout() && !e.is_connect() => {
                // Without the URL: it may carry credentials.
                let e = e.without_url();
                debug!(query, url = %shown, error = %chain(&e), "query failed after connecting; retrying once");
                retry.send().await
            }
            (result, _) => result,
        };
        let response = response.map_err(|e| self.transport(shown, query, e))?;
        let status = response.status().as_u16();
        let body = self.read_capped(shown, query, response).await?;
        Ok((status, body))
    }

    /// The body, read chunk by chunk and refused once it passes `max_answer_bytes`, so a
    /// huge answer never takes the memory of every target.
    async fn read_capped(
        &self,
        shown: &str,
        query: &str,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, SourceError> {
        let limit = self.max_answer_bytes;
        let too_large = || SourceError::TooLarge {
            query: query.to_owned(),
            url: shown.to_owned(),
            limit,
        };
        let announced = response.content_length().unwrap_or(0);
        if usize::try_from(announced).map_or(true, |n| n > limit) {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport(shown, query, e))?
        {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Maps a transport failure to [`SourceError::Timeout`] or [`SourceError::Unreachable`].
    fn transport(&self, shown: &str, query: &str, e: reqwest::Error) -> SourceError {
        if e.is_timeout() {
            SourceError::Timeout {
                query: query.to_owned(),
                url: shown.to_owned(),
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }
        } else {
            SourceError::Unreachable {
                query: query.to_owned(),
                url: shown.to_owned(),
                // The URL is in the error already, without the long query string.
                message: chain(&e.without_url()),
            }
        }
    }
}

impl Source for PrometheusClient {
    fn range_checked<'a>(
        &'a self,
        query: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> BoxFuture<'a, Result<Checked<Vec<Sample>>, SourceError>> {
        Box::pin(async move {
            let (series, dropped) = self.fetch(query, start, end, step, Priority::Poll).await?;
            one(query, series, dropped)
        })
    }

    fn history_checked<'a>(
        &'a self,
        query: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> BoxFuture<'a, Result<Checked<Vec<Sample>>, SourceError>> {
        Box::pin(async move {
            let (series, dropped) = self
                .fetch(query, start, end, step, Priority::History)
                .await?;
            one(query, series, dropped)
        })
    }

    fn range_by_checked<'a>(
        &'a self,
        query: &'a str,
        label: &'a str,
        start: i64,
        end: i64,
        step: i64,
    ) -> BoxFuture<'a, Result<Checked<Grouped>, SourceError>> {
        Box::pin(async move {
            let (series, dropped) = self.fetch(query, start, end, step, Priority::Poll).await?;
            let value = group(query, label, series)?;
            Ok(Checked { value, dropped })
        })
    }

    fn label_sets<'a>(&'a self, query: &'a str) -> BoxFuture<'a, Result<Vec<Labels>, SourceError>> {
        Box::pin(self.instant_labels(query))
    }
}

/// The one series a query gave: none is [`SourceError::Empty`], more than one
/// [`SourceError::ManySeries`].
fn one(
    query: &str,
    mut series: Vec<Labelled>,
    dropped: Dropped,
) -> Result<Checked<Vec<Sample>>, SourceError> {
    match series.len() {
        0 => Err(SourceError::Empty {
            query: query.to_owned(),
        }),
        1 => Ok(Checked {
            value: series.swap_remove(0).samples,
            dropped,
        }),
        count => Err(SourceError::ManySeries {
            query: query.to_owned(),
            count,
        }),
    }
}

/// Keys `series` by the value of `label`: every series must carry it, and no two may share
/// a value (that would be two series where one was expected).
fn group(query: &str, label: &str, series: Vec<Labelled>) -> Result<Grouped, SourceError> {
    if series.is_empty() {
        return Err(SourceError::Empty {
            query: query.to_owned(),
        });
    }
    if series.iter().any(|s| !s.labels.contains_key(label)) {
        return Err(SourceError::MissingLabel {
            query: query.to_owned(),
            label: label.to_owned(),
        });
    }
    let count = series.len();
    let mut grouped = Grouped::new();
    for s in series {
        let key = s.labels.get(label).cloned().unwrap_or_default();
        if grouped.insert(key, s.samples).is_some() {
            return Err(SourceError::ManySeries {
                query: query.to_owned(),
                count,
            });
        }
    }
    Ok(grouped)
}

/// The requests covering `[start, end]` aligned down to `step`: consecutive, disjoint
/// `(from, to)` pairs on the grid, each of at most [`MAX_POINTS_PER_REQUEST`] points.
/// Empty when the aligned end is before the aligned start.
fn chunks(start: i64, end: i64, step: i64) -> Vec<(i64, i64)> {
    let step = step.max(1);
    let (start, end) = (align_down(start, step), align_down(end, step));
    let span = (MAX_POINTS_PER_REQUEST - 1).saturating_mul(step);
    let mut out = Vec::new();
    let mut from = start;
    while from <= end {
        let to = from.saturating_add(span).min(end);
        out.push((from, to));
        match to.checked_add(step) {
            Some(next) => from = next,
            None => break,
        }
    }
    out
}

/// A URL without user name and password, for messages.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    // Only fails for URLs that cannot have credentials, which then have none to hide.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// An error and its causes, `: `-separated (reqwest's own message names only the URL).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_aligned_range_without_overlap() {
        #[track_caller]
        fn check(input: (i64, i64, i64), expected: &[(i64, i64)]) {
            let (start, end, step) = input;
            assert_eq!(chunks(start, end, step), expected, "chunks{input:?}");
        }
        let n = MAX_POINTS_PER_REQUEST;
        // Unaligned ends are aligned down.
        check((61, 179, 60), &[(60, 120)]);
        check((0, 0, 5), &[(0, 0)]);
        check((10, 9, 1), &[]);
        check((125, 100, 60), &[]);
        // Exactly one full chunk, then one point more.
        check((0, (n - 1) * 5, 5), &[(0, (n - 1) * 5)]);
        check((0, n * 5, 5), &[(0, (n - 1) * 5), (n * 5, n * 5)]);
        // Two days at one minute: 2,881 points in three requests.
        check(
            (0, 2 * 86_400, 60),
            &[(0, 86_340), (86_400, 172_740), (172_800, 172_800)],
        );
        check((-7, 3, 5), &[(-10, 0)]);
    }

    #[test]
    fn chunks_never_exceed_the_point_limit() {
        for (start, end, step) in [(3, 1_000_000, 7), (0, 2_592_000, 15), (1, 60_000, 1)] {
            let cs = chunks(start, end, step);
            assert_eq!(cs.first().map(|c| c.0), Some(align_down(start, step)));
            assert_eq!(cs.last().map(|c| c.1), Some(align_down(end, step)));
            for w in cs.windows(2) {
                assert_eq!(w[1].0, w[0].1 + step);
            }
            let total: i64 = cs.iter().map(|(a, b)| (b - a) / step + 1).sum();
            assert_eq!(
                total,
                (align_down(end, step) - align_down(start, step)) / step + 1
            );
            assert!(
                cs.iter()
                    .all(|(a, b)| (b - a) / step < MAX_POINTS_PER_REQUEST)
            );
        }
    }

    pub(super) fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    pub(super) fn samples(pairs: &[(i64, f64)]) -> Vec<Sample> {
        pairs
            .iter()
            .map(|&(ts, value)| Sample { ts, value })
            .collect()
    }

    #[test]
    fn group_by_label() {
        let series = |pairs: &[&[(&str, &str)]]| -> Vec<Labelled> {
            pairs
                .iter()
                .enumerate()
                .map(|(i, p)| Labelled {
                    labels: labels(p),
                    samples: samples(&[(60, i as f64)]),
                })
                .collect()
        };
        #[track_caller]
        fn check(input: Vec<Labelled>, expected: Result<Vec<(&str, f64)>, &str>) {
            let got = group("q", "instance", input)
                .map(|g| {
                    g.into_iter()
                        .map(|(k, v)| (k, v[0].value))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| e.metric_label());
            let expected =
                expected.map(|v| v.into_iter().map(|(k, x)| (k.to_owned(), x)).collect());
            assert_eq!(got, expected);
        }
        check(
            series(&[&[("instance", "b")], &[("instance", "a")]]),
            Ok(vec![("a", 1.0), ("b", 0.0)]),
        );
        check(series(&[]), Err("empty"));
        check(
            series(&[&[("instance", "a")], &[("job", "x")]]),
            Err("missing_label"),
        );
        check(
            series(&[
                &[("instance", "a"), ("job", "x")],
                &[("instance", "a"), ("job", "y")],
            ]),
            Err("many_series"),
        );
    }

    #[test]
    fn endpoint_keeps_the_path_prefix_and_hides_credentials() {
        #[track_caller]
        fn check(input: &str, expected: &str) {
            let cfg = PrometheusConfig {
                url: Url::parse(input).unwrap(),
                auth: None,
                timeout: Duration::from_secs(1),
                max_answer_bytes: crate::config::DEFAULT_MAX_ANSWER_BYTES,
                max_concurrency: crate::config::DEFAULT_MAX_CONCURRENCY,
            };
            let client = PrometheusClient::new(&cfg).unwrap();
            assert_eq!(client.shown, expected, "{input}");
        }
        check(
            "http://127.0.0.1:9090",
            "http://127.0.0.1:9090/api/v1/query_range",
        );
        check("http://h/prom", "http://h/prom/api/v1/query_range");
        check("https://h/a/b/?x=1", "https://h/a/b/api/v1/query_range");
        check("http://u:pw@h:1/", "http://h:1/api/v1/query_range");
    }
}

mod answer;
mod instant;
#[cfg(test)]
mod proptests;
mod slots;
