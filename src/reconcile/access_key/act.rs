//! Carrying out one decided step: the writes to the provider, the Secret and the status, in
//! the crash-safe order of the module docs.

use super::*;

/// Carries out one step. `Ok(Some(_))` ends the reconcile; `Ok(None)` observes again.
pub(super) async fn act(
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
            status.next_rotation_time =
                rotation::next_rotation_time(status, settings, jiff::Timestamp::now()).map(Time);
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
            let mut held = Vec::new();
            for mut r in std::mem::take(&mut status.retired) {
                if busy.is_some() || !rotation::retired_due(&r, now) {
                    kept.push(r);
                    continue;
                }
                crashpoint("before-retired-revoke");
                let revoked = match c.provider_of(&r.issuer).await {
                    Ok(p) => match still_used(p.as_ref(), &r, settings.max_usage_hold, now).await {
                        Ok(Some((used, until))) => {
                            r.last_used_at = Some(Time(rotation::whole_seconds(used)));
                            r.held_until = Some(Time(until));
                            let current = status.access_key_id.as_deref().unwrap_or_default();
                            held.push(rotation::usage_hold_note(&r, used, until, current));
                            kept.push(r);
                            continue;
                        }
                        Ok(None) => revoke_recorded(c, p.as_ref(), &r.key_ref, &r.access_key_id).await,
                        Err(e) => Err(e),
                    },
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
            for note in held {
                crate::metrics::global().retired_key_still_used(c.ak.spec.provider.name());
                tracing::warn!(%note, "replaced key still used");
                c.ctx.event(c.ak, EventType::Warning, "RetiredKeyStillUsed", note).await;
            }
            match busy {
                Some(e) => Err(e),
                None => Ok(None),
            }
        }
        Step::RevokeEarly { reason, key_refs } => {
            revoke_early(c, status, reason, &key_refs).await?;
            Ok(None)
        }
        Step::Issue { reason } => {
            let r = &c.ak.spec.issuer_ref;
            let issuer =
                issuer.ok_or_else(|| Error::IssuerNotFound(format!("{} {}", observe::kind_name(r), r.name)))?;
            let unusable = |cause| Error::IssuerUnusable { issuer: issuer.display.clone(), cause };
            let provider = c.at_provider(r, issuer.provider.clone().map_err(unusable)?).await?;
            let replaced = status.access_key_id.clone();
            let outside_windows = !settings.windows.allow(jiff::Timestamp::now());
            issue(c, status, provider, hash, reason).await?;
            if reason == IssueReason::ExpiresSoon && outside_windows && status.access_key_id != replaced {
                no_rotation_window(c, status, replaced.as_deref()).await;
            }
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
            tracing::info!(key_id = %key_id, consumers = ?names, "consumers restarted");
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
            tracing::info!(reason = reason.describe(), wait_s = wait.as_secs(), "replacing the key after a wait");
            // Back sooner if a replaced key is due for revocation (or its rollout for a timeout).
            let now = jiff::Timestamp::now();
            let due = rotation::next_wakeup(status, settings, now)
                .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO));
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
                status.next_rotation_time =
                    rotation::next_rotation_time(status, settings, jiff::Timestamp::now()).map(Time);
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
            let patched =
                crate::reconcile::writes::apply_secret_metadata(&c.secrets(), &c.ak.spec.secret_name, &desired).await?;
            c.saw_secret(Some(patched));
            Ok(None)
        }
        Step::Ready => ready(c, status, None).await,
        Step::Deferred { reason, until } => ready(c, status, Some((reason, until))).await,
        Step::AwaitIssuerCheck(message) => {
            // No event: a change of the issuer (its check) brings the AccessKey back at once.
            if c.put_condition(status, Reason::IssuerNotReady, &message) {
                c.write_status(status).await?;
            }
            Ok(Some(Action::requeue(Duration::from_secs(30))))
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

/// Whether the provider reports the replaced key `r`, its grace period over, used after its
/// consumers rolled out to the new key: then its last use, and until when its revocation is
/// held. Asked once per key (a held key is not asked again), and only of keys with a grace
/// period; providers without usage data answer no use.
async fn still_used(
    provider: &dyn Provider,
    r: &crate::api::RetiredKey,
    max_hold: Duration,
    now: jiff::Timestamp,
) -> Result<Option<(jiff::Timestamp, jiff::Timestamp)>, Error> {
    if !rotation::usage_check_due(r, max_hold, now) {
        return Ok(None);
    }
    let used = provider.last_used(&r.key_ref).await?;
    Ok(rotation::usage_hold(r, used, max_hold, now).and_then(|until| Some((used?, until))))
}

/// The key is in place: the conditions say so, and the reconcile comes back when something is
/// due by the clock. `deferred`: a replacement waits for the rotation window opening then,
/// which a `RotationDeferred` event announces once.
async fn ready(
    c: &Cluster<'_>,
    status: &mut AccessKeyStatus,
    deferred: Option<(IssueReason, jiff::Timestamp)>,
) -> Result<Option<Action>, Error> {
    let id = status.access_key_id.clone().unwrap_or_default();
    // Nothing to replace any more: a block of an earlier attempt is over.
    c.ctx.unblock(&display_name(c.ak));
    let rotating = RotatingState::of(status);
    let now = jiff::Timestamp::now();
    let changed = c.put_condition(status, Reason::Issued, &issued_message(&id, &c.ak.spec.secret_name));
    if rotation::put_rotating(&mut status.conditions, &rotating, c.ak.meta().generation, now) || changed {
        c.write_status(status).await?;
        tracing::info!(key_id = %id, rotating = ?rotating, "ready");
    }
    if let Some((reason, until)) = deferred {
        if c.ctx.deferral_is_news(&display_name(c.ak), until) {
            let note = deferral_note(&id, reason, until);
            tracing::info!(%note, "rotation deferred");
            c.ctx.event(c.ak, EventType::Normal, "RotationDeferred", note).await;
        }
    }
    // Only what is due by the clock (a revocation, a rollout's timeout, a rotation, a window
    // opening) has a timer; every other change (AccessKey, Secret, issuer, credentials,
    // consumers) arrives by watch. No timer for the rest also means nothing held per AccessKey
    // in the scheduler, which at 10,000 keys is megabytes.
    let wakeup = rotation::next_wakeup(status, &c.settings, now);
    let wakeup = match (wakeup, deferred) {
        (Some(a), Some((_, b))) => Some(a.min(b)),
        (a, b) => a.or(b.map(|(_, t)| t)),
    };
    let requeue = wakeup.map(|t| {
        let secs = t.duration_since(now).as_secs().max(1);
        Duration::from_secs(u64::try_from(secs).unwrap_or(1)).min(RESYNC)
    });
    Ok(Some(requeue.map_or_else(Action::await_change, Action::requeue)))
}

/// What the `RotationDeferred` event says: what is due, and when it happens.
fn deferral_note(key_id: &str, reason: IssueReason, until: jiff::Timestamp) -> String {
    let how = match reason {
        IssueReason::Requested => " (cloudkeys rotate --now does not wait for a window)",
        _ => "",
    };
    format!(
        "replacing key {key_id} is due ({}) outside the rotation windows: it is replaced when the next window opens, \
         at {until}{how}",
        reason.describe()
    )
}

/// The Warning of a key replaced ahead of its expiry outside the rotation windows, none opening
/// while it had time left.
async fn no_rotation_window(c: &Cluster<'_>, status: &AccessKeyStatus, replaced: Option<&str>) {
    let old = status.retired.iter().rev().find(|r| Some(r.access_key_id.as_str()) == replaced);
    let expires = old.and_then(|r| r.expires_at.as_ref()).map_or_else(|| "soon".to_string(), |t| format!("at {}", t.0));
    let note = format!(
        "key {} expires {expires} and no rotation window opens before it must be replaced: replaced by {} outside \
         the rotation windows",
        replaced.unwrap_or_default(),
        status.access_key_id.as_deref().unwrap_or_default(),
    );
    tracing::warn!(%note, "no rotation window");
    c.ctx.event(c.ak, EventType::Warning, "NoRotationWindow", note).await;
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
pub(super) fn retire_current(status: &mut AccessKeyStatus, grace: Duration, now: jiff::Timestamp) {
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

/// Bounded keys: revokes the replaced keys `key_refs` before their time, so that the new key
/// due for `reason` leaves at most two live. Each entry leaves `status.retired` only once the
/// provider confirmed (a crash before the write revokes it again: already gone is success). A
/// revocation that fails mints nothing: `Rotating=False` (`Blocked`) says which key holds the
/// new one back, and the reconcile fails, to be retried with backoff.
async fn revoke_early(
    c: &Cluster<'_>,
    status: &mut AccessKeyStatus,
    reason: IssueReason,
    key_refs: &[String],
) -> Result<(), Error> {
    let now = jiff::Timestamp::now();
    let mut notes = Vec::new();
    let mut revoked_any = false;
    let mut failed = None;
    for key_ref in key_refs {
        let Some(r) = status.retired.iter().find(|r| &r.key_ref == key_ref).cloned() else { continue };
        crashpoint("before-early-revoke");
        let revoked = match c.provider_of(&r.issuer).await {
            Ok(p) => revoke_recorded(c, p.as_ref(), &r.key_ref, &r.access_key_id).await,
            Err(e) => Err(e),
        };
        match revoked {
            // Refused (not this AccessKey's key, and said so): it leaves the status all the same.
            Ok(done) => {
                status.retired.retain(|k| k.key_ref != r.key_ref);
                revoked_any = true;
                if done {
                    notes.push(rotation::early_revocation_note(&r, reason.describe(), now));
                }
            }
            Err(e) => {
                failed = Some((r, e));
                break;
            }
        }
    }
    if let Some((r, e)) = &failed {
        if !matches!(e, Error::IssuerBusy(_)) {
            crate::metrics::global().revocation_failed(c.ak.spec.provider.name());
            let message = format!(
                "no new key ({}) until replaced key {} is revoked: an AccessKey holds at most {} live keys; \
                 revoking it failed: {e}; retried with backoff",
                reason.describe(),
                r.access_key_id,
                rotation::MAX_LIVE_KEYS,
            );
            rotation::put_rotating(
                &mut status.conditions,
                &RotatingState::Blocked(message.clone()),
                c.ak.meta().generation,
                now,
            );
            tracing::warn!(key = %r.access_key_id, error = %e, "cannot make room for a new key");
            c.ctx.event(c.ak, EventType::Warning, "RevocationFailed", message).await;
        }
    }
    if revoked_any {
        crashpoint("after-early-revoke");
    }
    if revoked_any || failed.as_ref().is_some_and(|(_, e)| !matches!(e, Error::IssuerBusy(_))) {
        c.write_status(status).await?;
    }
    for note in notes {
        tracing::info!(%note, "replaced key revoked early");
        c.ctx.event(c.ak, EventType::Normal, "Revoked", note).await;
    }
    match failed {
        Some((_, e @ Error::IssuerBusy(_))) => Err(e),
        Some(_) => Err(Error::RetiredNotRevoked(status.retired.len())),
        None => Ok(()),
    }
}

/// Creates a key and writes it to the Secret, in the crash-safe order described above.
pub(super) async fn issue(
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
    crate::reconcile::in_use::hold_before_issuing(c.ctx, &ak.spec.issuer_ref, &c.ns).await?;
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
        provider: Some(crate::api::Recorded::Known(ak.spec.provider.clone())),
        spec_hash: Some(hash.to_string()),
        rotate_request: rotate_request.clone(),
        grace_period_seconds: status.access_key_id.is_some().then_some(grace.as_secs()),
    }));
    // From here the attempt counts under `maxKeysPerNamespace` until the cache shows it; an
    // apiserver that answered with an error did not record it.
    c.attempt_recorded(true);
    match c.write_status(status).await {
        Err(e @ Error::Kube(kube::Error::Api(_))) => {
            c.attempt_recorded(false);
            return Err(e);
        }
        other => other?,
    }
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
                tracing::warn!(?refused, "the unwritten key was not revoked; it will be found by its marker")
            }
            Err(re) => {
                tracing::warn!(error = %re, "cannot revoke the unwritten key; it will be found by its marker")
            }
        }
        return Err(Error::KeyNotWritten(ak.spec.secret_name.clone(), Box::new(e)));
    }

    crashpoint("after-secret-write");

    // (4) Record the key. The replaced one stays live: its consumers are restarted next, and it
    // is revoked once they rolled out and its grace period is over.
    let replaced = status.access_key_id.clone();
    let forced = forced_replacements_after(reason, status, started);
    let requested = requested_replacements_after(reason, status, started);
    status.forced_replacements = (forced > 0).then_some(forced);
    status.requested_replacements = (requested > 0).then_some(requested);
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
    status.next_rotation_time = rotation::next_rotation_time(status, settings, started).map(Time);
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
                "key {} replaces {old} in Secret {}: {}",
                key.access_key_id,
                ak.spec.secret_name,
                reason.describe()
            ),
        ),
        None => ("Issued", format!("issued key {} into Secret {}", key.access_key_id, ak.spec.secret_name)),
    };
    tracing::info!(key_id = %key.access_key_id, reason = reason.describe(), "{event}");
    c.ctx.event(ak, EventType::Normal, event, note).await;
    Ok(())
}

/// Dies on the spot when `CLOUDKEYS_CRASH_AT` names this point: the crash-safety tests kill the
/// operator between the steps of a creation. Unset in production; reading it costs nothing.
pub(super) fn crashpoint(name: &str) {
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
pub(super) async fn write_secret(
    c: &Cluster<'_>,
    provider: &Arc<dyn Provider>,
    key: Option<&IssuedKey>,
) -> Result<(), Error> {
    let placeholder = secrecy::SecretString::from("dry-run");
    let (id, value) = match key {
        Some(k) => (k.access_key_id.as_str(), &k.secret),
        None => ("DRYRUN", &placeholder),
    };
    let data = secret::render_data(c.ak, provider.name(), &provider.template_vars(), id, value)?;
    let key_id = id;
    let api = c.secrets();
    let dry_run = key.is_none();
    match c.observed_secret() {
        // Create, not apply: if someone else creates it meanwhile, the create fails with a
        // conflict instead of taking their Secret over.
        None => {
            let created =
                crate::reconcile::writes::create_secret(&api, &secret::desired_secret(c.ak, key_id, &data), dry_run)
                    .await?;
            if !dry_run {
                c.saw_secret(Some(created));
            }
        }
        // Replace, guarded by the observed resourceVersion: the data becomes exactly the
        // rendered data (keys of an old template go), and nobody's concurrent change is lost.
        Some(existing) => {
            if matches!(secret::observe_secret(c.ak, Some(&existing)), SecretState::Foreign(_)) {
                return Err(Error::SecretForeign(c.ak.spec.secret_name.clone()));
            }
            let desired = secret::replaced_secret(c.ak, key_id, &data, existing);
            let replaced =
                crate::reconcile::writes::replace_secret(&api, &c.ak.spec.secret_name, &desired, dry_run).await?;
            if !dry_run {
                c.saw_secret(Some(replaced));
            }
        }
    }
    Ok(())
}
