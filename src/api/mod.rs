//! The `cloudkeys.io/v1alpha1` API: CRD types only, no I/O.
//!
//! Users read these types as `docs/api.md` documents them; field names and defaults are fixed.

mod access_key;
pub mod conditions;
mod decoded;
pub mod duration;
mod issuer;
mod policy;
mod recorded;
mod rollout;
mod schema;
pub mod validation;

pub use access_key::*;
pub use decoded::Decoded;
pub use duration::ApiDuration;
pub use issuer::*;
pub use policy::*;
pub use recorded::Recorded;
pub use rollout::{Rollout, RolloutSpec, RolloutStatus, ROLLOUT_GROUP, ROLLOUT_VERSION};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::{CustomResourceExt, Resource};

pub const GROUP: &str = "cloudkeys.io";
pub const VERSION: &str = "v1alpha1";
pub const CATEGORY: &str = "cloudkeys";

/// On each CRD: the cloudkeys version that generated it.
pub const CRD_VERSION_ANNOTATION: &str = "cloudkeys.io/version";
/// On each CRD: a digest of its spec, which `cloudkeys check` compares with its own. (The
/// apiserver keeps annotations verbatim, where an older one drops schema fields it does not
/// know, so the live spec itself cannot be compared.)
pub const CRD_DIGEST_ANNOTATION: &str = "cloudkeys.io/schema-digest";

/// Every CRD this operator serves, in the order `cloudkeys crds` prints them, annotated with
/// this version and the digest of its spec.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    let mut crds = vec![AccessKey::crd(), KeyIssuer::crd(), ClusterKeyIssuer::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
                bound_integers(schema);
            }
        }
        let digest = crd_digest(&crd.spec);
        let annotations = crd.metadata.annotations.get_or_insert_with(Default::default);
        annotations.insert(CRD_VERSION_ANNOTATION.to_string(), env!("CARGO_PKG_VERSION").to_string());
        annotations.insert(CRD_DIGEST_ANNOTATION.to_string(), digest);
    }
    crds
}

/// Every integer of the schema in a format Kubernetes knows (`int32`, `int64`), within what its
/// Rust type holds: the apiserver enforces `minimum` and `maximum` but not a format it does not
/// know (schemars writes `uint32`), and one stored object past the type's range would fail the
/// typed list of its kind for every namespace. A tighter bound set on a field stays.
fn bound_integers(schema: &mut JSONSchemaProps) {
    let known = match schema.format.as_deref() {
        Some("uint8") => Some(("int32", f64::from(u8::MAX))),
        Some("uint16") => Some(("int32", f64::from(u16::MAX))),
        Some("uint32") => Some(("int64", f64::from(u32::MAX))),
        Some("uint64") => Some(("int64", i64::MAX as f64)),
        _ => None,
    };
    if let Some((format, max)) = known {
        schema.format = Some(format.to_string());
        schema.minimum = Some(schema.minimum.map_or(0.0, |m| m.max(0.0)));
        schema.maximum = Some(schema.maximum.map_or(max, |m| m.min(max)));
    }
    let nested = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.iter_mut().flat_map(|items| match items {
            JSONSchemaPropsOrArray::Schema(s) => std::slice::from_mut(s.as_mut()),
            JSONSchemaPropsOrArray::Schemas(s) => s.as_mut_slice(),
        }))
        .chain(schema.additional_properties.iter_mut().filter_map(|a| match a {
            JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
            JSONSchemaPropsOrBool::Bool(_) => None,
        }))
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten());
    for s in nested {
        bound_integers(s);
    }
}

/// The first 16 hex digits of the SHA-256 of a CRD spec's JSON (field order is fixed by the
/// types, map order by `BTreeMap`).
pub fn crd_digest(
    spec: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionSpec,
) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&json)[..8])
}

/// The CRDs as one multi-document YAML stream: the exact content of `crds/cloudkeys.io_crds.yaml`.
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}

/// `kind` of a resource type, for messages.
pub fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}

/// The Lease replicas of the operator elect their leader with, in the operator's namespace
/// (`cloudkeys check` reads it too).
pub const LEASE_NAME: &str = "cloudkeys-leader";
