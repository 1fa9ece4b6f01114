//! Exoscale API v2 wire types: kebab-case JSON, only the fields the operator reads or writes.
//! Types holding a secret derive no `Debug` and keep it in a `SecretString` from the start.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::api::validation::ExoscaleResource;
use crate::api::{ExoscalePolicy, ExoscalePolicyRule, ExoscaleServicePolicy, PolicyStrategy, ServicePolicyType};
use crate::providers::listing::{Capped, MAX_LISTED};
use crate::providers::policy_read::RoleGrants;

pub const LABEL_OWNER: &str = "cloudkeys.io/owner";
pub const LABEL_ATTEMPT: &str = "cloudkeys.io/attempt";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// `POST /api-key`
#[derive(Debug, Serialize)]
pub struct CreateApiKey<'a> {
    pub name: &'a str,
    #[serde(rename = "role-id")]
    pub role_id: &'a str,
}

/// `POST /api-key` response, the only place the secret ever appears.
#[derive(Deserialize)]
pub struct ApiKeyCreated {
    pub key: String,
    pub secret: SecretString,
}

/// `GET /api-key`: unpaginated, so held to what any organisation may list.
#[derive(Debug, Deserialize)]
pub struct ApiKeyList {
    #[serde(rename = "api-keys", default)]
    pub api_keys: Capped<ApiKey, MAX_LISTED>,
}

#[derive(Debug, Deserialize)]
pub struct ApiKey {
    #[serde(default)]
    pub name: String,
    pub key: String,
    #[serde(rename = "role-id", default)]
    pub role_id: Option<String>,
}

/// `POST /iam-role`
#[derive(Debug, Serialize)]
pub struct CreateRole<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<&'a str>,
    /// The API's default, sent anyway: a role we cannot change might be one we cannot delete.
    pub editable: bool,
    pub labels: BTreeMap<&'static str, &'a str>,
    pub policy: Policy<'a>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Policy<'a> {
    pub default_service_strategy: PolicyStrategy,
    pub services: BTreeMap<&'a str, ServicePolicy<'a>>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ServicePolicy<'a> {
    #[serde(rename = "type")]
    pub kind: ServicePolicyType,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule<'a>>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PolicyRule<'a> {
    pub action: PolicyStrategy,
    pub expression: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<&'a [String]>,
}

impl<'a> From<&'a ExoscalePolicy> for Policy<'a> {
    fn from(p: &'a ExoscalePolicy) -> Self {
        Self {
            default_service_strategy: p.default_service_strategy,
            services: p.services.iter().map(|(name, service)| (name.as_str(), ServicePolicy::from(service))).collect(),
        }
    }
}

impl<'a> From<&'a ExoscaleServicePolicy> for ServicePolicy<'a> {
    fn from(s: &'a ExoscaleServicePolicy) -> Self {
        Self { kind: s.kind, rules: s.rules.iter().map(PolicyRule::from).collect() }
    }
}

impl<'a> From<&'a ExoscalePolicyRule> for PolicyRule<'a> {
    fn from(r: &'a ExoscalePolicyRule) -> Self {
        Self { action: r.action, expression: &r.expression, resources: r.resources.as_deref() }
    }
}

/// `GET /iam-role`: unpaginated, like `GET /api-key`.
#[derive(Debug, Deserialize)]
pub struct RoleList {
    #[serde(rename = "iam-roles", default)]
    pub iam_roles: Capped<Role, MAX_LISTED>,
}

#[derive(Debug, Deserialize)]
pub struct Role {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Kept as sent: a role policy of a shape this version does not know must not fail the
    /// listing of every role; [`Role::grants`] reads what the issuer policy needs.
    #[serde(default)]
    pub policy: Option<serde_json::Value>,
    #[serde(default)]
    pub permissions: Option<serde_json::Value>,
}

impl Role {
    /// What the role grants, as far as IAM rights go.
    pub fn grants(&self) -> RoleGrants {
        let policy = self.policy.as_ref().filter(|p| !p.is_null());
        let text = |v: Option<&serde_json::Value>| v.map(|v| v.as_str().unwrap_or("(unreadable)").to_string());
        let iam = policy.and_then(|p| p.get("services")).and_then(|s| s.get("iam")).filter(|i| !i.is_null());
        RoleGrants {
            default_service_strategy: policy.and_then(|p| text(p.get("default-service-strategy"))),
            // An `iam` entry whose type cannot be read is not taken for a `deny`.
            iam_service: iam.map(|i| text(i.get("type")).unwrap_or_else(|| "(unreadable)".to_string())),
            permissions: self
                .permissions
                .as_ref()
                .and_then(|p| p.as_array())
                .map(|a| a.iter().map(|v| v.as_str().unwrap_or("(unreadable)").to_string()).collect())
                .unwrap_or_default(),
        }
    }
}

/// `POST /access-key` (legacy). Lists the user left out are not sent at all.
#[derive(Debug, Serialize)]
pub struct CreateAccessKey<'a> {
    pub name: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tags: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub operations: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<AccessKeyResource<'a>>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct AccessKeyResource<'a> {
    pub domain: &'a str,
    pub resource_type: &'a str,
    pub resource_name: &'a str,
}

impl<'a> From<&'a ExoscaleResource> for AccessKeyResource<'a> {
    fn from(r: &'a ExoscaleResource) -> Self {
        Self { domain: &r.domain, resource_type: &r.resource_type, resource_name: &r.resource_name }
    }
}

/// `POST /access-key` response.
#[derive(Deserialize)]
pub struct AccessKeyCreated {
    pub key: String,
    pub secret: SecretString,
}

/// `GET /access-key`: unpaginated, like `GET /api-key`.
#[derive(Debug, Deserialize)]
pub struct AccessKeyList {
    #[serde(rename = "access-keys", default)]
    pub access_keys: Capped<AccessKey, MAX_LISTED>,
}

#[derive(Debug, Deserialize)]
pub struct AccessKey {
    #[serde(default)]
    pub name: String,
    pub key: String,
}

/// `GET /api-key/{key}` or `GET /access-key/{key}`: the name carries the marker. Both fields are
/// required: an answer without them is not a key that can be judged.
#[derive(Debug, Deserialize)]
pub struct NamedKey {
    pub key: String,
    pub name: String,
}

/// An asynchronous operation (role create/delete, key delete, access key revoke).
#[derive(Debug, Deserialize)]
pub struct Operation {
    #[serde(default)]
    pub id: Option<String>,
    pub state: OperationState,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub reference: Option<Reference>,
}

impl crate::providers::poll::Operation for Operation {
    fn running(&self) -> Option<Option<&str>> {
        (self.state == OperationState::Pending).then_some(self.id.as_deref())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationState {
    Pending,
    Success,
    Failure,
    Timeout,
    /// A state this version does not know: final, and not a success.
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
pub struct Reference {
    #[serde(default)]
    pub id: Option<String>,
}

/// The error bodies Exoscale answers with: `{"message"}` (IAM, compute), `{"error"}` (rate
/// limits) or RFC 9457 `{"title","detail"}` (newer endpoints).
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    /// Seconds, sent with 429 by the endpoints that document a rate limit.
    #[serde(default)]
    pub retry_after: Option<f64>,
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;
    use serde_json::json;

    use super::*;
    use crate::api::validation::parse_exoscale_resource;

    #[test]
    fn api_key_body_is_name_and_role_id() {
        let body = CreateApiKey { name: "team-a-backups", role_id: "7b1e0000-0000-4000-8000-000000000001" };
        assert_eq!(
            serde_json::to_string(&body).expect("serializes"),
            r#"{"name":"team-a-backups","role-id":"7b1e0000-0000-4000-8000-000000000001"}"#
        );
    }

    #[test]
    fn role_body_turns_the_camel_case_policy_into_kebab_case() {
        let policy: ExoscalePolicy = serde_json::from_value(json!({
            "defaultServiceStrategy": "deny",
            "services": {
                "sos": {"type": "rules", "rules": [
                    {"action": "deny", "expression": "resources.bucket != 'backups'"},
                    {"action": "allow", "expression": "true", "resources": ["r1"]},
                ]},
                "compute": {"type": "allow"},
            },
        }))
        .expect("CRD policy deserializes");
        let body = CreateRole {
            name: "team-a-backups.ck-x",
            description: Some("backups of team a"),
            editable: true,
            labels: BTreeMap::from([(LABEL_OWNER, "uid"), (LABEL_ATTEMPT, "abc"), (LABEL_MANAGED_BY, "cloudkeys")]),
            policy: Policy::from(&policy),
        };
        assert_eq!(
            serde_json::to_value(&body).expect("serializes"),
            json!({
                "name": "team-a-backups.ck-x",
                "description": "backups of team a",
                "editable": true,
                "labels": {
                    "app.kubernetes.io/managed-by": "cloudkeys",
                    "cloudkeys.io/attempt": "abc",
                    "cloudkeys.io/owner": "uid",
                },
                "policy": {
                    "default-service-strategy": "deny",
                    "services": {
                        "compute": {"type": "allow"},
                        "sos": {"type": "rules", "rules": [
                            {"action": "deny", "expression": "resources.bucket != 'backups'"},
                            {"action": "allow", "expression": "true", "resources": ["r1"]},
                        ]},
                    },
                },
            })
        );
    }

    #[test]
    fn role_body_without_description_leaves_it_out() {
        let policy = ExoscalePolicy { default_service_strategy: PolicyStrategy::Allow, services: BTreeMap::new() };
        let body = CreateRole {
            name: "n",
            description: None,
            editable: true,
            labels: BTreeMap::new(),
            policy: Policy::from(&policy),
        };
        assert_eq!(
            serde_json::to_string(&body).expect("serializes"),
            r#"{"name":"n","editable":true,"labels":{},"policy":{"default-service-strategy":"allow","services":{}}}"#
        );
    }

    #[test]
    fn access_key_resources_map_to_the_three_wire_fields() {
        let r = parse_exoscale_resource("sos/bucket:my-bucket").expect("valid resource");
        assert_eq!(
            serde_json::to_value(AccessKeyResource::from(&r)).expect("serializes"),
            json!({"domain": "sos", "resource-type": "bucket", "resource-name": "my-bucket"})
        );
        let colon = parse_exoscale_resource("sos/bucket:a:b").expect("valid resource");
        assert_eq!(AccessKeyResource::from(&colon).resource_name, "a:b");
    }

    #[test]
    fn access_key_body_sends_only_the_lists_the_user_set() {
        let ops = vec!["get-sos-object".to_string(), "list-sos-bucket".to_string()];
        let r = parse_exoscale_resource("sos/bucket:my-bucket").expect("valid resource");
        let body =
            CreateAccessKey { name: "k", tags: &[], operations: &ops, resources: vec![AccessKeyResource::from(&r)] };
        assert_eq!(
            serde_json::to_string(&body).expect("serializes"),
            r#"{"name":"k","operations":["get-sos-object","list-sos-bucket"],"resources":[{"domain":"sos","resource-type":"bucket","resource-name":"my-bucket"}]}"#
        );
        let tags = vec!["compute".to_string()];
        let body = CreateAccessKey { name: "k", tags: &tags, operations: &[], resources: vec![] };
        assert_eq!(serde_json::to_string(&body).expect("serializes"), r#"{"name":"k","tags":["compute"]}"#);
    }

    #[test]
    fn created_key_secret_lands_in_a_secret_string() {
        let created: ApiKeyCreated =
            serde_json::from_str(r#"{"name":"n","key":"EXO19c207e5f483f2d85f99b709","secret":"s3cr3t","role-id":"r"}"#)
                .expect("deserializes");
        assert_eq!(created.key, "EXO19c207e5f483f2d85f99b709");
        assert_eq!(created.secret.expose_secret(), "s3cr3t");
        let legacy: AccessKeyCreated = serde_json::from_str(
            r#"{"name":"n","key":"EXOabc","secret":"s","type":"restricted","version":"v2","tags":[],"operations":[],"resources":[]}"#,
        )
        .expect("deserializes");
        assert_eq!(legacy.key, "EXOabc");
    }

    #[test]
    fn operations_parse_with_unknown_states_and_missing_fields() {
        let op: Operation = serde_json::from_str(
            r#"{"id":"e2047130-b86e-11ef-83b3-0d8312b2c2d7","state":"success","reference":{"id":"r1","link":"/v2/iam-role/r1","command":"get-iam-role"}}"#,
        )
        .expect("deserializes");
        assert_eq!(op.state, OperationState::Success);
        assert_eq!(op.reference.and_then(|r| r.id).as_deref(), Some("r1"));
        let op: Operation = serde_json::from_str(r#"{"state":"exploded"}"#).expect("deserializes");
        assert_eq!(op.state, OperationState::Unknown);
    }

    #[test]
    fn a_roles_iam_grants_are_read_from_its_policy_and_permissions() {
        let role = |v: serde_json::Value| -> Role { serde_json::from_value(v).expect("role") };
        let narrow = role(json!({"id": "r", "policy": {"default-service-strategy": "deny",
            "services": {"sos": {"type": "allow"}}}, "permissions": []}));
        assert_eq!(
            narrow.grants(),
            RoleGrants { default_service_strategy: Some("deny".into()), iam_service: None, permissions: vec![] }
        );
        let iam = role(json!({"id": "r", "policy": {"default-service-strategy": "deny",
            "services": {"iam": {"type": "rules", "rules": []}}}, "permissions": ["reset-iam-organization-policy"]}));
        let grants = iam.grants();
        assert_eq!(grants.iam_service.as_deref(), Some("rules"));
        assert_eq!(grants.permissions, vec!["reset-iam-organization-policy".to_string()]);
        // No policy at all: the API's default, allow all.
        assert_eq!(role(json!({"id": "r"})).grants().default_service_strategy, None);
        assert_eq!(role(json!({"id": "r", "policy": null})).grants().default_service_strategy, None);
        // Shapes this version does not know are not read as a deny.
        let odd = role(json!({"id": "r", "policy": {"default-service-strategy": 1, "services": {"iam": {}}}}));
        assert_eq!(odd.grants().default_service_strategy.as_deref(), Some("(unreadable)"));
        assert_eq!(odd.grants().iam_service.as_deref(), Some("(unreadable)"));
    }

    #[test]
    fn lists_parse_with_null_labels_and_missing_arrays() {
        let roles: RoleList =
            serde_json::from_str(r#"{"iam-roles":[{"id":"r","name":"n","labels":null}]}"#).expect("deserializes");
        assert_eq!(roles.iam_roles.within("list", MAX_LISTED, "roles").expect("kept")[0].labels, None);
        let keys: ApiKeyList = serde_json::from_str("{}").expect("deserializes");
        assert!(keys.api_keys.within("list", MAX_LISTED, "keys").expect("kept").is_empty());
    }

    // A hostile endpoint may nest JSON as deep as 8 MiB allows, in a field the operator keeps as
    // a `Value` (a role's policy) or in one it ignores: serde_json's recursion limit makes that
    // an error, never a stack overflow.
    #[test]
    fn deeply_nested_answers_do_not_overflow_the_stack() {
        let deep = format!("{}{}", "[".repeat(1 << 20), "]".repeat(1 << 20));
        let kept = format!(r#"{{"iam-roles":[{{"id":"r","policy":{deep}}}]}}"#);
        assert!(serde_json::from_str::<RoleList>(&kept).is_err());
        let ignored = format!(r#"{{"iam-roles":[{{"id":"r","other":{deep}}}]}}"#);
        let _ = serde_json::from_str::<RoleList>(&ignored);
    }
}
