//! Drift checks: keys revoked at the provider behind the operator's back. Every
//! `--drift-check-interval` (jittered) the keys of each provider owner are listed once — all
//! AccessKeys of one issuer and listing scope (an Exoscale account, a Yandex service account, an
//! Outscale identity) share the listing — and an AccessKey whose current key is not among them
//! any more is handed to its controller, which replaces the key at once.
//!
//! Each issuer is checked on its own, side by side with the others: a slow provider delays only
//! its own issuer's checks. A listing takes one of the issuer's slots, waiting for one like an
//! AccessKey does. Nothing is written to the cluster by a sweep that finds nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use rand::Rng;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::context::{display_name, Context};
use super::in_use::IssuerId;
use super::issuer::IssuerObject;
use super::retained::{self, LegacyHold};
use crate::api::{
    AccessKey, ClusterKeyIssuer, IssuerKind, IssuerProvider, IssuerRef, KeyIssuer, KeyProvider, RetainedKey,
    MAX_RETAINED_KEYS,
};
use crate::core::decide::ProviderView;
use crate::core::secret::KEY_ID_ANNOTATION;
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
    // Owned here: when the controllers stop (a former leader), this task is aborted and dropping
    // the checks' JoinSet aborts every check under way, so that none revokes an orphan
    // afterwards.
    let mut sweeps = Sweeps::default();
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
        sweeps.settle();
        // A bug met on one issuer's answers must not end drift checks for every issuer.
        match super::caught::caught(async { Ok(plan(&ctx).await) }).await {
            Ok(work) => sweeps.start(&ctx, &found, work),
            Err(e) => {
                crate::metrics::global().reconciled("drift", Duration::ZERO, Some(e.label()));
                tracing::error!(error = %e, "drift sweep stopped; the next one starts on schedule");
            }
        }
    }
}

/// The orphans last reported per issuer: an event only when they change.
#[derive(Debug, Default)]
struct Reported(BTreeMap<String, Vec<String>>);

/// What one issuer's check ended with: the orphans it left (`None`: no complete view), or the
/// bug it met.
type Checked = Result<Option<Vec<String>>, super::error::Error>;

/// The drift checks of issuers under way. Each issuer is checked on its own: one whose provider
/// is slow delays its own next check (it is not started again while one is under way), never
/// another issuer's. Their listings take places among the provider calls as issuance does (see
/// `fair_share`), so that how many wait on providers at once stays bounded.
#[derive(Default)]
struct Sweeps {
    running: tokio::task::JoinSet<(String, Checked)>,
    in_flight: BTreeSet<String>,
    reported: Reported,
}

impl Sweeps {
    /// Takes in what the checks that ended found.
    fn settle(&mut self) {
        while let Some(done) = self.running.try_join_next() {
            // (A task ends without its result only when aborted, as the process stops.)
            let Ok((issuer, result)) = done else { continue };
            self.in_flight.remove(&issuer);
            match result {
                Ok(Some(left)) => {
                    self.reported.0.insert(issuer, left);
                }
                Ok(None) => {}
                Err(e) => {
                    crate::metrics::global().reconciled("drift", Duration::ZERO, Some(e.label()));
                    tracing::error!(%issuer, error = %e, "drift check of the issuer stopped; the next sweep tries again");
                }
            }
        }
    }

    /// Starts the check of each issuer in `work` that is not still under way. What was reported
    /// of issuers no longer planned (deleted) is forgotten: a new issuer of the same name starts
    /// with a clean slate, and deleted issuers leave nothing in memory.
    fn start(&mut self, ctx: &Arc<Context>, found: &UnboundedSender<ObjectRef<AccessKey>>, work: Vec<IssuerWork>) {
        let planned: BTreeSet<&str> = work.iter().map(|w| w.issuer.as_str()).collect();
        self.reported.0.retain(|issuer, _| planned.contains(issuer.as_str()) || self.in_flight.contains(issuer));
        let bound = ctx.limits.provider_timeout.saturating_mul(ISSUER_SWEEP_CALLS);
        for IssuerWork { issuer, provider, groups } in work {
            if !self.in_flight.insert(issuer.clone()) {
                tracing::debug!(%issuer, "the issuer's last drift check is still under way");
                continue;
            }
            let previous = self.reported.0.get(&issuer).cloned();
            let (ctx, found) = (ctx.clone(), found.clone());
            self.running.spawn(async move {
                let checked = super::caught::caught(async {
                    let swept = sweep_issuer(&ctx, &issuer, &provider, groups, &found, previous.as_deref());
                    match tokio::time::timeout(bound, swept).await {
                        Ok(left) => Ok(left),
                        Err(_) => {
                            tracing::warn!(%issuer, bound_s = bound.as_secs(), "drift check of the issuer not done in time; the rest waits for the next sweep");
                            Ok(None)
                        }
                    }
                })
                .await;
                (issuer, checked)
            });
        }
    }
}

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
/// AccessKeys that exist, and not a key the issuer's record says was retained (a Secret that
/// claims to hold it proves nothing: tenants write Secrets).
pub fn orphans<'a>(
    listed: &'a [ListedKey],
    installation: &str,
    owners: &BTreeSet<String>,
    retained: &[RetainedKey],
) -> Vec<&'a ListedKey> {
    listed
        .iter()
        .filter(|k| k.marker.as_ref().and_then(Marker::installation) == Some(installation))
        .filter(|k| k.marker.as_ref().is_some_and(|m| !owners.contains(m.owner())))
        .filter(|k| !retained::is_retained(retained, k))
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

/// What one sweep checks, per issuer: every AccessKey and issuer in the caches, grouped by the
/// listing that covers them.
async fn plan(ctx: &Context) -> Vec<IssuerWork> {
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

    let mut by_issuer: BTreeMap<String, Vec<(String, Group)>> = BTreeMap::new();
    for ((issuer, scope), group) in groups {
        by_issuer.entry(issuer).or_default().push((scope, group));
    }
    by_issuer
        .into_iter()
        .filter_map(|(issuer, groups)| {
            let provider = providers.get(&issuer).cloned().flatten()?;
            Some(IssuerWork { issuer, provider, groups })
        })
        .collect()
}

/// One issuer's part of a sweep, to be started.
struct IssuerWork {
    issuer: String,
    provider: Arc<dyn Provider>,
    groups: Vec<(String, Group)>,
}

/// How many provider timeouts one issuer's part of a sweep may take in all.
const ISSUER_SWEEP_CALLS: u32 = 5;

/// One issuer's part of a sweep: lists its keys in every scope the AccessKeys use, hands those
/// whose key is gone to their controller, and settles its orphans. Returns the orphans left, or
/// `None` when a listing is missing (a partial view would count orphans wrong).
async fn sweep_issuer(
    ctx: &Context,
    issuer: &str,
    provider: &Arc<dyn Provider>,
    groups: Vec<(String, Group)>,
    found: &UnboundedSender<ObjectRef<AccessKey>>,
    previous: Option<&[String]>,
) -> Option<Vec<String>> {
    let mut listing: Option<Listing> = None;
    for (scope, group) in groups {
        // A busy issuer's listing waits for a place, as its AccessKeys do (the bound of the
        // issuer's check ends the wait).
        // A ClusterKeyIssuer's listing serves every namespace: it counts against the operator's
        // own, as its checks do, not against the tenant whose AccessKey happened to come first.
        let counted_in = match group.issuer.kind {
            IssuerKind::KeyIssuer => group.namespace.as_str(),
            IssuerKind::ClusterKeyIssuer => ctx.cluster_resource_namespace.as_str(),
        };
        let mut turns = 0;
        let slot = loop {
            if let Some(slot) = ctx.issuer_slot(issuer, counted_in).await {
                break slot;
            }
            tracing::debug!(%issuer, %scope, "issuer busy; drift check waits");
            tokio::time::sleep(super::context::busy_wait(turns)).await;
            turns += 1;
        };
        let listed_at = jiff::Timestamp::now();
        let bounded = Bounded::new(provider.clone(), tokio::time::Instant::now() + ctx.limits.provider_timeout);
        let listed = bounded.list_marked(&group.spec).await;
        drop(slot);
        // An issuer deleted while its listing waited has had its series dropped: recording
        // this listing would bring them back for good.
        let id = IssuerId::from_ref(&group.issuer, &group.namespace);
        let still_there = match id.kind {
            IssuerKind::KeyIssuer => KeyIssuer::cached(ctx, &id).is_some(),
            IssuerKind::ClusterKeyIssuer => ClusterKeyIssuer::cached(ctx, &id).is_some(),
        };
        if !still_there {
            return None;
        }
        crate::metrics::global().drift_listed(provider.name(), issuer, listed.is_ok());
        let listed = match listed {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(%issuer, %scope, error = %e, "drift check: cannot list the keys; trying again next time");
                return None;
            }
        };
        let active = active_by_id(&listed);
        let missing = gone(&group.checked, &active, listed_at);
        // Most of a listing's keys missing at once is the listing's problem (the issuer's
        // credentials or default service account changed), not a mass revocation.
        if missing.len() > 3 && missing.len() * 2 > group.checked.len() {
            tracing::warn!(%issuer, %scope, missing = missing.len(), of = group.checked.len(), "drift check: most keys are missing from the listing; replacing none (check the issuer's credentials and settings)");
            return None;
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
        let entry = listing.get_or_insert_with(|| Listing {
            issuer: group.issuer.clone(),
            namespace: group.namespace.clone(),
            keys: Vec::new(),
            scope_of: HashMap::new(),
            ids: BTreeSet::new(),
            scopes: BTreeSet::new(),
        });
        entry.ids.extend(listed.iter().map(|k| k.access_key_id.clone()));
        entry.scopes.insert(scope.clone());
        for key in listed {
            if key.marker.as_ref().and_then(Marker::installation) == Some(&*ctx.installation) {
                entry.scope_of.insert(key.access_key_id.clone(), scope.clone());
                entry.keys.push(key);
            }
        }
    }
    let listing = listing?;
    // Owners as the cache shows them after the listing: every key listed was created by an
    // AccessKey the cache had before. Then the records, which a deletion under `Retain` writes
    // before its AccessKey goes.
    let (owners, recorded) = if listing.keys.is_empty() { Default::default() } else { (owners(ctx), recorded(ctx)) };
    let id = IssuerId::from_ref(&listing.issuer, &listing.namespace);
    match listing.issuer.kind {
        IssuerKind::KeyIssuer => {
            let i = KeyIssuer::cached(ctx, &id)?;
            let view = settle_retained(ctx, &*i, provider, &listing, &owners, &recorded).await;
            Some(handle_orphans(ctx, &*i, provider.clone(), view, previous).await)
        }
        IssuerKind::ClusterKeyIssuer => {
            let i = ClusterKeyIssuer::cached(ctx, &id)?;
            let view = settle_retained(ctx, &*i, provider, &listing, &owners, &recorded).await;
            Some(handle_orphans(ctx, &*i, provider.clone(), view, previous).await)
        }
    }
}

/// The uids of the AccessKeys in the cache.
fn owners(ctx: &Context) -> BTreeSet<String> {
    ctx.caches.access_keys.state().iter().filter_map(|ak| ak.metadata.uid.clone()).collect()
}

/// Every key any issuer's record holds as retained. Issuers may share one provider account and
/// list each other's keys: a key any record holds (for the owner its marker names) is no orphan
/// of any.
fn recorded(ctx: &Context) -> Vec<RetainedKey> {
    let key_issuers = ctx.caches.key_issuers.state();
    let cluster_issuers = ctx.caches.cluster_issuers.state();
    key_issuers
        .iter()
        .filter_map(|i| i.status.as_ref()?.retained_keys.clone())
        .chain(cluster_issuers.iter().filter_map(|i| i.status.as_ref()?.retained_keys.clone()))
        .flatten()
        .collect()
}

/// Everything the listings of one sweep showed of an issuer.
struct Listing {
    issuer: IssuerRef,
    namespace: String,
    /// The keys carrying this installation's marker.
    keys: Vec<ListedKey>,
    /// The scope each of those was listed in.
    scope_of: HashMap<String, String>,
    /// Every key id listed, marked or not.
    ids: BTreeSet<String>,
    scopes: BTreeSet<String>,
}

/// An issuer's orphans, and whether they are too many of its keys to be believed.
struct OrphanView {
    keys: Vec<ListedKey>,
    implausible: bool,
}

/// Brings the issuer's record of retained keys up to date with what its provider lists (an entry
/// whose key is gone is dropped; on the first complete sweep of an issuer from before the record,
/// the orphans Secrets held are taken over), and returns the orphans it leaves.
async fn settle_retained<K: IssuerObject>(
    ctx: &Context,
    issuer: &K,
    provider: &Arc<dyn Provider>,
    listing: &Listing,
    owners: &BTreeSet<String>,
    elsewhere: &[RetainedKey],
) -> OrphanView {
    let status = issuer.status();
    let before = status.and_then(|s| s.retained_keys.clone()).unwrap_or_default();
    let mut record = before.clone();
    for entry in retained::unlisted(&before, &listing.scopes, &listing.ids) {
        let Some(key_ref) = entry.key_ref.as_deref() else { continue };
        let bounded = Bounded::new(provider.clone(), tokio::time::Instant::now() + ctx.limits.provider_timeout);
        match bounded.key_present(key_ref).await {
            Ok(None | Some(false)) => record.retain(|r| r != entry),
            Ok(Some(true)) => {}
            Err(e) => tracing::warn!(issuer = %issuer.id(), key = %entry.access_key_id, error = %e,
                "drift check: cannot read a retained key; trying again next time"),
        }
    }
    let since = match status.and_then(|s| s.retained_keys_since.clone()) {
        Some(_) => None,
        None => {
            use kube::runtime::reflector::Lookup as _;
            let held: Vec<LegacyHold> = ctx
                .caches
                .secrets
                .state()
                .iter()
                .filter_map(|s| {
                    Some(LegacyHold {
                        namespace: s.namespace()?.to_string(),
                        secret_name: s.name()?.to_string(),
                        key_id: s.annotation(KEY_ID_ANNOTATION)?.to_string(),
                    })
                })
                .collect();
            let found = orphans(&listing.keys, &ctx.installation, owners, &[&record[..], elsewhere].concat());
            let adopted = retained::adopt(&found, &listing.scope_of, &held, jiff::Timestamp::now());
            if !adopted.is_empty() {
                tracing::info!(issuer = %issuer.id(), keys = adopted.len(), "taking over the keys retained before the record of retained keys existed");
            }
            record.extend(adopted);
            Some(Time(jiff::Timestamp::now()))
        }
    };
    // Past the bound (only by taking over): the rest stay unrevoked orphans, below.
    let overflow = record.len() > MAX_RETAINED_KEYS;
    record.truncate(MAX_RETAINED_KEYS);
    if record != before || since.is_some() {
        if let Err(e) = retained::write(ctx, issuer, &record, since.as_ref()).await {
            // (A conflict: a deletion recorded a key meanwhile.) Next time.
            tracing::warn!(issuer = %issuer.id(), error = %e, "cannot update the issuer's record of retained keys");
        }
    }
    let retained = [&record[..], elsewhere].concat();
    let found: Vec<ListedKey> =
        orphans(&listing.keys, &ctx.installation, owners, &retained).into_iter().cloned().collect();
    let implausible = overflow || (found.len() > 3 && found.len() * 2 > listing.keys.len());
    OrphanView { keys: found, implausible }
}

/// Counts an issuer's orphans in its status (when the count changed), says so in an event
/// (when they changed), and revokes them if the issuer asks for it.
async fn handle_orphans<K: IssuerObject>(
    ctx: &Context,
    issuer: &K,
    provider: Arc<dyn Provider>,
    OrphanView { keys, implausible }: OrphanView,
    previous: Option<&[String]>,
) -> Vec<String> {
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
    if !left.is_empty() && previous != Some(left.as_slice()) {
        let note = format!(
            "{} key(s) carry this installation's marker but their AccessKey no longer exists: {}; set \
             spec.revokeOrphans: true to revoke them",
            left.len(),
            left.join(", ")
        );
        ctx.event(issuer, EventType::Warning, "OrphanedKeys", note).await;
    }
    // Also a first 0: `kubectl get ki -o wide` then shows that the issuer was checked and has none.
    if issuer.status().and_then(|s| s.orphaned_keys) != Some(count) {
        // Applied under a field manager of its own: the issuer controller's applies of its
        // conditions leave it alone.
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": {"orphanedKeys": count},
        });
        let api = K::api(ctx, issuer.namespace().as_deref());
        if let Err(e) = super::writes::issuer_orphaned_keys(&api, &issuer.name_any(), &patch).await {
            tracing::warn!(issuer = %id, error = %e, "cannot record the orphaned keys in the issuer's status");
        }
    }
    left
}

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
    fn orphans_are_this_installations_keys_of_no_existing_access_key_not_recorded_as_retained() {
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
        let entry = |id: &str, owner: &str| RetainedKey {
            access_key_id: id.into(),
            key_ref: None,
            owner: owner.into(),
            namespace: "n".into(),
            access_key: None,
            secret_name: "s".into(),
            scope: None,
            retained_at: Time(at("2026-12-01T00:00:00Z")),
        };
        // K5 recorded as retained; K6 too, but for another owner than its marker names (as a
        // tenant who could make the operator record any id would have it).
        let listed = [&listed[..], &[key("K6", Marker::new_attempt(GONE).within("0a1b2c3d"))]].concat();
        let retained = [entry("K5", GONE), entry("K6", UID)];
        let found: Vec<&str> =
            orphans(&listed, "0a1b2c3d", &owners, &retained).iter().map(|k| k.access_key_id.as_str()).collect();
        // K3: another installation's; K4: older than installation ids; K5: retained.
        assert_eq!(found, ["K2", "K6"]);
    }

    fn offline_context() -> Arc<Context> {
        Arc::new(crate::reconcile::context::tests::offline_context())
    }

    /// Finding 7a: drift checks now run on their own, each for up to 5 x --provider-timeout
    /// (5 min by default). An issuer deleted while its check waits on the provider is forgotten
    /// (`forget_issuer` drops its series), then the check's listing ends and records its sweep
    /// time again: the series of the deleted issuer is back, and nothing removes it any more. A
    /// tenant creating and deleting KeyIssuers at a slow provider grows every scrape without
    /// bound.
    #[tokio::test]
    async fn a_drift_check_under_way_when_its_issuer_is_deleted_leaves_no_series_behind() {
        let ctx = offline_context();
        let id = IssuerId {
            kind: IssuerKind::KeyIssuer,
            name: "deleted-during-check".into(),
            namespace: Some("team".into()),
        };
        let issuer = id.to_string();
        let provider: Arc<dyn Provider> =
            Arc::new(crate::providers::local::LocalProvider::new(crate::providers::local::LocalStore::default()));
        let group = Group {
            issuer: IssuerRef { name: id.name.clone(), kind: IssuerKind::KeyIssuer },
            namespace: "team".into(),
            spec: KeyProvider::Local(Default::default()),
            checked: Vec::new(),
        };
        // Planned with its provider in hand; deleted (the watch's Delete event) while the
        // listing waits on the provider.
        ctx.forget_issuer(&id);
        let (found, _drifted) = futures::channel::mpsc::unbounded();
        let left = sweep_issuer(&ctx, &issuer, &provider, vec![("default".into(), group)], &found, None).await;
        assert!(left.is_none(), "the issuer is gone from the cache");
        let labels = crate::metrics::IssuerLabels { issuer: issuer.clone() };
        assert!(
            crate::metrics::global().drift_last_sweep.get(&labels).is_none(),
            "a series of the deleted issuer {issuer} stays in every scrape"
        );
    }

    /// Finding 7b: what a drift check last reported of an issuer is kept by issuer name for the
    /// life of the process, never dropped when the issuer goes: memory grows with every
    /// KeyIssuer a tenant creates and deletes, and a new issuer of the same name inherits the
    /// old one's report (its first OrphanedKeys event is not sent when the list is the same).
    #[tokio::test]
    async fn what_was_reported_of_a_deleted_issuer_is_forgotten() {
        let ctx = offline_context();
        let (found, _drifted) = futures::channel::mpsc::unbounded();
        let mut sweeps = Sweeps::default();
        let gone = "KeyIssuer team/gone".to_string();
        let reported = gone.clone();
        sweeps.in_flight.insert(gone.clone());
        sweeps.running.spawn(async move { (reported, Ok(Some(vec!["K1".to_string()]))) });
        while !sweeps.running.is_empty() {
            tokio::task::yield_now().await;
            sweeps.settle();
        }
        assert!(sweeps.reported.0.contains_key(&gone));
        // The issuer is deleted: the next sweeps plan nothing for it.
        for _ in 0..3 {
            sweeps.settle();
            sweeps.start(&ctx, &found, Vec::new());
        }
        assert!(!sweeps.reported.0.contains_key(&gone), "kept for an issuer that no longer exists");
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
