//! Issuers as AccessKeys name them: which ones an AccessKey needs (the one its spec names, and
//! those that minted its keys), who uses an issuer, and why an issuer cannot be used.

use kube::ResourceExt;

use crate::api::{AccessKey, IssuerKind, IssuerRef};
use crate::providers::{BuildError, ErrorKind};

use super::conditions::Reason;

/// An issuer as named from anywhere: its kind, name and (KeyIssuer) namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerId {
    pub kind: IssuerKind,
    pub name: String,
    /// The KeyIssuer's namespace; `None` for a ClusterKeyIssuer.
    pub namespace: Option<String>,
}

impl IssuerId {
    /// The issuer `r` names, seen from an AccessKey in `namespace`.
    pub fn from_ref(r: &IssuerRef, namespace: &str) -> Self {
        let namespace = (r.kind == IssuerKind::KeyIssuer).then(|| namespace.to_string());
        Self { kind: r.kind, name: r.name.clone(), namespace }
    }
}

impl IssuerId {
    /// How the issuer is named in a Secret's `held-by` annotation.
    pub fn holder_key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("KeyIssuer/{ns}/{}", self.name),
            None => format!("ClusterKeyIssuer/{}", self.name),
        }
    }
}

impl std::fmt::Display for IssuerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "KeyIssuer {ns}/{}", self.name),
            None => write!(f, "ClusterKeyIssuer {}", self.name),
        }
    }
}

/// Every issuer an AccessKey needs: the one its spec names (for new keys), and those that
/// minted its current, replaced or half-created keys (to revoke them).
pub fn needed_issuers(ak: &AccessKey) -> Vec<IssuerId> {
    let ns = ak.namespace().unwrap_or_default();
    let mut refs = vec![&ak.spec.issuer_ref];
    if let Some(status) = &ak.status {
        refs.extend(status.issued_by.iter());
        refs.extend(status.retired.iter().map(|r| &r.issuer));
        refs.extend(status.pending.iter().map(|p| &p.issuer));
    }
    let mut ids: Vec<IssuerId> = refs.into_iter().map(|r| IssuerId::from_ref(r, &ns)).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The AccessKeys (`namespace/name`, sorted) that need `issuer`.
pub fn users<'a>(access_keys: impl IntoIterator<Item = &'a AccessKey>, issuer: &IssuerId) -> Vec<String> {
    let mut users: Vec<String> = access_keys
        .into_iter()
        .filter(|ak| needed_issuers(ak).contains(issuer))
        .map(|ak| format!("{}/{}", ak.namespace().unwrap_or_default(), ak.name_any()))
        .collect();
    users.sort();
    users
}

/// Why the operator has no provider client for an issuer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IssuerUnusable {
    /// `namespace/name` of the missing credentials Secret.
    #[error("credentials Secret {0} not found")]
    SecretNotFound(String),
    /// The tenant guard refuses its endpoint or its ambient credentials.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl IssuerUnusable {
    /// The issuer's `Ready=False` reason.
    pub fn reason(&self) -> Reason {
        match self {
            Self::SecretNotFound(_) => Reason::SecretNotFound,
            Self::Refused(_) => Reason::InvalidSpec,
            Self::Build(BuildError::MissingCredential { .. }) => Reason::InvalidCredentials,
            Self::Build(BuildError::Invalid(e)) => match e.kind {
                ErrorKind::Auth => Reason::InvalidCredentials,
                ErrorKind::Permanent | ErrorKind::Retryable => Reason::InvalidSpec,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PendingKey, RetiredKey};

    fn ak(ns: &str, name: &str, issuer: &str, kind: &str, status: serde_json::Value) -> AccessKey {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"issuerRef": {"name": issuer, "kind": kind}, "secretName": "s", "local": {}},
            "status": status,
        }))
        .expect("AccessKey")
    }

    fn key_issuer(ns: &str, name: &str) -> IssuerId {
        IssuerId { kind: IssuerKind::KeyIssuer, name: name.into(), namespace: Some(ns.into()) }
    }

    #[test]
    fn a_key_issuer_is_used_only_by_access_keys_of_its_namespace() {
        let keys = [
            ak("a", "k1", "local", "KeyIssuer", serde_json::json!({})),
            ak("b", "k2", "local", "KeyIssuer", serde_json::json!({})),
        ];
        assert_eq!(users(&keys, &key_issuer("a", "local")), vec!["a/k1".to_string()]);
        assert!(users(&keys, &key_issuer("c", "local")).is_empty());
    }

    #[test]
    fn a_cluster_issuer_is_used_from_every_namespace() {
        let keys = [
            ak("a", "k1", "shared", "ClusterKeyIssuer", serde_json::json!({})),
            ak("b", "k2", "shared", "ClusterKeyIssuer", serde_json::json!({})),
            ak("b", "k3", "shared", "KeyIssuer", serde_json::json!({})),
        ];
        let id = IssuerId { kind: IssuerKind::ClusterKeyIssuer, name: "shared".into(), namespace: None };
        assert_eq!(users(&keys, &id), vec!["a/k1".to_string(), "b/k2".to_string()]);
    }

    #[test]
    fn an_issuer_stays_needed_while_keys_it_minted_are_not_revoked() {
        // The spec points elsewhere, but the current, a replaced and a half-created key came
        // from `old`: each alone keeps it in use.
        let old = serde_json::json!({"name": "old"});
        for status in [
            serde_json::json!({"issuedBy": old}),
            serde_json::to_value(crate::api::AccessKeyStatus {
                retired: vec![RetiredKey {
                    access_key_id: "K".into(),
                    key_ref: "r".into(),
                    issuer: IssuerRef { name: "old".into(), kind: IssuerKind::KeyIssuer },
                    retired_at: None,
                    revoke_after: None,
                    grace_period_seconds: None,
                    expires_at: None,
                    last_used_at: None,
                    held_until: None,
                }],
                ..Default::default()
            })
            .expect("json"),
            serde_json::to_value(crate::api::AccessKeyStatus {
                pending: Some(Box::new(PendingKey {
                    attempt: "a".into(),
                    issuer: IssuerRef { name: "old".into(), kind: IssuerKind::KeyIssuer },
                    started_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH),
                    provider: None,
                    spec_hash: None,
                    rotate_request: None,
                    grace_period_seconds: None,
                })),
                ..Default::default()
            })
            .expect("json"),
        ] {
            let keys = [ak("a", "k", "new", "KeyIssuer", status.clone())];
            assert_eq!(users(&keys, &key_issuer("a", "old")), vec!["a/k".to_string()], "{status}");
            assert_eq!(users(&keys, &key_issuer("a", "new")), vec!["a/k".to_string()]);
        }
        let done = [ak("a", "k", "new", "KeyIssuer", serde_json::json!({"issuedBy": {"name": "new"}}))];
        assert!(users(&done, &key_issuer("a", "old")).is_empty());
    }
}
