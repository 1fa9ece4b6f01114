//! Exoscale: IAM API keys bound to an existing role (mode a) or to a role created for the key
//! alone (mode b), and legacy access keys (mode c), over the signed v2 API.
//!
//! Ownership: every key and role is named `<display name>.<marker>`; a role also carries the
//! owner and attempt as labels, because a role whose key was never created has no other trace.

mod api;
mod sign;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use secrecy::SecretString;
use serde::Serialize;
use url::Url;

use self::api::{
    AccessKeyCreated, AccessKeyList, AccessKeyResource, ApiKeyCreated, ApiKeyList, CreateAccessKey, CreateApiKey,
    CreateRole, ErrorBody, NamedKey, Operation, OperationState, Policy, RoleList, LABEL_ATTEMPT, LABEL_MANAGED_BY,
    LABEL_OWNER,
};
use super::http::{ErrorResponse, Http, HttpConfig, Idempotency, Response};
use super::{
    ErrorKind, IssuedKey, KeyRequest, ListedKey, Marker, OwnedKey, Provider, ProviderError, Revocation, TemplateVars,
};
use crate::api::validation::{ExoscaleMode, ExoscaleResource};
use crate::api::{ExoscaleIssuer, ExoscaleKey, ExoscaleRole, KeyProvider};

/// Operations settle within seconds; two minutes of polling means something is stuck, and the
/// controller's own retry (which finds leftovers by marker) is the better place to wait.
const POLL_FIRST: Duration = Duration::from_millis(250);
const POLL_MAX: Duration = Duration::from_secs(5);
const POLL_GIVE_UP: Duration = Duration::from_secs(120);

/// Provider error messages are shown in conditions; keep them readable.
const MAX_MESSAGE_CHARS: usize = 300;

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
        let base = Url::parse(&endpoint)
            .ok()
            .filter(|u| !u.cannot_be_a_base() && u.query().is_none() && u.fragment().is_none())
            .ok_or_else(|| {
                ProviderError::permanent("configure", format!("invalid Exoscale API endpoint {endpoint:?}"))
            })?;
        // The key goes into a header verbatim; a stray newline from `echo` would otherwise
        // surface as an opaque transport error on every call.
        if api_key.is_empty() || !api_key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ProviderError::auth(
                "configure",
                "EXOSCALE_API_KEY is empty or holds whitespace or non-ASCII characters",
            ));
        }
        Ok(Self { http: Http::new(http)?, base, endpoint, zone: settings.zone.clone(), api_key, api_secret })
    }

    /// The endpoint with `segments` appended, each percent-encoded so that an id can never
    /// change the path (`/` becomes `%2F`; `.` and `..` are refused since `Url` would drop them).
    fn url(&self, operation: &str, segments: &[&str]) -> Result<Url, ProviderError> {
        if let Some(bad) = segments.iter().find(|s| s.is_empty() || **s == "." || **s == "..") {
            return Err(ProviderError::permanent(operation, format!("invalid path segment {bad:?}")));
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ProviderError::permanent(operation, "the endpoint cannot take a path"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
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

    /// Polls an operation until it leaves `pending`, with doubling pauses.
    async fn wait(&self, operation: &str, mut op: Operation) -> Result<Operation, ProviderError> {
        let deadline = tokio::time::Instant::now() + POLL_GIVE_UP;
        let mut pause = POLL_FIRST;
        while op.state == OperationState::Pending {
            let id = op.id.clone().ok_or_else(|| {
                ProviderError::retryable(operation, "the API returned a pending operation without an id")
            })?;
            if tokio::time::Instant::now() + pause > deadline {
                return Err(ProviderError::retryable(
                    operation,
                    format!("operation {id} still pending after {} s", POLL_GIVE_UP.as_secs()),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
            op = self.get("get-operation", &["operation", &id]).await?.json("get-operation")?;
        }
        Ok(op)
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
                    let message = format!("asked for {kind} {id}, the API answered with {}", found.key);
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
                    return Err(ProviderError::retryable(OP, format!("asked for IAM role {id}, got {}", role.id)));
                }
                Ok(Some(role))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list_roles(&self, must_succeed: bool) -> Result<Vec<api::Role>, ProviderError> {
        const OP: &str = "list-iam-roles";
        match self.get(OP, &["iam-role"]).await {
            Ok(r) => Ok(r.json::<RoleList>(OP)?.iam_roles),
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
                tracing::debug!(role = %role_id, "created IAM role for the key");
                let created = match self.create_api_key(&name, &role_id).await {
                    Ok(created) => created,
                    Err(e) => {
                        // Best effort: a role left behind is found again by its labels.
                        if let Err(cleanup) = self.delete_role(&role_id).await {
                            tracing::warn!(role = %role_id, error = %cleanup, "cannot delete the role of a key that was not created");
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

        const LIST_KEYS: &str = "list-api-keys";
        let api_keys = self.get(LIST_KEYS, &["api-key"]).await?.json::<ApiKeyList>(LIST_KEYS)?.api_keys;
        let roles = self.list_roles(own_role).await?;
        let access_keys = if legacy {
            const LIST_ACCESS: &str = "list-access-keys";
            self.get(LIST_ACCESS, &["access-key"]).await?.json::<AccessKeyList>(LIST_ACCESS)?.access_keys
        } else {
            Vec::new()
        };
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
                return Ok(Revocation::NotOwned(format!("IAM role {} is not labelled as this AccessKey's", found.id)));
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
            const OP: &str = "list-access-keys";
            let keys = self.get(OP, &["access-key"]).await?.json::<AccessKeyList>(OP)?.access_keys;
            return Ok(keys.into_iter().map(|k| listed(k.key.clone(), &k.name, KeyRef::AccessKey(k.key))).collect());
        }
        const OP: &str = "list-api-keys";
        let keys = self.get(OP, &["api-key"]).await?.json::<ApiKeyList>(OP)?.api_keys;
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

/// What `status.keyRef` holds: `api-key:<key>`, `api-key:<key>;role:<role id>`,
/// `access-key:<key>`, or `role:<role id>` for a role whose key was never created.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyRef {
    ApiKey { key: String, role: Option<String> },
    AccessKey(String),
    Role(String),
}

impl KeyRef {
    fn parse(text: &str) -> Result<Self, ProviderError> {
        let invalid = || ProviderError::permanent("revoke-key", format!("not an Exoscale key reference: {text:?}"));
        // Key and role ids are letters, digits and dashes (`EXO…`, UUIDs): nothing that could
        // change the path of the request it goes into.
        let id_ok = |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let mut parts =
            text.split(';').map(|part| part.split_once(':').filter(|(_, id)| id_ok(id)).ok_or_else(invalid));
        let first = parts.next().ok_or_else(invalid)??;
        let second = parts.next().transpose()?;
        if parts.next().is_some() {
            return Err(invalid());
        }
        match (first, second) {
            (("api-key", key), None) => Ok(Self::ApiKey { key: key.to_string(), role: None }),
            (("api-key", key), Some(("role", role))) => {
                Ok(Self::ApiKey { key: key.to_string(), role: Some(role.to_string()) })
            }
            (("access-key", key), None) => Ok(Self::AccessKey(key.to_string())),
            (("role", role), None) => Ok(Self::Role(role.to_string())),
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ApiKey { key, role: None } => write!(f, "api-key:{key}"),
            Self::ApiKey { key, role: Some(role) } => write!(f, "api-key:{key};role:{role}"),
            Self::AccessKey(key) => write!(f, "access-key:{key}"),
            Self::Role(role) => write!(f, "role:{role}"),
        }
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

/// A finished operation that did not succeed, as an error. Reasons that say the request itself
/// was wrong are permanent; the rest (busy, fault, unavailable, timeout…) may pass.
fn succeeded(operation: &str, op: Operation) -> Result<Operation, ProviderError> {
    if op.state == OperationState::Success {
        return Ok(op);
    }
    let permanent = op.state == OperationState::Failure
        && matches!(op.reason.as_deref(), Some("incorrect" | "forbidden" | "unsupported" | "conflict"));
    let state = match op.state {
        OperationState::Failure => "failed",
        OperationState::Timeout => "timed out",
        _ => "ended in an unknown state",
    };
    let mut message = format!("operation {} {state}", op.id.as_deref().unwrap_or("?"));
    if let Some(reason) = &op.reason {
        message.push_str(&format!(" ({reason})"));
    }
    if let Some(detail) = op.message.as_deref().filter(|m| !m.is_empty()) {
        message.push_str(": ");
        message.push_str(&truncate(detail));
    }
    let kind = if permanent { ErrorKind::Permanent } else { ErrorKind::Retryable };
    Err(ProviderError::new(kind, operation, message))
}

/// Classifies a non-2xx answer from its status and the provider's own words.
fn classify(operation: &str, response: ErrorResponse<'_>) -> ProviderError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(response.body).ok();
    let retry_after =
        parsed.as_ref().and_then(|b| b.retry_after).filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64);
    let message = parsed
        .as_ref()
        .and_then(message_of)
        .unwrap_or_else(|| String::from_utf8_lossy(response.body).trim().to_string());
    let message = if message.is_empty() { "no error message".to_string() } else { truncate(&message) };
    ProviderError::from_status(operation, response.status, message).with_retry_after(retry_after)
}

fn message_of(body: &ErrorBody) -> Option<String> {
    fn non_empty(s: &Option<String>) -> Option<&str> {
        s.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }
    if let Some(m) = non_empty(&body.message).or_else(|| non_empty(&body.error)) {
        return Some(m.to_string());
    }
    match (non_empty(&body.title), non_empty(&body.detail)) {
        (Some(t), Some(d)) => Some(format!("{t}: {d}")),
        (Some(one), None) | (None, Some(one)) => Some(one.to_string()),
        (None, None) => None,
    }
}

fn truncate(text: &str) -> String {
    super::error::sanitize_message(text, MAX_MESSAGE_CHARS)
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderMap;

    use super::*;

    const UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";
    const OTHER: &str = "11111111-2222-4333-8444-555555555555";

    fn issuer(endpoint: Option<&str>) -> ExoscaleIssuer {
        ExoscaleIssuer {
            zone: "de-fra-1".into(),
            endpoint: endpoint.map(String::from),
            credentials_secret_ref: crate::api::SecretRef { name: "s".into() },
        }
    }

    fn provider(endpoint: Option<&str>) -> ExoscaleProvider {
        ExoscaleProvider::new(
            &issuer(endpoint),
            "EXOxxxxxxxxxxxxxxxxxxxxxxxx".into(),
            SecretString::from("X".repeat(43)),
            HttpConfig::default(),
        )
        .unwrap_or_else(|e| panic!("provider builds: {e}"))
    }

    fn error(status: u16, body: &str) -> ProviderError {
        let headers = HeaderMap::new();
        classify("create-api-key", ErrorResponse { status, headers: &headers, body: body.as_bytes() })
    }

    fn op(json: &str) -> Operation {
        serde_json::from_str(json).expect("operation parses")
    }

    #[test]
    fn key_refs_round_trip() {
        for text in [
            "api-key:EXO19c207e5f483f2d85f99b709",
            "api-key:EXO19c207e5f483f2d85f99b709;role:7b1e0000-0000-4000-8000-000000000001",
            "access-key:EXOabc",
            "role:7b1e0000-0000-4000-8000-000000000001",
        ] {
            let parsed = KeyRef::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(
            KeyRef::parse("api-key:K;role:R").expect("parses"),
            KeyRef::ApiKey { key: "K".into(), role: Some("R".into()) }
        );
    }

    #[test]
    fn malformed_key_refs_are_permanent_errors() {
        for text in [
            "",
            "EXO19c207e5f483f2d85f99b709",
            "api-key:",
            "api-key:K;",
            "api-key:K;role:",
            "role:R;api-key:K",
            "access-key:K;role:R",
            "api-key:K;role:R;role:S",
            "bucket:K",
        ] {
            let e = KeyRef::parse(text).expect_err(text);
            assert_eq!(e.kind, ErrorKind::Permanent, "{text}");
        }
    }

    #[test]
    fn endpoint_defaults_to_the_zone_and_loses_a_trailing_slash() {
        let p = provider(None);
        assert_eq!(p.endpoint, "https://api-de-fra-1.exoscale.com/v2");
        assert_eq!(
            p.template_vars(),
            TemplateVars::from([
                ("zone", "de-fra-1".to_string()),
                ("endpoint", "https://api-de-fra-1.exoscale.com/v2".to_string()),
            ])
        );
        assert_eq!(provider(Some("http://127.0.0.1:8080/v2/")).endpoint, "http://127.0.0.1:8080/v2");
    }

    #[test]
    fn request_paths_extend_the_endpoint_and_escape_ids() {
        let p = provider(Some("http://127.0.0.1:8080/v2/"));
        let url = p.url("t", &["api-key", "EXO1"]).expect("url");
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/v2/api-key/EXO1");
        assert_eq!(url.path(), "/v2/api-key/EXO1");
        let url = p.url("t", &["api-key", "a/../b c"]).expect("url");
        assert_eq!(url.path(), "/v2/api-key/a%2F..%2Fb%20c");
        for bad in ["", ".", ".."] {
            assert_eq!(p.url("t", &["api-key", bad]).expect_err(bad).kind, ErrorKind::Permanent);
        }
    }

    #[test]
    fn bad_settings_are_refused_at_construction() {
        let bad_key =
            ExoscaleProvider::new(&issuer(None), "EXO1\n".into(), SecretString::from("s"), HttpConfig::default());
        assert!(matches!(bad_key, Err(e) if e.kind == ErrorKind::Auth));
        let bad_endpoint = ExoscaleProvider::new(
            &issuer(Some("not a url")),
            "EXO1".into(),
            SecretString::from("s"),
            HttpConfig::default(),
        );
        assert!(matches!(bad_endpoint, Err(e) if e.kind == ErrorKind::Permanent));
    }

    #[test]
    fn error_messages_come_from_the_body_in_each_known_shape() {
        let e =
            error(400, r#"{"message":"invalid request: Cannot generate IAMv2 `Access Key` using a IAMv3 `Api Key`"}"#);
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert_eq!(e.message, "invalid request: Cannot generate IAMv2 `Access Key` using a IAMv3 `Api Key`");
        assert_eq!(e.status, Some(400));
        assert_eq!(e.operation, "create-api-key");

        let e = error(403, r#"{"message":"Invalid request signature"}"#);
        assert_eq!(e.kind, ErrorKind::Auth);

        let e = error(429, r#"{"error":"rate limited","retry_after":2.5}"#);
        assert_eq!(e.kind, ErrorKind::Retryable);
        assert_eq!(e.message, "rate limited");
        assert_eq!(e.retry_after, Some(Duration::from_millis(2500)));

        let e = error(422, r#"{"type":"about:blank","title":"Unprocessable","detail":"bad policy"}"#);
        assert_eq!(e.message, "Unprocessable: bad policy");

        let e = error(502, "<html>Bad Gateway</html>\n");
        assert_eq!(e.kind, ErrorKind::Retryable);
        assert_eq!(e.message, "Bad Gateway", "markup is dropped");

        assert_eq!(error(404, "").message, "no error message");
        assert!(error(404, "").is_not_found());
    }

    #[test]
    fn long_error_bodies_are_cut() {
        let e = error(500, &"é".repeat(1000));
        assert_eq!(e.message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(e.message.ends_with('…'));
    }

    #[test]
    fn failed_operations_are_permanent_only_for_refused_requests() {
        let e = succeeded(
            "create-iam-role",
            op(r#"{"id":"o1","state":"failure","reason":"incorrect","message":"bad expression"}"#),
        )
        .expect_err("failure");
        assert_eq!(e.kind, ErrorKind::Permanent);
        assert_eq!(e.message, "operation o1 failed (incorrect): bad expression");

        for json in [
            r#"{"id":"o1","state":"failure","reason":"busy"}"#,
            r#"{"id":"o1","state":"timeout"}"#,
            r#"{"id":"o1","state":"something-new"}"#,
        ] {
            let e = succeeded("create-iam-role", op(json)).expect_err(json);
            assert_eq!(e.kind, ErrorKind::Retryable, "{json}");
        }
        assert!(succeeded("x", op(r#"{"id":"o1","state":"success"}"#)).is_ok());
    }

    #[test]
    fn markers_are_found_behind_display_names_that_contain_ck() {
        let marker = Marker::of(UID, "abc0123456");
        let name = format!("rack-backups.{marker}");
        assert_eq!(marker_in(&name, UID), Some(marker));
        assert_eq!(marker_in(&name, OTHER), None);
        assert_eq!(marker_in("backups", UID), None);
    }

    fn api_key(name: &str, key: &str, role: &str) -> api::ApiKey {
        api::ApiKey { name: name.into(), key: key.into(), role_id: Some(role.into()) }
    }

    fn role(id: &str, owner: &str, attempt: Option<&str>) -> api::Role {
        let mut labels = BTreeMap::from([(LABEL_OWNER.to_string(), owner.to_string())]);
        if let Some(a) = attempt {
            labels.insert(LABEL_ATTEMPT.to_string(), a.to_string());
        }
        api::Role {
            id: id.into(),
            name: format!("n.ck-{owner}-{}", attempt.unwrap_or("zzzzzzzzzz")),
            labels: Some(labels),
        }
    }

    #[test]
    fn keys_pair_with_their_own_roles_and_orphan_roles_stand_alone() {
        let a1 = Marker::of(UID, "aaaaaaaaaa");
        let a2 = Marker::of(UID, "bbbbbbbbbb");
        let a3 = Marker::of(UID, "cccccccccc");
        let keys = vec![
            api_key(&format!("ns-k.{a1}"), "EXO1", "R1"),
            api_key(&format!("ns-k.{a2}"), "EXO2", "shared-role"),
            api_key("someone-else", "EXO3", "R1"),
            api_key(&format!("ns-k.ck-{OTHER}-aaaaaaaaaa"), "EXO4", "R9"),
        ];
        let roles = vec![
            role("R1", UID, Some("aaaaaaaaaa")),
            role("R3", UID, Some("cccccccccc")),
            role("R9", OTHER, Some("aaaaaaaaaa")),
            api::Role { id: "unlabelled".into(), name: format!("x.{a3}"), labels: None },
        ];
        let access = vec![
            api::AccessKey { name: format!("legacy.{a3}"), key: "EXO5".into() },
            api::AccessKey { name: "legacy".into(), key: "EXO6".into() },
        ];
        assert_eq!(
            owned_keys(UID, keys, roles, access),
            vec![
                OwnedKey { access_key_id: Some("EXO1".into()), key_ref: "api-key:EXO1;role:R1".into(), marker: a1 },
                OwnedKey { access_key_id: Some("EXO2".into()), key_ref: "api-key:EXO2".into(), marker: a2 },
                OwnedKey { access_key_id: None, key_ref: "role:R3".into(), marker: a3.clone() },
                OwnedKey { access_key_id: Some("EXO5".into()), key_ref: "access-key:EXO5".into(), marker: a3 },
            ]
        );
    }

    #[test]
    fn a_role_without_the_attempt_label_is_still_reported() {
        let found = owned_keys(UID, vec![], vec![role("R", UID, None)], vec![]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key_ref, "role:R");
        assert_eq!(found[0].marker, Marker::of(UID, "zzzzzzzzzz"));
    }
}
