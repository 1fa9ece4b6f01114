//! OUTSCALE's errors: an answer's error codes decide its kind (the API's error table,
//! <https://docs.outscale.com/api-errors.html>), and a failed call keeps them, for callers that take
//! some of them as success.

use std::time::Duration;

use super::api::{self, ErrorResponse};
use super::KEYS_PER_USER;
use crate::providers::error::excerpt;
use crate::providers::http::{CallError, ErrorResponse as HttpError};
use crate::providers::{ErrorKind, ProviderError};

/// Outscale locks a key out for a minute after four bad signatures in a row (error 13).
pub(super) const LOCKOUT: Duration = Duration::from_secs(60);

/// Error codes (<https://docs.outscale.com/api-errors.html>). Codes are strings in the API; these are their values.
pub(super) const THROTTLED: &[u32] = &[6, 24, 25];
pub(super) const AUTH_CODES: &[u32] = &[1, 5, 7, 9, 11, 12, 13, 14, 20];
pub(super) const LOCKED_TEMPORARILY: u32 = 13;
pub(super) const LOCKED_PERMANENTLY: u32 = 11;
pub(super) const QUOTA: std::ops::RangeInclusive<u32> = 10000..=10999;
pub(super) const DEPENDENCY: std::ops::RangeInclusive<u32> = 1000..=1999;
/// `ResourceConflict` `busy`. `InvalidState` (6xxx, e.g. deleting an ACTIVE key of an EIM
/// user) stays permanent: repeating the same request cannot change the key's state, and
/// `revoke` reacts to it at once rather than after the HTTP layer's retries.
pub(super) const BUSY: u32 = 9002;
/// `no-such-user` (Python SDK's gateway error list): the user, and with it all its keys, is
/// gone. 4000 is left out on purpose: in the 4xxx range it may also mean an invalid parameter,
/// and a failed revocation must never pass for a successful one; an absent key shows as an
/// empty `ReadAccessKeys` answer instead.
pub(super) const GONE: &[u32] = &[5075];

/// A failed call and the Outscale error codes its answer carried.
pub(super) struct Failure {
    pub(super) error: ProviderError,
    pub(super) codes: Vec<String>,
}

impl CallError for Failure {
    fn provider_error(&self) -> &ProviderError {
        &self.error
    }
    fn provider_error_mut(&mut self) -> &mut ProviderError {
        &mut self.error
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl Failure {
    pub(super) fn has_code(&self, wanted: impl Fn(u32) -> bool) -> bool {
        self.codes.iter().filter_map(|c| c.trim().parse::<u32>().ok()).any(wanted)
    }

    pub(super) fn is_gone(&self) -> bool {
        self.has_code(|c| GONE.contains(&c))
    }

    /// The API answered and refused the request as such: a 4xx other than auth and throttling.
    pub(super) fn refused(&self) -> bool {
        self.error.kind != ErrorKind::Auth
            && matches!(self.error.status, Some(s) if (400..500).contains(&s) && s != 429)
    }
}

impl From<ProviderError> for Failure {
    fn from(error: ProviderError) -> Self {
        Self { error, codes: Vec::new() }
    }
}

impl From<Failure> for ProviderError {
    fn from(f: Failure) -> Self {
        f.error
    }
}

/// Classifies a non-2xx answer from its Outscale error codes, then its status. Returns the
/// codes too, for callers that treat some of them as success.
pub(super) fn classify(operation: &str, response: HttpError<'_>) -> (ProviderError, Vec<String>) {
    let parsed: ErrorResponse = serde_json::from_slice(response.body).unwrap_or_default();
    let request_id = parsed.response_context.as_ref().and_then(|c| c.request_id.clone()).filter(|r| !r.is_empty());
    let codes: Vec<String> = parsed.errors.iter().filter_map(|e| e.code.clone()).collect();
    let numbers: Vec<u32> = codes.iter().filter_map(|c| c.trim().parse().ok()).collect();
    let any = |f: &dyn Fn(u32) -> bool| numbers.iter().any(|c| f(*c));
    let access_denied = parsed.errors.iter().any(|e| e.kind.as_deref() == Some("AccessDenied"));

    let mut message = describe(&parsed.errors).unwrap_or_else(|| {
        let raw = String::from_utf8_lossy(response.body).trim().to_string();
        if raw.is_empty() {
            "no error message".to_string()
        } else {
            raw
        }
    });
    let status = response.status;
    let mut retry_after = None;
    let kind = if status == 429 || status == 503 || any(&|c| THROTTLED.contains(&c)) {
        message = format!("throttled by Outscale: {message}");
        ErrorKind::Retryable
    } else if any(&|c| QUOTA.contains(&c)) {
        message = format!(
            "{message}. Quota exceeded: Outscale allows at most {KEYS_PER_USER} access keys \
             for the root account and {KEYS_PER_USER} per EIM user; delete unused keys of this \
             user or issue keys for another user"
        );
        ErrorKind::Permanent
    } else if status == 401 || status == 403 || access_denied || any(&|c| AUTH_CODES.contains(&c)) {
        if any(&|c| c == LOCKED_TEMPORARILY) {
            retry_after = Some(LOCKOUT);
        }
        let hint = if any(&|c| c == LOCKED_PERMANENTLY) {
            "the access key is locked out; contact Outscale support"
        } else {
            "check OSC_ACCESS_KEY, OSC_SECRET_KEY, the region and the identity's EIM policy; \
             not retried quickly, as four bad signatures in a row lock the key out"
        };
        message = format!("{message} ({hint})");
        ErrorKind::Auth
    } else if status == 424 || any(&|c| DEPENDENCY.contains(&c) || c == BUSY) {
        ErrorKind::Retryable
    } else {
        ProviderError::from_status(operation, status, "").kind
    };
    let error = ProviderError::new(kind, operation, excerpt(&message))
        .with_status(status)
        .with_request_id(request_id)
        .with_retry_after(retry_after);
    (error, codes)
}

/// `Outscale error <Code> <Type>: <Details>`, for each error in the body.
fn describe(errors: &[api::ApiError]) -> Option<String> {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| {
            let non_empty =
                |s: &Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(String::from);
            let mut text = "Outscale error".to_string();
            if let Some(code) = non_empty(&e.code) {
                text.push(' ');
                text.push_str(&code);
            }
            if let Some(kind) = non_empty(&e.kind) {
                text.push(' ');
                text.push_str(&kind);
            }
            if let Some(details) = non_empty(&e.details) {
                text.push_str(": ");
                text.push_str(&details);
            }
            text
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}
