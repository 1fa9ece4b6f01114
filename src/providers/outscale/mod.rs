//! 3DS OUTSCALE: access keys (AK/SK) of the issuer's own identity or of an EIM user, over the
//! OSC API (`POST {endpoint}/{Call}`, JSON, OSC4-HMAC-SHA256).
//!
//! Ownership: every key carries the marker as its `Tag` (API ≥ 1.34.3), the only free-text
//! field an access key has. `ReadAccessKeys` can filter on a tag, but only on a whole value,
//! and the marker's attempt part is not known when looking for leftovers; so `find_keys` lists
//! the keys of one identity (at most 10, the quota) and matches markers here.
//!
//! `status.keyRef` ([`KeyRef`]): `<AccessKeyId>` for a key of the issuer's own identity, and
//! `<AccessKeyId>;user=<UserName>` for a key of an EIM user. Nothing that can change at the
//! provider goes in it (not the expiration date): the controller compares the references it
//! recorded with those `find_keys` builds, and a mismatch would revoke a live key. Revocation
//! reads the key first and re-sends the expiration date it finds.
//!
//! `expiresAfter`: `ExpirationDate` = creation time + the lifetime, whole seconds, sent as
//! `YYYY-MM-DDTHH:MM:SS.000Z` (the spec's own example format). The lifetime must be at least
//! [`MIN_LIFETIME`]; without `expiresAfter` no date is sent and the key never expires.

mod api;
mod sign;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jiff::{SignedDuration, Timestamp};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use url::Url;

use self::api::{
    AccessKey, AccessKeyCreated, AccessKeyList, CreateAccessKey, DeleteAccessKey, ErrorResponse, FiltersAccessKeys,
    ReadAccessKeys, UpdateAccessKey, INACTIVE,
};
use super::http::{ErrorResponse as HttpError, Http, HttpConfig, Idempotency, Response};
use super::{
    ErrorKind, IssuedKey, KeyRequest, ListedKey, Marker, OwnedKey, Provider, ProviderError, Revocation, TemplateVars,
};
use crate::api::{KeyProvider, OutscaleIssuer, OutscaleKey};

/// The shortest `expiresAfter` accepted. The controller replaces a key after two thirds of its
/// lifetime, and consumers need time to pick up a rotated Secret (kubelet refreshes mounted
/// Secrets about once a minute), so anything shorter only churns keys. It is kept this low so
/// that rotation can be exercised in tests; real lifetimes are hours to months.
pub const MIN_LIFETIME: Duration = Duration::from_secs(60);

/// Outscale's documented quota: 10 access keys for the root account and 10 per EIM user.
pub const KEYS_PER_USER: usize = 10;

/// Outscale locks a key out for a minute after four bad signatures in a row (error 13).
const LOCKOUT: Duration = Duration::from_secs(60);

/// An expiration date closer than this is not re-sent when a key is deactivated.
const RESEND_MARGIN: SignedDuration = SignedDuration::from_secs(60);

/// Provider error messages are shown in conditions; keep them readable.
const MAX_MESSAGE_CHARS: usize = 400;

/// Error codes (outscale.md §3). Codes are strings in the API; these are their values.
const THROTTLED: &[u32] = &[6, 24, 25];
const AUTH_CODES: &[u32] = &[1, 5, 7, 9, 11, 12, 13, 14, 20];
const LOCKED_TEMPORARILY: u32 = 13;
const LOCKED_PERMANENTLY: u32 = 11;
const QUOTA: std::ops::RangeInclusive<u32> = 10000..=10999;
const DEPENDENCY: std::ops::RangeInclusive<u32> = 1000..=1999;
/// `ResourceConflict` `busy`. `InvalidState` (6xxx, e.g. deleting an ACTIVE key of an EIM
/// user) stays permanent: repeating the same request cannot change the key's state, and
/// `revoke` reacts to it at once rather than after the HTTP layer's retries.
const BUSY: u32 = 9002;
/// `no-such-user` (Python SDK's gateway error list): the user, and with it all its keys, is
/// gone. 4000 is left out on purpose: in the 4xxx range it may also mean an invalid parameter,
/// and a failed revocation must never pass for a successful one; an absent key shows as an
/// empty `ReadAccessKeys` answer instead.
const GONE: &[u32] = &[5075];

pub struct OutscaleProvider {
    http: Http,
    /// The parsed endpoint (`/api/v1` included); call names are appended as a path segment.
    base: Url,
    /// The endpoint as users see it in templates, without a trailing slash.
    endpoint: String,
    /// The `Host` header as reqwest sends it (`host[:port]`), which the signature covers.
    host: String,
    region: String,
    access_key: String,
    secret_key: SecretString,
}

impl OutscaleProvider {
    pub fn new(
        settings: &OutscaleIssuer,
        access_key: String,
        secret_key: SecretString,
        http: HttpConfig,
    ) -> Result<Self, ProviderError> {
        let region = settings.region.trim();
        // An empty or mistyped region would otherwise become `https://api..outscale.com`.
        if !is_region(region) {
            return Err(ProviderError::permanent(
                "configure",
                format!("invalid Outscale region {region:?}: expected a name such as eu-west-2 or cloudgouv-eu-west-1"),
            ));
        }
        let endpoint = endpoint_of(settings);
        let base = Url::parse(&endpoint)
            .ok()
            .filter(|u| {
                !u.cannot_be_a_base()
                    && matches!(u.scheme(), "https" | "http")
                    && u.host_str().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
            })
            .ok_or_else(|| {
                ProviderError::permanent("configure", format!("invalid Outscale API endpoint {endpoint:?}"))
            })?;
        let host = match (base.host_str().unwrap_or_default(), base.port()) {
            (h, Some(p)) => format!("{h}:{p}"),
            (h, None) => h.to_string(),
        };
        // The key goes into a header verbatim; a stray newline from `echo` would otherwise
        // surface as a refused signature, and four of those lock the key out.
        if access_key.is_empty() || !access_key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ProviderError::auth(
                "configure",
                "OSC_ACCESS_KEY is empty or holds whitespace or non-ASCII characters",
            ));
        }
        // Same for the secret: Outscale secret keys hold no whitespace, so any is a copy slip.
        let trimmed = secret_key.expose_secret().trim();
        if trimmed.is_empty() {
            return Err(ProviderError::auth("configure", "OSC_SECRET_KEY is empty"));
        }
        let secret_key = if trimmed.len() == secret_key.expose_secret().len() {
            secret_key
        } else {
            SecretString::from(trimmed.to_string())
        };
        Ok(Self { http: Http::new(http)?, base, endpoint, host, region: region.to_string(), access_key, secret_key })
    }

    fn url(&self, call: &str) -> Result<Url, Failure> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Failure::from(ProviderError::permanent(call, "the endpoint cannot take a path")))?
            .pop_if_empty()
            .push(call);
        Ok(url)
    }

    /// One call; `call` is the OSC API call name, also used as the error's operation.
    async fn call<T: Serialize>(
        &self,
        call: &'static str,
        body: &T,
        idempotency: Idempotency,
    ) -> Result<Response, Failure> {
        let url = self.url(call)?;
        // Serialized once: the signature covers these exact bytes on every attempt.
        let body = Bytes::from(
            serde_json::to_vec(body)
                .map_err(|e| ProviderError::permanent(call, format!("cannot encode the request: {e}")))?,
        );
        // The codes of the answer stay with the error, for callers that treat some of them as
        // success ("already gone").
        self.http
            .send(
                call,
                idempotency,
                |client| self.build(client, call, &url, &body),
                |response| {
                    let (error, codes) = classify(call, response);
                    Failure { error, codes }
                },
            )
            .await
    }

    /// Called once per attempt: `X-Osc-Date` must be within five minutes of Outscale's clock.
    fn build(
        &self,
        client: &reqwest::Client,
        call: &str,
        url: &Url,
        body: &Bytes,
    ) -> Result<reqwest::Request, ProviderError> {
        let signed = sign::sign(
            &self.access_key,
            &self.secret_key,
            &self.region,
            &sign::Request { host: &self.host, path: url.path(), body },
            Timestamp::now(),
        );
        let mut authorization = HeaderValue::from_str(&signed.authorization)
            .map_err(|_| ProviderError::auth(call, "the access key is not a valid HTTP header value"))?;
        authorization.set_sensitive(true);
        client
            .post(url.clone())
            .header(CONTENT_TYPE, sign::CONTENT_TYPE)
            .header(sign::DATE_HEADER, signed.date)
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, "application/json")
            .body(body.clone())
            .build()
            .map_err(|e| ProviderError::permanent(call, format!("cannot build the request: {e}")))
    }

    async fn read_keys(&self, ids: Option<&str>, user: Option<&str>) -> Result<Vec<AccessKey>, Failure> {
        const CALL: &str = "ReadAccessKeys";
        let body =
            ReadAccessKeys { filters: ids.map(|id| FiltersAccessKeys { access_key_ids: vec![id] }), user_name: user };
        let list: AccessKeyList = self.call(CALL, &body, Idempotency::Idempotent).await?.json(CALL)?;
        Ok(list.access_keys)
    }

    /// The key `key` names, `None` when it is gone (or its user is).
    async fn read_one(&self, key: &KeyRef) -> Result<Option<AccessKey>, Failure> {
        match self.read_keys(Some(&key.id), key.user.as_deref()).await {
            Ok(keys) => Ok(keys.into_iter().find(|k| k.access_key_id.as_deref() == Some(key.id.as_str()))),
            Err(f) if f.is_gone() => Ok(None),
            Err(f) => Err(f),
        }
    }

    async fn set_inactive(&self, key: &KeyRef, expiration: Option<&str>) -> Result<(), Failure> {
        let body = UpdateAccessKey {
            access_key_id: &key.id,
            state: INACTIVE,
            expiration_date: expiration,
            user_name: key.user.as_deref(),
        };
        self.call("UpdateAccessKey", &body, Idempotency::Idempotent).await.map(|_| ())
    }

    async fn delete(&self, key: &KeyRef) -> Result<(), Failure> {
        let body = DeleteAccessKey { access_key_id: &key.id, user_name: key.user.as_deref() };
        self.call("DeleteAccessKey", &body, Idempotency::Idempotent).await.map(|_| ())
    }

    async fn revoke(&self, key: &KeyRef, owner_uid: &str) -> Result<Revocation, Failure> {
        if key.user.is_none() && key.id == self.access_key {
            return Ok(Revocation::NotOwned(format!("{} is the issuer's own access key", key.id)));
        }
        // Read first, as Terraform does: an empty list is the one reliable "already gone", and
        // the live expiration date is the one to re-send.
        let Some(live) = self.read_one(key).await? else {
            tracing::debug!(key = %key.id, "access key already gone");
            return Ok(Revocation::AlreadyGone);
        };
        if live.tag.as_deref().and_then(Marker::exactly).is_none_or(|m| m.owner() != owner_uid) {
            return Ok(Revocation::NotOwned(format!(
                "access key {} is not tagged with this AccessKey's marker",
                key.id
            )));
        }
        self.remove(key, &live).await
    }

    /// Deactivates (where needed) and deletes a key read as `live`.
    async fn remove(&self, key: &KeyRef, live: &AccessKey) -> Result<Revocation, Failure> {
        let expiration = live.expiration_date.as_deref().and_then(|d| resend_date(d, Timestamp::now()));
        let active = live.state.as_deref() != Some(INACTIVE);
        let gone = Ok(Revocation::AlreadyGone);
        // An EIM user's key must be INACTIVE before it can be deleted.
        if key.user.is_some() && active {
            match self.set_inactive(key, expiration.as_deref()).await {
                Err(f) if f.is_gone() => return gone,
                other => other?,
            }
        }
        match self.delete(key).await {
            Err(f) if f.is_gone() => gone,
            // The issuer may itself be an EIM user, whose own keys follow the same rule; the
            // API says so by refusing the request (not with an auth or throttling error).
            Err(f) if key.user.is_none() && active && f.refused() => {
                tracing::debug!(key = %key.id, error = %f.error, "delete refused; deactivating the key first");
                match self.set_inactive(key, expiration.as_deref()).await {
                    Err(f) if f.is_gone() => return gone,
                    other => other?,
                }
                match self.delete(key).await {
                    Err(f) if f.is_gone() => gone,
                    other => other.map(|()| Revocation::Revoked),
                }
            }
            other => other.map(|()| Revocation::Revoked),
        }
    }
}

#[async_trait]
impl Provider for OutscaleProvider {
    fn name(&self) -> &'static str {
        "outscale"
    }

    /// `ReadAccessKeys` filtered on the issuer's own key: read-only, answers one key, and needs
    /// only a permission the operator needs anyway.
    async fn check_credentials(&self) -> Result<(), ProviderError> {
        self.read_keys(Some(&self.access_key), None).await?;
        Ok(())
    }

    async fn create_key(&self, request: &KeyRequest<'_>) -> Result<IssuedKey, ProviderError> {
        const CALL: &str = "CreateAccessKey";
        let spec = outscale_spec(CALL, request.spec)?;
        let user = spec.user_name.as_deref().filter(|u| !u.is_empty());
        let expires = match spec.expires_after.as_deref() {
            Some(text) => {
                let lifetime = parse_lifetime(text)
                    .map_err(|e| ProviderError::permanent(CALL, format!("spec.outscale.expiresAfter: {e}")))?;
                Some(expiration(request.now, lifetime).ok_or_else(|| {
                    ProviderError::permanent(
                        CALL,
                        format!("spec.outscale.expiresAfter: {text} is too far in the future"),
                    )
                })?)
            }
            None => None,
        };
        let expiration_text = expires.map(api_date);
        let tag = request.marker.to_string();
        let body = CreateAccessKey { user_name: user, expiration_date: expiration_text.as_deref(), tag: &tag };
        let created: AccessKeyCreated = self.call(CALL, &body, Idempotency::Creates).await?.json(CALL)?;
        let request_id = created.response_context.and_then(|c| c.request_id);
        // A key may well exist even so; the controller finds it again by its marker.
        let incomplete = |what: &str| {
            ProviderError::retryable(CALL, format!("the response holds no {what}")).with_request_id(request_id.clone())
        };
        let key = created.access_key.ok_or_else(|| incomplete("AccessKey"))?;
        let id = key.access_key_id.filter(|id| !id.is_empty()).ok_or_else(|| incomplete("AccessKeyId"))?;
        let secret = key.secret_key.filter(|s| !s.expose_secret().is_empty()).ok_or_else(|| incomplete("SecretKey"))?;
        if key.tag.as_deref() != Some(tag.as_str()) {
            // Older API versions drop the tag silently. Such a key could never be revoked (only
            // tagged keys are) nor found again: it goes at once, and no key is issued.
            let key_ref = KeyRef { id: id.clone(), user: user.map(String::from) };
            // A new key is active.
            let live = AccessKey {
                access_key_id: Some(id.clone()),
                state: None,
                expiration_date: key.expiration_date.clone(),
                tag: None,
            };
            let removed = self.remove(&key_ref, &live).await;
            let what = match removed {
                Ok(_) => "it was deleted again".to_string(),
                Err(f) => format!("deleting it again failed ({}); delete access key {id} by hand", f.error),
            };
            return Err(ProviderError::permanent(
                CALL,
                format!(
                    "Outscale did not keep the ownership tag on the new key, so it could never be revoked; {what}. \
                     The operator needs an OSC API that supports access key tags (1.34.3 or later)"
                ),
            )
            .with_request_id(request_id));
        }
        // The date Outscale stored wins over ours (it may round); ours if it names none.
        let expires_at = key.expiration_date.as_deref().and_then(parse_timestamp).or(expires);
        Ok(IssuedKey {
            key_ref: KeyRef { id: id.clone(), user: user.map(String::from) }.to_string(),
            access_key_id: id,
            secret,
            expires_at,
        })
    }

    async fn find_keys(&self, owner_uid: &str, spec: &KeyProvider) -> Result<Vec<OwnedKey>, ProviderError> {
        let user = user_of(spec);
        let keys = match self.read_keys(None, user).await {
            Ok(keys) => keys,
            // A user that does not exist has no keys.
            Err(f) if f.is_gone() => Vec::new(),
            Err(f) => return Err(f.into()),
        };
        Ok(owned_keys(owner_uid, user, keys))
    }

    /// The identity the keys belong to: an EIM user, or the issuer's own.
    fn listing_scope(&self, spec: &KeyProvider) -> String {
        user_of(spec).unwrap_or_default().to_string()
    }

    async fn list_marked(&self, spec: &KeyProvider) -> Result<Vec<ListedKey>, ProviderError> {
        let keys = match self.read_keys(None, user_of(spec)).await {
            Ok(keys) => keys,
            // A user that does not exist (any more) has no keys.
            Err(f) if f.is_gone() => Vec::new(),
            Err(f) => return Err(f.into()),
        };
        let user = user_of(spec);
        Ok(keys
            .into_iter()
            .filter_map(|key| {
                let marker = key.tag.as_deref().and_then(Marker::exactly);
                let access_key_id = key.access_key_id.filter(|id| !id.is_empty())?;
                let active = key.state.as_deref() != Some(INACTIVE);
                let key_ref = KeyRef { id: access_key_id.clone(), user: user.map(String::from) }.to_string();
                let expires_at = Some(key.expiration_date.as_deref().and_then(parse_timestamp));
                Some(ListedKey { access_key_id, key_ref, marker, active, expires_at, last_used_at: None })
            })
            .collect())
    }

    async fn key_present(&self, key_ref: &str) -> Result<Option<bool>, ProviderError> {
        let Ok(key) = KeyRef::parse(key_ref) else { return Ok(Some(true)) };
        Ok(self.read_one(&key).await?.map(|k| k.state.as_deref() != Some(INACTIVE)))
    }

    async fn revoke_key(&self, key_ref: &str, owner_uid: &str) -> Result<Revocation, ProviderError> {
        match KeyRef::parse(key_ref) {
            Ok(key) => Ok(self.revoke(&key, owner_uid).await?),
            Err(_) => Ok(Revocation::NotOwned(format!("{key_ref:?} is not an OUTSCALE key reference"))),
        }
    }

    fn lifetime(&self, spec: &KeyProvider) -> Option<Duration> {
        match spec {
            KeyProvider::Outscale(OutscaleKey { expires_after: Some(text), .. }) => parse_lifetime(text).ok(),
            _ => None,
        }
    }

    fn template_vars(&self) -> TemplateVars {
        TemplateVars::from([("region", self.region.clone()), ("endpoint", self.endpoint.clone())])
    }
}

/// The API endpoint an issuer names, or its region's.
fn endpoint_of(settings: &OutscaleIssuer) -> String {
    match settings.endpoint.as_deref().map(str::trim) {
        Some(e) if !e.is_empty() => e.trim_end_matches('/').to_string(),
        _ => format!("https://api.{}.outscale.com/api/v1", settings.region.trim()),
    }
}

/// What `secretTemplate.data` may use besides the key, from the issuer's settings alone.
pub fn template_vars(settings: &OutscaleIssuer) -> TemplateVars {
    TemplateVars::from([("region", settings.region.trim().to_string()), ("endpoint", endpoint_of(settings))])
}

/// OUTSCALE's rules of an AccessKey's provider block.
pub fn check_spec(spec: &KeyProvider) -> Result<(), String> {
    match spec {
        KeyProvider::Outscale(OutscaleKey { expires_after: Some(text), .. }) => {
            parse_lifetime(text).map(|_| ()).map_err(|e| format!("spec.outscale.expiresAfter: {e}"))
        }
        _ => Ok(()),
    }
}

/// The EIM user of keys made for `spec`; `None`: the issuer's own identity.
fn user_of(spec: &KeyProvider) -> Option<&str> {
    match spec {
        KeyProvider::Outscale(key) => key.user_name.as_deref().filter(|u| !u.is_empty()),
        _ => None,
    }
}

fn outscale_spec<'a>(operation: &str, spec: &'a KeyProvider) -> Result<&'a OutscaleKey, ProviderError> {
    match spec {
        KeyProvider::Outscale(key) => Ok(key),
        other => Err(ProviderError::permanent(
            operation,
            format!("an Outscale issuer cannot issue a {} key: use an outscale block", other.name()),
        )),
    }
}

/// This owner's keys among those listed for one identity.
fn owned_keys(owner_uid: &str, user: Option<&str>, keys: Vec<AccessKey>) -> Vec<OwnedKey> {
    keys.into_iter()
        .filter_map(|key| {
            let marker = Marker::exactly(key.tag.as_deref()?).filter(|m| m.owner() == owner_uid)?;
            let id = key.access_key_id.filter(|id| !id.is_empty())?;
            Some(OwnedKey {
                key_ref: KeyRef { id: id.clone(), user: user.map(String::from) }.to_string(),
                access_key_id: Some(id),
                marker,
            })
        })
        .collect()
}

/// A failed call and the Outscale error codes its answer carried.
struct Failure {
    error: ProviderError,
    codes: Vec<String>,
}

impl super::http::CallError for Failure {
    fn provider_error(&self) -> &ProviderError {
        &self.error
    }
    fn provider_error_mut(&mut self) -> &mut ProviderError {
        &mut self.error
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl Failure {
    fn has_code(&self, wanted: impl Fn(u32) -> bool) -> bool {
        self.codes.iter().filter_map(|c| c.trim().parse::<u32>().ok()).any(wanted)
    }

    fn is_gone(&self) -> bool {
        self.has_code(|c| GONE.contains(&c))
    }

    /// The API answered and refused the request as such: a 4xx other than auth and throttling.
    fn refused(&self) -> bool {
        self.error.kind != ErrorKind::Auth
            && matches!(self.error.status, Some(s) if (400..500).contains(&s) && s != 429)
    }
}

impl From<ProviderError> for Failure {
    fn from(error: ProviderError) -> Self {
        Self { error, codes: Vec::new() }
    }
}

impl From<Failure> for ProviderError {
    fn from(f: Failure) -> Self {
        f.error
    }
}

/// Classifies a non-2xx answer from its Outscale error codes, then its status. Returns the
/// codes too, for callers that treat some of them as success.
fn classify(operation: &str, response: HttpError<'_>) -> (ProviderError, Vec<String>) {
    let parsed: ErrorResponse = serde_json::from_slice(response.body).unwrap_or_default();
    let request_id = parsed.response_context.as_ref().and_then(|c| c.request_id.clone()).filter(|r| !r.is_empty());
    let codes: Vec<String> = parsed.errors.iter().filter_map(|e| e.code.clone()).collect();
    let numbers: Vec<u32> = codes.iter().filter_map(|c| c.trim().parse().ok()).collect();
    let any = |f: &dyn Fn(u32) -> bool| numbers.iter().any(|c| f(*c));
    let access_denied = parsed.errors.iter().any(|e| e.kind.as_deref() == Some("AccessDenied"));

    let mut message = describe(&parsed.errors).unwrap_or_else(|| {
        let raw = String::from_utf8_lossy(response.body).trim().to_string();
        if raw.is_empty() {
            "no error message".to_string()
        } else {
            raw
        }
    });
    let status = response.status;
    let mut retry_after = None;
    let kind = if status == 429 || status == 503 || any(&|c| THROTTLED.contains(&c)) {
        message = format!("throttled by Outscale: {message}");
        ErrorKind::Retryable
    } else if any(&|c| QUOTA.contains(&c)) {
        message = format!(
            "{message}. Quota exceeded: Outscale allows at most {KEYS_PER_USER} access keys \
             for the root account and {KEYS_PER_USER} per EIM user; delete unused keys of this \
             user or issue keys for another user"
        );
        ErrorKind::Permanent
    } else if status == 401 || status == 403 || access_denied || any(&|c| AUTH_CODES.contains(&c)) {
        if any(&|c| c == LOCKED_TEMPORARILY) {
            retry_after = Some(LOCKOUT);
        }
        let hint = if any(&|c| c == LOCKED_PERMANENTLY) {
            "the access key is locked out; contact Outscale support"
        } else {
            "check OSC_ACCESS_KEY, OSC_SECRET_KEY, the region and the identity's EIM policy; \
             not retried quickly, as four bad signatures in a row lock the key out"
        };
        message = format!("{message} ({hint})");
        ErrorKind::Auth
    } else if status == 424 || any(&|c| DEPENDENCY.contains(&c) || c == BUSY) {
        ErrorKind::Retryable
    } else {
        ProviderError::from_status(operation, status, "").kind
    };
    let error = ProviderError::new(kind, operation, truncate(&message))
        .with_status(status)
        .with_request_id(request_id)
        .with_retry_after(retry_after);
    (error, codes)
}

/// `Outscale error <Code> <Type>: <Details>`, for each error in the body.
fn describe(errors: &[api::ApiError]) -> Option<String> {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| {
            let non_empty =
                |s: &Option<String>| s.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(String::from);
            let mut text = "Outscale error".to_string();
            if let Some(code) = non_empty(&e.code) {
                text.push(' ');
                text.push_str(&code);
            }
            if let Some(kind) = non_empty(&e.kind) {
                text.push(' ');
                text.push_str(&kind);
            }
            if let Some(details) = non_empty(&e.details) {
                text.push_str(": ");
                text.push_str(&details);
            }
            text
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn truncate(text: &str) -> String {
    super::error::sanitize_message(text, MAX_MESSAGE_CHARS)
}

/// `status.keyRef`: `<AccessKeyId>` or `<AccessKeyId>;user=<UserName>` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyRef {
    id: String,
    /// The EIM user owning the key; `None` for the issuer's own identity.
    user: Option<String>,
}

impl KeyRef {
    fn parse(text: &str) -> Result<Self, ProviderError> {
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
fn is_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let words = parts.len().saturating_sub(1);
    region.len() <= 63
        && parts.len() >= 3
        && parts[..words].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[words].bytes().all(|b| b.is_ascii_digit())
        && !parts[words].is_empty()
}

/// Parses `expiresAfter` (`^([0-9]+(h|m|s))+$`, e.g. `2160h`, `1h30m`) into a lifetime of at
/// least [`MIN_LIFETIME`].
pub fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let lifetime = crate::api::duration::parse_duration(text)?;
    if lifetime < MIN_LIFETIME {
        return Err(format!("{text:?} is shorter than the minimum key lifetime of {} s", MIN_LIFETIME.as_secs()));
    }
    Ok(lifetime)
}

/// `now + lifetime`, cut to whole seconds; `None` past the year 9999.
fn expiration(now: Timestamp, lifetime: Duration) -> Option<Timestamp> {
    let lifetime = SignedDuration::try_from(lifetime).ok()?;
    let at = now.checked_add(lifetime).ok()?;
    Timestamp::from_second(at.as_second()).ok()
}

/// The form the spec's examples use for dates we send: `2020-06-14T00:00:00.000Z`.
fn api_date(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// The expiration date to re-send with a state change: the live value in the form we send
/// dates, or verbatim when it cannot be read (better than clearing it). A date already past
/// (or about to be) is not re-sent: such a key signs nothing either way, it is deleted right
/// after, and the API may refuse a date in the past, which would block the revocation.
fn resend_date(live: &str, now: Timestamp) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderMap;

    use super::*;

    const UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";
    const OTHER: &str = "11111111-2222-4333-8444-555555555555";

    fn issuer(region: &str, endpoint: Option<&str>) -> OutscaleIssuer {
        OutscaleIssuer {
            region: region.into(),
            endpoint: endpoint.map(String::from),
            credentials_secret_ref: crate::api::SecretRef { name: "s".into() },
        }
    }

    fn provider(endpoint: Option<&str>) -> OutscaleProvider {
        OutscaleProvider::new(
            &issuer("eu-west-2", endpoint),
            "AKIDEXAMPLE012345678".into(),
            SecretString::from("S".repeat(40)),
            HttpConfig::default(),
        )
        .unwrap_or_else(|e| panic!("provider builds: {e}"))
    }

    fn error(status: u16, body: &str) -> ProviderError {
        classify_codes(status, body).0
    }

    fn classify_codes(status: u16, body: &str) -> (ProviderError, Vec<String>) {
        let headers = HeaderMap::new();
        classify("CreateAccessKey", HttpError { status, headers: &headers, body: body.as_bytes() })
    }

    fn body(code: &str, kind: &str, details: &str) -> String {
        serde_json::json!({
            "Errors": [{"Code": code, "Type": kind, "Details": details}],
            "ResponseContext": {"RequestId": "0475ca1e-d0c5-441d-712a-da55a4175157"}
        })
        .to_string()
    }

    #[test]
    fn key_refs_round_trip() {
        for text in [
            "ABCDEFGHIJ0123456789",
            "ABCDEFGHIJ0123456789;user=backup-bot",
            "ABCDEFGHIJ0123456789;user=a+b=c,d.e@f_g-h",
        ] {
            let parsed = KeyRef::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(
            KeyRef::parse("AK1;user=bot").expect("parses"),
            KeyRef { id: "AK1".into(), user: Some("bot".into()) }
        );
        assert_eq!(KeyRef::parse("AK1").expect("parses").user, None);
    }

    #[test]
    fn malformed_key_refs_are_permanent_errors() {
        for text in [
            "",
            ";user=bot",
            "AK1;",
            "AK1;user=",
            "AK1;bot",
            "AK1;user=bot;user=other",
            "AK 1",
            "AK1;user=b ot",
            "api-key:AK1",
        ] {
            let e = KeyRef::parse(text).expect_err(text);
            assert_eq!(e.kind, ErrorKind::Permanent, "{text}");
        }
    }

    #[test]
    fn regions_are_validated_and_make_the_default_endpoint() {
        for good in ["eu-west-2", "us-east-2", "ap-northeast-1", "cloudgouv-eu-west-1"] {
            assert!(is_region(good), "{good}");
        }
        for bad in
            ["", "eu", "eu-west", "eu--2", "-west-2", "eu-west-", "EU-west-2", "eu-west-2a", "eu_west-2", "eu-west-2 "]
        {
            assert!(!is_region(bad), "{bad:?}");
        }
        let p = provider(None);
        assert_eq!(p.endpoint, "https://api.eu-west-2.outscale.com/api/v1");
        assert_eq!(p.host, "api.eu-west-2.outscale.com");
        assert_eq!(
            p.template_vars(),
            TemplateVars::from([
                ("region", "eu-west-2".to_string()),
                ("endpoint", "https://api.eu-west-2.outscale.com/api/v1".to_string()),
            ])
        );
        let typo =
            OutscaleProvider::new(&issuer("", None), "AK".into(), SecretString::from("S"), HttpConfig::default());
        assert!(matches!(typo, Err(e) if e.kind == ErrorKind::Permanent && e.message.contains("region")));
    }

    #[test]
    fn an_endpoint_override_keeps_its_port_in_the_signed_host() {
        let p = provider(Some("http://127.0.0.1:8080/api/v1/"));
        assert_eq!(p.endpoint, "http://127.0.0.1:8080/api/v1");
        assert_eq!(p.host, "127.0.0.1:8080");
        let url = p.url("CreateAccessKey").unwrap_or_else(|_| panic!("url"));
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/api/v1/CreateAccessKey");
        // A default port is not part of the Host header, so it is not signed either.
        assert_eq!(provider(Some("https://api.example.com:443/api/v1")).host, "api.example.com");
    }

    #[test]
    fn bad_settings_are_refused_at_construction() {
        let bad_key = OutscaleProvider::new(
            &issuer("eu-west-2", None),
            "AK1\n".into(),
            SecretString::from("s"),
            HttpConfig::default(),
        );
        assert!(matches!(bad_key, Err(e) if e.kind == ErrorKind::Auth));
        let no_secret = OutscaleProvider::new(
            &issuer("eu-west-2", None),
            "AK1".into(),
            SecretString::from(" "),
            HttpConfig::default(),
        );
        assert!(matches!(no_secret, Err(e) if e.kind == ErrorKind::Auth));
        let bad_endpoint = OutscaleProvider::new(
            &issuer("eu-west-2", Some("not a url")),
            "AK1".into(),
            SecretString::from("s"),
            HttpConfig::default(),
        );
        assert!(matches!(bad_endpoint, Err(e) if e.kind == ErrorKind::Permanent));
    }

    #[test]
    fn requests_are_signed_over_the_exact_body_and_host() {
        let p = provider(Some("http://127.0.0.1:8080/api/v1"));
        let url = p.url("ReadAccessKeys").unwrap_or_else(|_| panic!("url"));
        let body = Bytes::from_static(br#"{"UserName":"bot"}"#);
        let request = p.build(&reqwest::Client::new(), "ReadAccessKeys", &url, &body).expect("request builds");
        let headers = request.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/json; charset=utf-8");
        let date = headers["x-osc-date"].to_str().expect("ascii");
        assert_eq!(date.len(), 16);
        let authorization = headers[AUTHORIZATION].to_str().expect("ascii");
        assert!(authorization.starts_with(&format!(
            "OSC4-HMAC-SHA256 Credential=AKIDEXAMPLE012345678/{}/eu-west-2/api/osc4_request, SignedHeaders=content-type;host;x-osc-date, Signature=",
            &date[..8]
        )));
        assert!(headers[AUTHORIZATION].is_sensitive());
        assert_eq!(request.body().and_then(|b| b.as_bytes()), Some(&body[..]));
        let now: Timestamp = jiff::fmt::strtime::parse("%Y%m%dT%H%M%SZ", date)
            .and_then(|t| t.to_datetime())
            .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC))
            .map(|z| z.timestamp())
            .expect("date parses");
        let expected = sign::sign(
            "AKIDEXAMPLE012345678",
            &SecretString::from("S".repeat(40)),
            "eu-west-2",
            &sign::Request { host: "127.0.0.1:8080", path: "/api/v1/ReadAccessKeys", body: &body },
            now,
        );
        assert_eq!(authorization, expected.authorization);
    }

    #[test]
    fn throttling_is_retryable() {
        let e = error(429, &body("24", "AccessDenied", "ErrorOperationThrottledPerAccount: Request rate exceeded."));
        assert_eq!(e.kind, ErrorKind::Retryable);
        assert!(e.message.starts_with("throttled by Outscale: Outscale error 24 AccessDenied"));
        assert_eq!(error(429, &body("25", "AccessDenied", "x")).kind, ErrorKind::Retryable);
        let e = error(503, &body("6", "AccessDenied", "ErrorOperationThrottled"));
        assert_eq!(e.kind, ErrorKind::Retryable);
        // The code decides even under another status.
        assert_eq!(error(400, &body("24", "AccessDenied", "x")).kind, ErrorKind::Retryable);
        assert_eq!(error(503, "").kind, ErrorKind::Retryable);
    }

    #[test]
    fn auth_failures_are_auth_and_name_code_type_details_and_request_id() {
        let e = error(401, &body("1", "AccessDenied", "ErrorAuthenticationFailed"));
        assert_eq!(e.kind, ErrorKind::Auth);
        assert_eq!(e.status, Some(401));
        assert_eq!(e.request_id.as_deref(), Some("0475ca1e-d0c5-441d-712a-da55a4175157"));
        assert!(e.message.starts_with("Outscale error 1 AccessDenied: ErrorAuthenticationFailed ("));
        assert!(e.message.contains("four bad signatures"));
        let shown = e.to_string();
        assert!(shown.contains("(HTTP 401)"), "{shown}");
        assert!(shown.contains("[request id 0475ca1e-"), "{shown}");
        assert_eq!(e.retry_after, None);

        let locked = error(401, &body("13", "AccessDenied", "x"));
        assert_eq!(locked.kind, ErrorKind::Auth);
        assert_eq!(locked.retry_after, Some(LOCKOUT));
        let forever = error(401, &body("11", "AccessDenied", "x"));
        assert!(forever.message.contains("contact Outscale support"));
        // An EIM identity without the permission.
        assert_eq!(error(401, &body("5", "AccessDenied", "ErrorNotAuthorized")).kind, ErrorKind::Auth);
        assert_eq!(error(403, "").kind, ErrorKind::Auth);
    }

    #[test]
    fn the_key_quota_is_permanent_and_says_so() {
        let e = error(400, &body("10005", "TooManyResources (QuotaExceded)", "too-many-accesskeys"));
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(e
            .message
            .starts_with("Outscale error 10005 TooManyResources (QuotaExceded): too-many-accesskeys. Quota exceeded"));
        assert!(e.message.contains("at most 10 access keys"));
        // Any code of the range, whatever the status.
        assert_eq!(error(409, &body("10999", "X", "y")).kind, ErrorKind::Permanent);
    }

    #[test]
    fn other_codes_and_statuses() {
        let (e, codes) = classify_codes(400, &body("4000", "InvalidParameterValue", "access-keys-not-found"));
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert_eq!(codes, vec!["4000".to_string()]);
        let f = Failure { error: e, codes };
        assert!(!f.is_gone(), "4000 may be an invalid parameter: never taken for \"already gone\"");
        assert!(f.refused());
        assert_eq!(error(424, &body("1000", "DependencyProblem", "x")).kind, ErrorKind::Retryable);
        let (e, codes) = classify_codes(409, &body("6003", "InvalidState", "x"));
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert!(Failure { error: e, codes }.refused());
        assert_eq!(error(400, &body("9002", "ResourceConflict", "busy")).kind, ErrorKind::Retryable);
        assert_eq!(error(500, "<html>oops</html>").kind, ErrorKind::Retryable);
        assert_eq!(error(500, "<html>oops</html>").message, "oops");
        assert_eq!(error(404, "").message, "no error message");
        let e = error(
            400,
            r#"{"Errors":[{"Code":"4108","Type":"InvalidParameterType","Details":"The parameter type of ExpirationDate is unknown."},{"Code":"7000","Type":"MissingParameter"}],"ResponseContext":{"RequestId":"r"}}"#,
        );
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert_eq!(
            e.message,
            "Outscale error 4108 InvalidParameterType: The parameter type of ExpirationDate is unknown.; Outscale error 7000 MissingParameter"
        );
        let throttled = Failure { error: error(429, &body("24", "AccessDenied", "x")), codes: vec![] };
        assert!(!throttled.refused());
        let denied = Failure { error: error(401, &body("1", "AccessDenied", "x")), codes: vec![] };
        assert!(!denied.refused());
    }

    #[test]
    fn long_error_bodies_are_cut() {
        let e = error(500, &"é".repeat(1000));
        assert_eq!(e.message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(e.message.ends_with('…'));
    }

    #[test]
    fn timestamps_parse_leniently() {
        let expected: Timestamp = "2010-10-01T12:34:56.789Z".parse().expect("ts");
        for text in [
            "2010-10-01T12:34:56.789+0000",
            "2010-10-01T12:34:56.789Z",
            "2010-10-01T12:34:56.789+00:00",
            "2010-10-01T14:34:56.789+0200",
            "2010-10-01T10:34:56.789-02:00",
            " 2010-10-01T12:34:56.789+0000 ",
            "2010-10-01T12:34:56.789",
        ] {
            assert_eq!(parse_timestamp(text), Some(expected), "{text}");
        }
        let midnight: Timestamp = "2063-04-05T00:00:00Z".parse().expect("ts");
        for text in ["2063-04-05T00:00:00.000+0000", "2063-04-05T00:00:00+0000", "2063-04-05T00:00:00Z", "2063-04-05"] {
            assert_eq!(parse_timestamp(text), Some(midnight), "{text}");
        }
        for bad in ["", "soon", "2063-13-05", "2063-04-05T00:00:00+99", "12:00"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates_are_sent_in_the_spec_form_and_resent_from_the_live_value() {
        let at: Timestamp = "2026-11-22T12:00:00.123456Z".parse().expect("ts");
        assert_eq!(api_date(at), "2026-11-22T12:00:00.123Z");
        let now: Timestamp = "2026-11-22T12:00:00.987Z".parse().expect("ts");
        assert_eq!(resend_date("2063-04-05T00:00:00.000+0000", now).as_deref(), Some("2063-04-05T00:00:00.000Z"));
        assert_eq!(resend_date("whenever", now).as_deref(), Some("whenever"));
        // Past, or about to pass: not re-sent.
        assert_eq!(resend_date("2026-11-22T12:00:30.000+0000", now), None);
        assert_eq!(resend_date("2020-01-01", now), None);
        let exp = expiration(now, Duration::from_secs(2160 * 3600)).expect("in range");
        assert_eq!(api_date(exp), "2027-02-20T12:00:00.000Z");
        assert_eq!(expiration(now, Duration::from_secs(u64::MAX / 4)), None);
    }

    #[test]
    fn lifetimes_parse_and_have_a_minimum() {
        for (text, secs) in [
            ("2160h", 2160 * 3600),
            ("1h30m", 5400),
            ("90m", 5400),
            ("60s", 60),
            ("1m", 60),
            ("1h1h", 7200),
            ("0h61s", 61),
        ] {
            assert_eq!(parse_lifetime(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for bad in ["", "h", "10", "10d", "1h 30m", "-1h", "1.5h", "m10", "1H"] {
            let e = parse_lifetime(bad).expect_err(bad);
            assert!(e.contains("not a duration"), "{bad}: {e}");
        }
        for short in ["0h", "0s", "59s", "0h0m0s"] {
            let e = parse_lifetime(short).expect_err(short);
            assert!(e.contains("minimum"), "{short}: {e}");
        }
        assert!(parse_lifetime("99999999999999999999h").is_err());
        assert!(parse_lifetime("9999999999999999h").is_err());
    }

    fn listed(id: &str, tag: Option<String>) -> AccessKey {
        AccessKey { access_key_id: Some(id.into()), state: Some("ACTIVE".into()), expiration_date: None, tag }
    }

    #[test]
    fn only_this_owners_markers_are_found() {
        let mine = Marker::of(UID, "abc0123456");
        let keys = vec![
            listed("AK1", Some(mine.to_string())),
            listed("AK2", Some(format!("ck-{OTHER}-abc0123456"))),
            listed("AK3", None),
            listed("AK4", Some("Group1".into())),
            AccessKey { access_key_id: None, ..listed("", Some(mine.to_string())) },
        ];
        assert_eq!(
            owned_keys(UID, Some("bot"), keys.clone()),
            vec![OwnedKey { access_key_id: Some("AK1".into()), key_ref: "AK1;user=bot".into(), marker: mine.clone() }]
        );
        assert_eq!(owned_keys(UID, None, keys)[0].key_ref, "AK1");
    }
}
