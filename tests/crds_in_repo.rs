//! `crds/` and `cloudkeys crds` never drift apart.

use std::process::Command;

#[test]
fn crds_directory_matches_what_cloudkeys_crds_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudkeys")).arg("crds").output().expect("cloudkeys runs");
    assert!(out.status.success(), "cloudkeys crds failed: {}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).expect("UTF-8 YAML");
    assert_eq!(printed, cloudkeys::api::crds_yaml().expect("CRDs render"));

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/cloudkeys.io_crds.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == printed,
        "{} differs from `cloudkeys crds`: regenerate it with `make crds` \
         (cargo run -- crds > crds/cloudkeys.io_crds.yaml) and commit the result",
        path.display()
    );
}
