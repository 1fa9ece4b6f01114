//! AccessKey reconciliation: observe, `decide`, act, until Ready or NotReady; and `cleanup`,
//! everything that happens when an AccessKey is deleted.
//!
//! Creating a key is the one step that cannot be repeated safely, so it is done in an order
//! that survives a crash at any point: (1) record the attempt in status, (2) create the key
//! carrying the attempt's marker, (3) write the Secret, (4) record the key in status. After a
//! crash the next reconcile sees the recorded attempt, lists the keys carrying this AccessKey's
//! markers, adopts the one whose secret is in the Secret and revokes the others.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::{AccessKey, AccessKeyStatus, ConsumerTarget, DeletionPolicy, IssuerRef, PendingKey, WorkloadKind};
use crate::providers::bounded::Bounded;
use crate::providers::{IssuedKey, KeyRequest, Marker, OwnedKey, Provider, ProviderError, Revocation};

use super::conditions::{ready_condition, Reason, READY};
use super::consumers::{self, Workload, WorkloadObject};
use super::context::{display_name, patch_params, Context, LoadedIssuer, FIELD_MANAGER};
use super::decide::{decide, forced_replacement_wait, forced_replacements_after, IssueReason, Observed, Step};
use super::error::Error;
use super::in_use::IssuerId;
use super::observe;
use super::rotation::{self, RotatingState, RotationSettings};
use super::secret::{self, SecretState};

pub const FINALIZER: &str = "cloudkeys.io/revoke";
/// Upper bound on act-observe rounds in one reconcile; the loop normally ends in 2–4.
const MAX_STEPS: usize = 12;
/// What one reconcile may spend on the apiserver, on top of `--provider-timeout`.
pub const KUBE_TIME_BUDGET: Duration = Duration::from_secs(120);
/// First retry of an AccessKey whose issuer had no free slot, doubling up to the maximum.
const BUSY_RETRY: Duration = Duration::from_secs(1);
const BUSY_RETRY_MAX: Duration = Duration::from_secs(30);
/// How soon an AccessKey triggered from a cache behind this operator's own write is looked at
/// again (the cache is milliseconds behind; status writes trigger no reconcile by themselves).
const OWN_WRITE_WAIT: Duration = Duration::from_millis(300);
/// The longest a timed wait (a renewal, a spec that cannot be acted on) goes unchecked.
const RESYNC: Duration = Duration::from_secs(3600);

pub async fn reconcile(ak: Arc<AccessKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let key = display_name(&*ak);
    let _progress = ctx.health.reconcile_started();
    // Provider calls end by --provider-timeout; this bounds the rest (an apiserver that accepts
    // requests and never answers), so that no reconcile holds a worker for ever.
    let bound = ctx.limits.provider_timeout + KUBE_TIME_BUDGET;
    let result = match tokio::time::timeout(bound, reconcile_inner(ak, &ctx)).await {
        Ok(result) => result,
        Err(_) => Err(Error::TimedOut(bound)),
    };
    crate::metrics::global().reconciled("accesskey", started.elapsed(), result.as_ref().err().map(Error::label));
    match result {
        // Not a failure: the issuer's slots are all taken by other AccessKeys; come back soon.
        Err(Error::IssuerBusy(issuer)) => {
            // Waiting longer each time while the issuer stays busy (a hanging provider), so the
            // queue is not flooded with retries; the next success resets it.
            let turns = ctx.record_failure(&format!("{key}{}", super::context::BUSY));
            let wait = BUSY_RETRY.saturating_mul(1 << turns.min(5)).min(BUSY_RETRY_MAX);
            let jitter = rand::Rng::random_range(&mut rand::rng(), 0.75..1.25);
            tracing::debug!(%issuer, wait_ms = wait.as_millis() as u64, "issuer busy; requeued");
            Ok(Action::requeue(wait.mul_f64(jitter)))
        }
        other => other,
    }
}

async fn reconcile_inner(ak: Arc<AccessKey>, ctx: &Arc<Context>) -> Result<Action, Error> {
    // Issuers come from their caches: until those are complete, "not found" could be wrong.
    if !ctx.health.synced.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // Triggered (by its Secret, say) before the cache has this operator's own last status write:
    // that write's event is a moment away, and deciding now would only earn a conflict.
    if ctx.own_writes.behind_own_write(&ak.uid().unwrap_or_default(), ak.metadata.resource_version.as_deref()) {
        return Ok(Action::requeue(OWN_WRITE_WAIT));
    }
    let ns = ak.namespace().unwrap_or_default();
    let api: Api<AccessKey> = Api::namespaced(ctx.client.clone(), &ns);
    let key = display_name(&*ak);
    let result = finalizer(&api, FINALIZER, ak, |event| async {
        match event {
            FinalizerEvent::Apply(ak) => apply(ak, ctx).await,
            FinalizerEvent::Cleanup(ak) => cleanup(ak, ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    });
    if result.is_ok() {
        ctx.record_success(&key);
        ctx.record_success(&format!("{key}{}", super::context::BUSY));
    }
    result
}

pub fn error_policy(ak: Arc<AccessKey>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&display_name(&*ak));
    let wait = error.backoff(failures);
    tracing::warn!(access_key = %display_name(&*ak), error = %error, kind = error.label(), retry_in_s = wait.as_secs(), "reconcile failed");
    Action::requeue(wait)
}

/// The part of the spec a key is issued for; a change replaces the key.
pub fn spec_hash(ak: &AccessKey) -> String {
    let relevant = serde_json::json!({
        "issuerRef": ak.spec.issuer_ref,
        "provider": ak.spec.provider,
        "secretName": ak.spec.secret_name,
        "data": ak.spec.secret_template.as_ref().and_then(|t| t.data.as_ref()),
    });
    let digest = Sha256::digest(relevant.to_string().as_bytes());
    hex::encode(&digest[..12])
}

/// Everything one reconcile reads from the cluster about an AccessKey.
struct Cluster<'a> {
    ctx: &'a Context,
    ak: &'a AccessKey,
    ns: String,
    uid: String,
    /// The AccessKey's resourceVersion this reconcile last saw: every status write is
    /// conditional on it, so a reconcile that started from a stale cached copy fails with a
    /// conflict instead of overwriting a newer record of a key (and losing track of it).
    resource_version: std::sync::Mutex<Option<String>>,
    /// The issuer slots this reconcile holds, released when it ends.
    slots: std::sync::Mutex<Vec<(String, super::context::IssuerSlot)>>,
    /// When this reconcile stops waiting on providers (`--provider-timeout`).
    deadline: tokio::time::Instant,
    /// The AccessKey's Secret as this reconcile last wrote or read it from the apiserver: newer
    /// than the cache, which sees our own writes only a moment later. `None`: nothing yet.
    secret_seen: std::sync::Mutex<Option<Option<Secret>>>,
    /// Consumers as this reconcile restarted them: newer than the caches.
    workloads_seen: std::sync::Mutex<Vec<Workload>>,
    /// `spec.rotation` with its defaults (an invalid one is reported as the spec's problem).
    settings: RotationSettings,
}

impl<'a> Cluster<'a> {
    fn api(&self) -> Api<AccessKey> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    async fn issuer(&self, r: &IssuerRef) -> Result<Option<LoadedIssuer>, Error> {
        let ctx = self.ctx;
        Ok(ctx.registry.load(&ctx.client, &ctx.caches, &self.ns, r, &ctx.cluster_resource_namespace).await?)
    }

    /// A provider client for revoking or listing through `r`, whatever its Ready condition says.
    async fn provider_of(&self, r: &IssuerRef) -> Result<Arc<dyn Provider>, Error> {
        match self.issuer(r).await? {
            Some(loaded) => {
                let issuer = loaded.display;
                let provider = loaded.provider.map_err(|cause| Error::IssuerUnusable { issuer, cause })?;
                self.at_provider(r, provider).await
            }
            None => Err(Error::IssuerNotFound(format!("{} {}", observe::kind_name(r), r.name))),
        }
    }

    /// `provider`, bounded by this reconcile's deadline, once this reconcile holds one of the
    /// issuer's slots (`--issuer-concurrency`): when all are taken, `Error::IssuerBusy` sends the
    /// AccessKey back to the queue instead of letting it hold a worker.
    async fn at_provider(&self, r: &IssuerRef, provider: Arc<dyn Provider>) -> Result<Arc<dyn Provider>, Error> {
        let issuer = IssuerId::from_ref(r, &self.ns).to_string();
        // The built-in provider answers from memory: it can neither hang nor hold a worker.
        let networked = provider.name() != "local";
        let held = self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|(held, _)| *held == issuer);
        if networked && !held {
            let slot = self.ctx.issuer_slot(&issuer).await.ok_or_else(|| Error::IssuerBusy(issuer.clone()))?;
            self.slots.lock().unwrap_or_else(|p| p.into_inner()).push((issuer, slot));
        }
        Ok(Arc::new(Bounded::new(provider, self.deadline)))
    }

    /// Lets go of the issuer slots held so far: once the provider has answered, the apiserver
    /// writes that follow need no slot, and the next AccessKey of the issuer may go.
    fn release_slots(&self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn new(ctx: &'a Context, ak: &'a AccessKey) -> Self {
        Cluster {
            ctx,
            ak,
            ns: ak.namespace().unwrap_or_default(),
            uid: ak.uid().unwrap_or_default(),
            resource_version: std::sync::Mutex::new(ak.resource_version()),
            slots: std::sync::Mutex::new(Vec::new()),
            deadline: tokio::time::Instant::now() + ctx.limits.provider_timeout,
            secret_seen: std::sync::Mutex::new(None),
            workloads_seen: std::sync::Mutex::new(Vec::new()),
            settings: RotationSettings::of(&ak.spec).unwrap_or_default(),
        }
    }

    /// The workloads `spec.consumers` names, from the caches (or as this reconcile restarted
    /// them). Looked up only while a replaced key waits for them.
    fn observed_consumers(&self, status: &AccessKeyStatus) -> Vec<Workload> {
        if !observe::consumers_wanted(self.ak, status) {
            return Vec::new();
        }
        let workloads = &self.ctx.caches.workloads;
        let (deployments, stateful_sets, daemon_sets) =
            (workloads.deployments.state(), workloads.stateful_sets.state(), workloads.daemon_sets.state());
        let read = observe::WorkloadsRead {
            deployments: &deployments,
            stateful_sets: &stateful_sets,
            daemon_sets: &daemon_sets,
        };
        let mut found = observe::observe_consumers(self.ak, status, read);
        let seen = self.workloads_seen.lock().unwrap_or_else(|p| p.into_inner());
        for w in found.iter_mut() {
            if let Some(newer) = seen.iter().find(|s| s.kind == w.kind && s.name == w.name) {
                *w = newer.clone();
            }
        }
        found
    }

    /// Restarts one consumer for `key_id` (a pod-template annotation; a workload that has it
    /// already is not changed, so this never rolls anything twice for one key).
    async fn restart(&self, target: &ConsumerTarget, key_id: &str) -> Result<(), Error> {
        let patch = Patch::Merge(consumers::restart_patch(key_id));
        let params = patch_params();
        let client = self.ctx.client.clone();
        let name = &target.name;
        let observed = match target.kind {
            WorkloadKind::Deployment => Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client, &self.ns)
                .patch(name, &params, &patch)
                .await?
                .observe(),
            WorkloadKind::StatefulSet => Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client, &self.ns)
                .patch(name, &params, &patch)
                .await?
                .observe(),
            WorkloadKind::DaemonSet => Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client, &self.ns)
                .patch(name, &params, &patch)
                .await?
                .observe(),
        };
        let mut seen = self.workloads_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|w| !(w.kind == observed.kind && w.name == observed.name));
        seen.push(observed);
        Ok(())
    }

    /// The AccessKey's Secret: as last written or read by this reconcile, else from the cache
    /// of the Secrets this operator manages (labelled).
    fn observed_secret(&self) -> Option<Secret> {
        if let Some(seen) = self.secret_seen.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return seen;
        }
        let key = ObjectRef::new(&self.ak.spec.secret_name).within(&self.ns);
        self.ctx.caches.secrets.get(&key).map(|s| s.to_secret())
    }

    fn saw_secret(&self, secret: Option<Secret>) {
        *self.secret_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(secret);
    }

    /// Whether the Secret was read from the apiserver (or written) in this reconcile.
    fn secret_confirmed(&self) -> bool {
        self.secret_seen.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    async fn write_status(&self, status: &mut AccessKeyStatus) -> Result<(), Error> {
        // The Rotating condition follows the replaced keys in every write; `Blocked` stays until
        // a new key is had or none is wanted any more (cleared explicitly).
        if !rotation::is_blocked(&status.conditions) {
            let state = RotatingState::of(status);
            rotation::put_rotating(&mut status.conditions, &state, self.ak.meta().generation, jiff::Timestamp::now());
        }
        let rv = self.resource_version.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": rv},
            "status": status_merge_patch(status),
        });
        let updated = self.api().patch_status(&self.ak.name_any(), &patch_params(), &Patch::Merge(&patch)).await?;
        let cached = || {
            let key = ObjectRef::new(&self.ak.name_any()).within(&self.ns);
            self.ctx.caches.access_keys.get(&key).and_then(|a| a.resource_version())
        };
        self.ctx.own_writes.wrote_status(&self.uid, rv, updated.resource_version(), cached);
        *self.resource_version.lock().unwrap_or_else(|p| p.into_inner()) = updated.resource_version();
        Ok(())
    }

    /// The provider block a pending attempt was made with (the current one if not recorded).
    fn attempt_spec(&self, pending: &PendingKey) -> crate::api::KeyProvider {
        pending
            .provider
            .clone()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_else(|| self.ak.spec.provider.clone())
    }

    /// Puts the Ready condition into `status` (not written yet); false if it was there already.
    fn put_condition(&self, status: &mut AccessKeyStatus, reason: Reason, message: &str) -> bool {
        let generation = self.ak.meta().generation;
        let condition = ready_condition(&status.conditions, reason, message, generation, now());
        let unchanged = status.observed_generation == generation
            && status.conditions.iter().any(|c| {
                c.type_ == READY
                    && c.reason == condition.reason
                    && c.message == condition.message
                    && c.status == condition.status
            });
        if unchanged {
            return false;
        }
        status.conditions.retain(|c| c.type_ != READY);
        status.conditions.insert(0, condition);
        status.observed_generation = generation;
        true
    }

    async fn set_condition(&self, status: &mut AccessKeyStatus, reason: Reason, message: String) -> Result<(), Error> {
        if !self.put_condition(status, reason, &message) {
            return Ok(());
        }
        self.write_status(status).await?;
        // Revoking is progress, announced by the Revoked event that follows.
        if !reason.is_ready() && reason != Reason::Revoking {
            self.ctx.event(self.ak, EventType::Warning, reason.as_str(), message.clone()).await;
        }
        tracing::info!(access_key = %display_name(self.ak), reason = reason.as_str(), %message, "condition");
        Ok(())
    }
}

/// The Ready message of an issued key (compared to tell whether the condition changed).
fn issued_message(key_id: &str, secret: &str) -> String {
    format!("key {key_id} is in Secret {secret}")
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Name users see at the provider before the marker.
fn display_name_at_provider(ak: &AccessKey) -> String {
    if let crate::api::KeyProvider::Exoscale(e) = &ak.spec.provider {
        if let Some(name) = &e.name {
            return name.clone();
        }
    }
    format!("{}-{}", ak.namespace().unwrap_or_default(), ak.name_any())
}

/// The AccessKey as the apiserver has it now, when the cache may be behind and the decision
/// at hand could revoke a key: a recorded attempt is resolved (its keys adopted or revoked), or
/// the AccessKey is deleted. `None`: it is gone.
async fn fresh(ak: &AccessKey, ctx: &Context) -> Result<Option<AccessKey>, Error> {
    let api: Api<AccessKey> = Api::namespaced(ctx.client.clone(), &ak.namespace().unwrap_or_default());
    Ok(api.get_opt(&ak.name_any()).await?)
}

async fn apply(ak: Arc<AccessKey>, ctx: &Context) -> Result<Action, Error> {
    // An interrupted creation is resolved from what the apiserver says, not from a cache that
    // may not have seen the last status write or Secret write yet: deciding from those could
    // revoke the key that is in use.
    let pending = ak.status.as_ref().is_some_and(|s| s.pending.is_some());
    if pending {
        match fresh(&ak, ctx).await? {
            Some(now) if now.resource_version() == ak.resource_version() => {}
            Some(_) => {
                tracing::debug!(access_key = %display_name(&*ak), "cache behind the apiserver; looking again shortly");
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            None => return Ok(Action::await_change()),
        }
    }
    let cluster = Cluster::new(ctx, &ak);
    if pending {
        cluster.saw_secret(cluster.secrets().get_opt(&ak.spec.secret_name).await?);
    }
    let mut status = ak.status.clone().unwrap_or_default();
    let hash = spec_hash(&ak);
    let issuer_ref = ak.spec.issuer_ref.clone();
    let issuer = cluster.issuer(&issuer_ref).await?;
    let facts = issuer.as_ref().map(LoadedIssuer::facts);
    let issuer_state = observe::issuer_state(&issuer_ref, facts.as_ref());
    let problem = observe::spec_problem(&ak, facts.as_ref());
    let key = display_name(&*ak);
    let mut owned: Option<Vec<OwnedKey>> = None;
    let mut retired_tried = false;
    let mut retired_failure: Option<usize> = None;

    for _ in 0..MAX_STEPS {
        let observed_secret = cluster.observed_secret();
        let secret_state = secret::observe_secret(&ak, observed_secret.as_ref());
        let now = jiff::Timestamp::now();
        let observed_consumers = cluster.observed_consumers(&status);
        let provider_view = ctx.provider_view(&key, status.access_key_id.as_deref());
        let denial: Option<String>;
        let mut observed = Observed {
            owned_keys: owned.as_deref(),
            retired_tried,
            blocked_until: ctx.blocked_until(&key, &hash),
            revoked_at_provider: ctx.is_revoked_externally(&key, status.access_key_id.as_deref()),
            provider_view: provider_view.as_ref(),
            ..observe::observed(
                &status,
                ak.annotations(),
                problem.clone(),
                issuer_state.clone(),
                &issuer_ref,
                &hash,
                &secret_state,
                &cluster.settings,
                &observed_consumers,
                now,
            )
        };
        let mut step = decide(&observed);
        // The policy is looked at only when a key is to be minted (it may need a read).
        if let (Step::Issue { .. }, Some(i)) = (&step, issuer.as_ref()) {
            denial = policy_denial(&cluster, i).await?;
            if denial.is_some() {
                observed.policy_denial = denial.as_deref();
                step = decide(&observed);
            }
        }
        tracing::debug!(access_key = %display_name(&*ak), ?step, "step");
        if let Step::Issue { reason } = step {
            warn_of_secret_fight(&cluster, &status, reason, now).await;
        }
        let revoking_retired = step == Step::RevokeRetired;
        // A replacement whose Secret still holds the current key: a refusal leaves it working.
        let replacing = match step {
            Step::Issue { reason } if reason != IssueReason::FirstKey && !reason.is_forced_by_secret() => Some(reason),
            _ => None,
        };
        let outcome = act(&cluster, &mut status, step, issuer.as_ref(), &hash, &mut owned, &mut retired_tried).await;
        match outcome {
            // A replaced key that could not be revoked: the AccessKey itself is fine, but the
            // next try follows the error backoff, never a fixed short requeue.
            Ok(Some(_)) if retired_failure.is_some() => {
                return Err(Error::RetiredNotRevoked(retired_failure.take().unwrap_or_default()));
            }
            Ok(Some(action)) => return Ok(action),
            Ok(None) if revoking_retired && status.retired.iter().any(|r| rotation::retired_due(r, now)) => {
                retired_failure = Some(status.retired.len());
                continue;
            }
            // The provider refused the new key (a quota, a permission): the current one stays,
            // and so does Ready. A transient failure takes the usual path and is retried soon.
            Err(Error::Provider(pe)) if replacing.is_some() && pe.kind != crate::providers::ErrorKind::Retryable => {
                let reason = replacing.unwrap_or(IssueReason::SpecChanged);
                return rotation_blocked(&cluster, &mut status, reason, &hash, &pe).await;
            }
            Ok(None) => continue,
            Err(e) => {
                if let Error::Provider(pe) = &e {
                    let message = provider_message(pe);
                    cluster.set_condition(&mut status, Reason::ProviderError, message).await?;
                }
                return Err(e);
            }
        }
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Why the issuer's policy refuses the key this AccessKey asks for, if it does: the namespace's
/// labels are read only for a ClusterKeyIssuer that selects namespaces by them, and the keys of
/// the namespace are counted from the cache only under `maxKeysPerNamespace`.
async fn policy_denial(c: &Cluster<'_>, issuer: &LoadedIssuer) -> Result<Option<String>, Error> {
    let facts = issuer.facts();
    let labels = if observe::needs_namespace_labels(&facts, &c.ns) {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.ctx.client.clone());
        api.get_opt(&c.ns).await?.and_then(|n| n.metadata.labels)
    } else {
        None
    };
    let keys_in_namespace = if observe::counts_keys(&facts) {
        observe::keys_in_namespace(c.ak, c.ctx.caches.access_keys.state().iter().map(|a| &**a))
    } else {
        0
    };
    Ok(observe::policy_denial(&facts, c.ak, labels.as_ref(), keys_in_namespace))
}

/// A new key refused by the provider while the current one works: the current key stays in the
/// Secret and live, `Ready` stays as it is, `Rotating=False` says why, and the attempt is
/// tried again after a backoff (1 min doubling to 1 h). The current key is never revoked to
/// make room: that would trade a working workload for a quota.
async fn rotation_blocked(
    c: &Cluster<'_>,
    status: &mut AccessKeyStatus,
    reason: IssueReason,
    hash: &str,
    error: &ProviderError,
) -> Result<Action, Error> {
    let key = display_name(c.ak);
    let wait = rotation::blocked_retry(c.ctx.refusals(&key));
    let until = jiff::Timestamp::now() + jiff::SignedDuration::try_from(wait).unwrap_or_default();
    c.ctx.block(&key, hash, until);
    let current = status.access_key_id.clone().unwrap_or_default();
    let message = format!(
        "no new key ({}): {}; key {current} stays in Secret {} and live; next try in {}",
        reason.describe(),
        provider_message(error),
        c.ak.spec.secret_name,
        crate::api::duration::format_duration(wait),
    );
    rotation::put_rotating(
        &mut status.conditions,
        &RotatingState::Blocked(message.clone()),
        c.ak.meta().generation,
        jiff::Timestamp::now(),
    );
    c.write_status(status).await?;
    crate::metrics::global().rotation_blocked(c.ak.spec.provider.name());
    tracing::warn!(access_key = %key, reason = reason.describe(), retry_in_s = wait.as_secs(), error = %error, "rotation blocked");
    c.ctx.event(c.ak, EventType::Warning, "RotationBlocked", message).await;
    Ok(Action::requeue(wait))
}

/// A Warning event when the Secret forces a replacement again and again (another controller
/// writing it, a sync tool deleting it): names the last writer and the next wait.
async fn warn_of_secret_fight(c: &Cluster<'_>, status: &AccessKeyStatus, reason: IssueReason, now: jiff::Timestamp) {
    let forced = forced_replacements_after(reason, status, now);
    if forced < 2 {
        return;
    }
    let secret = &c.ak.spec.secret_name;
    // Read afresh: the cache keeps no managedFields, and this is rare.
    let observed = c.secrets().get_opt(secret).await.ok().flatten();
    let what = match observed.as_ref().and_then(last_writer) {
        Some(manager) => format!("was overwritten again, last by field manager {manager:?}"),
        None if reason == IssueReason::SecretDeleted => "was deleted again".to_string(),
        None => "was overwritten again".to_string(),
    };
    let wait = humantime::format_duration(forced_replacement_wait(forced));
    let note = format!(
        "Secret {secret} {what} soon after a new key was written ({forced} replacements in a row): \
         something else is fighting over it; the next replacement waits {wait}"
    );
    c.ctx.event(c.ak, EventType::Warning, "SecretOverwritten", note).await;
}

/// The field manager that changed the Secret last, other than this operator.
fn last_writer(secret: &Secret) -> Option<String> {
    secret
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref().is_some_and(|m| m != FIELD_MANAGER))
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .and_then(|m| m.manager.clone())
}

fn provider_message(e: &ProviderError) -> String {
    match e.kind {
        crate::providers::ErrorKind::Auth => format!("the issuer's credentials were refused: {e}"),
        crate::providers::ErrorKind::Permanent => format!("the provider refused the request: {e}"),
        crate::providers::ErrorKind::Retryable => format!("provider call failed, will retry: {e}"),
    }
}

/// Carries out one step. `Ok(Some(_))` ends the reconcile; `Ok(None)` observes again.
async fn act(
    c: &Cluster<'_>,
    status: &mut AccessKeyStatus,
    step: Step,
    issuer: Option<&LoadedIssuer>,
    hash: &str,
    owned: &mut Option<Vec<OwnedKey>>,
    retired_tried: &mut bool,
) -> Result<Option<Action>, Error> {
    let settings = &c.settings;
    match step {
        Step::ListOwnedKeys => {
            let pending = status.pending.clone().ok_or(Error::NoPendingAttempt)?;
            let provider = c.provider_of(&pending.issuer).await?;
            *owned = Some(provider.find_keys(&c.uid, &c.attempt_spec(&pending)).await?);
            Ok(None)
        }
        Step::Adopt(key) => {
            // The attempt stays recorded: the next step revokes whatever else it left behind.
            let pending = status.pending.clone().ok_or(Error::NoPendingAttempt)?;
            let grace = pending.grace_period_seconds.map_or(settings.grace_period, Duration::from_secs);
            retire_current(status, grace, jiff::Timestamp::now());
            if pending.rotate_request.is_some() {
                status.last_rotate_request = pending.rotate_request.clone();
            }
            status.consumers.clear();
            status.access_key_id = key.access_key_id.clone();
            status.key_ref = Some(key.key_ref.clone());
            status.issued_by = Some(pending.issuer.clone());
            // The expiry was in the create answer that never arrived: the attempt's start plus the
            // lifetime asked for is a little early, so renewal errs on the safe side.
            let lifetime = match c.provider_of(&pending.issuer).await {
                Ok(p) => p.lifetime(&c.attempt_spec(&pending)),
                Err(_) => None,
            };
            let started = pending.started_at.0;
            let expires =
                lifetime.and_then(|l| jiff::SignedDuration::try_from(l).ok()).and_then(|l| started.checked_add(l).ok());
            status.expires_at = expires.map(Time);
            status.renewal_time = expires.map(|e| Time(renewal_time(started, e)));
            status.issued_at = Some(pending.started_at.clone());
            status.key_spec_hash = Some(pending.spec_hash.clone().unwrap_or_else(|| hash.to_string()));
            status.secret_name = Some(c.ak.spec.secret_name.clone());
            status.next_rotation_time = rotation::next_rotation_time(status, settings).map(Time);
            c.write_status(status).await?;
            let id = key.access_key_id.unwrap_or_default();
            let (event, note) = match status.retired.last() {
                Some(old) if pending.grace_period_seconds.is_some() => {
                    crate::metrics::global().rotated("adopted");
                    (
                        "Rotated",
                        format!(
                            "key {id} replaces {} in Secret {} (adopted after an interruption)",
                            old.access_key_id, c.ak.spec.secret_name
                        ),
                    )
                }
                _ => ("Issued", format!("adopted key {id} created before an interruption")),
            };
            c.ctx.event(c.ak, EventType::Normal, event, note).await;
            Ok(None)
        }
        Step::ResolvePending { revoke } => {
            let pending = status.pending.clone().ok_or(Error::NoPendingAttempt)?;
            if !revoke.is_empty() {
                let provider = c.provider_of(&pending.issuer).await?;
                for k in &revoke {
                    let id = k.access_key_id.clone().unwrap_or_else(|| k.key_ref.clone());
                    if revoke_recorded(c, provider.as_ref(), &k.key_ref, &id).await? {
                        let note = format!("revoked key {id} left by an interrupted creation");
                        c.ctx.event(c.ak, EventType::Normal, "Revoked", note).await;
                    }
                }
            }
            status.pending = None;
            c.write_status(status).await?;
            *owned = None;
            Ok(None)
        }
        Step::RevokeRetired => {
            *retired_tried = true;
            let mut kept = Vec::new();
            let mut busy = None;
            let now = jiff::Timestamp::now();
            for r in std::mem::take(&mut status.retired) {
                if busy.is_some() || !rotation::retired_due(&r, now) {
                    kept.push(r);
                    continue;
                }
                crashpoint("before-retired-revoke");
                let revoked = match c.provider_of(&r.issuer).await {
                    Ok(p) => revoke_recorded(c, p.as_ref(), &r.key_ref, &r.access_key_id).await,
                    Err(e) => Err(e),
                };
                match revoked {
                    // Its turn comes: not a failure worth a Warning.
                    Err(e @ Error::IssuerBusy(_)) => {
                        busy = Some(e);
                        kept.push(r);
                    }
                    // Refused (and said so): the entry goes, nothing is retried.
                    Ok(false) => {}
                    Ok(true) => {
                        c.ctx
                            .event(
                                c.ak,
                                EventType::Normal,
                                "Revoked",
                                format!("revoked replaced key {}", r.access_key_id),
                            )
                            .await
                    }
                    Err(e) => {
                        crate::metrics::global().revocation_failed(c.ak.spec.provider.name());
                        let note = format!("cannot revoke replaced key {} yet: {e}", r.access_key_id);
                        c.ctx.event(c.ak, EventType::Warning, "RevocationFailed", note).await;
                        kept.push(r);
                    }
                }
            }
            status.retired = kept;
            c.write_status(status).await?;
            match busy {
                Some(e) => Err(e),
                None => Ok(None),
            }
        }
        Step::Issue { reason } => {
            let r = &c.ak.spec.issuer_ref;
            let issuer =
                issuer.ok_or_else(|| Error::IssuerNotFound(format!("{} {}", observe::kind_name(r), r.name)))?;
            let unusable = |cause| Error::IssuerUnusable { issuer: issuer.display.clone(), cause };
            let provider = c.at_provider(r, issuer.provider.clone().map_err(unusable)?).await?;
            issue(c, status, provider, hash, reason).await?;
            Ok(None)
        }
        Step::RestartConsumers(targets) => {
            crashpoint("before-consumer-restart");
            let key_id = status.access_key_id.clone().unwrap_or_default();
            for t in &targets {
                c.restart(t, &key_id).await?;
                crate::metrics::global().consumer_restarted(t.kind.as_str());
            }
            crashpoint("after-consumer-restart");
            let names: Vec<String> = targets.iter().map(|t| format!("{}/{}", t.kind.as_str(), t.name)).collect();
            tracing::info!(access_key = %display_name(c.ak), key_id = %key_id, consumers = ?names, "consumers restarted");
            let note = format!("restarted {} for key {key_id}", names.join(", "));
            c.ctx.event(c.ak, EventType::Normal, "ConsumersRestarted", note).await;
            Ok(None)
        }
        Step::RecordConsumers { consumers, start_grace, timed_out } => {
            status.consumers = consumers;
            if start_grace {
                rotation::start_grace(status, jiff::Timestamp::now());
            }
            c.write_status(status).await?;
            if !timed_out.is_empty() {
                let names: Vec<String> = timed_out.iter().map(|t| format!("{}/{}", t.kind.as_str(), t.name)).collect();
                for t in &timed_out {
                    crate::metrics::global().rollout_timed_out(t.kind.as_str());
                }
                let note = format!(
                    "{} did not roll out within rolloutTimeout ({}); the grace period of the replaced key starts anyway",
                    names.join(", "),
                    crate::api::duration::format_duration(settings.rollout_timeout)
                );
                c.ctx.event(c.ak, EventType::Warning, "RolloutTimeout", note).await;
            }
            Ok(None)
        }
        Step::UpdateSchedule(next) => {
            status.next_rotation_time = next.map(Time);
            c.write_status(status).await?;
            Ok(None)
        }
        Step::WaitBeforeReplacing(reason, wait) => {
            tracing::info!(access_key = %display_name(c.ak), reason = reason.describe(), wait_s = wait.as_secs(), "replacing the key after a wait");
            // Back sooner if a replaced key is due for revocation (or its rollout for a timeout).
            let due = rotation::next_wakeup(status, settings)
                .map(|t| Duration::try_from(t.duration_since(jiff::Timestamp::now())).unwrap_or(Duration::ZERO));
            let wait = due.map_or(wait, |d| d.min(wait));
            Ok(Some(Action::requeue(wait.max(Duration::from_secs(1)))))
        }
        Step::RecordProviderView { last_used_at, expires_at } => {
            if let Some(t) = last_used_at {
                status.last_used_at = Some(Time(rotation::whole_seconds(t)));
            }
            if let Some(expires) = expires_at {
                let id = status.access_key_id.clone().unwrap_or_default();
                let shown = |t: Option<jiff::Timestamp>| t.map_or_else(|| "never".to_string(), |t| t.to_string());
                let recorded = status.expires_at.as_ref().map(|t| t.0);
                let note = format!(
                    "the provider says key {id} expires {}, not {} as recorded; renewal follows the provider's date",
                    shown(expires),
                    shown(recorded)
                );
                c.ctx.event(c.ak, EventType::Warning, "KeyExpiryChanged", note).await;
                let issued = status.issued_at.as_ref().map_or(jiff::Timestamp::now(), |t| t.0);
                status.expires_at = expires.map(|e| Time(rotation::whole_seconds(e)));
                status.renewal_time = expires.map(|e| Time(renewal_time(issued, e)));
                status.next_rotation_time = rotation::next_rotation_time(status, settings).map(Time);
            }
            c.write_status(status).await?;
            Ok(None)
        }
        Step::UpdateSecretMetadata => {
            let key_id = status.access_key_id.clone().unwrap_or_default();
            let Some(observed) = c.observed_secret() else {
                return Ok(None);
            };
            let desired = secret::metadata_update(c.ak, &key_id, &observed);
            let patched = c
                .secrets()
                .patch(&c.ak.spec.secret_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired))
                .await?;
            c.saw_secret(Some(patched));
            Ok(None)
        }
        Step::Ready => {
            let id = status.access_key_id.clone().unwrap_or_default();
            // Nothing to replace any more: a block of an earlier attempt is over.
            c.ctx.unblock(&display_name(c.ak));
            let rotating = RotatingState::of(status);
            let now = jiff::Timestamp::now();
            let changed = c.put_condition(status, Reason::Issued, &issued_message(&id, &c.ak.spec.secret_name));
            if rotation::put_rotating(&mut status.conditions, &rotating, c.ak.meta().generation, now) || changed {
                c.write_status(status).await?;
                tracing::info!(access_key = %display_name(c.ak), key_id = %id, rotating = ?rotating, "ready");
            }
            // Only what is due by the clock (a revocation, a rollout's timeout, a rotation) has a
            // timer; every other change (AccessKey, Secret, issuer, credentials, consumers)
            // arrives by watch. No timer for the rest also means nothing held per AccessKey in
            // the scheduler, which at 10,000 keys is megabytes.
            let requeue = rotation::next_wakeup(status, settings).map(|t| {
                let secs = t.duration_since(now).as_secs().max(1);
                Duration::from_secs(u64::try_from(secs).unwrap_or(1)).min(RESYNC)
            });
            Ok(Some(requeue.map_or_else(Action::await_change, Action::requeue)))
        }
        Step::NotReady(reason, message) => {
            c.set_condition(status, reason, message).await?;
            let wait = match reason {
                Reason::InvalidSpec | Reason::SecretConflict => RESYNC,
                _ => Duration::from_secs(60),
            };
            Ok(Some(Action::requeue(wait)))
        }
    }
}

/// The status as a JSON merge patch that also clears every field the status no longer has.
///
/// A merge patch rather than server-side apply: the 1.20 apiserver leaves an empty `pending: {}`
/// behind when an applied configuration drops an object's fields, which the schema rejects.
pub fn status_merge_patch(status: &AccessKeyStatus) -> serde_json::Value {
    // The status's fields, from its schema once: generating the schema on every write was most
    // of what a status write allocated.
    static FIELDS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        let schema = schemars::schema_for!(AccessKeyStatus);
        schema.get("properties").and_then(|p| p.as_object()).map(|p| p.keys().cloned().collect()).unwrap_or_default()
    });
    let mut value = serde_json::to_value(status).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(map) = value.as_object_mut() {
        for field in FIELDS.iter() {
            map.entry(field.clone()).or_insert(serde_json::Value::Null);
        }
    }
    value
}

/// Moves the current key, if any, to the keys awaiting revocation: it waits for the consumers
/// of its successor, then `grace`.
fn retire_current(status: &mut AccessKeyStatus, grace: Duration, now: jiff::Timestamp) {
    let expires_at = status.expires_at.take();
    if let (Some(id), Some(key_ref), Some(issuer)) =
        (status.access_key_id.take(), status.key_ref.take(), status.issued_by.take())
    {
        if !status.retired.iter().any(|r| r.key_ref == key_ref) {
            status.retired.push(rotation::retire(id, key_ref, issuer, expires_at, grace, now));
        }
    }
    status.renewal_time = None;
}

/// Creates a key and writes it to the Secret, in the crash-safe order described above.
async fn issue(
    c: &Cluster<'_>,
    status: &mut AccessKeyStatus,
    provider: Arc<dyn Provider>,
    hash: &str,
    reason: IssueReason,
) -> Result<(), Error> {
    let ak = c.ak;
    let settings = &c.settings;
    let rotate_request = ak.annotations().get(rotation::ROTATE_ANNOTATION).cloned();
    let grace = rotation::grace_for_replacement(ak.annotations(), status, settings)?;
    // The old key is dead: nothing to wait for before it goes from the status.
    let grace = if reason == IssueReason::RevokedAtProvider { Duration::ZERO } else { grace };
    let marker = Marker::new_attempt(&c.uid).within(&c.ctx.installation);
    // (0) Nothing revoking this key will need can be deleted from under it (namespace deletion).
    super::in_use::hold_before_issuing(c.ctx, &ak.spec.issuer_ref, &c.ns).await?;
    // A Secret that cannot be written would cost a key per attempt: try the write first, with
    // placeholder data. It also checks what the cache showed: a conflict means a Secret of that
    // name exists after all (someone else's, or ours stripped of its labels) or changed since;
    // then it is read from the apiserver and the decision taken again.
    match write_secret(c, &provider, None).await {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 && !c.secret_confirmed() => {
            c.saw_secret(c.secrets().get_opt(&ak.spec.secret_name).await?);
            return Ok(());
        }
        other => other?,
    }
    // (1) The intent is durable before the provider is asked for anything.
    status.pending = Some(Box::new(PendingKey {
        attempt: marker.attempt().to_string(),
        issuer: ak.spec.issuer_ref.clone(),
        started_at: now(),
        provider: serde_json::to_value(&ak.spec.provider).ok(),
        spec_hash: Some(hash.to_string()),
        rotate_request: rotate_request.clone(),
        grace_period_seconds: status.access_key_id.is_some().then_some(grace.as_secs()),
    }));
    c.write_status(status).await?;
    crashpoint("after-intent");

    // (2) Create. If this fails or never answers, the recorded attempt leads the next
    // reconcile to whatever the provider did create.
    let started = jiff::Timestamp::now();
    let request = KeyRequest {
        marker: &marker,
        display_name: display_name_at_provider(ak),
        spec: &ak.spec.provider,
        now: started,
    };
    let created = provider.create_key(&request).await;
    c.release_slots();
    let key = created?;
    crashpoint("after-create");

    // (3) The only copy of the secret goes into the Secret; if that fails, the key goes at once.
    if let Err(e) = write_secret(c, &provider, Some(&key)).await {
        match provider.revoke_key(&key.key_ref, &c.uid).await {
            Ok(r) if r.is_done() => {
                status.pending = None;
                let _ = c.write_status(status).await;
            }
            Ok(refused) => {
                tracing::warn!(access_key = %display_name(ak), ?refused, "the unwritten key was not revoked; it will be found by its marker")
            }
            Err(re) => {
                tracing::warn!(access_key = %display_name(ak), error = %re, "cannot revoke the unwritten key; it will be found by its marker")
            }
        }
        return Err(e);
    }

    crashpoint("after-secret-write");

    // (4) Record the key. The replaced one stays live: its consumers are restarted next, and it
    // is revoked once they rolled out and its grace period is over.
    let replaced = status.access_key_id.clone();
    let forced = forced_replacements_after(reason, status, started);
    status.forced_replacements = (forced > 0).then_some(forced);
    retire_current(status, grace, jiff::Timestamp::now());
    // Any new key answers the rotation asked for.
    if rotate_request.is_some() {
        status.last_rotate_request = rotate_request;
    }
    status.consumers.clear();
    status.pending = None;
    status.access_key_id = Some(key.access_key_id.clone());
    status.key_ref = Some(key.key_ref.clone());
    status.issued_by = Some(ak.spec.issuer_ref.clone());
    status.issued_at = Some(Time(started));
    status.expires_at = key.expires_at.map(Time);
    status.renewal_time = key.expires_at.map(|exp| Time(renewal_time(started, exp)));
    status.key_spec_hash = Some(hash.to_string());
    status.secret_name = Some(ak.spec.secret_name.clone());
    status.next_rotation_time = rotation::next_rotation_time(status, settings).map(Time);
    // Ready in the same write: the new key works, whatever the replaced one still waits for.
    c.put_condition(status, Reason::Issued, &issued_message(&key.access_key_id, &ak.spec.secret_name));
    let state = RotatingState::of(status);
    rotation::put_rotating(&mut status.conditions, &state, ak.meta().generation, started);
    c.write_status(status).await?;
    c.ctx.unblock(&display_name(ak));
    c.ctx.replaced(&display_name(ak));
    crate::metrics::global().rotated(reason.label());
    let (event, note) = match replaced {
        Some(old) => (
            "Rotated",
            format!(
                "key {} replaces {old} in Secret {}: {} (reason {reason:?})",
                key.access_key_id,
                ak.spec.secret_name,
                reason.describe()
            ),
        ),
        None => ("Issued", format!("issued key {} into Secret {}", key.access_key_id, ak.spec.secret_name)),
    };
    tracing::info!(access_key = %display_name(ak), key_id = %key.access_key_id, reason = reason.describe(), "{event}");
    c.ctx.event(ak, EventType::Normal, event, note).await;
    Ok(())
}

/// Dies on the spot when `CLOUDKEYS_CRASH_AT` names this point: the crash-safety tests kill the
/// operator between the steps of a creation. Unset in production; reading it costs nothing.
fn crashpoint(name: &str) {
    if std::env::var("CLOUDKEYS_CRASH_AT").is_ok_and(|v| v == name) {
        tracing::error!(crashpoint = name, "CLOUDKEYS_CRASH_AT reached: aborting");
        std::process::abort();
    }
}

/// When a third of the key's lifetime remains.
pub fn renewal_time(issued: jiff::Timestamp, expires: jiff::Timestamp) -> jiff::Timestamp {
    let lifetime = expires.duration_since(issued);
    issued.checked_add(lifetime * 2 / 3).unwrap_or(expires)
}

/// Writes the key into the Secret; with no key, a server-side dry run of the same write with
/// placeholder data (admission, quota and RBAC answer as for the real one).
async fn write_secret(c: &Cluster<'_>, provider: &Arc<dyn Provider>, key: Option<&IssuedKey>) -> Result<(), Error> {
    let placeholder = secrecy::SecretString::from("dry-run");
    let (id, value) = match key {
        Some(k) => (k.access_key_id.as_str(), &k.secret),
        None => ("DRYRUN", &placeholder),
    };
    let data = secret::render_data(c.ak, provider.name(), &provider.template_vars(), id, value)?;
    let key_id = id;
    let api = c.secrets();
    let dry_run = key.is_none();
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), dry_run };
    match c.observed_secret() {
        // Create, not apply: if someone else creates it meanwhile, the create fails with a
        // conflict instead of taking their Secret over.
        None => {
            let created = api.create(&params, &secret::desired_secret(c.ak, key_id, &data)).await?;
            if !dry_run {
                c.saw_secret(Some(created));
            }
        }
        // Replace, guarded by the observed resourceVersion: the data becomes exactly the
        // rendered data (keys of an old template go), and nobody's concurrent change is lost.
        Some(existing) => {
            if secret::observe_secret(c.ak, Some(&existing)) == SecretState::Foreign {
                return Err(Error::SecretForeign(c.ak.spec.secret_name.clone()));
            }
            let desired = secret::replaced_secret(c.ak, key_id, &data, existing);
            let replaced = api.replace(&c.ak.spec.secret_name, &params, &desired).await?;
            if !dry_run {
                c.saw_secret(Some(replaced));
            }
        }
    }
    Ok(())
}

/// Everything that happens when an AccessKey is deleted.
///
/// `Delete`: every key this AccessKey created — the current one, replaced ones, and any left by an
/// interrupted creation (found by marker) — is revoked; then the finalizer goes and the Secret
/// follows by garbage collection. If revocation fails the finalizer stays and the condition says
/// why. `Retain`: the Secret is released (owner reference removed) and the current key kept.
async fn cleanup(ak: Arc<AccessKey>, ctx: &Context) -> Result<Action, Error> {
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
async fn revoke_all(c: &Cluster<'_>, status: &AccessKeyStatus, keep: Option<&str>) -> Result<Vec<String>, Error> {
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
async fn revoke_recorded(c: &Cluster<'_>, provider: &dyn Provider, key_ref: &str, id: &str) -> Result<bool, Error> {
    match provider.revoke_key(key_ref, &c.uid).await? {
        Revocation::NotOwned(why) => {
            crate::metrics::global().revocation_refused(provider.name());
            tracing::warn!(access_key = %display_name(c.ak), key = %id, %why, "not revoking a key this AccessKey does not own");
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
async fn release_secret(c: &Cluster<'_>) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patch_clears_fields_that_are_gone() {
        let patch =
            status_merge_patch(&AccessKeyStatus { access_key_id: Some("K".into()), ..AccessKeyStatus::default() });
        assert_eq!(patch["accessKeyId"], "K");
        assert!(patch["pending"].is_null() && patch.get("pending").is_some());
        assert!(patch["keyRef"].is_null() && patch["retired"].is_null());
    }

    #[test]
    fn renewal_happens_when_a_third_of_the_lifetime_remains() {
        let issued: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("ts");
        let expires: jiff::Timestamp = "2026-01-01T03:00:00Z".parse().expect("ts");
        assert_eq!(renewal_time(issued, expires), "2026-01-01T02:00:00Z".parse::<jiff::Timestamp>().expect("ts"));
    }

    #[test]
    fn spec_hash_ignores_labels_but_not_data_templates() {
        let base = serde_json::json!({"issuerRef": {"name": "i"}, "secretName": "s", "local": {}});
        let ak = |spec: serde_json::Value| -> AccessKey {
            serde_json::from_value(serde_json::json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
                "metadata": {"name": "k", "namespace": "n"}, "spec": spec}))
            .expect("AccessKey")
        };
        let mut labels = base.clone();
        labels["secretTemplate"] = serde_json::json!({"labels": {"a": "b"}});
        let mut data = base.clone();
        data["secretTemplate"] = serde_json::json!({"data": {"K": "{{ accessKeyId }}"}});
        let mut renamed = base.clone();
        renamed["secretName"] = serde_json::json!("t");
        assert_eq!(spec_hash(&ak(base.clone())), spec_hash(&ak(labels)));
        assert_ne!(spec_hash(&ak(base.clone())), spec_hash(&ak(data)));
        assert_ne!(spec_hash(&ak(base)), spec_hash(&ak(renamed)));
    }
}
