//! The pure part of the KEDA external scaler: which target a `ScaledObject` names, the
//! metric's name, and the count (or the refusal) a target's state gives.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use tonic::{Code, Status};

use crate::api::views;
use crate::config::MAX_TARGET_NAME;
use crate::store::TargetState;

/// The `scalerMetadata` key that names the prescale target.
pub(super) const TARGET_KEY: &str = "target";

/// The target a trigger names: its metadata's `target`, else the `ScaledObject`'s own
/// name. An empty `target`, or no name at all, is refused.
pub(super) fn target_name(
    scaled_object: &str,
    metadata: &HashMap<String, String>,
) -> Result<String, Refusal> {
    let name = named(scaled_object, metadata)?;
    if name.len() > MAX_TARGET_NAME {
        return Err(Refusal::NoTarget {
            scaled_object: scaled_object.to_owned(),
            why: format!(
                "the target it names, `{}`, is {} bytes long; no target's name is longer \
                 than {MAX_TARGET_NAME}",
                shown(&name),
                name.len()
            ),
        });
    }
    Ok(name)
}

/// The longest part of a name a refusal repeats: its message travels in a gRPC header,
/// which a client limits (a name of 20,000 characters echoed whole came back as
/// `RESOURCE_EXHAUSTED`).
const SHOWN: usize = 64;

/// `s`, cut to [`SHOWN`] characters (saying how long it was) when longer.
fn shown(s: &str) -> String {
    let length = s.chars().count();
    if length <= SHOWN {
        s.to_owned()
    } else {
        let head: String = s.chars().take(SHOWN).collect();
        format!("{head}… ({length} characters)")
    }
}

/// The name a trigger gives, before its length is checked.
fn named(scaled_object: &str, metadata: &HashMap<String, String>) -> Result<String, Refusal> {
    match metadata.get(TARGET_KEY) {
        Some(t) if t.trim().is_empty() => Err(Refusal::NoTarget {
            scaled_object: scaled_object.to_owned(),
            why: format!("its metadata `{TARGET_KEY}` is empty"),
        }),
        Some(t) => Ok(t.trim().to_owned()),
        None if scaled_object.is_empty() => Err(Refusal::NoTarget {
            scaled_object: String::new(),
            why: format!("it has no metadata `{TARGET_KEY}` and no name"),
        }),
        None => Ok(scaled_object.to_owned()),
    }
}

/// The metric prescale serves for `target`: `prescale-<target>`, lower case, every
/// character other than a letter, a digit or `-` replaced by `-` (KEDA prefixes it with
/// the trigger's index, `s0-`, and the HPA names the external metric so; dots, slashes and
/// colons are what KEDA's own scalers replace too).
pub(super) fn metric_name(target: &str) -> String {
    let name: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("prescale-{name}")
}

/// Whether `asked` (what `GetMetrics` names; KEDA strips its `sN-` prefix) is `target`'s
/// metric. An empty name is taken as the target's only metric.
pub(super) fn check_metric(target: &str, asked: &str) -> Result<(), Refusal> {
    let served = metric_name(target);
    if asked.is_empty() || asked == served {
        Ok(())
    } else {
        Err(Refusal::WrongMetric {
            target: target.to_owned(),
            asked: asked.to_owned(),
            served,
        })
    }
}

/// What the answer is made from: a target's state as its owner holds it, read from the
/// local store or from the owner's `GET /api/v1/targets/{name}` (whose fields these are).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Readout {
    /// Its state.
    pub(super) status: views::Status,
    /// Whether its decisions are acted on.
    pub(super) mode: views::Mode,
    /// The count of the latest decision: what prescale asks the platform for.
    pub(super) desired_replicas: Option<u32>,
    /// Why it is degraded.
    #[serde(default)]
    pub(super) degraded_reasons: Vec<String>,
}

impl Readout {
    /// `t`'s state at `now`.
    pub(super) fn of(t: &TargetState, now: i64) -> Self {
        Self {
            status: t.status(now).into(),
            mode: t.config.mode.into(),
            desired_replicas: t.last_decision.as_ref().map(|d| d.to),
            degraded_reasons: t.degraded_reasons(now),
        }
    }

    /// The replicas prescale wants for `target`, or why no count may be given now (a
    /// count then could scale in on data prescale does not trust, or against a pause).
    pub(super) fn count(&self, target: &str) -> Result<u32, Refusal> {
        let unavailable = |why| Refusal::Unavailable {
            target: target.to_owned(),
            why,
        };
        match self.status {
            views::Status::Backfilling => return Err(unavailable(Unavailable::Backfilling)),
            views::Status::Degraded => {
                let reasons = self.degraded_reasons.join("; ");
                return Err(unavailable(Unavailable::Degraded(reasons)));
            }
            views::Status::Paused => return Err(unavailable(Unavailable::Paused)),
            views::Status::Unreachable => {
                return Err(unavailable(Unavailable::Owner(
                    "its owner's state is unknown".to_owned(),
                )));
            }
            views::Status::OwnedElsewhere => {
                return Err(unavailable(Unavailable::Owner(
                    "this instance does not run it".to_owned(),
                )));
            }
            views::Status::Ok | views::Status::BudgetLimited => {}
        }
        if matches!(self.mode, views::Mode::ForecastOnly) {
            return Err(unavailable(Unavailable::ForecastOnly));
        }
        self.desired_replicas
            .ok_or_else(|| unavailable(Unavailable::NoDecision))
    }
}

/// Why a request gets no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The trigger names no target (`INVALID_ARGUMENT`).
    NoTarget {
        /// The `ScaledObject`'s name.
        scaled_object: String,
        /// What is missing.
        why: String,
    },
    /// No target of that name is configured (`NOT_FOUND`).
    UnknownTarget(String),
    /// `GetMetrics` asked for another metric than the target's (`INVALID_ARGUMENT`).
    WrongMetric {
        /// The target.
        target: String,
        /// The metric asked for.
        asked: String,
        /// The one served.
        served: String,
    },
    /// The target is known but no count may be given now (`UNAVAILABLE`): KEDA and the
    /// HPA then keep the current count.
    Unavailable {
        /// The target.
        target: String,
        /// Why.
        why: Unavailable,
    },
}

/// Why a known target has no count to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unavailable {
    /// Its history is still being loaded.
    Backfilling,
    /// It has made no decision yet.
    NoDecision,
    /// A signal is missing, failing or stale, or its actions cannot be written (the
    /// reasons).
    Degraded(String),
    /// Acting on it is paused through the API.
    Paused,
    /// It is `mode = "forecast-only"`: prescale acts on nothing for it.
    ForecastOnly,
    /// `[cluster]`: no live instance owns it now.
    NotOwned,
    /// `[cluster]`: its owner was asked and did not answer (which, and why).
    Owner(String),
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backfilling => f.write_str("its history is still being loaded (backfilling)"),
            Self::NoDecision => f.write_str("it has made no decision yet"),
            Self::Degraded(reasons) => write!(f, "it is degraded: {reasons}"),
            Self::Paused => f.write_str("acting on it is paused (POST …/resume to resume)"),
            Self::ForecastOnly => f.write_str(
                "it is mode `forecast-only`, so prescale acts on nothing for it; set mode `act`",
            ),
            Self::NotOwned => f.write_str("no live prescale instance owns it now"),
            Self::Owner(why) => write!(f, "{why}"),
        }
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NoTarget { scaled_object, why } => Status::new(
                Code::InvalidArgument,
                format!(
                    "ScaledObject `{}` names no prescale target: {why}; expected the \
                     trigger's metadata `{TARGET_KEY}: <prescale target>`",
                    shown(&scaled_object)
                ),
            ),
            Refusal::UnknownTarget(target) => Status::new(
                Code::NotFound,
                format!("no prescale target `{}` is configured", shown(&target)),
            ),
            Refusal::WrongMetric {
                target,
                asked,
                served,
            } => Status::new(
                Code::InvalidArgument,
                format!(
                    "metric `{}` is not served for target `{target}`; expected `{served}`",
                    shown(&asked)
                ),
            ),
            Refusal::Unavailable { target, why } => Status::new(
                Code::Unavailable,
                format!(
                    "target `{target}`: {why}; no count is given, so that KEDA keeps the \
                     current one"
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_sanitised() {
        let check = |target: &str, expected: &str| assert_eq!(metric_name(target), expected);
        check("web", "prescale-web");
        check("Web-API", "prescale-web-api");
        check("shop.checkout_v2", "prescale-shop-checkout-v2");
        check("a/b:c%d", "prescale-a-b-c-d");
        check("", "prescale-");
    }

    #[test]
    fn the_target_is_the_metadata_s_else_the_scaled_object_s_name() {
        let meta = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let check = |name: &str, m: &[(&str, &str)], expected: Result<&str, &str>| {
            let got = target_name(name, &meta(m));
            match (got, expected) {
                (Ok(t), Ok(e)) => assert_eq!(t, e),
                (Err(Refusal::NoTarget { why, .. }), Err(e)) => {
                    assert!(why.contains(e), "{why:?} should say {e:?}");
                }
                (got, expected) => panic!("{name} {m:?}: got {got:?}, expected {expected:?}"),
            }
        };
        check("so", &[("target", "web")], Ok("web"));
        check("so", &[("target", " web ")], Ok("web"));
        check("so", &[("other", "x"), ("target", "api")], Ok("api"));
        check("web", &[], Ok("web"));
        check("web", &[("other", "x")], Ok("web"));
        check("so", &[("target", "  ")], Err("`target` is empty"));
        check("", &[], Err("no name"));
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_support::config(256))]

        /// Whatever KEDA sends (any name, any metadata), the target is found or refused
        /// without a panic, and its metric's name is lower-case letters, digits and `-`,
        /// which `GetMetrics` accepts back.
        #[test]
        fn any_reference_gives_a_target_or_a_refusal(
            name in ".{0,20}",
            metadata in proptest::collection::hash_map("target|other|.{0,8}", ".{0,20}", 0..4),
        ) {
            match target_name(&name, &metadata) {
                Ok(t) => {
                    proptest::prop_assert!(!t.is_empty());
                    let m = metric_name(&t);
                    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
                    proptest::prop_assert!(m.chars().all(allowed), "{m}");
                    proptest::prop_assert_eq!(check_metric(&t, &m), Ok(()));
                }
                Err(r) => {
                    let status = Status::from(r);
                    proptest::prop_assert_eq!(status.code(), Code::InvalidArgument);
                }
            }
        }
    }

    #[test]
    fn the_metric_asked_for_must_be_the_target_s() {
        assert_eq!(check_metric("Web.1", "prescale-web-1"), Ok(()));
        assert_eq!(check_metric("web", ""), Ok(()));
        let err = check_metric("web", "prescale-api").expect_err("another metric");
        let status = Status::from(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("prescale-api") && status.message().contains("web"));
    }

    fn readout(status: views::Status, mode: views::Mode, desired: Option<u32>) -> Readout {
        Readout {
            status,
            mode,
            desired_replicas: desired,
            degraded_reasons: vec!["request_rate: stale".to_owned()],
        }
    }

    /// Only a healthy (or budget-limited), acting target with a decision gives a count;
    /// everything else is UNAVAILABLE naming the target and why.
    #[test]
    fn only_a_trusted_decision_gives_a_count() {
        use views::Mode::{Act, ForecastOnly};
        use views::Status as S;
        let cases: &[(Readout, Result<u32, &str>)] = &[
            (readout(S::Ok, Act, Some(7)), Ok(7)),
            (readout(S::Ok, Act, Some(0)), Ok(0)),
            (readout(S::BudgetLimited, Act, Some(3)), Ok(3)),
            (readout(S::Ok, Act, None), Err("no decision yet")),
            (readout(S::Backfilling, Act, None), Err("backfilling")),
            (
                readout(S::Degraded, Act, Some(9)),
                Err("degraded: request_rate: stale"),
            ),
            (readout(S::Paused, Act, Some(9)), Err("paused")),
            (readout(S::Ok, ForecastOnly, Some(9)), Err("forecast-only")),
            (readout(S::Unreachable, Act, Some(9)), Err("owner")),
        ];
        for (r, expected) in cases {
            match (r.count("web"), expected) {
                (Ok(n), Ok(e)) => assert_eq!(n, *e, "{r:?}"),
                (Err(refusal), Err(e)) => {
                    let status = Status::from(refusal);
                    assert_eq!(status.code(), Code::Unavailable, "{r:?}");
                    let m = status.message();
                    assert!(m.contains("target `web`") && m.contains(e), "{r:?}: {m}");
                }
                (got, _) => panic!("{r:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn an_owner_s_answer_reads_as_a_readout() {
        let body = r#"{"name":"web","status":"budget-limited","owner":"b","mode":"act",
            "paused":false,"replicas":4,"desired_replicas":6,"min_replicas":1,
            "max_replicas":10,"degraded_reasons":[],"points":3}"#;
        let r: Readout = serde_json::from_str(body).expect("a target's detail");
        assert_eq!(r.count("web"), Ok(6));
        let status = Status::from(Refusal::UnknownTarget("nope".to_owned()));
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.message().contains("`nope`"));
    }
}
