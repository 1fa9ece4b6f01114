//! KeyIssuer and ClusterKeyIssuer readiness: the credentials Secret is readable and one
//! read-only provider call with those credentials succeeds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::api::{validation, IssuerStatus};
use crate::core::conditions::{put_progress, ready_condition, Activity, Reason, READY, RECONCILING, STALLED};
use crate::providers::bounded::Bounded;
use crate::providers::{credentials_secret, ErrorKind, Provider};

use super::context::Context;
use super::error::Error;
use super::in_use::{self, Hold};

/// How often a Ready issuer's credentials are checked again.
const RECHECK: Duration = Duration::from_secs(300);
/// How often an issuer being deleted looks again whether AccessKeys still need it (an AccessKey
/// that is gone also triggers a look at once).
const DELETING_RECHECK: Duration = Duration::from_secs(5);

pub use super::issuer_object::IssuerObject;

pub async fn reconcile<K: IssuerObject>(issuer: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let _progress = ctx.health.reconcile_started();
    let result = super::caught::caught(reconcile_inner(issuer.clone(), ctx.clone())).await;
    if let Err(e @ Error::Panicked(_)) = &result {
        ctx.event(&*issuer, EventType::Warning, "InternalError", format!("{e}; retried with backoff")).await;
    }
    crate::metrics::global().reconciled(K::CONTROLLER, started.elapsed(), result.as_ref().err().map(Error::label));
    match result {
        // Not a failure: the issuer's places are taken (its own AccessKeys, or its share of the
        // workers). Nothing is written; the check comes back, later each time it is refused.
        Err(Error::IssuerBusy(_)) => {
            let turns = ctx.record_busy(&issuer.describe());
            Ok(Action::requeue(super::context::busy_wait(turns)))
        }
        other => {
            ctx.record_success(&issuer.describe());
            other
        }
    }
}

async fn reconcile_inner<K: IssuerObject>(issuer: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Who uses the issuer is read from the AccessKey cache: until it is complete, "nobody" could
    // be wrong, and releasing the issuer then could strand keys.
    if !ctx.health.synced.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let users = in_use::users(ctx.caches.access_keys.state().iter().map(|a| &**a), &issuer.id());
    let deleting = issuer.meta().deletion_timestamp.is_some();
    hold_while_used(&*issuer, &ctx, &users).await?;
    if deleting && users.is_empty() {
        // Released: the finalizer is gone and the apiserver deletes the issuer.
        return Ok(Action::await_change());
    }
    let (reason, message, requeue) = if deleting {
        (Reason::InUse, in_use_message(&users), DELETING_RECHECK)
    } else {
        check(&*issuer, &ctx).await?
    };
    write_condition(&*issuer, &ctx, reason, message).await?;
    Ok(Action::requeue(requeue))
}

/// While AccessKeys use the issuer, it and its credentials Secret carry the in-use finalizer.
/// Unused, it lets go of the Secret, and of itself only while being deleted (see `in_use`).
async fn hold_while_used<K: IssuerObject>(issuer: &K, ctx: &Context, users: &[String]) -> Result<(), Error> {
    let id = issuer.id();
    let secret_ns = issuer.secret_namespace(ctx);
    let deleting = issuer.meta().deletion_timestamp.is_some();
    let have = Hold::of(issuer.meta());
    // Not at the same time as an AccessKey's hold before issuing: both would write, one in vain.
    // What this writes is noted the same way, so the AccessKeys behind it do not write it again.
    let writer = ctx.hold_writer(&id.holder_key());
    let mut written_over = writer.lock().await;
    if users.is_empty() {
        if have.secret.is_some() || (deleting && have.held) {
            in_use::release(ctx, &id, issuer.meta(), &secret_ns, deleting).await?;
            *written_over = None;
        }
    } else if have.held || !deleting {
        // (No new finalizer on an object being deleted: the apiserver refuses it.)
        in_use::hold(ctx, &id, issuer.meta(), &secret_ns, credentials_secret(issuer.provider())).await?;
        *written_over = issuer.meta().resource_version.clone();
    }
    Ok(())
}

fn in_use_message(users: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut named = users.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if users.len() > SHOWN {
        named.push_str(&format!(" and {} more", users.len() - SHOWN));
    }
    format!("being deleted: kept until no AccessKey needs it to revoke keys; {} still do: {named}", users.len())
}

/// Writes the Ready condition when it changed, with a Warning event when it is not Ready.
async fn write_condition<K: IssuerObject>(
    issuer: &K,
    ctx: &Context,
    reason: Reason,
    message: String,
) -> Result<(), Error> {
    let described = issuer.describe();
    let previous = issuer.status().cloned().unwrap_or_default();
    let generation = issuer.meta().generation;
    let now = Time(jiff::Timestamp::now());
    let condition = ready_condition(&previous.conditions, reason, message.clone(), generation, now.clone());
    let ready_changed = previous
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .is_none_or(|c| c.reason != condition.reason || c.message != condition.message)
        || previous.observed_generation != generation;
    // Ready first (readers of older versions take the first condition), then Stalled and
    // Reconciling as it says, keeping their transition times from the previous status.
    let mut conditions: Vec<Condition> =
        previous.conditions.iter().filter(|c| c.type_ == STALLED || c.type_ == RECONCILING).cloned().collect();
    conditions.insert(0, condition);
    // Also when Ready stays: an issuer last written by an operator without them gets them once.
    let progress_changed = put_progress(&mut conditions, Activity::default(), generation, now);
    let changed = ready_changed || progress_changed;
    let status = IssuerStatus {
        observed_generation: generation,
        conditions,
        provider: Some(issuer.provider().name().to_string()),
        // Drift checks and deletions own these (under field managers of their own).
        orphaned_keys: None,
        retained_keys: None,
        retained_keys_since: None,
    };
    // Never looked at before (no provider recorded): a new issuer, with no key retained before
    // the record of retained keys existed. (An older one is taken over by its first drift check.)
    // Marked before the first write that records the provider, so a crash in between cannot
    // leave it looking old.
    if previous.provider.is_none() && previous.retained_keys_since.is_none() {
        super::retained::begin(ctx, issuer).await?;
    }
    if changed || previous.provider.is_none() {
        let api = K::api(ctx, issuer.namespace().as_deref());
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status,
        });
        super::writes::issuer_status(&api, &issuer.name_any(), &patch).await?;
        if !reason.is_ready() {
            ctx.event(issuer, EventType::Warning, reason.as_str(), message.clone()).await;
        }
        tracing::info!(issuer = %described, reason = reason.as_str(), %message, "issuer status");
    }
    Ok(())
}

/// Decides the issuer's Ready condition; calls the provider at most as often as the backoff allows.
async fn check<K: IssuerObject>(issuer: &K, ctx: &Context) -> Result<(Reason, String, Duration), Error> {
    if let Err(e) = validation::validate_issuer(issuer.provider()) {
        return Ok((Reason::InvalidSpec, e.to_string(), Duration::from_secs(3600)));
    }
    let cluster_scoped = issuer.namespace().is_none();
    if let Err(e) = validation::validate_policy(issuer.policy(), cluster_scoped) {
        return Ok((Reason::InvalidSpec, e.to_string(), Duration::from_secs(3600)));
    }
    if let Some(windows) = issuer.rotation_windows() {
        if let Err(e) = crate::core::windows::Windows::parse(windows, "rotationDefaults.windows") {
            return Ok((Reason::InvalidSpec, e.to_string(), Duration::from_secs(3600)));
        }
    }
    if let Err(message) = ctx.registry.guard(issuer.provider(), !cluster_scoped) {
        return Ok((Reason::InvalidSpec, message, Duration::from_secs(3600)));
    }
    let loaded = ctx
        .registry
        .load_settings(
            &ctx.client,
            &ctx.caches,
            issuer.describe(),
            &issuer.secret_namespace(ctx),
            issuer.meta(),
            issuer.provider().clone(),
            issuer.rate_limit(),
            issuer.status().cloned().unwrap_or_default(),
            !cluster_scoped,
        )
        .await?;
    let provider = match loaded.provider {
        Ok(p) => p,
        Err(cause) => return Ok((cause.reason(), cause.to_string(), Duration::from_secs(60))),
    };
    let key = issuer.describe();
    if let Some(not_before) = ctx.next_check(&key, &loaded.fingerprint) {
        let now = Instant::now();
        if not_before > now {
            // Checked recently with these very credentials: keep the verdict, wait.
            let previous = issuer.status().and_then(|s| s.conditions.iter().find(|c| c.type_ == READY)).cloned();
            if let Some(c) = previous {
                let reason = reason_from_str(&c.reason);
                return Ok((reason, c.message, not_before - now));
            }
        }
    }
    // The check waits on the provider like any issuance, and takes its place the same way: six
    // tenants' issuers at hanging providers must not hold every worker of this controller while
    // another tenant's new issuer waits for its first check.
    let _slot = if provider.name() == "local" {
        None
    } else {
        let namespace = issuer.namespace().unwrap_or_else(|| ctx.cluster_resource_namespace.clone());
        let id = issuer.id().to_string();
        Some(ctx.issuer_slot(&id, &namespace).await.ok_or(Error::IssuerBusy(id))?)
    };
    let deadline = tokio::time::Instant::now() + ctx.limits.provider_timeout;
    match Bounded::new(provider.clone(), deadline).check_credentials().await {
        Ok(()) => {
            ctx.record_check(&key, &loaded.fingerprint, true, RECHECK);
            let limits = crate::core::policy::describe(issuer.policy(), cluster_scoped);
            Ok((Reason::Ready, format!("credentials accepted by {}; {limits}", provider.name()), RECHECK))
        }
        Err(e) => {
            let failures = ctx.check_failures(&key);
            let backoff = Error::Provider(e.clone()).backoff(failures);
            ctx.record_check(&key, &loaded.fingerprint, false, backoff);
            let reason = match e.kind {
                ErrorKind::Auth => Reason::InvalidCredentials,
                ErrorKind::Retryable | ErrorKind::Permanent => Reason::ProviderUnreachable,
            };
            Ok((reason, e.to_string(), backoff))
        }
    }
}

fn reason_from_str(s: &str) -> Reason {
    match s {
        "Ready" => Reason::Ready,
        "SecretNotFound" => Reason::SecretNotFound,
        "InvalidCredentials" => Reason::InvalidCredentials,
        "InvalidSpec" => Reason::InvalidSpec,
        "InUse" => Reason::InUse,
        _ => Reason::ProviderUnreachable,
    }
}
