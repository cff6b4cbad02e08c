//! Prometheus' answers: the JSON envelope every API answer shares, and a range query's
//! matrix read into series of finite samples.

use serde::Deserialize;

use super::{Labels, SourceError};
use crate::series::Sample;

/// How much of an unexpected response body is kept in [`SourceError::Http`].
const BODY_EXCERPT_CHARS: usize = 500;

// A series' identity ([`Labels`]): its labels, `__name__` included when Prometheus keeps it.

/// One series with its finite samples.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Labelled {
    pub(super) labels: Labels,
    pub(super) samples: Vec<Sample>,
}

/// What one successful request gave.
#[derive(Debug, PartialEq)]
pub(super) struct Answer {
    /// The series, samples finite and sorted; a series may have none left.
    pub(super) series: Vec<Labelled>,
    /// How many non-finite samples were dropped.
    pub(super) dropped: usize,
    /// Prometheus' warnings (e.g. about a rate over a non-counter).
    pub(super) warnings: Vec<String>,
}

/// The envelope of every Prometheus API answer.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    data: Option<Data>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct RawSeries {
    #[serde(default)]
    metric: Labels,
    /// `[unix_seconds, "value"]`; absent for native histograms, which are not used.
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// The result of one HTTP answer, and its warnings: a Prometheus error body (whatever the
/// status) is [`SourceError::Prometheus`], another non-2xx is [`SourceError::Http`], and a
/// 2xx must be a `success` whose result is of type `expected` (`hint` follows the message
/// of another type).
pub(super) fn result_of(
    query: &str,
    url: &str,
    (status, body): (u16, &[u8]),
    expected: &str,
    hint: &str,
) -> Result<(serde_json::Value, Vec<String>), SourceError> {
    let envelope = serde_json::from_slice::<Envelope>(body);
    if let Ok(e) = &envelope
        && e.status == "error"
    {
        return Err(SourceError::Prometheus {
            query: query.to_owned(),
            error_type: e.error_type.clone().unwrap_or_else(|| "unknown".to_owned()),
            message: e.error.clone().unwrap_or_default(),
        });
    }
    if !(200..300).contains(&status) {
        return Err(SourceError::Http {
            query: query.to_owned(),
            url: url.to_owned(),
            status,
            body: excerpt(body),
        });
    }
    let decode = |message: String| SourceError::Decode {
        query: query.to_owned(),
        message,
    };
    let envelope = envelope.map_err(|e| decode(format!("not a Prometheus API answer: {e}")))?;
    if envelope.status != "success" {
        return Err(decode(format!("unknown status `{}`", envelope.status)));
    }
    let data = envelope
        .data
        .ok_or_else(|| decode("no `data` in a successful answer".to_owned()))?;
    if data.result_type != expected {
        return Err(decode(format!(
            "result type `{}`; expected `{expected}`{hint}",
            data.result_type
        )));
    }
    Ok((data.result, envelope.warnings))
}

/// Reads one HTTP answer, which must be a matrix (see [`result_of`]).
pub(super) fn parse(
    query: &str,
    url: &str,
    status: u16,
    body: &[u8],
) -> Result<Answer, SourceError> {
    let (result, warnings) = result_of(query, url, (status, body), "matrix", "")?;
    let decode = |message: String| SourceError::Decode {
        query: query.to_owned(),
        message,
    };
    let raw: Vec<RawSeries> =
        serde_json::from_value(result).map_err(|e| decode(format!("malformed matrix: {e}")))?;
    let mut dropped = 0;
    let mut series = Vec::with_capacity(raw.len());
    for s in raw {
        let mut samples = Vec::with_capacity(s.values.len());
        for (ts, value) in s.values {
            if !ts.is_finite() {
                return Err(decode(format!("timestamp `{ts}` is not a number")));
            }
            let value = parse_value(&value)
                .ok_or_else(|| decode(format!("value `{value}` is not a number")))?;
            if value.is_finite() {
                samples.push(Sample {
                    ts: ts.round() as i64,
                    value,
                });
            } else {
                dropped += 1;
            }
        }
        // Prometheus sends them sorted; a misbehaving server may not. Sorted, one per time.
        samples.sort_by_key(|x| x.ts);
        samples.dedup_by_key(|x| x.ts);
        series.push(Labelled {
            labels: s.metric,
            samples,
        });
    }
    Ok(Answer {
        series,
        dropped,
        warnings,
    })
}

/// A sample value as Prometheus writes it: a decimal, `NaN`, `+Inf` or `-Inf`.
pub(super) fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// The start of a body, for a message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::prometheus::tests::{labels, samples};

    /// The outcome of [`parse`], flattened for comparison.
    #[derive(Debug, PartialEq)]
    enum Parsed {
        Ok {
            series: Vec<(Labels, Vec<Sample>)>,
            dropped: usize,
            warnings: Vec<String>,
        },
        Err(String),
    }

    #[track_caller]
    fn check(input: (u16, &str), expected: Parsed) {
        let (status, body) = input;
        let got = match parse("q", "http://p/api/v1/query_range", status, body.as_bytes()) {
            Ok(a) => Parsed::Ok {
                series: a
                    .series
                    .into_iter()
                    .map(|s| (s.labels, s.samples))
                    .collect(),
                dropped: a.dropped,
                warnings: a.warnings,
            },
            Err(e) => Parsed::Err(format!("{}: {e}", e.metric_label())),
        };
        assert_eq!(got, expected, "parse({status}, {body})");
    }

    fn ok(series: Vec<(Labels, Vec<Sample>)>, dropped: usize) -> Parsed {
        Parsed::Ok {
            series,
            dropped,
            warnings: vec![],
        }
    }

    fn err(s: &str) -> Parsed {
        Parsed::Err(s.to_owned())
    }

    #[test]
    fn parse_matrix_drops_non_finite_values() {
        check(
            (
                200,
                r#"{"status":"success","data":{"resultType":"matrix","result":[
                    {"metric":{"instance":"a"},"values":[[60,"1.5"],[120,"NaN"],[180,"+Inf"],[240,"-Inf"],[300,"2e3"]]},
                    {"metric":{},"values":[[1700000000.0,"-0.25"]]}]}}"#,
            ),
            ok(
                vec![
                    (
                        labels(&[("instance", "a")]),
                        samples(&[(60, 1.5), (300, 2000.0)]),
                    ),
                    (labels(&[]), samples(&[(1_700_000_000, -0.25)])),
                ],
                3,
            ),
        );
        check(
            (
                200,
                r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
            ),
            ok(vec![], 0),
        );
        check(
            (
                200,
                r#"{"status":"success","warnings":["w1"],"data":{"resultType":"matrix","result":[{"metric":{},"values":[[5,"NaN"]]}]}}"#,
            ),
            Parsed::Ok {
                series: vec![(labels(&[]), vec![])],
                dropped: 1,
                warnings: vec!["w1".to_owned()],
            },
        );
    }

    #[test]
    fn parse_maps_errors_to_their_cause() {
        let bad_data = r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error"}"#;
        for status in [400, 422, 503, 200] {
            check(
                (status, bad_data),
                err("prometheus_error: Prometheus refused query `q`: bad_data: 1:5: parse error"),
            );
        }
        check(
            (502, "<html>Bad Gateway</html>\n"),
            err(
                "http: query `q`: HTTP 502 from http://p/api/v1/query_range: <html>Bad Gateway</html>",
            ),
        );
        check(
            (404, r#"{"status":"success"}"#),
            err(
                "http: query `q`: HTTP 404 from http://p/api/v1/query_range: {\"status\":\"success\"}",
            ),
        );
        check(
            (200, "<html>"),
            err(
                "decode: query `q`: unreadable answer: not a Prometheus API answer: expected value at line 1 column 1",
            ),
        );
        check(
            (
                200,
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
            ),
            err("decode: query `q`: unreadable answer: result type `vector`; expected `matrix`"),
        );
        check(
            (
                200,
                r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[5,"x"]]}]}}"#,
            ),
            err("decode: query `q`: unreadable answer: value `x` is not a number"),
        );
    }

    #[test]
    fn long_http_bodies_are_cut() {
        let body = "x".repeat(2 * BODY_EXCERPT_CHARS);
        let cut = excerpt(body.as_bytes());
        assert_eq!(cut.chars().count(), BODY_EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
