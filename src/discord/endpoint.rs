//! HTTP interactions mode: Discord POSTs each interaction, signed with
//! Ed25519, to `/interactions`; the acknowledgement is the response body.
//!
//! The POST is answered within milliseconds: the dispatch runs in a task of
//! its own, hands its first response back through a oneshot, and continues
//! (the handler, then a REST edit of the original response) after the HTTP
//! answer has gone out.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serenity::all::Interaction;
use serenity::http::Http;
use serenity::interactions_endpoint::Verifier;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use super::dispatch::{Ack, Dispatcher};
use crate::clock::SharedClock;
use crate::interactions::InteractionHandler;

/// The largest body accepted (Discord's interactions are a few KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How far `X-Signature-Timestamp` may be from now, in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;
/// How long the POST waits for the dispatch's first response (Discord
/// gives up after 3 s).
const INLINE_DEADLINE: Duration = Duration::from_millis(2_800);

const SIGNATURE: &str = "x-signature-ed25519";
const TIMESTAMP: &str = "x-signature-timestamp";

struct Endpoint {
    verifier: Verifier,
    dispatcher: Dispatcher,
    clock: SharedClock,
    tracker: TaskTracker,
}

/// The router of HTTP interactions mode: `POST /interactions`.
///
/// - `public_key`: the application's Ed25519 public key (`discord.public_key`).
/// - `http`: from [`super::discord_http`] (application id preset), for the
///   follow-up edits.
/// - `clock`: "now" for the timestamp freshness check.
/// - `tracker`: every dispatch runs in it; at shutdown, stop the server,
///   then `tracker.close()` and wait (bounded) for replies in flight.
///
/// Answers 401 to a missing or bad signature and to a timestamp more than
/// 5 minutes from now, 413 to a body over 64 KiB, 400 to a signed body that
/// is not an interaction, `{"type":1}` to PING, and the interaction's first
/// response (a deferred ephemeral reply, autocomplete choices, ...) inline.
///
/// # Errors
///
/// When `public_key` is not a valid Ed25519 key.
pub fn interactions_router(
    public_key: [u8; 32],
    http: Arc<Http>,
    handler: Arc<dyn InteractionHandler>,
    clock: SharedClock,
    tracker: TaskTracker,
) -> anyhow::Result<Router> {
    let verifier =
        Verifier::try_new(public_key).map_err(|e| anyhow::anyhow!("discord.public_key: {e}"))?;
    let endpoint = Arc::new(Endpoint {
        verifier,
        dispatcher: Dispatcher::new(http, handler),
        clock,
        tracker,
    });
    Ok(Router::new()
        .route("/interactions", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(endpoint))
}

async fn receive(
    State(endpoint): State<Arc<Endpoint>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(why) = endpoint.authenticate(&headers, &body) {
        debug!(why, "interaction refused");
        return (StatusCode::UNAUTHORIZED, "invalid request signature").into_response();
    }
    let interaction: Interaction = match serde_json::from_slice(&body) {
        Ok(interaction) => interaction,
        Err(e) => {
            // serde_json's message names a line and column, never content.
            warn!(error = %e, "a signed body is not an interaction");
            return (StatusCode::BAD_REQUEST, "not an interaction").into_response();
        }
    };
    if matches!(interaction, Interaction::Ping(_)) {
        return axum::Json(serde_json::json!({"type": 1})).into_response();
    }
    let (reply, first_response) = oneshot::channel();
    let dispatcher = endpoint.dispatcher.clone();
    endpoint
        .tracker
        .spawn(async move { dispatcher.dispatch(interaction, Ack::Inline(reply)).await });
    match tokio::time::timeout(INLINE_DEADLINE, first_response).await {
        Ok(Ok(response)) => axum::Json(response).into_response(),
        Ok(Err(_)) => {
            error!("the interaction ended without a response");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(_) => {
            error!("no response within the deadline");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

impl Endpoint {
    /// Checks the signature over timestamp ‖ body and the timestamp's
    /// freshness (the verifier has no replay check of its own).
    fn authenticate(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        let header = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or("missing signature header")
        };
        let signature = header(SIGNATURE)?;
        let timestamp = header(TIMESTAMP)?;
        let sent_at: i64 = timestamp.parse().map_err(|_| "malformed timestamp")?;
        let now = self.clock.now().timestamp();
        if now.abs_diff(sent_at) > MAX_CLOCK_SKEW_SECS.unsigned_abs() {
            return Err("timestamp too far from now");
        }
        self.verifier
            .verify(signature, timestamp, body)
            .map_err(|()| "bad signature")
    }
}
