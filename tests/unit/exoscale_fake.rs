//! Tests of the fake Exoscale API itself: its signature verifier against the upstream test
//! vectors, and its HTTP behaviour as seen by a client over loopback.

use crate::fakes;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cloudkeys::api::{ExoscaleIssuer, KeyProvider, SecretRef};
use cloudkeys::providers::exoscale::ExoscaleProvider;
use cloudkeys::providers::http::HttpConfig;
use cloudkeys::providers::{KeyRequest, Marker, Provider, Revocation};
use fakes::exoscale::{verify_exo2, ExoscaleFake, Faults, LEGACY_DISABLED_MESSAGE, PREEXISTING_ROLE_ID};
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::Sha256;

// Upstream EXO2-HMAC-SHA256 test credentials (egoscale's `security_test.go`, python-exoscale's auth tests).
const VKEY: &str = "EXOxxxxxxxxxxxxxxxxxxxxxxxx";
const VSECRET: &str = "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX";
const VEXPIRES: u64 = 3376684800;
/// A "now" at which the vectors are valid (10 minutes before they expire).
const VNOW: u64 = VEXPIRES - 600;

const ADMIN_KEY: &str = "EXO0123456789abcdef01234567";
const ADMIN_SECRET: &str = "admin-secret-admin-secret-admin-secret-0123";

// ---------------------------------------------------------------------------------------------
// A tiny signer for the tests (checked against the vectors below)
// ---------------------------------------------------------------------------------------------

/// The `Authorization` header for a request; `query` pairs are single-valued parameters.
fn sign(
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: &[u8],
    key: &str,
    secret: &str,
    expires: u64,
) -> String {
    let mut query = query.to_vec();
    query.sort();
    let values: String = query.iter().map(|(_, v)| *v).collect();
    let mut message = format!("{method} {path}\n").into_bytes();
    message.extend_from_slice(body);
    message.extend_from_slice(format!("\n{values}\n\n{expires}").as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(&message);
    let signature = STANDARD.encode(mac.finalize().into_bytes());
    let signed_args = if query.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = query.iter().map(|(n, _)| *n).collect();
        format!(",signed-query-args={}", names.join(";"))
    };
    format!("EXO2-HMAC-SHA256 credential={key}{signed_args},expires={expires},signature={signature}")
}

fn vheader(signature: &str) -> String {
    format!("EXO2-HMAC-SHA256 credential={VKEY},expires={VEXPIRES},signature={signature}")
}

fn verify_v(method: &str, path: &str, query: &str, body: &[u8], header: &str) -> Result<(), String> {
    verify_exo2(method, path, query, body, header, VKEY, VSECRET, VNOW)
}

// ---------------------------------------------------------------------------------------------
// Signature vectors
// ---------------------------------------------------------------------------------------------

#[test]
fn upstream_vector_get_zone() {
    let expected = "EXO2-HMAC-SHA256 credential=EXOxxxxxxxxxxxxxxxxxxxxxxxx,expires=3376684800,\
                    signature=Ntbq/p0HVmA3Zg1HHY+Lq1vjFGi7HeMrrgXDS5jRNlY=";
    assert_eq!(sign("GET", "/v2/zone", &[], b"", VKEY, VSECRET, VEXPIRES), expected);
    assert_eq!(verify_v("GET", "/v2/zone", "", b"", expected), Ok(()));
}

#[test]
fn upstream_vector_get_zone_with_query() {
    let expected = "EXO2-HMAC-SHA256 credential=EXOxxxxxxxxxxxxxxxxxxxxxxxx,signed-query-args=k1;k2,\
                    expires=3376684800,signature=iqOBz13+44L5j0uJclE8hmUhQQcvtCSoPEOXYK6liqY=";
    let header = sign("GET", "/v2/zone", &[("k2", "v2"), ("k1", "v1")], b"", VKEY, VSECRET, VEXPIRES);
    assert_eq!(header, expected);
    assert_eq!(verify_v("GET", "/v2/zone", "k1=v1&k2=v2", b"", expected), Ok(()));
    // The order of the parameters in the URL does not matter; the signed names are sorted.
    assert_eq!(verify_v("GET", "/v2/zone", "k2=v2&k1=v1", b"", expected), Ok(()));
}

#[test]
fn upstream_vector_post_load_balancer() {
    let body = br#"{"name": "foo"}"#;
    let header = vheader("duldkM0+pgWRtUznj0rMrZauzsYOtSVLn1LCGcs7CcE=");
    assert_eq!(sign("POST", "/v2/load-balancer", &[], body, VKEY, VSECRET, VEXPIRES), header);
    assert_eq!(verify_v("POST", "/v2/load-balancer", "", body, &header), Ok(()));
    // The compact body is another message (body bytes matter).
    let compact = vheader("y2xzRvQuzxGRld/2l3B9bGMUeB3rkZHxM+2r1FAJdxA=");
    assert_eq!(verify_v("POST", "/v2/load-balancer", "", br#"{"name":"foo"}"#, &compact), Ok(()));
    assert!(verify_v("POST", "/v2/load-balancer", "", br#"{"name":"foo"}"#, &header).is_err());
}

#[test]
fn derived_vectors() {
    let cases: [(&str, &str, &[u8], &str); 3] = [
        (
            "POST",
            "/v2/api-key",
            br#"{"name":"team-a-backups","role-id":"7b1e0000-0000-4000-8000-000000000001"}"#,
            "6I411j0txKAvolGx5BmyKVZH4gGrmXBPbIbr8R7z3zY=",
        ),
        ("DELETE", "/v2/api-key/EXO19c207e5f483f2d85f99b709", b"", "HgoqGGVVZaw10AtmhPWP3xOfHcOBT8GFtt+tK2sMgzk="),
        (
            "GET",
            "/v2/operation/e2047130-b86e-11ef-83b3-0d8312b2c2d7",
            b"",
            "a1kAuT+ao5hvkvTp+xCLzd4PN97dEbx0kNYcHyrAd6k=",
        ),
    ];
    for (method, path, body, signature) in cases {
        let header = vheader(signature);
        assert_eq!(sign(method, path, &[], body, VKEY, VSECRET, VEXPIRES), header, "{method} {path}");
        assert_eq!(verify_v(method, path, "", body, &header), Ok(()), "{method} {path}");
    }
}

#[test]
fn verifier_rejects_tampering() {
    let body = br#"{"name": "foo"}"#;
    let good = vheader("duldkM0+pgWRtUznj0rMrZauzsYOtSVLn1LCGcs7CcE=");
    let signature_error = |r: Result<(), String>| {
        let e = r.expect_err("must be rejected");
        assert!(e.starts_with("Invalid request signature"), "{e}");
    };

    // One byte of the body changed.
    signature_error(verify_v("POST", "/v2/load-balancer", "", br#"{"name": "fop"}"#, &good));
    // Wrong secret.
    signature_error(verify_exo2("POST", "/v2/load-balancer", "", body, &good, VKEY, "wrong-secret", VNOW));
    // Wrong path, wrong method.
    signature_error(verify_v("POST", "/v2/load-balancers", "", body, &good));
    signature_error(verify_v("PUT", "/v2/load-balancer", "", body, &good));
    // Expired: now at and after `expires`.
    signature_error(verify_exo2("POST", "/v2/load-balancer", "", body, &good, VKEY, VSECRET, VEXPIRES));
    signature_error(verify_exo2("POST", "/v2/load-balancer", "", body, &good, VKEY, VSECRET, VEXPIRES + 1));
    // More than an hour ahead.
    signature_error(verify_exo2("POST", "/v2/load-balancer", "", body, &good, VKEY, VSECRET, VEXPIRES - 3601));
    // Unsigned or partly signed query parameters; signed ones missing.
    signature_error(verify_v("POST", "/v2/load-balancer", "a=1", body, &good));
    let k1 = sign("GET", "/v2/zone", &[("k1", "v1")], b"", VKEY, VSECRET, VEXPIRES);
    signature_error(verify_v("GET", "/v2/zone", "k1=v1&k2=v2", b"", &k1));
    signature_error(verify_v("GET", "/v2/zone", "", b"", &k1));
    // Malformed headers.
    for header in [
        "",
        "EXO2-HMAC-SHA256",
        "Bearer abc",
        &good.replace("EXO2-HMAC-SHA256 ", "EXO2-HMAC-SHA256  "),
        &good.replace(",expires=", ", expires="),
        &good.replace("expires=3376684800", "expires=+3376684800"),
        &good.replace("expires=3376684800", "expires="),
        &good.replace("expires=3376684800", "expires=99999999999999999999999"),
        &good.replace("signature=", "signature=!!"),
        &format!("{good},extra=1"),
        &good.replace(",signature=", ",signed-query-args=,signature="),
        &format!(
            "EXO2-HMAC-SHA256 expires={VEXPIRES},credential={VKEY},\
             signature=duldkM0+pgWRtUznj0rMrZauzsYOtSVLn1LCGcs7CcE="
        ),
    ] {
        signature_error(verify_v("POST", "/v2/load-balancer", "", body, header));
    }
}

#[test]
fn verifier_names_an_unknown_credential() {
    let header = sign("GET", "/v2/zone", &[], b"", "EXOother", VSECRET, VEXPIRES);
    let e = verify_v("GET", "/v2/zone", "", b"", &header).expect_err("other key");
    assert!(e.starts_with("Invalid API key"), "{e}");
}

#[test]
fn verifier_decodes_query_values_and_ignores_multi_valued_ones() {
    // Values are percent-decoded before signing; a repeated parameter is not signed.
    let header = sign("GET", "/v2/zone", &[("a", "x y/z")], b"", VKEY, VSECRET, VEXPIRES);
    assert_eq!(verify_v("GET", "/v2/zone", "a=x%20y%2Fz&m=1&m=2", b"", &header), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// HTTP client helper
// ---------------------------------------------------------------------------------------------

struct Api {
    base: String,
    key: String,
    secret: String,
    http: reqwest::Client,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

impl Api {
    fn new(fake: &ExoscaleFake) -> Self {
        Self::with(fake, ADMIN_KEY, ADMIN_SECRET, reqwest::Client::new())
    }

    fn with(fake: &ExoscaleFake, key: &str, secret: &str, http: reqwest::Client) -> Self {
        let endpoint = fake.endpoint();
        let base = endpoint.strip_suffix("/v2").expect("endpoint ends in /v2").to_owned();
        Self { base, key: key.to_owned(), secret: secret.to_owned(), http }
    }

    /// `path` includes `/v2`; the request is signed unless `signed` is false.
    async fn raw(&self, method: &str, path: &str, body: Option<&Value>, signed: bool) -> Result<Reply, reqwest::Error> {
        let body = body.map(|b| serde_json::to_vec(b).expect("json"));
        let method_ = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method_, format!("{}{path}", self.base));
        if signed {
            let header =
                sign(method, path, &[], body.as_deref().unwrap_or_default(), &self.key, &self.secret, now_unix() + 600);
            request = request.header("Authorization", header);
        }
        if let Some(body) = body {
            request = request.header("Content-Type", "application/json").body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply { status, headers, body })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.raw(method, path, body.as_ref(), true).await.expect("request answered")
    }

    /// Polls an operation until it leaves `pending`; returns the final operation and poll count.
    async fn wait(&self, op: &Value) -> (Value, u32) {
        let id = op["id"].as_str().expect("operation id");
        for polls in 1..=20 {
            let reply = self.call("GET", &format!("/v2/operation/{id}"), None).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            if reply.body["state"] != "pending" {
                return (reply.body, polls);
            }
        }
        panic!("operation {id} still pending");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP behaviour
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unsigned_and_badly_signed_requests_are_refused() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let api = Api::new(&fake);

    let reply = api.raw("GET", "/v2/api-key", None, false).await.unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, json!({"message": "Invalid request signature"}));

    // Also on paths the fake does not serve, and before validating bodies.
    let reply = api.raw("GET", "/v2/nowhere", None, false).await.unwrap();
    assert_eq!(reply.status, 403);
    let reply = api.raw("POST", "/v2/api-key", Some(&json!({"bogus": true})), false).await.unwrap();
    assert_eq!(reply.status, 403);

    let other_key = Api::with(&fake, "EXOnotadmin0000000000000000", ADMIN_SECRET, reqwest::Client::new());
    let reply = other_key.call("GET", "/v2/api-key", None).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, json!({"message": "Invalid API key"}));

    let wrong_secret = Api::with(&fake, ADMIN_KEY, "not-the-secret", reqwest::Client::new());
    let reply = wrong_secret.call("GET", "/v2/api-key", None).await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, json!({"message": "Invalid request signature"}));

    // Expired signature.
    let path = "/v2/api-key";
    let header = sign("GET", path, &[], b"", ADMIN_KEY, ADMIN_SECRET, now_unix() - 1);
    let response =
        reqwest::Client::new().get(format!("{}{path}", api.base)).header("Authorization", header).send().await.unwrap();
    assert_eq!(response.status(), 403);

    // Signed query parameters are accepted, unsigned ones are not.
    let header = sign("GET", path, &[("x", "1")], b"", ADMIN_KEY, ADMIN_SECRET, now_unix() + 600);
    let url = format!("{}{path}?x=1", api.base);
    let response = reqwest::Client::new().get(&url).header("Authorization", &header).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let url = format!("{}{path}?x=1&y=2", api.base);
    let response = reqwest::Client::new().get(&url).header("Authorization", &header).send().await.unwrap();
    assert_eq!(response.status(), 403);

    let records = fake.requests();
    let seen: Vec<(u16, bool)> = records.iter().map(|r| (r.status, r.signature_ok)).collect();
    let mut expected = vec![(403, false); 8];
    expected[6] = (200, true);
    assert_eq!(seen, expected);
    assert_eq!(records[0].method, "GET");
    assert_eq!(records[0].path, "/v2/api-key");
    assert!(fake.live_api_keys().is_empty());
}

#[tokio::test]
async fn api_key_lifecycle() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let api = Api::new(&fake);

    let reply = api.call("POST", "/v2/api-key", Some(json!({"name": "team-a", "role-id": PREEXISTING_ROLE_ID}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let key = reply.body["key"].as_str().unwrap().to_owned();
    let secret = reply.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(reply.body["name"], "team-a");
    assert_eq!(reply.body["role-id"], PREEXISTING_ROLE_ID);
    assert!(key.starts_with("EXO") && key.len() == 27, "{key}");
    assert!(key[3..].chars().all(|c| c.is_ascii_hexdigit()), "{key}");
    assert_eq!(secret.len(), 43);

    let live = fake.live_api_keys();
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].name.as_str(), live[0].key.as_str()), ("team-a", key.as_str()));
    assert_eq!(live[0].role_id, PREEXISTING_ROLE_ID);
    assert_eq!(fake.issued_secrets(), vec![secret.clone()]);

    // Listing and reading never show the secret.
    let reply = api.call("GET", "/v2/api-key", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, json!({"api-keys": [{"name": "team-a", "key": key, "role-id": PREEXISTING_ROLE_ID}]}));
    let reply = api.call("GET", &format!("/v2/api-key/{key}"), None).await;
    assert_eq!(reply.body, json!({"name": "team-a", "key": key, "role-id": PREEXISTING_ROLE_ID}));
    assert!(!reply.body.to_string().contains(&secret));

    let reply = api.call("DELETE", &format!("/v2/api-key/{key}"), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["state"], "pending");
    assert_eq!(reply.body["reference"]["link"], format!("/v2/api-key/{key}"));
    let op = reply.body;
    assert!(fake.live_api_keys().is_empty());

    let reply = api.call("GET", &format!("/v2/api-key/{key}"), None).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.body, json!({"message": "API key not found"}));
    let reply = api.call("DELETE", &format!("/v2/api-key/{key}"), None).await;
    assert_eq!(reply.status, 404);

    let (done, polls) = api.wait(&op).await;
    assert_eq!((done["state"].as_str(), polls), (Some("success"), 1));
    assert_eq!(done["id"], op["id"]);

    let reply = api.call("GET", "/v2/operation/00000000-0000-4000-8000-000000000000", None).await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn api_key_create_rejects_bad_input() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let api = Api::new(&fake);
    let bad = [
        json!({"name": "x", "role-id": "7b1e0000-0000-4000-8000-00000000ffff"}),
        json!({"name": "x", "role-id": "not-a-role"}),
        json!({"role-id": PREEXISTING_ROLE_ID}),
        json!({"name": "", "role-id": PREEXISTING_ROLE_ID}),
        json!({"name": "x".repeat(256), "role-id": PREEXISTING_ROLE_ID}),
        json!({"name": 5, "role-id": PREEXISTING_ROLE_ID}),
        json!({"name": "x"}),
        json!({"name": "x", "roleId": PREEXISTING_ROLE_ID}),
        json!({"name": "x", "role-id": PREEXISTING_ROLE_ID, "extra": 1}),
        json!(["name", "x"]),
        json!("text"),
    ];
    for body in bad {
        let reply = api.call("POST", "/v2/api-key", Some(body.clone())).await;
        assert_eq!(reply.status, 400, "{body} -> {}", reply.body);
        assert!(reply.body["message"].as_str().unwrap().starts_with("invalid request: "), "{}", reply.body);
    }

    // Malformed JSON, signed correctly.
    let path = "/v2/api-key";
    for raw in [&b"{\"name\": "[..], b"", b"\xff\xfe"] {
        let header = sign("POST", path, &[], raw, ADMIN_KEY, ADMIN_SECRET, now_unix() + 600);
        let response = reqwest::Client::new()
            .post(format!("{}{path}", api.base))
            .header("Authorization", header)
            .header("Content-Type", "application/json")
            .body(raw.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().starts_with("invalid request: "), "{body}");
    }

    // A JSON body must say so.
    let raw = br#"{"name":"x","role-id":"7b1e0000-0000-4000-8000-000000000001"}"#;
    let header = sign("POST", path, &[], raw, ADMIN_KEY, ADMIN_SECRET, now_unix() + 600);
    let response = reqwest::Client::new()
        .post(format!("{}{path}", api.base))
        .header("Authorization", header)
        .body(raw.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // Unknown paths and methods answer in the API's error format.
    let reply = api.call("GET", "/v2/nowhere", None).await;
    assert_eq!((reply.status, reply.body["message"].is_string()), (404, true));
    let reply = api.call("PATCH", "/v2/api-key", None).await;
    assert_eq!((reply.status, reply.body["message"].is_string()), (405, true));

    assert!(fake.live_api_keys().is_empty());
    assert!(fake.issued_secrets().is_empty());
}

#[tokio::test]
async fn role_lifecycle_and_in_use_refusal() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let api = Api::new(&fake);
    fake.set_faults(Faults { operations_pending_polls: 2, ..Faults::default() });

    let policy = json!({
        "default-service-strategy": "deny",
        "services": {"sos": {"type": "rules", "rules": [
            {"action": "deny", "expression": "operation in ['list-buckets']"},
            {"action": "deny", "expression": "resources.bucket != 'b1'"},
            {"action": "allow", "expression": "true"}
        ]}}
    });
    let reply = api
        .call(
            "POST",
            "/v2/iam-role",
            Some(json!({
                "name": "cloudkeys-team-a",
                "description": "issued by cloudkeys",
                "labels": {"cloudkeys.io/owner": "uid-1"},
                "policy": policy,
                "editable": false
            })),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["state"], "pending");
    let (done, polls) = api.wait(&reply.body).await;
    assert_eq!((done["state"].as_str(), polls), (Some("success"), 3));
    let role_id = done["reference"]["id"].as_str().unwrap().to_owned();
    assert_eq!(done["reference"]["link"], format!("/v2/iam-role/{role_id}"));
    assert_eq!(done["reference"]["command"], "get-iam-role");

    let reply = api.call("GET", "/v2/iam-role", None).await;
    let listed = reply.body["iam-roles"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let role = listed.iter().find(|r| r["id"] == role_id.as_str()).expect("role listed");
    assert_eq!(role["name"], "cloudkeys-team-a");
    assert_eq!(role["description"], "issued by cloudkeys");
    assert_eq!(role["labels"], json!({"cloudkeys.io/owner": "uid-1"}));
    assert_eq!(role["policy"], policy);
    assert_eq!(role["editable"], false);
    assert_eq!(role["permissions"], json!([]));
    let reply = api.call("GET", &format!("/v2/iam-role/{role_id}"), None).await;
    assert_eq!(&reply.body, role);

    let roles = fake.roles();
    let fake_role = roles.iter().find(|r| r.id == role_id).unwrap();
    assert_eq!(fake_role.labels.get("cloudkeys.io/owner").map(String::as_str), Some("uid-1"));
    assert_eq!(fake_role.policy, policy);

    let reply = api.call("POST", "/v2/api-key", Some(json!({"name": "team-a", "role-id": role_id}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let key = reply.body["key"].as_str().unwrap().to_owned();

    let reply = api.call("DELETE", &format!("/v2/iam-role/{role_id}"), None).await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.body, json!({"message": "role is in use"}));
    assert!(fake.roles().iter().any(|r| r.id == role_id));

    api.call("DELETE", &format!("/v2/api-key/{key}"), None).await;
    let reply = api.call("DELETE", &format!("/v2/iam-role/{role_id}"), None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["state"], "pending");
    let (done, _) = api.wait(&reply.body).await;
    assert_eq!(done["state"], "success");
    assert!(!fake.roles().iter().any(|r| r.id == role_id));
    let reply = api.call("GET", &format!("/v2/iam-role/{role_id}"), None).await;
    assert_eq!(reply.status, 404);
    let reply = api.call("DELETE", &format!("/v2/iam-role/{role_id}"), None).await;
    assert_eq!(reply.status, 404);

    // A role created without a policy allows everything.
    let reply = api.call("POST", "/v2/iam-role", Some(json!({"name": "plain"}))).await;
    let role_id = reply.body["reference"]["id"].as_str().unwrap();
    let reply = api.call("GET", &format!("/v2/iam-role/{role_id}"), None).await;
    assert_eq!(reply.body["policy"]["default-service-strategy"], "allow");
    assert_eq!(reply.body["editable"], true);
}

#[tokio::test]
async fn role_create_validates_the_policy() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let api = Api::new(&fake);
    let with_policy = |policy: Value| json!({"name": "r", "policy": policy});
    let bad = [
        json!({}),
        json!({"name": ""}),
        json!({"name": "r".repeat(192)}),
        json!({"name": "r", "description": ""}),
        json!({"name": "r", "labels": {"a": 1}}),
        json!({"name": "r", "editable": "yes"}),
        json!({"name": "r", "permissions": ["everything"]}),
        json!({"name": "r", "unknown": 1}),
        with_policy(json!("allow")),
        with_policy(json!({"default-service-strategy": "maybe", "services": {}})),
        with_policy(json!({"services": {}})),
        with_policy(json!({"default-service-strategy": "deny"})),
        with_policy(json!({"default-service-strategy": "deny", "services": {"sos": {"type": "some"}}})),
        with_policy(json!({"default-service-strategy": "deny", "services": {"sos": {"type": "rules"}}})),
        with_policy(json!({"default-service-strategy": "deny", "services": {"sos": {"type": "rules",
            "rules": [{"action": "permit", "expression": "true"}]}}})),
        with_policy(json!({"default-service-strategy": "deny", "services": {"sos": {"type": "rules",
            "rules": [{"action": "allow"}]}}})),
        with_policy(json!({"default-service-strategy": "deny", "services": {"sos": {"type": "rules",
            "rules": [{"action": "allow", "expression": "true", "note": "x"}]}}})),
        with_policy(json!({"defaultServiceStrategy": "deny", "services": {}})),
    ];
    for body in bad {
        let reply = api.call("POST", "/v2/iam-role", Some(body.clone())).await;
        assert_eq!(reply.status, 400, "{body} -> {}", reply.body);
        assert!(reply.body["message"].as_str().unwrap().starts_with("invalid request: "));
    }
    assert_eq!(fake.roles().len(), 1);

    let good = with_policy(json!({"default-service-strategy": "deny", "services": {
        "sos": {"type": "allow"}, "compute": {"type": "deny"}}}));
    let reply = api.call("POST", "/v2/iam-role", Some(good)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let name = "r".repeat(191);
    let reply = api.call("POST", "/v2/iam-role", Some(json!({"name": name}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(fake.roles().len(), 3);
}

#[tokio::test]
async fn error_rate_answers_5xx_without_acting() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let api = Api::new(&fake);
    fake.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
    for _ in 0..10 {
        let reply = api.call("POST", "/v2/api-key", Some(json!({"name": "x", "role-id": PREEXISTING_ROLE_ID}))).await;
        assert!([500, 502, 503].contains(&reply.status), "{}", reply.status);
        assert!(reply.body["message"].is_string(), "{}", reply.body);
    }
    assert!(fake.live_api_keys().is_empty());
    assert!(fake.issued_secrets().is_empty());
    assert!(fake.requests().iter().all(|r| r.signature_ok && r.status >= 500));

    // Signatures are still checked first.
    let reply = api.raw("GET", "/v2/api-key", None, false).await.unwrap();
    assert_eq!(reply.status, 403);

    fake.set_faults(Faults::default());
    let reply = api.call("GET", "/v2/api-key", None).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn throttle_rate_answers_429_with_retry_after() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let api = Api::new(&fake);
    fake.set_faults(Faults { throttle_rate: 1.0, ..Faults::default() });
    let reply = api.call("POST", "/v2/api-key", Some(json!({"name": "x", "role-id": PREEXISTING_ROLE_ID}))).await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(reply.body, json!({"error": "rate limited", "retry_after": 1}));
    assert!(fake.live_api_keys().is_empty());

    // Half the requests, roughly.
    fake.set_faults(Faults { throttle_rate: 0.5, ..Faults::default() });
    let mut throttled = 0;
    for _ in 0..100 {
        if api.call("GET", "/v2/api-key", None).await.status == 429 {
            throttled += 1;
        }
    }
    assert!((20..=80).contains(&throttled), "{throttled}");
}

#[tokio::test]
async fn latency_delays_answers() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let api = Api::new(&fake);
    fake.set_faults(Faults { latency: Duration::from_millis(300), ..Faults::default() });
    let started = Instant::now();
    let reply = api.call("GET", "/v2/iam-role", None).await;
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn hang_creates_creates_the_key_but_never_answers() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    fake.set_faults(Faults { hang_creates: true, ..Faults::default() });
    let impatient = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
    let api = Api::with(&fake, ADMIN_KEY, ADMIN_SECRET, impatient);

    let body = json!({"name": "lost", "role-id": PREEXISTING_ROLE_ID});
    let started = Instant::now();
    let error = api.raw("POST", "/v2/api-key", Some(&body), true).await.err().expect("no answer");
    assert!(error.is_timeout(), "{error}");
    assert!(started.elapsed() >= Duration::from_secs(1));

    let live = fake.live_api_keys();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].name, "lost");
    assert_eq!(fake.issued_secrets().len(), 1);
    let record = fake.requests().into_iter().find(|r| r.method == "POST").unwrap();
    assert_eq!((record.status, record.signature_ok), (0, true));

    // Other requests are still answered, and the key is found by listing.
    let reply = api.call("GET", "/v2/api-key", None).await;
    assert_eq!(reply.body["api-keys"][0]["name"], "lost");

    // Legacy creates hang too.
    let body = json!({"name": "lost-legacy"});
    let error = api.raw("POST", "/v2/access-key", Some(&body), true).await.err().expect("no answer");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(fake.live_access_keys().len(), 1);
}

#[tokio::test]
async fn legacy_access_keys() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let api = Api::new(&fake);
    let resources = json!([{"domain": "sos", "resource-type": "bucket", "resource-name": "b1"}]);
    let reply = api
        .call(
            "POST",
            "/v2/access-key",
            Some(json!({
                "name": "legacy-a",
                "tags": ["sos"],
                "operations": ["get-sos-object", "list-sos-bucket"],
                "resources": resources
            })),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let key = reply.body["key"].as_str().unwrap().to_owned();
    let secret = reply.body["secret"].as_str().unwrap().to_owned();
    assert_eq!(reply.body["type"], "restricted");
    assert_eq!(reply.body["version"], "v2");
    assert_eq!(reply.body["resources"], resources);
    assert_eq!(fake.issued_secrets(), vec![secret.clone()]);
    let live = fake.live_access_keys();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].operations, ["get-sos-object", "list-sos-bucket"]);
    assert_eq!(live[0].tags, ["sos"]);
    assert_eq!(live[0].resources, resources);

    let reply = api.call("GET", "/v2/access-key", None).await;
    assert_eq!(reply.body["access-keys"][0]["key"], key.as_str());
    assert!(!reply.body.to_string().contains(&secret));
    let reply = api.call("GET", &format!("/v2/access-key/{key}"), None).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.get("secret").is_none());

    for resources in [
        json!([{"domain": "compute", "resource-type": "bucket", "resource-name": "b"}]),
        json!([{"domain": "sos", "resource-type": "instance", "resource-name": "b"}]),
        json!([{"domain": "sos", "resource-type": "bucket"}]),
        json!([{"domain": "sos", "resource-type": "bucket", "resource-name": "b", "x": 1}]),
        json!("sos/bucket:b"),
    ] {
        let body = json!({"name": "bad", "resources": resources});
        let reply = api.call("POST", "/v2/access-key", Some(body)).await;
        assert_eq!(reply.status, 400, "{resources} -> {}", reply.body);
    }
    let reply = api.call("POST", "/v2/access-key", Some(json!({"name": "bad", "tags": "sos"}))).await;
    assert_eq!(reply.status, 400);

    let reply = api.call("DELETE", &format!("/v2/access-key/{key}"), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["state"], "pending");
    assert_eq!(api.wait(&reply.body).await.0["state"], "success");
    assert!(fake.live_access_keys().is_empty());
    let reply = api.call("DELETE", &format!("/v2/access-key/{key}"), None).await;
    assert_eq!(reply.status, 404);

    fake.set_legacy_enabled(false);
    for (method, path, body) in [
        ("POST", "/v2/access-key".to_owned(), Some(json!({"name": "x"}))),
        ("GET", "/v2/access-key".to_owned(), None),
        ("DELETE", format!("/v2/access-key/{key}"), None),
    ] {
        let reply = api.call(method, &path, body).await;
        assert_eq!(reply.status, 400, "{method} {path}");
        assert_eq!(reply.body, json!({"message": LEGACY_DISABLED_MESSAGE}));
    }
    assert_eq!(LEGACY_DISABLED_MESSAGE, "invalid request: Cannot generate IAMv2 `Access Key` using a IAMv3 `Api Key`");
    assert!(fake.live_access_keys().is_empty());
}

#[tokio::test]
async fn preseeded_keys_are_listed() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let api = Api::new(&fake);
    let seeded = fake.add_api_key("not-ours", PREEXISTING_ROLE_ID);
    assert!(seeded.key.starts_with("EXO") && seeded.key.len() == 27);
    let reply = api.call("GET", &format!("/v2/api-key/{}", seeded.key), None).await;
    assert_eq!(reply.body, json!({"name": "not-ours", "key": seeded.key, "role-id": PREEXISTING_ROLE_ID}));
    assert_eq!(fake.live_api_keys(), vec![seeded]);
    let roles = fake.roles();
    assert_eq!(roles.len(), 1);
    assert_eq!((roles[0].id.as_str(), roles[0].name.as_str()), (PREEXISTING_ROLE_ID, "preexisting"));
    // The preexisting role cannot go while the seeded key uses it.
    let reply = api.call("DELETE", &format!("/v2/iam-role/{PREEXISTING_ROLE_ID}"), None).await;
    assert_eq!(reply.status, 409);
}

#[test]
fn the_fake_outlives_test_runtimes_and_stops_when_dropped() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    for round in 0..3 {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let status = runtime.block_on(async {
            let api = Api::new(&fake);
            let body = json!({"name": format!("k{round}"), "role-id": PREEXISTING_ROLE_ID});
            api.call("POST", "/v2/api-key", Some(body)).await.status
        });
        assert_eq!(status, 200);
        drop(runtime);
    }
    assert_eq!(fake.live_api_keys().len(), 3);

    let address = fake.endpoint().trim_start_matches("http://").trim_end_matches("/v2").to_owned();
    drop(fake);
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&address).is_ok() {
        assert!(Instant::now() < deadline, "the fake still accepts connections after drop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The provider against the fake
// ---------------------------------------------------------------------------------------------

const UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";
const OTHER_UID: &str = "11111111-2222-4333-8444-555555555555";

fn provider(fake: &ExoscaleFake) -> ExoscaleProvider {
    let issuer = ExoscaleIssuer {
        zone: "ch-gva-2".to_owned(),
        endpoint: Some(fake.endpoint()),
        credentials_secret_ref: SecretRef { name: "exoscale-admin".to_owned() },
    };
    let http = HttpConfig {
        provider: "exoscale",
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
        ..HttpConfig::default()
    };
    ExoscaleProvider::new(&issuer, ADMIN_KEY.to_owned(), SecretString::from(ADMIN_SECRET), http)
        .unwrap_or_else(|e| panic!("provider builds: {e}"))
}

fn own_role_spec() -> KeyProvider {
    let key = json!({"role": {"policy": {"defaultServiceStrategy": "deny", "services": {"sos": {"type": "allow"}}}}});
    KeyProvider::Exoscale(serde_json::from_value(key).unwrap_or_else(|e| panic!("spec: {e}")))
}

fn deletes(fake: &ExoscaleFake) -> usize {
    fake.requests().iter().filter(|r| r.method == "DELETE").count()
}

#[tokio::test]
async fn provider_revokes_only_what_carries_the_owners_marker() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let p = provider(&fake);
    let spec = own_role_spec();
    let marker = Marker::new_attempt(UID);
    let request =
        KeyRequest { marker: &marker, display_name: "team-a-backups".into(), spec: &spec, now: Timestamp::now() };
    let issued = p.create_key(&request).await.expect("created");
    let role = fake.live_api_keys().into_iter().find(|k| k.key == issued.access_key_id).expect("live").role_id;
    assert_eq!(issued.key_ref, format!("api-key:{};role:{role}", issued.access_key_id));

    // Keys and roles that are not this AccessKey's, named the ways an edited status could.
    let admin = fake.add_api_key("admin", PREEXISTING_ROLE_ID);
    let others = fake.add_api_key(&format!("team-b.{}", Marker::new_attempt(OTHER_UID)), PREEXISTING_ROLE_ID);
    let lookalike = fake.add_api_key(&format!("{marker}.admin"), PREEXISTING_ROLE_ID);
    let foreign = [
        format!("api-key:{}", admin.key),
        format!("api-key:{}", others.key),
        format!("api-key:{}", lookalike.key),
        // This AccessKey's key paired with a role it did not create: neither goes.
        format!("api-key:{};role:{PREEXISTING_ROLE_ID}", issued.access_key_id),
        format!("role:{PREEXISTING_ROLE_ID}"),
        "api-key:../../iam-role".to_owned(),
        "not a reference".to_owned(),
    ];
    for key_ref in &foreign {
        let before = deletes(&fake);
        let refused = p.revoke_key(key_ref, UID).await.expect("answered");
        assert!(matches!(refused, Revocation::NotOwned(_)), "{key_ref}: {refused:?}");
        assert_eq!(deletes(&fake), before, "{key_ref}: nothing deleted");
    }
    assert_eq!(fake.live_api_keys().len(), 4);
    assert!(fake.roles().iter().any(|r| r.id == PREEXISTING_ROLE_ID));
    assert!(p.find_keys(UID, &spec).await.expect("listed").iter().all(|k| k.key_ref == issued.key_ref));

    assert_eq!(p.revoke_key(&issued.key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    assert!(fake.live_api_keys().iter().all(|k| k.key != issued.access_key_id));
    assert!(fake.roles().iter().all(|r| r.id != role), "its own role goes with it");
    assert_eq!(p.revoke_key(&issued.key_ref, UID).await.expect("gone"), Revocation::AlreadyGone);
    assert!(fake.requests().iter().all(|r| r.signature_ok));
}

#[tokio::test]
async fn a_proxy_echoing_the_signed_request_shows_no_signature() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let p = provider(&fake);
    let spec = own_role_spec();
    let marker = Marker::new_attempt(UID);
    for echo in [fakes::Echo::Text, fakes::Echo::Json] {
        fake.set_faults(Faults { echo: Some(echo), ..Faults::default() });
        let request = KeyRequest { marker: &marker, display_name: "team-a".into(), spec: &spec, now: Timestamp::now() };
        let since = fakes::echoed_credentials().len();
        let e = p.create_key(&request).await.expect_err("the proxy refuses");
        assert_eq!(e.status, Some(400));
        assert!(e.message.contains("proxy refused the request"), "{e}");
        assert!(e.message.contains("[redacted]"), "{e}");
        fakes::assert_no_echoed_credential(&e.to_string(), since);
    }
}

#[tokio::test]
async fn provider_revokes_only_legacy_access_keys_named_with_the_owners_marker() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let p = provider(&fake);
    let spec = KeyProvider::Exoscale(
        serde_json::from_value(json!({"operations": ["get-sos-object"]})).unwrap_or_else(|e| panic!("spec: {e}")),
    );
    let marker = Marker::new_attempt(UID).within("0a1b2c3d");
    let request = KeyRequest { marker: &marker, display_name: "team-a".into(), spec: &spec, now: Timestamp::now() };
    let issued = p.create_key(&request).await.expect("created");
    assert_eq!(issued.key_ref, format!("access-key:{}", issued.access_key_id));
    let listed = p.list_marked(&spec).await.expect("listed");
    assert_eq!(
        listed.iter().map(|k| (k.access_key_id.as_str(), k.marker.as_ref())).collect::<Vec<_>>(),
        [(issued.access_key_id.as_str(), Some(&marker))]
    );
    let legacy = Api::new(&fake);
    let reply = legacy
        .call(
            "POST",
            "/v2/access-key",
            Some(json!({"name": format!("{marker}.by-hand"), "operations": ["get-sos-object"]})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let foreign = reply.body["key"].as_str().unwrap_or_default().to_owned();
    let refused = p.revoke_key(&format!("access-key:{foreign}"), UID).await.expect("answered");
    assert!(matches!(refused, Revocation::NotOwned(_)), "{refused:?}");
    assert_eq!(p.revoke_key(&issued.key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    let live: Vec<String> = fake.live_access_keys().into_iter().map(|k| k.key).collect();
    assert_eq!(live, [foreign]);
}
