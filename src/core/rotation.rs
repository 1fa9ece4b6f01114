//! Rotation, decided from observed state and a clock passed in: when the key is due for
//! replacement, which grace period a replaced key gets, when each replaced key may be revoked,
//! and what the `Rotating` condition says. No I/O here.
//!
//! Every replacement follows one order: new key → Secret → consumers restarted and rolled out →
//! grace period → old key revoked. Each replaced key carries its own schedule in
//! `status.retired` (`retiredAt`, then `revokeAfter` once the consumers rolled out), so that a
//! restart of the operator resumes every phase where it was.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::duration::{parse_duration, ApiDuration};
use crate::api::validation::InvalidSpec;
use crate::api::{AccessKeySpec, AccessKeyStatus, RetiredKey, RotationWindow};
use crate::core::conditions::Activity;
use crate::core::windows::{self, Planned, Windows};

/// Set to any new value to replace the key once.
pub const ROTATE_ANNOTATION: &str = "cloudkeys.io/rotate";
/// The grace period of the rotation `cloudkeys.io/rotate` asks for (`0s`: a leaked key).
pub const ROTATE_GRACE_ANNOTATION: &str = "cloudkeys.io/rotate-grace-period";
/// `"true"` next to a new `cloudkeys.io/rotate` value: that rotation does not wait for a
/// rotation window (`cloudkeys rotate --now`).
pub const ROTATE_NOW_ANNOTATION: &str = "cloudkeys.io/rotate-now";
/// On a consumer's pod template: the key it was restarted for.
pub const KEY_ID_ANNOTATION: &str = "cloudkeys.io/key-id";

pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(600);
pub const DEFAULT_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(1800);
pub const DEFAULT_MAX_USAGE_HOLD: Duration = Duration::from_secs(86_400);
pub const MIN_EVERY: Duration = Duration::from_secs(60);

/// A refused new key is tried again after this long, doubling up to the maximum.
pub const BLOCKED_RETRY: Duration = Duration::from_secs(60);
pub const BLOCKED_RETRY_MAX: Duration = Duration::from_secs(3600);

pub const ROTATING: &str = "Rotating";

/// `spec.rotation`, parsed, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationSettings {
    pub every: Option<Duration>,
    pub grace_period: Duration,
    pub rollout_timeout: Duration,
    pub max_usage_hold: Duration,
    /// When scheduled rotations may begin (none: at any time).
    pub windows: Windows,
}

impl Default for RotationSettings {
    fn default() -> Self {
        Self {
            every: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            rollout_timeout: DEFAULT_ROLLOUT_TIMEOUT,
            max_usage_hold: DEFAULT_MAX_USAGE_HOLD,
            windows: Windows::default(),
        }
    }
}

/// The rotation windows an issuer gives the AccessKeys that set none (`spec.rotationDefaults`),
/// and the issuer's name, for messages.
#[derive(Debug, Clone, Copy)]
pub struct DefaultWindows<'a> {
    pub issuer: &'a str,
    pub windows: &'a [RotationWindow],
}

impl RotationSettings {
    /// `spec.rotation` with its defaults: the windows the AccessKey sets, else the issuer's.
    pub fn of(spec: &AccessKeySpec, issuer: Option<DefaultWindows<'_>>) -> Result<Self, InvalidSpec> {
        let own = spec.rotation.as_ref().and_then(|r| r.windows.as_deref());
        let windows = match (own, issuer) {
            (Some(own), _) => Windows::parse(own, "rotation.windows")?,
            (None, Some(d)) => Windows::parse(d.windows, "rotation.windows").map_err(|e| {
                let field = e.field.replacen("rotation.windows", "rotationDefaults.windows", 1);
                InvalidSpec::new(
                    "rotation.windows",
                    format!("the default of {}: spec.{field}: {}", d.issuer, e.message),
                )
            })?,
            (None, None) => Windows::default(),
        };
        let Some(r) = &spec.rotation else {
            return Ok(Self { windows, ..Self::default() });
        };
        let parse = |field: &str, value: &Option<ApiDuration>, default: Duration| match value {
            None => Ok(default),
            Some(d) => d.get().map_err(|e| InvalidSpec::new(format!("rotation.{field}"), e)),
        };
        let every = match &r.every {
            None => None,
            Some(d) => {
                let every = d.get().map_err(|e| InvalidSpec::new("rotation.every", e))?;
                if every < MIN_EVERY {
                    let text = d.as_str();
                    return Err(InvalidSpec::new(
                        "rotation.every",
                        format!("{text:?} is shorter than the minimum of 1m"),
                    ));
                }
                Some(every)
            }
        };
        Ok(Self {
            every,
            grace_period: parse("gracePeriod", &r.grace_period, DEFAULT_GRACE_PERIOD)?,
            rollout_timeout: parse("rolloutTimeout", &r.rollout_timeout, DEFAULT_ROLLOUT_TIMEOUT)?,
            max_usage_hold: parse("maxUsageHold", &r.max_usage_hold, DEFAULT_MAX_USAGE_HOLD)?,
            windows,
        })
    }
}

/// The `cloudkeys.io/rotate` value not handled yet, if the AccessKey carries one.
pub fn rotate_request<'a>(annotations: &'a BTreeMap<String, String>, status: &AccessKeyStatus) -> Option<&'a str> {
    let value = annotations.get(ROTATE_ANNOTATION)?;
    (status.last_rotate_request.as_deref() != Some(value.as_str())).then_some(value.as_str())
}

/// Whether the rotation `cloudkeys.io/rotate` asks for now goes ahead without waiting for a
/// rotation window: asked with `cloudkeys.io/rotate-now: "true"`, or for a leaked key (a grace
/// period of `0s`).
pub fn request_ignores_windows(annotations: &BTreeMap<String, String>, status: &AccessKeyStatus) -> bool {
    rotate_request(annotations, status).is_some()
        && (annotations.get(ROTATE_NOW_ANNOTATION).is_some_and(|v| v == "true")
            || annotations.get(ROTATE_GRACE_ANNOTATION).is_some_and(|g| parse_duration(g) == Ok(Duration::ZERO)))
}

/// The grace period the key replaced now gets: the annotation's, when the replacement answers a
/// rotation request that carries one; else `rotation.gracePeriod`.
pub fn grace_for_replacement(
    annotations: &BTreeMap<String, String>,
    status: &AccessKeyStatus,
    settings: &RotationSettings,
) -> Result<Duration, InvalidSpec> {
    match (rotate_request(annotations, status), annotations.get(ROTATE_GRACE_ANNOTATION)) {
        (Some(_), Some(text)) => parse_duration(text)
            .map_err(|e| InvalidSpec::new(format!("metadata.annotations[{ROTATE_GRACE_ANNOTATION}]"), e)),
        _ => Ok(settings.grace_period),
    }
}

/// `t` in whole seconds, as status stores it: a time kept in memory compares equal to the same
/// time read back.
pub fn whole_seconds(t: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
}

fn add(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d).ok().and_then(|d| t.checked_add(d).ok()).unwrap_or(jiff::Timestamp::MAX)
}

/// When the current key is replaced by the schedule, if `rotation.every` is set.
pub fn scheduled_rotation(status: &AccessKeyStatus, settings: &RotationSettings) -> Option<jiff::Timestamp> {
    Some(add(status.issued_at.as_ref()?.0, settings.every?))
}

/// When the schedule's rotation may begin, seen at `now`: its due time, or the first window
/// start after it (see [`Windows::plan`]).
pub fn planned_rotation(
    status: &AccessKeyStatus,
    settings: &RotationSettings,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    settings.windows.plan(scheduled_rotation(status, settings)?, now)
}

fn renewal(status: &AccessKeyStatus) -> Option<jiff::Timestamp> {
    status.renewal_time.as_ref().map(|t| t.0)
}

/// When the renewal ahead of expiry takes place, seen at `now`: from `status.renewalTime`, in
/// the first window that opens while the key has time left, else at `renewalTime` regardless.
pub fn planned_renewal(status: &AccessKeyStatus, settings: &RotationSettings, now: jiff::Timestamp) -> Option<Planned> {
    let renewal = status.renewal_time.as_ref()?.0;
    let deadline = match &status.expires_at {
        Some(expires) => windows::renewal_deadline(renewal, expires.0),
        None => renewal,
    };
    Some(settings.windows.plan_before(renewal, deadline, now))
}

/// `status.nextRotationTime`: the earlier of the schedule and the renewal ahead of expiry, each
/// moved to the first rotation window they may begin in.
pub fn next_rotation_time(
    status: &AccessKeyStatus,
    settings: &RotationSettings,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    let renewal = planned_renewal(status, settings, now).map(Planned::at);
    match (planned_rotation(status, settings, now), renewal) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether a replaced key may be revoked now: its grace period (and the hold of a key the
/// provider reports still used) is over, or it expired anyway, or it was retired by an operator
/// that knew no grace period.
pub fn retired_due(r: &RetiredKey, now: jiff::Timestamp) -> bool {
    r.retired_at.is_none()
        || revoke_time(r).is_some_and(|t| t <= now)
        || r.expires_at.as_ref().is_some_and(|t| t.0 <= now)
}

/// When a replaced key in its grace period goes: the end of its grace period, or of its hold.
pub fn revoke_time(r: &RetiredKey) -> Option<jiff::Timestamp> {
    let grace_end = r.revoke_after.as_ref()?.0;
    Some(r.held_until.as_ref().map_or(grace_end, |h| h.0.max(grace_end)))
}

/// Whether the provider should be asked for a replaced key's last use before it is revoked:
/// once, when its grace period is over (a held key is not asked again), and only for a key
/// that had a grace period at all (`0s`, a leaked or dead key, goes at once whatever it shows).
pub fn usage_check_due(r: &RetiredKey, max_hold: Duration, now: jiff::Timestamp) -> bool {
    r.held_until.is_none()
        && r.retired_at.is_some()
        && r.grace_period_seconds.is_some_and(|g| g > 0)
        && !max_hold.is_zero()
        && r.revoke_after.as_ref().is_some_and(|t| t.0 <= now)
        && r.expires_at.as_ref().is_none_or(|t| t.0 > now)
}

/// When the grace period of a replaced key started: when its consumers had rolled out to the
/// new key (or `rolloutTimeout` passed). Its end less its length (an end moved earlier by the
/// key's expiry gives an earlier start: more use counts as after the switch).
pub fn switched_at(r: &RetiredKey) -> Option<jiff::Timestamp> {
    let end = r.revoke_after.as_ref()?.0;
    let grace = jiff::SignedDuration::from_secs(i64::try_from(r.grace_period_seconds?).ok()?);
    end.checked_sub(grace).ok()
}

/// Until when a replaced key whose grace period is over stays live because the provider
/// reports it used at `last_used`, after its grace period started: something nobody declared
/// still uses it. `rotation.maxUsageHold` past the end of its grace period at most, and never
/// past its expiry. `None`: revoke it now.
pub fn usage_hold(
    r: &RetiredKey,
    last_used: Option<jiff::Timestamp>,
    max_hold: Duration,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    if !usage_check_due(r, max_hold, now) {
        return None;
    }
    let used = last_used?;
    if used <= switched_at(r)? {
        return None;
    }
    let mut until = add(r.revoke_after.as_ref()?.0, max_hold);
    if let Some(expires) = &r.expires_at {
        until = until.min(expires.0 - jiff::SignedDuration::from_secs(1));
    }
    let until = whole_seconds(until);
    (until > now).then_some(until)
}

/// The `RetiredKeyStillUsed` event of a replaced key held by [`usage_hold`].
pub fn usage_hold_note(r: &RetiredKey, used: jiff::Timestamp, until: jiff::Timestamp, current: &str) -> String {
    let switched = switched_at(r).map_or_else(|| "the switch".to_string(), |t| t.to_string());
    format!(
        "replaced key {} was used at {used}, after the consumers rolled out to key {current} ({switched}): something \
         not named in spec.consumers still uses it; its revocation is held until {until} (rotation.maxUsageHold)",
        r.access_key_id
    )
}

/// The most keys an AccessKey holds live at once: its current key and one replaced key awaiting
/// revocation. A rotation loop (`cloudkeys.io/rotate` set again and again, with a long grace
/// period) would otherwise stack keys until a provider quota shared with other tenants is full
/// (OUTSCALE: 10 keys per user).
pub const MAX_LIVE_KEYS: usize = 2;

/// The replaced keys to revoke before a new key is minted, oldest first, so that with the new
/// key the AccessKey holds at most [`MAX_LIVE_KEYS`]: their grace period ends early.
pub fn revoke_before_minting(status: &AccessKeyStatus) -> Vec<&RetiredKey> {
    let live_after = usize::from(status.access_key_id.is_some()) + status.retired.len() + 1;
    let excess = live_after.saturating_sub(MAX_LIVE_KEYS);
    let mut oldest_first: Vec<&RetiredKey> = status.retired.iter().collect();
    // Stable: keys retired in the same second keep the order they were replaced in; those of an
    // operator older than rotation (no `retiredAt`) come first.
    oldest_first.sort_by_key(|r| r.retired_at.as_ref().map(|t| t.0));
    oldest_first.truncate(excess);
    oldest_first
}

/// The `Revoked` event of a replaced key revoked early to make room for a new key: it says that
/// its grace period ended early, when it would have ended, and why.
pub fn early_revocation_note(r: &RetiredKey, new_key_for: &str, now: jiff::Timestamp) -> String {
    let grace = match &r.revoke_after {
        Some(t) if t.0 > now => format!("its grace period ends early (it was to end at {})", t.0),
        Some(_) => "its grace period was over".to_string(),
        None if r.retired_at.is_none() => "it had no grace period".to_string(),
        None => "its grace period ends early (it had not started: the consumers were still rolling out)".into(),
    };
    format!(
        "revoked replaced key {}: {grace}, because a new key is due ({new_key_for}) and an AccessKey holds at most \
         {MAX_LIVE_KEYS} live keys (its current key and one replaced key)",
        r.access_key_id
    )
}

/// A replaced key still waiting for the consumers of the current key to roll out.
pub fn awaits_rollout(r: &RetiredKey) -> bool {
    r.retired_at.is_some() && r.revoke_after.is_none()
}

/// When waiting for rollouts gives up and the grace period starts anyway.
pub fn rollout_deadline(status: &AccessKeyStatus, settings: &RotationSettings) -> Option<jiff::Timestamp> {
    let newest = status.retired.iter().filter(|r| awaits_rollout(r)).filter_map(|r| r.retired_at.as_ref()).max()?;
    Some(add(newest.0, settings.rollout_timeout))
}

/// The key replaced at `now`, awaiting its consumers' rollout (then `grace`).
pub fn retire(
    access_key_id: String,
    key_ref: String,
    issuer: crate::api::IssuerRef,
    expires_at: Option<Time>,
    grace: Duration,
    now: jiff::Timestamp,
) -> RetiredKey {
    RetiredKey {
        access_key_id,
        key_ref,
        issuer,
        retired_at: Some(Time(whole_seconds(now))),
        revoke_after: None,
        grace_period_seconds: Some(grace.as_secs()),
        expires_at,
        last_used_at: None,
        held_until: None,
    }
}

/// Starts the grace period of every replaced key that awaited the rollout; it ends by the
/// key's own expiry at the latest.
pub fn start_grace(status: &mut AccessKeyStatus, now: jiff::Timestamp) {
    for r in status.retired.iter_mut().filter(|r| awaits_rollout(r)) {
        let grace = Duration::from_secs(r.grace_period_seconds.unwrap_or(DEFAULT_GRACE_PERIOD.as_secs()));
        let mut until = add(whole_seconds(now), grace);
        if let Some(expires) = &r.expires_at {
            // Ends before the key expires: it is revoked while it still exists.
            until = until.min(expires.0 - jiff::SignedDuration::from_secs(1));
        }
        r.revoke_after = Some(Time(whole_seconds(until)));
    }
}

/// The next moment something is due by the clock: a replaced key's revocation, the end of a
/// rollout wait, the next rotation. `None`: nothing (every other change arrives by watch).
pub fn next_wakeup(
    status: &AccessKeyStatus,
    settings: &RotationSettings,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    let revocations = status.retired.iter().filter_map(|r| match (revoke_time(r), &r.expires_at) {
        (Some(a), Some(b)) => Some(a.min(b.0)),
        (a, b) => a.or(b.as_ref().map(|t| t.0)),
    });
    // The schedule waits for the replaced keys to go (see `decide`): no wake-up for it before.
    let (rotation, due) = match status.retired.is_empty() {
        true => (next_rotation_time(status, settings, now), [scheduled_rotation(status, settings), renewal(status)]),
        false => (planned_renewal(status, settings, now).map(Planned::at), [None, renewal(status)]),
    };
    // Due before a window lets it begin: woken then as well, to say it is deferred.
    let deferred = due.into_iter().flatten().filter(|t| *t > now && !settings.windows.is_empty());
    revocations.chain(rollout_deadline(status, settings)).chain(rotation).chain(deferred).min()
}

/// The wait before trying again a new key the provider refused, after `refusals` in a row.
pub fn blocked_retry(refusals: u32) -> Duration {
    BLOCKED_RETRY.saturating_mul(1u32 << refusals.min(16)).min(BLOCKED_RETRY_MAX)
}

/// What the `Rotating` condition says about a rotation in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotatingState {
    /// Replaced keys wait for the restarted consumers to roll out.
    RollingOut(usize),
    /// Replaced keys are in their grace period, the first ending then.
    GracePeriod(usize, jiff::Timestamp),
    /// Replaced keys past their grace period, held because the provider reports them used after
    /// the switch (reason `GracePeriod` still: they are live on purpose, for a while).
    UsageHold(usize, jiff::Timestamp),
    /// A new key cannot be had; the current one stays.
    Blocked(String),
    Idle,
}

impl RotatingState {
    /// Computed from the replaced keys (`Blocked` is only ever told).
    pub fn of(status: &AccessKeyStatus) -> Self {
        let n = status.retired.len();
        if n == 0 {
            return Self::Idle;
        }
        if status.retired.iter().any(awaits_rollout) {
            return Self::RollingOut(n);
        }
        let first = status.retired.iter().filter_map(revoke_time).min();
        if let (Some(t), true) = (first, status.retired.iter().any(|r| r.held_until.is_some())) {
            return Self::UsageHold(n, t);
        }
        match first {
            Some(t) => Self::GracePeriod(n, t),
            // Keys retired before rotation existed: revoked at once.
            None => Self::RollingOut(n),
        }
    }

    fn parts(&self) -> (&'static str, &'static str, String) {
        match self {
            Self::RollingOut(n) => {
                ("True", "RollingOut", format!("{n} replaced key(s) live until the restarted consumers roll out"))
            }
            Self::GracePeriod(n, t) => {
                ("True", "GracePeriod", format!("{n} replaced key(s) live in their grace period; next revoked at {t}"))
            }
            Self::UsageHold(n, t) => (
                "True",
                "GracePeriod",
                format!(
                    "{n} replaced key(s) live; revocation held, as the provider reports a replaced key used after \
                     the consumers rolled out to the new key (Warning RetiredKeyStillUsed); next revoked at {t}"
                ),
            ),
            Self::Blocked(why) => ("False", "Blocked", why.clone()),
            Self::Idle => ("False", "Idle", "no replaced key awaits revocation".to_string()),
        }
    }
}

/// Puts the `Rotating` condition into `conditions`, keeping `lastTransitionTime` when its
/// status did not change; false if it was there already as it is.
pub fn put_rotating(
    conditions: &mut Vec<Condition>,
    state: &RotatingState,
    generation: Option<i64>,
    now: jiff::Timestamp,
) -> bool {
    let (status, reason, message) = state.parts();
    let previous = conditions.iter().position(|c| c.type_ == ROTATING);
    if let Some(i) = previous {
        let c = &conditions[i];
        if c.status == status && c.reason == reason && c.message == message {
            return false;
        }
    }
    let last_transition_time = previous
        .map(|i| &conditions[i])
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    let condition = Condition {
        type_: ROTATING.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time,
        observed_generation: generation,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
    true
}

/// What is under way for an AccessKey besides its Ready condition, for `Reconciling`: a new key
/// being created (recorded before the provider is asked), or replaced keys waiting for the
/// restarted consumers. A grace period is not work under way: the new key is in use, and the
/// replaced one goes by the clock.
pub fn activity(status: &AccessKeyStatus) -> Activity {
    Activity {
        issuing: status.pending.is_some(),
        rolling_out: matches!(RotatingState::of(status), RotatingState::RollingOut(_)),
    }
}

/// Whether the `Rotating` condition says `Blocked`.
pub fn is_blocked(conditions: &[Condition]) -> bool {
    conditions.iter().any(|c| c.type_ == ROTATING && c.reason == "Blocked")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{IssuerKind, IssuerRef};

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    fn issuer() -> IssuerRef {
        IssuerRef { name: "i".into(), kind: IssuerKind::KeyIssuer }
    }

    fn settings(every: Option<u64>) -> RotationSettings {
        RotationSettings { every: every.map(Duration::from_secs), ..RotationSettings::default() }
    }

    #[test]
    fn settings_default_to_ten_minutes_of_grace_and_half_an_hour_of_rollout() {
        let spec: AccessKeySpec = serde_json::from_value(serde_json::json!({
            "issuerRef": {"name": "i"}, "secretName": "s", "local": {}}))
        .expect("spec");
        assert_eq!(RotationSettings::of(&spec, None), Ok(RotationSettings::default()));
        let mut spec = spec;
        spec.rotation = Some(Box::new(crate::api::Rotation { every: Some("30s".into()), ..Default::default() }));
        assert!(RotationSettings::of(&spec, None).expect_err("too short").to_string().contains("minimum of 1m"));
        spec.rotation = Some(Box::new(crate::api::Rotation {
            every: Some("720h".into()),
            grace_period: Some("0s".into()),
            rollout_timeout: Some("5m".into()),
            ..Default::default()
        }));
        let s = RotationSettings::of(&spec, None).expect("valid");
        assert_eq!(
            (s.every, s.grace_period, s.rollout_timeout, s.max_usage_hold),
            (Some(Duration::from_secs(2_592_000)), Duration::ZERO, Duration::from_secs(300), DEFAULT_MAX_USAGE_HOLD)
        );
        spec.rotation =
            Some(Box::new(crate::api::Rotation { max_usage_hold: Some("20s".into()), ..Default::default() }));
        assert_eq!(RotationSettings::of(&spec, None).map(|s| s.max_usage_hold), Ok(Duration::from_secs(20)));
    }

    #[test]
    fn each_rotate_value_is_handled_once_and_its_grace_applies_to_that_rotation_only() {
        let mut annotations = BTreeMap::from([(ROTATE_ANNOTATION.to_string(), "1".to_string())]);
        annotations.insert(ROTATE_GRACE_ANNOTATION.into(), "0s".into());
        let mut status = AccessKeyStatus::default();
        assert_eq!(rotate_request(&annotations, &status), Some("1"));
        assert_eq!(grace_for_replacement(&annotations, &status, &settings(None)), Ok(Duration::ZERO));
        status.last_rotate_request = Some("1".into());
        assert_eq!(rotate_request(&annotations, &status), None);
        // The annotation left behind does not shorten a later (scheduled, spec) replacement.
        assert_eq!(grace_for_replacement(&annotations, &status, &settings(None)), Ok(DEFAULT_GRACE_PERIOD));
        annotations.insert(ROTATE_ANNOTATION.into(), "2".into());
        annotations.insert(ROTATE_GRACE_ANNOTATION.into(), "soon".into());
        assert!(grace_for_replacement(&annotations, &status, &settings(None)).is_err());
    }

    #[test]
    fn next_rotation_is_the_earlier_of_schedule_and_renewal() {
        let mut status = AccessKeyStatus { issued_at: Some(Time(t("2026-01-01T00:00:00Z"))), ..Default::default() };
        let now = t("2026-01-01T00:00:00Z");
        assert_eq!(next_rotation_time(&status, &settings(None), now), None);
        assert_eq!(next_rotation_time(&status, &settings(Some(3600)), now), Some(t("2026-01-01T01:00:00Z")));
        status.renewal_time = Some(Time(t("2026-01-01T00:30:00Z")));
        assert_eq!(next_rotation_time(&status, &settings(Some(3600)), now), Some(t("2026-01-01T00:30:00Z")));
        assert_eq!(next_rotation_time(&status, &settings(None), now), Some(t("2026-01-01T00:30:00Z")));
    }

    fn window(schedule: &str) -> RotationWindow {
        RotationWindow { schedule: schedule.into(), duration: "1h".into(), time_zone: None }
    }

    #[test]
    fn an_access_keys_own_windows_win_over_its_issuers_and_an_empty_list_means_any_time() {
        let mut spec: AccessKeySpec = serde_json::from_value(serde_json::json!({
            "issuerRef": {"name": "i"}, "secretName": "s", "local": {}}))
        .expect("spec");
        let issuers = [window("0 2 * * *")];
        let defaults = Some(DefaultWindows { issuer: "KeyIssuer team-a/i", windows: &issuers });
        let from_issuer = RotationSettings::of(&spec, defaults).expect("valid");
        assert_eq!(from_issuer.windows, Windows::parse(&issuers, "w").expect("valid"));
        let own = [window("0 14 * * *")];
        spec.rotation = Some(Box::new(crate::api::Rotation { windows: Some(own.to_vec()), ..Default::default() }));
        assert_eq!(
            RotationSettings::of(&spec, defaults).expect("valid").windows,
            Windows::parse(&own, "w").expect("ok")
        );
        spec.rotation = Some(Box::new(crate::api::Rotation { windows: Some(Vec::new()), ..Default::default() }));
        assert!(RotationSettings::of(&spec, defaults).expect("valid").windows.is_empty());
        // An issuer's invalid default is the AccessKey's problem too, naming the issuer's field.
        spec.rotation = None;
        let broken = [window("0 2 * *")];
        let e = RotationSettings::of(&spec, Some(DefaultWindows { issuer: "KeyIssuer team-a/i", windows: &broken }))
            .expect_err("four fields");
        let text = e.to_string();
        assert!(
            text.starts_with(
                "spec.rotation.windows: the default of KeyIssuer team-a/i: spec.rotationDefaults.windows[0].schedule"
            ),
            "{text}"
        );
    }

    #[test]
    fn the_next_rotation_is_moved_to_the_first_window_and_a_renewal_with_no_window_left_is_not() {
        let now = t("2026-01-05T12:00:00Z");
        let mut status = AccessKeyStatus { issued_at: Some(Time(t("2026-01-05T11:00:00Z"))), ..Default::default() };
        let mut s = settings(Some(3600 * 2));
        s.windows = Windows::parse(&[window("0 2 * * *")], "rotation.windows").expect("valid");
        // Due at 13:00, outside the 02:00-03:00 window: tomorrow 02:00.
        assert_eq!(next_rotation_time(&status, &s, now), Some(t("2026-01-06T02:00:00Z")));
        // Woken when it is due (to say it is deferred), then at the window.
        assert_eq!(next_wakeup(&status, &s, now), Some(t("2026-01-05T13:00:00Z")));
        assert_eq!(next_wakeup(&status, &s, t("2026-01-05T13:00:00Z")), Some(t("2026-01-06T02:00:00Z")));
        // A renewal at 12:30 of a key expiring at 14:00 has no window before it must go.
        status.renewal_time = Some(Time(t("2026-01-05T12:30:00Z")));
        status.expires_at = Some(Time(t("2026-01-05T14:00:00Z")));
        assert_eq!(planned_renewal(&status, &s, now), Some(Planned::NoWindow(t("2026-01-05T12:30:00Z"))));
        assert_eq!(next_rotation_time(&status, &s, now), Some(t("2026-01-05T12:30:00Z")));
        // Expiring in three days, it waits for the window.
        status.expires_at = Some(Time(t("2026-01-08T12:00:00Z")));
        assert_eq!(planned_renewal(&status, &s, now), Some(Planned::InWindow(t("2026-01-06T02:00:00Z"))));
    }

    #[test]
    fn only_a_request_asked_now_or_for_a_leaked_key_skips_the_windows() {
        let status = AccessKeyStatus::default();
        let mut annotations = BTreeMap::from([(ROTATE_ANNOTATION.to_string(), "1".to_string())]);
        assert!(!request_ignores_windows(&annotations, &status));
        annotations.insert(ROTATE_NOW_ANNOTATION.into(), "true".into());
        assert!(request_ignores_windows(&annotations, &status));
        annotations.remove(ROTATE_NOW_ANNOTATION);
        annotations.insert(ROTATE_GRACE_ANNOTATION.into(), "0s".into());
        assert!(request_ignores_windows(&annotations, &status));
        // Handled already: the annotations left behind apply to nothing.
        let handled = AccessKeyStatus { last_rotate_request: Some("1".into()), ..Default::default() };
        assert!(!request_ignores_windows(&annotations, &handled));
    }

    #[test]
    fn a_replaced_key_waits_for_the_rollout_then_its_grace_ended_by_its_expiry() {
        let now = t("2026-01-01T00:00:00Z");
        let mut status = AccessKeyStatus::default();
        status.retired.push(retire("K1".into(), "r1".into(), issuer(), None, Duration::from_secs(600), now));
        status.retired.push(retire(
            "K0".into(),
            "r0".into(),
            issuer(),
            Some(Time(t("2026-01-01T00:12:00Z"))),
            Duration::from_secs(3600),
            now,
        ));
        assert!(!retired_due(&status.retired[0], t("2026-01-02T00:00:00Z")), "never while rolling out");
        assert_eq!(RotatingState::of(&status), RotatingState::RollingOut(2));
        assert_eq!(rollout_deadline(&status, &settings(None)), Some(t("2026-01-01T00:30:00Z")));
        let rolled_out = t("2026-01-01T00:05:00Z");
        start_grace(&mut status, rolled_out);
        assert_eq!(status.retired[0].revoke_after, Some(Time(t("2026-01-01T00:15:00Z"))));
        assert_eq!(status.retired[1].revoke_after, Some(Time(t("2026-01-01T00:11:59Z"))), "ends before the expiry");
        assert!(!retired_due(&status.retired[0], t("2026-01-01T00:14:59Z")));
        assert!(retired_due(&status.retired[0], t("2026-01-01T00:15:00Z")));
        assert_eq!(rollout_deadline(&status, &settings(None)), None);
        assert_eq!(next_wakeup(&status, &settings(None), rolled_out), Some(t("2026-01-01T00:11:59Z")));
        assert_eq!(RotatingState::of(&status), RotatingState::GracePeriod(2, t("2026-01-01T00:11:59Z")));
        // A schedule already due waits for the replaced keys: no wake-up every second for it.
        status.issued_at = Some(Time(t("2025-12-31T00:00:00Z")));
        assert_eq!(next_wakeup(&status, &settings(Some(60)), rolled_out), Some(t("2026-01-01T00:11:59Z")));
    }

    /// A key whose grace period started at 00:05 (rolled out) and ended at 00:15.
    fn graced(grace_secs: u64) -> RetiredKey {
        let mut status = AccessKeyStatus::default();
        let retired_at = t("2026-01-01T00:00:00Z");
        status.retired.push(retire(
            "K1".into(),
            "r1".into(),
            issuer(),
            None,
            Duration::from_secs(grace_secs),
            retired_at,
        ));
        start_grace(&mut status, t("2026-01-01T00:05:00Z"));
        status.retired.remove(0)
    }

    #[test]
    fn a_replaced_key_used_after_the_switch_is_held_up_to_max_usage_hold_past_its_grace_period() {
        let r = graced(600);
        let hour = Duration::from_secs(3600);
        let grace_end = t("2026-01-01T00:15:00Z");
        assert!(!usage_check_due(&r, hour, t("2026-01-01T00:14:59Z")), "not asked during the grace period");
        assert!(usage_check_due(&r, hour, grace_end));
        // Used before the consumers rolled out, or never: revoked at the end of the grace period.
        assert_eq!(usage_hold(&r, Some(t("2026-01-01T00:04:00Z")), hour, grace_end), None);
        assert_eq!(usage_hold(&r, Some(t("2026-01-01T00:05:00Z")), hour, grace_end), None);
        assert_eq!(usage_hold(&r, None, hour, grace_end), None);
        // Used after: held until the grace period's end plus maxUsageHold.
        let used = t("2026-01-01T00:10:00Z");
        assert_eq!(usage_hold(&r, Some(used), hour, grace_end), Some(t("2026-01-01T01:15:00Z")));
        // Asked late (the operator was away): the hold still ends where it would have.
        assert_eq!(usage_hold(&r, Some(used), hour, t("2026-01-01T01:00:00Z")), Some(t("2026-01-01T01:15:00Z")));
        assert_eq!(usage_hold(&r, Some(used), hour, t("2026-01-01T01:15:00Z")), None, "the hold is over already");
        // maxUsageHold 0s: never held, never asked.
        assert!(!usage_check_due(&r, Duration::ZERO, grace_end));
        assert_eq!(usage_hold(&r, Some(used), Duration::ZERO, grace_end), None);
        // A grace period of 0s (a leaked key): never held.
        let leaked = graced(0);
        assert_eq!(usage_hold(&leaked, Some(t("2026-01-01T00:06:00Z")), hour, grace_end), None);

        // Held: due only once the hold ends; not asked again; the wake-up and the condition follow.
        let mut held = r.clone();
        held.held_until = Some(Time(t("2026-01-01T01:15:00Z")));
        held.last_used_at = Some(Time(used));
        assert!(!retired_due(&held, t("2026-01-01T01:14:59Z")));
        assert!(retired_due(&held, t("2026-01-01T01:15:00Z")));
        assert!(!usage_check_due(&held, hour, t("2026-01-01T01:15:00Z")));
        let status = AccessKeyStatus { retired: vec![held.clone()], ..Default::default() };
        assert_eq!(next_wakeup(&status, &settings(None), t("2026-01-01T01:00:00Z")), Some(t("2026-01-01T01:15:00Z")));
        assert_eq!(RotatingState::of(&status), RotatingState::UsageHold(1, t("2026-01-01T01:15:00Z")));
        let note = usage_hold_note(&held, used, t("2026-01-01T01:15:00Z"), "K2");
        assert!(note.contains("K1") && note.contains("K2") && note.contains("2026-01-01T01:15:00Z"), "{note}");

        // Never past the key's expiry.
        let mut expiring = r.clone();
        expiring.expires_at = Some(Time(t("2026-01-01T00:45:00Z")));
        assert_eq!(usage_hold(&expiring, Some(used), hour, grace_end), Some(t("2026-01-01T00:44:59Z")));
    }

    #[test]
    fn keys_retired_by_an_older_operator_are_revoked_at_once() {
        let old = RetiredKey {
            access_key_id: "K".into(),
            key_ref: "r".into(),
            issuer: issuer(),
            retired_at: None,
            revoke_after: None,
            grace_period_seconds: None,
            expires_at: None,
            last_used_at: None,
            held_until: None,
        };
        assert!(retired_due(&old, t("2026-01-01T00:00:00Z")));
    }

    #[test]
    fn with_a_new_key_an_access_key_holds_at_most_two_live_keys() {
        let now = t("2026-01-01T00:00:00Z");
        let mut status = AccessKeyStatus { access_key_id: Some("K2".into()), ..Default::default() };
        assert!(revoke_before_minting(&status).is_empty(), "current + new");
        status.retired.push(retire("K1".into(), "r1".into(), issuer(), None, Duration::from_secs(3600), now));
        let ids = |s: &AccessKeyStatus| -> Vec<String> {
            revoke_before_minting(s).iter().map(|r| r.access_key_id.clone()).collect()
        };
        assert_eq!(ids(&status), vec!["K1".to_string()], "current + replaced + new would be three");
        status.access_key_id = None;
        assert_eq!(ids(&status), Vec::<String>::new(), "no current key: the replaced one may stay");
    }

    #[test]
    fn the_revoked_event_names_the_early_end_of_the_grace_period() {
        let now = t("2026-01-01T00:00:00Z");
        let mut r = retire("K1".into(), "r1".into(), issuer(), None, Duration::from_secs(3600), now);
        let rolling = early_revocation_note(&r, "rotation requested", now);
        assert!(rolling.contains("K1") && rolling.contains("grace period ends early"), "{rolling}");
        assert!(rolling.contains("rotation requested") && rolling.contains("at most 2 live keys"), "{rolling}");
        let mut status = AccessKeyStatus { retired: vec![r.clone()], ..Default::default() };
        start_grace(&mut status, now);
        r = status.retired[0].clone();
        let note = early_revocation_note(&r, "rotation requested", now);
        assert!(note.contains("ends early (it was to end at 2026-01-01T01:00:00Z)"), "{note}");
    }

    #[test]
    fn refused_keys_are_retried_from_a_minute_to_an_hour() {
        assert_eq!(blocked_retry(0), Duration::from_secs(60));
        assert_eq!(blocked_retry(2), Duration::from_secs(240));
        assert_eq!(blocked_retry(30), Duration::from_secs(3600));
    }

    #[test]
    fn the_rotating_condition_keeps_its_transition_time_while_its_status_holds() {
        let mut conditions = Vec::new();
        let now = t("2026-01-01T00:00:00Z");
        assert!(put_rotating(&mut conditions, &RotatingState::RollingOut(1), Some(1), now));
        assert!(!put_rotating(&mut conditions, &RotatingState::RollingOut(1), Some(1), now));
        let later = t("2026-01-01T00:01:00Z");
        assert!(put_rotating(&mut conditions, &RotatingState::GracePeriod(1, later), Some(1), later));
        assert_eq!(conditions[0].last_transition_time, Time(now));
        assert!(put_rotating(&mut conditions, &RotatingState::Idle, Some(1), later));
        assert_eq!((conditions[0].reason.as_str(), conditions[0].last_transition_time.clone()), ("Idle", Time(later)));
        assert!(!is_blocked(&conditions));
        put_rotating(&mut conditions, &RotatingState::Blocked("quota".into()), Some(1), later);
        assert!(is_blocked(&conditions) && conditions.len() == 1);
    }
}
