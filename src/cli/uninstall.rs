//! `cloudkeys uninstall [--revoke-all [--wait [--timeout 10m]]] [-n NS]`: what the chart's
//! pre-delete hook runs before the operator goes away.
//!
//! Without `--revoke-all` it lists what is left and exits 1: the AccessKeys, and the issuers
//! that hold the finalizer `cloudkeys.io/in-use`. Uninstalling the operator then would leave
//! their keys live at the providers, and these objects (and their namespaces) stuck on
//! finalizers that nobody removes any more. With `--revoke-all` it deletes them all, so that the
//! running operator revokes each key at its provider and then releases each finalizer; `--wait`
//! waits until they are gone. It never removes a finalizer itself: that would leave keys live.
//!
//! It reads metadata only (list and delete, nothing else): it never sees a Secret.

use std::time::Duration;

use kube::api::{DeleteParams, ListParams, ObjectMeta};
use kube::{Api, Client};

use super::output::{add_row, print_table, say, table, warn_user};
use super::{CliError, ClusterArgs, Health};
use crate::api::duration::format_duration;
use crate::api::{AccessKey, ClusterKeyIssuer, KeyIssuer};

/// The finalizer an issuer carries while AccessKeys may need it (the operator's own; see
/// `reconcile::in_use`, which `cli` may not import).
const IN_USE_FINALIZER: &str = "cloudkeys.io/in-use";

/// How often `--wait` lists what is left. One list of metadata every few seconds costs the
/// apiserver little for a command that runs once, and needs no watch permission.
const POLL: Duration = Duration::from_secs(2);

/// What `--timeout` is unless given.
pub const DEFAULT_TIMEOUT: &str = "10m";

#[derive(Debug, Clone, clap::Args)]
pub struct UninstallArgs {
    /// Delete every AccessKey: the operator revokes each key at its provider, then lets the
    /// AccessKey go. The operator must still run.
    #[arg(long)]
    pub revoke_all: bool,
    /// Wait until every AccessKey is gone (with --revoke-all). Exits 1 with what is left when
    /// --timeout expires.
    #[arg(long, requires = "revoke_all")]
    pub wait: bool,
    /// How long --wait waits, e.g. 90s, 10m, 1h.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_TIMEOUT, value_parser = crate::api::duration::parse_duration)]
    pub timeout: Duration,
    /// Only the AccessKeys of this namespace (an operator that watches one namespace).
    /// Default: every namespace.
    #[arg(short = 'n', long, value_name = "NS", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

pub async fn run(args: &UninstallArgs) -> Result<Health, CliError> {
    let (client, _) = args.cluster.connect().await?;
    let ns = args.namespace.as_deref();
    let place = match ns {
        Some(ns) => format!("in namespace {ns}"),
        None => "in any namespace".to_string(),
    };
    let left = what_is_left(&client, ns).await?;
    if left.is_empty() {
        say!("No AccessKeys and no issuers held by the operator {place}. Uninstalling is safe.");
        return Ok(Health::Healthy);
    }
    if !args.revoke_all {
        print_left(&left);
        say!();
        say!("{} objects are left {place}. Uninstalling the operator now would leave the keys of the", left.len());
        say!("AccessKeys live at the providers, and these objects (and their namespaces) stuck on their");
        say!("finalizers. To proceed, delete the AccessKeys first (the operator revokes each key), or run");
        say!("`cloudkeys uninstall --revoke-all --wait`, or set the chart value uninstall.policy=RevokeAll.");
        return Ok(Health::Unhealthy);
    }

    if !delete_all(&client, &left).await {
        // Waiting could not help: what was not deleted stays, with its key live.
        say!("Not everything could be deleted (see above): those keys stay live. Fix that and run this again.");
        return Ok(Health::Unhealthy);
    }
    if !args.wait {
        say!("The operator now revokes each key and then lets each object go.");
        return Ok(Health::Healthy);
    }
    say!("Waiting up to {} for the operator to revoke every key.", format_duration(args.timeout));
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let left = what_is_left(&client, ns).await?;
        if left.is_empty() {
            say!("Every AccessKey is gone: every key is revoked. No issuer is held. Uninstalling is safe.");
            return Ok(Health::Healthy);
        }
        if tokio::time::Instant::now() >= deadline {
            print_left(&left);
            say!();
            say!("{} objects are still left {place} after {}.", left.len(), format_duration(args.timeout));
            say!("Is the operator running? `cloudkeys status -A` shows why a key is not revoked. Run this");
            say!("command again once that is fixed; never remove the finalizers by hand (the keys would stay live).");
            return Ok(Health::Unhealthy);
        }
        // Objects created since the first round go too: the operator is on its way out.
        if !delete_all(&client, &left).await {
            say!("Not everything could be deleted (see above): those keys stay live. Fix that and run this again.");
            return Ok(Health::Unhealthy);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One object that keeps the uninstall from being safe.
struct Left {
    kind: Kind,
    meta: ObjectMeta,
}

#[derive(Clone, Copy)]
enum Kind {
    AccessKey,
    KeyIssuer,
    ClusterKeyIssuer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::AccessKey => "AccessKey",
            Self::KeyIssuer => "KeyIssuer",
            Self::ClusterKeyIssuer => "ClusterKeyIssuer",
        }
    }
}

/// Every AccessKey, and every issuer that carries the operator's finalizer `cloudkeys.io/in-use`
/// (an issuer keeps it until it is deleted, and only a running operator removes it: left
/// behind, it would keep its namespace from being deleted). With a namespace, that namespace's
/// only, and no ClusterKeyIssuer (another installation may use them).
async fn what_is_left(client: &Client, ns: Option<&str>) -> Result<Vec<Left>, CliError> {
    let mut left = Vec::new();
    for meta in list(&namespaced::<AccessKey>(client, ns)).await? {
        left.push(Left { kind: Kind::AccessKey, meta });
    }
    let held = |m: &ObjectMeta| m.finalizers.iter().flatten().any(|f| f == IN_USE_FINALIZER);
    for meta in list(&namespaced::<KeyIssuer>(client, ns)).await?.into_iter().filter(held) {
        left.push(Left { kind: Kind::KeyIssuer, meta });
    }
    if ns.is_none() {
        for meta in list(&Api::<ClusterKeyIssuer>::all(client.clone())).await?.into_iter().filter(held) {
            left.push(Left { kind: Kind::ClusterKeyIssuer, meta });
        }
    }
    Ok(left)
}

fn namespaced<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The metadata of every object of a kind, sorted by namespace and name; none when the kind is
/// not served (its CRD is gone, and with it every object of it).
async fn list<K>(api: &Api<K>) -> Result<Vec<ObjectMeta>, CliError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list_metadata(&ListParams::default()).await {
        Ok(list) => {
            let mut items: Vec<ObjectMeta> = list.items.into_iter().map(|p| p.metadata).collect();
            items.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            Ok(items)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(CliError::Kube(e)),
    }
}

/// Deletes each object not being deleted yet; says which were and were not. True when every
/// delete was accepted (one already gone counts as deleted).
async fn delete_all(client: &Client, left: &[Left]) -> bool {
    let mut all = true;
    for item in left.iter().filter(|l| l.meta.deletion_timestamp.is_none()) {
        let ns = item.meta.namespace.clone().unwrap_or_default();
        let name = item.meta.name.clone().unwrap_or_default();
        let params = DeleteParams::default();
        let result = match item.kind {
            Kind::AccessKey => {
                Api::<AccessKey>::namespaced(client.clone(), &ns).delete(&name, &params).await.map(|_| ())
            }
            Kind::KeyIssuer => {
                Api::<KeyIssuer>::namespaced(client.clone(), &ns).delete(&name, &params).await.map(|_| ())
            }
            Kind::ClusterKeyIssuer => {
                Api::<ClusterKeyIssuer>::all(client.clone()).delete(&name, &params).await.map(|_| ())
            }
        };
        let what = describe(item);
        match result {
            Ok(()) => match item.kind {
                Kind::AccessKey => say!("{what}: deleted; the operator revokes its key"),
                _ => say!("{what}: deleted; the operator lets it go once no AccessKey needs it"),
            },
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                all = false;
                warn_user!("{what}: not deleted: {}", crate::kube_error::describe(&e));
            }
        }
    }
    all
}

/// "accesskey ns/name", as kubectl names objects.
fn describe(item: &Left) -> String {
    let name = item.meta.name.clone().unwrap_or_default();
    match &item.meta.namespace {
        Some(ns) => format!("{} {ns}/{name}", item.kind.name().to_lowercase()),
        None => format!("{} {name}", item.kind.name().to_lowercase()),
    }
}

/// A table of what is left: kind, where, what, whether it is being deleted, its finalizers.
fn print_left(left: &[Left]) {
    // Never wrapped: the names are what a reader copies into the next command.
    let mut t = table(&["KIND", "NAMESPACE", "NAME", "DELETING", "FINALIZERS"], true);
    for item in left {
        let meta = &item.meta;
        let deleting = if meta.deletion_timestamp.is_some() { "yes" } else { "no" };
        let finalizers = meta.finalizers.clone().unwrap_or_default().join(",");
        add_row(
            &mut t,
            [
                item.kind.name().to_string(),
                meta.namespace.clone().unwrap_or_else(|| "-".to_string()),
                meta.name.clone().unwrap_or_default(),
                deleting.to_string(),
                if finalizers.is_empty() { "<none>".to_string() } else { finalizers },
            ],
        );
    }
    print_table(&t);
}
