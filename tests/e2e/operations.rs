//! Running the operator: health and metrics endpoints, graceful shutdown, leader election.

use crate::{fakes, support};
use std::time::{Duration, Instant};

use fakes::exoscale::{ExoscaleFake, PREEXISTING_ROLE_ID};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use serde_json::json;
use support::exoscale::{self, ADMIN_KEY, ADMIN_SECRET};
use support::keys;
use support::operator::Operator;

async fn setup(test: &str) -> (Client, String, ExoscaleFake) {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let (client, ns) = exoscale::namespace(test, &fake.endpoint()).await;
    (client, ns, fake)
}

fn access_key(name: &str) -> serde_json::Value {
    json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey", "metadata": {"name": name},
        "spec": {"issuerRef": {"name": "exoscale"}, "secretName": format!("{name}-credentials"),
            "exoscale": {"roleId": PREEXISTING_ROLE_ID}}})
}

async fn get(url: &str) -> (u16, String) {
    let resp = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    let lease = Api::<Lease>::namespaced(client.clone(), ns).get_opt("cloudkeys-leader").await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

#[tokio::test]
async fn health_and_metrics_endpoints_are_served_without_secrets() {
    let (client, ns, fake) = setup("ops-metrics").await;
    let op = Operator::start(&ns);
    support::apply_json(&client, &ns, access_key("k")).await;
    keys::wait_issued(&client, &ns, "k").await;
    let base = op.http_base().await;
    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    support::eventually("/readyz to answer 200", keys::WAIT, || {
        let url = format!("{base}/readyz");
        async move { (get(&url).await.0 == 200).then_some(()) }
    })
    .await;
    let (status, metrics) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    for needle in [
        "cloudkeys_reconciles_total{controller=\"accesskey\"}",
        "cloudkeys_reconciles_total{controller=\"keyissuer\"}",
        "cloudkeys_reconcile_duration_seconds_bucket{",
        "cloudkeys_provider_requests_total{provider=\"exoscale\",operation=\"create-api-key\",status=\"200\"} 1",
        "cloudkeys_provider_request_duration_seconds_count{provider=\"exoscale\",operation=\"create-api-key\"} 1",
        "cloudkeys_access_keys{ready=\"true\"} 1",
        &format!("cloudkeys_access_key_age_seconds{{namespace=\"{ns}\",name=\"k\"}}"),
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
    for secret in fake.issued_secrets() {
        assert!(!metrics.contains(&secret), "a secret appears in the metrics");
    }
}

#[tokio::test]
async fn sigterm_stops_the_operator_cleanly_and_releases_the_lease() {
    let (client, ns, _fake) = setup("ops-sigterm").await;
    let mut op = Operator::start_with(&ns, &[("POD_NAME", "operator-a")]);
    support::apply_json(&client, &ns, access_key("k")).await;
    keys::wait_issued(&client, &ns, "k").await;
    assert_eq!(lease_holder(&client, &ns).await.as_deref(), Some("operator-a"));
    let started = Instant::now();
    assert!(op.terminate(Duration::from_secs(20)).await, "the operator did not exit successfully on SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(15), "shutdown took {:?}", started.elapsed());
    assert_eq!(lease_holder(&client, &ns).await, None, "the lease was not released");
    assert!(op.logs().contains("controllers stopped"));
}

#[tokio::test]
async fn standby_takes_over_when_the_leader_dies_and_nothing_is_issued_twice() {
    let (client, ns, fake) = setup("ops-leader").await;
    let mut a = Operator::start_with(&ns, &[("POD_NAME", "operator-a")]);
    support::eventually("operator-a to lead", keys::WAIT, || {
        let client = client.clone();
        let ns = ns.clone();
        async move { (lease_holder(&client, &ns).await.as_deref() == Some("operator-a")).then_some(()) }
    })
    .await;
    let b = Operator::start_with(&ns, &[("POD_NAME", "operator-b")]);
    support::apply_json(&client, &ns, access_key("first")).await;
    let first = keys::wait_issued(&client, &ns, "first").await.status.and_then(|s| s.access_key_id).expect("id");
    // The standby is ready (to take over) but reconciles nothing.
    assert_eq!(get(&format!("{}/readyz", b.http_base().await)).await.0, 200);
    assert!(!b.logs().contains("starting controllers"), "the standby reconciles while another replica leads");

    a.kill();
    let killed = Instant::now();
    support::apply_json(&client, &ns, access_key("second")).await;
    let second = keys::wait_issued(&client, &ns, "second").await.status.and_then(|s| s.access_key_id).expect("id");
    assert!(killed.elapsed() < Duration::from_secs(45), "takeover took {:?}", killed.elapsed());
    assert_eq!(lease_holder(&client, &ns).await.as_deref(), Some("operator-b"));
    let mut live: Vec<String> = fake.live_api_keys().into_iter().map(|k| k.key).collect();
    live.sort();
    let mut want = vec![first, second];
    want.sort();
    assert_eq!(live, want, "a key was issued twice or lost in the takeover");
    assert_eq!(fake.issued_secrets().len(), 2);
}
