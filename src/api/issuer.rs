//! `KeyIssuer` (namespaced) and `ClusterKeyIssuer` (cluster-wide): provider settings and the
//! Secret holding the admin credentials the operator uses to mint keys.
// kube's `printcolumn(...)` repeats `type_ = "string"` by design; clippy reads it as a duplicate.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;
use super::{IssuerPolicy, RotationWindow};

/// The spec of each issuer CRD and its [`Issuer`] view: kube's derive needs a type per CRD, and
/// this writes the fields (which must stay the same for both) once.
macro_rules! issuer_spec {
    ($(#[$attr:meta])* $name:ident for $kind:ident) => {
        #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
        #[kube(
            group = "cloudkeys.io",
            version = "v1alpha1",
            category = "cloudkeys",
            status = "IssuerStatus",
            derive = "PartialEq",
            printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
            printcolumn(name = "Provider", type_ = "string", json_path = ".status.provider"),
            printcolumn(name = "Orphans", type_ = "integer", json_path = ".status.orphanedKeys", priority = 1),
            printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
        )]
        $(#[$attr])*
        // The rules evaluated client-side too, in the unit tests.
        #[cfg_attr(test, kube(cel))]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            #[serde(flatten)]
            pub provider: IssuerProvider,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub rate_limit: Option<RateLimit>,
            /// What this issuer may mint, for whom (the limits with defaults apply without it too).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub policy: Option<IssuerPolicy>,
            /// Revoke the keys drift checks find carrying this installation's marker whose AccessKey no
            /// longer exists; otherwise they are only counted in `status.orphanedKeys`.
            #[serde(default, skip_serializing_if = "std::ops::Not::not")]
            pub revoke_orphans: bool,
            /// Rotation settings for the AccessKeys that name this issuer and do not set their own.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub rotation_defaults: Option<RotationDefaults>,
        }

        impl Issuer for $kind {
            fn provider(&self) -> &IssuerProvider {
                &self.spec.provider
            }
            fn rate_limit(&self) -> RateLimit {
                self.spec.rate_limit.unwrap_or_default()
            }
            fn policy(&self) -> Option<&IssuerPolicy> {
                self.spec.policy.as_ref()
            }
            fn revoke_orphans(&self) -> bool {
                self.spec.revoke_orphans
            }
            fn rotation_windows(&self) -> Option<&[RotationWindow]> {
                self.spec.rotation_defaults.as_ref().and_then(|d| d.windows.as_deref())
            }
        }
    };
}

issuer_spec! {
    /// Settings shared by `KeyIssuer` and `ClusterKeyIssuer`: exactly one provider block.
    #[kube(
        kind = "KeyIssuer",
        namespaced,
        shortname = "ki",
        doc = "A provider account, in this namespace, that AccessKeys of this namespace can mint keys from."
    )]
    KeyIssuerSpec for KeyIssuer
}

issuer_spec! {
    /// The same settings as a `KeyIssuer`, usable from every namespace; its Secrets live in the
    /// operator's cluster resource namespace.
    #[kube(
        kind = "ClusterKeyIssuer",
        shortname = "cki",
        doc = "A provider account that AccessKeys of every namespace can mint keys from."
    )]
    ClusterKeyIssuerSpec for ClusterKeyIssuer
}

/// What the AccessKeys of an issuer get when they do not say.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationDefaults {
    /// The rotation windows of the AccessKeys that set no `rotation.windows` of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 20))]
    pub windows: Option<Vec<RotationWindow>>,
}

/// Requests the operator sends to this issuer's provider account, all its AccessKeys together.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Sustained requests per second (default 5).
    #[serde(default = "RateLimit::default_rate")]
    #[schemars(range(min = 1, max = 10000))]
    pub requests_per_second: u32,
    /// Requests that may go at once after a quiet spell (default 5).
    #[serde(default = "RateLimit::default_rate")]
    #[schemars(range(min = 1, max = 10000))]
    pub burst: u32,
}

impl RateLimit {
    fn default_rate() -> u32 {
        5
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { requests_per_second: Self::default_rate(), burst: Self::default_rate() }
    }
}

/// Exactly one provider block; the variant name is the key in YAML (`exoscale: {...}`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum IssuerProvider {
    /// Exoscale IAM (API keys bound to roles, and legacy access keys).
    Exoscale(ExoscaleIssuer),
    /// Yandex Cloud IAM (static AWS-compatible access keys of service accounts).
    Yandex(YandexIssuer),
    /// 3DS OUTSCALE (access keys of the account or of an EIM user).
    Outscale(OutscaleIssuer),
    /// The built-in provider: mints random keys, talks to no cloud.
    Local(LocalIssuer),
}

impl IssuerProvider {
    /// The provider's name as it appears in YAML and in `status.provider`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Exoscale(_) => "exoscale",
            Self::Yandex(_) => "yandex",
            Self::Outscale(_) => "outscale",
            Self::Local(_) => "local",
        }
    }
}

/// A Secret in the issuer's Secret namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key of a Secret in the issuer's Secret namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[serde(default = "default_yandex_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_yandex_key() -> String {
    "key.json".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExoscaleIssuer {
    /// Exoscale zone whose API endpoint is used (IAM is global; any zone serves it).
    #[serde(default = "default_exoscale_zone")]
    #[schemars(regex(pattern = r"^[a-z]{2}-[a-z]{3}-[0-9]+$"))]
    pub zone: String,
    /// API base URL; default `https://api-{zone}.exoscale.com/v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::api_endpoint")]
    pub endpoint: Option<String>,
    /// Secret with the data keys `EXOSCALE_API_KEY` and `EXOSCALE_API_SECRET`.
    pub credentials_secret_ref: SecretRef,
}

pub fn default_exoscale_zone() -> String {
    "ch-gva-2".into()
}

/// How the operator authenticates to Yandex Cloud: exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("oneOf" = [
    {"required": ["serviceAccountKeySecretRef"]},
    {"required": ["metadataService"]},
]))]
pub struct YandexIssuer {
    /// Secret holding a service account authorized key (JSON with `id`, `service_account_id`,
    /// `private_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_key_secret_ref: Option<SecretKeyRef>,
    /// Take IAM tokens from the instance metadata service instead (the node's service account, or
    /// workload identity federation): no admin key stored in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_service: Option<MetadataService>,
    /// Default service account for AccessKeys of this issuer that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50))]
    pub service_account_id: Option<String>,
    /// IAM API base URL (also serves `/iam/v1/tokens`); default `https://iam.api.cloud.yandex.net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::api_endpoint")]
    pub endpoint: Option<String>,
    /// Operation API base URL; default `https://operation.api.cloud.yandex.net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::api_endpoint")]
    pub operation_endpoint: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetadataService {
    /// Metadata service base URL.
    #[serde(default = "default_metadata_endpoint")]
    #[schemars(schema_with = "schema::metadata_endpoint")]
    pub endpoint: String,
}

fn default_metadata_endpoint() -> String {
    "http://169.254.169.254".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutscaleIssuer {
    /// Outscale region, e.g. `eu-west-2`.
    #[schemars(regex(pattern = r"^[a-z]+(-[a-z]+)+-[0-9]+$"), length(max = 63))]
    pub region: String,
    /// API base URL; default `https://api.{region}.outscale.com/api/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::api_endpoint")]
    pub endpoint: Option<String>,
    /// Secret with the data keys `OSC_ACCESS_KEY` and `OSC_SECRET_KEY`.
    pub credentials_secret_ref: SecretRef,
}

/// The built-in provider has no settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LocalIssuer {}

/// Observed state of an issuer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerStatus {
    /// The generation the conditions were computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the credentials Secret is readable and a read-only provider call succeeded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Which provider block the spec holds (shown by `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Keys the last drift check found carrying this installation's marker whose AccessKey no
    /// longer exists (revoked when `spec.revokeOrphans` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orphaned_keys: Option<u32>,
    /// Keys the operator kept when their AccessKey was deleted with `deletionPolicy: Retain`
    /// (this issuer's policy allowing it): drift checks count a key as retained only when it is
    /// here, never because a Secret names it. Written by the operator alone; an entry whose key
    /// is gone at the provider is dropped. Absent on an issuer no operator of this version has
    /// looked at yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1000))]
    pub retained_keys: Option<Vec<RetainedKey>>,
    /// Since when `retainedKeys` is the whole record: set when an operator of this version first
    /// looks at a new issuer; on an older one, by its first drift check, which takes over once
    /// the keys Secrets held as retained before the record existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_keys_since: Option<Time>,
}

/// The most keys an issuer's `status.retainedKeys` records (its schema's `maxItems`).
pub const MAX_RETAINED_KEYS: usize = 1000;

/// A key kept at the provider after its AccessKey was deleted: what finds it again in a
/// listing (its id and the owner its marker names), and where it went. Never a secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetainedKey {
    /// The key id at the provider.
    #[schemars(length(max = 512))]
    pub access_key_id: String,
    /// How the provider names the key (to ask for it by id), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub key_ref: Option<String>,
    /// UID of the deleted AccessKey: the owner the key's marker names.
    #[schemars(length(max = 64))]
    pub owner: String,
    /// Namespace of the AccessKey and of the Secret that holds the key.
    #[schemars(length(max = 63))]
    pub namespace: String,
    /// Name of the deleted AccessKey (absent for keys retained before the record existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub access_key: Option<String>,
    /// The Secret left holding the key.
    #[schemars(length(max = 253))]
    pub secret_name: String,
    /// Where the provider lists the key (an Exoscale key family, a Yandex service account, an
    /// OUTSCALE user), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub scope: Option<String>,
    /// When the operator kept it.
    pub retained_at: Time,
}

/// What the controller needs from either issuer kind.
pub trait Issuer {
    fn provider(&self) -> &IssuerProvider;
    /// `spec.rateLimit` after applying its defaults.
    fn rate_limit(&self) -> RateLimit;
    fn policy(&self) -> Option<&IssuerPolicy>;
    /// `spec.revokeOrphans`.
    fn revoke_orphans(&self) -> bool;
    /// `spec.rotationDefaults.windows`.
    fn rotation_windows(&self) -> Option<&[RotationWindow]>;
}
