//! The user-facing documentation (README.md and docs/) stays whole: every relative link points at
//! a file of the repository (and, with `#anchor`, at one of its headings), and nothing in the
//! repository sends a reader to a file users do not have.
//!
//! Only the standard library: `rustc --edition 2021 --test tests/unit/docs.rs` runs it without cargo
//! (with `CARGO_MANIFEST_DIR` set to the repository's root).

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every Markdown file under docs/.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs = Vec::new();
    walk(&root().join("docs"), &mut docs);
    files.extend(docs.into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")));
    files
}

/// Every file under `dir`, recursively (none if it does not exist).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The text outside fenced code blocks (links inside them are examples, not links).
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The targets of inline links and images: what follows `](` up to the closing `)`.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    for (n, line) in prose(text).lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("").to_string();
            targets.push((n + 1, target));
            rest = &after[end..];
        }
    }
    targets
}

/// GitHub's anchor for a heading: lowercase, punctuation other than `-`, `_` and spaces dropped,
/// spaces turned into `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings, with GitHub's `-1`, `-2` … for repeats.
fn anchors(text: &str) -> Vec<String> {
    let mut bases: Vec<String> = Vec::new();
    let mut anchors = Vec::new();
    for line in prose(text).lines() {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let repeats = bases.iter().filter(|b| **b == base).count();
        anchors.push(if repeats == 0 { base.clone() } else { format!("{base}-{repeats}") });
        bases.push(base);
    }
    anchors
}

/// What is wrong with the relative links of one Markdown file.
fn broken_links(file: &Path) -> Vec<String> {
    let text = fs::read_to_string(file).expect("readable Markdown");
    let dir = file.parent().expect("a file has a directory");
    let mut broken = Vec::new();
    for (line, target) in link_targets(&text) {
        if target.is_empty()
            || target.starts_with("http://")
            || target.starts_with("https://")
            || target.starts_with("mailto:")
        {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target.as_str(), None),
        };
        let here = format!("{}:{line}: {target}", file.strip_prefix(root()).unwrap_or(file).display());
        let resolved = if path.is_empty() { file.to_path_buf() } else { dir.join(path) };
        if !resolved.exists() {
            broken.push(format!("{here}: no such file or directory"));
            continue;
        }
        let repo = fs::canonicalize(root()).expect("the repository's root exists");
        if !fs::canonicalize(&resolved).is_ok_and(|p| p.starts_with(&repo)) {
            broken.push(format!("{here}: outside the repository"));
            continue;
        }
        if let Some(anchor) = anchor {
            if resolved.extension().is_some_and(|e| e == "md") {
                let target_text = fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&target_text).iter().any(|a| a == anchor) {
                    broken.push(format!("{here}: no heading with this anchor"));
                }
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_docs_points_at_a_file_and_heading_that_exist() {
    let files = markdown_files();
    assert!(files.len() > 1, "README.md and docs/*.md: {files:?}");
    let broken: Vec<String> = files.iter().flat_map(|f| broken_links(f)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn no_file_points_at_documents_users_do_not_have() {
    // Built from parts, so that this file does not name them itself.
    let forbidden = [format!("API{}md", '.'), format!("..{}shared", '/'), format!("shared{}providers", '/')];
    let mut files = vec![root().join("README.md")];
    for dir in ["docs", "src", "tests", "charts", "examples", "scripts"] {
        walk(&root().join(dir), &mut files);
    }
    let mut found = Vec::new();
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else { continue }; // binary files
        for (n, line) in text.lines().enumerate() {
            for word in &forbidden {
                if line.contains(word.as_str()) {
                    let shown = file.strip_prefix(root()).unwrap_or(file).display();
                    found.push(format!("{shown}:{}: {word}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(files.len() > 10, "walked the repository: {} files", files.len());
    assert!(found.is_empty(), "references to files the repository does not have:\n{}", found.join("\n"));
}

/// The Markdown file names a line mentions (`docs/api.md`, `../README.md`, `outscale.md`), without
/// URLs.
fn markdown_mentions(line: &str) -> Vec<String> {
    let is_path = |c: char| c.is_ascii_alphanumeric() || "_./-".contains(c);
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = line[from..].find(".md") {
        let end = from + at + 3;
        from = end;
        if line[end..].chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `.mdx`, `.md_…`: not a Markdown file name
        }
        let start = line[..end - 3].rfind(|c: char| !is_path(c)).map_or(0, |i| i + 1);
        let name = &line[start..end];
        let url = line[..start].ends_with(':') || name.starts_with('/');
        if name.len() > 3 && !url {
            found.push(name.to_string());
        }
    }
    found
}

#[test]
fn every_markdown_file_named_anywhere_exists() {
    let mut files = vec![root().join("README.md")];
    for dir in ["docs", "src", "tests", "charts", "examples", "scripts"] {
        walk(&root().join(dir), &mut files);
    }
    let markdown: Vec<&PathBuf> = files.iter().filter(|p| p.extension().is_some_and(|e| e == "md")).collect();
    let mut missing = Vec::new();
    // This file names made-up ones in its own tests.
    for file in files.iter().filter(|f| !f.ends_with("tests/unit/docs.rs")) {
        let Ok(text) = fs::read_to_string(file) else { continue }; // binary files
        let dir = file.parent().expect("a file has a directory");
        for (n, line) in text.lines().enumerate() {
            for name in markdown_mentions(line) {
                let exists = root().join(&name).exists()
                    || dir.join(&name).exists()
                    || (!name.contains('/') && markdown.iter().any(|p| p.file_name().is_some_and(|f| *f == *name)));
                if !exists {
                    let shown = file.strip_prefix(root()).unwrap_or(file).display();
                    missing.push(format!("{shown}:{}: {name}", n + 1));
                }
            }
        }
    }
    assert!(missing.is_empty(), "Markdown files named but not in the repository:\n{}", missing.join("\n"));
}

#[test]
fn the_slug_rule_is_githubs() {
    assert_eq!(slug("RBAC: what the operator may do, and why"), "rbac-what-the-operator-may-do-and-why");
    assert_eq!(slug("The API (`cloudkeys.io/v1alpha1`)"), "the-api-cloudkeysiov1alpha1");
    assert_eq!(slug("Annotations, labels and finalizers"), "annotations-labels-and-finalizers");
    assert_eq!(anchors("# A\n## A\n```\n# not a heading\n```\n### A\n"), ["a", "a-1", "a-2"]);
    assert_eq!(
        markdown_mentions("see docs/api.md, (x.md §3) and https://e.com/y.md or a.mdx"),
        ["docs/api.md", "x.md"]
    );
}
