//! Exoscale: IAM API keys bound to an existing role (mode a) or to a role created for the key
//! alone (mode b), and legacy access keys (mode c), over the signed v2 API.
//!
//! Ownership: every key and role is named `<display name>.<marker>`; a role also carries the
//! owner and attempt as labels, because a role whose key was never created has no other trace.

mod api;
mod errors;
mod key_ref;
mod sign;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use secrecy::SecretString;
use serde::Serialize;
use url::Url;

use self::api::{
    AccessKeyCreated, AccessKeyList, AccessKeyResource, ApiKeyCreated, ApiKeyList, CreateAccessKey, CreateApiKey,
    CreateRole, NamedKey, Operation, OperationState, Policy, RoleList, LABEL_ATTEMPT, LABEL_MANAGED_BY, LABEL_OWNER,
};
use self::errors::{classify, succeeded};
use self::key_ref::KeyRef;
use super::error::brief;
use super::http::{Http, HttpConfig, Idempotency, Response};
use super::listing::MAX_LISTED;
use super::policy_read::{Answer, Question};
use super::{endpoint, poll};
use super::{IssuedKey, KeyRequest, ListedKey, Marker, OwnedKey, Provider, ProviderError, Revocation, TemplateVars};
use crate::api::validation::{ExoscaleMode, ExoscaleResource};
use crate::api::{ExoscaleIssuer, ExoscaleKey, ExoscaleRole, KeyProvider};

pub struct ExoscaleProvider {
    http: Http,
    /// The parsed endpoint, `/v2` included; request paths are appended as segments.
    base: Url,
    /// The endpoint as users see it in templates, without a trailing slash.
    endpoint: String,
    zone: String,
    api_key: String,
    api_secret: SecretString,
}

impl ExoscaleProvider {
    pub fn new(
        settings: &ExoscaleIssuer,
        api_key: String,
        api_secret: SecretString,
        http: HttpConfig,
    ) -> Result<Self, ProviderError> {
        let endpoint = endpoint_of(settings);
        let base = endpoint::parse("Exoscale API endpoint", &endpoint)?;
        // A stray newline from `echo` would otherwise surface as a transport error on every call.
        super::header_safe_key("EXOSCALE_API_KEY", &api_key)?;
        Ok(Self { http: Http::new(http)?, base, endpoint, zone: settings.zone.clone(), api_key, api_secret })
    }

    fn url(&self, operation: &str, segments: &[&str]) -> Result<Url, ProviderError> {
        endpoint::join(operation, &self.base, segments)
    }

    async fn call(
        &self,
        operation: &str,
        method: Method,
        segments: &[&str],
        body: Option<Bytes>,
        idempotency: Idempotency,
    ) -> Result<Response, ProviderError> {
        let url = self.url(operation, segments)?;
        self.http
            .send(
                operation,
                idempotency,
                |client| self.build(client, operation, &method, &url, body.as_ref()),
                |response| classify(operation, response),
            )
            .await
    }

    async fn get(&self, operation: &str, segments: &[&str]) -> Result<Response, ProviderError> {
        self.call(operation, Method::GET, segments, None, Idempotency::Idempotent).await
    }

    async fn post<T: Serialize>(
        &self,
        operation: &str,
        segments: &[&str],
        body: &T,
    ) -> Result<Response, ProviderError> {
        // Serialized once: the signature covers these exact bytes on every attempt.
        let body = serde_json::to_vec(body)
            .map_err(|e| ProviderError::permanent(operation, format!("cannot encode the request: {e}")))?;
        self.call(operation, Method::POST, segments, Some(Bytes::from(body)), Idempotency::Creates).await
    }

    /// Called once per attempt: the signature expires, so each attempt is signed afresh.
    fn build(
        &self,
        client: &reqwest::Client,
        operation: &str,
        method: &Method,
        url: &Url,
        body: Option<&Bytes>,
    ) -> Result<reqwest::Request, ProviderError> {
        let expires = jiff::Timestamp::now().as_second() + sign::VALIDITY_SECONDS;
        let signed = sign::authorization(
            &self.api_key,
            &self.api_secret,
            method.as_str(),
            url,
            body.map_or(&[][..], |b| b.as_ref()),
            expires,
        );
        let mut authorization = HeaderValue::from_str(&signed)
            .map_err(|_| ProviderError::auth(operation, "the API key is not a valid HTTP header value"))?;
        authorization.set_sensitive(true);
        let mut request = client
            .request(method.clone(), url.clone())
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body.clone());
        }
        request.build().map_err(|e| ProviderError::permanent(operation, format!("cannot build the request: {e}")))
    }

    /// Polls an operation until it leaves `pending`.
    async fn wait(&self, operation: &str, op: Operation) -> Result<Operation, ProviderError> {
        poll::until_settled(operation, op, |id| async move {
            self.get("get-operation", &["operation", &id]).await?.json("get-operation")
        })
        .await
    }

    async fn create_api_key(&self, name: &str, role_id: &str) -> Result<ApiKeyCreated, ProviderError> {
        const OP: &str = "create-api-key";
        self.post(OP, &["api-key"], &CreateApiKey { name, role_id }).await?.json(OP)
    }

    /// Creates the role of mode (b) and returns its id once the API says it exists.
    async fn create_role(&self, name: &str, role: &ExoscaleRole, marker: &Marker) -> Result<String, ProviderError> {
        const OP: &str = "create-iam-role";
        let body = CreateRole {
            name,
            description: role.description.as_deref(),
            editable: true,
            labels: BTreeMap::from([
                (LABEL_OWNER, marker.owner()),
                (LABEL_ATTEMPT, marker.attempt()),
                (LABEL_MANAGED_BY, "cloudkeys"),
            ]),
            policy: Policy::from(&role.policy),
        };
        let op = self.post(OP, &["iam-role"], &body).await?.json(OP)?;
        let op = succeeded(OP, self.wait(OP, op).await?)?;
        op.reference.and_then(|r| r.id).ok_or_else(|| {
            // The role may well exist; its labels let `find_keys` find it.
            ProviderError::retryable(OP, "the role was created but the operation names no role id")
        })
    }

    async fn create_access_key(
        &self,
        name: &str,
        operations: &[String],
        tags: &[String],
        resources: &[ExoscaleResource],
    ) -> Result<AccessKeyCreated, ProviderError> {
        const OP: &str = "create-access-key";
        let body = CreateAccessKey {
            name,
            tags,
            operations,
            resources: resources.iter().map(AccessKeyResource::from).collect(),
        };
        // The endpoint is gone from the current API; whatever the account answers (IAMv3 keys
        // may not create IAMv2 ones) is passed on verbatim by `classify`.
        self.post(OP, &["access-key"], &body).await?.json(OP)
    }

    /// Deletes one resource and waits for it; gone already (404, or an operation that failed
    /// with `not-found`) counts as deleted.
    async fn delete(&self, operation: &str, segments: &[&str]) -> Result<(), ProviderError> {
        let response = match self.call(operation, Method::DELETE, segments, None, Idempotency::Idempotent).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let op = self.wait(operation, response.json(operation)?).await?;
        if op.state != OperationState::Success && op.reason.as_deref() == Some("not-found") {
            return Ok(());
        }
        succeeded(operation, op).map(|_| ())
    }

    async fn delete_role(&self, role_id: &str) -> Result<(), ProviderError> {
        self.delete("delete-iam-role", &["iam-role", role_id]).await
    }

    /// The name of an API key (`api-key`) or legacy access key (`access-key`), `None` if gone.
    async fn read_named(&self, kind: &str, id: &str) -> Result<Option<String>, ProviderError> {
        let operation = if kind == "access-key" { "get-access-key" } else { "get-api-key" };
        match self.get(operation, &[kind, id]).await {
            Ok(r) => {
                let found = r.json::<NamedKey>(operation)?;
                if found.key != id {
                    let message = format!("asked for {kind} {id}, the API answered with {}", brief(&found.key));
                    return Err(ProviderError::retryable(operation, message));
                }
                Ok(Some(found.name))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read_role(&self, id: &str) -> Result<Option<api::Role>, ProviderError> {
        const OP: &str = "get-iam-role";
        match self.get(OP, &["iam-role", id]).await {
            Ok(r) => {
                let role: api::Role = r.json(OP)?;
                if role.id != id {
                    return Err(ProviderError::retryable(
                        OP,
                        format!("asked for IAM role {id}, got {}", brief(&role.id)),
                    ));
                }
                Ok(Some(role))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_api_keys(&self) -> Result<Vec<api::ApiKey>, ProviderError> {
        const OP: &str = "list-api-keys";
        self.get(OP, &["api-key"]).await?.json::<ApiKeyList>(OP)?.api_keys.within(OP, MAX_LISTED, "API keys")
    }

    async fn list_access_keys(&self) -> Result<Vec<api::AccessKey>, ProviderError> {
        const OP: &str = "list-access-keys";
        self.get(OP, &["access-key"]).await?.json::<AccessKeyList>(OP)?.access_keys.within(
            OP,
            MAX_LISTED,
            "access keys",
        )
    }

    async fn list_roles(&self, must_succeed: bool) -> Result<Vec<api::Role>, ProviderError> {
        const OP: &str = "list-iam-roles";
        match self.get(OP, &["iam-role"]).await {
            Ok(r) => r.json::<RoleList>(OP)?.iam_roles.within(OP, MAX_LISTED, "IAM roles"),
            // An issuer key scoped to API keys alone can still serve modes (a) and (c).
            Err(e) if !must_succeed && matches!(e.status, Some(403 | 404)) => {
                tracing::debug!(error = %e, "cannot list IAM roles; looking for keys only");
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl Provider for ExoscaleProvider {
    fn name(&self) -> &'static str {
        "exoscale"
    }

    async fn check_credentials(&self) -> Result<(), ProviderError> {
        self.get("list-api-keys", &["api-key"]).await.map(|_| ())
    }

    async fn create_key(&self, request: &KeyRequest<'_>) -> Result<IssuedKey, ProviderError> {
        let spec = exoscale_spec("create-api-key", request.spec)?;
        let mode = spec.mode().map_err(|e| ProviderError::permanent("create-api-key", e.to_string()))?;
        let name = format!("{}.{}", request.display_name, request.marker);
        let (key, secret, key_ref) = match mode {
            ExoscaleMode::ExistingRole(role_id) => {
                let created = self.create_api_key(&name, role_id).await?;
                let key_ref = KeyRef::ApiKey { key: created.key.clone(), role: None };
                (created.key, created.secret, key_ref)
            }
            ExoscaleMode::OwnRole(role) => {
                let role_id = self.create_role(&name, role, request.marker).await?;
                tracing::debug!(role = %brief(&role_id), "created IAM role for the key");
                let created = match self.create_api_key(&name, &role_id).await {
                    Ok(created) => created,
                    Err(e) => {
                        // Best effort: a role left behind is found again by its labels.
                        if let Err(cleanup) = self.delete_role(&role_id).await {
                            tracing::warn!(role = %brief(&role_id), error = %cleanup, "cannot delete the role of a key that was not created");
                        }
                        return Err(e);
                    }
                };
                let key_ref = KeyRef::ApiKey { key: created.key.clone(), role: Some(role_id) };
                (created.key, created.secret, key_ref)
            }
            ExoscaleMode::Legacy { operations, tags, resources } => {
                let created = self.create_access_key(&name, operations, tags, &resources).await?;
                let key_ref = KeyRef::AccessKey(created.key.clone());
                (created.key, created.secret, key_ref)
            }
        };
        Ok(IssuedKey { access_key_id: key, secret, key_ref: key_ref.to_string(), expires_at: None })
    }

    async fn find_keys(&self, owner_uid: &str, spec: &KeyProvider) -> Result<Vec<OwnedKey>, ProviderError> {
        let mode = match spec {
            KeyProvider::Exoscale(key) => key.mode().ok(),
            _ => None,
        };
        let own_role = matches!(mode, Some(ExoscaleMode::OwnRole(_)));
        let legacy = matches!(mode, Some(ExoscaleMode::Legacy { .. }));

        let api_keys = self.list_api_keys().await?;
        let roles = self.list_roles(own_role).await?;
        let access_keys = if legacy { self.list_access_keys().await? } else { Vec::new() };
        Ok(owned_keys(owner_uid, api_keys, roles, access_keys))
    }

    async fn revoke_key(&self, key_ref: &str, owner_uid: &str) -> Result<Revocation, ProviderError> {
        let Ok(parsed) = KeyRef::parse(key_ref) else {
            return Ok(Revocation::NotOwned(format!("{key_ref:?} is not an Exoscale key reference")));
        };
        // Everything the reference names is read and checked before anything is deleted: a
        // reference pairing our key with someone else's role deletes neither.
        let (key, role) = match &parsed {
            KeyRef::ApiKey { key, role } => (Some(("api-key", key.as_str())), role.as_deref()),
            KeyRef::AccessKey(key) => (Some(("access-key", key.as_str())), None),
            KeyRef::Role(role) => (None, Some(role.as_str())),
        };
        let key_found = match key {
            Some((kind, id)) => self.read_named(kind, id).await?.map(|name| (kind, id, name)),
            None => None,
        };
        if let Some((kind, id, name)) = &key_found {
            if marker_in(name, owner_uid).is_none() {
                return Ok(Revocation::NotOwned(format!(
                    "{kind} {id} does not carry this AccessKey's marker in its name"
                )));
            }
        }
        let role_found = match role {
            Some(id) => self.read_role(id).await?,
            None => None,
        };
        if let Some(found) = &role_found {
            let labels = found.labels.as_ref();
            if labels.and_then(|l| l.get(LABEL_OWNER)).map(String::as_str) != Some(owner_uid) {
                return Ok(Revocation::NotOwned(format!(
                    "IAM role {} is not labelled as this AccessKey's",
                    brief(&found.id)
                )));
            }
        }
        if let Some((kind, id, _)) = &key_found {
            let operation = if *kind == "access-key" { "revoke-access-key" } else { "delete-api-key" };
            self.delete(operation, &[kind, id]).await?;
        }
        if let Some(found) = &role_found {
            self.delete_role(&found.id).await?;
        }
        Ok(if key_found.is_some() || role_found.is_some() { Revocation::Revoked } else { Revocation::AlreadyGone })
    }

    /// The account (this issuer): its API keys, or its legacy access keys.
    fn listing_scope(&self, spec: &KeyProvider) -> String {
        if is_legacy(spec) { "access-keys" } else { "api-keys" }.to_string()
    }

    async fn list_marked(&self, spec: &KeyProvider) -> Result<Vec<ListedKey>, ProviderError> {
        let listed = |key: String, name: &str, key_ref: KeyRef| ListedKey {
            access_key_id: key,
            key_ref: key_ref.to_string(),
            marker: Marker::at_end(name, '.'),
            active: true,
            expires_at: None,
            last_used_at: None,
        };
        if is_legacy(spec) {
            let keys = self.list_access_keys().await?;
            return Ok(keys.into_iter().map(|k| listed(k.key.clone(), &k.name, KeyRef::AccessKey(k.key))).collect());
        }
        let keys = self.list_api_keys().await?;
        // A key with a role of its own (mode b) is revoked together with it.
        let own_roles: std::collections::HashSet<String> = self
            .list_roles(false)
            .await?
            .into_iter()
            .filter(|r| r.labels.as_ref().is_some_and(|l| l.contains_key(LABEL_OWNER)))
            .map(|r| r.id)
            .collect();
        Ok(keys
            .into_iter()
            .map(|k| {
                let role = k.role_id.filter(|r| own_roles.contains(r));
                listed(k.key.clone(), &k.name, KeyRef::ApiKey { key: k.key, role })
            })
            .collect())
    }

    async fn key_present(&self, key_ref: &str) -> Result<Option<bool>, ProviderError> {
        let Ok(parsed) = KeyRef::parse(key_ref) else { return Ok(Some(true)) };
        let (kind, id) = match &parsed {
            KeyRef::ApiKey { key, .. } => ("api-key", key),
            KeyRef::AccessKey(key) => ("access-key", key),
            // A role alone is no key a workload uses.
            KeyRef::Role(_) => return Ok(Some(true)),
        };
        Ok(self.read_named(kind, id).await?.map(|_| true))
    }

    fn template_vars(&self) -> TemplateVars {
        TemplateVars::from([("zone", self.zone.clone()), ("endpoint", self.endpoint.clone())])
    }

    /// `GET /v2/iam-role/{id}`: what an existing role grants. A key that may not read roles
    /// (403) gets an answer too: the policy refuses what it cannot judge.
    async fn answer(&self, question: &Question) -> Result<Answer, ProviderError> {
        let Question::ExoscaleRole(id) = question else {
            return Err(ProviderError::permanent("policy-read", format!("Exoscale cannot tell about {question}")));
        };
        match self.read_role(id).await {
            Ok(Some(role)) => Ok(Answer::Role(role.grants())),
            Ok(None) => Ok(Answer::NoSuchRole),
            Err(e) if e.status == Some(403) => Ok(Answer::RoleUnreadable(e.to_string())),
            Err(e) => Err(e),
        }
    }
}

/// The API endpoint an issuer names, or its zone's.
fn endpoint_of(settings: &ExoscaleIssuer) -> String {
    match settings.endpoint.as_deref() {
        Some(e) => e.trim_end_matches('/').to_string(),
        None => format!("https://api-{}.exoscale.com/v2", settings.zone),
    }
}

/// What `secretTemplate.data` may use besides the key, from the issuer's settings alone.
pub fn template_vars(settings: &ExoscaleIssuer) -> TemplateVars {
    TemplateVars::from([("zone", settings.zone.clone()), ("endpoint", endpoint_of(settings))])
}

fn is_legacy(spec: &KeyProvider) -> bool {
    matches!(spec, KeyProvider::Exoscale(key) if matches!(key.mode(), Ok(ExoscaleMode::Legacy { .. })))
}

fn exoscale_spec<'a>(operation: &str, spec: &'a KeyProvider) -> Result<&'a ExoscaleKey, ProviderError> {
    match spec {
        KeyProvider::Exoscale(key) => Ok(key),
        other => Err(ProviderError::permanent(
            operation,
            format!("an Exoscale issuer cannot issue a {} key: use an exoscale block", other.name()),
        )),
    }
}

/// This owner's marker in a name.
fn marker_in(name: &str, owner_uid: &str) -> Option<Marker> {
    Marker::at_end(name, '.').filter(|m| m.owner() == owner_uid)
}

/// Pairs this owner's keys with this owner's roles (by `role-id`): a key with its own role is
/// revoked together with it; a role left without a key is reported on its own.
fn owned_keys(
    owner_uid: &str,
    api_keys: Vec<api::ApiKey>,
    roles: Vec<api::Role>,
    access_keys: Vec<api::AccessKey>,
) -> Vec<OwnedKey> {
    let mut our_roles: BTreeMap<String, Marker> = roles
        .into_iter()
        .filter_map(|role| {
            let labels = role.labels.unwrap_or_default();
            if labels.get(LABEL_OWNER).map(String::as_str) != Some(owner_uid) {
                return None;
            }
            // Without the attempt label the role is still ours; an empty attempt matches no
            // current attempt, so the controller revokes it as a leftover.
            let marker = match labels.get(LABEL_ATTEMPT) {
                Some(attempt) => Marker::of(owner_uid, attempt),
                None => marker_in(&role.name, owner_uid).unwrap_or_else(|| Marker::of(owner_uid, "")),
            };
            Some((role.id, marker))
        })
        .collect();

    let mut found = Vec::new();
    for key in api_keys {
        let Some(marker) = marker_in(&key.name, owner_uid) else {
            continue;
        };
        let role = key.role_id.filter(|id| our_roles.remove(id).is_some());
        found.push(OwnedKey {
            key_ref: KeyRef::ApiKey { key: key.key.clone(), role }.to_string(),
            access_key_id: Some(key.key),
            marker,
        });
    }
    found.extend(our_roles.into_iter().map(|(role, marker)| OwnedKey {
        access_key_id: None,
        key_ref: KeyRef::Role(role).to_string(),
        marker,
    }));
    found.extend(access_keys.into_iter().filter_map(|key| {
        let marker = marker_in(&key.name, owner_uid)?;
        Some(OwnedKey { key_ref: KeyRef::AccessKey(key.key.clone()).to_string(), access_key_id: Some(key.key), marker })
    }));
    found
}

#[cfg(test)]
mod tests;
