//! Tenant isolation end to end, tried as a tenant with the `edit` role in one namespace of a
//! shared cluster would: a KeyIssuer pointed at a hostile server, and objects the operator's types
//! cannot hold. Each time, a bystander AccessKey in another namespace is issued by the same
//! operator process, which never stopped.
//!
//! Every test runs an operator that watches every namespace, and one changes the CRDs: each
//! takes a control plane of its own, and where tests share a process (plain `cargo test`), they
//! take turns (`support::one_at_a_time`).

use crate::{fakes, support};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

use cloudkeys::api::{AccessKey, KeyIssuer};
use fakes::exoscale::{ExoscaleFake, Faults, PREEXISTING_ROLE_ID};
use support::exoscale::{ADMIN_KEY, ADMIN_SECRET, CREDENTIALS};
use support::keys;
use support::operator::Operator;

const WAIT: Duration = Duration::from_secs(90);

/// Each hostile body: far more than the operator's whole memory.
const HUGE_MIB: usize = 300;

/// How many requests reached each of the hostile server's faces.
#[derive(Default)]
struct Hits {
    throttle: AtomicUsize,
    huge_error: AtomicUsize,
    huge_answer: AtomicUsize,
}

/// A server a tenant controls, speaking just enough HTTP to hurt: under `/throttle` a 429 that
/// asks to wait 10^20 seconds (header and Exoscale-style body alike), under `/huge-error` a 500
/// and under `/huge-answer` a 200, each with a body of [`HUGE_MIB`] MiB, streamed.
fn hostile_server(hits: Arc<Hits>) -> fakes::Server {
    let app = axum::Router::new().fallback(move |uri: Uri| {
        let hits = hits.clone();
        async move {
            let path = uri.path();
            let huge = || {
                let chunk = Bytes::from(vec![b'x'; 1 << 20]);
                let chunks = futures::stream::repeat(chunk).take(HUGE_MIB).map(Ok::<_, std::convert::Infallible>);
                Body::from_stream(chunks)
            };
            let (status, body) = if path.starts_with("/throttle") {
                hits.throttle.fetch_add(1, Ordering::SeqCst);
                let body = json!({"message": "slow down", "retry_after": 1e300}).to_string();
                (StatusCode::TOO_MANY_REQUESTS, Body::from(body))
            } else if path.starts_with("/huge-error") {
                hits.huge_error.fetch_add(1, Ordering::SeqCst);
                (StatusCode::INTERNAL_SERVER_ERROR, huge())
            } else {
                hits.huge_answer.fetch_add(1, Ordering::SeqCst);
                (StatusCode::OK, huge())
            };
            Response::builder()
                .status(status)
                .header("retry-after", "1e20")
                .header("content-type", "application/json")
                .body(body)
                .unwrap_or_default()
        }
    });
    fakes::Server::start("hostile", app)
}

fn key_issuer(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": name}, "spec": spec})
}

/// A `local` KeyIssuer and an AccessKey on it in a namespace of their own: the bystander.
async fn bystander(client: &Client, test: &str) -> String {
    let ns = support::namespace(client, test).await;
    support::apply_json(client, &ns, key_issuer("local", json!({"local": {}}))).await;
    support::apply_json(client, &ns, keys::manifest("bystander", "local", "local", json!({}), json!({}))).await;
    ns
}

async fn issuer_ready(client: &Client, ns: &str, name: &str) -> Option<(String, String, String)> {
    let issuer = Api::<KeyIssuer>::namespaced(client.clone(), ns).get_opt(name).await.ok()??;
    let c = issuer.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
    Some((c.status, c.reason, c.message))
}

#[tokio::test]
async fn a_hostile_provider_cannot_crash_the_operator_or_grow_its_memory() {
    let _turn = support::one_at_a_time().await;
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    let operator_ns = support::namespace(&client, "iso-operator").await;
    let mut op = Operator::start_everywhere(&operator_ns, &[]);
    let pid = op.pid();

    // A first bystander proves the operator is up before anything hostile exists.
    let first = bystander(&client, "iso-before").await;
    keys::wait_issued(&client, &first, "bystander").await;
    let rss_before = op.rss_kib();

    let hits = Arc::new(Hits::default());
    let server = hostile_server(hits.clone());
    let tenant = support::namespace(&client, "iso-tenant").await;
    support::exoscale::credentials(&client, &tenant, support::exoscale::ADMIN_SECRET).await;
    for face in ["throttle", "huge-error", "huge-answer"] {
        let endpoint = format!("http://{}/{face}/v2", server.addr);
        let spec = json!({"exoscale": {"endpoint": endpoint,
            "credentialsSecretRef": {"name": support::exoscale::CREDENTIALS}}});
        support::apply_json(&client, &tenant, key_issuer(face, spec)).await;
    }

    // Each face answered at least once, and each issuer says what went wrong.
    for (face, says) in [("throttle", "slow down"), ("huge-error", "HTTP 500"), ("huge-answer", "larger than 8 MiB")] {
        let (status, reason, message) =
            support::eventually(&format!("KeyIssuer {face} to report the hostile answer"), WAIT, || {
                let client = client.clone();
                let tenant = tenant.clone();
                async move { issuer_ready(&client, &tenant, face).await.filter(|(s, ..)| s == "False") }
            })
            .await;
        println!("KeyIssuer {face}: Ready={status} {reason}: {message}");
        assert!(message.contains(says), "{face}: {message}");
    }
    assert!(hits.throttle.load(Ordering::SeqCst) >= 1);
    assert!(hits.huge_error.load(Ordering::SeqCst) >= 1);
    assert!(hits.huge_answer.load(Ordering::SeqCst) >= 1);

    // A bystander created now is served at once, by the same process.
    let second = bystander(&client, "iso-after").await;
    keys::wait_issued(&client, &second, "bystander").await;
    assert!(op.is_running(), "the operator process ended");
    assert_eq!(op.pid(), pid);
    let rss_after = op.rss_kib();
    println!(
        "operator RSS before the hostile server: {} MiB, after {} hostile answers of {HUGE_MIB} MiB: {} MiB",
        rss_before / 1024,
        hits.huge_error.load(Ordering::SeqCst) + hits.huge_answer.load(Ordering::SeqCst),
        rss_after / 1024
    );
    assert!(rss_after < rss_before + 64 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB");
    // The wait asked for (10^20 s) was never honoured: the throttling issuer is asked again
    // within the backoff ceiling, which this test does not wait for; what it asks is that
    // the issuer's condition shows the error and the process lives (above).
    drop(server);
}

/// The CRDs as an older version had them: no `maximum` on `policy.maxKeysPerNamespace`.
fn crds_without_bounds() -> Vec<CustomResourceDefinition> {
    cloudkeys::api::crds()
        .into_iter()
        .map(|crd| {
            let mut value = serde_json::to_value(&crd).expect("CRD as JSON");
            let field = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/policy/properties/maxKeysPerNamespace";
            if let Some(max_keys) = value.pointer_mut(field).and_then(Value::as_object_mut) {
                max_keys.remove("maximum");
            }
            serde_json::from_value(value).expect("CRD from JSON")
        })
        .collect()
}

async fn put_crds(client: &Client, crds: Vec<CustomResourceDefinition>) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for mut crd in crds {
        let name = crd.metadata.name.clone().expect("CRD name");
        match api.get_opt(&name).await.expect("CRD readable") {
            Some(live) => {
                crd.metadata.resource_version = live.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &crd).await.expect("CRD replaced");
            }
            None => {
                api.create(&PostParams::default(), &crd).await.expect("CRD created");
            }
        }
    }
    support::install_crds(client).await; // waits until every CRD is established
}

/// Creates `manifest` (as written: the typed objects cannot even hold it) in `ns`, and returns
/// the apiserver's refusal.
async fn refused(client: &Client, ns: &str, manifest: Value) -> String {
    let ar = match manifest["kind"].as_str() {
        Some("KeyIssuer") => kube::api::ApiResource::erase::<KeyIssuer>(&()),
        _ => kube::api::ApiResource::erase::<cloudkeys::api::AccessKey>(&()),
    };
    let obj: kube::api::DynamicObject = serde_json::from_value(manifest.clone()).expect("an object");
    match Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .create(&PostParams::default(), &obj)
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 422 => s.message,
        other => panic!("{manifest} was not refused: {other:?}"),
    }
}

#[tokio::test]
async fn an_object_the_types_cannot_hold_is_refused_or_skipped_and_every_other_one_served() {
    let _turn = support::one_at_a_time().await;
    support::own_control_plane();
    let client = support::client().await;
    // An older CRD stored a KeyIssuer whose maxKeysPerNamespace no u32 holds…
    put_crds(&client, crds_without_bounds()).await;
    let tenant = support::namespace(&client, "iso-unreadable").await;
    let bad = |name: &str| key_issuer(name, json!({"local": {}, "policy": {"maxKeysPerNamespace": 4294967296u64}}));
    support::apply_json(&client, &tenant, bad("too-many")).await;
    // …and the current CRDs refuse such objects at admission.
    put_crds(&client, cloudkeys::api::crds()).await;
    let message = refused(&client, &tenant, bad("refused")).await;
    println!("refused: {message}");
    assert!(message.contains("maxKeysPerNamespace") && message.contains("10000"), "{message}");
    let absurd =
        keys::manifest("absurd", "local", "local", json!({}), json!({"rotation": {"every": "100000000000000000000h"}}));
    let message = refused(&client, &tenant, absurd).await;
    println!("refused: {message}");
    assert!(message.contains("rotation.every"), "{message}");

    let operator_ns = support::namespace(&client, "iso-operator2").await;
    let mut op = Operator::start_everywhere(&operator_ns, &[]);
    let first = bystander(&client, "iso-served").await;
    keys::wait_issued(&client, &first, "bystander").await;

    // The unreadable KeyIssuer is reported on itself, and counted.
    let events: Api<Event> = Api::namespaced(client.clone(), &tenant);
    let note = support::eventually("a Warning event on the unreadable KeyIssuer", WAIT, || {
        let events = events.clone();
        async move {
            let params = ListParams::default().fields("involvedObject.name=too-many,reason=Unreadable");
            let list = events.list(&params).await.ok()?;
            list.items.into_iter().find_map(|e| e.message)
        }
    })
    .await;
    println!("event: {note}");
    assert!(note.contains("spec.policy.maxKeysPerNamespace") && note.contains("4294967296"), "{note}");
    let metrics = format!("{}/metrics", op.http_base().await);
    let body = reqwest::get(&metrics).await.expect("GET /metrics").text().await.expect("metrics text");
    assert!(body.contains("cloudkeys_undecodable_objects{kind=\"KeyIssuer\"} 1"), "{body}");

    // Across a restart, from the first list on.
    let pid = op.pid();
    op.restart();
    assert_ne!(op.pid(), pid);
    let second = bystander(&client, "iso-restarted").await;
    keys::wait_issued(&client, &second, "bystander").await;
    assert!(op.is_running(), "the operator process ended");
}

/// A KeyIssuer `name` in `ns` at its own Exoscale fake, Ready once the fake answered.
async fn exoscale_issuer(client: &Client, ns: &str, name: &str) -> ExoscaleFake {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    support::exoscale::credentials(client, ns, ADMIN_SECRET).await;
    let spec = json!({"exoscale": {"endpoint": fake.endpoint(), "credentialsSecretRef": {"name": CREDENTIALS}}});
    support::apply_json(client, ns, key_issuer(name, spec)).await;
    support::eventually(&format!("KeyIssuer {ns}/{name} Ready"), WAIT, || async move {
        issuer_ready(client, ns, name).await.filter(|(s, ..)| s == "True")
    })
    .await;
    fake
}

fn role_key(name: &str, issuer: &str) -> Value {
    keys::manifest(name, issuer, "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({}))
}

async fn issued(client: &Client, ns: &str) -> usize {
    let list = Api::<AccessKey>::namespaced(client.clone(), ns).list(&ListParams::default()).await;
    let items = list.map(|l| l.items).unwrap_or_default();
    items.iter().filter(|ak| keys::ready_condition(ak).is_some_and(|(s, ..)| s == "True")).count()
}

#[tokio::test]
async fn slow_providers_delay_only_the_access_keys_of_their_own_issuers() {
    let _turn = support::one_at_a_time().await;
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    let operator_ns = support::namespace(&client, "iso-operator3").await;
    // The default --concurrency: 16 workers.
    let op = Operator::start_everywhere(&operator_ns, &[]);

    // Three tenants whose provider takes half a minute to answer, each with a handful of
    // AccessKeys: more than the operator has workers.
    let mut slow = Vec::new();
    for tenant in ["iso-slow-a", "iso-slow-b", "iso-slow-c"] {
        let ns = support::namespace(&client, tenant).await;
        let fake = exoscale_issuer(&client, &ns, "slow").await;
        fake.set_faults(Faults { latency: Duration::from_secs(30), ..Faults::default() });
        let answered_before = fake.requests().len();
        for i in 0..6 {
            support::apply_json(&client, &ns, role_key(&format!("key-{i}"), "slow")).await;
        }
        slow.push((ns, fake, answered_before));
    }
    // Requests a slow provider answered since it became slow.
    let answered =
        |(_, fake, before): &(String, ExoscaleFake, usize)| fake.requests().len() - *before - fake.in_flight() as usize;
    let waiting = || slow.iter().map(|(_, f, _)| f.in_flight()).collect::<Vec<_>>();
    support::eventually("every slow tenant to hold the operator's workers", WAIT, || {
        let w = waiting();
        async move { (w.iter().all(|n| *n >= 1) && w.iter().sum::<u32>() >= 6).then_some(()) }
    })
    .await;
    println!("requests waiting at the slow providers: {:?}", waiting());

    // A tenant with a healthy provider is served while every slow call is still unanswered.
    let healthy_ns = support::namespace(&client, "iso-healthy").await;
    let _healthy = exoscale_issuer(&client, &healthy_ns, "healthy").await;
    support::apply_json(&client, &healthy_ns, role_key("bystander", "healthy")).await;
    keys::wait_issued(&client, &healthy_ns, "bystander").await;
    // Not one slow answer came before the bystander was served: it never waited for a worker
    // held by a slow provider. (Each slow answer takes 30 s; every AccessKey needs two.)
    let answered_slow: Vec<usize> = slow.iter().map(answered).collect();
    println!(
        "when the bystander was issued: requests waiting at the slow providers {:?}, answered {answered_slow:?}",
        waiting()
    );
    assert!(answered_slow.iter().all(|n| *n == 0), "the bystander waited for slow answers: {answered_slow:?}");
    let mut slow_issued = 0;
    for (ns, ..) in &slow {
        slow_issued += issued(&client, ns).await;
    }
    assert_eq!(slow_issued, 0);
    assert!(op.pid().is_some());
}

#[tokio::test]
async fn issuers_at_a_hanging_provider_delay_neither_another_tenants_first_check_nor_its_drift_checks() {
    let _turn = support::one_at_a_time().await;
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    let operator_ns = support::namespace(&client, "iso-operator4").await;
    // The default --concurrency (16 workers); provider calls may take ten minutes, so that a
    // hanging provider holds whatever waits on it for the whole test; drift checks every 3 s.
    let mut op = Operator::start_everywhere(
        &operator_ns,
        &[("CLOUDKEYS_PROVIDER_TIMEOUT", "10m"), ("CLOUDKEYS_DRIFT_CHECK_INTERVAL", "3s")],
    );

    // A tenant with more KeyIssuers than the operator has workers, at a provider that never
    // answers within the test: each first check hangs.
    let hanging_ns = support::namespace(&client, "iso-a-hanging").await;
    let hanging = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    hanging.set_faults(Faults { latency: Duration::from_secs(900), ..Faults::default() });
    support::exoscale::credentials(&client, &hanging_ns, ADMIN_SECRET).await;
    let spec = json!({"exoscale": {"endpoint": hanging.endpoint(), "credentialsSecretRef": {"name": CREDENTIALS}}});
    const HANGING: usize = 20;
    for i in 0..HANGING {
        support::apply_json(&client, &hanging_ns, key_issuer(&format!("hanging-{i}"), spec.clone())).await;
    }
    support::eventually("the hanging issuers' checks to wait at their provider", WAIT, || {
        let waiting = hanging.in_flight();
        async move { (waiting >= 10).then_some(()) }
    })
    .await;

    // Another tenant's first issuer is checked and its AccessKey issued, while every hanging
    // check still waits (no hanging issuer has a verdict yet).
    let healthy_ns = support::namespace(&client, "iso-b-healthy").await;
    let healthy = exoscale_issuer(&client, &healthy_ns, "healthy").await;
    support::apply_json(&client, &healthy_ns, role_key("bystander", "healthy")).await;
    let ak = keys::wait_issued(&client, &healthy_ns, "bystander").await;
    let mut checked = Vec::new();
    for i in 0..HANGING {
        if let Some(verdict) = issuer_ready(&client, &hanging_ns, &format!("hanging-{i}")).await {
            checked.push(verdict);
        }
    }
    println!("requests waiting at the hanging provider: {}", hanging.in_flight());
    assert!(checked.is_empty(), "hanging issuers were checked before the bystander was served: {checked:?}");

    // The bystander's key is revoked by hand: the next drift check replaces it, though the
    // hanging issuers' listings (sorted before it) never end.
    let old = ak.status.and_then(|s| s.access_key_id).expect("bystander's key");
    assert!(healthy.delete_api_key_by_hand(&old));
    let api: Api<AccessKey> = Api::namespaced(client.clone(), &healthy_ns);
    support::eventually("the bystander's revoked key replaced by a drift check", WAIT, || async {
        let ak = api.get("bystander").await.ok()?;
        let id = ak.status?.access_key_id?;
        (id != old).then_some(())
    })
    .await;
    assert!(hanging.requests().iter().all(|r| r.status == 0), "the hanging provider answered");
    assert!(op.is_running(), "the operator process ended");
}
