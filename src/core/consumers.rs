//! The workloads that consume an AccessKey's Secret: which ones `spec.consumers` names, whether
//! one was restarted for a key, and whether its restart rolled out. Pure functions of the
//! observed objects.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Container, EnvFromSource, PodSpec, PodTemplateSpec, SecretEnvSource};
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;

use crate::api::{ConsumerTarget, Consumers, Rollout, WorkloadKind};

use super::rotation::KEY_ID_ANNOTATION;

/// What a decision needs to know of one consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
    /// The key its pod template was last restarted for.
    pub key_id: Option<String>,
    pub rolled_out: bool,
}

impl Workload {
    pub fn target(&self) -> ConsumerTarget {
        ConsumerTarget { kind: self.kind, name: self.name.clone() }
    }
}

/// A Deployment, StatefulSet, DaemonSet or Argo Rollout.
pub trait WorkloadObject: kube::Resource<DynamicType = ()> {
    const KIND: WorkloadKind;
    fn template(&self) -> Option<&PodTemplateSpec>;
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec>;
    /// What `kubectl rollout status` checks.
    fn rolled_out(&self) -> bool;
    /// Drops every field of the spec and status but the pod template and what
    /// [`Self::rolled_out`] reads.
    fn keep_rollout_fields(&mut self);

    /// The key the workload was last restarted for: the pod template's `cloudkeys.io/key-id`.
    fn restarted_for(&self) -> Option<&String> {
        let annotations = self.template().and_then(|t| t.metadata.as_ref()).and_then(|m| m.annotations.as_ref());
        annotations.and_then(|a| a.get(KEY_ID_ANNOTATION))
    }

    fn observe(&self) -> Workload {
        Workload {
            kind: Self::KIND,
            name: self.meta().name.clone().unwrap_or_default(),
            key_id: self.restarted_for().cloned(),
            rolled_out: self.rolled_out(),
        }
    }
}

fn observed_current(generation: Option<i64>, observed: Option<i64>) -> bool {
    observed.unwrap_or(0) >= generation.unwrap_or(0)
}

impl WorkloadObject for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;

    fn template(&self) -> Option<&PodTemplateSpec> {
        Some(&self.spec.template)
    }
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec> {
        Some(&mut self.spec.template)
    }

    fn rolled_out(&self) -> bool {
        let (spec, Some(status)) = (&self.spec, &self.status) else {
            return false;
        };
        let replicas = spec.replicas.unwrap_or(1);
        observed_current(self.metadata.generation, status.observed_generation)
            && status.updated_replicas.unwrap_or(0) == replicas
            && status.available_replicas.unwrap_or(0) == replicas
            // Old pods still terminating count in `replicas`, as kubectl waits for them too.
            && status.replicas.unwrap_or(0) <= replicas
    }

    fn keep_rollout_fields(&mut self) {
        use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
        let spec = std::mem::take(&mut self.spec);
        self.spec = DeploymentSpec { replicas: spec.replicas, template: spec.template, ..Default::default() };
        self.status = self.status.take().map(|s| DeploymentStatus {
            observed_generation: s.observed_generation,
            updated_replicas: s.updated_replicas,
            available_replicas: s.available_replicas,
            replicas: s.replicas,
            ..Default::default()
        });
    }
}

impl WorkloadObject for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;

    fn template(&self) -> Option<&PodTemplateSpec> {
        Some(&self.spec.template)
    }
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec> {
        Some(&mut self.spec.template)
    }

    fn rolled_out(&self) -> bool {
        let (spec, Some(status)) = (&self.spec, &self.status) else {
            return false;
        };
        let replicas = spec.replicas.unwrap_or(1);
        observed_current(self.metadata.generation, status.observed_generation)
            && status.updated_replicas.unwrap_or(0) == replicas
            && status.current_revision.is_some()
            && status.current_revision == status.update_revision
    }

    fn keep_rollout_fields(&mut self) {
        use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
        let spec = std::mem::take(&mut self.spec);
        self.spec = StatefulSetSpec { replicas: spec.replicas, template: spec.template, ..Default::default() };
        self.status = self.status.take().map(|s| StatefulSetStatus {
            observed_generation: s.observed_generation,
            updated_replicas: s.updated_replicas,
            current_revision: s.current_revision,
            update_revision: s.update_revision,
            ..Default::default()
        });
    }
}

impl WorkloadObject for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;

    fn template(&self) -> Option<&PodTemplateSpec> {
        Some(&self.spec.template)
    }
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec> {
        Some(&mut self.spec.template)
    }

    fn rolled_out(&self) -> bool {
        let Some(status) = &self.status else {
            return false;
        };
        observed_current(self.metadata.generation, status.observed_generation)
            && status.updated_number_scheduled.unwrap_or(0) == status.desired_number_scheduled
            && status.number_available.unwrap_or(0) == status.desired_number_scheduled
    }

    fn keep_rollout_fields(&mut self) {
        use k8s_openapi::api::apps::v1::{DaemonSetSpec, DaemonSetStatus};
        let spec = std::mem::take(&mut self.spec);
        self.spec = DaemonSetSpec { template: spec.template, ..Default::default() };
        self.status = self.status.take().map(|s| DaemonSetStatus {
            observed_generation: s.observed_generation,
            updated_number_scheduled: s.updated_number_scheduled,
            desired_number_scheduled: s.desired_number_scheduled,
            number_available: s.number_available,
            ..Default::default()
        });
    }
}

/// An Argo Rollout is restarted through `spec.restartAt`, which replaces its pods without a new
/// revision (a pod-template change would run the whole canary or blue-green strategy, pauses
/// and analyses included). The key it was restarted for is the Rollout's own annotation
/// `cloudkeys.io/key-id`, written in the same patch.
impl WorkloadObject for Rollout {
    const KIND: WorkloadKind = WorkloadKind::Rollout;

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.template.as_ref()
    }
    fn template_mut(&mut self) -> Option<&mut PodTemplateSpec> {
        self.spec.template.as_mut()
    }

    fn restarted_for(&self) -> Option<&String> {
        self.metadata.annotations.as_ref().and_then(|a| a.get(KEY_ID_ANNOTATION))
    }

    /// What `kubectl argo rollouts status` waits for (Argo's `GetRolloutPhase`): the controller
    /// has seen this generation, is not about to unpause, and says `Healthy` (every replica
    /// updated and available, all steps done, the restart asked for done). `Paused` and
    /// `Degraded` are not rolled out: the restart waits for them up to `rolloutTimeout`.
    fn rolled_out(&self) -> bool {
        let Some(status) = &self.status else {
            return false;
        };
        // A generation that is no number (Argo 0.9's hash) proves nothing: not rolled out.
        let observed = status.observed_generation.as_deref().and_then(|g| g.parse::<i64>().ok());
        let seen = observed.is_some_and(|o| o >= self.metadata.generation.unwrap_or(0));
        let unpausing =
            status.controller_pause == Some(true) && status.pause_conditions.as_ref().is_none_or(|c| c.is_empty());
        let restarted = match &self.spec.restart_at {
            None => true,
            Some(asked) => status.restarted_at.as_ref().is_some_and(|done| done.0 >= asked.0),
        };
        seen && !unpausing && restarted && status.phase.as_deref() == Some("Healthy")
    }

    fn keep_rollout_fields(&mut self) {
        let spec = std::mem::take(&mut self.spec);
        self.spec = crate::api::RolloutSpec {
            replicas: spec.replicas,
            template: spec.template,
            restart_at: spec.restart_at,
            paused: spec.paused,
        };
        if let Some(status) = self.status.as_mut() {
            // Only whether there are any is read.
            if let Some(c) = status.pause_conditions.as_mut() {
                c.truncate(1);
                c.iter_mut().for_each(|v| *v = serde_json::Value::Null);
            }
            status.phase = status.phase.take().filter(|p| p.len() <= 32);
        }
    }
}

/// A workload as the cache keeps it: what [`WorkloadObject::observe`], [`reads_secret_unrefreshed`]
/// and a consumer selector read, and nothing else. Any tenant can create workloads, with pod
/// templates, annotations and volume claim templates as large as the apiserver takes; the
/// operator must not hold their images, probes, plain environment values, volumes of other
/// kinds, annotations or conditions. (Workloads are only ever patched, never written back from
/// the cache.)
pub fn slim_workload<K: WorkloadObject>(w: &mut K) {
    let meta = w.meta_mut();
    let own = std::mem::take(meta);
    *meta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        // Where a Rollout records the key it was restarted for.
        annotations: own_key_id(own.annotations),
        name: own.name,
        namespace: own.namespace,
        uid: own.uid,
        resource_version: own.resource_version,
        generation: own.generation,
        deletion_timestamp: own.deletion_timestamp,
        // What `consumers.selector` matches.
        labels: kept_labels(own.labels),
        ..Default::default()
    };
    w.keep_rollout_fields();
    let Some(template) = w.template_mut() else { return };
    if let Some(meta) = template.metadata.as_mut() {
        let annotations = meta.annotations.take();
        *meta = Default::default();
        meta.annotations = own_key_id(annotations);
    }
    let Some(pod) = template.spec.take() else { return };
    // All that is read of the pod: the Secrets it reads unrefreshed, as one container's envFrom.
    let mut read = secrets_read_unrefreshed(&pod).into_iter().collect::<Vec<_>>();
    let mut bytes = 0;
    read.retain(|name| {
        bytes += name.len();
        bytes <= KEPT_BYTES
    });
    template.spec = Some(PodSpec {
        containers: vec![Container {
            name: "secrets-read".into(),
            env_from: (!read.is_empty()).then(|| {
                read.into_iter()
                    .map(|name| EnvFromSource {
                        secret_ref: Some(SecretEnvSource { name, optional: None }),
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
}

/// Of `annotations`, only `cloudkeys.io/key-id`, and only at a length a key id can have: the
/// annotation is the tenant's to write, at any length.
fn own_key_id(annotations: Option<BTreeMap<String, String>>) -> Option<BTreeMap<String, String>> {
    let ours: BTreeMap<String, String> = annotations
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| k == KEY_ID_ANNOTATION && v.len() <= MAX_KEY_ID)
        .collect();
    (!ours.is_empty()).then_some(ours)
}

/// The longest key id any provider hands out, with room to spare.
const MAX_KEY_ID: usize = 128;

/// What a workload's cached form keeps of its labels, and of the names of the Secrets its pods
/// read, at most: a tenant's workloads cannot grow the operator's memory by more. (Labels past it,
/// in key order, are not matched by `consumers.selector`; Secrets past it are not discovered.)
pub const KEPT_BYTES: usize = 4096;

/// Labels in key order as long as their keys and values fit in [`KEPT_BYTES`].
fn kept_labels(labels: Option<BTreeMap<String, String>>) -> Option<BTreeMap<String, String>> {
    let mut bytes = 0;
    labels.map(|labels| {
        labels
            .into_iter()
            .take_while(|(k, v)| {
                bytes += k.len() + v.len();
                bytes <= KEPT_BYTES
            })
            .collect()
    })
}

/// The Secrets a pod reads in a way the kubelet never refreshes: through `env`, `envFrom`, or a
/// file of a secret (or projected) volume mounted with `subPath`.
pub fn secrets_read_unrefreshed(pod: &PodSpec) -> BTreeSet<String> {
    let mut read = BTreeSet::new();
    let volumes: BTreeMap<&str, Vec<&str>> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| {
            let direct = v.secret.as_ref().and_then(|s| s.secret_name.as_deref());
            let projected =
                v.projected.iter().flat_map(|p| p.sources.iter().flatten()).filter_map(|s| s.secret.as_ref());
            (v.name.as_str(), direct.into_iter().chain(projected.map(|s| s.name.as_str())).collect())
        })
        .collect();
    for c in pod.containers.iter().chain(pod.init_containers.iter().flatten()) {
        let env = c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref());
        read.extend(env.map(|r| r.name.clone()));
        read.extend(c.env_from.iter().flatten().filter_map(|e| Some(e.secret_ref.as_ref()?.name.clone())));
        for m in c.volume_mounts.iter().flatten() {
            let sub_path = m.sub_path.as_deref().is_some_and(|p| !p.is_empty())
                || m.sub_path_expr.as_deref().is_some_and(|p| !p.is_empty());
            if sub_path {
                read.extend(volumes.get(m.name.as_str()).into_iter().flatten().map(|s| s.to_string()));
            }
        }
    }
    read
}

/// Whether a pod reads the Secret in a way the kubelet never refreshes: an environment variable
/// (`env` or `envFrom`) or a file mounted with `subPath`. A plain volume mount is refreshed in
/// place and needs no restart.
pub fn reads_secret_unrefreshed(pod: &PodSpec, secret: &str) -> bool {
    secrets_read_unrefreshed(pod).contains(secret)
}

/// Whether `spec.consumers` names this workload: as a target, by its labels, or (with
/// `discover`) because its pods read the Secret unrefreshed.
pub fn is_consumer<K: WorkloadObject>(consumers: &Consumers, selector: Option<&Selector>, secret: &str, w: &K) -> bool {
    let name = w.meta().name.as_deref().unwrap_or_default();
    if consumers.targets.iter().any(|t| t.kind == K::KIND && t.name == name) {
        return true;
    }
    if selector.is_some_and(|s| s.matches(w.labels())) {
        return true;
    }
    consumers.discover
        && w.template().and_then(|t| t.spec.as_ref()).is_some_and(|p| reads_secret_unrefreshed(p, secret))
}

/// `consumers.selector` as a matcher; `None` when there is none. An empty selector would match
/// every workload of the namespace, which no one means: it matches none.
pub fn selector(consumers: &Consumers) -> Result<Option<Selector>, String> {
    let Some(s) = &consumers.selector else {
        return Ok(None);
    };
    if s.match_labels.as_ref().is_none_or(|m| m.is_empty()) && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    {
        return Ok(None);
    }
    Selector::try_from(s.clone()).map(Some).map_err(|e| format!("consumers.selector: {e}"))
}

/// The merge patch that restarts a workload of `kind` for `key_id` at `now`: a new pod-template
/// annotation; for an Argo Rollout, `spec.restartAt` (what `kubectl argo rollouts restart`
/// sets) and the Rollout's own annotation, in one write.
pub fn restart_patch(kind: WorkloadKind, key_id: &str, now: jiff::Timestamp) -> serde_json::Value {
    match kind {
        WorkloadKind::Rollout => serde_json::json!({
            "metadata": {"annotations": {KEY_ID_ANNOTATION: key_id}},
            // RFC 3339 in whole seconds, UTC, as Argo writes it.
            "spec": {"restartAt": super::rotation::whole_seconds(now).to_string()},
        }),
        WorkloadKind::Deployment | WorkloadKind::StatefulSet | WorkloadKind::DaemonSet => {
            serde_json::json!({"spec": {"template": {"metadata": {"annotations": {KEY_ID_ANNOTATION: key_id}}}}})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(value: serde_json::Value) -> Deployment {
        serde_json::from_value(value).expect("Deployment")
    }

    fn pod(spec: serde_json::Value) -> PodSpec {
        serde_json::from_value(spec).expect("PodSpec")
    }

    /// Finding 3a: labels are kept whole. Any tenant with `edit` can put ~1 MiB of labels on
    /// each of as many Deployments as it likes (a label value is up to 63 characters, their
    /// number is unbounded); every one is held in the operator's cache, though only the label
    /// keys some `consumers.selector` names are ever read.
    #[test]
    fn a_slimmed_workload_keeps_no_megabyte_of_labels() {
        let labels: serde_json::Map<String, serde_json::Value> =
            (0..12_000).map(|i| (format!("bulk.example.com/l{i:05}"), json!("v".repeat(63)))).collect();
        let mut d = deployment(json!({
            "metadata": {"name": "bulk", "labels": labels, "generation": 1},
            "spec": {"replicas": 1, "selector": {}, "template": {"spec": {"containers": [{"name": "c"}]}}},
        }));
        assert!(serde_json::to_string(&d).expect("JSON").len() > 1_000_000);
        slim_workload(&mut d);
        let kept = serde_json::to_string(&d).expect("JSON").len();
        assert!(kept < 16 * 1024, "{kept} bytes of one tenant Deployment kept in the operator's cache");
    }

    /// Finding 3b: the slimmed pod template keeps every `env` entry that reads any Secret, and
    /// every secret volume whole (with its `items`): a pod template of 1 MiB of such entries,
    /// none naming a Secret of an AccessKey, is kept as it came.
    #[test]
    fn a_slimmed_workload_keeps_no_megabyte_of_secret_references() {
        let env: Vec<serde_json::Value> = (0..8_000)
            .map(|i| {
                json!({"name": format!("E{i:05}{}", "x".repeat(60)),
                "valueFrom": {"secretKeyRef": {"name": format!("unrelated-{i}"), "key": "k".repeat(40)}}})
            })
            .collect();
        let items: Vec<serde_json::Value> =
            (0..4_000).map(|i| json!({"key": format!("k{i}{}", "x".repeat(50)), "path": format!("p{i}")})).collect();
        let mut d = deployment(json!({
            "metadata": {"name": "bulk", "generation": 1},
            "spec": {"replicas": 1, "selector": {}, "template": {"spec": {
                "containers": [{"name": "c", "env": env}],
                "volumes": [{"name": "s", "secret": {"secretName": "unrelated", "items": items}}]}}},
        }));
        assert!(serde_json::to_string(&d).expect("JSON").len() > 1_000_000);
        slim_workload(&mut d);
        let kept = serde_json::to_string(&d).expect("JSON").len();
        assert!(kept < 16 * 1024, "{kept} bytes of one tenant Deployment kept in the operator's cache");
    }

    #[test]
    fn a_key_id_annotation_no_provider_could_have_written_is_not_kept() {
        let with_key_id = |id: String| {
            deployment(json!({"metadata": {"name": "w", "generation": 1},
                "spec": {"selector": {}, "template": {"metadata": {"annotations": {KEY_ID_ANNOTATION: id}}}}}))
        };
        let mut real = with_key_id("EXO0123456789abcdef".into());
        slim_workload(&mut real);
        assert_eq!(real.observe().key_id.as_deref(), Some("EXO0123456789abcdef"));
        let mut bulk = with_key_id("x".repeat(200_000));
        slim_workload(&mut bulk);
        assert_eq!(bulk.observe().key_id, None);
    }

    #[test]
    fn a_slimmed_workload_reads_the_same_and_keeps_nothing_else_of_its_pod_template() {
        let secret_env =
            |name: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}});
        let template = json!({
            "metadata": {"labels": {"app": "api"}, "annotations": {KEY_ID_ANNOTATION: "K1", "big": "x".repeat(4096)}},
            "spec": {
                "containers": [{"name": "c", "image": "registry/app:1", "args": ["x".repeat(4096)],
                    "env": [{"name": "PLAIN", "value": "x".repeat(4096)}, secret_env("A")],
                    "envFrom": [{"configMapRef": {"name": "cm"}}, {"secretRef": {"name": "other"}}],
                    "volumeMounts": [{"name": "v", "mountPath": "/a"}, {"name": "s", "mountPath": "/b", "subPath": "k"}]}],
                "initContainers": [{"name": "i", "image": "init", "env": [secret_env("B")]}],
                "volumes": [{"name": "v", "emptyDir": {}}, {"name": "s", "secret": {"secretName": "creds"}},
                    {"name": "p", "projected": {"sources": [{"configMap": {"name": "cm"}}, {"secret": {"name": "creds"}}]}}],
                "tolerations": [{"key": "x".repeat(4096)}],
            },
        });
        let bulk = "x".repeat(4096);
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "api", "labels": {"app": "api"}, "generation": 2,
                "annotations": {"note": bulk}, "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                    "name": bulk, "uid": "u"}], "finalizers": [bulk]},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": bulk}}, "template": template},
            "status": {"observedGeneration": 2, "updatedReplicas": 1, "availableReplicas": 1, "replicas": 1,
                "conditions": [{"type": "Available", "status": "True", "message": bulk}]},
        }))
        .expect("Deployment");
        let before = (d.observe(), reads_secret_unrefreshed(d.spec.template.spec.as_ref().expect("pod"), "creds"));
        slim_workload(&mut d);
        let pod = d.spec.template.spec.as_ref().expect("pod");
        assert_eq!((d.observe(), reads_secret_unrefreshed(pod, "creds")), before);
        assert!(before.1);
        let kept = serde_json::to_string(&d).expect("JSON");
        assert!(kept.len() < 2048 && !kept.contains("xxxx") && !kept.contains("registry"), "{kept}");
        // Every Secret it reads unrefreshed, whichever way, and none it reads refreshed.
        let read: Vec<String> = secrets_read_unrefreshed(pod).into_iter().collect();
        assert_eq!(read, ["creds", "other"]);
        assert_eq!(d.metadata.labels.as_ref().map(|l| l.len()), Some(1));

        let mut s: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "db", "generation": 1},
            "spec": {"replicas": 1, "selector": {}, "serviceName": bulk, "template": {},
                "volumeClaimTemplates": [{"metadata": {"name": bulk}}]},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "currentRevision": "a",
                "updateRevision": "a", "conditions": [{"type": "x", "status": "True", "message": bulk}]}}))
        .expect("StatefulSet");
        assert!(s.rolled_out());
        slim_workload(&mut s);
        assert!(s.rolled_out());
        let kept = serde_json::to_string(&s).expect("JSON");
        assert!(!kept.contains("xxxx"), "{kept}");
    }

    #[test]
    fn env_env_from_and_sub_path_readers_are_found_and_plain_volumes_left_alone() {
        let env = pod(json!({"containers": [{"name": "c", "env": [{"name": "K",
            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "ACCESS_KEY_ID"}}}]}]}));
        let env_from = pod(json!({"containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "creds"}}]}]}));
        let init = pod(json!({"containers": [{"name": "c"}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "creds"}}]}]}));
        let sub_path = pod(json!({"volumes": [{"name": "v", "secret": {"secretName": "creds"}}],
            "containers": [{"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/k", "subPath": "ACCESS_KEY_ID"}]}]}));
        let projected =
            pod(json!({"volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "creds"}}]}}],
            "containers": [{"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/k", "subPath": "x"}]}]}));
        let volume = pod(json!({"volumes": [{"name": "v", "secret": {"secretName": "creds"}}],
            "containers": [{"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/k"}]}]}));
        let other = pod(json!({"containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "other"}}]}]}));
        for (what, p) in
            [("env", &env), ("envFrom", &env_from), ("init", &init), ("subPath", &sub_path), ("projected", &projected)]
        {
            assert!(reads_secret_unrefreshed(p, "creds"), "{what}");
        }
        assert!(!reads_secret_unrefreshed(&volume, "creds"));
        assert!(!reads_secret_unrefreshed(&other, "creds"));
    }

    #[test]
    fn a_deployment_has_rolled_out_when_every_replica_is_updated_and_available() {
        let mut d = deployment(json!({"metadata": {"name": "api", "generation": 2},
            "spec": {"replicas": 0, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1}}));
        assert!(!d.rolled_out(), "generation not observed yet");
        d.status.as_mut().expect("status").observed_generation = Some(2);
        assert!(d.rolled_out(), "zero replicas roll out at once");
        let mut d = deployment(json!({"metadata": {"name": "api", "generation": 2},
            "spec": {"replicas": 1, "selector": {}, "template": {"metadata": {"annotations": {KEY_ID_ANNOTATION: "K2"}}}},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1}}));
        assert!(!d.rolled_out(), "an old pod is still there");
        d.status.as_mut().expect("status").replicas = Some(1);
        assert!(d.rolled_out());
        assert_eq!(d.observe().key_id.as_deref(), Some("K2"));
    }

    #[test]
    fn stateful_and_daemon_sets_follow_kubectl_rollout_status() {
        let s: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "db", "generation": 3},
            "spec": {"replicas": 1, "selector": {}, "serviceName": "db", "template": {}},
            "status": {"observedGeneration": 3, "replicas": 1, "updatedReplicas": 1, "currentRevision": "a", "updateRevision": "b"}}))
        .expect("StatefulSet");
        assert!(!s.rolled_out());
        let d: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "agent", "generation": 1},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": 0, "currentNumberScheduled": 0,
                       "numberMisscheduled": 0, "numberReady": 0}}))
        .expect("DaemonSet");
        assert!(d.rolled_out(), "no node: nothing to roll out");
    }

    #[test]
    fn consumers_are_named_selected_or_discovered() {
        let d = deployment(json!({"metadata": {"name": "api", "labels": {"app": "api"}},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "c",
                "envFrom": [{"secretRef": {"name": "creds"}}]}]}}}}));
        let none = Consumers::default();
        assert!(!is_consumer(&none, None, "creds", &d));
        let named = Consumers {
            targets: vec![ConsumerTarget { kind: WorkloadKind::Deployment, name: "api".into() }],
            ..Default::default()
        };
        assert!(is_consumer(&named, None, "creds", &d));
        let other_kind = Consumers {
            targets: vec![ConsumerTarget { kind: WorkloadKind::StatefulSet, name: "api".into() }],
            ..Default::default()
        };
        assert!(!is_consumer(&other_kind, None, "creds", &d));
        let by_label: Consumers =
            serde_json::from_value(json!({"selector": {"matchLabels": {"app": "api"}}})).expect("consumers");
        let s = selector(&by_label).expect("valid");
        assert!(is_consumer(&by_label, s.as_ref(), "creds", &d));
        let empty: Consumers = serde_json::from_value(json!({"selector": {}})).expect("consumers");
        assert_eq!(selector(&empty), Ok(None));
        let discover = Consumers { discover: true, ..Default::default() };
        assert!(is_consumer(&discover, None, "creds", &d));
        assert!(!is_consumer(&discover, None, "other", &d));
    }

    fn rollout(value: serde_json::Value) -> Rollout {
        serde_json::from_value(value).expect("Rollout")
    }

    /// A Rollout restarted at 12:00 for K2 (generation 3), as Argo's controller reports it
    /// once every pod was replaced.
    fn restarted_rollout() -> serde_json::Value {
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "api", "namespace": "n", "generation": 3,
                "annotations": {KEY_ID_ANNOTATION: "K2", "big": "x".repeat(4096)}},
            "spec": {"replicas": 2, "restartAt": "2026-01-01T12:00:00Z", "template": {"spec": {"containers": [
                {"name": "c", "envFrom": [{"secretRef": {"name": "creds"}}]}]}}},
            "status": {"observedGeneration": "3", "phase": "Healthy", "restartedAt": "2026-01-01T12:00:00Z",
                "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2, "stableRS": "abc", "currentPodHash": "abc"}})
    }

    #[test]
    fn a_rollout_has_rolled_out_when_argo_says_healthy_for_this_generation_and_restart() {
        let healthy = rollout(restarted_rollout());
        assert!(healthy.rolled_out());
        assert_eq!(healthy.observe().key_id.as_deref(), Some("K2"), "the Rollout's own annotation");
        let judged = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = restarted_rollout();
            edit(&mut v);
            rollout(v).rolled_out()
        };
        assert!(!judged(&|v| v["status"]["observedGeneration"] = json!("2")), "an older generation");
        assert!(judged(&|v| v["status"]["observedGeneration"] = json!(3)), "a number is read as Argo's string");
        assert!(!judged(&|v| v["status"]["observedGeneration"] = json!("a1b2c3")), "a hash proves nothing");
        assert!(!judged(&|v| v["status"]["phase"] = json!("Paused")), "paused");
        assert!(!judged(&|v| v["status"]["phase"] = json!("Degraded")), "degraded");
        assert!(!judged(&|v| v["status"]["phase"] = json!("Progressing")), "progressing");
        assert!(!judged(&|v| v["status"].as_object_mut().map(|s| s.remove("phase")).map_or((), drop)), "no phase");
        assert!(!judged(&|v| v["status"]["controllerPause"] = json!(true)), "about to unpause");
        // Paused by the controller with its reasons listed: Argo's phase decides.
        assert!(judged(&|v| {
            v["status"]["controllerPause"] = json!(true);
            v["status"]["pauseConditions"] = json!([{"reason": "CanaryPauseStep"}]);
        }));
        assert!(!judged(&|v| v["status"]["restartedAt"] = json!("2026-01-01T11:00:00Z")), "an earlier restart");
        assert!(!judged(&|v| v["status"].as_object_mut().map(|s| s.remove("restartedAt")).map_or((), drop)));
        assert!(!judged(&|v| v.as_object_mut().map(|o| o.remove("status")).map_or((), drop)), "no status");
    }

    #[test]
    fn a_slimmed_rollout_reads_the_same_and_keeps_its_key_id_and_nothing_big() {
        let mut r = rollout(restarted_rollout());
        let before =
            (r.observe(), reads_secret_unrefreshed(r.template().and_then(|t| t.spec.as_ref()).expect("pod"), "creds"));
        slim_workload(&mut r);
        let after =
            (r.observe(), reads_secret_unrefreshed(r.template().and_then(|t| t.spec.as_ref()).expect("pod"), "creds"));
        assert_eq!(after, before);
        let kept = serde_json::to_string(&r).expect("JSON");
        assert!(!kept.contains("xxxx"), "{kept}");
        // A Rollout taking its template from a Deployment (workloadRef) is still a consumer by name.
        let mut by_ref = rollout(
            json!({"metadata": {"name": "ref", "generation": 1}, "spec": {"workloadRef": {"kind": "Deployment", "name": "d"}}}),
        );
        slim_workload(&mut by_ref);
        let named = Consumers {
            targets: vec![ConsumerTarget { kind: WorkloadKind::Rollout, name: "ref".into() }],
            ..Default::default()
        };
        assert!(is_consumer(&named, None, "creds", &by_ref));
        assert!(!is_consumer(&Consumers { discover: true, ..Default::default() }, None, "creds", &by_ref));
    }

    #[test]
    fn a_rollout_is_restarted_through_restart_at_and_its_own_annotation() {
        let now: jiff::Timestamp = "2026-01-01T12:00:00.75Z".parse().expect("ts");
        let patch = restart_patch(WorkloadKind::Rollout, "K2", now);
        assert_eq!(
            patch,
            json!({"metadata": {"annotations": {KEY_ID_ANNOTATION: "K2"}},
            "spec": {"restartAt": "2026-01-01T12:00:00Z"}})
        );
        let patch = restart_patch(WorkloadKind::Deployment, "K2", now);
        assert_eq!(patch["spec"]["template"]["metadata"]["annotations"][KEY_ID_ANNOTATION], "K2");
        assert!(patch["spec"].get("restartAt").is_none());
    }
}
