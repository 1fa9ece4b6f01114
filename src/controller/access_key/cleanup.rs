//! Everything that happens when an AccessKey is deleted.

use super::*;

/// Everything that happens when an AccessKey is deleted.
///
/// `Delete`: every key this AccessKey created — the current one, replaced ones, and any left by an
/// interrupted creation (found by marker) — is revoked; then the finalizer goes and the Secret
/// follows by garbage collection. If revocation fails the finalizer stays and the condition says
/// why. `Retain`: the Secret is released (owner reference removed) and the current key kept.
pub(super) async fn cleanup(ak: Arc<AccessKey>, ctx: &Context) -> Result<Action, Error> {
    // Every key recorded must be revoked: read the record from the apiserver, not the cache.
    let Some(ak) = fresh(&ak, ctx).await? else {
        return Ok(Action::await_change());
    };
    let ak = Arc::new(ak);
    let c = Cluster::new(ctx, &ak);
    let mut status = ak.status.clone().unwrap_or_default();
    match ak.spec.deletion_policy {
        DeletionPolicy::Retain => {
            // The key kept is the one the Secret holds (after a crash it may not be recorded yet).
            let observed = c.secrets().get_opt(&ak.spec.secret_name).await?;
            let kept = match secret::observe_secret(&ak, observed.as_ref()) {
                SecretState::Ours { key_id: Some(id), data_intact: true, .. } => Some(id),
                _ => status.access_key_id.clone(),
            };
            // Every other key (replaced ones, leftovers of an interrupted creation) is revoked if
            // the issuer allows, without holding the deletion.
            match revoke_all(&c, &status, kept.as_deref()).await {
                Err(e @ Error::IssuerBusy(_)) => return Err(e),
                Err(e) => {
                    let note = format!("could not revoke the keys other than the retained one: {e}");
                    ctx.event(&*ak, EventType::Warning, "RevocationFailed", note).await;
                }
                Ok(_) => {}
            }
            release_secret(&c).await?;
            let kept = kept.unwrap_or_else(|| "no key".into());
            ctx.event(&*ak, EventType::Normal, "Retained", format!("kept {kept} and Secret {}", ak.spec.secret_name))
                .await;
            Ok(Action::await_change())
        }
        DeletionPolicy::Delete => {
            if status.access_key_id.is_some() || status.pending.is_some() || !status.retired.is_empty() {
                c.set_condition(&mut status, Reason::Revoking, "revoking the key at the provider".into()).await?;
            }
            match revoke_all(&c, &status, None).await {
                Ok(revoked) => {
                    for id in revoked {
                        ctx.event(&*ak, EventType::Normal, "Revoked", format!("revoked key {id}")).await;
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
                    let message = format!(
                        "cannot revoke the key: {why}; fix the issuer, or set deletionPolicy: Retain to delete the AccessKey and keep the key"
                    );
                    c.set_condition(&mut status, Reason::RevocationFailed, message).await?;
                    Err(e)
                }
            }
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
    api.patch(&c.ak.spec.secret_name, &patch_params(), &Patch::<()>::Json(patch)).await?;
    Ok(())
}
