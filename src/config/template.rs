//! `${label}` templates of `[[discovery]]`: a string with placeholders, parsed once and
//! rendered with a series' labels, each value escaped for where it lands ([`Escape`]).
//!
//! `$${` writes a literal `${`. In a PromQL query a placeholder must sit inside a `"…"` or
//! `'…'` string literal, where the value is escaped for that literal; a value placed
//! anywhere else in a query could change the query itself, so it is refused.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// A series' labels, by name.
pub type Labels = BTreeMap<String, String>;

/// How a label value is written into the string that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    /// As it is (names, backends, cron expressions).
    Plain,
    /// For the PromQL string literal around the placeholder: backslash, the quote and
    /// control characters escaped.
    PromQl,
    /// Percent-encoded: every byte but letters, digits, `-`, `.`, `_` and `~`, so a value
    /// stays within one path segment or query value.
    Url,
}

/// What a URL-encoded value keeps as it is (RFC 3986's unreserved characters).
const URL_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A parsed template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Part>,
    escape: Escape,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// A placeholder; in PromQL, the quote of the string literal around it.
    Label {
        name: String,
        quote: Option<char>,
    },
}

/// Where a PromQL scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lexed {
    Code,
    /// In a string literal opened by this quote (`"`, `'` or a backtick).
    Quoted(char),
}

impl Template {
    /// Parses `text`, whose values are escaped as `escape` says. The error says what is
    /// wrong with the placeholder.
    pub(crate) fn parse(text: &str, escape: Escape) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut state = Lexed::Code;
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("$${") {
                literal.push_str("${");
                rest = after;
                continue;
            }
            if let Some(after) = rest.strip_prefix("${") {
                let end = after.find('}').ok_or_else(|| {
                    format!(
                        "`${{` at byte {} is not closed by `}}`",
                        text.len() - rest.len()
                    )
                })?;
                let name = &after[..end];
                check_label_name(name)?;
                let quote = match (escape, state) {
                    (Escape::PromQl, Lexed::Quoted(q)) if q != '`' => Some(q),
                    (Escape::PromQl, _) => {
                        return Err(format!(
                            "`${{{name}}}` is outside a \"…\" or '…' string literal; in a query a label value can only be used quoted, e.g. {{deployment=\"${{{name}}}\"}}"
                        ));
                    }
                    _ => None,
                };
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Label {
                    name: name.to_owned(),
                    quote,
                });
                rest = &after[end + 1..];
                continue;
            }
            literal.push(c);
            rest = &rest[c.len_utf8()..];
            if escape == Escape::PromQl {
                state = match (state, c) {
                    (Lexed::Code, '"' | '\'' | '`') => Lexed::Quoted(c),
                    (Lexed::Quoted(q), '\\') if q != '`' => {
                        // The escaped character is part of the literal, whatever it is.
                        if let Some(next) = rest.chars().next() {
                            literal.push(next);
                            rest = &rest[next.len_utf8()..];
                        }
                        state
                    }
                    (Lexed::Quoted(q), c) if c == q => Lexed::Code,
                    (s, _) => s,
                };
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts, escape })
    }

    /// The labels it uses, in order, with repeats.
    pub(crate) fn labels(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Label { name, .. } => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Whether it has no placeholder.
    pub(crate) fn is_plain(&self) -> bool {
        self.labels().next().is_none()
    }

    /// The text with each placeholder replaced by its label's value in `labels`, escaped;
    /// the error says what of the series cannot be rendered, e.g. "has no label `x`".
    pub(crate) fn render(&self, labels: &Labels) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Label { name, quote } => {
                    let value = labels
                        .get(name)
                        .ok_or_else(|| format!("has no label `{name}`"))?;
                    match (self.escape, quote) {
                        (Escape::PromQl, Some(q)) => promql_escape(&mut out, value, *q),
                        // A dot segment, even percent-encoded, is resolved away by URL
                        // parsing (`..` would climb a level): refused, never sent.
                        (Escape::Url, _) if value == "." || value == ".." => {
                            return Err(format!(
                                "has `{name}` = `{value}`, which cannot stand in a URL (a dot segment)"
                            ));
                        }
                        (Escape::Url, _) => {
                            out.extend(utf8_percent_encode(value, URL_KEEP));
                        }
                        _ => out.push_str(value),
                    }
                }
            }
        }
        Ok(out)
    }
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!(
            "`${{{name}}}` does not name a label; expected `${{name}}` with a Prometheus label name (letters, digits, `_`), or `$${{` for a literal `${{`"
        ))
    }
}

/// Writes `value` as the inside of a PromQL string literal quoted by `quote`.
fn promql_escape(out: &mut String, value: &str, quote: char) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                // PromQL reads `\uXXXX`, as Go does; every control character is in the BMP.
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[track_caller]
    fn check(template: &str, escape: Escape, value: &str, expected: &str) {
        let t = Template::parse(template, escape).expect("a valid template");
        let got = t.render(&labels(&[("x", value)])).expect("renders");
        assert_eq!(got, expected, "{template} with x = {value:?}");
    }

    #[test]
    fn values_are_escaped_for_where_they_land() {
        check("${x}-web", Escape::Plain, "a/b\"", "a/b\"-web");
        check(
            r#"up{d="${x}"}"#,
            Escape::PromQl,
            "plain",
            r#"up{d="plain"}"#,
        );
        check(
            r#"up{d="${x}"}"#,
            Escape::PromQl,
            r#"a"b\c"#,
            r#"up{d="a\"b\\c"}"#,
        );
        check(
            "up{d='${x}'}",
            Escape::PromQl,
            r#"it's "q""#,
            r#"up{d='it\'s "q"'}"#,
        );
        check(
            r#"up{d="${x}"}"#,
            Escape::PromQl,
            "l1\nl2\u{1}",
            r#"up{d="l1\nl2\u0001"}"#,
        );
        check(
            r#"up{a="\"", d="${x}"}"#,
            Escape::PromQl,
            "v",
            r#"up{a="\"", d="v"}"#,
        );
        check(
            "http://h/hook/${x}?n=${x}",
            Escape::Url,
            "a b/c?d&e=ü",
            "http://h/hook/a%20b%2Fc%3Fd%26e%3D%C3%BC?n=a%20b%2Fc%3Fd%26e%3D%C3%BC",
        );
        check("cost $ ${x} $${x}", Escape::Plain, "5", "cost $ 5 ${x}");
    }

    #[test]
    fn bad_placeholders_are_refused_with_the_reason() {
        #[track_caller]
        fn refused(template: &str, escape: Escape, needle: &str) {
            let e = Template::parse(template, escape).expect_err(template);
            assert!(e.contains(needle), "{template}: {e}");
        }
        refused("web-${x", Escape::Plain, "not closed");
        refused("web-${9x}", Escape::Plain, "does not name a label");
        refused("web-${}", Escape::Plain, "does not name a label");
        refused("rate(${x}[2m])", Escape::PromQl, "outside");
        refused(r#"up{d="a"} + ${x}"#, Escape::PromQl, "outside");
        refused("up{d=`${x}`}", Escape::PromQl, "outside");
    }

    #[test]
    fn a_missing_label_is_named() {
        let t = Template::parse("${namespace}-${deployment}", Escape::Plain).expect("valid");
        assert_eq!(t.labels().collect::<Vec<_>>(), ["namespace", "deployment"]);
        assert_eq!(
            t.render(&labels(&[("namespace", "a")])),
            Err("has no label `deployment`".to_owned())
        );
        let url = Template::parse("http://h/${x}/scale", Escape::Url).expect("valid");
        for dots in [".", ".."] {
            let e = url.render(&labels(&[("x", dots)])).expect_err(dots);
            assert!(e.contains("dot segment"), "{e}");
        }
        assert!(url.render(&labels(&[("x", "...")])).is_ok());
        assert!(
            Template::parse("plain", Escape::Plain)
                .expect("valid")
                .is_plain()
        );
    }
}

#[cfg(test)]
mod proptests;
