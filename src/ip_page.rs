//! The IP capture page, on the `http.listen` listener: `GET /ip/{token}`
//! shows whose link it is and one button; `POST /ip/{token}` (the button)
//! saves the address the visit comes from. Saving only on the POST keeps
//! link previews and prefetchers from using the link up.
//!
//! Plain HTML from the binary, no JavaScript and no outside resources, so
//! it works in any browser and with a screen reader. The client address
//! comes from the connection, or from `X-Forwarded-For` only when the
//! connection is from a trusted proxy ([`client_address`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ipnet::IpNet;

use crate::domain::ip_link::client_address;
use crate::service::Service;
use crate::service::ip_link::{CaptureError, LinkState};

/// What the page needs.
#[derive(Clone)]
struct Page {
    service: Service,
    trusted: Arc<Vec<IpNet>>,
}

/// The routes `GET` and `POST /ip/{token}`. Serve them with
/// `into_make_service_with_connect_info::<SocketAddr>()`: the page reads
/// the peer's address.
pub fn router(service: Service, trusted_proxies: Vec<IpNet>) -> Router {
    Router::new()
        .route("/ip/{token}", get(show).post(save))
        .with_state(Page {
            service,
            trusted: Arc::new(trusted_proxies),
        })
}

fn visitor(page: &Page, peer: SocketAddr, headers: &HeaderMap) -> Option<IpAddr> {
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    client_address(peer.ip(), &forwarded, &page.trusted)
}

async fn show(
    State(page): State<Page>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    match page.service.ip_link_state(&token).await {
        Ok(LinkState::Open { member_name }) => {
            let address = visitor(&page, peer, &headers);
            let body = match address {
                Some(ip) => format!(
                    "<p>This link saves the address you connect from for <strong>@{}</strong>.</p>\n\
                     <p>Drawbridge sees you at <strong id=\"address\">{}</strong>. Open this page \
                     from the machine you will connect from.</p>\n\
                     <form method=\"post\"><button type=\"submit\">Save {} as my address</button></form>",
                    escape(&member_name),
                    ip.to_canonical(),
                    ip.to_canonical()
                ),
                None => format!("<p>{}</p>", escape(&CaptureError::NoAddress.to_string())),
            };
            html(StatusCode::OK, "Save your address", &body)
        }
        Ok(LinkState::Closed(why)) => closed(&why),
        Err(e) => failed(&e.to_string()),
    }
}

async fn save(
    State(page): State<Page>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let address = visitor(&page, peer, &headers);
    match page.service.capture_ip(&token, address).await {
        Ok(captured) => {
            let mut body = format!(
                "<p id=\"saved\">Saved {} for @{}. You can close this tab.</p>",
                captured.source,
                escape(&captured.member_name)
            );
            if captured.continued {
                body.push_str("\n<p>Your request has gone on: Discord shows its outcome.</p>");
            }
            html(StatusCode::OK, "Address saved", &body)
        }
        Err(CaptureError::Unexpected(e)) => failed(&format!("{e:#}")),
        Err(e @ (CaptureError::NoAddress | CaptureError::NotAllowed(_))) => html(
            StatusCode::BAD_REQUEST,
            "Not saved",
            &format!("<p>{}</p>", escape(&e.to_string())),
        ),
        Err(e) => closed(&e.to_string()),
    }
}

fn closed(why: &str) -> Response {
    html(
        StatusCode::GONE,
        "Link not usable",
        &format!("<p>{}</p>", escape(why)),
    )
}

fn failed(cause: &str) -> Response {
    tracing::error!(error.message = cause, "the IP page failed");
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "<p>Drawbridge could not finish this. Try again, or give your address with /jit-ip &lt;address&gt;.</p>",
    )
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{title} - Drawbridge</title>\n\
         <style>body{{font-family:sans-serif;max-width:36em;margin:3em auto;padding:0 1em;line-height:1.5}}\
         button{{font-size:1.1em;padding:.5em 1em}}</style>\n</head>\n<body>\n<main>\n\
         <h1>{title}</h1>\n{body}\n</main>\n</body>\n</html>\n"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        page,
    )
        .into_response()
}

/// HTML text escaping (a member's name can hold anything).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(
            escape("<script>\"x\" & 'y'"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;"
        );
    }
}
