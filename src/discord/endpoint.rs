//! HTTP interactions mode: Discord POSTs each interaction, signed with
//! Ed25519, to `/interactions`; the acknowledgement is the response body.
//!
//! The POST is answered within milliseconds: the dispatch runs in a task of
//! its own, hands its first response back through a oneshot, and continues
//! (the handler, then a REST edit of the original response) after the HTTP
//! answer has gone out.
//!
//! A signed body stays valid while its timestamp is within 5 minutes, so
//! the same interaction can arrive twice (Discord retrying, or someone
//! replaying a captured POST). The first delivery claims the interaction id
//! in the [`InteractionLedger`] and records its first response; a repeat is
//! answered with that response and runs nothing, whatever the interaction
//! (a command, a button, an admin action).

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
use tracing::{debug, error, info, warn};

use super::dispatch::{Ack, Dispatcher};
use crate::clock::SharedClock;
use crate::interactions::{Claim, InteractionHandler, InteractionLedger};

/// The largest body accepted (Discord's interactions are a few KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How far `X-Signature-Timestamp` may be from now, in seconds.
pub const MAX_CLOCK_SKEW_SECS: i64 = 5 * 60;
/// How long the POST waits for the dispatch's first response (Discord
/// gives up after 3 s).
const INLINE_DEADLINE: Duration = Duration::from_millis(2_800);
/// How often a repeat looks for the first delivery's response.
const REPEAT_POLL: Duration = Duration::from_millis(25);

const SIGNATURE: &str = "x-signature-ed25519";
const TIMESTAMP: &str = "x-signature-timestamp";

struct Endpoint {
    verifier: Verifier,
    dispatcher: Dispatcher,
    clock: SharedClock,
    tracker: TaskTracker,
    ledger: Arc<dyn InteractionLedger>,
}

/// The router of HTTP interactions mode: `POST /interactions`.
///
/// - `public_key`: the application's Ed25519 public key (`discord.public_key`).
/// - `http`: from [`super::discord_http`] (application id preset), for the
///   follow-up edits.
/// - `clock`: "now" for the timestamp freshness check.
/// - `tracker`: every dispatch runs in it; at shutdown, stop the server,
///   then `tracker.close()` and wait (bounded) for replies in flight.
/// - `ledger`: the interactions taken so far (the store), so a repeat of
///   one is answered with its first response and never runs twice.
///
/// Answers 401 to a missing or bad signature and to a timestamp more than
/// 5 minutes from now, 413 to a body over 64 KiB, 400 to a signed body that
/// is not an interaction, `{"type":1}` to PING, and the interaction's first
/// response (a deferred ephemeral reply, autocomplete choices, ...) inline;
/// 503 when the ledger cannot be reached (nothing runs).
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
    ledger: Arc<dyn InteractionLedger>,
) -> anyhow::Result<Router> {
    let verifier =
        Verifier::try_new(public_key).map_err(|e| anyhow::anyhow!("discord.public_key: {e}"))?;
    let endpoint = Arc::new(Endpoint {
        verifier,
        dispatcher: Dispatcher::new(http, handler),
        clock,
        tracker,
        ledger,
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
    let id = interaction.id().to_string();
    match endpoint.ledger.claim(&id, endpoint.clock.now()).await {
        Ok(Claim::First) => {}
        Ok(Claim::Repeat(first)) => return endpoint.repeat(&id, first).await,
        Err(e) => {
            error!(error.message = %e, interaction = %id, "could not claim the interaction; not running it");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let (reply, first_response) = oneshot::channel();
    let dispatcher = endpoint.dispatcher.clone();
    endpoint
        .tracker
        .spawn(async move { dispatcher.dispatch(interaction, Ack::Inline(reply)).await });
    match tokio::time::timeout(INLINE_DEADLINE, first_response).await {
        Ok(Ok(response)) => {
            let body = serde_json::to_string(&response).unwrap_or_default();
            if let Err(e) = endpoint.ledger.record(&id, &body).await {
                warn!(error.message = %e, interaction = %id, "could not record the first response; a repeat will not be answered with it");
            }
            json_response(body)
        }
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

fn json_response(body: String) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

impl Endpoint {
    /// Answers a repeat of interaction `id` with the first delivery's
    /// response, waiting (within Discord's deadline) for it if the first is
    /// still being handled. Runs nothing.
    async fn repeat(&self, id: &str, mut first: Option<String>) -> Response {
        let started = tokio::time::Instant::now();
        while first.is_none() && started.elapsed() < INLINE_DEADLINE {
            tokio::time::sleep(REPEAT_POLL).await;
            first = match self.ledger.first_response(id).await {
                Ok(found) => found,
                Err(e) => {
                    error!(error.message = %e, interaction = %id, "could not read the first response");
                    break;
                }
            };
        }
        match first {
            Some(body) => {
                info!(interaction = %id, "a repeated interaction, answered with its first response");
                json_response(body)
            }
            None => {
                warn!(interaction = %id, "a repeated interaction whose first response is not known; not running it");
                StatusCode::CONFLICT.into_response()
            }
        }
    }

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
