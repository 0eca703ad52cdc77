//! Logging: `tracing` to stderr, pretty for a terminal or JSON lines; and
//! the runner's count of DevTools messages its CDP client could not parse
//! (dropped by the client at debug level, whatever the log level says).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `default_level`.
pub fn init(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The log level filters the log alone, so the parse-error count sees
    // the debug lines it counts.
    let log = match format {
        LogFormat::Pretty => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(runner::browser::parse_error_layer())
        .try_init();
}
