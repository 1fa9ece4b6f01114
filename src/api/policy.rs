//! `spec.policy` of both issuer kinds: what an issuer may mint, for whom. The limits that have
//! defaults apply to an issuer without `policy` too; the rest is unrestricted until set.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;
use super::DeletionPolicy;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerPolicy {
    /// ClusterKeyIssuer only: the namespaces whose AccessKeys may use it (by name or by
    /// labels); absent = all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespacePolicy>,
    /// The `deletionPolicy` values AccessKeys may use; default both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub deletion_policies: Option<Vec<DeletionPolicy>>,
    /// At most this many AccessKeys of one namespace hold a key of this issuer (at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_keys_per_namespace: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exoscale: Option<ExoscaleAllowed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yandex: Option<YandexAllowed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outscale: Option<OutscaleAllowed>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespacePolicy {
    /// Namespaces allowed by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Namespaces allowed by their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExoscaleAllowed {
    /// Mode (a): the roles keys may be bound to; absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_ids: Option<Vec<String>>,
    /// Mode (b), a role created for the key; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_own_roles: Option<bool>,
    /// Mode (b) policies may allow the `iam` service, or default to `allow`; default false.
    #[serde(default, rename = "allowIAM", skip_serializing_if = "Option::is_none")]
    pub allow_iam: Option<bool>,
    /// Mode (c), legacy access keys; default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_legacy: Option<bool>,
    /// Mode (c): the operations keys may allow; absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct YandexAllowed {
    /// The service accounts keys may be created for; default only the issuer's own
    /// `serviceAccountId`; `["*"]` = any in the folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_ids: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutscaleAllowed {
    /// The EIM users keys may be created for (globs such as `app-*`); absent = any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_names: Option<Vec<String>>,
    /// Keys of the issuer's own identity (no `userName`, often the root account); default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_issuer_identity: Option<bool>,
    /// `expiresAfter` becomes required, and at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub max_expires_after: Option<super::duration::ApiDuration>,
}
