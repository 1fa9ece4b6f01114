//! "Usage keeps the used alive": an issuer, and the Secret holding its credentials, carry the
//! finalizer `cloudkeys.io/in-use` while any AccessKey still needs them to revoke a key, so that
//! deleting a namespace (or an issuer by mistake) can never strand live keys at the provider.
//!
//! Who uses an issuer is decided from the AccessKey cache alone ([`users`]); the patches that
//! add and remove the finalizer are conditional on the observed resourceVersion, so a stale
//! cache costs a retry, never a finalizer dropped from an issuer someone just started to use.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use crate::api::{AccessKey, ClusterKeyIssuer, IssuerKind, IssuerRef, KeyIssuer};

use super::context::{Caches, Context};
use super::error::Error;

pub const FINALIZER: &str = "cloudkeys.io/in-use";
/// On an issuer: the credentials Secret it holds with [`FINALIZER`], so that the hold is
/// released even after `spec` names another Secret.
pub const HELD_SECRET_ANNOTATION: &str = "cloudkeys.io/held-secret";

/// An issuer as named from anywhere: its kind, name and (KeyIssuer) namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerId {
    pub kind: IssuerKind,
    pub name: String,
    /// The KeyIssuer's namespace; `None` for a ClusterKeyIssuer.
    pub namespace: Option<String>,
}

impl IssuerId {
    /// The issuer `r` names, seen from an AccessKey in `namespace`.
    pub fn from_ref(r: &IssuerRef, namespace: &str) -> Self {
        let namespace = (r.kind == IssuerKind::KeyIssuer).then(|| namespace.to_string());
        Self { kind: r.kind, name: r.name.clone(), namespace }
    }
}

impl std::fmt::Display for IssuerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "KeyIssuer {ns}/{}", self.name),
            None => write!(f, "ClusterKeyIssuer {}", self.name),
        }
    }
}

/// Every issuer an AccessKey needs: the one its spec names (for new keys), and those that
/// minted its current, replaced or half-created keys (to revoke them).
pub fn needed_issuers(ak: &AccessKey) -> Vec<IssuerId> {
    let ns = ak.namespace().unwrap_or_default();
    let mut refs = vec![&ak.spec.issuer_ref];
    if let Some(status) = &ak.status {
        refs.extend(status.issued_by.iter());
        refs.extend(status.retired.iter().map(|r| &r.issuer));
        refs.extend(status.pending.iter().map(|p| &p.issuer));
    }
    let mut ids: Vec<IssuerId> = refs.into_iter().map(|r| IssuerId::from_ref(r, &ns)).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The AccessKeys (`namespace/name`, sorted) that need `issuer`.
pub fn users<'a>(access_keys: impl IntoIterator<Item = &'a AccessKey>, issuer: &IssuerId) -> Vec<String> {
    let mut users: Vec<String> = access_keys
        .into_iter()
        .filter(|ak| needed_issuers(ak).contains(issuer))
        .map(|ak| format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any()))
        .collect();
    users.sort();
    users
}

/// Whether an object's metadata carries the in-use finalizer.
pub fn holds(meta: &ObjectMeta) -> bool {
    meta.finalizers.as_ref().is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

/// What an issuer's metadata should say: held (with the Secret it holds) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub held: bool,
    pub secret: Option<String>,
}

impl Hold {
    pub fn of(meta: &ObjectMeta) -> Self {
        Self {
            held: holds(meta),
            secret: meta.annotations.as_ref().and_then(|a| a.get(HELD_SECRET_ANNOTATION)).cloned(),
        }
    }
}

/// The finalizer list with `FINALIZER` added or removed, everyone else's kept in order.
fn finalizers_with(meta: &ObjectMeta, held: bool) -> Vec<String> {
    let mut list: Vec<String> =
        meta.finalizers.clone().unwrap_or_default().into_iter().filter(|f| f != FINALIZER).collect();
    if held {
        list.push(FINALIZER.to_string());
    }
    list
}

/// Sets the issuer's finalizer and held-Secret annotation to `want`, if `meta` (as cached)
/// differs. The merge patch carries the observed resourceVersion, so a concurrent change is
/// never overwritten: on a conflict the issuer is read again and the patch retried, once.
pub async fn set_issuer_hold(client: &Client, id: &IssuerId, meta: &ObjectMeta, want: &Hold) -> Result<(), Error> {
    let mut meta = meta.clone();
    for attempt in 0..2 {
        if Hold::of(&meta) == *want {
            return Ok(());
        }
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": meta.resource_version,
            "finalizers": finalizers_with(&meta, want.held),
            "annotations": {HELD_SECRET_ANNOTATION: want.secret},
        }});
        let params = PatchParams::default();
        let result = match &id.namespace {
            Some(ns) => Api::<KeyIssuer>::namespaced(client.clone(), ns)
                .patch(&id.name, &params, &Patch::Merge(&patch))
                .await
                .map(|_| ()),
            None => Api::<ClusterKeyIssuer>::all(client.clone())
                .patch(&id.name, &params, &Patch::Merge(&patch))
                .await
                .map(|_| ()),
        };
        match result {
            Ok(()) => {
                tracing::info!(issuer = %id, held = want.held, secret = want.secret.as_deref().unwrap_or(""), "in-use finalizer updated");
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 409 && attempt == 0 => {
                meta = match &id.namespace {
                    Some(ns) => Api::<KeyIssuer>::namespaced(client.clone(), ns).get_metadata(&id.name).await?.metadata,
                    None => Api::<ClusterKeyIssuer>::all(client.clone()).get_metadata(&id.name).await?.metadata,
                };
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether an issuer other than `except` holds the Secret `namespace/name` (by its annotation,
/// which records holds actually made).
pub fn secret_held_by_others(
    caches: &Caches,
    cluster_resource_namespace: &str,
    namespace: &str,
    name: &str,
    except: &IssuerId,
) -> bool {
    let holds_it = |meta: &ObjectMeta| holds(meta) && Hold::of(meta).secret.as_deref() == Some(name);
    let key_issuers = caches.key_issuers.state().into_iter().any(|i| {
        i.namespace().as_deref() == Some(namespace)
            && (except.kind != IssuerKind::KeyIssuer
                || i.name_any() != except.name
                || except.namespace.as_deref() != Some(namespace))
            && holds_it(&i.metadata)
    });
    let cluster_issuers = namespace == cluster_resource_namespace
        && caches.cluster_issuers.state().into_iter().any(|i| {
            (except.kind != IssuerKind::ClusterKeyIssuer || i.name_any() != except.name) && holds_it(&i.metadata)
        });
    key_issuers || cluster_issuers
}

/// Before a key is created through `r`: the issuer and its credentials Secret carry the in-use
/// finalizer, so that nothing can delete what revoking the key will need. Costs nothing once
/// the cached issuer shows the hold.
pub async fn hold_before_issuing(ctx: &Context, r: &IssuerRef, namespace: &str) -> Result<(), Error> {
    let id = IssuerId::from_ref(r, namespace);
    let (meta, settings, secret_ns) = match &id.namespace {
        Some(ns) => match ctx.caches.key_issuers.get(&ObjectRef::new(&id.name).within(ns)) {
            Some(i) => (i.metadata.clone(), i.spec.provider.clone(), ns.clone()),
            None => return Err(Error::Issuer(format!("{id} not found"))),
        },
        None => match ctx.caches.cluster_issuers.get(&ObjectRef::new(&id.name)) {
            Some(i) => (i.metadata.clone(), i.spec.provider.clone(), ctx.cluster_resource_namespace.clone()),
            None => return Err(Error::Issuer(format!("{id} not found"))),
        },
    };
    let want = Hold { held: true, secret: crate::providers::credentials_secret(&settings).map(String::from) };
    if Hold::of(&meta) == want {
        return Ok(());
    }
    set_issuer_hold(&ctx.client, &id, &meta, &want).await?;
    if let Some(secret) = &want.secret {
        set_secret_hold(&ctx.client, &secret_ns, secret, true).await?;
    }
    Ok(())
}

/// Adds or removes the in-use finalizer on the Secret `namespace/name`; a Secret that is gone
/// needs nothing.
pub async fn set_secret_hold(client: &Client, namespace: &str, name: &str, held: bool) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let Some(secret) = api.get_metadata_opt(name).await? else {
        return Ok(());
    };
    if holds(&secret.metadata) == held {
        return Ok(());
    }
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": secret.metadata.resource_version,
        "finalizers": finalizers_with(&secret.metadata, held),
    }});
    api.patch_metadata(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    tracing::info!(secret = %format!("{namespace}/{name}"), held, "in-use finalizer updated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PendingKey, RetiredKey};

    fn ak(ns: &str, name: &str, issuer: &str, kind: &str, status: serde_json::Value) -> AccessKey {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"issuerRef": {"name": issuer, "kind": kind}, "secretName": "s", "local": {}},
            "status": status,
        }))
        .expect("AccessKey")
    }

    fn key_issuer(ns: &str, name: &str) -> IssuerId {
        IssuerId { kind: IssuerKind::KeyIssuer, name: name.into(), namespace: Some(ns.into()) }
    }

    #[test]
    fn a_key_issuer_is_used_only_by_access_keys_of_its_namespace() {
        let keys = [
            ak("a", "k1", "local", "KeyIssuer", serde_json::json!({})),
            ak("b", "k2", "local", "KeyIssuer", serde_json::json!({})),
        ];
        assert_eq!(users(&keys, &key_issuer("a", "local")), vec!["a/k1".to_string()]);
        assert!(users(&keys, &key_issuer("c", "local")).is_empty());
    }

    #[test]
    fn a_cluster_issuer_is_used_from_every_namespace() {
        let keys = [
            ak("a", "k1", "shared", "ClusterKeyIssuer", serde_json::json!({})),
            ak("b", "k2", "shared", "ClusterKeyIssuer", serde_json::json!({})),
            ak("b", "k3", "shared", "KeyIssuer", serde_json::json!({})),
        ];
        let id = IssuerId { kind: IssuerKind::ClusterKeyIssuer, name: "shared".into(), namespace: None };
        assert_eq!(users(&keys, &id), vec!["a/k1".to_string(), "b/k2".to_string()]);
    }

    #[test]
    fn an_issuer_stays_needed_while_keys_it_minted_are_not_revoked() {
        // The spec points elsewhere, but the current, a replaced and a half-created key came
        // from `old`: each alone keeps it in use.
        let old = serde_json::json!({"name": "old"});
        for status in [
            serde_json::json!({"issuedBy": old}),
            serde_json::to_value(crate::api::AccessKeyStatus {
                retired: vec![RetiredKey {
                    access_key_id: "K".into(),
                    key_ref: "r".into(),
                    issuer: IssuerRef { name: "old".into(), kind: IssuerKind::KeyIssuer },
                }],
                ..Default::default()
            })
            .expect("json"),
            serde_json::to_value(crate::api::AccessKeyStatus {
                pending: Some(PendingKey {
                    attempt: "a".into(),
                    issuer: IssuerRef { name: "old".into(), kind: IssuerKind::KeyIssuer },
                    started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
                    provider: None,
                    spec_hash: None,
                }),
                ..Default::default()
            })
            .expect("json"),
        ] {
            let keys = [ak("a", "k", "new", "KeyIssuer", status.clone())];
            assert_eq!(users(&keys, &key_issuer("a", "old")), vec!["a/k".to_string()], "{status}");
            assert_eq!(users(&keys, &key_issuer("a", "new")), vec!["a/k".to_string()]);
        }
        let done = [ak("a", "k", "new", "KeyIssuer", serde_json::json!({"issuedBy": {"name": "new"}}))];
        assert!(users(&done, &key_issuer("a", "old")).is_empty());
    }

    #[test]
    fn finalizers_of_others_are_kept_in_order() {
        let meta =
            ObjectMeta { finalizers: Some(vec!["x".into(), FINALIZER.into(), "y".into()]), ..Default::default() };
        assert_eq!(finalizers_with(&meta, false), vec!["x".to_string(), "y".to_string()]);
        assert_eq!(finalizers_with(&meta, true), vec!["x".to_string(), "y".to_string(), FINALIZER.to_string()]);
        assert!(holds(&meta));
    }
}
