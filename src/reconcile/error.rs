//! Controller errors, and the requeue each one earns.

use std::time::Duration;

use crate::api::validation::InvalidSpec;
use crate::providers::http::MAX_PROVIDER_DELAY;
use crate::providers::{ErrorKind, ProviderError};

use crate::core::secret::TemplateError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {}", crate::kube_error::describe(.0))]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Provider(#[from] ProviderError),
    /// The issuer an AccessKey names does not exist (`KeyIssuer ns/name`, `ClusterKeyIssuer name`).
    #[error("{0} not found")]
    IssuerNotFound(String),
    /// It is being deleted: it still revokes, but mints nothing.
    #[error("{0} is being deleted")]
    IssuerDeleting(String),
    /// The issuer exists, but the operator has no provider client for it.
    #[error("{issuer}: {cause}")]
    IssuerUnusable { issuer: String, cause: IssuerUnusable },
    /// Replaced keys whose grace period is over are still live (the provider failed).
    #[error("{0} replaced key(s) not revoked yet")]
    RetiredNotRevoked(usize),
    /// A key to keep cannot be recorded: the issuer's `status.retainedKeys` is full.
    #[error("{0} records as many retained keys as it can")]
    RetainedRecordFull(String),
    /// `secretTemplate` does not render (checked before any key is created).
    #[error("spec.{0}")]
    Template(#[from] TemplateError),
    #[error("{0}")]
    InvalidSpec(#[from] InvalidSpec),
    /// A Secret of the AccessKey's `secretName` that another owner controls.
    #[error("Secret {0} is not controlled by this AccessKey")]
    SecretForeign(String),
    /// Someone kept writing the Secret while its in-use finalizer was being updated.
    #[error("Secret {0} kept changing while its in-use finalizer was updated")]
    SecretContended(String),
    /// A key was minted but its Secret could not be written, so the key was revoked at once.
    /// Each such attempt costs the provider a creation and a revocation (and the issuer's rate
    /// limit, which its AccessKeys share): attempts in a row back off like a Secret fight.
    #[error("the new key could not be written to Secret {0} and was revoked; trying again later: {1}")]
    KeyNotWritten(String, Box<Error>),
    /// A step that resolves a creation attempt found none recorded.
    #[error("no creation attempt is recorded in the status")]
    NoPendingAttempt,
    /// The finalizer itself could not be added or removed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("{0}")]
    Startup(String),
    /// Every slot of this issuer (`--issuer-concurrency`) is taken: not a failure, the AccessKey
    /// waits its turn.
    #[error("{0} is busy with other AccessKeys")]
    IssuerBusy(String),
    #[error("the reconcile took longer than {}s and was stopped; it will be retried", .0.as_secs())]
    TimedOut(Duration),
    /// A bug met while handling this object (see `caught`): the object backs off, the rest of
    /// the operator goes on.
    #[error("internal error while handling this object (please report it): {0}")]
    Panicked(String),
}

impl Error {
    /// A short stable label (for logs and metrics).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Provider(e) => match e.kind {
                ErrorKind::Retryable => "provider_retryable",
                ErrorKind::Permanent => "provider_permanent",
                ErrorKind::Auth => "provider_auth",
            },
            Self::IssuerNotFound(_) | Self::IssuerDeleting(_) | Self::IssuerUnusable { .. } => "issuer",
            Self::RetiredNotRevoked(_) => "retired_not_revoked",
            Self::RetainedRecordFull(_) => "retained_record_full",
            Self::Template(_) | Self::InvalidSpec(_) => "invalid_spec",
            Self::SecretForeign(_) | Self::SecretContended(_) | Self::KeyNotWritten(..) => "secret",
            Self::NoPendingAttempt => "no_pending_attempt",
            Self::Finalizer(_) => "finalizer",
            Self::Startup(_) => "startup",
            Self::IssuerBusy(_) => "issuer_busy",
            Self::TimedOut(_) => "timed_out",
            Self::Panicked(_) => "panicked",
        }
    }

    /// How long to wait before trying again after `failures` consecutive failures.
    pub fn backoff(&self, failures: u32) -> Duration {
        let exp = |base: u64, cap: u64| {
            let secs = base.saturating_mul(1u64 << failures.min(16)).min(cap);
            Duration::from_secs(secs)
        };
        match self {
            // Refused credentials never get better by asking again soon.
            Self::Provider(e) if e.kind == ErrorKind::Auth => exp(60, 600),
            Self::Provider(e) if e.kind == ErrorKind::Permanent => exp(30, 600),
            // Clamped again here: a delay set anywhere but the HTTP layer must not outgrow it.
            Self::Provider(e) => exp(2, 300).max(e.retry_after.unwrap_or_default().min(MAX_PROVIDER_DELAY)),
            Self::IssuerNotFound(_)
            | Self::IssuerDeleting(_)
            | Self::IssuerUnusable { .. }
            | Self::RetiredNotRevoked(_)
            | Self::RetainedRecordFull(_)
            | Self::Template(_)
            | Self::InvalidSpec(_)
            | Self::SecretForeign(_) => exp(10, 300),
            Self::IssuerBusy(_) => Duration::from_secs(1),
            Self::KeyNotWritten(..) => exp(10, 3600),
            Self::TimedOut(_) | Self::Panicked(_) => exp(30, 600),
            // A conflict means the cache was a moment behind a write: it catches up within a
            // second or two, and growing the wait would only leave the AccessKey unhandled.
            Self::Kube(kube::Error::Api(e)) if e.code == 409 => Duration::from_secs(1),
            // The apiserver answered and refused (or throttled): asking again soon is no kinder.
            Self::Kube(kube::Error::Api(_))
            | Self::Finalizer(_)
            | Self::Startup(_)
            | Self::SecretContended(_)
            | Self::NoPendingAttempt => exp(1, 60),
            // No answer at all: the apiserver is away (a restart, an upgrade). Retrying costs it
            // nothing, and a short cap brings every AccessKey back within seconds of its return
            // instead of a minute later.
            Self::Kube(_) => exp(1, 10),
        }
    }
}

pub use crate::core::issuers::IssuerUnusable;

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant keeping its own Secret busy (a 409 on every write) must not make the operator
    /// mint and revoke a key every second: unwritten keys back off from 10 s to an hour.
    #[test]
    fn keys_minted_but_not_written_back_off_to_an_hour() {
        let conflict = || {
            Error::Kube(kube::Error::Api(Box::new(kube::core::Status::failure("modified", "Conflict").with_code(409))))
        };
        assert_eq!(conflict().backoff(5), Duration::from_secs(1), "a plain conflict is retried soon");
        let unwritten = Error::KeyNotWritten("s".into(), Box::new(conflict()));
        let waits: Vec<u64> = [0, 1, 3, 20].iter().map(|n| unwritten.backoff(*n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 80, 3600]);
        assert_eq!(unwritten.label(), "secret");
    }

    #[test]
    fn auth_failures_back_off_hard_and_everything_is_capped() {
        let auth = Error::Provider(ProviderError::auth("op", "refused"));
        assert!(auth.backoff(0) >= Duration::from_secs(60));
        assert_eq!(auth.backoff(30), Duration::from_secs(600));
        let retry = Error::Provider(ProviderError::retryable("op", "503"));
        assert_eq!(retry.backoff(0), Duration::from_secs(2));
        assert_eq!(retry.backoff(40), Duration::from_secs(300));
        let throttled =
            Error::Provider(ProviderError::retryable("op", "429").with_retry_after(Some(Duration::from_secs(20))));
        assert_eq!(throttled.backoff(0), Duration::from_secs(20));
        let hostile = Error::Provider(
            ProviderError::retryable("op", "429").with_retry_after(Some(Duration::from_secs(u64::MAX))),
        );
        assert_eq!(hostile.backoff(0), MAX_PROVIDER_DELAY);
    }

    #[test]
    fn a_conflict_from_a_cache_behind_is_retried_soon_however_often() {
        let conflict =
            Error::Kube(kube::Error::Api(Box::new(kube::core::Status::failure("modified", "Conflict").with_code(409))));
        assert_eq!(conflict.backoff(20), Duration::from_secs(1));
    }

    #[test]
    fn an_absent_apiserver_is_retried_every_few_seconds_and_a_refusing_one_backs_off_further() {
        let away = Error::Kube(kube::Error::Service("client error (Connect)".into()));
        assert_eq!(away.backoff(0), Duration::from_secs(1));
        assert_eq!(away.backoff(30), Duration::from_secs(10));
        let refused = Error::Kube(kube::Error::Api(Box::new(
            kube::core::Status::failure("slow down", "TooManyRequests").with_code(429),
        )));
        assert_eq!(refused.backoff(30), Duration::from_secs(60));
    }
}
