//! Cloud providers behind one trait. Each provider lives in a folder of its own and uses the
//! shared HTTP layer (`http`); the controller never sees a provider's wire format.

pub mod error;
pub mod exoscale;
pub mod http;
pub mod local;
pub mod marker;

use std::collections::BTreeMap;

use async_trait::async_trait;
use jiff::Timestamp;
use secrecy::SecretString;

use crate::api::KeyProvider;
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
    async fn find_keys(
        &self,
        owner_uid: &str,
        spec: &KeyProvider,
    ) -> Result<Vec<OwnedKey>, ProviderError>;

    /// Revokes a key by its `key_ref`. A key that is already gone counts as revoked.
    async fn revoke_key(&self, key_ref: &str) -> Result<(), ProviderError>;

    /// `zone`, `region`, `endpoint`: what `secretTemplate.data` may use besides the key.
    fn template_vars(&self) -> TemplateVars;
}

/// The Secret data keys and templates used when `secretTemplate.data` is absent (API.md).
pub fn default_secret_data(provider: &str) -> &'static [(&'static str, &'static str)] {
    match provider {
        "exoscale" => &[
            ("EXOSCALE_API_KEY", "{{ accessKeyId }}"),
            ("EXOSCALE_API_SECRET", "{{ secretAccessKey }}"),
        ],
        "yandex" => &[
            ("AWS_ACCESS_KEY_ID", "{{ accessKeyId }}"),
            ("AWS_SECRET_ACCESS_KEY", "{{ secretAccessKey }}"),
        ],
        "outscale" => &[
            ("OSC_ACCESS_KEY", "{{ accessKeyId }}"),
            ("OSC_SECRET_KEY", "{{ secretAccessKey }}"),
            ("OSC_REGION", "{{ region }}"),
        ],
        _ => &[
            ("ACCESS_KEY_ID", "{{ accessKeyId }}"),
            ("SECRET_ACCESS_KEY", "{{ secretAccessKey }}"),
        ],
    }
}
