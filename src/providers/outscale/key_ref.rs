//! `status.keyRef` of an OUTSCALE key (see the module docs), and the dates and lifetimes the
//! API reads and writes.

use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::{MIN_LIFETIME, RESEND_MARGIN};
use crate::api::OutscaleKey;
use crate::providers::ProviderError;

/// `status.keyRef`: `<AccessKeyId>` or `<AccessKeyId>;user=<UserName>` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyRef {
    pub(super) id: String,
    /// The EIM user owning the key; `None` for the issuer's own identity.
    pub(super) user: Option<String>,
}

impl KeyRef {
    pub(super) fn parse(text: &str) -> Result<Self, ProviderError> {
        let invalid = || ProviderError::permanent("revoke-key", format!("not an Outscale key reference: {text:?}"));
        let (id, user) = match text.split_once(';') {
            None => (text, None),
            Some((id, rest)) => (id, Some(rest.strip_prefix("user=").ok_or_else(invalid)?)),
        };
        let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
        // EIM user names: `[A-Za-z0-9+=,.@_-]`, which holds no `;`.
        let user_ok = user
            .is_none_or(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b)));
        if !id_ok || !user_ok {
            return Err(invalid());
        }
        Ok(Self { id: id.to_string(), user: user.map(String::from) })
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            None => write!(f, "{}", self.id),
            Some(user) => write!(f, "{};user={user}", self.id),
        }
    }
}

/// `^[a-z]+(-[a-z]+)+-[0-9]+$`, at most 63 characters (the CRD's pattern).
pub(super) fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let words = parts.len().saturating_sub(1);
    region.len() <= 63
        && parts.len() >= 3
        && parts[..words].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[words].bytes().all(|b| b.is_ascii_digit())
        && !parts[words].is_empty()
}

/// The lifetime `expiresAfter` asks for (`None`: the key never expires); at least
/// [`MIN_LIFETIME`].
pub fn lifetime_of(spec: &OutscaleKey) -> Result<Option<Duration>, String> {
    let Some(expires_after) = &spec.expires_after else { return Ok(None) };
    let lifetime = expires_after.get()?;
    if lifetime < MIN_LIFETIME {
        let text = expires_after.as_str();
        return Err(format!("{text:?} is shorter than the minimum key lifetime of {} s", MIN_LIFETIME.as_secs()));
    }
    Ok(Some(lifetime))
}

/// `now + lifetime`, cut to whole seconds; `None` past the year 9999.
pub(super) fn expiration(now: Timestamp, lifetime: Duration) -> Option<Timestamp> {
    let lifetime = SignedDuration::try_from(lifetime).ok()?;
    let at = now.checked_add(lifetime).ok()?;
    Timestamp::from_second(at.as_second()).ok()
}

/// The form the spec's examples use for dates we send: `2020-06-14T00:00:00.000Z`.
pub(super) fn api_date(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The expiration date to re-send with a state change: the live value in the form we send
/// dates, or verbatim when it cannot be read (better than clearing it). A date already past
/// (or about to be) is not re-sent: such a key signs nothing either way, it is deleted right
/// after, and the API may refuse a date in the past, which would block the revocation.
pub(super) fn resend_date(live: &str, now: Timestamp) -> Option<String> {
    match parse_timestamp(live) {
        Some(at) if at.duration_since(now) <= RESEND_MARGIN => None,
        Some(at) => Some(api_date(at)),
        None => Some(live.to_string()),
    }
}

/// Parses the timestamps Outscale writes, leniently: RFC 3339 (`Z`, `+00:00`), ISO 8601 basic
/// offsets (`2010-10-01T12:34:56.789+0000`), any fraction, and a bare date or date-time
/// (UTC, as the spec describes every date).
pub fn parse_timestamp(text: &str) -> Option<Timestamp> {
    use jiff::civil::DateTime;
    use jiff::fmt::strtime;
    use jiff::tz::TimeZone;

    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Some(ts);
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(ts) = strtime::parse(format, text).and_then(|t| t.to_timestamp()) {
            return Some(ts);
        }
    }
    // No offset at all: only a civil date or date-time can be left, read as UTC. Anything
    // with an offset was handled above, so no offset is dropped here.
    if text.contains(['+', 'Z', 'z']) || text.get(10..).is_some_and(|t| t.contains('-')) {
        return None;
    }
    let civil: DateTime = text.parse().ok()?;
    civil.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp())
}
