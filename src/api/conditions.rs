//! The `Ready` condition as every object of the API carries it: what the operator writes
//! (`core::conditions`) and what anyone reading an object checks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

pub const READY: &str = "Ready";

/// Whether the conditions say Ready=True for this generation.
pub fn is_ready(conditions: &[Condition], generation: Option<i64>) -> bool {
    conditions.iter().any(|c| {
        c.type_ == READY && c.status == "True" && (generation.is_none() || c.observed_generation == generation)
    })
}
