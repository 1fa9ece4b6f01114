//! The end-to-end tier: the operator binary against a real kube-apiserver, the provider fakes,
//! real Helm, Prometheus and Lua, each test in a namespace (or a control plane) of its own. One
//! binary, so that it links once; cargo-nextest still runs each test in a process of its own
//! (scripts/test.sh).

#[path = "../clouds/mod.rs"]
mod clouds;
#[path = "../fakes/mod.rs"]
mod fakes;
#[path = "../support/mod.rs"]
mod support;

mod bounded;
mod cli;
mod control_plane;
mod crd_server;
mod crds;
mod deletion_policy;
mod drift;
mod exoscale;
mod gitops_health;
mod helm_chart;
mod isolation;
mod local;
mod monitoring;
mod operations;
mod outscale;
mod policy;
mod readme_by_hand;
mod reliability;
mod rollout_consumers;
mod rotation;
mod rotation_windows;
mod tenant_endpoints;
mod uninstall;
mod upgrade;
mod usage_hold;
mod yandex;
