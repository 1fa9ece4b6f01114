//! "Usage keeps the used alive": an issuer, and the Secret holding its credentials, carry the
//! finalizer `cloudkeys.io/in-use` while any AccessKey still needs them to revoke a key, so that
//! deleting a namespace (or an issuer by mistake) can never strand live keys at the provider.
//!
//! - Who uses an issuer is decided from the AccessKey cache alone ([`users`]): every AccessKey
//!   whose spec names it, or which holds a key it minted.
//! - An issuer, once held, is released only while it is being deleted and nobody uses it; an
//!   issuer being deleted mints no new keys. So no AccessKey can start needing an issuer that
//!   is about to be released. Its credentials Secret is let go whenever nobody uses the issuer
//!   (a Secret deleted then goes at once), and held again before the next key is minted.
//! - A Secret may hold the credentials of several issuers: its annotation
//!   `cloudkeys.io/held-by` lists them, changed only by read-modify-write conditional on its
//!   resourceVersion, and the finalizer goes with the last of them. The issuer's annotation
//!   `cloudkeys.io/held-secret` records the Secret it holds, so the hold is released even
//!   after `spec` names another Secret.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::Client;

use crate::api::{ClusterKeyIssuer, IssuerRef, KeyIssuer};

use super::context::Context;
use super::error::Error;

pub const FINALIZER: &str = "cloudkeys.io/in-use";
/// On an issuer: the credentials Secret it holds with [`FINALIZER`], so that the hold is
/// released even after `spec` names another Secret.
pub const HELD_SECRET_ANNOTATION: &str = "cloudkeys.io/held-secret";
/// On a credentials Secret: the issuers holding it with [`FINALIZER`], comma-separated.
pub const HELD_BY_ANNOTATION: &str = "cloudkeys.io/held-by";
/// On a credentials Secret while an issuer holds it: the operator watches these Secrets (their
/// data included) instead of reading them per reconcile.
pub const CREDENTIALS_LABEL: &str = "cloudkeys.io/credentials";

/// Whether `meta` carries [`CREDENTIALS_LABEL`].
fn labelled_credentials(meta: &ObjectMeta) -> bool {
    meta.labels.as_ref().is_some_and(|l| l.get(CREDENTIALS_LABEL).is_some_and(|v| v == "true"))
}

pub use crate::core::issuers::{needed_issuers, users, IssuerId};

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
/// never overwritten: on a conflict a hold is retried once on the issuer read again.
async fn set_issuer_hold(client: &Client, id: &IssuerId, meta: &ObjectMeta, want: &Hold) -> Result<(), Error> {
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
        let result = match &id.namespace {
            Some(ns) => crate::reconcile::writes::issuer_hold(
                &Api::<KeyIssuer>::namespaced(client.clone(), ns),
                &id.name,
                &patch,
            )
            .await
            .map(|_| ()),
            None => {
                crate::reconcile::writes::issuer_hold(&Api::<ClusterKeyIssuer>::all(client.clone()), &id.name, &patch)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(issuer = %id, held = want.held, secret = want.secret.as_deref().unwrap_or(""), "in-use finalizer updated");
                return Ok(());
            }
            // Holding again is always right; a release is decided afresh by the next reconcile.
            Err(kube::Error::Api(e)) if e.code == 409 && attempt == 0 && want.held => {
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

/// Holds the issuer `id` (as `meta` shows it) and the Secret it reads from `secret_ns` today:
/// a Secret it held before `spec` named another is let go first.
pub async fn hold(
    ctx: &Context,
    id: &IssuerId,
    meta: &ObjectMeta,
    secret_ns: &str,
    secret: Option<&str>,
) -> Result<(), Error> {
    let have = Hold::of(meta);
    if let Some(old) = have.secret.as_deref().filter(|old| Some(*old) != secret) {
        set_secret_holder(&ctx.client, secret_ns, old, id, false).await?;
    }
    set_issuer_hold(&ctx.client, id, meta, &Hold { held: true, secret: secret.map(String::from) }).await?;
    if let Some(secret) = secret.filter(|s| !cache_shows_holder(ctx, secret_ns, s, id)) {
        set_secret_holder(&ctx.client, secret_ns, secret, id, true).await?;
    }
    Ok(())
}

/// Whether the credentials cache shows the Secret held by `id` already: an issuer reconciled
/// again (each time one of its AccessKeys goes, say) then reads nothing.
fn cache_shows_holder(ctx: &Context, namespace: &str, name: &str, id: &IssuerId) -> bool {
    let cached = ctx.caches.credentials.get(&ObjectRef::new(name).within(namespace));
    cached.is_some_and(|s| {
        holders(&s.metadata).contains(&id.holder_key()) && holds(&s.metadata) && labelled_credentials(&s.metadata)
    })
}

/// Lets go of the Secret the issuer `id` holds, and of the issuer itself too when `issuer` is
/// set (only while it is being deleted); called only when nothing uses it.
pub async fn release(
    ctx: &Context,
    id: &IssuerId,
    meta: &ObjectMeta,
    secret_ns: &str,
    issuer: bool,
) -> Result<(), Error> {
    if let Some(old) = Hold::of(meta).secret {
        set_secret_holder(&ctx.client, secret_ns, &old, id, false).await?;
    }
    set_issuer_hold(&ctx.client, id, meta, &Hold { held: holds(meta) && !issuer, secret: None }).await
}

/// Before a key is created through `r`: the issuer and its credentials Secret carry the in-use
/// finalizer, so that nothing can delete what revoking the key will need; an issuer being
/// deleted mints nothing. Costs nothing once the cached issuer shows the hold.
pub async fn hold_before_issuing(ctx: &Context, r: &IssuerRef, namespace: &str) -> Result<(), Error> {
    let id = IssuerId::from_ref(r, namespace);
    let writer = ctx.hold_writer(&id.holder_key());
    let mut written_over = writer.lock().await;
    // The cache, or the apiserver for an issuer the cache has not seen yet (just after start-up).
    let not_found = || Error::IssuerNotFound(id.to_string());
    let (meta, settings, secret_ns) = match &id.namespace {
        Some(ns) => {
            let cached = ctx.caches.key_issuers.get(&ObjectRef::new(&id.name).within(ns));
            let issuer = match cached {
                Some(i) => i,
                None => Arc::new(
                    Api::<KeyIssuer>::namespaced(ctx.client.clone(), ns)
                        .get_opt(&id.name)
                        .await?
                        .ok_or_else(not_found)?,
                ),
            };
            (issuer.metadata.clone(), issuer.spec.provider.clone(), ns.clone())
        }
        None => {
            let cached = ctx.caches.cluster_issuers.get(&ObjectRef::new(&id.name));
            let issuer = match cached {
                Some(i) => i,
                None => Arc::new(
                    Api::<ClusterKeyIssuer>::all(ctx.client.clone()).get_opt(&id.name).await?.ok_or_else(not_found)?,
                ),
            };
            (issuer.metadata.clone(), issuer.spec.provider.clone(), ctx.cluster_resource_namespace.clone())
        }
    };
    if meta.deletion_timestamp.is_some() {
        return Err(Error::IssuerDeleting(id.to_string()));
    }
    let secret = crate::providers::credentials_secret(&settings);
    if Hold::of(&meta) == (Hold { held: true, secret: secret.map(String::from) }) {
        return Ok(());
    }
    // The cache still shows the issuer this operator's own hold write replaced: the hold is
    // there. Any other change to the issuer shows as another resourceVersion.
    if written_over.is_some() && *written_over == meta.resource_version {
        return Ok(());
    }
    hold(ctx, &id, &meta, &secret_ns, secret).await?;
    *written_over = meta.resource_version.clone();
    Ok(())
}

/// Whether the issuer named `key` (as in `held-by`) still exists; an unreadable name does not.
async fn holder_exists(client: &Client, key: &str) -> Result<bool, Error> {
    let parts: Vec<&str> = key.split('/').collect();
    Ok(match parts.as_slice() {
        ["KeyIssuer", ns, name] => {
            Api::<KeyIssuer>::namespaced(client.clone(), ns).get_metadata_opt(name).await?.is_some()
        }
        ["ClusterKeyIssuer", name] => {
            Api::<ClusterKeyIssuer>::all(client.clone()).get_metadata_opt(name).await?.is_some()
        }
        _ => false,
    })
}

/// The issuers named in a Secret's `held-by` annotation.
fn holders(meta: &ObjectMeta) -> Vec<String> {
    let listed = meta.annotations.as_ref().and_then(|a| a.get(HELD_BY_ANNOTATION));
    listed.map(|l| l.split(',').filter(|h| !h.is_empty()).map(String::from).collect()).unwrap_or_default()
}

/// Adds `holder` to, or removes it from, the issuers holding the Secret `namespace/name`; the
/// finalizer is there exactly while someone holds it. A Secret that is gone needs nothing.
/// Read-modify-write, conditional on the resourceVersion read and retried on a conflict, so
/// issuers letting go of a shared Secret at the same moment cannot both leave it held.
pub async fn set_secret_holder(
    client: &Client,
    namespace: &str,
    name: &str,
    holder: &IssuerId,
    held: bool,
) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let me = holder.holder_key();
    for _ in 0..5 {
        let Some(secret) = api.get_metadata_opt(name).await? else {
            return Ok(());
        };
        let mut list = holders(&secret.metadata);
        list.retain(|h| *h != me);
        if held {
            list.push(me.clone());
        } else {
            // An issuer deleted without letting go (its finalizer removed by hand) holds nothing.
            let mut alive = Vec::new();
            for h in list {
                if holder_exists(client, &h).await? {
                    alive.push(h);
                }
            }
            list = alive;
        }
        list.sort();
        let want_finalizer = !list.is_empty();
        if list == {
            let mut now = holders(&secret.metadata);
            now.sort();
            now
        } && holds(&secret.metadata) == want_finalizer
            && labelled_credentials(&secret.metadata) == want_finalizer
        {
            return Ok(());
        }
        let annotation = (!list.is_empty()).then(|| list.join(","));
        let patch = serde_json::json!({"metadata": {
            "resourceVersion": secret.metadata.resource_version,
            "finalizers": finalizers_with(&secret.metadata, want_finalizer),
            "annotations": {HELD_BY_ANNOTATION: annotation},
            "labels": {CREDENTIALS_LABEL: want_finalizer.then_some("true")},
        }});
        match crate::reconcile::writes::hold_credentials(&api, name, &patch).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{name}"), holder = %me, held, "in-use finalizer updated");
                return Ok(());
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::SecretContended(format!("{namespace}/{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finalizers_of_others_are_kept_in_order() {
        let meta =
            ObjectMeta { finalizers: Some(vec!["x".into(), FINALIZER.into(), "y".into()]), ..Default::default() };
        assert_eq!(finalizers_with(&meta, false), vec!["x".to_string(), "y".to_string()]);
        assert_eq!(finalizers_with(&meta, true), vec!["x".to_string(), "y".to_string(), FINALIZER.to_string()]);
        assert!(holds(&meta));
    }
}
