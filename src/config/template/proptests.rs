//! Property tests of template rendering: any label value placed in a PromQL string
//! literal reads back as itself by PromQL's rules (and ends no literal early), and any
//! value in a URL decodes back to itself and stays within its segment.

use proptest::prelude::*;

use super::*;
use crate::proptest_support::config;

/// Reads the PromQL string literal at the start of `s` (opened by `quote`) as PromQL's
/// lexer does (Go's escapes: `\\`, `\<quote>`, `\n`, `\r`, `\t`, `\uXXXX`; no raw
/// newline): its value and what follows it. `None` when it is not a valid literal.
fn read_literal(s: &str, quote: char) -> Option<(String, &str)> {
    let mut chars = s.char_indices();
    if chars.next()?.1 != quote {
        return None;
    }
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Some((out, &s[i + c.len_utf8()..])),
            '\n' => return None,
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                '\\' => out.push('\\'),
                'u' => {
                    let hex: String = (0..4)
                        .filter_map(|_| chars.next().map(|(_, h)| h))
                        .collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                e if e == quote => out.push(e),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    None
}

/// Label values as they come: anything, with the troublesome characters often.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => any::<String>(),
        3 => proptest::collection::vec(
            prop_oneof![
                Just('"'), Just('\''), Just('\\'), Just('\n'), Just('\r'), Just('\t'),
                Just('\u{0}'), Just('\u{7f}'), Just('\u{85}'), Just('`'), Just('}'),
                Just('$'), Just('{'), Just('/'), Just('?'), Just('#'), Just('%'), Just('&'),
                Just('é'), Just('🚀'), proptest::char::range('a', 'z'),
            ],
            0..24,
        )
        .prop_map(|cs| cs.into_iter().collect()),
    ]
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn a_value_in_a_promql_literal_reads_back_as_itself(v in value(), single in any::<bool>()) {
        let quote = if single { '\'' } else { '"' };
        let template = format!("up{{d={quote}${{x}}{quote}, e=\"k\"}}");
        let t = Template::parse(&template, Escape::PromQl).expect("a valid template");
        let labels = Labels::from([("x".to_owned(), v.clone())]);
        let rendered = t.render(&labels).expect("renders");
        let literal = rendered.strip_prefix("up{d=").expect("the prefix is kept");
        let (read, rest) = read_literal(literal, quote).expect("a valid literal");
        prop_assert_eq!(read, v);
        prop_assert_eq!(rest, ", e=\"k\"}", "the literal ends where it should");
    }

    #[test]
    fn a_value_in_a_url_decodes_back_and_stays_in_its_segment(v in value()) {
        let t = Template::parse("http://h/hook/${x}/scale", Escape::Url).expect("valid");
        let rendered = t.render(&Labels::from([("x".to_owned(), v.clone())]));
        // A dot segment is refused (URL parsing would resolve it away).
        if v == "." || v == ".." {
            prop_assert!(rendered.is_err());
            return Ok(());
        }
        let rendered = rendered.expect("renders");
        let segment = rendered
            .strip_prefix("http://h/hook/")
            .and_then(|s| s.strip_suffix("/scale"))
            .expect("prefix and suffix kept");
        prop_assert!(
            segment.chars().all(|c| c.is_ascii_alphanumeric() || "-._~%".contains(c)),
            "{}", segment
        );
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8();
        prop_assert_eq!(decoded.expect("UTF-8"), v.as_str());
        let url = url::Url::parse(&rendered).expect("a URL");
        prop_assert_eq!(url.path_segments().map(|s| s.count()), Some(3));
    }

    #[test]
    fn parsing_any_text_never_panics(text in any::<String>(), escape in 0..3u8) {
        let escape = [Escape::Plain, Escape::PromQl, Escape::Url][usize::from(escape)];
        if let Ok(t) = Template::parse(&text, escape) {
            let labels: Labels = t.labels().map(|l| (l.to_owned(), "v".to_owned())).collect();
            prop_assert!(t.render(&labels).is_ok());
        }
    }
}
