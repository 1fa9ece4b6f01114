//! The `cloudkeys` CLI (and `kubectl cloudkeys`) against the real apiserver and a running
//! operator with keys from each provider's fake: `status`, `inspect`, `rotate` followed by the
//! operator's rotation seen through `status`, `check` turning unhealthy with an issuer that is
//! not Ready, the exit codes; and no secret the fakes issued on screen, in any command's output.

use crate::{clouds, fakes, support};
use std::path::Path;
use std::sync::Mutex;

use cloudkeys::api::KeyIssuer;
use fakes::exoscale::PREEXISTING_ROLE_ID;
use kube::api::Api;
use serde_json::{json, Value};
use support::keys;
use support::operator::Operator;

/// What one command printed, and its exit code.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the CLI and keeps everything it printed, to look for secrets in at the end.
#[derive(Default)]
struct Screen {
    seen: Mutex<String>,
}

impl Screen {
    async fn run(&self, program: &Path, args: &[&str]) -> Out {
        let cp = support::control_plane();
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-cloudkeys")).parent().expect("bin dir").to_path_buf();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let out = tokio::process::Command::new(program)
            .args(args)
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("PATH", path)
            .output()
            .await
            .expect("the CLI runs");
        let out = Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.push_str(&out.stdout);
        seen.push_str(&out.stderr);
        out
    }

    async fn cloudkeys(&self, args: &[&str]) -> Out {
        self.run(Path::new(env!("CARGO_BIN_EXE_cloudkeys")), args).await
    }

    /// `kubectl cloudkeys …`: kubectl finds the plugin on PATH.
    async fn kubectl(&self, args: &[&str]) -> Out {
        let kubectl = support::kubectl();
        let mut all = vec!["cloudkeys"];
        all.extend_from_slice(args);
        self.run(&kubectl, &all).await
    }

    /// `status NAME -o json`, parsed.
    async fn status_json(&self, ns: &str, name: &str) -> Value {
        let out = self.cloudkeys(&["status", name, "-n", ns, "-o", "json"]).await;
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status -o json is JSON ({e}): {out:?}"))
    }

    /// None of `secrets` was printed, as is or base64-encoded (as a Secret's data would be).
    fn assert_no_secret(&self, secrets: &[String]) {
        use base64::Engine;
        assert!(!secrets.is_empty(), "no secrets to look for: the check would prove nothing");
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        assert!(seen.len() > 1000, "the commands printed almost nothing: {seen}");
        for s in secrets {
            let encoded = base64::engine::general_purpose::STANDARD.encode(s);
            assert!(!seen.contains(s.as_str()), "a secret was printed by the CLI");
            assert!(!seen.contains(&encoded), "a secret was printed by the CLI, base64-encoded");
        }
    }
}

fn labelled(mut manifest: Value, labels: Value) -> Value {
    manifest["metadata"]["labels"] = labels;
    manifest
}

#[tokio::test]
async fn status_inspect_and_rotate_show_and_steer_keys_without_printing_a_secret() {
    // Both tests here take a cluster of their own: `check` judges every ClusterKeyIssuer in the
    // cluster, other tests' too, and under plain `cargo test` the two share one process.
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "cli").await;
    let clouds::Clouds { exoscale, yandex, outscale } = clouds::issuers(&client, &ns).await;
    let _op = Operator::start(&ns);
    let web = json!({"team": "web"});
    let manifests = [
        labelled(
            keys::manifest("exo-key", "exo", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
            web.clone(),
        ),
        labelled(keys::manifest("yc-key", "yc", "yandex", json!({}), json!({})), web),
        keys::manifest("osc-key", "osc", "outscale", json!({"userName": clouds::OSC_USER}), json!({})),
        keys::manifest("no-issuer", "gone", "local", json!({}), json!({})),
    ];
    for m in &manifests {
        support::apply_json(&client, &ns, m.clone()).await;
    }
    let mut old = Vec::new();
    for name in ["exo-key", "yc-key", "osc-key"] {
        old.push(keys::wait_issued(&client, &ns, name).await.status.and_then(|s| s.access_key_id).expect("key id"));
    }
    keys::wait_reason(&client, &ns, "no-issuer", "IssuerNotFound").await;
    let screen = Screen::default();

    // status: a table of every AccessKey, exit 1 while one is not Ready; one Ready AccessKey: 0.
    let out = screen.cloudkeys(&["status", "-n", &ns]).await;
    assert_eq!(out.code, 1, "one AccessKey is not Ready: {out:?}");
    for (name, id) in ["exo-key", "yc-key", "osc-key"].iter().zip(&old) {
        let row = out.stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} listed: {out:?}"));
        assert!(row.contains("True") && row.contains("Issued") && row.contains(id.as_str()), "{row}");
    }
    assert!(out.stdout.lines().any(|l| l.starts_with("no-issuer") && l.contains("IssuerNotFound")), "{out:?}");
    assert!(out.stdout.lines().all(|l| l.chars().count() <= 100), "wider than 100 columns: {}", out.stdout);
    let out = screen.cloudkeys(&["status", "exo-key", "-n", &ns]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let out = screen.cloudkeys(&["status", "-A", "-o", "wide"]).await;
    assert!(out.stdout.starts_with("NAMESPACE") && out.stdout.contains("REPLACED"), "{out:?}");
    let out = screen.cloudkeys(&["status", "-n", &ns, "-o", "yaml"]).await;
    let listed: Value = serde_norway::from_str(&out.stdout).expect("status -o yaml is YAML");
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(4), "{listed}");
    let exo = screen.status_json(&ns, "exo-key").await;
    assert_eq!(exo["keyId"], old[0].as_str());
    assert_eq!(exo["ready"], "True");
    assert_eq!(exo["issuer"]["name"], "exo");

    // inspect: the Secret's key names, never its values, and what the operator does next.
    let out = screen.cloudkeys(&["inspect", "exo-key", "-n", &ns]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let secret = keys::secret(&client, &ns, "exo-key-credentials").await.expect("the Secret");
    let names: Vec<&str> = secret.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
    assert!(names.len() >= 2, "{names:?}");
    let shown = out.stdout.split("\nSecret ").nth(1).unwrap_or_default();
    assert!(shown.contains(&format!("Data keys:      {}\n", names.join(", "))), "{}", out.stdout);
    assert!(shown.contains(&format!("Key ID:         {}\n", old[0])), "{}", out.stdout);
    assert!(out.stdout.contains("nothing: the key is in place"), "{}", out.stdout);
    let events = out.stdout.split("\nEvents:\n").nth(1).unwrap_or_default();
    assert!(events.contains("Normal") && events.contains("Issued"), "the Issued event is shown: {}", out.stdout);
    let out = screen.cloudkeys(&["inspect", "no-issuer", "-n", &ns]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("report Ready=False (IssuerNotFound): KeyIssuer gone not found"), "{}", out.stdout);

    // rotate NAME: one line; the operator replaces the key, and status shows it with the old
    // key awaiting revocation.
    let out = screen.cloudkeys(&["rotate", "exo-key", "-n", &ns]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.starts_with(&format!("accesskey {ns}/exo-key: rotation requested (cloudkeys.io/rotate=")),
        "{out:?}"
    );
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    let rotated = support::eventually("exo-key rotated, seen through cloudkeys status", keys::WAIT, || async {
        let s = screen.status_json(&ns, "exo-key").await;
        (s["keyId"] != old[0].as_str() && s["ready"] == "True").then_some(s)
    })
    .await;
    let replaced = rotated["replacedKeys"].as_array().cloned().unwrap_or_default();
    assert!(replaced.iter().any(|r| r["keyId"] == old[0].as_str()), "the old key awaits revocation: {rotated}");
    let out = screen.cloudkeys(&["inspect", "exo-key", "-n", &ns]).await;
    assert!(out.stdout.contains(&format!("Replaced key:   {}", old[0])), "{}", out.stdout);

    // rotate -l --immediate: one line each, and the replaced keys are revoked at once.
    let out = screen.cloudkeys(&["rotate", "-l", "team=web", "-n", &ns, "--immediate"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
    assert!(out.stdout.lines().all(|l| l.ends_with("the replaced key is revoked at once")), "{out:?}");
    let exo_second = rotated["keyId"].as_str().expect("key id").to_string();
    for (name, before) in [("exo-key", exo_second.as_str()), ("yc-key", old[1].as_str())] {
        support::eventually(&format!("{name} rotated at once"), keys::WAIT, || async {
            let s = screen.status_json(&ns, name).await;
            let replaced = s["replacedKeys"].as_array().map(Vec::len).unwrap_or(0);
            // exo-key's first replaced key went first (two live keys at most); the one replaced
            // now goes at once.
            let gone = !s["replacedKeys"].to_string().contains(before);
            (s["keyId"] != before && gone && replaced <= 1).then_some(())
        })
        .await;
    }

    // rotate --all, through kubectl's plugin mechanism.
    let out = screen.kubectl(&["rotate", "--all", "-n", &ns]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 4, "one line per AccessKey: {out:?}");
    support::eventually("osc-key rotated", keys::WAIT, || async {
        (screen.status_json(&ns, "osc-key").await["keyId"] != old[2].as_str()).then_some(())
    })
    .await;
    let out = screen.kubectl(&["status", "osc-key", "-n", &ns]).await;
    assert_eq!(out.code, 0, "{out:?}");

    // Usage errors exit 2; nothing to rotate or an unknown name exits 1.
    assert_eq!(screen.cloudkeys(&["rotate", "-n", &ns]).await.code, 2);
    assert_eq!(
        screen.cloudkeys(&["rotate", "-l", "", "-n", &ns]).await.code,
        2,
        "an empty selector matches everything"
    );
    assert_eq!(screen.cloudkeys(&["status", "-o", "bogus"]).await.code, 2);
    assert_eq!(screen.cloudkeys(&["status", "exo-key", "-A"]).await.code, 2);
    assert_eq!(screen.cloudkeys(&["rotate", "-l", "team=nobody", "-n", &ns]).await.code, 1);
    let out = screen.cloudkeys(&["inspect", "nope", "-n", &ns]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not found"), "{out:?}");

    for name in ["exo-key", "yc-key", "osc-key"] {
        screen.cloudkeys(&["inspect", name, "-n", &ns]).await;
        screen.cloudkeys(&["status", name, "-n", &ns, "-o", "yaml"]).await;
    }
    // The issuers' own credentials, too.
    let mut secrets = vec![support::exoscale::ADMIN_SECRET.to_string(), clouds::OSC_SK.to_string()];
    // A line from the middle of the Yandex issuer's private key.
    let pem: Vec<&str> = fakes::yandex::ADMIN_PRIVATE_KEY_PEM.lines().collect();
    secrets.push(pem[pem.len() / 2].to_string());
    secrets.extend(exoscale.issued_secrets());
    secrets.extend(yandex.issued_secrets());
    secrets.extend(outscale.issued_secrets());
    assert!(secrets.len() >= 11, "every key and its replacements were issued: {}", secrets.len());
    screen.assert_no_secret(&secrets);
}

#[tokio::test]
async fn check_fails_while_an_issuer_is_not_ready_and_passes_when_all_is_well() {
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "cli-check").await;
    let local = json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "local"},
        "spec": {"local": {}}});
    support::apply_json(&client, &ns, local).await;
    let _op = Operator::start(&ns);
    let issuers: Api<KeyIssuer> = Api::namespaced(client.clone(), &ns);
    let screen = Screen::default();
    let args = ["check", "-n", &ns, "--operator-namespace", &ns];
    let check = || screen.cloudkeys(&args);

    // All is well once the operator leads and has found its issuer Ready.
    let out = support::eventually_explained("check to pass", keys::WAIT, || async {
        let out = check().await;
        if out.code == 0 {
            Ok(out)
        } else {
            Err(format!("{out:?}"))
        }
    })
    .await;
    for (line, says) in [("crds", "ok"), ("leader", "ok"), ("issuers", "ok"), ("grants", "ok"), ("orphans", "ok")] {
        assert!(out.stdout.lines().any(|l| l.starts_with(line) && l.contains(says)), "{line} {says}: {}", out.stdout);
    }
    assert!(out.stdout.contains("KeyIssuer ") && out.stdout.contains("/local"), "{}", out.stdout);

    // An issuer whose credentials Secret does not exist is not Ready: check fails and names it.
    let broken = json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "exo-broken"},
        "spec": {"exoscale": {"endpoint": "http://127.0.0.1:9", "credentialsSecretRef": {"name": "nowhere"}}}});
    support::apply_json(&client, &ns, broken).await;
    support::eventually("exo-broken checked", keys::WAIT, || async {
        let status = issuers.get("exo-broken").await.ok()?.status?;
        status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "False").then_some(())
    })
    .await;
    let out = check().await;
    assert_eq!(out.code, 1, "{out:?}");
    let issuers_line = out.stdout.lines().find(|l| l.starts_with("issuers")).expect("issuers line");
    assert!(issuers_line.contains("FAIL") && out.stdout.contains("exo-broken"), "{}", out.stdout);
    let out = screen.cloudkeys(&["check", "-n", &ns, "--operator-namespace", &ns, "-o", "json"]).await;
    let report: Value = serde_json::from_str(&out.stdout).expect("check -o json is JSON");
    assert_eq!(report["healthy"], false);

    // Every unbounded grant is a warning naming the issuer and what would bound it: any role (and
    // any role policy, legacy keys without resources) for exo-broken, which has no policy, any
    // service account and any user for these two.
    let open = [
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "yc-any"},
            "spec": {"yandex": {"serviceAccountKeySecretRef": {"name": "nowhere"}},
                "policy": {"yandex": {"serviceAccountIds": ["*"]}}}}),
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "osc-any"},
            "spec": {"outscale": {"region": "eu-west-2", "credentialsSecretRef": {"name": "nowhere"}},
                "policy": {"outscale": {"allowIssuerIdentity": true}}}}),
    ];
    for issuer in &open {
        support::apply_json(&client, &ns, issuer.clone()).await;
    }
    // Wide: one line per finding, however long.
    let out = screen.cloudkeys(&["check", "-n", &ns, "--operator-namespace", &ns, "-o", "wide"]).await;
    let warning = |issuer: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with("grants") && l.contains(&format!("KeyIssuer {ns}/{issuer} ")))
            .unwrap_or_else(|| panic!("no grants line for {issuer}: {}", out.stdout))
            .to_string()
    };
    let exo = warning("exo-broken");
    assert!(exo.contains("warn") && exo.contains("any existing role") && exo.contains("roleIds"), "{exo}");
    assert!(exo.contains("legacy access keys") && exo.contains("without resources"), "{exo}");
    let yc = warning("yc-any");
    assert!(yc.contains("warn") && yc.contains("any service account"), "{yc}");
    let osc = warning("osc-any");
    assert!(osc.contains("any EIM user") && osc.contains("allowIssuerIdentity: true"), "{osc}");
    assert!(!out.stdout.lines().any(|l| l.starts_with("grants") && l.contains("/local ")), "{}", out.stdout);
    let out = screen.cloudkeys(&["check", "-n", &ns, "--operator-namespace", &ns, "-o", "json"]).await;
    let report: Value = serde_json::from_str(&out.stdout).expect("check -o json is JSON");
    let listed = report["issuers"].as_array().expect("issuers").iter().find(|i| i["name"] == "yc-any").cloned();
    let grants = listed.expect("yc-any listed")["unboundedGrants"].to_string();
    assert!(grants.contains("any service account"), "{grants}");
    for name in ["yc-any", "osc-any"] {
        issuers.delete(name, &Default::default()).await.expect("deleted");
    }

    // A Lease nobody holds is a failure too.
    let out = screen.cloudkeys(&["check", "-n", &ns, "--operator-namespace", "kube-public"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("no Lease cloudkeys-leader in namespace kube-public"), "{}", out.stdout);

    // Fixed, all is well again.
    issuers.delete("exo-broken", &Default::default()).await.expect("deleted");
    support::eventually_explained("check to pass again", keys::WAIT, || async {
        let out = check().await;
        if out.code == 0 {
            Ok(())
        } else {
            Err(format!("{out:?}"))
        }
    })
    .await;
}
