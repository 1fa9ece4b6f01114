//! What a tenant's KeyIssuer may point the operator at: the hosts its endpoints name
//! (`--allowed-endpoint-hosts`) and ambient credentials (the node's cloud identity, which only
//! ClusterKeyIssuers may use unless `--allow-namespaced-ambient-credentials`). Checked before a
//! provider client is built, so that nothing — no signed request, no token — is ever sent to a
//! host a tenant chose. ClusterKeyIssuers are created by cluster admins: not limited here.

use crate::api::validation::InvalidSpec;
use crate::api::IssuerProvider;

/// `--allowed-endpoint-hosts` when not set: the providers' API hosts and loopback.
pub const DEFAULT_ALLOWED_HOSTS: &str = "*.exoscale.com,*.yandexcloud.net,*.cloud.yandex.net,*.outscale.com,loopback";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantGuard {
    /// Host names, `*.` prefixes (subdomains), or `loopback` (127.0.0.0/8, `::1`, `localhost`).
    pub allowed_hosts: Vec<String>,
    pub allow_namespaced_ambient: bool,
}

impl Default for TenantGuard {
    fn default() -> Self {
        Self::new(DEFAULT_ALLOWED_HOSTS, false)
    }
}

impl TenantGuard {
    pub fn new(allowed_hosts: &str, allow_namespaced_ambient: bool) -> Self {
        let allowed_hosts =
            allowed_hosts.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).collect();
        Self { allowed_hosts, allow_namespaced_ambient }
    }

    /// Whether a KeyIssuer (`namespaced`) or ClusterKeyIssuer with these settings may be used.
    pub fn check(&self, settings: &IssuerProvider, namespaced: bool) -> Result<(), InvalidSpec> {
        if !namespaced {
            return Ok(());
        }
        let endpoints: Vec<(&str, &Option<String>)> = match settings {
            IssuerProvider::Exoscale(e) => vec![("exoscale.endpoint", &e.endpoint)],
            IssuerProvider::Yandex(y) => {
                if y.metadata_service.is_some() && !self.allow_namespaced_ambient {
                    return Err(InvalidSpec::new(
                        "yandex.metadataService",
                        "the node's cloud identity is for ClusterKeyIssuers only (a KeyIssuer would let any \
                         tenant mint keys as the node); use serviceAccountKeySecretRef, or a ClusterKeyIssuer",
                    ));
                }
                vec![("yandex.endpoint", &y.endpoint), ("yandex.operationEndpoint", &y.operation_endpoint)]
            }
            IssuerProvider::Outscale(o) => vec![("outscale.endpoint", &o.endpoint)],
            IssuerProvider::Local(_) => Vec::new(),
        };
        for (field, endpoint) in endpoints {
            let Some(endpoint) = endpoint else { continue };
            let host = url::Url::parse(endpoint).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase));
            let Some(host) = host else {
                return Err(InvalidSpec::new(field, format!("{endpoint:?} names no host")));
            };
            if !self.allows(&host) {
                return Err(InvalidSpec::new(
                    field,
                    format!(
                        "host {host} is not among the hosts KeyIssuers may name (--allowed-endpoint-hosts: {})",
                        self.allowed_hosts.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn allows(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed_hosts.iter().any(|allowed| match allowed.as_str() {
            "loopback" => is_loopback(host),
            pattern => match pattern.strip_prefix("*.") {
                Some(domain) => host.strip_suffix(domain).is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => host == pattern,
            },
        })
    }
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

    #[test]
    fn key_issuers_may_name_the_providers_hosts_and_loopback_only() {
        let guard = TenantGuard::default();
        let at =
            |endpoint: &str| issuer(json!({"exoscale": {"endpoint": endpoint, "credentialsSecretRef": {"name": "c"}}}));
        for ok in [
            "https://api-ch-gva-2.exoscale.com/v2",
            "http://127.0.0.1:8080/v2",
            "http://localhost:1/v2",
            "http://[::1]:1/v2",
        ] {
            assert_eq!(guard.check(&at(ok), true), Ok(()), "{ok}");
        }
        for bad in [
            "https://exoscale.com.evil.example/v2",
            "https://evilexoscale.com/v2",
            "https://exoscale.com/v2",
            "https://10.0.0.1/v2",
        ] {
            let e = guard.check(&at(bad), true).expect_err(bad).to_string();
            assert!(e.contains("exoscale.endpoint") && e.contains("--allowed-endpoint-hosts"), "{e}");
        }
        // Cluster admins' ClusterKeyIssuers may name any host.
        assert_eq!(guard.check(&at("https://10.0.0.1/v2"), false), Ok(()));
        // An operator told otherwise.
        let strict = TenantGuard::new("*.exoscale.com", false);
        assert!(strict.check(&at("http://127.0.0.1:8080/v2"), true).is_err());
        let yandex = issuer(
            json!({"yandex": {"serviceAccountKeySecretRef": {"name": "k"}, "operationEndpoint": "https://op.evil.example"}}),
        );
        assert!(guard
            .check(&yandex, true)
            .expect_err("operation endpoint")
            .to_string()
            .contains("yandex.operationEndpoint"));
    }

    #[test]
    fn the_nodes_identity_is_for_cluster_issuers_unless_the_operator_allows_more() {
        let ambient = issuer(json!({"yandex": {"metadataService": {}}}));
        let guard = TenantGuard::default();
        assert!(guard.check(&ambient, true).expect_err("ambient").to_string().contains("yandex.metadataService"));
        assert_eq!(guard.check(&ambient, false), Ok(()));
        assert_eq!(TenantGuard::new(DEFAULT_ALLOWED_HOSTS, true).check(&ambient, true), Ok(()));
    }
}
