//! Serenity errors, described without secrets.
//!
//! Serenity's `Debug` of an HTTP error holds the request URL, and webhook URLs
//! carry the interaction token; reqwest's `Display` holds the URL too. Only
//! the helpers here turn an error into text.

use serenity::http::HttpError;

/// Discord's JSON error code, for an unsuccessful request.
pub(crate) fn code(err: &serenity::Error) -> Option<isize> {
    match err {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => {
            Some(response.error.code)
        }
        _ => None,
    }
}

/// The HTTP status, for an unsuccessful request.
pub(crate) fn status(err: &serenity::Error) -> Option<u16> {
    match err {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => {
            Some(response.status_code.as_u16())
        }
        _ => None,
    }
}

/// Whether the request never got an answer (connect, timeout, body).
pub(crate) fn is_network(err: &serenity::Error) -> bool {
    matches!(err, serenity::Error::Http(HttpError::Request(_)))
}

/// One line for logs and `SendError`s: status, Discord's code and message,
/// never a URL or token.
pub(crate) fn describe(err: &serenity::Error) -> String {
    match err {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => format!(
            "Discord answered {} (code {}): {}",
            response.status_code.as_u16(),
            response.error.code,
            HttpError::UnsuccessfulRequest(response.clone())
        ),
        serenity::Error::Http(HttpError::Request(e)) => {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "failed"
            };
            format!("request to Discord {what}")
        }
        // The other variants' `Display` holds no URL.
        other => other.to_string(),
    }
}
