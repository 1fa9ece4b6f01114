//! Issuer policy end to end: each rule refuses what it must with `Ready=False` `PolicyDenied`, a
//! message naming the field, the value and what is allowed, a Warning event, and not one
//! request at the provider's fake; and lets through what it allows.

use crate::{clouds, fakes, support};
use fakes::exoscale::{ExoscaleFake, PREEXISTING_ROLE_ID};
use fakes::outscale::OutscaleFake;
use fakes::yandex::{YandexFake, SECOND_SERVICE_ACCOUNT_ID};
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use support::exoscale::{ADMIN_KEY, ADMIN_SECRET, CREDENTIALS};
use support::keys;
use support::operator::Operator;

/// A denial as the user sees it: condition, message and Warning event.
async fn assert_denied(client: &Client, ns: &str, name: &str, says: &[&str]) {
    let ak = keys::wait_reason(client, ns, name, "PolicyDenied").await;
    let (status, _, message) = keys::ready_condition(&ak).expect("Ready condition");
    assert_eq!(status, "False");
    for part in says {
        assert!(message.contains(part), "{name}: {message:?} does not say {part:?}");
    }
    assert!(ak.status.and_then(|s| s.access_key_id).is_none(), "{name}: a key was issued");
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    support::eventually(&format!("a PolicyDenied event on {name}"), keys::WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("PolicyDenied")
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.name.as_deref() == Some(name)
            })
            .then_some(())
    })
    .await;
}

fn key(name: &str, issuer: &str, provider: &str, block: Value, extra: Value) -> Value {
    keys::manifest(name, issuer, provider, block, extra)
}

fn key_issuer(name: &str, provider: &str, block: Value, policy: Value) -> Value {
    let mut spec = json!({ provider: block });
    if !policy.is_null() {
        spec["policy"] = policy;
    }
    json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": name}, "spec": spec})
}

async fn wait_issuer_ready(client: &Client, ns: &str, name: &str) -> String {
    wait_issuer_condition(client, ns, name, "Ready").await
}

#[tokio::test]
async fn exoscale_roles_modes_iam_operations_deletion_policies_and_keys_per_namespace() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "policy-exoscale").await;
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    support::exoscale::credentials(&client, &ns, ADMIN_SECRET).await;
    let exo = json!({"endpoint": fake.endpoint(), "credentialsSecretRef": {"name": CREDENTIALS}});
    let other_role = "00000000-0000-4000-8000-00000000beef";
    let issuers = [
        ("roles", json!({"exoscale": {"roleIds": [PREEXISTING_ROLE_ID]}})),
        ("no-own-roles", json!({"exoscale": {"allowOwnRoles": false}})),
        ("defaults", Value::Null),
        ("no-legacy", json!({"exoscale": {"allowLegacy": false}})),
        ("operations", json!({"exoscale": {"operations": ["get-sos-object", "list-sos-bucket"]}})),
        ("delete-only", json!({"deletionPolicies": ["Delete"]})),
        ("one-per-namespace", json!({"maxKeysPerNamespace": 1})),
    ];
    for (name, policy) in &issuers {
        support::apply_json(&client, &ns, key_issuer(name, "exoscale", exo.clone(), policy.clone())).await;
    }
    let op = Operator::start(&ns);
    for (name, _) in &issuers {
        wait_issuer_ready(&client, &ns, name).await;
    }
    let own_role = |policy: Value| json!({"role": {"policy": policy}});
    let narrow = json!({"defaultServiceStrategy": "deny", "services": {"sos": {"type": "allow"}}});
    let denied = [
        (
            key("other-role", "roles", "exoscale", json!({"roleId": other_role}), json!({})),
            vec!["spec.exoscale.roleId", other_role, PREEXISTING_ROLE_ID],
        ),
        (
            key("own-role", "no-own-roles", "exoscale", own_role(narrow.clone()), json!({})),
            vec!["spec.exoscale.role", "allowOwnRoles: false"],
        ),
        (
            key("allow-all", "defaults", "exoscale", own_role(json!({"defaultServiceStrategy": "allow"})), json!({})),
            vec!["defaultServiceStrategy", "allow", "allowIAM: false"],
        ),
        (
            key(
                "iam",
                "defaults",
                "exoscale",
                own_role(json!({"defaultServiceStrategy": "deny", "services": {"iam": {"type": "allow"}}})),
                json!({}),
            ),
            vec!["services.iam.type", "allowIAM: false"],
        ),
        (
            key("legacy", "no-legacy", "exoscale", json!({"operations": ["get-sos-object"]}), json!({})),
            vec!["legacy access key", "allowLegacy: false"],
        ),
        (
            key(
                "delete-op",
                "operations",
                "exoscale",
                json!({"operations": ["get-sos-object", "delete-sos-object"]}),
                json!({}),
            ),
            vec!["spec.exoscale.operations", "delete-sos-object", "get-sos-object, list-sos-bucket"],
        ),
        (
            key(
                "retained",
                "delete-only",
                "exoscale",
                json!({"roleId": PREEXISTING_ROLE_ID}),
                json!({"deletionPolicy": "Retain"}),
            ),
            vec!["spec.deletionPolicy", "Retain", "allowed: Delete"],
        ),
    ];
    let before = fake.requests().len();
    for (manifest, _) in &denied {
        support::apply_json(&client, &ns, manifest.clone()).await;
    }
    for (manifest, says) in &denied {
        let name = manifest["metadata"]["name"].as_str().expect("name");
        assert_denied(&client, &ns, name, says).await;
    }
    assert_eq!(fake.requests().len(), before, "a denied AccessKey reached the provider");

    // What the same policies allow is issued.
    let allowed = [
        key("listed-role", "roles", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
        key("narrow-role", "defaults", "exoscale", own_role(narrow), json!({})),
        key("listed-op", "operations", "exoscale", json!({"operations": ["get-sos-object"]}), json!({})),
        key("deleted", "delete-only", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
        key("first", "one-per-namespace", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
    ];
    for manifest in &allowed {
        support::apply_json(&client, &ns, manifest.clone()).await;
    }
    for manifest in &allowed {
        keys::wait_issued(&client, &ns, manifest["metadata"]["name"].as_str().expect("name")).await;
    }
    // The namespace holds its one key of that issuer now.
    let before = fake.requests().len();
    support::apply_json(
        &client,
        &ns,
        key("second", "one-per-namespace", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
    )
    .await;
    assert_denied(&client, &ns, "second", &["maxKeysPerNamespace", "at most 1"]).await;
    assert_eq!(fake.requests().len(), before, "the key over the limit reached the provider");
    drop(op);
}

#[tokio::test]
async fn yandex_keys_are_for_the_issuers_own_service_account_unless_the_policy_lists_more() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "policy-yandex").await;
    let fake = YandexFake::start();
    support::create_secret(&client, &ns, "yc-admin", json!({"key.json": fake.authorized_key_json()})).await;
    let yc = json!({"endpoint": fake.endpoint(), "operationEndpoint": fake.operation_endpoint(),
        "serviceAccountId": fake.service_account_id(), "serviceAccountKeySecretRef": {"name": "yc-admin"}});
    support::apply_json(&client, &ns, key_issuer("own", "yandex", yc.clone(), Value::Null)).await;
    support::apply_json(&client, &ns, key_issuer("any", "yandex", yc, json!({"yandex": {"serviceAccountIds": ["*"]}})))
        .await;
    let _op = Operator::start(&ns);
    wait_issuer_ready(&client, &ns, "own").await;
    wait_issuer_ready(&client, &ns, "any").await;
    let before = fake.requests().len();
    support::apply_json(
        &client,
        &ns,
        key("other", "own", "yandex", json!({"serviceAccountId": SECOND_SERVICE_ACCOUNT_ID}), json!({})),
    )
    .await;
    assert_denied(
        &client,
        &ns,
        "other",
        &["spec.yandex.serviceAccountId", SECOND_SERVICE_ACCOUNT_ID, &fake.service_account_id()],
    )
    .await;
    assert_eq!(fake.requests().len(), before, "a denied AccessKey reached the provider");
    support::apply_json(&client, &ns, key("default", "own", "yandex", json!({}), json!({}))).await;
    support::apply_json(
        &client,
        &ns,
        key("listed", "any", "yandex", json!({"serviceAccountId": SECOND_SERVICE_ACCOUNT_ID}), json!({})),
    )
    .await;
    keys::wait_issued(&client, &ns, "default").await;
    keys::wait_issued(&client, &ns, "listed").await;
}

#[tokio::test]
async fn outscale_keys_need_an_allowed_user_an_allowed_identity_and_a_bounded_lifetime() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "policy-outscale").await;
    let (ak, sk) = ("ADMINAK0123456789ABC", "adminsecretkey0123456789adminsecretkey01");
    let fake = OutscaleFake::start("eu-west-2", ak, sk);
    for user in ["backup-bot", "app-web"] {
        fake.add_user(user);
    }
    support::create_secret(&client, &ns, "osc-admin", json!({"OSC_ACCESS_KEY": ak, "OSC_SECRET_KEY": sk})).await;
    let osc =
        json!({"region": "eu-west-2", "endpoint": fake.endpoint(), "credentialsSecretRef": {"name": "osc-admin"}});
    support::apply_json(&client, &ns, key_issuer("defaults", "outscale", osc.clone(), Value::Null)).await;
    let apps = json!({"outscale": {"userNames": ["app-*"], "maxExpiresAfter": "720h"}});
    support::apply_json(&client, &ns, key_issuer("apps", "outscale", osc, apps)).await;
    let _op = Operator::start(&ns);
    wait_issuer_ready(&client, &ns, "defaults").await;
    wait_issuer_ready(&client, &ns, "apps").await;
    let denied = [
        (
            key("identity", "defaults", "outscale", json!({}), json!({})),
            vec!["spec.outscale.userName", "issuer's own identity", "allowIssuerIdentity: false"],
        ),
        (
            key("bot", "apps", "outscale", json!({"userName": "backup-bot", "expiresAfter": "24h"}), json!({})),
            vec!["spec.outscale.userName", "backup-bot", "app-*"],
        ),
        (
            key("forever", "apps", "outscale", json!({"userName": "app-web"}), json!({})),
            vec!["spec.outscale.expiresAfter", "never expires", "at most 720h"],
        ),
        (
            key("long", "apps", "outscale", json!({"userName": "app-web", "expiresAfter": "2160h"}), json!({})),
            vec!["spec.outscale.expiresAfter", "2160h", "at most 720h"],
        ),
    ];
    let before = fake.requests().len();
    for (manifest, _) in &denied {
        support::apply_json(&client, &ns, manifest.clone()).await;
    }
    for (manifest, says) in &denied {
        assert_denied(&client, &ns, manifest["metadata"]["name"].as_str().expect("name"), says).await;
    }
    assert_eq!(fake.requests().len(), before, "a denied AccessKey reached the provider");
    support::apply_json(
        &client,
        &ns,
        key("web", "apps", "outscale", json!({"userName": "app-web", "expiresAfter": "24h"}), json!({})),
    )
    .await;
    keys::wait_issued(&client, &ns, "web").await;
}

/// Mode (a) under `allowIAM: false` (the default) with no `roleIds`: the operator reads the role
/// (once for many AccessKeys) and refuses one that grants IAM rights, as it refuses such a role
/// made for the key; with `allowIAM: true` the same role is issued.
#[tokio::test]
async fn an_existing_role_with_iam_rights_is_refused_unless_the_policy_allows_iam() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "policy-existing-role").await;
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let iam_role = "00000000-0000-4000-8000-0000000001a0";
    let policy = json!({"default-service-strategy": "deny", "services": {"iam": {"type": "allow"}}});
    fake.add_role(iam_role, "iam-admin", policy, &[]);
    support::exoscale::credentials(&client, &ns, ADMIN_SECRET).await;
    let exo = json!({"endpoint": fake.endpoint(), "credentialsSecretRef": {"name": CREDENTIALS}});
    support::apply_json(&client, &ns, key_issuer("defaults", "exoscale", exo.clone(), Value::Null)).await;
    let iam_ok = json!({"exoscale": {"allowIAM": true}});
    support::apply_json(&client, &ns, key_issuer("iam-ok", "exoscale", exo, iam_ok)).await;
    let _op = Operator::start(&ns);
    wait_issuer_ready(&client, &ns, "defaults").await;
    wait_issuer_ready(&client, &ns, "iam-ok").await;
    // The first refusal reads the role; those after it use that answer (kept for a minute).
    let refused = ["iam-1", "iam-2", "iam-3", "iam-4"];
    for (i, name) in refused.iter().enumerate() {
        support::apply_json(&client, &ns, key(name, "defaults", "exoscale", json!({"roleId": iam_role}), json!({})))
            .await;
        if i == 0 {
            keys::wait_reason(&client, &ns, name, "PolicyDenied").await;
        }
    }
    for name in refused {
        assert_denied(
            &client,
            &ns,
            name,
            &["spec.exoscale.roleId", iam_role, "iam service of type allow", "allowIAM: false", "roleIds"],
        )
        .await;
    }
    let role_path = format!("/v2/iam-role/{iam_role}");
    let reads = fake.requests().iter().filter(|r| r.method == "GET" && r.path == role_path).count();
    assert!(reads >= 1 && reads < refused.len(), "{reads} reads of the role for {} AccessKeys", refused.len());
    assert!(fake.live_api_keys().iter().all(|k| k.role_id != iam_role), "a key was bound to the IAM role");
    assert!(fake.requests().iter().all(|r| r.method != "POST"), "a denied AccessKey created something");

    // The narrow role the fake starts with is read and issued; allowIAM: true issues the IAM role.
    support::apply_json(
        &client,
        &ns,
        key("narrow", "defaults", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
    )
    .await;
    support::apply_json(&client, &ns, key("iam", "iam-ok", "exoscale", json!({"roleId": iam_role}), json!({}))).await;
    keys::wait_issued(&client, &ns, "narrow").await;
    let issued = keys::wait_issued(&client, &ns, "iam").await;
    let key_id = issued.status.and_then(|s| s.access_key_id).expect("key id");
    assert!(fake.live_api_keys().iter().any(|k| k.key == key_id && k.role_id == iam_role));
}

/// An OUTSCALE issuer whose access key belongs to an EIM user: naming that user is naming the
/// issuer's own identity, refused unless `allowIssuerIdentity`; another user is issued.
#[tokio::test]
async fn an_outscale_issuers_own_eim_user_falls_under_allow_issuer_identity() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "policy-osc-identity").await;
    let fake = OutscaleFake::start("eu-west-2", "ROOTAK0123456789ABCD", "rootsecretkey0123456789rootsecretkey0123");
    fake.add_user("app-web");
    // The issuer signs as the EIM user operator-bot.
    let (own, own_secret) = fake.add_key(Some("operator-bot"), None);
    support::create_secret(
        &client,
        &ns,
        "osc-bot",
        json!({"OSC_ACCESS_KEY": own.access_key_id, "OSC_SECRET_KEY": own_secret}),
    )
    .await;
    let osc = json!({"region": "eu-west-2", "endpoint": fake.endpoint(), "credentialsSecretRef": {"name": "osc-bot"}});
    support::apply_json(&client, &ns, key_issuer("bot", "outscale", osc.clone(), Value::Null)).await;
    let identity_ok = json!({"outscale": {"allowIssuerIdentity": true}});
    support::apply_json(&client, &ns, key_issuer("bot-identity", "outscale", osc, identity_ok)).await;
    let _op = Operator::start(&ns);
    wait_issuer_ready(&client, &ns, "bot").await;
    wait_issuer_ready(&client, &ns, "bot-identity").await;
    support::apply_json(
        &client,
        &ns,
        key("own-user", "bot", "outscale", json!({"userName": "operator-bot"}), json!({})),
    )
    .await;
    assert_denied(
        &client,
        &ns,
        "own-user",
        &["spec.outscale.userName", "operator-bot", "issuer's own identity", "allowIssuerIdentity: false"],
    )
    .await;
    let created = |user: &str| {
        fake.requests().iter().filter(|r| r.action == "CreateAccessKey" && r.body["UserName"] == user).count()
    };
    assert_eq!(created("operator-bot"), 0, "a key of the issuer's own user was created");

    support::apply_json(&client, &ns, key("web", "bot", "outscale", json!({"userName": "app-web"}), json!({}))).await;
    support::apply_json(
        &client,
        &ns,
        key("allowed-own", "bot-identity", "outscale", json!({"userName": "operator-bot"}), json!({})),
    )
    .await;
    keys::wait_issued(&client, &ns, "web").await;
    keys::wait_issued(&client, &ns, "allowed-own").await;
    let users: Vec<Option<String>> =
        fake.live_keys().into_iter().filter(|k| k.tag.is_some()).map(|k| k.user_name).collect();
    assert!(users.contains(&Some("app-web".into())) && users.contains(&Some("operator-bot".into())), "{users:?}");
}

/// ClusterKeyIssuers say when they are unrestricted, and serve only the namespaces their
/// policy names or selects.
#[tokio::test]
async fn cluster_issuers_serve_the_namespaces_their_policy_names_or_selects() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "policy-namespaces").await;
    let cluster_issuer = |name: &str, policy: Value| {
        let mut spec = json!({"local": {}});
        if !policy.is_null() {
            spec["policy"] = policy;
        }
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "ClusterKeyIssuer", "metadata": {"name": name}, "spec": spec})
    };
    let (open, named, selected) = (format!("{ns}-open"), format!("{ns}-named"), format!("{ns}-selected"));
    support::apply_json(&client, &ns, cluster_issuer(&open, Value::Null)).await;
    support::apply_json(&client, &ns, cluster_issuer(&named, json!({"namespaces": {"names": ["someone-else"]}}))).await;
    let selector = json!({"namespaces": {"selector": {"matchLabels": {"cloudkeys.io/tenant": ns}}}});
    support::apply_json(&client, &ns, cluster_issuer(&selected, selector)).await;
    let _op = Operator::start(&ns);
    let issuers: Api<cloudkeys::api::ClusterKeyIssuer> = Api::all(client.clone());
    let message = support::eventually("the open ClusterKeyIssuer Ready", keys::WAIT, || async {
        let i = issuers.get_opt(&open).await.ok()??;
        i.status?.conditions.into_iter().find(|c| c.type_ == "Ready" && c.status == "True").map(|c| c.message)
    })
    .await;
    assert!(message.contains("unrestricted"), "{message}");
    let cluster_key = |name: &str, issuer: &str| {
        let mut m = key(name, issuer, "local", json!({}), json!({}));
        m["spec"]["issuerRef"]["kind"] = json!("ClusterKeyIssuer");
        m
    };
    support::apply_json(&client, &ns, cluster_key("by-name", &named)).await;
    support::apply_json(&client, &ns, cluster_key("by-labels", &selected)).await;
    assert_denied(&client, &ns, "by-name", &["namespace", &ns, "someone-else"]).await;
    assert_denied(&client, &ns, "by-labels", &["namespace", &ns, "cloudkeys.io/tenant"]).await;
    // Labelled now: the selecting issuer serves it (the AccessKey is looked at again on its next
    // change; a label on the namespace is not one, so it is touched).
    let label = json!({"metadata": {"labels": {"cloudkeys.io/tenant": ns}}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("labelled");
    let touch =
        json!({"metadata": {"annotations": {"touched": "1"}}, "spec": {"secretTemplate": {"labels": {"t": "1"}}}});
    Api::<cloudkeys::api::AccessKey>::namespaced(client.clone(), &ns)
        .patch("by-labels", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .expect("touched");
    keys::wait_issued(&client, &ns, "by-labels").await;
    support::apply_json(&client, &ns, cluster_key("open", &open)).await;
    keys::wait_issued(&client, &ns, "open").await;

    // The kind left out (the most common mistake): not found, saying where it looked, which
    // issuer of that name exists and how to name it; fixed, the key follows.
    support::apply_json(&client, &ns, key("kind-left-out", &open, "local", json!({}), json!({}))).await;
    let ak = keys::wait_reason(&client, &ns, "kind-left-out", "IssuerNotFound").await;
    let (_, _, message) = keys::ready_condition(&ak).expect("condition");
    let says = [format!("not found in namespace {ns}"), format!("a ClusterKeyIssuer {open} exists")];
    for part in says.iter().map(String::as_str).chain(["kind: ClusterKeyIssuer"]) {
        assert!(message.contains(part), "{message}");
    }
    let fixed = json!({"spec": {"issuerRef": {"kind": "ClusterKeyIssuer"}}});
    Api::<cloudkeys::api::AccessKey>::namespaced(client.clone(), &ns)
        .patch("kind-left-out", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .expect("kind set");
    keys::wait_issued(&client, &ns, "kind-left-out").await;
}

async fn wait_issuer_condition(client: &Client, ns: &str, name: &str, reason: &str) -> String {
    let api: Api<cloudkeys::api::KeyIssuer> = Api::namespaced(client.clone(), ns);
    support::eventually(&format!("KeyIssuer {name} {reason}"), keys::WAIT, || async {
        let i = api.get_opt(name).await.ok()??;
        let c = i.status?.conditions.into_iter().find(|c| c.type_ == "Ready" && c.reason == reason)?;
        Some(c.message)
    })
    .await
}

/// A tenant's KeyIssuer cannot make the operator send signed requests to a host of the tenant's
/// choosing, nor mint keys as the node: refused before anything is sent anywhere.
#[tokio::test]
async fn key_issuers_cannot_point_the_operator_at_other_hosts_or_at_the_nodes_identity() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "policy-guard").await;
    let exo = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let yc = YandexFake::start();
    support::exoscale::credentials(&client, &ns, ADMIN_SECRET).await;
    let foreign = json!({"endpoint": exo.endpoint(), "credentialsSecretRef": {"name": CREDENTIALS}});
    support::apply_json(&client, &ns, key_issuer("foreign-host", "exoscale", foreign, Value::Null)).await;
    let ambient = json!({"metadataService": {"endpoint": yc.metadata_endpoint()}, "endpoint": yc.endpoint(),
        "operationEndpoint": yc.operation_endpoint(), "serviceAccountId": yc.service_account_id()});
    support::apply_json(&client, &ns, key_issuer("node-identity", "yandex", ambient, Value::Null)).await;
    // Loopback (where the fakes are) is not allowed here: it stands for any host of a tenant's choice.
    let _op = Operator::start_with(&ns, &[("CLOUDKEYS_ALLOWED_ENDPOINT_HOSTS", "*.exoscale.com,*.cloud.yandex.net")]);
    let message = wait_issuer_condition(&client, &ns, "foreign-host", "InvalidSpec").await;
    assert!(message.contains("exoscale.endpoint") && message.contains("127.0.0.1"), "{message}");
    assert!(message.contains("--allowed-endpoint-hosts"), "{message}");
    let message = wait_issuer_condition(&client, &ns, "node-identity", "InvalidSpec").await;
    assert!(message.contains("yandex.metadataService"), "{message}");
    support::apply_json(
        &client,
        &ns,
        key("exo", "foreign-host", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
    )
    .await;
    support::apply_json(&client, &ns, key("yc", "node-identity", "yandex", json!({}), json!({}))).await;
    keys::wait_reason(&client, &ns, "exo", "IssuerNotReady").await;
    keys::wait_reason(&client, &ns, "yc", "IssuerNotReady").await;
    assert!(exo.requests().is_empty(), "a request went to the KeyIssuer's host");
    assert!(yc.requests().is_empty(), "a request went to the metadata service or IAM");
}

/// The Warning a refused revocation leaves on the AccessKey, naming the key.
async fn wait_refused(client: &Client, ns: &str, name: &str, key_id: &str, seen: usize) {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    support::eventually(&format!("a RevocationRefused event on {name} for {key_id}"), keys::WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let count: i32 = list
            .items
            .iter()
            .filter(|e| {
                e.reason.as_deref() == Some("RevocationRefused")
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.name.as_deref() == Some(name)
                    && e.message.as_deref().is_some_and(|m| m.contains(key_id))
            })
            // Repeats of one event are a series on the first (kube's recorder), or a count.
            .map(|e| e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1).max(1))
            .sum();
        (usize::try_from(count).unwrap_or(0) > seen).then_some(())
    })
    .await;
}

/// Writes `retired` into an AccessKey's status, as anyone allowed to edit its status can.
async fn edit_retired(client: &Client, ns: &str, name: &str, retired: Value) {
    let api: Api<cloudkeys::api::AccessKey> = Api::namespaced(client.clone(), ns);
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": {"retired": retired}})))
        .await
        .unwrap_or_else(|e| panic!("status of {name} patched: {e}"));
}

/// A status edited to name keys the AccessKey never issued (the issuer's admin key, another
/// tenant's key, a key paired with someone else's role) revokes none of them, both when the
/// replaced keys are revoked and when the AccessKey is deleted; its own key still goes.
#[tokio::test]
async fn a_status_naming_foreign_keys_revokes_none_of_them() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "policy-foreign-keys").await;
    let clouds::Clouds { exoscale, yandex, outscale } = clouds::issuers(&client, &ns).await;
    let osc_ak = clouds::OSC_AK;
    let _op = Operator::start(&ns);
    for issuer in ["exo", "yc", "osc"] {
        wait_issuer_ready(&client, &ns, issuer).await;
    }
    support::apply_json(
        &client,
        &ns,
        key("exo-key", "exo", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
    )
    .await;
    support::apply_json(&client, &ns, key("yc-key", "yc", "yandex", json!({}), json!({}))).await;
    support::apply_json(&client, &ns, key("osc-key", "osc", "outscale", json!({"userName": "app-web"}), json!({})))
        .await;
    let mut own = Vec::new();
    let mut uids = Vec::new();
    for name in ["exo-key", "yc-key", "osc-key"] {
        let ak = keys::wait_issued(&client, &ns, name).await;
        uids.push(ak.metadata.uid.clone().expect("uid"));
        let status = ak.status.expect("status");
        own.push((status.access_key_id.expect("key id"), status.key_ref.expect("key ref")));
    }

    // Keys nobody asked this operator to issue; two of them with the AccessKey's own marker, in
    // a place the operator never puts it (a user may name a key anything).
    let lookalike = |uid: &str| format!("ck-{uid}-aaaaaaaaaa");
    let admin = exoscale.add_api_key("admin", PREEXISTING_ROLE_ID);
    let exo_lookalike = exoscale.add_api_key(&format!("{}.admin", lookalike(&uids[0])), PREEXISTING_ROLE_ID);
    let yc_foreign = yandex.add_key(&yandex.service_account_id(), &format!("{} ci pipeline", lookalike(&uids[1])));
    let (osc_foreign, _) = outscale.add_key(Some("app-web"), None);
    let entry = |id: &str, key_ref: &str, issuer: &str| json!({"accessKeyId": id, "keyRef": key_ref, "issuer": {"name": issuer, "kind": "KeyIssuer"}});
    let exo_entries = json!([
        entry(&admin.key, &format!("api-key:{}", admin.key), "exo"),
        entry(&exo_lookalike.key, &format!("api-key:{}", exo_lookalike.key), "exo"),
        // Its own key, paired with a role it did not create (the role would go with it).
        entry("own-with-role", &format!("{};role:{PREEXISTING_ROLE_ID}", own[0].1), "exo"),
    ]);
    let edits = [
        ("exo-key", exo_entries, vec![admin.key.clone(), exo_lookalike.key.clone(), "own-with-role".to_owned()]),
        ("yc-key", json!([entry(&yc_foreign.key_id, &yc_foreign.id, "yc")]), vec![yc_foreign.key_id.clone()]),
        (
            "osc-key",
            json!([
                entry(&osc_foreign.access_key_id, &format!("{};user=app-web", osc_foreign.access_key_id), "osc"),
                // The issuer's own key.
                entry(osc_ak, osc_ak, "osc"),
            ]),
            vec![osc_foreign.access_key_id.clone(), osc_ak.to_owned()],
        ),
    ];

    // (1) Replaced keys are revoked when due; entries from before rotation are due at once. Any
    // spec change makes the operator look again.
    let touch = json!({"spec": {"secretTemplate": {"labels": {"touched": "yes"}}}});
    let aks: Api<cloudkeys::api::AccessKey> = Api::namespaced(client.clone(), &ns);
    for (name, retired, _) in &edits {
        edit_retired(&client, &ns, name, retired.clone()).await;
        aks.patch(name, &PatchParams::default(), &Patch::Merge(touch.clone())).await.expect("spec touched");
    }
    for (name, _, ids) in &edits {
        for id in ids {
            wait_refused(&client, &ns, name, id, 0).await;
        }
        support::eventually(&format!("{name}'s edited entries dropped"), keys::WAIT, || async {
            let ak = aks.get(name).await.ok()?;
            ak.status.is_some_and(|s| s.retired.is_empty()).then_some(())
        })
        .await;
    }
    let issued = keys::wait_issued(&client, &ns, "exo-key").await;
    assert_eq!(issued.status.and_then(|s| s.access_key_id).as_deref(), Some(own[0].0.as_str()), "no new key");

    // (2) Deleting the AccessKeys revokes their own keys, and still none of the others.
    for (name, retired, _) in &edits {
        edit_retired(&client, &ns, name, retired.clone()).await;
        keys::delete_access_key(&client, &ns, name).await;
    }
    for (name, _, ids) in &edits {
        keys::wait_gone(&client, &ns, name).await;
        for id in ids {
            wait_refused(&client, &ns, name, id, 1).await;
        }
    }
    let exo_live: Vec<String> = exoscale.live_api_keys().into_iter().map(|k| k.key).collect();
    assert_eq!(exo_live, vec![admin.key.clone(), exo_lookalike.key.clone()], "only the foreign keys are left");
    assert!(exoscale.roles().iter().any(|r| r.id == PREEXISTING_ROLE_ID));
    let yc_live: Vec<String> = yandex.live_keys().into_iter().map(|k| k.id).collect();
    assert_eq!(yc_live, vec![yc_foreign.id.clone()]);
    let osc_live: Vec<(String, String)> =
        outscale.live_keys().into_iter().map(|k| (k.access_key_id, k.state)).collect();
    assert!(osc_live.contains(&(osc_foreign.access_key_id.clone(), "ACTIVE".to_owned())), "{osc_live:?}");
    assert!(osc_live.contains(&(osc_ak.to_owned(), "ACTIVE".to_owned())), "the issuer's key: {osc_live:?}");
    assert!(osc_live.iter().all(|(id, _)| id != &own[2].0), "its own key was revoked");
    assert!(
        exoscale.requests().iter().all(|r| r.method != "DELETE" || !r.path.contains(&admin.key)),
        "a DELETE reached the admin key"
    );
}

/// The operator's in-place update of its Secret's metadata lands only on the Secret it observed:
/// one deleted, or deleted and re-created by someone else, before the write is never adopted
/// (the real apiserver enforces the preconditions).
#[tokio::test]
async fn the_secret_metadata_update_never_adopts_a_secret_recreated_meanwhile() {
    use cloudkeys::core::secret;
    use cloudkeys::reconcile::context::FIELD_MANAGER;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{DeleteParams, PostParams};
    use kube::ResourceExt;

    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "policy-secret-precondition").await;
    // No operator runs here: the test plays its part, write by write.
    support::apply_json(&client, &ns, key("app", "nobody", "local", json!({}), json!({}))).await;
    let aks: Api<cloudkeys::api::AccessKey> = Api::namespaced(client.clone(), &ns);
    let ak = aks.get("app").await.expect("AccessKey");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let ours = secret::desired_secret_metadata(&ak, "LK1", "");
    let observed = secrets.create(&PostParams::default(), &ours).await.expect("the operator's Secret");
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let name = ak.spec.secret_name.clone();

    // Deleted and re-created by someone else, with a Secret of their own.
    secrets.delete(&name, &DeleteParams::default()).await.expect("deleted");
    let theirs = Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
        string_data: Some([("mine".to_owned(), "x".to_owned())].into()),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &theirs).await.expect("someone else's Secret");
    let update = secret::metadata_update(&ak, "LK2", &observed);
    match secrets.patch(&name, &apply, &Patch::Apply(&update)).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409, "{e:?}"),
        other => panic!("the update of a re-created Secret must conflict, got {other:?}"),
    }
    let now = secrets.get(&name).await.expect("their Secret");
    assert!(now.owner_references().is_empty(), "adopted: {:?}", now.owner_references());
    assert!(now.labels().is_empty() && now.annotations().is_empty(), "{:?}", now.metadata);

    // Deleted and not re-created: the update creates nothing.
    secrets.delete(&name, &DeleteParams::default()).await.expect("deleted");
    let e = secrets.patch(&name, &apply, &Patch::Apply(&update)).await.expect_err("nothing to update");
    assert!(matches!(e, kube::Error::Api(ref a) if a.code == 409 || a.code == 404 || a.code == 422), "{e:?}");
    assert!(secrets.get_opt(&name).await.expect("readable").is_none(), "created a Secret");

    // The Secret observed, unchanged since: updated in place.
    let fresh = secrets.create(&PostParams::default(), &ours).await.expect("the operator's Secret");
    let update = secret::metadata_update(&ak, "LK2", &fresh);
    let updated = secrets.patch(&name, &apply, &Patch::Apply(&update)).await.expect("applied");
    assert_eq!(updated.annotations().get("cloudkeys.io/access-key-id").map(String::as_str), Some("LK2"));
}
