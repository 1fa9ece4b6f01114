//! Wires the three controllers to the cluster: what each watches, and what triggers what.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Config};
use kube::runtime::{Controller, WatchStreamExt};
use kube::{Client, Resource};

use super::run_args::RunArgs;
use crate::api::{AccessKey, ClusterKeyIssuer, Decoded, KeyIssuer, Rollout};
use crate::providers::http::HttpConfig;

use std::sync::atomic::Ordering;

use kube_lease_manager::LeaseManagerBuilder;

use crate::server::{serve, Health};

use super::unreadable::{read_only, Unreadable};
use super::watch::{slimmed, watched, NoBackoff};
use crate::core::secret::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::reconcile::cached_secret::{self, cached_event, CachedSecret};
use crate::reconcile::context::{display_name, Caches, Context, Limits, Workloads};
use crate::reconcile::error::Error;
use crate::reconcile::issuer::IssuerObject;
use crate::reconcile::{access_key, in_use, issuer};

pub use crate::api::LEASE_NAME;
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

/// An AccessKey's own triggers: those of [`spec_or_lifecycle`], and a rotation request (an
/// annotation, which changes no generation).
fn access_key_changed(ak: &AccessKey) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    spec_or_lifecycle(ak).hash(&mut h);
    let annotations = ak.metadata.annotations.as_ref();
    for name in [crate::core::rotation::ROTATE_ANNOTATION, crate::core::rotation::ROTATE_GRACE_ANNOTATION] {
        annotations.and_then(|a| a.get(name)).hash(&mut h);
    }
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
    let (reader, writer) = reflector::store::<AccessKey>();
    let (key_issuers, key_issuer_writer) = reflector::store::<KeyIssuer>();
    let (cluster_issuers, cluster_issuer_writer) = reflector::store::<ClusterKeyIssuer>();
    let (secrets, secret_writer) = reflector::store::<CachedSecret>();
    let (credentials, credentials_writer) = reflector::store::<Secret>();
    let (deployments, deployment_writer) = reflector::store::<Deployment>();
    let (stateful_sets, stateful_set_writer) = reflector::store::<StatefulSet>();
    let (daemon_sets, daemon_set_writer) = reflector::store::<DaemonSet>();
    let (rollouts, rollout_writer) = reflector::store::<Rollout>();
    let workloads = Workloads { deployments, stateful_sets, daemon_sets, rollouts };
    let caches = Caches { access_keys: reader.clone(), secrets, credentials, key_issuers, cluster_issuers, workloads };
    let writers = Writers {
        access_keys: writer,
        secrets: secret_writer,
        credentials: credentials_writer,
        key_issuers: key_issuer_writer,
        cluster_issuers: cluster_issuer_writer,
        deployments: deployment_writer,
        stateful_sets: stateful_set_writer,
        daemon_sets: daemon_set_writer,
        rollouts: rollout_writer,
    };
    // A reconcile may take --provider-timeout plus its apiserver budget before it is stopped.
    let longest_reconcile = args.provider_timeout + access_key::KUBE_TIME_BUDGET;
    let health = Arc::new(Health::new(args.stall_timeout, longest_reconcile));
    let limits = Limits {
        workers: usize::from(args.concurrency),
        issuer_concurrency: args.issuer_concurrency(),
        provider_timeout: args.provider_timeout,
    };
    let installation = super::installation::installation_id(&client, &args).await?;
    tracing::info!(%installation, "ownership markers carry this installation id");
    let guard =
        crate::core::guard::TenantGuard::new(&args.allowed_endpoint_hosts, args.allow_namespaced_ambient_credentials)
            .map_err(|e| Error::Startup(format!("--allowed-endpoint-hosts: {e}")))?;
    for entry in guard.one_label_wildcards() {
        tracing::warn!(
            entry,
            "--allowed-endpoint-hosts: a `*` matches within one DNS label, so this entry allows one label under \
             its domain, not every subdomain; name the API hosts (e.g. api-*.exoscale.com)"
        );
    }
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            args.cluster_resource_namespace(),
            HttpConfig::default(),
            caches,
            health.clone(),
            limits,
            guard,
        )
        .with_installation(installation),
    );
    let registry = crate::metrics::registry(reader.clone());
    let bound = serve(args.metrics_address, health.clone(), registry, ctx.registry.local_store().clone())
        .await
        .map_err(|e| Error::Startup(format!("cannot serve metrics on {}: {e}", args.metrics_address)))?;
    tracing::info!(address = %bound, "serving /metrics, /healthz, /readyz and /local/keys");

    if !args.leader_election {
        controllers(client, &args, ctx, writers).await;
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
        .with_field_manager(crate::reconcile::context::FIELD_MANAGER)
        .build()
        .await
        .map_err(|e| lease_error(&lease_ns, e))?;
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
    tracing::info!(%identity, "leading");
    let lost = async {
        while leader.changed().await.is_ok() {
            if !*leader.borrow_and_update() {
                return;
            }
        }
    };
    let result = tokio::select! {
        _ = controllers(client, &args, ctx, writers) => Ok(()),
        _ = lost => Err(Error::Startup("lost the leader lease; exiting so that only one replica reconciles".into())),
    };
    // Dropping the receiver makes the lease task release the Lease: a standby takes over at once.
    drop(leader);
    if let Ok(Err(e)) = lease_task.await {
        tracing::warn!(error = %e, "cannot release the lease");
    }
    result
}

/// Why the leader-election Lease cannot be used, in one line that says what to do.
fn lease_error(namespace: &str, e: kube_lease_manager::LeaseManagerError) -> Error {
    use kube_lease_manager::LeaseManagerError as E;
    match e {
        E::KubeError(kube::Error::Api(s)) if s.code == 404 => Error::Startup(format!(
            "the namespace {namespace} of the leader-election Lease does not exist: create it \
             (kubectl create namespace {namespace}), choose another with --leader-election-namespace, \
             or run a single replica with --leader-election=false"
        )),
        E::KubeError(k) => Error::Startup(format!(
            "cannot use the Lease {namespace}/{LEASE_NAME}: {}",
            crate::kube_error::describe(&k)
        )),
        other => Error::Startup(format!("cannot use the Lease {namespace}/{LEASE_NAME}: {other}")),
    }
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

/// The writing ends of the caches in `Caches`, fed by the controllers' watches.
struct Writers {
    access_keys: reflector::store::Writer<AccessKey>,
    secrets: reflector::store::Writer<CachedSecret>,
    credentials: reflector::store::Writer<Secret>,
    key_issuers: reflector::store::Writer<KeyIssuer>,
    cluster_issuers: reflector::store::Writer<ClusterKeyIssuer>,
    deployments: reflector::store::Writer<Deployment>,
    stateful_sets: reflector::store::Writer<StatefulSet>,
    daemon_sets: reflector::store::Writer<DaemonSet>,
    rollouts: reflector::store::Writer<Rollout>,
}

/// Runs the three controllers until SIGTERM/SIGINT, finishing the reconciles under way.
async fn controllers(client: Client, args: &RunArgs, ctx: Arc<Context>, writers: Writers) {
    let ns = args.namespace.as_deref();
    let health = ctx.health.clone();
    tracing::info!(
        namespace = ns.unwrap_or("<all>"),
        cluster_resource_namespace = %ctx.cluster_resource_namespace,
        concurrency = args.concurrency,
        issuer_concurrency = ctx.limits.issuer_concurrency,
        provider_timeout_s = ctx.limits.provider_timeout.as_secs(),
        "starting controllers"
    );
    let controller_config = kube::runtime::controller::Config::default().concurrency(args.concurrency);

    // An AccessKey that is gone may have been the last user of its issuers: they are looked at
    // again at once, to release their in-use finalizer.
    let (released_key_issuers, key_issuer_releases) = futures::channel::mpsc::unbounded::<ObjectRef<KeyIssuer>>();
    let (released_cluster_issuers, cluster_issuer_releases) =
        futures::channel::mpsc::unbounded::<ObjectRef<ClusterKeyIssuer>>();
    let seen_by_cache = ctx.clone();
    // Set once the AccessKeys are listed: the managed Secrets are listed only then, so that each
    // is judged against every AccessKey (see `cached_secret::written_for`).
    let access_keys_listed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listed_now = access_keys_listed.clone();
    let on_access_key_event = move |event: &watcher::Event<AccessKey>| match event {
        watcher::Event::Apply(ak) | watcher::Event::InitApply(ak) => {
            let uid = ak.metadata.uid.as_deref().unwrap_or_default();
            seen_by_cache.own_writes.cache_saw(uid, ak.metadata.resource_version.as_deref());
        }
        watcher::Event::Delete(ak) => {
            seen_by_cache.own_writes.cache_saw(ak.metadata.uid.as_deref().unwrap_or_default(), None);
            seen_by_cache.forget_access_key(&display_name(ak));
            seen_by_cache.namespace_keys.forget(ak.metadata.uid.as_deref().unwrap_or_default());
            for id in in_use::needed_issuers(ak) {
                // A send fails only once the controllers are stopping: nothing to release then.
                match &id.namespace {
                    Some(ns) => drop(released_key_issuers.unbounded_send(ObjectRef::new(&id.name).within(ns))),
                    None => drop(released_cluster_issuers.unbounded_send(ObjectRef::new(&id.name))),
                }
            }
        }
        watcher::Event::InitDone => listed_now.store(true, Ordering::Relaxed),
        watcher::Event::Init => {}
    };

    // AccessKeys: their own changes, their Secrets, and their issuers.
    let reader = ctx.caches.access_keys.clone();
    let access_key_events =
        watched(api_for::<Decoded<AccessKey>>(&client, ns), Config::default(), "accesskeys", &health);
    let stream = read_only(access_key_events, Unreadable::new("AccessKey", Some(client.clone())))
        .modify(slimmed)
        // After the cache has the event: the issuer reconcile it triggers must see the AccessKey gone.
        .reflect(writers.access_keys)
        .inspect_ok(on_access_key_event)
        .applied_objects()
        .predicate_filter(access_key_changed, Default::default());
    let managed = Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    // A Secret deleted while its watch was away (an apiserver restart, a 410) is simply missing
    // from the next list: no event names it. So every AccessKey is looked at again once a list
    // completes (from the caches: those with nothing to do send no request).
    let (secrets_listed, secret_relists) = futures::channel::mpsc::unbounded::<()>();
    let mut secret_writer = writers.secrets;
    let owners = ctx.caches.access_keys.clone();
    let listed = access_keys_listed.clone();
    let secrets_api = api_for::<Secret>(&client, ns);
    let secrets_health = health.clone();
    // Polled: a store's readiness signal wakes only its latest waiter.
    let after_access_keys = async move {
        while !access_keys_listed.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let secrets = futures::stream::once(after_access_keys)
        .flat_map(move |()| watched(secrets_api.clone(), managed.clone(), "secrets", &secrets_health))
        // Cached in compact form; the controller is triggered by the Secrets as they came.
        .inspect_ok(move |event| {
            secret_writer.apply_watcher_event(&cached_event(event, |s| {
                cached_secret::written_for(s, |owner| {
                    let namespace = s.metadata.namespace.as_deref().unwrap_or_default();
                    match owners.get(&ObjectRef::new(owner).within(namespace)) {
                        Some(ak) => cached_secret::ClaimedOwner::Present {
                            uid: ak.metadata.uid.clone(),
                            secret_name: ak.spec.secret_name.clone(),
                        },
                        None if listed.load(Ordering::Relaxed) => cached_secret::ClaimedOwner::Absent,
                        None => cached_secret::ClaimedOwner::NotListedYet,
                    }
                })
            }));
            if matches!(event, watcher::Event::InitDone) {
                // A send fails only once the controllers are stopping.
                drop(secrets_listed.unbounded_send(()));
            }
        })
        .touched_objects();
    // Credentials Secrets held by issuers: read when they change, not per reconcile. The cache
    // only saves reads (a Secret not in it is read from the apiserver), so nothing waits for it.
    let held = Config::default().labels(&format!("{}=true", in_use::CREDENTIALS_LABEL));
    // Slimmed: never written back, and a `kubectl apply`'d Secret's last-applied annotation is a
    // second copy of the credentials.
    //
    // Only the Secrets an issuer names are kept: any tenant can put the label on any Secret, and
    // the operator must not hold the data of Secrets it never reads. The issuer caches decide,
    // so the watch starts once they are filled (the operator labels a Secret only for an issuer
    // it has in its cache, which brings it here again with an event).
    let named = ctx.clone();
    let credentials = watched(api_for::<Secret>(&client, ns), held, "credentials", &health)
        .modify(slimmed)
        .try_filter(move |event| {
            let keep = match event {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => named.names_credentials(s),
                watcher::Event::Delete(_) | watcher::Event::Init | watcher::Event::InitDone => true,
            };
            futures::future::ready(keep)
        })
        .reflect(writers.credentials)
        .for_each(|_| futures::future::ready(()));
    let filled = health.clone();
    tokio::spawn(async move {
        // Polled: a store's readiness signal wakes only its latest waiter, and the controllers
        // wait on them too.
        while !filled.synced.load(Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        credentials.await
    });
    // Argo Rollouts, where installed and readable: known before the caches count as synced, so
    // that no reconcile takes a Rollout consumer for absent while its cache is being filled.
    let rollouts_api = api_for::<Rollout>(&client, ns);
    let rollouts_now = super::rollouts::availability(&rollouts_api).await;
    rollouts_now.log();
    let rollouts_watched = rollouts_now == super::rollouts::Availability::Watchable;
    let caches = ctx.caches.clone();
    let synced_health = health.clone();
    tokio::spawn(async move {
        // Re-polled in short rounds: a store's readiness signal wakes only its latest waiter,
        // and the controllers wait on them too.
        let all_ready = async {
            caches.access_keys.wait_until_ready().await?;
            caches.secrets.wait_until_ready().await?;
            caches.key_issuers.wait_until_ready().await?;
            caches.cluster_issuers.wait_until_ready().await?;
            caches.workloads.deployments.wait_until_ready().await?;
            caches.workloads.stateful_sets.wait_until_ready().await?;
            caches.workloads.daemon_sets.wait_until_ready().await?;
            if rollouts_watched {
                caches.workloads.rollouts.wait_until_ready().await?;
            }
            Ok::<(), reflector::store::WriterDropped>(())
        };
        let mut all_ready = std::pin::pin!(all_ready);
        loop {
            match tokio::time::timeout(std::time::Duration::from_millis(500), &mut all_ready).await {
                Ok(Ok(())) => break synced_health.synced.store(true, Ordering::Relaxed),
                Ok(Err(_)) => break,
                Err(_) => continue,
            }
        }
    });

    // An issuer's change (its Ready condition included) concerns the AccessKeys that need it;
    // they are told from the same watch that feeds the issuer cache, once the cache has it.
    let (access_key_triggers, issuer_changes) = futures::channel::mpsc::unbounded::<ObjectRef<AccessKey>>();
    let notify_users = move |access_keys: &reflector::Store<AccessKey>, id: in_use::IssuerId| {
        for ak in access_keys.state() {
            if in_use::needed_issuers(&ak).contains(&id) {
                // A send fails only once the controllers are stopping.
                drop(access_key_triggers.unbounded_send(ObjectRef::from_obj(&*ak)));
            }
        }
    };
    let notify_cluster_users = notify_users.clone();
    let users_of_key_issuers = reader.clone();
    let users_of_cluster_issuers = reader.clone();
    let forget_key_issuer = ctx.clone();
    let forget_cluster_issuer = ctx.clone();

    // A consumer's change concerns the AccessKeys of its namespace whose replaced keys wait for
    // a rollout (it may have rolled out, or be a new workload that reads the Secret).
    let (rollout_triggers, rollouts) = futures::channel::mpsc::unbounded::<ObjectRef<AccessKey>>();
    let waiting = reader.clone();
    let on_workload = move |namespace: Option<&str>| {
        for ak in waiting.state() {
            let awaits =
                ak.status.as_ref().is_some_and(|s| s.retired.iter().any(crate::core::rotation::awaits_rollout));
            if awaits && (namespace.is_none() || ak.metadata.namespace.as_deref() == namespace) {
                // A send fails only once the controllers are stopping.
                drop(rollout_triggers.unbounded_send(ObjectRef::from_obj(&*ak)));
            }
        }
    };
    spawn_workload_watch(
        api_for::<Deployment>(&client, ns),
        "deployments",
        &health,
        writers.deployments,
        on_workload.clone(),
    );
    spawn_workload_watch(
        api_for::<StatefulSet>(&client, ns),
        "statefulsets",
        &health,
        writers.stateful_sets,
        on_workload.clone(),
    );
    spawn_workload_watch(
        api_for::<DaemonSet>(&client, ns),
        "daemonsets",
        &health,
        writers.daemon_sets,
        on_workload.clone(),
    );
    let (rollout_writer, rollouts_health) = (writers.rollouts, health.clone());
    let start_rollouts =
        move || spawn_workload_watch(rollouts_api, "rollouts", &rollouts_health, rollout_writer, on_workload);
    if rollouts_watched {
        start_rollouts();
    } else {
        let api = api_for::<Rollout>(&client, ns);
        tokio::spawn(super::rollouts::when_watchable(api, rollouts_now, start_rollouts));
    }

    // A Secret in the way (`SecretConflict`) is not one the operator manages, so no cached watch
    // sees it go: the names of every Secret deleted (metadata only, nothing kept) tell the
    // AccessKeys waiting for it, which are issued at once.
    let (freed_triggers, freed) = futures::channel::mpsc::unbounded::<ObjectRef<AccessKey>>();
    spawn_secret_deletions(api_for(&client, ns), reader.clone(), freed_triggers);

    // Keys a drift check found revoked at the provider: their AccessKeys get new ones.
    let (drift_triggers, drifted) = futures::channel::mpsc::unbounded::<ObjectRef<AccessKey>>();
    // Stopped with the controllers: a former leader must not sweep (nor revoke orphans).
    let sweeps =
        AbortOnDrop(tokio::spawn(crate::reconcile::drift::run(ctx.clone(), args.drift_check_interval, drift_triggers)));

    let access_key_controller = Controller::for_stream(stream, reader)
        .with_config(controller_config.clone())
        .trigger_backoff(NoBackoff)
        .owns_stream(secrets)
        .reconcile_on(issuer_changes)
        .reconcile_on(rollouts)
        .reconcile_on(drifted)
        .reconcile_on(freed)
        .reconcile_all_on(secret_relists)
        .shutdown_on_signal()
        .run(access_key::reconcile, access_key::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let key_issuer_events =
        watched(api_for::<Decoded<KeyIssuer>>(&client, ns), Config::default(), "keyissuers", &health);
    let key_issuer_stream = read_only(key_issuer_events, Unreadable::new("KeyIssuer", Some(client.clone())))
        .modify(slimmed)
        .reflect(writers.key_issuers)
        .inspect_ok(move |event| {
            if let Some(i) = touched(event) {
                notify_users(&users_of_key_issuers, i.id());
            }
            if let watcher::Event::Delete(i) = event {
                forget_key_issuer.forget_issuer(&i.id());
            }
        })
        .applied_objects()
        .predicate_filter(spec_or_lifecycle, Default::default());
    let key_issuers = Controller::for_stream(key_issuer_stream, ctx.caches.key_issuers.clone())
        .with_config(controller_config.clone())
        .trigger_backoff(NoBackoff)
        .reconcile_on(key_issuer_releases)
        .shutdown_on_signal()
        .run(issuer::reconcile::<KeyIssuer>, issuer_error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let cluster_issuer_events =
        watched(Api::<Decoded<ClusterKeyIssuer>>::all(client.clone()), Config::default(), "clusterkeyissuers", &health);
    let cluster_issuer_stream =
        read_only(cluster_issuer_events, Unreadable::new("ClusterKeyIssuer", Some(client.clone())))
            .modify(slimmed)
            .reflect(writers.cluster_issuers)
            .inspect_ok(move |event| {
                if let Some(i) = touched(event) {
                    notify_cluster_users(&users_of_cluster_issuers, i.id());
                }
                if let watcher::Event::Delete(i) = event {
                    forget_cluster_issuer.forget_issuer(&i.id());
                }
            })
            .applied_objects()
            .predicate_filter(spec_or_lifecycle, Default::default());
    let cluster_issuers = Controller::for_stream(cluster_issuer_stream, ctx.caches.cluster_issuers.clone())
        .with_config(controller_config)
        .trigger_backoff(NoBackoff)
        .reconcile_on(cluster_issuer_releases)
        .shutdown_on_signal()
        .run(issuer::reconcile::<ClusterKeyIssuer>, issuer_error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    tokio::join!(access_key_controller, key_issuers, cluster_issuers);
    drop(sweeps);
    tracing::info!("controllers stopped");
}

/// A task that ends with its handle: the drift checks stop with the controllers however they
/// stop, also when this future is dropped because the leader lease was lost.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Feeds a workload cache from its watch, telling `changed` the namespace of every workload
/// that changed (`None`: any, after a re-list).
fn spawn_workload_watch<K>(
    api: Api<K>,
    name: &'static str,
    health: &Arc<Health>,
    writer: reflector::store::Writer<K>,
    changed: impl Fn(Option<&str>) + Send + 'static,
) where
    K: crate::core::consumers::WorkloadObject
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let stream = watched(api, Config::default(), name, health)
        .modify(slimmed)
        .modify(crate::core::consumers::slim_workload)
        .reflect(writer)
        .inspect_ok(move |event| match event {
            watcher::Event::Apply(w) | watcher::Event::Delete(w) => {
                changed(Some(w.meta().namespace.as_deref().unwrap_or_default()))
            }
            // After a re-list: whatever rolled out while the watch was away.
            watcher::Event::InitDone => changed(None),
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        })
        .for_each(|_| futures::future::ready(()));
    tokio::spawn(stream);
}

/// Tells `waiting` AccessKeys in `SecretConflict` whose Secret was deleted (or, after a re-list,
/// every one of them: a deletion may have been missed while the watch was away).
fn spawn_secret_deletions(
    api: Api<kube::core::PartialObjectMeta<Secret>>,
    access_keys: reflector::Store<AccessKey>,
    waiting: futures::channel::mpsc::UnboundedSender<ObjectRef<AccessKey>>,
) {
    let conflicted = move |ak: &AccessKey| {
        let conditions = ak.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == crate::core::conditions::Reason::SecretConflict.as_str())
    };
    let deletions = watcher::watcher(api, Config::default()).backoff(super::watch::WatchBackoff::default()).for_each(
        move |event| {
            let gone = match &event {
                Ok(watcher::Event::Delete(secret)) => {
                    Some((secret.metadata.namespace.clone(), secret.metadata.name.clone()))
                }
                Ok(watcher::Event::InitDone) => None,
                Ok(_) => return futures::future::ready(()),
                Err(e) => {
                    tracing::debug!(error = %e, "watch of Secret deletions failed; retrying");
                    return futures::future::ready(());
                }
            };
            for ak in access_keys.state() {
                let named = gone.as_ref().is_none_or(|(ns, name)| {
                    ak.metadata.namespace == *ns && Some(&ak.spec.secret_name) == name.as_ref()
                });
                if named && conflicted(&ak) {
                    // A send fails only once the controllers are stopping.
                    drop(waiting.unbounded_send(ObjectRef::from_obj(&*ak)));
                }
            }
            futures::future::ready(())
        },
    );
    tokio::spawn(deletions);
}

/// The object an event is about: applied (also while re-listing) or deleted.
fn touched<K>(event: &watcher::Event<K>) -> Option<&K> {
    match event {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) => Some(o),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

fn issuer_error_policy<K: Resource>(
    _obj: Arc<K>,
    error: &Error,
    _ctx: Arc<Context>,
) -> kube::runtime::controller::Action {
    tracing::warn!(error = %error, "issuer reconcile failed");
    kube::runtime::controller::Action::requeue(error.backoff(2))
}
