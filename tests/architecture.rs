//! The dependency rules of `src/` (ARCHITECTURE.md, "Dependency rules"), checked on the
//! source text: no circle between top-level modules, no circle between the files of
//! `src/forecast/` or of `src/decide/`, and the pure core never imports the modules around
//! it.
//!
//! What counts as an import: every `use` declaration (grouped `use crate::{a, b::{c, d}}`
//! and `pub use` included) and every path written in the code that starts with `crate::`,
//! `super::`, `self::`, the name of a child module (`config::Config` in `lib.rs`) or, in
//! `main.rs`, `prescale::`. Each resolves to the deepest module file it names.
//! Comments and string literals are skipped, and so is every item under `#[cfg(test)]`
//! (test modules, inline or in their own file): tests may reach anywhere. A folder's
//! `mod.rs` counts like any other file: when it re-exports a child (`pub use child::X`),
//! that child must not import it back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::Path;

/// The pure core, in order: each may use only those before it.
const CORE: &[&str] = &["series", "forecast", "decide", "step"];

/// What the pure core must never import.
const NOT_FROM_CORE: &[&str] = &[
    "discovery",
    "source",
    "act",
    "api",
    "cluster",
    "store",
    "pipeline",
    "config",
    "simulate",
    "demo",
    "models",
    "metrics",
    "clock",
    "telemetry",
    "serve",
    "signals",
    "lib",
    "main",
];

/// Folders whose files must not import each other in a circle.
const NO_CIRCLES_INSIDE: &[&str] = &["forecast", "decide"];

/// One import: a file, where in it, the path as written, and the file it resolves to.
#[derive(Debug, Clone)]
struct Import {
    from: String,
    line: usize,
    path: String,
    to: String,
}

impl Import {
    fn describe(&self) -> String {
        format!("{}:{}: {}", self.from, self.line, self.path)
    }
}

/// The modules of a crate's source tree, by file (relative to `src/`, e.g. `forecast/ets.rs`).
struct Tree {
    /// Module path of each file: `lib.rs` → `[]`, `forecast/mod.rs` → `[forecast]`.
    modules: BTreeMap<String, Vec<String>>,
    /// The file of each module path.
    files: BTreeMap<Vec<String>, String>,
}

impl Tree {
    fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let mut modules = BTreeMap::new();
        let mut files = BTreeMap::new();
        for file in paths {
            let module = module_path(file);
            if file != "main.rs" {
                files.insert(module.clone(), file.to_owned());
            }
            modules.insert(file.to_owned(), module);
        }
        Self { modules, files }
    }

    /// Whether `module` has a child module `name`.
    fn has_child(&self, module: &[String], name: &str) -> bool {
        let mut m = module.to_vec();
        m.push(name.to_owned());
        self.files.contains_key(&m)
    }

    /// The file a path written in `file` leads to; `None` for a path outside the crate.
    fn resolve(&self, file: &str, segments: &[String]) -> Option<String> {
        let here = &self.modules[file];
        let (mut module, rest): (Vec<String>, &[String]) = match segments.first()?.as_str() {
            "crate" if file == "main.rs" => return None,
            "crate" => (Vec::new(), &segments[1..]),
            "prescale" if file == "main.rs" => (Vec::new(), &segments[1..]),
            "self" => (here.clone(), &segments[1..]),
            "super" => {
                let ups = segments.iter().take_while(|s| *s == "super").count();
                let keep = here.len().checked_sub(ups)?;
                (here[..keep].to_vec(), &segments[ups..])
            }
            first if file != "main.rs" && self.has_child(here, first) => (here.clone(), segments),
            _ => return None,
        };
        for seg in rest {
            if !self.has_child(&module, seg) {
                break;
            }
            module.push(seg.clone());
        }
        self.files.get(&module).cloned()
    }

    /// The top-level module a file belongs to: `lib`, `main`, or the first segment.
    fn top(&self, file: &str) -> String {
        match (file, self.modules[file].first()) {
            ("main.rs", _) => "main".to_owned(),
            (_, Some(first)) => first.clone(),
            (_, None) => "lib".to_owned(),
        }
    }
}

fn module_path(file: &str) -> Vec<String> {
    let stem = file.strip_suffix(".rs").unwrap_or(file);
    let mut parts: Vec<String> = stem.split('/').map(str::to_owned).collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

// ---------------------------------------------------------------------------------------
// Reading the source text.
// ---------------------------------------------------------------------------------------

/// The code of a file with comments and the contents of string and char literals replaced
/// by spaces; newlines are kept, so offsets still give line numbers.
fn code_only(src: &str) -> Vec<char> {
    let s: Vec<char> = src.chars().collect();
    let mut out = s.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to.min(s.len())] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < s.len() {
        let next = s.get(i + 1).copied();
        let end = match (s[i], next) {
            ('/', Some('/')) => s[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(s.len(), |n| i + n),
            ('/', Some('*')) => block_comment_end(&s, i),
            ('"', _) => string_end(&s, i + 1),
            ('r', Some('"' | '#')) if i == 0 || !is_ident(s[i - 1]) => {
                raw_string_end(&s, i).unwrap_or(i)
            }
            ('\'', _) => char_end(&s, i).unwrap_or(i),
            _ => i,
        };
        if end == i {
            i += 1;
            continue;
        }
        blank(&mut out, i, end);
        i = end.max(i + 1);
    }
    out
}

fn block_comment_end(s: &[char], start: usize) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i + 1 < s.len() {
        match (s[i], s[i + 1]) {
            ('/', '*') => {
                depth += 1;
                i += 2;
            }
            ('*', '/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    s.len()
}

/// The end (past the closing quote) of a string whose contents start at `i`.
fn string_end(s: &[char], mut i: usize) -> usize {
    while i < s.len() {
        match s[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

/// The end of a raw string `r#"…"#` starting at `start` (the `r`); `None` when it is not
/// one (an identifier such as `r#type`).
fn raw_string_end(s: &[char], start: usize) -> Option<usize> {
    let hashes = s[start + 1..].iter().take_while(|&&c| c == '#').count();
    let open = start + 1 + hashes;
    if s.get(open) != Some(&'"') {
        return None;
    }
    let mut i = open + 1;
    while i < s.len() {
        if s[i] == '"'
            && s[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
        {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(s.len())
}

/// The end of a char literal at `start`; `None` for a lifetime (`'a`, `'_`).
fn char_end(s: &[char], start: usize) -> Option<usize> {
    match (s.get(start + 1), s.get(start + 2)) {
        (Some('\\'), _) => Some(
            s[start + 2..]
                .iter()
                .position(|&c| c == '\'')
                .map_or(s.len(), |n| start + 2 + n + 1),
        ),
        (Some(_), Some('\'')) => Some(start + 3),
        _ => None,
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether the word `word` starts at `i` (not inside a longer identifier).
fn word_at(s: &[char], i: usize, word: &str) -> bool {
    let w: Vec<char> = word.chars().collect();
    s.get(i..i + w.len()) == Some(&w[..])
        && (i == 0 || !is_ident(s[i - 1]))
        && s.get(i + w.len()).is_none_or(|&c| !is_ident(c))
}

fn skip_space(s: &[char], mut i: usize) -> usize {
    while s.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

/// Blanks every item under `#[cfg(test)]`; returns the names of test modules declared
/// as `mod name;` (their files are test-only).
fn drop_test_items(code: &mut [char]) -> Vec<String> {
    let attr: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut test_files = Vec::new();
    let mut i = 0;
    while i + attr.len() <= code.len() {
        if code[i..i + attr.len()] != attr[..] {
            i += 1;
            continue;
        }
        let mut j = skip_space(code, i + attr.len());
        while code.get(j) == Some(&'#') {
            j = skip_space(code, item_end(code, j));
        }
        if let Some(name) = declared_module(code, j) {
            test_files.push(name);
        }
        let end = item_end(code, j);
        for c in &mut code[i..end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = end;
    }
    test_files
}

/// The name in `mod name;` at `i` (after any `pub`), if that is what is there.
fn declared_module(code: &[char], i: usize) -> Option<String> {
    let rest: String = code[i..]
        .iter()
        .take_while(|&&c| c != ';' && c != '{')
        .collect();
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        ["mod", name] | ["pub", "mod", name] => Some((*name).to_owned()),
        _ => None,
    }
}

/// The end of the item (or attribute) starting at `i`: past its `;` or its outer `{…}`
/// or `[…]` for an attribute.
fn item_end(code: &[char], i: usize) -> usize {
    let mut depth = 0i32;
    let mut j = i;
    while j < code.len() {
        match code[j] {
            '(' | '[' => depth += 1,
            ')' => depth -= 1,
            ']' => {
                depth -= 1;
                if depth == 0 && code[i] == '#' {
                    return j + 1;
                }
            }
            ';' if depth == 0 => return j + 1,
            '{' if depth == 0 => return matching_brace(code, j),
            _ => {}
        }
        j += 1;
    }
    code.len()
}

fn matching_brace(code: &[char], open: usize) -> usize {
    let mut depth = 0;
    for (j, &c) in code.iter().enumerate().skip(open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    code.len()
}

/// Expands a use tree (`crate::{a, b::{c, d as e}}`) into its paths.
fn expand_use(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let tree = tree.split(" as ").next().unwrap_or(tree);
        let mut path = prefix.to_vec();
        path.extend(
            tree.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
        if !path.is_empty() {
            out.push(path);
        }
        return;
    };
    let mut path = prefix.to_vec();
    path.extend(
        tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    );
    let close = tree.rfind('}').unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut depth = 0;
    let mut start = 0;
    for (k, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand_use(&inner[start..k], &path, out);
                start = k + 1;
            }
            _ => {}
        }
    }
    if !inner[start..].trim().is_empty() {
        expand_use(&inner[start..], &path, out);
    }
}

/// The `a::b::c` path starting at `i`, and where it ends.
fn path_at(code: &[char], i: usize) -> (Vec<String>, usize) {
    let mut segments = Vec::new();
    let mut j = i;
    loop {
        let start = j;
        while code.get(j).is_some_and(|&c| is_ident(c)) {
            j += 1;
        }
        if j == start {
            break;
        }
        segments.push(code[start..j].iter().collect());
        if code.get(j) == Some(&':') && code.get(j + 1) == Some(&':') {
            j += 2;
        } else {
            break;
        }
    }
    (segments, j)
}

/// The imports of one file, and the test-only child modules it declares.
fn imports_of(tree: &Tree, file: &str, src: &str) -> (Vec<Import>, Vec<String>) {
    let mut code = code_only(src);
    let test_mods = drop_test_items(&mut code);
    let line_of = |i: usize| code[..i].iter().filter(|&&c| c == '\n').count() + 1;
    let mut imports = Vec::new();
    let mut add = |i: usize, path: Vec<String>| {
        if let Some(to) = tree.resolve(file, &path).filter(|to| to != file) {
            imports.push(Import {
                from: file.to_owned(),
                line: line_of(i),
                path: path.join("::"),
                to,
            });
        }
    };
    let mut i = 0;
    while i < code.len() {
        if word_at(&code, i, "use") {
            let end = code[i..]
                .iter()
                .position(|&c| c == ';')
                .map_or(code.len(), |n| i + n);
            let text: String = code[i + 3..end].iter().collect();
            let mut paths = Vec::new();
            expand_use(&text, &[], &mut paths);
            for path in paths {
                add(i, path);
            }
            i = end;
        } else if is_ident(code[i]) && (i == 0 || !(is_ident(code[i - 1]) || code[i - 1] == ':')) {
            let (path, end) = path_at(&code, i);
            if path.len() > 1 {
                add(i, path);
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    (imports, test_mods)
}

/// Every import in the given files (path relative to `src/`, text), test code left out.
fn imports(tree: &Tree, files: &[(String, String)]) -> Vec<Import> {
    let mut test_only = BTreeSet::new();
    let mut all = Vec::new();
    for (file, src) in files {
        let (found, test_mods) = imports_of(tree, file, src);
        for name in test_mods {
            let mut m = tree.modules[file].clone();
            m.push(name);
            test_only.extend(tree.files.get(&m).cloned());
        }
        all.extend(found);
    }
    all.retain(|i| !test_only.contains(&i.from));
    all
}

// ---------------------------------------------------------------------------------------
// The rules.
// ---------------------------------------------------------------------------------------

/// A graph whose edges keep the imports that make them.
type Graph = BTreeMap<String, BTreeMap<String, Vec<Import>>>;

/// Circles in `graph`: for each strongly connected group of more than one node, one
/// shortest circle through its first node, with the imports that make each step.
fn circles(graph: &Graph, what: &str) -> Vec<String> {
    let nodes: BTreeSet<&String> = graph
        .iter()
        .flat_map(|(a, to)| std::iter::once(a).chain(to.keys()))
        .collect();
    let mut reported = BTreeSet::new();
    let mut found = Vec::new();
    for &start in &nodes {
        if reported.contains(start) {
            continue;
        }
        let Some(circle) = shortest_circle(graph, start) else {
            continue;
        };
        let group: BTreeSet<String> = nodes
            .iter()
            .filter(|n| reaches(graph, start, n) && reaches(graph, n, start))
            .map(|n| (*n).clone())
            .collect();
        let mut text = format!(
            "circle between {what}: {} (all of {{{}}} reach each other)",
            circle.join(" → "),
            group.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        for pair in circle.windows(2) {
            for line in by_line(&graph[&pair[0]][&pair[1]]) {
                let _ = write!(text, "\n    {line}");
            }
        }
        reported.extend(group);
        found.push(text);
    }
    found
}

/// The imports, one line of text per source line: `file:line: path (+N more)`.
fn by_line(imports: &[Import]) -> Vec<String> {
    let mut lines: BTreeMap<(&str, usize), Vec<&Import>> = BTreeMap::new();
    for i in imports {
        lines.entry((&i.from, i.line)).or_default().push(i);
    }
    lines
        .values()
        .map(|same| match same.len() {
            1 => same[0].describe(),
            n => format!("{} (+{} more)", same[0].describe(), n - 1),
        })
        .collect()
}

fn reaches(graph: &Graph, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::from([from.to_owned()]);
    let mut queue = VecDeque::from([from.to_owned()]);
    while let Some(n) = queue.pop_front() {
        if n == to {
            return true;
        }
        for next in graph.get(&n).into_iter().flat_map(BTreeMap::keys) {
            if seen.insert(next.clone()) {
                queue.push_back(next.clone());
            }
        }
    }
    false
}

/// The shortest path `start → … → start`, if there is one.
fn shortest_circle(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut came_from: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = VecDeque::from([start.to_owned()]);
    while let Some(n) = queue.pop_front() {
        for next in graph.get(&n).into_iter().flat_map(BTreeMap::keys) {
            if next == start {
                let mut path = vec![start.to_owned(), n.clone()];
                let mut at = &n;
                while let Some(prev) = came_from.get(at) {
                    path.push(prev.clone());
                    at = prev;
                }
                path.reverse();
                return Some(path);
            }
            if !came_from.contains_key(next) {
                came_from.insert(next.clone(), n.clone());
                queue.push_back(next.clone());
            }
        }
    }
    None
}

/// Every rule broken by `imports`, each a message naming the files and the imports.
fn violations(files: &[(String, String)]) -> Vec<String> {
    let tree = Tree::new(files.iter().map(|(p, _)| p.as_str()));
    let imports = imports(&tree, files);
    let mut found = Vec::new();

    let mut modules = Graph::new();
    for i in &imports {
        let (a, b) = (tree.top(&i.from), tree.top(&i.to));
        if a != b {
            let to = modules.entry(a).or_default();
            to.entry(b).or_default().push(i.clone());
        }
    }
    found.extend(circles(&modules, "top-level modules"));

    for folder in NO_CIRCLES_INSIDE {
        let mut graph = Graph::new();
        let inside = |f: &str| f.starts_with(&format!("{folder}/"));
        for i in imports.iter().filter(|i| inside(&i.from) && inside(&i.to)) {
            let to = graph.entry(i.from.clone()).or_default();
            to.entry(i.to.clone()).or_default().push(i.clone());
        }
        found.extend(circles(&graph, &format!("files of src/{folder}/")));
    }

    for i in &imports {
        let (a, b) = (tree.top(&i.from), tree.top(&i.to));
        let Some(rank) = CORE.iter().position(|c| *c == a) else {
            continue;
        };
        let later_core = CORE[rank + 1..].contains(&b.as_str());
        if later_core || NOT_FROM_CORE.contains(&b.as_str()) {
            found.push(format!(
                "forbidden direction: the core module `{a}` imports `{b}`\n    {}",
                i.describe()
            ));
        }
    }
    found
}

/// Every `.rs` file under `dir`, as (path relative to `root`, text).
fn read_tree(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_tree(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let rel = path.strip_prefix(root).expect("under root");
            out.push((rel.to_string_lossy().replace('\\', "/"), text));
        }
    }
}

#[test]
fn dependencies_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_tree(&src, &src, &mut files);
    assert!(
        files.iter().any(|(p, _)| p == "lib.rs") && files.len() > 20,
        "expected the crate's sources under {}",
        src.display()
    );
    let found = violations(&files);
    assert!(
        found.is_empty(),
        "{} dependency rule(s) broken (see ARCHITECTURE.md, \"Dependency rules\"):\n\n{}",
        found.len(),
        found.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------
// The checker itself, on small made-up crates.
// ---------------------------------------------------------------------------------------

fn fake(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, t)| ((*p).to_owned(), (*t).to_owned()))
        .collect()
}

#[test]
fn checker_finds_a_circle_between_modules_through_grouped_uses() {
    let files = fake(&[
        ("lib.rs", "pub mod store;\npub mod act;\npub mod series;\n"),
        ("series.rs", "pub struct Sample;\n"),
        (
            "store.rs",
            "use crate::{series::Sample, act::outbox::{Outbox, Row as R}};\n",
        ),
        ("act/mod.rs", "pub mod outbox;\n"),
        ("act/outbox.rs", "pub fn f(s: &crate::store::Store) {}\n"),
    ]);
    let found = violations(&files);
    assert_eq!(found.len(), 1, "{found:#?}");
    let msg = &found[0];
    for want in [
        "circle between top-level modules: act → store → act",
        "act/outbox.rs:1: crate::store::Store",
        "store.rs:1: crate::act::outbox::Outbox",
    ] {
        assert!(msg.contains(want), "lacks `{want}`: {msg}");
    }
}

#[test]
fn checker_finds_circles_between_files_of_a_core_folder() {
    let files = fake(&[
        ("lib.rs", "pub mod forecast;\n"),
        (
            "forecast/mod.rs",
            "pub mod ets;\nmod stats;\npub use ets::Ets;\n",
        ),
        ("forecast/ets.rs", "use super::stats::q;\npub struct Ets;\n"),
        (
            "forecast/stats.rs",
            "pub fn q() { let _ = super::ets::Ets; }\n",
        ),
    ]);
    let found = violations(&files);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("circle between files of src/forecast/")
            && found[0].contains("forecast/stats.rs:1: super::ets::Ets")
            && found[0].contains("forecast/ets.rs:1: super::stats::q"),
        "{}",
        found[0]
    );
    // A child importing its parent is a circle only if the parent imports it back.
    let files = fake(&[
        ("lib.rs", "pub mod forecast;\n"),
        ("forecast/mod.rs", "pub mod ets;\npub struct Point;\n"),
        ("forecast/ets.rs", "use super::Point;\n"),
    ]);
    assert_eq!(violations(&files), Vec::<String>::new());
}

#[test]
fn checker_finds_forbidden_directions_and_ignores_tests_comments_and_strings() {
    let decide = "pub enum Mode {}\n\
                  #[cfg(test)]\n\
                  mod tests {\n    use crate::config::X;\n}\n\
                  #[cfg(test)]\n\
                  mod more_tests;\n\
                  fn f() -> crate::series::S { todo!() }\n\
                  fn g(c: &crate::config::TargetConfig) {}\n";
    let files = fake(&[
        (
            "lib.rs",
            "pub mod decide;\npub mod config;\npub mod series;\n",
        ),
        (
            "series.rs",
            "// use crate::config::X;\nconst S: &str = \"crate::config::X\";\n",
        ),
        ("config/mod.rs", "pub use crate::decide::Mode;\n"),
        ("decide/mod.rs", decide),
        ("decide/more_tests.rs", "use crate::config::Y;\n"),
    ]);
    let found = violations(&files);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].contains("circle between top-level modules: config → decide → config"),
        "{}",
        found[0]
    );
    assert!(
        found[1].contains("the core module `decide` imports `config`")
            && found[1].contains("decide/mod.rs:9: crate::config::TargetConfig")
            && !found[1].contains("more_tests"),
        "{}",
        found[1]
    );
}

#[test]
fn checker_reads_literals_lifetimes_and_relative_paths() {
    let code: String = code_only("let c = '\"'; fn f<'a>(x: &'a str) {} /* a /* b */ */ r#\"x\"#")
        .into_iter()
        .collect();
    assert_eq!(code.trim_end(), "let c =    ; fn f<'a>(x: &'a str) {}");
    let mut paths = Vec::new();
    expand_use("crate::{a, b::{self, c as d}, e::*}", &[], &mut paths);
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        ["crate::a", "crate::b::self", "crate::b::c", "crate::e::*"]
    );
    let tree = Tree::new(["lib.rs", "main.rs", "a/mod.rs", "a/b.rs", "c.rs"]);
    let path = |s: &str| s.split("::").map(str::to_owned).collect::<Vec<_>>();
    let check = |file: &str, p: &str, want: Option<&str>| {
        assert_eq!(
            tree.resolve(file, &path(p)).as_deref(),
            want,
            "{p} in {file}"
        );
    };
    check("a/b.rs", "super::X", Some("a/mod.rs"));
    check("a/b.rs", "super::super::c::Y", Some("c.rs"));
    check("a/mod.rs", "b::Z", Some("a/b.rs"));
    check("lib.rs", "a::b::Z", Some("a/b.rs"));
    check("main.rs", "prescale::c::run", Some("c.rs"));
    check("c.rs", "std::time::Duration", None);
    check("c.rs", "serde::Serialize", None);
}
