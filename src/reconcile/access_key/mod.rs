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
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use crate::api::{AccessKey, AccessKeyStatus, ConsumerTarget, DeletionPolicy, IssuerRef, PendingKey, WorkloadKind};
use crate::providers::bounded::Bounded;
use crate::providers::{IssuedKey, KeyRequest, Marker, OwnedKey, Provider, ProviderError, Revocation};

use super::context::{display_name, Context, LoadedIssuer, PolicyAnswer, FIELD_MANAGER};
use super::error::Error;
use super::in_use::IssuerId;
use crate::core::conditions::{self, ready_condition, Reason, READY};
use crate::core::consumers::{self, Workload, WorkloadObject};
use crate::core::decide::{
    decide, forced_replacement_wait, forced_replacements_after, requested_replacements_after, IssueReason, Observed,
    Step,
};
use crate::core::observe;
use crate::core::policy::Verdict;
use crate::core::rotation::{self, RotatingState, RotationSettings};
use crate::core::secret::{self, SecretState};

mod act;
mod cleanup;
mod cluster;

use self::act::act;
pub use self::act::{renewal_time, status_merge_patch};
use self::cleanup::{cleanup, revoke_recorded};
use self::cluster::Cluster;

pub const FINALIZER: &str = "cloudkeys.io/revoke";
/// Upper bound on act-observe rounds in one reconcile; the loop normally ends in 2–4.
const MAX_STEPS: usize = 12;
/// What one reconcile may spend on the apiserver, on top of `--provider-timeout`.
pub const KUBE_TIME_BUDGET: Duration = Duration::from_secs(120);
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
    // Every line logged while reconciling names the AccessKey once, through this span.
    let span = tracing::info_span!("reconcile", access_key = %key);
    let work = super::caught::caught(reconcile_inner(ak.clone(), &ctx));
    let result = match tokio::time::timeout(bound, work).instrument(span).await {
        Ok(result) => result,
        Err(_) => Err(Error::TimedOut(bound)),
    };
    if let Err(e @ Error::Panicked(_)) = &result {
        ctx.event(&*ak, EventType::Warning, "InternalError", format!("{e}; retried with backoff")).await;
    }
    crate::metrics::global().reconciled("accesskey", started.elapsed(), result.as_ref().err().map(Error::label));
    match result {
        // Not a failure: the issuer's slots are all taken by other AccessKeys; come back soon.
        Err(Error::IssuerBusy(issuer)) => {
            // Waiting longer each time while the issuer stays busy (a hanging provider), so the
            // queue is not flooded with retries; the next success resets it.
            let turns = ctx.record_busy(&key);
            let wait = super::context::busy_wait(turns);
            tracing::debug!(%issuer, wait_ms = wait.as_millis() as u64, "issuer busy; requeued");
            Ok(Action::requeue(wait))
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
    }
    result
}

pub fn error_policy(ak: Arc<AccessKey>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&display_name(&*ak));
    let wait = error.backoff(failures);
    tracing::warn!(access_key = %display_name(&*ak), error = %error, kind = error.label(), retry_in_s = wait.as_secs(), "reconcile failed");
    Action::requeue(wait)
}

pub use crate::core::observe::spec_hash;

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
                tracing::debug!("cache behind the apiserver; looking again shortly");
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            None => return Ok(Action::await_change()),
        }
    }
    let mut cluster = Cluster::new(ctx, &ak);
    if pending {
        cluster.saw_secret(cluster.secrets().get_opt(&ak.spec.secret_name).await?);
    }
    let mut status = ak.status.clone().unwrap_or_default();
    let hash = spec_hash(&ak);
    let issuer_ref = ak.spec.issuer_ref.clone();
    let issuer = cluster.issuer(&issuer_ref).await?;
    let facts = issuer.as_ref().map(LoadedIssuer::facts);
    let other_kind_exists = issuer.is_none() && cluster.other_kind_exists(&issuer_ref);
    let issuer_state = observe::issuer_state(&issuer_ref, &cluster.ns, facts.as_ref(), other_kind_exists);
    // The issuer's default windows, when the AccessKey sets none (invalid ones: the spec's problem).
    let default_windows = facts.as_ref().and_then(observe::IssuerFacts::default_windows);
    let rotation = RotationSettings::of(&ak.spec, default_windows);
    let problem = observe::spec_problem(&ak, facts.as_ref(), &rotation);
    cluster.settings = rotation.unwrap_or_default();
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
        // The policy is looked at only when a key is to be minted (it may need a read): before a
        // replaced key is revoked early to make room for it too, so that a key the policy refuses
        // cuts no grace period short.
        if let (Step::Issue { .. } | Step::RevokeEarly { .. }, Some(i)) = (&step, issuer.as_ref()) {
            denial = policy_denial(&cluster, i).await?;
            if denial.is_some() {
                observed.policy_denial = denial.as_deref();
                step = decide(&observed);
            }
        }
        tracing::debug!(?step, "step");
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
/// labels are read only for a ClusterKeyIssuer that selects namespaces by them; the provider is
/// asked (one read, kept for a minute) only when every rule the spec answers has passed; and the
/// keys of the namespace are counted (from the cache and the places taken by reconciles under
/// way, see `namespace_keys`) only under `maxKeysPerNamespace`: allowed, this reconcile takes a
/// place.
async fn policy_denial<'a>(c: &Cluster<'a>, issuer: &LoadedIssuer) -> Result<Option<String>, Error> {
    let facts = issuer.facts();
    let labels = if observe::needs_namespace_labels(&facts, &c.ns) {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.ctx.client.clone());
        api.get_opt(&c.ns).await?.and_then(|n| n.metadata.labels)
    } else {
        None
    };
    // What the provider answers does not depend on the count: asked with the most lenient one,
    // so that the count below is judged under its lock with nothing left to ask.
    let answered = match observe::policy_verdict(&facts, c.ak, labels.as_ref(), 0, None) {
        Verdict::Allowed => None,
        Verdict::Denied(denial) => return Ok(Some(observe::denial_message(&facts, &denial))),
        Verdict::Ask(question) => {
            let answer = match c.ctx.policy_answer(&issuer.display, &issuer.fingerprint, &question) {
                Some(answer) => answer,
                None => {
                    let provider = issuer
                        .provider
                        .clone()
                        .map_err(|cause| Error::IssuerUnusable { issuer: issuer.display.clone(), cause })?;
                    let provider = c.at_provider(&c.ak.spec.issuer_ref, provider).await?;
                    let answer = provider.answer(&question).await?;
                    tracing::debug!(%question, ?answer, "policy question answered by the provider");
                    let kept = PolicyAnswer::new(&issuer.fingerprint, answer.clone());
                    c.ctx.remember_policy_answer(&issuer.display, &question, kept);
                    answer
                }
            };
            Some((question, answer))
        }
    };
    let judge = |keys_in_namespace: usize| {
        let answered = answered.as_ref().map(|(q, a)| (q, a));
        match observe::policy_verdict(&facts, c.ak, labels.as_ref(), keys_in_namespace, answered) {
            Verdict::Allowed => None,
            Verdict::Denied(denial) => Some(observe::denial_message(&facts, &denial)),
            // Answered, and asked again: another question, which no provider asks today. Refused
            // rather than minted unjudged.
            Verdict::Ask(other) => Some(format!(
                "{}: the issuer's policy cannot be checked (asks {other} after it was answered); report this as a bug",
                issuer.display
            )),
        }
    };
    if !observe::counts_keys(&facts) {
        return Ok(judge(0));
    }
    let ctx: &'a Context = c.ctx;
    match ctx.namespace_keys.admit(c.ak, || ctx.caches.access_keys.state(), judge) {
        Ok(admission) => {
            c.admitted(Some(admission));
            Ok(None)
        }
        Err(denial) => {
            c.admitted(None);
            Ok(Some(denial))
        }
    }
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
    tracing::warn!(reason = reason.describe(), retry_in_s = wait.as_secs(), error = %error, "rotation blocked");
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
