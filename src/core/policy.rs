//! Issuer policy: whether an issuer may mint the key an AccessKey asks for, decided from the
//! spec and what is observed around it (the namespace's labels, the keys its AccessKeys hold,
//! and — where the spec cannot tell — one answer read from the provider, see [`Verdict::Ask`]).
//! No I/O. Checked before any key is created, and only when a key is to be minted: a policy
//! tightened after issuance stops new keys, it revokes none, with one exception:
//! `deletionPolicies` is asked again when the AccessKey is deleted (see `retained`).

use std::collections::BTreeMap;

use kube::core::{Selector, SelectorExt};

use crate::api::{
    AccessKeySpec, DeletionPolicy, ExoscaleKey, IssuerPolicy, IssuerProvider, KeyProvider, OutscaleKey, PolicyStrategy,
    ServicePolicyType, YandexKey,
};
pub use crate::providers::policy_read::{Answer, Question, RoleGrants};

/// Why the policy refuses: the field, its value, and what the policy allows instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value} is not allowed by the issuer's policy; allowed: {allowed}")]
pub struct Denial {
    pub field: String,
    pub value: String,
    pub allowed: String,
}

fn deny<T>(field: &str, value: impl Into<String>, allowed: impl Into<String>) -> Result<T, Denial> {
    Err(Denial { field: field.to_string(), value: value.into(), allowed: allowed.into() })
}

/// What the policy says of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied(Denial),
    /// Every rule the spec can answer passed; one more needs this read from the provider. Asked
    /// last, so that a request the spec already rules out sends nothing to the provider.
    Ask(Question),
}

/// A provider rule: passed (`None`), or passed so far with a question left to ask.
type Rule = Result<Option<Question>, Denial>;

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
    /// The provider's answer to the question a previous [`evaluate`] asked, if read.
    pub answered: Option<(&'a Question, &'a Answer)>,
}

impl Request<'_> {
    /// The answer to `question`, if it was read: an answer to another question is none.
    fn answer(&self, question: &Question) -> Option<&Answer> {
        self.answered.filter(|(q, _)| *q == question).map(|(_, a)| a)
    }
}

/// Whether the issuer may mint this key, or what must be read first.
pub fn evaluate(r: &Request<'_>) -> Verdict {
    match check(r) {
        Ok(None) => Verdict::Allowed,
        Ok(Some(question)) => Verdict::Ask(question),
        Err(denial) => Verdict::Denied(denial),
    }
}

fn check(r: &Request<'_>) -> Rule {
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
        (KeyProvider::Exoscale(k), _) => check_exoscale(policy, k, r),
        (KeyProvider::Yandex(k), IssuerProvider::Yandex(i)) => {
            check_yandex(policy, k, i.service_account_id.as_deref()).map(|()| None)
        }
        (KeyProvider::Outscale(k), _) => check_outscale(policy, k, r),
        _ => Ok(None),
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

/// Why a role policy grants IAM rights, if it does: the one rule of `allowIAM: false`, for a
/// role made for the key (mode b) and an existing one (mode a) alike. A default of `allow`
/// includes the `iam` service; an `iam` service of any type but `deny` grants some of it.
fn iam_rights(default_allows: bool, iam_service: Option<&str>) -> Option<String> {
    if default_allows {
        return Some("defaultServiceStrategy allow (which includes the iam service)".to_string());
    }
    iam_service.filter(|kind| *kind != "deny").map(|kind| format!("iam service of type {kind}"))
}

/// Mode (a) under `allowIAM: false` with no vetted `roleIds`: the role, as read, must grant no
/// IAM rights.
fn check_existing_role(role_id: &str, r: &Request<'_>) -> Rule {
    let question = Question::ExoscaleRole(role_id.to_string());
    const FIELD: &str = "spec.exoscale.roleId";
    const ALLOWED: &str = "roles that grant no IAM rights (allowIAM: false): a policy with \
        defaultServiceStrategy deny and no iam service other than deny, and no \
        reset-iam-organization-policy permission; or list vetted roles in policy.exoscale.roleIds";
    match r.answer(&question) {
        None => Ok(Some(question)),
        Some(Answer::Role(grants)) => {
            // A role without a policy is "allow all" at Exoscale; a strategy this version does
            // not know is not taken for a deny.
            let default_allows = grants.default_service_strategy.as_deref() != Some("deny");
            let why = iam_rights(default_allows, grants.iam_service.as_deref()).or_else(|| {
                grants
                    .permissions
                    .iter()
                    .find(|p| *p == "reset-iam-organization-policy")
                    .map(|p| format!("permission {p}"))
            });
            match why {
                Some(why) => deny(FIELD, format!("{role_id} (its {why})"), ALLOWED),
                None => Ok(None),
            }
        }
        Some(Answer::NoSuchRole) => deny(FIELD, format!("{role_id} (no such role at the provider)"), ALLOWED),
        Some(Answer::RoleUnreadable(why)) => deny(
            FIELD,
            format!("{role_id} (the issuer's key may not read it: {why})"),
            format!("{ALLOWED}; or let the issuer's key read IAM roles (get-iam-role)"),
        ),
        // Not an answer about a role: ask again.
        Some(Answer::IssuerIdentity(_)) => Ok(Some(question)),
    }
}

fn check_exoscale(policy: &IssuerPolicy, k: &ExoscaleKey, r: &Request<'_>) -> Rule {
    let p = policy.exoscale.clone().unwrap_or_default();
    let allow_iam = p.allow_iam.unwrap_or(false);
    if let Some(role_id) = &k.role_id {
        match &p.role_ids {
            Some(allowed) if !allowed.contains(role_id) => return deny("spec.exoscale.roleId", role_id, list(allowed)),
            // Roles the issuer's admin listed are vetted: no read.
            Some(_) => {}
            None if allow_iam => {}
            None => return check_existing_role(role_id, r),
        }
    }
    if let Some(role) = &k.role {
        if !p.allow_own_roles.unwrap_or(true) {
            return deny("spec.exoscale.role", "(a role created for the key)", "roleId only (allowOwnRoles: false)");
        }
        if !allow_iam {
            if role.policy.default_service_strategy == PolicyStrategy::Allow {
                return deny(
                    "spec.exoscale.role.policy.defaultServiceStrategy",
                    "allow",
                    "deny (a default of allow includes the iam service; allowIAM: false)",
                );
            }
            let iam = role.policy.services.get("iam").map(|s| match s.kind {
                ServicePolicyType::Allow => "allow",
                ServicePolicyType::Deny => "deny",
                ServicePolicyType::Rules => "rules",
            });
            if let Some(kind) = iam.filter(|_| iam_rights(false, iam).is_some()) {
                return deny("spec.exoscale.role.policy.services.iam.type", kind, "deny (allowIAM: false)");
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
        if !allow_iam {
            legacy_without_iam(k)?;
        }
    }
    Ok(None)
}

/// A legacy access key without IAM rights: its operations named (a key with neither operations
/// nor tags is `unrestricted`), none of them about keys, roles or the organization's policy, and
/// not the `iam` tag. An IAM right lets a key mint keys of any rights on the account, which
/// `allowIAM: false` exists to prevent, whatever the mode.
fn legacy_without_iam(k: &ExoscaleKey) -> Result<(), Denial> {
    let operations = k.operations.as_deref().unwrap_or_default();
    let tags = k.tags.as_deref().unwrap_or_default();
    if operations.is_empty() && tags.is_empty() {
        return deny(
            "spec.exoscale.operations",
            "(absent: an unrestricted key, IAM included)",
            "operations or tags that grant no IAM rights (allowIAM: false)",
        );
    }
    if let Some(tag) = tags.iter().find(|t| t.eq_ignore_ascii_case("iam")) {
        return deny("spec.exoscale.tags", tag, "tags other than iam (allowIAM: false)");
    }
    let iam_operation = |op: &str| {
        let op = op.to_ascii_lowercase();
        ["access-key", "api-key", "iam"].iter().any(|word| op.contains(word))
    };
    if let Some(op) = operations.iter().find(|op| iam_operation(op)) {
        return deny(
            "spec.exoscale.operations",
            op,
            "operations on anything but keys, roles and IAM policies (allowIAM: false)",
        );
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

fn check_outscale(policy: &IssuerPolicy, k: &OutscaleKey, r: &Request<'_>) -> Rule {
    let p = policy.outscale.clone().unwrap_or_default();
    let allow_identity = p.allow_issuer_identity.unwrap_or(false);
    let user = k.user_name.as_deref().filter(|u| !u.is_empty());
    match user {
        None if !allow_identity => {
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
    // An issuer that is itself an EIM user: naming that user is naming the issuer's identity.
    if let (Some(user), false) = (user, allow_identity) {
        let question = Question::OutscaleUser(user.to_string());
        return match r.answer(&question) {
            Some(Answer::IssuerIdentity(true)) => deny(
                "spec.outscale.userName",
                format!("{user} (the issuer's own identity: its access key belongs to this user)"),
                "an EIM user other than the issuer's own (allowIssuerIdentity: false)",
            ),
            Some(Answer::IssuerIdentity(false)) => Ok(None),
            _ => Ok(Some(question)),
        };
    }
    Ok(None)
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

/// What the issuer lets AccessKeys ask for without a bound, each with the setting that would
/// bound it: `cloudkeys check` warns of each. A ClusterKeyIssuer open to every namespace is
/// reported on its own (see [`describe`]).
pub fn unbounded_grants(settings: &IssuerProvider, policy: Option<&IssuerPolicy>) -> Vec<String> {
    let default = IssuerPolicy::default();
    let policy = policy.unwrap_or(&default);
    let mut grants = Vec::new();
    match settings {
        IssuerProvider::Exoscale(_) => {
            let p = policy.exoscale.clone().unwrap_or_default();
            let allow_iam = p.allow_iam.unwrap_or(false);
            if p.role_ids.is_none() {
                grants.push("keys bound to any existing role (set policy.exoscale.roleIds)".to_string());
            }
            if p.allow_own_roles.unwrap_or(true) {
                grants.push(
                    "keys bound to a role of any policy the AccessKey writes (set policy.exoscale.allowOwnRoles: false)"
                        .to_string(),
                );
            }
            if allow_iam {
                grants.push("keys with IAM rights, which can mint more keys (allowIAM: true)".to_string());
            }
            if p.allow_legacy.unwrap_or(true) {
                let operations = match &p.operations {
                    None => "any operation, ",
                    Some(_) => "",
                };
                grants.push(format!(
                    "legacy access keys of {operations}without resources: every bucket and product \
                     (set policy.exoscale.allowLegacy: false{})",
                    if p.operations.is_none() { ", or list policy.exoscale.operations" } else { "" }
                ));
            }
        }
        IssuerProvider::Yandex(_) => {
            let ids = policy.yandex.as_ref().and_then(|y| y.service_account_ids.as_ref());
            if ids.is_some_and(|ids| ids.iter().any(|id| id == "*")) {
                grants.push(
                    "keys of any service account of the folder (policy.yandex.serviceAccountIds: [\"*\"])".to_string(),
                );
            }
        }
        IssuerProvider::Outscale(_) => {
            let p = policy.outscale.clone().unwrap_or_default();
            match &p.user_names {
                None => grants.push("keys of any EIM user (set policy.outscale.userNames)".to_string()),
                Some(globs) if globs.iter().any(|g| g.chars().all(|c| c == '*')) => {
                    grants.push(format!("keys of any EIM user (policy.outscale.userNames: {})", list(globs)))
                }
                Some(_) => {}
            }
            if p.allow_issuer_identity.unwrap_or(false) {
                grants.push(
                    "keys of the issuer's own identity, often the root account (allowIssuerIdentity: true)".to_string(),
                );
            }
        }
        IssuerProvider::Local(_) => {}
    }
    grants
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

    /// The verdict as a result; a question the test did not answer fails it.
    fn result(verdict: Verdict) -> Result<(), Denial> {
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Denied(denial) => Err(denial),
            Verdict::Ask(question) => panic!("asked about {question}"),
        }
    }

    fn check_answered(
        p: Option<&IssuerPolicy>,
        issuer: &IssuerProvider,
        s: &AccessKeySpec,
        answered: Option<(&Question, &Answer)>,
    ) -> Verdict {
        evaluate(&Request {
            policy: p,
            cluster_scoped: true,
            issuer,
            spec: s,
            namespace: "team-a",
            namespace_labels: None,
            keys_in_namespace: 0,
            answered,
        })
    }

    fn check_with(p: Option<&IssuerPolicy>, issuer: &IssuerProvider, s: &AccessKeySpec) -> Result<(), Denial> {
        result(check_answered(p, issuer, s, None))
    }

    fn check(r: &Request<'_>) -> Result<(), Denial> {
        result(evaluate(r))
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
            answered: None,
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
            answered: None,
        };
        assert_eq!(check(&r), Ok(()));
        r.keys_in_namespace = 2;
        assert!(check(&r).expect_err("full").allowed.contains("at most 2"));
        assert_eq!(check_with(None, &local, &retain), Ok(()), "both allowed by default");
    }

    /// `allowIAM: false` (the default, also of an issuer with no policy) keeps IAM rights out of
    /// legacy access keys too: no IAM operation, no `iam` tag, and no `unrestricted` key (neither
    /// operations nor tags), which `resources` alone would make.
    #[test]
    fn a_legacy_key_gets_no_iam_rights_under_allow_iam_false() {
        let exo = exoscale_issuer();
        for key in [
            json!({"exoscale": {"operations": ["create-api-key", "create-iam-role"]}}),
            json!({"exoscale": {"operations": ["get-sos-object", "create-access-key"]}}),
            json!({"exoscale": {"tags": ["iam"]}}),
            json!({"exoscale": {"resources": ["sos/bucket:mine"]}}),
        ] {
            let legacy = spec(key.clone());
            assert!(check_with(None, &exo, &legacy).is_err(), "no policy (allowIAM: false): {key} allowed");
            let p = policy(json!({"exoscale": {"allowIAM": false}}));
            assert!(check_with(Some(&p), &exo, &legacy).is_err(), "allowIAM: false: {key} allowed");
            let p = policy(json!({"exoscale": {"allowIAM": true}}));
            assert_eq!(check_with(Some(&p), &exo, &legacy), Ok(()), "allowIAM: true: {key} refused");
        }
        let sos = spec(json!({"exoscale": {"operations": ["get-sos-object"], "resources": ["sos/bucket:mine"]}}));
        assert_eq!(check_with(None, &exo, &sos), Ok(()));
        assert_eq!(check_with(None, &exo, &spec(json!({"exoscale": {"tags": ["compute"]}}))), Ok(()));
    }

    #[test]
    fn exoscale_roles_modes_iam_and_operations_follow_the_policy() {
        let exo = exoscale_issuer();
        let role_key = spec(json!({"exoscale": {"roleId": ROLE}}));
        let only_other = policy(json!({"exoscale": {"roleIds": ["00000000-0000-4000-8000-000000000002"]}}));
        assert_eq!(check_with(Some(&only_other), &exo, &role_key).expect_err("role").field, "spec.exoscale.roleId");
        let listed = policy(json!({"exoscale": {"roleIds": [ROLE]}}));
        assert_eq!(check_with(Some(&listed), &exo, &role_key), Ok(()), "a vetted role needs no read");

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
    fn an_existing_role_is_read_and_judged_as_an_own_role_unless_iam_is_allowed_or_roles_are_listed() {
        let exo = exoscale_issuer();
        let role_key = spec(json!({"exoscale": {"roleId": ROLE}}));
        let question = Question::ExoscaleRole(ROLE.to_string());
        assert_eq!(check_answered(None, &exo, &role_key, None), Verdict::Ask(question.clone()));
        let answered =
            |grants: RoleGrants| check_answered(None, &exo, &role_key, Some((&question, &Answer::Role(grants))));
        let grants = |default: Option<&str>, iam: Option<&str>, permissions: &[&str]| RoleGrants {
            default_service_strategy: default.map(String::from),
            iam_service: iam.map(String::from),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(answered(grants(Some("deny"), None, &[])), Verdict::Allowed);
        assert_eq!(answered(grants(Some("deny"), Some("deny"), &["bypass-governance-retention"])), Verdict::Allowed);
        for (capable, says) in [
            (grants(Some("allow"), None, &[]), "defaultServiceStrategy allow"),
            (grants(None, None, &[]), "defaultServiceStrategy allow"),
            (grants(Some("(unreadable)"), None, &[]), "defaultServiceStrategy allow"),
            (grants(Some("deny"), Some("allow"), &[]), "iam service of type allow"),
            (grants(Some("deny"), Some("rules"), &[]), "iam service of type rules"),
            (grants(Some("deny"), None, &["reset-iam-organization-policy"]), "reset-iam-organization-policy"),
        ] {
            let Verdict::Denied(d) = answered(capable.clone()) else { panic!("{capable:?} allowed") };
            assert_eq!(d.field, "spec.exoscale.roleId");
            assert!(d.value.contains(ROLE) && d.value.contains(says), "{}", d.value);
            assert!(d.allowed.contains("allowIAM: false") && d.allowed.contains("roleIds"), "{}", d.allowed);
        }
        let Verdict::Denied(d) = check_answered(None, &exo, &role_key, Some((&question, &Answer::NoSuchRole))) else {
            panic!("a role that does not exist allowed")
        };
        assert!(d.value.contains("no such role"), "{}", d.value);
        let unreadable = Answer::RoleUnreadable("403 forbidden".into());
        let Verdict::Denied(d) = check_answered(None, &exo, &role_key, Some((&question, &unreadable))) else {
            panic!("a role the issuer cannot read allowed")
        };
        assert!(d.value.contains("403 forbidden") && d.allowed.contains("get-iam-role"), "{d}");
        // An answer about another role or a user answers nothing.
        let other = Question::ExoscaleRole("other".into());
        let capable = Answer::Role(grants(Some("allow"), None, &[]));
        assert_eq!(check_answered(None, &exo, &role_key, Some((&other, &capable))), Verdict::Ask(question.clone()));
        let user = Question::OutscaleUser("u".into());
        let identity = Answer::IssuerIdentity(true);
        assert_eq!(check_answered(None, &exo, &role_key, Some((&user, &identity))), Verdict::Ask(question.clone()));
        // allowIAM: true, or a list of vetted roles: nothing to read.
        let iam_ok = policy(json!({"exoscale": {"allowIAM": true}}));
        assert_eq!(check_answered(Some(&iam_ok), &exo, &role_key, None), Verdict::Allowed);
        // Rules the spec answers come first: nothing is read for a request they refuse.
        let delete_only = policy(json!({"deletionPolicies": ["Delete"]}));
        let retained = spec(json!({"exoscale": {"roleId": ROLE}, "deletionPolicy": "Retain"}));
        assert!(matches!(check_answered(Some(&delete_only), &exo, &retained, None), Verdict::Denied(_)));
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
        let web = Question::OutscaleUser("app-web".into());
        assert_eq!(check_answered(Some(&apps), &osc, &app, None), Verdict::Ask(web.clone()));
        let not_issuer = Answer::IssuerIdentity(false);
        assert_eq!(check_answered(Some(&apps), &osc, &app, Some((&web, &not_issuer))), Verdict::Allowed);
        let forever = spec(json!({"outscale": {"userName": "app-web"}}));
        assert_eq!(check_with(Some(&apps), &osc, &forever).expect_err("no expiry").field, "spec.outscale.expiresAfter");
        let long = spec(json!({"outscale": {"userName": "app-web", "expiresAfter": "2160h"}}));
        assert_eq!(check_with(Some(&apps), &osc, &long).expect_err("too long").allowed, "at most 720h");
    }

    #[test]
    fn an_outscale_issuers_own_eim_user_is_its_identity() {
        let osc = issuer(json!({"outscale": {"region": "eu-west-2", "credentialsSecretRef": {"name": "c"}}}));
        let own = spec(json!({"outscale": {"userName": "operator-bot"}}));
        let question = Question::OutscaleUser("operator-bot".into());
        assert_eq!(check_answered(None, &osc, &own, None), Verdict::Ask(question.clone()));
        let identity = Answer::IssuerIdentity(true);
        let Verdict::Denied(d) = check_answered(None, &osc, &own, Some((&question, &identity))) else {
            panic!("the issuer's own user allowed")
        };
        assert_eq!(d.field, "spec.outscale.userName");
        assert!(d.value.contains("operator-bot") && d.value.contains("issuer's own identity"), "{}", d.value);
        assert!(d.allowed.contains("allowIssuerIdentity: false"), "{}", d.allowed);
        let other = Answer::IssuerIdentity(false);
        assert_eq!(check_answered(None, &osc, &own, Some((&question, &other))), Verdict::Allowed);
        // allowIssuerIdentity: true allows it, without asking.
        let identity_ok = policy(json!({"outscale": {"allowIssuerIdentity": true}}));
        assert_eq!(check_answered(Some(&identity_ok), &osc, &own, None), Verdict::Allowed);
        // A user the policy's globs refuse is refused without asking.
        let apps = policy(json!({"outscale": {"userNames": ["app-*"]}}));
        assert!(matches!(check_answered(Some(&apps), &osc, &own, None), Verdict::Denied(_)));
        // An empty userName is no user: the issuer's identity.
        let empty = spec(json!({"outscale": {"userName": ""}}));
        assert_eq!(check_with(None, &osc, &empty).expect_err("identity").value, "(absent: the issuer's own identity)");
    }

    #[test]
    fn every_unbounded_grant_is_named_with_what_would_bound_it() {
        let exo = exoscale_issuer();
        let open = unbounded_grants(&exo, None);
        assert_eq!(open.len(), 3, "{open:?}");
        assert!(open[0].contains("any existing role") && open[0].contains("roleIds"));
        assert!(open[1].contains("allowOwnRoles: false"));
        assert!(
            open[2].contains("legacy") && open[2].contains("any operation") && open[2].contains("without resources")
        );
        let tight = policy(
            json!({"exoscale": {"roleIds": [ROLE], "allowOwnRoles": false, "allowLegacy": false, "allowIAM": false}}),
        );
        assert!(unbounded_grants(&exo, Some(&tight)).is_empty());
        let iam = policy(json!({"exoscale": {"roleIds": [ROLE], "allowOwnRoles": false, "allowLegacy": false,
            "allowIAM": true}}));
        assert_eq!(
            unbounded_grants(&exo, Some(&iam)),
            vec!["keys with IAM rights, which can mint more keys (allowIAM: true)"]
        );
        let ops =
            policy(json!({"exoscale": {"roleIds": [ROLE], "allowOwnRoles": false, "operations": ["get-sos-object"]}}));
        let legacy = unbounded_grants(&exo, Some(&ops));
        assert!(legacy.len() == 1 && legacy[0].contains("without resources") && !legacy[0].contains("any operation"));

        let yc = issuer(json!({"yandex": {"metadataService": {}, "serviceAccountId": "aje-own"}}));
        assert!(unbounded_grants(&yc, None).is_empty(), "the issuer's own account only, by default");
        let any = policy(json!({"yandex": {"serviceAccountIds": ["aje-a", "*"]}}));
        assert!(unbounded_grants(&yc, Some(&any))[0].contains("any service account"));

        let osc = issuer(json!({"outscale": {"region": "eu-west-2", "credentialsSecretRef": {"name": "c"}}}));
        assert!(unbounded_grants(&osc, None)[0].contains("any EIM user"));
        let star = policy(json!({"outscale": {"userNames": ["*"], "allowIssuerIdentity": true}}));
        let grants = unbounded_grants(&osc, Some(&star));
        assert!(grants.len() == 2 && grants[0].contains("any EIM user") && grants[1].contains("allowIssuerIdentity"));
        let apps = policy(json!({"outscale": {"userNames": ["app-*"]}}));
        assert!(unbounded_grants(&osc, Some(&apps)).is_empty());
        assert!(unbounded_grants(&issuer(json!({"local": {}})), None).is_empty());
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
