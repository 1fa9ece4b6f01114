//! A fake Yandex Cloud IAM for the integration tests: the token service, the metadata
//! service's token, the AWS-compatible access keys and the operation service, on one server.
//!
//! A real HTTP server on `127.0.0.1:<free port>`, serving on a dedicated OS thread with its own
//! tokio runtime, so it outlives any one `#[tokio::test]` runtime and keeps serving while
//! operator processes come and go. The token service checks the PS256 JWT with
//! [`verify_jwt`], written here on the `rsa` crate independently of the operator's signer
//! (which uses `ring`); every other call needs `Authorization: Bearer <IAM token>` of a token
//! it minted that has not expired.
//!
//! Shapes follow Yandex Cloud's IAM API reference (<https://yandex.cloud/en/docs/iam/api-ref/>:
//! IAM tokens, access keys, operations). Choices where the real API is unknown:
//! - Errors are `google.rpc.Status` JSON `{code, message, details: []}` with the HTTP status
//!   the gRPC-JSON transcoder uses; every answer has an `x-request-id` header.
//! - Any JWT the verifier refuses (unknown kid, bad signature, wrong claims) answers 401 code
//!   16, with the verifier's reason as the message.
//! - The metadata token belongs to the admin service account; a request without
//!   `Metadata-Flavor: Google` answers 403 with a plain-text body, like GCE's.
//! - Creating or listing keys of a service account the fake does not know answers 404 code 5;
//!   `serviceAccountId` left out means the token's own service account.
//! - Lists are in creation order; `pageToken` is opaque (`p<offset>`), and a token the fake
//!   did not hand out answers 400 code 3.
//! - `DELETE` removes the key at once. With [`Faults::operations_pending_polls`] = N > 0 (the
//!   count in force at the `DELETE`), its operation answers `done: false` in the `DELETE`
//!   answer and in the next N polls of `GET /operations/{id}`, then `done: true` with an
//!   empty response; with N = 0 the `DELETE` answer itself is done.
//! - A request's [`RequestRecord::status`] is 0 until it is answered (so for ever for a create
//!   held by [`Faults::hang_creates`]); `at` is when it arrived.
//! - Faults are drawn after the credentials check, from a seeded generator: first the error
//!   draw, then the throttle draw, for every path (token and metadata too). Latency is slept
//!   before anything else, for every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256;
use serde_json::{json, Map, Value};

/// The audience every JWT must name.
pub const TOKEN_AUDIENCE: &str = "https://iam.api.cloud.yandex.net/iam/v1/tokens";
/// The longest `exp - iat` the token service accepts.
pub const MAX_JWT_LIFETIME_SECS: i64 = 3600;
/// How far in the future `iat` may lie (clock skew).
pub const MAX_IAT_AHEAD_SECS: i64 = 300;

/// The service account that owns the admin authorized key (and the metadata token).
pub const ADMIN_SERVICE_ACCOUNT_ID: &str = "aje1adm1n5a000000000";
/// A second service account, for keys of another account than the caller's.
pub const SECOND_SERVICE_ACCOUNT_ID: &str = "aje0000000000000000";
pub const ADMIN_KEY_ID: &str = "ajek1adm1nkey0000000";
/// The id in [`YandexFake::wrong_authorized_key_json`], unknown to the fake.
pub const WRONG_KEY_ID: &str = "ajek1wr0ngkey0000000";

/// Test-only keys (tests/fixtures/yandex/README.md).
pub const ADMIN_PRIVATE_KEY_PEM: &str = include_str!("../fixtures/yandex/admin_key.pem");
pub const ADMIN_PUBLIC_KEY_PEM: &str = include_str!("../fixtures/yandex/admin_key.pub.pem");
pub const WRONG_PRIVATE_KEY_PEM: &str = include_str!("../fixtures/yandex/wrong_key.pem");
pub const WRONG_PUBLIC_KEY_PEM: &str = include_str!("../fixtures/yandex/wrong_key.pub.pem");

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
pub const MAX_DESCRIPTION_CHARS: usize = 256;

pub const TOKEN_PATH: &str = "/iam/v1/tokens";
pub const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
pub const ACCESS_KEYS_PATH: &str = "/iam/aws-compatibility/v1/accessKeys";
pub const INVALID_TOKEN_MESSAGE: &str = "The token is invalid or has expired.";

const MAX_BODY_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeKey {
    /// The resource id (Get/Delete).
    pub id: String,
    /// The AWS-style access key id.
    pub key_id: String,
    pub service_account_id: String,
    pub description: String,
}

#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub method: String,
    /// The raw (escaped) path, without the query.
    pub path: String,
    /// 0 while the request has not been answered.
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
    /// The credentials were accepted: a valid bearer token for API calls, a valid JWT for the
    /// token exchange, `Metadata-Flavor: Google` for the metadata service.
    pub auth_ok: bool,
}

#[derive(Clone, Debug)]
pub struct Faults {
    /// Slept before handling every request.
    pub latency: Duration,
    /// Fraction of requests answered 500 (code 13 INTERNAL) or 503 (code 14 UNAVAILABLE)
    /// without doing anything.
    pub error_rate: f64,
    /// Fraction of requests answered 429 (code 8 RESOURCE_EXHAUSTED) with `Retry-After: 1`
    /// without doing anything.
    pub throttle_rate: f64,
    /// `POST …/accessKeys` creates the key but never answers.
    pub hang_creates: bool,
    /// Polls of a new delete operation that still answer `done: false`.
    pub operations_pending_polls: u32,
    /// Lifetime of IAM and metadata tokens minted from now on (default 12 h, as Yandex's).
    pub token_ttl: Duration,
    /// When non-zero, no list page holds more keys than this, whatever `pageSize` asks (to
    /// make clients that ask for big pages follow page tokens).
    pub max_page_size: usize,
    /// Every request is answered by a proxy that echoes it (bearer token, JWT and all).
    pub echo: Option<super::Echo>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            error_rate: 0.0,
            throttle_rate: 0.0,
            hang_creates: false,
            operations_pending_polls: 0,
            token_ttl: Duration::from_secs(12 * 3600),
            max_page_size: 0,
            echo: None,
        }
    }
}

/// An authorized key the token service knows: JWTs with `kid: id` must be signed by it and
/// issued by `service_account_id`.
#[derive(Clone, Debug)]
pub struct KnownKey {
    pub id: String,
    pub service_account_id: String,
    pub public_key: rsa::PublicKey,
}

impl KnownKey {
    pub fn from_pem(id: &str, service_account_id: &str, public_key_pem: &str) -> Self {
        Self {
            id: id.to_owned(),
            service_account_id: service_account_id.to_owned(),
            public_key: rsa::PublicKey::from_public_key_pem(public_key_pem).expect("test public key parses"),
        }
    }
}

/// The fake server. Dropping it stops the server.
pub struct YandexFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: super::Server,
}

impl YandexFake {
    /// Starts the fake on `127.0.0.1:<free port>`. It knows the admin authorized key (from the
    /// committed test fixture) and two service accounts.
    pub fn start() -> Self {
        let shared = Arc::new(Shared::new());
        let server = super::Server::start("yandex", router(shared.clone()));
        Self { addr: server.addr, shared, server }
    }

    /// Base URL serving `/iam/v1/tokens` and `/iam/aws-compatibility/v1/…`,
    /// e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Base URL serving `/operations/{id}` (the same server).
    pub fn operation_endpoint(&self) -> String {
        self.endpoint()
    }

    /// Base URL serving the metadata service's token (the same server).
    pub fn metadata_endpoint(&self) -> String {
        self.endpoint()
    }

    /// The admin authorized key JSON, as `yc iam key create` writes it, with the
    /// `PLEASE DO NOT REMOVE THIS LINE!` line before the PEM block.
    pub fn authorized_key_json(&self) -> String {
        authorized_key_json(ADMIN_KEY_ID, ADMIN_SERVICE_ACCOUNT_ID, ADMIN_PUBLIC_KEY_PEM, ADMIN_PRIVATE_KEY_PEM)
    }

    /// The same shape with another key and key id, neither known to the fake: the token
    /// service refuses its JWTs with 401.
    pub fn wrong_authorized_key_json(&self) -> String {
        authorized_key_json(WRONG_KEY_ID, ADMIN_SERVICE_ACCOUNT_ID, WRONG_PUBLIC_KEY_PEM, WRONG_PRIVATE_KEY_PEM)
    }

    /// The admin service account (owner of the authorized key and of the metadata token).
    pub fn service_account_id(&self) -> String {
        ADMIN_SERVICE_ACCOUNT_ID.to_owned()
    }

    /// Makes keys creatable and listable for another service account.
    pub fn add_service_account(&self, id: &str) {
        let mut st = self.shared.state();
        if !st.service_accounts.iter().any(|s| s == id) {
            st.service_accounts.push(id.to_owned());
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.state().faults = faults;
    }

    /// Every token minted so far stops working (as if revoked): the next call with one gets 401.
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for expires in self.shared.state().tokens.values_mut() {
            *expires = now;
        }
    }

    pub fn live_keys(&self) -> Vec<FakeKey> {
        self.shared.state().keys.iter().map(|k| k.key.clone()).collect()
    }

    /// Adds a key directly (e.g. one the operator does not own); no secret is issued.
    pub fn add_key(&self, service_account_id: &str, description: &str) -> FakeKey {
        let key = new_fake_key(service_account_id, description);
        self.shared.state().keys.push(KeyEntry {
            key: key.clone(),
            created_at: rfc3339(SystemTime::now()),
            last_used_at: None,
        });
        key
    }

    /// Deletes a key directly (by resource id), as someone at the console would; `false` if
    /// there was none.
    pub fn delete_key_by_hand(&self, id: &str) -> bool {
        let mut st = self.shared.state();
        let before = st.keys.len();
        st.keys.retain(|k| k.key.id != id);
        st.keys.len() < before
    }

    /// Records a use of the key (by resource id) at `at` (RFC 3339), as an S3 request with it
    /// would; `false` if there is no such key.
    pub fn use_key(&self, id: &str, at: &str) -> bool {
        let mut st = self.shared.state();
        let key = st.keys.iter_mut().find(|k| k.key.id == id);
        key.map(|k| k.last_used_at = Some(at.to_owned())).is_some()
    }

    /// Every secret the fake ever returned.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.shared.state().issued_secrets.clone()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.state().requests.clone()
    }

    /// How many IAM tokens were minted (JWT exchanges and metadata tokens).
    pub fn tokens_issued(&self) -> usize {
        self.shared.state().tokens_issued
    }
}

fn authorized_key_json(id: &str, service_account_id: &str, public: &str, private: &str) -> String {
    json!({
        "id": id,
        "service_account_id": service_account_id,
        "created_at": "2026-11-22T12:00:00.000000Z",
        "key_algorithm": "RSA_2048",
        "public_key": public,
        "private_key": format!(
            "PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID <{id}>\n{private}"
        ),
    })
    .to_string()
}

// ---------------------------------------------------------------------------------------------
// JWT verification
// ---------------------------------------------------------------------------------------------

/// Verifies a PS256 JWT for the token service and returns the service account it authenticates.
///
/// Checks, in order: three base64url segments (no padding); header `typ: JWT`, `alg: PS256`,
/// a `kid` among `keys`; the RSASSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) signature over
/// `header.payload`; then claims `iss` = the key's service account, `aud` =
/// [`TOKEN_AUDIENCE`] (a string, or an array holding it), integer `iat` and `exp` with
/// `iat < exp`, `exp - iat ≤ 3600`, `exp > now`, `iat ≤ now + 300`.
pub fn verify_jwt(jwt: &str, keys: &[KnownKey], now_unix: i64) -> Result<String, String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts[..] else {
        return Err("JWT must have three segments".into());
    };
    let header = segment(header_b64, "header")?;
    if header.get("typ").and_then(Value::as_str) != Some("JWT") {
        return Err("JWT header typ must be JWT".into());
    }
    if header.get("alg").and_then(Value::as_str) != Some("PS256") {
        return Err("JWT header alg must be PS256".into());
    }
    let kid = header.get("kid").and_then(Value::as_str).ok_or("JWT header has no kid")?;
    let key = keys.iter().find(|k| k.id == kid).ok_or_else(|| format!("unknown key id {kid}"))?;
    let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| "JWT signature is not base64url")?;
    let signed = &jwt[..header_b64.len() + 1 + claims_b64.len()];
    key.public_key
        .pss_verify::<Sha256>(signed.as_bytes(), &signature)
        .map_err(|_| "JWT signature does not verify with the key".to_string())?;

    let claims = segment(claims_b64, "payload")?;
    if claims.get("iss").and_then(Value::as_str) != Some(key.service_account_id.as_str()) {
        return Err("JWT iss is not the key's service account".into());
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == TOKEN_AUDIENCE,
        Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(TOKEN_AUDIENCE)),
        _ => false,
    };
    if !audience_ok {
        return Err(format!("JWT aud must be {TOKEN_AUDIENCE}"));
    }
    let iat = claims.get("iat").and_then(Value::as_i64).ok_or("JWT iat must be an integer")?;
    let exp = claims.get("exp").and_then(Value::as_i64).ok_or("JWT exp must be an integer")?;
    if exp <= iat {
        return Err("JWT exp must be after iat".into());
    }
    if exp - iat > MAX_JWT_LIFETIME_SECS {
        return Err(format!("JWT exp - iat is {} s, more than {MAX_JWT_LIFETIME_SECS}", exp - iat));
    }
    if exp <= now_unix {
        return Err("JWT expired".into());
    }
    if iat > now_unix + MAX_IAT_AHEAD_SECS {
        return Err("JWT iat lies in the future".into());
    }
    Ok(key.service_account_id.clone())
}

fn segment(b64: &str, what: &str) -> Result<Value, String> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| format!("JWT {what} is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(format!("JWT {what} is not a JSON object")),
    }
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn rfc3339(at: SystemTime) -> String {
    jiff::Timestamp::try_from(at).map(|t| t.to_string()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

struct Shared {
    keys: Vec<KnownKey>,
    state: Mutex<FakeState>,
}

struct KeyEntry {
    key: FakeKey,
    created_at: String,
    /// `lastUsedAt`, once the key was used.
    last_used_at: Option<String>,
}

struct Operation {
    access_key_id: String,
    created_by: String,
    created_at: String,
    pending_polls_left: u32,
}

struct FakeState {
    faults: Faults,
    service_accounts: Vec<String>,
    keys: Vec<KeyEntry>,
    /// Token → when it stops working.
    tokens: HashMap<String, Instant>,
    /// Token → its service account.
    subjects: HashMap<String, String>,
    tokens_issued: usize,
    operations: HashMap<String, Operation>,
    issued_secrets: Vec<String>,
    requests: Vec<RequestRecord>,
    fault_rng: StdRng,
}

impl Shared {
    fn new() -> Self {
        Self {
            keys: vec![KnownKey::from_pem(ADMIN_KEY_ID, ADMIN_SERVICE_ACCOUNT_ID, ADMIN_PUBLIC_KEY_PEM)],
            state: Mutex::new(FakeState {
                faults: Faults::default(),
                service_accounts: vec![ADMIN_SERVICE_ACCOUNT_ID.to_owned(), SECOND_SERVICE_ACCOUNT_ID.to_owned()],
                keys: Vec::new(),
                tokens: HashMap::new(),
                subjects: HashMap::new(),
                tokens_issued: 0,
                operations: HashMap::new(),
                issued_secrets: Vec::new(),
                requests: Vec::new(),
                fault_rng: StdRng::seed_from_u64(0x7A4D_E1C5),
            }),
        }
    }

    /// The state; a panic elsewhere while holding the lock does not stop the fake.
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FakeState {
    /// Mints a token for `subject`; returns it and its lifetime.
    fn mint(&mut self, subject: &str, prefix: &str) -> (String, Duration) {
        let ttl = self.faults.token_ttl;
        let token = format!("{prefix}{}.{}", random_string(ALNUM, 40), random_string(URL_SAFE, 86));
        self.tokens.insert(token.clone(), Instant::now() + ttl);
        self.subjects.insert(token.clone(), subject.to_owned());
        self.tokens_issued += 1;
        (token, ttl)
    }

    /// The service account of a live token.
    fn subject(&self, token: &str) -> Option<String> {
        let expires = self.tokens.get(token)?;
        if *expires <= Instant::now() {
            return None;
        }
        self.subjects.get(token).cloned()
    }

    fn knows_account(&self, id: &str) -> bool {
        self.service_accounts.iter().any(|s| s == id)
    }
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const MIXED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const URL_SAFE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())])).collect()
}

/// Ids shaped like real ones: resource `aje` + 17, key id `YC` + 23, secret `YC` + 38.
fn new_fake_key(service_account_id: &str, description: &str) -> FakeKey {
    FakeKey {
        id: format!("aje{}", random_string(ALNUM, 17)),
        key_id: format!("YC{}", random_string(URL_SAFE, 23)),
        service_account_id: service_account_id.to_owned(),
        description: description.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

struct ApiError {
    status: StatusCode,
    code: i32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: i32, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn invalid(why: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 3, why)
    }
    fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, 5, what)
    }
    fn unauthenticated(why: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, 16, why)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"code": self.code, "message": self.message, "details": []}))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// A JSON object body holding only `allowed` fields (nulls dropped).
fn json_object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(ApiError::invalid("body must be a JSON object"));
    };
    object.retain(|_, v| !v.is_null());
    if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!("unknown field {unknown}")));
    }
    Ok(object)
}

fn string_field(object: &Map<String, Value>, field: &str, max_chars: usize) -> Result<Option<String>, ApiError> {
    match object.get(field) {
        None => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max_chars => Ok(Some(s.clone())),
        Some(Value::String(_)) => {
            Err(ApiError::invalid(format!("{field}: the maximum string length in characters is {max_chars}")))
        }
        Some(_) => Err(ApiError::invalid(format!("{field} must be a string"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Router and gate (credentials, faults, records)
// ---------------------------------------------------------------------------------------------

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(TOKEN_PATH, axum::routing::post(create_token))
        .route(METADATA_TOKEN_PATH, get(metadata_token))
        .route(ACCESS_KEYS_PATH, get(list_keys).post(create_key))
        .route(&format!("{ACCESS_KEYS_PATH}/{{id}}"), get(get_key).delete(delete_key))
        .route("/operations/{id}", get(get_operation))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

async fn not_found() -> ApiError {
    ApiError::not_found("Not found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, 12, "Method not allowed")
}

/// Which request this is in [`FakeState::requests`], for handlers that judge credentials.
#[derive(Clone, Copy)]
struct RecordIndex(usize);

/// The service account of the bearer token.
#[derive(Clone)]
struct Subject(String);

/// Runs before every handler: records the request, sleeps the latency, checks the bearer token
/// (except on the token and metadata paths, whose handlers check their own credentials), then
/// injects faults. Every answer gets an `x-request-id`.
async fn gate(State(s): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let (index, latency) = {
        let mut st = s.state();
        st.requests.push(RequestRecord {
            method: parts.method.as_str().to_owned(),
            path: path.clone(),
            status: 0,
            at: Instant::now(),
            auth_ok: false,
        });
        (st.requests.len() - 1, st.faults.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let echo = s.state().faults.echo;
    if let Some(echo) = echo {
        let body = to_bytes(body, MAX_BODY_BYTES).await.unwrap_or_default();
        let response = super::echoed_request(echo, &parts, &body);
        s.state().requests[index].status = response.status().as_u16();
        return response;
    }
    let own_credentials = path == TOKEN_PATH || path == METADATA_TOKEN_PATH;
    let verdict = if own_credentials {
        Ok(None)
    } else {
        let bearer =
            parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match bearer.and_then(|t| s.state().subject(t)) {
            Some(subject) => Ok(Some(subject)),
            None => Err(ApiError::unauthenticated(INVALID_TOKEN_MESSAGE)),
        }
    };
    let mut response = match verdict {
        Err(e) => e.into_response(),
        Ok(subject) => {
            if let Some(subject) = subject {
                s.state().requests[index].auth_ok = true;
                parts.extensions.insert(Subject(subject));
            }
            parts.extensions.insert(RecordIndex(index));
            match injected_fault(&s) {
                Some(fault) => fault,
                None => match to_bytes(body, MAX_BODY_BYTES).await {
                    Err(_) => ApiError::invalid("body unreadable or larger than 1 MiB").into_response(),
                    Ok(body) => next.run(Request::from_parts(parts, Body::from(body))).await,
                },
            }
        }
    };
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        response.headers_mut().insert("x-request-id", id);
    }
    s.state().requests[index].status = response.status().as_u16();
    response
}

fn injected_fault(s: &Shared) -> Option<Response> {
    let mut st = s.state();
    let (error_rate, throttle_rate) = (st.faults.error_rate, st.faults.throttle_rate);
    if error_rate > 0.0 && st.fault_rng.random::<f64>() < error_rate {
        let error = if st.fault_rng.random_bool(0.5) {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, 13, "Internal error")
        } else {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, 14, "Service is unavailable. Try again in a few seconds")
        };
        return Some(error.into_response());
    }
    if throttle_rate > 0.0 && st.fault_rng.random::<f64>() < throttle_rate {
        let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, 8, "Too many requests").into_response();
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return Some(response);
    }
    None
}

/// Never answers (the key was created); the request is dropped with the connection or the fake.
async fn hang_if_asked(s: &Shared) {
    let hang = s.state().faults.hang_creates;
    if hang {
        std::future::pending::<()>().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

async fn create_token(
    State(s): State<Arc<Shared>>,
    Extension(RecordIndex(index)): Extension<RecordIndex>,
    body: Bytes,
) -> ApiResult {
    let body = json_object(&body, &["jwt", "yandexPassportOauthToken"])?;
    let jwt = match body.get("jwt") {
        Some(Value::String(jwt)) if jwt.len() <= 8000 => jwt,
        _ => return Err(ApiError::invalid("jwt: a string of at most 8000 characters")),
    };
    let subject = verify_jwt(jwt, &s.keys, now_unix()).map_err(ApiError::unauthenticated)?;
    let mut st = s.state();
    st.requests[index].auth_ok = true;
    let (token, ttl) = st.mint(&subject, "t1.");
    Ok(Json(json!({
        "iamToken": token,
        "expiresAt": rfc3339(SystemTime::now() + ttl),
    })))
}

async fn metadata_token(
    State(s): State<Arc<Shared>>,
    Extension(RecordIndex(index)): Extension<RecordIndex>,
    headers: axum::http::HeaderMap,
) -> Response {
    let flavor = headers.get("Metadata-Flavor").and_then(|v| v.to_str().ok());
    if flavor != Some("Google") {
        return (StatusCode::FORBIDDEN, "Missing required header \"Metadata-Flavor\": \"Google\"\n").into_response();
    }
    let mut st = s.state();
    st.requests[index].auth_ok = true;
    let (token, ttl) = st.mint(ADMIN_SERVICE_ACCOUNT_ID, "CggVAgAAABoBMRKABA");
    Json(json!({
        "access_token": token,
        "expires_in": ttl.as_secs(),
        "token_type": "Bearer",
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// Access keys
// ---------------------------------------------------------------------------------------------

fn key_json(entry: &KeyEntry) -> Value {
    let k = &entry.key;
    let mut v = json!({
        "id": k.id,
        "serviceAccountId": k.service_account_id,
        "createdAt": entry.created_at,
        "keyId": k.key_id,
    });
    if let Some(at) = &entry.last_used_at {
        v["lastUsedAt"] = json!(at);
    }
    // proto3 JSON leaves out empty strings.
    if !k.description.is_empty() {
        v["description"] = json!(k.description);
    }
    v
}

fn account_or_caller(st: &FakeState, given: Option<String>, subject: &str) -> Result<String, ApiError> {
    let id = given.filter(|s| !s.is_empty()).unwrap_or_else(|| subject.to_owned());
    if id.chars().count() > 50 {
        return Err(ApiError::invalid("serviceAccountId: the maximum string length in characters is 50"));
    }
    if !st.knows_account(&id) {
        return Err(ApiError::not_found(format!("Service account {id} not found")));
    }
    Ok(id)
}

async fn list_keys(
    State(s): State<Arc<Shared>>,
    Extension(Subject(subject)): Extension<Subject>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let st = s.state();
    let account = account_or_caller(&st, query.get("serviceAccountId").cloned(), &subject)?;
    let page_size = match query.get("pageSize").map(|v| v.parse::<usize>()) {
        None => DEFAULT_PAGE_SIZE,
        Some(Ok(0)) => DEFAULT_PAGE_SIZE,
        Some(Ok(n)) if n <= MAX_PAGE_SIZE => n,
        _ => return Err(ApiError::invalid("pageSize: acceptable values are 0 to 1000")),
    };
    let page_size = match st.faults.max_page_size {
        0 => page_size,
        cap => page_size.min(cap),
    };
    let offset = match query.get("pageToken").map(String::as_str) {
        None | Some("") => 0,
        Some(t) => t
            .strip_prefix('p')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::invalid("pageToken: invalid page token"))?,
    };
    let all: Vec<&KeyEntry> = st.keys.iter().filter(|k| k.key.service_account_id == account).collect();
    let page: Vec<Value> = all.iter().skip(offset).take(page_size).map(|k| key_json(k)).collect();
    let mut body = json!({});
    if !page.is_empty() {
        body["accessKeys"] = json!(page);
    }
    if offset + page_size < all.len() {
        body["nextPageToken"] = json!(format!("p{}", offset + page_size));
    }
    Ok(Json(body))
}

async fn get_key(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    let st = s.state();
    st.keys
        .iter()
        .find(|k| k.key.id == id)
        .map(|k| Json(key_json(k)))
        .ok_or_else(|| ApiError::not_found(format!("Access key {id} not found")))
}

async fn create_key(
    State(s): State<Arc<Shared>>,
    Extension(Subject(subject)): Extension<Subject>,
    body: Bytes,
) -> ApiResult {
    let body = json_object(&body, &["serviceAccountId", "description"])?;
    let given = string_field(&body, "serviceAccountId", 50)?;
    let description = string_field(&body, "description", MAX_DESCRIPTION_CHARS)?.unwrap_or_default();
    let created = {
        let mut st = s.state();
        let account = account_or_caller(&st, given, &subject)?;
        let entry = KeyEntry {
            key: new_fake_key(&account, &description),
            created_at: rfc3339(SystemTime::now()),
            last_used_at: None,
        };
        let secret = format!("YC{}", random_string(MIXED, 38));
        let body = json!({"accessKey": key_json(&entry), "secret": secret});
        st.keys.push(entry);
        st.issued_secrets.push(secret);
        body
    };
    hang_if_asked(&s).await;
    Ok(Json(created))
}

async fn delete_key(
    State(s): State<Arc<Shared>>,
    Extension(Subject(subject)): Extension<Subject>,
    Path(id): Path<String>,
) -> ApiResult {
    let mut st = s.state();
    let index = st
        .keys
        .iter()
        .position(|k| k.key.id == id)
        .ok_or_else(|| ApiError::not_found(format!("Access key {id} not found")))?;
    st.keys.remove(index);
    let op_id = format!("aje{}", random_string(ALNUM, 17));
    let op = Operation {
        access_key_id: id,
        created_by: subject,
        created_at: rfc3339(SystemTime::now()),
        pending_polls_left: st.faults.operations_pending_polls,
    };
    let body = operation_json(&op_id, &op, op.pending_polls_left == 0);
    st.operations.insert(op_id, op);
    Ok(Json(body))
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

fn operation_json(id: &str, op: &Operation, done: bool) -> Value {
    let mut v = json!({
        "id": id,
        "description": "Delete access key",
        "createdAt": op.created_at,
        "createdBy": op.created_by,
        "modifiedAt": rfc3339(SystemTime::now()),
        "done": done,
        "metadata": {
            "@type": "type.googleapis.com/yandex.cloud.iam.v1.awscompatibility.DeleteAccessKeyMetadata",
            "accessKeyId": op.access_key_id,
        },
    });
    if done {
        v["response"] = json!({"@type": "type.googleapis.com/google.protobuf.Empty"});
    }
    v
}

async fn get_operation(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    let mut st = s.state();
    let op = st.operations.get_mut(&id).ok_or_else(|| ApiError::not_found(format!("Operation {id} not found")))?;
    let done = op.pending_polls_left == 0;
    if !done {
        op.pending_polls_left -= 1;
    }
    Ok(Json(operation_json(&id, op, done)))
}
