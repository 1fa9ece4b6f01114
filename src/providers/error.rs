//! How a provider call failed, classified so that the controller knows whether to retry soon,
//! back off hard, or wait for the user to change something.

use std::time::Duration;

/// Provider error messages are shown in conditions and Events; longer ones are cut.
pub const MAX_MESSAGE_CHARS: usize = 400;

/// A provider's error text as conditions show it: [`sanitize_message`] at [`MAX_MESSAGE_CHARS`].
pub fn excerpt(text: &str) -> String {
    sanitize_message(text, MAX_MESSAGE_CHARS)
}

/// A short text from a provider's answer (an id, a date) as messages show it: [`sanitize_message`]
/// at [`MAX_SHORT_CHARS`]. Every such text is the provider's to choose, successful answers too.
pub fn brief(text: &str) -> String {
    sanitize_message(text, MAX_SHORT_CHARS)
}

/// Ids and dates are far shorter; a message quoting one stays about one line long.
pub const MAX_SHORT_CHARS: usize = 100;

/// An error text from a provider as conditions and Events may show it: anything that looks like
/// a credential or a signature replaced by `[redacted]` (a proxy in front of the API may echo
/// the request, Authorization header and JWT included), whitespace runs made one space, and
/// cut to `max` characters.
pub fn sanitize_message(text: &str, max: usize) -> String {
    // Before the markup goes: the element's name is what says its content is a secret.
    let text = secret_element().replace_all(text, "<$1$2>[redacted]");
    let text = if text.trim_start().starts_with('<') { markup().replace_all(&text, " ") } else { text };
    // A body echoed inside a JSON string keeps its line breaks and quotes escaped; undone, the
    // header names stand on their own again.
    let mut text = text.replace("\\r", " ").replace("\\n", " ").replace("\\t", " ").replace("\\\"", "\"");
    for (pattern, replacement) in secrets() {
        text = pattern.replace_all(&text, *replacement).into_owned();
    }
    let text = opaque().replace_all(&text, |m: &regex::Captures<'_>| {
        let run = &m[0];
        let mixed_case = run.bytes().any(|b| b.is_ascii_uppercase()) && run.bytes().any(|b| b.is_ascii_lowercase());
        let hex = run.bytes().all(|b| b.is_ascii_hexdigit());
        if mixed_case || hex {
            "[redacted]".to_string()
        } else {
            run.to_string()
        }
    });
    let text = whitespace().replace_all(text.trim(), " ");
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.into_owned(),
    }
}

/// The names that say a value is a credential, as a regex alternation (lower case; the patterns
/// using it are case-insensitive).
const SECRET_NAMES: &str =
    r"signature|credential|[a-z_]*secret[a-z_-]*|password|passwd|[a-z_]*token|jwt|api[_-]?key|private[_-]?key";

fn pattern(re: &str) -> regex::Regex {
    regex::Regex::new(re).unwrap_or_else(|e| panic!("redaction pattern {re}: {e}"))
}

/// An XML element named like a credential (`<SecretKey>`, `<ns:Password>`, `<Authorization>`),
/// up to the next tag: its text is the value.
fn secret_element() -> &'static regex::Regex {
    static ELEMENT: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        pattern(&format!(
            r"(?i)<((?:[a-z0-9_.-]+:)?[a-z0-9_.-]*(?:{SECRET_NAMES}|authorization|cookie)[a-z0-9_.-]*)(\s[^>]{{0,200}})?>[^<]*"
        ))
    });
    &ELEMENT
}

/// What is redacted, in this order; then [`opaque`] runs.
fn secrets() -> &'static [(regex::Regex, &'static str)] {
    static PATTERNS: std::sync::LazyLock<Vec<(regex::Regex, &'static str)>> = std::sync::LazyLock::new(|| {
        // A name counts wherever it starts: `\b` would not see `access_token` as ending in one.
        let start = r"(^|[^A-Za-z0-9])";
        vec![
            // A header that carries credentials, to the end of its line or quoted value (also in
            // the `"Authorization": ["…"]` form).
            (
                pattern(&format!(
                    r#"(?i){start}(authorization|proxy-authorization|x-[a-z]+-security-token|x-api-key|cookie|set-cookie)(["']?\s*[:=]\s*\[?)["']?[^\r\n"']*"#
                )),
                "$1$2$3[redacted]",
            ),
            // JWTs: the base64url of `{"` starts every one of them.
            (pattern(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?"), "[redacted]"),
            (pattern(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), "$1 [redacted]"),
            // Yandex IAM tokens.
            (pattern(r"\bt1\.[A-Za-z0-9._-]+"), "[redacted]"),
            // A quoted value is taken whole, blanks and all (a passphrase); an unquoted one ends
            // at the first blank or separator. A quote left open takes the rest of the line.
            (
                pattern(&format!(
                    r#"(?i){start}({SECRET_NAMES})(["']?\s*[:=]\s*)(?:"[^"\r\n]*"?|'[^'\r\n]*'?|[^\s,;&"'}}]+)"#
                )),
                "$1$2$3[redacted]",
            ),
            // A name and its value with only blanks between them (`SecretKey ABC…`, as left by
            // stripped markup or a log line) count when the value is long enough to be a key:
            // "the secret key is invalid" stays as it is.
            (
                pattern(&format!(r#"(?i){start}({SECRET_NAMES})(["']?\s+)["']?[A-Za-z0-9+/=_.~-]{{16,}}["']?"#)),
                "$1$2$3[redacted]",
            ),
        ]
    });
    &PATTERNS
}

/// Long runs of token characters. Redacted when they look like a secret (mixed case, as base64
/// is, or all hex, as a signature is); ids stay readable: key ids are shorter, and UUIDs,
/// ownership markers and resource names are lowercase and broken up by dashes.
fn opaque() -> &'static regex::Regex {
    static OPAQUE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"[A-Za-z0-9+/_-]{32,}={0,2}").unwrap_or_else(|e| panic!("opaque: {e}"))
    });
    &OPAQUE
}

fn markup() -> &'static regex::Regex {
    static MARKUP: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"<[^>]{0,200}>").unwrap_or_else(|e| panic!("markup: {e}")));
    &MARKUP
}

fn whitespace() -> &'static regex::Regex {
    static WHITESPACE: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"\s+").unwrap_or_else(|e| panic!("whitespace: {e}")));
    &WHITESPACE
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

    /// The provider's request id, as shown: it comes from the answer, like any other text.
    pub fn with_request_id(mut self, id: Option<String>) -> Self {
        self.request_id = id.map(|id| brief(&id));
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

#[cfg(test)]
mod tests {
    use super::sanitize_message;

    const JWT: &str = "eyJhbGciOiJQUzI1NiIsImtpZCI6ImFqZTEifQ.eyJpc3MiOiJhamUyIiwiYXVkIjoiaHR0cHMifQ.c2lnbmF0dXJl-_x";

    fn shown(text: &str) -> String {
        sanitize_message(text, 1000)
    }

    #[test]
    fn echoed_credentials_are_redacted() {
        let exoscale = "proxy refused the request\nPOST /v2/api-key\nauthorization: EXO2-HMAC-SHA256 \
             credential=EXO0123456789abcdef01234567,expires=1800000000,signature=q1n0TfDmV6kE5hOQ8M3YVd2Hb1h2aXxGQ0vF0CFaD3M=\n\n{}";
        let out = shown(exoscale);
        assert!(!out.contains("q1n0TfDm") && !out.contains("expires=18"), "{out}");
        assert!(out.contains("authorization: [redacted]"), "{out}");

        let yandex = format!(
            r#"{{"jwt":"{JWT}"}} and authorization: Bearer t1.9euelZqVk5GRmZDKm8-Sn5aNm5OLz-3rnpWamp2Zl5KSnZiNjZzMkpLLju_8.AbCd"#
        );
        let out = shown(&yandex);
        assert!(!out.contains("eyJ") && !out.contains("9euelZ") && !out.contains("AbCd"), "{out}");

        let outscale = "x-osc-date: 20261201T000000Z\nAuthorization: OSC4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261201/eu-west-2/api/osc4_request, SignedHeaders=host;x-osc-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7";
        let out = shown(outscale);
        assert!(!out.contains("5d672d79c15b"), "{out}");

        for (text, secret) in [
            (r#"{"SecretKey":"wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"}"#, "wJalrXUt"),
            ("Bearer abc.def-ghi", "abc.def"),
            ("token=0123456789", "0123456789"),
            ("Cookie: session=abcdef", "abcdef"),
            (&format!("<html><body><pre>{JWT}</pre></body></html>"), "eyJ"),
            ("secret: hunter2", "hunter2"),
            ("0123456789abcdef0123456789abcdef0123456789abcdef", "0123456789abcdef0123"),
            ("access_token=abc123", "abc123"),
            ("refresh_token: r3fr3sh", "r3fr3sh"),
            ("client_secret=cl1ent", "cl1ent"),
            ("aws_secret_access_key=AKs3cr3t", "AKs3cr3t"),
            ("x-api-key: k3y", "k3y"),
            ("apiKey=k3y", "k3y"),
            (r#"{"Authorization":["Basic dXNlcjpwYXNz"]}"#, "dXNlcjpwYXNz"),
            ("y0_AgAAAAAbcdEFGH-klmnOPQRstuv-0123WXYZabcd", "AgAAAAAbcd"),
        ] {
            let out = shown(text);
            assert!(!out.contains(secret), "{text} shown as {out}");
            assert!(out.contains("[redacted]"), "{out}");
        }
    }

    #[test]
    fn a_request_echoed_inside_a_json_string_is_redacted_too() {
        let body =
            r#"{"error":"proxy refused\nauthorization: OSC4-HMAC-SHA256 Credential=AK/x, Signature=abc\naccept: */*"}"#;
        let out = shown(body);
        assert!(!out.contains("abc") && !out.contains("Credential=AK"), "{out}");
    }

    #[test]
    fn ids_and_plain_messages_stay_readable() {
        for text in [
            "API key EXO0123456789abcdef01234567 not found",
            "IAM role 7b1e0000-0000-4000-8000-000000000001 is in use",
            "Outscale error 10005 TooManyResources (QuotaExceded): AccessKey quota of AKIA0123456789ABCDEF",
            "name team-a.ck-0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab-abc0123456 is taken",
            "INVALID_ARGUMENT: Service account aje9k6mfkelh3j7r2trb not found",
            "the secret key is invalid",
            "bucket team-a-backups-of-the-uploads-2026-12 not found",
        ] {
            assert_eq!(shown(text), text);
        }
    }

    // Stripped markup would take the tag that names the secret with it, and an OUTSCALE secret
    // key (40 upper-case letters and digits: neither mixed case nor hex) is not caught by
    // `opaque` on its own.
    #[test]
    fn a_secret_in_an_xml_element_is_redacted() {
        let secret = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCD";
        let body = format!(
            "<CreateAccessKeyResponse><AccessKey><AccessKeyId>AKIAEXAMPLE0123456789</AccessKeyId>\
             <SecretKey>{secret}</SecretKey></AccessKey></CreateAccessKeyResponse>"
        );
        let out = shown(&body);
        assert!(!out.contains(secret), "{out}");
        assert!(out.contains("AKIAEXAMPLE0123456789"), "{out}");
        // The same without markup is caught only thanks to its keyword.
        let out = shown(&format!("SecretKey {secret}"));
        assert!(!out.contains(secret), "{out}");
    }

    // A passphrase would otherwise be shown from its second word on.
    #[test]
    fn a_quoted_secret_with_blanks_is_redacted_whole() {
        let out = shown(r#"{"password": "correct horse battery staple"}"#);
        assert!(!out.contains("horse") && !out.contains("staple"), "{out}");
        let out = shown(r#"client_secret='two words' for app"#);
        assert!(!out.contains("words"), "{out}");
        assert!(out.ends_with("for app"), "{out}");
    }

    #[test]
    fn whitespace_is_folded_and_the_text_cut() {
        assert_eq!(shown("  a\n\n b\t c "), "a b c");
        assert_eq!(sanitize_message("abcdef", 3), "abc…");
        assert_eq!(sanitize_message(&"é".repeat(5), 2), "éé…");
        assert_eq!(shown("<html><body><h1>502 Bad Gateway</h1></body></html>"), "502 Bad Gateway");
    }
}
