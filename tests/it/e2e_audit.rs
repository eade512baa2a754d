//! End to end: the audit channel is fed from the outbox, in log order,
//! and survives the channel failing for a while.

use std::time::Duration;

use chrono::Utc;
use drawbridge::clock::ManualClock;
use drawbridge::domain::AuditAction;

use crate::e2e::{
    WAIT, audit_channel_matches_log, audit_log, interact, jit, outbox_drained, ssh_web_01,
};
use crate::support::app::{AUDIT_CHANNEL, SRE_ROLE, TestApp, TestAppBuilder};
use crate::support::fake_discord::{FailMode, RecordedCall, RouteMatch};

/// Posts to the audit channel so far.
fn audit_posts(app: &TestApp) -> Vec<RecordedCall> {
    app.discord
        .calls_to("POST", &format!("/channels/{AUDIT_CHANNEL}/messages"))
}

/// Moves `clock` on a minute at a time (so the outbox's retry becomes due
/// whenever it was scheduled) until `done` holds.
async fn advance_until(app: &TestApp, clock: &ManualClock, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox did not get there"
        );
        clock.advance(chrono::Duration::minutes(1));
        app.discord
            .wait_until(Duration::from_millis(200), |_| done())
            .await;
    }
}

/// Waits (moving the clock) until the audit channel has refused `n` posts.
async fn wait_for_refusals(app: &TestApp, clock: &ManualClock, n: usize) {
    advance_until(app, clock, || {
        audit_posts(app).iter().filter(|c| c.injected_fault).count() >= n
    })
    .await;
}

#[tokio::test]
async fn a_failing_audit_channel_delays_audit_messages_but_loses_and_duplicates_none() {
    // A manual clock: the outbox's backoff passes when the test says so.
    let clock = ManualClock::new(Utc::now());
    let app = TestAppBuilder::default().clock(clock.clone()).start().await;
    let d = &app.discord;
    audit_channel_matches_log(&app).await;
    let shown_before = d.channel_messages(AUDIT_CHANNEL).len();

    // The audit channel answers 500...
    d.fail_always(
        RouteMatch::ChannelMessages(AUDIT_CHANNEL),
        FailMode::Status(500),
    );
    let granted = interact(&app, ssh_web_01(d)).await;
    assert!(
        granted.title().contains("Access granted"),
        "{}",
        granted.text()
    );
    wait_for_refusals(&app, &clock, 1).await;
    // ...then is rate limited...
    d.clear_faults();
    d.fail_always(
        RouteMatch::ChannelMessages(AUDIT_CHANNEL),
        FailMode::RateLimited {
            retry_after_secs: 0.2,
            global: false,
        },
    );
    let denied = interact(
        &app,
        jit(d, "rdp", "web-02", "1h", &[SRE_ROLE]).string("from", "203.0.113.7"),
    )
    .await;
    assert_eq!(denied.title(), "Access denied", "{}", denied.text());
    wait_for_refusals(&app, &clock, 2).await;
    assert!(
        audit_posts(&app)
            .iter()
            .any(|c| c.injected_fault && c.status == 429)
    );
    // Nothing got through meanwhile; the replies were not held up.
    assert_eq!(d.channel_messages(AUDIT_CHANNEL).len(), shown_before);

    // ...and recovers.
    d.clear_faults();
    let log_size = audit_log(&app).await.len();
    advance_until(&app, &clock, || {
        d.channel_messages(AUDIT_CHANNEL).len() >= log_size
    })
    .await;

    let records = audit_channel_matches_log(&app).await;
    let actions: Vec<AuditAction> = records[shown_before..]
        .iter()
        .map(|r| r.event.action)
        .collect();
    assert_eq!(
        actions,
        [
            AuditAction::RequestReceived,
            AuditAction::AccessAllowed,
            AuditAction::AccessInitiated,
            AuditAction::RequestReceived,
            AuditAction::AccessDenied,
        ]
    );
    let delivered = audit_posts(&app).iter().filter(|c| c.status == 200).count();
    assert_eq!(delivered, records.len(), "each event was posted once");
    // Every post carried its idempotency nonce.
    assert!(
        audit_posts(&app)
            .iter()
            .all(|c| c.body["enforce_nonce"] == true && c.body["nonce"].is_string())
    );
    app.finish().await;
}

#[tokio::test]
async fn audit_messages_of_concurrent_requests_keep_log_order() {
    let app = TestAppBuilder::default().start().await;
    let d = &app.discord;

    let requests = (0..4).map(|i| {
        let app = &app;
        async move {
            interact(
                app,
                jit(d, "ssh", &format!("web-0{}", i + 1), "1h", &[SRE_ROLE])
                    .user(7000 + i, "engineer")
                    .string("from", "203.0.113.7"),
            )
            .await
        }
    });
    let replies = futures_util::future::join_all(requests).await;

    for reply in &replies {
        assert!(reply.title().contains("Access granted"), "{}", reply.text());
    }
    let records = audit_channel_matches_log(&app).await;
    assert_eq!(
        records
            .iter()
            .filter(|r| r.event.action == AuditAction::AccessInitiated)
            .count(),
        4
    );
    assert_eq!(audit_log(&app).await.len(), records.len());
    app.finish().await;
}

/// The running deliverer deletes outbox rows a week after their delivery,
/// not a day before; the audit log keeps every event they carried.
#[tokio::test]
async fn delivered_outbox_rows_are_deleted_a_week_later_and_the_audit_log_stays() {
    // Arrange: a grant, its audit posts and reply delivered.
    let clock = ManualClock::new(Utc::now());
    let app = TestAppBuilder::default().clock(clock.clone()).start().await;
    let reply = interact(&app, ssh_web_01(&app.discord)).await;
    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    assert!(outbox_drained(&app).await, "the outbox did not drain");
    let first = app.store.outbox_row(1).await.expect("the first row");
    assert!(first.delivered_at.is_some(), "{first:?}");
    let kept = || async { app.store.outbox_row(first.id).await.is_ok() };

    // Act: six days and 23 hours pass (the grant's expiry is posted
    // meanwhile, and a deliverer round runs after it); then two hours more.
    clock.advance(chrono::Duration::days(7) - chrono::Duration::hours(1));
    assert!(outbox_drained(&app).await, "the expiry was not posted");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let kept_a_day_before = kept().await;
    clock.advance(chrono::Duration::hours(2));
    let deleted = tokio::time::timeout(WAIT, async {
        while kept().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok();

    // Assert
    assert!(kept_a_day_before, "deleted before a week was up");
    assert!(deleted, "not deleted a week after its delivery");
    let log = audit_log(&app).await;
    assert!(
        log.iter()
            .any(|r| r.event.action == AuditAction::AccessInitiated),
        "the audit log lost the grant"
    );
    app.finish().await;
}

/// The bot's role loses Send Messages in the audit channel (an overwrite):
/// Discord refuses every audit post 403/50013. Nothing is lost: the outbox
/// tries again each minute, and once the permission is back the backlog is
/// posted in log order, each event once.
#[tokio::test]
async fn audit_posts_the_channel_refuses_for_a_permission_wait_and_go_out_in_order_once_it_is_back()
{
    use crate::support::fake_discord::guild::{BOT_ROLE_ID, bits};
    // Arrange
    let clock = ManualClock::new(Utc::now());
    let app = TestAppBuilder::default().clock(clock.clone()).start().await;
    let d = &app.discord;
    audit_channel_matches_log(&app).await;
    let shown_before = d.channel_messages(AUDIT_CHANNEL).len();
    let refused = || {
        audit_posts(&app)
            .iter()
            .filter(|c| c.status == 403 && !c.injected_fault)
            .count()
    };

    // Act: the permission is taken away, a grant is made, and each minute
    // the post is refused again; then the permission is back.
    d.add_channel(
        AUDIT_CHANNEL,
        &[(BOT_ROLE_ID, false, 0, bits::SEND_MESSAGES)],
    );
    let granted = interact(&app, ssh_web_01(d)).await;
    advance_until(&app, &clock, || refused() >= 2).await;
    let shown_while_refused = d.channel_messages(AUDIT_CHANNEL).len();
    d.add_channel(AUDIT_CHANNEL, &[]);
    let log_size = audit_log(&app).await.len();
    advance_until(&app, &clock, || {
        d.channel_messages(AUDIT_CHANNEL).len() >= log_size
    })
    .await;

    // Assert
    assert!(
        granted.title().contains("Access granted"),
        "{}",
        granted.text()
    );
    assert_eq!(shown_while_refused, shown_before, "nothing got through");
    let records = audit_channel_matches_log(&app).await;
    let delivered = audit_posts(&app).iter().filter(|c| c.status == 200).count();
    assert_eq!(delivered, records.len(), "each event was posted once");
    app.finish().await;
}
