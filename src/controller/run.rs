//! Wires the three controllers to the cluster: what each watches, and what triggers what.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Config};
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};

use crate::api::{AccessKey, ClusterKeyIssuer, IssuerKind, KeyIssuer};
use crate::cli::RunArgs;
use crate::providers::http::HttpConfig;

use std::sync::atomic::Ordering;

use kube_lease_manager::LeaseManagerBuilder;

use crate::server::{serve, Health};

use super::context::Context;
use super::error::Error;
use super::secret::{MANAGED_BY, MANAGED_BY_LABEL};
use super::{access_key, issuer};

const LEASE_NAME: &str = "cloudkeys-leader";
/// A standby takes over at most this long after the leader stops renewing.
const LEASE_SECONDS: u64 = 15;
const LEASE_GRACE_SECONDS: u64 = 5;

/// Reconcile an object when its spec, finalizers or deletion change — not when only its status
/// does, which is what the controller itself writes.
fn spec_or_lifecycle<K: Resource>(obj: &K) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.meta().generation.hash(&mut h);
    obj.meta().finalizers.hash(&mut h);
    obj.meta().deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

pub async fn run(client: Client, args: RunArgs) -> Result<(), Error> {
    let ctx = Arc::new(Context::new(client.clone(), args.cluster_resource_namespace(), HttpConfig::default()));
    let (reader, writer) = reflector::store::<AccessKey>();
    let health = Arc::new(Health::default());
    let registry = crate::metrics::registry(reader.clone());
    let bound = serve(args.metrics_address, health.clone(), registry)
        .await
        .map_err(|e| Error::Startup(format!("cannot serve metrics on {}: {e}", args.metrics_address)))?;
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");

    if !args.leader_election {
        controllers(client, &args, ctx, reader, writer, health).await;
        return Ok(());
    }
    let lease_ns = args.leader_election_namespace();
    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("cloudkeys-{}", uuid::Uuid::new_v4()));
    let manager = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
        .with_namespace(&lease_ns)
        .with_identity(&identity)
        .with_duration(LEASE_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .with_field_manager(super::context::FIELD_MANAGER)
        .build()
        .await
        .map_err(|e| Error::Startup(format!("cannot use Lease {lease_ns}/{LEASE_NAME}: {e}")))?;
    let (mut leader, lease_task) = manager.watch().await;
    health.standby.store(true, Ordering::Relaxed);
    tracing::info!(lease = %format!("{lease_ns}/{LEASE_NAME}"), %identity, "waiting for leadership");
    let mut stop = std::pin::pin!(shutdown_signal());
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => if changed.is_err() {
                return Err(Error::Startup("leader election stopped".into()));
            },
            _ = &mut stop => {
                drop(leader);
                let _ = lease_task.await;
                return Ok(());
            }
        }
    }
    health.standby.store(false, Ordering::Relaxed);
    tracing::info!(%identity, "leading: starting controllers");
    let lost = async {
        while leader.changed().await.is_ok() {
            if !*leader.borrow_and_update() {
                return;
            }
        }
    };
    let result = tokio::select! {
        _ = controllers(client, &args, ctx, reader, writer, health) => Ok(()),
        _ = lost => Err(Error::Startup("lost the leader lease; exiting so that only one replica reconciles".into())),
    };
    // Dropping the receiver makes the lease task release the Lease: a standby takes over at once.
    drop(leader);
    if let Ok(Err(e)) = lease_task.await {
        tracing::warn!(error = %e, "cannot release the lease");
    }
    result
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Runs the three controllers until SIGTERM/SIGINT, finishing the reconciles under way.
async fn controllers(
    client: Client,
    args: &RunArgs,
    ctx: Arc<Context>,
    reader: reflector::Store<AccessKey>,
    writer: reflector::store::Writer<AccessKey>,
    health: Arc<Health>,
) {
    let ns = args.namespace.as_deref();
    tracing::info!(
        namespace = ns.unwrap_or("<all>"),
        cluster_resource_namespace = %ctx.cluster_resource_namespace,
        concurrency = args.concurrency,
        "starting controllers"
    );
    let controller_config = kube::runtime::controller::Config::default().concurrency(args.concurrency);

    // AccessKeys: their own changes, their Secrets, and their issuers.
    let access_keys: Api<AccessKey> = api_for(&client, ns);
    let stream = watcher::watcher(access_keys, Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_lifecycle, Default::default());
    let secrets: Api<Secret> = api_for(&client, ns);
    let managed = Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let by_key_issuer = reader.clone();
    let by_cluster_issuer = reader.clone();
    let synced = reader.clone();
    tokio::spawn(async move {
        // Re-polled in short rounds: the store's readiness signal wakes only its latest waiter,
        // and the controller waits on it too.
        loop {
            match tokio::time::timeout(std::time::Duration::from_millis(500), synced.wait_until_ready()).await {
                Ok(Ok(())) => break health.synced.store(true, Ordering::Relaxed),
                Ok(Err(_)) => break,
                Err(_) => continue,
            }
        }
    });
    let access_key_controller = Controller::for_stream(stream, reader)
        .with_config(controller_config.clone())
        .owns(secrets, managed)
        .watches(api_for::<KeyIssuer>(&client, ns), Config::default(), move |i| {
            users_of(&by_key_issuer, IssuerKind::KeyIssuer, &i.name_any(), i.namespace().as_deref())
        })
        .watches(Api::<ClusterKeyIssuer>::all(client.clone()), Config::default(), move |i| {
            users_of(&by_cluster_issuer, IssuerKind::ClusterKeyIssuer, &i.name_any(), None)
        })
        .shutdown_on_signal()
        .run(access_key::reconcile, access_key::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let key_issuers = Controller::new(api_for::<KeyIssuer>(&client, ns), Config::default())
        .with_config(controller_config.clone())
        .shutdown_on_signal()
        .run(issuer::reconcile::<KeyIssuer>, issuer_error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let cluster_issuers = Controller::new(Api::<ClusterKeyIssuer>::all(client.clone()), Config::default())
        .with_config(controller_config)
        .shutdown_on_signal()
        .run(issuer::reconcile::<ClusterKeyIssuer>, issuer_error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    tokio::join!(access_key_controller, key_issuers, cluster_issuers);
    tracing::info!("controllers stopped");
}

/// The AccessKeys that use an issuer.
fn users_of(
    store: &reflector::Store<AccessKey>,
    kind: IssuerKind,
    name: &str,
    namespace: Option<&str>,
) -> Vec<ObjectRef<AccessKey>> {
    store
        .state()
        .iter()
        .filter(|ak| {
            ak.spec.issuer_ref.kind == kind
                && ak.spec.issuer_ref.name == name
                && (namespace.is_none() || ak.namespace().as_deref() == namespace)
        })
        .map(|ak| ObjectRef::from_obj(&**ak))
        .collect()
}

fn issuer_error_policy<K: Resource>(
    _obj: Arc<K>,
    error: &Error,
    _ctx: Arc<Context>,
) -> kube::runtime::controller::Action {
    tracing::warn!(error = %error, "issuer reconcile failed");
    kube::runtime::controller::Action::requeue(error.backoff(2))
}
