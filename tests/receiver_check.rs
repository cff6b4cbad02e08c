//! The README's receiver checks, run as written: the shell one (with `openssl`) and the
//! Python one, against headers prescale signs — with one secret, and with two while
//! rotating.

mod common;

use std::path::Path;
use std::process::Command;

use prescale::act::webhook::sign_all;

/// The code block that follows `<!-- receiver-check:{lang}` in the README.
fn snippet(lang: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let marker = format!("<!-- receiver-check:{lang}");
    let after = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README.md has no `{marker}` block"))..];
    let start = after.find("```").expect("a code block");
    let body = &after[start..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    body[..body.find("```").expect("closing fence")].to_owned()
}

/// (header, body, secret) → does each snippet say valid?
fn cases(now: i64) -> Vec<(String, Vec<u8>, &'static str, bool)> {
    let body = br#"{"schema_version":1,"kind":"scale","target":"web","to":7}"#.to_vec();
    let one = sign_all(&[b"new-secret"], now, &body);
    let two = sign_all(&[b"new-secret", b"old-secret"], now, &body);
    let old = sign_all(&[b"new-secret"], now - 3_600, &body);
    let mut tampered = body.clone();
    tampered[30] ^= 1;
    vec![
        (one.clone(), body.clone(), "new-secret", true),
        (one.clone(), body.clone(), "old-secret", false),
        (two.clone(), body.clone(), "new-secret", true),
        (two.clone(), body.clone(), "old-secret", true),
        (two.clone(), body.clone(), "wrong", false),
        (two, tampered, "new-secret", false),
        (old, body.clone(), "new-secret", false),
        ("v1=abc".to_owned(), body, "new-secret", false),
    ]
}

#[test]
fn shell_check_verifies_what_prescale_signs() {
    let script = snippet("sh");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("verify.sh");
    std::fs::write(&file, &script).unwrap();
    for (i, (header, body, secret, want)) in cases(common::now_secs()).into_iter().enumerate() {
        let body_file = dir.path().join(format!("body{i}.json"));
        std::fs::write(&body_file, &body).unwrap();
        let out = Command::new("sh")
            .arg(&file)
            .arg(&header)
            .arg(&body_file)
            .env("SECRET", secret)
            .output()
            .expect("run sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("not found"),
            "a tool is missing (openssl is in Debian package openssl): {stderr}"
        );
        assert_eq!(
            out.status.success() && stdout.trim() == "valid",
            want,
            "case {i}: header {header}, secret {secret}: {stdout}{stderr}"
        );
    }
}

#[test]
fn python_check_verifies_what_prescale_signs() {
    let code = snippet("python")
        + "\nimport sys\nprint(verify(sys.argv[1].encode(), sys.argv[2], open(sys.argv[3], 'rb').read()))\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("verify.py");
    std::fs::write(&file, code).unwrap();
    for (i, (header, body, secret, want)) in cases(common::now_secs()).into_iter().enumerate() {
        let body_file = dir.path().join(format!("body{i}.json"));
        std::fs::write(&body_file, &body).unwrap();
        let out = Command::new("python3")
            .arg(&file)
            .arg(secret)
            .arg(&header)
            .arg(&body_file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); install Debian package python3"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "case {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.trim(),
            if want { "True" } else { "False" },
            "case {i}: header {header}, secret {secret}"
        );
    }
}
