//! Argo Rollouts as consumers: their cache is fed by a watch only where the operator can use
//! it, that is where the `rollouts.argoproj.io` CRD is installed and the operator may list
//! Rollouts (the chart grants that with `rbac.argoRollouts`). Elsewhere the operator works
//! without them and says so once in its log; it looks again every [`RECHECK`], so that Argo
//! Rollouts installed (or the RBAC granted) later is taken up without a restart.

use std::time::Duration;

use kube::api::{Api, ListParams};

use crate::api::Rollout;

/// How often the operator looks again for a Rollout CRD (or RBAC) that was missing.
pub const RECHECK: Duration = Duration::from_secs(300);

/// Whether Rollouts can be watched, as one list of at most one Rollout answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    Watchable,
    /// The CRD is not installed (404).
    NotInstalled,
    /// The CRD is there but the operator may not list Rollouts (403).
    Forbidden,
    /// Any other failure (the apiserver away): asked again at the next check.
    Unknown(String),
}

impl Availability {
    /// The one log line saying why Rollout consumers are not restarted.
    pub fn explain(&self) -> String {
        let recheck = crate::api::duration::format_duration(RECHECK);
        match self {
            Self::Watchable => "Argo Rollouts found: Rollout consumers are restarted through spec.restartAt".into(),
            Self::NotInstalled => format!(
                "the Argo Rollouts CRD (rollouts.argoproj.io) is not installed: consumers of kind Rollout are not \
                 restarted; looking again every {recheck}"
            ),
            Self::Forbidden => format!(
                "Argo Rollouts is installed but the operator may not list Rollouts: consumers of kind Rollout are \
                 not restarted; grant list, watch and patch on rollouts.argoproj.io (Helm value \
                 rbac.argoRollouts=true); looking again every {recheck}"
            ),
            Self::Unknown(e) => {
                format!("cannot tell whether Argo Rollouts is installed ({e}); looking again in {recheck}")
            }
        }
    }
}

impl Availability {
    /// Logs [`Self::explain`]: a warning where something is in the way, else information (most
    /// clusters have no Argo Rollouts, which is nothing to warn about).
    pub fn log(&self) {
        match self {
            Self::Watchable | Self::NotInstalled => tracing::info!("{}", self.explain()),
            Self::Forbidden | Self::Unknown(_) => tracing::warn!("{}", self.explain()),
        }
    }
}

pub async fn availability(api: &Api<Rollout>) -> Availability {
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Availability::Watchable,
        Err(kube::Error::Api(s)) if s.code == 404 => Availability::NotInstalled,
        Err(kube::Error::Api(s)) if s.code == 403 => Availability::Forbidden,
        Err(e) => Availability::Unknown(crate::kube_error::describe(&e)),
    }
}

/// Asks again every [`RECHECK`] until Rollouts can be watched, then calls `start`. Says why not
/// once, and again only when the reason changes.
pub async fn when_watchable(api: Api<Rollout>, first: Availability, start: impl FnOnce()) {
    let mut said = first;
    loop {
        tokio::time::sleep(RECHECK).await;
        let now = availability(&api).await;
        if now == Availability::Watchable {
            now.log();
            start();
            return;
        }
        if std::mem::discriminant(&now) != std::mem::discriminant(&said) {
            now.log();
            said = now;
        }
    }
}
