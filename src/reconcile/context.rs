//! What every reconcile shares: the client, the provider clients of each issuer, and the
//! failure counters that drive backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::health::Health;
use crate::providers::http::HttpConfig;
use crate::providers::policy_read::{Answer, Question};

use super::fair_share::{FairShare, Share};
use super::memory::{one_more, Memories};
use super::namespace_keys::NamespaceKeys;
pub use super::registry::{LoadedIssuer, Registry};
pub(crate) use super::sync::lock;
use crate::core::decide::ProviderView;
use crate::core::guard::TenantGuard;
use crate::core::issuers::IssuerId;

pub const FIELD_MANAGER: &str = "cloudkeys";

/// Parameters of a patch that is not an apply: named, so that managedFields (and `kubectl`)
/// show this operator as the writer instead of "unknown".
pub fn patch_params() -> kube::api::PatchParams {
    kube::api::PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

pub struct Context {
    pub client: Client,
    pub reporter: Reporter,
    /// Where ClusterKeyIssuers' Secrets live.
    pub cluster_resource_namespace: String,
    pub registry: Registry,
    pub caches: Caches,
    pub health: Arc<Health>,
    pub limits: Limits,
    /// Per object (AccessKeys and issuers by display name): backoffs, refusals, drift findings.
    memories: Memories,
    /// This operator's status writes the AccessKey cache does not show yet.
    pub own_writes: OwnStatusWrites,
    checks: Mutex<HashMap<String, CheckState>>,
    /// Per issuer: the reconciles that may wait on its provider at once.
    issuer_slots: Mutex<HashMap<String, Arc<IssuerSlots>>>,
    /// The places of all issuers together among the workers (a slot takes one of each).
    fair_share: Arc<FairShare>,
    /// Per issuer: one reconcile at a time sets its in-use hold (see [`Context::hold_writer`]).
    hold_writers: Mutex<HashMap<String, HoldWriter>>,
    /// Written into every new ownership marker (see `installation`).
    pub installation: String,
    /// Places taken under `maxKeysPerNamespace` that the AccessKey cache does not show yet.
    pub namespace_keys: NamespaceKeys,
    /// Per issuer and question: what the provider answered a policy question (see
    /// [`POLICY_ANSWER_TTL`]).
    policy_answers: Mutex<HashMap<(String, Question), PolicyAnswer>>,
}

/// How long the provider's answer to a policy question is used before it is read again. A
/// role's policy, or which user owns a key, can change at the provider without the cluster
/// seeing it; a minute bounds how long a change goes unnoticed (a denied AccessKey is looked at
/// again every minute too), while a burst of AccessKeys naming one role or user costs one read
/// a minute per issuer. Errors are not kept: the next reconcile asks again. AccessKeys that ask
/// the same question at the same moment each read: like any provider call, their reads take
/// the issuer's slots (`--issuer-concurrency`), so a provider that hangs on them holds no more
/// workers than it would otherwise, where waiting for one another's answer would hold them all.
pub const POLICY_ANSWER_TTL: Duration = Duration::from_secs(60);

pub struct PolicyAnswer {
    /// The issuer's fingerprint when it was read: new credentials may be another identity.
    pub fingerprint: String,
    pub read_at: Instant,
    pub answer: Answer,
}

impl PolicyAnswer {
    pub fn new(fingerprint: &str, answer: Answer) -> Self {
        Self { fingerprint: fingerprint.to_string(), read_at: Instant::now(), answer }
    }

    /// Still to be used for an issuer with this fingerprint.
    pub fn current(&self, fingerprint: &str) -> bool {
        self.fingerprint == fingerprint && self.read_at.elapsed() < POLICY_ANSWER_TTL
    }
}

/// Taken by the reconcile that may write an issuer's in-use hold. Inside: the resourceVersion
/// the issuer had when this operator last made sure of its hold (`None` once it let go), so that
/// the reconciles queued behind that write do not write it again while the cache still shows the
/// issuer as it was before.
pub type HoldWriter = Arc<tokio::sync::Mutex<Option<String>>>;

/// By AccessKey uid, until the cache shows this operator's last status write of it: the
/// resourceVersions its writes made obsolete, and the one the last write produced.
#[derive(Debug, Default)]
pub struct OwnStatusWrites(Mutex<HashMap<String, OwnWrites>>);

#[derive(Debug, Default)]
struct OwnWrites {
    obsolete: Vec<String>,
    latest: Option<String>,
}

impl OwnStatusWrites {
    /// Notes a status write of the AccessKey `uid` that turned resourceVersion `before` into
    /// `after`, unless `cached` (the resourceVersion in the cache, read under the same lock
    /// that [`Self::cache_saw`] takes after the cache is updated) already shows it: the write's
    /// event may come back before its response, and nothing would ever clear the note.
    pub fn wrote_status(
        &self,
        uid: &str,
        before: Option<String>,
        after: Option<String>,
        cached: impl FnOnce() -> Option<String>,
    ) {
        let mut written = lock(&self.0);
        if after.is_some() && cached() == after {
            written.remove(uid);
            return;
        }
        let entry = written.entry(uid.to_string()).or_default();
        entry.obsolete.extend(before);
        entry.latest = after;
    }

    /// Whether a copy of the AccessKey `uid` at `resource_version` predates one of this
    /// operator's own status writes that the cache does not show yet: a reconcile starting from it
    /// would decide on an old record and fail its conditional write.
    pub fn behind_own_write(&self, uid: &str, resource_version: Option<&str>) -> bool {
        let written = lock(&self.0);
        let Some(w) = written.get(uid) else { return false };
        resource_version.is_some_and(|rv| w.obsolete.iter().any(|o| o == rv))
    }

    /// The cache now holds the AccessKey `uid` at `resource_version` (or it is gone: `None`).
    pub fn cache_saw(&self, uid: &str, resource_version: Option<&str>) {
        let mut written = lock(&self.0);
        let caught_up = match (written.get(uid), resource_version) {
            (None, _) => false,
            (Some(w), Some(rv)) => w.latest.as_deref() == Some(rv) || !w.obsolete.iter().any(|o| o == rv),
            (Some(_), None) => true,
        };
        if caught_up {
            written.remove(uid);
        }
    }
}

/// Longest a reconcile waits for a slot of an issuer whose slots are turning over: a slot of a
/// healthy issuer frees within one provider call, while a stuck one frees none.
const SLOT_WAIT: Duration = Duration::from_secs(1);

/// The slots of one issuer, and when one was last given back.
pub struct IssuerSlots {
    semaphore: Arc<Semaphore>,
    last_release: Mutex<Option<Instant>>,
}

impl IssuerSlots {
    fn new(slots: usize) -> Self {
        Self { semaphore: Arc::new(Semaphore::new(slots.max(1))), last_release: Mutex::new(None) }
    }

    /// Whether a slot was given back within the last [`SLOT_WAIT`].
    fn turning_over(&self) -> bool {
        lock(&self.last_release).is_some_and(|at| at.elapsed() < SLOT_WAIT)
    }

    async fn acquire(self: Arc<Self>) -> Option<IssuerSlot> {
        let permit = match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) if self.turning_over() => {
                tokio::time::timeout(SLOT_WAIT, self.semaphore.clone().acquire_owned()).await.ok()?.ok()?
            }
            Err(_) => return None,
        };
        Some(IssuerSlot { _permit: permit, slots: self, share: None })
    }
}

/// One slot of an issuer, given back (and the time noted) when dropped.
pub struct IssuerSlot {
    _permit: OwnedSemaphorePermit,
    slots: Arc<IssuerSlots>,
    share: Option<Share>,
}

impl Drop for IssuerSlot {
    fn drop(&mut self) {
        *lock(&self.slots.last_release) = Some(Instant::now());
    }
}

pub use super::caches::{Caches, Workloads};

/// How much of the operator's time one provider may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Reconcile workers (`--concurrency`): how many of them may wait on providers, shared
    /// fairly between issuers and namespaces, follows from it (see `fair_share`).
    pub workers: usize,
    /// Reconciles of one issuer that may wait on its provider at once.
    pub issuer_concurrency: usize,
    /// Longest one reconcile waits on providers, all calls together.
    pub provider_timeout: Duration,
}

impl Context {
    pub fn new(
        client: Client,
        cluster_resource_namespace: String,
        http: HttpConfig,
        caches: Caches,
        health: Arc<Health>,
        limits: Limits,
        guard: TenantGuard,
    ) -> Self {
        Self {
            client,
            reporter: Reporter { controller: "cloudkeys".into(), instance: std::env::var("POD_NAME").ok() },
            cluster_resource_namespace,
            registry: Registry::new(http, guard),
            caches,
            health,
            limits,
            memories: Memories::default(),
            own_writes: OwnStatusWrites::default(),
            checks: Mutex::new(HashMap::new()),
            issuer_slots: Mutex::new(HashMap::new()),
            fair_share: FairShare::for_workers(limits.workers),
            hold_writers: Mutex::new(HashMap::new()),
            installation: String::new(),
            namespace_keys: NamespaceKeys::default(),
            policy_answers: Mutex::new(HashMap::new()),
        }
    }

    /// This context, writing `installation` into new markers.
    pub fn with_installation(mut self, installation: String) -> Self {
        self.installation = installation;
        self
    }

    /// A slot to wait on the provider of `issuer`, or `None` when as many reconciles as
    /// `--issuer-concurrency` allows already do and none has finished lately: the caller comes
    /// back later instead of holding a worker that AccessKeys of other issuers could use. An
    /// issuer whose slots keep turning over (busy, not stuck) is waited for, briefly.
    ///
    /// The slot is also one of the places all issuers share fairly (`fair_share`), counted for
    /// `namespace` (the AccessKey's): an issuer or namespace past its share waits its turn too.
    pub async fn issuer_slot(&self, issuer: &str, namespace: &str) -> Option<IssuerSlot> {
        let slots = lock(&self.issuer_slots)
            .entry(issuer.to_string())
            .or_insert_with(|| Arc::new(IssuerSlots::new(self.limits.issuer_concurrency)))
            .clone();
        let mut slot = slots.acquire().await?;
        slot.share = Some(self.fair_share.take(issuer, namespace)?);
        Some(slot)
    }

    /// Whether an issuer in the caches reads its credentials from `secret`: a KeyIssuer of its
    /// namespace, or a ClusterKeyIssuer when it is in the cluster resource namespace.
    pub fn names_credentials(&self, secret: &Secret) -> bool {
        let (Some(ns), Some(name)) = (secret.metadata.namespace.as_deref(), secret.metadata.name.as_deref()) else {
            return false;
        };
        let names =
            |settings: &crate::api::IssuerProvider| crate::providers::credentials_secret(settings) == Some(name);
        let namespaced = self
            .caches
            .key_issuers
            .state()
            .iter()
            .any(|i| i.metadata.namespace.as_deref() == Some(ns) && names(&i.spec.provider));
        namespaced
            || (ns == self.cluster_resource_namespace
                && self.caches.cluster_issuers.state().iter().any(|i| names(&i.spec.provider)))
    }

    /// The lock for writing the in-use hold of `issuer`: without it, the first AccessKeys of an
    /// issuer reconciled together all find it unheld and all write, and all but one get a 409.
    pub fn hold_writer(&self, issuer: &str) -> HoldWriter {
        lock(&self.hold_writers).entry(issuer.to_string()).or_default().clone()
    }

    /// Lets go of everything kept in memory for the issuer `id` once it is deleted: its provider
    /// client (with its rate limiter and tokens), its check state, its slots and its hold lock.
    pub fn forget_issuer(&self, id: &IssuerId) {
        let name = id.to_string();
        lock(&self.checks).remove(&name);
        self.memories.forget(&name);
        lock(&self.issuer_slots).remove(&name);
        lock(&self.hold_writers).remove(&id.holder_key());
        lock(&self.policy_answers).retain(|(issuer, _), _| *issuer != name);
        self.registry.forget(&name);
        crate::metrics::global().forget_issuer(&name);
    }

    /// The provider's answer to `question` for `issuer` (its display name) as it is now
    /// (`fingerprint`), if read less than [`POLICY_ANSWER_TTL`] ago.
    pub fn policy_answer(&self, issuer: &str, fingerprint: &str, question: &Question) -> Option<Answer> {
        let answers = lock(&self.policy_answers);
        let kept = answers.get(&(issuer.to_string(), question.clone()))?;
        kept.current(fingerprint).then(|| kept.answer.clone())
    }

    /// Keeps the provider's answer to `question` for `issuer`. Answers past their time are
    /// dropped on the way, so that AccessKeys naming ever new roles or users cannot grow this.
    pub fn remember_policy_answer(&self, issuer: &str, question: &Question, answer: PolicyAnswer) {
        let mut answers = lock(&self.policy_answers);
        answers.retain(|_, kept| kept.read_at.elapsed() < POLICY_ANSWER_TTL);
        answers.insert((issuer.to_string(), question.clone()), answer);
    }

    /// Lets go of what is remembered of the AccessKey `key` (`namespace/name`) once it is deleted.
    pub fn forget_access_key(&self, key: &str) {
        self.memories.forget(key);
    }

    /// What a drift check found about the key `key_id` of AccessKey `key` at the provider.
    pub fn saw_at_provider(&self, key: &str, key_id: &str, view: ProviderView) {
        self.memories.update(key, |m| m.provider_view = Some((key_id.to_string(), view)));
    }

    /// What the last drift check found about the current key `key_id` of AccessKey `key`.
    pub fn provider_view(&self, key: &str, key_id: Option<&str>) -> Option<ProviderView> {
        self.memories.read(key, |m| {
            m.provider_view.as_ref().filter(|(id, _)| Some(id.as_str()) == key_id).map(|(_, view)| *view)
        })
    }

    /// A drift check found the key `key_id` of AccessKey `key` gone at the provider.
    pub fn revoked_externally(&self, key: &str, key_id: &str) {
        self.memories.update(key, |m| m.revoked_externally = Some(key_id.to_string()));
    }

    /// Whether the key `key_id` of AccessKey `key` was found gone at the provider.
    pub fn is_revoked_externally(&self, key: &str, key_id: Option<&str>) -> bool {
        self.memories.read(key, |m| key_id.is_some_and(|id| m.revoked_externally.as_deref() == Some(id)))
    }

    /// The AccessKey `key` has a new key: what a drift check found about the old one is moot,
    /// and so is a deferral announced for it.
    pub fn replaced(&self, key: &str) {
        self.memories.update(key, |m| {
            m.revoked_externally = None;
            m.provider_view = None;
            m.deferred_until = None;
        });
    }

    /// Whether a replacement of `key` deferred to the window opening at `until` is news (it is
    /// remembered as told from now on): one `RotationDeferred` event per deferral, however
    /// often the AccessKey is reconciled meanwhile.
    pub fn deferral_is_news(&self, key: &str, until: jiff::Timestamp) -> bool {
        self.memories.update(key, |m| m.deferred_until.replace(until) != Some(until))
    }

    /// Records that the provider refused a new key for `key` (with spec fingerprint `spec`);
    /// returns how many refusals in a row came before this one.
    pub fn block(&self, key: &str, spec: &str, until: jiff::Timestamp) -> u32 {
        self.memories.update(key, |m| {
            m.blocked = Some((spec.to_string(), until));
            one_more(&mut m.refusals)
        })
    }

    /// Until when no new key is asked for `key` with spec fingerprint `spec`: a changed spec
    /// is tried at once.
    pub fn blocked_until(&self, key: &str, spec: &str) -> Option<jiff::Timestamp> {
        self.memories.read(key, |m| m.blocked.as_ref().filter(|(s, _)| s == spec).map(|(_, until)| *until))
    }

    /// Refusals in a row for `key` so far (0: none).
    pub fn refusals(&self, key: &str) -> u32 {
        self.memories.read(key, |m| m.refusals)
    }

    pub fn unblock(&self, key: &str) {
        self.memories.update(key, |m| {
            if m.blocked.take().is_some() {
                m.refusals = 0;
            }
        });
    }

    /// Records a failed reconcile of `key` and returns how many failed in a row before it.
    pub fn record_failure(&self, key: &str) -> u32 {
        self.memories.update(key, |m| one_more(&mut m.failures))
    }

    /// Records that `key`'s issuer had no place for it; returns how many times in a row before.
    pub fn record_busy(&self, key: &str) -> u32 {
        self.memories.update(key, |m| one_more(&mut m.busy))
    }

    /// A reconcile of `key` went through: its error and busy backoffs start over.
    pub fn record_success(&self, key: &str) {
        self.memories.update(key, |m| {
            m.failures = 0;
            m.busy = 0;
        });
    }

    /// Emits a Kubernetes Event on `obj`. Failing to record an event never fails a reconcile.
    ///
    /// A Recorder per event, on purpose: kube's Recorder keeps every event it sent in the last
    /// six minutes, to turn a repeat into a count on the first one, and a repeat is the same
    /// object and reason, whatever the note. Shared, it would hold an event per AccessKey through
    /// a mass issuance, and show a second `Revoked` within minutes with the first one's key id.
    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: EventType, reason: &str, note: String) {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let ev = Event { type_, reason: reason.into(), note: Some(note), action: reason.into(), secondary: None };
        if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot record event");
        }
    }

    /// When the credentials of this issuer may be checked at the provider again. Keeps a broken
    /// issuer from hammering the provider however often it is reconciled.
    pub fn next_check(&self, issuer: &str, fingerprint: &str) -> Option<Instant> {
        let checks = lock(&self.checks);
        let state = checks.get(issuer)?;
        (state.fingerprint == fingerprint).then_some(state.not_before)
    }

    pub fn record_check(&self, issuer: &str, fingerprint: &str, ok: bool, backoff: Duration) {
        let mut checks = lock(&self.checks);
        let failures = match checks.get(issuer) {
            Some(s) if !ok && s.fingerprint == fingerprint => s.failures.saturating_add(1),
            _ if ok => 0,
            _ => 1,
        };
        checks.insert(
            issuer.to_string(),
            CheckState { fingerprint: fingerprint.to_string(), not_before: Instant::now() + backoff, failures },
        );
    }

    pub fn check_failures(&self, issuer: &str) -> u32 {
        lock(&self.checks).get(issuer).map(|s| s.failures).unwrap_or(0)
    }
}

struct CheckState {
    fingerprint: String,
    not_before: Instant,
    failures: u32,
}

/// Suffixes of the failure counters kept next to an AccessKey's own.
/// First retry of an object whose issuer had no free place, doubling up to the maximum.
const BUSY_RETRY: Duration = Duration::from_secs(1);
const BUSY_RETRY_MAX: Duration = Duration::from_secs(30);

/// How long an object refused a place at its issuer `turns` times in a row waits, jittered so
/// that the objects of a busy issuer do not all come back at once.
pub fn busy_wait(turns: u32) -> Duration {
    let wait = BUSY_RETRY.saturating_mul(1 << turns.min(5)).min(BUSY_RETRY_MAX);
    wait.mul_f64(rand::Rng::random_range(&mut rand::rng(), 0.75..1.25))
}

/// Name of an object for messages: `namespace/name` or `name`.
pub fn display_name<K: ResourceExt>(obj: &K) -> String {
    match obj.namespace() {
        Some(ns) => format!("{ns}/{}", obj.name_any()),
        None => obj.name_any(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
