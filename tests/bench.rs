//! `make bench`: the operator at scale against the real control plane, measured as issue 10
//! asks. It prints figures and asserts nothing, so it is `#[ignore]`d and run only by
//! `make bench` (release build):
//!
//!   cargo test --release --test bench -- --ignored --nocapture
//!
//! Knobs (environment): `BENCH_LOCAL` (10000 AccessKeys on the local provider),
//! `BENCH_EXOSCALE` (1000 on an Exoscale fake), `BENCH_LATENCY_MS` (50, the fake's latency),
//! `BENCH_RPS` (100, the Exoscale issuer's `rateLimit.requestsPerSecond`), `BENCH_IDLE_S` (120,
//! the idle window), `BENCH_CONCURRENCY` (the operator's `--concurrency`; its default if unset),
//! `BENCH_DRIFT_S` (20, the operator's `--drift-check-interval`, so that the idle window holds
//! several sweeps).
//!
//! The operator runs as its own user, `cloudkeys-operator`, whose requests alone the test
//! apiserver writes to its audit log: every figure about requests comes from there.

mod fakes;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cloudkeys::api::AccessKey;
use fakes::exoscale::{ExoscaleFake, Faults, PREEXISTING_ROLE_ID};
use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use serde_json::json;
use support::exoscale::{self, ADMIN_KEY, ADMIN_SECRET};
use support::keys;
use support::operator::Operator;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One request as the audit log saw it.
struct Audited {
    verb: String,
    resource: String,
    code: u16,
}

/// The operator's requests from byte `from` of the audit log on; returns them and the new end.
fn audited_since(from: u64) -> (Vec<Audited>, u64) {
    let log = support::control_plane().dir.join("audit.log");
    let text = std::fs::read(&log).unwrap_or_default();
    let start = (from as usize).min(text.len());
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&text[start..]).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let verb = v["verb"].as_str().unwrap_or_default().to_string();
        // A watch is counted when it starts, every other request when it is answered.
        let counted = if verb == "watch" { "ResponseStarted" } else { "ResponseComplete" };
        if v["stage"].as_str() != Some(counted) {
            continue;
        }
        let object = &v["objectRef"];
        let mut resource = object["resource"].as_str().unwrap_or("-").to_string();
        if let Some(sub) = object["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let code = v["responseStatus"]["code"].as_u64().unwrap_or_default() as u16;
        out.push(Audited { verb, resource, code });
    }
    (out, text.len() as u64)
}

fn is_write(verb: &str) -> bool {
    matches!(verb, "create" | "update" | "patch" | "delete" | "deletecollection")
}

fn print_requests(requests: &[Audited], keys: u64) {
    let mut by: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in requests {
        *by.entry((r.verb.clone(), r.resource.clone())).or_default() += 1;
    }
    let conflicts = requests.iter().filter(|r| r.code == 409).count();
    let per_key = requests.len() as f64 / keys.max(1) as f64;
    println!(
        "  apiserver requests:     {} = {per_key:.2} per key (target ≤ 6), 409 Conflict: {conflicts}",
        requests.len()
    );
    for ((verb, resource), n) in by {
        println!("    {verb:>16} {resource:<28} {n:>7}  {:>6.2}/key", n as f64 / keys.max(1) as f64);
    }
}

/// The operator's memory now, in MiB: resident in all, of which heap and stacks (anonymous;
/// the rest is pages of the binary, shared and reclaimable), and the peak resident.
struct Rss {
    now: f64,
    anon: f64,
    peak: f64,
}

fn rss(pid: u32) -> Rss {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or_default()
            / 1024.0
    };
    Rss { now: field("VmRSS:"), anon: field("RssAnon:"), peak: field("VmHWM:") }
}

/// Creates `n` AccessKeys made by `manifest`, 16 at a time.
async fn create_all(client: &Client, ns: &str, n: u64, manifest: impl Fn(u64) -> serde_json::Value) {
    let api: Api<AccessKey> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let ak: AccessKey = serde_json::from_value(manifest(i)).expect("AccessKey literal");
            async move { api.create(&PostParams::default(), &ak).await.map(|_| ()) }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .expect("AccessKeys created");
}

/// Waits until the operator counts `want` Ready AccessKeys in all (its `cloudkeys_access_keys`
/// gauge, read from its cache): asking the operator, not the apiserver, leaves the apiserver's
/// capacity to the operator under measurement.
async fn wait_ready(base: &str, want: u64) {
    loop {
        if metric(base, "cloudkeys_access_keys{ready=\"true\"}").await >= want as f64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn metric(base: &str, name: &str) -> f64 {
    let Ok(resp) = reqwest::get(format!("{base}/metrics")).await else { return 0.0 };
    let text = resp.text().await.unwrap_or_default();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by `make bench`"]
async fn bench() {
    let n_local = knob("BENCH_LOCAL", 10_000);
    let n_exo = knob("BENCH_EXOSCALE", 1_000);
    let latency = Duration::from_millis(knob("BENCH_LATENCY_MS", 50));
    let rps = knob("BENCH_RPS", 100);
    let idle = Duration::from_secs(knob("BENCH_IDLE_S", 120));
    let drift = format!("{}s", knob("BENCH_DRIFT_S", 20));

    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "bench").await;
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "local"},
            "spec": {"local": {}}}),
    )
    .await;
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    fake.set_faults(Faults { latency, ..Faults::default() });
    support::create_secret(
        &client,
        &ns,
        exoscale::CREDENTIALS,
        json!({"EXOSCALE_API_KEY": ADMIN_KEY, "EXOSCALE_API_SECRET": ADMIN_SECRET}),
    )
    .await;
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "exoscale"},
            "spec": {"exoscale": {"endpoint": fake.endpoint(), "credentialsSecretRef": {"name": exoscale::CREDENTIALS}},
                     "rateLimit": {"requestsPerSecond": rps, "burst": rps}}}),
    )
    .await;

    let operator_kubeconfig = support::control_plane().dir.join("operator.kubeconfig");
    let kubeconfig = operator_kubeconfig.to_string_lossy().into_owned();
    let concurrency = std::env::var("BENCH_CONCURRENCY").ok();
    let mut env = vec![
        ("KUBECONFIG", kubeconfig.as_str()),
        ("RUST_LOG", "info"),
        ("CLOUDKEYS_DRIFT_CHECK_INTERVAL", drift.as_str()),
    ];
    if let Some(c) = concurrency.as_deref() {
        env.push(("CLOUDKEYS_CONCURRENCY", c));
    }
    let op = Operator::start_with(&ns, &env);
    let base = op.http_base().await;
    let pid = op.pid().expect("operator running");
    // The issuers Ready: the figures below are about AccessKeys.
    support::eventually("both issuers Ready", keys::WAIT, || {
        let api: Api<cloudkeys::api::KeyIssuer> = Api::namespaced(client.clone(), &ns);
        async move {
            let list = api.list(&ListParams::default()).await.ok()?;
            let ready = list.items.iter().filter(|i| {
                i.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            (ready.count() == 2).then_some(())
        }
    })
    .await;
    let (_, mut mark) = audited_since(0);
    let idle_rss = rss(pid);

    println!();
    println!(
        "cloudkeys bench: {} cores, operator --concurrency {}",
        num_cpus(),
        concurrency.as_deref().unwrap_or("default")
    );

    // Local provider: how fast the operator itself is.
    let started = Instant::now();
    create_all(&client, &ns, n_local, |i| {
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey", "metadata": {"name": format!("local-{i}")},
            "spec": {"issuerRef": {"name": "local"}, "secretName": format!("local-{i}-credentials"), "local": {}}})
    })
    .await;
    let created = started.elapsed();
    wait_ready(&base, n_local).await;
    let took = started.elapsed();
    let (requests, end) = audited_since(mark);
    mark = end;
    println!("{n_local} AccessKeys, local provider:");
    println!(
        "  all Ready after:        {:.1} s (created in {:.1} s; target ≤ 100 s for 10,000: {:.2}× the bound scaled to N)",
        took.as_secs_f64(),
        created.as_secs_f64(),
        took.as_secs_f64() / (100.0 * n_local as f64 / 10_000.0)
    );
    print_requests(&requests, n_local);

    // Exoscale fake: how well the operator uses a slow provider under its rate limit.
    let calls_before = fake.requests().len();
    let started = Instant::now();
    create_all(&client, &ns, n_exo, |i| {
        keys::manifest(&format!("exo-{i}"), "exoscale", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({}))
    })
    .await;
    wait_ready(&base, n_local + n_exo).await;
    let took = started.elapsed();
    let calls = fake.requests().len() - calls_before;
    let (requests, end) = audited_since(mark);
    mark = end;
    let slots = issuer_slots(concurrency.as_deref());
    let bound = (n_exo as f64 * latency.as_secs_f64() / slots as f64).max(n_exo as f64 / rps.max(1) as f64);
    println!(
        "{n_exo} AccessKeys, Exoscale fake ({} ms latency, rateLimit {rps}/s, {slots} slots per issuer):",
        latency.as_millis()
    );
    println!(
        "  all Ready after:        {:.1} s = {:.2}× the bound max(N·L/C, N/rps) = {bound:.1} s (target ≤ 1.25×)",
        took.as_secs_f64(),
        took.as_secs_f64() / bound
    );
    println!("  cloud calls per key:    {:.2}", calls as f64 / n_exo.max(1) as f64);
    print_requests(&requests, n_exo);
    let busy_rss = rss(pid);
    println!(
        "operator RSS:             {:.1} MiB before ({:.1} MiB heap), {:.1} MiB with {} AccessKeys ({:.1} MiB heap), peak {:.1} MiB (target ≤ 64 MiB)",
        idle_rss.now,
        idle_rss.anon,
        busy_rss.now,
        n_local + n_exo,
        busy_rss.anon,
        busy_rss.peak,
    );

    // Idle: nothing changes; what does the operator still do?
    let reconciles_before = metric(&base, "cloudkeys_reconciles_total").await;
    let exoscale_listings = "cloudkeys_drift_listings_total{provider=\"exoscale\",result=\"ok\"}";
    let sweeps_before = metric(&base, exoscale_listings).await;
    let calls_before = fake.requests().len();
    tokio::time::sleep(idle).await;
    let (requests, end) = audited_since(mark);
    mark = end;
    let per_hour = 3600.0 / idle.as_secs_f64();
    let writes: Vec<&Audited> = requests.iter().filter(|r| is_write(&r.verb) && r.resource != "leases").collect();
    let lease_writes = requests.iter().filter(|r| is_write(&r.verb) && r.resource == "leases").count();
    println!("idle for {} s:", idle.as_secs());
    println!(
        "  apiserver writes:       {:.0} per hour besides the Lease (target 0); Lease writes {:.0} per hour",
        writes.len() as f64 * per_hour,
        lease_writes as f64 * per_hour
    );
    for w in writes.iter().take(5) {
        println!("    e.g. {} {} ({})", w.verb, w.resource, w.code);
    }
    println!("  apiserver requests:     {:.0} per hour", requests.len() as f64 * per_hour);
    println!(
        "  cloud calls:            {:.0} per hour; reconciles {:.0} per hour",
        (fake.requests().len() - calls_before) as f64 * per_hour,
        (metric(&base, "cloudkeys_reconciles_total").await - reconciles_before) * per_hour
    );
    // Every idle cloud call is a drift listing: nothing else has a reason to call.
    let sweeps = metric(&base, exoscale_listings).await - sweeps_before;
    let idle_calls = (fake.requests().len() - calls_before) as f64;
    let per_sweep = idle_calls / sweeps.max(1.0);
    println!(
        "  drift checks ({drift}):  {sweeps:.0} sweeps; {per_sweep:.1} Exoscale calls per sweep for {n_exo} AccessKeys \
         = {per_sweep:.1} per hour at the default 1h ({:.4} per key); apiserver writes per sweep {:.1} (target 0)",
        per_sweep / n_exo.max(1) as f64,
        writes.len() as f64 / sweeps.max(1.0)
    );

    // Deleting everything revokes everything.
    let api: Api<AccessKey> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    // Marking 11,000 objects deleted can outlast the apiserver's request timeout (a 500 then);
    // the deletion goes on regardless, and asking again marks whatever is left.
    let mut refused = 0;
    while let Err(e) = api.delete_collection(&DeleteParams::default(), &ListParams::default()).await {
        refused += 1;
        assert!(refused < 10, "delete not accepted: {e}");
        println!("  (delete of the collection answered {e}; asking again)");
    }
    support::eventually("every AccessKey gone", Duration::from_secs(3600), || {
        let api = api.clone();
        async move { api.list(&ListParams::default().limit(1)).await.ok()?.items.is_empty().then_some(()) }
    })
    .await;
    let took = started.elapsed();
    let (requests, _) = audited_since(mark);
    println!("deleting all {} AccessKeys:", n_local + n_exo);
    println!(
        "  all gone after:         {:.1} s; Exoscale keys left live: {} (must be 0)",
        took.as_secs_f64(),
        fake.live_api_keys().len()
    );
    print_requests(&requests, n_local + n_exo);
    drop(op);
}

/// Reconciles one issuer may have waiting on its provider, as the operator works it out.
fn issuer_slots(concurrency: Option<&str>) -> u64 {
    use clap::Parser;
    let mut argv = vec!["cloudkeys", "run"];
    argv.extend(concurrency.iter().flat_map(|c| ["--concurrency", c]));
    use cloudkeys::runtime::command_line::{Command, CommandLine};
    match CommandLine::try_parse_from(argv) {
        Ok(CommandLine { command: Command::Run(args) }) => args.issuer_concurrency() as u64,
        _ => 1,
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
