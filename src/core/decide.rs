//! What to do next with an AccessKey, decided from observed state alone: no I/O here, so every
//! branch is covered by fast unit tests. `access_key.rs` observes, calls `decide`, acts, and
//! observes again until the answer is `Ready` or `NotReady`.

use std::time::Duration;

use crate::api::{AccessKeyStatus, ConsumerStatus, ConsumerTarget, IssuerRef};
// A key an interrupted creation left is part of what a decision names (`Step::Adopt`), so the
// commands that show decisions take it from here.
pub use crate::providers::OwnedKey;

use super::conditions::Reason;
use super::consumers::Workload;
use super::rotation::{self, RotationSettings};
use super::secret::SecretState;
use super::windows::Planned;

/// The issuer as the AccessKey sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerState {
    NotFound(String),
    /// Exists and has not been checked yet (just created, say, with its AccessKeys): nothing is
    /// wrong yet, it is waited for.
    Unchecked(String),
    NotReady(String),
    Ready,
}

#[derive(Debug, Clone)]
pub struct Observed<'a> {
    pub status: &'a AccessKeyStatus,
    /// Why the spec cannot be acted on (schema rules, provider mismatch, templates), if it can't.
    pub spec_problem: Option<String>,
    pub issuer: IssuerState,
    /// The issuer the spec names now.
    pub issuer_ref: &'a IssuerRef,
    /// Fingerprint of the spec fields a key is issued for.
    pub spec_hash: &'a str,
    pub secret: &'a SecretState,
    /// Keys carrying this AccessKey's markers, when they were listed in this pass.
    pub owned_keys: Option<&'a [OwnedKey]>,
    /// Revocation of `status.retired` was already tried in this pass.
    pub retired_tried: bool,
    pub rotation: &'a RotationSettings,
    /// The `cloudkeys.io/rotate` value not handled yet.
    pub rotate_request: Option<&'a str>,
    /// That request does not wait for a rotation window (`--now`, `--immediate`).
    pub rotate_now: bool,
    /// The workloads `spec.consumers` names, as observed now.
    pub consumers: &'a [Workload],
    /// The provider refused a new key for this spec: no new attempt before then.
    pub blocked_until: Option<jiff::Timestamp>,
    /// Why the issuer's policy does not allow a new key for this spec, if it does not.
    pub policy_denial: Option<&'a str>,
    /// A drift check found the current key gone (or deactivated) at the provider.
    pub revoked_at_provider: bool,
    /// What the last drift check found about the current key at the provider.
    pub provider_view: Option<&'a ProviderView>,
    pub now: jiff::Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A creation was interrupted: list the keys carrying this AccessKey's markers.
    ListOwnedKeys,
    /// The interrupted creation's key is in the Secret already: record it as the current key.
    Adopt(OwnedKey),
    /// Revoke what the interrupted creation left behind, then forget the attempt.
    ResolvePending {
        revoke: Vec<OwnedKey>,
    },
    /// Revoke the replaced keys whose grace period is over.
    RevokeRetired,
    /// Restart these consumers for the current key (their pod template names another).
    RestartConsumers(Vec<ConsumerTarget>),
    /// Record the consumers' rollout; once they all rolled out (or `rolloutTimeout` passed, for
    /// those in `timed_out`), the grace period of the replaced keys starts.
    RecordConsumers {
        consumers: Vec<ConsumerStatus>,
        start_grace: bool,
        timed_out: Vec<ConsumerTarget>,
    },
    /// `status.nextRotationTime` is not what the schedule says (issued, or `rotation` edited).
    UpdateSchedule(Option<jiff::Timestamp>),
    /// A new key is due for `reason`, but with it the AccessKey would hold more than two live
    /// keys: first revoke these replaced keys (by `keyRef`, oldest first), their grace period
    /// cut short. Nothing is minted until the provider confirmed.
    RevokeEarly {
        reason: IssueReason,
        key_refs: Vec<String>,
    },
    /// Create a key, write the Secret, record the key (the old one, if any, is retired).
    Issue {
        reason: IssueReason,
    },
    /// A replacement forced by the Secret or the clock is due, but the current key is too young
    /// (see [`replacement_hold`]): wait this long, so that whatever keeps changing the Secret
    /// cannot make the operator mint keys in a loop.
    WaitBeforeReplacing(IssueReason, Duration),
    /// The provider shows the current key other than the status records it: a new last use,
    /// another expiry. `None`: nothing new about that one.
    RecordProviderView {
        last_used_at: Option<jiff::Timestamp>,
        expires_at: Option<Option<jiff::Timestamp>>,
    },
    /// Labels, annotations or owner reference of the Secret drifted: fix them in place.
    UpdateSecretMetadata,
    Ready,
    /// Ready, and a replacement for `reason` is due but waits for the rotation window that
    /// opens at `until` (`status.nextRotationTime` says so already).
    Deferred {
        reason: IssueReason,
        until: jiff::Timestamp,
    },
    NotReady(Reason, String),
    /// The issuer has not been checked yet: say so in the condition, without a Warning (an
    /// issuer and its AccessKeys applied together is the happy path), and wait for its check.
    AwaitIssuerCheck(String),
}

/// The current key as a drift check saw it at the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderView {
    pub last_used_at: Option<jiff::Timestamp>,
    /// `None`: the provider does not say; `Some(None)`: the key never expires.
    pub expires_at: Option<Option<jiff::Timestamp>>,
}

impl ProviderView {
    /// What differs from the status, to the second (status keeps whole seconds). A last use is
    /// news once it is a day past the recorded one: a busy key costs a write a day, not one
    /// per sweep.
    pub fn news(&self, status: &AccessKeyStatus) -> Option<Step> {
        const DAY: i64 = 86_400;
        let second = |t: Option<jiff::Timestamp>| t.map(|t| t.as_second());
        let recorded_use = second(status.last_used_at.as_ref().map(|t| t.0));
        let last_used_at = self.last_used_at.filter(|t| recorded_use.is_none_or(|r| t.as_second() >= r + DAY));
        let recorded_expiry = second(status.expires_at.as_ref().map(|t| t.0));
        let expires_at = self.expires_at.filter(|e| second(*e) != recorded_expiry);
        (last_used_at.is_some() || expires_at.is_some())
            .then_some(Step::RecordProviderView { last_used_at, expires_at })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueReason {
    FirstKey,
    SpecChanged,
    SecretDeleted,
    SecretModified,
    ExpiresSoon,
    /// `rotation.every` has passed since the key was issued.
    Scheduled,
    /// A new `cloudkeys.io/rotate` value.
    Requested,
    /// A drift check found the current key revoked at the provider, behind the operator's back.
    RevokedAtProvider,
}

/// What the Secret holds of the current key, as the replacement triggers read it.
pub struct InSecret<'a> {
    /// The current key's id (the status's).
    pub current: &'a str,
    /// The key id the Secret's annotation names, if the Secret is there.
    pub key_id: Option<&'a str>,
    /// The Secret's data is what was written for that key.
    pub data_intact: bool,
}

/// One reason to replace the current key: `Some` when it applies now.
pub type Trigger = fn(&Observed<'_>, &InSecret<'_>) -> Option<IssueReason>;

/// The reasons to replace the current key, asked in this order; the first that applies is the
/// replacement's reason. The user's changes come first (they change what the key is for), then
/// what broke the key (the provider, the Secret), then what the user asked, then the clock.
pub const TRIGGERS: [Trigger; 7] =
    [spec_changed, revoked_at_provider, secret_deleted, secret_modified, requested, expires_soon, scheduled];

/// The spec a key is issued for changed (issuer, provider block, Secret name, data template).
pub fn spec_changed(o: &Observed<'_>, _: &InSecret<'_>) -> Option<IssueReason> {
    (o.status.key_spec_hash.as_deref() != Some(o.spec_hash)).then_some(IssueReason::SpecChanged)
}

/// A drift check found the current key gone at the provider.
pub fn revoked_at_provider(o: &Observed<'_>, _: &InSecret<'_>) -> Option<IssueReason> {
    o.revoked_at_provider.then_some(IssueReason::RevokedAtProvider)
}

/// The Secret is gone.
pub fn secret_deleted(o: &Observed<'_>, _: &InSecret<'_>) -> Option<IssueReason> {
    matches!(o.secret, SecretState::Absent).then_some(IssueReason::SecretDeleted)
}

/// The Secret names another key, or its data was edited.
pub fn secret_modified(_: &Observed<'_>, s: &InSecret<'_>) -> Option<IssueReason> {
    (s.key_id != Some(s.current) || !s.data_intact).then_some(IssueReason::SecretModified)
}

/// A `cloudkeys.io/rotate` value not handled yet.
pub fn requested(o: &Observed<'_>, _: &InSecret<'_>) -> Option<IssueReason> {
    o.rotate_request.is_some().then_some(IssueReason::Requested)
}

/// The provider's expiry is near (`status.renewalTime` has passed).
pub fn expires_soon(o: &Observed<'_>, _: &InSecret<'_>) -> Option<IssueReason> {
    o.status.renewal_time.as_ref().is_some_and(|t| t.0 <= o.now).then_some(IssueReason::ExpiresSoon)
}

/// `rotation.every` has passed since the key was issued. One rotation at a time by the clock: the
/// schedule waits for the last replaced key to go, so that no more than two keys are live.
pub fn scheduled(o: &Observed<'_>, _: &InSecret<'_>) -> Option<IssueReason> {
    let due = rotation::scheduled_rotation(o.status, o.rotation).is_some_and(|t| t <= o.now);
    (due && o.status.retired.is_empty()).then_some(IssueReason::Scheduled)
}

/// When the rotation windows let the replacement for `reason` begin, if that is not now. Only
/// the schedule, a renewal ahead of expiry that has a window left before the key must go, and a
/// plain rotation request wait; what the Secret, the provider or the user forces never does.
pub fn window_hold(o: &Observed<'_>, reason: IssueReason) -> Option<jiff::Timestamp> {
    let windows = &o.rotation.windows;
    if windows.is_empty() {
        return None;
    }
    let until = match reason {
        IssueReason::Scheduled => rotation::planned_rotation(o.status, o.rotation, o.now)?,
        IssueReason::ExpiresSoon => match rotation::planned_renewal(o.status, o.rotation, o.now)? {
            Planned::InWindow(t) => t,
            Planned::NoWindow(_) => return None,
        },
        IssueReason::Requested if !o.rotate_now => windows.plan(o.now, o.now)?,
        _ => return None,
    };
    (!windows.allow(o.now) && until > o.now).then_some(until)
}

/// The first replacement forced by the Secret waits until the key is this old; each further
/// one in a row doubles it.
pub const FORCED_REPLACEMENT_WAIT: Duration = Duration::from_secs(10);
pub const FORCED_REPLACEMENT_MAX_WAIT: Duration = Duration::from_secs(3600);

/// The wait before a replacement forced by the Secret, after `forced` such replacements in a row.
pub fn forced_replacement_wait(forced: u32) -> Duration {
    FORCED_REPLACEMENT_WAIT.saturating_mul(1u32 << forced.min(16)).min(FORCED_REPLACEMENT_MAX_WAIT)
}

/// The user's own replacements (spec changes, rotation requests) that go at once in a row; each
/// further one waits as a replacement forced by the Secret does.
pub const FREE_REPEATS: u32 = 5;

/// How old the current key must be before it may be replaced for `reason`: briefly for expiry,
/// with exponential backoff for the Secret, and for the user's own changes at once, unless more
/// than [`FREE_REPEATS`] come in a row: each key minted costs the issuer's rate limit, shared
/// with every other AccessKey of the account, and a loop of `cloudkeys.io/rotate` values must
/// not spend it.
pub fn replacement_hold(reason: IssueReason, status: &AccessKeyStatus) -> Option<Duration> {
    let forced = status.forced_replacements.unwrap_or(0);
    match reason {
        // A dead key is replaced at once: the workload fails until then.
        IssueReason::FirstKey | IssueReason::Scheduled | IssueReason::RevokedAtProvider => None,
        IssueReason::ExpiresSoon => Some(FORCED_REPLACEMENT_WAIT),
        IssueReason::SecretDeleted | IssueReason::SecretModified => Some(forced_replacement_wait(forced)),
        IssueReason::SpecChanged | IssueReason::Requested => {
            status.requested_replacements.unwrap_or(0).checked_sub(FREE_REPEATS).map(forced_replacement_wait)
        }
    }
}

/// How long ago the current key was issued (zero if in the future, `None` if unknown).
pub fn key_age(status: &AccessKeyStatus, now: jiff::Timestamp) -> Option<Duration> {
    let issued = status.issued_at.as_ref()?.0;
    Some(Duration::try_from(now.duration_since(issued)).unwrap_or(Duration::ZERO))
}

/// `status.forcedReplacements` once the current key is replaced for `reason` at `now`: counted
/// up while the Secret keeps being overwritten, back to one once the key had stayed put for an
/// hour (or twice its wait, if longer), and zero for any replacement the Secret did not force.
pub fn forced_replacements_after(reason: IssueReason, status: &AccessKeyStatus, now: jiff::Timestamp) -> u32 {
    if !reason.is_forced_by_secret() {
        return 0;
    }
    counted_after(status.forced_replacements.unwrap_or(0), status, now)
}

/// `status.requestedReplacements` once the current key is replaced for `reason` at `now`:
/// counted up with each rotation request or spec change, and kept by every other replacement
/// (a scheduled rotation in between does not start it over); back to one, or zero, only once a
/// key stayed put for an hour (or twice its wait, if longer).
pub fn requested_replacements_after(reason: IssueReason, status: &AccessKeyStatus, now: jiff::Timestamp) -> u32 {
    let requested = status.requested_replacements.unwrap_or(0);
    let asked = matches!(reason, IssueReason::Requested | IssueReason::SpecChanged);
    match (asked, settled(requested.saturating_sub(FREE_REPEATS), status, now)) {
        (true, true) => 1,
        (true, false) => requested.saturating_add(1),
        (false, true) => 0,
        (false, false) => requested,
    }
}

/// `count` once the current key is replaced: one more, or one alone once the key had stayed put.
fn counted_after(count: u32, status: &AccessKeyStatus, now: jiff::Timestamp) -> u32 {
    if settled(count, status, now) {
        1
    } else {
        count.saturating_add(1)
    }
}

/// Whether the current key stayed put long enough to start a count of `count` over: an hour at
/// least (a sync tool rewriting the Secret every few minutes is a fight too), or twice the wait.
fn settled(count: u32, status: &AccessKeyStatus, now: jiff::Timestamp) -> bool {
    let quiet = (forced_replacement_wait(count) * 2).max(FORCED_REPLACEMENT_MAX_WAIT);
    key_age(status, now).is_some_and(|age| age >= quiet)
}

impl IssueReason {
    pub fn is_forced_by_secret(self) -> bool {
        matches!(self, Self::SecretDeleted | Self::SecretModified)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::FirstKey => "first key",
            Self::SpecChanged => "the spec changed",
            Self::SecretDeleted => "the Secret was deleted",
            Self::SecretModified => "the Secret's data was modified",
            Self::ExpiresSoon => "the key expires soon",
            Self::Scheduled => "rotation.every has passed",
            Self::Requested => "rotation requested (cloudkeys.io/rotate)",
            Self::RevokedAtProvider => "the key was revoked at the provider",
        }
    }

    /// The label of the rotations-by-reason metric.
    pub fn label(self) -> &'static str {
        match self {
            Self::FirstKey => "first",
            Self::SpecChanged => "spec_changed",
            Self::SecretDeleted => "secret_deleted",
            Self::SecretModified => "secret_modified",
            Self::ExpiresSoon => "expiry",
            Self::Scheduled => "scheduled",
            Self::Requested => "requested",
            Self::RevokedAtProvider => "revoked_at_provider",
        }
    }
}

pub fn decide(o: &Observed<'_>) -> Step {
    if let Some(pending) = &o.status.pending {
        let Some(keys) = o.owned_keys else {
            return Step::ListOwnedKeys;
        };
        let in_secret = match o.secret {
            SecretState::Ours { key_id: Some(id), data_intact: true, .. } => Some(id.as_str()),
            _ => None,
        };
        let adoptable = keys.iter().find(|k| {
            k.marker.attempt() == pending.attempt
                && k.access_key_id.is_some()
                && k.access_key_id.as_deref() == in_secret
                && k.access_key_id != o.status.access_key_id
        });
        if let Some(key) = adoptable {
            return Step::Adopt(key.clone());
        }
        // Compared by public id as well as by reference: a provider may spell the reference of
        // the same key differently when listing (e.g. without a role it cannot see any more).
        let same =
            |k: &OwnedKey, id: &str, key_ref: &str| k.key_ref == key_ref || k.access_key_id.as_deref() == Some(id);
        let keep = |k: &&OwnedKey| {
            let current = match (&o.status.access_key_id, &o.status.key_ref) {
                (Some(id), Some(key_ref)) => same(k, id, key_ref),
                _ => false,
            };
            current || o.status.retired.iter().any(|r| same(k, &r.access_key_id, &r.key_ref))
        };
        let revoke = keys.iter().filter(|k| !keep(k)).cloned().collect();
        return Step::ResolvePending { revoke };
    }
    if !o.retired_tried && o.status.retired.iter().any(|r| rotation::retired_due(r, o.now)) {
        return Step::RevokeRetired;
    }
    if let Some(problem) = &o.spec_problem {
        return Step::NotReady(Reason::InvalidSpec, problem.clone());
    }
    match &o.issuer {
        IssuerState::NotFound(m) => return Step::NotReady(Reason::IssuerNotFound, m.clone()),
        IssuerState::Unchecked(m) => return Step::AwaitIssuerCheck(m.clone()),
        IssuerState::NotReady(m) => return Step::NotReady(Reason::IssuerNotReady, m.clone()),
        IssuerState::Ready => {}
    }
    let (secret_key_id, data_intact, metadata_current) = match o.secret {
        SecretState::Foreign(name) => {
            return Step::NotReady(
                Reason::SecretConflict,
                format!(
                    "Secret {name} exists and is not controlled by this AccessKey: choose another secretName (that \
                     Secret may belong to another application), or delete it if it is left over; the key is issued \
                     once it is gone"
                ),
            )
        }
        SecretState::Absent => (None, false, false),
        SecretState::Ours { key_id, data_intact, metadata_current } => {
            (key_id.as_deref(), *data_intact, *metadata_current)
        }
    };
    let Some(current) = o.status.access_key_id.as_deref() else {
        if let Some(denial) = o.policy_denial {
            return Step::NotReady(Reason::PolicyDenied, denial.to_string());
        }
        return make_room(o.status, IssueReason::FirstKey).unwrap_or(Step::Issue { reason: IssueReason::FirstKey });
    };
    let in_secret = InSecret { current, key_id: secret_key_id, data_intact };
    // A trigger held back by the rotation windows lets the next one speak (an expiry with no
    // window left goes ahead while a request waits); the earliest window any waits for is kept.
    let mut deferred: Option<(IssueReason, jiff::Timestamp)> = None;
    let reason = TRIGGERS.iter().find_map(|trigger| {
        let reason = trigger(o, &in_secret)?;
        match window_hold(o, reason) {
            None => Some(reason),
            Some(until) => {
                if deferred.is_none_or(|(_, t)| until < t) {
                    deferred = Some((reason, until));
                }
                None
            }
        }
    });
    // A replacement that cannot go ahead now (held back, refused by the provider or by the
    // policy) must not hold up the one under way: its consumers and grace period go on first.
    let held = reason.and_then(|reason| {
        if let (Some(hold), Some(age)) = (replacement_hold(reason, o.status), key_age(o.status, o.now)) {
            if age < hold {
                return Some(Step::WaitBeforeReplacing(reason, hold - age));
            }
        }
        // A policy tightened since the key was issued stops the new key, and revokes nothing.
        if let Some(denial) = o.policy_denial {
            return Some(Step::NotReady(Reason::PolicyDenied, denial.to_string()));
        }
        let until = o.blocked_until.filter(|t| *t > o.now)?;
        let wait = Duration::try_from(until.duration_since(o.now)).unwrap_or(Duration::ZERO);
        Some(Step::WaitBeforeReplacing(reason, wait))
    });
    match (reason, held) {
        (Some(reason), None) => return make_room(o.status, reason).unwrap_or(Step::Issue { reason }),
        (_, held) => {
            if let Some(step) = consumer_step(o, current) {
                return step;
            }
            if let Some(step) = held {
                return step;
            }
        }
    }
    let planned = rotation::next_rotation_time(o.status, o.rotation, o.now);
    // A request waiting for a window is the next rotation too.
    let schedule = match (planned, deferred) {
        (Some(a), Some((_, b))) => Some(a.min(b)),
        (a, b) => a.or(b.map(|(_, t)| t)),
    };
    if o.status.next_rotation_time.as_ref().map(|t| t.0) != schedule {
        return Step::UpdateSchedule(schedule);
    }
    if let Some(step) = o.provider_view.and_then(|v| v.news(o.status)) {
        return step;
    }
    if !metadata_current {
        return Step::UpdateSecretMetadata;
    }
    match deferred {
        Some((reason, until)) => Step::Deferred { reason, until },
        None => Step::Ready,
    }
}

/// Bounded keys: a replacement that comes while a replaced key still waits revokes that older
/// key first, so that keys never stack (see [`rotation::MAX_LIVE_KEYS`]). Asked only once the new
/// key may go ahead (not held back, not refused), so that no grace period is cut short for a key
/// that is not minted.
fn make_room(status: &AccessKeyStatus, reason: IssueReason) -> Option<Step> {
    let key_refs: Vec<String> = rotation::revoke_before_minting(status).iter().map(|r| r.key_ref.clone()).collect();
    (!key_refs.is_empty()).then_some(Step::RevokeEarly { reason, key_refs })
}

/// While replaced keys wait for the rollout: restart the consumers not restarted for the
/// current key yet, record their progress, and start the grace period once they all rolled out
/// or `rolloutTimeout` has passed.
fn consumer_step(o: &Observed<'_>, current: &str) -> Option<Step> {
    if !o.status.retired.iter().any(rotation::awaits_rollout) {
        return None;
    }
    // Restarted for this key already: by its template (a restart not recorded yet) or by the
    // record (a cache that does not show the restart yet).
    let recorded =
        |w: &Workload| o.status.consumers.iter().any(|c| c.kind == w.kind && c.name == w.name && c.key_id == current);
    let restart: Vec<ConsumerTarget> = o
        .consumers
        .iter()
        .filter(|w| w.key_id.as_deref() != Some(current) && !recorded(w))
        .map(Workload::target)
        .collect();
    // Past the timeout nothing is restarted any more (a workload that cannot be patched must not
    // keep the replaced key live for ever).
    let timed_out = rotation::rollout_deadline(o.status, o.rotation).is_some_and(|t| t <= o.now);
    if !restart.is_empty() && !timed_out {
        return Some(Step::RestartConsumers(restart));
    }
    // Rolled out for this key: a cache that does not show the restart yet shows the rollout of
    // the previous template, which proves nothing.
    let consumers: Vec<ConsumerStatus> = o
        .consumers
        .iter()
        .map(|w| ConsumerStatus {
            kind: w.kind,
            name: w.name.clone(),
            key_id: current.to_string(),
            rolled_out: w.rolled_out && w.key_id.as_deref() == Some(current),
        })
        .collect();
    let all_rolled_out = consumers.iter().all(|c| c.rolled_out);
    // A grace period of 0s (a leaked key) waits for nothing once the restarts are done.
    let no_wait =
        o.status.retired.iter().filter(|r| rotation::awaits_rollout(r)).all(|r| r.grace_period_seconds == Some(0));
    if all_rolled_out || timed_out || no_wait {
        let late = if all_rolled_out || no_wait {
            Vec::new()
        } else {
            consumers
                .iter()
                .filter(|c| !c.rolled_out)
                .map(|c| ConsumerTarget { kind: c.kind, name: c.name.clone() })
                .collect()
        };
        return Some(Step::RecordConsumers { consumers, start_grace: true, timed_out: late });
    }
    (consumers != o.status.consumers).then_some(Step::RecordConsumers {
        consumers,
        start_grace: false,
        timed_out: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
