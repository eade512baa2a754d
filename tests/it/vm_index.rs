//! The VM index at start-up and its ARM reads (issue 19, issue 17 item 6):
//! the bot answers while the index loads, one listing feeds the index and
//! the reconciler, enable lists the VMs once, and the emulator reports the
//! read bucket as ARM does.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use drawbridge::clock::{ManualClock, SharedClock};
use drawbridge::sandbox::{Emulator, Estate, Route};
use drawbridge::service::autocomplete::STILL_LOADING;
use serde_json::Value;

use crate::e2e::{ACK_LIMIT, interact, jit};
use crate::support::app::{ADMIN_ROLE, SRE_ROLE, TestApp, TestAppBuilder, spawn_app};

/// `/readyz`'s `vm_index` check.
async fn index_check(app: &TestApp) -> (u16, String) {
    let response = reqwest::get(format!("{}/readyz", app.ops_url))
        .await
        .expect("readyz answers");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("readyz is JSON");
    let state = body["checks"]["vm_index"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (status, state)
}

/// The SRE's autocomplete of `vm` for `partial`: the choices' (name, value).
async fn complete(app: &TestApp, partial: &str) -> Vec<(String, String)> {
    let d = &app.discord;
    let sent = d
        .send_interaction(
            d.autocomplete("jit")
                .string("port", "ssh")
                .focused("vm", partial)
                .roles([SRE_ROLE]),
        )
        .await;
    d.wait_for_callback(sent.id, ACK_LIMIT)
        .await
        .expect("autocomplete answered");
    d.autocomplete_choices(sent.id)
        .expect("choices")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Listings on `route` (a list's first page has no skip token).
fn listings(app: &TestApp, route: Route) -> usize {
    app.azure
        .emulator
        .calls()
        .iter()
        .filter(|c| c.route == Some(route))
        .filter(|c| !c.query.as_deref().unwrap_or("").contains("skipToken"))
        .count()
}

#[tokio::test]
async fn the_bot_answers_while_the_vm_index_loads_and_readyz_says_so() {
    // Arrange: the start-up listing of the policies hangs
    let app = TestAppBuilder::default().hold_index_load().start().await;

    // Act + Assert: while it hangs, the bot is ready and says the index loads
    let (status, state) = index_check(&app).await;
    assert_eq!((status, state.as_str()), (200, "loading"));
    let choices = complete(&app, "web-0").await;
    assert_eq!(
        choices,
        [(STILL_LOADING.to_owned(), "web-0".to_owned())],
        "one choice says so and sends what was typed"
    );
    // A /jit naming its resource group is looked up directly.
    let reply = interact(
        &app,
        jit(&app.discord, "ssh", "rg-web/web-02", "1h", &[SRE_ROLE]).string("from", "203.0.113.7"),
    )
    .await;
    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    assert_eq!(reply.field("VM"), Some("rg-web/web-02"));
    let by_group = app
        .azure
        .emulator
        .calls()
        .iter()
        .filter(|c| {
            c.route == Some(Route::ListPolicies) && c.path.contains("/resourceGroups/rg-web/")
        })
        .count();
    assert_eq!(by_group, 1, "one list of the group's policies");

    // Act: the listing is let go (it fails once and is retried)
    while !index_check(&app).await.1.starts_with("ready") {
        app.azure.emulator.release_hangs();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Assert: the index serves autocomplete
    let (status, state) = index_check(&app).await;
    assert_eq!(status, 200);
    assert!(state.starts_with("ready ("), "{state}");
    // (web-02 carries alice's open grant from the direct lookup above.)
    let names: Vec<String> = complete(&app, "web-0")
        .await
        .into_iter()
        .map(|c| c.0.split(" · ").next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "web-01 (rg-web)",
            "web-02 (rg-web)",
            "web-03 (rg-web)",
            "web-04 (rg-web)"
        ]
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn enable_lists_the_vms_once() {
    let app = spawn_app().await;
    let vm_lists = listings(&app, Route::ListVms);

    let reply = interact(
        &app,
        app.discord
            .slash("jit-admin")
            .subcommand("enable")
            .roles([ADMIN_ROLE])
            .string("vm", "legacy-01"),
    )
    .await;

    assert_eq!(reply.title(), "JIT enabled", "{}", reply.text());
    assert_eq!(
        listings(&app, Route::ListVms) - vm_lists,
        1,
        "one list of the VMs of the one subscription"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_emulator_counts_reads_down_in_arms_header_and_throttles_an_empty_bucket() {
    // Arrange: a clock that does not move, so the bucket never refills
    let start = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let clock: SharedClock = Arc::new(ManualClock::new(start));
    let azure = Emulator::new(Estate::sample(), clock)
        .spawn()
        .await
        .unwrap();
    let token = azure.emulator.issue_token();
    let url = format!(
        "{}/subscriptions/3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01",
        azure.base_url
    );
    let http = reqwest::Client::new();
    let get = || http.get(&url).bearer_auth(&token).send();

    // Act: 250 reads, then one more
    let mut left = Vec::new();
    for _ in 0..250 {
        let r = get().await.unwrap();
        assert_eq!(r.status(), 200);
        left.push(
            r.headers()["x-ms-ratelimit-remaining-subscription-reads"]
                .to_str()
                .unwrap()
                .parse::<u32>()
                .unwrap(),
        );
    }
    let throttled = get().await.unwrap();

    // Assert
    assert_eq!(left.first(), Some(&249));
    assert_eq!(left.last(), Some(&0));
    assert!(left.windows(2).all(|w| w[1] + 1 == w[0]));
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "1");
}
