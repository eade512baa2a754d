//! End to end: two members on one VM and port. Azure keeps one window per
//! port, so before Bob's request ends Alice's window he is asked, with Open
//! anyway and Cancel (issue 11, "the port is the unit of truth").

use std::time::Duration;

use drawbridge::clock::ManualClock;
use drawbridge::domain::{AuditAction, GrantState};

use crate::e2e::{
    BOB, Reply, WAIT, audit_log, grant, interact, jit, outbox_drained, reply_to, ssh_web_01,
};
use crate::support::app::{SRE_ROLE, TestApp, TestAppBuilder, spawn_app};
use crate::support::fake_discord::{FailMode, FakeDiscord, RouteMatch, USER_ID};

const BOB_SOURCE: &str = "198.51.100.20";

/// Bob's `/jit ssh web-01 1h` from his own address.
async fn bob_asks(app: &TestApp) -> Reply {
    interact(
        app,
        jit(&app.discord, "ssh", "web-01", "1h", &[SRE_ROLE])
            .string("from", BOB_SOURCE)
            .user(BOB, "bob"),
    )
    .await
}

/// Presses `label` on `reply` as `user`.
async fn press(app: &TestApp, reply: &Reply, label: &str, user: (u64, &str)) -> Reply {
    let (_, custom_id) = reply
        .buttons()
        .into_iter()
        .find(|(l, _)| l == label)
        .unwrap_or_else(|| panic!("no {label} button: {:?}", reply.buttons()));
    interact(
        app,
        app.discord
            .button(&custom_id)
            .on_message(reply.message.clone())
            .user(user.0, user.1)
            .roles([SRE_ROLE]),
    )
    .await
}

/// Bob's question ended `cancelled`; Alice's grant is still `active`.
async fn assert_bob_cancelled_alice_active(app: &TestApp, bob: &Reply, alice: &Reply) {
    assert_eq!(
        grant(app, &bob.request_id()).await.state,
        GrantState::Cancelled
    );
    assert_eq!(
        grant(app, &alice.request_id()).await.state,
        GrantState::Active
    );
}

/// Bob presses Open anyway on a question already settled: he is told it
/// was answered, and Azure still has `initiates` initiate calls.
async fn open_anyway_changes_nothing(app: &TestApp, bob: &Reply, initiates: usize) {
    let again = press(app, bob, "Open anyway", (BOB, "bob")).await;
    assert!(
        again.description().contains("answered already"),
        "{}",
        again.text()
    );
    assert_eq!(app.azure.emulator.initiate_calls().len(), initiates);
}

/// Alice holds web-01 ssh; Bob asks for it from another address.
async fn alice_holds_and_bob_asks(app: &TestApp) -> (Reply, Reply) {
    let alice = interact(app, ssh_web_01(&app.discord)).await;
    assert!(alice.title().contains("Access granted"), "{}", alice.text());
    let bob = bob_asks(app).await;
    (alice, bob)
}

#[tokio::test]
async fn bob_is_asked_first_and_nothing_reaches_azure_until_he_answers() {
    let app = spawn_app().await;

    let (_alice, bob) = alice_holds_and_bob_asks(&app).await;

    assert!(bob.title().contains("anyway?"), "{}", bob.text());
    let text = bob.description();
    assert!(
        text.contains(&format!("is open for <@{USER_ID}> until <t:")),
        "{text}"
    );
    assert!(
        text.contains("from another address; Azure keeps one window per port, so opening it for you ends theirs."),
        "{text}"
    );
    let labels: Vec<String> = bob.buttons().into_iter().map(|(l, _)| l).collect();
    assert_eq!(labels, ["Open anyway", "Cancel"]);
    for (_, id) in bob.buttons() {
        assert!(
            id.ends_with(&format!(":{}", bob.request_id())),
            "the button carries the request id only: {id}"
        );
    }
    assert_eq!(
        grant(&app, &bob.request_id()).await.state,
        GrantState::Confirming
    );
    assert_eq!(app.azure.emulator.jit_request_count(), 1, "only Alice's");
    app.finish().await;
}

/// The edits of the reply of the interaction with `token` that Discord
/// took (`failed`: refused).
fn reply_edits(d: &FakeDiscord, token: &str, failed: bool) -> usize {
    d.calls()
        .iter()
        .filter(|c| {
            c.method == "PATCH"
                && c.route().contains(token)
                && c.route().ends_with("/messages/@original")
                && c.injected_fault == failed
        })
        .count()
}

/// Shown in line, Bob's question is not sent again from the outbox: the
/// row written with it is marked shown.
#[tokio::test]
async fn a_question_shown_in_line_is_edited_into_the_reply_once() {
    let app = spawn_app().await;

    let (_alice, bob) = alice_holds_and_bob_asks(&app).await;

    assert!(bob.title().contains("anyway?"), "{}", bob.text());
    assert!(outbox_drained(&app).await, "the outbox did not drain");
    assert_eq!(reply_edits(&app.discord, &bob.sent.token, false), 1);
    app.finish().await;
}

/// Bob's question is written with his request. When Discord refuses every
/// in-line edit of his reply, the outbox shows the question once Discord
/// takes edits again, and he can answer it. Before, he looked at
/// "thinking…" until the question timed out unanswered.
#[tokio::test]
async fn a_question_discord_refused_in_line_is_shown_from_the_outbox_and_answered() {
    // Arrange
    let app = spawn_app().await;
    let d = &app.discord;
    let alice = interact(&app, ssh_web_01(d)).await;
    d.fail_always(RouteMatch::EditOriginal, FailMode::Status(500));

    // Act: the in-line show tries five times and gives up; then Discord
    // takes edits again.
    let sent = d
        .send_interaction(
            jit(d, "ssh", "web-01", "1h", &[SRE_ROLE])
                .string("from", BOB_SOURCE)
                .user(BOB, "bob"),
        )
        .await;
    let token = sent.token.clone();
    let gave_up = d
        .wait_until(WAIT, |d| reply_edits(d, &token, true) >= 5)
        .await;
    d.clear_faults();
    let bob = reply_to(d, sent).await;
    let drained = outbox_drained(&app).await;
    let cancelled = press(&app, &bob, "Cancel", (BOB, "bob")).await;

    // Assert
    assert!(gave_up, "the in-line show did not give up");
    assert!(bob.title().contains("anyway?"), "{}", bob.text());
    assert!(drained, "the outbox did not drain");
    assert_eq!(reply_edits(d, &token, false), 1, "shown once");
    assert!(
        cancelled.title().contains("Cancelled"),
        "{}",
        cancelled.text()
    );
    assert_bob_cancelled_alice_active(&app, &bob, &alice).await;
    app.finish().await;
}

#[tokio::test]
async fn open_anyway_ends_alices_grant_and_tells_her_at_once() {
    let app = spawn_app().await;
    let (alice, bob) = alice_holds_and_bob_asks(&app).await;

    let opened = press(&app, &bob, "Open anyway", (BOB, "bob")).await;

    assert!(
        opened.title().contains("Access granted"),
        "{}",
        opened.text()
    );
    assert_eq!(app.azure.emulator.jit_request_count(), 2);
    let told = app
        .discord
        .wait_until(crate::e2e::WAIT, |d| {
            d.dm_messages(USER_ID).iter().any(|m| {
                m.to_string()
                    .contains(&format!("was ended by <@{BOB}>'s request at"))
            })
        })
        .await;
    assert!(told, "{:?}", app.discord.dm_messages(USER_ID));
    let alices = grant(&app, &alice.request_id()).await;
    assert_eq!(alices.state, GrantState::Superseded);
    let status = interact(&app, app.discord.slash("jit-status").roles([SRE_ROLE])).await;
    assert!(
        status.text().contains("superseded"),
        "Alice's /jit-status: {}",
        status.text()
    );
    let log = audit_log(&app).await;
    let ended = log
        .iter()
        .find(|r| {
            r.event.action == AuditAction::AccessEndedInAzure
                && r.event.detail["request_id"] == alice.request_id().as_str()
        })
        .expect("Alice's end is audited");
    assert_eq!(ended.event.actor, format!("discord:{BOB}"), "who displaced");
    assert_eq!(ended.event.detail["owner"], USER_ID.to_string(), "whom");
    assert!(log.iter().any(|r| {
        r.event.action == AuditAction::AccessInitiated
            && r.event.detail["request_id"] == bob.request_id().as_str()
    }));
    app.finish().await;
}

#[tokio::test]
async fn the_question_outlives_a_restart() {
    let mut app = spawn_app().await;
    let (alice, bob) = alice_holds_and_bob_asks(&app).await;

    app.restart().await;
    let opened = press(&app, &bob, "Open anyway", (BOB, "bob")).await;

    assert!(
        opened.title().contains("Access granted"),
        "{}",
        opened.text()
    );
    assert_eq!(app.azure.emulator.jit_request_count(), 2);
    assert_eq!(
        grant(&app, &alice.request_id()).await.state,
        GrantState::Superseded
    );
    app.finish().await;
}

#[tokio::test]
async fn cancel_changes_nothing_in_azure() {
    let app = spawn_app().await;
    let (alice, bob) = alice_holds_and_bob_asks(&app).await;
    let before = app.azure.emulator.initiate_calls().len();

    let cancelled = press(&app, &bob, "Cancel", (BOB, "bob")).await;

    assert!(
        cancelled.title().contains("Cancelled"),
        "{}",
        cancelled.text()
    );
    assert!(
        cancelled
            .description()
            .contains("Nothing was sent to Azure"),
        "{}",
        cancelled.text()
    );
    assert_eq!(app.azure.emulator.initiate_calls().len(), before);
    assert_bob_cancelled_alice_active(&app, &bob, &alice).await;
    assert!(audit_log(&app).await.iter().any(|r| {
        r.event.action == AuditAction::AccessCancelled
            && r.event.detail["holder"].as_str() == Some(USER_ID.to_string().as_str())
    }));
    open_anyway_changes_nothing(&app, &bob, before).await;
    app.finish().await;
}

#[tokio::test]
async fn only_the_member_asked_may_answer() {
    let app = spawn_app().await;
    let (alice, bob) = alice_holds_and_bob_asks(&app).await;

    let refused = press(&app, &bob, "Open anyway", (USER_ID, "alice")).await;

    assert!(
        refused
            .description()
            .contains("only the engineer who asked"),
        "{}",
        refused.text()
    );
    assert_eq!(app.azure.emulator.jit_request_count(), 1);
    assert_eq!(
        grant(&app, &alice.request_id()).await.state,
        GrantState::Active
    );
    assert_eq!(
        grant(&app, &bob.request_id()).await.state,
        GrantState::Confirming
    );
    app.finish().await;
}

#[tokio::test]
async fn open_anyway_and_cancel_pressed_at_once_cannot_both_win() {
    let app = spawn_app().await;
    let (_alice, bob) = alice_holds_and_bob_asks(&app).await;
    let custom = |label: &str| {
        bob.buttons()
            .into_iter()
            .find(|(l, _)| l == label)
            .expect("the button")
            .1
    };

    let open = app.discord.dispatch_interaction(
        app.discord
            .button(&custom("Open anyway"))
            .on_message(bob.message.clone())
            .user(BOB, "bob")
            .roles([SRE_ROLE]),
    );
    let cancel = app.discord.dispatch_interaction(
        app.discord
            .button(&custom("Cancel"))
            .on_message(bob.message.clone())
            .user(BOB, "bob")
            .roles([SRE_ROLE]),
    );
    let open = crate::e2e::reply_to(&app.discord, open).await;
    let cancel = crate::e2e::reply_to(&app.discord, cancel).await;

    let state = grant(&app, &bob.request_id()).await.state;
    let (winner, loser) = if state == GrantState::Cancelled {
        (&cancel, &open)
    } else {
        (&open, &cancel)
    };
    assert!(
        loser.description().contains("answered already"),
        "the loser is told: {}",
        loser.text()
    );
    assert!(!winner.description().contains("answered already"));
    let expected = if state == GrantState::Cancelled { 1 } else { 2 };
    assert_eq!(app.azure.emulator.jit_request_count(), expected, "{state}");
    app.finish().await;
}

#[tokio::test]
async fn the_same_member_asking_again_is_not_asked() {
    let app = spawn_app().await;
    let first = interact(&app, ssh_web_01(&app.discord)).await;

    let second = interact(
        &app,
        jit(&app.discord, "ssh", "web-01", "1h", &[SRE_ROLE]).string("from", BOB_SOURCE),
    )
    .await;

    assert!(
        second.title().contains("Access granted"),
        "{}",
        second.text()
    );
    assert_eq!(app.azure.emulator.jit_request_count(), 2);
    assert_eq!(
        grant(&app, &first.request_id()).await.state,
        GrantState::Superseded
    );
    app.finish().await;
}

#[tokio::test]
async fn the_same_member_asking_again_from_the_same_address_is_not_told_the_port_closed() {
    let app = spawn_app().await;
    let first = interact(&app, ssh_web_01(&app.discord)).await;

    let second = interact(&app, ssh_web_01(&app.discord)).await;

    assert!(
        second.title().contains("Access granted"),
        "{}",
        second.text()
    );
    assert_eq!(
        grant(&app, &first.request_id()).await.state,
        GrantState::Superseded
    );
    assert!(
        audit_log(&app)
            .await
            .iter()
            .any(|r| r.event.action == AuditAction::AccessEndedInAzure
                && r.event.detail["request_id"] == first.request_id().as_str()),
        "the replacement is audited"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dms = app.discord.dm_messages(USER_ID);
    assert!(
        dms.iter()
            .all(|m| !m.to_string().contains("closed for your address")),
        "the port is still open for this address: {dms:?}"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_mapping_that_refuses_names_who_holds_the_port_until_when() {
    let app = TestAppBuilder::default()
        .mappings(
            r#"
[[mapping]]
name = "sre-web"
roles = ["100"]
vms = "web-*"
ports = ["ssh"]
max_duration = "3h"
on_conflict = "refuse"
"#,
        )
        .start()
        .await;
    let (alice, bob) = alice_holds_and_bob_asks(&app).await;

    assert_eq!(
        bob.title(),
        "Another member holds the port",
        "{}",
        bob.text()
    );
    let text = bob.description();
    assert!(
        text.contains(&format!("is open for <@{USER_ID}> until <t:")),
        "{text}"
    );
    assert!(text.contains("on_conflict = \"refuse\""), "{text}");
    assert!(bob.buttons().is_empty());
    assert_eq!(app.azure.emulator.jit_request_count(), 1);
    assert_eq!(
        grant(&app, &alice.request_id()).await.state,
        GrantState::Active
    );
    assert!(audit_log(&app).await.iter().any(|r| {
        r.event.action == AuditAction::AccessDenied && r.event.detail["code"] == "port_held"
    }));
    app.finish().await;
}

#[tokio::test]
async fn a_question_nobody_answers_is_cancelled_after_ten_minutes_and_azure_sees_nothing() {
    // Arrange: Alice holds the port, Bob is asked; a redeploy in between
    // (the timer is durable).
    let clock = ManualClock::new(chrono::Utc::now());
    let mut app = TestAppBuilder::default().clock(clock.clone()).start().await;
    let (alice, bob) = alice_holds_and_bob_asks(&app).await;
    let before = app.azure.emulator.initiate_calls().len();
    app.restart().await;

    // Act: nine minutes pass, then ten.
    clock.advance(chrono::Duration::minutes(9));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        grant(&app, &bob.request_id()).await.state,
        GrantState::Confirming,
        "not before ten minutes"
    );
    clock.advance(chrono::Duration::minutes(1) + chrono::Duration::seconds(1));

    // Assert: Bob's reply says nobody answered and nothing changed.
    let told = app
        .discord
        .wait_for_interaction_response(bob.sent.id, WAIT, |m| {
            m["embeds"][0]["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("No answer"))
        })
        .await
        .unwrap_or_else(|| panic!("{:?}", app.discord.interaction_response(bob.sent.id)));
    let text = told["embeds"][0]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("nothing changed in Azure"), "{text}");
    assert!(
        told["components"].as_array().is_none_or(Vec::is_empty),
        "no buttons left: {told}"
    );
    assert_bob_cancelled_alice_active(&app, &bob, &alice).await;
    assert_eq!(app.azure.emulator.initiate_calls().len(), before);
    let log = audit_log(&app).await;
    let cancelled: Vec<_> = log
        .iter()
        .filter(|r| r.event.action == AuditAction::AccessCancelled)
        .collect();
    assert_eq!(cancelled.len(), 1, "audited once: {cancelled:?}");
    assert_eq!(cancelled[0].event.actor, "system");
    assert_eq!(cancelled[0].event.detail["unanswered"], true);
    assert_eq!(
        cancelled[0].event.detail["holder"].as_str(),
        Some(USER_ID.to_string().as_str())
    );

    // A late answer changes nothing.
    open_anyway_changes_nothing(&app, &bob, before).await;
    app.finish().await;
}
