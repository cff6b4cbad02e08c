//! Instant queries (`GET {base}/api/v1/query`): the label sets of the series a query gives
//! now, which `[[discovery]]` turns into targets. They wait for a slot as polls do.

use serde::Deserialize;
use tracing::{debug, warn};

use super::{Labels, PrometheusClient, SourceError, result_of};
use crate::source::Priority;

/// One element of an instant vector; its value is not needed.
#[derive(Deserialize)]
struct Element {
    #[serde(default)]
    metric: Labels,
}

impl PrometheusClient {
    /// The label sets of the series `query` gives at Prometheus' now, sorted, without
    /// repeats; none is an empty list.
    pub(super) async fn instant_labels(&self, query: &str) -> Result<Vec<Labels>, SourceError> {
        let params = [("query", query.to_owned())];
        let (sets, warnings) = self
            .retrying(query, || async {
                let (status, body) = self
                    .send(
                        &self.instant,
                        &self.instant_shown,
                        query,
                        &params,
                        Priority::Poll,
                    )
                    .await?;
                parse_vector(query, &self.instant_shown, status, &body)
            })
            .await?;
        for w in &warnings {
            warn!(query, warning = %w, "Prometheus warned about a query");
        }
        debug!(query, series = sets.len(), "instant query");
        Ok(sets)
    }
}

/// Reads an instant query's answer: a Prometheus error body is
/// [`SourceError::Prometheus`], another non-2xx [`SourceError::Http`], and a 2xx must be a
/// vector. The label sets, sorted and distinct, and Prometheus' warnings.
pub(super) fn parse_vector(
    query: &str,
    url: &str,
    status: u16,
    body: &[u8],
) -> Result<(Vec<Labels>, Vec<String>), SourceError> {
    let hint = " (a discovery query must give series, one per service)";
    let (result, warnings) = result_of(query, url, (status, body), "vector", hint)?;
    let decode = |message: String| SourceError::Decode {
        query: query.to_owned(),
        message,
    };
    let elements: Vec<Element> =
        serde_json::from_value(result).map_err(|e| decode(format!("malformed vector: {e}")))?;
    let mut sets: Vec<Labels> = elements.into_iter().map(|e| e.metric).collect();
    sets.sort();
    sets.dedup();
    Ok((sets, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> Result<Vec<Labels>, SourceError> {
        parse_vector("q", "http://p/api/v1/query", status, body.as_bytes()).map(|(s, _)| s)
    }

    #[test]
    fn a_vector_gives_its_label_sets() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"deployment":"b","namespace":"n"},"value":[1,"2"]},
            {"metric":{"deployment":"a","namespace":"n"},"value":[1,"NaN"]},
            {"metric":{},"value":[1,"1"]}]}}"#;
        let sets = parse(200, body).expect("a vector");
        let names: Vec<Option<&str>> = sets
            .iter()
            .map(|l| l.get("deployment").map(String::as_str))
            .collect();
        assert_eq!(names, [None, Some("a"), Some("b")]);
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(
            parse(200, empty).expect("empty is fine"),
            Vec::<Labels>::new()
        );
    }

    #[test]
    fn errors_name_the_query() {
        let refused = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let e = parse(400, refused).expect_err("refused");
        assert!(matches!(e, SourceError::Prometheus { .. }), "{e}");
        assert!(e.to_string().contains("`q`") && e.to_string().contains("parse error"));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#;
        let e = parse(200, scalar).expect_err("a scalar");
        assert!(e.to_string().contains("expected `vector`"), "{e}");
        let e = parse(502, "bad gateway").expect_err("a proxy error");
        assert!(matches!(e, SourceError::Http { status: 502, .. }), "{e}");
        assert!(matches!(
            parse(200, "{").expect_err("not JSON"),
            SourceError::Decode { .. }
        ));
    }
}
