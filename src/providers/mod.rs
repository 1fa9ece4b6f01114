//! Cloud providers behind one trait. Each provider lives in a folder of its own and uses the
//! shared HTTP layer (`http`); the controller never sees a provider's wire format.

pub mod bounded;
pub mod endpoint;
pub mod error;
pub mod exoscale;
pub mod http;
pub mod listing;
pub mod local;
pub mod marker;
pub mod outscale;
pub mod policy_read;
pub mod poll;
pub mod yandex;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use secrecy::{ExposeSecret, SecretString};

use crate::api::{IssuerProvider, KeyProvider};
pub use error::{ErrorKind, ProviderError};
pub use marker::Marker;

/// What the controller asks a provider to create.
#[derive(Debug)]
pub struct KeyRequest<'a> {
    /// The ownership marker the key must carry.
    pub marker: &'a Marker,
    /// The name users see at the provider before the marker, e.g. `team-a-backups`.
    pub display_name: String,
    /// The AccessKey's provider block; its variant matches the provider.
    pub spec: &'a KeyProvider,
    pub now: Timestamp,
}

/// A freshly created key. The secret exists only here until it is written to the Secret.
#[derive(Debug)]
pub struct IssuedKey {
    /// Public key id (never secret): `status.accessKeyId`, the Secret's annotation.
    pub access_key_id: String,
    pub secret: SecretString,
    /// Provider-side reference used to revoke (`status.keyRef`).
    pub key_ref: String,
    pub expires_at: Option<Timestamp>,
}

/// A key found at the provider carrying one of this AccessKey's markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedKey {
    /// Public key id, where the provider has one yet (a role without its key has none).
    pub access_key_id: Option<String>,
    pub key_ref: String,
    pub marker: Marker,
}

/// A key a drift check found at the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    pub access_key_id: String,
    /// What revokes it (`status.keyRef` form).
    pub key_ref: String,
    /// Where the operator puts one; `None` for keys without (made by hand, or with the marker
    /// edited away): they still prove a key exists.
    pub marker: Option<Marker>,
    /// Usable: not deactivated (an Outscale key can be `INACTIVE`).
    pub active: bool,
    /// When the provider says it expires: `None` if it does not say, `Some(None)` if never
    /// (Outscale says).
    pub expires_at: Option<Option<Timestamp>>,
    /// When the provider last saw it used, if it says (Yandex).
    pub last_used_at: Option<Timestamp>,
}

/// What a revocation did. The provider reads the key first: only a key carrying a marker of
/// the AccessKey asking is revoked, so a status edited to name some other key revokes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Revoked,
    /// Not at the provider (any more): counts as revoked.
    AlreadyGone,
    /// The key exists but does not carry this owner's marker where the operator puts it;
    /// nothing was changed. Says what was found instead.
    NotOwned(String),
}

impl Revocation {
    /// The key is no longer usable (revoked now or before).
    pub fn is_done(&self) -> bool {
        !matches!(self, Self::NotOwned(_))
    }
}

/// Template variables a provider contributes besides the key itself.
pub type TemplateVars = BTreeMap<&'static str, String>;

#[async_trait]
pub trait Provider: Send + Sync {
    /// `exoscale`, `yandex`, `outscale` or `local`.
    fn name(&self) -> &'static str;

    /// One read-only call with the issuer's credentials: is the issuer usable?
    async fn check_credentials(&self) -> Result<(), ProviderError>;

    /// Creates a key carrying `request.marker`.
    async fn create_key(&self, request: &KeyRequest<'_>) -> Result<IssuedKey, ProviderError>;

    /// Every key (and helper resource, like an Exoscale role) carrying a marker of this owner.
    async fn find_keys(&self, owner_uid: &str, spec: &KeyProvider) -> Result<Vec<OwnedKey>, ProviderError>;

    /// Revokes the key `key_ref` names if, read at the provider, it carries a marker of
    /// `owner_uid`. A reference this operator could not have written is [`Revocation::NotOwned`].
    async fn revoke_key(&self, key_ref: &str, owner_uid: &str) -> Result<Revocation, ProviderError>;

    /// What one drift listing covers for keys made for `spec` (an Exoscale account's API keys, a
    /// Yandex service account, an Outscale identity): AccessKeys of one issuer with the same
    /// scope share one listing.
    fn listing_scope(&self, spec: &KeyProvider) -> String;

    /// Every key in `spec`'s listing scope, with its ownership marker where it has one (of any
    /// owner or installation), in one batched listing (all pages).
    async fn list_marked(&self, spec: &KeyProvider) -> Result<Vec<ListedKey>, ProviderError>;

    /// Whether the key `key_ref` names exists, asked by id: `Some(active)`, or `None` when it is
    /// gone. A drift check asks before it replaces a key its listing did not show (the listing
    /// may cover another scope than the one the key was made in).
    async fn key_present(&self, key_ref: &str) -> Result<Option<bool>, ProviderError>;

    /// When the provider last saw the key `key_ref` names used, asked by id: `None` when no use
    /// is known (never used, gone, or a provider that does not report use, which is every one
    /// but Yandex). Asked once per replaced key, when its grace period ends.
    async fn last_used(&self, _key_ref: &str) -> Result<Option<Timestamp>, ProviderError> {
        Ok(None)
    }

    /// How long a key made for `spec` lives, if the provider expires it (to know the expiry of a
    /// key adopted after a crash, whose create answer was never seen).
    fn lifetime(&self, _spec: &KeyProvider) -> Option<std::time::Duration> {
        None
    }

    /// `zone`, `region`, `endpoint`: what `secretTemplate.data` may use besides the key.
    fn template_vars(&self) -> TemplateVars;

    /// Answers a question of the issuer's policy with one read-only call (see `policy_read`).
    /// Providers whose policy needs no read are never asked.
    async fn answer(&self, question: &policy_read::Question) -> Result<policy_read::Answer, ProviderError> {
        Err(ProviderError::permanent("policy-read", format!("{} cannot tell about {question}", self.name())))
    }
}

/// Provider-specific rules of an AccessKey's provider block, checked before anything is created;
/// the message names the field and says what to do. From the issuer's settings alone, so that a
/// spec is judged alike by the operator and by `cloudkeys inspect`, credentials or not.
pub fn check_spec(settings: &IssuerProvider, spec: &KeyProvider) -> Result<(), String> {
    match settings {
        IssuerProvider::Yandex(y) => yandex::check_spec(y, spec),
        IssuerProvider::Outscale(_) => outscale::check_spec(spec),
        IssuerProvider::Exoscale(_) | IssuerProvider::Local(_) => Ok(()),
    }
}

/// `zone`, `region`, `endpoint`: what `secretTemplate.data` may use besides the key, from the
/// issuer's settings alone (what [`Provider::template_vars`] of its client says).
pub fn template_vars(settings: &IssuerProvider) -> TemplateVars {
    match settings {
        IssuerProvider::Exoscale(e) => exoscale::template_vars(e),
        IssuerProvider::Outscale(o) => outscale::template_vars(o),
        IssuerProvider::Yandex(y) => yandex::template_vars(y),
        IssuerProvider::Local(_) => TemplateVars::new(),
    }
}

/// The Secret in the issuer's Secret namespace holding its admin credentials, if the provider
/// needs one (`local` and Yandex's metadata service do not).
pub fn credentials_secret(settings: &IssuerProvider) -> Option<&str> {
    match settings {
        IssuerProvider::Exoscale(e) => Some(&e.credentials_secret_ref.name),
        IssuerProvider::Outscale(o) => Some(&o.credentials_secret_ref.name),
        IssuerProvider::Yandex(y) => y.service_account_key_secret_ref.as_ref().map(|r| r.name.as_str()),
        IssuerProvider::Local(_) => None,
    }
}

/// Admin credentials read from the issuer's Secret, by data key.
pub type Credentials = BTreeMap<String, SecretString>;

/// Why no provider client could be built from an issuer's settings and credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    #[error("Secret {secret} has no data key {key}")]
    MissingCredential { secret: String, key: String },
    /// The settings or the credentials do not make a client (its kind says which).
    #[error(transparent)]
    Invalid(#[from] ProviderError),
}

fn credential(credentials: &Credentials, secret: &str, key: &str) -> Result<SecretString, BuildError> {
    credentials
        .get(key)
        .cloned()
        .ok_or_else(|| BuildError::MissingCredential { secret: secret.to_string(), key: key.to_string() })
}

/// An admin key id goes into a header verbatim; one that cannot is a copy slip to name at once.
fn header_safe_key(name: &str, key: &str) -> Result<(), ProviderError> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProviderError::auth(
            "configure",
            format!("{name} is empty or holds whitespace or non-ASCII characters"),
        ));
    }
    Ok(())
}

/// Builds the provider client an issuer describes. The error says what the user must fix.
pub fn build(
    settings: &IssuerProvider,
    credentials: &Credentials,
    local: &local::LocalStore,
    http: &http::HttpConfig,
) -> Result<Arc<dyn Provider>, BuildError> {
    let secret = credentials_secret(settings).unwrap_or_default();
    let http = &http::HttpConfig { provider: settings.name(), ..http.clone() };
    match settings {
        IssuerProvider::Local(_) => Ok(Arc::new(local::LocalProvider::new(local.clone()))),
        IssuerProvider::Exoscale(e) => {
            let key = credential(credentials, secret, "EXOSCALE_API_KEY")?;
            let api_secret = credential(credentials, secret, "EXOSCALE_API_SECRET")?;
            let provider =
                exoscale::ExoscaleProvider::new(e, key.expose_secret().trim().to_string(), api_secret, http.clone())?;
            Ok(Arc::new(provider))
        }
        IssuerProvider::Outscale(o) => {
            let key = credential(credentials, secret, "OSC_ACCESS_KEY")?;
            let secret_key = credential(credentials, secret, "OSC_SECRET_KEY")?;
            let provider =
                outscale::OutscaleProvider::new(o, key.expose_secret().trim().to_string(), secret_key, http.clone())?;
            Ok(Arc::new(provider))
        }
        IssuerProvider::Yandex(y) => {
            // No Secret in metadata-service mode: tokens come from the node.
            let key_json = match &y.service_account_key_secret_ref {
                Some(r) => Some(credential(credentials, secret, &r.key)?),
                None => None,
            };
            let provider = yandex::YandexProvider::new(y, key_json, http.clone())?;
            Ok(Arc::new(provider))
        }
    }
}

/// The Secret data keys and templates used when `secretTemplate.data` is absent (docs/api.md, "The Secret").
pub fn default_secret_data(provider: &str) -> &'static [(&'static str, &'static str)] {
    match provider {
        "exoscale" => &[("EXOSCALE_API_KEY", "{{ accessKeyId }}"), ("EXOSCALE_API_SECRET", "{{ secretAccessKey }}")],
        "yandex" => &[("AWS_ACCESS_KEY_ID", "{{ accessKeyId }}"), ("AWS_SECRET_ACCESS_KEY", "{{ secretAccessKey }}")],
        "outscale" => &[
            ("OSC_ACCESS_KEY", "{{ accessKeyId }}"),
            ("OSC_SECRET_KEY", "{{ secretAccessKey }}"),
            ("OSC_REGION", "{{ region }}"),
        ],
        _ => &[("ACCESS_KEY_ID", "{{ accessKeyId }}"), ("SECRET_ACCESS_KEY", "{{ secretAccessKey }}")],
    }
}
