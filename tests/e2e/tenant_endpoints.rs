//! A tenant's KeyIssuer naming a host that customers control under a provider's own domain (an
//! API gateway, a function, an object-storage bucket) is refused as the operator's default
//! allow-list stands: `Ready=False` `InvalidSpec` before anything is sent or even looked up, while
//! one operator process keeps serving another namespace.
//!
//! The operator here watches every namespace, as a cluster-wide installation does, so this test
//! takes a control plane of its own.

use crate::{fakes, support};
use cloudkeys::api::KeyIssuer;
use fakes::exoscale::{ExoscaleFake, PREEXISTING_ROLE_ID};
use fakes::yandex::YandexFake;
use kube::api::Api;
use kube::Client;
use serde_json::{json, Value};
use support::exoscale::{ADMIN_KEY, ADMIN_SECRET, CREDENTIALS};
use support::keys;
use support::operator::Operator;

fn key_issuer(name: &str, provider: &str, block: Value) -> Value {
    json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": name},
        "spec": {provider: block}})
}

async fn issuer_condition(client: &Client, ns: &str, name: &str) -> (String, String) {
    let api: Api<KeyIssuer> = Api::namespaced(client.clone(), ns);
    support::eventually(&format!("KeyIssuer {ns}/{name} checked"), keys::WAIT, || async {
        let i = api.get_opt(name).await.ok()??;
        let c = i.status?.conditions.into_iter().find(|c| c.type_ == "Ready" && c.status == "False")?;
        Some((c.reason, c.message))
    })
    .await
}

#[tokio::test]
async fn key_issuers_naming_customer_hosts_under_the_providers_domains_are_refused_and_others_served() {
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    let tenant = support::namespace(&client, "tenant").await;
    let bystander = support::namespace(&client, "bystander").await;
    let operator_ns = support::namespace(&client, "cloudkeys").await;

    // Hosts under the providers' domains that any of their customers can own. None resolves
    // here (no internet): had the operator looked one up, the issuer would say
    // ProviderUnreachable, not InvalidSpec.
    let gateway = "d5d0000.apigw.yandexcloud.net";
    let function = "functions.yandexcloud.net";
    let osc_bucket = "bucket.oos.eu-west-2.outscale.com";
    let sos_bucket = "bucket.sos-ch-gva-2.exoscale.com";
    support::exoscale::credentials(&client, &tenant, ADMIN_SECRET).await;
    // Credentials that work, so that only the endpoint can stop the operator: a Yandex key the
    // fake would accept (the fake itself is not named by any issuer here).
    let yandex = YandexFake::start();
    support::create_secret(&client, &tenant, "yc-admin", json!({"key.json": yandex.authorized_key_json()})).await;
    support::create_secret(
        &client,
        &tenant,
        "osc-admin",
        json!({"OSC_ACCESS_KEY": "ADMINAK0123456789ABC", "OSC_SECRET_KEY": "adminsecretkey0123456789adminsecretkey01"}),
    )
    .await;
    let refused = [
        (
            key_issuer(
                "gateway",
                "yandex",
                json!({"endpoint": format!("https://{gateway}"), "serviceAccountId": "aje0000000000000000",
                    "serviceAccountKeySecretRef": {"name": "yc-admin"}}),
            ),
            "yandex.endpoint",
            gateway,
        ),
        (
            key_issuer(
                "function",
                "yandex",
                json!({"operationEndpoint": format!("https://{function}/d4e0000"),
                    "serviceAccountId": "aje0000000000000000", "serviceAccountKeySecretRef": {"name": "yc-admin"}}),
            ),
            "yandex.operationEndpoint",
            function,
        ),
        (
            key_issuer(
                "osc-bucket",
                "outscale",
                json!({"region": "eu-west-2", "endpoint": format!("https://{osc_bucket}/api/v1"),
                    "credentialsSecretRef": {"name": "osc-admin"}}),
            ),
            "outscale.endpoint",
            osc_bucket,
        ),
        (
            key_issuer(
                "sos-bucket",
                "exoscale",
                json!({"endpoint": format!("https://{sos_bucket}/v2"), "credentialsSecretRef": {"name": CREDENTIALS}}),
            ),
            "exoscale.endpoint",
            sos_bucket,
        ),
    ];
    for (manifest, _, _) in &refused {
        support::apply_json(&client, &tenant, manifest.clone()).await;
    }
    for (name, provider, block) in [
        ("gw-key", "gateway", json!({})),
        ("fn-key", "function", json!({})),
        ("osc-key", "osc-bucket", json!({"userName": "app-web"})),
        ("sos-key", "sos-bucket", json!({"roleId": PREEXISTING_ROLE_ID})),
    ] {
        let kind = match provider {
            "gateway" | "function" => "yandex",
            "osc-bucket" => "outscale",
            _ => "exoscale",
        };
        support::apply_json(&client, &tenant, keys::manifest(name, provider, kind, block, json!({}))).await;
    }

    // The bystander's issuer is at the Exoscale fake, on loopback, which the default allows.
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    support::exoscale::credentials(&client, &bystander, ADMIN_SECRET).await;
    let exo = json!({"endpoint": fake.endpoint(), "credentialsSecretRef": {"name": CREDENTIALS}});
    support::apply_json(&client, &bystander, key_issuer("exo", "exoscale", exo)).await;

    // The default --allowed-endpoint-hosts: nothing set.
    let mut op = Operator::start_everywhere(&operator_ns, &[]);
    let pid = op.pid().expect("the operator runs");

    for (manifest, field, host) in &refused {
        let name = manifest["metadata"]["name"].as_str().expect("name");
        let (reason, message) = issuer_condition(&client, &tenant, name).await;
        assert_eq!(reason, "InvalidSpec", "{name}: {message}");
        assert!(message.contains(field) && message.contains(host), "{name}: {message}");
        assert!(message.contains("--allowed-endpoint-hosts"), "{name}: {message}");
    }
    for name in ["gw-key", "fn-key", "osc-key", "sos-key"] {
        let ak = keys::wait_reason(&client, &tenant, name, "IssuerNotReady").await;
        assert!(ak.status.and_then(|s| s.access_key_id).is_none(), "{name} got a key");
    }

    support::apply_json(
        &client,
        &bystander,
        keys::manifest("backups", "exo", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
    )
    .await;
    let issued = keys::wait_issued(&client, &bystander, "backups").await;
    let key_id = issued.status.and_then(|s| s.access_key_id).expect("key id");
    assert!(fake.live_api_keys().iter().any(|k| k.key == key_id), "the bystander's key is live at the provider");

    // One process served both namespaces throughout.
    assert_eq!(op.pid(), Some(pid));
    assert!(op.is_running(), "the operator exited");
    // Nothing was sent, nor looked up: no connection or DNS error for any of the hosts.
    let logs = op.logs();
    for (_, _, host) in &refused {
        for line in logs.lines().filter(|l| l.contains(host)) {
            let lower = line.to_lowercase();
            assert!(
                !["dns", "lookup", "resolve", "connect", "unreachable"].iter().any(|w| lower.contains(w)),
                "the operator tried to reach {host}: {line}"
            );
        }
    }
    // Only the bystander's issuer reached a fake.
    assert!(fake.requests().iter().all(|r| r.signature_ok));
    assert!(yandex.requests().is_empty());
}
