//! EXO2-HMAC-SHA256 request signing (Exoscale API v2).
//!
//! The signed message is five `\n`-separated segments: `METHOD path`, the body exactly as sent,
//! the values of single-valued query parameters sorted by name, the signed header values (none),
//! and the expiry in UNIX seconds. The official SDKs sign nothing else, so neither do we.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use url::Url;

/// How long a signature stays valid; every official SDK uses ten minutes.
pub const VALIDITY_SECONDS: i64 = 10 * 60;

/// The `Authorization` header value for one request.
pub fn authorization(
    api_key: &str,
    api_secret: &SecretString,
    method: &str,
    url: &Url,
    body: &[u8],
    expires: i64,
) -> String {
    let query = signed_query(url);
    let message = message(method, url.path(), body, &query, expires);
    let mut mac = Hmac::<Sha256>::new_from_slice(api_secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(&message);
    let signature = STANDARD.encode(mac.finalize().into_bytes());

    let mut header = format!("EXO2-HMAC-SHA256 credential={api_key}");
    if !query.is_empty() {
        let names: Vec<&str> = query.keys().map(String::as_str).collect();
        header.push_str(",signed-query-args=");
        header.push_str(&names.join(";"));
    }
    header.push_str(&format!(",expires={expires},signature={signature}"));
    header
}

/// Query parameters that take part in the signature, by name. Like the Go SDK, a name given
/// more than once is left out entirely (the Python one disagrees; the IAM calls have no query).
fn signed_query(url: &Url) -> BTreeMap<String, String> {
    let mut all: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in url.query_pairs() {
        all.entry(name.into_owned()).or_default().push(value.into_owned());
    }
    all.into_iter()
        .filter_map(|(name, mut values)| match values.len() {
            1 => values.pop().map(|v| (name, v)),
            _ => None,
        })
        .collect()
}

/// `path` must be the escaped path as it goes on the wire (`Url::path` is), `/v2` included.
fn message(method: &str, path: &str, body: &[u8], query: &BTreeMap<String, String>, expires: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(method.len() + path.len() + body.len() + 64);
    m.extend_from_slice(method.as_bytes());
    m.push(b' ');
    m.extend_from_slice(path.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m.push(b'\n');
    for value in query.values() {
        m.extend_from_slice(value.as_bytes());
    }
    m.push(b'\n');
    // Signed header values: none are signed at the moment.
    m.push(b'\n');
    m.extend_from_slice(expires.to_string().as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "EXOxxxxxxxxxxxxxxxxxxxxxxxx";
    /// 2077-01-01T00:00:00Z
    const EXPIRES: i64 = 3_376_684_800;

    fn secret() -> SecretString {
        SecretString::from("X".repeat(43))
    }

    fn header(method: &str, url: &str, body: &str) -> String {
        let url = Url::parse(url).expect("test URL parses");
        authorization(KEY, &secret(), method, &url, body.as_bytes(), EXPIRES)
    }

    fn signature(method: &str, url: &str, body: &str) -> String {
        let h = header(method, url, body);
        h.rsplit_once(",signature=").map(|(_, s)| s.to_string()).expect("header carries a signature")
    }

    #[test]
    fn upstream_get_without_query_gives_the_full_expected_header() {
        assert_eq!(
            header("GET", "https://api.exoscale.com/v2/zone", ""),
            "EXO2-HMAC-SHA256 credential=EXOxxxxxxxxxxxxxxxxxxxxxxxx,expires=3376684800,signature=Ntbq/p0HVmA3Zg1HHY+Lq1vjFGi7HeMrrgXDS5jRNlY="
        );
    }

    #[test]
    fn upstream_get_with_query_signs_values_and_lists_names() {
        assert_eq!(
            header("GET", "https://api.exoscale.com/v2/zone?k1=v1&k2=v2", ""),
            "EXO2-HMAC-SHA256 credential=EXOxxxxxxxxxxxxxxxxxxxxxxxx,signed-query-args=k1;k2,expires=3376684800,signature=iqOBz13+44L5j0uJclE8hmUhQQcvtCSoPEOXYK6liqY="
        );
    }

    #[test]
    fn query_values_are_signed_in_name_order_not_url_order() {
        assert_eq!(
            header("GET", "https://api.exoscale.com/v2/zone?k2=v2&k1=v1", ""),
            header("GET", "https://api.exoscale.com/v2/zone?k1=v1&k2=v2", ""),
        );
    }

    #[test]
    fn upstream_post_signs_the_body_exactly_as_sent() {
        assert_eq!(
            signature("POST", "https://api.exoscale.com/v2/load-balancer", r#"{"name": "foo"}"#),
            "duldkM0+pgWRtUznj0rMrZauzsYOtSVLn1LCGcs7CcE="
        );
        assert_eq!(
            signature("POST", "https://api.exoscale.com/v2/load-balancer", r#"{"name":"foo"}"#),
            "y2xzRvQuzxGRld/2l3B9bGMUeB3rkZHxM+2r1FAJdxA="
        );
    }

    #[test]
    fn derived_create_api_key_vector() {
        assert_eq!(
            signature(
                "POST",
                "https://api-ch-gva-2.exoscale.com/v2/api-key",
                r#"{"name":"team-a-backups","role-id":"7b1e0000-0000-4000-8000-000000000001"}"#
            ),
            "6I411j0txKAvolGx5BmyKVZH4gGrmXBPbIbr8R7z3zY="
        );
    }

    #[test]
    fn derived_delete_api_key_vector() {
        assert_eq!(
            signature("DELETE", "https://api-ch-gva-2.exoscale.com/v2/api-key/EXO19c207e5f483f2d85f99b709", ""),
            "HgoqGGVVZaw10AtmhPWP3xOfHcOBT8GFtt+tK2sMgzk="
        );
    }

    #[test]
    fn derived_get_operation_vector() {
        assert_eq!(
            signature("GET", "https://api-ch-gva-2.exoscale.com/v2/operation/e2047130-b86e-11ef-83b3-0d8312b2c2d7", ""),
            "a1kAuT+ao5hvkvTp+xCLzd4PN97dEbx0kNYcHyrAd6k="
        );
    }

    #[test]
    fn message_has_five_segments_and_no_trailing_newline() {
        let url = Url::parse("https://api.exoscale.com/v2/zone?k1=v1&k2=v2").expect("parses");
        let m = message("GET", url.path(), b"", &signed_query(&url), EXPIRES);
        assert_eq!(m, b"GET /v2/zone\n\nv1v2\n\n3376684800");
    }

    #[test]
    fn the_signed_path_is_the_escaped_one() {
        let url = Url::parse("https://api.exoscale.com/v2/api-key/a b").expect("parses");
        let m = message("DELETE", url.path(), b"", &signed_query(&url), EXPIRES);
        assert_eq!(m, b"DELETE /v2/api-key/a%20b\n\n\n\n3376684800");
    }

    #[test]
    fn repeated_query_parameters_are_not_signed() {
        let url = Url::parse("https://api.exoscale.com/v2/zone?a=1&a=2&b=3").expect("parses");
        let q = signed_query(&url);
        assert_eq!(q.keys().collect::<Vec<_>>(), vec!["b"]);
    }
}
