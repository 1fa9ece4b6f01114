//! Yandex Cloud: static AWS-compatible access keys of service accounts, over the REST
//! transcoding of `AccessKeyService`, authenticated with IAM tokens (see `auth`).
//!
//! Ownership: the marker ends the key's `description` (the user's description, a space, the
//! marker; 256 characters in all). `status.keyRef` is the resource `id` (what Delete takes),
//! `status.accessKeyId` the AWS-style `keyId`.

mod api;
mod auth;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use self::api::{code, AccessKeyCreated, AccessKeyList, CreateAccessKey, Operation, Status};
use self::auth::{JwtSigner, Token, TokenCache, TokenSource};
use super::error::{brief, excerpt};
use super::http::{ErrorResponse, Http, HttpConfig, Idempotency, Response};
use super::listing::Total;
use super::{endpoint, poll};
use super::{
    ErrorKind, IssuedKey, KeyRequest, ListedKey, Marker, OwnedKey, Provider, ProviderError, Revocation, TemplateVars,
};
use crate::api::{KeyProvider, YandexIssuer};

pub const DEFAULT_ENDPOINT: &str = "https://iam.api.cloud.yandex.net";
pub const DEFAULT_OPERATION_ENDPOINT: &str = "https://operation.api.cloud.yandex.net";

/// `AccessKey.description` holds at most this many characters (proto and REST docs).
pub const MAX_DESCRIPTION_CHARS: usize = 256;

/// The most keys one list page may hold (the API's limit); fewer pages, fewer calls.
const PAGE_SIZE: u32 = api::MAX_PAGE_SIZE;
/// A service account has at most 1,000 keys per cloud quota; this many pages means the
/// service keeps handing out page tokens, and following them further would never end.
const MAX_PAGES: usize = 100;

const ACCESS_KEYS: [&str; 4] = ["iam", "aws-compatibility", "v1", "accessKeys"];

pub struct YandexProvider {
    http: Http,
    /// The IAM endpoint as users see it (templates), without a trailing slash.
    endpoint: String,
    base: Url,
    operation_base: Url,
    default_service_account: Option<String>,
    tokens: TokenCache,
}

impl YandexProvider {
    /// `authorized_key_json` is the issuer Secret's authorized key; `None` takes tokens from
    /// `settings.metadataService` instead.
    pub fn new(
        settings: &YandexIssuer,
        authorized_key_json: Option<SecretString>,
        http: HttpConfig,
    ) -> Result<Self, ProviderError> {
        let endpoint = endpoint_of(settings);
        let base = endpoint::parse("Yandex endpoint", &endpoint)?;
        let operation_base = endpoint::parse(
            "Yandex operationEndpoint",
            settings.operation_endpoint.as_deref().unwrap_or(DEFAULT_OPERATION_ENDPOINT),
        )?;
        let source = match (authorized_key_json, &settings.metadata_service) {
            (Some(json), _) => TokenSource::AuthorizedKey {
                signer: Box::new(JwtSigner::from_authorized_key(&json)?),
                token_url: endpoint::join("configure", &base, &["iam", "v1", "tokens"])?,
            },
            (None, Some(metadata)) => {
                let metadata_base = endpoint::parse("Yandex metadataService.endpoint", &metadata.endpoint)?;
                TokenSource::Metadata {
                    token_url: endpoint::join(
                        "configure",
                        &metadata_base,
                        &["computeMetadata", "v1", "instance", "service-accounts", "default", "token"],
                    )?,
                }
            }
            (None, None) => {
                return Err(ProviderError::permanent(
                    "configure",
                    "set serviceAccountKeySecretRef or metadataService on the issuer",
                ))
            }
        };
        Ok(Self {
            http: Http::new(http)?,
            endpoint,
            base,
            operation_base,
            default_service_account: default_service_account(settings).map(str::to_string),
            tokens: TokenCache::new(source),
        })
    }

    /// The service account of a key: the AccessKey's, else the issuer's default.
    fn service_account<'a>(&'a self, spec: &'a KeyProvider) -> Option<&'a str> {
        service_account_of(self.default_service_account.as_deref(), spec)
    }

    /// One API call with the cached token; a 401 drops the token and the call is made once
    /// more with a fresh one (a token may be revoked or expire earlier than announced).
    async fn call(
        &self,
        operation: &str,
        method: Method,
        url: &Url,
        body: Option<Bytes>,
        idempotency: Idempotency,
    ) -> Result<Response, ProviderError> {
        // One key per create, the same on every attempt: the API dedupes requests by it where
        // it supports idempotency, and ignores it elsewhere.
        let idempotency_key = (idempotency == Idempotency::Creates).then(|| uuid::Uuid::new_v4().to_string());
        let mut refreshed = false;
        loop {
            let token = self.tokens.token(&self.http).await?;
            let result = self
                .http
                .send(
                    operation,
                    idempotency,
                    |client| build(client, operation, &method, url, &token, body.as_ref(), idempotency_key.as_deref()),
                    |response| classify(operation, response),
                )
                .await;
            match result {
                // An unauthenticated request was not acted on, so even a create may be repeated.
                Err(e) if e.status == Some(401) && !refreshed => {
                    tracing::debug!(operation, "IAM token refused; getting a new one");
                    self.tokens.invalidate(token.generation).await;
                    refreshed = true;
                }
                other => return other,
            }
        }
    }

    async fn get(&self, operation: &str, url: &Url) -> Result<Response, ProviderError> {
        self.call(operation, Method::GET, url, None, Idempotency::Idempotent).await
    }

    fn access_keys_url(&self, extra: &[&str]) -> Result<Url, ProviderError> {
        let segments: Vec<&str> = ACCESS_KEYS.iter().chain(extra).copied().collect();
        endpoint::join("build-url", &self.base, &segments)
    }

    /// Every key of a service account, following every page.
    async fn list_keys(
        &self,
        service_account_id: &str,
        page_size: u32,
        all_pages: bool,
    ) -> Result<Vec<api::AccessKey>, ProviderError> {
        const OP: &str = "list-access-keys";
        let mut keys = Vec::new();
        let mut total = Total::default();
        let mut page_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = self.access_keys_url(&[])?;
            {
                let mut query = url.query_pairs_mut();
                query
                    .append_pair("serviceAccountId", service_account_id)
                    .append_pair("pageSize", &page_size.to_string());
                if let Some(t) = &page_token {
                    query.append_pair("pageToken", t);
                }
            }
            let response = self.get(OP, &url).await?;
            total.read(OP, response.body.len())?;
            let page: AccessKeyList = response.json(OP)?;
            let entries = page.access_keys.within(OP, page_size as usize, "access keys")?;
            total.kept(OP, entries.len(), "access keys")?;
            keys.extend(entries);
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) if all_pages => {
                    if page_token.as_deref() == Some(next.as_str()) {
                        return Err(ProviderError::retryable(OP, "the API returned the same page token twice"));
                    }
                    page_token = Some(next);
                }
                _ => return Ok(keys),
            }
        }
        Err(ProviderError::retryable(OP, format!("more than {MAX_PAGES} pages of access keys")))
    }

    /// Polls an operation until it is done.
    async fn wait(&self, operation: &str, op: Operation) -> Result<Operation, ProviderError> {
        poll::until_settled(operation, op, |id| async move {
            const GET_OP: &str = "get-operation";
            let url = endpoint::join(GET_OP, &self.operation_base, &["operations", &id])?;
            self.get(GET_OP, &url).await?.json(GET_OP)
        })
        .await
    }
}

#[async_trait]
impl Provider for YandexProvider {
    fn name(&self) -> &'static str {
        "yandex"
    }

    /// A token, and when the issuer names a default service account, one page of one key of
    /// it: proves the token may read what the operator manages.
    async fn check_credentials(&self) -> Result<(), ProviderError> {
        self.tokens.token(&self.http).await?;
        if let Some(sa) = &self.default_service_account {
            self.list_keys(sa, 1, false).await?;
        }
        Ok(())
    }

    async fn create_key(&self, request: &KeyRequest<'_>) -> Result<IssuedKey, ProviderError> {
        const OP: &str = "create-access-key";
        let user_description = match request.spec {
            KeyProvider::Yandex(key) => key.description.as_deref(),
            other => {
                return Err(ProviderError::permanent(
                    OP,
                    format!("a Yandex issuer cannot issue a {} key: use a yandex block", other.name()),
                ))
            }
        };
        let service_account_id = self.service_account(request.spec).ok_or_else(|| {
            ProviderError::permanent(OP, "spec.yandex.serviceAccountId: set it, or set serviceAccountId on the issuer")
        })?;
        let description = description_with_marker(user_description, request.marker)?;
        let body = serde_json::to_vec(&CreateAccessKey { service_account_id, description: &description })
            .map_err(|e| ProviderError::permanent(OP, format!("cannot encode the request: {e}")))?;
        let url = self.access_keys_url(&[])?;
        let created: AccessKeyCreated =
            self.call(OP, Method::POST, &url, Some(Bytes::from(body)), Idempotency::Creates).await?.json(OP)?;
        if created.access_key.id.is_empty() || created.access_key.key_id.is_empty() {
            // The key may exist; its marker lets `find_keys` find it.
            return Err(ProviderError::retryable(OP, "the API answered without the key's id or keyId"));
        }
        Ok(IssuedKey {
            access_key_id: created.access_key.key_id,
            secret: created.secret,
            key_ref: created.access_key.id,
            expires_at: None,
        })
    }

    async fn find_keys(&self, owner_uid: &str, spec: &KeyProvider) -> Result<Vec<OwnedKey>, ProviderError> {
        // Without a service account no key can have been created.
        let Some(service_account_id) = self.service_account(spec) else {
            return Ok(Vec::new());
        };
        let keys = self.list_keys(service_account_id, PAGE_SIZE, true).await?;
        Ok(owned_keys(owner_uid, keys))
    }

    async fn revoke_key(&self, key_ref: &str, owner_uid: &str) -> Result<Revocation, ProviderError> {
        const OP: &str = "delete-access-key";
        const GET: &str = "get-access-key";
        if !is_resource_id(key_ref) {
            return Ok(Revocation::NotOwned(format!("{key_ref:?} is not a Yandex access key id")));
        }
        let url = self.access_keys_url(&[key_ref])?;
        let key: api::AccessKey = match self.get(GET, &url).await {
            Ok(r) => r.json(GET)?,
            Err(e) if e.is_not_found() => return Ok(Revocation::AlreadyGone),
            Err(e) => return Err(e),
        };
        // Judged only on the key asked for (an answer of some other shape proves nothing).
        if key.id != key_ref {
            return Err(ProviderError::retryable(
                GET,
                format!("asked for access key {key_ref}, got \"{}\"", brief(&key.id)),
            ));
        }
        if owned_keys(owner_uid, vec![key]).is_empty() {
            return Ok(Revocation::NotOwned(format!(
                "access key {key_ref} has no description ending in this AccessKey's marker"
            )));
        }
        let response = match self.call(OP, Method::DELETE, &url, None, Idempotency::Idempotent).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(Revocation::AlreadyGone),
            Err(e) => return Err(e),
        };
        let op = self.wait(OP, response.json(OP)?).await?;
        match op.error {
            None => Ok(Revocation::Revoked),
            Some(status) if status.code == code::NOT_FOUND => Ok(Revocation::AlreadyGone),
            Some(status) => {
                let (kind, message) = from_status(&status);
                let mut e = ProviderError::new(kind, OP, format!("operation {} failed: {message}", brief(&op.id)));
                e.request_id = status.request_id();
                Err(e)
            }
        }
    }

    /// The service account the keys belong to.
    fn listing_scope(&self, spec: &KeyProvider) -> String {
        self.service_account(spec).unwrap_or_default().to_string()
    }

    async fn list_marked(&self, spec: &KeyProvider) -> Result<Vec<ListedKey>, ProviderError> {
        let Some(service_account_id) = self.service_account(spec) else {
            return Ok(Vec::new());
        };
        let keys = self.list_keys(service_account_id, PAGE_SIZE, true).await?;
        Ok(keys
            .into_iter()
            .map(|key| ListedKey {
                marker: Marker::at_end(&key.description, ' '),
                last_used_at: last_used(&key),
                access_key_id: key.key_id,
                key_ref: key.id,
                active: true,
                expires_at: None,
            })
            .collect())
    }

    async fn key_present(&self, key_ref: &str) -> Result<Option<bool>, ProviderError> {
        const GET: &str = "get-access-key";
        if !is_resource_id(key_ref) {
            return Ok(Some(true));
        }
        match self.get(GET, &self.access_keys_url(&[key_ref])?).await {
            Ok(_) => Ok(Some(true)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `lastUsedAt` of the key, read by id.
    async fn last_used(&self, key_ref: &str) -> Result<Option<jiff::Timestamp>, ProviderError> {
        const GET: &str = "get-access-key";
        if !is_resource_id(key_ref) {
            return Ok(None);
        }
        let key: api::AccessKey = match self.get(GET, &self.access_keys_url(&[key_ref])?).await {
            Ok(r) => r.json(GET)?,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        // Judged only on the key asked for (an answer about another key proves nothing).
        if key.id != key_ref {
            return Err(ProviderError::retryable(
                GET,
                format!("asked for access key {key_ref}, got \"{}\"", brief(&key.id)),
            ));
        }
        Ok(last_used(&key))
    }

    fn template_vars(&self) -> TemplateVars {
        TemplateVars::from([("endpoint", self.endpoint.clone())])
    }
}

/// `lastUsedAt`, when it is a time (RFC 3339, of a sane length); anything else reads as unknown.
fn last_used(key: &api::AccessKey) -> Option<jiff::Timestamp> {
    key.last_used_at.as_deref().filter(|t| t.len() <= 64).and_then(|t| t.parse().ok())
}

/// What `secretTemplate.data` may use besides the key, from the issuer's settings alone.
pub fn template_vars(settings: &YandexIssuer) -> TemplateVars {
    TemplateVars::from([("endpoint", endpoint_of(settings))])
}

fn endpoint_of(settings: &YandexIssuer) -> String {
    settings.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT).trim_end_matches('/').to_string()
}

/// The issuer's default service account, if it names one.
fn default_service_account(settings: &YandexIssuer) -> Option<&str> {
    settings.service_account_id.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The service account of a key: the AccessKey's, else the issuer's default.
fn service_account_of<'a>(default: Option<&'a str>, spec: &'a KeyProvider) -> Option<&'a str> {
    let from_spec = match spec {
        KeyProvider::Yandex(key) => key.service_account_id.as_deref(),
        _ => None,
    };
    from_spec.map(str::trim).filter(|s| !s.is_empty()).or(default)
}

/// Yandex's rules of an AccessKey's provider block.
pub fn check_spec(settings: &YandexIssuer, spec: &KeyProvider) -> Result<(), String> {
    if service_account_of(default_service_account(settings), spec).is_none() {
        return Err("spec.yandex.serviceAccountId: set it, or set serviceAccountId on the issuer".into());
    }
    let user = match spec {
        KeyProvider::Yandex(key) => key.description.as_deref(),
        _ => None,
    };
    description_with_marker(user, &Marker::longest()).map(|_| ()).map_err(|e| e.message)
}

/// The key's description: the user's, a space, the marker; refused when over 256 characters.
fn description_with_marker(user: Option<&str>, marker: &Marker) -> Result<String, ProviderError> {
    let marker = marker.to_string();
    let user = user.map(str::trim).unwrap_or_default();
    let description = format!("{user} {marker}").trim().to_string();
    let room = MAX_DESCRIPTION_CHARS.saturating_sub(marker.chars().count() + 1);
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ProviderError::permanent(
            "create-access-key",
            format!(
                "spec.yandex.description is {} characters long; Yandex allows {MAX_DESCRIPTION_CHARS} \
                 and the operator appends a {}-character ownership marker, so keep it to {room}",
                user.chars().count(),
                marker.chars().count() + 1,
            ),
        ));
    }
    Ok(description)
}

/// Whether `key_ref` can be an access key's resource id: letters and digits, nothing that could
/// change the path of the request it goes into.
fn is_resource_id(key_ref: &str) -> bool {
    !key_ref.is_empty() && key_ref.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The keys whose description carries a marker of this owner.
fn owned_keys(owner_uid: &str, keys: Vec<api::AccessKey>) -> Vec<OwnedKey> {
    keys.into_iter()
        .filter_map(|key| {
            let marker = Marker::at_end(&key.description, ' ').filter(|m| m.owner() == owner_uid)?;
            Some(OwnedKey { access_key_id: Some(key.key_id).filter(|k| !k.is_empty()), key_ref: key.id, marker })
        })
        .collect()
}

/// Called once per attempt.
fn build(
    client: &reqwest::Client,
    operation: &str,
    method: &Method,
    url: &Url,
    token: &Token,
    body: Option<&Bytes>,
    idempotency_key: Option<&str>,
) -> Result<reqwest::Request, ProviderError> {
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.value.expose_secret()))
        .map_err(|_| ProviderError::auth(operation, "the IAM token is not a valid HTTP header value"))?;
    authorization.set_sensitive(true);
    let mut request = client
        .request(method.clone(), url.clone())
        .header(AUTHORIZATION, authorization)
        .header(ACCEPT, "application/json");
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    if let Some(body) = body {
        request = request.header(CONTENT_TYPE, "application/json").body(body.clone());
    }
    request.build().map_err(|e| ProviderError::permanent(operation, format!("cannot build the request: {e}")))
}

/// What the controller should do about a gRPC status code, and the message to show.
fn from_status(status: &Status) -> (ErrorKind, String) {
    let kind = match status.code {
        code::UNAUTHENTICATED | code::PERMISSION_DENIED => ErrorKind::Auth,
        // Throttling, outages, and conflicts with a concurrent change pass by themselves.
        // RESOURCE_EXHAUSTED also covers quotas; retrying with backoff while the condition
        // shows the message is what the user wants there too (a key freed elsewhere).
        code::RESOURCE_EXHAUSTED
        | code::UNAVAILABLE
        | code::DEADLINE_EXCEEDED
        | code::ABORTED
        | code::INTERNAL
        | code::UNKNOWN
        | code::CANCELLED
        | code::DATA_LOSS => ErrorKind::Retryable,
        // INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, OUT_OF_RANGE,
        // UNIMPLEMENTED: the same request will fail the same way.
        _ => ErrorKind::Permanent,
    };
    let text = status.message.trim();
    let message = match (code::name(status.code), text.is_empty()) {
        (Some(name), false) => format!("{name}: {}", excerpt(text)),
        (Some(name), true) => name.to_string(),
        (None, false) => format!("code {}: {}", status.code, excerpt(text)),
        (None, true) => format!("code {}", status.code),
    };
    (kind, message)
}

/// Classifies a non-2xx answer: from the gRPC status in the body when there is one (the code
/// is authoritative), else from the HTTP status alone.
fn classify(operation: &str, response: ErrorResponse<'_>) -> ProviderError {
    let request_id = header_request_id(response.headers);
    let status = serde_json::from_slice::<Status>(response.body).ok().filter(|s| s.code != 0);
    let Some(status) = status else {
        let text = String::from_utf8_lossy(response.body).trim().to_string();
        let message = if text.is_empty() { "no error message".to_string() } else { excerpt(&text) };
        return ProviderError::from_status(operation, response.status, message).with_request_id(request_id);
    };
    let (kind, message) = from_status(&status);
    // `is_not_found` asks the HTTP status; the transcoder maps NOT_FOUND to 404, and an
    // answer that does not still means "not found".
    let http_status = if status.code == code::NOT_FOUND { 404 } else { response.status };
    ProviderError::new(kind, operation, message)
        .with_status(http_status)
        .with_request_id(request_id.or_else(|| status.request_id()))
}

/// The request id from the response headers. The gathered docs only show the id inside the
/// body (`google.rpc.RequestInfo.requestId`, read by `Status::request_id` as the fallback);
/// `x-request-id` and `x-server-trace-id` are the headers Yandex's API gateway is known to send,
/// undocumented in our sources, so both are read and either may be absent.
fn header_request_id(headers: &HeaderMap) -> Option<String> {
    ["x-request-id", "x-server-trace-id"]
        .iter()
        .find_map(|name| headers.get(*name)?.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(excerpt)
}

#[cfg(test)]
mod tests;
