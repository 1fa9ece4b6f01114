//! The issuers as reconciles use them: read from the caches with their credentials, and the
//! provider client of each, rebuilt only when the issuer or its credentials change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::Client;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::api::{Issuer, IssuerKind, IssuerPolicy, IssuerProvider, IssuerRef, IssuerStatus, RateLimit};
use crate::providers::{self, http::HttpConfig, local::LocalStore, Credentials, Provider};

use super::caches::Caches;
use super::error::IssuerUnusable;
use super::sync::lock;
use crate::core::guard::TenantGuard;

/// An issuer as read from the cluster, with its provider client when it can have one.
pub struct LoadedIssuer {
    pub display: String,
    pub settings: IssuerProvider,
    pub status: IssuerStatus,
    pub generation: Option<i64>,
    /// Changes when the issuer's spec or its credentials Secret change.
    pub fingerprint: String,
    /// Being deleted: it still revokes, but mints nothing.
    pub deleting: bool,
    pub provider: Result<Arc<dyn Provider>, IssuerUnusable>,
    pub policy: Option<IssuerPolicy>,
    /// A ClusterKeyIssuer.
    pub cluster_scoped: bool,
    /// `spec.rotationDefaults.windows`.
    pub rotation_windows: Option<Vec<crate::api::RotationWindow>>,
}

impl LoadedIssuer {
    /// What the AccessKey's decisions see of it.
    pub fn facts(&self) -> crate::core::observe::IssuerFacts<'_> {
        crate::core::observe::IssuerFacts {
            display: &self.display,
            settings: &self.settings,
            status: &self.status,
            generation: self.generation,
            deleting: self.deleting,
            policy: self.policy.as_ref(),
            cluster_scoped: self.cluster_scoped,
            provider_error: self.provider.as_ref().err(),
            rotation_windows: self.rotation_windows.as_deref(),
        }
    }
}

/// Provider clients by issuer, rebuilt when the issuer or its credentials change, so that rate
/// limits and token caches live as long as the issuer does.
pub struct Registry {
    http: HttpConfig,
    /// What KeyIssuers may point the operator at; no client is built for one that breaks it.
    guard: TenantGuard,
    local: LocalStore,
    /// By issuer: the fingerprint the client was built for, and the client.
    pub(crate) cache: Mutex<HashMap<String, CachedProvider>>,
}

type CachedProvider = (String, Arc<dyn Provider>);

impl Registry {
    pub fn new(http: HttpConfig, guard: TenantGuard) -> Self {
        Self { http, guard, local: LocalStore::default(), cache: Mutex::new(HashMap::new()) }
    }

    /// Whether an issuer's settings are within what tenants may point the operator at.
    pub fn guard(&self, settings: &IssuerProvider, namespaced: bool) -> Result<(), String> {
        self.guard.check(settings, namespaced).map_err(|e| e.to_string())
    }

    pub fn local_store(&self) -> &LocalStore {
        &self.local
    }

    /// Drops the clients built for `issuer` (any uid it had).
    pub(crate) fn forget(&self, issuer: &str) {
        let prefix = format!("{issuer}@");
        lock(&self.cache).retain(|key, _| !key.starts_with(&prefix));
    }

    /// The issuer `r` (a KeyIssuer in `namespace`, or a ClusterKeyIssuer) from the cache;
    /// `Ok(None)` when it does not exist.
    pub async fn load(
        &self,
        client: &Client,
        caches: &Caches,
        namespace: &str,
        r: &IssuerRef,
        cluster_resource_namespace: &str,
    ) -> Result<Option<LoadedIssuer>, kube::Error> {
        let (display, secret_ns, meta, settings, rate_limit, status, policy, windows) = match r.kind {
            IssuerKind::KeyIssuer => {
                let Some(i) = caches.key_issuers.get(&ObjectRef::new(&r.name).within(namespace)) else {
                    return Ok(None);
                };
                (
                    format!("KeyIssuer {namespace}/{}", r.name),
                    namespace.to_string(),
                    i.metadata.clone(),
                    i.spec.provider.clone(),
                    i.rate_limit(),
                    i.status.clone(),
                    i.spec.policy.clone(),
                    i.rotation_windows().map(<[_]>::to_vec),
                )
            }
            IssuerKind::ClusterKeyIssuer => {
                let Some(i) = caches.cluster_issuers.get(&ObjectRef::new(&r.name)) else {
                    return Ok(None);
                };
                (
                    format!("ClusterKeyIssuer {}", r.name),
                    cluster_resource_namespace.to_string(),
                    i.metadata.clone(),
                    i.spec.provider.clone(),
                    i.rate_limit(),
                    i.status.clone(),
                    i.spec.policy.clone(),
                    i.rotation_windows().map(<[_]>::to_vec),
                )
            }
        };
        let status = status.unwrap_or_default();
        let namespaced = r.kind == IssuerKind::KeyIssuer;
        let mut loaded = self
            .load_settings(client, caches, display, &secret_ns, &meta, settings, rate_limit, status, namespaced)
            .await?;
        loaded.policy = policy;
        loaded.rotation_windows = windows;
        loaded.cluster_scoped = r.kind == IssuerKind::ClusterKeyIssuer;
        Ok(Some(loaded))
    }

    /// Builds (or reuses) the provider client of an issuer object already read.
    #[allow(clippy::too_many_arguments)]
    pub async fn load_settings(
        &self,
        client: &Client,
        caches: &Caches,
        display: String,
        secret_ns: &str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        settings: IssuerProvider,
        rate_limit: RateLimit,
        status: IssuerStatus,
        namespaced: bool,
    ) -> Result<LoadedIssuer, kube::Error> {
        let cache_key = format!("{display}@{}", meta.uid.clone().unwrap_or_default());
        let mut fingerprint =
            format!("{}/{}", meta.uid.clone().unwrap_or_default(), meta.generation.unwrap_or_default());
        let mut credentials = Credentials::new();
        let mut missing = None;
        if let Some(secret_name) = providers::credentials_secret(&settings) {
            let cached = caches.credentials.get(&ObjectRef::new(secret_name).within(secret_ns));
            let secret = match cached {
                Some(s) => Some(Secret::clone(&s)),
                None => Api::<Secret>::namespaced(client.clone(), secret_ns).get_opt(secret_name).await?,
            };
            match secret {
                Some(secret) => {
                    // The data, not the resourceVersion: metadata changes (the in-use finalizer,
                    // labels) must not rebuild the client or re-check the credentials.
                    let mut digest = Sha256::new();
                    for (k, v) in secret.data.iter().flatten() {
                        digest.update((k.len() as u64).to_le_bytes());
                        digest.update(k.as_bytes());
                        digest.update((v.0.len() as u64).to_le_bytes());
                        digest.update(&v.0);
                    }
                    fingerprint.push('/');
                    fingerprint.push_str(&hex::encode(&digest.finalize()[..12]));
                    for (k, v) in secret.data.unwrap_or_default() {
                        // Credentials go straight into SecretString; invalid UTF-8 is left out and
                        // reported as a missing key by the provider builder.
                        if let Ok(text) = String::from_utf8(v.0) {
                            credentials.insert(k, SecretString::from(text));
                        }
                    }
                }
                None => missing = Some(IssuerUnusable::SecretNotFound(format!("{secret_ns}/{secret_name}"))),
            }
        }
        // A KeyIssuer pointing at a host no tenant may name gets no client: nothing is ever sent
        // there, not even a revocation.
        let provider = match (self.guard(&settings, namespaced), missing) {
            (Err(m), _) => Err(IssuerUnusable::Refused(m)),
            (Ok(()), Some(m)) => Err(m),
            (Ok(()), None) => self.provider(&cache_key, &fingerprint, &settings, rate_limit, &credentials),
        };
        let deleting = meta.deletion_timestamp.is_some();
        Ok(LoadedIssuer {
            display,
            settings,
            status,
            generation: meta.generation,
            fingerprint,
            deleting,
            provider,
            policy: None,
            cluster_scoped: false,
            rotation_windows: None,
        })
    }

    fn provider(
        &self,
        cache_key: &str,
        fingerprint: &str,
        settings: &IssuerProvider,
        rate_limit: RateLimit,
        credentials: &Credentials,
    ) -> Result<Arc<dyn Provider>, IssuerUnusable> {
        if let Some((fp, p)) = lock(&self.cache).get(cache_key) {
            if fp == fingerprint {
                return Ok(p.clone());
            }
        }
        // The fingerprint holds the generation: a new rate limit builds a new client.
        let http = HttpConfig {
            requests_per_second: rate_limit.requests_per_second,
            burst: rate_limit.burst,
            ..self.http.clone()
        };
        let p = providers::build(settings, credentials, &self.local, &http)?;
        lock(&self.cache).insert(cache_key.to_string(), (fingerprint.to_string(), p.clone()));
        Ok(p)
    }
}
