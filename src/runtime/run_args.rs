//! The flags of `cloudkeys run`, the operator itself.

use crate::telemetry::LogFormat;

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Namespace whose Secrets ClusterKeyIssuers read; default the namespace the operator runs in
    /// (POD_NAMESPACE), else `cloudkeys`.
    #[arg(long, env = "CLOUDKEYS_CLUSTER_RESOURCE_NAMESPACE")]
    pub cluster_resource_namespace: Option<String>,
    /// Watch this namespace only (default: all namespaces).
    #[arg(long, env = "CLOUDKEYS_NAMESPACE")]
    pub namespace: Option<String>,
    /// How many AccessKeys are reconciled at once. Most of a reconcile is waiting on the
    /// apiserver or a provider, and each issuer limits itself (--issuer-concurrency, its
    /// `rateLimit`), so more workers than cores pay off. All but an eighth of them may wait on
    /// providers, shared fairly between issuers and namespaces.
    #[arg(long, env = "CLOUDKEYS_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// How many of those reconciles may wait on one issuer's provider at once, so that one slow
    /// or hanging provider account cannot hold every worker; 0 = half of --concurrency. (The
    /// built-in `local` provider, which answers from memory, is not limited.)
    #[arg(long, env = "CLOUDKEYS_ISSUER_CONCURRENCY", default_value_t = 0)]
    pub issuer_concurrency: u16,
    /// Requests per second the operator sends to the Kubernetes API at most, all controllers
    /// together (a token bucket, like kubectl's and client-go's): a storm of reconciles waits
    /// its turn instead of overloading the control plane.
    #[arg(long, env = "CLOUDKEYS_KUBE_API_QPS", default_value_t = 500)]
    pub kube_api_qps: u32,
    /// Requests that may go at once above --kube-api-qps after a quiet spell.
    #[arg(long, env = "CLOUDKEYS_KUBE_API_BURST", default_value_t = 1000)]
    pub kube_api_burst: u32,
    /// Longest one reconcile waits on a provider (all its calls, retries and operation polls
    /// together); past it the reconcile gives up and retries with backoff.
    #[arg(long, env = "CLOUDKEYS_PROVIDER_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub provider_timeout: std::time::Duration,
    /// /healthz fails when a watch has been failing while others work, or reconciles have been
    /// under way without one finishing, for this long.
    #[arg(long, env = "CLOUDKEYS_STALL_TIMEOUT", default_value = "3m", value_parser = humantime::parse_duration)]
    pub stall_timeout: std::time::Duration,
    /// Log format.
    #[arg(long, env = "CLOUDKEYS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "CLOUDKEYS_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: std::net::SocketAddr,
    /// Only the holder of the Lease `cloudkeys-leader` reconciles (run several replicas safely).
    #[arg(long, env = "CLOUDKEYS_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader-election Lease; default POD_NAMESPACE, else the cluster resource
    /// namespace.
    #[arg(long, env = "CLOUDKEYS_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Hosts a KeyIssuer's endpoint may name, comma-separated: host names, patterns where `*`
    /// matches within one DNS label (`api-*.exoscale.com`; never in the last two labels), and
    /// `loopback` for 127.0.0.0/8, ::1 and localhost. Default: the providers' own API hosts.
    /// ClusterKeyIssuers may name any.
    #[arg(
        long,
        env = "CLOUDKEYS_ALLOWED_ENDPOINT_HOSTS",
        default_value = crate::core::guard::DEFAULT_ALLOWED_HOSTS,
        value_parser = crate::core::guard::parse_allowed_hosts
    )]
    pub allowed_endpoint_hosts: String,
    /// How often the keys at each provider are listed to find those revoked behind the
    /// operator's back (one listing per provider owner, ± 10 %); 0 disables drift checks.
    #[arg(long, env = "CLOUDKEYS_DRIFT_CHECK_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub drift_check_interval: std::time::Duration,
    /// What this installation writes into the ownership markers of its keys (8 lowercase hex
    /// digits), so that installations sharing a cloud account never take each other's keys for
    /// orphans. Default: derived from the cluster (the UID of `kube-system`), the Lease namespace
    /// and --namespace, so it stays the same across restarts and upgrades.
    #[arg(long, env = "CLOUDKEYS_INSTALLATION_ID")]
    pub installation_id: Option<String>,
    /// Let KeyIssuers use ambient credentials (Yandex `metadataService`: the node's identity).
    #[arg(long, env = "CLOUDKEYS_ALLOW_NAMESPACED_AMBIENT_CREDENTIALS", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_namespaced_ambient_credentials: bool,
}

impl RunArgs {
    /// `--issuer-concurrency` after applying its default.
    pub fn issuer_concurrency(&self) -> usize {
        match self.issuer_concurrency {
            0 => usize::from(self.concurrency).div_ceil(2).max(1),
            n => usize::from(n),
        }
    }

    /// The namespace of the leader-election Lease after applying the documented defaults.
    pub fn leader_election_namespace(&self) -> String {
        self.leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| self.cluster_resource_namespace())
    }

    /// The cluster resource namespace after applying the documented defaults.
    pub fn cluster_resource_namespace(&self) -> String {
        self.cluster_resource_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "cloudkeys".to_string())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::RunArgs;

    /// `cloudkeys run`'s flags alone.
    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        args: RunArgs,
    }

    fn run(args: &[&str]) -> Result<String, clap::Error> {
        let mut argv = vec!["run"];
        argv.extend_from_slice(args);
        Ok(Run::try_parse_from(argv)?.args.allowed_endpoint_hosts)
    }

    #[test]
    fn the_allowed_hosts_default_to_the_providers_api_hosts_and_bad_patterns_are_usage_errors() {
        assert_eq!(run(&[]).expect("default"), crate::core::guard::DEFAULT_ALLOWED_HOSTS);
        let given = run(&["--allowed-endpoint-hosts", "api-*.exoscale.com, loopback"]).expect("valid");
        assert_eq!(given, "api-*.exoscale.com,loopback");
        for bad in ["*.com", "*", "api.*"] {
            let e = run(&["--allowed-endpoint-hosts", bad]).expect_err(bad);
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            assert!(e.to_string().contains("last two labels"), "{e}");
        }
    }
}
