//! Reading AccessKeys and their Secrets back in end-to-end tests.

use std::time::Duration;

use cloudkeys::api::AccessKey;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use kube::Client;

use super::eventually;

pub const WAIT: Duration = Duration::from_secs(60);

/// `spec` additions for replaced keys revoked at once (`rotation.gracePeriod: 0s`), for tests of
/// something else than the grace period that count live keys right after a replacement.
pub fn no_grace_period() -> serde_json::Value {
    serde_json::json!({"rotation": {"gracePeriod": "0s"}})
}

pub fn ready_condition(ak: &AccessKey) -> Option<(String, String, String)> {
    let c = ak.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the AccessKey's Ready condition has this reason (for its current generation).
pub async fn wait_reason(client: &Client, ns: &str, name: &str, reason: &str) -> AccessKey {
    let api: Api<AccessKey> = Api::namespaced(client.clone(), ns);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = None;
    loop {
        if let Ok(Some(ak)) = api.get_opt(name).await {
            last = ready_condition(&ak);
            let current = ak.status.as_ref().and_then(|s| s.observed_generation) == ak.metadata.generation;
            // Issued must name the key now recorded: a replacement in progress keeps the old
            // key's Issued condition until it is done.
            let id = ak.status.as_ref().and_then(|s| s.access_key_id.clone()).unwrap_or_default();
            let settled = reason != "Issued" || last.as_ref().is_some_and(|(_, _, m)| m.contains(&id));
            if current && settled && last.as_ref().is_some_and(|(_, r, _)| r == reason) {
                return ak;
            }
        }
        if tokio::time::Instant::now() > deadline {
            let now = api
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .map(|a| (a.metadata.generation, a.status.and_then(|s| s.observed_generation)));
            panic!("timed out waiting for AccessKey {ns}/{name} to have reason {reason}; last condition {last:?}, (generation, observedGeneration) {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn wait_issued(client: &Client, ns: &str, name: &str) -> AccessKey {
    wait_reason(client, ns, name, "Issued").await
}

pub async fn secret(client: &Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await.expect("Secret readable")
}

pub fn secret_value(secret: &Secret, key: &str) -> String {
    let data = secret.data.as_ref().expect("Secret has data");
    let bytes = &data.get(key).unwrap_or_else(|| panic!("Secret lacks {key}")).0;
    String::from_utf8(bytes.clone()).expect("UTF-8 value")
}

pub async fn delete_access_key(client: &Client, ns: &str, name: &str) {
    Api::<AccessKey>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::default())
        .await
        .expect("AccessKey delete accepted");
}

/// Waits until the AccessKey is gone (its finalizer released).
pub async fn wait_gone(client: &Client, ns: &str, name: &str) {
    let api: Api<AccessKey> = Api::namespaced(client.clone(), ns);
    eventually(&format!("AccessKey {ns}/{name} to be gone"), WAIT, || {
        let api = api.clone();
        async move { api.get_opt(name).await.ok().and_then(|o| o.is_none().then_some(())) }
    })
    .await
}

/// An AccessKey named `name` using the KeyIssuer `issuer`, writing `<name>-credentials`, with
/// `spec.<provider>` = `block` and the fields of `extra` added to its spec.
pub fn manifest(
    name: &str,
    issuer: &str,
    provider: &str,
    block: serde_json::Value,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut spec = serde_json::json!({"issuerRef": {"name": issuer}, "secretName": format!("{name}-credentials")});
    spec[provider] = block;
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    serde_json::json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey", "metadata": {"name": name}, "spec": spec})
}

/// Waits until the provider's live key ids (`live`) are exactly `want`, in any order.
pub async fn wait_live(what: &str, live: impl Fn() -> Vec<String>, mut want: Vec<String>) {
    want.sort();
    eventually(what, WAIT, || {
        let mut ids = live();
        ids.sort();
        let ok = ids == want;
        async move { ok.then_some(()) }
    })
    .await;
}
