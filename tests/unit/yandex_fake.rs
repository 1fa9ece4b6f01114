//! Tests of the fake Yandex Cloud IAM: its JWT verifier against a small signer written here,
//! its HTTP behaviour as seen by a client over loopback, and the operator's real
//! `YandexProvider` driven against it.

use crate::fakes;
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cloudkeys::api::{KeyProvider, MetadataService, SecretKeyRef, YandexIssuer, YandexKey};
use cloudkeys::providers::http::HttpConfig;
use cloudkeys::providers::yandex::YandexProvider;
use cloudkeys::providers::{ErrorKind, KeyRequest, Marker, Provider, Revocation};
use fakes::yandex::{
    verify_jwt, Faults, KnownKey, YandexFake, ACCESS_KEYS_PATH, ADMIN_KEY_ID, ADMIN_PRIVATE_KEY_PEM,
    ADMIN_PUBLIC_KEY_PEM, ADMIN_SERVICE_ACCOUNT_ID, METADATA_TOKEN_PATH, SECOND_SERVICE_ACCOUNT_ID, TOKEN_AUDIENCE,
    TOKEN_PATH, WRONG_PRIVATE_KEY_PEM,
};
use rsa::pkcs8::DecodePrivateKey;
use rsa::sha2::Sha256;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

const UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";
const OTHER_UID: &str = "11111111-2222-4333-8444-555555555555";

// ---------------------------------------------------------------------------------------------
// A tiny PS256 signer for the tests (the `rsa` crate; the operator signs with `ring`)
// ---------------------------------------------------------------------------------------------

static ADMIN_PRIVATE: LazyLock<rsa::PrivateKey> =
    LazyLock::new(|| rsa::PrivateKey::from_pkcs8_pem(ADMIN_PRIVATE_KEY_PEM).expect("admin test key parses"));
static WRONG_PRIVATE: LazyLock<rsa::PrivateKey> =
    LazyLock::new(|| rsa::PrivateKey::from_pkcs8_pem(WRONG_PRIVATE_KEY_PEM).expect("wrong test key parses"));

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn sign_jwt(key: &rsa::PrivateKey, header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = key.pss_sign::<Sha256>(input.as_bytes()).expect("PSS signing works");
    format!("{input}.{}", b64(signature))
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

fn header() -> Value {
    json!({"typ": "JWT", "alg": "PS256", "kid": ADMIN_KEY_ID})
}

fn claims(iat: i64) -> Value {
    json!({"iss": ADMIN_SERVICE_ACCOUNT_ID, "aud": TOKEN_AUDIENCE, "iat": iat, "exp": iat + 3600})
}

fn admin_jwt() -> String {
    sign_jwt(&ADMIN_PRIVATE, &header(), &claims(now_unix()))
}

fn known() -> Vec<KnownKey> {
    vec![KnownKey::from_pem(ADMIN_KEY_ID, ADMIN_SERVICE_ACCOUNT_ID, ADMIN_PUBLIC_KEY_PEM)]
}

const NOW: i64 = 1_800_000_000;

fn verify(jwt: &str) -> Result<String, String> {
    verify_jwt(jwt, &known(), NOW)
}

fn refused(jwt: &str, reason: &str) {
    let e = verify(jwt).expect_err("must be refused");
    assert!(e.contains(reason), "{e:?} should mention {reason:?}");
}

// ---------------------------------------------------------------------------------------------
// The verifier
// ---------------------------------------------------------------------------------------------

#[test]
fn verifier_accepts_a_valid_ps256_jwt_and_names_its_service_account() {
    let jwt = sign_jwt(&ADMIN_PRIVATE, &header(), &claims(NOW));
    assert_eq!(verify(&jwt), Ok(ADMIN_SERVICE_ACCOUNT_ID.to_owned()));
    // `aud` as an array that holds the audience, and a full hour, are fine too.
    let mut c = claims(NOW - 100);
    c["aud"] = json!(["other", TOKEN_AUDIENCE]);
    assert!(verify(&sign_jwt(&ADMIN_PRIVATE, &header(), &c)).is_ok());
}

#[test]
fn verifier_rejects_a_tampered_payload() {
    let jwt = sign_jwt(&ADMIN_PRIVATE, &header(), &claims(NOW));
    let mut parts: Vec<String> = jwt.split('.').map(String::from).collect();
    let mut c = claims(NOW);
    c["exp"] = json!(NOW + 3000);
    parts[1] = b64(c.to_string());
    refused(&parts.join("."), "signature does not verify");
    // A flipped signature byte.
    let mut signature = URL_SAFE_NO_PAD.decode(jwt.split('.').nth(2).expect("3 parts")).expect("b64");
    signature[10] ^= 1;
    parts = jwt.split('.').map(String::from).collect();
    parts[2] = b64(signature);
    refused(&parts.join("."), "signature does not verify");
}

#[test]
fn verifier_rejects_a_jwt_signed_with_another_key() {
    let jwt = sign_jwt(&WRONG_PRIVATE, &header(), &claims(NOW));
    refused(&jwt, "signature does not verify");
    let mut h = header();
    h["kid"] = json!("ajek1unknown");
    refused(&sign_jwt(&WRONG_PRIVATE, &h, &claims(NOW)), "unknown key id");
}

#[test]
fn verifier_rejects_more_than_an_hour_between_iat_and_exp() {
    let mut c = claims(NOW);
    c["exp"] = json!(NOW + 3601);
    refused(&sign_jwt(&ADMIN_PRIVATE, &header(), &c), "more than 3600");
    c["exp"] = json!(NOW);
    refused(&sign_jwt(&ADMIN_PRIVATE, &header(), &c), "exp must be after iat");
}

#[test]
fn verifier_rejects_a_wrong_audience_or_issuer() {
    let mut c = claims(NOW);
    c["aud"] = json!("https://iam.example.com/iam/v1/tokens");
    refused(&sign_jwt(&ADMIN_PRIVATE, &header(), &c), "aud");
    let mut c = claims(NOW);
    c.as_object_mut().expect("object").remove("aud");
    refused(&sign_jwt(&ADMIN_PRIVATE, &header(), &c), "aud");
    let mut c = claims(NOW);
    c["iss"] = json!(SECOND_SERVICE_ACCOUNT_ID);
    refused(&sign_jwt(&ADMIN_PRIVATE, &header(), &c), "iss");
}

#[test]
fn verifier_rejects_expired_and_future_jwts() {
    refused(&sign_jwt(&ADMIN_PRIVATE, &header(), &claims(NOW - 3600)), "expired");
    refused(&sign_jwt(&ADMIN_PRIVATE, &header(), &claims(NOW + 600)), "future");
    let mut c = claims(NOW);
    c["iat"] = json!("now");
    refused(&sign_jwt(&ADMIN_PRIVATE, &header(), &c), "iat");
}

#[test]
fn verifier_rejects_other_algorithms_and_malformed_tokens() {
    for (field, value, reason) in [
        ("alg", json!("RS256"), "alg"),
        ("alg", json!("none"), "alg"),
        ("typ", json!("JWS"), "typ"),
        ("kid", json!(7), "kid"),
    ] {
        let mut h = header();
        h[field] = value;
        refused(&sign_jwt(&ADMIN_PRIVATE, &h, &claims(NOW)), reason);
    }
    let good = sign_jwt(&ADMIN_PRIVATE, &header(), &claims(NOW));
    refused("", "three segments");
    refused(&format!("{good}.x"), "three segments");
    refused(&format!("{good}="), "signature is not base64url");
    refused(&good.replacen('.', "=.", 1), "header is not base64url");
    let signature = good.rsplit('.').next().expect("signature");
    refused(&format!("{}.{}.{signature}", b64("[]"), b64("{}")), "header is not a JSON object");
}

// ---------------------------------------------------------------------------------------------
// HTTP client helper
// ---------------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn new(fake: &YandexFake) -> Self {
        Self { base: fake.endpoint(), token: None, http: reqwest::Client::new() }
    }

    async fn authenticated(fake: &YandexFake) -> Self {
        let mut api = Self::new(fake);
        let reply = api.call("POST", TOKEN_PATH, Some(json!({"jwt": admin_jwt()}))).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        api.token = Some(reply.body["iamToken"].as_str().expect("token").to_owned());
        api
    }

    async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> Result<Reply, reqwest::Error> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply { status, headers, body })
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.raw(method, path, body).await.expect("request answered")
    }

    async fn create(&self, service_account_id: &str, description: &str) -> Reply {
        self.call(
            "POST",
            ACCESS_KEYS_PATH,
            Some(json!({"serviceAccountId": service_account_id, "description": description})),
        )
        .await
    }
}

fn assert_grpc_error(reply: &Reply, status: u16, code: i64) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.body["code"], json!(code), "{}", reply.body);
    assert!(reply.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(reply.body["details"], json!([]));
    assert!(reply.headers.contains_key("x-request-id"));
}

// ---------------------------------------------------------------------------------------------
// HTTP behaviour
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_jwt_is_exchanged_for_an_iam_token_with_an_expiry() {
    let fake = YandexFake::start();
    let api = Api::new(&fake);
    let reply = api.call("POST", TOKEN_PATH, Some(json!({"jwt": admin_jwt()}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body["iamToken"].as_str().is_some_and(|t| t.starts_with("t1.")));
    let expires: jiff::Timestamp = reply.body["expiresAt"].as_str().expect("expiresAt").parse().expect("RFC 3339");
    let left = expires.as_second() - now_unix();
    assert!((12 * 3600 - 5..=12 * 3600).contains(&left), "{left}");
    assert!(reply.headers.contains_key("x-request-id"));
    assert_eq!(fake.tokens_issued(), 1);
    let records = fake.requests();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].path, TOKEN_PATH);
    assert_eq!(records[0].status, 200);
    assert!(records[0].auth_ok);
}

#[tokio::test]
async fn a_bad_jwt_or_body_is_refused() {
    let fake = YandexFake::start();
    let api = Api::new(&fake);
    let wrong = sign_jwt(&WRONG_PRIVATE, &header(), &claims(now_unix()));
    let reply = api.call("POST", TOKEN_PATH, Some(json!({"jwt": wrong}))).await;
    assert_grpc_error(&reply, 401, 16);
    let reply = api.call("POST", TOKEN_PATH, Some(json!({"token": "x"}))).await;
    assert_grpc_error(&reply, 400, 3);
    let reply = api.call("POST", TOKEN_PATH, Some(json!({"jwt": 1}))).await;
    assert_grpc_error(&reply, 400, 3);
    assert_eq!(fake.tokens_issued(), 0);
    assert!(fake.requests().iter().all(|r| !r.auth_ok));
}

#[tokio::test]
async fn api_calls_need_a_live_bearer_token() {
    let fake = YandexFake::start();
    let mut api = Api::new(&fake);
    let list = format!("{ACCESS_KEYS_PATH}?serviceAccountId={ADMIN_SERVICE_ACCOUNT_ID}");
    let reply = api.call("GET", &list, None).await;
    assert_grpc_error(&reply, 401, 16);
    // Before routing and body checks, and on the operation service too.
    assert_grpc_error(&api.call("GET", "/nowhere", None).await, 401, 16);
    assert_grpc_error(&api.call("GET", "/operations/x", None).await, 401, 16);
    assert_grpc_error(&api.call("POST", ACCESS_KEYS_PATH, Some(json!({"bogus": 1}))).await, 401, 16);
    api.token = Some("t1.not-a-token".into());
    assert_grpc_error(&api.call("GET", &list, None).await, 401, 16);
    assert!(fake.live_keys().is_empty());

    let api = Api::authenticated(&fake).await;
    let reply = api.call("GET", &list, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, json!({}));
    let records = fake.requests();
    let last = records.last().expect("recorded");
    assert!(last.auth_ok);
    assert_eq!(last.path, ACCESS_KEYS_PATH);
    assert!(records[..5].iter().all(|r| !r.auth_ok && r.status == 401));
}

#[tokio::test]
async fn an_expired_or_revoked_token_gets_401() {
    let fake = YandexFake::start();
    fake.set_faults(Faults { token_ttl: Duration::from_secs(1), ..Faults::default() });
    let api = Api::authenticated(&fake).await;
    let list = format!("{ACCESS_KEYS_PATH}?serviceAccountId={ADMIN_SERVICE_ACCOUNT_ID}");
    assert_eq!(api.call("GET", &list, None).await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_grpc_error(&api.call("GET", &list, None).await, 401, 16);

    fake.set_faults(Faults::default());
    let api = Api::authenticated(&fake).await;
    assert_eq!(api.call("GET", &list, None).await.status, 200);
    fake.expire_tokens();
    assert_grpc_error(&api.call("GET", &list, None).await, 401, 16);
}

#[tokio::test]
async fn the_metadata_service_hands_out_tokens_to_callers_that_say_metadata_flavor_google() {
    let fake = YandexFake::start();
    let url = format!("{}{METADATA_TOKEN_PATH}", fake.metadata_endpoint());
    let http = reqwest::Client::new();
    let response = http.get(&url).send().await.expect("answered");
    assert_eq!(response.status(), 403);
    let response = http.get(&url).header("Metadata-Flavor", "Google").send().await.expect("answered");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], json!(12 * 3600));
    assert_eq!(fake.tokens_issued(), 1);

    let mut api = Api::new(&fake);
    api.token = Some(body["access_token"].as_str().expect("token").to_owned());
    // Without serviceAccountId a list is of the token's own service account.
    let created = api.create(ADMIN_SERVICE_ACCOUNT_ID, "").await;
    assert_eq!(created.status, 200, "{}", created.body);
    let reply = api.call("GET", ACCESS_KEYS_PATH, None).await;
    assert_eq!(reply.body["accessKeys"][0]["id"], created.body["accessKey"]["id"]);
}

#[tokio::test]
async fn keys_are_created_listed_page_by_page_and_deleted_through_pending_operations() {
    let fake = YandexFake::start();
    let api = Api::authenticated(&fake).await;

    let reply = api.create(SECOND_SERVICE_ACCOUNT_ID, "backups of team a").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let key = &reply.body["accessKey"];
    let id = key["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("aje") && id.len() == 20, "{id}");
    assert!(key["keyId"].as_str().is_some_and(|k| k.starts_with("YC") && k.len() == 25));
    assert_eq!(key["serviceAccountId"], SECOND_SERVICE_ACCOUNT_ID);
    assert_eq!(key["description"], "backups of team a");
    assert!(key["createdAt"].as_str().is_some());
    let secret = reply.body["secret"].as_str().expect("secret");
    assert!(secret.starts_with("YC") && secret.len() == 40);
    assert_eq!(fake.issued_secrets(), vec![secret.to_owned()]);
    let live = fake.live_keys();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id, id);
    assert_eq!(live[0].key_id, key["keyId"].as_str().expect("keyId"));

    let got = api.call("GET", &format!("{ACCESS_KEYS_PATH}/{id}"), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(&got.body, key);

    // Four more for the same account, one for another: pages of two, in creation order.
    for i in 0..4 {
        fake.add_key(SECOND_SERVICE_ACCOUNT_ID, &format!("k{i}"));
    }
    fake.add_key(ADMIN_SERVICE_ACCOUNT_ID, "admin's");
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let reply = api
            .call(
                "GET",
                &format!(
                    "{ACCESS_KEYS_PATH}?serviceAccountId={SECOND_SERVICE_ACCOUNT_ID}&pageSize=2&pageToken={token}"
                ),
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        pages += 1;
        for k in reply.body["accessKeys"].as_array().expect("keys") {
            seen.push(k["description"].as_str().expect("description").to_owned());
        }
        match reply.body["nextPageToken"].as_str() {
            Some(next) => token = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ["backups of team a", "k0", "k1", "k2", "k3"]);
    let bad_token = format!("{ACCESS_KEYS_PATH}?serviceAccountId={SECOND_SERVICE_ACCOUNT_ID}&pageToken=zzz");
    assert_grpc_error(&api.call("GET", &bad_token, None).await, 400, 3);
    let too_big = format!("{ACCESS_KEYS_PATH}?serviceAccountId={SECOND_SERVICE_ACCOUNT_ID}&pageSize=1001");
    assert_grpc_error(&api.call("GET", &too_big, None).await, 400, 3);
    fake.set_faults(Faults { max_page_size: 4, ..Faults::default() });
    let capped = format!("{ACCESS_KEYS_PATH}?serviceAccountId={SECOND_SERVICE_ACCOUNT_ID}&pageSize=1000");
    let reply = api.call("GET", &capped, None).await;
    assert_eq!(reply.body["accessKeys"].as_array().map(Vec::len), Some(4));
    assert_eq!(reply.body["nextPageToken"], "p4");

    // Delete: the key goes at once; the operation is done after two more polls.
    fake.set_faults(Faults { operations_pending_polls: 2, ..Faults::default() });
    let path = format!("{ACCESS_KEYS_PATH}/{id}");
    let op = api.call("DELETE", &path, None).await;
    assert_eq!(op.status, 200, "{}", op.body);
    assert_eq!(op.body["done"], false);
    assert_eq!(op.body["metadata"]["accessKeyId"], id.as_str());
    assert!(fake.live_keys().iter().all(|k| k.id != id));
    let op_path = format!("/operations/{}", op.body["id"].as_str().expect("op id"));
    let mut done = Vec::new();
    for _ in 0..3 {
        let reply = api.call("GET", &op_path, None).await;
        assert_eq!(reply.status, 200);
        done.push(reply.body["done"].as_bool().expect("done"));
        if reply.body["done"] == true {
            assert_eq!(reply.body["response"]["@type"], "type.googleapis.com/google.protobuf.Empty");
            assert!(reply.body.get("error").is_none());
        }
    }
    assert_eq!(done, [false, false, true]);
    assert_grpc_error(&api.call("DELETE", &path, None).await, 404, 5);
    assert_grpc_error(&api.call("GET", &path, None).await, 404, 5);
    assert_grpc_error(&api.call("GET", "/operations/nope", None).await, 404, 5);

    // Without pending polls the DELETE answer is done.
    fake.set_faults(Faults::default());
    let other = fake.add_key(SECOND_SERVICE_ACCOUNT_ID, "");
    let op = api.call("DELETE", &format!("{ACCESS_KEYS_PATH}/{}", other.id), None).await;
    assert_eq!(op.body["done"], true);
}

#[tokio::test]
async fn creates_are_validated() {
    let fake = YandexFake::start();
    let api = Api::authenticated(&fake).await;
    assert_grpc_error(&api.create("aje-unknown", "d").await, 404, 5);
    assert_grpc_error(&api.create(SECOND_SERVICE_ACCOUNT_ID, &"x".repeat(257)).await, 400, 3);
    assert_grpc_error(&api.call("POST", ACCESS_KEYS_PATH, Some(json!({"name": "x"}))).await, 400, 3);
    assert!(fake.live_keys().is_empty());
    // 256 characters (not bytes) fit; a new service account can be added.
    assert_eq!(api.create(SECOND_SERVICE_ACCOUNT_ID, &"é".repeat(256)).await.status, 200);
    fake.add_service_account("aje-new");
    assert_eq!(api.create("aje-new", "").await.status, 200);
}

#[tokio::test]
async fn error_rate_answers_5xx_without_acting() {
    let fake = YandexFake::start();
    let api = Api::authenticated(&fake).await;
    fake.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
    for _ in 0..6 {
        let reply = api.create(SECOND_SERVICE_ACCOUNT_ID, "d").await;
        match reply.status {
            500 => assert_grpc_error(&reply, 500, 13),
            503 => assert_grpc_error(&reply, 503, 14),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(fake.live_keys().is_empty());
    // Token exchanges fail the same way.
    let reply = Api::new(&fake).call("POST", TOKEN_PATH, Some(json!({"jwt": admin_jwt()}))).await;
    assert!(reply.status >= 500);
}

#[tokio::test]
async fn throttle_rate_answers_429_with_retry_after() {
    let fake = YandexFake::start();
    let api = Api::authenticated(&fake).await;
    fake.set_faults(Faults { throttle_rate: 1.0, ..Faults::default() });
    let reply = api.create(SECOND_SERVICE_ACCOUNT_ID, "d").await;
    assert_grpc_error(&reply, 429, 8);
    assert_eq!(reply.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert!(fake.live_keys().is_empty());
}

#[tokio::test]
async fn latency_delays_answers() {
    let fake = YandexFake::start();
    fake.set_faults(Faults { latency: Duration::from_millis(300), ..Faults::default() });
    let started = Instant::now();
    let _ = Api::authenticated(&fake).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn hang_creates_creates_the_key_but_never_answers() {
    let fake = YandexFake::start();
    let mut api = Api::authenticated(&fake).await;
    api.http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build().expect("client");
    fake.set_faults(Faults { hang_creates: true, ..Faults::default() });
    let result = api
        .raw(
            "POST",
            ACCESS_KEYS_PATH,
            Some(json!({"serviceAccountId": SECOND_SERVICE_ACCOUNT_ID, "description": "lost"})),
        )
        .await;
    assert!(result.is_err_and(|e| e.is_timeout()));
    let live = fake.live_keys();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].description, "lost");
    assert_eq!(fake.issued_secrets().len(), 1);
    let record = fake.requests().pop().expect("recorded");
    assert_eq!((record.method.as_str(), record.status), ("POST", 0));
}

#[test]
fn the_fake_outlives_test_runtimes_and_stops_when_dropped() {
    let fake = YandexFake::start();
    let endpoint = fake.endpoint();
    for _ in 0..2 {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let _ = Api::authenticated(&fake).await;
        });
    }
    assert_eq!(fake.tokens_issued(), 2);
    drop(fake);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let result = runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        reqwest::Client::new().post(format!("{endpoint}{TOKEN_PATH}")).send().await
    });
    assert!(result.is_err());
}

// ---------------------------------------------------------------------------------------------
// The operator's provider against the fake
// ---------------------------------------------------------------------------------------------

fn http_config() -> HttpConfig {
    HttpConfig {
        provider: "yandex",
        requests_per_second: 1000,
        burst: 1000,
        max_retries: 10,
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
    }
}

fn issuer(fake: &YandexFake, default_sa: Option<&str>) -> YandexIssuer {
    YandexIssuer {
        service_account_key_secret_ref: Some(SecretKeyRef { name: "yc-admin".into(), key: "key.json".into() }),
        metadata_service: None,
        service_account_id: default_sa.map(String::from),
        endpoint: Some(fake.endpoint()),
        operation_endpoint: Some(fake.operation_endpoint()),
    }
}

fn provider(fake: &YandexFake, default_sa: Option<&str>) -> YandexProvider {
    YandexProvider::new(&issuer(fake, default_sa), Some(SecretString::from(fake.authorized_key_json())), http_config())
        .unwrap_or_else(|e| panic!("provider builds: {e}"))
}

fn spec(sa: Option<&str>, description: Option<&str>) -> KeyProvider {
    KeyProvider::Yandex(YandexKey {
        service_account_id: sa.map(String::from),
        description: description.map(String::from),
    })
}

fn request<'a>(marker: &'a Marker, spec: &'a KeyProvider) -> KeyRequest<'a> {
    KeyRequest { marker, display_name: "team-a-backups".into(), spec, now: jiff::Timestamp::now() }
}

fn count(fake: &YandexFake, method: &str, path_prefix: &str) -> usize {
    fake.requests().iter().filter(|r| r.method == method && r.path.starts_with(path_prefix)).count()
}

#[tokio::test]
async fn provider_issues_finds_and_revokes_a_key() {
    let fake = YandexFake::start();
    let p = provider(&fake, Some(ADMIN_SERVICE_ACCOUNT_ID));
    assert_eq!(p.name(), "yandex");
    p.check_credentials().await.expect("credentials accepted");
    assert_eq!(fake.tokens_issued(), 1);
    let check = fake.requests().pop().expect("list call");
    assert!(check.auth_ok && check.path == ACCESS_KEYS_PATH && check.status == 200);

    let marker = Marker::new_attempt(UID);
    let spec = spec(Some(SECOND_SERVICE_ACCOUNT_ID), Some("backups of team a"));
    let issued = p.create_key(&request(&marker, &spec)).await.expect("created");
    let live = fake.live_keys();
    assert_eq!(live.len(), 1);
    assert_eq!(issued.key_ref, live[0].id);
    assert_eq!(issued.access_key_id, live[0].key_id);
    assert_eq!(issued.expires_at, None);
    assert_eq!(fake.issued_secrets(), vec![issued.secret.expose_secret().to_owned()]);
    assert_eq!(live[0].service_account_id, SECOND_SERVICE_ACCOUNT_ID);
    assert_eq!(live[0].description, format!("backups of team a {marker}"));

    // Someone else's keys on the same account: one by hand, one with another owner's marker,
    // one whose description has this owner's marker where the operator never puts it.
    let by_hand = fake.add_key(SECOND_SERVICE_ACCOUNT_ID, "by hand");
    let others = fake.add_key(SECOND_SERVICE_ACCOUNT_ID, &Marker::new_attempt(OTHER_UID).to_string());
    let lookalike = fake.add_key(SECOND_SERVICE_ACCOUNT_ID, &format!("{marker} admin"));
    let found = p.find_keys(UID, &spec).await.expect("listed");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key_ref, issued.key_ref);
    assert_eq!(found[0].access_key_id.as_deref(), Some(issued.access_key_id.as_str()));
    assert_eq!(found[0].marker, marker);
    // The issuer's default account holds none of them.
    assert!(p.find_keys(UID, &self::spec(None, None)).await.expect("listed").is_empty());

    // None of them is revoked when named: each is read, and left alone.
    for foreign in [&by_hand, &others, &lookalike] {
        let deletes = count(&fake, "DELETE", ACCESS_KEYS_PATH);
        let refused = p.revoke_key(&foreign.id, UID).await.expect("answered");
        assert!(matches!(refused, Revocation::NotOwned(ref why) if why.contains("marker")), "{refused:?}");
        assert_eq!(count(&fake, "DELETE", ACCESS_KEYS_PATH), deletes);
    }
    assert_eq!(fake.live_keys().len(), 4);

    fake.set_faults(Faults { operations_pending_polls: 2, ..Faults::default() });
    assert_eq!(p.revoke_key(&issued.key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    assert!(fake.live_keys().iter().all(|k| k.id != issued.key_ref));
    assert_eq!(count(&fake, "GET", "/operations/"), 3);
    assert!(p.find_keys(UID, &spec).await.expect("listed").is_empty());
    // Gone already counts as revoked.
    assert_eq!(p.revoke_key(&issued.key_ref, UID).await.expect("already gone"), Revocation::AlreadyGone);
    // All of it on the one token.
    assert_eq!(fake.tokens_issued(), 1);
    assert!(fake.requests().iter().all(|r| r.auth_ok));
}

#[tokio::test]
async fn provider_refreshes_short_lived_and_revoked_tokens_transparently() {
    let fake = YandexFake::start();
    fake.set_faults(Faults { token_ttl: Duration::from_secs(2), ..Faults::default() });
    let p = provider(&fake, Some(SECOND_SERVICE_ACCOUNT_ID));
    let marker = Marker::new_attempt(UID);
    let spec = spec(None, None);
    let issued = p.create_key(&request(&marker, &spec)).await.expect("created");
    assert_eq!(fake.tokens_issued(), 1);

    // Past half its life the token is replaced before it is used again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(p.find_keys(UID, &spec).await.expect("listed").len(), 1);
    assert_eq!(fake.tokens_issued(), 2);
    assert!(fake.requests().iter().all(|r| r.status != 401));

    // A token refused with 401 is replaced and the call made once more.
    fake.set_faults(Faults::default());
    fake.expire_tokens();
    let found = p.find_keys(UID, &spec).await.expect("listed after a 401");
    assert_eq!(found[0].key_ref, issued.key_ref);
    assert_eq!(fake.tokens_issued(), 3);
    let statuses: Vec<u16> = fake.requests().iter().rev().take(3).map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 401], "list retried after a new token");

    fake.expire_tokens();
    assert_eq!(p.revoke_key(&issued.key_ref, UID).await.expect("revoked after a 401"), Revocation::Revoked);
    assert!(fake.live_keys().is_empty());
    assert_eq!(fake.tokens_issued(), 4);
}

#[tokio::test]
async fn provider_with_a_wrong_key_fails_check_credentials_with_an_auth_error() {
    let fake = YandexFake::start();
    let p = YandexProvider::new(
        &issuer(&fake, Some(ADMIN_SERVICE_ACCOUNT_ID)),
        Some(SecretString::from(fake.wrong_authorized_key_json())),
        http_config(),
    )
    .unwrap_or_else(|e| panic!("provider builds: {e}"));
    let e = p.check_credentials().await.expect_err("refused");
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert_eq!(e.status, Some(401));
    assert!(e.request_id.is_some());
    assert!(e.message.contains("UNAUTHENTICATED"), "{e}");
    // Refused once: an Auth error is not retried.
    assert_eq!(count(&fake, "POST", TOKEN_PATH), 1);
    assert_eq!(count(&fake, "GET", ACCESS_KEYS_PATH), 0);
    assert_eq!(fake.tokens_issued(), 0);
}

#[tokio::test]
async fn provider_takes_tokens_from_the_metadata_service() {
    let fake = YandexFake::start();
    let settings = YandexIssuer {
        service_account_key_secret_ref: None,
        metadata_service: Some(MetadataService { endpoint: fake.metadata_endpoint() }),
        ..issuer(&fake, Some(ADMIN_SERVICE_ACCOUNT_ID))
    };
    let p = YandexProvider::new(&settings, None, http_config()).unwrap_or_else(|e| panic!("provider builds: {e}"));
    p.check_credentials().await.expect("credentials accepted");
    let marker = Marker::new_attempt(UID);
    let spec = spec(None, Some("from a node"));
    let issued = p.create_key(&request(&marker, &spec)).await.expect("created");
    assert_eq!(p.find_keys(UID, &spec).await.expect("listed").len(), 1);
    assert_eq!(p.revoke_key(&issued.key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    assert_eq!(fake.tokens_issued(), 1);
    assert_eq!(count(&fake, "GET", METADATA_TOKEN_PATH), 1);
    assert_eq!(count(&fake, "POST", TOKEN_PATH), 0);
}

#[tokio::test]
async fn provider_follows_every_page() {
    let fake = YandexFake::start();
    fake.set_faults(Faults { max_page_size: 2, ..Faults::default() });
    let p = provider(&fake, Some(SECOND_SERVICE_ACCOUNT_ID));
    for i in 0..5 {
        fake.add_key(SECOND_SERVICE_ACCOUNT_ID, &format!("other {i}"));
    }
    let marker = Marker::new_attempt(UID);
    let spec = spec(None, None);
    let issued = p.create_key(&request(&marker, &spec)).await.expect("created");
    let found = p.find_keys(UID, &spec).await.expect("listed");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key_ref, issued.key_ref);
    assert_eq!(count(&fake, "GET", ACCESS_KEYS_PATH), 3);
}

#[tokio::test]
async fn provider_rides_out_5xx_and_throttling_on_reads_and_deletes() {
    let fake = YandexFake::start();
    let p = provider(&fake, Some(SECOND_SERVICE_ACCOUNT_ID));
    let marker = Marker::new_attempt(UID);
    let spec = spec(None, None);
    let issued = p.create_key(&request(&marker, &spec)).await.expect("created");
    fake.set_faults(Faults { error_rate: 0.4, throttle_rate: 0.1, operations_pending_polls: 1, ..Faults::default() });
    p.check_credentials().await.expect("credentials accepted");
    for _ in 0..5 {
        assert_eq!(p.find_keys(UID, &spec).await.expect("listed").len(), 1);
    }
    assert_eq!(p.revoke_key(&issued.key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    assert!(fake.live_keys().is_empty());
    let failures = fake.requests().iter().filter(|r| r.status >= 429).count();
    assert!(failures > 0, "faults were injected");
}

#[tokio::test]
async fn a_create_that_is_never_answered_is_found_again_by_its_marker() {
    let fake = YandexFake::start();
    let p = YandexProvider::new(
        &issuer(&fake, Some(SECOND_SERVICE_ACCOUNT_ID)),
        Some(SecretString::from(fake.authorized_key_json())),
        HttpConfig { timeout: Duration::from_millis(700), ..http_config() },
    )
    .unwrap_or_else(|e| panic!("provider builds: {e}"));
    p.check_credentials().await.expect("credentials accepted");
    fake.set_faults(Faults { hang_creates: true, ..Faults::default() });
    let marker = Marker::new_attempt(UID);
    let spec = spec(None, Some("lost answer"));
    let e = p.create_key(&request(&marker, &spec)).await.expect_err("no answer");
    assert_eq!(e.kind, ErrorKind::Retryable, "{e}");
    // A create that may have acted is not repeated.
    assert_eq!(count(&fake, "POST", ACCESS_KEYS_PATH), 1);
    fake.set_faults(Faults::default());
    let found = p.find_keys(UID, &spec).await.expect("listed");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].marker, marker);
    assert_eq!(p.revoke_key(&found[0].key_ref, UID).await.expect("revoked"), Revocation::Revoked);
    assert!(fake.live_keys().is_empty());
}

#[tokio::test]
async fn provider_refuses_a_description_without_room_for_the_marker_before_calling() {
    let fake = YandexFake::start();
    let p = provider(&fake, Some(SECOND_SERVICE_ACCOUNT_ID));
    let marker = Marker::new_attempt(UID);
    let spec = spec(None, Some(&"d".repeat(206)));
    let e = p.create_key(&request(&marker, &spec)).await.expect_err("too long");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("keep it to 205"), "{e}");
    assert!(fake.requests().is_empty());
    let fits = spec_fits();
    p.create_key(&request(&marker, &fits)).await.expect("205 fit");
    assert_eq!(fake.live_keys()[0].description.chars().count(), 256);
}

fn spec_fits() -> KeyProvider {
    spec(None, Some(&"d".repeat(205)))
}

#[tokio::test]
async fn a_proxy_echoing_the_jwt_or_the_iam_token_shows_neither() {
    let fake = YandexFake::start();
    for echo in [fakes::Echo::Text, fakes::Echo::Json] {
        // The JWT exchanged for a token, echoed.
        fake.set_faults(Faults { echo: Some(echo), ..Faults::default() });
        let p = provider(&fake, Some(ADMIN_SERVICE_ACCOUNT_ID));
        let since = fakes::echoed_credentials().len();
        let e = p.check_credentials().await.expect_err("the proxy refuses");
        assert!(e.message.contains("proxy refused the request"), "{e}");
        assert!(!e.to_string().contains("eyJ"), "{e}");
        fakes::assert_no_echoed_credential(&e.to_string(), since);
        // The IAM token, echoed.
        fake.set_faults(Faults::default());
        p.check_credentials().await.expect("a token");
        fake.set_faults(Faults { echo: Some(echo), ..Faults::default() });
        let since = fakes::echoed_credentials().len();
        let e = p.check_credentials().await.expect_err("the proxy refuses");
        assert!(e.message.contains("Bearer [redacted]") || e.message.contains("authorization: [redacted]"), "{e}");
        fakes::assert_no_echoed_credential(&e.to_string(), since);
    }
}
