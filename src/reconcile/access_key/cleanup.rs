//! Everything that happens when an AccessKey is deleted.

use super::*;
use crate::api::{RetainedKey, MAX_RETAINED_KEYS};
use crate::reconcile::retained::{self, AtDeletion, Recording};

/// Everything that happens when an AccessKey is deleted.
///
/// `Delete`: every key this AccessKey created — the current one, replaced ones, and any left by an
/// interrupted creation (found by marker) — is revoked; then the finalizer goes and the Secret
/// follows by garbage collection. If revocation fails the finalizer stays and the condition says
/// why. `Retain`, if the key's issuer allows it: the key is recorded in the issuer's
/// `status.retainedKeys` (so that drift checks do not take it for an orphan), then the Secret is
/// released (owner reference removed) and the key kept. `Retain` where the issuer's
/// `policy.deletionPolicies` does not allow it (any more): revoked as for `Delete`, with a
/// Warning event `RetainDenied`.
pub(super) async fn cleanup(ak: Arc<AccessKey>, ctx: &Context) -> Result<Action, Error> {
    // Every key recorded must be revoked: read the record from the apiserver, not the cache.
    let Some(ak) = fresh(&ak, ctx).await? else {
        return Ok(Action::await_change());
    };
    let ak = Arc::new(ak);
    let c = Cluster::new(ctx, &ak);
    let status = ak.status.clone().unwrap_or_default();
    let kept = match ak.spec.deletion_policy {
        DeletionPolicy::Retain => Some(kept_key(&c, &status).await?),
        DeletionPolicy::Delete => None,
    };
    // The policy of the issuer whose key would be kept decides, as it is now.
    let issuer = match &kept {
        Some(k) => c.issuer(&k.issuer).await?,
        None => None,
    };
    match retained::at_deletion(ak.spec.deletion_policy, issuer.as_ref().map(|i| i.policy.as_ref())) {
        AtDeletion::Retain => retain(&c, &status, kept.unwrap_or_else(|| KeptKey::none(&ak)), issuer.as_ref()).await,
        AtDeletion::RetainDenied => {
            let display = issuer.as_ref().map(|i| i.display.clone()).unwrap_or_default();
            let note = format!(
                "{display} does not allow deletionPolicy Retain (policy.deletionPolicies): revoking the key instead of keeping it"
            );
            ctx.event(&*ak, EventType::Warning, "RetainDenied", note).await;
            revoke(&c, status, Some(&display)).await
        }
        AtDeletion::Revoke => revoke(&c, status, None).await,
    }
}

/// The key a `Retain` keeps, and the issuer it is of.
struct KeptKey {
    id: Option<String>,
    key_ref: Option<String>,
    issuer: IssuerRef,
    /// The spec it was asked for (where the provider lists it).
    spec: crate::api::KeyProvider,
}

impl KeptKey {
    fn none(ak: &AccessKey) -> Self {
        Self { id: None, key_ref: None, issuer: ak.spec.issuer_ref.clone(), spec: ak.spec.provider.clone() }
    }
}

/// The key the Secret holds (after a crash it may not be recorded yet: an interrupted creation's),
/// else the one recorded.
async fn kept_key(c: &Cluster<'_>, status: &AccessKeyStatus) -> Result<KeptKey, Error> {
    let observed = c.secrets().get_opt(&c.ak.spec.secret_name).await?;
    let in_secret = match secret::observe_secret(c.ak, observed.as_ref()) {
        SecretState::Ours { key_id: Some(id), data_intact: true, .. } => Some(id),
        _ => None,
    };
    let recorded = status.access_key_id.clone();
    let current = || KeptKey {
        id: recorded.clone(),
        key_ref: status.key_ref.clone(),
        issuer: status.issued_by.clone().unwrap_or_else(|| c.ak.spec.issuer_ref.clone()),
        spec: c.ak.spec.provider.clone(),
    };
    Ok(match (in_secret, &status.pending) {
        (Some(id), Some(pending)) if Some(&id) != recorded.as_ref() => {
            KeptKey { id: Some(id), key_ref: None, issuer: pending.issuer.clone(), spec: c.attempt_spec(pending) }
        }
        _ => current(),
    })
}

/// `Retain`: every key but the one kept is revoked (if the issuer can, without holding the
/// deletion); the one kept is recorded in its issuer's status, then the Secret is released.
async fn retain(
    c: &Cluster<'_>,
    status: &AccessKeyStatus,
    kept: KeptKey,
    issuer: Option<&LoadedIssuer>,
) -> Result<Action, Error> {
    let ak = c.ak;
    match revoke_all(c, status, kept.id.as_deref()).await {
        Err(e @ Error::IssuerBusy(_)) => return Err(e),
        Err(e) => {
            let note = format!("could not revoke the keys other than the retained one: {e}");
            c.ctx.event(ak, EventType::Warning, "RevocationFailed", note).await;
        }
        Ok(_) => {}
    }
    if let Some(id) = &kept.id {
        let scope = issuer.and_then(|i| i.provider.as_ref().ok()).map(|p| p.listing_scope(&kept.spec));
        let entry = RetainedKey {
            access_key_id: id.clone(),
            key_ref: kept.key_ref.clone(),
            owner: c.uid.clone(),
            namespace: c.ns.clone(),
            access_key: Some(ak.name_any()),
            secret_name: ak.spec.secret_name.clone(),
            scope,
            retained_at: now(),
        };
        let issuer_id = IssuerId::from_ref(&kept.issuer, &c.ns);
        if retained::record(c.ctx, &issuer_id, entry).await? == Recording::Full {
            let mut status = status.clone();
            let message = format!(
                "cannot keep key {id}: {issuer_id} records {MAX_RETAINED_KEYS} retained keys already, the most it can; \
                 revoke retained keys no longer needed at the provider (drift checks then drop them from its \
                 status.retainedKeys), or set deletionPolicy: Delete"
            );
            c.set_condition(&mut status, Reason::RetainFailed, message).await?;
            return Err(Error::RetainedRecordFull(issuer_id.to_string()));
        }
    }
    release_secret(c).await?;
    let kept = kept.id.unwrap_or_else(|| "no key".into());
    c.ctx.event(ak, EventType::Normal, "Retained", format!("kept {kept} and Secret {}", ak.spec.secret_name)).await;
    Ok(Action::await_change())
}

/// `Delete` (or a `Retain` the issuer denies, named by `denied_by`): every key is revoked, and the
/// finalizer stays until they are.
async fn revoke(c: &Cluster<'_>, mut status: AccessKeyStatus, denied_by: Option<&str>) -> Result<Action, Error> {
    let ak = c.ak;
    if status.access_key_id.is_some() || status.pending.is_some() || !status.retired.is_empty() {
        c.set_condition(&mut status, Reason::Revoking, "revoking the key at the provider".into()).await?;
    }
    match revoke_all(c, &status, None).await {
        Ok(revoked) => {
            for id in revoked {
                c.ctx.event(ak, EventType::Normal, "Revoked", format!("revoked key {id}")).await;
            }
            Ok(Action::await_change())
        }
        Err(e @ Error::IssuerBusy(_)) => Err(e),
        Err(e) => {
            crate::metrics::global().revocation_failed(ak.spec.provider.name());
            let why = match &e {
                Error::Provider(pe) => provider_message(pe),
                other => other.to_string(),
            };
            let message = match denied_by {
                None => format!(
                    "cannot revoke the key: {why}; fix the issuer, or set deletionPolicy: Retain to delete the AccessKey and keep the key"
                ),
                Some(issuer) => format!(
                    "cannot revoke the key: {why}; {issuer} does not allow keeping it (deletionPolicy Retain), so the \
                     AccessKey stays until the key is revoked: fix the issuer"
                ),
            };
            c.set_condition(&mut status, Reason::RevocationFailed, message).await?;
            Err(e)
        }
    }
}

/// Revokes every key of this AccessKey — current, replaced, and those an interrupted creation
/// left (found by marker) — except `keep`. Returns the ids revoked.
pub(super) async fn revoke_all(
    c: &Cluster<'_>,
    status: &AccessKeyStatus,
    keep: Option<&str>,
) -> Result<Vec<String>, Error> {
    let mut targets: Vec<(IssuerRef, String, String)> = Vec::new();
    if let (Some(id), Some(key_ref), Some(issuer)) = (&status.access_key_id, &status.key_ref, &status.issued_by) {
        targets.push((issuer.clone(), key_ref.clone(), id.clone()));
    }
    for r in &status.retired {
        targets.push((r.issuer.clone(), r.key_ref.clone(), r.access_key_id.clone()));
    }
    if let Some(pending) = &status.pending {
        let provider = c.provider_of(&pending.issuer).await?;
        for k in provider.find_keys(&c.uid, &c.attempt_spec(pending)).await? {
            if !targets.iter().any(|t| t.1 == k.key_ref) {
                targets.push((pending.issuer.clone(), k.key_ref.clone(), k.access_key_id.unwrap_or(k.key_ref)));
            }
        }
    }
    targets.retain(|(_, _, id)| Some(id.as_str()) != keep);
    let mut revoked = Vec::new();
    for (issuer, key_ref, id) in targets {
        if revoke_recorded(c, c.provider_of(&issuer).await?.as_ref(), &key_ref, &id).await? {
            revoked.push(id);
        }
    }
    Ok(revoked)
}

/// Revokes a key named by this AccessKey's status; `false` if the provider shows it without this
/// AccessKey's marker. Such a key is left alone, with a Warning event: the status was edited to
/// name it (anyone who may edit the AccessKey may), and it belongs to someone else.
pub(super) async fn revoke_recorded(
    c: &Cluster<'_>,
    provider: &dyn Provider,
    key_ref: &str,
    id: &str,
) -> Result<bool, Error> {
    match provider.revoke_key(key_ref, &c.uid).await? {
        Revocation::NotOwned(why) => {
            crate::metrics::global().revocation_refused(provider.name());
            tracing::warn!(key = %id, %why, "not revoking a key this AccessKey does not own");
            let note = format!(
                "did not revoke key {id}: {why}; only keys issued for this AccessKey are revoked, and the \
                 status no longer lists it"
            );
            c.ctx.event(c.ak, EventType::Warning, "RevocationRefused", note).await;
            Ok(false)
        }
        Revocation::Revoked | Revocation::AlreadyGone => Ok(true),
    }
}

/// Removes this AccessKey's owner reference from its Secret so that garbage collection keeps it.
pub(super) async fn release_secret(c: &Cluster<'_>) -> Result<(), Error> {
    let api = c.secrets();
    let Some(secret) = api.get_opt(&c.ak.spec.secret_name).await? else {
        return Ok(());
    };
    let refs = secret.metadata.owner_references.clone().unwrap_or_default();
    if !refs.iter().any(|r| r.uid == c.uid) {
        return Ok(());
    }
    let remaining: Vec<_> = refs.into_iter().filter(|r| r.uid != c.uid).collect();
    // A JSON patch guarded by resourceVersion: never drops someone else's concurrent change.
    let patch = serde_json::json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": secret.resource_version()},
        {"op": "replace", "path": "/metadata/ownerReferences", "value": remaining},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
    crate::reconcile::writes::release_secret(&api, &c.ak.spec.secret_name, patch).await?;
    Ok(())
}
