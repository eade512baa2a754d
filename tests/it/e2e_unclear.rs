//! End to end: an initiate whose outcome is unclear (Azure applied it, then
//! the answer was lost: a timeout, a 500, a truncated 2xx body) is settled
//! from the policy Azure shows, never recorded as failed on that alone; and
//! one Azure did not apply is failed with a clear message.

use drawbridge::domain::{AuditAction, GrantState};
use drawbridge::sandbox::{DEFAULT_PRINCIPAL_NAME, Fault, FaultRule, RequestorModel, Route};
use drawbridge::store::{Grant, ScheduleKind};

use crate::e2e::{
    Reply, WAIT, audit_actions_for, audit_log, grant, initiates, interact, ssh_web_01,
};
use crate::support::app::{SUB_PROD, TestApp, TestAppBuilder};
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
    app.finish().await;
}

#[tokio::test]
async fn an_initiate_applied_then_answered_500_settles_active() {
    let app = app().await;

    let (reply, stored) = request_with(&app, Fault::ServerErrorAfterApply { status: 500 }).await;

    assert_settled_active(&app, &reply, &stored).await;
    app.finish().await;
}

#[tokio::test]
async fn an_initiate_applied_with_a_truncated_body_settles_active() {
    let app = app().await;

    let (reply, stored) = request_with(&app, Fault::TruncatedBody).await;

    assert_settled_active(&app, &reply, &stored).await;
    app.finish().await;
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
    app.finish().await;
}

/// The read-back fails too: the member is told Drawbridge is checking, the
/// grant waits in `pending_azure`, and the reconciler settles it from its
/// next listing and tells the member, on the same reply (its token still
/// works, so no DM).
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

    // The reconciler (every second here) may settle it while the request
    // still reads the policy back: the reply then shows the outcome at once.
    assert!(
        reply.title().contains("Checking with Azure") || reply.title().contains("Access granted"),
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
    let interaction: u64 = stored.request_id.as_str().parse().unwrap();
    let told = |d: &crate::support::fake_discord::FakeDiscord| {
        d.interaction_response(interaction)
            .is_some_and(|m| m.to_string().contains("Access granted"))
    };
    while !told(&app.discord) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        told(&app.discord),
        "{:?}",
        app.discord.interaction_response(interaction)
    );
    assert!(app.discord.dm_messages(USER_ID).is_empty());
    assert_eq!(app.azure.emulator.jit_request_count(), 1);
    assert!(
        !audit_log(&app)
            .await
            .iter()
            .any(|r| r.event.action == AuditAction::OpenedOutsideDrawbridge),
        "our own request is not reported as made outside Drawbridge"
    );
    app.azure.emulator.clear_faults();
    app.finish().await;
}

// ----- extend without a clear answer ------------------------------------------------------------

/// Alice's usual grant, opened with no fault.
async fn granted(app: &TestApp) -> (Reply, Grant) {
    let reply = interact(app, ssh_web_01(&app.discord)).await;
    let stored = grant(app, &reply.request_id()).await;
    assert_eq!(stored.state, GrantState::Active);
    (reply, stored)
}

/// Presses Extend on `granted` with `fault` armed on the next initiate.
async fn extend_with(app: &TestApp, granted: &Reply, fault: Fault) -> (Reply, Grant) {
    app.azure
        .emulator
        .inject(Route::Initiate, FaultRule::next(1, fault));
    let (_, custom_id) = granted
        .buttons()
        .into_iter()
        .find(|(l, _)| l == "Extend")
        .expect("an Extend button");
    let reply = interact(
        app,
        app.discord
            .button(&custom_id)
            .on_message(granted.message.clone())
            .roles([crate::support::app::SRE_ROLE]),
    )
    .await;
    let stored = grant(app, &granted.request_id()).await;
    (reply, stored)
}

/// Extended until the end Azure shows, the timers moved there, audited,
/// and Azure holds the initiate and the one extension.
async fn assert_extended(app: &TestApp, reply: &Reply, before: &Grant, after: &Grant) {
    assert!(
        reply.title().contains("Access extended"),
        "{}",
        reply.text()
    );
    assert_eq!(after.state, GrantState::Extended, "{after:?}");
    assert!(after.end_time > before.end_time, "{after:?}");
    assert_eq!(
        timers(app, after).await,
        [ScheduleKind::Reminder, ScheduleKind::Expiry]
    );
    let due = app
        .store
        .next_due(10_000)
        .await
        .expect("the store answers")
        .into_iter()
        .filter(|i| i.request_id == after.request_id && i.kind == ScheduleKind::Expiry)
        .map(|i| i.due_at)
        .collect::<Vec<_>>();
    assert_eq!(
        due,
        [after.end_time.expect("an end")],
        "expiry at the new end"
    );
    assert_eq!(
        audit_actions_for(app, &after.request_id).await.last(),
        Some(&AuditAction::AccessExtended)
    );
    assert_eq!(initiates(app).len(), 2, "the extension was not sent again");
    assert_eq!(app.azure.emulator.jit_request_count(), 2);
}

#[tokio::test]
async fn an_extend_applied_then_timed_out_settles_extended() {
    let app = app().await;
    let (granted, before) = granted(&app).await;

    let (reply, after) = extend_with(&app, &granted, Fault::HangAfterApply).await;

    assert_extended(&app, &reply, &before, &after).await;
    app.finish().await;
}

#[tokio::test]
async fn an_extend_applied_then_answered_500_settles_extended() {
    let app = app().await;
    let (granted, before) = granted(&app).await;

    let (reply, after) =
        extend_with(&app, &granted, Fault::ServerErrorAfterApply { status: 500 }).await;

    assert_extended(&app, &reply, &before, &after).await;
    app.finish().await;
}

#[tokio::test]
async fn an_extend_applied_with_a_truncated_body_settles_extended() {
    let app = app().await;
    let (granted, before) = granted(&app).await;

    let (reply, after) = extend_with(&app, &granted, Fault::TruncatedBody).await;

    assert_extended(&app, &reply, &before, &after).await;
    app.finish().await;
}

#[tokio::test]
async fn an_extend_azure_did_not_apply_leaves_the_grant_as_it_was() {
    let app = app().await;
    let (granted, before) = granted(&app).await;

    let (reply, after) = extend_with(&app, &granted, Fault::Hang).await;

    assert!(
        reply.description().contains("no extension of ours"),
        "{}",
        reply.text()
    );
    assert_eq!(after.state, GrantState::Active);
    assert_eq!(after.end_time, before.end_time);
    assert_eq!(
        timers(&app, &after).await,
        [ScheduleKind::Reminder, ScheduleKind::Expiry]
    );
    assert_eq!(app.azure.emulator.jit_request_count(), 1);
    app.finish().await;
}

// ----- the reconciler: our request open after all, and requests by others -----------------------

/// An initiate for web-01 ssh from 203.0.113.7 made straight against the
/// emulator with `token`, saying `justification`.
async fn initiate_as(app: &TestApp, token: &str, justification: &str) {
    let url = format!(
        "{}/subscriptions/{SUB_PROD}/resourceGroups/rg-web/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default/initiate?api-version=2020-01-01",
        app.azure.base_url
    );
    let vm_id = format!(
        "/subscriptions/{SUB_PROD}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web-01"
    );
    let body = serde_json::json!({
        "virtualMachines": [{"id": vm_id, "ports": [{
            "number": 22,
            "endTimeUtc": (app.clock.now() + chrono::TimeDelta::minutes(90)).to_rfc3339(),
            "allowedSourceAddressPrefix": "203.0.113.7",
        }]}],
        "justification": justification,
    });
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("the emulator answers");
    assert_eq!(response.status().as_u16(), 202);
}

/// The first request flagged as opened outside Drawbridge, waiting for
/// the reconciler up to [`WAIT`].
async fn first_flagged(app: &TestApp) -> Option<drawbridge::store::AuditRecord> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = audit_log(app)
            .await
            .into_iter()
            .find(|r| r.event.action == AuditAction::OpenedOutsideDrawbridge);
        if found.is_some() || tokio::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Waits until the grant leaves `state`.
async fn settled_from(app: &TestApp, stored: &Grant, state: GrantState) -> Grant {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut now = stored.clone();
    while now.state == state && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        now = grant(app, &stored.request_id).await;
    }
    now
}

fn reconciling_app() -> TestAppBuilder {
    TestAppBuilder::default()
        .env("AZURE__REQUEST_TIMEOUT", "1s")
        .env("AZURE__RECONCILE_INTERVAL", "1s")
}

#[tokio::test]
async fn a_failed_grant_azure_shows_open_by_our_identity_is_taken_back() {
    let app = reconciling_app().start().await;
    let (_, failed) = request_with(&app, Fault::Hang).await;
    assert_eq!(failed.state, GrantState::Failed);

    // Azure applies our request after all (as the bot's own identity).
    let ours = app.azure.emulator.issue_token();
    let why = format!(
        "Drawbridge request {} by Discord user {USER_ID}",
        failed.request_id
    );
    initiate_as(&app, &ours, &why).await;

    let back = settled_from(&app, &failed, GrantState::Failed).await;
    assert_eq!(back.state, GrantState::Active, "{back:?}");
    assert_eq!(back.failure, None);
    assert_eq!(
        timers(&app, &back).await,
        [ScheduleKind::Reminder, ScheduleKind::Expiry]
    );
    let actions = audit_actions_for(&app, &failed.request_id).await;
    assert_eq!(
        actions.last(),
        Some(&AuditAction::AccessReopened),
        "{actions:?}"
    );
    let told = app
        .discord
        .wait_until(WAIT, |d| {
            d.dm_messages(USER_ID)
                .iter()
                .any(|m| m.to_string().contains("Access granted"))
        })
        .await;
    assert!(told, "{:?}", app.discord.dm_messages(USER_ID));
    assert!(
        !audit_log(&app)
            .await
            .iter()
            .any(|r| r.event.action == AuditAction::OpenedOutsideDrawbridge),
        "our own request is not reported as made outside Drawbridge"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_portal_request_by_another_identity_naming_a_pending_grant_is_flagged() {
    let app = reconciling_app().start().await;
    // Drawbridge has never had a clear answer from Azure: nothing recorded
    // its identity; only its token names it. Azure cannot be read until
    // Mallory has made her request, so the grant waits in `pending_azure`.
    for route in [Route::GetPolicy, Route::ListPolicies] {
        app.azure
            .emulator
            .inject(route, FaultRule::always(Fault::ServerError { status: 503 }));
    }
    let (_, pending) = request_with(&app, Fault::ServerError { status: 500 }).await;
    assert_eq!(pending.state, GrantState::PendingAzure);

    // Mallory opens the same port from the same address in the portal,
    // naming the public request id.
    app.azure
        .emulator
        .set_principal_name("mallory@contoso.example");
    let theirs = app.azure.emulator.issue_token();
    app.azure
        .emulator
        .set_principal_name(drawbridge::sandbox::DEFAULT_PRINCIPAL);
    let why = format!(
        "Drawbridge request {} by Discord user {USER_ID}",
        pending.request_id
    );
    initiate_as(&app, &theirs, &why).await;
    app.azure.emulator.clear_faults();

    let settled = settled_from(&app, &pending, GrantState::PendingAzure).await;
    assert_eq!(settled.state, GrantState::Failed, "{settled:?}");
    let flagged = first_flagged(&app)
        .await
        .expect("the portal request is flagged");
    assert_eq!(flagged.event.detail["requestor"], "mallory@contoso.example");
    assert_eq!(
        grant(&app, &pending.request_id).await.state,
        GrantState::Failed
    );
    app.finish().await;
}

/// Bob's clear `/jit ssh web-02 1h` from his own address.
async fn bob_asks_for_web_02(app: &TestApp) -> Reply {
    interact(
        app,
        crate::e2e::jit(
            &app.discord,
            "ssh",
            "web-02",
            "1h",
            &[crate::support::app::SRE_ROLE],
        )
        .string("from", "198.51.100.20")
        .user(crate::e2e::BOB, "bob"),
    )
    .await
}

/// Azure writes a name as `requestor` (a UPN or the identity's display
/// name), which the bot's token does not carry.
fn name_requestor(app: &TestApp) {
    app.azure.emulator.set_requestor_model(RequestorModel::Name);
}

#[tokio::test]
async fn under_a_name_requestor_an_unclear_first_initiate_settles_by_the_configured_name() {
    let app = TestAppBuilder::default()
        .env("AZURE__REQUEST_TIMEOUT", "1s")
        .env("AZURE__REQUESTOR_NAMES", DEFAULT_PRINCIPAL_NAME)
        .start()
        .await;
    name_requestor(&app);

    let (reply, stored) = request_with(&app, Fault::ServerErrorAfterApply { status: 500 }).await;

    assert_settled_active(&app, &reply, &stored).await;
    app.finish().await;
}

#[tokio::test]
async fn under_a_name_requestor_the_bot_learns_its_name_from_a_clear_initiate() {
    let app = app().await;
    name_requestor(&app);
    let clear = interact(&app, ssh_web_01(&app.discord)).await;
    assert!(clear.title().contains("Access granted"), "{}", clear.text());

    // Bob's request, on another VM, has no clear answer.
    app.azure.emulator.inject(
        Route::Initiate,
        FaultRule::next(1, Fault::ServerErrorAfterApply { status: 500 }),
    );
    let reply = bob_asks_for_web_02(&app).await;

    let stored = grant(&app, &reply.request_id()).await;
    assert_eq!(stored.state, GrantState::Active, "{stored:?}");
    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    app.finish().await;
}

#[tokio::test]
async fn under_a_name_requestor_the_bot_never_takes_a_request_for_its_own_by_its_text() {
    // Nothing tells the bot the name Azure writes for it: its own unclear
    // request cannot be told from one typed in the portal naming the grant,
    // so it is flagged, not taken; once a clear initiate teaches the name,
    // the reconciler takes the grant back.
    let app = reconciling_app().start().await;
    name_requestor(&app);
    let (reply, failed) = request_with(&app, Fault::ServerErrorAfterApply { status: 500 }).await;
    assert_eq!(failed.state, GrantState::Failed, "{failed:?}");
    assert!(
        reply.text().contains("shows no request of ours"),
        "{}",
        reply.text()
    );
    let flagged = first_flagged(&app)
        .await
        .expect("the request is flagged, naming Azure's requestor");
    assert_eq!(flagged.event.detail["requestor"], DEFAULT_PRINCIPAL_NAME);
    assert_eq!(
        grant(&app, &failed.request_id).await.state,
        GrantState::Failed
    );

    // Bob's clear request elsewhere teaches the bot its name.
    let bob = bob_asks_for_web_02(&app).await;
    assert!(bob.title().contains("Access granted"), "{}", bob.text());
    let back = settled_from(&app, &failed, GrantState::Failed).await;
    assert_eq!(back.state, GrantState::Active, "{back:?}");
    app.finish().await;
}
