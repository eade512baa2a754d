//! Issue 16 in a real browser: Debian's chromium, headless, driven over
//! WebDriver (chromedriver) with fantoccini. A request with no source gets
//! a link; the link opened in chromium saves the IP, and the member's
//! original ephemeral reply turns into the grant. A second visit is
//! refused.
//!
//! Skipped, with a message, when chromium or chromedriver is not
//! installed (`apt-get install chromium chromium-driver`); `.ci/run`
//! installs both.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::ip_link::{app_with_links, link_in, request_without_source, wait_for_grant_reply};
use crate::support::cluster::free_port;

/// chromedriver, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts chromedriver, or says why the test is skipped.
async fn driver() -> Option<Driver> {
    if !installed("chromium") || !installed("chromedriver") {
        eprintln!(
            "skipping the browser test: chromium and chromedriver are not installed \
             (apt-get install chromium chromium-driver)"
        );
        return None;
    }
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Some(driver);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not listen on {port}");
}

async fn headless_chromium(driver: &Driver) -> Client {
    // fantoccini's TLS client needs a process-wide crypto provider; the
    // bot's own is aws-lc-rs. Installing it twice is harmless.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]}),
    );
    ClientBuilder::rustls()
        .expect("a TLS configuration")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

#[tokio::test]
async fn the_link_opened_in_chromium_saves_the_ip_and_turns_the_reply_into_the_grant() {
    let Some(driver) = driver().await else {
        return;
    };
    // Arrange: a request with no source, answered with a link.
    let (app, base) = app_with_links("").await;
    let reply = request_without_source(&app).await;
    let link = link_in(&reply, &base);
    let browser = headless_chromium(&driver).await;

    // Act: open the link and press the button.
    browser.goto(&link).await.expect("the page opens");
    let seen = browser
        .find(Locator::Id("address"))
        .await
        .expect("the page shows the address it sees")
        .text()
        .await
        .unwrap();
    browser
        .find(Locator::Css("form button[type=submit]"))
        .await
        .expect("a save button")
        .click()
        .await
        .expect("the button submits");
    let saved = browser
        .find(Locator::Id("saved"))
        .await
        .expect("the confirmation")
        .text()
        .await
        .unwrap();

    // Assert: the address, the saved setting, and the edited reply.
    assert_eq!(seen, "127.0.0.1");
    assert_eq!(saved, "Saved 127.0.0.1 for @sam. You can close this tab.");
    let edited = wait_for_grant_reply(&app, &reply).await;
    let title = edited["embeds"][0]["title"].as_str().unwrap_or_default();
    assert_eq!(
        title, "Access granted: ssh (22) on rg-web/web-01",
        "{edited}"
    );

    // A second visit to the same link is refused.
    browser.goto(&link).await.expect("the page opens again");
    let body = browser
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("This link was used already"), "{body}");
    assert!(
        browser.find(Locator::Css("form button")).await.is_err(),
        "no button on a used link"
    );
    browser.close().await.expect("the session closes");
    app.stop().await.expect("clean stop");
}
