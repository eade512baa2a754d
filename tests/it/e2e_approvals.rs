//! Approvals in chat (issue 13), end to end: the real app against the fake
//! Discord and the Azure emulator. Alice (the fake's default member, role
//! 100) asks for SSH on the prod VM `rg-prod/ops-01`, whose mapping needs
//! approvers with role 300; Bob and Carol hold it.

use chrono::Utc;
use drawbridge::clock::ManualClock;
use drawbridge::domain::{AuditAction, GrantState, RequestId};
use drawbridge::sandbox::{Fault, FaultRule, Route};
use serde_json::Value;

use crate::e2e::{
    BOB, Reply, WAIT, audit_log, buttons_of, grant, initiated_end, initiates, interact, jit,
    outbox_drained, reply_to,
};
use crate::support::app::{SRE_ROLE, TestApp, TestAppBuilder};
use crate::support::fake_discord::{
    FailMode, FakeDiscord, InteractionBuilder, RouteMatch, USER_ID,
};

/// `discord.approvals_channel_id`.
pub(crate) const APPROVALS: u64 = 7100;
const APPROVER_ROLE: u64 = 300;
const BREAK_GLASS_ROLE: u64 = 310;
const ALERT_ROLE: u64 = 320;
const CAROL: u64 = 6008;
const ALICE: u64 = USER_ID;

/// A mapping of `role` to SSH on `rg-prod/ops-01`, with `more` lines.
fn prod_mapping(name: &str, role: u64, more: &str) -> String {
    format!(
        r#"
[[mapping]]
name = "{name}"
roles = ["{role}"]
vms = "rg-prod/ops-01"
ports = ["ssh"]
max_duration = "3h"
{more}
"#
    )
}

/// `sre-web` (self-service) and `prod` needing `approvals`; also the
/// mappings of the approval crash test.
pub(crate) fn mappings(approvals: u32) -> String {
    let prod = prod_mapping(
        "prod",
        SRE_ROLE,
        &format!(
            "approvers = [\"{APPROVER_ROLE}\"]\napprovals = {approvals}\nbreak_glass = [\"{BREAK_GLASS_ROLE}\"]"
        ),
    );
    format!("{}\n{prod}", crate::support::app::DEFAULT_MAPPINGS)
}

fn builder(approvals: u32) -> TestAppBuilder {
    TestAppBuilder::default()
        .mappings(&mappings(approvals))
        .env("DISCORD__APPROVALS_CHANNEL_ID", &APPROVALS.to_string())
        .env("DISCORD__ALERT_ROLE_ID", &ALERT_ROLE.to_string())
}

/// Alice's `/jit ssh rg-prod/ops-01 2h from:203.0.113.7`.
async fn ask_prod(app: &TestApp, roles: &[u64]) -> Reply {
    let d = &app.discord;
    interact(
        app,
        jit(d, "ssh", "rg-prod/ops-01", "2h", roles).string("from", "203.0.113.7"),
    )
    .await
}

/// Azure's justification of `initiate` names the requester and the approver.
fn assert_justification_names_alice_and_bob(initiate: &drawbridge::sandbox::CallRecord) {
    let why = initiate.body.as_ref().unwrap()["justification"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains(&ALICE.to_string()) && why.contains(&BOB.to_string()),
        "{why}"
    );
}

/// `reply`'s title is `title` and its text says `says`.
fn assert_says(reply: &Reply, title: &str, says: &str) {
    assert_eq!(reply.title(), title, "{}", reply.text());
    assert!(reply.text().contains(says), "{}", reply.text());
}

/// `approved`, an approver's reply, says approved, and Azure saw the one
/// initiate.
fn assert_opened_by_the_approval(app: &TestApp, approved: &Reply) {
    assert!(
        approved.title().starts_with("Approved"),
        "{}",
        approved.text()
    );
    assert_eq!(initiates(app).len(), 1);
}

/// The card of request `id` in the approvals channel, as last edited.
fn card(d: &FakeDiscord, id: &RequestId) -> Option<Value> {
    let footer = format!("Request {id}");
    d.channel_messages(APPROVALS)
        .into_iter()
        .find(|m| m["embeds"][0]["footer"]["text"] == footer.as_str())
}

/// Waits until the card of `id` satisfies `pred`.
async fn wait_card(d: &FakeDiscord, id: &RequestId, pred: impl Fn(&Value) -> bool) -> Value {
    d.wait_until(WAIT, |d| card(d, id).is_some_and(|c| pred(&c)))
        .await;
    let card = card(d, id).expect("the approval card is posted");
    assert!(pred(&card), "the card never got there: {card}");
    card
}

fn custom_ids(message: &Value) -> Vec<String> {
    buttons_of(message).into_iter().map(|(_, id)| id).collect()
}

fn title(message: &Value) -> String {
    message["embeds"][0]["title"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn all_text(message: &Value) -> String {
    message.to_string()
}

/// A click on `verb`'s button of request `id` by `user` with `roles`.
async fn click(app: &TestApp, verb: &str, id: &RequestId, user: u64, roles: &[u64]) -> Reply {
    let d = &app.discord;
    let name = if user == ALICE { "alice" } else { "approver" };
    interact(
        app,
        d.button(&format!("{verb}:{id}:1"))
            .user(user, name)
            .roles(roles.iter().copied()),
    )
    .await
}

#[tokio::test]
async fn alice_cannot_approve_her_own_prod_request_bob_can_and_the_window_starts_at_his_click() {
    // Arrange: a manual clock, so that the window's start can be told
    // apart from the time Alice asked.
    let asked_at = Utc::now();
    let clock = ManualClock::new(asked_at);
    let app = builder(1).clock(clock.clone()).start().await;
    let d = &app.discord;

    // Act: Alice asks. Everything is checked, nothing reaches Azure.
    let asked = ask_prod(&app, &[SRE_ROLE, APPROVER_ROLE]).await;
    let id = asked.request_id();

    // Assert: she waits, with Cancel, and the approvers get a card.
    assert!(
        asked.title().contains("Waiting for approval"),
        "{}",
        asked.text()
    );
    assert!(
        asked
            .description()
            .contains(&format!("1 approval from <@&{APPROVER_ROLE}>")),
        "{}",
        asked.text()
    );
    assert_eq!(
        asked.buttons(),
        [("Cancel".to_owned(), format!("cancel:{id}:1"))]
    );
    assert_eq!(grant(&app, &id).await.state, GrantState::PendingApproval);
    let pending = wait_card(d, &id, |c| !custom_ids(c).is_empty()).await;
    assert_eq!(
        custom_ids(&pending),
        [format!("approve:{id}:1"), format!("deny:{id}:1")]
    );
    for field in ["Who", "VM", "Ports", "Source", "Duration"] {
        assert!(all_text(&pending).contains(field), "{field}: {pending}");
    }
    // Only the approver role is pinged: through allowed_mentions, not the requester.
    let post = d
        .calls_to("POST", &format!("/channels/{APPROVALS}/messages"))
        .into_iter()
        .find(|c| c.body["embeds"][0]["footer"]["text"] == format!("Request {id}").as_str())
        .expect("the card was posted");
    assert_eq!(
        post.body["allowed_mentions"]["roles"],
        serde_json::json!([APPROVER_ROLE.to_string()])
    );
    assert_eq!(
        post.body["allowed_mentions"]["users"],
        serde_json::json!([])
    );
    assert_eq!(
        post.body["allowed_mentions"]["parse"],
        serde_json::json!([])
    );
    assert!(
        initiates(&app).is_empty(),
        "Azure hears nothing before approval"
    );

    // Alice holds the approver role too, but may not approve her own request.
    let own = click(&app, "approve", &id, ALICE, &[SRE_ROLE, APPROVER_ROLE]).await;
    assert!(own.text().contains("cannot approve"), "{}", own.text());
    assert!(initiates(&app).is_empty());

    // Bob approves five minutes later: the port opens now, for two hours
    // from his click, not from Alice's request.
    clock.advance(chrono::Duration::minutes(5));
    let clicked = asked_at + chrono::Duration::minutes(5);
    let approved = click(&app, "approve", &id, BOB, &[APPROVER_ROLE]).await;
    assert!(
        approved.title().starts_with("Approved"),
        "{}",
        approved.text()
    );
    let calls = initiates(&app);
    assert_eq!(calls.len(), 1, "exactly one initiate: {calls:?}");
    let end = initiated_end(&calls[0]);
    let from_click = end - (clicked + chrono::Duration::hours(2));
    assert!(
        from_click.num_seconds().abs() <= 1,
        "the window starts at Bob's click ({clicked}), not at Alice's request ({asked_at}): ends {end}"
    );
    assert_justification_names_alice_and_bob(&calls[0]);
    assert_eq!(grant(&app, &id).await.state, GrantState::Active);

    // The card ends approved, without buttons; Alice's reply shows the grant and who approved.
    let done = wait_card(d, &id, |c| custom_ids(c).is_empty()).await;
    assert!(title(&done).starts_with("Approved"), "{done}");
    assert!(all_text(&done).contains(&format!("<@{BOB}>")), "{done}");
    let reply = d
        .wait_for_interaction_response(asked.sent.id, WAIT, |m| title(m).contains("Access granted"))
        .await
        .expect("Alice's reply is edited to the grant");
    assert!(all_text(&reply).contains(&format!("<@{BOB}>")), "{reply}");

    // Every step is audited, naming the approver.
    let log = audit_log(&app).await;
    let mine: Vec<_> = log
        .iter()
        .filter(|r| r.event.detail["request_id"] == id.as_str())
        .collect();
    let approvals: Vec<_> = mine
        .iter()
        .filter(|r| r.event.action == AuditAction::RequestApproved)
        .collect();
    assert_eq!(approvals.len(), 1);
    assert_eq!(approvals[0].event.actor, format!("discord:{BOB}"));
    assert!(
        mine.iter()
            .any(|r| r.event.action == AuditAction::ApprovalRequested)
    );
    assert!(
        mine.iter()
            .any(|r| r.event.action == AuditAction::AccessInitiated)
    );
    app.finish().await;
}

#[tokio::test]
async fn two_approvals_need_two_distinct_approvers() {
    // Arrange
    let app = builder(2).start().await;
    let asked = ask_prod(&app, &[SRE_ROLE]).await;
    let id = asked.request_id();

    // Act + Assert: one click is not enough, nor the same approver twice.
    let first = click(&app, "approve", &id, BOB, &[APPROVER_ROLE]).await;
    assert!(first.title().contains("1 of 2"), "{}", first.text());
    let again = click(&app, "approve", &id, BOB, &[APPROVER_ROLE]).await;
    assert!(
        again.title().contains("Already approved"),
        "{}",
        again.text()
    );
    assert!(initiates(&app).is_empty());
    assert_eq!(grant(&app, &id).await.state, GrantState::PendingApproval);
    // Alice's reply says who approved so far.
    app.discord
        .wait_for_interaction_response(asked.sent.id, WAIT, |m| {
            all_text(m).contains(&format!("Approved so far by <@{BOB}>"))
        })
        .await
        .expect("Alice sees Bob's approval");

    // Two distinct approvers are.
    let second = click(&app, "approve", &id, CAROL, &[APPROVER_ROLE]).await;
    assert!(second.title().starts_with("Approved"), "{}", second.text());
    assert_eq!(initiates(&app).len(), 1);
    assert_eq!(grant(&app, &id).await.state, GrantState::Active);
    let log = audit_log(&app).await;
    let approvers: Vec<&str> = log
        .iter()
        .filter(|r| r.event.action == AuditAction::RequestApproved)
        .map(|r| r.event.actor.as_str())
        .collect();
    assert_eq!(
        approvers,
        [format!("discord:{BOB}"), format!("discord:{CAROL}")]
    );
    app.finish().await;
}

// An edit of the card that Discord failed is retried later; by then the
// card may have moved on, and the retry would show approvers the buttons of
// a request that is already open.
#[tokio::test]
async fn a_card_edit_that_failed_never_puts_back_a_state_the_card_has_left() {
    // Arrange: a manual clock, so the failed edit's retry comes when the
    // test says, after the card has moved on.
    let clock = ManualClock::new(Utc::now());
    let app = builder(2).clock(clock.clone()).start().await;
    let d = &app.discord;
    let asked = ask_prod(&app, &[SRE_ROLE]).await;
    let id = asked.request_id();
    wait_card(d, &id, |c| !custom_ids(c).is_empty()).await;
    let card_edits = format!("/channels/{APPROVALS}/messages/");
    d.fail_next(
        RouteMatch::Prefix {
            method: Some("PATCH".into()),
            prefix: card_edits.clone(),
        },
        FailMode::Status(500),
        1,
    );

    // Act: Bob's approval's card edit fails; Carol's approval opens it.
    let first = click(&app, "approve", &id, BOB, &[APPROVER_ROLE]).await;
    assert!(first.title().contains("1 of 2"), "{}", first.text());
    d.wait_for_call(WAIT, |c| {
        c.method == "PATCH" && c.route().starts_with(&card_edits) && c.injected_fault
    })
    .await
    .expect("the card's edit after Bob's approval was tried");
    let second = click(&app, "approve", &id, CAROL, &[APPROVER_ROLE]).await;
    assert!(second.title().starts_with("Approved"), "{}", second.text());
    wait_card(d, &id, |c| custom_ids(c).is_empty()).await;
    // The failed edit's retry is due; everything is sent.
    clock.advance(chrono::Duration::minutes(1));
    let drained = outbox_drained(&app).await;

    // Assert: the card still says approved, without buttons.
    assert!(drained, "the outbox did not drain");
    let done = card(d, &id).unwrap();
    assert!(custom_ids(&done).is_empty(), "{done}");
    assert!(title(&done).starts_with("Approved"), "{done}");
    app.finish().await;
}

/// Alice's "waiting for approval" reply is written with her request. When
/// Discord refuses every in-line edit of it, the outbox shows it once
/// Discord takes edits again; before, nothing edited her reply until an
/// approver decided, and she looked at "thinking…" meanwhile.
#[tokio::test]
async fn a_waiting_reply_discord_refused_in_line_is_shown_from_the_outbox_once() {
    // Arrange
    let app = builder(1).start().await;
    let d = &app.discord;
    d.fail_always(RouteMatch::EditOriginal, FailMode::Status(500));
    let edits = |d: &FakeDiscord, failed: bool| {
        d.calls()
            .iter()
            .filter(|c| {
                c.method == "PATCH"
                    && c.route().ends_with("/messages/@original")
                    && c.injected_fault == failed
            })
            .count()
    };

    // Act: the in-line show tries five times and gives up; then Discord
    // takes edits again.
    let sent = d
        .send_interaction(
            jit(d, "ssh", "rg-prod/ops-01", "2h", &[SRE_ROLE]).string("from", "203.0.113.7"),
        )
        .await;
    let gave_up = d.wait_until(WAIT, |d| edits(d, true) >= 5).await;
    d.clear_faults();
    let shown = d
        .wait_for_interaction_response(sent.id, WAIT, |m| {
            all_text(m).contains("Waiting for approval")
        })
        .await;

    // Assert
    assert!(gave_up, "the in-line show did not give up");
    assert!(shown.is_some(), "the waiting reply was never shown");
    let id = RequestId::parse(&sent.id.to_string()).unwrap();
    assert_eq!(grant(&app, &id).await.state, GrantState::PendingApproval);
    let drained = outbox_drained(&app).await;
    assert!(drained, "the outbox did not drain");
    assert_eq!(edits(d, false), 1, "shown once");
    app.finish().await;
}

#[tokio::test]
async fn a_deny_asks_for_a_reason_alice_is_told_it_and_azure_sees_nothing() {
    // Arrange
    let app = builder(1).start().await;
    let d = &app.discord;
    let asked = ask_prod(&app, &[SRE_ROLE]).await;
    let id = asked.request_id();

    // Act: Deny answers with a form (type 9), not a deferral.
    let deny = d
        .send_interaction(
            d.button(&format!("deny:{id}:1"))
                .user(BOB, "bob")
                .roles([APPROVER_ROLE]),
        )
        .await;
    let ack = d.wait_for_callback(deny.id, WAIT).await.expect("answered");
    assert_eq!((ack.status, ack.kind()), (204, Some(9)), "{ack:?}");
    let form = d
        .submit_modal(deny.id, &[("reason", "change freeze until Monday")])
        .user(BOB, "bob")
        .roles([APPROVER_ROLE]);
    let sent = d.send_interaction(form).await;
    let denied = reply_to(d, sent).await;

    // Assert
    assert!(denied.title().starts_with("Denied"), "{}", denied.text());
    assert_eq!(grant(&app, &id).await.state, GrantState::Denied);
    assert!(initiates(&app).is_empty(), "Azure sees nothing");
    let told = d
        .wait_for_interaction_response(asked.sent.id, WAIT, |m| {
            all_text(m).contains("change freeze until Monday")
        })
        .await
        .expect("Alice is told the reason");
    assert!(title(&told).contains("denied"), "{told}");
    let done = wait_card(d, &id, |c| custom_ids(c).is_empty()).await;
    assert!(
        all_text(&done).contains("change freeze until Monday"),
        "{done}"
    );
    let log = audit_log(&app).await;
    let deny = log
        .iter()
        .find(|r| r.event.action == AuditAction::RequestDenied)
        .expect("the Deny is audited");
    assert_eq!(deny.event.actor, format!("discord:{BOB}"));
    assert_eq!(deny.event.detail["reason"], "change freeze until Monday");
    // A late Approve loses.
    let late = click(&app, "approve", &id, CAROL, &[APPROVER_ROLE]).await;
    assert!(late.text().contains("already denied"), "{}", late.text());
    assert!(initiates(&app).is_empty());
    app.finish().await;
}

#[tokio::test]
async fn a_request_nobody_decides_expires_and_the_card_and_alice_are_told() {
    // Arrange: a manual clock.
    let clock = ManualClock::new(Utc::now());
    let app = builder(1).clock(clock.clone()).start().await;
    let d = &app.discord;
    let asked = ask_prod(&app, &[SRE_ROLE]).await;
    let id = asked.request_id();
    wait_card(d, &id, |c| !custom_ids(c).is_empty()).await;

    // Act: past the 30 minute timeout (and the 15 minute interaction token).
    clock.advance(chrono::Duration::minutes(31));

    // Assert: the card ends expired without buttons; Alice gets a DM, as
    // her reply's token no longer works.
    let done = wait_card(d, &id, |c| custom_ids(c).is_empty()).await;
    assert!(title(&done).starts_with("Expired"), "{done}");
    assert!(
        d.wait_until(WAIT, |d| d
            .dm_messages(ALICE)
            .iter()
            .any(|m| title(m).contains("expired")))
            .await,
        "Alice is told by DM: {:?}",
        d.dm_messages(ALICE)
    );
    assert_eq!(grant(&app, &id).await.state, GrantState::ApprovalExpired);
    let late = click(&app, "approve", &id, BOB, &[APPROVER_ROLE]).await;
    assert!(late.text().contains("already expired"), "{}", late.text());
    assert!(initiates(&app).is_empty());
    assert!(
        audit_log(&app)
            .await
            .iter()
            .any(|r| r.event.action == AuditAction::ApprovalExpired)
    );
    app.finish().await;
}

#[tokio::test]
async fn approve_and_cancel_at_the_same_instant_have_exactly_one_outcome_a_hundred_times() {
    // Arrange: no rate limit in the way of 300 interactions.
    let app = builder(1)
        .env("LIMITS__REQUESTS_PER_MINUTE", "10000")
        .env("LIMITS__BURST", "10000")
        .start()
        .await;
    let d = &app.discord;
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(ask_prod(&app, &[SRE_ROLE]).await.request_id());
    }

    // Act: for each, Approve and Cancel sent together (ten races at a time,
    // so every interaction is acknowledged within Discord's 3 s).
    let mut approved = 0;
    for batch in ids.chunks(10) {
        let mut sent = Vec::new();
        for id in batch {
            let approve = d.dispatch_interaction(
                d.button(&format!("approve:{id}:1"))
                    .user(BOB, "bob")
                    .roles([APPROVER_ROLE]),
            );
            let cancel = d.dispatch_interaction(
                d.button(&format!("cancel:{id}:1"))
                    .user(ALICE, "alice")
                    .roles([SRE_ROLE]),
            );
            sent.push((id.clone(), approve, cancel));
        }

        // Assert: each request has exactly one outcome.
        for (id, approve, cancel) in sent {
            let approve = reply_to(d, approve).await;
            let cancel = reply_to(d, cancel).await;
            let state = grant(&app, &id).await.state;
            let approve_won = approve.title().starts_with("Approved");
            let cancel_won = cancel.title().contains("cancelled");
            assert!(
                approve_won != cancel_won,
                "exactly one wins: {} / {}",
                approve.text(),
                cancel.text()
            );
            if approve_won {
                approved += 1;
                assert!(
                    cancel.text().contains("already approved"),
                    "{}",
                    cancel.text()
                );
                assert_ne!(state, GrantState::Cancelled);
            } else {
                assert!(
                    approve.text().contains("already cancelled"),
                    "{}",
                    approve.text()
                );
                assert_eq!(state, GrantState::Cancelled);
            }
        }
    }
    // Azure saw one initiate per approval that won, and none for the rest.
    assert_eq!(initiates(&app).len(), approved);
    app.finish().await;
}

#[tokio::test]
async fn a_restart_while_pending_loses_nothing_and_approve_works_after_it() {
    // Arrange
    let mut app = builder(1).start().await;
    let asked = ask_prod(&app, &[SRE_ROLE]).await;
    let id = asked.request_id();
    wait_card(&app.discord, &id, |c| !custom_ids(c).is_empty()).await;

    // Act: the bot restarts; Bob presses the button of the card posted before.
    app.restart().await;
    let approved = click(&app, "approve", &id, BOB, &[APPROVER_ROLE]).await;

    // Assert
    assert_opened_by_the_approval(&app, &approved);
    assert_eq!(grant(&app, &id).await.state, GrantState::Active);
    wait_card(&app.discord, &id, |c| custom_ids(c).is_empty()).await;
    app.finish().await;
}

#[tokio::test]
async fn break_glass_opens_at_once_pings_the_alert_role_and_posts_a_review_card() {
    // Arrange
    let app = builder(1).start().await;
    let d = &app.discord;

    // A break-glass request needs a reason, and a break-glass role.
    let no_reason = interact(
        &app,
        jit(
            d,
            "ssh",
            "rg-prod/ops-01",
            "1h",
            &[SRE_ROLE, BREAK_GLASS_ROLE],
        )
        .string("from", "203.0.113.7")
        .boolean("break_glass", true),
    )
    .await;
    assert!(
        no_reason.text().contains("needs a reason"),
        "{}",
        no_reason.text()
    );
    let no_role = interact(
        &app,
        jit(d, "ssh", "rg-prod/ops-01", "1h", &[SRE_ROLE])
            .string("from", "203.0.113.7")
            .string("reason", "outage")
            .boolean("break_glass", true),
    )
    .await;
    assert!(
        no_role.text().contains("may not skip approval"),
        "{}",
        no_role.text()
    );
    assert!(initiates(&app).is_empty());

    // Act
    let opened = interact(
        &app,
        jit(
            d,
            "ssh",
            "rg-prod/ops-01",
            "1h",
            &[SRE_ROLE, BREAK_GLASS_ROLE],
        )
        .string("from", "203.0.113.7")
        .string("reason", "payments are down")
        .boolean("break_glass", true),
    )
    .await;
    let id = opened.request_id();

    // Assert: open at once; the alert role is pinged in the audit channel.
    assert!(
        opened.title().contains("Access granted"),
        "{}",
        opened.text()
    );
    assert_eq!(initiates(&app).len(), 1);
    let audit_channel = crate::support::app::AUDIT_CHANNEL;
    let alert = d
        .wait_for_call(WAIT, |c| {
            c.is_under("POST", &format!("/channels/{audit_channel}/messages"))
                && c.body["content"]
                    .as_str()
                    .is_some_and(|t| t.contains("BREAK-GLASS"))
        })
        .await
        .expect("the alert is posted");
    assert!(
        alert.body["content"]
            .as_str()
            .unwrap()
            .contains(&format!("<@&{ALERT_ROLE}>"))
    );
    assert_eq!(
        alert.body["allowed_mentions"]["roles"],
        serde_json::json!([ALERT_ROLE.to_string()])
    );
    let glass = audit_log(&app)
        .await
        .into_iter()
        .find(|r| r.event.action == AuditAction::BreakGlassUsed)
        .expect("break-glass is audited");
    assert_eq!(glass.event.detail["break_glass"], true);

    // The review card: an approver acknowledges it, and that is audited.
    let review = wait_card(d, &id, |c| !custom_ids(c).is_empty()).await;
    assert_eq!(custom_ids(&review), [format!("ack:{id}:1")]);
    let ack = click(&app, "ack", &id, BOB, &[APPROVER_ROLE]).await;
    assert!(
        all_text(&ack.message).contains(&format!("<@{BOB}>")),
        "{}",
        ack.text()
    );
    wait_card(d, &id, |c| custom_ids(c).is_empty()).await;
    let acked = audit_log(&app)
        .await
        .into_iter()
        .find(|r| r.event.action == AuditAction::BreakGlassAcknowledged)
        .expect("the acknowledgement is audited");
    assert_eq!(acked.event.actor, format!("discord:{BOB}"));
    app.finish().await;
}

#[tokio::test]
async fn an_approver_whose_role_was_removed_before_clicking_is_refused() {
    // Arrange
    let app = builder(1).start().await;
    let asked = ask_prod(&app, &[SRE_ROLE]).await;
    let id = asked.request_id();

    // Act: Bob's click carries his roles as they are now: no approver role.
    let refused = click(&app, "approve", &id, BOB, &[SRE_ROLE]).await;

    // Assert
    assert!(
        refused.text().contains("approver role"),
        "{}",
        refused.text()
    );
    assert!(initiates(&app).is_empty());
    assert_eq!(grant(&app, &id).await.state, GrantState::PendingApproval);
    let log = audit_log(&app).await;
    assert!(
        log.iter()
            .any(|r| r.event.action == AuditAction::ActionRefused
                && r.event.detail["code"] == "not_approver"),
        "the refusal is audited"
    );
    app.finish().await;
}

#[tokio::test]
async fn break_glass_without_a_role_or_a_reason_is_refused_audited_and_azure_is_not_asked() {
    // Arrange
    let app = builder(1).start().await;
    let d = &app.discord;
    let glass = |roles: &[u64]| {
        jit(d, "ssh", "rg-prod/ops-01", "1h", roles)
            .string("from", "203.0.113.7")
            .boolean("break_glass", true)
    };

    // Act: no reason (with the role), then no role (with a reason).
    let no_reason = interact(&app, glass(&[SRE_ROLE, BREAK_GLASS_ROLE])).await;
    let no_role = interact(&app, glass(&[SRE_ROLE]).string("reason", "outage")).await;

    // Assert: each is refused, saying what is missing, and audited as a
    // refused break-glass; nothing is stored or sent to Azure.
    assert_says(&no_reason, "Break-glass refused", "needs a reason");
    assert_says(&no_role, "Break-glass refused", "may not skip approval");
    assert!(initiates(&app).is_empty());
    let log = audit_log(&app).await;
    for reply in [&no_reason, &no_role] {
        let id = reply.request_id();
        let denied = log
            .iter()
            .find(|r| {
                r.event.action == AuditAction::AccessDenied
                    && r.event.detail["request_id"] == id.as_str()
            })
            .unwrap_or_else(|| panic!("the refusal of {id} is audited: {log:?}"));
        assert_eq!(denied.event.detail["code"], "break_glass_refused");
        assert_eq!(denied.event.detail["break_glass"], true);
        assert_eq!(denied.event.actor, format!("discord:{ALICE}"));
        assert!(
            app.store.grant(&id).await.unwrap().is_none(),
            "nothing stored"
        );
    }
    assert!(
        !log.iter()
            .any(|r| r.event.action == AuditAction::BreakGlassUsed),
        "no break-glass was used"
    );
    app.finish().await;
}

/// A second approver role, which the tests move approval to.
const NEW_APPROVER_ROLE: u64 = 330;
/// Dave, on call: may open prod himself (mapping `prod-oncall`).
const DAVE: u64 = 6009;
const ONCALL_ROLE: u64 = 340;
/// An admin (role 900).
const ADMIN: u64 = 6010;

/// `prod` needing one approval, with `on_conflict = rule`, and
/// `prod-oncall`, self-service for Dave's role.
fn conflict_builder(rule: &str) -> TestAppBuilder {
    let prod = prod_mapping(
        "prod",
        SRE_ROLE,
        &format!("approvers = [\"{APPROVER_ROLE}\"]\napprovals = 1\non_conflict = \"{rule}\""),
    );
    let toml = prod + &prod_mapping("prod-oncall", ONCALL_ROLE, "");
    TestAppBuilder::default()
        .mappings(&toml)
        .env("DISCORD__APPROVALS_CHANNEL_ID", &APPROVALS.to_string())
}

/// Dave opens prod SSH himself, from his own address.
async fn dave_holds_prod(app: &TestApp) -> Reply {
    let held = interact(
        app,
        jit(&app.discord, "ssh", "rg-prod/ops-01", "2h", &[ONCALL_ROLE])
            .string("from", "198.51.100.20")
            .user(DAVE, "dave"),
    )
    .await;
    assert!(held.title().contains("Access granted"), "{}", held.text());
    held
}

/// Alice asks for prod, Dave then opens it himself, and Bob approves:
/// Alice's request, Dave's and Bob's replies, and the question Alice's
/// reply became (under `on_conflict = "ask"`).
struct AskedAfterApproval {
    asked: Reply,
    dave: Reply,
    approved: Reply,
    question: Value,
}

async fn approve_while_dave_holds(app: &TestApp) -> AskedAfterApproval {
    let asked = ask_prod(app, &[SRE_ROLE]).await;
    let dave = dave_holds_prod(app).await;
    let approved = click(app, "approve", &asked.request_id(), BOB, &[APPROVER_ROLE]).await;
    let question = app
        .discord
        .wait_for_interaction_response(asked.sent.id, WAIT, |m| title(m).contains("anyway?"))
        .await
        .expect("Alice's reply becomes the question");
    AskedAfterApproval {
        asked,
        dave,
        approved,
        question,
    }
}

/// Alice presses the question's button `custom_id`.
async fn answer(app: &TestApp, question: &Value, custom_id: &str) -> Reply {
    interact(
        app,
        app.discord
            .button(custom_id)
            .on_message(question.clone())
            .user(ALICE, "alice")
            .roles([SRE_ROLE]),
    )
    .await
}

#[tokio::test]
async fn approved_while_another_member_holds_the_port_the_requester_is_asked_first() {
    // Arrange + Act: Alice waits for approval; meanwhile Dave opens the
    // port; then Bob approves.
    let app = conflict_builder("ask").start().await;
    let d = &app.discord;
    let AskedAfterApproval {
        asked,
        dave,
        approved,
        question,
    } = approve_while_dave_holds(&app).await;
    let id = asked.request_id();

    // Assert: nothing reaches Azure yet; Bob and the card say Alice is
    // asked first; her reply became the question, with its buttons.
    assert!(
        approved
            .title()
            .starts_with("Approved, requester asked first"),
        "{}",
        approved.text()
    );
    assert_eq!(initiates(&app).len(), 1, "only Dave's");
    assert_eq!(grant(&app, &id).await.state, GrantState::Confirming);
    let card = wait_card(d, &id, |c| {
        title(c).starts_with("Approved, requester asked first")
    })
    .await;
    assert!(custom_ids(&card).is_empty(), "{card}");
    assert!(all_text(&card).contains(&format!("<@{BOB}>")), "{card}");
    assert!(
        all_text(&question).contains(&format!("is open for <@{DAVE}> until")),
        "{question}"
    );
    assert!(all_text(&question).contains("was approved"), "{question}");
    let log = audit_log(&app).await;
    let asked_first: Vec<_> = log
        .iter()
        .filter(|r| r.event.action == AuditAction::AskedAfterApproval)
        .collect();
    assert_eq!(asked_first.len(), 1, "asking Alice is audited once");
    assert_eq!(asked_first[0].event.actor, format!("discord:{BOB}"));
    assert_eq!(asked_first[0].event.detail["request_id"], id.as_str());
    assert_eq!(
        asked_first[0].event.detail["holder"],
        format!("discord:{DAVE}")
    );
    assert_eq!(
        buttons_of(&question),
        [
            ("Open anyway".to_owned(), format!("open-anyway:{id}")),
            ("Cancel".to_owned(), format!("cancel:{id}"))
        ]
    );

    // Act: Alice opens it anyway.
    let opened = answer(&app, &question, &format!("open-anyway:{id}")).await;

    // Assert: opened once, Azure's justification names Bob, Dave's window
    // ended, and the card ends approved and open.
    assert!(
        opened.title().contains("Access granted"),
        "{}",
        opened.text()
    );
    let calls = initiates(&app);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_justification_names_alice_and_bob(&calls[1]);
    assert_eq!(grant(&app, &id).await.state, GrantState::Active);
    assert_eq!(
        grant(&app, &dave.request_id()).await.state,
        GrantState::Superseded
    );
    let done = wait_card(d, &id, |c| title(c).starts_with("Approved:")).await;
    assert!(all_text(&done).contains("Open until"), "{done}");
    app.finish().await;
}

#[tokio::test]
async fn approved_and_asked_then_cancelled_tells_the_card_and_nothing_reaches_azure() {
    // Arrange
    let app = conflict_builder("ask").start().await;
    let AskedAfterApproval {
        asked, question, ..
    } = approve_while_dave_holds(&app).await;
    let id = asked.request_id();

    // Act
    let cancelled = answer(&app, &question, &format!("cancel:{id}")).await;

    // Assert
    assert!(
        cancelled.title().contains("Cancelled"),
        "{}",
        cancelled.text()
    );
    assert_eq!(grant(&app, &id).await.state, GrantState::Cancelled);
    assert_eq!(initiates(&app).len(), 1, "only Dave's");
    wait_card(&app.discord, &id, |c| title(c).starts_with("Cancelled")).await;
    app.finish().await;
}

/// The question asked after approval lapses like any other: ten minutes
/// without an answer cancel the request, the card and Alice say so, and
/// Azure sees nothing more.
#[tokio::test]
async fn an_approved_request_whose_question_nobody_answers_is_cancelled_after_ten_minutes() {
    // Arrange
    let clock = ManualClock::new(Utc::now());
    let app = conflict_builder("ask").clock(clock.clone()).start().await;
    let AskedAfterApproval { asked, .. } = approve_while_dave_holds(&app).await;
    let id = asked.request_id();

    // Act
    clock.advance(chrono::Duration::minutes(9));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        grant(&app, &id).await.state,
        GrantState::Confirming,
        "not before ten minutes"
    );
    clock.advance(chrono::Duration::minutes(1) + chrono::Duration::seconds(1));

    // Assert
    wait_card(&app.discord, &id, |c| title(c).starts_with("Cancelled")).await;
    app.discord
        .wait_for_interaction_response(asked.sent.id, WAIT, |m| {
            title(m).starts_with("No answer") && all_text(m).contains("nothing changed in Azure")
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "Alice's reply says the request ended: {:?}",
                app.discord.interaction_response(asked.sent.id)
            )
        });
    assert_eq!(grant(&app, &id).await.state, GrantState::Cancelled);
    assert_eq!(initiates(&app).len(), 1, "only Dave's");
    app.finish().await;
}

#[tokio::test]
async fn approved_while_another_member_holds_the_port_is_refused_under_on_conflict_refuse() {
    // Arrange
    let app = conflict_builder("refuse").start().await;
    let d = &app.discord;
    let asked = ask_prod(&app, &[SRE_ROLE]).await;
    let id = asked.request_id();
    dave_holds_prod(&app).await;

    // Act
    let approved = click(&app, "approve", &id, BOB, &[APPROVER_ROLE]).await;

    // Assert: refused, saying who holds the port; the card and Alice say so.
    assert_eq!(
        approved.title(),
        "Another member holds the port",
        "{}",
        approved.text()
    );
    assert!(
        approved.text().contains(&format!("<@{DAVE}>")),
        "{}",
        approved.text()
    );
    assert_eq!(initiates(&app).len(), 1, "only Dave's");
    let stored = grant(&app, &id).await;
    assert_eq!(stored.state, GrantState::Failed);
    let card = wait_card(d, &id, |c| title(c).starts_with("Approved, not opened")).await;
    assert!(custom_ids(&card).is_empty(), "{card}");
    assert!(all_text(&card).contains("on_conflict"), "{card}");
    d.wait_for_interaction_response(asked.sent.id, WAIT, |m| {
        all_text(m).contains("on_conflict") && all_text(m).contains(&format!("<@{DAVE}>"))
    })
    .await
    .expect("Alice is told who holds the port");
    // One event for the one fact: the refusal, naming Bob (whose click it
    // was) and why; not a second `action_refused` for the same click.
    let log = audit_log(&app).await;
    let refusals: Vec<_> = log
        .iter()
        .filter(|r| {
            matches!(
                r.event.action,
                AuditAction::AccessDenied | AuditAction::ActionRefused
            ) && r.event.actor == format!("discord:{BOB}")
        })
        .collect();
    assert_eq!(refusals.len(), 1, "audited once: {refusals:?}");
    let refusal = &refusals[0].event;
    assert_eq!(refusal.action, AuditAction::AccessDenied);
    assert_eq!(refusal.detail["request_id"], id.as_str());
    assert_eq!(refusal.detail["code"], "port_held");
    assert!(
        refusal.detail["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("<@{DAVE}>"))),
        "{refusal:?}"
    );
    app.finish().await;
}

/// `/jit-admin <sub>` by the admin.
fn admin(d: &FakeDiscord, sub: &str) -> InteractionBuilder {
    d.slash("jit-admin")
        .subcommand(sub)
        .user(ADMIN, "admin")
        .roles([crate::support::app::ADMIN_ROLE])
}

/// `/jit-admin map name:prod …` by the admin, with `approvers` and
/// `approvals`.
fn remap_prod(d: &FakeDiscord, approvers: &str, approvals: i64) -> InteractionBuilder {
    admin(d, "map")
        .string("name", "prod")
        .option("role", 8, serde_json::json!(SRE_ROLE.to_string()))
        .string("vms", "rg-prod/ops-01")
        .string("ports", "ssh")
        .string("max_duration", "3h")
        .string("approvers", approvers)
        .integer("approvals", approvals)
}

#[tokio::test]
async fn approver_roles_at_the_click_come_from_the_mapping_as_it_is_now() {
    // Arrange: two requests wait; then an admin moves approval from role
    // 300 to role 330.
    let app = builder(1).start().await;
    let d = &app.discord;
    let first = ask_prod(&app, &[SRE_ROLE]).await.request_id();
    let second = ask_prod(&app, &[SRE_ROLE]).await.request_id();
    let changed = interact(&app, remap_prod(d, &format!("<@&{NEW_APPROVER_ROLE}>"), 1)).await;
    assert_eq!(changed.title(), "Mapping changed", "{}", changed.text());

    // Act + Assert: Bob, who holds only the removed role, is refused.
    let refused = click(&app, "approve", &first, BOB, &[APPROVER_ROLE]).await;
    assert!(
        refused.text().contains(&format!(
            "approver role of this request can do that (<@&{NEW_APPROVER_ROLE}>)"
        )),
        "{}",
        refused.text()
    );
    assert_eq!(grant(&app, &first).await.state, GrantState::PendingApproval);
    assert!(initiates(&app).is_empty());
    // Carol, who holds the new role, approves.
    let approved = click(&app, "approve", &first, CAROL, &[NEW_APPROVER_ROLE]).await;
    assert_opened_by_the_approval(&app, &approved);

    // The mapping removed: nobody may approve the other request, and it
    // is not opened; Alice can still cancel it.
    let unmapped = interact(&app, admin(d, "unmap").string("name", "prod")).await;
    assert!(unmapped.title().contains("removed"), "{}", unmapped.text());
    let gone = click(&app, "approve", &second, CAROL, &[NEW_APPROVER_ROLE]).await;
    assert!(
        gone.text().contains("Mapping prod was removed"),
        "{}",
        gone.text()
    );
    assert_eq!(
        grant(&app, &second).await.state,
        GrantState::PendingApproval
    );
    assert_eq!(initiates(&app).len(), 1);
    let cancelled = click(&app, "cancel", &second, ALICE, &[SRE_ROLE]).await;
    assert!(
        cancelled.title().contains("cancelled"),
        "{}",
        cancelled.text()
    );
    let codes: Vec<String> = audit_log(&app)
        .await
        .iter()
        .filter(|r| r.event.action == AuditAction::ActionRefused)
        .map(|r| {
            r.event.detail["code"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(codes, ["not_approver", "mapping_removed"]);
    app.finish().await;
}

#[tokio::test]
async fn jit_pending_answers_approvers_who_are_not_admins_and_refuses_others() {
    // Arrange
    let app = builder(1).start().await;
    let d = &app.discord;
    let id = ask_prod(&app, &[SRE_ROLE]).await.request_id();

    // Act: an approver without an admin role, an admin, and an engineer.
    let approver = interact(
        &app,
        d.slash("jit-pending")
            .user(BOB, "bob")
            .roles([APPROVER_ROLE]),
    )
    .await;
    let listed = interact(&app, admin(d, "pending")).await;
    let engineer = interact(
        &app,
        d.slash("jit-pending").user(DAVE, "dave").roles([SRE_ROLE]),
    )
    .await;

    // Assert
    for reply in [&approver, &listed] {
        assert_says(reply, "1 pending requests", &format!("Request {id}"));
    }
    assert_says(&engineer, "Not allowed", "for approvers");
    let refused = audit_log(&app)
        .await
        .into_iter()
        .find(|r| r.event.action == AuditAction::ActionRefused)
        .expect("the refusal is audited");
    assert_eq!(refused.event.actor, format!("discord:{DAVE}"));
    assert_eq!(refused.event.detail["code"], "not_approver");
    // Registered for everyone: no default_member_permissions, unlike /jit-admin.
    let commands = d.guild_commands(d.guild_id());
    let pending = commands
        .iter()
        .find(|c| c["name"] == "jit-pending")
        .expect("/jit-pending is registered");
    assert!(pending["default_member_permissions"].is_null(), "{pending}");
    let admin_command = commands.iter().find(|c| c["name"] == "jit-admin").unwrap();
    assert_eq!(admin_command["default_member_permissions"], "0");
    app.finish().await;
}

#[tokio::test]
async fn approved_after_the_reply_token_expired_the_question_comes_by_dm() {
    // Arrange: Alice's request waits past her reply's 15-minute token.
    let clock = ManualClock::new(Utc::now());
    let app = conflict_builder("ask").clock(clock.clone()).start().await;
    let d = &app.discord;
    let asked = ask_prod(&app, &[SRE_ROLE]).await;
    let id = asked.request_id();
    clock.advance(chrono::Duration::minutes(16));
    dave_holds_prod(&app).await;

    // Act
    click(&app, "approve", &id, BOB, &[APPROVER_ROLE]).await;

    // Assert: the question reaches Alice by DM, with its buttons; her
    // expired reply is left alone.
    let asked_by_dm = |d: &FakeDiscord| {
        d.dm_messages(ALICE)
            .into_iter()
            .find(|m| title(m).contains("anyway?"))
    };
    assert!(
        d.wait_until(WAIT, |d| asked_by_dm(d).is_some()).await,
        "Alice is asked by DM: {:?}",
        d.dm_messages(ALICE)
    );
    let question = asked_by_dm(d).unwrap();
    assert_eq!(
        custom_ids(&question),
        [format!("open-anyway:{id}"), format!("cancel:{id}")]
    );
    assert!(
        !title(&d.interaction_response(asked.sent.id).unwrap()).contains("anyway?"),
        "the expired reply is not edited"
    );
    assert_eq!(grant(&app, &id).await.state, GrantState::Confirming);
    assert_eq!(initiates(&app).len(), 1, "only Dave's");
    app.finish().await;
}

/// Bob approves; Azure applies the initiate but its answer is lost, and
/// neither the read-back nor the reconciler's listing works yet. The card
/// loses its buttons at once and says Drawbridge is checking; once Azure
/// answers again, the reconciler settles the grant and Alice is told once:
/// her reply is edited to the grant, and no second notice comes by DM.
#[tokio::test]
async fn an_approved_request_settled_from_azures_listing_tells_alice_once() {
    // Arrange
    let app = builder(1)
        .env("AZURE__REQUEST_TIMEOUT", "1s")
        .env("AZURE__RECONCILE_INTERVAL", "1s")
        .start()
        .await;
    let d = &app.discord;
    let asked = ask_prod(&app, &[SRE_ROLE]).await;
    let id = asked.request_id();
    wait_card(d, &id, |c| !custom_ids(c).is_empty()).await;
    let emulator = &app.azure.emulator;
    for route in [Route::GetPolicy, Route::ListPolicies] {
        emulator.inject(route, FaultRule::always(Fault::ServerError { status: 503 }));
    }
    emulator.inject(
        Route::Initiate,
        FaultRule::next(1, Fault::ServerErrorAfterApply { status: 500 }),
    );

    // Act
    click(&app, "approve", &id, BOB, &[APPROVER_ROLE]).await;

    // Assert: decided, so no buttons; the card says Azure is being asked.
    assert_eq!(grant(&app, &id).await.state, GrantState::PendingAzure);
    let checking = wait_card(d, &id, |c| {
        title(c).starts_with("Approved, checking with Azure")
    })
    .await;
    assert!(custom_ids(&checking).is_empty(), "{checking}");
    d.wait_for_interaction_response(asked.sent.id, WAIT, |m| {
        title(m).contains("Checking with Azure")
    })
    .await
    .expect("Alice's reply no longer offers Cancel");

    // Act: Azure answers again; the reconciler settles the grant.
    emulator.clear_faults();

    // Assert: active; the card and Alice's reply say so; no DM.
    d.wait_for_interaction_response(asked.sent.id, WAIT, |m| title(m).contains("Access granted"))
        .await
        .expect("Alice's reply is edited to the grant");
    wait_card(d, &id, |c| title(c).starts_with("Approved:")).await;
    assert_eq!(grant(&app, &id).await.state, GrantState::Active);
    assert_eq!(initiates(&app).len(), 1, "never sent again");
    let dm = d
        .wait_until(std::time::Duration::from_secs(3), |d| {
            !d.dm_messages(ALICE).is_empty()
        })
        .await;
    assert!(!dm, "told twice: {:?}", d.dm_messages(ALICE));
    app.finish().await;
}

/// An admin sets `approvals = 0` on prod while Alice's request waits: the
/// waiting request is not opened by nobody; it still needs one approver's
/// click (docs/operations.md says so), and that click opens it.
#[tokio::test]
async fn a_request_waiting_when_its_mapping_becomes_self_service_still_needs_one_click() {
    // Arrange
    let app = builder(1).start().await;
    let d = &app.discord;
    let asked = ask_prod(&app, &[SRE_ROLE]).await;
    let id = asked.request_id();
    let changed = interact(&app, remap_prod(d, &format!("<@&{APPROVER_ROLE}>"), 0)).await;
    assert_eq!(changed.title(), "Mapping changed", "{}", changed.text());

    // Act: time passes for the scheduler; nothing opens by itself.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(grant(&app, &id).await.state, GrantState::PendingApproval);
    assert!(initiates(&app).is_empty());
    let approved = click(&app, "approve", &id, BOB, &[APPROVER_ROLE]).await;

    // Assert
    assert_opened_by_the_approval(&app, &approved);
    assert_eq!(grant(&app, &id).await.state, GrantState::Active);
    app.finish().await;
}
