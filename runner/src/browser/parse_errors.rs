//! DevTools messages the CDP client could not parse. chromey drops such a
//! message with only a debug line (target `chromiumoxide::conn::raw_ws::parse_errors`),
//! so an event or answer the runner waits for would vanish silently.
//! [`parse_error_layer`] counts those lines: add it to the process's
//! registry beside the other layers (give those per-layer filters: a global
//! filter that hides debug lines would hide these too), then read
//! [`parse_errors`].

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{Event, Subscriber};
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

const TARGET: &str = "chromiumoxide::conn::raw_ws::parse_errors";

static COUNT: AtomicU64 = AtomicU64::new(0);

/// Messages dropped unparsed since the process started.
pub fn parse_errors() -> u64 {
    COUNT.load(Ordering::Relaxed)
}

/// A layer that counts (and prints to stderr) every DevTools message
/// dropped unparsed. Its own filter sees only those lines, so it neither
/// hides nor enables anything for the other layers.
pub fn parse_error_layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    ParseErrorLayer.with_filter(filter_fn(|metadata| metadata.target() == TARGET))
}

struct ParseErrorLayer;

impl<S: Subscriber> Layer<S> for ParseErrorLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == TARGET {
            let n = COUNT.fetch_add(1, Ordering::Relaxed) + 1;
            // Says which message, so a protocol drift is found by its name.
            let mut message = MessageText(String::new());
            event.record(&mut message);
            eprintln!("DevTools message #{n} dropped unparsed: {}", message.0);
        }
    }
}

struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
