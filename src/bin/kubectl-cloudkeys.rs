//! `kubectl cloudkeys …`: the same commands as `cloudkeys`, found by kubectl on PATH under the
//! plugin's name.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    cloudkeys::runtime::command_line::kubectl_plugin().await
}
