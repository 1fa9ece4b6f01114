//! How a provider call failed, classified so that the controller knows whether to retry soon,
//! back off hard, or wait for the user to change something.

use std::time::Duration;

/// An error text from a provider cut to `max` characters: conditions and Events stay readable
/// whatever a provider sends.
pub fn truncate_message(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// What the controller should do about a failed provider call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Network trouble, 5xx, throttling: try again after a (jittered) backoff.
    Retryable,
    /// The provider refused the request as such (validation, quota, unsupported): retrying the
    /// same request will not help; the user must change the spec or the account.
    Permanent,
    /// The credentials were refused (401/403): back off hard, never hot-loop.
    Auth,
}

/// A failed provider call. Never carries a secret: messages come from the provider's error body
/// or from the transport, never from request bodies or credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{operation}: {message}{}{}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default(), request_id.as_ref().map(|r| format!(" [request id {r}]")).unwrap_or_default())]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// The provider operation, e.g. `create-api-key`.
    pub operation: String,
    pub message: String,
    pub status: Option<u16>,
    /// The provider's request id, for support tickets.
    pub request_id: Option<String>,
    /// How long the provider asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, operation: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            operation: operation.into(),
            message: message.into(),
            status: None,
            request_id: None,
            retry_after: None,
        }
    }

    pub fn retryable(operation: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Retryable, operation, message)
    }

    pub fn permanent(operation: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Permanent, operation, message)
    }

    pub fn auth(operation: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Auth, operation, message)
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_request_id(mut self, id: Option<String>) -> Self {
        self.request_id = id;
        self
    }

    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// The classification every provider starts from: 401/403 auth, 408/429/5xx retryable,
    /// other 4xx permanent. Providers refine it from their error codes.
    pub fn from_status(operation: impl Into<String>, status: u16, message: impl Into<String>) -> Self {
        let kind = match status {
            401 | 403 => ErrorKind::Auth,
            408 | 425 | 429 => ErrorKind::Retryable,
            s if s >= 500 => ErrorKind::Retryable,
            _ => ErrorKind::Permanent,
        };
        Self::new(kind, operation, message).with_status(status)
    }

    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }
}
