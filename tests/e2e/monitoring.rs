//! The chart's alerts and dashboard, with Prometheus' own tools (Debian's `prometheus` package,
//! installed by `scripts/monitoring.sh deps`): `promtool check rules` and `promtool test rules`
//! on the rules file the chart renders its PrometheusRule from; the chart renders the
//! PrometheusRule and the dashboard ConfigMap only when asked; a real Prometheus server scrapes
//! the running operator, evaluates the rules and fires the alert for a broken issuer; and every
//! metric a rule or a panel names is in the operator's `/metrics`.

use crate::{fakes, support};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cloudkeys::api::KeyIssuer;
use fakes::exoscale::{ExoscaleFake, Faults, PREEXISTING_ROLE_ID};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::Client;
use serde_json::{json, Value};
use support::exoscale::{self, ADMIN_KEY, ADMIN_SECRET};
use support::keys;
use support::operator::Operator;

const RULES: &str = "charts/cloudkeys/rules/cloudkeys.rules.yaml";
const RULE_TESTS: &str = "tests/monitoring/cloudkeys.rules.test.yaml";
const DASHBOARD: &str = "charts/cloudkeys/dashboards/cloudkeys.json";
const WAIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Tools.

/// The path of `tool` on PATH; panics with the command that installs it when it is missing.
fn tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| p.is_file()).unwrap_or_else(|| {
        panic!("`{tool}` is missing: install it with `scripts/monitoring.sh deps` (or `make monitoring-deps`)")
    })
}

fn repo(path: &str) -> PathBuf {
    support::repo_root().join(path)
}

/// Runs `promtool ARGS`; returns whether it succeeded and what it printed.
fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(tool("promtool")).args(args).current_dir(dir).output().expect("promtool runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("$ promtool {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

/// YAML documents as JSON, through PyYAML (installed with helm-sdkpy by `make helm-deps`).
fn yaml_docs(text: &str) -> Vec<Value> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(python)
        .args(["-c", "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    {
        use std::io::Write;
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("YAML written to python3");
    }
    let out = child.wait_with_output().expect("python3 finishes");
    assert!(
        out.status.success(),
        "PyYAML cannot read the YAML (missing? `make helm-deps`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python3")
}

fn yaml_file(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    yaml_docs(&text).into_iter().next().unwrap_or_else(|| panic!("{path} is empty"))
}

/// The alerts of a rules file (its `groups`): name → rule.
fn alerts(groups: &Value) -> BTreeMap<String, Value> {
    groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .filter_map(|r| Some((r["alert"].as_str()?.to_string(), r.clone())))
        .collect()
}

/// The metric names in PromQL expressions: every metric of the operator starts with `cloudkeys_`.
fn metric_names<'a>(exprs: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let name = regex::Regex::new(r"\bcloudkeys_[a-zA-Z0-9_]+").expect("regex");
    exprs.into_iter().flat_map(|e| name.find_iter(e).map(|m| m.as_str().to_string()).collect::<Vec<_>>()).collect()
}

fn rule_exprs(groups: &Value) -> Vec<String> {
    alerts(groups).values().map(|r| r["expr"].as_str().expect("expr").to_string()).collect()
}

fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// The names of the series Prometheus gets from an exposition: the samples', and those each
/// `# TYPE` line promises (a counter `x` is scraped as `x_total`, a histogram as `x_bucket`,
/// `x_sum` and `x_count`), so that a counter nothing has counted yet counts as there.
fn exposed_names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut declared = BTreeSet::new();
    let mut sampled = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            declared.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            sampled.insert(line[..end].to_string());
        }
    }
    (declared.union(&sampled).cloned().collect(), sampled)
}

// ---------------------------------------------------------------------------------------------
// The chart, rendered by Helm's own library (tests/helm/helm.py).

/// A stand-in for the Prometheus Operator's PrometheusRule CRD: Helm's throwaway install (all
/// `helm.py template` can do) needs the kind to exist; its schema is not under test here.
async fn prometheus_rule_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "prometheusrules.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": {"plural": "prometheusrules", "singular": "prometheusrule", "kind": "PrometheusRule", "listKind": "PrometheusRuleList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .expect("CRD");
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("cannot create the PrometheusRule CRD: {e}"),
    }
    support::eventually("the PrometheusRule CRD to be established", WAIT, || {
        let crds = crds.clone();
        async move {
            let crd = crds.get("prometheusrules.monitoring.coreos.com").await.ok()?;
            let established = crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;
}

/// `helm template` of the chart as release `ns` in `ns`, without its CRDs, with `--set` each of
/// `sets`: the objects, or Helm's complaint.
fn template(ns: &str, sets: &[&str]) -> Result<Vec<Value>, String> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let kubeconfig = support::control_plane().kubeconfig.to_string_lossy().into_owned();
    let chart = repo("charts/cloudkeys").to_string_lossy().into_owned();
    // The CRDs are the shared cluster's already, owned by no release: not this one's to render.
    // No uninstall hook either: `helm.py template` uninstalls its throwaway release, and no Job
    // controller runs in the test cluster to complete the hook's Job.
    let mut args = vec!["template", ns, chart.as_str(), ns, "--kubeconfig", kubeconfig.as_str()];
    args.extend(["--set", "crds.enabled=false", "--set", "uninstall.policy=None"]);
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = Command::new(python).arg(repo("tests/helm/helm.py")).args(&args).output().expect("python3 runs");
    assert_ne!(out.status.code(), Some(3), "helm-sdkpy is missing: install it with `make helm-deps`");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(yaml_docs(&String::from_utf8_lossy(&out.stdout)))
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn dashboard_config_maps(objects: &[Value]) -> Vec<&Value> {
    find(objects, "ConfigMap").into_iter().filter(|c| c["data"].get("cloudkeys.json").is_some()).collect()
}

/// The chart's PrometheusRule rendered with `sets` (and the rules enabled): its `spec`, a rules
/// file as Prometheus and promtool read it.
async fn rendered_rules(client: &Client, ns: &str, sets: &[&str]) -> Value {
    prometheus_rule_crd(client).await;
    let mut all = vec!["prometheus.rules.enabled=true"];
    all.extend_from_slice(sets);
    let objects = template(ns, &all).unwrap_or_else(|e| panic!("helm template {all:?} failed:\n{e}"));
    let rules = find(&objects, "PrometheusRule");
    assert_eq!(rules.len(), 1, "one PrometheusRule: {objects:#?}");
    rules[0]["spec"].clone()
}

// ---------------------------------------------------------------------------------------------
// promtool on the rules file.

#[test]
fn promtool_checks_the_rules_file_and_its_unit_tests_pass() {
    let root = support::repo_root();
    let (ok, out) = promtool(&["check", "rules", RULES], root);
    assert!(ok && out.contains("SUCCESS"), "promtool check rules failed:\n{out}");
    let (ok, out) = promtool(&["test", "rules", RULE_TESTS], root);
    assert!(ok && out.contains("SUCCESS"), "promtool test rules failed:\n{out}");
}

#[test]
fn every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() {
    let alerts = alerts(&yaml_file(RULES));
    assert!(alerts.len() >= 9, "{alerts:?}");
    let tests = yaml_file(RULE_TESTS);
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    for (name, rule) in &alerts {
        let of = |fires: bool| {
            cases.iter().any(|c| {
                c["alertname"] == name.as_str() && c["exp_alerts"].as_array().is_some_and(|a| a.is_empty() != fires)
            })
        };
        assert!(of(true), "no unit test in {RULE_TESTS} where {name} fires");
        assert!(of(false), "no unit test in {RULE_TESTS} where {name} does not fire");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["warning", "critical"].contains(&severity), "{name}: severity {severity:?}");
        assert!(rule["annotations"]["summary"].is_string() && rule["annotations"]["description"].is_string(), "{name}");
        assert!(rule["for"].is_string(), "{name} has no `for`");
    }
    for case in &cases {
        let name = case["alertname"].as_str().unwrap_or_default();
        assert!(alerts.contains_key(name), "{RULE_TESTS} tests {name}, which is no alert");
    }
}

/// The dashboard is valid JSON of a Grafana dashboard whose panels all ask the data source
/// chosen in the dashboard.
#[test]
fn the_dashboard_is_a_grafana_dashboard_on_a_chosen_data_source() {
    let text = std::fs::read_to_string(repo(DASHBOARD)).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "cloudkeys");
    assert!(dashboard["templating"]["list"].as_array().expect("templating").iter().any(|v| v["type"] == "datasource"));
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().expect("id")), "duplicate panel id {}", p["id"]);
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            assert!(!p["targets"].as_array().expect("targets").is_empty(), "{} asks nothing", p["title"]);
        }
    }
    assert!(dashboard_exprs(&dashboard).len() >= 20);
}

// ---------------------------------------------------------------------------------------------
// The chart.

#[tokio::test]
async fn the_chart_renders_the_rules_and_the_dashboard_only_when_enabled() {
    let client = support::client().await;
    prometheus_rule_crd(&client).await;

    let ns = support::namespace(&client, "monitoring-off").await;
    let objects = template(&ns, &[]).expect("helm template with the defaults");
    assert!(find(&objects, "PrometheusRule").is_empty(), "a PrometheusRule by default");
    assert!(dashboard_config_maps(&objects).is_empty(), "a dashboard by default");
    assert!(!find(&objects, "Deployment").is_empty(), "the chart rendered nothing at all");

    // Enabled, with one alert's `for` and the labels changed: the rules file's groups, exactly,
    // but for those.
    let ns = support::namespace(&client, "monitoring-on").await;
    let objects = template(
        &ns,
        &[
            "prometheus.rules.enabled=true",
            "prometheus.rules.labels.release=prometheus",
            "prometheus.rules.for.CloudkeysIssuerNotReady=42m",
            "prometheus.rules.alertLabels.team=platform",
            "grafana.dashboard.enabled=true",
            "grafana.dashboard.annotations.grafana_folder=Platform",
        ],
    )
    .expect("helm template with the rules and the dashboard");
    let rules = find(&objects, "PrometheusRule");
    assert_eq!(rules.len(), 1);
    let rule = rules[0];
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], ns.as_str());
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let mut want = yaml_file(RULES);
    for group in want["groups"].as_array_mut().expect("groups") {
        for r in group["rules"].as_array_mut().expect("rules") {
            if r["alert"] == "CloudkeysIssuerNotReady" {
                r["for"] = json!("42m");
            }
            r["labels"]["team"] = json!("platform");
        }
    }
    assert_eq!(rule["spec"], want, "the PrometheusRule is not the rules file with the values applied");

    let maps = dashboard_config_maps(&objects);
    assert_eq!(maps.len(), 1);
    assert_eq!(maps[0]["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(maps[0]["metadata"]["annotations"]["grafana_folder"], "Platform");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).expect("dashboard")).unwrap();
    let shipped: Value = serde_json::from_str(maps[0]["data"]["cloudkeys.json"].as_str().expect("data")).unwrap();
    assert_eq!(shipped, file, "the ConfigMap does not hold the dashboard file");

    // The rendered rules are valid for promtool too.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("rendered.yaml"), serde_json::to_string_pretty(&rule["spec"]).unwrap()).unwrap();
    let (ok, out) = promtool(&["check", "rules", "rendered.yaml"], dir.path());
    assert!(ok, "promtool check rules on the rendered PrometheusRule failed:\n{out}");

    // The schema refuses what Prometheus would not read.
    for (set, complaint) in [
        ("prometheus.rules.for.CloudkeysIssuerNotReady=soon", "/prometheus/rules/for/CloudkeysIssuerNotReady"),
        ("prometheus.rules.for.issuer=1m", "invalid propertyName 'issuer'"),
        ("grafana.dashboard.namespace=Not_A_Namespace", "/grafana/dashboard/namespace"),
    ] {
        let ns = support::namespace(&client, "monitoring-schema").await;
        let refused = template(&ns, &["prometheus.rules.enabled=true", set]).expect_err(set);
        assert!(refused.contains("schema") && refused.contains(complaint), "{set}: {refused}");
    }

    // A `for` of no alert is refused, naming the alerts.
    let ns = support::namespace(&client, "monitoring-typo").await;
    let refused = template(&ns, &["prometheus.rules.enabled=true", "prometheus.rules.for.CloudkeysIssuerNotRedy=1m"])
        .expect_err("a `for` of an alert that does not exist");
    assert!(refused.contains("no such alert") && refused.contains("CloudkeysIssuerNotReady"), "{refused}");
}

// ---------------------------------------------------------------------------------------------
// The operator, scraped.

/// An operator with a Ready `local` issuer and AccessKey `ok`, and an Exoscale issuer whose
/// credentials the (fake) provider refuses, with the AccessKey `broken` waiting on it.
struct Env {
    client: Client,
    ns: String,
    _fake: ExoscaleFake,
    op: Operator,
}

async fn setup(test: &str, env: &[(&str, &str)]) -> Env {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, test).await;
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    exoscale::issuer_with_credentials(&client, &ns, &fake.endpoint(), "wrongsecretwrongsecretwrongsecretwrongsecre")
        .await;
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "local"}, "spec": {"local": {}}}),
    )
    .await;
    support::apply_json(&client, &ns, keys::manifest("ok", "local", "local", json!({}), json!({}))).await;
    support::apply_json(
        &client,
        &ns,
        keys::manifest("broken", "exoscale", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
    )
    .await;
    let op = Operator::start_with(&ns, env);
    keys::wait_issued(&client, &ns, "ok").await;
    keys::wait_reason(&client, &ns, "broken", "IssuerNotReady").await;
    Env { client, ns, _fake: fake, op }
}

async fn get_text(url: &str) -> Result<String, String> {
    let response = reqwest::get(url).await.map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status}: {body}"));
    }
    Ok(body)
}

#[tokio::test]
async fn every_metric_of_the_rules_and_the_dashboard_is_in_the_operators_metrics() {
    // Drift checks at once, so that their series exist.
    let env = setup("monitoring-metrics", &[("CLOUDKEYS_DRIFT_CHECK_INTERVAL", "2s")]).await;
    // A Ready issuer whose provider then fails every call: the reconciliations of its
    // AccessKey fail, so that failed reconciliations have their series.
    let flaky = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let good = json!({"EXOSCALE_API_KEY": ADMIN_KEY, "EXOSCALE_API_SECRET": ADMIN_SECRET});
    support::create_secret(&env.client, &env.ns, "exoscale-good", good).await;
    support::apply_json(
        &env.client,
        &env.ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "flaky"},
            "spec": {"exoscale": {"endpoint": flaky.endpoint(), "credentialsSecretRef": {"name": "exoscale-good"}}}}),
    )
    .await;
    let issuers: Api<KeyIssuer> = Api::namespaced(env.client.clone(), &env.ns);
    support::eventually("the issuer flaky to be Ready", WAIT, || {
        let issuers = issuers.clone();
        async move {
            let i = issuers.get("flaky").await.ok()?;
            i.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
        }
    })
    .await;
    flaky.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
    support::apply_json(
        &env.client,
        &env.ns,
        keys::manifest("failing", "flaky", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
    )
    .await;
    let url = format!("{}/metrics", env.op.http_base().await);
    let broken = format!(
        r#"cloudkeys_access_key_not_ready{{namespace="{ns}",name="broken",issuer="KeyIssuer {ns}/exoscale",reason="IssuerNotReady"}} 1"#,
        ns = env.ns
    );
    // The leader's gauge and the broken key's series, once its cache has the key's status.
    let text = support::eventually_explained("the leader's /metrics with every kind of series", WAIT, || {
        let (url, broken) = (url.clone(), broken.clone());
        async move {
            let text = get_text(&url).await?;
            let there = [
                "\ncloudkeys_leader 1\n",
                &broken,
                "\ncloudkeys_reconcile_errors_total{",
                "\ncloudkeys_orphaned_keys{",
            ];
            there
                .iter()
                .all(|s| text.contains(s))
                .then_some(text.clone())
                .ok_or_else(|| format!("not there yet:\n{text}"))
        }
    })
    .await;
    assert!(!text.contains(r#"name="ok",issuer"#), "the Ready AccessKey has a not-Ready series:\n{text}");

    let (exposed, sampled) = exposed_names(&text);
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(repo(DASHBOARD)).unwrap()).unwrap();
    let rules = rule_exprs(&yaml_file(RULES));
    let panels = dashboard_exprs(&dashboard);
    for (what, exprs) in [("the rules", &rules), ("the dashboard", &panels)] {
        let used = metric_names(exprs.iter().map(String::as_str));
        assert!(used.len() >= 5, "{what}: {used:?}");
        let missing: Vec<_> = used.difference(&exposed).collect();
        assert!(missing.is_empty(), "{what} use metrics the operator does not expose: {missing:?}\n/metrics:\n{text}");
        let unsampled: Vec<_> = used.difference(&sampled).collect();
        println!("{what}: {} metrics, all exposed; declared but no series yet: {unsampled:?}", used.len());
    }
    // The names are checked against something: a name that does not exist is found missing.
    assert!(!exposed.contains("cloudkeys_issuers_not_ready"));
}

/// A Prometheus server of the test's own, on loopback, with its own configuration and data.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` (host:port) every second and evaluates `rules` every second.
    async fn start(target: &str, rules: &Value) -> Self {
        let bin = tool("prometheus");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("rules.yaml"), serde_json::to_string_pretty(rules).unwrap()).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yaml\n\
             scrape_configs:\n  - job_name: cloudkeys\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.path().join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("prometheus starts");
        let p = Self { child, base: format!("http://127.0.0.1:{port}"), log, _dir: dir };
        let ready = format!("{}/-/ready", p.base);
        support::eventually_explained("Prometheus to be ready", WAIT, || {
            let ready = ready.clone();
            async move { get_text(&ready).await.map(|_| ()) }
        })
        .await;
        p
    }

    async fn api(&self, path: &str) -> Result<Value, String> {
        let text = get_text(&format!("{}/api/v1/{path}", self.base)).await?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{path}: {e}: {text}"))?;
        (v["status"] == "success").then(|| v["data"].clone()).ok_or_else(|| format!("{path}: {text}"))
    }

    /// Prometheus' own count of the evaluations of the rule group.
    async fn evaluations(&self) -> String {
        let text = get_text(&format!("{}/metrics", self.base)).await.unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with("prometheus_rule_group_iterations_total{"))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("?")
            .to_string()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_operator_and_fires_the_broken_issuers_alert() {
    let env = setup("monitoring-e2e", &[]).await;
    // The chart's rules as the chart renders them, with the issuer alert's `for` shortened.
    let chart_ns = support::namespace(&env.client, "monitoring-e2e-chart").await;
    let rules = rendered_rules(&env.client, &chart_ns, &["prometheus.rules.for.CloudkeysIssuerNotReady=3s"]).await;
    assert_eq!(alerts(&rules)["CloudkeysIssuerNotReady"]["for"], "3s");
    let base = env.op.http_base().await;
    let target = base.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&target, &rules).await;

    let issuer = format!("KeyIssuer {}/exoscale", env.ns);
    let started = std::time::Instant::now();
    let firing = support::eventually_explained("the alert CloudkeysIssuerNotReady to fire", WAIT, || async {
        let data = prometheus.api("alerts").await?;
        let alerts = data["alerts"].as_array().cloned().unwrap_or_default();
        match alerts.iter().find(|a| a["labels"]["alertname"] == "CloudkeysIssuerNotReady" && a["state"] == "firing") {
            Some(a) => Ok(a.clone()),
            None => {
                let targets = prometheus.api("targets").await.unwrap_or_default();
                Err(format!("alerts: {alerts:#?}\ntargets: {targets}\nprometheus log:\n{}", prometheus.logs()))
            }
        }
    })
    .await;
    assert_eq!(firing["labels"]["issuer"], issuer.as_str(), "{firing:#}");
    let evaluations = prometheus.evaluations().await;
    println!(
        "CloudkeysIssuerNotReady firing {:.1}s after Prometheus started, after {evaluations} evaluations of the rule group (every 1s), active since {}:\n{firing:#}",
        started.elapsed().as_secs_f64(),
        firing["activeAt"]
    );
    assert_eq!(firing["labels"]["severity"], "critical");
    assert_eq!(firing["labels"]["job"], "cloudkeys");
    let description = firing["annotations"]["description"].as_str().unwrap_or_default();
    assert!(
        description.starts_with(&format!("{issuer} is not Ready")) && description.contains("1 AccessKey(s)"),
        "{description}"
    );

    // The other alerts as they stand: the broken key's own (pending: its `for` is 15 minutes), and
    // nothing about the local issuer, its key, or the leader.
    let alerts = prometheus.api("alerts").await.expect("alerts")["alerts"].as_array().cloned().unwrap_or_default();
    for a in &alerts {
        println!("{} {} {}", a["labels"]["alertname"], a["state"], a["labels"]);
        assert!(!a["labels"].to_string().contains("local"), "an alert about the Ready issuer or key: {a:#}");
        assert_ne!(a["labels"]["alertname"], "CloudkeysNoLeader", "{a:#}");
    }
    let key_alerts: Vec<_> =
        alerts.iter().filter(|a| a["labels"]["alertname"] == "CloudkeysAccessKeyNotReady").collect();
    assert_eq!(key_alerts.len(), 1, "{alerts:#?}");
    assert_eq!(key_alerts[0]["labels"]["name"], "broken");
    assert_eq!(key_alerts[0]["state"], "pending");
}
