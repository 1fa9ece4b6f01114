//! The layers of `src/` import one way, so that the cycles cannot come back:
//! `api` ← `providers` ← `core` ← `reconcile` ← `runtime` (and `cli`), with `metrics`, `health`,
//! `telemetry`, `kube_error` and `server` as leaves. And `core` stays pure: no `async`, no
//! kube `Api` or `Client`, nothing that waits.
//!
//! Only the standard library: it reads the sources as text, `crate::` paths and all.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and the modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("api", &[]),
    ("providers", &["api", "metrics"]),
    ("core", &["api", "providers"]),
    ("reconcile", &["api", "providers", "core", "metrics", "health", "kube_error"]),
    ("runtime", &["api", "providers", "core", "reconcile", "metrics", "health", "telemetry", "kube_error", "server"]),
    // `runtime`: the flags of `cloudkeys run` (`run_args`), parsed with every other command.
    ("cli", &["api", "providers", "core", "runtime", "kube_error"]),
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
            wrong.push(format!("{}: module `{module}` has no place in the layers (tests/layers.rs)", file.display()));
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
