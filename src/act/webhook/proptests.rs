//! Property tests of the `Prescale-Signature` header: what [`sign_all`] writes verifies,
//! any single-byte change to the header, the body or the secret does not, and [`verify`]
//! never accepts a header that the README's receiver check refuses.

use proptest::prelude::*;

use super::*;
use crate::proptest_support::config;

/// The README's receiver check (its Python snippet), as written there: pairs split on the
/// first `=`, the first `t` of ASCII digits, and `v1` compared as the lower-case hex text.
fn readme_accepts(secret: &[u8], header: &str, body: &[u8], now: i64, tolerance: i64) -> bool {
    let pairs: Vec<(&str, &str)> = header
        .split(',')
        .filter_map(|p| p.split_once('='))
        .collect();
    let Some(t) = pairs.iter().find(|(k, _)| *k == "t").map(|(_, v)| *v) else {
        return false;
    };
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(ts) = t.parse::<i64>() else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("any key length");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let want = hex::encode(mac.finalize().into_bytes());
    let matches = pairs.iter().any(|(k, v)| *k == "v1" && *v == want);
    matches && i128::from(now).abs_diff(i128::from(ts)) <= u128::from(tolerance.unsigned_abs())
}

/// One piece of a header: a real-looking pair, a stray scheme, or noise.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|t| format!("t={t}")),
        "[0-9]{0,12}".prop_map(|t| format!("t={t}")),
        "[+-]?0*[0-9]{1,20}".prop_map(|t| format!("t={t}")),
        "[0-9a-fA-F]{0,70}".prop_map(|h| format!("v1={h}")),
        "[ \t]?(t|v1|v0|T|V1)[ \t]?=[ \t]?[0-9a-f]{0,8}",
        "[a-z0-9]{0,6}(=[^,]{0,10})?",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config(10_000))]

    /// A header signed with each secret verifies with each, at any timestamp, within the
    /// tolerance and not outside it.
    #[test]
    fn what_is_signed_verifies(
        secrets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 1..4),
        t in any::<i64>(),
        body in prop::collection::vec(any::<u8>(), 0..300),
        skew in -400i64..400,
    ) {
        let refs: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
        let header = sign_all(&refs, t, &body);
        let now = t.saturating_add(skew);
        for secret in &refs {
            let got = verify(secret, &header, &body, now, 300);
            if now.abs_diff(t) <= 300 {
                prop_assert_eq!(got, Ok(()));
                prop_assert!(t < 0 || readme_accepts(secret, &header, &body, now, 300));
            } else {
                let outside = matches!(got, Err(SignatureError::OutsideTolerance { .. }));
                prop_assert!(outside, "{:?}", got);
            }
        }
    }

    /// Changing any one byte of the header (to another that keeps it text) or of the body
    /// makes the signature fail.
    #[test]
    fn any_single_byte_change_fails(
        secret in prop::collection::vec(any::<u8>(), 1..40),
        t in 0i64..4_000_000_000,
        body in prop::collection::vec(any::<u8>(), 1..200),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let header = sign(&secret, t, &body);
        let mut changed = header.clone().into_bytes();
        let i = at.index(changed.len());
        if changed[i] != byte {
            changed[i] = byte;
            if let Ok(h) = String::from_utf8(changed) {
                prop_assert!(verify(&secret, &h, &body, t, 300).is_err(), "accepted {}", h);
            }
        }
        let mut tampered = body.clone();
        let j = at.index(tampered.len());
        tampered[j] ^= byte.max(1);
        prop_assert_eq!(verify(&secret, &header, &tampered, t, 300), Err(SignatureError::Mismatch));
        let mut other = secret.clone();
        let k = at.index(other.len());
        other[k] ^= byte.max(1);
        prop_assert_eq!(verify(&other, &header, &body, t, 300), Err(SignatureError::Mismatch));
    }

    /// Headers put together from random pieces, some of them valid: no panic, and an
    /// accepted header is one the README's check accepts too.
    #[test]
    fn verify_is_never_looser_than_the_readme(
        secret in prop::collection::vec(any::<u8>(), 0..20),
        t in 0i64..4_000_000_000,
        body in prop::collection::vec(any::<u8>(), 0..60),
        pieces in prop::collection::vec(piece(), 0..6),
        valid_at in prop::option::of((any::<prop::sample::Index>(), any::<prop::sample::Index>())),
        t_form in prop::option::of((0usize..6, any::<prop::sample::Index>())),
        upper in any::<bool>(),
    ) {
        let mut pieces = pieces;
        if let Some((at, _)) = valid_at {
            let signed = sign(&secret, t, &body);
            let mut v1 = signed.split_once(",v1=").map(|(_, v)| format!("v1={v}")).unwrap_or_default();
            if upper {
                v1 = format!("v1={}", v1[3..].to_ascii_uppercase());
            }
            pieces.insert(at.index(pieces.len() + 1), v1);
        }
        if let Some((form, at)) = t_form {
            let forms = [format!("t={t}"), format!("t=+{t}"), format!("t=0{t}"), format!(" t={t}"), format!("t={t} "), format!("t= {t}")];
            pieces.insert(at.index(pieces.len() + 1), forms[form].clone());
        }
        let header = pieces.join(",");
        if verify(&secret, &header, &body, t, 300).is_ok() {
            prop_assert!(readme_accepts(&secret, &header, &body, t, 300), "accepted {}", header);
        }
    }

    /// Arbitrary text as a header: a typed error or a verdict, never a panic.
    #[test]
    fn arbitrary_headers_do_not_panic(header in any::<String>(), now in any::<i64>(), tol in any::<i64>()) {
        let got = verify(b"secret", &header, b"{}", now, tol);
        prop_assert!(got.is_err(), "{header:?} verified without the secret's signature");
    }
}

/// Found by `any_single_byte_change_fails` (upper-case hex) and
/// `verify_is_never_looser_than_the_readme` (`t=+…`, spaces): headers that the README's
/// checks refuse were accepted.
#[test]
fn headers_the_readme_refuses_are_refused() {
    let body = b"{}";
    let good = sign(b"key", 1000, body);
    let v1 = &good["t=1000,v1=".len()..];
    for header in [
        format!("t=1000,v1={}", v1.to_ascii_uppercase()),
        format!("t=+1000,v1={v1}"),
        format!("t=01000,v1={v1}"),
        format!(" t=1000,v1={v1}"),
        format!("t=1000, v1={v1}"),
    ] {
        assert!(
            !readme_accepts(b"key", &header, body, 1000, 300),
            "{header}"
        );
        let got = verify(b"key", &header, body, 1000, 300);
        assert!(
            matches!(got, Err(SignatureError::Malformed(_))),
            "{header}: {got:?}"
        );
    }
    assert_eq!(verify(b"key", &good, body, 1000, 300), Ok(()));
}
