//! README's "Try it by hand" runs as written: its shell blocks, in order, in one bash, from the
//! repository's root. Three things differ, none of them a step: the one-time builds are left out
//! (`make control-plane` and `cargo build` have run before any test), the state directory is a
//! fresh one, and the metrics port a free one, so that the run disturbs nothing else on the
//! machine. The blocks start a control plane of their own and stop it again.

use std::path::Path;
use std::process::Command;

const SECTION: &str = "## Try it by hand";

/// The commands of every ```sh block of the section, in order.
fn blocks(readme: &str) -> Vec<String> {
    let start = readme.find(SECTION).expect("README has a \"Try it by hand\" section");
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                found.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    found
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// The section's script: one-time builds dropped, the state directory and metrics port swapped.
fn script(readme: &str, state: &Path, port: u16) -> String {
    let one_time = |line: &&str| !(line.starts_with("make control-plane") || line.starts_with("cargo build"));
    let steps: String =
        blocks(readme).iter().flat_map(|b| b.lines().filter(one_time).map(|l| format!("{l}\n"))).collect();
    assert!(steps.contains("state=/tmp/cloudkeys-try"), "the section names its state directory");
    assert!(steps.contains("127.0.0.1:8080"), "the section names its metrics address");
    let steps = steps
        .replace("state=/tmp/cloudkeys-try", &format!("state={}", state.display()))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    // Should a step fail, the operator and the control plane still go.
    format!(
        "set -euo pipefail\n\
         trap 'kill ${{operator:-}} 2>/dev/null || true; scripts/control-plane.sh stop \"${{state:-}}\" >/dev/null 2>&1 || true' EXIT\n\
         {steps}"
    )
}

#[test]
fn the_readme_try_it_by_hand_steps_run_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let kubectl = Command::new(root.join("scripts/control-plane.sh")).arg("bin-dir").output().expect("bin-dir");
    let bin_dir = String::from_utf8_lossy(&kubectl.stdout).trim().to_string();
    assert!(
        Path::new(&bin_dir).join("kubectl").is_file(),
        "the control plane binaries are missing: build them once with `make control-plane`"
    );
    assert!(root.join("target/debug/cloudkeys").is_file(), "target/debug/cloudkeys is missing: `cargo build`");

    let state = std::env::temp_dir().join(format!("cloudkeys-try-{}", std::process::id()));
    let script = script(&readme, &state, free_port());
    let out = Command::new("bash").arg("-c").arg(&script).current_dir(root).output().expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the steps failed ({}):\n{stdout}\n{stderr}", out.status);

    // What each step promises the reader.
    assert!(stdout.contains("accesskey.cloudkeys.io/demo condition met"), "{stdout}");
    assert!(stdout.contains("ACCESS_KEY_ID\nSECRET_ACCESS_KEY"), "the Secret's keys:\n{stdout}");
    let keys: Vec<&str> = stdout.lines().filter(|l| l.starts_with("{\"live\":")).collect();
    assert_eq!(keys.len(), 2, "two looks at /local/keys:\n{stdout}");
    assert!(!keys[0].starts_with("{\"live\":[]"), "keys live before the delete: {}", keys[0]);
    assert!(keys[1].starts_with("{\"live\":[]"), "every key revoked after the delete: {}", keys[1]);
    assert!(stdout.contains("Revoked"), "the Revoked events:\n{stdout}");
    assert!(!state.exists(), "the last step removes the state directory");
}
