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
mod errors;
mod key_ref;
mod sign;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jiff::{SignedDuration, Timestamp};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use url::Url;

use self::api::{
    AccessKey, AccessKeyCreated, AccessKeyList, CreateAccessKey, DeleteAccessKey, FiltersAccessKeys, ReadAccessKeys,
    UpdateAccessKey, INACTIVE,
};
use self::errors::{classify, Failure};
use self::key_ref::{api_date, expiration, is_region, resend_date, KeyRef};
pub use self::key_ref::{lifetime_of, parse_timestamp};
use super::endpoint;
use super::error::brief;
use super::http::{Http, HttpConfig, Idempotency, Response};
use super::listing::MAX_LISTED;
use super::policy_read::{Answer, Question};
use super::{IssuedKey, KeyRequest, ListedKey, Marker, OwnedKey, Provider, ProviderError, Revocation, TemplateVars};
use crate::api::{KeyProvider, OutscaleIssuer, OutscaleKey};

/// The shortest `expiresAfter` accepted. The controller replaces a key after two thirds of its
/// lifetime, and consumers need time to pick up a rotated Secret (kubelet refreshes mounted
/// Secrets about once a minute), so anything shorter only churns keys. It is kept this low so
/// that rotation can be exercised in tests; real lifetimes are hours to months.
pub const MIN_LIFETIME: Duration = Duration::from_secs(60);

/// Outscale's documented quota: 10 access keys for the root account and 10 per EIM user.
pub const KEYS_PER_USER: usize = 10;

/// An expiration date closer than this is not re-sent when a key is deactivated.
pub(super) const RESEND_MARGIN: SignedDuration = SignedDuration::from_secs(60);

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
        let base = endpoint::parse("Outscale API endpoint", &endpoint)?;
        let host = endpoint::authority(&base);
        // A stray newline from `echo` would otherwise surface as a refused signature, and four of
        // those lock the key out.
        super::header_safe_key("OSC_ACCESS_KEY", &access_key)?;
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
        Ok(endpoint::join(call, &self.base, &[call])?)
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
        Ok(list.access_keys.within(CALL, MAX_LISTED, "access keys")?)
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
            return Ok(Revocation::NotOwned(format!("{} is the issuer's own access key", brief(&key.id))));
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
                brief(&key.id)
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
        let lifetime = lifetime_of(spec)
            .map_err(|e| ProviderError::permanent(CALL, format!("spec.outscale.expiresAfter: {e}")))?;
        let expires = match lifetime {
            Some(lifetime) => Some(expiration(request.now, lifetime).ok_or_else(|| {
                ProviderError::permanent(CALL, "spec.outscale.expiresAfter is too far in the future")
            })?),
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
                Err(f) => format!("deleting it again failed ({}); delete access key {} by hand", f.error, brief(&id)),
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
            KeyProvider::Outscale(key) => lifetime_of(key).ok().flatten(),
            _ => None,
        }
    }

    fn template_vars(&self) -> TemplateVars {
        TemplateVars::from([("region", self.region.clone()), ("endpoint", self.endpoint.clone())])
    }

    /// Whether an EIM user is the issuer's own identity: `ReadAccessKeys` of that user, filtered
    /// on the issuer's own access key, lists it only if the user owns it. The OSC API has no
    /// "who am I"; this needs only the permission the operator needs to serve that user anyway.
    async fn answer(&self, question: &Question) -> Result<Answer, ProviderError> {
        let Question::OutscaleUser(user) = question else {
            return Err(ProviderError::permanent("policy-read", format!("OUTSCALE cannot tell about {question}")));
        };
        match self.read_keys(Some(&self.access_key), Some(user)).await {
            Ok(keys) => {
                let own = keys.iter().any(|k| k.access_key_id.as_deref() == Some(self.access_key.as_str()));
                Ok(Answer::IssuerIdentity(own))
            }
            // No such user: not the issuer (and no key can be made for it either).
            Err(f) if f.is_gone() => Ok(Answer::IssuerIdentity(false)),
            Err(f) => Err(f.into()),
        }
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
        KeyProvider::Outscale(key) => {
            lifetime_of(key).map(|_| ()).map_err(|e| format!("spec.outscale.expiresAfter: {e}"))
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

#[cfg(test)]
mod tests;
