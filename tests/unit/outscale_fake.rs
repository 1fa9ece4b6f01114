//! Tests of the fake Outscale API: its signature verifier against known vectors (OSC4 and
//! AWS4), its HTTP behaviour as seen by a client over loopback, and the real
//! `OutscaleProvider` driven against it.

use crate::fakes;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use cloudkeys::api::{KeyProvider, LocalKey, OutscaleIssuer, OutscaleKey, SecretRef};
use cloudkeys::providers::http::HttpConfig;
use cloudkeys::providers::outscale::OutscaleProvider;
use cloudkeys::providers::{ErrorKind, KeyRequest, Marker, Provider, ProviderError, Revocation};
use fakes::outscale::{verify_signature, Faults, OutscaleFake, Scheme, SignedRequest, ACCEPTED_SERVICES, KEY_QUOTA};
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const REGION: &str = "eu-west-2";
const ADMIN_AK: &str = "ADMINKEY000000000001";
const ADMIN_SK: &str = "ADMINSECRET00000000000000000000000000001";
const UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";
const OTHER_UID: &str = "11111111-2222-4333-8444-555555555555";

// An OSC4 test vector: the Python SDK's signer (`osc_sdk_python/authentication.py`) with a pinned date.
const V_AK: &str = "AKIDEXAMPLE0123456789";
const V_SK: &str = "SECRETEXAMPLE0123456789012345678901234567";
const V_HOST: &str = "api.eu-west-2.outscale.com";
const V_PATH: &str = "/api/v1/CreateAccessKey";
const V_BODY: &str = r#"{"ExpirationDate":"2030-01-01","UserName":"example-user"}"#;
const V_DATE: &str = "20240102T030405Z";
const V_OSC4: &str = "c9c8c48e93ed2742426ef9019f94bf838e139e4cf02d7aa278a561a073090858";
/// The same request signed AWS4 (service `api`) by botocore's `SigV4Auth` with the date pinned.
const V_AWS4: &str = "b1c246a67b9eae5e959aacafd7dba49ec2b3a194b5ea39ee9e0fe9c2843e459c";
const CONTENT_TYPE: &str = "application/json; charset=utf-8";

// AWS's published SigV4 test suite credentials (get-vanilla, post-vanilla, IAM ListUsers).
const AWS_AK: &str = "AKIDEXAMPLE";
const AWS_SK: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const AWS_DATE: &str = "20150830T123600Z";

// ---------------------------------------------------------------------------------------------
// A tiny signer for the tests (checked against the vectors below)
// ---------------------------------------------------------------------------------------------

/// Returns the date header's name and value and the `Authorization` value. Signs `host`, the
/// date header, and `content-type` when one is given.
#[allow(clippy::too_many_arguments)] // the parts of a request, as the tests vary them
fn sign(
    scheme: Scheme,
    ak: &str,
    sk: &str,
    region: &str,
    service: &str,
    host: &str,
    path: &str,
    query: &str,
    content_type: Option<&str>,
    body: &[u8],
    date: &str,
    method: &str,
) -> (&'static str, String) {
    let (prefix, date_header, terminator) = match scheme {
        Scheme::Osc4 => ("OSC4", "x-osc-date", "osc4_request"),
        Scheme::Aws4 => ("AWS4", "x-amz-date", "aws4_request"),
    };
    let mut headers = String::new();
    let mut names = Vec::new();
    if let Some(ct) = content_type {
        headers.push_str(&format!("content-type:{ct}\n"));
        names.push("content-type");
    }
    headers.push_str(&format!("host:{host}\n{date_header}:{date}\n"));
    names.extend(["host", date_header]);
    let signed = names.join(";");
    let canonical = format!("{method}\n{path}\n{query}\n{headers}\n{signed}\n{}", hex::encode(Sha256::digest(body)));
    let day = &date[..8];
    let scope = format!("{day}/{region}/{service}/{terminator}");
    let to_sign =
        format!("{prefix}-HMAC-SHA256\n{date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical.as_bytes())));
    let mut key = format!("{prefix}{sk}").into_bytes();
    for part in [day, region, service, terminator, to_sign.as_str()] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(part.as_bytes());
        key = mac.finalize().into_bytes().to_vec();
    }
    (
        date_header,
        format!("{prefix}-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={signed}, Signature={}", hex::encode(key)),
    )
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    map
}

fn basic_time(text: &str) -> Timestamp {
    jiff::fmt::strtime::parse("%Y%m%dT%H%M%SZ", text)
        .and_then(|t| t.to_datetime())
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC))
        .map(|z| z.timestamp())
        .expect("basic time")
}

fn vector_headers(scheme: Scheme, signature: &str) -> HeaderMap {
    let (date_header, service_scope) = match scheme {
        Scheme::Osc4 => ("x-osc-date", "api/osc4_request"),
        Scheme::Aws4 => ("x-amz-date", "api/aws4_request"),
    };
    let authorization = format!(
        "{}-HMAC-SHA256 Credential={V_AK}/20240102/eu-west-2/{service_scope}, \
         SignedHeaders=content-type;host;{date_header}, Signature={signature}",
        scheme.as_str()
    );
    headers(&[
        ("host", V_HOST),
        ("content-type", CONTENT_TYPE),
        (date_header, V_DATE),
        ("authorization", &authorization),
    ])
}

fn verify_vector(headers: &HeaderMap, body: &[u8], path: &str) -> Result<Scheme, String> {
    verify_signature(
        &SignedRequest { method: "POST", path, query: "", headers, body },
        REGION,
        ACCEPTED_SERVICES,
        |ak| (ak == V_AK).then(|| V_SK.to_owned()),
        basic_time(V_DATE),
    )
    .map(|v| v.scheme)
    .map_err(|f| f.reason)
}

// ---------------------------------------------------------------------------------------------
// Signature vectors
// ---------------------------------------------------------------------------------------------

#[test]
fn osc4_vector_from_the_python_sdk() {
    let (_, authorization) = sign(
        Scheme::Osc4,
        V_AK,
        V_SK,
        REGION,
        "api",
        V_HOST,
        V_PATH,
        "",
        Some(CONTENT_TYPE),
        V_BODY.as_bytes(),
        V_DATE,
        "POST",
    );
    let headers = vector_headers(Scheme::Osc4, V_OSC4);
    assert_eq!(authorization, headers["authorization"].to_str().unwrap());
    assert_eq!(verify_vector(&headers, V_BODY.as_bytes(), V_PATH), Ok(Scheme::Osc4));
}

#[test]
fn aws4_vector_from_botocore() {
    let (_, authorization) = sign(
        Scheme::Aws4,
        V_AK,
        V_SK,
        REGION,
        "api",
        V_HOST,
        V_PATH,
        "",
        Some(CONTENT_TYPE),
        V_BODY.as_bytes(),
        V_DATE,
        "POST",
    );
    let headers = vector_headers(Scheme::Aws4, V_AWS4);
    assert_eq!(authorization, headers["authorization"].to_str().unwrap());
    assert_eq!(verify_vector(&headers, V_BODY.as_bytes(), V_PATH), Ok(Scheme::Aws4));
}

#[test]
fn aws4_vectors_from_the_published_sigv4_suite() {
    // (method, path, query, content-type, service, host, signature)
    let cases = [
        (
            "GET",
            "/",
            "",
            None,
            "service",
            "example.amazonaws.com",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "POST",
            "/",
            "",
            None,
            "service",
            "example.amazonaws.com",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        (
            "GET",
            "/",
            "Version=2010-05-08&Action=ListUsers",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            "iam",
            "iam.amazonaws.com",
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        ),
    ];
    for (method, path, query, content_type, service, host, signature) in cases {
        let names = if content_type.is_some() { "content-type;host;x-amz-date" } else { "host;x-amz-date" };
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={AWS_AK}/20150830/us-east-1/{service}/aws4_request, \
             SignedHeaders={names}, Signature={signature}"
        );
        let mut pairs = vec![("host", host), ("x-amz-date", AWS_DATE), ("authorization", authorization.as_str())];
        if let Some(ct) = content_type {
            pairs.push(("content-type", ct));
        }
        let verdict = verify_signature(
            &SignedRequest { method, path, query, headers: &headers(&pairs), body: b"" },
            "us-east-1",
            &[service],
            |ak| (ak == AWS_AK).then(|| AWS_SK.to_owned()),
            basic_time(AWS_DATE),
        );
        assert_eq!(
            verdict.map(|v| (v.scheme, v.access_key_id)),
            Ok((Scheme::Aws4, AWS_AK.to_owned())),
            "{method} {path}?{query}"
        );
        // The test signer agrees (the query sorted as canonical).
        let sorted_query = {
            let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
            pairs.sort();
            pairs.join("&")
        };
        let (_, mine) = sign(
            Scheme::Aws4,
            AWS_AK,
            AWS_SK,
            "us-east-1",
            service,
            host,
            path,
            &sorted_query,
            content_type,
            b"",
            AWS_DATE,
            method,
        );
        assert_eq!(mine, authorization);
    }
}

#[test]
fn verifier_rejects_tampering() {
    let good = vector_headers(Scheme::Osc4, V_OSC4);
    let body = V_BODY.as_bytes();
    assert!(verify_vector(&good, body, V_PATH).is_ok());
    let refused = |headers: &HeaderMap, body: &[u8], path: &str, why: &str| {
        let e = verify_vector(headers, body, path).expect_err(why);
        assert!(e.contains(why), "{why}: got {e}");
    };

    // The body byte for byte: same JSON, other spacing.
    refused(&good, br#"{"ExpirationDate": "2030-01-01","UserName":"example-user"}"#, V_PATH, "signature mismatch");
    refused(&good, b"", V_PATH, "signature mismatch");
    // The path, a signed header's value.
    refused(&good, body, "/api/v1/DeleteAccessKey", "signature mismatch");
    let mut h = good.clone();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    refused(&h, body, V_PATH, "signature mismatch");
    let mut h = good.clone();
    h.insert("host", HeaderValue::from_static("api.us-east-2.outscale.com"));
    refused(&h, body, V_PATH, "signature mismatch");
    // The wrong secret.
    let e = verify_signature(
        &SignedRequest { method: "POST", path: V_PATH, query: "", headers: &good, body },
        REGION,
        ACCEPTED_SERVICES,
        |_| Some("not-the-secret".to_owned()),
        basic_time(V_DATE),
    )
    .expect_err("wrong secret");
    assert_eq!(e.reason, "signature mismatch");
    assert_eq!(e.access_key_id.as_deref(), Some(V_AK));
    assert_eq!(e.scheme, Some(Scheme::Osc4));
    // An unknown key.
    let e = verify_signature(
        &SignedRequest { method: "POST", path: V_PATH, query: "", headers: &good, body },
        REGION,
        ACCEPTED_SERVICES,
        |_| None,
        basic_time(V_DATE),
    )
    .expect_err("unknown key");
    assert!(e.reason.contains("unknown"), "{}", e.reason);
    // Another region (the fake's is eu-west-2) or a service the API does not know.
    let e = verify_signature(
        &SignedRequest { method: "POST", path: V_PATH, query: "", headers: &good, body },
        "us-east-2",
        ACCEPTED_SERVICES,
        |_| Some(V_SK.to_owned()),
        basic_time(V_DATE),
    )
    .expect_err("region");
    assert!(e.reason.contains("region"), "{}", e.reason);
    let auth = good["authorization"].to_str().unwrap().to_owned();
    for (bad, why) in [
        (auth.replace("/api/", "/ec2/"), "service"),
        (auth.replace("osc4_request", "aws4_request"), "osc4_request"),
        (auth.replace("/20240102/", "/20240101/"), "scope date"),
        (auth.replace("content-type;host;x-osc-date", "content-type;x-osc-date"), "host is not signed"),
        (auth.replace("content-type;host;x-osc-date", "content-type;host"), "x-osc-date is not signed"),
        (auth.replace("content-type;host;x-osc-date", "host;content-type;x-osc-date"), "sorted"),
        (auth.replace("content-type;host;x-osc-date", "content-type;host;x-osc-date;x-zzz"), "x-zzz is missing"),
        (auth.replace("Signature=c9", "Signature=zz"), "hex"),
        (auth.replace("OSC4-HMAC-SHA256", "OSC4-HMAC-SHA1"), "algorithm"),
        (auth.replace(", Signature=", ", Sig="), "expected Credential"),
        (format!("{auth}, Extra=1"), "unexpected field"),
        (auth.replace("Credential=AKIDEXAMPLE0123456789/", "Credential="), "Credential must be"),
        ("Basic dXNlcjpwYXNz".to_owned(), "algorithm"),
    ] {
        let mut h = good.clone();
        h.insert("authorization", HeaderValue::from_str(&bad).unwrap());
        refused(&h, body, V_PATH, why);
    }
    // The date: missing, malformed, or more than five minutes away.
    let mut h = good.clone();
    h.remove("x-osc-date");
    refused(&h, body, V_PATH, "no x-osc-date header");
    let mut h = good.clone();
    h.insert("x-osc-date", HeaderValue::from_static("2024-01-02T03:04:05Z"));
    refused(&h, body, V_PATH, "YYYYMMDDTHHMMSSZ");
    for now in ["2024-01-02T03:09:06Z", "2024-01-02T02:59:04Z"] {
        let e = verify_signature(
            &SignedRequest { method: "POST", path: V_PATH, query: "", headers: &good, body },
            REGION,
            ACCEPTED_SERVICES,
            |_| Some(V_SK.to_owned()),
            now.parse().unwrap(),
        )
        .expect_err(now);
        assert!(e.reason.contains("away from now"), "{}", e.reason);
    }
    // OSC4 dates with X-Osc-Date: an X-Amz-Date alone is not enough.
    let mut h = good.clone();
    h.remove("x-osc-date");
    h.insert("x-amz-date", HeaderValue::from_static(V_DATE));
    refused(&h, body, V_PATH, "x-osc-date");
    // No header at all.
    refused(&HeaderMap::new(), body, V_PATH, "no Authorization header");
}

#[test]
fn aws4_checks_a_declared_payload_hash() {
    let mut h = vector_headers(Scheme::Aws4, V_AWS4);
    h.insert("x-amz-content-sha256", HeaderValue::from_str(&hex::encode(Sha256::digest(b"other"))).unwrap());
    let e = verify_vector(&h, V_BODY.as_bytes(), V_PATH).expect_err("mismatched hash");
    assert!(e.contains("x-amz-content-sha256"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// HTTP client helper
// ---------------------------------------------------------------------------------------------

struct Api {
    base: String,
    host: String,
    ak: String,
    sk: String,
    scheme: Scheme,
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    body: Value,
}

impl Api {
    fn new(fake: &OutscaleFake) -> Self {
        Self::with(fake, ADMIN_AK, ADMIN_SK, Scheme::Osc4)
    }

    fn with(fake: &OutscaleFake, ak: &str, sk: &str, scheme: Scheme) -> Self {
        let endpoint = fake.endpoint();
        let host = endpoint.trim_start_matches("http://").trim_end_matches("/api/v1").to_owned();
        Self { base: endpoint, host, ak: ak.to_owned(), sk: sk.to_owned(), scheme, http: reqwest::Client::new() }
    }

    fn impatient(mut self) -> Self {
        self.http = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
        self
    }

    async fn raw(&self, call: &str, body: &Value, signed: bool) -> Result<Reply, reqwest::Error> {
        let bytes = serde_json::to_vec(body).unwrap();
        let mut request =
            self.http.post(format!("{}/{call}", self.base)).header("content-type", CONTENT_TYPE).body(bytes.clone());
        if signed {
            let date = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
            let (date_header, authorization) = sign(
                self.scheme,
                &self.ak,
                &self.sk,
                REGION,
                "api",
                &self.host,
                &format!("/api/v1/{call}"),
                "",
                Some(CONTENT_TYPE),
                &bytes,
                &date,
                "POST",
            );
            request = request.header(date_header, date).header("authorization", authorization);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok(Reply { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null) })
    }

    async fn call(&self, call: &str, body: Value) -> Reply {
        self.raw(call, &body, true).await.expect("request answered")
    }
}

fn code(reply: &Reply) -> &str {
    reply.body["Errors"][0]["Code"].as_str().unwrap_or("")
}

fn future_date(days: i64) -> String {
    (Timestamp::now() + jiff::SignedDuration::from_hours(24 * days)).strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string()
}

// ---------------------------------------------------------------------------------------------
// HTTP behaviour
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unsigned_and_badly_signed_requests_get_401_with_the_error_body() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    let api = Api::new(&fake);

    let reply = api.raw("ReadAccessKeys", &json!({}), false).await.unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(code(&reply), "1");
    assert_eq!(reply.body["Errors"][0]["Type"], "AccessDenied");
    assert!(reply.body["ResponseContext"]["RequestId"].is_string());

    let wrong_secret = Api::with(&fake, ADMIN_AK, "WRONG", Scheme::Osc4);
    assert_eq!(wrong_secret.call("ReadAccessKeys", json!({})).await.status, 401);
    let unknown = Api::with(&fake, "UNKNOWN0000000000000", ADMIN_SK, Scheme::Aws4);
    assert_eq!(unknown.call("ReadAccessKeys", json!({})).await.status, 401);
    // Before validating the body, and on calls the fake does not know.
    let reply = api.raw("Nope", &json!({"x": 1}), false).await.unwrap();
    assert_eq!(reply.status, 401);

    let records = fake.requests();
    let seen: Vec<(&str, u16, bool, &str)> =
        records.iter().map(|r| (r.action.as_str(), r.status, r.signature_ok, r.scheme)).collect();
    assert_eq!(
        seen,
        vec![
            ("ReadAccessKeys", 401, false, ""),
            ("ReadAccessKeys", 401, false, "OSC4"),
            ("ReadAccessKeys", 401, false, "AWS4"),
            ("Nope", 401, false, ""),
        ]
    );
    assert_eq!(records[1].access_key_id.as_deref(), Some(ADMIN_AK));
    assert_eq!(records[3].body, json!({"x": 1}));
}

#[tokio::test]
async fn both_signature_schemes_are_accepted() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    for scheme in [Scheme::Osc4, Scheme::Aws4] {
        let api = Api::with(&fake, ADMIN_AK, ADMIN_SK, scheme);
        let reply = api.call("ReadAccessKeys", json!({})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["AccessKeys"][0]["AccessKeyId"], ADMIN_AK);
    }
    let schemes: Vec<(&str, bool)> = fake.requests().iter().map(|r| (r.scheme, r.signature_ok)).collect();
    assert_eq!(schemes, vec![("OSC4", true), ("AWS4", true)]);
}

#[tokio::test]
async fn eim_key_lifecycle_enforces_inactive_before_delete() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("bot");
    let api = Api::new(&fake);
    let expiry = future_date(30);

    let reply = api.call("CreateAccessKey", json!({"UserName": "bot", "ExpirationDate": expiry, "Tag": "t1"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let key = &reply.body["AccessKey"];
    let id = key["AccessKeyId"].as_str().unwrap().to_owned();
    let secret = key["SecretKey"].as_str().unwrap().to_owned();
    assert_eq!((id.len(), secret.len()), (20, 40));
    assert_eq!(key["State"], "ACTIVE");
    assert_eq!(key["Tag"], "t1");
    // Dates as the real API writes them.
    let expiration = key["ExpirationDate"].as_str().unwrap();
    assert!(expiration.ends_with(".000+0000"), "{expiration}");
    assert!(key["CreationDate"].as_str().unwrap().ends_with("+0000"));
    assert_eq!(fake.issued_secrets(), vec![secret.clone()]);

    // Filters.
    let read = |body: Value| {
        let api = &api;
        async move {
            let reply = api.call("ReadAccessKeys", body).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.body["AccessKeys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["AccessKeyId"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(read(json!({"UserName": "bot"})).await, vec![id.clone()]);
    assert_eq!(read(json!({})).await, vec![ADMIN_AK.to_owned()]);
    assert_eq!(read(json!({"UserName": "bot", "Filters": {"AccessKeyIds": [id]}})).await, vec![id.clone()]);
    assert!(read(json!({"UserName": "bot", "Filters": {"AccessKeyIds": ["OTHER"]}})).await.is_empty());
    assert_eq!(read(json!({"UserName": "bot", "Filters": {"AccessKeyIds": []}})).await, vec![id.clone()]);
    assert_eq!(read(json!({"UserName": "bot", "Tag": "t1"})).await, vec![id.clone()]);
    // The tag filter matches the whole tag.
    assert!(read(json!({"UserName": "bot", "Tag": "t"})).await.is_empty());
    assert!(read(json!({"UserName": "bot", "Filters": {"States": ["INACTIVE"]}})).await.is_empty());
    // The root account does not see the user's key without UserName.
    assert!(read(json!({"Filters": {"AccessKeyIds": [id]}})).await.is_empty());

    // An ACTIVE EIM key cannot be deleted.
    let reply = api.call("DeleteAccessKey", json!({"AccessKeyId": id, "UserName": "bot"})).await;
    assert_eq!(reply.status, 409);
    assert_eq!(code(&reply), "6003");
    assert_eq!(reply.body["Errors"][0]["Type"], "InvalidState");

    // INACTIVE without ExpirationDate: the key silently becomes non-expiring, as documented.
    let reply = api.call("UpdateAccessKey", json!({"AccessKeyId": id, "UserName": "bot", "State": "INACTIVE"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["AccessKey"]["State"], "INACTIVE");
    assert!(reply.body["AccessKey"].get("ExpirationDate").is_none());
    // Re-sent, it is kept.
    let reply = api
        .call(
            "UpdateAccessKey",
            json!({"AccessKeyId": id, "UserName": "bot", "State": "INACTIVE", "ExpirationDate": expiry}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["AccessKey"]["ExpirationDate"], expiration);
    assert_eq!(read(json!({"UserName": "bot", "Filters": {"States": ["INACTIVE"]}})).await, vec![id.clone()]);

    let reply = api.call("DeleteAccessKey", json!({"AccessKeyId": id, "UserName": "bot"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(read(json!({"UserName": "bot"})).await.is_empty());
    let deleted = fake.deleted_keys();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].state, "INACTIVE");
    assert_eq!(deleted[0].expiration_date.as_deref(), Some(expiration));

    // Gone: access-keys-not-found.
    let reply = api.call("DeleteAccessKey", json!({"AccessKeyId": id, "UserName": "bot"})).await;
    assert_eq!((reply.status, code(&reply)), (400, "4000"));
}

#[tokio::test]
async fn root_keys_are_deleted_directly() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    let api = Api::new(&fake);
    let reply = api.call("CreateAccessKey", json!({"Tag": "mine"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body["AccessKey"].get("ExpirationDate").is_none());
    let id = reply.body["AccessKey"]["AccessKeyId"].as_str().unwrap().to_owned();
    let live = fake.live_keys();
    assert_eq!(live.len(), 2);
    assert_eq!(live[1].user_name, None);
    assert_eq!(live[1].tag.as_deref(), Some("mine"));
    assert_eq!(live[1].expiration_date, None);
    let reply = api.call("DeleteAccessKey", json!({"AccessKeyId": id})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(fake.live_keys().len(), 1);
}

#[tokio::test]
async fn requests_are_validated_like_the_spec_says() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("bot");
    let api = Api::new(&fake);
    let cases = [
        ("CreateAccessKey", json!({"ExpirationDate": ""}), 400, "4108"),
        ("CreateAccessKey", json!({"ExpirationDate": 5}), 400, "4108"),
        ("CreateAccessKey", json!({"ExpirationDate": "soon"}), 400, "4047"),
        ("CreateAccessKey", json!({"ExpirationDate": "2001-01-01"}), 400, "4047"),
        ("CreateAccessKey", json!({"Name": "x"}), 400, "3001"),
        ("CreateAccessKey", json!({"UserName": "ghost"}), 400, "5075"),
        ("ReadAccessKeys", json!({"Filters": {"Tags": ["x"]}}), 400, "3001"),
        ("ReadAccessKeys", json!({"Filters": {"States": ["GONE"]}}), 400, "4047"),
        ("ReadAccessKeys", json!({"UserName": "ghost"}), 400, "5075"),
        ("UpdateAccessKey", json!({"State": "INACTIVE"}), 400, "7000"),
        ("UpdateAccessKey", json!({"AccessKeyId": ADMIN_AK, "State": "OFF"}), 400, "4047"),
        ("UpdateAccessKey", json!({"AccessKeyId": "NOPE"}), 400, "4000"),
        ("DeleteAccessKey", json!({}), 400, "7000"),
        ("DeleteAccessKey", json!({"AccessKeyId": ADMIN_AK, "UserName": "bot"}), 400, "4000"),
        ("RunInstances", json!({}), 404, "5011"),
    ];
    for (call, body, status, expected) in cases {
        let reply = api.call(call, body.clone()).await;
        assert_eq!((reply.status, code(&reply)), (status, expected), "{call} {body}");
        assert!(reply.body["ResponseContext"]["RequestId"].is_string());
    }
    let reply = api.call("CreateAccessKey", json!({"ExpirationDate": ""})).await;
    assert_eq!(reply.body["Errors"][0]["Details"], "The parameter type of ExpirationDate is unknown.");
    // Nothing was created; a bare date is accepted.
    assert_eq!(fake.live_keys().len(), 1);
    let reply = api.call("CreateAccessKey", json!({"ExpirationDate": "2099-06-14"})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["AccessKey"]["ExpirationDate"], "2099-06-14T00:00:00.000+0000");
}

#[tokio::test]
async fn ten_keys_per_identity() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("bot");
    let api = Api::new(&fake);
    for i in 0..KEY_QUOTA {
        let reply = api.call("CreateAccessKey", json!({"UserName": "bot", "Tag": format!("k{i}")})).await;
        assert_eq!(reply.status, 200, "{i}: {}", reply.body);
    }
    let reply = api.call("CreateAccessKey", json!({"UserName": "bot"})).await;
    assert_eq!((reply.status, code(&reply)), (400, "10005"));
    assert_eq!(reply.body["Errors"][0]["Type"], "TooManyResources (QuotaExceded)");
    // The root account has its own quota, the admin key included.
    for _ in 1..KEY_QUOTA {
        assert_eq!(api.call("CreateAccessKey", json!({})).await.status, 200);
    }
    assert_eq!(code(&api.call("CreateAccessKey", json!({})).await), "10005");
}

#[tokio::test]
async fn issued_keys_sign_as_their_owner_until_revoked_or_expired() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("bot");
    let admin = Api::new(&fake);
    let reply = admin.call("CreateAccessKey", json!({"UserName": "bot"})).await;
    let id = reply.body["AccessKey"]["AccessKeyId"].as_str().unwrap().to_owned();
    let sk = reply.body["AccessKey"]["SecretKey"].as_str().unwrap().to_owned();

    let bot = Api::with(&fake, &id, &sk, Scheme::Aws4);
    let reply = bot.call("ReadAccessKeys", json!({})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Its own keys: the caller is the EIM user.
    assert_eq!(reply.body["AccessKeys"][0]["AccessKeyId"], id.as_str());

    admin.call("UpdateAccessKey", json!({"AccessKeyId": id, "UserName": "bot", "State": "INACTIVE"})).await;
    assert_eq!(bot.call("ReadAccessKeys", json!({})).await.status, 401);

    let (expiring, expiring_sk) = fake.add_key(Some("bot"), None);
    let other = Api::with(&fake, &expiring.access_key_id, &expiring_sk, Scheme::Osc4);
    assert_eq!(other.call("ReadAccessKeys", json!({})).await.status, 200);
    fake.expire_key(&expiring.access_key_id);
    assert_eq!(other.call("ReadAccessKeys", json!({})).await.status, 401);
}

#[tokio::test]
async fn deleting_the_root_accounts_last_key_creates_another() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    let api = Api::new(&fake);
    let reply = api.call("DeleteAccessKey", json!({"AccessKeyId": ADMIN_AK})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let live = fake.live_keys();
    assert_eq!(live.len(), 1);
    assert_ne!(live[0].access_key_id, ADMIN_AK);
    assert_eq!(api.call("ReadAccessKeys", json!({})).await.status, 401);
}

#[tokio::test]
async fn brute_force_lockout_when_enabled() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.set_brute_force_lockout(true);
    let bad = Api::with(&fake, ADMIN_AK, "WRONG", Scheme::Osc4);
    for _ in 0..4 {
        assert_eq!(code(&bad.call("ReadAccessKeys", json!({})).await), "1");
    }
    // Now even the right secret is refused, for a minute.
    let good = Api::new(&fake);
    let reply = good.call("ReadAccessKeys", json!({})).await;
    assert_eq!((reply.status, code(&reply)), (401, "13"));
    fake.set_brute_force_lockout(false);
    assert_eq!(good.call("ReadAccessKeys", json!({})).await.status, 200);
}

#[tokio::test]
async fn injected_faults() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    let api = Api::new(&fake);

    fake.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
    let reply = api.call("CreateAccessKey", json!({})).await;
    assert_eq!((reply.status, code(&reply)), (503, "6"));
    assert_eq!(fake.live_keys().len(), 1);

    fake.set_faults(Faults { throttle_rate: 1.0, ..Faults::default() });
    let mut codes = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let reply = api.call("CreateAccessKey", json!({})).await;
        assert_eq!(reply.status, 429);
        codes.insert(code(&reply).to_owned());
    }
    assert_eq!(codes.into_iter().collect::<Vec<_>>(), vec!["24", "25"]);
    assert_eq!(fake.live_keys().len(), 1);
    // Signatures are still checked first.
    assert_eq!(api.raw("ReadAccessKeys", &json!({}), false).await.unwrap().status, 401);

    fake.set_faults(Faults { reject_credentials: true, ..Faults::default() });
    let reply = api.call("ReadAccessKeys", json!({})).await;
    assert_eq!((reply.status, code(&reply)), (401, "1"));

    fake.set_faults(Faults { latency: Duration::from_millis(300), ..Faults::default() });
    let started = Instant::now();
    assert_eq!(api.call("ReadAccessKeys", json!({})).await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn hang_creates_creates_the_key_but_never_answers() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.set_faults(Faults { hang_creates: true, ..Faults::default() });
    let api = Api::new(&fake).impatient();
    let error = api.raw("CreateAccessKey", &json!({"Tag": "lost"}), true).await.err().expect("no answer");
    assert!(error.is_timeout(), "{error}");
    let live = fake.live_keys();
    assert_eq!(live.len(), 2);
    assert_eq!(live[1].tag.as_deref(), Some("lost"));
    assert_eq!(fake.issued_secrets().len(), 1);
    let record = &fake.requests()[0];
    assert_eq!((record.status, record.signature_ok), (0, true));
    // Other calls are still answered.
    let reply = api.call("ReadAccessKeys", json!({"Tag": "lost"})).await;
    assert_eq!(reply.body["AccessKeys"][0]["Tag"], "lost");
}

#[test]
fn the_fake_outlives_test_runtimes_and_stops_when_dropped() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    for _ in 0..3 {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let status = runtime.block_on(async { Api::new(&fake).call("CreateAccessKey", json!({})).await.status });
        assert_eq!(status, 200);
    }
    assert_eq!(fake.live_keys().len(), 4);
    let address = fake.endpoint().trim_start_matches("http://").trim_end_matches("/api/v1").to_owned();
    drop(fake);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&address).is_ok() {
        assert!(Instant::now() < deadline, "the fake still accepts connections");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The real provider against the fake
// ---------------------------------------------------------------------------------------------

fn http_config() -> HttpConfig {
    HttpConfig {
        provider: "outscale",
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
        ..HttpConfig::default()
    }
}

fn provider_with(fake: &OutscaleFake, ak: &str, sk: &str, http: HttpConfig) -> OutscaleProvider {
    let issuer = OutscaleIssuer {
        region: REGION.to_owned(),
        endpoint: Some(fake.endpoint()),
        credentials_secret_ref: SecretRef { name: "osc-admin".to_owned() },
    };
    OutscaleProvider::new(&issuer, ak.to_owned(), SecretString::from(sk), http)
        .unwrap_or_else(|e| panic!("provider builds: {e}"))
}

fn provider(fake: &OutscaleFake) -> OutscaleProvider {
    provider_with(fake, ADMIN_AK, ADMIN_SK, http_config())
}

fn spec(user: Option<&str>, expires_after: Option<&str>) -> KeyProvider {
    KeyProvider::Outscale(OutscaleKey {
        user_name: user.map(str::to_owned),
        expires_after: expires_after.map(Into::into),
    })
}

async fn create(
    p: &OutscaleProvider,
    marker: &Marker,
    spec: &KeyProvider,
) -> Result<cloudkeys::providers::IssuedKey, ProviderError> {
    p.create_key(&KeyRequest { marker, display_name: "team-a-backups".to_owned(), spec, now: Timestamp::now() }).await
}

fn actions(fake: &OutscaleFake) -> Vec<String> {
    fake.requests().into_iter().map(|r| r.action).collect()
}

#[tokio::test]
async fn provider_issues_finds_and_revokes_a_root_key_without_expiry() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    let p = provider(&fake);
    p.check_credentials().await.expect("credentials accepted");

    let marker = Marker::new_attempt(UID);
    let spec = spec(None, None);
    let key = create(&p, &marker, &spec).await.expect("created");
    assert_eq!(key.expires_at, None);
    assert_eq!(key.key_ref, key.access_key_id);
    assert_eq!(fake.issued_secrets(), vec![key.secret.expose_secret().to_owned()]);
    let live = fake.live_keys();
    let created = live.iter().find(|k| k.access_key_id == key.access_key_id).expect("live");
    assert_eq!(created.tag, Some(marker.to_string()));
    assert_eq!((created.user_name.as_deref(), created.expiration_date.as_deref()), (None, None));
    // Only the non-empty fields were sent.
    let create_body = &fake.requests()[1].body;
    assert_eq!(create_body, &json!({"Tag": marker.to_string()}));

    // Another owner's key and an untagged one are not found.
    fake.add_key(None, Some(&Marker::new_attempt(OTHER_UID).to_string()));
    let found = p.find_keys(UID, &spec).await.expect("listed");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key_ref, key.key_ref);
    assert_eq!(found[0].access_key_id.as_deref(), Some(key.access_key_id.as_str()));
    assert_eq!(found[0].marker, marker);

    let before = fake.requests().len();
    assert_eq!(p.revoke_key(&key.key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    assert_eq!(actions(&fake)[before..], ["ReadAccessKeys", "DeleteAccessKey"]);
    assert!(fake.live_keys().iter().all(|k| k.access_key_id != key.access_key_id));
    assert!(p.find_keys(UID, &spec).await.expect("listed").is_empty());
    // Already gone counts as revoked.
    assert_eq!(p.revoke_key(&key.key_ref, UID).await.expect("gone is fine"), Revocation::AlreadyGone);
    assert!(fake.requests().iter().all(|r| r.signature_ok && r.scheme == "OSC4"));
}

#[tokio::test]
async fn provider_revokes_an_eim_key_inactive_first_keeping_its_expiry() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("backup-bot");
    let p = provider(&fake);
    let marker = Marker::new_attempt(UID);
    let spec = spec(Some("backup-bot"), Some("2160h"));
    let started = Timestamp::now();
    let key = create(&p, &marker, &spec).await.expect("created");
    assert_eq!(key.key_ref, format!("{};user=backup-bot", key.access_key_id));

    let expires_at = key.expires_at.expect("expires");
    let lifetime = expires_at.duration_since(started).as_secs();
    assert!((2160 * 3600 - 5..=2160 * 3600 + 1).contains(&lifetime), "{lifetime}");
    let live = fake.live_keys();
    let created = live.iter().find(|k| k.access_key_id == key.access_key_id).expect("live");
    assert_eq!(created.user_name.as_deref(), Some("backup-bot"));
    let sent_expiry = fake.requests()[0].body["ExpirationDate"].as_str().expect("ExpirationDate sent").to_owned();
    assert!(sent_expiry.ends_with(".000Z"), "{sent_expiry}");
    assert_eq!(created.expiration_date.as_deref(), Some(sent_expiry.replace('Z', "+0000").as_str()));

    // The key works, as the user.
    let as_bot = provider_with(&fake, &key.access_key_id, key.secret.expose_secret(), http_config());
    as_bot.check_credentials().await.expect("issued key signs");

    let found = p.find_keys(UID, &spec).await.expect("listed");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key_ref, key.key_ref);
    // Without the user name, the root account's keys are listed: not this one.
    assert!(p.find_keys(UID, &self::spec(None, None)).await.expect("listed").is_empty());

    let before = fake.requests().len();
    assert_eq!(p.revoke_key(&key.key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    let records = fake.requests();
    let calls: Vec<&str> = records[before..].iter().map(|r| r.action.as_str()).collect();
    assert_eq!(calls, ["ReadAccessKeys", "UpdateAccessKey", "DeleteAccessKey"]);
    let update = &records[before + 1].body;
    assert_eq!(update["State"], "INACTIVE");
    assert_eq!(update["UserName"], "backup-bot");
    assert_eq!(update["ExpirationDate"], sent_expiry.as_str());
    let deleted = fake.deleted_keys();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].state, "INACTIVE");
    assert_eq!(deleted[0].expiration_date, created.expiration_date);

    assert_eq!(as_bot.check_credentials().await.expect_err("revoked").kind, ErrorKind::Auth);
    assert_eq!(p.revoke_key(&key.key_ref, UID).await.expect("gone is fine"), Revocation::AlreadyGone);
}

#[tokio::test]
async fn provider_eim_key_without_expiry_and_an_expired_one() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("bot");
    let p = provider(&fake);
    let spec = spec(Some("bot"), None);
    let key = create(&p, &Marker::new_attempt(UID), &spec).await.expect("created");
    assert_eq!(key.expires_at, None);
    assert!(fake.requests()[0].body.get("ExpirationDate").is_none());
    assert_eq!(p.revoke_key(&key.key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    let update = &fake.requests()[2].body;
    assert_eq!(update["State"], "INACTIVE");
    assert!(update.get("ExpirationDate").is_none());

    // An expired key: its past date is not re-sent (the API refuses past dates).
    let key = create(&p, &Marker::new_attempt(UID), &self::spec(Some("bot"), Some("1h"))).await.expect("created");
    fake.expire_key(&key.access_key_id);
    assert_eq!(p.revoke_key(&key.key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    assert!(fake.live_keys().iter().all(|k| k.user_name.is_none()));
}

#[tokio::test]
async fn provider_with_an_eim_identity_deactivates_its_own_keys_when_told_to() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    let (operator, operator_sk) = fake.add_key(Some("operator"), None);
    let p = provider_with(&fake, &operator.access_key_id, &operator_sk, http_config());
    let spec = spec(None, Some("24h"));
    let key = create(&p, &Marker::new_attempt(UID), &spec).await.expect("created");
    assert_eq!(key.key_ref, key.access_key_id);
    assert_eq!(p.find_keys(UID, &spec).await.expect("listed").len(), 1);
    let before = fake.requests().len();
    assert_eq!(p.revoke_key(&key.key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    let records = fake.requests();
    let calls: Vec<(&str, u16)> = records[before..].iter().map(|r| (r.action.as_str(), r.status)).collect();
    assert_eq!(
        calls,
        [("ReadAccessKeys", 200), ("DeleteAccessKey", 409), ("UpdateAccessKey", 200), ("DeleteAccessKey", 200)]
    );
    assert!(records[before + 2].body["ExpirationDate"].is_string());
    // The issuer's own key is never revoked.
    let before = fake.requests().len();
    let refused = p.revoke_key(&operator.access_key_id, UID).await.expect("answered");
    assert!(matches!(refused, Revocation::NotOwned(ref why) if why.contains("the issuer's own")), "{refused:?}");
    assert_eq!(fake.requests().len(), before, "not even read");
}

#[tokio::test]
async fn provider_revokes_only_keys_tagged_with_the_owners_marker() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("bot");
    let p = provider(&fake);
    let mine = Marker::new_attempt(UID);
    let (untagged, _) = fake.add_key(None, None);
    let (others, _) = fake.add_key(Some("bot"), Some(&Marker::new_attempt(OTHER_UID).to_string()));
    // A tag that merely contains this owner's marker is not where the operator puts it.
    let (lookalike, _) = fake.add_key(Some("bot"), Some(&format!("admin {mine}")));
    assert!(p.find_keys(UID, &spec(Some("bot"), None)).await.expect("listed").is_empty());
    for key_ref in [
        untagged.access_key_id.clone(),
        format!("{};user=bot", others.access_key_id),
        format!("{};user=bot", lookalike.access_key_id),
    ] {
        let before = fake.requests().len();
        let refused = p.revoke_key(&key_ref, UID).await.expect("answered");
        assert!(matches!(refused, Revocation::NotOwned(ref why) if why.contains("not tagged")), "{refused:?}");
        assert_eq!(actions(&fake)[before..], ["ReadAccessKeys"], "{key_ref}: read, never changed");
    }
    let live: Vec<String> = fake.live_keys().into_iter().map(|k| k.access_key_id).collect();
    for key in [&untagged, &others, &lookalike] {
        assert!(live.contains(&key.access_key_id));
    }
    assert!(fake.live_keys().iter().all(|k| k.state == "ACTIVE"));
    let garbage = p.revoke_key("not a reference;user=", UID).await.expect("refused without a call");
    assert!(matches!(garbage, Revocation::NotOwned(_)), "{garbage:?}");
}

#[tokio::test]
async fn provider_reports_the_exhausted_quota_as_permanent() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("bot");
    for _ in 0..KEY_QUOTA {
        fake.add_key(Some("bot"), None);
    }
    let p = provider(&fake);
    let e = create(&p, &Marker::new_attempt(UID), &spec(Some("bot"), None)).await.expect_err("quota");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("10005"), "{e}");
    assert!(e.message.contains("TooManyResources"), "{e}");
    assert!(e.message.contains("Quota exceeded"), "{e}");
    assert!(e.message.contains("10 access keys"), "{e}");
    assert!(e.request_id.is_some());
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn provider_errors_carry_code_type_details_and_request_id() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    let p = provider(&fake);
    let e = create(&p, &Marker::new_attempt(UID), &spec(Some("ghost"), None)).await.expect_err("no such user");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert_eq!(e.operation, "CreateAccessKey");
    assert_eq!(e.status, Some(400));
    assert_eq!(e.message, "Outscale error 5075 InvalidResource: no-such-user: ghost");
    let shown = e.to_string();
    assert!(shown.contains("[request id "), "{shown}");
    // A user that does not exist has no keys.
    assert!(p.find_keys(UID, &spec(Some("ghost"), None)).await.expect("listed").is_empty());
    assert_eq!(
        p.revoke_key("AAAAAAAAAAAAAAAAAAAA;user=ghost", UID).await.expect("a deleted user's keys are gone"),
        Revocation::AlreadyGone
    );
    // A spec for another provider, and a bad lifetime, are refused before any call.
    let before = fake.requests().len();
    let local = KeyProvider::Local(LocalKey {});
    let e = create(&p, &Marker::new_attempt(UID), &local).await.expect_err("local");
    assert_eq!(e.kind, ErrorKind::Permanent);
    let e = create(&p, &Marker::new_attempt(UID), &spec(None, Some("30s"))).await.expect_err("too short");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("minimum"), "{e}");
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn wrong_credentials_fail_once_per_call_without_retry() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("bot");
    let p = provider_with(&fake, ADMIN_AK, "WRONGSECRET", http_config());
    let spec = spec(Some("bot"), Some("24h"));
    let mut errors = vec![
        p.check_credentials().await.expect_err("check"),
        create(&p, &Marker::new_attempt(UID), &spec).await.expect_err("create"),
        p.find_keys(UID, &spec).await.expect_err("find"),
        p.revoke_key("AAAAAAAAAAAAAAAAAAAA;user=bot", UID).await.expect_err("revoke"),
    ];
    for e in errors.drain(..) {
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert_eq!(e.status, Some(401));
        assert!(e.message.starts_with("Outscale error 1 AccessDenied"), "{e}");
        assert!(e.request_id.is_some());
    }
    let records = fake.requests();
    let seen: Vec<(&str, u16, bool)> = records.iter().map(|r| (r.action.as_str(), r.status, r.signature_ok)).collect();
    assert_eq!(
        seen,
        [
            ("ReadAccessKeys", 401, false),
            ("CreateAccessKey", 401, false),
            ("ReadAccessKeys", 401, false),
            ("ReadAccessKeys", 401, false),
        ]
    );
    // Revoked credentials look the same.
    fake.set_faults(Faults { reject_credentials: true, ..Faults::default() });
    let e = provider(&fake).check_credentials().await.expect_err("revoked");
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(fake.requests().len(), 5);
}

#[tokio::test]
async fn provider_rides_out_throttling_and_503s() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("bot");
    let p = provider_with(&fake, ADMIN_AK, ADMIN_SK, HttpConfig { max_retries: 8, ..http_config() });
    let spec = spec(Some("bot"), Some("24h"));
    let key = create(&p, &Marker::new_attempt(UID), &spec).await.expect("created");
    fake.set_faults(Faults { throttle_rate: 0.3, error_rate: 0.2, ..Faults::default() });
    for _ in 0..5 {
        assert_eq!(p.find_keys(UID, &spec).await.expect("listed").len(), 1);
    }
    assert_eq!(p.revoke_key(&key.key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(fake.live_keys().iter().all(|k| k.user_name.is_none()));

    // A throttled create is retried (nothing was created); a 503 on create is handed back.
    fake.set_faults(Faults { throttle_rate: 1.0, ..Faults::default() });
    let before = fake.requests().len();
    let e = create(&p, &Marker::new_attempt(UID), &spec).await.expect_err("always throttled");
    assert_eq!(e.kind, ErrorKind::Retryable);
    assert!(e.message.starts_with("throttled by Outscale"), "{e}");
    assert!(fake.requests().len() - before > 1);
}

#[tokio::test]
async fn provider_stays_under_five_requests_per_second() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    let p = provider(&fake);
    let spec = spec(None, None);
    for _ in 0..15 {
        p.find_keys(UID, &spec).await.expect("listed");
    }
    let at: Vec<Instant> = fake.requests().iter().map(|r| r.at).collect();
    // The shared limiter: 5/s sustained after a burst of 5, so at most 5 + 5 in any second,
    // and 15 calls take at least (15 - 5) / 5 s.
    for (i, start) in at.iter().enumerate() {
        let within = at[i..].iter().take_while(|t| t.duration_since(*start) < Duration::from_secs(1)).count();
        assert!(within <= 10, "{within} requests within a second");
    }
    assert!(at[14].duration_since(at[0]) >= Duration::from_millis(1900));
    for pair in at[5..].windows(6) {
        assert!(pair[5].duration_since(pair[0]) >= Duration::from_millis(950));
    }
}

#[tokio::test]
async fn an_unanswered_create_leaves_a_key_found_by_its_marker() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("bot");
    let p = provider_with(&fake, ADMIN_AK, ADMIN_SK, HttpConfig { timeout: Duration::from_secs(1), ..http_config() });
    let spec = spec(Some("bot"), Some("720h"));
    let marker = Marker::new_attempt(UID);
    fake.set_faults(Faults { hang_creates: true, ..Faults::default() });
    let e = create(&p, &marker, &spec).await.expect_err("no answer");
    assert_eq!(e.kind, ErrorKind::Retryable);
    // Not repeated: the fake may have acted.
    assert_eq!(actions(&fake), ["CreateAccessKey"]);
    fake.set_faults(Faults::default());
    let found = p.find_keys(UID, &spec).await.expect("listed");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].marker, marker);
    assert_eq!(p.revoke_key(&found[0].key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    assert!(fake.live_keys().iter().all(|k| k.user_name.is_none()));
}

#[tokio::test]
async fn a_proxy_echoing_the_signed_request_shows_no_signature() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    let p = provider(&fake);
    for echo in [fakes::Echo::Text, fakes::Echo::Json] {
        fake.set_faults(Faults { echo: Some(echo), ..Faults::default() });
        let since = fakes::echoed_credentials().len();
        let e = p.check_credentials().await.expect_err("the proxy refuses");
        assert!(e.message.contains("proxy refused the request"), "{e}");
        assert!(e.message.contains("authorization: [redacted]"), "{e}");
        fakes::assert_no_echoed_credential(&e.to_string(), since);
    }
}

#[tokio::test]
async fn a_key_whose_tag_the_api_dropped_is_deleted_at_once_and_not_issued() {
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("bot");
    fake.set_faults(Faults { drop_tags: true, ..Faults::default() });
    let p = provider(&fake);
    let e = create(&p, &Marker::new_attempt(UID), &spec(Some("bot"), Some("24h"))).await.expect_err("untaggable");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("ownership tag") && e.message.contains("deleted again"), "{e}");
    assert_eq!(actions(&fake), ["CreateAccessKey", "UpdateAccessKey", "DeleteAccessKey"]);
    assert!(fake.live_keys().iter().all(|k| k.user_name.as_deref() != Some("bot")), "no untracked key is left");
}
