//! Prometheus metrics, registered once per process. Labels never carry a secret: only names of
//! controllers, providers, operations, HTTP status codes and AccessKey namespace/name.

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::Duration;

use kube::runtime::reflector::Store;
use kube::ResourceExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::conditions;
use crate::api::{AccessKey, AccessKeyStatus, IssuerKind, WorkloadKind};
use futures::FutureExt;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderCallLabels {
    pub provider: &'static str,
    pub operation: String,
    /// HTTP status, or `error` when no answer came.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderOperationLabels {
    pub provider: &'static str,
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListingLabels {
    pub provider: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    pub issuer: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    pub provider_requests: Family<ProviderCallLabels, Counter>,
    pub provider_latency: Family<ProviderOperationLabels, Histogram>,
    pub revocation_failures: Family<ProviderLabels, Counter>,
    pub rotations: Family<RotationLabels, Counter>,
    pub consumer_restarts: Family<WorkloadLabels, Counter>,
    pub rollout_timeouts: Family<WorkloadLabels, Counter>,
    pub blocked_rotations: Family<ProviderLabels, Counter>,
    pub retired_keys_still_used: Family<ProviderLabels, Counter>,
    pub revocations_refused: Family<ProviderLabels, Counter>,
    pub drift_listings: Family<ListingLabels, Counter>,
    pub drift_last_sweep: Family<IssuerLabels, Gauge<f64, AtomicU64>>,
    pub revoked_externally: Family<ProviderLabels, Counter>,
    pub orphaned_keys: Family<IssuerLabels, Gauge>,
    pub undecodable_objects: Family<KindLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(latency_histogram),
            provider_requests: Family::default(),
            provider_latency: Family::new_with_constructor(latency_histogram),
            revocation_failures: Family::default(),
            rotations: Family::default(),
            consumer_restarts: Family::default(),
            rollout_timeouts: Family::default(),
            blocked_rotations: Family::default(),
            retired_keys_still_used: Family::default(),
            revocations_refused: Family::default(),
            drift_listings: Family::default(),
            drift_last_sweep: Family::default(),
            revoked_externally: Family::default(),
            orphaned_keys: Family::default(),
            undecodable_objects: Family::default(),
        }
    }
}

impl Metrics {
    fn register(&self, registry: &mut Registry) {
        registry.register("cloudkeys_reconciles", "Reconciliations by controller", self.reconciles.clone());
        registry.register(
            "cloudkeys_reconcile_errors",
            "Failed reconciliations by controller and error kind",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "cloudkeys_reconcile_duration_seconds",
            "Time spent in one reconciliation",
            self.reconcile_duration.clone(),
        );
        registry.register(
            "cloudkeys_provider_requests",
            "Provider API calls by provider, operation and HTTP status",
            self.provider_requests.clone(),
        );
        registry.register(
            "cloudkeys_provider_request_duration_seconds",
            "Provider API call latency",
            self.provider_latency.clone(),
        );
        registry.register(
            "cloudkeys_revocation_failures",
            "Keys that could not be revoked when asked to",
            self.revocation_failures.clone(),
        );
        registry.register("cloudkeys_rotations", "New keys in their Secrets, by reason", self.rotations.clone());
        registry.register(
            "cloudkeys_consumer_restarts",
            "Workloads restarted for a new key, by kind",
            self.consumer_restarts.clone(),
        );
        registry.register(
            "cloudkeys_rollout_timeouts",
            "Restarted workloads that did not roll out within rolloutTimeout, by kind",
            self.rollout_timeouts.clone(),
        );
        registry.register(
            "cloudkeys_rotations_blocked",
            "New keys the provider refused while the current key stayed in use",
            self.blocked_rotations.clone(),
        );
        registry.register(
            "cloudkeys_retired_keys_still_used",
            "Replaced keys the provider reported used after their consumers rolled out to the new key, their \
             revocation held (rotation.maxUsageHold), by provider",
            self.retired_keys_still_used.clone(),
        );
        registry.register(
            "cloudkeys_revocations_refused",
            "Keys named by an AccessKey's status that the provider shows without its ownership marker, left alone",
            self.revocations_refused.clone(),
        );
        registry.register(
            "cloudkeys_drift_listings",
            "Drift-check listings sent to providers, by provider and result",
            self.drift_listings.clone(),
        );
        registry.register(
            "cloudkeys_drift_last_sweep_timestamp_seconds",
            "When the keys of an issuer were last listed by a drift check",
            self.drift_last_sweep.clone(),
        );
        registry.register(
            "cloudkeys_keys_revoked_externally",
            "Current keys a drift check found revoked at the provider, by provider",
            self.revoked_externally.clone(),
        );
        registry.register(
            "cloudkeys_orphaned_keys",
            "Keys of this installation whose AccessKey no longer exists, per issuer, at the last drift check",
            self.orphaned_keys.clone(),
        );
        registry.register(
            "cloudkeys_undecodable_objects",
            "Objects of each kind the operator cannot read and skips (each has a Warning event), as watched now",
            self.undecodable_objects.clone(),
        );
    }

    pub fn undecodable(&self, kind: &'static str, count: usize) {
        self.undecodable_objects.get_or_create(&KindLabels { kind }).set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Records one provider call (from the shared HTTP layer).
    pub fn provider_call(&self, provider: &'static str, operation: &str, status: Option<u16>, took: Duration) {
        let status = status.map(|s| s.to_string()).unwrap_or_else(|| "error".into());
        self.provider_requests
            .get_or_create(&ProviderCallLabels { provider, operation: operation.into(), status })
            .inc();
        self.provider_latency
            .get_or_create(&ProviderOperationLabels { provider, operation: operation.into() })
            .observe(took.as_secs_f64());
    }

    pub fn reconciled(&self, controller: &'static str, took: Duration, error: Option<&'static str>) {
        self.reconciles.get_or_create(&ControllerLabels { controller }).inc();
        self.reconcile_duration.get_or_create(&ControllerLabels { controller }).observe(took.as_secs_f64());
        if let Some(error) = error {
            self.reconcile_errors.get_or_create(&ErrorLabels { controller, error }).inc();
        }
    }

    pub fn rotated(&self, reason: &'static str) {
        self.rotations.get_or_create(&RotationLabels { reason }).inc();
    }

    pub fn consumer_restarted(&self, kind: &'static str) {
        self.consumer_restarts.get_or_create(&WorkloadLabels { kind }).inc();
    }

    pub fn rollout_timed_out(&self, kind: &'static str) {
        self.rollout_timeouts.get_or_create(&WorkloadLabels { kind }).inc();
    }

    /// A replaced key held because the provider reports it used after the switch.
    pub fn retired_key_still_used(&self, provider: &str) {
        self.retired_keys_still_used.get_or_create(&ProviderLabels { provider: provider.into() }).inc();
    }

    pub fn rotation_blocked(&self, provider: &str) {
        self.blocked_rotations.get_or_create(&ProviderLabels { provider: provider.into() }).inc();
    }

    /// One drift-check listing of `issuer`'s keys.
    pub fn drift_listed(&self, provider: &str, issuer: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.drift_listings.get_or_create(&ListingLabels { provider: provider.into(), result }).inc();
        if ok {
            let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
            self.drift_last_sweep.get_or_create(&IssuerLabels { issuer: issuer.into() }).set(now);
        }
    }

    pub fn orphaned_keys(&self, issuer: &str, count: u32) {
        self.orphaned_keys.get_or_create(&IssuerLabels { issuer: issuer.into() }).set(i64::from(count));
    }

    /// Drops the series of an issuer that is gone: tenants create and delete issuers, and each
    /// one left behind would stay in every scrape for the life of the process.
    pub fn forget_issuer(&self, issuer: &str) {
        let labels = IssuerLabels { issuer: issuer.into() };
        self.drift_last_sweep.remove(&labels);
        self.orphaned_keys.remove(&labels);
    }

    pub fn revoked_externally(&self, provider: &str) {
        self.revoked_externally.get_or_create(&ProviderLabels { provider: provider.into() }).inc();
    }

    pub fn revocation_refused(&self, provider: &str) {
        self.revocations_refused.get_or_create(&ProviderLabels { provider: provider.into() }).inc();
    }

    pub fn revocation_failed(&self, provider: &str) {
        self.revocation_failures.get_or_create(&ProviderLabels { provider: provider.into() }).inc();
    }
}

/// The process-wide metrics (the HTTP layer of every provider records into them).
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// Per-AccessKey gauges computed at scrape time from the controller's cache, so that deleted
/// AccessKeys leave no stale series behind.
#[derive(Debug)]
struct AccessKeyCollector {
    store: Store<AccessKey>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    ready: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotReadyLabels {
    namespace: String,
    name: String,
    /// `KeyIssuer <namespace>/<name>` or `ClusterKeyIssuer <name>`, as in the drift-check series.
    issuer: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    namespace: String,
    name: String,
}

impl Collector for AccessKeyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = jiff::Timestamp::now();
        let keys = self.store.state();
        let ready = keys
            .iter()
            .filter(|ak| {
                let status = ak.status.as_ref();
                conditions::is_ready(
                    status.map(|s| s.conditions.as_slice()).unwrap_or_default(),
                    ak.metadata.generation,
                )
            })
            .count();
        // The AccessKey cache fills once this replica runs its controllers: it leads (or runs
        // without leader election) and has listed the AccessKeys. A standby's never does, and a
        // leader that loses the lease exits.
        let leading = self.store.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok());
        let leader = ConstGauge::new(i64::from(leading));
        let family = encoder.encode_descriptor(
            "cloudkeys_leader",
            "1 when this replica reconciles (it holds the leader lease, or runs without leader election, and its AccessKey cache has synced); 0 for a standby or a leader still starting",
            None,
            leader.metric_type(),
        )?;
        leader.encode(family)?;
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "cloudkeys_access_keys",
            "AccessKeys by Ready status",
            None,
            gauge.metric_type(),
        )?;
        for (label, n) in [("true", ready), ("false", keys.len() - ready)] {
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX))
                .encode(family.encode_family(&ReadyLabels { ready: label })?)?;
        }
        // One series per AccessKey that is not Ready (none for Ready ones), with the issuer it
        // names and the reason of its Ready condition: alerts on a key stuck, and on an issuer
        // that keeps its AccessKeys waiting (reason IssuerNotReady).
        let mut not_ready = encoder.encode_descriptor(
            "cloudkeys_access_key_not_ready",
            "1 for each AccessKey that is not Ready, with its issuer and the reason of its Ready condition",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for ak in keys.iter() {
            let conds = ak.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
            if conditions::is_ready(conds, ak.metadata.generation) {
                continue;
            }
            let namespace = ak.namespace().unwrap_or_default();
            let issuer = &ak.spec.issuer_ref;
            let issuer = match issuer.kind {
                IssuerKind::KeyIssuer => format!("KeyIssuer {namespace}/{}", issuer.name),
                IssuerKind::ClusterKeyIssuer => format!("ClusterKeyIssuer {}", issuer.name),
            };
            let reason = conds
                .iter()
                .find(|c| c.type_ == conditions::READY)
                .map(|c| c.reason.clone())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "Unknown".into());
            let labels = NotReadyLabels { namespace, name: ak.name_any(), issuer, reason };
            ConstGauge::new(1i64).encode(not_ready.encode_family(&labels)?)?;
        }
        let mut age = encoder.encode_descriptor(
            "cloudkeys_access_key_age_seconds",
            "Age of each AccessKey's current key",
            None,
            ConstGauge::new(0.0f64).metric_type(),
        )?;
        for ak in keys.iter() {
            if let Some(issued) = ak.status.as_ref().and_then(|s| s.issued_at.as_ref()) {
                let labels = KeyLabels { namespace: ak.namespace().unwrap_or_default(), name: ak.name_any() };
                ConstGauge::new(now.duration_since(issued.0).as_secs_f64()).encode(age.encode_family(&labels)?)?;
            }
        }
        let mut expiry = encoder.encode_descriptor(
            "cloudkeys_access_key_expiry_seconds",
            "Seconds until each AccessKey's current key expires at the provider (keys that expire only)",
            None,
            ConstGauge::new(0.0f64).metric_type(),
        )?;
        for ak in keys.iter() {
            if let Some(expires) = ak.status.as_ref().and_then(|s| s.expires_at.as_ref()) {
                let labels = KeyLabels { namespace: ak.namespace().unwrap_or_default(), name: ak.name_any() };
                ConstGauge::new(expires.0.duration_since(now).as_secs_f64()).encode(expiry.encode_family(&labels)?)?;
            }
        }
        // Timestamps, as cert-manager exposes them: alerts compare them with time().
        type Field = fn(&AccessKeyStatus) -> Option<f64>;
        let per_key: [(&str, &str, Field); 6] = [
            ("cloudkeys_access_key_issued_timestamp_seconds", "When each AccessKey's current key was issued", |s| {
                stamp(&s.issued_at)
            }),
            (
                "cloudkeys_access_key_expiration_timestamp_seconds",
                "When each AccessKey's current key expires at the provider (keys that expire only)",
                |s| stamp(&s.expires_at),
            ),
            (
                "cloudkeys_access_key_last_used_timestamp_seconds",
                "When the provider last saw each AccessKey's current key used (Yandex), as the last drift check found",
                |s| stamp(&s.last_used_at),
            ),
            (
                "cloudkeys_access_key_next_rotation_timestamp_seconds",
                "When each AccessKey's current key is replaced next (by schedule or expiry)",
                |s| stamp(&s.next_rotation_time),
            ),
            (
                "cloudkeys_access_key_retired_keys",
                "Replaced keys of each AccessKey still live, awaiting revocation",
                |s| (!s.retired.is_empty()).then_some(s.retired.len() as f64),
            ),
            (
                "cloudkeys_access_key_retired_keys_held",
                "Replaced keys of each AccessKey whose revocation is held: the provider reports them used after the \
                 consumers rolled out to the new key",
                |s| {
                    let held = s.retired.iter().filter(|r| r.held_until.is_some()).count();
                    (held > 0).then_some(held as f64)
                },
            ),
        ];
        for (name, help, field) in per_key {
            let mut family = encoder.encode_descriptor(name, help, None, ConstGauge::new(0.0f64).metric_type())?;
            for ak in keys.iter() {
                if let Some(value) = ak.status.as_ref().and_then(field) {
                    let labels = KeyLabels { namespace: ak.namespace().unwrap_or_default(), name: ak.name_any() };
                    ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

fn stamp(t: &Option<Time>) -> Option<f64> {
    t.as_ref().map(|t| t.0.as_millisecond() as f64 / 1000.0)
}

/// The providers' names (`IssuerProvider::name`), for the series that start at 0.
const PROVIDERS: [&str; 4] = ["exoscale", "yandex", "outscale", "local"];

impl Metrics {
    /// Creates, at 0, the series of the counters and gauges that count trouble, for every
    /// provider and kind: the alerts' `increase()` sees their first failure (a series that
    /// appears at 1 shows no increase), and a dashboard shows 0 rather than no data.
    fn start_at_zero(&self) {
        for provider in PROVIDERS {
            let labels = ProviderLabels { provider: provider.into() };
            for family in [
                &self.revocation_failures,
                &self.blocked_rotations,
                &self.retired_keys_still_used,
                &self.revocations_refused,
                &self.revoked_externally,
            ] {
                drop(family.get_or_create(&labels));
            }
        }
        for kind in
            [WorkloadKind::Deployment, WorkloadKind::StatefulSet, WorkloadKind::DaemonSet, WorkloadKind::Rollout]
        {
            let labels = WorkloadLabels { kind: kind.as_str() };
            drop(self.consumer_restarts.get_or_create(&labels));
            drop(self.rollout_timeouts.get_or_create(&labels));
        }
        for kind in ["AccessKey", "KeyIssuer", "ClusterKeyIssuer"] {
            drop(self.undecodable_objects.get_or_create(&KindLabels { kind }));
        }
    }
}

/// The registry served on `/metrics`.
pub fn registry(access_keys: Store<AccessKey>) -> Registry {
    let mut registry = Registry::default();
    global().start_at_zero();
    global().register(&mut registry);
    registry.register_collector(Box::new(AccessKeyCollector { store: access_keys }));
    registry
}

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_forgotten_leaves_no_series_behind() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.drift_listed("exoscale", "KeyIssuer team-a/gone", true);
        metrics.orphaned_keys("KeyIssuer team-a/gone", 2);
        metrics.orphaned_keys("KeyIssuer team-b/kept", 1);
        assert_eq!(encode(&registry).matches("team-a/gone").count(), 2);

        metrics.forget_issuer("KeyIssuer team-a/gone");
        let text = encode(&registry);
        assert!(!text.contains("team-a/gone"), "{text}");
        assert!(text.contains(r#"cloudkeys_orphaned_keys{issuer="KeyIssuer team-b/kept"} 1"#), "{text}");
    }

    fn access_key(name: &str, issuer: serde_json::Value, ready: Option<(&str, &str)>) -> AccessKey {
        let conditions: Vec<_> = ready
            .into_iter()
            .map(|(status, reason)| {
                serde_json::json!({"type": "Ready", "status": status, "reason": reason, "message": "m",
                    "observedGeneration": 1, "lastTransitionTime": "2026-11-01T00:00:00Z"})
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
            "metadata": {"name": name, "namespace": "team-a", "generation": 1},
            "spec": {"issuerRef": issuer, "secretName": "s", "local": {}},
            "status": {"conditions": conditions},
        }))
        .expect("AccessKey literal")
    }

    #[test]
    fn the_leader_gauge_follows_the_cache_and_only_keys_not_ready_have_a_not_ready_series() {
        use kube::runtime::watcher::Event;
        let (store, mut writer) = kube::runtime::reflector::store::<AccessKey>();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AccessKeyCollector { store }));
        assert!(encode(&registry).contains("\ncloudkeys_leader 0\n"), "{}", encode(&registry));

        writer.apply_watcher_event(&Event::Init);
        for ak in [
            access_key("ready", serde_json::json!({"name": "exo"}), Some(("True", "Issued"))),
            access_key("waiting", serde_json::json!({"name": "exo"}), Some(("False", "IssuerNotReady"))),
            access_key("shared", serde_json::json!({"name": "all", "kind": "ClusterKeyIssuer"}), None),
        ] {
            writer.apply_watcher_event(&Event::InitApply(ak));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let text = encode(&registry);
        assert!(text.contains("\ncloudkeys_leader 1\n"), "{text}");
        assert!(text.contains(r#"cloudkeys_access_key_not_ready{namespace="team-a",name="waiting",issuer="KeyIssuer team-a/exo",reason="IssuerNotReady"} 1"#), "{text}");
        assert!(text.contains(r#"cloudkeys_access_key_not_ready{namespace="team-a",name="shared",issuer="ClusterKeyIssuer all",reason="Unknown"} 1"#), "{text}");
        assert!(!text.contains(r#"name="ready",issuer"#), "{text}");
    }
}
