//! Logging: `tracing` with a pretty or JSON format. Secrets never reach a log:
//! settings are never printed, secrets are `SecretString`, and interaction
//! tokens stay out of spans.
//!
//! Every interaction runs in one `interaction` span carrying `request_id`,
//! `kind`, `command`, `member_id` and (for `/jit`) `vm`; JSON lines include
//! the span's fields, so one grep for a request id finds its whole story.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// Targets capped whatever the filter says, because they log secrets:
/// serenity's REST client puts each request (whose route holds the
/// interaction token, valid 15 minutes) into an INFO span and prints failed
/// responses (with webhook-token URLs) at DEBUG.
const ALWAYS: &[&str] = &["serenity::http=error"];

/// A subscriber writing `format` to `writer`, keeping what `filter` (a
/// tracing filter such as `info,serenity=warn`) lets through, except the
/// [`ALWAYS`] caps; an invalid filter falls back to `info`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let mut filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    for cap in ALWAYS {
        if let Ok(directive) = cap.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Pretty => Box::new(builder.finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// Installs the global subscriber. `RUST_LOG` wins over `filter`. Calling it
/// twice is harmless (the second call does nothing).
pub fn init<W>(format: LogFormat, filter: &str, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| EnvFilter::try_new(f).is_ok())
        .unwrap_or_else(|| filter.to_owned());
    let _ = subscriber(format, &filter, writer).try_init();
}
