//! The watch-fed caches every reconcile reads instead of asking the apiserver.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::Store;

use crate::api::{AccessKey, ClusterKeyIssuer, KeyIssuer, Rollout};

use super::cached_secret::CachedSecret;

/// The watch-fed caches every controller reads.
#[derive(Clone)]
pub struct Caches {
    pub access_keys: Store<AccessKey>,
    /// The Secrets this operator manages (labelled `app.kubernetes.io/managed-by: cloudkeys`),
    /// without their managedFields.
    pub secrets: Store<CachedSecret>,
    /// Credentials Secrets held by issuers (labelled `cloudkeys.io/credentials`), with their data.
    pub credentials: Store<Secret>,
    pub key_issuers: Store<KeyIssuer>,
    pub cluster_issuers: Store<ClusterKeyIssuer>,
    /// The workloads AccessKeys may name as consumers, without their managedFields.
    pub workloads: Workloads,
}

#[derive(Clone)]
pub struct Workloads {
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub daemon_sets: Store<DaemonSet>,
    /// Argo Rollouts: filled only once their CRD is installed and readable (see
    /// `runtime::rollouts`); empty until then.
    pub rollouts: Store<Rollout>,
}

impl Default for Workloads {
    fn default() -> Self {
        Self {
            deployments: kube::runtime::reflector::store().0,
            stateful_sets: kube::runtime::reflector::store().0,
            daemon_sets: kube::runtime::reflector::store().0,
            rollouts: kube::runtime::reflector::store().0,
        }
    }
}
