//! Exoscale's errors: a non-2xx answer and a failed operation, as a [`ProviderError`].

use super::api::{ErrorBody, Operation, OperationState};
use crate::providers::error::{brief, excerpt};
use crate::providers::http::{provider_delay, ErrorResponse};
use crate::providers::{ErrorKind, ProviderError};

/// A finished operation that did not succeed, as an error. Reasons that say the request itself
/// was wrong are permanent; the rest (busy, fault, unavailable, timeout…) may pass.
pub(super) fn succeeded(operation: &str, op: Operation) -> Result<Operation, ProviderError> {
    if op.state == OperationState::Success {
        return Ok(op);
    }
    let permanent = op.state == OperationState::Failure
        && matches!(op.reason.as_deref(), Some("incorrect" | "forbidden" | "unsupported" | "conflict"));
    let state = match op.state {
        OperationState::Failure => "failed",
        OperationState::Timeout => "timed out",
        _ => "ended in an unknown state",
    };
    let mut message = format!("operation {} {state}", op.id.as_deref().map_or_else(|| "?".to_string(), brief));
    if let Some(reason) = &op.reason {
        message.push_str(&format!(" ({})", brief(reason)));
    }
    if let Some(detail) = op.message.as_deref().filter(|m| !m.is_empty()) {
        message.push_str(": ");
        message.push_str(&excerpt(detail));
    }
    let kind = if permanent { ErrorKind::Permanent } else { ErrorKind::Retryable };
    Err(ProviderError::new(kind, operation, message))
}

/// Classifies a non-2xx answer from its status and the provider's own words.
pub(super) fn classify(operation: &str, response: ErrorResponse<'_>) -> ProviderError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(response.body).ok();
    let retry_after = parsed.as_ref().and_then(|b| b.retry_after).and_then(provider_delay);
    let message = parsed
        .as_ref()
        .and_then(message_of)
        .unwrap_or_else(|| String::from_utf8_lossy(response.body).trim().to_string());
    let message = if message.is_empty() { "no error message".to_string() } else { excerpt(&message) };
    ProviderError::from_status(operation, response.status, message).with_retry_after(retry_after)
}

fn message_of(body: &ErrorBody) -> Option<String> {
    fn non_empty(s: &Option<String>) -> Option<&str> {
        s.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
    if let Some(m) = non_empty(&body.message).or_else(|| non_empty(&body.error)) {
        return Some(m.to_string());
    }
    match (non_empty(&body.title), non_empty(&body.detail)) {
        (Some(t), Some(d)) => Some(format!("{t}: {d}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_string()),
        (None, None) => None,
    }
}
