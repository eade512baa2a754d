//! Issue 16, the IP capture link: a request with no source gets a one-time
//! link; opening it saves the visitor's address and turns the waiting
//! reply into the grant. Driven here over plain HTTP (the page needs no
//! JavaScript); `browser.rs` clicks through the same flow in chromium.

use std::time::Duration;

use serde_json::Value;

use crate::e2e::{Reply, grant, interact, jit};
use crate::support::app::{SRE_ROLE, TestApp, TestAppBuilder};
use crate::support::cluster::free_port;

/// A user id of the fake Discord's default member.
const SAM: (u64, &str) = (330_000_000_000_000_001, "sam");

/// An app with IP links on, the page at the returned base URL.
pub(crate) async fn app_with_links(trusted_proxies: &str) -> (TestApp, String) {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let app = TestAppBuilder::default()
        .env("HTTP__LISTEN", &format!("127.0.0.1:{port}"))
        .env("HTTP__PUBLIC_URL", &base)
        .env("HTTP__TRUSTED_PROXIES", trusted_proxies)
        .start()
        .await;
    (app, base)
}

/// The link in a reply's text.
pub(crate) fn link_in(reply: &Reply, base: &str) -> String {
    let text = reply.text();
    let start = text
        .find(&format!("{base}/ip/"))
        .unwrap_or_else(|| panic!("a link in the reply: {text}"));
    text[start..]
        .split_whitespace()
        .next()
        .expect("the link")
        .to_owned()
}

/// `/jit ssh web-01 2h` by Sam, with no `from:`.
pub(crate) async fn request_without_source(app: &TestApp) -> Reply {
    let d = &app.discord;
    interact(
        app,
        jit(d, "ssh", "web-01", "2h", &[SRE_ROLE]).user(SAM.0, SAM.1),
    )
    .await
}

/// Waits until the reply to `reply`'s interaction says "Access granted".
pub(crate) async fn wait_for_grant_reply(app: &TestApp, reply: &Reply) -> Value {
    app.discord
        .wait_for_interaction_response(reply.sent.id, Duration::from_secs(10), |m| {
            m["embeds"][0]["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("Access granted"))
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "the reply was edited into the grant: {:?}",
                app.discord.interaction_response(reply.sent.id)
            )
        })
}

async fn visit(url: &str, method: reqwest::Method, forwarded: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(xff) = forwarded {
        request = request.header("x-forwarded-for", xff);
    }
    let response = request.send().await.expect("the page answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_request_without_a_source_gets_a_link_whose_visit_saves_the_ip_and_grants() {
    // Arrange
    let (app, base) = app_with_links("").await;
    let reply = request_without_source(&app).await;
    assert_eq!(reply.title(), "From which address?", "{}", reply.text());
    let link = link_in(&reply, &base);

    // Act: look first (changes nothing), then save.
    let (status, page) = visit(&link, reqwest::Method::GET, None).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("127.0.0.1") && page.contains("@sam"),
        "{page}"
    );
    assert!(!page.contains("<script"), "no JavaScript: {page}");
    let (status, saved) = visit(&link, reqwest::Method::POST, None).await;

    // Assert
    assert_eq!(status, 200, "{saved}");
    assert!(
        saved.contains("Saved 127.0.0.1 for @sam. You can close this tab."),
        "{saved}"
    );
    let user = drawbridge::domain::UserId::parse(&SAM.0.to_string()).unwrap();
    assert_eq!(
        app.store
            .saved_source(user)
            .await
            .unwrap()
            .map(|s| s.to_string()),
        Some("127.0.0.1".to_owned())
    );
    let edited = wait_for_grant_reply(&app, &reply).await;
    assert!(
        edited["embeds"][0]["title"]
            .as_str()
            .unwrap()
            .contains("rg-web/web-01"),
        "{edited}"
    );
    let stored = grant(&app, &reply.request_id()).await;
    assert_eq!(stored.source.to_string(), "127.0.0.1");

    // A second visit is refused and changes nothing.
    let (again, page) = visit(&link, reqwest::Method::POST, None).await;
    assert_eq!(again, 410, "{page}");
    assert!(page.contains("used already"), "{page}");
    let (look, page) = visit(&link, reqwest::Method::GET, None).await;
    assert_eq!(look, 410, "{page}");
    app.finish().await;
}

#[tokio::test]
async fn a_forged_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // The page's peer is 127.0.0.1, which is not among the trusted proxies.
    let (app, base) = app_with_links("10.0.0.0/8").await;
    let reply = request_without_source(&app).await;
    let link = link_in(&reply, &base);

    let (status, saved) = visit(&link, reqwest::Method::POST, Some("198.51.100.66")).await;

    assert_eq!(status, 200, "{saved}");
    assert!(saved.contains("Saved 127.0.0.1 for @sam"), "{saved}");
    assert!(!saved.contains("198.51.100.66"), "{saved}");
    app.finish().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_saved() {
    let (app, base) = app_with_links("127.0.0.1, 192.0.2.10").await;
    let d = &app.discord;
    let asked = interact(&app, d.slash("jit-ip").user(SAM.0, SAM.1).roles([SRE_ROLE])).await;
    assert_eq!(asked.title(), "From which address?", "{}", asked.text());
    let link = link_in(&asked, &base);

    // The client forged 1.1.1.1; the edge proxy 192.0.2.10 appended what it saw.
    let xff = "1.1.1.1, 198.51.100.7, 192.0.2.10";
    let (status, saved) = visit(&link, reqwest::Method::POST, Some(xff)).await;

    assert_eq!(status, 200, "{saved}");
    assert!(saved.contains("Saved 198.51.100.7 for @sam"), "{saved}");
    app.finish().await;
}

#[tokio::test]
async fn a_trusted_proxy_that_names_no_client_saves_nothing() {
    let (app, base) = app_with_links("127.0.0.1").await;
    let d = &app.discord;
    let asked = interact(&app, d.slash("jit-ip").user(SAM.0, SAM.1).roles([SRE_ROLE])).await;
    let link = link_in(&asked, &base);

    let (status, page) = visit(&link, reqwest::Method::POST, None).await;

    assert_eq!(status, 400, "{page}");
    assert!(page.contains("could not tell"), "{page}");
    let user = drawbridge::domain::UserId::parse(&SAM.0.to_string()).unwrap();
    assert_eq!(app.store.saved_source(user).await.unwrap(), None);
    app.finish().await;
}

#[tokio::test]
async fn without_a_public_url_the_member_is_asked_for_from() {
    let app = TestAppBuilder::default().start().await;

    let reply = request_without_source(&app).await;

    assert_eq!(reply.title(), "From which address?");
    assert!(
        reply.description().contains("Add from:<your IP>"),
        "{}",
        reply.text()
    );
    assert!(!reply.text().contains("/ip/"), "{}", reply.text());
    app.finish().await;
}
