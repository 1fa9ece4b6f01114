//! `cloudkeys inspect NAME [-n NS]`: the spec in short, conditions, status, the Secret's
//! metadata (its data's key names only), recent events, and what the operator will do next —
//! decided by the operator's own `decide` on what this command read.

use super::output::say;
use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::api::{AccessKey, ClusterKeyIssuer, Decoded, IssuerKind, KeyIssuer, KeyProvider};
use crate::core::decide::{IssueReason, Step};
use crate::core::observe::{self, IssuerFacts, Snapshot, WorkloadsRead};
use crate::core::rotation::{self, DefaultWindows, RotationSettings};
use crate::core::secret::{DATA_HASH_ANNOTATION, KEY_ID_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL};

use super::output::{self, at};
use super::status::issuer_name;
use super::{CliError, ClusterArgs, Health};

/// How many of the most recent events are shown.
const EVENTS: usize = 10;

#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    pub name: String,
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The issuer an AccessKey names, as read.
enum IssuerRead {
    Key(KeyIssuer),
    Cluster(ClusterKeyIssuer),
}

impl IssuerRead {
    fn facts<'a>(&'a self, display: &'a str) -> IssuerFacts<'a> {
        match self {
            Self::Key(i) => IssuerFacts::of(i, display, i.status.as_ref()),
            Self::Cluster(i) => IssuerFacts::of(i, display, i.status.as_ref()),
        }
    }
}

/// A read that may be refused: what could not be read becomes a caveat, not a failure.
fn optional<T>(what: &str, read: Result<T, kube::Error>, caveats: &mut Vec<String>) -> Option<T> {
    match read {
        Ok(v) => Some(v),
        Err(kube::Error::Api(s)) => {
            caveats.push(format!("{what} could not be read ({}: {})", s.code, s.reason));
            None
        }
        Err(e) => {
            caveats.push(format!("{what} could not be read ({e})"));
            None
        }
    }
}

async fn list_in<K>(client: &Client, ns: &str) -> Result<Vec<Arc<K>>, kube::Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api.list(&ListParams::default()).await?.items.into_iter().map(Arc::new).collect())
}

pub async fn run(args: &InspectArgs) -> Result<Health, CliError> {
    let (client, context_ns) = args.cluster.connect().await?;
    let ns = args.namespace.clone().unwrap_or(context_ns);
    let scope = super::Scope::Namespace(ns.clone());
    let mut found = super::status::access_keys(&client, &scope, Some(&args.name)).await?;
    let Some(ak) = found.pop() else {
        return Err(CliError::NotFound { what: format!("AccessKey {ns}/{}", args.name) });
    };
    let now = jiff::Timestamp::now();
    let mut caveats = Vec::new();

    let r = &ak.spec.issuer_ref;
    let (issuer, display) = match r.kind {
        IssuerKind::KeyIssuer => {
            let read = Api::<KeyIssuer>::namespaced(client.clone(), &ns).get_opt(&r.name).await;
            (
                optional("the KeyIssuer", read, &mut caveats).flatten().map(IssuerRead::Key),
                format!("KeyIssuer {ns}/{}", r.name),
            )
        }
        IssuerKind::ClusterKeyIssuer => {
            let read = Api::<ClusterKeyIssuer>::all(client.clone()).get_opt(&r.name).await;
            let read = optional("the ClusterKeyIssuer", read, &mut caveats).flatten().map(IssuerRead::Cluster);
            (read, format!("ClusterKeyIssuer {}", r.name))
        }
    };
    let facts = issuer.as_ref().map(|i| i.facts(&display));
    // Not found: whether the other kind has one of that name (as the operator's message says).
    let other_kind_exists = issuer.is_none()
        && match r.kind {
            IssuerKind::KeyIssuer => {
                Api::<ClusterKeyIssuer>::all(client.clone()).get_opt(&r.name).await.is_ok_and(|i| i.is_some())
            }
            IssuerKind::ClusterKeyIssuer => {
                Api::<KeyIssuer>::namespaced(client.clone(), &ns).get_opt(&r.name).await.is_ok_and(|i| i.is_some())
            }
        };

    // Only what the operator would read for this decision: the Secret always, the workloads
    // while a replaced key waits for them, the namespace and its keys when the policy asks.
    let secret_read = Api::<Secret>::namespaced(client.clone(), &ns).get_opt(&ak.spec.secret_name).await;
    let secret = optional("the Secret", secret_read, &mut caveats);
    let status = ak.status.clone().unwrap_or_default();
    let (mut deployments, mut stateful_sets, mut daemon_sets, mut rollouts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if observe::consumers_wanted(&ak, &status) {
        deployments =
            optional("Deployments", list_in::<Deployment>(&client, &ns).await, &mut caveats).unwrap_or_default();
        stateful_sets =
            optional("StatefulSets", list_in::<StatefulSet>(&client, &ns).await, &mut caveats).unwrap_or_default();
        daemon_sets =
            optional("DaemonSets", list_in::<DaemonSet>(&client, &ns).await, &mut caveats).unwrap_or_default();
        // No Argo Rollouts installed (404): no Rollouts, which is nothing to caveat.
        rollouts = match list_in::<crate::api::Rollout>(&client, &ns).await {
            Err(kube::Error::Api(s)) if s.code == 404 => Vec::new(),
            read => optional("Rollouts", read, &mut caveats).unwrap_or_default(),
        };
    }
    let mut labels: Option<BTreeMap<String, String>> = None;
    let mut access_keys = Vec::new();
    if let Some(f) = &facts {
        if observe::needs_namespace_labels(f, &ns) {
            let read = Api::<Namespace>::all(client.clone()).get_opt(&ns).await;
            labels = optional("the namespace", read, &mut caveats).flatten().and_then(|n| n.metadata.labels);
        }
        if observe::counts_keys(f) {
            let read = Api::<Decoded<AccessKey>>::namespaced(client.clone(), &ns).list(&ListParams::default()).await;
            access_keys = optional("the namespace's AccessKeys", read, &mut caveats)
                .map(|l| super::cluster::readable(l.items))
                .unwrap_or_default();
        }
    }
    let next = secret.as_ref().map(|secret| {
        observe::next_step(&Snapshot {
            ak: &ak,
            issuer: facts,
            secret: secret.as_ref(),
            workloads: WorkloadsRead {
                deployments: &deployments,
                stateful_sets: &stateful_sets,
                daemon_sets: &daemon_sets,
                rollouts: &rollouts,
            },
            namespace_labels: labels.as_ref(),
            access_keys: &access_keys,
            other_kind_exists,
            now,
        })
    });
    let events = optional("the events", recent_events(&client, &ak).await, &mut caveats).unwrap_or_default();

    print_spec(&ak, facts.as_ref());
    print_conditions(&ak, now);
    print_status(&ak, now);
    print_secret(&ak, secret.as_ref().map(Option::as_ref));
    print_events(&events, now);
    say!();
    say!("Next:");
    match &next {
        // One line: a step may quote a tenant's template.
        Some(step) => {
            let windows = facts.as_ref().and_then(IssuerFacts::default_windows);
            say!("  {}", output::one_line(&describe(step, &ak, windows, now)))
        }
        None => say!("  cannot tell without the Secret"),
    }
    if !caveats.is_empty() || next.is_some() {
        say!("  (decided as the operator decides, from what this command read; it cannot see the operator's");
        say!("  memory: keys listed at the provider, a provider's recent refusal, what it answered the");
        say!("  issuer's policy (an Exoscale role's rights, an OUTSCALE user's identity), the last drift check)");
    }
    for c in &caveats {
        say!("  note: {}", output::one_line(c));
    }
    let ready = super::status::KeyStatus::of(&ak).is_ready();
    Ok(Health::of(ready))
}

async fn recent_events(client: &Client, ak: &AccessKey) -> Result<Vec<Event>, kube::Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), &ak.namespace().unwrap_or_default());
    let uid = ak.uid().unwrap_or_default();
    let mut events = api.list(&ListParams::default().fields(&format!("involvedObject.uid={uid}"))).await?.items;
    events.sort_by_key(event_time);
    let skip = events.len().saturating_sub(EVENTS);
    Ok(events.into_iter().skip(skip).collect())
}

fn event_time(e: &Event) -> Option<jiff::Timestamp> {
    let series = e.series.as_ref().and_then(|s| s.last_observed_time.as_ref()).map(|t| t.0);
    series
        .or(e.last_timestamp.as_ref().map(|t| t.0))
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.first_timestamp.as_ref().map(|t| t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn line(label: &str, value: impl std::fmt::Display) {
    say!("{}", labelled(label, value));
}

/// One line of a label and its value. The value is made one line: an annotation or a message
/// holding a line break would otherwise print lines of its own, which can read like the
/// command's (`Controlled by: ...`).
fn labelled(label: &str, value: impl std::fmt::Display) -> String {
    format!("  {:<16}{}", format!("{label}:"), output::one_line(&value.to_string()))
}

fn print_spec(ak: &AccessKey, issuer: Option<&IssuerFacts<'_>>) {
    say!("AccessKey {}/{}", ak.namespace().unwrap_or_default(), ak.name_any());
    let issuer_state = match issuer {
        None => "not found".to_string(),
        Some(i) if i.is_ready() => "Ready".to_string(),
        Some(_) => "not Ready".to_string(),
    };
    line("Issuer", format!("{} ({issuer_state})", issuer_name(&ak.spec.issuer_ref)));
    line("Provider", provider_summary(&ak.spec.provider));
    line("Secret", &ak.spec.secret_name);
    line("Deletion", format!("{:?}", ak.spec.deletion_policy));
    let default_windows = issuer.and_then(IssuerFacts::default_windows);
    let rotation = match RotationSettings::of(&ak.spec, default_windows) {
        Ok(s) => {
            let every = match s.every {
                Some(d) => format!("every {}", crate::api::duration::format_duration(d)),
                None => "not scheduled".to_string(),
            };
            format!(
                "{every}, grace period {}, rollout timeout {}, {}",
                crate::api::duration::format_duration(s.grace_period),
                crate::api::duration::format_duration(s.rollout_timeout),
                windows_summary(ak, default_windows.map(|d| d.windows)),
            )
        }
        Err(e) => format!("invalid: {e}"),
    };
    line("Rotation", rotation);
    if let Some(c) = ak.spec.consumers.as_deref() {
        let mut parts: Vec<String> = c.targets.iter().map(|t| format!("{}/{}", t.kind.as_str(), t.name)).collect();
        if let Some(s) = &c.selector {
            parts.push(format!("selector {}", serde_json::to_string(s).unwrap_or_default()));
        }
        if c.discover {
            parts.push("discovered (pods reading the Secret)".into());
        }
        line("Consumers", parts.join(", "));
    }
}

/// The provider block in one line: the mode and what the key may do.
fn provider_summary(p: &KeyProvider) -> String {
    match p {
        KeyProvider::Exoscale(e) => {
            let mode = match (&e.role_id, &e.role, &e.operations) {
                (Some(id), _, _) => format!("role {id}"),
                (None, Some(_), _) => "own role (spec.exoscale.role)".to_string(),
                (None, None, Some(ops)) => format!("legacy key, operations {}", ops.join(", ")),
                _ => "legacy key".to_string(),
            };
            format!("exoscale, {mode}")
        }
        KeyProvider::Yandex(y) => {
            format!("yandex, service account {}", y.service_account_id.as_deref().unwrap_or("(the issuer's)"))
        }
        KeyProvider::Outscale(o) => format!(
            "outscale, {}{}",
            o.user_name.as_deref().map(|u| format!("EIM user {u}")).unwrap_or_else(|| "the issuer's account".into()),
            o.expires_after.as_ref().map(|e| format!(", expires after {e}")).unwrap_or_default()
        ),
        KeyProvider::Local(_) => "local".to_string(),
    }
}

fn print_conditions(ak: &AccessKey, now: jiff::Timestamp) {
    say!();
    say!("Conditions:");
    let conditions = ak.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    if conditions.is_empty() {
        say!("  none: the operator has not reconciled it yet");
        return;
    }
    let mut t = output::table_within(&["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], Some(output::WIDTH - 2));
    for c in conditions {
        output::add_row(
            &mut t,
            [
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                output::age(c.last_transition_time.0, now),
                c.message.clone(),
            ],
        );
    }
    indent(&t);
}

fn indent(t: &comfy_table::Table) {
    for l in t.trim_fmt().lines() {
        say!("  {l}");
    }
}

fn print_status(ak: &AccessKey, now: jiff::Timestamp) {
    let Some(s) = &ak.status else { return };
    say!();
    say!("Status:");
    let time = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>, none: &str| {
        t.as_ref().map(|t| at(t.0, now)).unwrap_or_else(|| none.to_string())
    };
    line("Key ID", s.access_key_id.as_deref().unwrap_or("none yet"));
    line("Issued", time(&s.issued_at, "-"));
    line("Expires", if s.access_key_id.is_some() { time(&s.expires_at, "never") } else { "-".into() });
    line("Renewal", time(&s.renewal_time, "-"));
    line("Next rotation", time(&s.next_rotation_time, "-"));
    line("Last used", time(&s.last_used_at, "not known"));
    if let Some(p) = &s.pending {
        line("Pending", format!("creation attempt {} since {}", p.attempt, at(p.started_at.0, now)));
    }
    if s.retired.is_empty() {
        line("Replaced keys", "none");
    }
    for r in &s.retired {
        let when = if rotation::awaits_rollout(r) {
            "awaiting the consumers' rollout".to_string()
        } else if rotation::retired_due(r, now) {
            "being revoked".to_string()
        } else if let (Some(until), Some(used)) = (&r.held_until, &r.last_used_at) {
            format!(
                "still used at {}, after the consumers rolled out: revocation held, revoked {}",
                at(used.0, now),
                output::when(until.0, now)
            )
        } else {
            r.revoke_after.as_ref().map(|t| format!("revoked {}", output::when(t.0, now))).unwrap_or_default()
        };
        line("Replaced key", format!("{} ({when})", r.access_key_id));
    }
    for c in &s.consumers {
        let state = if c.rolled_out { "rolled out" } else { "rolling out" };
        line("Consumer", format!("{}/{} for key {} ({state})", c.kind.as_str(), c.name, c.key_id));
    }
}

/// The Secret's metadata and the names of its data keys: never a value.
fn print_secret(ak: &AccessKey, secret: Option<Option<&Secret>>) {
    say!();
    let name = &ak.spec.secret_name;
    say!("Secret {}/{name}:", ak.namespace().unwrap_or_default());
    let secret = match secret {
        None => return say!("  could not be read"),
        Some(None) => return say!("  does not exist"),
        Some(Some(s)) => s,
    };
    let keys: Vec<&str> = secret.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
    line("Data keys", if keys.is_empty() { "none".to_string() } else { keys.join(", ") });
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    line("Key ID", annotations.get(KEY_ID_ANNOTATION).map(String::as_str).unwrap_or("-"));
    let controlled = crate::core::secret::is_controlled_by(secret, ak);
    line("Controlled by", if controlled { "this AccessKey" } else { "not this AccessKey" });
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    let shown: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    line("Labels", if shown.is_empty() { "none".to_string() } else { shown.join(", ") });
    // The data hash is left out: it is derived from the secret.
    let shown: Vec<String> = annotations
        .iter()
        .filter(|(k, _)| {
            k.as_str() != DATA_HASH_ANNOTATION && k.as_str() != "kubectl.kubernetes.io/last-applied-configuration"
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    line("Annotations", if shown.is_empty() { "none".to_string() } else { shown.join(", ") });
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
        line(
            "Note",
            format!("no label {MANAGED_BY_LABEL}={MANAGED_BY}: the operator's watch does not see this Secret"),
        );
    }
}

fn print_events(events: &[Event], now: jiff::Timestamp) {
    say!();
    say!("Events:");
    if events.is_empty() {
        say!("  none");
        return;
    }
    let mut t = output::table_within(&["AGE", "TYPE", "REASON", "MESSAGE"], Some(output::WIDTH - 2));
    for e in events {
        let age = event_time(e).map(|t| output::age(t, now)).unwrap_or_else(|| "-".into());
        output::add_row(
            &mut t,
            [
                age,
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default(),
            ],
        );
    }
    indent(&t);
}

/// The rotation windows, in a few words: whose, and when they open.
fn windows_summary(ak: &AccessKey, issuer_windows: Option<&[crate::api::RotationWindow]>) -> String {
    let own = ak.spec.rotation.as_ref().and_then(|r| r.windows.as_deref());
    let (windows, whose) = match (own, issuer_windows) {
        (Some(w), _) => (w, ""),
        (None, Some(w)) => (w, " (the issuer's)"),
        (None, None) => return "rotates at any time".to_string(),
    };
    if windows.is_empty() {
        return "rotates at any time".to_string();
    }
    let each: Vec<String> = windows
        .iter()
        .map(|w| format!("\"{}\" for {} ({})", w.schedule, w.duration, w.time_zone.as_deref().unwrap_or("UTC")))
        .collect();
    format!("rotates in windows{whose}: {}", each.join(", "))
}

/// What a decision means, in one sentence.
pub fn describe(
    step: &Step,
    ak: &AccessKey,
    default_windows: Option<DefaultWindows<'_>>,
    now: jiff::Timestamp,
) -> String {
    let no_status = Default::default();
    let status = ak.status.as_ref().unwrap_or(&no_status);
    let ids = |keys: &[crate::core::decide::OwnedKey]| {
        keys.iter().map(|k| k.access_key_id.clone().unwrap_or_else(|| k.key_ref.clone())).collect::<Vec<_>>().join(", ")
    };
    match step {
        Step::ListOwnedKeys => format!(
            "finish the interrupted key creation (attempt {}): list the keys carrying this AccessKey's \
             marker at the provider, keep the one in the Secret, revoke the others",
            status.pending.as_ref().map(|p| p.attempt.as_str()).unwrap_or("?")
        ),
        Step::Adopt(k) => {
            format!("adopt key {} from the interrupted creation: it is in the Secret", ids(std::slice::from_ref(k)))
        }
        Step::ResolvePending { revoke } if revoke.is_empty() => {
            "forget the interrupted creation: it left no key".into()
        }
        Step::ResolvePending { revoke } => format!("revoke what the interrupted creation left: {}", ids(revoke)),
        Step::RevokeRetired => {
            let due: Vec<&str> = status
                .retired
                .iter()
                .filter(|r| rotation::retired_due(r, now))
                .map(|r| r.access_key_id.as_str())
                .collect();
            format!("revoke the replaced key(s) whose grace period is over: {}", due.join(", "))
        }
        Step::RestartConsumers(targets) => format!(
            "restart {} for key {}",
            targets.iter().map(|t| format!("{}/{}", t.kind.as_str(), t.name)).collect::<Vec<_>>().join(", "),
            status.access_key_id.as_deref().unwrap_or("-")
        ),
        Step::RecordConsumers { start_grace: true, .. } => {
            "record the consumers' rollout; it is done (or timed out): the replaced keys' grace period starts".into()
        }
        Step::RecordConsumers { .. } => "record the consumers' rollout, and wait for it".into(),
        Step::UpdateSchedule(Some(t)) => format!("record the next rotation: {}", at(*t, now)),
        Step::UpdateSchedule(None) => "clear the next rotation time: none is scheduled".into(),
        Step::RevokeEarly { reason, key_refs } => {
            let ids: Vec<&str> = status
                .retired
                .iter()
                .filter(|r| key_refs.contains(&r.key_ref))
                .map(|r| r.access_key_id.as_str())
                .collect();
            format!(
                "revoke replaced key {} now, ending its grace period early: a new key is due ({}), and an \
                 AccessKey holds at most {} live keys",
                ids.join(", "),
                reason.describe(),
                rotation::MAX_LIVE_KEYS
            )
        }
        Step::Issue { reason } => {
            let then = match (&status.access_key_id, reason) {
                (None, _) => String::new(),
                (Some(id), IssueReason::RevokedAtProvider) => format!("; key {id} is gone already"),
                (Some(id), _) => format!("; key {id} is replaced, and revoked after its grace period"),
            };
            format!("issue a new key ({}){then}", reason.describe())
        }
        Step::WaitBeforeReplacing(reason, wait) => format!(
            "wait {} before replacing the key ({}): it is too young to be replaced again yet",
            crate::api::duration::format_duration(*wait),
            reason.describe()
        ),
        Step::RecordProviderView { .. } => "record what the provider shows of the key (last use, expiry)".into(),
        Step::UpdateSecretMetadata => "put the Secret's labels and annotations back as the spec wants them".into(),
        Step::Deferred { reason, until } => format!(
            "nothing yet: replacing the key is due ({}) but waits for the next rotation window, at {}",
            reason.describe(),
            at(*until, now)
        ),
        Step::Ready => {
            let settings = RotationSettings::of(&ak.spec, default_windows).unwrap_or_default();
            match rotation::next_wakeup(status, &settings, now) {
                Some(t) => format!("nothing: the key is in place; next due {}", at(t, now)),
                None => "nothing: the key is in place, and nothing is due by the clock".into(),
            }
        }
        Step::NotReady(reason, message) => format!("report Ready=False ({}): {message}", reason.as_str()),
        Step::AwaitIssuerCheck(message) => format!("wait for the issuer's first check ({message})"),
    }
}

#[cfg(test)]
mod tests {
    use super::labelled;

    /// An annotation value is anything a tenant with `edit` writes: one with line breaks must not
    /// forge the lines after it (who controls the Secret, which key it holds).
    #[test]
    fn a_line_break_in_a_value_cannot_forge_a_line() {
        let annotation = "note=x\n  Controlled by:  this AccessKey\n  Key ID:         AKFORGED";
        let shown = labelled("Annotations", annotation);
        assert_eq!(shown.lines().count(), 1, "{shown}");
        assert!(shown.starts_with("  Annotations:    note=x"), "{shown}");
    }
}
