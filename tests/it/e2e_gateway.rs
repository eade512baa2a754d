//! End to end: losing the gateway connection, as Discord does it. The fake holds a session's
//! dispatches while it reconnects and replays them on RESUME (op 7), and loses them when the
//! session is invalidated (op 9, not resumable), so these tests fail if the bot drops a resumed
//! event or if work started before a re-identify depends on the session.
//!
//! See: issue 15 (the fake waited for a live session before sending, so nothing could be lost).

use std::time::Duration;

use chrono::Utc;
use drawbridge::clock::ManualClock;
use serde_json::Value;

use crate::e2e::{WAIT, audit_channel_matches_log, interact, jit, reply_to};
use crate::support::app::{AUDIT_CHANNEL, DEV_ROLE, SRE_ROLE, TestAppBuilder, spawn_app};
use crate::support::fake_discord::{FailMode, FakeDiscord, RouteMatch, USER_ID};

/// `/jit ssh <vm> <duration> from:203.0.113.7` by an SRE.
fn ssh(
    d: &FakeDiscord,
    vm: &str,
    duration: &str,
) -> crate::support::fake_discord::InteractionBuilder {
    jit(d, "ssh", vm, duration, &[SRE_ROLE]).string("from", "203.0.113.7")
}

/// The gateway frames that carried interaction `id` to the bot.
fn deliveries(d: &FakeDiscord, id: u64) -> Vec<crate::support::fake_discord::GatewayFrame> {
    d.gateway_frames()
        .into_iter()
        .filter(|f| {
            !f.from_client
                && f.t.as_deref() == Some("INTERACTION_CREATE")
                && f.d["id"] == Value::String(id.to_string())
        })
        .collect()
}

#[tokio::test]
async fn an_interaction_dispatched_into_a_reconnect_is_answered_after_the_resume() {
    // Arrange
    let app = spawn_app().await;
    let d = &app.discord;

    // Act: one interaction just before the op 7, one while the bot reconnects.
    let before = d.dispatch_interaction(ssh(d, "web-01", "1h"));
    d.send_reconnect();
    let during = d.dispatch_interaction(ssh(d, "web-02", "1h"));
    let before = reply_to(d, before).await;
    let during = reply_to(d, during).await;

    // Assert
    assert!(
        before.title().contains("Access granted"),
        "{}",
        before.text()
    );
    assert!(
        during.title().contains("Access granted"),
        "{}",
        during.text()
    );
    let resumes = d.resumes();
    assert_eq!(resumes.len(), 1, "the bot resumed the session");
    assert_eq!(d.identifies().len(), 1, "and did not identify again");
    let resumed_at = d
        .gateway_frames()
        .into_iter()
        .find(|f| f.from_client && f.op == 6)
        .map(|f| f.at)
        .expect("a RESUME frame");
    let carried = deliveries(d, during.sent.id);
    assert_eq!(carried.len(), 1, "delivered once: {carried:?}");
    assert!(
        carried[0].connection > 1 && carried[0].at >= resumed_at,
        "the held interaction was replayed on the new connection after the RESUME"
    );
    assert!(during.ack.received_at >= resumed_at);
    app.finish().await;
}

#[tokio::test]
async fn after_an_invalid_session_the_bot_identifies_again_and_earlier_work_completes() {
    // Arrange: a manual clock; the audit channel fails, so audit messages wait in the outbox.
    let clock = ManualClock::new(Utc::now());
    let app = TestAppBuilder::default().clock(clock.clone()).start().await;
    let d = &app.discord;
    audit_channel_matches_log(&app).await;
    d.fail_always(
        RouteMatch::ChannelMessages(AUDIT_CHANNEL),
        FailMode::Status(500),
    );
    let granted = interact(&app, ssh(d, "web-01", "15m")).await;
    assert!(
        granted.title().contains("Access granted"),
        "{}",
        granted.text()
    );

    // Act: op 9, not resumable. An interaction sent now is lost, as on Discord.
    d.send_invalid_session(false);
    let lost = d.dispatch_interaction(ssh(d, "web-02", "15m"));
    assert!(
        d.wait_until_ready(Duration::from_secs(30)).await,
        "the bot identified again"
    );
    // Discord is back and the reminder falls due (10 min before the end); any
    // interaction wakes the workers.
    d.clear_faults();
    clock.advance(chrono::Duration::minutes(6));
    let poke = interact(
        &app,
        jit(d, "ssh", "web-03", "1h", &[DEV_ROLE]).string("from", "203.0.113.7"),
    )
    .await;

    // Assert
    assert_eq!(d.identifies().len(), 2, "a second IDENTIFY, no RESUME");
    assert!(d.resumes().is_empty());
    assert!(
        deliveries(d, lost.id).is_empty(),
        "the lost interaction never reached the bot"
    );
    assert!(d.callbacks(lost.id).is_empty());
    assert_eq!(
        poke.title(),
        "Access denied",
        "the new session works: {}",
        poke.text()
    );
    let reminded = d
        .wait_until(WAIT, |d| !d.dm_messages(USER_ID).is_empty())
        .await;
    assert!(
        reminded,
        "the reminder of the grant made before the op 9 was sent"
    );
    let reminder = &d.dm_messages(USER_ID)[0];
    assert!(
        reminder["embeds"][0]["title"]
            .as_str()
            .is_some_and(|t| t.contains("web-01")),
        "{reminder}"
    );
    audit_channel_matches_log(&app).await;
    app.finish().await;
}
