//! `cloudkeys check`: is the installation healthy? The CRDs at this binary's version, a leader
//! renewing its Lease, every issuer Ready, no unrestricted ClusterKeyIssuer and no unbounded
//! grant (any role, any user, any service account, legacy keys without resources: warnings), no
//! orphaned keys. Exits 1 on any failure; warnings alone exit 0.

use super::output::say;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::api::LEASE_NAME;
use crate::api::{ClusterKeyIssuer, Decoded, IssuerStatus, KeyIssuer, CRD_DIGEST_ANNOTATION, CRD_VERSION_ANNOTATION};
use crate::core::conditions::READY;
use crate::core::observe::IssuerFacts;
use crate::core::policy;

use super::output::{self, OutputFormat};
use super::{CliError, ClusterArgs, Health, Scope};

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Look at the KeyIssuers of this namespace only (default: every namespace).
    #[arg(short = 'n', long, value_name = "NS")]
    pub namespace: Option<String>,
    /// The namespace of the operator's leader Lease (default: wherever one is found).
    #[arg(long, value_name = "NS")]
    pub operator_namespace: Option<String>,
    /// Output format (`wide`: the table without wrapping long details).
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub result: Verdict,
    pub detail: String,
}

/// One issuer as the report lists it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuerLine {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub provider: &'static str,
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub policy: &'static str,
    /// A ClusterKeyIssuer without a policy (unrestricted, as its Ready message says), or whose policy does
    /// not limit the namespaces.
    pub open_to_every_namespace: bool,
    /// What its policy lets AccessKeys ask for without a bound (any role, any user, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unbounded_grants: Vec<String>,
    pub orphaned_keys: u32,
}

impl IssuerLine {
    fn of<K: crate::api::Issuer + kube::Resource>(
        kind: &'static str,
        issuer: &K,
        status: Option<&IssuerStatus>,
    ) -> Self {
        let facts = IssuerFacts::of(issuer, kind, status);
        let meta = issuer.meta();
        // A condition of an older generation says nothing about the spec as it is now.
        let condition = facts
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .filter(|c| meta.generation.is_none() || c.observed_generation == meta.generation);
        Self {
            kind,
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            provider: facts.settings.name(),
            ready: facts.is_ready(),
            reason: condition.map(|c| c.reason.clone()),
            message: condition.map(|c| c.message.clone()),
            policy: policy::describe(facts.policy, facts.cluster_scoped),
            open_to_every_namespace: facts.cluster_scoped && facts.policy.and_then(|p| p.namespaces.as_ref()).is_none(),
            unbounded_grants: policy::unbounded_grants(facts.settings, facts.policy),
            orphaned_keys: facts.status.orphaned_keys.unwrap_or(0),
        }
    }

    fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    healthy: bool,
    checks: Vec<Finding>,
    issuers: Vec<IssuerLine>,
}

pub async fn run(args: &CheckArgs) -> Result<Health, CliError> {
    let (client, _) = args.cluster.connect().await?;
    let now = jiff::Timestamp::now();
    let mut checks = vec![unreadable("crds", crds(&client).await)?];
    checks.push(unreadable("leader", leader(&client, args.operator_namespace.as_deref(), now).await)?);
    let issuers = match issuers(&client, args.namespace.as_deref()).await {
        Ok(issuers) => {
            checks.extend(issuer_findings(&issuers));
            issuers
        }
        Err(e) => {
            checks.push(unreadable("issuers", Err(e))?);
            Vec::new()
        }
    };
    let healthy = checks.iter().all(|c| c.result != Verdict::Fail);
    let report = Report { healthy, checks, issuers };
    match args.output {
        OutputFormat::Json | OutputFormat::Yaml => output::print_structured(&report, args.output)?,
        format => print_report(&report, format.is_wide()),
    }
    Ok(Health::of(healthy))
}

/// A check whose objects this user may not read fails with the reason, and the others still
/// run; any other error ends the command.
fn unreadable(check: &'static str, result: Result<Finding, CliError>) -> Result<Finding, CliError> {
    match result {
        Err(CliError::Kube(kube::Error::Api(s))) if s.code == 403 => {
            Ok(Finding { check, result: Verdict::Fail, detail: format!("cannot be checked: {}", s.message) })
        }
        other => other,
    }
}

/// The report as tables; `wide`: long details on one line each.
fn print_report(report: &Report, wide: bool) {
    let mut t = output::table(&["CHECK", "RESULT", "DETAIL"], wide);
    for f in &report.checks {
        output::add_row(&mut t, [f.check.to_string(), f.result.as_str().to_string(), f.detail.clone()]);
    }
    output::print_table(&t);
    if report.issuers.is_empty() {
        return;
    }
    say!();
    let mut t = output::table(&["ISSUER", "PROVIDER", "READY", "REASON", "ORPHANS"], wide);
    for i in &report.issuers {
        let ready = if i.ready { "True" } else { "False" };
        let reason = i.reason.clone().unwrap_or_else(|| "-".into());
        output::add_row(
            &mut t,
            [i.display(), i.provider.to_string(), ready.to_string(), reason, i.orphaned_keys.to_string()],
        );
    }
    output::print_table(&t);
}

/// Each CRD present, established, and generated by this version (its digest annotation).
async fn crds(client: &Client) -> Result<Finding, CliError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut problems = Vec::new();
    let expected = crate::api::crds();
    for want in &expected {
        let name = want.name_any();
        let Some(live) = api.get_opt(&name).await? else {
            problems.push(format!("{name} is not installed"));
            continue;
        };
        let established = live
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        if !established {
            problems.push(format!("{name} is not established"));
            continue;
        }
        let annotation = |crd: &CustomResourceDefinition, key: &str| crd.annotations().get(key).cloned();
        let (want_digest, live_digest) =
            (annotation(want, CRD_DIGEST_ANNOTATION), annotation(&live, CRD_DIGEST_ANNOTATION));
        if want_digest != live_digest {
            let from = annotation(&live, CRD_VERSION_ANNOTATION)
                .map(|v| format!("cloudkeys {v}"))
                .unwrap_or_else(|| "an older cloudkeys".into());
            problems.push(format!("{name} is from {from}, not as this binary expects"));
        }
    }
    Ok(match problems.is_empty() {
        true => Finding {
            check: "crds",
            result: Verdict::Ok,
            detail: format!(
                "{} CRDs of cloudkeys.io/v1alpha1 installed, as cloudkeys {} expects",
                expected.len(),
                env!("CARGO_PKG_VERSION")
            ),
        },
        false => Finding {
            check: "crds",
            result: Verdict::Fail,
            detail: format!(
                "{}: apply the crds/ of cloudkeys {} (helm upgrade does not update CRDs)",
                problems.join("; "),
                env!("CARGO_PKG_VERSION")
            ),
        },
    })
}

/// The leader Lease: held, and renewed within its duration.
async fn leader(client: &Client, namespace: Option<&str>, now: jiff::Timestamp) -> Result<Finding, CliError> {
    let leases: Vec<Lease> = match namespace {
        Some(ns) => Api::<Lease>::namespaced(client.clone(), ns).get_opt(LEASE_NAME).await?.into_iter().collect(),
        None => {
            let params = ListParams::default().fields(&format!("metadata.name={LEASE_NAME}"));
            Api::<Lease>::all(client.clone()).list(&params).await?.items
        }
    };
    if leases.is_empty() {
        let where_ = namespace.map(|ns| format!(" in namespace {ns}")).unwrap_or_default();
        return Ok(Finding {
            check: "leader",
            result: Verdict::Fail,
            detail: format!("no Lease {LEASE_NAME}{where_}: is the operator running, with leader election?"),
        });
    }
    let findings: Vec<(Verdict, String)> = leases.iter().map(|l| lease_verdict(l, now)).collect();
    let worst = findings.iter().map(|(v, _)| *v).max().unwrap_or(Verdict::Ok);
    let detail = findings.into_iter().map(|(_, d)| d).collect::<Vec<_>>().join("; ");
    Ok(Finding { check: "leader", result: worst, detail })
}

/// Whether a leader Lease is held and renewed in time. Renewed within its duration: ok; within
/// twice that: a warning (a late renewal, or this machine's clock ahead of the cluster's);
/// later, or held by no one: a failure.
pub fn lease_verdict(lease: &Lease, now: jiff::Timestamp) -> (Verdict, String) {
    let name = format!("{}/{LEASE_NAME}", lease.namespace().unwrap_or_default());
    let spec = lease.spec.clone().unwrap_or_default();
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
    let holder = spec.holder_identity.filter(|h| !h.is_empty());
    let (Some(holder), Some(renewed)) = (holder, spec.renew_time.map(|t| t.0)) else {
        return (Verdict::Fail, format!("{name} has no holder: no operator replica is leading"));
    };
    let age = now.as_second() - renewed.as_second();
    let ago = output::age(renewed, now);
    if age <= duration {
        (Verdict::Ok, format!("{name} held by {holder}, renewed {ago} ago"))
    } else if age <= 2 * duration {
        let why = "late, or this machine's clock is ahead of the cluster's";
        (Verdict::Warn, format!("{name} held by {holder}, renewed {ago} ago (lease {duration}s): {why}"))
    } else {
        let why = "the leader is stuck or gone";
        (Verdict::Fail, format!("{name} held by {holder}, not renewed for {ago} (lease {duration}s): {why}"))
    }
}

async fn issuers(client: &Client, namespace: Option<&str>) -> Result<Vec<IssuerLine>, CliError> {
    let scope = match namespace {
        Some(ns) => Scope::Namespace(ns.to_string()),
        None => Scope::All,
    };
    let key_issuers = scope
        .api::<Decoded<KeyIssuer>>(client)
        .list(&ListParams::default())
        .await
        .map_err(|e| CliError::listing("keyissuers.cloudkeys.io", e))?;
    let cluster_issuers = Api::<Decoded<ClusterKeyIssuer>>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| CliError::listing("clusterkeyissuers.cloudkeys.io", e))?;
    let mut lines: Vec<IssuerLine> = super::cluster::readable(cluster_issuers.items)
        .iter()
        .map(|i| IssuerLine::of("ClusterKeyIssuer", i, i.status.as_ref()))
        .collect();
    let mut namespaced: Vec<IssuerLine> = super::cluster::readable(key_issuers.items)
        .iter()
        .map(|i| IssuerLine::of("KeyIssuer", i, i.status.as_ref()))
        .collect();
    lines.sort_by(|a, b| a.name.cmp(&b.name));
    namespaced.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    lines.extend(namespaced);
    Ok(lines)
}

/// Issuers Ready, unrestricted ClusterKeyIssuers, unbounded grants (a warning per issuer),
/// orphaned keys.
pub fn issuer_findings(issuers: &[IssuerLine]) -> Vec<Finding> {
    let not_ready: Vec<String> = issuers
        .iter()
        .filter(|i| !i.ready)
        .map(|i| format!("{} ({})", i.display(), i.reason.as_deref().unwrap_or("not checked yet")))
        .collect();
    let ready = match (issuers.is_empty(), not_ready.is_empty()) {
        (true, _) => {
            Finding { check: "issuers", result: Verdict::Warn, detail: "no issuers: no AccessKey can get a key".into() }
        }
        (false, true) => Finding { check: "issuers", result: Verdict::Ok, detail: format!("{} Ready", issuers.len()) },
        (false, false) => Finding {
            check: "issuers",
            result: Verdict::Fail,
            detail: format!("{} of {} not Ready: {}", not_ready.len(), issuers.len(), not_ready.join(", ")),
        },
    };
    let open: Vec<String> = issuers
        .iter()
        .filter(|i| i.open_to_every_namespace)
        .map(|i| match i.policy {
            p if p.starts_with("unrestricted") => format!("{} (no policy)", i.display()),
            _ => format!("{} (its policy sets no namespaces)", i.display()),
        })
        .collect();
    let unrestricted = match open.is_empty() {
        true => Finding {
            check: "unrestricted",
            result: Verdict::Ok,
            detail: "no ClusterKeyIssuer serves every namespace".into(),
        },
        false => Finding {
            check: "unrestricted",
            result: Verdict::Warn,
            detail: format!("{}: every namespace may mint keys (set spec.policy.namespaces)", open.join(", ")),
        },
    };
    let mut grants: Vec<Finding> = issuers
        .iter()
        .filter(|i| !i.unbounded_grants.is_empty())
        .map(|i| Finding {
            check: "grants",
            result: Verdict::Warn,
            detail: format!("{} mints {}", i.display(), i.unbounded_grants.join("; ")),
        })
        .collect();
    if grants.is_empty() {
        let detail = "every issuer's policy bounds the roles, users and service accounts it grants".into();
        grants.push(Finding { check: "grants", result: Verdict::Ok, detail });
    }
    let orphaned: Vec<String> = issuers
        .iter()
        .filter(|i| i.orphaned_keys > 0)
        .map(|i| format!("{} ({})", i.display(), i.orphaned_keys))
        .collect();
    let orphans = match orphaned.is_empty() {
        true => Finding { check: "orphans", result: Verdict::Ok, detail: "no orphaned keys".into() },
        false => Finding {
            check: "orphans",
            result: Verdict::Fail,
            detail: format!(
                "keys no AccessKey tracks: {}; see the OrphanedKeys events, or set spec.revokeOrphans",
                orphaned.join(", ")
            ),
        },
    };
    let mut findings = vec![ready, unrestricted];
    findings.extend(grants);
    findings.push(orphans);
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(ready: bool, unrestricted: bool, orphaned_keys: u32) -> IssuerLine {
        IssuerLine {
            kind: if unrestricted { "ClusterKeyIssuer" } else { "KeyIssuer" },
            namespace: (!unrestricted).then(|| "team-a".to_string()),
            name: "i".into(),
            provider: "local",
            ready,
            reason: (!ready).then(|| "InvalidCredentials".to_string()),
            message: None,
            policy: if unrestricted { "unrestricted: no policy" } else { "" },
            open_to_every_namespace: unrestricted,
            unbounded_grants: Vec::new(),
            orphaned_keys,
        }
    }

    fn verdicts(issuers: &[IssuerLine]) -> Vec<Verdict> {
        issuer_findings(issuers).iter().map(|f| f.result).collect()
    }

    #[test]
    fn a_not_ready_issuer_and_orphans_fail_an_unrestricted_one_warns() {
        let ok = Verdict::Ok;
        assert_eq!(verdicts(&[line(true, false, 0)]), [ok, ok, ok, ok]);
        assert_eq!(verdicts(&[line(false, false, 0)]), [Verdict::Fail, ok, ok, ok]);
        assert_eq!(verdicts(&[line(true, true, 0)]), [ok, Verdict::Warn, ok, ok]);
        assert_eq!(verdicts(&[line(true, false, 2)]), [ok, ok, ok, Verdict::Fail]);
        assert!(issuer_findings(&[line(true, true, 0)])[1].detail.contains("(no policy)"));
        let f = issuer_findings(&[line(false, false, 0)]);
        assert!(f[0].detail.contains("KeyIssuer team-a/i (InvalidCredentials)"), "{}", f[0].detail);
    }

    #[test]
    fn every_issuer_with_unbounded_grants_gets_a_warning_line() {
        let mut open = line(true, false, 0);
        open.unbounded_grants = vec!["keys of any EIM user (set policy.outscale.userNames)".into()];
        let mut other = line(true, false, 0);
        other.name = "j".into();
        other.unbounded_grants = vec!["a".into(), "b".into()];
        let findings = issuer_findings(&[open, other, line(true, false, 0)]);
        let grants: Vec<&Finding> = findings.iter().filter(|f| f.check == "grants").collect();
        assert_eq!(grants.len(), 2);
        assert!(grants.iter().all(|f| f.result == Verdict::Warn));
        assert_eq!(grants[0].detail, "KeyIssuer team-a/i mints keys of any EIM user (set policy.outscale.userNames)");
        assert_eq!(grants[1].detail, "KeyIssuer team-a/j mints a; b");
        // Warnings alone keep the installation healthy.
        assert!(findings.iter().all(|f| f.result != Verdict::Fail));
        let bounded = issuer_findings(&[line(true, false, 0)]);
        assert_eq!(bounded.iter().filter(|f| f.check == "grants" && f.result == Verdict::Ok).count(), 1);
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": LEASE_NAME, "namespace": "cloudkeys"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                "renewTime": renewed.map(|s| jiff::Timestamp::from_second(s).expect("time").strftime("%Y-%m-%dT%H:%M:%S.000000Z").to_string())},
        }))
        .expect("Lease literal")
    }

    #[test]
    fn a_lease_is_fresh_within_its_duration_late_within_twice_that_then_stale() {
        let now = jiff::Timestamp::from_second(1_000_000).expect("time");
        assert_eq!(lease_verdict(&lease(Some("op-1"), Some(1_000_000 - 10)), now).0, Verdict::Ok);
        let (v, d) = lease_verdict(&lease(Some("op-1"), Some(1_000_000 - 25)), now);
        assert_eq!(v, Verdict::Warn, "{d}");
        let (v, d) = lease_verdict(&lease(Some("op-1"), Some(1_000_000 - 120)), now);
        assert_eq!(v, Verdict::Fail);
        assert!(d.contains("held by op-1, not renewed for 2m"), "{d}");
        let (v, d) = lease_verdict(&lease(None, Some(1_000_000)), now);
        assert_eq!(v, Verdict::Fail);
        assert!(d.contains("has no holder"), "{d}");
        assert_eq!(lease_verdict(&lease(Some(""), Some(1_000_000)), now).0, Verdict::Fail);
    }
}
