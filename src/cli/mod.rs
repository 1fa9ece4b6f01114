//! The commands a platform engineer uses to see and steer the operator (`status`, `rotate`,
//! `inspect`, `check`, `uninstall`) and to get its CRDs (`crds`), also installed as the kubectl
//! plugin `kubectl-cloudkeys`. The operator itself (`run`) joins them in
//! `runtime::command_line`.
//!
//! Exit codes: 0 success, 1 when what a command reports is unhealthy (or it could not find
//! out), 2 on usage errors (clap's own, and those found once the arguments are read).

mod check;
mod cluster;
mod inspect;
mod output;
use output::{say, warn_user};
mod rotate;
mod status;
mod uninstall;

use std::process::ExitCode;

use clap::Subcommand;

pub use self::cluster::{CliError, ClusterArgs, Scope, ScopeArgs};
pub use self::output::OutputFormat;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// AccessKeys: Ready and reason, issuer, key id, age, expiry, next rotation, replaced keys
    /// awaiting revocation, consumers. Exits 1 if one is not Ready.
    Status(status::StatusArgs),
    /// Request a rotation (the `cloudkeys.io/rotate` annotation) and print what was requested.
    Rotate(rotate::RotateArgs),
    /// Everything about one AccessKey, and what the operator will do next.
    Inspect(inspect::InspectArgs),
    /// CRDs installed, operator leader, issuers Ready, unrestricted issuers, unbounded grants,
    /// orphaned keys. Exits 1 if something is wrong (warnings alone exit 0).
    Check(check::CheckArgs),
    /// Before uninstalling the operator: list the AccessKeys that are left and exit 1, or with
    /// --revoke-all delete them all (the operator revokes each key) and with --wait wait until
    /// they are gone. Never removes a finalizer.
    Uninstall(uninstall::UninstallArgs),
    /// Print every CRD as one multi-document YAML stream.
    Crds,
    /// Print the version.
    Version,
}

/// What a command found: 0 or 1 as its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
}

impl Health {
    fn of(healthy: bool) -> Self {
        if healthy {
            Self::Healthy
        } else {
            Self::Unhealthy
        }
    }
}

/// Runs one of the commands a person runs.
pub async fn execute(command: Command) -> ExitCode {
    let outcome = match command {
        Command::Status(args) => status::run(&args).await,
        Command::Rotate(args) => rotate::run(&args).await,
        Command::Inspect(args) => inspect::run(&args).await,
        Command::Check(args) => check::run(&args).await,
        Command::Uninstall(args) => uninstall::run(&args).await,
        Command::Crds => match crate::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                Ok(Health::Healthy)
            }
            Err(e) => Err(CliError::Output(e.to_string())),
        },
        Command::Version => {
            say!("cloudkeys {}", env!("CARGO_PKG_VERSION"));
            Ok(Health::Healthy)
        }
    };
    match outcome {
        Ok(Health::Healthy) => ExitCode::SUCCESS,
        Ok(Health::Unhealthy) => ExitCode::from(1),
        Err(e) => {
            warn_user!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
