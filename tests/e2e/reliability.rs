//! Reliability end to end: a namespace deleted with everything in it, another controller
//! fighting over a Secret, a provider that hangs, and a seeded chaos run in which the operator
//! is killed again and again while AccessKeys come and go.

use crate::{fakes, support};
use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use cloudkeys::api::{AccessKey, KeyIssuer};
use fakes::exoscale::{ExoscaleFake, Faults, PREEXISTING_ROLE_ID};
use k8s_openapi::api::core::v1::{Event, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::exoscale::{self, ADMIN_KEY, ADMIN_SECRET};
use support::keys;
use support::operator::Operator;

const IN_USE: &str = "cloudkeys.io/in-use";

/// A namespace with the KeyIssuer `exoscale` on a fresh Exoscale fake.
async fn setup(test: &str) -> (Client, String, ExoscaleFake) {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let (client, ns) = exoscale::namespace(test, &fake.endpoint()).await;
    (client, ns, fake)
}

async fn wait_issuer_ready(client: &Client, ns: &str, name: &str) {
    let api: Api<KeyIssuer> = Api::namespaced(client.clone(), ns);
    support::eventually(&format!("KeyIssuer {name} to be Ready"), keys::WAIT, || {
        let api = api.clone();
        async move {
            let i = api.get_opt(name).await.ok()??;
            i.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
        }
    })
    .await;
}

/// An AccessKey bound to the fake's preexisting role; `label` goes into the key's name, so a
/// new label is a spec change that replaces the key (revoked at once: these tests count live
/// keys right after each replacement).
fn access_key(name: &str, issuer: &str, label: &str) -> serde_json::Value {
    keys::manifest(
        name,
        issuer,
        "exoscale",
        json!({"roleId": PREEXISTING_ROLE_ID, "name": format!("{name}-{label}")}),
        keys::no_grace_period(),
    )
}

fn live(fake: &ExoscaleFake) -> BTreeSet<String> {
    fake.live_api_keys().into_iter().map(|k| k.key).collect()
}

fn finalizers<K: ResourceExt>(obj: &K) -> Vec<String> {
    obj.finalizers().to_vec()
}

#[tokio::test]
async fn deleting_a_namespace_revokes_every_key_and_the_namespace_goes() {
    let (client, ns, fake) = setup("ns-deletion").await;
    // Leader election would keep its Lease in the namespace being deleted.
    let op = Operator::start_with(&ns, &[("CLOUDKEYS_LEADER_ELECTION", "false")]);
    for name in ["a", "b", "c"] {
        support::apply_json(&client, &ns, access_key(name, "exoscale", "v1")).await;
    }
    for name in ["a", "b", "c"] {
        keys::wait_issued(&client, &ns, name).await;
    }
    assert_eq!(live(&fake).len(), 3);
    // What revoking the keys needs is held while they exist.
    let issuer = Api::<KeyIssuer>::namespaced(client.clone(), &ns).get("exoscale").await.expect("issuer");
    assert!(finalizers(&issuer).contains(&IN_USE.to_string()), "{:?}", finalizers(&issuer));
    let credentials = Api::<Secret>::namespaced(client.clone(), &ns).get("exoscale-admin").await.expect("Secret");
    assert!(finalizers(&credentials).contains(&IN_USE.to_string()), "{:?}", finalizers(&credentials));

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.delete(&ns, &DeleteParams::default()).await.expect("namespace deletion accepted");
    support::eventually("the namespace to be gone", Duration::from_secs(60), || {
        let namespaces = namespaces.clone();
        let ns = ns.clone();
        async move { namespaces.get_opt(&ns).await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert!(live(&fake).is_empty(), "keys left live at the provider: {:?}", live(&fake));
    let logs = op.logs();
    for secret in fake.issued_secrets() {
        assert!(!logs.contains(&secret), "a secret appears in the operator's logs");
    }
}

#[tokio::test]
async fn another_writer_overwriting_the_secret_cannot_make_keys_in_a_loop() {
    let (client, ns, fake) = setup("secret-fight").await;
    let op = Operator::start(&ns);
    support::apply_json(&client, &ns, access_key("k", "exoscale", "v1")).await;
    keys::wait_issued(&client, &ns, "k").await;
    let before = fake.issued_secrets().len();

    // Another controller writes its own value into the key's Secret every 2 s for a minute.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let theirs = PostParams { field_manager: Some("other-controller".into()), ..PostParams::default() };
    for round in 0..30 {
        if let Ok(mut secret) = secrets.get("k-credentials").await {
            let value = k8s_openapi::ByteString(format!("overwritten-{round}").into_bytes());
            secret.data.get_or_insert_with(Default::default).insert("EXOSCALE_API_SECRET".into(), value);
            // A conflict with the operator's own write is part of the fight: the next round wins.
            let _ = secrets.replace("k-credentials", &theirs, &secret).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let minted = fake.issued_secrets().len() - before;
    assert!(minted <= 4, "{minted} keys minted while the Secret was fought over for a minute");

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warning = support::eventually("a Warning naming the fight", keys::WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("SecretOverwritten")
                    && e.type_.as_deref() == Some("Warning")
                    && e.message.as_deref().is_some_and(|m| m.contains("other-controller"))
            })
        }
    })
    .await;
    assert!(warning.message.unwrap_or_default().contains("next replacement waits"));

    // Once the other writer stops, the operator settles on one live key: the one in the Secret.
    let api: Api<AccessKey> = Api::namespaced(client.clone(), &ns);
    support::eventually("one live key, in the Secret", Duration::from_secs(180), || {
        let (api, secrets) = (api.clone(), secrets.clone());
        let live = live(&fake);
        async move {
            let ak = api.get("k").await.ok()?;
            let id = ak.status.as_ref()?.access_key_id.clone()?;
            let secret = secrets.get("k-credentials").await.ok()?;
            let in_secret = keys::secret_value(&secret, "EXOSCALE_API_KEY");
            let (_, reason, _) = keys::ready_condition(&ak)?;
            let intact = !keys::secret_value(&secret, "EXOSCALE_API_SECRET").starts_with("overwritten");
            (reason == "Issued" && in_secret == id && intact && live == BTreeSet::from([id])).then_some(())
        }
    })
    .await;
    support::leaks::assert_no_secret_leaks(&client, &ns, &op, &fake.issued_secrets()).await;
}

#[tokio::test]
async fn a_hanging_provider_cannot_stall_the_access_keys_of_healthy_issuers() {
    let (client, ns, healthy) = setup("hanging-provider").await;
    let hanging = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    exoscale::issuer(&client, &ns, "hanging", &hanging.endpoint()).await;
    // Five workers, four of which may wait on providers, and two per issuer: the hanging issuer
    // may hold two, leaving places for another issuer and another namespace; a provider timeout
    // longer than the test, so the hang lasts throughout.
    let _op = Operator::start_with(
        &ns,
        &[("CLOUDKEYS_CONCURRENCY", "5"), ("CLOUDKEYS_ISSUER_CONCURRENCY", "2"), ("CLOUDKEYS_PROVIDER_TIMEOUT", "10m")],
    );
    wait_issuer_ready(&client, &ns, "exoscale").await;
    wait_issuer_ready(&client, &ns, "hanging").await;

    // From now on the hanging fake accepts every request and never answers.
    hanging.set_faults(Faults { latency: Duration::from_secs(3600), ..Faults::default() });
    for i in 0..6 {
        support::apply_json(&client, &ns, access_key(&format!("stuck-{i}"), "hanging", "v1")).await;
    }
    support::eventually("reconciles to wait on the hanging provider", keys::WAIT, || {
        let held = hanging.in_flight();
        async move { (held >= 2).then_some(()) }
    })
    .await;
    for i in 0..6 {
        support::apply_json(&client, &ns, access_key(&format!("fine-{i}"), "exoscale", "v1")).await;
    }
    for i in 0..6 {
        keys::wait_issued(&client, &ns, &format!("fine-{i}")).await;
    }
    assert_eq!(live(&healthy).len(), 6);
    assert_eq!(hanging.max_in_flight(), 2, "more reconciles than --issuer-concurrency waited on one issuer");
    assert_eq!(hanging.in_flight(), 2, "the healthy keys were issued while the hang went on");
}

#[tokio::test]
async fn chaos_every_key_is_accounted_for_after_the_operator_is_killed_again_and_again() {
    let seed: u64 =
        std::env::var("CLOUDKEYS_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    // Straight to stderr, past the test harness's capture: the seed shows in every run's output.
    let _ = writeln!(std::io::stderr(), "chaos seed {seed} (run again with CLOUDKEYS_CHAOS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let (client, ns, fake) = setup("chaos").await;
    fake.reseed_faults(seed);
    fake.set_faults(Faults {
        latency: Duration::from_millis(30),
        error_rate: 0.15,
        throttle_rate: 0.05,
        ..Faults::default()
    });
    let mut op = Operator::start(&ns);
    let access_keys: Api<AccessKey> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let names: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();

    let end = tokio::time::Instant::now() + Duration::from_secs(45);
    let mut next_kill = tokio::time::Instant::now() + Duration::from_millis(rng.random_range(1500..4000));
    let (mut kills, mut actions) = (0, 0);
    while tokio::time::Instant::now() < end {
        let name = &names[rng.random_range(0..names.len())];
        match rng.random_range(0..10) {
            // Create, or change the spec (a new key name replaces the key).
            0..=3 => {
                let label = format!("v{}", rng.random_range(0..3));
                support::apply_json(&client, &ns, access_key(name, "exoscale", &label)).await;
            }
            4 | 5 => {
                let _ = access_keys.delete(name, &DeleteParams::default()).await;
            }
            6 | 7 => {
                let _ = secrets.delete(&format!("{name}-credentials"), &DeleteParams::default()).await;
            }
            _ => {}
        }
        actions += 1;
        if tokio::time::Instant::now() >= next_kill {
            op.restart();
            kills += 1;
            next_kill = tokio::time::Instant::now() + Duration::from_millis(rng.random_range(1500..4000));
        }
        // The pace of the scenario, not a wait for the operator.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
    }
    let _ = writeln!(std::io::stderr(), "chaos: {actions} actions, {kills} kills of the operator");
    assert!(kills >= 5, "the operator was killed only {kills} times");

    // The provider heals; one last restart clears the operator's backoffs.
    fake.set_faults(Faults::default());
    op.restart();
    support::eventually("every AccessKey to hold exactly one live key", Duration::from_secs(120), || {
        let (access_keys, secrets) = (access_keys.clone(), secrets.clone());
        let live = live(&fake);
        async move {
            let list = access_keys.list(&ListParams::default()).await.ok()?;
            let mut held = BTreeSet::new();
            for ak in &list.items {
                let status = ak.status.as_ref()?;
                let id = status.access_key_id.clone()?;
                let (_, reason, message) = keys::ready_condition(ak)?;
                let current = status.observed_generation == ak.metadata.generation;
                let settled =
                    ak.metadata.deletion_timestamp.is_none() && status.pending.is_none() && status.retired.is_empty();
                let secret = secrets.get_opt(&ak.spec.secret_name).await.ok()??;
                let in_secret = keys::secret_value(&secret, "EXOSCALE_API_KEY") == id;
                if !(current && settled && in_secret && reason == "Issued" && message.contains(&id)) {
                    return None;
                }
                held.insert(id);
            }
            (held.len() == list.items.len() && held == live).then_some(())
        }
    })
    .await;
    support::leaks::assert_no_secret_leaks(&client, &ns, &op, &fake.issued_secrets()).await;

    // Deleting whatever is left leaves nothing live and no finalizer behind.
    for name in &names {
        let _ = access_keys.delete(name, &DeleteParams::default()).await;
    }
    for name in &names {
        keys::wait_gone(&client, &ns, name).await;
    }
    assert!(live(&fake).is_empty(), "keys left live: {:?}", live(&fake));
}
