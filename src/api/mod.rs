//! The `cloudkeys.io/v1alpha1` API: CRD types only, no I/O.
//!
//! The contract these types implement is `API.md`; field names and defaults are fixed there.

mod access_key;
pub mod duration;
mod issuer;
mod policy;
mod schema;
pub mod validation;

pub use access_key::*;
pub use issuer::*;
pub use policy::*;

use kube::{CustomResourceExt, Resource};

pub const GROUP: &str = "cloudkeys.io";
pub const VERSION: &str = "v1alpha1";
pub const CATEGORY: &str = "cloudkeys";

/// Every CRD this operator serves, in the order `cloudkeys crds` prints them.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![AccessKey::crd(), KeyIssuer::crd(), ClusterKeyIssuer::crd()]
}

/// The CRDs as one multi-document YAML stream: the exact content of `crds/cloudkeys.io_crds.yaml`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// `kind` of a resource type, for messages.
pub fn kind_of<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}
