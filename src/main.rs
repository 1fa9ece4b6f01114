use std::process::ExitCode;

use clap::Parser;
use cloudkeys::cli::{Cli, Command};

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
            tracing::error!("the controllers are not implemented yet");
            ExitCode::FAILURE
        }
    }
}
