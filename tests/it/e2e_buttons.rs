//! End to end: the Extend and Close early buttons on a grant.

use chrono::Utc;
use drawbridge::domain::{AuditAction, GrantState};
use drawbridge::sandbox::RunningEmulator;
use serde_json::Value;

use crate::e2e::{
    BOB, Reply, audit_actions_for, discord_times, grant, initiated_end, initiated_port, initiates,
    interact, ssh_web_01,
};
use crate::support::app::{SRE_ROLE, SUB_PROD, TestApp, spawn_app};
use crate::support::fake_discord::USER_ID;

const ALICE: (u64, &str) = (USER_ID, "alice");

/// Presses the grant's button labelled `label`, as `user` with the SRE role.
async fn press(app: &TestApp, granted: &Reply, label: &str, user: (u64, &str)) -> Reply {
    let (_, custom_id) = granted
        .buttons()
        .into_iter()
        .find(|(l, _)| l == label)
        .unwrap_or_else(|| panic!("no {label} button: {:?}", granted.buttons()));
    interact(
        app,
        app.discord
            .button(&custom_id)
            .on_message(granted.message.clone())
            .user(user.0, user.1)
            .roles([SRE_ROLE]),
    )
    .await
}

/// The rg-web JIT policy as the emulator shows it.
async fn web_policy(azure: &RunningEmulator) -> Value {
    let url = format!(
        "{}/subscriptions/{SUB_PROD}/resourceGroups/rg-web/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default?api-version=2020-01-01",
        azure.base_url
    );
    reqwest::Client::new()
        .get(url)
        .bearer_auth(azure.emulator.issue_token())
        .send()
        .await
        .expect("the emulator answers")
        .json()
        .await
        .expect("a policy")
}

/// The rg-web policy's requests for port 22 of web-01: (status, reason).
async fn web_01_ssh_requests(azure: &RunningEmulator) -> Vec<(String, String)> {
    let policy = web_policy(azure).await;
    policy["properties"]["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["virtualMachines"].as_array().cloned().unwrap_or_default())
        .filter(|vm| {
            vm["id"]
                .as_str()
                .is_some_and(|id| id.to_lowercase().ends_with("/virtualmachines/web-01"))
        })
        .flat_map(|vm| vm["ports"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["number"] == 22)
        .map(|p| {
            (
                p["status"].as_str().unwrap_or_default().to_owned(),
                p["statusReason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn extend_opens_a_longer_window_within_the_limits() {
    let app = spawn_app().await;
    let granted = interact(&app, ssh_web_01(&app.discord)).await;

    let extended = press(&app, &granted, "Extend", ALICE).await;

    assert!(
        extended.title().contains("Access extended"),
        "{}",
        extended.text()
    );
    let calls = initiates(&app);
    assert_eq!(
        calls.len(),
        2,
        "one initiate for the grant, one for the extension"
    );
    assert_eq!(
        initiated_port(&calls[1])["allowedSourceAddressPrefix"],
        "203.0.113.7"
    );
    // 2 h asked, ~2 h left: 4 h wanted, capped at the mapping's and the
    // policy's 3 h, less the margin for Azure's clock.
    let end = initiated_end(&calls[1]);
    let three_hours = Utc::now() + chrono::Duration::hours(3)
        - drawbridge::service::phases::initiate::CLOCK_SKEW_MARGIN;
    assert!(
        (three_hours - end).num_seconds().abs() < 30,
        "the new end {end} is three hours ahead, less the clock margin"
    );
    let stored = grant(&app, &granted.request_id()).await;
    assert_eq!(stored.state, GrantState::Extended);
    let (full, relative) = discord_times(stored.end_time.unwrap());
    let window = extended.field("Window").unwrap_or_default();
    assert!(
        window.contains(&full) && window.contains(&relative),
        "{window}"
    );
    assert_eq!(extended.buttons().len(), 2, "still Extend and Close early");
    assert_eq!(
        audit_actions_for(&app, &granted.request_id()).await.last(),
        Some(&AuditAction::AccessExtended)
    );
    app.finish().await;
}

#[tokio::test]
async fn close_early_reinitiates_briefly_and_says_when_the_port_closes() {
    let app = spawn_app().await;
    let granted = interact(&app, ssh_web_01(&app.discord)).await;

    let closed = press(&app, &granted, "Close early", ALICE).await;

    assert!(
        closed.title().contains("Closing early"),
        "{}",
        closed.text()
    );
    let stored = grant(&app, &granted.request_id()).await;
    assert_eq!(stored.state, GrantState::ClosedEarly);
    let closes_at = stored.end_time.expect("when the port closes");
    assert!(closes_at < Utc::now() + chrono::Duration::minutes(10));
    let (full, relative) = discord_times(closes_at);
    let text = closed.description();
    assert!(text.contains(&full) && text.contains(&relative), "{text}");
    assert!(text.contains("Azure has no revoke"), "{text}");
    assert!(
        text.contains("Connections already established are not cut"),
        "{text}"
    );
    assert!(closed.buttons().is_empty());
    // Azure: the grant's request was replaced by a newer, short one.
    assert_eq!(initiates(&app).len(), 2);
    let requests = web_01_ssh_requests(&app.azure).await;
    assert_eq!(
        requests,
        [
            ("Revoked".to_owned(), "NewerRequestInitiated".to_owned()),
            ("Initiated".to_owned(), "UserRequested".to_owned()),
        ]
    );
    assert!(
        closed
            .field("Azure shows")
            .unwrap_or_default()
            .contains(&format!("22: open until {full}")),
        "{}",
        closed.text()
    );
    assert_eq!(
        audit_actions_for(&app, &granted.request_id()).await.last(),
        Some(&AuditAction::AccessClosedEarly)
    );

    // The old buttons now do nothing.
    let again = press(&app, &granted, "Extend", ALICE).await;
    assert_eq!(again.title(), "Nothing changed", "{}", again.text());
    assert_eq!(initiates(&app).len(), 2);
    app.finish().await;
}

#[tokio::test]
async fn a_button_pressed_by_another_member_is_refused() {
    let app = spawn_app().await;
    let granted = interact(&app, ssh_web_01(&app.discord)).await;

    let extend = press(&app, &granted, "Extend", (BOB, "bob")).await;
    let close = press(&app, &granted, "Close early", (BOB, "bob")).await;

    for reply in [&extend, &close] {
        assert_eq!(reply.title(), "Nothing changed", "{}", reply.text());
        assert!(
            reply.description().contains("only the engineer who asked"),
            "{}",
            reply.description()
        );
    }
    assert_eq!(initiates(&app).len(), 1, "Azure was not asked again");
    assert_eq!(
        grant(&app, &granted.request_id()).await.state,
        GrantState::Active
    );
    app.finish().await;
}
