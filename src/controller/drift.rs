//! Drift checks: keys revoked at the provider behind the operator's back. Every
//! `--drift-check-interval` (jittered) the keys of each provider owner are listed once — all
//! AccessKeys of one issuer and listing scope (an Exoscale account, a Yandex service account, an
//! Outscale identity) share the listing — and an AccessKey whose current key is not among them
//! any more is handed to its controller, which replaces the key at once.
//!
//! A sweep takes one of the issuer's slots for its listing, and only when one is free: issuance
//! goes first. Nothing is written to the cluster by a sweep that finds nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use rand::Rng;

use super::context::{display_name, Context};
use super::in_use::IssuerId;
use crate::api::{AccessKey, IssuerRef, KeyProvider};
use crate::providers::bounded::Bounded;
use crate::providers::{ListedKey, Provider};

/// An AccessKey whose current key a sweep checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub namespace: String,
    pub name: String,
    pub issuer: IssuerRef,
    pub spec: KeyProvider,
    pub access_key_id: String,
    pub issued_at: jiff::Timestamp,
}

/// The AccessKeys worth checking: with a key issued for the spec they have now, settled (no
/// creation under way) and not being deleted.
pub fn candidates(access_keys: &[Arc<AccessKey>]) -> Vec<Candidate> {
    access_keys
        .iter()
        .filter(|ak| ak.metadata.deletion_timestamp.is_none())
        .filter_map(|ak| {
            let status = ak.status.as_ref()?;
            if status.pending.is_some() || status.key_spec_hash.as_deref() != Some(&super::access_key::spec_hash(ak)) {
                return None;
            }
            Some(Candidate {
                namespace: ak.namespace()?,
                name: ak.name_any(),
                issuer: status.issued_by.clone()?,
                spec: ak.spec.provider.clone(),
                access_key_id: status.access_key_id.clone()?,
                issued_at: status.issued_at.as_ref()?.0,
            })
        })
        .collect()
}

/// Which of `checked` lost their key: it is not among the active keys `listed` at `listed_at`.
/// A key issued after the listing began proves nothing by its absence.
pub fn gone<'a>(checked: &'a [Candidate], listed: &[ListedKey], listed_at: jiff::Timestamp) -> Vec<&'a Candidate> {
    checked
        .iter()
        .filter(|c| c.issued_at < listed_at)
        .filter(|c| !listed.iter().any(|k| k.active && k.access_key_id == c.access_key_id))
        .collect()
}

/// `interval` ± 10 %, so that operators started together do not list together.
pub fn jittered(interval: Duration) -> Duration {
    let spread = interval.as_secs_f64() * 0.1;
    Duration::from_secs_f64((interval.as_secs_f64() + rand::rng().random_range(-spread..=spread)).max(0.0))
}

/// Sweeps every `interval` until the process ends; `Duration::ZERO` disables drift checks.
pub async fn run(ctx: Arc<Context>, interval: Duration, found: UnboundedSender<ObjectRef<AccessKey>>) {
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(jittered(interval)).await;
        if found.is_closed() {
            return;
        }
        sweep(&ctx, &found).await;
    }
}

/// One sweep over every AccessKey in the cache.
pub async fn sweep(ctx: &Context, found: &UnboundedSender<ObjectRef<AccessKey>>) {
    let access_keys = ctx.caches.access_keys.state();
    let mut groups: BTreeMap<(String, String), (IssuerRef, String, Vec<Candidate>)> = BTreeMap::new();
    let mut providers = BTreeMap::new();
    for c in candidates(&access_keys) {
        let issuer = IssuerId::from_ref(&c.issuer, &c.namespace).to_string();
        let provider = match providers.get(&issuer) {
            Some(p) => Option::clone(p),
            None => {
                let loaded = ctx
                    .registry
                    .load(&ctx.client, &ctx.caches, &c.namespace, &c.issuer, &ctx.cluster_resource_namespace)
                    .await;
                let provider = match loaded {
                    Ok(Some(l)) if !l.deleting => l.provider.ok(),
                    _ => None,
                };
                providers.insert(issuer.clone(), provider.clone());
                provider
            }
        };
        let Some(provider) = provider else { continue };
        let scope = provider.listing_scope(&c.spec);
        let group =
            groups.entry((issuer, scope)).or_insert_with(|| (c.issuer.clone(), c.namespace.clone(), Vec::new()));
        group.2.push(c);
    }
    for ((issuer, scope), (_, _, checked)) in groups {
        let Some(provider) = providers.get(&issuer).cloned().flatten() else { continue };
        // Below issuance in priority: a busy issuer is checked next time.
        let Some(slot) = ctx.issuer_slot(&issuer).await else {
            tracing::debug!(%issuer, %scope, "issuer busy; drift check postponed");
            continue;
        };
        let listed_at = jiff::Timestamp::now();
        let bounded = Bounded::new(provider.clone(), tokio::time::Instant::now() + ctx.limits.provider_timeout);
        let listed = bounded.list_marked(&checked[0].spec).await;
        drop(slot);
        crate::metrics::global().drift_listed(provider.name(), &issuer, listed.is_ok());
        let listed = match listed {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(%issuer, %scope, error = %e, "drift check: cannot list the keys; trying again next time");
                continue;
            }
        };
        for c in gone(&checked, &listed, listed_at) {
            report_gone(ctx, c, provider.name(), found).await;
        }
    }
}

/// Hands an AccessKey whose key is gone to its controller, if the cache still shows that key.
async fn report_gone(ctx: &Context, c: &Candidate, provider: &str, found: &UnboundedSender<ObjectRef<AccessKey>>) {
    let key = ObjectRef::<AccessKey>::new(&c.name).within(&c.namespace);
    let Some(ak) = ctx.caches.access_keys.get(&key) else { return };
    let still = ak.status.as_ref().and_then(|s| s.access_key_id.as_deref()) == Some(c.access_key_id.as_str());
    if !still {
        return;
    }
    let access_key = display_name(&*ak);
    ctx.revoked_externally(&access_key, &c.access_key_id);
    crate::metrics::global().revoked_externally(provider);
    tracing::warn!(%access_key, key_id = %c.access_key_id, "key revoked at the provider; replacing it");
    let note = format!(
        "key {} is gone or deactivated at the provider (revoked outside cloudkeys); issuing a new one now",
        c.access_key_id
    );
    ctx.event(&*ak, EventType::Warning, "KeyRevokedExternally", note).await;
    // A send fails only once the controllers are stopping.
    drop(found.unbounded_send(key));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Marker;

    const UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().expect("timestamp")
    }

    fn candidate(id: &str, issued: &str) -> Candidate {
        Candidate {
            namespace: "n".into(),
            name: id.to_lowercase(),
            issuer: IssuerRef { name: "i".into(), kind: Default::default() },
            spec: KeyProvider::Local(Default::default()),
            access_key_id: id.into(),
            issued_at: at(issued),
        }
    }

    fn listed(id: &str, active: bool) -> ListedKey {
        ListedKey { access_key_id: id.into(), marker: Marker::new_attempt(UID), active }
    }

    #[test]
    fn a_key_missing_or_deactivated_is_gone_unless_issued_after_the_listing_began() {
        let checked = [
            candidate("K1", "2026-12-01T10:00:00Z"),
            candidate("K2", "2026-12-01T10:00:00Z"),
            candidate("K3", "2026-12-01T10:00:00Z"),
            candidate("K4", "2026-12-01T12:00:01Z"),
        ];
        let keys = [listed("K1", true), listed("K3", false)];
        let gone: Vec<&str> =
            gone(&checked, &keys, at("2026-12-01T12:00:00Z")).iter().map(|c| c.access_key_id.as_str()).collect();
        assert_eq!(gone, ["K2", "K3"]);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(3600));
            assert!((3240..=3960).contains(&d.as_secs()), "{d:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
