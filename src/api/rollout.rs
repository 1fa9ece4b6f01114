//! Argo Rollouts' `Rollout` (`argoproj.io/v1alpha1`), as a consumer: not a CRD of this operator
//! (no schema is generated or served), only the fields a restart and its rollout read.
//!
//! Read leniently: a Rollout's schema is Argo's (and often `x-kubernetes-preserve-unknown-fields`),
//! so a field of another shape than expected reads as absent instead of failing the list of
//! every Rollout of the cluster.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::NamespaceResourceScope;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

pub const ROLLOUT_GROUP: &str = "argoproj.io";
pub const ROLLOUT_VERSION: &str = "v1alpha1";

/// Written by hand rather than derived: the tenant owns the Rollout and, where the installed CRD
/// keeps unknown fields, may leave out `spec` or give `status` any shape. The derived type would
/// then fail the list of every Rollout of the cluster (and the answer to a restart), so a `spec`
/// or `status` of another shape reads as empty instead.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Rollout {
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "lenient_or_default")]
    pub spec: RolloutSpec,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub status: Option<RolloutStatus>,
}

impl Resource for Rollout {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Rollout".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        ROLLOUT_GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        ROLLOUT_VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "rollouts".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Absent when the Rollout takes its template from a Deployment (`workloadRef`).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplateSpec>,
    /// Pods created before this time are replaced, one batch at a time, without a new revision
    /// and without the canary or blue-green steps.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub restart_at: Option<Time>,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// A generation number, as a string (Argo Rollouts 0.10 and later; a number is taken too).
    #[serde(default, deserialize_with = "generation", skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<String>,
    /// `Healthy`, `Progressing`, `Paused` or `Degraded`, computed by the Rollouts controller.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub controller_pause: Option<bool>,
    /// Only how many there are is read.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub pause_conditions: Option<Vec<serde_json::Value>>,
    /// The `spec.restartAt` the controller has restarted every pod for.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub restarted_at: Option<Time>,
}

/// `T`, or absent when the value has another shape.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// `T`, or its default when the value has another shape.
fn lenient_or_default<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<T, D::Error> {
    Ok(lenient(d)?.unwrap_or_default())
}

/// `observedGeneration` as Argo writes it (a string), or as a number.
fn generation<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) if s.len() <= 20 => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_another_shape_read_as_absent() {
        let r: Rollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "api", "namespace": "n"},
            "spec": {"replicas": "three", "template": {"spec": {"containers": "nope"}}, "restartAt": 7},
            "status": {"observedGeneration": 4, "phase": ["x"], "restartedAt": "2026-01-01T00:00:00Z"},
        }))
        .expect("a Rollout of odd shape still reads");
        assert_eq!((r.spec.replicas, r.spec.template, r.spec.restart_at), (None, None, None));
        let status = r.status.expect("status");
        assert_eq!((status.observed_generation.as_deref(), status.phase), (Some("4"), None));
        assert!(status.restarted_at.is_some());
    }

    #[test]
    fn a_rollout_without_a_spec_or_with_a_status_of_another_shape_still_reads() {
        let list: kube::core::ObjectList<Rollout> = serde_json::from_value(serde_json::json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "RolloutList", "metadata": {},
            "items": [
                {"metadata": {"name": "no-spec", "namespace": "n"}},
                {"metadata": {"name": "odd", "namespace": "n"}, "spec": "x", "status": "x"},
                {"metadata": {"name": "null", "namespace": "n"}, "spec": null, "status": null},
                {"metadata": {"name": "good", "namespace": "n"}, "spec": {"replicas": 2}, "status": {"phase": "Healthy"}},
            ],
        }))
        .expect("one odd Rollout fails no list");
        let names: Vec<_> = list.items.iter().map(|r| r.metadata.name.as_deref().unwrap_or_default()).collect();
        assert_eq!(names, ["no-spec", "odd", "null", "good"]);
        for r in &list.items[..3] {
            assert_eq!((&r.spec, &r.status), (&RolloutSpec::default(), &None));
        }
        assert_eq!(list.items[3].spec.replicas, Some(2));
        assert_eq!(list.items[3].status.as_ref().and_then(|s| s.phase.as_deref()), Some("Healthy"));
        assert_eq!(Rollout::api_version(&()), "argoproj.io/v1alpha1");
        assert_eq!(Rollout::plural(&()), "rollouts");
    }
}
