//! The `Ready` condition: a closed set of reasons, and messages that say what to do; and the
//! kstatus conditions `Stalled` and `Reconciling`, derived from it (Flux, Argo CD and
//! `kubectl wait` read those without knowing this API).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub use crate::api::conditions::{is_ready, READY};

/// Why an object is (not) Ready. The names are part of the API (docs/api.md, "Conditions and reasons").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// AccessKey: the key is in its Secret.
    Issued,
    /// Issuer: credentials readable and accepted.
    Ready,
    IssuerNotFound,
    IssuerNotReady,
    InvalidSpec,
    SecretConflict,
    /// The issuer's policy does not allow the key asked for.
    PolicyDenied,
    ProviderError,
    Revoking,
    RevocationFailed,
    /// A `Retain` that cannot be recorded in the issuer's status (its record is full).
    RetainFailed,
    SecretNotFound,
    InvalidCredentials,
    ProviderUnreachable,
    /// Issuer: being deleted, kept while AccessKeys still need it (finalizer `cloudkeys.io/in-use`).
    InUse,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "Issued",
            Self::Ready => "Ready",
            Self::IssuerNotFound => "IssuerNotFound",
            Self::IssuerNotReady => "IssuerNotReady",
            Self::InvalidSpec => "InvalidSpec",
            Self::SecretConflict => "SecretConflict",
            Self::PolicyDenied => "PolicyDenied",
            Self::ProviderError => "ProviderError",
            Self::Revoking => "Revoking",
            Self::RevocationFailed => "RevocationFailed",
            Self::RetainFailed => "RetainFailed",
            Self::SecretNotFound => "SecretNotFound",
            Self::InvalidCredentials => "InvalidCredentials",
            Self::ProviderUnreachable => "ProviderUnreachable",
            Self::InUse => "InUse",
        }
    }

    pub fn is_ready(self) -> bool {
        matches!(self, Self::Issued | Self::Ready)
    }

    /// The reason a Ready condition spells `s`, if it is one of ours.
    pub fn parse(s: &str) -> Option<Self> {
        ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

const ALL: [Reason; 15] = [
    Reason::Issued,
    Reason::Ready,
    Reason::IssuerNotFound,
    Reason::IssuerNotReady,
    Reason::InvalidSpec,
    Reason::SecretConflict,
    Reason::PolicyDenied,
    Reason::ProviderError,
    Reason::Revoking,
    Reason::RevocationFailed,
    Reason::RetainFailed,
    Reason::SecretNotFound,
    Reason::InvalidCredentials,
    Reason::ProviderUnreachable,
    Reason::InUse,
];

/// kstatus: `True` when nothing more can happen without a change by a person.
pub const STALLED: &str = "Stalled";
/// kstatus: `True` while the operator works toward what the spec asks.
pub const RECONCILING: &str = "Reconciling";

/// What the operator is doing about an object besides its Ready condition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// An AccessKey's new key is being created (`status.pending` is recorded).
    pub issuing: bool,
    /// An AccessKey's replaced keys wait for the restarted consumers to roll out.
    pub rolling_out: bool,
}

/// Where the work on an object stands, as kstatus reads it: exactly one of `Stalled=True`,
/// `Reconciling=True`, or neither (both absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Only a change by a person helps: the spec, a Secret of another owner, the issuer's
    /// policy or credentials. The operator looks again on such a change, and rarely otherwise.
    Stalled,
    /// Work under way, or a wait for something that comes by itself (an issuer's first check, a
    /// Secret or issuer applied in the same sync, a rollout). The reason says which.
    Reconciling(&'static str),
    /// Done (Ready), or failing and retried with backoff by itself: neither condition.
    Settled,
}

/// The progress an object's Ready reason (none: not reconciled yet) and activity amount to.
/// `Stalled` wins over any activity: an AccessKey whose policy denies the key asked for is
/// stalled even while the consumers of its current key still roll out.
pub fn progress(ready: Option<Reason>, activity: Activity) -> Progress {
    match ready {
        Some(Reason::PolicyDenied | Reason::InvalidSpec | Reason::SecretConflict | Reason::InvalidCredentials) => {
            Progress::Stalled
        }
        _ if activity.issuing => Progress::Reconciling("Issuing"),
        // The dependency arrives by watch (GitOps applies issuers, Secrets and AccessKeys in one
        // sync, External Secrets fills a Secret later); a stalled issuer says so itself.
        Some(Reason::IssuerNotFound | Reason::IssuerNotReady) => Progress::Reconciling("WaitingForIssuer"),
        Some(Reason::SecretNotFound) => Progress::Reconciling("WaitingForSecret"),
        Some(Reason::Revoking) => Progress::Reconciling("Revoking"),
        Some(Reason::InUse) => Progress::Reconciling("Deleting"),
        Some(Reason::Issued) if activity.rolling_out => Progress::Reconciling("RollingOut"),
        // No Ready condition yet (or one a newer operator wrote): the first pass is under way.
        None => Progress::Reconciling("Pending"),
        // Retried with backoff by the operator itself; Ready=False says what fails.
        Some(
            Reason::Issued
            | Reason::Ready
            | Reason::ProviderError
            | Reason::ProviderUnreachable
            | Reason::RevocationFailed
            | Reason::RetainFailed,
        ) => Progress::Settled,
    }
}

/// Puts `Stalled` and `Reconciling` as `progress` says into `conditions`, after the Ready
/// condition they are derived from (whose reason and message a True one repeats, or says what
/// is under way). A condition that is not True is removed, not kept as False: readers treat
/// absent as False, and a status written for 10,000 AccessKeys stays small. False if nothing
/// changed: the caller then writes nothing.
pub fn put_progress(conditions: &mut Vec<Condition>, activity: Activity, generation: Option<i64>, now: Time) -> bool {
    let ready = conditions.iter().find(|c| c.type_ == READY).cloned();
    let reason = ready.as_ref().and_then(|c| Reason::parse(&c.reason));
    let ready_message = ready.as_ref().map(|c| c.message.clone()).unwrap_or_default();
    let (stalled, reconciling) = match progress(reason, activity) {
        Progress::Stalled => (Some((reason.map_or("", Reason::as_str), ready_message)), None),
        Progress::Reconciling(why) => (None, Some((why, reconciling_message(why, &ready_message)))),
        Progress::Settled => (None, None),
    };
    let mut changed = put_true(conditions, STALLED, stalled, generation, &now);
    changed |= put_true(conditions, RECONCILING, reconciling, generation, &now);
    changed
}

fn reconciling_message(why: &str, ready_message: &str) -> String {
    match why {
        "Issuing" => "creating a key and writing it to the Secret".to_string(),
        "RollingOut" => "the consumers restarted for the new key are rolling out".to_string(),
        "Pending" if ready_message.is_empty() => "not reconciled yet".to_string(),
        _ => ready_message.to_string(),
    }
}

/// Puts condition `type_` as True with `reason` and `message`, or removes it (`None`).
fn put_true(
    conditions: &mut Vec<Condition>,
    type_: &str,
    wanted: Option<(&str, String)>,
    generation: Option<i64>,
    now: &Time,
) -> bool {
    let at = conditions.iter().position(|c| c.type_ == type_);
    let Some((reason, message)) = wanted else {
        return match at {
            Some(i) => {
                conditions.remove(i);
                true
            }
            None => false,
        };
    };
    let previous = at.map(|i| &conditions[i]);
    if previous.is_some_and(|c| {
        c.status == "True" && c.reason == reason && c.message == message && c.observed_generation == generation
    }) {
        return false;
    }
    let last_transition_time =
        previous.filter(|c| c.status == "True").map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    let condition = Condition {
        type_: type_.to_string(),
        status: "True".to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time,
        observed_generation: generation,
    };
    match at {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
    true
}

/// The Ready condition to write, keeping `lastTransitionTime` when the status did not change.
pub fn ready_condition(
    previous: &[Condition],
    reason: Reason,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let status = if reason.is_ready() { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == READY && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    Condition {
        type_: READY.to_string(),
        status: status.to_string(),
        reason: reason.as_str().to_string(),
        message: message.into(),
        last_transition_time,
        observed_generation: generation,
    }
}

/// The message of the Ready condition, if any.
pub fn ready_message(conditions: &[Condition]) -> Option<&str> {
    conditions.iter().find(|c| c.type_ == READY).map(|c| c.message.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = ready_condition(&[], Reason::Issued, "ok", Some(1), t("2026-01-01T00:00:00Z"));
        let same = ready_condition(
            std::slice::from_ref(&first),
            Reason::Issued,
            "still ok",
            Some(2),
            t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(same.last_transition_time, first.last_transition_time);
        let flipped = ready_condition(&[same], Reason::ProviderError, "boom", Some(2), t("2026-01-03T00:00:00Z"));
        assert_eq!(flipped.last_transition_time, t("2026-01-03T00:00:00Z"));
        assert_eq!(flipped.status, "False");
    }

    fn of(conditions: &[Condition], type_: &str) -> Option<(String, String, String)> {
        conditions.iter().find(|c| c.type_ == type_).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    #[test]
    fn every_reason_spells_itself_back() {
        for r in ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::parse("SomethingNewer"), None);
    }

    #[test]
    fn stalled_only_where_a_person_must_change_something() {
        let idle = Activity::default();
        let table = [
            (Reason::Issued, Progress::Settled),
            (Reason::Ready, Progress::Settled),
            (Reason::PolicyDenied, Progress::Stalled),
            (Reason::InvalidSpec, Progress::Stalled),
            (Reason::SecretConflict, Progress::Stalled),
            (Reason::InvalidCredentials, Progress::Stalled),
            (Reason::IssuerNotFound, Progress::Reconciling("WaitingForIssuer")),
            (Reason::IssuerNotReady, Progress::Reconciling("WaitingForIssuer")),
            (Reason::SecretNotFound, Progress::Reconciling("WaitingForSecret")),
            (Reason::Revoking, Progress::Reconciling("Revoking")),
            (Reason::InUse, Progress::Reconciling("Deleting")),
            (Reason::ProviderError, Progress::Settled),
            (Reason::ProviderUnreachable, Progress::Settled),
            (Reason::RevocationFailed, Progress::Settled),
            (Reason::RetainFailed, Progress::Settled),
        ];
        assert_eq!(table.len(), ALL.len(), "every reason decided");
        for (reason, expected) in table {
            assert_eq!(progress(Some(reason), idle), expected, "{reason:?}");
        }
        assert_eq!(progress(None, idle), Progress::Reconciling("Pending"));
    }

    #[test]
    fn work_under_way_is_reconciling_unless_stalled() {
        let issuing = Activity { issuing: true, rolling_out: false };
        let rolling = Activity { issuing: false, rolling_out: true };
        assert_eq!(progress(None, issuing), Progress::Reconciling("Issuing"));
        assert_eq!(progress(Some(Reason::Issued), issuing), Progress::Reconciling("Issuing"));
        assert_eq!(progress(Some(Reason::Issued), rolling), Progress::Reconciling("RollingOut"));
        assert_eq!(progress(Some(Reason::PolicyDenied), rolling), Progress::Stalled);
        assert_eq!(progress(Some(Reason::SecretConflict), issuing), Progress::Stalled);
        // A failing provider is retried by the operator: neither stalled nor in progress.
        assert_eq!(progress(Some(Reason::ProviderError), rolling), Progress::Settled);
    }

    #[test]
    fn stalled_and_reconciling_are_written_on_transitions_only() {
        let (t1, t2, t3) = (t("2026-01-01T00:00:00Z"), t("2026-01-02T00:00:00Z"), t("2026-01-03T00:00:00Z"));
        let idle = Activity::default();
        // Not reconciled yet, a key being created.
        let mut conditions = Vec::new();
        assert!(put_progress(&mut conditions, Activity { issuing: true, rolling_out: false }, Some(1), t1.clone()));
        assert_eq!(of(&conditions, RECONCILING).map(|c| c.1), Some("Issuing".to_string()));
        assert_eq!(of(&conditions, STALLED), None);
        // Denied: Stalled repeats Ready's reason and message; Reconciling goes.
        conditions.insert(0, ready_condition(&[], Reason::PolicyDenied, "not allowed: ask", Some(1), t2.clone()));
        assert!(put_progress(&mut conditions, idle, Some(1), t2.clone()));
        assert_eq!(of(&conditions, STALLED), Some(("True".into(), "PolicyDenied".into(), "not allowed: ask".into())));
        assert_eq!(of(&conditions, RECONCILING), None);
        // Nothing changed: nothing to write.
        let before = conditions.clone();
        assert!(!put_progress(&mut conditions, idle, Some(1), t3.clone()));
        assert_eq!(conditions, before);
        // Another stalled reason keeps the time it became stalled.
        conditions[0] = ready_condition(&conditions, Reason::SecretConflict, "taken", Some(2), t3.clone());
        assert!(put_progress(&mut conditions, idle, Some(2), t3.clone()));
        let stalled = conditions.iter().find(|c| c.type_ == STALLED).expect("Stalled");
        assert_eq!((stalled.last_transition_time.clone(), stalled.observed_generation), (t2, Some(2)));
        // Issued: neither condition is left behind.
        conditions[0] = ready_condition(&conditions, Reason::Issued, "key K is in Secret s", Some(2), t3.clone());
        assert!(put_progress(&mut conditions, idle, Some(2), t3.clone()));
        assert_eq!(conditions.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), vec![READY]);
        assert!(!put_progress(&mut conditions, idle, Some(2), t3));
    }

    #[test]
    fn readiness_requires_the_current_generation() {
        let c = ready_condition(&[], Reason::Ready, "ok", Some(3), t("2026-01-01T00:00:00Z"));
        assert!(is_ready(std::slice::from_ref(&c), Some(3)));
        assert!(!is_ready(std::slice::from_ref(&c), Some(4)));
    }
}
