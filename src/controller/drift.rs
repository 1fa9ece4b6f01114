//! Drift checks: keys revoked at the provider behind the operator's back. Every
//! `--drift-check-interval` (jittered) the keys of each provider owner are listed once — all
//! AccessKeys of one issuer and listing scope (an Exoscale account, a Yandex service account, an
//! Outscale identity) share the listing — and an AccessKey whose current key is not among them
//! any more is handed to its controller, which replaces the key at once.
//!
//! A sweep takes one of the issuer's slots for its listing, and only when one is free: issuance
//! goes first. Nothing is written to the cluster by a sweep that finds nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use rand::Rng;

use super::context::{display_name, Context};
use super::decide::ProviderView;
use super::in_use::IssuerId;
use super::issuer::IssuerObject;
use super::secret::KEY_ID_ANNOTATION;
use crate::api::{AccessKey, IssuerKind, IssuerProvider, IssuerRef, KeyProvider};
use crate::providers::bounded::Bounded;
use crate::providers::{ListedKey, Marker, Provider};

/// An AccessKey whose current key a sweep checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub namespace: String,
    pub name: String,
    pub issuer: IssuerRef,
    pub spec: KeyProvider,
    pub access_key_id: String,
    pub key_ref: String,
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
                key_ref: status.key_ref.clone()?,
                issued_at: status.issued_at.as_ref()?.0,
            })
        })
        .collect()
}

/// The active keys of a listing, by key id.
pub fn active_by_id(listed: &[ListedKey]) -> HashMap<&str, &ListedKey> {
    listed.iter().filter(|k| k.active).map(|k| (k.access_key_id.as_str(), k)).collect()
}

/// Which of `checked` lost their key: it is not among the `active` keys listed at `listed_at`.
/// A key issued after the listing began proves nothing by its absence.
pub fn gone<'a>(
    checked: &'a [Candidate],
    active: &HashMap<&str, &ListedKey>,
    listed_at: jiff::Timestamp,
) -> Vec<&'a Candidate> {
    checked.iter().filter(|c| c.issued_at < listed_at && !active.contains_key(c.access_key_id.as_str())).collect()
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
    let mut reported = Reported::default();
    // Orphans are judged against the caches: never against caches not filled yet. (Polled: a
    // store's readiness signal wakes only its latest waiter, and the controllers wait on it.)
    while !ctx.health.synced.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if found.is_closed() {
            return;
        }
    }
    loop {
        tokio::time::sleep(jittered(interval)).await;
        if found.is_closed() {
            return;
        }
        // A bug met on one issuer's answers must not end drift checks for every issuer.
        let swept = super::caught::caught(async {
            sweep(&ctx, &found, &mut reported).await;
            Ok(())
        })
        .await;
        if let Err(e) = swept {
            crate::metrics::global().reconciled("drift", Duration::ZERO, Some(e.label()));
            tracing::error!(error = %e, "drift sweep stopped; the next one starts on schedule");
        }
    }
}

/// The orphans last reported per issuer: an event only when they change.
#[derive(Debug, Default)]
pub struct Reported(BTreeMap<String, Vec<String>>);

/// What a sweep lists for: an AccessKey's current key, or an issuer's default scope (where
/// orphans of an issuer nobody uses any more are found).
enum Target {
    Key(Candidate),
    Default(IssuerRef, String, KeyProvider),
}

impl Target {
    /// The issuer, the namespace it is named from, and the spec whose scope is listed.
    fn parts(&self) -> (&IssuerRef, &str, &KeyProvider) {
        match self {
            Self::Key(c) => (&c.issuer, &c.namespace, &c.spec),
            Self::Default(issuer, namespace, spec) => (issuer, namespace, spec),
        }
    }
}

/// What one listing covers, and the AccessKeys whose current keys it checks.
struct Group {
    issuer: IssuerRef,
    namespace: String,
    spec: KeyProvider,
    checked: Vec<Candidate>,
}

/// The keys listed that are orphans: this installation's marker, an owner that is none of the
/// AccessKeys that exist, and not a key a Secret still holds (a `Retain`ed one).
pub fn orphans<'a>(
    listed: &'a [ListedKey],
    installation: &str,
    owners: &BTreeSet<String>,
    held: &BTreeSet<String>,
) -> Vec<&'a ListedKey> {
    listed
        .iter()
        .filter(|k| k.marker.as_ref().and_then(Marker::installation) == Some(installation))
        .filter(|k| k.marker.as_ref().is_some_and(|m| !owners.contains(m.owner())))
        .filter(|k| !held.contains(&k.access_key_id))
        .collect()
}

/// A key issued for no AccessKey: the defaults of the issuer's provider block.
fn default_spec(settings: &IssuerProvider) -> KeyProvider {
    match settings {
        IssuerProvider::Exoscale(_) => KeyProvider::Exoscale(Default::default()),
        IssuerProvider::Yandex(_) => KeyProvider::Yandex(Default::default()),
        IssuerProvider::Outscale(_) => KeyProvider::Outscale(Default::default()),
        IssuerProvider::Local(_) => KeyProvider::Local(Default::default()),
    }
}

/// One sweep over every AccessKey and issuer in the caches.
pub async fn sweep(ctx: &Context, found: &UnboundedSender<ObjectRef<AccessKey>>, reported: &mut Reported) {
    let mut groups: BTreeMap<(String, String), Group> = BTreeMap::new();
    let mut providers: BTreeMap<String, Option<Arc<dyn Provider>>> = BTreeMap::new();
    // Every issuer is listed at least in its default scope: orphans of an issuer nobody uses
    // any more are found too.
    let mut targets: Vec<Target> = candidates(&ctx.caches.access_keys.state()).into_iter().map(Target::Key).collect();
    for i in ctx.caches.key_issuers.state() {
        let r = IssuerRef { name: i.name_any(), kind: IssuerKind::KeyIssuer };
        targets.push(Target::Default(r, i.namespace().unwrap_or_default(), default_spec(&i.spec.provider)));
    }
    for i in ctx.caches.cluster_issuers.state() {
        let r = IssuerRef { name: i.name_any(), kind: IssuerKind::ClusterKeyIssuer };
        targets.push(Target::Default(r, String::new(), default_spec(&i.spec.provider)));
    }
    for target in targets {
        let (issuer_ref, namespace, spec) = target.parts();
        let issuer = IssuerId::from_ref(issuer_ref, namespace).to_string();
        let provider = match providers.get(&issuer) {
            Some(p) => p.clone(),
            None => {
                let loaded = ctx
                    .registry
                    .load(&ctx.client, &ctx.caches, namespace, issuer_ref, &ctx.cluster_resource_namespace)
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
        let scope = provider.listing_scope(spec);
        let group = groups.entry((issuer, scope)).or_insert_with(|| Group {
            issuer: issuer_ref.clone(),
            namespace: namespace.to_string(),
            spec: spec.clone(),
            checked: Vec::new(),
        });
        if let Target::Key(c) = target {
            group.checked.push(c);
        }
    }

    let mut orphaned: BTreeMap<String, (IssuerRef, String, Vec<ListedKey>)> = BTreeMap::new();
    let mut unlisted: BTreeSet<String> = BTreeSet::new();
    for ((issuer, scope), group) in groups {
        let Some(provider) = providers.get(&issuer).cloned().flatten() else { continue };
        // Below issuance in priority: a busy issuer is checked next time.
        let Some(slot) = ctx.issuer_slot(&issuer, &group.namespace).await else {
            tracing::debug!(%issuer, %scope, "issuer busy; drift check postponed");
            unlisted.insert(issuer);
            continue;
        };
        let listed_at = jiff::Timestamp::now();
        let bounded = Bounded::new(provider.clone(), tokio::time::Instant::now() + ctx.limits.provider_timeout);
        let listed = bounded.list_marked(&group.spec).await;
        drop(slot);
        crate::metrics::global().drift_listed(provider.name(), &issuer, listed.is_ok());
        let listed = match listed {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(%issuer, %scope, error = %e, "drift check: cannot list the keys; trying again next time");
                unlisted.insert(issuer);
                continue;
            }
        };
        let active = active_by_id(&listed);
        let missing = gone(&group.checked, &active, listed_at);
        // Most of a listing's keys missing at once is the listing's problem (the issuer's
        // credentials or default service account changed), not a mass revocation.
        if missing.len() > 3 && missing.len() * 2 > group.checked.len() {
            tracing::warn!(%issuer, %scope, missing = missing.len(), of = group.checked.len(), "drift check: most keys are missing from the listing; replacing none (check the issuer's credentials and settings)");
            unlisted.insert(issuer);
            continue;
        }
        for c in missing {
            // Asked by id, where the key was made: the listing covers the scope the spec names
            // now, which may not be the one the key was made in.
            let bounded = Bounded::new(provider.clone(), tokio::time::Instant::now() + ctx.limits.provider_timeout);
            match bounded.key_present(&c.key_ref).await {
                Ok(None | Some(false)) => report_gone(ctx, c, provider.name(), found).await,
                Ok(Some(true)) => tracing::debug!(key = %c.access_key_id, %scope, "not in the listing, but present"),
                Err(e) => {
                    tracing::warn!(key = %c.access_key_id, error = %e, "drift check: cannot read the key; trying again next time")
                }
            }
        }
        for c in &group.checked {
            if let Some(key) = active.get(c.access_key_id.as_str()) {
                noticed(ctx, c, key, found);
            }
        }
        let ours =
            listed.into_iter().filter(|k| k.marker.as_ref().and_then(Marker::installation) == Some(&*ctx.installation));
        let entry =
            orphaned.entry(issuer).or_insert_with(|| (group.issuer.clone(), group.namespace.clone(), Vec::new()));
        entry.2.extend(ours);
    }
    // Owners as the cache shows them after the listings: every key listed was created by an
    // AccessKey the cache had before.
    let owners: BTreeSet<String> =
        ctx.caches.access_keys.state().iter().filter_map(|ak| ak.metadata.uid.clone()).collect();
    let held: BTreeSet<String> =
        ctx.caches.secrets.state().iter().filter_map(|s| s.annotation(KEY_ID_ANNOTATION).map(String::from)).collect();
    for (issuer, (issuer_ref, namespace, keys)) in orphaned {
        // A partial view of an issuer's keys would count its orphans wrong.
        if unlisted.contains(&issuer) {
            continue;
        }
        let Some(provider) = providers.get(&issuer).cloned().flatten() else { continue };
        let found: Vec<ListedKey> = orphans(&keys, &ctx.installation, &owners, &held).into_iter().cloned().collect();
        let implausible = found.len() > 3 && found.len() * 2 > keys.len();
        let view = OrphanView { keys: found, implausible };
        match issuer_ref.kind {
            IssuerKind::KeyIssuer => {
                let cached = ctx.caches.key_issuers.get(&ObjectRef::new(&issuer_ref.name).within(&namespace));
                if let Some(i) = cached {
                    handle_orphans(ctx, &*i, provider, view, reported).await;
                }
            }
            IssuerKind::ClusterKeyIssuer => {
                if let Some(i) = ctx.caches.cluster_issuers.get(&ObjectRef::new(&issuer_ref.name)) {
                    handle_orphans(ctx, &*i, provider, view, reported).await;
                }
            }
        }
    }
}

/// An issuer's orphans, and whether they are too many of its keys to be believed.
struct OrphanView {
    keys: Vec<ListedKey>,
    implausible: bool,
}

/// Counts an issuer's orphans in its status (when the count changed), says so in an event
/// (when they changed), and revokes them if the issuer asks for it.
async fn handle_orphans<K: IssuerObject>(
    ctx: &Context,
    issuer: &K,
    provider: Arc<dyn Provider>,
    OrphanView { keys, implausible }: OrphanView,
    reported: &mut Reported,
) {
    let id = issuer.id().to_string();
    // Orphans past their share of the issuer's keys of this installation, or found while a
    // watch is failing, are counted but never revoked: the view of what exists may be wrong.
    let revoke =
        issuer.revoke_orphans() && ctx.health.synced.load(std::sync::atomic::Ordering::Relaxed) && !implausible;
    let mut left = Vec::new();
    let mut revoked = Vec::new();
    for key in keys {
        let Some(marker) = key.marker.as_ref() else { continue };
        if !revoke {
            left.push(key.access_key_id);
            continue;
        }
        let bounded = Bounded::new(provider.clone(), tokio::time::Instant::now() + ctx.limits.provider_timeout);
        match bounded.revoke_key(&key.key_ref, marker.owner()).await {
            Ok(r) if r.is_done() => revoked.push(key.access_key_id),
            Ok(refused) => {
                tracing::warn!(issuer = %id, key = %key.access_key_id, ?refused, "orphan not revoked");
                left.push(key.access_key_id);
            }
            Err(e) => {
                tracing::warn!(issuer = %id, key = %key.access_key_id, error = %e, "cannot revoke an orphaned key yet");
                left.push(key.access_key_id);
            }
        }
    }
    let count = u32::try_from(left.len()).unwrap_or(u32::MAX);
    crate::metrics::global().orphaned_keys(&id, count);
    if !revoked.is_empty() {
        let note = format!("revoked {} orphaned key(s): {}", revoked.len(), revoked.join(", "));
        ctx.event(issuer, EventType::Normal, "OrphansRevoked", note).await;
    }
    left.sort();
    if !left.is_empty() && reported.0.get(&id) != Some(&left) {
        let note = format!(
            "{} key(s) carry this installation's marker but their AccessKey no longer exists: {}; set \
             spec.revokeOrphans: true to revoke them",
            left.len(),
            left.join(", ")
        );
        ctx.event(issuer, EventType::Warning, "OrphanedKeys", note).await;
    }
    reported.0.insert(id.clone(), left);
    if issuer.status().and_then(|s| s.orphaned_keys).unwrap_or(0) != count {
        // Applied under a field manager of its own: the issuer controller's applies of its
        // conditions leave it alone.
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": {"orphanedKeys": count},
        });
        let params = PatchParams::apply(FIELD_MANAGER_DRIFT).force();
        let api = K::api(ctx, issuer.namespace().as_deref());
        if let Err(e) = api.patch_status(&issuer.name_any(), &params, &Patch::Apply(&patch)).await {
            tracing::warn!(issuer = %id, error = %e, "cannot record the orphaned keys in the issuer's status");
        }
    }
}

/// The field manager of what drift checks write.
pub const FIELD_MANAGER_DRIFT: &str = "cloudkeys-drift";

/// Tells the controller of an AccessKey what the provider shows of its key (its last use, its
/// expiry), when that is news to the status.
fn noticed(ctx: &Context, c: &Candidate, key: &ListedKey, found: &UnboundedSender<ObjectRef<AccessKey>>) {
    let view = ProviderView { last_used_at: key.last_used_at, expires_at: key.expires_at };
    let object = ObjectRef::<AccessKey>::new(&c.name).within(&c.namespace);
    let Some(ak) = ctx.caches.access_keys.get(&object) else { return };
    let Some(status) = ak.status.as_ref() else { return };
    if status.access_key_id.as_deref() != Some(c.access_key_id.as_str()) || view.news(status).is_none() {
        return;
    }
    ctx.saw_at_provider(&display_name(&*ak), &c.access_key_id, view);
    // A send fails only once the controllers are stopping.
    drop(found.unbounded_send(object));
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
    // Reported once: a replacement that cannot go ahead (a policy, a refusal) is not news.
    if ctx.is_revoked_externally(&access_key, Some(&c.access_key_id)) {
        return;
    }
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
            key_ref: format!("ref-{id}"),
            issued_at: at(issued),
        }
    }

    fn listed(id: &str, active: bool) -> ListedKey {
        ListedKey {
            access_key_id: id.into(),
            key_ref: id.into(),
            marker: Some(Marker::new_attempt(UID)),
            active,
            expires_at: None,
            last_used_at: None,
        }
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
        let active = active_by_id(&keys);
        let gone: Vec<&str> =
            gone(&checked, &active, at("2026-12-01T12:00:00Z")).iter().map(|c| c.access_key_id.as_str()).collect();
        assert_eq!(gone, ["K2", "K3"]);
    }

    #[test]
    fn orphans_are_this_installations_keys_of_no_existing_access_key_and_in_no_secret() {
        const GONE: &str = "1f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";
        let key = |id: &str, marker: Marker| ListedKey { marker: Some(marker), ..listed(id, true) };
        let listed = [
            key("K1", Marker::new_attempt(UID).within("0a1b2c3d")),
            key("K2", Marker::new_attempt(GONE).within("0a1b2c3d")),
            key("K3", Marker::new_attempt(GONE).within("ffffffff")),
            key("K4", Marker::new_attempt(GONE)),
            key("K5", Marker::new_attempt(GONE).within("0a1b2c3d")),
        ];
        let owners = BTreeSet::from([UID.to_string()]);
        let held = BTreeSet::from(["K5".to_string()]);
        let found: Vec<&str> =
            orphans(&listed, "0a1b2c3d", &owners, &held).iter().map(|k| k.access_key_id.as_str()).collect();
        // K3: another installation's; K4: older than installation ids; K5: a Secret holds it.
        assert_eq!(found, ["K2"]);
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
