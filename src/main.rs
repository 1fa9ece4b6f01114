use std::process::ExitCode;

use clap::Parser;
use cloudkeys::cli::{Cli, Command};

// jemalloc: no per-allocation header and finer size classes than glibc's malloc, which counts
// for the many small, long-lived objects of the caches (docs/design.md, Scale).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// Freed pages go back to the system at once instead of after jemalloc's default 10 s: a burst of
// reconciles leaves megabytes of transient status patches and Events behind, which otherwise
// stay resident (8 MiB of 72 at 11,000 AccessKeys, docs/design.md, Scale). `_RJEM_MALLOC_CONF` in the
// environment still overrides it. A thin pointer to a C string, as jemalloc reads it.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 34] = b"dirty_decay_ms:0,muzzy_decay_ms:0\0";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            cloudkeys::telemetry::init(args.log_format);
            let client = match cloudkeys::runtime::client::client(args.kube_api_qps, args.kube_api_burst).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot configure the Kubernetes client (KUBECONFIG or in-cluster)");
                    return ExitCode::FAILURE;
                }
            };
            match cloudkeys::runtime::run::run(client, *args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "controller failed");
                    ExitCode::FAILURE
                }
            }
        }
        command => cloudkeys::cli::execute(command).await,
    }
}
