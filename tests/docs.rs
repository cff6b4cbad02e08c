//! The documentation, held to the code: every ```toml block of README.md and docs/*.md is
//! a configuration that `prescale check-config` accepts (a block marked ```toml fragment
//! must at least be TOML), the README's configuration is the shipped example, and every
//! relative link (and its `#anchor`) points at something that exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// README.md and every docs/*.md.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo("docs"))
        .expect("docs/")
        .map(|e| e.expect("a docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 10, "docs/ has {} Markdown files", docs.len());
    docs.insert(0, repo("README.md"));
    docs
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fenced code block: its info string, its first line's number and its text.
struct Block {
    info: String,
    line: usize,
    text: String,
}

/// The fenced (```) code blocks of a Markdown text.
fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_owned(),
                    line: i + 2,
                    text: String::new(),
                });
            }
            (Some(_), Some(_)) => out.extend(open.take()),
            (Some(block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "a code block is not closed");
    out
}

/// Every ```toml block of the documentation is a configuration that `check-config`
/// accepts, written beside the files the examples name (`webhook-secret`, the signing
/// secret of the shipped example). A ```toml fragment block is parsed as TOML only.
#[test]
fn every_toml_block_passes_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::write(conf.join("webhook-secret"), "a-secret-for-the-docs\n").unwrap();
    let (mut checked, mut fragments, mut failures) = (0, 0, Vec::new());
    for doc in documents() {
        let name = doc.strip_prefix(repo("")).unwrap().display().to_string();
        for block in blocks(&read(&doc)) {
            let mut words = block.info.split_whitespace();
            if words.next() != Some("toml") {
                continue;
            }
            let at = format!("{name}:{}", block.line);
            match words.next() {
                Some("fragment") => {
                    fragments += 1;
                    if let Err(e) = block.text.parse::<toml::Table>() {
                        failures.push(format!("{at}: a fragment that is not TOML: {e}"));
                    }
                }
                Some(other) => failures.push(format!("{at}: unknown info `toml {other}`")),
                None => {
                    checked += 1;
                    let file = conf.join("prescale.toml");
                    std::fs::write(&file, &block.text).unwrap();
                    let out = Command::new(env!("CARGO_BIN_EXE_prescale"))
                        .arg("check-config")
                        .arg(&file)
                        .output()
                        .expect("run prescale check-config");
                    if !out.status.success() {
                        failures.push(format!(
                            "{at}: check-config refused it: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The README's configuration, the schedules, discovery, KEDA, HAProxy, Kubernetes.
    assert!(checked >= 6, "only {checked} complete configurations found");
    assert!(
        fragments <= checked / 3,
        "{fragments} fragments against {checked} complete configurations: keep fragments rare"
    );
}

/// The configuration the README shows under "A minimal configuration" is the shipped
/// example, key for key (comments aside).
#[test]
fn the_readme_configuration_is_the_shipped_example() {
    let readme = read(&repo("README.md"));
    let section = &readme[readme
        .find("### A minimal configuration")
        .expect("README.md has a section `A minimal configuration`")..];
    let block = blocks(section)
        .into_iter()
        .find(|b| b.info == "toml")
        .expect("a ```toml block in it");
    let shown: toml::Table = block.text.parse().expect("TOML");
    let shipped: toml::Table = read(&repo("config/prescale.toml"))
        .parse()
        .expect("config/prescale.toml is TOML");
    assert_eq!(shown, shipped);
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces as `-`, and a
/// `-N` suffix for the Nth repeat.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let Some(heading) = (!in_code)
            .then(|| line.trim_start_matches('#'))
            .filter(|rest| line.starts_with('#') && rest.starts_with(' '))
        else {
            continue;
        };
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while seen.contains(&unique) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
        seen.insert(unique);
    }
    seen
}

/// The targets of the Markdown links `[text](target)` and `![alt](target)` outside code.
fn links(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for (i, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        // Inline code spans hold no links.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(k, _)| k % 2 == 0)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let end = tail.find(')').unwrap_or(tail.len());
            out.push((i + 1, tail[..end].trim().to_owned()));
            rest = &tail[end..];
        }
    }
    out
}

/// Every relative link of README.md and docs/*.md points at a file that exists, and its
/// `#anchor`, in a Markdown file, at one of that file's headings.
#[test]
fn every_relative_link_points_at_something_that_exists() {
    let mut failures = Vec::new();
    let mut count = 0;
    for doc in documents() {
        let text = read(&doc);
        let name = doc.strip_prefix(repo("")).unwrap().display().to_string();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            count += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(path)
            };
            if !file.exists() {
                failures.push(format!("{name}:{line}: `{target}`: no such file"));
                continue;
            }
            let is_markdown = file.extension().is_some_and(|e| e == "md");
            if !anchor.is_empty() && is_markdown && !anchors(&read(&file)).contains(anchor) {
                failures.push(format!("{name}:{line}: `{target}`: no such heading"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(count >= 40, "only {count} relative links found");
}

/// The anchors are GitHub's: checked on headings this documentation uses.
#[test]
fn anchors_follow_github() {
    let got = anchors(
        "# Cost against risk: the `risk` dial and `prescale tune`\n## Run it for real\n\
         ```\n# not a heading\n```\n## Run it for real\n## Reloading the configuration (SIGHUP)\n",
    );
    let want: BTreeSet<String> = [
        "cost-against-risk-the-risk-dial-and-prescale-tune",
        "run-it-for-real",
        "run-it-for-real-1",
        "reloading-the-configuration-sighup",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(got, want);
}
