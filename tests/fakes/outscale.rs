//! A fake OUTSCALE OSC API (the access-key calls) for the integration tests.
//!
//! A real HTTP server on `127.0.0.1:<free port>`, serving on a dedicated OS thread with its own
//! tokio runtime, so it outlives any one `#[tokio::test]` runtime and keeps serving while
//! operator processes come and go. Every call is `POST /api/v1/{Call}` with a JSON body and
//! must be signed, in either form the real API accepts: `OSC4-HMAC-SHA256` (`X-Osc-Date`,
//! scope `…/osc4_request`) or `AWS4-HMAC-SHA256` (`X-Amz-Date`, scope `…/aws4_request`), with
//! the fake's region and a service in [`ACCEPTED_SERVICES`]. Signatures are checked by
//! [`verify_signature`], written here independently of the operator's signer.
//!
//! Any ACTIVE, unexpired key the fake knows signs requests, not just the admin key given to
//! [`OutscaleFake::start`] (a key of the root account): a key it issued acts as its owner, the
//! root account or an EIM user. So a test can check that an issued key works, and that a
//! revoked one no longer does.
//!
//! Shapes follow OUTSCALE's OSC API reference (<https://docs.outscale.com/api.html>, the access-key
//! calls) and its spec (`outscale.yaml` v1.41).
//! Error bodies are `{"Errors":[{"Code","Type","Details"}],"ResponseContext":{"RequestId"}}`.
//! Where the real API is not documented, the fake chooses (codes from the Python SDK's
//! `gateway_errors.yaml` where one fits):
//! - bad or unknown credentials, or a key INACTIVE or expired: 401, code 1 `AccessDenied`;
//!   with [`OutscaleFake::set_brute_force_lockout`], four failures in a row for one access key
//!   lock it out (401, code 13) for one minute more per four failures, up to ten minutes;
//! - a field the spec does not list: 400, code 3001 `InvalidParameter`; a field of the wrong
//!   JSON type, or an empty `ExpirationDate`: 400, code 4108 `InvalidParameterType` ("The
//!   parameter type of ExpirationDate is unknown.", as the real API says); a missing required
//!   field: 400, code 7000 `MissingParameter`; a bad value (a `State` other than
//!   ACTIVE/INACTIVE, an unreadable or past `ExpirationDate`): 400, code 4047
//!   `InvalidParameterValue`;
//! - an access key unknown to the identity addressed (the caller, or `UserName`): 400,
//!   code 4000 `InvalidParameterValue` `access-keys-not-found`; an unknown `UserName`: 400,
//!   code 5075 `InvalidResource` `no-such-user`;
//! - deleting an EIM user's key that is not INACTIVE: 409, code 6003 `InvalidState`;
//! - an 11th key for one identity ([`KEY_QUOTA`], INACTIVE keys count): 400, code 10005
//!   `TooManyResources (QuotaExceded)` `too-many-accesskeys`;
//! - an unknown call: 404, code 5011 `InvalidResource` `no-such-call`.
//!
//! `UpdateAccessKey` behaves as the spec warns: a call without `ExpirationDate` makes the key
//! non-expiring. Deleting the root account's last key creates a new one, as the real API does.
//! Dates are written like the real API, `2010-10-01T12:34:56.789+0000`, and read leniently
//! (RFC 3339, `+0000` offsets, or a bare date). `ReadAccessKeys` filters: `Filters.AccessKeyIds`
//! and `Filters.States` (an empty list filters nothing), `Tag` (the whole tag), `UserName`.
//!
//! Faults are drawn after the signature check, from a seeded generator: first the error draw
//! (503, code 6), then the throttle draw (429, code 24 or 25). Latency is slept before anything
//! else, for every request. A request's [`RequestRecord::status`] is 0 until it is answered (so
//! for ever for a create held by [`Faults::hang_creates`]).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Scope service names accepted (`api` is the documented one; the SDKs also use these).
pub const ACCEPTED_SERVICES: &[&str] = &["api", "oapi", "osc"];
/// How far a request's date may be from the fake's clock (the real limit).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Keys per identity (the root account, or one EIM user).
pub const KEY_QUOTA: usize = 10;

const MAX_BODY_BYTES: usize = 1 << 20;
const API_PREFIX: &str = "/api/v1/";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeKey {
    pub access_key_id: String,
    /// The EIM user owning the key; `None` for the root account.
    pub user_name: Option<String>,
    /// `ACTIVE` or `INACTIVE`.
    pub state: String,
    /// As the API shows it, e.g. `2063-04-05T00:00:00.000+0000`; `None` = never expires.
    pub expiration_date: Option<String>,
    pub tag: Option<String>,
}

/// The signature scheme of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Osc4,
    Aws4,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Osc4 => "OSC4",
            Scheme::Aws4 => "AWS4",
        }
    }

    fn algorithm(self) -> &'static str {
        match self {
            Scheme::Osc4 => "OSC4-HMAC-SHA256",
            Scheme::Aws4 => "AWS4-HMAC-SHA256",
        }
    }

    fn date_header(self) -> &'static str {
        match self {
            Scheme::Osc4 => "x-osc-date",
            Scheme::Aws4 => "x-amz-date",
        }
    }

    fn terminator(self) -> &'static str {
        match self {
            Scheme::Osc4 => "osc4_request",
            Scheme::Aws4 => "aws4_request",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// The call, the last path segment (e.g. `CreateAccessKey`).
    pub action: String,
    pub path: String,
    /// 0 while the request has not been answered.
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
    pub signature_ok: bool,
    /// `"OSC4"`, `"AWS4"`, or `""` when the `Authorization` header names neither.
    pub scheme: &'static str,
    /// The access key named by the credential, when there is one.
    pub access_key_id: Option<String>,
    /// The request body (`Null` when empty or not JSON). Requests never carry secret keys.
    pub body: Value,
}

#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Slept before handling every request.
    pub latency: Duration,
    /// Fraction of requests answered 503, code 6 (ErrorOperationThrottled), without acting.
    pub error_rate: f64,
    /// Fraction of requests answered 429, code 24 or 25, without acting.
    pub throttle_rate: f64,
    /// `CreateAccessKey` creates the key but never answers.
    pub hang_creates: bool,
    /// Every request is answered 401, code 1, as if the credentials had been revoked.
    pub reject_credentials: bool,
    /// Every request is answered by a proxy that echoes it, signature included.
    pub echo: Option<super::Echo>,
    /// `CreateAccessKey` ignores `Tag`, as API versions before 1.34.3 do.
    pub drop_tags: bool,
}

/// The fake server. Dropping it stops the server.
pub struct OutscaleFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: super::Server,
}

impl OutscaleFake {
    /// Starts the fake on `127.0.0.1:<free port>` for `region`; the admin key is a key of the
    /// root account.
    pub fn start(region: &str, admin_access_key: &str, admin_secret_key: &str) -> Self {
        let shared = Arc::new(Shared::new(region, admin_access_key, admin_secret_key));
        let server = super::Server::start("outscale", router(shared.clone()));
        Self { addr: server.addr, shared, server }
    }

    /// Base URL including `/api/v1`, e.g. `http://127.0.0.1:41234/api/v1`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    pub fn region(&self) -> String {
        self.shared.region.clone()
    }

    /// Registers an EIM user that keys can be created for.
    pub fn add_user(&self, user_name: &str) {
        self.shared.state().users.insert(user_name.to_owned());
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.state().faults = faults;
    }

    /// Off by default, so that a test with bad credentials does not slow the next one down.
    pub fn set_brute_force_lockout(&self, enabled: bool) {
        let mut st = self.shared.state();
        st.lockout_enabled = enabled;
        st.failures.clear();
    }

    /// Every key that exists, the admin key included (it has no tag and no user).
    pub fn live_keys(&self) -> Vec<FakeKey> {
        self.shared.state().keys.iter().map(KeyEntry::view).collect()
    }

    /// Keys deleted through `DeleteAccessKey`, as they were just before deletion.
    pub fn deleted_keys(&self) -> Vec<FakeKey> {
        self.shared.state().deleted.clone()
    }

    /// Every secret key the fake ever returned.
    pub fn issued_secrets(&self) -> Vec<String> {
        self.shared.state().issued_secrets.clone()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.state().requests.clone()
    }

    /// Sets a key's expiration date directly, as `UpdateAccessKey` by hand would.
    pub fn set_expiration_by_hand(&self, access_key_id: &str, at: Timestamp) {
        let mut st = self.shared.state();
        if let Some(key) = st.keys.iter_mut().find(|k| k.id == access_key_id) {
            key.expiration = Some(at);
        }
    }

    /// Moves a key's expiration date one second into the past: it no longer signs requests,
    /// and stays listed.
    pub fn expire_key(&self, access_key_id: &str) {
        let mut st = self.shared.state();
        if let Some(key) = st.keys.iter_mut().find(|k| k.id == access_key_id) {
            key.expiration = Some(Timestamp::now() - jiff::SignedDuration::from_secs(1));
        }
    }

    /// Adds an ACTIVE key directly (e.g. one the operator does not own); returns it and its
    /// secret key. The user is registered if it is new.
    /// Deactivates a key directly (it stops signing), as someone at the console would; `false`
    /// if there was none.
    pub fn deactivate_key_by_hand(&self, access_key_id: &str) -> bool {
        let mut st = self.shared.state();
        let key = st.keys.iter_mut().find(|k| k.id == access_key_id);
        key.map(|k| k.state = "INACTIVE").is_some()
    }

    pub fn add_key(&self, user_name: Option<&str>, tag: Option<&str>) -> (FakeKey, String) {
        let mut st = self.shared.state();
        if let Some(user) = user_name {
            st.users.insert(user.to_owned());
        }
        let entry = KeyEntry::new(user_name.map(str::to_owned), None, tag.map(str::to_owned));
        let view = entry.view();
        let secret = entry.secret.clone();
        st.keys.push(entry);
        (view, secret)
    }
}

// ---------------------------------------------------------------------------------------------
// Signature verification
// ---------------------------------------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

/// What the verifier needs of a request. `path` is the raw (escaped) path, `query` the raw
/// query without `?` (empty when none), `headers` as received (a `Host` header included).
pub struct SignedRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// A request whose signature checked out.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub scheme: Scheme,
    pub access_key_id: String,
}

/// Why a signature was refused, with whatever could be read of the header.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthFailure {
    pub scheme: Option<Scheme>,
    pub access_key_id: Option<String>,
    pub reason: String,
}

/// Checks the `Authorization` header of `request` (either scheme). `secret_of` gives the
/// secret key of an access key that may sign, `None` for an unknown one.
pub fn verify_signature(
    request: &SignedRequest<'_>,
    region: &str,
    services: &[&str],
    secret_of: impl Fn(&str) -> Option<String>,
    now: Timestamp,
) -> Result<Verified, AuthFailure> {
    let mut failure = AuthFailure { scheme: None, access_key_id: None, reason: String::new() };
    let fail = |mut f: AuthFailure, why: String| {
        f.reason = why;
        Err(f)
    };
    let Some(header) = request.headers.get(AUTHORIZATION) else {
        return fail(failure, "no Authorization header".into());
    };
    let Ok(header) = header.to_str() else {
        return fail(failure, "Authorization is not ASCII".into());
    };
    let (algorithm, rest) = header.split_once(' ').unwrap_or((header, ""));
    let scheme = match algorithm {
        "OSC4-HMAC-SHA256" => Scheme::Osc4,
        "AWS4-HMAC-SHA256" => Scheme::Aws4,
        other => return fail(failure, format!("unknown algorithm {other:?}")),
    };
    failure.scheme = Some(scheme);

    // `Credential=…, SignedHeaders=…, Signature=…`, in this order (as every client sends it).
    let mut fields = rest.split(',').map(str::trim);
    let mut field = |name: &str| {
        fields.next().and_then(|f| f.strip_prefix(name)).and_then(|f| f.strip_prefix('=')).map(str::to_owned)
    };
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (field("Credential"), field("SignedHeaders"), field("Signature"))
    else {
        return fail(failure, "expected Credential=, SignedHeaders=, Signature=".into());
    };
    if fields.next().is_some() {
        return fail(failure, "unexpected field after Signature=".into());
    }
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, day, scope_region, service, terminator] = scope[..] else {
        return fail(failure, "Credential must be key/date/region/service/terminator".into());
    };
    failure.access_key_id = Some(access_key.to_owned());
    if terminator != scheme.terminator() {
        return fail(failure, format!("scope must end in {}", scheme.terminator()));
    }
    if scope_region != region {
        return fail(failure, format!("scope region {scope_region:?} is not {region:?}"));
    }
    if !services.contains(&service) {
        return fail(failure, format!("scope service {service:?} is not one of {services:?}"));
    }

    let names: Vec<&str> = signed_headers.split(';').collect();
    let sorted_unique = names.windows(2).all(|w| w[0] < w[1]);
    if names.iter().any(|n| n.is_empty() || *n != n.to_ascii_lowercase()) || !sorted_unique {
        return fail(failure, "SignedHeaders must be lowercase, sorted and unique".into());
    }
    for required in ["host", scheme.date_header()] {
        if !names.contains(&required) {
            return fail(failure, format!("{required} is not signed"));
        }
    }

    let Some(date) = header_value(request.headers, scheme.date_header()) else {
        return fail(failure, format!("no {} header", scheme.date_header()));
    };
    let Some(signed_at) = parse_basic_time(&date) else {
        return fail(failure, format!("{} is not YYYYMMDDTHHMMSSZ", scheme.date_header()));
    };
    if date[..8] != *day {
        return fail(failure, "scope date is not the request's date".into());
    }
    let skew = now.duration_since(signed_at).unsigned_abs();
    if skew > MAX_CLOCK_SKEW {
        return fail(failure, format!("request date is {} s away from now", skew.as_secs()));
    }

    let body_hash = hex::encode(Sha256::digest(request.body));
    if scheme == Scheme::Aws4 {
        if let Some(declared) = header_value(request.headers, "x-amz-content-sha256") {
            if declared != body_hash {
                return fail(failure, "x-amz-content-sha256 is not the body's hash".into());
            }
        }
    }
    let mut canonical = format!("{}\n{}\n{}\n", request.method, request.path, canonical_query(request.query));
    for name in &names {
        let Some(value) = header_value(request.headers, name) else {
            return fail(failure, format!("signed header {name} is missing"));
        };
        canonical.push_str(&format!("{name}:{value}\n"));
    }
    canonical.push_str(&format!("\n{signed_headers}\n{body_hash}"));
    let to_sign = format!(
        "{}\n{date}\n{day}/{region}/{service}/{terminator}\n{}",
        scheme.algorithm(),
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );

    let Some(secret) = secret_of(access_key) else {
        return fail(failure, "unknown or unusable access key".into());
    };
    let Ok(given) = hex::decode(&signature) else {
        return fail(failure, "Signature is not hex".into());
    };
    let prefix = match scheme {
        Scheme::Osc4 => "OSC4",
        Scheme::Aws4 => "AWS4",
    };
    let mut key = hmac(format!("{prefix}{secret}").as_bytes(), day.as_bytes());
    for part in [region, service, terminator] {
        key = hmac(&key, part.as_bytes());
    }
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    if mac.verify_slice(&given).is_err() {
        // Constant-time comparison above; the reason stays vague, as a server's would.
        return fail(failure, "signature mismatch".into());
    }
    Ok(Verified { scheme, access_key_id: access_key.to_owned() })
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The values of a header, trimmed, inner runs of spaces collapsed, joined by `,`.
fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// `YYYYMMDDTHHMMSSZ`
fn parse_basic_time(text: &str) -> Option<Timestamp> {
    if text.len() != 16 || !text.ends_with('Z') {
        return None;
    }
    jiff::fmt::strtime::parse("%Y%m%dT%H%M%SZ", text)
        .ok()?
        .to_datetime()
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// SigV4's canonical query: each name and value decoded, re-encoded (RFC 3986 unreserved
/// characters kept), sorted by name then value, joined by `&`.
fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(name)), encode(&decode(value)))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("&")
}

fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_pair = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok().and_then(|h| u8::from_str_radix(h, 16).ok()));
        match (bytes[i], hex_pair) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Dates
// ---------------------------------------------------------------------------------------------

/// How the real API writes dates: `2010-10-01T12:34:56.789+0000`.
pub fn api_time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

/// Dates the fake accepts: RFC 3339, a `+HHMM` offset, or a bare `YYYY-MM-DD` (midnight UTC).
pub fn parse_api_time(text: &str) -> Option<Timestamp> {
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Some(ts);
    }
    if let Ok(ts) = jiff::fmt::strtime::parse("%Y-%m-%dT%H:%M:%S%.f%z", text).and_then(|t| t.to_timestamp()) {
        return Some(ts);
    }
    if text.len() == 10 {
        let date: jiff::civil::Date = text.parse().ok()?;
        return date.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp());
    }
    None
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

struct Shared {
    region: String,
    state: Mutex<FakeState>,
}

struct KeyEntry {
    id: String,
    secret: String,
    user: Option<String>,
    state: &'static str,
    expiration: Option<Timestamp>,
    tag: Option<String>,
    created: Timestamp,
    modified: Timestamp,
}

impl KeyEntry {
    fn new(user: Option<String>, expiration: Option<Timestamp>, tag: Option<String>) -> Self {
        let now = Timestamp::now();
        Self {
            id: random_text(20),
            secret: random_text(40),
            user,
            state: "ACTIVE",
            expiration,
            tag,
            created: now,
            modified: now,
        }
    }

    fn view(&self) -> FakeKey {
        FakeKey {
            access_key_id: self.id.clone(),
            user_name: self.user.clone(),
            state: self.state.to_owned(),
            expiration_date: self.expiration.map(api_time),
            tag: self.tag.clone(),
        }
    }

    /// `AccessKey` as `ReadAccessKeys` and `UpdateAccessKey` return it.
    fn json(&self) -> Value {
        let mut v = json!({
            "AccessKeyId": self.id,
            "State": self.state,
            "CreationDate": api_time(self.created),
            "LastModificationDate": api_time(self.modified),
        });
        if let Some(at) = self.expiration {
            v["ExpirationDate"] = json!(api_time(at));
        }
        if let Some(tag) = &self.tag {
            v["Tag"] = json!(tag);
        }
        v
    }

    fn usable(&self, now: Timestamp) -> bool {
        self.state == "ACTIVE" && self.expiration.is_none_or(|at| at > now)
    }
}

#[derive(Default)]
struct Failures {
    in_a_row: u32,
    locked_until: Option<Instant>,
}

struct FakeState {
    faults: Faults,
    users: BTreeSet<String>,
    keys: Vec<KeyEntry>,
    deleted: Vec<FakeKey>,
    issued_secrets: Vec<String>,
    requests: Vec<RequestRecord>,
    fault_rng: StdRng,
    lockout_enabled: bool,
    failures: HashMap<String, Failures>,
}

impl Shared {
    fn new(region: &str, admin_key: &str, admin_secret: &str) -> Self {
        let mut admin = KeyEntry::new(None, None, None);
        admin.id = admin_key.to_owned();
        admin.secret = admin_secret.to_owned();
        Self {
            region: region.to_owned(),
            state: Mutex::new(FakeState {
                faults: Faults::default(),
                users: BTreeSet::new(),
                keys: vec![admin],
                deleted: Vec::new(),
                issued_secrets: Vec::new(),
                requests: Vec::new(),
                fault_rng: StdRng::seed_from_u64(0x0575_CA1E),
                lockout_enabled: false,
                failures: HashMap::new(),
            }),
        }
    }

    /// The state; a panic elsewhere while holding the lock does not stop the fake.
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Upper-case letters and digits, like real access and secret keys.
fn random_text(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

// ---------------------------------------------------------------------------------------------
// Errors and body parsing
// ---------------------------------------------------------------------------------------------

struct ApiError {
    status: StatusCode,
    code: &'static str,
    kind: &'static str,
    details: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, kind: &'static str, details: impl Into<String>) -> Self {
        Self { status, code, kind, details: details.into() }
    }
    fn auth(details: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "1", "AccessDenied", details)
    }
    fn unknown_field(field: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "3001",
            "InvalidParameter",
            format!("The parameter {field} is not supported."),
        )
    }
    fn wrong_type(field: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "4108",
            "InvalidParameterType",
            format!("The parameter type of {field} is unknown."),
        )
    }
    fn missing(field: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "7000", "MissingParameter", format!("The parameter {field} is required."))
    }
    fn bad_value(details: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "4047", "InvalidParameterValue", details)
    }
    fn key_not_found(id: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "4000", "InvalidParameterValue", format!("access-keys-not-found: {id}"))
    }
    fn no_such_user(user: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "5075", "InvalidResource", format!("no-such-user: {user}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, self.kind, &self.details)
    }
}

fn response_context() -> Value {
    json!({"RequestId": uuid::Uuid::new_v4().to_string()})
}

fn error_response(status: StatusCode, code: &str, kind: &str, details: &str) -> Response {
    let body = json!({
        "Errors": [{"Code": code, "Type": kind, "Details": details}],
        "ResponseContext": response_context(),
    });
    (status, Json(body)).into_response()
}

type ApiResult = Result<Json<Value>, ApiError>;

/// A request body: a JSON object (empty = `{}`) holding only `allowed` fields.
fn json_object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad_value(format!("malformed JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(ApiError::bad_value("the body must be a JSON object"));
    };
    check_fields(&object, allowed)?;
    Ok(object)
}

fn check_fields(object: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::unknown_field(unknown)),
        None => Ok(()),
    }
}

fn string_field(object: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match object.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::wrong_type(field)),
    }
}

fn bool_field(object: &Map<String, Value>, field: &str) -> Result<bool, ApiError> {
    match object.get(field) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::wrong_type(field)),
    }
}

fn string_list(object: &Map<String, Value>, field: &str) -> Result<Vec<String>, ApiError> {
    match object.get(field) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            items.iter().map(|v| v.as_str().map(str::to_owned).ok_or_else(|| ApiError::wrong_type(field))).collect()
        }
        Some(_) => Err(ApiError::wrong_type(field)),
    }
}

/// `ExpirationDate`: a non-empty date or date-time, in the future.
fn expiration_field(object: &Map<String, Value>, now: Timestamp) -> Result<Option<Timestamp>, ApiError> {
    match string_field(object, "ExpirationDate")? {
        None => Ok(None),
        // What the real API answers to `"ExpirationDate": ""` (terraform-provider-outscale#342).
        Some(text) if text.is_empty() => Err(ApiError::wrong_type("ExpirationDate")),
        Some(text) => {
            let at = parse_api_time(&text)
                .ok_or_else(|| ApiError::bad_value(format!("ExpirationDate {text:?} is not an ISO 8601 date")))?;
            if at <= now {
                return Err(ApiError::bad_value(format!("ExpirationDate {text:?} is not in the future")));
            }
            Ok(Some(at))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Router and gate (signature, faults, records)
// ---------------------------------------------------------------------------------------------

/// Who signed the request: the root account (`None`) or an EIM user.
#[derive(Clone)]
struct Caller(Option<String>);

fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(dispatch).layer(middleware::from_fn_with_state(shared.clone(), gate)).with_state(shared)
}

/// Runs before every call: records the request, sleeps the latency, checks the signature,
/// then injects faults.
async fn gate(State(s): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let action = path.rsplit('/').next().unwrap_or("").to_owned();
    let (index, latency) = {
        let mut st = s.state();
        st.requests.push(RequestRecord {
            action,
            path: path.clone(),
            status: 0,
            at: Instant::now(),
            signature_ok: false,
            scheme: "",
            access_key_id: None,
            body: Value::Null,
        });
        (st.requests.len() - 1, st.faults.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    let body = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            let response = ApiError::bad_value("body unreadable or larger than 1 MiB").into_response();
            s.state().requests[index].status = response.status().as_u16();
            return response;
        }
    };
    let echo = s.state().faults.echo;
    if let Some(echo) = echo {
        let response = super::echoed_request(echo, &parts, &body);
        s.state().requests[index].status = response.status().as_u16();
        return response;
    }
    let now = Timestamp::now();
    let verdict = {
        let st = s.state();
        verify_signature(
            &SignedRequest {
                method: parts.method.as_str(),
                path: &path,
                query: &query,
                headers: &parts.headers,
                body: &body,
            },
            &s.region,
            ACCEPTED_SERVICES,
            |ak| st.keys.iter().find(|k| k.id == ak && k.usable(now)).map(|k| k.secret.clone()),
            now,
        )
    };
    {
        let mut st = s.state();
        let record = &mut st.requests[index];
        record.body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (scheme, key) = match &verdict {
            Ok(v) => (Some(v.scheme), Some(v.access_key_id.clone())),
            Err(f) => (f.scheme, f.access_key_id.clone()),
        };
        record.scheme = scheme.map_or("", Scheme::as_str);
        record.access_key_id = key;
    }

    let response = match authorize(&s, verdict) {
        Err(e) => e.into_response(),
        Ok(caller) => {
            s.state().requests[index].signature_ok = true;
            match injected_fault(&s) {
                Some(fault) => fault,
                None => {
                    parts.extensions.insert(caller);
                    next.run(Request::from_parts(parts, Body::from(body))).await
                }
            }
        }
    };
    s.state().requests[index].status = response.status().as_u16();
    response
}

/// Turns a verdict into the caller, applying the credential fault and the lockout.
fn authorize(s: &Shared, verdict: Result<Verified, AuthFailure>) -> Result<Caller, ApiError> {
    let mut st = s.state();
    let key = match &verdict {
        Ok(v) => Some(v.access_key_id.clone()),
        Err(f) => f.access_key_id.clone(),
    };
    if st.lockout_enabled {
        if let Some(locked_until) = key.as_ref().and_then(|k| st.failures.get(k)).and_then(|f| f.locked_until) {
            if Instant::now() < locked_until {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "13",
                    "AccessDenied",
                    "ErrorTemporaryBruteForceAccessLockedException",
                ));
            }
        }
    }
    let result = if st.faults.reject_credentials {
        Err("credentials rejected (fault injection)".to_owned())
    } else {
        verdict.map_err(|f| f.reason)
    };
    match result {
        Ok(v) => {
            st.failures.remove(&v.access_key_id);
            let owner = st.keys.iter().find(|k| k.id == v.access_key_id).and_then(|k| k.user.clone());
            Ok(Caller(owner))
        }
        Err(reason) => {
            if let Some(key) = key {
                let lockout = st.lockout_enabled;
                let failures = st.failures.entry(key).or_default();
                failures.in_a_row += 1;
                if lockout && failures.in_a_row.is_multiple_of(4) {
                    let minutes = u64::from((failures.in_a_row / 4).min(10));
                    failures.locked_until = Some(Instant::now() + Duration::from_secs(60 * minutes));
                }
            }
            Err(ApiError::auth(format!("ErrorAuthenticationFailed: {reason}")))
        }
    }
}

fn injected_fault(s: &Shared) -> Option<Response> {
    let mut st = s.state();
    let (error_rate, throttle_rate) = (st.faults.error_rate, st.faults.throttle_rate);
    if error_rate > 0.0 && st.fault_rng.random::<f64>() < error_rate {
        return Some(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "6",
            "AccessDenied",
            "ErrorOperationThrottled: Request rate exceeded.",
        ));
    }
    if throttle_rate > 0.0 && st.fault_rng.random::<f64>() < throttle_rate {
        let (code, details) = if st.fault_rng.random::<bool>() {
            ("24", "ErrorOperationThrottledPerAccount: Request rate exceeded.")
        } else {
            ("25", "ErrorOperationThrottledPerCall: Request rate exceeded.")
        };
        return Some(error_response(StatusCode::TOO_MANY_REQUESTS, code, "AccessDenied", details));
    }
    None
}

async fn dispatch(State(s): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let caller = parts.extensions.get::<Caller>().cloned().unwrap_or(Caller(None));
    let body = to_bytes(body, MAX_BODY_BYTES).await.unwrap_or_default();
    let call = parts.uri.path().strip_prefix(API_PREFIX).unwrap_or("");
    if parts.method != axum::http::Method::POST {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "5011", "InvalidResource", "calls are POST requests");
    }
    let result = match call {
        "CreateAccessKey" => create_access_key(&s, &caller, &body).await,
        "ReadAccessKeys" => read_access_keys(&s, &caller, &body),
        "UpdateAccessKey" => update_access_key(&s, &caller, &body),
        "DeleteAccessKey" => delete_access_key(&s, &caller, &body),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "5011",
            "InvalidResource",
            format!("no-such-call: {}", parts.uri.path()),
        )),
    };
    match result {
        Ok(json) => json.into_response(),
        Err(e) => e.into_response(),
    }
}

/// The identity a call addresses: `UserName` if given (it must exist), else the caller.
fn identity(st: &FakeState, caller: &Caller, user_name: Option<String>) -> Result<Option<String>, ApiError> {
    match user_name {
        Some(user) if !st.users.contains(&user) => Err(ApiError::no_such_user(&user)),
        Some(user) => Ok(Some(user)),
        None => Ok(caller.0.clone()),
    }
}

// ---------------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------------

async fn create_access_key(s: &Shared, caller: &Caller, body: &[u8]) -> ApiResult {
    let body = json_object(body, &["DryRun", "ExpirationDate", "Tag", "UserName"])?;
    let dry_run = bool_field(&body, "DryRun")?;
    let now = Timestamp::now();
    let expiration = expiration_field(&body, now)?;
    let tag = string_field(&body, "Tag")?;
    let user_name = string_field(&body, "UserName")?;
    let created = {
        let mut st = s.state();
        let owner = identity(&st, caller, user_name)?;
        if dry_run {
            return Ok(Json(json!({"ResponseContext": response_context()})));
        }
        if st.keys.iter().filter(|k| k.user == owner).count() >= KEY_QUOTA {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "10005",
                "TooManyResources (QuotaExceded)",
                format!("too-many-accesskeys: the limit is {KEY_QUOTA} access keys per user"),
            ));
        }
        let tag = if st.faults.drop_tags { None } else { tag };
        let entry = KeyEntry::new(owner, expiration, tag);
        let mut key = entry.json();
        key["SecretKey"] = json!(entry.secret);
        st.issued_secrets.push(entry.secret.clone());
        st.keys.push(entry);
        json!({"AccessKey": key, "ResponseContext": response_context()})
    };
    let hang = s.state().faults.hang_creates;
    if hang {
        // Never answers (the key was created); dropped with the connection or the fake.
        std::future::pending::<()>().await;
    }
    Ok(Json(created))
}

fn read_access_keys(s: &Shared, caller: &Caller, body: &[u8]) -> ApiResult {
    let body = json_object(body, &["DryRun", "Filters", "Tag", "UserName"])?;
    let filters = match body.get("Filters") {
        None => Map::new(),
        Some(Value::Object(f)) => f.clone(),
        Some(_) => return Err(ApiError::wrong_type("Filters")),
    };
    check_fields(&filters, &["AccessKeyIds", "States"])?;
    let ids = string_list(&filters, "AccessKeyIds")?;
    let states = string_list(&filters, "States")?;
    if let Some(bad) = states.iter().find(|s| !["ACTIVE", "INACTIVE"].contains(&s.as_str())) {
        return Err(ApiError::bad_value(format!("unknown state {bad:?}")));
    }
    let tag = string_field(&body, "Tag")?;
    let user_name = string_field(&body, "UserName")?;
    let st = s.state();
    let owner = identity(&st, caller, user_name)?;
    let keys: Vec<Value> = st
        .keys
        .iter()
        .filter(|k| k.user == owner)
        .filter(|k| ids.is_empty() || ids.contains(&k.id))
        .filter(|k| states.is_empty() || states.iter().any(|s| s == k.state))
        .filter(|k| tag.is_none() || k.tag == tag)
        .map(KeyEntry::json)
        .collect();
    Ok(Json(json!({"AccessKeys": keys, "ResponseContext": response_context()})))
}

fn update_access_key(s: &Shared, caller: &Caller, body: &[u8]) -> ApiResult {
    let body = json_object(
        body,
        &["AccessKeyId", "ClearExpirationDate", "ClearTag", "DryRun", "ExpirationDate", "State", "Tag", "UserName"],
    )?;
    let id = string_field(&body, "AccessKeyId")?.ok_or_else(|| ApiError::missing("AccessKeyId"))?;
    let state = match string_field(&body, "State")?.as_deref() {
        None => None,
        Some("ACTIVE") => Some("ACTIVE"),
        Some("INACTIVE") => Some("INACTIVE"),
        Some(other) => return Err(ApiError::bad_value(format!("State {other:?} is not ACTIVE or INACTIVE"))),
    };
    let now = Timestamp::now();
    let expiration = expiration_field(&body, now)?;
    let clear_expiration = bool_field(&body, "ClearExpirationDate")?;
    let tag = string_field(&body, "Tag")?;
    let clear_tag = bool_field(&body, "ClearTag")?;
    let dry_run = bool_field(&body, "DryRun")?;
    let user_name = string_field(&body, "UserName")?;
    let mut st = s.state();
    let owner = identity(&st, caller, user_name)?;
    let key = st.keys.iter_mut().find(|k| k.id == id && k.user == owner).ok_or_else(|| ApiError::key_not_found(&id))?;
    if dry_run {
        return Ok(Json(json!({"ResponseContext": response_context()})));
    }
    if let Some(state) = state {
        key.state = state;
    }
    // The spec's warning, reproduced: no ExpirationDate means "never expires".
    key.expiration = if clear_expiration { None } else { expiration };
    if clear_tag {
        key.tag = None;
    } else if tag.is_some() {
        key.tag = tag;
    }
    key.modified = now;
    Ok(Json(json!({"AccessKey": key.json(), "ResponseContext": response_context()})))
}

fn delete_access_key(s: &Shared, caller: &Caller, body: &[u8]) -> ApiResult {
    let body = json_object(body, &["AccessKeyId", "DryRun", "UserName"])?;
    let id = string_field(&body, "AccessKeyId")?.ok_or_else(|| ApiError::missing("AccessKeyId"))?;
    let dry_run = bool_field(&body, "DryRun")?;
    let user_name = string_field(&body, "UserName")?;
    let mut st = s.state();
    let owner = identity(&st, caller, user_name)?;
    let index =
        st.keys.iter().position(|k| k.id == id && k.user == owner).ok_or_else(|| ApiError::key_not_found(&id))?;
    if owner.is_some() && st.keys[index].state != "INACTIVE" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "6003",
            "InvalidState",
            "The access key of an EIM user must be in the INACTIVE state to be deleted.",
        ));
    }
    if dry_run {
        return Ok(Json(json!({"ResponseContext": response_context()})));
    }
    let removed = st.keys.remove(index);
    st.deleted.push(removed.view());
    // "You cannot have zero access key": the root account gets a new one.
    if owner.is_none() && !st.keys.iter().any(|k| k.user.is_none()) {
        let replacement = KeyEntry::new(None, None, None);
        st.keys.push(replacement);
    }
    Ok(Json(json!({"ResponseContext": response_context()})))
}
