//! `cloudkeys check`: is the installation healthy? The CRDs at this binary's version, a leader
//! renewing its Lease, every issuer Ready, no unrestricted ClusterKeyIssuer (a warning), no
//! orphaned keys. Exits 1 on any failure; warnings alone exit 0.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::api::{ClusterKeyIssuer, IssuerStatus, KeyIssuer, CRD_DIGEST_ANNOTATION, CRD_VERSION_ANNOTATION};
use crate::controller::conditions::{self, READY};
use crate::controller::policy;
use crate::controller::run::LEASE_NAME;

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
    /// Output format (`wide` is the table).
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    pub unrestricted: bool,
    pub orphaned_keys: u32,
}

impl IssuerLine {
    fn of(
        kind: &'static str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        provider: &crate::api::IssuerProvider,
        status: Option<&IssuerStatus>,
        policy: Option<&crate::api::IssuerPolicy>,
    ) -> Self {
        let cluster_scoped = kind == "ClusterKeyIssuer";
        let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
        let ready = conditions::is_ready(conditions, meta.generation) && meta.deletion_timestamp.is_none();
        let condition = conditions.iter().find(|c| c.type_ == READY);
        Self {
            kind,
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            provider: provider.name(),
            ready,
            reason: condition.map(|c| c.reason.clone()),
            message: condition.map(|c| c.message.clone()),
            policy: policy::describe(policy, cluster_scoped),
            unrestricted: cluster_scoped && policy.is_none(),
            orphaned_keys: status.and_then(|s| s.orphaned_keys).unwrap_or(0),
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
    let mut checks = vec![crds(&client).await?];
    checks.push(leader(&client, args.operator_namespace.as_deref(), now).await?);
    let issuers = issuers(&client, args.namespace.as_deref()).await?;
    checks.extend(issuer_findings(&issuers));
    let healthy = checks.iter().all(|c| c.result != Verdict::Fail);
    let report = Report { healthy, checks, issuers };
    match args.output {
        OutputFormat::Json | OutputFormat::Yaml => output::print_structured(&report, args.output)?,
        _ => print_report(&report),
    }
    Ok(Health::of(healthy))
}

fn print_report(report: &Report) {
    let mut t = output::table(&["CHECK", "RESULT", "DETAIL"], false);
    for f in &report.checks {
        t.add_row(vec![f.check.to_string(), f.result.as_str().to_string(), f.detail.clone()]);
    }
    output::print_table(&t);
    if report.issuers.is_empty() {
        return;
    }
    println!();
    let mut t = output::table(&["ISSUER", "PROVIDER", "READY", "REASON", "ORPHANS"], false);
    for i in &report.issuers {
        let ready = if i.ready { "True" } else { "False" };
        let reason = i.reason.clone().unwrap_or_else(|| "-".into());
        t.add_row(vec![i.display(), i.provider.to_string(), ready.to_string(), reason, i.orphaned_keys.to_string()]);
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
            detail: format!("no Lease {LEASE_NAME}{where_}: is the operator running?"),
        });
    }
    let mut details = Vec::new();
    let mut fresh_all = true;
    for lease in &leases {
        let ns = lease.namespace().unwrap_or_default();
        let spec = lease.spec.clone().unwrap_or_default();
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
        let fresh = spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty())
            && renewed.is_some_and(|r| now.as_second() - r.as_second() <= duration);
        fresh_all &= fresh;
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        details.push(match (holder, renewed) {
            (Some(h), Some(r)) if fresh => {
                format!("{ns}/{LEASE_NAME} held by {h}, renewed {} ago", output::age(r, now))
            }
            (Some(h), Some(r)) => format!(
                "{ns}/{LEASE_NAME} held by {h} but not renewed for {} (lease {duration}s): the leader is stuck or gone",
                output::age(r, now)
            ),
            _ => format!("{ns}/{LEASE_NAME} has no holder: no operator replica is leading"),
        });
    }
    Ok(Finding {
        check: "leader",
        result: if fresh_all { Verdict::Ok } else { Verdict::Fail },
        detail: details.join("; "),
    })
}

async fn issuers(client: &Client, namespace: Option<&str>) -> Result<Vec<IssuerLine>, CliError> {
    let scope = match namespace {
        Some(ns) => Scope::Namespace(ns.to_string()),
        None => Scope::All,
    };
    let key_issuers = scope
        .api::<KeyIssuer>(client)
        .list(&ListParams::default())
        .await
        .map_err(|e| CliError::listing("keyissuers.cloudkeys.io", e))?;
    let cluster_issuers = Api::<ClusterKeyIssuer>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| CliError::listing("clusterkeyissuers.cloudkeys.io", e))?;
    let mut lines: Vec<IssuerLine> = cluster_issuers
        .items
        .iter()
        .map(|i| {
            IssuerLine::of("ClusterKeyIssuer", &i.metadata, &i.spec.provider, i.status.as_ref(), i.spec.policy.as_ref())
        })
        .collect();
    let mut namespaced: Vec<IssuerLine> = key_issuers
        .items
        .iter()
        .map(|i| IssuerLine::of("KeyIssuer", &i.metadata, &i.spec.provider, i.status.as_ref(), i.spec.policy.as_ref()))
        .collect();
    lines.sort_by(|a, b| a.name.cmp(&b.name));
    namespaced.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    lines.extend(namespaced);
    Ok(lines)
}

/// Issuers Ready, unrestricted ClusterKeyIssuers, orphaned keys.
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
    let unrestricted: Vec<String> = issuers.iter().filter(|i| i.unrestricted).map(IssuerLine::display).collect();
    let unrestricted = match unrestricted.is_empty() {
        true => Finding {
            check: "unrestricted",
            result: Verdict::Ok,
            detail: "no ClusterKeyIssuer without a policy".into(),
        },
        false => Finding {
            check: "unrestricted",
            result: Verdict::Warn,
            detail: format!("{}: any namespace may mint any key (set spec.policy)", unrestricted.join(", ")),
        },
    };
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
    vec![ready, unrestricted, orphans]
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
            policy: "",
            unrestricted,
            orphaned_keys,
        }
    }

    fn verdicts(issuers: &[IssuerLine]) -> Vec<Verdict> {
        issuer_findings(issuers).iter().map(|f| f.result).collect()
    }

    #[test]
    fn a_not_ready_issuer_and_orphans_fail_an_unrestricted_one_warns() {
        assert_eq!(verdicts(&[line(true, false, 0)]), [Verdict::Ok, Verdict::Ok, Verdict::Ok]);
        assert_eq!(verdicts(&[line(false, false, 0)]), [Verdict::Fail, Verdict::Ok, Verdict::Ok]);
        assert_eq!(verdicts(&[line(true, true, 0)]), [Verdict::Ok, Verdict::Warn, Verdict::Ok]);
        assert_eq!(verdicts(&[line(true, false, 2)]), [Verdict::Ok, Verdict::Ok, Verdict::Fail]);
        let f = issuer_findings(&[line(false, false, 0)]);
        assert!(f[0].detail.contains("KeyIssuer team-a/i (InvalidCredentials)"), "{}", f[0].detail);
    }
}
