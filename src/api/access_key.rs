//! `AccessKey`: one cloud API key, written to one Secret, revoked when the AccessKey goes.
// kube's `printcolumn(...)` repeats `type_ = "string"` by design; clippy reads it as a duplicate.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema;
use super::validation::{EXOSCALE_RESOURCE_PATTERN, SECRET_DATA_KEY_PATTERN};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cloudkeys.io",
    version = "v1alpha1",
    kind = "AccessKey",
    namespaced,
    shortname = "ak",
    category = "cloudkeys",
    status = "AccessKeyStatus",
    derive = "PartialEq",
    doc = "A cloud API key, issued by an issuer into a Secret of this namespace and revoked when the AccessKey is deleted.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Issuer", type_ = "string", json_path = ".spec.issuerRef.name"),
    printcolumn(name = "Issuer Kind", type_ = "string", json_path = ".spec.issuerRef.kind"),
    printcolumn(name = "Secret", type_ = "string", json_path = ".spec.secretName"),
    printcolumn(name = "Key ID", type_ = "string", json_path = ".status.accessKeyId"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".status.expiresAt", priority = 1),
    printcolumn(name = "Next Rotation", type_ = "date", json_path = ".status.nextRotationTime", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
// The rules evaluated client-side too, in the unit tests.
#[cfg_attr(test, kube(cel))]
#[serde(rename_all = "camelCase")]
pub struct AccessKeySpec {
    /// The issuer that mints the key.
    pub issuer_ref: IssuerRef,
    /// Name of the Secret the key is written to, in this namespace (a DNS-1123 subdomain).
    #[schemars(schema_with = "schema::secret_name")]
    pub secret_name: String,
    /// Labels, annotations and data layout of the Secret.
    // Boxed, as the two below: every AccessKey is cached, and inline these three would push
    // each cached copy into the allocator's next size class (a quarter more memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<Box<SecretTemplate>>,
    /// What happens to the provider key when the AccessKey is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// When the key is replaced on a schedule, and how long a replaced key stays live. Not part
    /// of what a key is issued for: changing it never replaces the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Box<Rotation>>,
    /// Workloads of this namespace restarted when the key is replaced. Not part of what a key is
    /// issued for either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<Box<Consumers>>,
    /// Exactly one provider block, matching the issuer's provider.
    #[serde(flatten)]
    pub provider: KeyProvider,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// Replace the key this long after it was issued (at least 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub every: Option<super::duration::ApiDuration>,
    /// How long a replaced key stays live once the new key is in the Secret and every restarted
    /// consumer rolled out (default 10m; 0s revokes it at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub grace_period: Option<super::duration::ApiDuration>,
    /// The longest wait for a consumer's rollout before the grace period starts anyway
    /// (default 30m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub rollout_timeout: Option<super::duration::ApiDuration>,
    /// The longest a replaced key the provider reports used after its consumers rolled out to
    /// the new key is kept past its grace period (default 24h; Yandex reports use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub max_usage_hold: Option<super::duration::ApiDuration>,
    /// When scheduled rotations (and the restarts they bring) may begin: only while one of these
    /// windows is open. Default: the issuer's `rotationDefaults.windows`, else at any time; an
    /// empty list means at any time, whatever the issuer says. Replacements that cannot wait
    /// (the Secret deleted or edited, the key revoked at the provider or about to expire with no
    /// window left, `cloudkeys rotate --now` or `--immediate`) never wait for a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 20))]
    pub windows: Option<Vec<RotationWindow>>,
}

/// A recurring stretch of time in which the key may be rotated.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationWindow {
    /// When the window opens: a cron expression of five fields (minute hour day-of-month month
    /// day-of-week), e.g. `0 2 * * 1-5` for 02:00 on weekdays.
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,
    /// How long the window stays open once it opened (at least 1m), e.g. `2h`.
    #[schemars(schema_with = "schema::window_duration")]
    pub duration: super::duration::ApiDuration,
    /// The IANA time zone the schedule is read in, e.g. `Europe/Zurich` (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Consumers {
    /// Workloads of this namespace, by kind and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<ConsumerTarget>,
    /// Plus the workloads of those kinds in this namespace whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    /// Plus every workload of this namespace whose pod template reads the Secret through env,
    /// envFrom or a subPath mount (which the kubelet never refreshes).
    #[serde(default)]
    pub discover: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerTarget {
    pub kind: WorkloadKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The workload kinds that can be restarted: `Rollout` is Argo Rollouts' (`argoproj.io/v1alpha1`),
/// restarted through its `spec.restartAt`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    Rollout,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
            Self::Rollout => "Rollout",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the KeyIssuer (in this namespace) or ClusterKeyIssuer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `KeyIssuer` (default) or `ClusterKeyIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum IssuerKind {
    #[default]
    KeyIssuer,
    ClusterKeyIssuer,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Revoke the key at the provider; the Secret goes with the AccessKey.
    #[default]
    Delete,
    /// Leave the key at the provider and keep the Secret.
    Retain,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Extra labels on the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Secret data as templates (`{{ accessKeyId }}`, `{{ secretAccessKey }}`, `{{ provider }}`,
    /// `{{ zone }}`, `{{ region }}`, `{{ endpoint }}`); replaces the provider's default keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(format!("self.all(k, k.matches('{}'))", SECRET_DATA_KEY_PATTERN)).message("secretTemplate.data keys must be valid Secret keys: letters, digits, '-', '_' and '.'"))]
    pub data: Option<BTreeMap<String, String>>,
}

/// Exactly one provider block; the variant name is the key in YAML (`exoscale: {...}`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KeyProvider {
    /// An Exoscale IAM API key (modes a and b) or legacy access key (mode c).
    Exoscale(ExoscaleKey),
    /// A Yandex Cloud static access key of a service account.
    Yandex(YandexKey),
    /// An OUTSCALE access key of the issuer's account or of an EIM user.
    Outscale(OutscaleKey),
    /// A random key from the built-in provider.
    Local(LocalKey),
}

impl KeyProvider {
    /// The provider's name as it appears in YAML.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Exoscale(_) => "exoscale",
            Self::Yandex(_) => "yandex",
            Self::Outscale(_) => "outscale",
            Self::Local(_) => "local",
        }
    }
}

/// Exactly one mode: `roleId` (a), `role` (b), or `operations`/`tags`/`resources` (c).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.roleId), has(self.role), has(self.operations) || has(self.tags) || has(self.resources)].filter(m, m).size() == 1"
).message("exactly one of roleId, role, or operations/tags/resources (legacy access key) must be set"))]
#[schemars(extend("oneOf" = [
    {"required": ["roleId"]},
    {"required": ["role"]},
    {"anyOf": [{"required": ["operations"]}, {"required": ["tags"]}, {"required": ["resources"]}]},
]))]
pub struct ExoscaleKey {
    /// Key name; default `<namespace>-<name>`. The operator appends its ownership marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub name: Option<String>,
    /// (a) An IAM API key bound to this existing role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"))]
    pub role_id: Option<String>,
    /// (b) An IAM API key bound to a role created for this key alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<ExoscaleRole>,
    /// (c) Legacy access key: allowed API operations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub operations: Option<Vec<String>>,
    /// (c) Legacy access key: allowed operation tags (e.g. `compute`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub tags: Option<Vec<String>>,
    /// (c) Legacy access key: resources as `domain/resource-type:resource-name`, e.g. `sos/bucket:backups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), inner(regex(pattern = EXOSCALE_RESOURCE_PATTERN)))]
    pub resources: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExoscaleRole {
    /// Role description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub description: Option<String>,
    /// The role's IAM policy.
    pub policy: ExoscalePolicy,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExoscalePolicy {
    /// What services not listed in `services` may do.
    pub default_service_strategy: PolicyStrategy,
    /// Per-service policy, keyed by service class (`sos`, `compute`, ...).
    #[serde(default)]
    pub services: BTreeMap<String, ExoscaleServicePolicy>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyStrategy {
    Allow,
    Deny,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExoscaleServicePolicy {
    /// `allow`, `deny`, or `rules` (evaluate `rules` in order).
    #[serde(rename = "type")]
    pub kind: ServicePolicyType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<ExoscalePolicyRule>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServicePolicyType {
    Allow,
    Deny,
    Rules,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExoscalePolicyRule {
    pub action: PolicyStrategy,
    /// A policy expression, e.g. `resources.bucket == 'backups'`.
    #[schemars(length(min = 1))]
    pub expression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct YandexKey {
    /// Service account the key belongs to; default the issuer's `serviceAccountId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50))]
    pub service_account_id: Option<String>,
    /// Key description; the operator appends its marker, 256 characters in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub description: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutscaleKey {
    /// EIM user that owns the key; default the issuer's own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9+=,.@_-]+$"))]
    pub user_name: Option<String>,
    /// Key lifetime, e.g. `2160h`: the provider expires the key this long after creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::duration")]
    pub expires_after: Option<super::duration::ApiDuration>,
}

/// The built-in provider has no settings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct LocalKey {}

/// Observed state of an AccessKey. Never holds a secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeyStatus {
    /// The generation the conditions were computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Public id of the current key (never the secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Provider-side id used to revoke the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ref: Option<String>,
    /// When the current key was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
    /// When the current key expires at the provider, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the operator will replace the current key ahead of its expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// The earlier of `issuedAt + rotation.every` and `renewalTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,
    /// When the provider last saw the current key used, as the last drift check found (Yandex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Time>,
    /// The last `cloudkeys.io/rotate` annotation value handled: each value rotates once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,
    /// The Secret the current key is written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The issuer that minted the current key (it revokes it, even after `issuerRef` changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_by: Option<IssuerRef>,
    /// Fingerprint of the spec fields the current key was issued for (issuer, provider block,
    /// Secret name, data template): a change to any of them replaces the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec_hash: Option<String>,
    /// A key creation in progress, recorded before the provider is called: after a crash, keys
    /// carrying this attempt's marker are adopted or revoked.
    // Boxed: absent nearly always, and inline it would add its size to every cached AccessKey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Box<PendingKey>>,
    /// Replaced keys not revoked yet (never their secrets), each with its own schedule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredKey>,
    /// The workloads restarted for the current key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<ConsumerStatus>,
    /// Replacements in a row forced by the Secret (deleted, or its data edited) while the key was
    /// young: each one doubles the wait before the next (10 s up to 1 h), so that another
    /// controller fighting over the Secret cannot make the operator mint keys in a loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_replacements: Option<u32>,
    /// The user's own replacements in a row (rotation requests, spec changes) while the key was
    /// young: past five, each one doubles the wait before the next (10 s up to 1 h), so that a
    /// loop of requests cannot spend the rate limit the issuer's AccessKeys share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_replacements: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingKey {
    /// The attempt part of the ownership marker the new key carries.
    pub attempt: String,
    /// The issuer asked to create the key.
    pub issuer: IssuerRef,
    pub started_at: Time,
    /// The provider block the key was asked for: where to look for it after a crash, even if
    /// the spec has changed since (another service account, EIM user or Exoscale mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::preserve_unknown")]
    pub provider: Option<super::Recorded<KeyProvider>>,
    /// The spec fingerprint the key was asked for (recorded as `keySpecHash` on adoption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// The `cloudkeys.io/rotate` value this attempt answers (recorded on adoption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_request: Option<String>,
    /// The grace period the key this attempt replaces gets, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 3_153_600_000u64))] // 876000h, the longest duration the API takes
    pub grace_period_seconds: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetiredKey {
    pub access_key_id: String,
    pub key_ref: String,
    pub issuer: IssuerRef,
    /// When the key that replaced this one went into the Secret. Absent on keys retired by an
    /// operator older than rotation: those are revoked at once, as they were then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<Time>,
    /// When this key is revoked. Absent while the restarted consumers roll out: the grace
    /// period starts once they have (or once `rolloutTimeout` has passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_after: Option<Time>,
    /// The grace period this key gets once the consumers rolled out, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 3_153_600_000u64))] // 876000h, the longest duration the API takes
    pub grace_period_seconds: Option<u64>,
    /// When this key expires at the provider, if it does: the grace period ends by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When the provider last saw this key used, as asked once its grace period ended (Yandex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Time>,
    /// Set when the provider reports this key used after its grace period started (after the
    /// consumers rolled out to the new key): something undeclared still uses it, and its
    /// revocation is held until then (`rotation.maxUsageHold` past the grace period at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    pub kind: WorkloadKind,
    pub name: String,
    /// The key the workload was restarted for (its pod-template annotation `cloudkeys.io/key-id`).
    pub key_id: String,
    /// Whether the restart has rolled out, as `kubectl rollout status` checks it.
    pub rolled_out: bool,
}
