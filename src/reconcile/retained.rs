//! Keys kept when their AccessKey is deleted, and the one record of them: the issuer's
//! `status.retainedKeys`, which only the operator writes. Whether a key was retained is decided
//! from that record and from the provider (the owner a listed key's marker names), never from a
//! Secret: its labels and annotations are the tenant's to write.
//!
//! The decisions are pure; the writes are merge patches conditional on the issuer's
//! resourceVersion, under a field manager of their own, so that two deletions never drop each
//! other's entry and the issuer controller's and drift checks' applies leave the record alone.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::context::Context;
use super::error::Error;
use super::in_use::IssuerId;
use super::issuer_object::IssuerObject;
use crate::api::{
    ClusterKeyIssuer, DeletionPolicy, IssuerKind, IssuerPolicy, KeyIssuer, RetainedKey, MAX_RETAINED_KEYS,
};
use crate::core::policy;
use crate::providers::{ListedKey, Marker};

/// What deleting an AccessKey does with the key it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtDeletion {
    /// `deletionPolicy: Delete`: every key is revoked.
    Revoke,
    /// `Retain`, which the key's issuer allows: the key is kept, and recorded in its status.
    Retain,
    /// `Retain`, which the key's issuer does not allow (any more): revoked all the same.
    RetainDenied,
}

/// `issuer`: the policy of the issuer of the key kept; `None` when that issuer is gone. A gone
/// issuer has no policy to read and can revoke nothing: `Retain` lets the AccessKey go, as it
/// does when revocation fails.
pub fn at_deletion(asked: DeletionPolicy, issuer: Option<Option<&IssuerPolicy>>) -> AtDeletion {
    match (asked, issuer) {
        (DeletionPolicy::Delete, _) => AtDeletion::Revoke,
        (DeletionPolicy::Retain, Some(p)) if !policy::allows_deletion(p, DeletionPolicy::Retain) => {
            AtDeletion::RetainDenied
        }
        (DeletionPolicy::Retain, _) => AtDeletion::Retain,
    }
}

/// A key added to an issuer's record.
#[derive(Debug, PartialEq)]
pub enum Addition {
    /// Recorded before (a deletion interrupted after recording).
    Already,
    /// The record to write.
    Add(Vec<RetainedKey>),
    /// The record holds as many keys as it may.
    Full,
}

pub fn with_retained(record: &[RetainedKey], key: RetainedKey) -> Addition {
    if record.iter().any(|r| r.access_key_id == key.access_key_id && r.owner == key.owner) {
        return Addition::Already;
    }
    if record.len() >= MAX_RETAINED_KEYS {
        return Addition::Full;
    }
    let mut record = record.to_vec();
    record.push(key);
    Addition::Add(record)
}

/// Whether the record holds a listed key: the same id, and its marker names the owner recorded
/// (so an entry can only ever cover a key of the AccessKey that was deleted).
pub fn is_retained(record: &[RetainedKey], key: &ListedKey) -> bool {
    let Some(owner) = key.marker.as_ref().map(Marker::owner) else { return false };
    record.iter().any(|r| r.access_key_id == key.access_key_id && r.owner == owner)
}

/// The entries whose key no listing of the issuer showed although the scope they name was
/// listed: probably revoked by hand. (Asked by id before being dropped: a key made in another
/// scope than the one recorded is absent from that listing and still there.)
pub fn unlisted<'a>(
    record: &'a [RetainedKey],
    scopes: &BTreeSet<String>,
    listed: &BTreeSet<String>,
) -> Vec<&'a RetainedKey> {
    record
        .iter()
        .filter(|r| r.scope.as_ref().is_some_and(|s| scopes.contains(s)) && !listed.contains(&r.access_key_id))
        .collect()
}

/// A Secret that, before the record existed, said it held a retained key.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyHold {
    pub namespace: String,
    pub secret_name: String,
    pub key_id: String,
}

/// The orphans a Secret held as retained before the record existed: taken over into the record
/// once, by the first complete drift check of an issuer that had no record (an operator upgrade).
/// After that only the record counts.
pub fn adopt(
    orphans: &[&ListedKey],
    scope_of: &HashMap<String, String>,
    held: &[LegacyHold],
    now: jiff::Timestamp,
) -> Vec<RetainedKey> {
    orphans
        .iter()
        .filter_map(|k| {
            let hold = held.iter().find(|h| h.key_id == k.access_key_id)?;
            Some(RetainedKey {
                access_key_id: k.access_key_id.clone(),
                key_ref: Some(k.key_ref.clone()),
                owner: k.marker.as_ref()?.owner().to_string(),
                namespace: hold.namespace.clone(),
                access_key: None,
                secret_name: hold.secret_name.clone(),
                scope: scope_of.get(&k.access_key_id).cloned(),
                retained_at: Time(now),
            })
        })
        .collect()
}

/// Writes the issuer's record (and `since`, when given) if the issuer is still at the
/// resourceVersion it was read at; a conflict otherwise.
pub async fn write<K: IssuerObject>(
    ctx: &Context,
    issuer: &K,
    record: &[RetainedKey],
    since: Option<&Time>,
) -> Result<K, kube::Error> {
    let mut status = serde_json::json!({ "retainedKeys": record });
    if let Some(since) = since {
        status["retainedKeysSince"] = serde_json::to_value(since).map_err(kube::Error::SerdeError)?;
    }
    let patch = serde_json::json!({"metadata": {"resourceVersion": issuer.resource_version()}, "status": status});
    crate::reconcile::writes::issuer_retained_keys(
        &K::api(ctx, issuer.namespace().as_deref()),
        &issuer.name_any(),
        &patch,
    )
    .await
}

/// A new issuer's record is whole from the start: nothing before it to take over.
pub async fn begin<K: IssuerObject>(ctx: &Context, issuer: &K) -> Result<(), kube::Error> {
    let patch = serde_json::json!({"status": {"retainedKeysSince": Time(jiff::Timestamp::now())}});
    crate::reconcile::writes::issuer_retained_keys(
        &K::api(ctx, issuer.namespace().as_deref()),
        &issuer.name_any(),
        &patch,
    )
    .await?;
    Ok(())
}

/// What recording a retained key came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    Recorded,
    /// There is no issuer to record it in (it cannot list the key either).
    IssuerGone,
    /// The record is full ([`MAX_RETAINED_KEYS`]).
    Full,
}

/// Records `key` in the status of the issuer `id`, before the AccessKey's finalizer goes: a
/// crash in between records it again (a no-op), then lets the AccessKey go.
pub async fn record(ctx: &Context, id: &IssuerId, key: RetainedKey) -> Result<Recording, Error> {
    match id.kind {
        IssuerKind::KeyIssuer => record_in::<KeyIssuer>(ctx, id, key).await,
        IssuerKind::ClusterKeyIssuer => record_in::<ClusterKeyIssuer>(ctx, id, key).await,
    }
}

async fn record_in<K: IssuerObject>(ctx: &Context, id: &IssuerId, key: RetainedKey) -> Result<Recording, Error> {
    // From the cache first; after a conflict (another deletion recorded a key meanwhile), afresh.
    let mut issuer = K::cached(ctx, id);
    let mut conflicts = 0;
    loop {
        let Some(i) = issuer else { return Ok(Recording::IssuerGone) };
        let record = i.status().and_then(|s| s.retained_keys.as_deref()).unwrap_or_default();
        let record = match with_retained(record, key.clone()) {
            Addition::Already => return Ok(Recording::Recorded),
            Addition::Full => return Ok(Recording::Full),
            Addition::Add(record) => record,
        };
        match write(ctx, &*i, &record, None).await {
            Ok(_) => return Ok(Recording::Recorded),
            Err(kube::Error::Api(e)) if e.code == 409 && conflicts < 3 => {
                conflicts += 1;
                issuer = K::api(ctx, id.namespace.as_deref()).get_opt(&id.name).await?.map(Arc::new);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";
    const OTHER: &str = "1f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";

    fn entry(id: &str, owner: &str, scope: Option<&str>) -> RetainedKey {
        RetainedKey {
            access_key_id: id.into(),
            key_ref: Some(format!("ref-{id}")),
            owner: owner.into(),
            namespace: "team-a".into(),
            access_key: Some("app".into()),
            secret_name: "app-credentials".into(),
            scope: scope.map(String::from),
            retained_at: Time("2026-12-01T00:00:00Z".parse().expect("time")),
        }
    }

    fn listed(id: &str, owner: &str) -> ListedKey {
        ListedKey {
            access_key_id: id.into(),
            key_ref: format!("ref-{id}"),
            marker: Some(Marker::new_attempt(owner).within("0a1b2c3d")),
            active: true,
            expires_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn retain_is_denied_by_an_issuer_that_allows_only_delete_whatever_the_access_key_says_by_then() {
        let delete_only: IssuerPolicy =
            serde_json::from_value(serde_json::json!({"deletionPolicies": ["Delete"]})).expect("policy");
        let both: IssuerPolicy =
            serde_json::from_value(serde_json::json!({"deletionPolicies": ["Delete", "Retain"]})).expect("policy");
        use DeletionPolicy::{Delete, Retain};
        assert_eq!(at_deletion(Retain, Some(Some(&delete_only))), AtDeletion::RetainDenied);
        assert_eq!(at_deletion(Delete, Some(Some(&delete_only))), AtDeletion::Revoke);
        assert_eq!(at_deletion(Retain, Some(Some(&both))), AtDeletion::Retain);
        // No policy: both allowed.
        assert_eq!(at_deletion(Retain, Some(None)), AtDeletion::Retain);
        // The issuer is gone: nothing can revoke the key, nor say it may not be kept.
        assert_eq!(at_deletion(Retain, None), AtDeletion::Retain);
        assert_eq!(at_deletion(Delete, None), AtDeletion::Revoke);
    }

    #[test]
    fn a_key_is_recorded_once_and_never_past_the_bound() {
        let record = vec![entry("K1", OWNER, None)];
        assert_eq!(with_retained(&record, entry("K1", OWNER, None)), Addition::Already);
        match with_retained(&record, entry("K2", OWNER, None)) {
            Addition::Add(r) => {
                assert_eq!(r.iter().map(|e| e.access_key_id.as_str()).collect::<Vec<_>>(), ["K1", "K2"])
            }
            other => panic!("{other:?}"),
        }
        let full: Vec<RetainedKey> = (0..MAX_RETAINED_KEYS).map(|n| entry(&format!("K{n}"), OWNER, None)).collect();
        assert_eq!(with_retained(&full, entry("new", OWNER, None)), Addition::Full);
    }

    #[test]
    fn a_listed_key_is_retained_only_with_the_id_and_the_owner_recorded() {
        let record = [entry("K1", OWNER, None)];
        assert!(is_retained(&record, &listed("K1", OWNER)));
        // An entry naming the id of another AccessKey's key covers nothing.
        assert!(!is_retained(&record, &listed("K1", OTHER)));
        assert!(!is_retained(&record, &listed("K2", OWNER)));
        assert!(!is_retained(&record, &ListedKey { marker: None, ..listed("K1", OWNER) }));
    }

    #[test]
    fn entries_missing_from_a_listing_of_their_scope_are_the_ones_to_ask_about() {
        let record = [
            entry("K1", OWNER, Some("sa-1")),
            entry("K2", OWNER, Some("sa-1")),
            entry("K3", OWNER, Some("sa-2")),
            entry("K4", OWNER, None),
        ];
        let scopes = BTreeSet::from(["sa-1".to_string()]);
        let listed = BTreeSet::from(["K1".to_string()]);
        let asked: Vec<&str> = unlisted(&record, &scopes, &listed).iter().map(|r| r.access_key_id.as_str()).collect();
        // K3: its scope was not listed; K4: no scope known.
        assert_eq!(asked, ["K2"]);
    }

    #[test]
    fn orphans_a_secret_held_before_the_record_existed_are_taken_over_with_their_owner() {
        let keys = [listed("K1", OWNER), listed("K2", OTHER)];
        let orphans: Vec<&ListedKey> = keys.iter().collect();
        let held = [LegacyHold { namespace: "team-a".into(), secret_name: "old".into(), key_id: "K1".into() }];
        let scope_of = HashMap::from([("K1".to_string(), "api-keys".to_string())]);
        let now: jiff::Timestamp = "2026-12-06T00:00:00Z".parse().expect("time");
        let adopted = adopt(&orphans, &scope_of, &held, now);
        assert_eq!(adopted.len(), 1);
        let a = &adopted[0];
        assert_eq!((a.access_key_id.as_str(), a.owner.as_str(), a.secret_name.as_str()), ("K1", OWNER, "old"));
        assert_eq!((a.scope.as_deref(), a.access_key.as_deref()), (Some("api-keys"), None));
    }
}
