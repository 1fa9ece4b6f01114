//! The layers of `src/` import one way, so that the cycles cannot come back:
//! `api` ← `providers` ← `core` ← `reconcile` ← `runtime` (and `cli`), with `metrics`, `health`,
//! `telemetry`, `kube_error` and `server` as leaves. And `core` stays pure: no `async`, no
//! kube `Api` or `Client`, nothing that waits.
//!
//! Within a layer, no two modules import each other, directly or round a circle: each module's
//! imports (outside its tests) form a graph without cycles.
//!
//! Only the standard library: it reads the sources as text, `crate::` and `super::` paths and
//! all.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and the modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("api", &[]),
    ("providers", &["api", "metrics"]),
    ("core", &["api", "providers"]),
    ("reconcile", &["api", "providers", "core", "metrics", "health", "kube_error"]),
    // `runtime` holds the binaries' command line, `run` beside the commands of `cli`.
    (
        "runtime",
        &["api", "providers", "core", "reconcile", "cli", "metrics", "health", "telemetry", "kube_error", "server"],
    ),
    // `cli` reads and writes objects as a person does; it judges them with `core`'s decisions.
    ("cli", &["api", "core", "kube_error"]),
    ("metrics", &["api"]),
    ("health", &[]),
    ("telemetry", &[]),
    ("kube_error", &[]),
    ("server", &["health", "metrics", "providers"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> =
        fs::read_dir(dir).expect("src/ is readable").filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None`: the crate root and the binaries).
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "bin")).then(|| name.to_string())
}

/// The top-level modules a source text names through `crate::`, comments left out.
fn used_modules(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c}`: the first segment of each path in the group.
                let inner = group.split('}').next().unwrap_or_default();
                for path in inner.split(',') {
                    let first: String = path.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !first.is_empty() {
                        used.insert(first);
                    }
                }
            } else {
                let first: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !first.is_empty() {
                    used.insert(first);
                }
            }
        }
    }
    used
}

fn files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files
}

#[test]
fn every_layer_imports_only_the_layers_below_it_and_the_leaves() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for file in files() {
        let Some(module) = module_of(&file) else { continue };
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` has no place in the layers (tests/unit/layers.rs)",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(&file).expect("readable");
        for used in used_modules(&text) {
            if used != module && !may.contains(&used.as_str()) {
                wrong.push(format!("{}: `{module}` uses `{used}`", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn core_decides_and_never_waits() {
    let forbidden = ["async ", ".await", "kube::Client", "kube::api::", "Api<", "Context"];
    let mut wrong = Vec::new();
    for file in files().into_iter().filter(|f| module_of(f).as_deref() == Some("core")) {
        let text = fs::read_to_string(&file).expect("readable");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in forbidden.iter().filter(|w| code.contains(**w)) {
                wrong.push(format!("{}:{}: `{word}`", file.display(), n + 1));
            }
        }
    }
    assert!(wrong.is_empty(), "core/ must stay pure:\n{}", wrong.join("\n"));
}

#[test]
fn the_reader_finds_what_a_file_uses() {
    let text = "use crate::api::X;\nuse crate::{core::decide, metrics};\n// crate::cli in a comment\nlet m = crate::metrics::global();";
    let used: Vec<String> = used_modules(text).into_iter().collect();
    assert_eq!(used, ["api", "core", "metrics"]);
}

/// A file's module path (`reconcile::context`), `None` for the crate root and the binaries.
fn module_path(file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src()).ok()?.with_extension("");
    let mut parts: Vec<String> = rel.components().filter_map(|c| c.as_os_str().to_str().map(str::to_string)).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    (!matches!(parts.first().map(String::as_str), None | Some("lib" | "main" | "bin"))).then_some(parts)
}

/// The code of a file before its tests.
fn code(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |at| &text[..at])
}

/// Every path a text names after `crate::` or a run of `super::`, resolved against `module`
/// into module segments (not yet matched to a module).
fn named_paths(module: &[String], text: &str) -> Vec<Vec<String>> {
    let segment = |s: &str| -> Vec<String> {
        s.split("::")
            .map(|p| p.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
            .take_while(|p| !p.is_empty())
            .collect()
    };
    let mut paths = Vec::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                for path in group.split('}').next().unwrap_or_default().split(',') {
                    paths.push(segment(path.trim()));
                }
            } else {
                paths.push(segment(after));
            }
            rest = after;
        }
        let mut rest = line;
        while let Some(at) = rest.find("super::") {
            // A run of `super::`: each climbs one module from this file's.
            let preceded =
                rest[..at].ends_with("::") || rest[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_');
            let mut after = &rest[at..];
            let mut ups = 0;
            while let Some(next) = after.strip_prefix("super::") {
                ups += 1;
                after = next;
            }
            if !preceded && ups <= module.len() {
                let mut path = module[..module.len() - ups].to_vec();
                if let Some(group) = after.strip_prefix('{') {
                    for p in group.split('}').next().unwrap_or_default().split(',') {
                        let mut each = path.clone();
                        each.extend(segment(p.trim()));
                        paths.push(each);
                    }
                } else {
                    path.extend(segment(after));
                    paths.push(path);
                }
            }
            rest = after;
        }
    }
    paths
}

#[test]
fn no_two_modules_import_each_other_round_a_circle() {
    let mut texts: BTreeMap<Vec<String>, String> = BTreeMap::new();
    for file in files() {
        if let Some(module) = module_path(&file) {
            texts.insert(module, fs::read_to_string(&file).expect("readable"));
        }
    }
    let modules: BTreeSet<Vec<String>> = texts.keys().cloned().collect();
    let mut graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, text) in &texts {
        let edges = graph.entry(module.clone()).or_default();
        for path in named_paths(module, code(text)) {
            // The longest prefix that is a module; a module's own parents are not imports.
            let Some(target) = (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p)) else {
                continue;
            };
            if target != *module && !module.starts_with(&target) {
                edges.insert(target);
            }
        }
    }
    // Depth first: a module met again while still on the path closes a circle.
    fn visit(
        m: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
        circles: &mut Vec<String>,
    ) {
        if let Some(at) = path.iter().position(|p| p == m) {
            let circle: Vec<String> = path[at..].iter().chain([m]).map(|p| p.join("::")).collect();
            circles.push(circle.join(" -> "));
            return;
        }
        if !done.insert(m.clone()) {
            return;
        }
        path.push(m.clone());
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, path, done, circles);
        }
        path.pop();
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(circles.is_empty(), "modules importing each other:\n{}", circles.join("\n"));
}

#[test]
fn the_reader_resolves_super_paths_against_the_module() {
    let module: Vec<String> = ["reconcile", "access_key", "act"].iter().map(|s| s.to_string()).collect();
    let paths = named_paths(
        &module,
        "use super::super::context::{lock, Caches};\nuse super::{cluster, cleanup};\nlet x = crate::api::X;",
    );
    let joined: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        ["reconcile::context", "reconcile::access_key::cluster", "reconcile::access_key::cleanup", "api::X"]
    );
}

#[test]
fn every_apiserver_write_of_the_reconciles_is_in_writes_rs() {
    let writes = [
        ".patch(",
        ".patch_status(",
        ".patch_metadata(",
        ".replace_status(",
        "api.create(",
        "api.replace(",
        "api.delete(",
    ];
    let mut wrong = Vec::new();
    for file in files() {
        let module = module_path(&file).unwrap_or_default();
        if module.first().map(String::as_str) != Some("reconcile") || module.last().is_some_and(|m| m == "writes") {
            continue;
        }
        let text = fs::read_to_string(&file).expect("readable");
        for (n, line) in code(&text).lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for call in writes.iter().filter(|w| code.contains(**w)) {
                wrong.push(format!("{}:{}: `{call}`", file.display(), n + 1));
            }
        }
    }
    assert!(wrong.is_empty(), "apiserver writes outside src/reconcile/writes.rs:\n{}", wrong.join("\n"));
}
