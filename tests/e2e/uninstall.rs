//! `cloudkeys uninstall` (what the chart's pre-delete hook runs) against the real apiserver and
//! a running operator issuing `local` keys: it lists what is left and exits 1; with
//! `--revoke-all --wait` every key is revoked at the provider, every AccessKey and held issuer
//! is gone, and the tenants' namespaces can be deleted once the operator is gone too. Without
//! the operator it waits, reports what is left and exits 1, and never removes a finalizer.
//! It prints no secret.

use crate::support;
use std::time::Duration;

use cloudkeys::api::{AccessKey, ClusterKeyIssuer, KeyIssuer};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use kube::Client;
use serde_json::json;
use support::keys;
use support::operator::Operator;

const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cloudkeys(args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloudkeys"))
        .args(args)
        .env("KUBECONFIG", &support::control_plane().kubeconfig)
        .output()
        .await
        .expect("the CLI runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The operator watches every namespace, so the test has a control plane of its own, and its
/// tests take turns.
async fn cluster() -> Client {
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    client
}

async fn key_issuer(client: &Client, ns: &str) {
    support::apply_json(
        client,
        ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer",
            "metadata": {"name": "local"}, "spec": {"local": {}}}),
    )
    .await;
}

/// Issues `name` in `ns` and returns its key id and secret.
async fn issued(client: &Client, ns: &str, name: &str, extra: serde_json::Value) -> (String, String) {
    support::apply_json(client, ns, keys::manifest(name, "local", "local", json!({}), extra)).await;
    let ak = keys::wait_issued(client, ns, name).await;
    let id = ak.status.and_then(|s| s.access_key_id).expect("a key id");
    let secret = keys::secret(client, ns, &format!("{name}-credentials")).await.expect("the Secret");
    (id, keys::secret_value(&secret, "SECRET_ACCESS_KEY"))
}

fn listed(out: &Out, kind: &str, ns: &str, name: &str) -> bool {
    out.stdout.lines().any(|l| {
        let cells: Vec<&str> = l.split_whitespace().collect();
        cells.len() >= 3 && cells[0] == kind && cells[1] == ns && cells[2] == name
    })
}

#[tokio::test]
async fn uninstall_lists_what_is_left_and_revoke_all_revokes_every_key_and_frees_the_namespaces() {
    let _turn = support::one_at_a_time().await;
    let client = cluster().await;
    let home = support::namespace(&client, "uninstall-operator").await;
    let team1 = support::namespace(&client, "uninstall-team1").await;
    let team2 = support::namespace(&client, "uninstall-team2").await;
    let mut op = Operator::start_everywhere(&home, &[]);
    let cluster_issuer = format!("{home}-local");
    support::apply_json(
        &client,
        &home,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "ClusterKeyIssuer",
            "metadata": {"name": cluster_issuer}, "spec": {"local": {}}}),
    )
    .await;
    key_issuer(&client, &team1).await;
    key_issuer(&client, &team2).await;
    let mut minted = vec![
        issued(&client, &team1, "a", json!({})).await,
        issued(&client, &team1, "b", json!({})).await,
        issued(&client, &team2, "c", json!({})).await,
        issued(&client, &team2, "d", json!({"issuerRef": {"name": cluster_issuer, "kind": "ClusterKeyIssuer"}})).await,
    ];
    minted.sort();
    let ids: Vec<String> = minted.iter().map(|(id, _)| id.clone()).collect();
    let mut printed = String::new();

    // Without --revoke-all: what is left, how to proceed, exit 1, nothing touched.
    let out = cloudkeys(&["uninstall"]).await;
    printed += &format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{out:?}");
    for (ns, name) in [(&team1, "a"), (&team1, "b"), (&team2, "c"), (&team2, "d")] {
        assert!(listed(&out, "AccessKey", ns, name), "AccessKey {ns}/{name} not listed: {out:?}");
    }
    assert!(listed(&out, "KeyIssuer", &team1, "local") && listed(&out, "KeyIssuer", &team2, "local"), "{out:?}");
    assert!(listed(&out, "ClusterKeyIssuer", "-", &cluster_issuer), "{out:?}");
    assert!(out.stdout.contains("cloudkeys uninstall --revoke-all --wait"), "no way forward: {out:?}");
    let mut live = op.local_keys().await.live;
    live.sort();
    assert_eq!(live, ids, "the keys are live");
    for ns in [&team1, &team2] {
        let list = Api::<AccessKey>::namespaced(client.clone(), ns).list(&Default::default()).await.expect("list");
        assert!(list.items.iter().all(|ak| ak.metadata.deletion_timestamp.is_none()), "an AccessKey was deleted");
    }
    // --wait alone is a usage error.
    let out = cloudkeys(&["uninstall", "--wait"]).await;
    assert_eq!(out.code, 2, "{out:?}");

    // --revoke-all --wait: every key revoked at the provider, everything gone.
    let out = cloudkeys(&["uninstall", "--revoke-all", "--wait", "--timeout", "2m"]).await;
    printed += &format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{out:?}");
    let keys_now = op.local_keys().await;
    let mut revoked = keys_now.revoked.clone();
    revoked.sort();
    assert_eq!((keys_now.live, revoked), (vec![], ids), "not every key was revoked");
    for ns in [&team1, &team2] {
        let left = Api::<AccessKey>::namespaced(client.clone(), ns).list(&Default::default()).await.expect("list");
        assert!(left.items.is_empty(), "AccessKeys left in {ns}");
        assert!(Api::<KeyIssuer>::namespaced(client.clone(), ns).get_opt("local").await.expect("get").is_none());
    }
    assert!(Api::<ClusterKeyIssuer>::all(client.clone()).get_opt(&cluster_issuer).await.expect("get").is_none());
    let out = cloudkeys(&["uninstall"]).await;
    assert_eq!(out.code, 0, "nothing is left, yet: {out:?}");

    // The operator goes, as `helm uninstall` then deletes it: nothing holds the namespaces.
    op.kill();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [&team1, &team2] {
        namespaces.delete(ns, &DeleteParams::default()).await.expect("namespace delete accepted");
    }
    for ns in [&team1, &team2] {
        support::eventually(&format!("namespace {ns} to be deleted"), WAIT, || async {
            namespaces.get_opt(ns).await.expect("namespaces readable").is_none().then_some(())
        })
        .await;
    }
    for (_, secret) in &minted {
        assert!(!printed.contains(secret.as_str()), "uninstall printed a secret");
    }
}

#[tokio::test]
async fn without_the_operator_revoke_all_reports_what_is_left_and_never_removes_a_finalizer() {
    let _turn = support::one_at_a_time().await;
    let client = cluster().await;
    let home = support::namespace(&client, "uninstall-stopped-operator").await;
    let team = support::namespace(&client, "uninstall-stopped-team").await;
    let mut op = Operator::start_everywhere(&home, &[]);
    key_issuer(&client, &team).await;
    issued(&client, &team, "a", json!({})).await;
    op.kill();

    let out = cloudkeys(&["uninstall", "--revoke-all", "--wait", "--timeout", "3s"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("Is the operator running?"), "{out:?}");
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("AccessKey"))
        .unwrap_or_else(|| panic!("nothing left listed: {out:?}"));
    assert!(row.contains(&team) && row.contains(" yes ") && row.contains("cloudkeys.io/revoke"), "{row}");
    let accesskeys: Api<AccessKey> = Api::namespaced(client.clone(), &team);
    let ak = accesskeys.get("a").await.expect("the AccessKey is still there");
    assert!(ak.metadata.deletion_timestamp.is_some(), "not deleted");
    assert!(
        ak.metadata.finalizers.unwrap_or_default().contains(&"cloudkeys.io/revoke".to_string()),
        "the finalizer was removed by hand"
    );

    // The operator back: the same command finishes the job.
    op.restart();
    let out = cloudkeys(&["uninstall", "--revoke-all", "--wait", "--timeout", "2m"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    keys::wait_gone(&client, &team, "a").await;
    op.kill();
}
