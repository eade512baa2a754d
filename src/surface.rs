//! What every HTTP listener of the bot gets: a time limit per request and
//! per body, a body size limit and a cap on requests in flight. The
//! interactions endpoint faces the internet; a slow or flooding client must
//! not hold connections or memory without end.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// The longest a request may take, reading included: above `/readyz`'s
/// worst case (a 5 s database check, then a 5 s token check); Discord
/// itself waits only 3 s for an interaction's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest a client may take to send its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest body accepted (Discord's interactions are a few KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Requests handled at once per listener; more wait (within the timeout).
pub const MAX_IN_FLIGHT: usize = 64;

/// `router` behind the limits above: 408 past [`REQUEST_TIMEOUT`], 413
/// past [`MAX_BODY_BYTES`], at most [`MAX_IN_FLIGHT`] requests at once.
pub fn harden(router: Router) -> Router {
    router
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
        .layer(GlobalConcurrencyLimitLayer::new(MAX_IN_FLIGHT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, Bytes};
    use axum::http::Request;
    use axum::routing::post;
    use tower::ServiceExt as _;

    use super::*;

    fn app() -> Router {
        harden(Router::new().route(
            "/echo",
            post(|body: Bytes| async move { body.len().to_string() }),
        ))
    }

    async fn status(path: &str, body: Vec<u8>) -> StatusCode {
        let request = Request::post(path).body(Body::from(body)).unwrap();
        app().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_with_413() {
        assert_eq!(status("/echo", vec![0; 10]).await, StatusCode::OK);
        assert_eq!(
            status("/echo", vec![0; MAX_BODY_BYTES + 1]).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
