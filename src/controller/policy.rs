//! Issuer policy: whether an issuer may mint the key an AccessKey asks for, decided from the
//! spec and what is observed around it (the namespace's labels, the keys its AccessKeys hold).
//! No I/O. Checked before any provider call, when a key is to be minted: a policy tightened
//! after issuance stops new keys, it revokes none, with one exception: `deletionPolicies` is
//! asked again when the AccessKey is deleted (see `retained`).

use std::collections::BTreeMap;

use kube::core::{Selector, SelectorExt};

use crate::api::{
    AccessKeySpec, DeletionPolicy, ExoscaleKey, IssuerPolicy, IssuerProvider, KeyProvider, OutscaleKey, PolicyStrategy,
    ServicePolicyType, YandexKey,
};

/// Why the policy refuses: the field, its value, and what the policy allows instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value} is not allowed by the issuer's policy; allowed: {allowed}")]
pub struct Denial {
    pub field: String,
    pub value: String,
    pub allowed: String,
}

fn deny(field: &str, value: impl Into<String>, allowed: impl Into<String>) -> Result<(), Denial> {
    Err(Denial { field: field.to_string(), value: value.into(), allowed: allowed.into() })
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// What the policy is checked against.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub policy: Option<&'a IssuerPolicy>,
    /// A ClusterKeyIssuer (only those restrict namespaces).
    pub cluster_scoped: bool,
    pub issuer: &'a IssuerProvider,
    pub spec: &'a AccessKeySpec,
    pub namespace: &'a str,
    /// The namespace's labels, when known.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    /// Other AccessKeys of the namespace holding a key of this issuer.
    pub keys_in_namespace: usize,
}

/// Whether the issuer may mint this key.
pub fn check(r: &Request<'_>) -> Result<(), Denial> {
    let default = IssuerPolicy::default();
    let policy = r.policy.unwrap_or(&default);
    if r.cluster_scoped {
        check_namespace(policy, r)?;
    }
    if !allows_deletion(Some(policy), r.spec.deletion_policy) {
        let names: Vec<String> = deletion_policies(Some(policy)).iter().map(|p| format!("{p:?}")).collect();
        return deny("spec.deletionPolicy", format!("{:?}", r.spec.deletion_policy), list(&names));
    }
    if let Some(max) = policy.max_keys_per_namespace {
        if r.keys_in_namespace >= max as usize {
            return deny(
                "namespace",
                format!("{} (whose AccessKeys hold {} keys of this issuer)", r.namespace, r.keys_in_namespace),
                format!("at most {max} keys per namespace (maxKeysPerNamespace)"),
            );
        }
    }
    match (&r.spec.provider, r.issuer) {
        (KeyProvider::Exoscale(k), _) => check_exoscale(policy, k),
        (KeyProvider::Yandex(k), IssuerProvider::Yandex(i)) => check_yandex(policy, k, i.service_account_id.as_deref()),
        (KeyProvider::Outscale(k), _) => check_outscale(policy, k),
        _ => Ok(()),
    }
}

/// `policy.deletionPolicies` with its default: both.
fn deletion_policies(policy: Option<&IssuerPolicy>) -> Vec<DeletionPolicy> {
    policy
        .and_then(|p| p.deletion_policies.clone())
        .unwrap_or_else(|| vec![DeletionPolicy::Delete, DeletionPolicy::Retain])
}

/// Whether the policy lets a key end this way. Asked when a key is minted, and again when its
/// AccessKey is deleted: a key minted under `Retain` is revoked all the same by an issuer that
/// no longer allows it.
pub fn allows_deletion(policy: Option<&IssuerPolicy>, deletion: DeletionPolicy) -> bool {
    deletion_policies(policy).contains(&deletion)
}

fn check_namespace(policy: &IssuerPolicy, r: &Request<'_>) -> Result<(), Denial> {
    let Some(ns) = &policy.namespaces else {
        return Ok(());
    };
    if ns.names.iter().any(|n| n == r.namespace) {
        return Ok(());
    }
    let selector = ns.selector.clone().and_then(|s| Selector::try_from(s).ok());
    let by_labels = match (&selector, r.namespace_labels) {
        (Some(s), Some(labels)) => s.matches(labels),
        _ => false,
    };
    if by_labels {
        return Ok(());
    }
    let mut allowed = Vec::new();
    if !ns.names.is_empty() {
        allowed.push(format!("namespaces {}", list(&ns.names)));
    }
    if let Some(s) = &selector {
        allowed.push(format!("namespaces labelled {s}"));
    }
    deny("namespace", r.namespace, if allowed.is_empty() { "none".into() } else { allowed.join(" or ") })
}

fn check_exoscale(policy: &IssuerPolicy, k: &ExoscaleKey) -> Result<(), Denial> {
    let p = policy.exoscale.clone().unwrap_or_default();
    if let Some(role_id) = &k.role_id {
        if let Some(allowed) = &p.role_ids {
            if !allowed.contains(role_id) {
                return deny("spec.exoscale.roleId", role_id, list(allowed));
            }
        }
    }
    if let Some(role) = &k.role {
        if !p.allow_own_roles.unwrap_or(true) {
            return deny("spec.exoscale.role", "(a role created for the key)", "roleId only (allowOwnRoles: false)");
        }
        if !p.allow_iam.unwrap_or(false) {
            if role.policy.default_service_strategy == PolicyStrategy::Allow {
                return deny(
                    "spec.exoscale.role.policy.defaultServiceStrategy",
                    "allow",
                    "deny (a default of allow includes the iam service; allowIAM: false)",
                );
            }
            if let Some(iam) = role.policy.services.get("iam") {
                if iam.kind != ServicePolicyType::Deny {
                    let value = format!("{:?}", iam.kind).to_lowercase();
                    return deny("spec.exoscale.role.policy.services.iam.type", value, "deny (allowIAM: false)");
                }
            }
        }
    }
    let legacy = k.operations.is_some() || k.tags.is_some() || k.resources.is_some();
    if legacy {
        if !p.allow_legacy.unwrap_or(true) {
            return deny("spec.exoscale", "(a legacy access key)", "roleId or role (allowLegacy: false)");
        }
        if let Some(allowed) = &p.operations {
            // Tags stand for whole groups of operations, which an allow-list cannot bound.
            if let Some(tags) = &k.tags {
                return deny(
                    "spec.exoscale.tags",
                    list(tags),
                    format!("none: list operations among {}", list(allowed)),
                );
            }
            let operations = k.operations.clone().unwrap_or_default();
            if operations.is_empty() {
                return deny("spec.exoscale.operations", "(absent: every operation)", list(allowed));
            }
            if let Some(op) = operations.iter().find(|op| !allowed.contains(op)) {
                return deny("spec.exoscale.operations", op, list(allowed));
            }
        }
    }
    Ok(())
}

fn check_yandex(policy: &IssuerPolicy, k: &YandexKey, issuers_own: Option<&str>) -> Result<(), Denial> {
    let Some(account) = k.service_account_id.as_deref().or(issuers_own) else {
        // No service account at all: the spec's problem, reported as such elsewhere.
        return Ok(());
    };
    let allowed = match policy.yandex.as_ref().and_then(|y| y.service_account_ids.clone()) {
        Some(ids) => ids,
        None => issuers_own.map(|id| vec![id.to_string()]).unwrap_or_default(),
    };
    if allowed.iter().any(|id| id == "*" || id == account) {
        return Ok(());
    }
    let described = if allowed.is_empty() {
        "none: the issuer has no serviceAccountId; list accounts in policy.yandex.serviceAccountIds".to_string()
    } else {
        list(&allowed)
    };
    deny("spec.yandex.serviceAccountId", account, described)
}

fn check_outscale(policy: &IssuerPolicy, k: &OutscaleKey) -> Result<(), Denial> {
    let p = policy.outscale.clone().unwrap_or_default();
    match &k.user_name {
        None if !p.allow_issuer_identity.unwrap_or(false) => {
            return deny(
                "spec.outscale.userName",
                "(absent: the issuer's own identity)",
                "an EIM user (allowIssuerIdentity: false)",
            );
        }
        Some(user) => {
            if let Some(globs) = &p.user_names {
                if !globs.iter().any(|g| glob_matches(g, user)) {
                    return deny("spec.outscale.userName", user, list(globs));
                }
            }
        }
        None => {}
    }
    if let Some(max_text) = &p.max_expires_after {
        let Ok(max) = max_text.get() else {
            return deny(
                "spec.outscale.expiresAfter",
                "(any)",
                format!("none: policy.outscale.maxExpiresAfter {:?} is invalid", max_text.as_str()),
            );
        };
        match &k.expires_after {
            None => {
                return deny("spec.outscale.expiresAfter", "(absent: never expires)", format!("at most {max_text}"))
            }
            Some(text) => {
                if text.get().map_or(true, |d| d > max) {
                    return deny("spec.outscale.expiresAfter", text.as_str(), format!("at most {max_text}"));
                }
            }
        }
    }
    Ok(())
}

/// `*` matches any run of characters (EIM user names contain no other pattern characters).
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// The `Ready` message part that says what an issuer may mint.
pub fn describe(policy: Option<&IssuerPolicy>, cluster_scoped: bool) -> &'static str {
    match (policy, cluster_scoped) {
        (None, true) => "unrestricted: no policy limits which namespaces may use it",
        (None, false) => "no policy beyond the defaults",
        (Some(_), _) => "restricted by its policy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> AccessKeySpec {
        let mut base = json!({"issuerRef": {"name": "i"}, "secretName": "s"});
        if let (Some(b), Some(v)) = (base.as_object_mut(), value.as_object()) {
            b.extend(v.clone());
        }
        serde_json::from_value(base).expect("spec")
    }

    fn policy(value: serde_json::Value) -> IssuerPolicy {
        serde_json::from_value(value).expect("policy")
    }

    fn issuer(value: serde_json::Value) -> IssuerProvider {
        serde_json::from_value(value).expect("issuer provider")
    }

    fn exoscale_issuer() -> IssuerProvider {
        issuer(json!({"exoscale": {"credentialsSecretRef": {"name": "c"}}}))
    }

    fn check_with(p: Option<&IssuerPolicy>, issuer: &IssuerProvider, s: &AccessKeySpec) -> Result<(), Denial> {
        check(&Request {
            policy: p,
            cluster_scoped: true,
            issuer,
            spec: s,
            namespace: "team-a",
            namespace_labels: None,
            keys_in_namespace: 0,
        })
    }

    const ROLE: &str = "7b1e0000-0000-4000-8000-000000000001";

    #[test]
    fn namespaces_are_allowed_by_name_or_by_labels() {
        let p = policy(json!({"namespaces": {"names": ["team-b"], "selector": {"matchLabels": {"tenant": "yes"}}}}));
        let s = spec(json!({"local": {}}));
        let local = issuer(json!({"local": {}}));
        let mut r = Request {
            policy: Some(&p),
            cluster_scoped: true,
            issuer: &local,
            spec: &s,
            namespace: "team-a",
            namespace_labels: None,
            keys_in_namespace: 0,
        };
        let denial = check(&r).expect_err("not listed");
        assert_eq!((denial.field.as_str(), denial.value.as_str()), ("namespace", "team-a"));
        assert!(denial.allowed.contains("team-b") && denial.allowed.contains("tenant=yes"), "{}", denial.allowed);
        let labels = BTreeMap::from([("tenant".to_string(), "yes".to_string())]);
        r.namespace_labels = Some(&labels);
        assert_eq!(check(&r), Ok(()));
        r.namespace = "team-b";
        r.namespace_labels = None;
        assert_eq!(check(&r), Ok(()));
        // A KeyIssuer serves its own namespace only anyway.
        r.namespace = "team-c";
        r.cluster_scoped = false;
        assert_eq!(check(&r), Ok(()));
    }

    #[test]
    fn deletion_policies_and_keys_per_namespace_are_limited() {
        let p = policy(json!({"deletionPolicies": ["Delete"], "maxKeysPerNamespace": 2}));
        let local = issuer(json!({"local": {}}));
        let retain = spec(json!({"local": {}, "deletionPolicy": "Retain"}));
        let denial = check_with(Some(&p), &local, &retain).expect_err("Retain");
        assert_eq!(
            (denial.field.as_str(), denial.value.as_str(), denial.allowed.as_str()),
            ("spec.deletionPolicy", "Retain", "Delete")
        );
        let s = spec(json!({"local": {}}));
        let mut r = Request {
            policy: Some(&p),
            cluster_scoped: false,
            issuer: &local,
            spec: &s,
            namespace: "team-a",
            namespace_labels: None,
            keys_in_namespace: 1,
        };
        assert_eq!(check(&r), Ok(()));
        r.keys_in_namespace = 2;
        assert!(check(&r).expect_err("full").allowed.contains("at most 2"));
        assert_eq!(check_with(None, &local, &retain), Ok(()), "both allowed by default");
    }

    #[test]
    fn exoscale_roles_modes_iam_and_operations_follow_the_policy() {
        let exo = exoscale_issuer();
        let role_key = spec(json!({"exoscale": {"roleId": ROLE}}));
        assert_eq!(check_with(None, &exo, &role_key), Ok(()), "any role by default");
        let only_other = policy(json!({"exoscale": {"roleIds": ["00000000-0000-4000-8000-000000000002"]}}));
        assert_eq!(check_with(Some(&only_other), &exo, &role_key).expect_err("role").field, "spec.exoscale.roleId");

        let own = |policy: serde_json::Value| spec(json!({"exoscale": {"role": {"policy": policy}}}));
        let narrow = own(json!({"defaultServiceStrategy": "deny", "services": {"sos": {"type": "allow"}}}));
        let everything = own(json!({"defaultServiceStrategy": "allow"}));
        let iam = own(json!({"defaultServiceStrategy": "deny", "services": {"iam": {"type": "allow"}}}));
        assert_eq!(check_with(None, &exo, &narrow), Ok(()));
        assert_eq!(
            check_with(None, &exo, &everything).expect_err("allow").field,
            "spec.exoscale.role.policy.defaultServiceStrategy"
        );
        assert_eq!(check_with(None, &exo, &iam).expect_err("iam").field, "spec.exoscale.role.policy.services.iam.type");
        let iam_ok = policy(json!({"exoscale": {"allowIAM": true}}));
        assert_eq!(check_with(Some(&iam_ok), &exo, &iam), Ok(()));
        let no_own = policy(json!({"exoscale": {"allowOwnRoles": false}}));
        assert_eq!(check_with(Some(&no_own), &exo, &narrow).expect_err("own").field, "spec.exoscale.role");

        let legacy = spec(json!({"exoscale": {"operations": ["get-sos-object", "delete-sos-object"]}}));
        let ops = policy(json!({"exoscale": {"operations": ["get-sos-object", "list-sos-bucket"]}}));
        let denial = check_with(Some(&ops), &exo, &legacy).expect_err("op");
        assert_eq!(
            (denial.value.as_str(), denial.allowed.as_str()),
            ("delete-sos-object", "get-sos-object, list-sos-bucket")
        );
        let tags = spec(json!({"exoscale": {"tags": ["compute"]}}));
        assert_eq!(check_with(Some(&ops), &exo, &tags).expect_err("tags").field, "spec.exoscale.tags");
        let no_legacy = policy(json!({"exoscale": {"allowLegacy": false}}));
        assert_eq!(check_with(Some(&no_legacy), &exo, &legacy).expect_err("legacy").field, "spec.exoscale");
    }

    #[test]
    fn yandex_keys_are_for_the_issuers_own_account_unless_the_policy_lists_more() {
        let own = issuer(json!({"yandex": {"metadataService": {}, "serviceAccountId": "aje-own"}}));
        let default_account = spec(json!({"yandex": {}}));
        let other = spec(json!({"yandex": {"serviceAccountId": "aje-other"}}));
        assert_eq!(check_with(None, &own, &default_account), Ok(()));
        let denial = check_with(None, &own, &other).expect_err("other account");
        assert_eq!((denial.value.as_str(), denial.allowed.as_str()), ("aje-other", "aje-own"));
        let listed = policy(json!({"yandex": {"serviceAccountIds": ["aje-other"]}}));
        assert_eq!(check_with(Some(&listed), &own, &other), Ok(()));
        let any = policy(json!({"yandex": {"serviceAccountIds": ["*"]}}));
        assert_eq!(check_with(Some(&any), &own, &other), Ok(()));
        let none = issuer(json!({"yandex": {"metadataService": {}}}));
        assert!(check_with(None, &none, &other).expect_err("no default").allowed.contains("serviceAccountIds"));
    }

    #[test]
    fn outscale_keys_need_an_allowed_user_and_a_bounded_lifetime() {
        let osc = issuer(json!({"outscale": {"region": "eu-west-2", "credentialsSecretRef": {"name": "c"}}}));
        let identity = spec(json!({"outscale": {}}));
        assert_eq!(check_with(None, &osc, &identity).expect_err("identity").field, "spec.outscale.userName");
        let identity_ok = policy(json!({"outscale": {"allowIssuerIdentity": true}}));
        assert_eq!(check_with(Some(&identity_ok), &osc, &identity), Ok(()));
        let apps = policy(json!({"outscale": {"userNames": ["app-*"], "maxExpiresAfter": "720h"}}));
        let bot = spec(json!({"outscale": {"userName": "backup-bot", "expiresAfter": "24h"}}));
        assert_eq!(check_with(Some(&apps), &osc, &bot).expect_err("user").value, "backup-bot");
        let app = spec(json!({"outscale": {"userName": "app-web", "expiresAfter": "24h"}}));
        assert_eq!(check_with(Some(&apps), &osc, &app), Ok(()));
        let forever = spec(json!({"outscale": {"userName": "app-web"}}));
        assert_eq!(check_with(Some(&apps), &osc, &forever).expect_err("no expiry").field, "spec.outscale.expiresAfter");
        let long = spec(json!({"outscale": {"userName": "app-web", "expiresAfter": "2160h"}}));
        assert_eq!(check_with(Some(&apps), &osc, &long).expect_err("too long").allowed, "at most 720h");
    }

    #[test]
    fn globs_match_any_run_of_characters() {
        for (pattern, text, ok) in [
            ("app-*", "app-web", true),
            ("app-*", "app-", true),
            ("app-*", "ap", false),
            ("*-bot", "backup-bot", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxcyyb", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*", "anything", true),
        ] {
            assert_eq!(glob_matches(pattern, text), ok, "{pattern} {text}");
        }
    }
}
