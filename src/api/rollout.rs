//! Argo Rollouts' `Rollout` (`argoproj.io/v1alpha1`), as a consumer: not a CRD of this operator
//! (no schema is generated or served), only the fields a restart and its rollout read.
//!
//! Read leniently: a Rollout's schema is Argo's (and often `x-kubernetes-preserve-unknown-fields`),
//! so a field of another shape than expected reads as absent instead of failing the list of
//! every Rollout of the cluster.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

pub const ROLLOUT_GROUP: &str = "argoproj.io";
pub const ROLLOUT_VERSION: &str = "v1alpha1";

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "argoproj.io",
    version = "v1alpha1",
    kind = "Rollout",
    plural = "rollouts",
    namespaced,
    status = "RolloutStatus",
    schema = "disabled"
)]
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
}
