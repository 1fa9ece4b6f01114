//! cloudkeys: a Kubernetes operator that issues least-privilege cloud API keys into Secrets and
//! revokes them when their `AccessKey` is deleted.

pub mod api;
pub mod cli;
pub mod core;
pub mod health;
pub mod kube_error;
pub mod metrics;
pub mod providers;
pub mod reconcile;
pub mod runtime;
pub mod server;
pub mod telemetry;
