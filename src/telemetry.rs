//! Logging: `tracing` with a pretty or JSON format. Secrets never reach a log:
//! settings are never printed, secrets are `SecretString`, and interaction
//! tokens stay out of spans.
//!
//! Every interaction runs in one `interaction` span carrying `request_id`,
//! `kind`, `command`, `member_id` and (for `/jit`) `vm`; JSON lines include
//! the span's fields, so one grep for a request id finds its whole story.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// Targets never logged, whatever the filter says, because they log
/// secrets: serenity's REST client puts each request (whose route holds the
/// interaction token, valid 15 minutes) into a span and prints failed
/// responses (with webhook-token URLs); tungstenite prints every gateway
/// frame at trace, and an INTERACTION_CREATE frame holds the interaction's
/// token (IDENTIFY, the bot's). Our own code logs Discord's errors through
/// `discord::errors::describe`, without URLs or tokens.
const NEVER: &[&str] = &["serenity::http", "tungstenite", "tokio_tungstenite"];

/// A filter of its own, beside the configurable one: a subscriber shows a
/// span or event only when both let it through, so no directive in
/// `RUST_LOG` or `logging.filter`, however specific, can turn these back on.
fn secret_free() -> Targets {
    NEVER.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |t, target| t.with_target(*target, LevelFilter::OFF),
    )
}

/// A subscriber writing `format` to `writer`, keeping what `filter` (a
/// tracing filter such as `info,serenity=warn`) lets through, except the
/// [`NEVER`] targets; an invalid filter falls back to `info`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Pretty => Box::new(builder.finish().with(secret_free())),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish()
                .with(secret_free()),
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
