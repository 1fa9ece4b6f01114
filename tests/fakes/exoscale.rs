//! A fake Exoscale API v2 (IAM part) for the integration tests.
//!
//! A real HTTP server on `127.0.0.1:<free port>`, serving on a dedicated OS thread with its own
//! tokio runtime, so it outlives any one `#[tokio::test]` runtime and keeps serving while
//! operator processes come and go. Every request must carry a valid `EXO2-HMAC-SHA256`
//! signature made with the admin key given to [`ExoscaleFake::start`]; the signature is checked
//! by [`verify_exo2`], written here independently of the operator's signer.
//!
//! Shapes follow Exoscale's API v2 reference (<https://openapi-v2.exoscale.com/>: IAM roles, API
//! keys, legacy access keys, operations). Choices where the real API is unknown:
//! - Every state change happens when the request is handled: a role created by `POST /iam-role`
//!   is listed at once, and a deleted key or role is gone at once. The operation returned is
//!   always `pending` and turns `success` after [`Faults::operations_pending_polls`] further
//!   `GET /operation/{id}` polls (the count in force when the operation was created).
//! - `POST /api-key` with an unknown `role-id` answers 400 `invalid request: IAM Role … not found`.
//! - `DELETE /iam-role/{id}` while API keys still use the role answers 409 `role is in use`.
//! - POST bodies must be JSON objects sent with `Content-Type: application/json` (else 415) and
//!   may hold only the fields the spec lists (else 400); `null` counts as absent.
//! - A request's [`RequestRecord::status`] is 0 until it is answered (so for ever for a create
//!   held by [`Faults::hang_creates`]); `at` is when it arrived.
//! - Faults are drawn after the signature check, from a seeded generator: first the error
//!   draw, then the throttle draw. Latency is slept before anything else, for every request.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Map, Value};
use sha2::Sha256;

/// The role the fake starts with, for issuers that name an existing role (`roleId`): object
/// storage only (a default of deny, `sos` allowed), so that it grants no IAM rights.
pub const PREEXISTING_ROLE_ID: &str = "7b1e0000-0000-4000-8000-000000000001";
pub const PREEXISTING_ROLE_NAME: &str = "preexisting";
/// The error the real API gives when an IAMv3 API key asks for a legacy access key.
pub const LEGACY_DISABLED_MESSAGE: &str = "invalid request: Cannot generate IAMv2 `Access Key` using a IAMv3 `Api Key`";
/// How far ahead a signature's `expires` may lie (the real limit is not documented).
pub const MAX_EXPIRY_AHEAD_SECS: u64 = 3600;

const MAX_BODY_BYTES: usize = 1 << 20;
const WRONG_KEY: &str = "Invalid API key";
const BAD_SIGNATURE: &str = "Invalid request signature";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeApiKey {
    pub name: String,
    pub key: String,
    pub role_id: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FakeRole {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub policy: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FakeAccessKey {
    pub name: String,
    pub key: String,
    pub operations: Vec<String>,
    pub tags: Vec<String>,
    pub resources: Value,
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
    /// The same, on the wall clock (to compare with timestamps the operator writes).
    pub wall: std::time::SystemTime,
    pub signature_ok: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Slept before handling every request.
    pub latency: Duration,
    /// Fraction of requests answered 500/502/503 `{"message":…}` without doing anything.
    pub error_rate: f64,
    /// Fraction of requests answered 429 with `Retry-After: 1` without doing anything.
    pub throttle_rate: f64,
    /// `POST /api-key` and `POST /access-key` create the key but never answer.
    pub hang_creates: bool,
    /// Polls of a new operation that still answer `pending` before it answers `success`.
    pub operations_pending_polls: u32,
    /// Every request is answered by a proxy that echoes it, signature included.
    pub echo: Option<super::Echo>,
}

/// The fake server. Dropping it stops the server.
pub struct ExoscaleFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: super::Server,
}

impl ExoscaleFake {
    /// Starts the fake on `127.0.0.1:<free port>`; it accepts only this admin key and secret.
    pub fn start(admin_key: &str, admin_secret: &str) -> Self {
        let shared = Arc::new(Shared::new(admin_key, admin_secret));
        let server = super::Server::start("exoscale", router(shared.clone()));
        Self { addr: server.addr, shared, server }
    }

    /// Base URL including `/v2`, e.g. `http://127.0.0.1:41234/v2`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v2", self.addr)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.state().faults = faults;
    }

    /// Draws the injected faults from `seed` from now on (a chaos test's seed).
    pub fn reseed_faults(&self, seed: u64) {
        self.shared.state().fault_rng = StdRng::seed_from_u64(seed);
    }

    /// Requests being handled (or held by the latency) now.
    pub fn in_flight(&self) -> u32 {
        self.shared.state().in_flight
    }

    /// The most requests that were ever handled at once.
    pub fn max_in_flight(&self) -> u32 {
        self.shared.state().max_in_flight
    }

    /// When disabled, every `/v2/access-key*` request answers 400 [`LEGACY_DISABLED_MESSAGE`].
    pub fn set_legacy_enabled(&self, enabled: bool) {
        self.shared.state().legacy_enabled = enabled;
    }

    /// The most API keys that were ever live at once (created through the API), whenever anyone
    /// looked: a bound on live keys holds at every moment, not just when a test polls.
    pub fn max_live_api_keys(&self) -> usize {
        self.shared.state().max_live_api_keys
    }

    pub fn live_api_keys(&self) -> Vec<FakeApiKey> {
        self.shared.state().api_keys.clone()
    }

    pub fn roles(&self) -> Vec<FakeRole> {
        self.shared.state().roles.iter().map(|r| r.role.clone()).collect()
    }

    pub fn live_access_keys(&self) -> Vec<FakeAccessKey> {
        self.shared.state().access_keys.clone()
    }

    /// Every secret the fake ever returned.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.shared.state().issued_secrets.clone()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.state().requests.clone()
    }

    /// Deletes an API key directly, as someone at the console would; `false` if there was none.
    pub fn delete_api_key_by_hand(&self, key: &str) -> bool {
        let mut st = self.shared.state();
        let before = st.api_keys.len();
        st.api_keys.retain(|k| k.key != key);
        st.api_keys.len() < before
    }

    /// Adds a role directly, as an administrator at the console would (`policy` in the API's
    /// kebab-case, `permissions` such as `reset-iam-organization-policy`).
    pub fn add_role(&self, id: &str, name: &str, policy: Value, permissions: &[&str]) {
        let role =
            FakeRole { id: id.to_owned(), name: name.to_owned(), description: None, labels: BTreeMap::new(), policy };
        self.shared.state().roles.push(RoleEntry {
            role,
            editable: true,
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            assume_role_policy: None,
            max_session_ttl: None,
        });
    }

    /// Adds an API key directly (e.g. one the operator does not own); the role is not checked.
    pub fn add_api_key(&self, name: &str, role_id: &str) -> FakeApiKey {
        let key = FakeApiKey { name: name.to_owned(), key: new_key(), role_id: role_id.to_owned() };
        self.shared.state().api_keys.push(key.clone());
        key
    }
}

// ---------------------------------------------------------------------------------------------
// Signature verification
// ---------------------------------------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

/// Checks an `Authorization: EXO2-HMAC-SHA256 …` header against the request.
///
/// `path` is the raw escaped path (with `/v2`), `query` the raw query string without `?` (empty
/// when none). The error starts with `Invalid API key` when the credential is not `key`, and
/// with `Invalid request signature` otherwise, followed by the reason.
#[allow(clippy::too_many_arguments)] // mirrors the parts of a request, as the tests call it
pub fn verify_exo2(
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    header: &str,
    key: &str,
    secret: &str,
    now_unix: u64,
) -> Result<(), String> {
    let bad = |why: &str| format!("{BAD_SIGNATURE}: {why}");
    let rest = header.strip_prefix("EXO2-HMAC-SHA256 ").ok_or_else(|| bad("the scheme is not EXO2-HMAC-SHA256"))?;
    let mut parts = rest.split(',').peekable();
    let credential =
        parts.next().and_then(|p| p.strip_prefix("credential=")).ok_or_else(|| bad("credential= must come first"))?;
    let signed_args = match parts.peek().and_then(|p| p.strip_prefix("signed-query-args=")) {
        Some(list) => {
            parts.next();
            let names: Vec<&str> = list.split(';').collect();
            if names.iter().any(|n| n.is_empty()) {
                return Err(bad("empty name in signed-query-args"));
            }
            names
        }
        None => Vec::new(),
    };
    let expires =
        parts.next().and_then(|p| p.strip_prefix("expires=")).ok_or_else(|| bad("expires= missing or out of order"))?;
    let signature = parts
        .next()
        .and_then(|p| p.strip_prefix("signature="))
        .ok_or_else(|| bad("signature= missing or out of order"))?;
    if parts.next().is_some() {
        return Err(bad("unexpected field after signature="));
    }

    if credential != key {
        return Err(format!("{WRONG_KEY}: unknown credential"));
    }

    if expires.is_empty() || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("expires is not a UNIX time"));
    }
    let expires_at: u64 = expires.parse().map_err(|_| bad("expires out of range"))?;
    if expires_at <= now_unix {
        return Err(bad("expired"));
    }
    if expires_at - now_unix > MAX_EXPIRY_AHEAD_SECS {
        return Err(bad("expires too far in the future"));
    }

    // Query parameters: the single-valued ones, sorted by name, must be exactly the signed ones.
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        params.entry(name.into_owned()).or_default().push(value.into_owned());
    }
    let single: Vec<(&String, &String)> =
        params.iter().filter(|(_, values)| values.len() == 1).map(|(name, values)| (name, &values[0])).collect();
    let single_names: Vec<&str> = single.iter().map(|(n, _)| n.as_str()).collect();
    if single_names != signed_args {
        return Err(bad(&format!(
            "signed-query-args {signed_args:?} are not the single-valued query parameters \
             sorted by name {single_names:?}"
        )));
    }
    let query_values: String = single.iter().map(|(_, v)| v.as_str()).collect();

    let given = STANDARD.decode(signature).map_err(|_| bad("signature is not base64"))?;
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| bad("unusable secret"))?;
    mac.update(method.as_bytes());
    mac.update(b" ");
    mac.update(path.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac.update(b"\n");
    mac.update(query_values.as_bytes());
    mac.update(b"\n");
    mac.update(b""); // signed headers: none
    mac.update(b"\n");
    mac.update(expires.as_bytes());
    mac.verify_slice(&given) // constant-time comparison
        .map_err(|_| bad("signature mismatch"))
}

/// The message a failed verification shows the client.
fn public_message(error: &str) -> &'static str {
    if error.starts_with(WRONG_KEY) {
        WRONG_KEY
    } else {
        BAD_SIGNATURE
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

struct Shared {
    admin_key: String,
    admin_secret: String,
    state: Mutex<FakeState>,
}

struct RoleEntry {
    role: FakeRole,
    editable: bool,
    permissions: Vec<String>,
    assume_role_policy: Option<Value>,
    max_session_ttl: Option<i64>,
}

struct Operation {
    reference_id: String,
    link: String,
    command: String,
    pending_polls_left: u32,
}

struct FakeState {
    faults: Faults,
    legacy_enabled: bool,
    api_keys: Vec<FakeApiKey>,
    roles: Vec<RoleEntry>,
    access_keys: Vec<FakeAccessKey>,
    operations: HashMap<String, Operation>,
    issued_secrets: Vec<String>,
    requests: Vec<RequestRecord>,
    /// Requests being handled now, and the most there ever were at once.
    in_flight: u32,
    max_in_flight: u32,
    /// The most API keys that were ever live at once.
    max_live_api_keys: usize,
    fault_rng: StdRng,
}

impl Shared {
    fn new(admin_key: &str, admin_secret: &str) -> Self {
        let preexisting = RoleEntry {
            role: FakeRole {
                id: PREEXISTING_ROLE_ID.to_owned(),
                name: PREEXISTING_ROLE_NAME.to_owned(),
                description: Some("role that exists before the tests".to_owned()),
                labels: BTreeMap::new(),
                policy: json!({"default-service-strategy": "deny", "services": {"sos": {"type": "allow"}}}),
            },
            editable: true,
            permissions: Vec::new(),
            assume_role_policy: None,
            max_session_ttl: None,
        };
        Self {
            admin_key: admin_key.to_owned(),
            admin_secret: admin_secret.to_owned(),
            state: Mutex::new(FakeState {
                faults: Faults::default(),
                legacy_enabled: true,
                api_keys: Vec::new(),
                roles: vec![preexisting],
                access_keys: Vec::new(),
                operations: HashMap::new(),
                issued_secrets: Vec::new(),
                requests: Vec::new(),
                in_flight: 0,
                max_in_flight: 0,
                max_live_api_keys: 0,
                fault_rng: StdRng::seed_from_u64(0xE705_CA1E),
            }),
        }
    }

    /// The state; a panic elsewhere while holding the lock does not stop the fake.
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FakeState {
    /// Registers a pending operation and returns its JSON.
    fn new_operation(&mut self, reference_id: &str, link: String, command: &str) -> Value {
        let id = uuid::Uuid::new_v4().to_string();
        let op = Operation {
            reference_id: reference_id.to_owned(),
            link,
            command: command.to_owned(),
            pending_polls_left: self.faults.operations_pending_polls,
        };
        let body = operation_json(&id, "pending", &op);
        self.operations.insert(id, op);
        body
    }

    fn role(&self, id: &str) -> Option<&RoleEntry> {
        self.roles.iter().find(|r| r.role.id == id)
    }
}

fn operation_json(id: &str, state: &str, op: &Operation) -> Value {
    json!({
        "id": id,
        "state": state,
        "reference": {"id": op.reference_id, "link": op.link, "command": op.command},
    })
}

fn default_policy() -> Value {
    json!({"default-service-strategy": "allow", "services": {}})
}

/// `EXO` + 24 hex digits, like real keys.
fn new_key() -> String {
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    format!("EXO{}", hex::encode(bytes))
}

/// 43 characters of URL-safe base64.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Errors and body parsing
// ---------------------------------------------------------------------------------------------

struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
    fn invalid(why: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("invalid request: {why}"))
    }
    fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"message": self.message}))).into_response()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// A POST body: JSON object, declared as such, holding only `allowed` fields (nulls dropped).
fn json_object(headers: &HeaderMap, body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(ApiError::invalid("body must be a JSON object"));
    };
    object.retain(|_, v| !v.is_null());
    check_fields(&object, allowed, "body")?;
    Ok(object)
}

fn check_fields(object: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), ApiError> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::invalid(format!("unknown field `{unknown}` in {what}"))),
        None => Ok(()),
    }
}

fn string_field(object: &Map<String, Value>, field: &str, min: usize, max: usize) -> Result<Option<String>, ApiError> {
    match object.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => {
            let len = s.chars().count();
            if len < min || len > max {
                Err(ApiError::invalid(format!("`{field}` must be {min}..{max} characters long")))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(_) => Err(ApiError::invalid(format!("`{field}` must be a string"))),
    }
}

fn required_string(object: &Map<String, Value>, field: &str, min: usize, max: usize) -> Result<String, ApiError> {
    string_field(object, field, min, max)?.ok_or_else(|| ApiError::invalid(format!("`{field}` is required")))
}

fn string_array(value: Option<&Value>, field: &str) -> Result<Vec<String>, ApiError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let not_strings = || ApiError::invalid(format!("`{field}` must be an array of strings"));
    value
        .as_array()
        .ok_or_else(not_strings)?
        .iter()
        .map(|v| v.as_str().map(str::to_owned).ok_or_else(not_strings))
        .collect()
}

fn one_of(value: Option<&Value>, what: &str, allowed: &[&str]) -> Result<(), ApiError> {
    match value.and_then(Value::as_str) {
        Some(v) if allowed.contains(&v) => Ok(()),
        _ => Err(ApiError::invalid(format!("`{what}` must be one of {allowed:?}"))),
    }
}

/// `iam-policy`: `{"default-service-strategy": allow|deny, "services": {name: service}}`.
fn validate_policy(policy: &Value) -> Result<(), ApiError> {
    let policy = policy.as_object().ok_or_else(|| ApiError::invalid("`policy` must be an object"))?;
    check_fields(policy, &["default-service-strategy", "services"], "policy")?;
    one_of(policy.get("default-service-strategy"), "policy.default-service-strategy", &["allow", "deny"])?;
    let services = policy
        .get("services")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::invalid("`policy.services` must be an object"))?;
    for (name, service) in services {
        let what = format!("policy.services.{name}");
        let service = service.as_object().ok_or_else(|| ApiError::invalid(format!("`{what}` must be an object")))?;
        check_fields(service, &["type", "rules"], &what)?;
        one_of(service.get("type"), &format!("{what}.type"), &["allow", "deny", "rules"])?;
        let rules = match service.get("rules") {
            None if service.get("type").and_then(Value::as_str) == Some("rules") => {
                return Err(ApiError::invalid(format!("`{what}.rules` is required for type rules")))
            }
            None => continue,
            Some(rules) => {
                rules.as_array().ok_or_else(|| ApiError::invalid(format!("`{what}.rules` must be an array")))?
            }
        };
        for (i, rule) in rules.iter().enumerate() {
            let what = format!("{what}.rules[{i}]");
            let rule = rule.as_object().ok_or_else(|| ApiError::invalid(format!("`{what}` must be an object")))?;
            check_fields(rule, &["action", "expression", "resources"], &what)?;
            one_of(rule.get("action"), &format!("{what}.action"), &["allow", "deny"])?;
            match rule.get("expression").and_then(Value::as_str) {
                Some(e) if !e.trim().is_empty() => {}
                _ => return Err(ApiError::invalid(format!("`{what}.expression` must be a non-empty string"))),
            }
            string_array(rule.get("resources"), &format!("{what}.resources"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Router and gate (signature, faults, records)
// ---------------------------------------------------------------------------------------------

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v2/api-key", get(list_api_keys).post(create_api_key))
        .route("/v2/api-key/{key}", get(get_api_key).delete(delete_api_key))
        .route("/v2/iam-role", get(list_roles).post(create_role))
        .route("/v2/iam-role/{id}", get(get_role).delete(delete_role))
        .route("/v2/operation/{id}", get(get_operation))
        .route("/v2/access-key", get(list_access_keys).post(create_access_key))
        .route("/v2/access-key/{key}", get(get_access_key).delete(revoke_access_key))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Not found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
}

/// Runs before every handler: records the request, sleeps the latency, checks the signature,
/// then injects faults.
async fn gate(State(s): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let _in_flight = InFlight::enter(&s);
    let (parts, body) = request.into_parts();
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let (index, latency) = {
        let mut st = s.state();
        st.requests.push(RequestRecord {
            method: method.clone(),
            path: path.clone(),
            status: 0,
            at: Instant::now(),
            wall: std::time::SystemTime::now(),
            signature_ok: false,
        });
        (st.requests.len() - 1, st.faults.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let echo = s.state().faults.echo;
    let response = match to_bytes(body, MAX_BODY_BYTES).await {
        Err(_) => ApiError::invalid("body unreadable or larger than 1 MiB").into_response(),
        Ok(body) => match echo {
            Some(echo) => super::echoed_request(echo, &parts, &body),
            None => {
                let header = parts.headers.get(AUTHORIZATION).map(|v| v.to_str());
                let verdict = match header {
                    None => Err(format!("{BAD_SIGNATURE}: no Authorization header")),
                    Some(Err(_)) => Err(format!("{BAD_SIGNATURE}: Authorization is not ASCII")),
                    Some(Ok(header)) => {
                        verify_exo2(&method, &path, &query, &body, header, &s.admin_key, &s.admin_secret, now_unix())
                    }
                };
                match verdict {
                    Err(e) => ApiError::new(StatusCode::FORBIDDEN, public_message(&e)).into_response(),
                    Ok(()) => {
                        s.state().requests[index].signature_ok = true;
                        match injected_fault(&s) {
                            Some(fault) => fault,
                            None => next.run(Request::from_parts(parts, Body::from(body))).await,
                        }
                    }
                }
            }
        },
    };
    s.state().requests[index].status = response.status().as_u16();
    response
}

/// Counts a request as being handled until it is answered or its connection is dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(s: &Arc<Shared>) -> Self {
        let mut st = s.state();
        st.in_flight += 1;
        st.max_in_flight = st.max_in_flight.max(st.in_flight);
        drop(st);
        Self(s.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.in_flight = st.in_flight.saturating_sub(1);
    }
}

fn injected_fault(s: &Shared) -> Option<Response> {
    let mut st = s.state();
    let (error_rate, throttle_rate) = (st.faults.error_rate, st.faults.throttle_rate);
    if error_rate > 0.0 && st.fault_rng.random::<f64>() < error_rate {
        let (status, message) = match st.fault_rng.random_range(0..3) {
            0 => (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
            1 => (StatusCode::BAD_GATEWAY, "Bad gateway"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "Service unavailable"),
        };
        return Some(ApiError::new(status, message).into_response());
    }
    if throttle_rate > 0.0 && st.fault_rng.random::<f64>() < throttle_rate {
        return Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(RETRY_AFTER, "1")],
                Json(json!({"error": "rate limited", "retry_after": 1})),
            )
                .into_response(),
        );
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
// IAMv3 API keys
// ---------------------------------------------------------------------------------------------

fn api_key_json(k: &FakeApiKey) -> Value {
    json!({"name": k.name, "key": k.key, "role-id": k.role_id})
}

async fn list_api_keys(State(s): State<Arc<Shared>>) -> ApiResult {
    let st = s.state();
    let keys: Vec<Value> = st.api_keys.iter().map(api_key_json).collect();
    Ok(Json(json!({"api-keys": keys})))
}

async fn get_api_key(State(s): State<Arc<Shared>>, Path(key): Path<String>) -> ApiResult {
    let st = s.state();
    st.api_keys
        .iter()
        .find(|k| k.key == key)
        .map(|k| Json(api_key_json(k)))
        .ok_or_else(|| ApiError::not_found("API key"))
}

async fn create_api_key(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let body = json_object(&headers, &body, &["name", "role-id"])?;
    let name = required_string(&body, "name", 1, 255)?;
    let role_id = required_string(&body, "role-id", 1, 255)?;
    let created = {
        let mut st = s.state();
        if st.role(&role_id).is_none() {
            return Err(ApiError::invalid(format!("IAM Role {role_id} not found")));
        }
        let key = FakeApiKey { name, key: new_key(), role_id };
        let secret = new_secret();
        st.api_keys.push(key.clone());
        st.max_live_api_keys = st.max_live_api_keys.max(st.api_keys.len());
        st.issued_secrets.push(secret.clone());
        json!({"name": key.name, "key": key.key, "secret": secret, "role-id": key.role_id})
    };
    hang_if_asked(&s).await;
    Ok(Json(created))
}

async fn delete_api_key(State(s): State<Arc<Shared>>, Path(key): Path<String>) -> ApiResult {
    let mut st = s.state();
    let index = st.api_keys.iter().position(|k| k.key == key).ok_or_else(|| ApiError::not_found("API key"))?;
    st.api_keys.remove(index);
    Ok(Json(st.new_operation(&key, format!("/v2/api-key/{key}"), "get-api-key")))
}

// ---------------------------------------------------------------------------------------------
// IAM roles
// ---------------------------------------------------------------------------------------------

fn role_json(r: &RoleEntry) -> Value {
    let mut v = json!({
        "id": r.role.id,
        "name": r.role.name,
        "labels": r.role.labels,
        "policy": r.role.policy,
        "editable": r.editable,
        "permissions": r.permissions,
    });
    if let Some(description) = &r.role.description {
        v["description"] = json!(description);
    }
    if let Some(arp) = &r.assume_role_policy {
        v["assume-role-policy"] = arp.clone();
    }
    if let Some(ttl) = r.max_session_ttl {
        v["max-session-ttl"] = json!(ttl);
    }
    v
}

async fn list_roles(State(s): State<Arc<Shared>>) -> ApiResult {
    let st = s.state();
    let roles: Vec<Value> = st.roles.iter().map(role_json).collect();
    Ok(Json(json!({"iam-roles": roles})))
}

async fn get_role(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    let st = s.state();
    st.role(&id).map(|r| Json(role_json(r))).ok_or_else(|| ApiError::not_found("IAM Role"))
}

async fn create_role(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let body = json_object(
        &headers,
        &body,
        &[
            "name",
            "description",
            "permissions",
            "editable",
            "labels",
            "policy",
            "assume-role-policy",
            "max-session-ttl",
        ],
    )?;
    let name = required_string(&body, "name", 1, 191)?;
    let description = string_field(&body, "description", 1, 255)?;
    let permissions = string_array(body.get("permissions"), "permissions")?;
    for p in &permissions {
        if !["bypass-governance-retention", "reset-iam-organization-policy"].contains(&p.as_str()) {
            return Err(ApiError::invalid(format!("unknown permission `{p}`")));
        }
    }
    let editable = match body.get("editable") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("`editable` must be a boolean")),
    };
    let mut labels = BTreeMap::new();
    if let Some(value) = body.get("labels") {
        let object = value.as_object().ok_or_else(|| ApiError::invalid("`labels` must be an object"))?;
        for (k, v) in object {
            let v = v.as_str().ok_or_else(|| ApiError::invalid(format!("label `{k}` must be a string")))?;
            labels.insert(k.clone(), v.to_owned());
        }
    }
    let policy = match body.get("policy") {
        None => default_policy(),
        Some(policy) => {
            validate_policy(policy)?;
            policy.clone()
        }
    };
    let assume_role_policy = body.get("assume-role-policy").cloned();
    if assume_role_policy.as_ref().is_some_and(|v| !v.is_object()) {
        return Err(ApiError::invalid("`assume-role-policy` must be an object"));
    }
    let max_session_ttl = match body.get("max-session-ttl") {
        None => None,
        Some(v) => match v.as_i64() {
            Some(ttl) if ttl > 0 => Some(ttl),
            _ => return Err(ApiError::invalid("`max-session-ttl` must be a positive integer")),
        },
    };

    let id = uuid::Uuid::new_v4().to_string();
    let mut st = s.state();
    st.roles.push(RoleEntry {
        role: FakeRole { id: id.clone(), name, description, labels, policy },
        editable,
        permissions,
        assume_role_policy,
        max_session_ttl,
    });
    Ok(Json(st.new_operation(&id, format!("/v2/iam-role/{id}"), "get-iam-role")))
}

async fn delete_role(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    let mut st = s.state();
    let index = st.roles.iter().position(|r| r.role.id == id).ok_or_else(|| ApiError::not_found("IAM Role"))?;
    if st.api_keys.iter().any(|k| k.role_id == id) {
        return Err(ApiError::new(StatusCode::CONFLICT, "role is in use"));
    }
    st.roles.remove(index);
    Ok(Json(st.new_operation(&id, format!("/v2/iam-role/{id}"), "get-iam-role")))
}

// ---------------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------------

async fn get_operation(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    let mut st = s.state();
    let op = st.operations.get_mut(&id).ok_or_else(|| ApiError::not_found("Operation"))?;
    let state = if op.pending_polls_left > 0 {
        op.pending_polls_left -= 1;
        "pending"
    } else {
        "success"
    };
    Ok(Json(operation_json(&id, state, op)))
}

// ---------------------------------------------------------------------------------------------
// Legacy IAMv2 access keys
// ---------------------------------------------------------------------------------------------

fn legacy_gate(s: &Shared) -> Result<(), ApiError> {
    if s.state().legacy_enabled {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::BAD_REQUEST, LEGACY_DISABLED_MESSAGE))
    }
}

fn access_key_json(k: &FakeAccessKey) -> Value {
    json!({
        "name": k.name,
        "key": k.key,
        "type": "restricted",
        "version": "v2",
        "tags": k.tags,
        "operations": k.operations,
        "resources": k.resources,
    })
}

fn validate_resources(value: Option<&Value>) -> Result<Value, ApiError> {
    let Some(value) = value else {
        return Ok(json!([]));
    };
    let resources = value.as_array().ok_or_else(|| ApiError::invalid("`resources` must be an array"))?;
    for (i, resource) in resources.iter().enumerate() {
        let what = format!("resources[{i}]");
        let object = resource.as_object().ok_or_else(|| ApiError::invalid(format!("`{what}` must be an object")))?;
        check_fields(object, &["domain", "resource-type", "resource-name"], &what)?;
        one_of(object.get("domain"), &format!("{what}.domain"), &["partner", "sos"])?;
        one_of(object.get("resource-type"), &format!("{what}.resource-type"), &["bucket", "product"])?;
        match object.get("resource-name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => {}
            _ => return Err(ApiError::invalid(format!("`{what}.resource-name` must be a non-empty string"))),
        }
    }
    Ok(value.clone())
}

async fn list_access_keys(State(s): State<Arc<Shared>>) -> ApiResult {
    legacy_gate(&s)?;
    let st = s.state();
    let keys: Vec<Value> = st.access_keys.iter().map(access_key_json).collect();
    Ok(Json(json!({"access-keys": keys})))
}

async fn get_access_key(State(s): State<Arc<Shared>>, Path(key): Path<String>) -> ApiResult {
    legacy_gate(&s)?;
    let st = s.state();
    st.access_keys
        .iter()
        .find(|k| k.key == key)
        .map(|k| Json(access_key_json(k)))
        .ok_or_else(|| ApiError::not_found("Access key"))
}

async fn create_access_key(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    legacy_gate(&s)?;
    let body = json_object(&headers, &body, &["name", "tags", "operations", "resources"])?;
    let name = required_string(&body, "name", 1, 255)?;
    let tags = string_array(body.get("tags"), "tags")?;
    let operations = string_array(body.get("operations"), "operations")?;
    let resources = validate_resources(body.get("resources"))?;
    let created = {
        let mut st = s.state();
        let key = FakeAccessKey { name, key: new_key(), operations, tags, resources };
        let secret = new_secret();
        st.access_keys.push(key.clone());
        st.issued_secrets.push(secret.clone());
        let mut v = access_key_json(&key);
        v["secret"] = json!(secret);
        v
    };
    hang_if_asked(&s).await;
    Ok(Json(created))
}

async fn revoke_access_key(State(s): State<Arc<Shared>>, Path(key): Path<String>) -> ApiResult {
    legacy_gate(&s)?;
    let mut st = s.state();
    let index = st.access_keys.iter().position(|k| k.key == key).ok_or_else(|| ApiError::not_found("Access key"))?;
    st.access_keys.remove(index);
    Ok(Json(st.new_operation(&key, format!("/v2/access-key/{key}"), "get-access-key")))
}
