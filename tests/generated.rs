//! The committed CRD copies are exactly what `crane-operator crd` prints (`make crd`
//! regenerates them).

use std::path::Path;

#[test]
fn committed_crds_match_the_rust_types() {
    let want = crane_operator::api::crd_yaml();
    for file in ["manifests/crd.yaml", "charts/crane-operator/files/crd.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let have = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {file}: {e}"));
        assert!(
            have == want,
            "{file} is out of date with the Rust types: run `make crd`"
        );
    }
}
