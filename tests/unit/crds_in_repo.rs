//! `crds/`, the chart's copy (`files/`, rendered by its templates/crds.yaml) and `cloudkeys crds`
//! never drift apart from the types: each is compared with what the generator makes of them now.

use std::path::Path;
use std::process::Command;

#[test]
fn committed_crds_and_the_charts_copy_are_what_the_types_generate() {
    let generated = cloudkeys::api::crds_yaml().expect("CRDs render");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for path in ["crds/cloudkeys.io_crds.yaml", "charts/cloudkeys/files/cloudkeys.io_crds.yaml"] {
        let committed = std::fs::read_to_string(root.join(path)).unwrap_or_default();
        assert!(
            committed == generated,
            "{path} differs from the CRD types: regenerate it with `make crds` and commit the result"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cloudkeys")).arg("crds").output().expect("cloudkeys runs");
    assert!(out.status.success(), "cloudkeys crds failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).expect("UTF-8 YAML"), generated, "`cloudkeys crds` prints them");
}
