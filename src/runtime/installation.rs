//! The installation id written into ownership markers: two operators sharing a cloud account
//! (two clusters, or two namespace-scoped installations of one) must tell their keys apart, or
//! one would take the other's keys for orphans.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::{Client, ResourceExt};
use sha2::{Digest, Sha256};

use super::run_args::RunArgs;
use crate::providers::marker::is_installation_id;
use crate::reconcile::error::Error;

/// `--installation-id`, else one derived from where this operator runs.
pub async fn installation_id(client: &Client, args: &RunArgs) -> Result<String, Error> {
    if let Some(id) = args.installation_id.as_deref().filter(|id| !id.is_empty()) {
        return if is_installation_id(id) {
            Ok(id.to_string())
        } else {
            Err(Error::Startup(format!("--installation-id {id:?}: expected 8 lowercase hex digits, e.g. 0a1b2c3d")))
        };
    }
    // The UID of kube-system is the closest thing a cluster has to an id of its own. Without it
    // the id would be the same on every cluster installed alike: no start rather than that.
    let namespaces = Api::<Namespace>::all(client.clone());
    let mut wait = std::time::Duration::from_millis(500);
    let cluster = loop {
        match namespaces.get("kube-system").await {
            Ok(ns) => break ns.uid().unwrap_or_default(),
            Err(e) if wait < std::time::Duration::from_secs(8) => {
                tracing::warn!(error = %e, "cannot read namespace kube-system yet; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                return Err(Error::Startup(format!(
                    "cannot read namespace kube-system to derive the installation id ({e}); grant get on it, or set --installation-id"
                )))
            }
        }
    };
    Ok(derive(&cluster, &args.leader_election_namespace(), args.namespace.as_deref()))
}

/// The first 8 hex digits of a hash of the cluster's id and the namespaces the operator uses.
fn derive(cluster_uid: &str, lease_namespace: &str, watched: Option<&str>) -> String {
    let seed = format!("{cluster_uid}/{lease_namespace}/{}", watched.unwrap_or("*"));
    hex::encode(Sha256::digest(seed.as_bytes()))[..8].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_differ_by_cluster_and_scope() {
        let a = derive("1b2c", "cloudkeys", None);
        assert!(is_installation_id(&a), "{a}");
        assert_eq!(a, derive("1b2c", "cloudkeys", None));
        assert_ne!(a, derive("9f8e", "cloudkeys", None));
        assert_ne!(a, derive("1b2c", "cloudkeys", Some("team-a")));
        assert_ne!(a, derive("1b2c", "ops", None));
    }
}
