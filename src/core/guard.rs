//! What a tenant's KeyIssuer may point the operator at: the hosts its endpoints name
//! (`--allowed-endpoint-hosts`) and ambient credentials (the node's cloud identity, which only
//! ClusterKeyIssuers may use unless `--allow-namespaced-ambient-credentials`). Checked before a
//! provider client is built, from the spec text alone (no DNS lookup), so that nothing — no
//! signed request, no token — is ever sent to a host a tenant chose. ClusterKeyIssuers are
//! created by cluster admins: their endpoints are not limited here, but ambient credentials go
//! to the provider's own API on every issuer (see [`TenantGuard::check`]).

use crate::api::validation::InvalidSpec;
use crate::api::{IssuerProvider, YandexIssuer};
use crate::providers::yandex::{DEFAULT_ENDPOINT as DEFAULT_IAM_ENDPOINT, DEFAULT_OPERATION_ENDPOINT};

/// `--allowed-endpoint-hosts` when not set: the API hosts each provider documents, and loopback.
/// Never a whole domain: customers publish content under `*.yandexcloud.net` (API gateways,
/// functions, buckets) and `*.oos.<region>.outscale.com` (buckets), and such a host would
/// receive the issuer's signed requests and tokens.
pub const DEFAULT_ALLOWED_HOSTS: &str =
    "api-*.exoscale.com,iam.api.cloud.yandex.net,operation.api.cloud.yandex.net,api.*.outscale.com,loopback";

/// One entry of `--allowed-endpoint-hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// 127.0.0.0/8, `::1`, `localhost`.
    Loopback,
    /// DNS labels, each literal or holding `*`, which matches within that one label only.
    Labels(Vec<String>),
}

impl HostPattern {
    fn parse(entry: &str) -> Result<Self, String> {
        let entry =
            entry.trim().trim_end_matches('.').trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if entry == "loopback" {
            return Ok(Self::Loopback);
        }
        let labels: Vec<String> = entry.split('.').map(str::to_string).collect();
        let valid = |l: &String| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || "-*:[]".contains(c));
        if !labels.iter().all(valid) {
            return Err(format!("{entry:?} is not a host name or pattern"));
        }
        // A wildcard in the last two labels would stand for any registrable domain (`*.com`,
        // `example.*`): hosts of anyone's choosing.
        if let Some(last) = labels.iter().rposition(|l| l.contains('*')) {
            if labels.len() - last <= 2 {
                return Err(format!(
                    "{entry:?}: a `*` may not stand in the last two labels; name the domain, e.g. api-*.exoscale.com"
                ));
            }
        }
        Ok(Self::Labels(labels))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Loopback => is_loopback(host),
            Self::Labels(pattern) => {
                let labels: Vec<&str> = host.split('.').collect();
                labels.len() == pattern.len()
                    && pattern.iter().zip(&labels).all(|(p, l)| !l.is_empty() && super::policy::glob_matches(p, l))
            }
        }
    }
}

/// The hosts of `--allowed-endpoint-hosts`, checked: a usage error names the bad entry.
pub fn parse_allowed_hosts(list: &str) -> Result<String, String> {
    TenantGuard::new(list, false).map(|guard| guard.allowed_hosts.join(","))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantGuard {
    /// As given, for messages.
    allowed_hosts: Vec<String>,
    patterns: Vec<HostPattern>,
    pub allow_namespaced_ambient: bool,
}

impl Default for TenantGuard {
    fn default() -> Self {
        // The default is a constant its unit test parses; nothing is allowed if it ever did not.
        Self::new(DEFAULT_ALLOWED_HOSTS, false).unwrap_or_else(|_| Self {
            allowed_hosts: Vec::new(),
            patterns: Vec::new(),
            allow_namespaced_ambient: false,
        })
    }
}

impl TenantGuard {
    pub fn new(allowed_hosts: &str, allow_namespaced_ambient: bool) -> Result<Self, String> {
        let allowed_hosts: Vec<String> =
            allowed_hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect();
        let patterns = allowed_hosts.iter().map(|h| HostPattern::parse(h)).collect::<Result<_, _>>()?;
        Ok(Self { allowed_hosts, patterns, allow_namespaced_ambient })
    }

    /// Entries written as `*.domain`: before `*` matched within one label, they allowed every
    /// subdomain at any depth; now they allow one label under the domain. Warned about at start.
    pub fn one_label_wildcards(&self) -> Vec<&str> {
        self.allowed_hosts.iter().filter(|h| h.starts_with("*.")).map(String::as_str).collect()
    }

    /// Whether a KeyIssuer (`namespaced`) or ClusterKeyIssuer with these settings may be used.
    pub fn check(&self, settings: &IssuerProvider, namespaced: bool) -> Result<(), InvalidSpec> {
        if let IssuerProvider::Yandex(y) = settings {
            if y.metadata_service.is_some() {
                self.check_ambient(y, namespaced)?;
            }
        }
        if !namespaced {
            return Ok(());
        }
        let endpoints: Vec<(&str, &Option<String>)> = match settings {
            IssuerProvider::Exoscale(e) => vec![("exoscale.endpoint", &e.endpoint)],
            IssuerProvider::Yandex(y) => {
                vec![("yandex.endpoint", &y.endpoint), ("yandex.operationEndpoint", &y.operation_endpoint)]
            }
            IssuerProvider::Outscale(o) => vec![("outscale.endpoint", &o.endpoint)],
            IssuerProvider::Local(_) => Vec::new(),
        };
        for (field, endpoint) in endpoints {
            let Some(endpoint) = endpoint else { continue };
            let host = host_of(field, endpoint)?;
            if !self.allows(&host) {
                return Err(InvalidSpec::new(
                    field,
                    format!(
                        "host {host} is not among the hosts KeyIssuers may name (--allowed-endpoint-hosts: {}); \
                         leave the endpoint unset to use the provider's own API",
                        self.allowed_hosts.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The node's identity (Yandex `metadataService`) goes to Yandex's own API only. A tenant's
    /// KeyIssuer may use it only where the operator allows it, and then only with the default
    /// endpoints. A ClusterKeyIssuer may also name a loopback endpoint: a proxy inside the
    /// operator's own pod, which only a cluster admin can put there (and how the tests run).
    fn check_ambient(&self, y: &YandexIssuer, namespaced: bool) -> Result<(), InvalidSpec> {
        if namespaced && !self.allow_namespaced_ambient {
            return Err(InvalidSpec::new(
                "yandex.metadataService",
                "the node's cloud identity is for ClusterKeyIssuers only (a KeyIssuer would let any \
                 tenant mint keys as the node); use serviceAccountKeySecretRef, or a ClusterKeyIssuer",
            ));
        }
        let fields = [
            ("yandex.endpoint", &y.endpoint, DEFAULT_IAM_ENDPOINT),
            ("yandex.operationEndpoint", &y.operation_endpoint, DEFAULT_OPERATION_ENDPOINT),
        ];
        for (field, endpoint, default) in fields {
            let Some(endpoint) = endpoint else { continue };
            if same_endpoint(endpoint, default) {
                continue;
            }
            let host = host_of(field, endpoint)?;
            if !namespaced && is_loopback(&host) {
                continue;
            }
            let allowed = if namespaced { "unset" } else { "unset, or a loopback proxy in the operator's pod" };
            return Err(InvalidSpec::new(
                field,
                format!(
                    "with metadataService (the node's cloud identity) the endpoint must be Yandex's own \
                     ({default}), so that the node's tokens never leave for another host; got host {host}; \
                     leave it {allowed}, or use serviceAccountKeySecretRef"
                ),
            ));
        }
        Ok(())
    }

    fn allows(&self, host: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(host))
    }
}

/// The host an endpoint names, lower-case, without IPv6 brackets or a trailing dot. Parsing
/// only: nothing is resolved.
fn host_of(field: &str, endpoint: &str) -> Result<String, InvalidSpec> {
    let host = url::Url::parse(endpoint).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase));
    let Some(host) = host else {
        return Err(InvalidSpec::new(field, format!("{endpoint:?} names no host")));
    };
    Ok(host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_string())
}

/// Whether `endpoint` is on the same origin as `default` (scheme, host, port; a path on the
/// provider's own API host keeps the tokens there).
fn same_endpoint(endpoint: &str, default: &str) -> bool {
    let parts = |u: &str| {
        url::Url::parse(u)
            .ok()
            .map(|u| (u.scheme().to_string(), u.host_str().map(str::to_ascii_lowercase), u.port_or_known_default()))
    };
    matches!((parts(endpoint), parts(default)), (Some(a), Some(b)) if a == b)
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issuer(value: serde_json::Value) -> IssuerProvider {
        serde_json::from_value(value).expect("issuer")
    }

    fn guard(hosts: &str) -> TenantGuard {
        TenantGuard::new(hosts, false).expect("valid hosts")
    }

    fn exoscale_at(endpoint: &str) -> IssuerProvider {
        issuer(json!({"exoscale": {"endpoint": endpoint, "credentialsSecretRef": {"name": "c"}}}))
    }

    fn yandex_at(field: &str, endpoint: &str) -> IssuerProvider {
        issuer(json!({"yandex": {"serviceAccountKeySecretRef": {"name": "k"}, field: endpoint}}))
    }

    fn outscale_at(endpoint: &str) -> IssuerProvider {
        issuer(
            json!({"outscale": {"region": "eu-west-2", "endpoint": endpoint, "credentialsSecretRef": {"name": "c"}}}),
        )
    }

    #[test]
    fn the_default_names_the_providers_api_hosts_and_loopback() {
        assert_eq!(parse_allowed_hosts(DEFAULT_ALLOWED_HOSTS).as_deref(), Ok(DEFAULT_ALLOWED_HOSTS));
        let guard = TenantGuard::default();
        assert_eq!(guard.patterns.len(), 5);
        for ok in [
            exoscale_at("https://api-ch-gva-2.exoscale.com/v2"),
            exoscale_at("https://API-DE-FRA-1.exoscale.com./v2"),
            yandex_at("endpoint", "https://iam.api.cloud.yandex.net"),
            yandex_at("operationEndpoint", "https://operation.api.cloud.yandex.net/"),
            outscale_at("https://api.eu-west-2.outscale.com/api/v1"),
            outscale_at("https://api.cloudgouv-eu-west-1.outscale.com/api/v1"),
            exoscale_at("http://127.0.0.1:8080/v2"),
            exoscale_at("http://localhost:1/v2"),
            exoscale_at("http://[::1]:1/v2"),
        ] {
            assert_eq!(guard.check(&ok, true), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn hosts_customers_control_under_the_providers_domains_are_refused() {
        let guard = TenantGuard::default();
        for (bad, field) in [
            // API gateways, functions, buckets and websites under Yandex's customer domains.
            (yandex_at("endpoint", "https://d5d0000.apigw.yandexcloud.net"), "yandex.endpoint"),
            (yandex_at("endpoint", "https://functions.yandexcloud.net/d4e0000"), "yandex.endpoint"),
            (yandex_at("endpoint", "https://bucket.website.yandexcloud.net"), "yandex.endpoint"),
            (yandex_at("operationEndpoint", "https://storage.yandexcloud.net/bucket"), "yandex.operationEndpoint"),
            (yandex_at("endpoint", "https://evil.api.cloud.yandex.net"), "yandex.endpoint"),
            // Object-storage buckets under OUTSCALE's and Exoscale's domains.
            (outscale_at("https://bucket.oos.eu-west-2.outscale.com/api/v1"), "outscale.endpoint"),
            (outscale_at("https://api.oos.eu-west-2.outscale.com/api/v1"), "outscale.endpoint"),
            (outscale_at("https://oos.eu-west-2.outscale.com/api/v1"), "outscale.endpoint"),
            (exoscale_at("https://bucket.sos-ch-gva-2.exoscale.com/v2"), "exoscale.endpoint"),
            (exoscale_at("https://api-ch-gva-2.sos.exoscale.com/v2"), "exoscale.endpoint"),
            // Look-alikes.
            (exoscale_at("https://exoscale.com.evil.example/v2"), "exoscale.endpoint"),
            (exoscale_at("https://api-ch-gva-2.exoscale.com.evil.example/v2"), "exoscale.endpoint"),
            (exoscale_at("https://api-ch-gva-2.exoscale.com@evil.example/v2"), "exoscale.endpoint"),
            (exoscale_at("https://evilexoscale.com/v2"), "exoscale.endpoint"),
            (exoscale_at("https://exoscale.com/v2"), "exoscale.endpoint"),
            (exoscale_at("https://10.0.0.1/v2"), "exoscale.endpoint"),
        ] {
            let e = guard.check(&bad, true).expect_err("refused").to_string();
            assert!(e.contains(field) && e.contains("--allowed-endpoint-hosts"), "{e}");
        }
        // Cluster admins' ClusterKeyIssuers may name any host.
        assert_eq!(guard.check(&exoscale_at("https://10.0.0.1/v2"), false), Ok(()));
        assert_eq!(guard.check(&yandex_at("endpoint", "https://d5d0000.apigw.yandexcloud.net"), false), Ok(()));
    }

    #[test]
    fn a_wildcard_matches_within_one_dns_label() {
        for (pattern, host, ok) in [
            ("api-*.exoscale.com", "api-ch-gva-2.exoscale.com", true),
            ("api-*.exoscale.com", "api-.exoscale.com", true),
            ("api-*.exoscale.com", "api-a.b.exoscale.com", false),
            ("api-*.exoscale.com", "xapi-a.exoscale.com", false),
            ("api.*.outscale.com", "api.eu-west-2.outscale.com", true),
            ("api.*.outscale.com", "api.oos.eu-west-2.outscale.com", false),
            ("api.*.outscale.com", "api..outscale.com", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("iam.api.cloud.yandex.net", "iam.api.cloud.yandex.net", true),
            ("iam.api.cloud.yandex.net", "x.iam.api.cloud.yandex.net", false),
            ("loopback", "127.1.2.3", true),
            ("loopback", "::1", true),
            ("loopback", "localhost", true),
            ("loopback", "localhost.evil.example", false),
            ("loopback", "10.0.0.1", false),
            ("10.0.0.5", "10.0.0.5", true),
            ("[fd00::5]", "fd00::5", true),
        ] {
            let p = HostPattern::parse(pattern).expect(pattern);
            assert_eq!(p.matches(host), ok, "{pattern} {host}");
        }
    }

    #[test]
    fn patterns_standing_for_any_domain_are_refused_at_start() {
        for bad in ["*", "*.com", "example.*", "*.*", "api-*.*.com", "a..b.com", "ex ample.com", "a/b.com"] {
            assert!(parse_allowed_hosts(&format!("loopback,{bad}")).is_err(), "{bad}");
        }
        assert_eq!(parse_allowed_hosts(" a.example.com , ,loopback ").as_deref(), Ok("a.example.com,loopback"));
        assert!(TenantGuard::new("*.com", false).is_err());
    }

    #[test]
    fn old_style_whole_domain_entries_now_allow_one_label_and_are_pointed_out() {
        let old = guard("*.exoscale.com,*.yandexcloud.net,*.cloud.yandex.net,*.outscale.com,loopback");
        assert_eq!(old.one_label_wildcards().len(), 4);
        assert!(TenantGuard::default().one_label_wildcards().is_empty());
        assert!(old.check(&yandex_at("endpoint", "https://d5d0000.apigw.yandexcloud.net"), true).is_err());
        assert!(old.check(&outscale_at("https://bucket.oos.eu-west-2.outscale.com/api/v1"), true).is_err());
        assert!(old.check(&outscale_at("https://api.eu-west-2.outscale.com/api/v1"), true).is_err());
        assert_eq!(old.check(&exoscale_at("https://api-ch-gva-2.exoscale.com/v2"), true), Ok(()));
        // An operator told otherwise.
        let strict = guard("api-*.exoscale.com");
        assert!(strict.check(&exoscale_at("http://127.0.0.1:8080/v2"), true).is_err());
    }

    #[test]
    fn the_nodes_identity_is_for_cluster_issuers_unless_the_operator_allows_more() {
        let ambient = issuer(json!({"yandex": {"metadataService": {}}}));
        let guard = TenantGuard::default();
        assert!(guard.check(&ambient, true).expect_err("ambient").to_string().contains("yandex.metadataService"));
        assert_eq!(guard.check(&ambient, false), Ok(()));
        let allowing = TenantGuard::new(DEFAULT_ALLOWED_HOSTS, true).expect("default");
        assert_eq!(allowing.check(&ambient, true), Ok(()));
    }

    #[test]
    fn the_nodes_identity_goes_to_yandexs_own_api_only() {
        let allowing = TenantGuard::new(DEFAULT_ALLOWED_HOSTS, true).expect("default");
        let ambient = |field: &str, endpoint: &str| issuer(json!({"yandex": {"metadataService": {}, field: endpoint}}));
        for default in [
            ambient("endpoint", "https://iam.api.cloud.yandex.net"),
            ambient("endpoint", "https://iam.api.cloud.yandex.net/"),
            ambient("endpoint", "https://IAM.api.cloud.yandex.net:443"),
            ambient("operationEndpoint", "https://operation.api.cloud.yandex.net/v1"),
            ambient("operationEndpoint", "https://operation.api.cloud.yandex.net"),
        ] {
            assert_eq!(allowing.check(&default, true), Ok(()));
            assert_eq!(allowing.check(&default, false), Ok(()));
        }
        // Loopback is allowed for KeyIssuers' endpoints, never with the node's identity.
        let local = ambient("endpoint", "http://127.0.0.1:8080");
        let e = allowing.check(&local, true).expect_err("loopback on a KeyIssuer").to_string();
        assert!(e.contains("yandex.endpoint") && e.contains("metadataService"), "{e}");
        assert_eq!(allowing.check(&local, false), Ok(()), "a proxy in the operator's pod");
        for elsewhere in [
            ambient("endpoint", "https://d5d0000.apigw.yandexcloud.net"),
            ambient("operationEndpoint", "https://proxy.example.com"),
            ambient("endpoint", "https://iam.api.cloud.yandex.net:8443"),
            ambient("endpoint", "http://iam.api.cloud.yandex.net"),
        ] {
            assert!(allowing.check(&elsewhere, true).is_err(), "{elsewhere:?}");
            assert!(allowing.check(&elsewhere, false).is_err(), "{elsewhere:?} on a ClusterKeyIssuer");
        }
        // Without the node's identity a ClusterKeyIssuer names what it likes.
        assert_eq!(allowing.check(&yandex_at("endpoint", "https://proxy.example.com"), false), Ok(()));
    }
}
