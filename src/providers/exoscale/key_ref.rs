//! `status.keyRef` of an Exoscale key: what was created, so that revocation deletes exactly it.

use std::fmt;

use crate::providers::ProviderError;

/// What `status.keyRef` holds: `api-key:<key>`, `api-key:<key>;role:<role id>`,
/// `access-key:<key>`, or `role:<role id>` for a role whose key was never created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum KeyRef {
    ApiKey { key: String, role: Option<String> },
    AccessKey(String),
    Role(String),
}

impl KeyRef {
    pub(super) fn parse(text: &str) -> Result<Self, ProviderError> {
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
