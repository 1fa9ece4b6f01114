//! `cloudkeys status [NAME] [-n NS | -A] [-o wide|json|yaml]`.

use super::output::warn_user;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::{AccessKey, ConsumerStatus, Decoded, IssuerKind, IssuerRef};
use crate::core::conditions::READY;
use crate::core::rotation;

use super::output::{self, OutputFormat};
use super::{CliError, ClusterArgs, Health, Scope, ScopeArgs};

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// One AccessKey (default: all of the namespace).
    #[arg(conflicts_with = "all_namespaces", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub name: Option<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// One AccessKey as `status` reports it (the shape of `-o json|yaml`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub namespace: String,
    pub name: String,
    /// The Ready condition's status: `True`, `False`, or `Unknown` before the first reconcile.
    pub ready: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub issuer: IssuerRef,
    pub provider: &'static str,
    pub secret_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Time>,
    /// Replaced keys not revoked yet.
    pub replaced_keys: Vec<ReplacedKey>,
    pub consumers: Vec<ConsumerStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplacedKey {
    pub key_id: String,
    /// Revoked once its grace period ends; none while it waits for the consumers' rollout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoke_after: Option<Time>,
    pub awaiting_rollout: bool,
    /// When the provider last saw it used, as asked at the end of its grace period (Yandex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Time>,
    /// Its revocation is held until then: the provider reports it used after the consumers
    /// rolled out to the new key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_until: Option<Time>,
}

impl KeyStatus {
    pub fn of(ak: &AccessKey) -> Self {
        let status = ak.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == READY);
        // A condition of an older generation says nothing about the spec as it is now.
        let current = status.observed_generation == ak.metadata.generation;
        let ready_status = match ready {
            Some(c) if current => c.status.clone(),
            _ => "Unknown".to_string(),
        };
        let replaced_keys = status
            .retired
            .iter()
            .map(|r| ReplacedKey {
                key_id: r.access_key_id.clone(),
                revoke_after: r.revoke_after.clone(),
                awaiting_rollout: rotation::awaits_rollout(r),
                last_used_at: r.last_used_at.clone(),
                held_until: r.held_until.clone(),
            })
            .collect();
        Self {
            namespace: ak.namespace().unwrap_or_default(),
            name: ak.name_any(),
            ready: ready_status,
            reason: ready.map(|c| c.reason.clone()),
            message: ready.map(|c| c.message.clone()),
            issuer: ak.spec.issuer_ref.clone(),
            provider: ak.spec.provider.name(),
            secret_name: ak.spec.secret_name.clone(),
            key_id: status.access_key_id,
            created_at: ak.metadata.creation_timestamp.clone(),
            issued_at: status.issued_at,
            expires_at: status.expires_at,
            renewal_time: status.renewal_time,
            next_rotation_time: status.next_rotation_time,
            last_used_at: status.last_used_at,
            replaced_keys,
            consumers: status.consumers,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready == "True"
    }

    /// The next time the clock replaces the key: renewal before expiry, or `rotation.every`, in
    /// the first rotation window it may happen in (`status.nextRotationTime`, which the operator
    /// computes from both); the renewal time alone from an operator that did not write it.
    pub fn next_rotation(&self) -> Option<jiff::Timestamp> {
        self.next_rotation_time.as_ref().or(self.renewal_time.as_ref()).map(|t| t.0)
    }
}

/// `ki/name` or `cki/name`: short, and what `kubectl get` takes.
pub fn issuer_name(r: &IssuerRef) -> String {
    match r.kind {
        IssuerKind::KeyIssuer => format!("ki/{}", r.name),
        IssuerKind::ClusterKeyIssuer => format!("cki/{}", r.name),
    }
}

/// The AccessKeys `name` (or all of them) in `scope`.
pub async fn access_keys(client: &kube::Client, scope: &Scope, name: Option<&str>) -> Result<Vec<AccessKey>, CliError> {
    let api = scope.api::<AccessKey>(client);
    match name {
        Some(name) => match api.get_opt(name).await.map_err(|e| CliError::listing("accesskeys.cloudkeys.io", e))? {
            Some(ak) => Ok(vec![ak]),
            None => Err(CliError::NotFound { what: format!("AccessKey {name} {}", scope.describe()) }),
        },
        None => {
            let list = scope
                .api::<Decoded<AccessKey>>(client)
                .list(&ListParams::default())
                .await
                .map_err(|e| CliError::listing("accesskeys.cloudkeys.io", e))?;
            let mut items = super::cluster::readable(list.items);
            items.sort_by_key(|a| (a.namespace(), a.name_any()));
            Ok(items)
        }
    }
}

pub async fn run(args: &StatusArgs) -> Result<Health, CliError> {
    let (client, context_ns) = args.cluster.connect().await?;
    let scope = args.scope.scope(&context_ns);
    let keys: Vec<KeyStatus> =
        access_keys(&client, &scope, args.name.as_deref()).await?.iter().map(KeyStatus::of).collect();
    let health = Health::of(keys.iter().all(KeyStatus::is_ready));
    match args.output {
        OutputFormat::Json | OutputFormat::Yaml => match (&args.name, keys.first()) {
            (Some(_), Some(one)) => output::print_structured(one, args.output)?,
            _ => output::print_structured(&serde_json::json!({ "items": keys }), args.output)?,
        },
        format => {
            if keys.is_empty() {
                warn_user!("No AccessKeys found {}.", scope.describe());
            } else {
                output::print_table(&status_table(
                    &keys,
                    scope == Scope::All,
                    format.is_wide(),
                    jiff::Timestamp::now(),
                ));
            }
        }
    }
    Ok(health)
}

fn status_table(keys: &[KeyStatus], namespaces: bool, wide: bool, now: jiff::Timestamp) -> comfy_table::Table {
    let mut headers = vec!["NAME", "READY", "REASON", "ISSUER", "KEY ID", "AGE", "NEXT ROTATION"];
    if wide {
        headers.extend(["EXPIRES", "REPLACED", "CONSUMERS", "SECRET"]);
    }
    if namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let mut t = output::table(&headers, wide);
    let dash = || "-".to_string();
    for k in keys {
        let mut row = vec![
            k.name.clone(),
            k.ready.clone(),
            k.reason.clone().unwrap_or_else(dash),
            issuer_name(&k.issuer),
            k.key_id.clone().unwrap_or_else(dash),
            k.created_at.as_ref().map(|t| output::age(t.0, now)).unwrap_or_else(dash),
            k.next_rotation().map(|t| output::when(t, now)).unwrap_or_else(dash),
        ];
        if wide {
            row.push(match (&k.key_id, &k.expires_at) {
                (None, _) => dash(),
                (Some(_), None) => "never".to_string(),
                (Some(_), Some(t)) => output::when(t.0, now),
            });
            row.push(replaced(k, now));
            row.push(consumers(&k.consumers));
            row.push(k.secret_name.clone());
        }
        if namespaces {
            row.insert(0, k.namespace.clone());
        }
        output::add_row(&mut t, row);
    }
    t
}

/// `1 (revoke in 4m)`, `1 (awaiting rollout)`, `1 (still used: held, revoke in 5h)`, or `-`.
fn replaced(k: &KeyStatus, now: jiff::Timestamp) -> String {
    // When each goes: the end of its grace period, or of its hold.
    let goes = |r: &ReplacedKey| {
        let grace_end = r.revoke_after.as_ref().map(|t| t.0);
        grace_end.map(|g| r.held_until.as_ref().map_or(g, |h| h.0.max(g)))
    };
    let Some(first) = k.replaced_keys.iter().min_by_key(|r| goes(r)) else {
        return "-".to_string();
    };
    let held = if first.held_until.is_some() { "still used: held, " } else { "" };
    let next = match (goes(first), first.awaiting_rollout) {
        (_, true) => "awaiting rollout".to_string(),
        (Some(t), false) if t <= now => "revoking".to_string(),
        (Some(t), false) => format!("{held}revoke {}", output::when(t, now)),
        (None, false) => "revoking".to_string(),
    };
    format!("{} ({next})", k.replaced_keys.len())
}

/// `2/3 rolled out`, or `-`.
fn consumers(c: &[ConsumerStatus]) -> String {
    if c.is_empty() {
        return "-".to_string();
    }
    format!("{}/{} rolled out", c.iter().filter(|c| c.rolled_out).count(), c.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access_key(status: serde_json::Value) -> AccessKey {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
            "metadata": {"name": "backups", "namespace": "team-a", "generation": 2,
                "creationTimestamp": "2026-11-01T00:00:00Z"},
            "spec": {"issuerRef": {"name": "exo"}, "secretName": "backups-key", "local": {}},
            "status": status,
        }))
        .expect("AccessKey literal")
    }

    #[test]
    fn ready_is_unknown_until_the_current_generation_is_reconciled() {
        let ready = serde_json::json!([{"type": "Ready", "status": "True", "reason": "Issued", "message": "m",
            "lastTransitionTime": "2026-11-01T00:00:00Z"}]);
        let stale = KeyStatus::of(&access_key(serde_json::json!({"observedGeneration": 1, "conditions": ready})));
        assert_eq!(stale.ready, "Unknown");
        assert!(!stale.is_ready());
        let current = KeyStatus::of(&access_key(serde_json::json!({"observedGeneration": 2, "conditions": ready})));
        assert!(current.is_ready());
        assert!(!KeyStatus::of(&access_key(serde_json::json!({}))).is_ready());
    }

    #[test]
    fn the_next_rotation_is_the_earlier_of_renewal_and_schedule() {
        let k = KeyStatus::of(&access_key(serde_json::json!({
            "renewalTime": "2026-12-10T00:00:00Z", "nextRotationTime": "2026-12-05T00:00:00Z"})));
        assert_eq!(k.next_rotation().map(|t| t.to_string()), Some("2026-12-05T00:00:00Z".to_string()));
        let only_renewal = KeyStatus::of(&access_key(serde_json::json!({"renewalTime": "2026-12-10T00:00:00Z"})));
        assert_eq!(only_renewal.next_rotation().map(|t| t.to_string()), Some("2026-12-10T00:00:00Z".to_string()));
    }

    #[test]
    fn a_renewal_deferred_to_a_rotation_window_shows_the_window() {
        let k = KeyStatus::of(&access_key(serde_json::json!({
            "renewalTime": "2026-12-05T15:00:00Z", "nextRotationTime": "2026-12-08T01:00:00Z"})));
        assert_eq!(k.next_rotation().map(|t| t.to_string()), Some("2026-12-08T01:00:00Z".to_string()));
    }

    #[test]
    fn the_table_shows_replaced_keys_and_consumers_when_wide() {
        let k = KeyStatus::of(&access_key(serde_json::json!({
            "accessKeyId": "EXO1",
            "retired": [{"accessKeyId": "EXO0", "keyRef": "r", "issuer": {"name": "exo"},
                "revokeAfter": "2026-12-01T00:05:00Z"}],
            "consumers": [{"kind": "Deployment", "name": "web", "keyId": "EXO1", "rolledOut": true},
                {"kind": "Deployment", "name": "api", "keyId": "EXO1", "rolledOut": false}]})));
        let now = jiff::Timestamp::from_second(1_796_083_200).expect("time"); // 2026-12-01T00:00:00Z
        let text = status_table(&[k], true, true, now).trim_fmt();
        assert!(text.contains("1 (revoke in 5m)"), "{text}");
        assert!(text.contains("1/2 rolled out"), "{text}");
        assert!(text.contains("never"), "{text}");
        assert!(text.starts_with("NAMESPACE"), "{text}");

        // A replaced key the provider reports still used: the hold shows, and when it ends.
        let held = KeyStatus::of(&access_key(serde_json::json!({
            "accessKeyId": "EXO1",
            "retired": [{"accessKeyId": "EXO0", "keyRef": "r", "issuer": {"name": "exo"},
                "retiredAt": "2026-11-30T23:00:00Z", "revokeAfter": "2026-11-30T23:50:00Z",
                "lastUsedAt": "2026-11-30T23:45:00Z", "heldUntil": "2026-12-01T02:00:00Z"}]})));
        let text = status_table(std::slice::from_ref(&held), false, true, now).trim_fmt();
        assert!(text.contains("1 (still used: held, revoke in 2h)"), "{text}");
        let json = serde_json::to_value(&held).expect("JSON");
        assert_eq!(json["replacedKeys"][0]["heldUntil"], "2026-12-01T02:00:00Z");
        assert_eq!(json["replacedKeys"][0]["lastUsedAt"], "2026-11-30T23:45:00Z");
    }
}
