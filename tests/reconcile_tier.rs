//! The reconcile tier: `reconcile::issuer` and `reconcile::access_key` called in this process,
//! against the real apiserver, with the `local` provider. No operator binary, no watches: the
//! test feeds the caches itself with what the apiserver holds, and calls one reconcile at a
//! time, so that each step's reads and writes are what the assertions see.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use kube::Client;
use serde_json::json;

use cloudkeys::api::{AccessKey, ClusterKeyIssuer, KeyIssuer};
use cloudkeys::core::guard::TenantGuard;
use cloudkeys::health::Health;
use cloudkeys::providers::http::HttpConfig;
use cloudkeys::reconcile::cached_secret::{cached_event, CachedSecret};
use cloudkeys::reconcile::context::{Caches, Context, Limits, Workloads};
use cloudkeys::reconcile::{access_key, issuer};

/// A context on the real apiserver whose caches the test fills, with their writers.
struct Tier {
    ctx: Arc<Context>,
    access_keys: Writer<AccessKey>,
    secrets: Writer<CachedSecret>,
    key_issuers: Writer<KeyIssuer>,
}

impl Tier {
    fn new(client: Client, operator_ns: &str) -> Self {
        let (access_keys, access_key_writer) = reflector::store();
        let (secrets, secret_writer) = reflector::store();
        let (key_issuers, key_issuer_writer) = reflector::store();
        let (cluster_issuers, mut cluster_issuer_writer) = reflector::store::<ClusterKeyIssuer>();
        cluster_issuer_writer.apply_watcher_event(&Event::InitDone);
        let caches = Caches {
            access_keys,
            secrets,
            credentials: reflector::store().0,
            key_issuers,
            cluster_issuers,
            workloads: Workloads::default(),
        };
        let health = Arc::new(Health::new(Duration::from_secs(60), Duration::from_secs(60)));
        // Every cache holds what the test put in it: as complete as a watch's first list.
        health.synced.store(true, Ordering::Relaxed);
        let limits = Limits { workers: 4, issuer_concurrency: 2, provider_timeout: Duration::from_secs(10) };
        let ctx = Context::new(
            client,
            operator_ns.into(),
            HttpConfig::default(),
            caches,
            health,
            limits,
            TenantGuard::default(),
        );
        Self {
            ctx: Arc::new(ctx),
            access_keys: access_key_writer,
            secrets: secret_writer,
            key_issuers: key_issuer_writer,
        }
    }

    /// The AccessKey as the apiserver holds it now, put in the cache as a watch would.
    async fn access_key(&mut self, api: &Api<AccessKey>, name: &str) -> Arc<AccessKey> {
        let ak = api.get(name).await.expect("AccessKey");
        self.access_keys.apply_watcher_event(&Event::Apply(ak.clone()));
        self.ctx
            .own_writes
            .cache_saw(ak.metadata.uid.as_deref().unwrap_or_default(), ak.metadata.resource_version.as_deref());
        Arc::new(ak)
    }

    async fn key_issuer(&mut self, api: &Api<KeyIssuer>, name: &str) -> Arc<KeyIssuer> {
        let ki = api.get(name).await.expect("KeyIssuer");
        self.key_issuers.apply_watcher_event(&Event::Apply(ki.clone()));
        Arc::new(ki)
    }

    async fn secret(&mut self, api: &Api<Secret>, name: &str) -> Option<Secret> {
        let secret = api.get_opt(name).await.expect("Secret read")?;
        self.secrets.apply_watcher_event(&cached_event(&Event::Apply(secret.clone()), |_| true));
        Some(secret)
    }

    fn live_keys(&self) -> Vec<String> {
        self.ctx.registry.local_store().key_ids().live
    }
}

/// Runs reconciles of the AccessKey `name`, refreshing the caches before each, until its Ready
/// reason is `reason` (a reconcile may end in a requeue that the controller would follow).
async fn reconciled_until(
    tier: &mut Tier,
    api: &Api<AccessKey>,
    secrets: &Api<Secret>,
    name: &str,
    reason: &str,
) -> AccessKey {
    for _ in 0..10 {
        tier.secret(secrets, &format!("{name}-credentials")).await;
        let ak = tier.access_key(api, name).await;
        let done = support::keys::ready_condition(&ak).is_some_and(|(_, r, _)| r == reason);
        if done {
            return (*ak).clone();
        }
        access_key::reconcile(ak, tier.ctx.clone()).await.expect("reconcile");
    }
    panic!("AccessKey {name} never reached {reason}");
}

#[tokio::test]
async fn reconciles_called_in_process_issue_keep_and_revoke_a_key() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "reconcile-tier").await;
    let mut tier = Tier::new(client.clone(), &ns);
    let issuers: Api<KeyIssuer> = Api::namespaced(client.clone(), &ns);
    let access_keys: Api<AccessKey> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    // The issuer's reconcile checks it and writes its Ready condition.
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "local"}, "spec": {"local": {}}}),
    )
    .await;
    let ki = tier.key_issuer(&issuers, "local").await;
    issuer::reconcile(ki, tier.ctx.clone()).await.expect("issuer reconcile");
    let ki = tier.key_issuer(&issuers, "local").await;
    let ready = ki.status.as_ref().and_then(|s| s.conditions.first()).map(|c| (c.status.clone(), c.reason.clone()));
    assert_eq!(ready, Some(("True".to_string(), "Ready".to_string())));

    // The AccessKey's reconcile issues a key into its Secret.
    support::apply_json(&client, &ns, support::keys::manifest("k", "local", "local", json!({}), json!({}))).await;
    let ak = reconciled_until(&mut tier, &access_keys, &secrets, "k", "Issued").await;
    let key_id = ak.status.as_ref().and_then(|s| s.access_key_id.clone()).expect("a key id");
    let secret = tier.secret(&secrets, "k-credentials").await.expect("the Secret");
    let annotated = secret.metadata.annotations.as_ref().and_then(|a| a.get("cloudkeys.io/access-key-id")).cloned();
    assert_eq!(annotated.as_deref(), Some(key_id.as_str()));
    assert_eq!(tier.live_keys(), std::slice::from_ref(&key_id));

    // Reconciled again with nothing changed: the same key, nothing written.
    let before = ak.metadata.resource_version.clone();
    let ak = tier.access_key(&access_keys, "k").await;
    access_key::reconcile(ak, tier.ctx.clone()).await.expect("reconcile");
    let after = access_keys.get("k").await.expect("AccessKey");
    assert_eq!(after.metadata.resource_version, before, "an idle reconcile wrote the AccessKey");
    assert_eq!(tier.live_keys(), std::slice::from_ref(&key_id));

    // Deleted: the reconcile revokes the key at the provider and lets the AccessKey go.
    access_keys.delete("k", &DeleteParams::default()).await.expect("delete");
    let ak = tier.access_key(&access_keys, "k").await;
    assert!(ak.metadata.deletion_timestamp.is_some(), "held by the finalizer");
    access_key::reconcile(ak, tier.ctx.clone()).await.expect("reconcile of the deletion");
    assert!(access_keys.get_opt("k").await.expect("read").is_none(), "the finalizer was released");
    assert!(tier.live_keys().is_empty(), "the key is still live at the provider");
    assert!(tier.ctx.registry.local_store().key_ids().revoked.contains(&key_id));
}
