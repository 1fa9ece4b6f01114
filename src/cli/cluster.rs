//! Reaching the cluster as kubectl does: KUBECONFIG (or `--kubeconfig`), `--context`, the
//! context's namespace unless `-n`, every namespace with `-A`.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Why a command could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Arguments that parse but do not go together.
    #[error("{0}")]
    Usage(String),
    #[error("cannot configure a Kubernetes client: {0}")]
    Config(String),
    #[error("{what} not found")]
    NotFound { what: String },
    #[error(
        "the cloudkeys CRDs are not installed in this cluster (no {0}): install the chart or `kubectl apply -f crds/`"
    )]
    NoCrds(String),
    #[error("{}", crate::kube_error::describe(.0))]
    Kube(#[from] kube::Error),
    #[error("cannot print: {0}")]
    Output(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }

    /// A failed list or get: a 404 on a list means the resource type is not served.
    pub fn listing(resource: &str, e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 404 => Self::NoCrds(resource.to_string()),
            _ => Self::Kube(e),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Path of the kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

impl ClusterArgs {
    /// A client and the namespace of its context (`default` if the context names none).
    pub async fn connect(&self) -> Result<(Client, String), CliError> {
        let options = KubeConfigOptions { context: self.context.clone(), ..Default::default() };
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| CliError::Config(e.to_string()))?;
                Config::from_custom_kubeconfig(file, &options).await.map_err(|e| CliError::Config(e.to_string()))?
            }
            None if self.context.is_some() => {
                Config::from_kubeconfig(&options).await.map_err(|e| CliError::Config(e.to_string()))?
            }
            None => Config::infer().await.map_err(|e| CliError::Config(e.to_string()))?,
        };
        let namespace = config.default_namespace.clone();
        let client = Client::try_from(config).map_err(|e| CliError::Config(e.to_string()))?;
        Ok((client, namespace))
    }
}

/// `-n NS` / `-A`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScopeArgs {
    /// The namespace (default: the context's).
    #[arg(short = 'n', long, value_name = "NS", conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// Where a command looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    All,
}

impl ScopeArgs {
    pub fn scope(&self, context_namespace: &str) -> Scope {
        match (&self.namespace, self.all_namespaces) {
            (_, true) => Scope::All,
            (Some(ns), false) => Scope::Namespace(ns.clone()),
            (None, false) => Scope::Namespace(context_namespace.to_string()),
        }
    }
}

impl Scope {
    pub fn api<K>(&self, client: &Client) -> kube::Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match self {
            Self::Namespace(ns) => kube::Api::namespaced(client.clone(), ns),
            Self::All => kube::Api::all(client.clone()),
        }
    }

    /// "in namespace x" / "in any namespace", for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Namespace(ns) => format!("in namespace {ns}"),
            Self::All => "in any namespace".to_string(),
        }
    }
}

/// The objects of a list that read. One that does not (a field its type cannot hold) is named
/// on stderr and left out, as the operator skips it: it never hides the others.
pub fn readable<K: kube::Resource<DynamicType = ()>>(items: Vec<crate::api::Decoded<K>>) -> Vec<K> {
    items
        .into_iter()
        .filter_map(|d| match d {
            crate::api::Decoded::Read(obj) => Some(obj),
            crate::api::Decoded::Unreadable { metadata, error } => {
                let name = match &metadata.namespace {
                    Some(ns) => format!("{ns}/{}", metadata.name.unwrap_or_default()),
                    None => metadata.name.unwrap_or_default(),
                };
                eprintln!(
                    "warning: {} {} cannot be read and is left out: {}",
                    K::kind(&()),
                    super::output::printable(&name),
                    super::output::printable(&error)
                );
                None
            }
        })
        .collect()
}
