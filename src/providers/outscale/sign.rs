//! OSC4-HMAC-SHA256 request signing (OUTSCALE OSC API), as `osc_sdk_python/authentication.py`
//! implements it (OUTSCALE's guide: <https://docs.outscale.com/en/userguide/Calculating-a-Signature.html>).
//!
//! Every call is a `POST` of a JSON body to `{endpoint}/{Call}` without a query string. The
//! canonical request signs exactly three headers, `content-type;host;x-osc-date`, and the
//! SHA-256 of the body bytes as sent; the key chain starts from `"OSC4" + secret key` and the
//! scope is `{date}/{region}/api/osc4_request`. The server refuses a request more than five
//! minutes away from its `X-Osc-Date`, so a request is signed afresh for every attempt.

use hmac::{Hmac, Mac};
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "OSC4-HMAC-SHA256";
/// The only Content-Type we send; it is signed, so the header must carry this exact value.
pub const CONTENT_TYPE: &str = "application/json; charset=utf-8";
pub const DATE_HEADER: &str = "x-osc-date";
const SIGNED_HEADERS: &str = "content-type;host;x-osc-date";
/// The scope's service name for the documented form (Python SDK, osc-cli, curl `--aws-sigv4`).
const SERVICE: &str = "api";
const TERMINATOR: &str = "osc4_request";

type HmacSha256 = Hmac<Sha256>;

/// The two headers a signed request carries besides `Content-Type` and `Host`.
pub struct Signed {
    /// `X-Osc-Date`, `YYYYMMDDTHHMMSSZ`.
    pub date: String,
    /// `Authorization`; names the access key but holds no secret.
    pub authorization: String,
}

/// What is signed: `host` must be the `Host` header as sent (with `:port` when it is not the
/// scheme's default), `path` the escaped URL path, `body` the exact bytes sent.
pub struct Request<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
}

pub fn sign(
    access_key: &str,
    secret_key: &SecretString,
    region: &str,
    request: &Request<'_>,
    now: Timestamp,
) -> Signed {
    let date = now.strftime("%Y%m%dT%H%M%SZ").to_string();
    let day = &date[..8];
    let scope = format!("{day}/{region}/{SERVICE}/{TERMINATOR}");
    let canonical = canonical_request(request, &date);
    let to_sign = format!("{ALGORITHM}\n{date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical.as_bytes())));
    let key = signing_key(secret_key, day, region);
    let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
    Signed {
        authorization: format!(
            "{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={SIGNED_HEADERS}, Signature={signature}"
        ),
        date,
    }
}

/// `POST`, path, empty query, the three headers (the block ends with its own `\n`, so an empty
/// line follows), the signed header names, and the hex SHA-256 of the body.
fn canonical_request(request: &Request<'_>, date: &str) -> String {
    format!(
        "POST\n{}\n\ncontent-type:{CONTENT_TYPE}\nhost:{}\n{DATE_HEADER}:{date}\n\n{SIGNED_HEADERS}\n{}",
        request.path,
        request.host,
        hex::encode(Sha256::digest(request.body))
    )
}

fn signing_key(secret_key: &SecretString, day: &str, region: &str) -> [u8; 32] {
    let seed = format!("OSC4{}", secret_key.expose_secret());
    let k_date = hmac(seed.as_bytes(), day.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, SERVICE.as_bytes());
    hmac(&k_service, TERMINATOR.as_bytes())
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    // A test vector produced by the Python SDK's own signer with a pinned date.
    const AK: &str = "AKIDEXAMPLE0123456789";
    const SK: &str = "SECRETEXAMPLE0123456789012345678901234567";
    const HOST: &str = "api.eu-west-2.outscale.com";
    const PATH: &str = "/api/v1/CreateAccessKey";
    const BODY: &str = r#"{"ExpirationDate":"2030-01-01","UserName":"example-user"}"#;
    const SIGNATURE: &str = "c9c8c48e93ed2742426ef9019f94bf838e139e4cf02d7aa278a561a073090858";

    fn at() -> Timestamp {
        "2024-01-02T03:04:05Z".parse().expect("timestamp")
    }

    fn sign_body(body: &[u8]) -> Signed {
        sign(AK, &SecretString::from(SK), "eu-west-2", &Request { host: HOST, path: PATH, body }, at())
    }

    #[test]
    fn python_sdk_vector_gives_the_full_expected_headers() {
        let signed = sign_body(BODY.as_bytes());
        assert_eq!(signed.date, "20240102T030405Z");
        assert_eq!(
            signed.authorization,
            format!(
                "OSC4-HMAC-SHA256 Credential={AK}/20240102/eu-west-2/api/osc4_request, \
                 SignedHeaders=content-type;host;x-osc-date, Signature={SIGNATURE}"
            )
        );
    }

    #[test]
    fn python_sdk_vector_intermediate_hashes() {
        assert_eq!(
            hex::encode(Sha256::digest(BODY.as_bytes())),
            "48cd2a4371284a39a8102f9eee2c807919125ab51b2ffa976674ed56c5c88b5a"
        );
        let canonical =
            canonical_request(&Request { host: HOST, path: PATH, body: BODY.as_bytes() }, "20240102T030405Z");
        assert_eq!(
            hex::encode(Sha256::digest(canonical.as_bytes())),
            "064948d08cffafb9728013f1eff3124805ae430e66a1f1d88988b26d17b6feea"
        );
        assert!(canonical.starts_with("POST\n/api/v1/CreateAccessKey\n\ncontent-type:"));
        assert!(canonical.contains("x-osc-date:20240102T030405Z\n\ncontent-type;host;x-osc-date\n"));
    }

    #[test]
    fn the_body_is_signed_byte_for_byte() {
        // Same JSON value, other bytes: another signature. The body must be sent as signed.
        let spaced = sign_body(br#"{"ExpirationDate": "2030-01-01", "UserName": "example-user"}"#);
        let reordered = sign_body(br#"{"UserName":"example-user","ExpirationDate":"2030-01-01"}"#);
        let reference = sign_body(BODY.as_bytes()).authorization;
        assert_ne!(spaced.authorization, reference);
        assert_ne!(reordered.authorization, reference);
        assert_ne!(sign_body(b"").authorization, reference);
    }

    #[test]
    fn region_host_and_path_are_signed() {
        let secret = SecretString::from(SK);
        let base = Request { host: HOST, path: PATH, body: BODY.as_bytes() };
        let reference = sign(AK, &secret, "eu-west-2", &base, at()).authorization;
        let other_region = sign(AK, &secret, "us-east-2", &base, at()).authorization;
        assert!(other_region.contains("/20240102/us-east-2/api/osc4_request,"));
        assert_ne!(other_region, reference);
        let other_host = Request { host: "127.0.0.1:8080", ..base };
        assert_ne!(sign(AK, &secret, "eu-west-2", &other_host, at()).authorization, reference);
        let other_path = Request { path: "/api/v1/ReadAccessKeys", ..base };
        assert_ne!(sign(AK, &secret, "eu-west-2", &other_path, at()).authorization, reference);
    }

    #[test]
    fn the_date_is_utc_and_the_scope_uses_its_day() {
        let late: Timestamp = "2024-01-02T23:59:59-05:00".parse().expect("timestamp");
        let signed = sign_body_at(late);
        assert_eq!(signed.date, "20240103T045959Z");
        assert!(signed.authorization.contains("/20240103/eu-west-2/"));
    }

    fn sign_body_at(now: Timestamp) -> Signed {
        sign(AK, &SecretString::from(SK), "eu-west-2", &Request { host: HOST, path: PATH, body: BODY.as_bytes() }, now)
    }
}
