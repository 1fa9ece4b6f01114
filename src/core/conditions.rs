//! The `Ready` condition: a closed set of reasons, and messages that say what to do.

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

    #[test]
    fn readiness_requires_the_current_generation() {
        let c = ready_condition(&[], Reason::Ready, "ok", Some(3), t("2026-01-01T00:00:00Z"));
        assert!(is_ready(std::slice::from_ref(&c), Some(3)));
        assert!(!is_ready(std::slice::from_ref(&c), Some(4)));
    }
}
