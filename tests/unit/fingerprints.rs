//! The fingerprint of the spec a key is issued for (`status.keySpecHash`), pinned for every
//! AccessKey in `examples/`. An AccessKey whose fingerprint changes gets a new key, so a change to
//! what goes into it — a new field, another serialization — would re-key every AccessKey of
//! every cluster on upgrade. If this test fails, that is what the change would do: keep new
//! fields out of the fingerprint (as `rotation` and `consumers` are) instead of updating the pins.

use std::path::Path;

use cloudkeys::api::AccessKey;
use cloudkeys::reconcile::access_key::spec_hash;
use serde::Deserialize;

/// Computed when rotation was introduced: the fields that go into the fingerprint and their
/// serialization were unchanged by it, so these are the fingerprints of the release before.
const PINNED: &[(&str, &str)] = &[
    ("exoscale/accesskey-legacy.yaml", "a41660ba37d5048aef26edf4"),
    ("exoscale/accesskey-own-role.yaml", "97886e8a08c7e5e3f650337c"),
    ("exoscale/accesskey-role-id.yaml", "fa187170a6eb8f5c5c40e04e"),
    ("local/accesskey.yaml", "bda47cf9e556eec4af3c0be9"),
    ("outscale/accesskey.yaml", "c1eb02f371c3bde49611de2f"),
    ("yandex/accesskey.yaml", "a7441ba085a54a502d399b96"),
];

/// The AccessKeys of one example file.
fn access_keys(path: &Path) -> Vec<AccessKey> {
    let text = std::fs::read_to_string(path).expect("example readable");
    serde_norway::Deserializer::from_str(&text)
        .filter_map(|doc| serde_norway::Value::deserialize(doc).ok())
        .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some("AccessKey"))
        .map(|v| serde_norway::from_value(v).expect("an example AccessKey parses"))
        .collect()
}

fn examples() -> Vec<(String, AccessKey)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut found = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("examples/ readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let name = path.strip_prefix(&root).expect("under examples/").to_string_lossy().into_owned();
                found.extend(access_keys(&path).into_iter().map(|ak| (name.clone(), ak)));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[test]
fn every_example_keeps_the_fingerprint_its_key_was_issued_for() {
    let examples = examples();
    let computed: Vec<(String, String)> = examples.iter().map(|(file, ak)| (file.clone(), spec_hash(ak))).collect();
    let pinned: Vec<(String, String)> = PINNED.iter().map(|(f, h)| (f.to_string(), h.to_string())).collect();
    assert_eq!(computed, pinned, "fingerprints changed: every AccessKey would be re-keyed on upgrade");
}

#[test]
fn rotation_and_consumers_are_outside_the_fingerprint() {
    for (file, ak) in examples() {
        let mut changed = ak.clone();
        changed.spec.rotation = serde_json::from_value(serde_json::json!({"every": "720h", "gracePeriod": "0s"})).ok();
        changed.spec.consumers = serde_json::from_value(
            serde_json::json!({"discover": true, "targets": [{"kind": "Deployment", "name": "api"}]}),
        )
        .ok();
        assert!(changed.spec.rotation.is_some() && changed.spec.consumers.is_some());
        assert_eq!(spec_hash(&changed), spec_hash(&ak), "{file}: changing rotation or consumers re-keys");
    }
}
