//! Every write the reconciles make to the apiserver, in one place. How each is made is chosen so
//! that no write loses someone else's change and no two writers of this operator fight:
//!
//! | object | what | how | field manager | why so |
//! |---|---|---|---|---|
//! | AccessKey status | everything the operator records (`access_key_status`) | merge patch with `resourceVersion` | `cloudkeys` | a key minted must be recorded over exactly the status it was minted from: a conflict means another reconcile got there first |
//! | AccessKey metadata | the `cloudkeys.io/revoke` finalizer | kube's finalizer helper: JSON patch with a `test` | named by the user agent, `cloudkeys` | added before the first key, removed after the last one is revoked |
//! | Secret | created for the first key (`create_secret`) | create | `cloudkeys` | never takes over a Secret someone else created meanwhile (409) |
//! | Secret | data for a new key (`replace_secret`) | replace with `resourceVersion` | `cloudkeys` | the data becomes exactly what was rendered, and nobody's concurrent change is lost |
//! | Secret | labels and annotations put back (`apply_secret_metadata`) | server-side apply, forced | `cloudkeys` | only the fields the operator owns; others' labels stay |
//! | Secret | owner reference dropped under `Retain` (`release_secret`) | JSON patch with a `test` of `resourceVersion` | `cloudkeys` | the Secret outlives its AccessKey, others' owners stay |
//! | Secret (credentials) | in-use finalizer, `held-by` annotation, credentials label (`hold_credentials`) | merge patch of metadata with `resourceVersion` | `cloudkeys` | several issuers may hold one Secret: read-modify-write, retried on conflict |
//! | Deployment, StatefulSet, DaemonSet | `cloudkeys.io/key-id` on the pod template (`restart_workload`) | merge patch | `cloudkeys` | one annotation; a workload that has it already does not roll again |
//! | Rollout (Argo) | `spec.restartAt` and the Rollout's `cloudkeys.io/key-id` annotation (`restart_workload`) | merge patch | `cloudkeys` | restarts the pods without a new revision or the strategy's steps; the annotation, in the same write, keeps it from restarting twice for one key |
//! | KeyIssuer, ClusterKeyIssuer status | the Ready condition, provider (`issuer_status`) | server-side apply, forced | `cloudkeys` | the issuer controller owns these fields alone |
//! | KeyIssuer, ClusterKeyIssuer status | `orphanedKeys` (`issuer_orphaned_keys`) | server-side apply, forced | `cloudkeys-drift` | drift checks own it; the issuer controller's applies leave it alone |
//! | KeyIssuer, ClusterKeyIssuer status | `retainedKeys`, `retainedKeysSince` (`issuer_retained_keys`) | merge patch, with `resourceVersion` when the record is read first | `cloudkeys-retain` | deletions and drift checks both add to the record: neither may drop the other's entry |
//! | KeyIssuer, ClusterKeyIssuer metadata | in-use finalizer, `held-secret` annotation (`issuer_hold`) | merge patch with `resourceVersion` | `cloudkeys` | never overwrites someone else's finalizers |
//! | Event | what happened to an object | events.k8s.io, kube's Recorder | — | never fails a reconcile |

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::AccessKey;

use super::context::{patch_params, FIELD_MANAGER};

/// The field manager of the issuer status fields drift checks write.
pub const FIELD_MANAGER_DRIFT: &str = "cloudkeys-drift";
/// The field manager of the issuer's record of retained keys.
pub const FIELD_MANAGER_RETAIN: &str = "cloudkeys-retain";

/// The AccessKey's status: `patch` holds the `resourceVersion` it was computed from.
pub async fn access_key_status(api: &Api<AccessKey>, name: &str, patch: &serde_json::Value) -> kube::Result<AccessKey> {
    api.patch_status(name, &patch_params(), &Patch::Merge(patch)).await
}

fn post_params(dry_run: bool) -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.into()), dry_run }
}

pub async fn create_secret(api: &Api<Secret>, secret: &Secret, dry_run: bool) -> kube::Result<Secret> {
    api.create(&post_params(dry_run), secret).await
}

/// `secret` carries the `resourceVersion` it replaces.
pub async fn replace_secret(api: &Api<Secret>, name: &str, secret: &Secret, dry_run: bool) -> kube::Result<Secret> {
    api.replace(name, &post_params(dry_run), secret).await
}

pub async fn apply_secret_metadata(api: &Api<Secret>, name: &str, desired: &Secret) -> kube::Result<Secret> {
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(desired)).await
}

/// `patch` tests the `resourceVersion` it was computed from.
pub async fn release_secret(api: &Api<Secret>, name: &str, patch: json_patch::Patch) -> kube::Result<Secret> {
    api.patch(name, &patch_params(), &Patch::<()>::Json(patch)).await
}

/// `patch` holds the `resourceVersion` it was computed from.
pub async fn hold_credentials(
    api: &Api<Secret>,
    name: &str,
    patch: &serde_json::Value,
) -> kube::Result<kube::core::PartialObjectMeta<Secret>> {
    api.patch_metadata(name, &patch_params(), &Patch::Merge(patch)).await
}

pub async fn restart_workload<K>(api: &Api<K>, name: &str, patch: &serde_json::Value) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &patch_params(), &Patch::Merge(patch)).await
}

/// `patch` is the whole apply configuration: apiVersion, kind and status.
pub async fn issuer_status<K>(api: &Api<K>, name: &str, patch: &serde_json::Value) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await
}

/// `patch` is the whole apply configuration: apiVersion, kind and `status.orphanedKeys`.
pub async fn issuer_orphaned_keys<K>(api: &Api<K>, name: &str, patch: &serde_json::Value) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER_DRIFT).force(), &Patch::Apply(patch)).await
}

pub async fn issuer_retained_keys<K>(api: &Api<K>, name: &str, patch: &serde_json::Value) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = PatchParams { field_manager: Some(FIELD_MANAGER_RETAIN.into()), ..Default::default() };
    api.patch_status(name, &params, &Patch::Merge(patch)).await
}

/// `patch` holds the `resourceVersion` it was computed from.
pub async fn issuer_hold<K>(api: &Api<K>, name: &str, patch: &serde_json::Value) -> kube::Result<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Serialize,
{
    api.patch(name, &patch_params(), &Patch::Merge(patch)).await
}
