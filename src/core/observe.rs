//! What one AccessKey's reconcile observes, assembled from what was read: the operator reads it
//! from its caches, `cloudkeys inspect` from the apiserver, and both hand the same [`Observed`]
//! to the same [`decide`]. Pure functions; the reading is the caller's.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, ResourceExt};

use crate::api::{
    validation, AccessKey, AccessKeyStatus, Issuer, IssuerKind, IssuerPolicy, IssuerProvider, IssuerRef, IssuerStatus,
    RotationWindow,
};
use crate::providers;

use super::conditions;
use super::consumers::{self, Workload, WorkloadObject};
use super::decide::{decide, IssuerState, Observed, Step};
use super::issuers::{IssuerId, IssuerUnusable};
use super::policy::{Answer, Question, Verdict};
use super::rotation::{self, DefaultWindows, RotationSettings};
use super::secret::{self, SecretState};

/// An issuer as an AccessKey's decisions see it: its spec and status, without its credentials.
#[derive(Debug, Clone, Copy)]
pub struct IssuerFacts<'a> {
    /// `KeyIssuer ns/name` or `ClusterKeyIssuer name`, for messages.
    pub display: &'a str,
    pub settings: &'a IssuerProvider,
    pub status: &'a IssuerStatus,
    pub generation: Option<i64>,
    /// Being deleted: it still revokes, but mints nothing.
    pub deleting: bool,
    pub policy: Option<&'a IssuerPolicy>,
    /// A ClusterKeyIssuer.
    pub cluster_scoped: bool,
    /// Why the operator has no provider client for it (credentials, endpoint), when it knows.
    pub provider_error: Option<&'a IssuerUnusable>,
    /// `spec.rotationDefaults.windows`.
    pub rotation_windows: Option<&'a [RotationWindow]>,
}

/// The status of an issuer not checked yet.
static NO_STATUS: IssuerStatus = IssuerStatus {
    observed_generation: None,
    conditions: Vec::new(),
    provider: None,
    orphaned_keys: None,
    retained_keys: None,
    retained_keys_since: None,
};

impl<'a> IssuerFacts<'a> {
    /// An issuer object as read from the apiserver: what only the operator knows (whether it
    /// could build a provider client) is not in it.
    pub fn of<K: Issuer + Resource>(issuer: &'a K, display: &'a str, status: Option<&'a IssuerStatus>) -> Self {
        let meta = issuer.meta();
        IssuerFacts {
            display,
            settings: issuer.provider(),
            status: status.unwrap_or(&NO_STATUS),
            generation: meta.generation,
            deleting: meta.deletion_timestamp.is_some(),
            policy: issuer.policy(),
            cluster_scoped: meta.namespace.is_none(),
            provider_error: None,
            rotation_windows: issuer.rotation_windows(),
        }
    }

    /// The rotation windows it gives AccessKeys that set none.
    pub fn default_windows(&self) -> Option<DefaultWindows<'a>> {
        Some(DefaultWindows { issuer: self.display, windows: self.rotation_windows? })
    }

    pub fn is_ready(&self) -> bool {
        !self.deleting && conditions::is_ready(&self.status.conditions, self.generation)
    }

    /// Not checked yet, and nothing known to be wrong with it.
    pub fn is_unchecked(&self) -> bool {
        !self.deleting
            && self.provider_error.is_none()
            && conditions::ready_message(&self.status.conditions).is_none_or(|m| m.is_empty())
    }

    pub fn not_ready_message(&self) -> String {
        if self.deleting {
            return format!("{} is being deleted", self.display);
        }
        match conditions::ready_message(&self.status.conditions) {
            Some(m) if !m.is_empty() => format!("{} is not ready: {m}", self.display),
            _ => format!("{} has not been checked yet", self.display),
        }
    }
}

pub fn kind_name(r: &IssuerRef) -> &'static str {
    match r.kind {
        IssuerKind::KeyIssuer => "KeyIssuer",
        IssuerKind::ClusterKeyIssuer => "ClusterKeyIssuer",
    }
}

/// The issuer `r` of an AccessKey of `namespace` names, as the AccessKey sees it.
/// `other_kind_exists`: an issuer of that name exists with the other kind (asked only when
/// `issuer` is `None`), the most common mistake being `kind` left out.
pub fn issuer_state(
    r: &IssuerRef,
    namespace: &str,
    issuer: Option<&IssuerFacts<'_>>,
    other_kind_exists: bool,
) -> IssuerState {
    match issuer {
        None => IssuerState::NotFound(not_found_message(r, namespace, other_kind_exists)),
        Some(i) if i.is_unchecked() => IssuerState::Unchecked(i.not_ready_message()),
        Some(i) if !i.is_ready() || i.provider_error.is_some() => IssuerState::NotReady(i.not_ready_message()),
        Some(_) => IssuerState::Ready,
    }
}

/// Where the issuer was looked for, and what was probably meant.
fn not_found_message(r: &IssuerRef, namespace: &str, other_kind_exists: bool) -> String {
    let name = &r.name;
    match (r.kind, other_kind_exists) {
        (IssuerKind::KeyIssuer, false) => format!("KeyIssuer {name} not found in namespace {namespace}"),
        (IssuerKind::KeyIssuer, true) => format!(
            "KeyIssuer {name} not found in namespace {namespace}, but a ClusterKeyIssuer {name} exists: to use \
             it, set spec.issuerRef.kind: ClusterKeyIssuer (issuerRef.kind defaults to KeyIssuer)"
        ),
        (IssuerKind::ClusterKeyIssuer, false) => format!("ClusterKeyIssuer {name} not found"),
        (IssuerKind::ClusterKeyIssuer, true) => format!(
            "ClusterKeyIssuer {name} not found, but a KeyIssuer {name} exists in namespace {namespace}: to use \
             it, set spec.issuerRef.kind: KeyIssuer"
        ),
    }
}

/// Why the spec cannot be acted on with this issuer, if it cannot. `rotation` is
/// [`RotationSettings::of`] the spec with this issuer's default windows, which the caller needs
/// too: parsing the windows is the dearest part of it.
pub fn spec_problem(
    ak: &AccessKey,
    issuer: Option<&IssuerFacts<'_>>,
    rotation: &Result<RotationSettings, validation::InvalidSpec>,
) -> Option<String> {
    if let Err(e) = validation::validate_access_key(&ak.spec) {
        return Some(e.to_string());
    }
    if let Err(e) = rotation {
        return Some(e.to_string());
    }
    // Read in place: this runs on every reconcile, and a copy of the status is not needed.
    let no_status = AccessKeyStatus::default();
    let status = ak.status.as_ref().unwrap_or(&no_status);
    if let Err(e) = rotation::grace_for_replacement(ak.annotations(), status, &RotationSettings::default()) {
        return Some(e.to_string());
    }
    if let Some(Err(e)) = ak.spec.consumers.as_deref().map(consumers::selector) {
        return Some(e);
    }
    let issuer = issuer?;
    let (wanted, has) = (ak.spec.provider.name(), issuer.settings.name());
    if wanted != has {
        return Some(format!("spec.{wanted} does not match {}, which is a {has} issuer", issuer.display));
    }
    if let Err(e) = providers::check_spec(issuer.settings, &ak.spec.provider) {
        return Some(e);
    }
    if let Err(e) = secret::check_templates(ak, has, &providers::template_vars(issuer.settings)) {
        return Some(format!("spec.{e}"));
    }
    None
}

/// The workloads of the AccessKey's namespace, as read.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkloadsRead<'a> {
    pub deployments: &'a [Arc<Deployment>],
    pub stateful_sets: &'a [Arc<StatefulSet>],
    pub daemon_sets: &'a [Arc<DaemonSet>],
    /// Argo Rollouts; none where their CRD is not installed.
    pub rollouts: &'a [Arc<crate::api::Rollout>],
}

/// Whether the consumers matter now: only while a replaced key waits for their rollout.
pub fn consumers_wanted(ak: &AccessKey, status: &AccessKeyStatus) -> bool {
    ak.spec.consumers.is_some() && status.retired.iter().any(rotation::awaits_rollout)
}

/// The workloads `spec.consumers` names among `read` (objects of other namespaces are skipped),
/// sorted by kind and name; none unless [`consumers_wanted`].
pub fn observe_consumers(ak: &AccessKey, status: &AccessKeyStatus, read: WorkloadsRead<'_>) -> Vec<Workload> {
    let Some(spec) = ak.spec.consumers.as_deref() else {
        return Vec::new();
    };
    if !consumers_wanted(ak, status) {
        return Vec::new();
    }
    let ns = ak.namespace().unwrap_or_default();
    // An invalid selector is reported as the spec's problem; here it selects nothing.
    let selector = consumers::selector(spec).ok().flatten();
    let secret = ak.spec.secret_name.as_str();
    fn matching<'o, K: WorkloadObject>(
        objects: &'o [Arc<K>],
        ns: &'o str,
        keep: impl Fn(&K) -> bool + 'o,
    ) -> impl Iterator<Item = Workload> + 'o {
        objects.iter().filter(move |w| w.meta().namespace.as_deref() == Some(ns) && keep(w)).map(|w| w.observe())
    }
    let mut found: Vec<Workload> = Vec::new();
    found.extend(matching(read.deployments, &ns, |w| consumers::is_consumer(spec, selector.as_ref(), secret, w)));
    found.extend(matching(read.stateful_sets, &ns, |w| consumers::is_consumer(spec, selector.as_ref(), secret, w)));
    found.extend(matching(read.daemon_sets, &ns, |w| consumers::is_consumer(spec, selector.as_ref(), secret, w)));
    found.extend(matching(read.rollouts, &ns, |w| consumers::is_consumer(spec, selector.as_ref(), secret, w)));
    found.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    found
}

/// Whether the policy check needs the namespace's labels: a ClusterKeyIssuer selecting
/// namespaces by label that does not name this one outright.
pub fn needs_namespace_labels(issuer: &IssuerFacts<'_>, namespace: &str) -> bool {
    let namespaces = issuer.policy.and_then(|p| p.namespaces.as_ref());
    issuer.cluster_scoped && namespaces.is_some_and(|n| n.selector.is_some() && !n.names.iter().any(|m| m == namespace))
}

/// Whether the policy check counts the namespace's keys (`maxKeysPerNamespace`).
pub fn counts_keys(issuer: &IssuerFacts<'_>) -> bool {
    issuer.policy.and_then(|p| p.max_keys_per_namespace).is_some()
}

/// The other AccessKeys of `ak`'s namespace among `access_keys` that hold a key of its issuer
/// (or are minting one).
pub fn keys_in_namespace<'a>(ak: &AccessKey, access_keys: impl IntoIterator<Item = &'a AccessKey>) -> usize {
    let ns = ak.namespace().unwrap_or_default();
    let this = IssuerId::from_ref(&ak.spec.issuer_ref, &ns);
    access_keys
        .into_iter()
        .filter(|other| other.metadata.uid != ak.metadata.uid && holds_key_of(other, &this, &ns))
        .count()
}

/// Whether `ak`, of namespace `ns`, counts against `maxKeysPerNamespace` of `issuer`: its
/// current key is of that issuer, or it records an attempt at one (`status.pending`: the key
/// may exist at the provider already, and is adopted without asking the policy again).
pub fn holds_key_of(ak: &AccessKey, issuer: &IssuerId, ns: &str) -> bool {
    if ak.metadata.namespace.as_deref() != Some(ns) {
        return false;
    }
    let Some(status) = ak.status.as_ref() else { return false };
    let current = status.access_key_id.as_ref().and(status.issued_by.as_ref());
    let attempt = status.pending.as_ref().map(|p| &p.issuer);
    // A replaced key still live counts too: switching issuerRef away (with a long grace period)
    // must not free a place while the key lives on.
    let replaced = status.retired.iter().map(|r| &r.issuer);
    current.into_iter().chain(attempt).chain(replaced).any(|r| IssuerId::from_ref(r, ns) == *issuer)
}

/// What the issuer's policy says of the key `ak` asks for, given the provider's answer to the
/// question it asked before, if any.
pub fn policy_verdict(
    issuer: &IssuerFacts<'_>,
    ak: &AccessKey,
    namespace_labels: Option<&BTreeMap<String, String>>,
    keys_in_namespace: usize,
    answered: Option<(&Question, &Answer)>,
) -> Verdict {
    let ns = ak.namespace().unwrap_or_default();
    let request = super::policy::Request {
        policy: issuer.policy,
        cluster_scoped: issuer.cluster_scoped,
        issuer: issuer.settings,
        spec: &ak.spec,
        namespace: &ns,
        namespace_labels,
        keys_in_namespace,
        answered,
    };
    super::policy::evaluate(&request)
}

/// A denial as the AccessKey's condition says it: which issuer, and why.
pub fn denial_message(issuer: &IssuerFacts<'_>, denial: &super::policy::Denial) -> String {
    format!("{}: {denial}", issuer.display)
}

/// Why the issuer's policy refuses the key `ak` asks for, as far as can be told without asking
/// the provider (what `cloudkeys inspect` can tell; the operator reads the provider's answer).
pub fn policy_denial(
    issuer: &IssuerFacts<'_>,
    ak: &AccessKey,
    namespace_labels: Option<&BTreeMap<String, String>>,
    keys_in_namespace: usize,
) -> Option<String> {
    match policy_verdict(issuer, ak, namespace_labels, keys_in_namespace, None) {
        Verdict::Denied(denial) => Some(denial_message(issuer, &denial)),
        Verdict::Allowed | Verdict::Ask(_) => None,
    }
}

/// What every reconcile observes of the AccessKey; what only a running reconcile learns (keys
/// listed at the provider, a refusal, a drift check's findings) starts as not known.
#[allow(clippy::too_many_arguments)]
pub fn observed<'a>(
    status: &'a AccessKeyStatus,
    annotations: &'a BTreeMap<String, String>,
    spec_problem: Option<String>,
    issuer: IssuerState,
    issuer_ref: &'a IssuerRef,
    spec_hash: &'a str,
    secret: &'a SecretState,
    rotation_settings: &'a RotationSettings,
    consumers: &'a [Workload],
    now: jiff::Timestamp,
) -> Observed<'a> {
    Observed {
        status,
        spec_problem,
        issuer,
        issuer_ref,
        spec_hash,
        secret,
        owned_keys: None,
        retired_tried: false,
        rotation: rotation_settings,
        rotate_request: rotation::rotate_request(annotations, status),
        rotate_now: rotation::request_ignores_windows(annotations, status),
        consumers,
        blocked_until: None,
        policy_denial: None,
        revoked_at_provider: false,
        provider_view: None,
        now,
    }
}

/// Everything read about one AccessKey from the apiserver (by `cloudkeys inspect`).
#[derive(Clone, Copy)]
pub struct Snapshot<'a> {
    pub ak: &'a AccessKey,
    pub issuer: Option<IssuerFacts<'a>>,
    pub secret: Option<&'a Secret>,
    pub workloads: WorkloadsRead<'a>,
    /// The namespace's labels, if read (see [`needs_namespace_labels`]).
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    /// The AccessKeys of the namespace, if listed (see [`counts_keys`]).
    pub access_keys: &'a [AccessKey],
    /// With no issuer found: whether one of that name exists with the other kind.
    pub other_kind_exists: bool,
    pub now: jiff::Timestamp,
}

/// What the operator's next reconcile of `s.ak` would do first, decided as the operator decides
/// it. What only the running operator knows is taken as not known: after an interrupted
/// creation the answer is to list the keys at the provider; a provider's recent refusal, its
/// answers to the policy's questions and a drift check's findings are not seen.
pub fn next_step(s: &Snapshot<'_>) -> Step {
    let ak = s.ak;
    let no_status = AccessKeyStatus::default();
    let status = ak.status.as_ref().unwrap_or(&no_status);
    let hash = spec_hash(ak);
    let issuer = s.issuer.as_ref();
    let rotation = RotationSettings::of(&ak.spec, issuer.and_then(IssuerFacts::default_windows));
    let problem = spec_problem(ak, issuer, &rotation);
    let settings = rotation.unwrap_or_default();
    let secret_state = secret::observe_secret(ak, s.secret);
    let consumers = observe_consumers(ak, status, s.workloads);
    let mut o = observed(
        status,
        ak.annotations(),
        problem,
        issuer_state(&ak.spec.issuer_ref, &ak.namespace().unwrap_or_default(), issuer, s.other_kind_exists),
        &ak.spec.issuer_ref,
        &hash,
        &secret_state,
        &settings,
        &consumers,
        s.now,
    );
    let step = decide(&o);
    let denial = match (&step, issuer) {
        (Step::Issue { .. } | Step::RevokeEarly { .. }, Some(i)) => {
            policy_denial(i, ak, s.namespace_labels, keys_in_namespace(ak, s.access_keys))
        }
        _ => None,
    };
    if denial.is_none() {
        return step;
    }
    o.policy_denial = denial.as_deref();
    decide(&o)
}

/// The part of the spec a key is issued for; a change replaces the key.
pub fn spec_hash(ak: &AccessKey) -> String {
    use sha2::{Digest, Sha256};
    let relevant = serde_json::json!({
        "issuerRef": ak.spec.issuer_ref,
        "provider": ak.spec.provider,
        "secretName": ak.spec.secret_name,
        "data": ak.spec.secret_template.as_ref().and_then(|t| t.data.as_ref()),
    });
    let digest = Sha256::digest(relevant.to_string().as_bytes());
    hex::encode(&digest[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::conditions::Reason;
    use crate::core::decide::IssueReason;

    fn access_key(extra: serde_json::Value) -> AccessKey {
        let mut spec = serde_json::json!({"issuerRef": {"name": "i"}, "secretName": "s", "local": {}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
            "metadata": {"name": "a", "namespace": "team-a", "uid": "u1", "generation": 1},
            "spec": spec,
        }))
        .expect("AccessKey literal")
    }

    fn ready_status() -> IssuerStatus {
        serde_json::from_value(serde_json::json!({"conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
            "message": "ok", "lastTransitionTime": "2026-12-01T00:00:00Z", "observedGeneration": 1}]}))
        .expect("status literal")
    }

    fn step(ak: &AccessKey, issuer: Option<IssuerFacts<'_>>) -> Step {
        next_step(&Snapshot {
            ak,
            issuer,
            secret: None,
            workloads: WorkloadsRead::default(),
            namespace_labels: None,
            access_keys: &[],
            other_kind_exists: false,
            now: jiff::Timestamp::now(),
        })
    }

    #[test]
    fn an_issuer_not_found_says_where_it_was_looked_for_and_what_was_probably_meant() {
        let not_found = |kind: IssuerKind, other: bool| match issuer_state(
            &IssuerRef { name: "locla".into(), kind },
            "team-a",
            None,
            other,
        ) {
            IssuerState::NotFound(m) => m,
            state => panic!("{state:?}"),
        };
        assert_eq!(not_found(IssuerKind::KeyIssuer, false), "KeyIssuer locla not found in namespace team-a");
        let hint = not_found(IssuerKind::KeyIssuer, true);
        assert!(hint.contains("a ClusterKeyIssuer locla exists") && hint.contains("kind: ClusterKeyIssuer"), "{hint}");
        assert_eq!(not_found(IssuerKind::ClusterKeyIssuer, false), "ClusterKeyIssuer locla not found");
        let hint = not_found(IssuerKind::ClusterKeyIssuer, true);
        assert!(
            hint.contains("a KeyIssuer locla exists in namespace team-a") && hint.contains("kind: KeyIssuer"),
            "{hint}"
        );
    }

    #[test]
    fn the_cli_decides_as_the_operator_from_what_it_read() {
        let settings = IssuerProvider::Local(Default::default());
        let status = ready_status();
        let facts = |policy: Option<&'static IssuerPolicy>, cluster_scoped: bool| IssuerFacts {
            display: "KeyIssuer team-a/i",
            settings: &settings,
            status: &status,
            generation: Some(1),
            deleting: false,
            policy,
            cluster_scoped,
            provider_error: None,
            rotation_windows: None,
        };
        let ak = access_key(serde_json::json!({}));
        assert_eq!(step(&ak, Some(facts(None, false))), Step::Issue { reason: IssueReason::FirstKey });
        assert!(matches!(step(&ak, None), Step::NotReady(Reason::IssuerNotFound, _)));
        let unchecked = IssuerStatus::default();
        let not_checked = IssuerFacts { status: &unchecked, ..facts(None, false) };
        assert!(matches!(step(&ak, Some(not_checked)), Step::AwaitIssuerCheck(m) if m.contains("not been checked")));
        // The policy is consulted only for a new key, as the operator does.
        static ELSEWHERE: std::sync::LazyLock<IssuerPolicy> = std::sync::LazyLock::new(|| {
            serde_json::from_value(serde_json::json!({"namespaces": {"names": ["team-b"]}})).expect("policy literal")
        });
        assert!(matches!(step(&ak, Some(facts(Some(&ELSEWHERE), true))), Step::NotReady(Reason::PolicyDenied, _)));
        // A template error is found from the issuer's settings, without its credentials.
        let bad = access_key(serde_json::json!({"secretTemplate": {"data": {"x": "{{ nope( }}"}}}));
        assert!(matches!(step(&bad, Some(facts(None, false))), Step::NotReady(Reason::InvalidSpec, _)));
    }
}
