//! End to end: an initiate whose outcome is unclear (Azure applied it, then
//! the answer was lost: a timeout, a 500, a truncated 2xx body) is settled
//! from the policy Azure shows, never recorded as failed on that alone; and
//! one Azure did not apply is failed with a clear message.

use drawbridge::domain::{AuditAction, GrantState};
use drawbridge::sandbox::{Fault, FaultRule, Route};
use drawbridge::store::{Grant, ScheduleKind};

use crate::e2e::{
    Reply, WAIT, audit_actions_for, audit_log, grant, initiates, interact, ssh_web_01,
};
use crate::support::app::{TestApp, TestAppBuilder};
use crate::support::fake_discord::USER_ID;

/// An app whose ARM calls time out after 1 s, so a held answer fails fast.
async fn app() -> TestApp {
    TestAppBuilder::default()
        .env("AZURE__REQUEST_TIMEOUT", "1s")
        .start()
        .await
}

/// Requests web-01 with `fault` armed on the next initiate only.
async fn request_with(app: &TestApp, fault: Fault) -> (Reply, Grant) {
    app.azure
        .emulator
        .inject(Route::Initiate, FaultRule::next(1, fault));
    let reply = interact(app, ssh_web_01(&app.discord)).await;
    let stored = grant(app, &reply.request_id()).await;
    (reply, stored)
}

/// The grant's pending reminder and expiry.
async fn timers(app: &TestApp, grant: &Grant) -> Vec<ScheduleKind> {
    app.store
        .next_due(10_000)
        .await
        .expect("the store answers")
        .into_iter()
        .filter(|i| i.request_id == grant.request_id)
        .map(|i| i.kind)
        .collect()
}

/// The member is told it is open, the grant is active until the end Azure
/// shows, with its reminder and expiry, audited, and Azure holds exactly
/// the one request.
async fn assert_settled_active(app: &TestApp, reply: &Reply, stored: &Grant) {
    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    assert_eq!(stored.state, GrantState::Active, "{stored:?}");
    let end = stored.end_time.expect("an end time");
    assert!(end > chrono::Utc::now(), "{end}");
    assert_eq!(
        timers(app, stored).await,
        [ScheduleKind::Reminder, ScheduleKind::Expiry]
    );
    assert_eq!(
        audit_actions_for(app, &stored.request_id).await.last(),
        Some(&AuditAction::AccessInitiated)
    );
    assert_eq!(initiates(app).len(), 1, "the initiate was not sent again");
    assert_eq!(app.azure.emulator.jit_request_count(), 1);
}

#[tokio::test]
async fn an_initiate_applied_then_timed_out_settles_active() {
    let app = app().await;

    let (reply, stored) = request_with(&app, Fault::HangAfterApply).await;

    assert_settled_active(&app, &reply, &stored).await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_initiate_applied_then_answered_500_settles_active() {
    let app = app().await;

    let (reply, stored) = request_with(&app, Fault::ServerErrorAfterApply { status: 500 }).await;

    assert_settled_active(&app, &reply, &stored).await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_initiate_applied_with_a_truncated_body_settles_active() {
    let app = app().await;

    let (reply, stored) = request_with(&app, Fault::TruncatedBody).await;

    assert_settled_active(&app, &reply, &stored).await;
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn an_initiate_azure_did_not_apply_fails_with_a_clear_message() {
    let app = app().await;

    let (reply, stored) = request_with(&app, Fault::Hang).await;

    assert_eq!(
        reply.title(),
        "Azure did not open the port",
        "{}",
        reply.text()
    );
    assert!(
        reply.description().contains("the port was not opened"),
        "{}",
        reply.description()
    );
    assert_eq!(stored.state, GrantState::Failed);
    assert!(timers(&app, &stored).await.is_empty());
    assert_eq!(app.azure.emulator.jit_request_count(), 0);
    app.stop().await.expect("clean stop");
}

/// The read-back fails too: the member is told Drawbridge is checking, the
/// grant waits in `pending_azure`, and the reconciler settles it from its
/// next listing and tells the member.
#[tokio::test]
async fn an_unclear_initiate_whose_read_back_fails_is_settled_by_the_reconciler() {
    let app = TestAppBuilder::default()
        .env("AZURE__REQUEST_TIMEOUT", "1s")
        .env("AZURE__RECONCILE_INTERVAL", "1s")
        .start()
        .await;
    app.azure.emulator.inject(
        Route::GetPolicy,
        FaultRule::always(Fault::ServerError { status: 503 }),
    );

    let (reply, stored) = request_with(&app, Fault::ServerErrorAfterApply { status: 500 }).await;

    assert!(
        reply.title().contains("Checking with Azure"),
        "{}",
        reply.text()
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut settled = stored.clone();
    while settled.state == GrantState::PendingAzure && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        settled = grant(&app, &stored.request_id).await;
    }
    assert_eq!(settled.state, GrantState::Active);
    assert_eq!(
        timers(&app, &settled).await,
        [ScheduleKind::Reminder, ScheduleKind::Expiry]
    );
    let told = |d: &crate::support::fake_discord::FakeDiscord| {
        d.dm_messages(USER_ID)
            .iter()
            .any(|m| m.to_string().contains("Access granted"))
    };
    while !told(&app.discord) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(told(&app.discord), "{:?}", app.discord.dm_messages(USER_ID));
    assert_eq!(app.azure.emulator.jit_request_count(), 1);
    assert!(
        !audit_log(&app)
            .await
            .iter()
            .any(|r| r.event.action == AuditAction::OpenedOutsideDrawbridge),
        "our own request is not reported as made outside Drawbridge"
    );
    app.stop().await.expect("clean stop");
}
