use std::process::ExitCode;

use clap::Parser;
use cloudkeys::cli::{Cli, Command};

// jemalloc: no per-allocation header and finer size classes than glibc's malloc, which counts
// for the many small, long-lived objects of the caches (README, Scale).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match cloudkeys::api::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cloudkeys: cannot render CRDs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("cloudkeys {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            cloudkeys::telemetry::init(args.log_format);
            let client = match cloudkeys::controller::client::client(args.kube_api_qps, args.kube_api_burst).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot configure the Kubernetes client (KUBECONFIG or in-cluster)");
                    return ExitCode::FAILURE;
                }
            };
            match cloudkeys::controller::run::run(client, args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "controller failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
