//! Logging set-up, once per process.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `RUST_LOG` overrides the default filter (`info`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        // The reconcile's span (naming its AccessKey) on each line, not the whole stack.
        LogFormat::Json => registry.with(fmt::layer().json().with_current_span(true).with_span_list(false)).init(),
        LogFormat::Text => registry.with(fmt::layer().with_target(false)).init(),
    }
}
