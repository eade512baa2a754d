//! End to end: the real app (the same `App::build`, `bind` and `run` as
//! `drawbridge run`) against the fake Discord and the Azure emulator.
//!
//! This file holds the `/jit` request path and the helpers the other
//! `e2e_*` files share.

use std::time::Duration;

use chrono::{DateTime, Utc};
use drawbridge::domain::{AuditAction, GrantState, RequestId};
use drawbridge::sandbox::{CallRecord, Estate, Fault, FaultRule, Route};
use drawbridge::store::{AuditFilter, AuditRecord, Grant};
use serde_json::Value;

use crate::support::app::{
    AUDIT_CHANNEL, DEV_ROLE, SRE_ROLE, SUB_PROD, TestApp, TestAppBuilder, spawn_app,
};
use crate::support::fake_discord::{Callback, FakeDiscord, InteractionBuilder, SentInteraction};

/// Discord's limit for the first response.
pub(crate) const ACK_LIMIT: Duration = Duration::from_secs(3);
/// How long a test waits for a reply or an audit message (generous: a
/// failing Azure call is retried for a few seconds first).
pub(crate) const WAIT: Duration = Duration::from_secs(20);
/// Discord's "loading" message flag (a deferred reply not yet edited).
const LOADING: u64 = 1 << 7;
/// A second engineer.
pub(crate) const BOB: u64 = 6007;

/// An interaction's acknowledgement and the reply that replaced it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub sent: SentInteraction,
    pub ack: Callback,
    pub message: Value,
}

impl Reply {
    fn embed(&self) -> &Value {
        &self.message["embeds"][0]
    }

    /// The embed's title.
    pub fn title(&self) -> &str {
        self.embed()["title"].as_str().unwrap_or_default()
    }

    /// The embed's description.
    pub fn description(&self) -> &str {
        self.embed()["description"].as_str().unwrap_or_default()
    }

    /// A field's value by name.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.embed()["fields"]
            .as_array()?
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["value"].as_str())
    }

    /// The footer text.
    pub fn footer(&self) -> &str {
        self.embed()["footer"]["text"].as_str().unwrap_or_default()
    }

    /// Everything the member reads: content, title, description, fields, footer.
    pub fn text(&self) -> String {
        let mut parts = vec![
            self.message["content"].as_str().unwrap_or_default(),
            self.title(),
            self.description(),
        ];
        for f in self.embed()["fields"].as_array().into_iter().flatten() {
            parts.push(f["name"].as_str().unwrap_or_default());
            parts.push(f["value"].as_str().unwrap_or_default());
        }
        parts.push(self.footer());
        parts.join("\n")
    }

    /// The buttons' `(label, custom_id)`.
    pub fn buttons(&self) -> Vec<(String, String)> {
        buttons_of(&self.message)
    }

    /// The request id this interaction started (its interaction id).
    pub fn request_id(&self) -> RequestId {
        RequestId::parse(&self.sent.id.to_string()).expect("interaction ids are request ids")
    }
}

/// A message's buttons, `(label, custom_id)`.
pub(crate) fn buttons_of(message: &Value) -> Vec<(String, String)> {
    message["components"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .map(|b| {
            (
                b["label"].as_str().unwrap_or_default().to_owned(),
                b["custom_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Whether a reply message is final (the deferred "loading" state replaced).
fn is_final(message: &Value) -> bool {
    message["flags"].as_u64().unwrap_or(0) & LOADING == 0 && !message["edited_timestamp"].is_null()
}

/// Whether the outbox empties within [`WAIT`].
pub(crate) async fn outbox_drained(app: &TestApp) -> bool {
    tokio::time::timeout(WAIT, async {
        while app.store.outbox_stats(app.clock.now()).await.unwrap().depth > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok()
}

/// Sends `interaction` over the gateway and waits for the reply.
pub(crate) async fn interact(app: &TestApp, interaction: InteractionBuilder) -> Reply {
    let sent = app.discord.send_interaction(interaction).await;
    reply_to(&app.discord, sent).await
}

/// The acknowledgement (checked: deferred, ephemeral, within 3 s) and the
/// final reply of an interaction already sent.
pub(crate) async fn reply_to(discord: &FakeDiscord, sent: SentInteraction) -> Reply {
    let ack = discord
        .wait_for_callback(sent.id, ACK_LIMIT)
        .await
        .expect("the interaction is acknowledged within 3 s");
    assert_eq!(ack.status, 204, "the acknowledgement is accepted: {ack:?}");
    assert_eq!(ack.kind(), Some(5), "a deferred reply: {ack:?}");
    assert!(ack.is_ephemeral(), "only the member sees it: {ack:?}");
    assert!(ack.elapsed < ACK_LIMIT, "acknowledged in {:?}", ack.elapsed);
    let message = discord
        .wait_for_interaction_response(sent.id, WAIT, is_final)
        .await
        .unwrap_or_else(|| {
            panic!(
                "no reply replaced the loading message: {:?}",
                discord.interaction_response(sent.id)
            )
        });
    Reply { sent, ack, message }
}

/// `/jit port vm duration` from alice with `roles`.
pub(crate) fn jit(
    d: &FakeDiscord,
    port: &str,
    vm: &str,
    duration: &str,
    roles: &[u64],
) -> InteractionBuilder {
    d.slash("jit")
        .string("port", port)
        .string("vm", vm)
        .string("duration", duration)
        .roles(roles.iter().copied())
}

/// The SRE's usual request: SSH on web-01 for 2 h from 203.0.113.7.
pub(crate) fn ssh_web_01(d: &FakeDiscord) -> InteractionBuilder {
    jit(d, "ssh", "web-01", "2h", &[SRE_ROLE]).string("from", "203.0.113.7")
}

/// The stored grant.
pub(crate) async fn grant(app: &TestApp, id: &RequestId) -> Grant {
    app.store
        .grant(id)
        .await
        .expect("the store answers")
        .expect("the grant is stored")
}

/// Every audit record, oldest first.
pub(crate) async fn audit_log(app: &TestApp) -> Vec<AuditRecord> {
    app.store
        .audit_events(&AuditFilter::default())
        .await
        .expect("the audit log reads")
}

/// The actions of the audit records that name `request_id` in their detail.
pub(crate) async fn audit_actions_for(app: &TestApp, request_id: &RequestId) -> Vec<AuditAction> {
    audit_log(app)
        .await
        .into_iter()
        .filter(|r| r.event.detail["request_id"] == request_id.as_str())
        .map(|r| r.event.action)
        .collect()
}

/// The audit seq an audit-channel message shows in its footer (`#12 · <hash>`).
pub(crate) fn audit_seq(message: &Value) -> i64 {
    let footer = message["embeds"][0]["footer"]["text"]
        .as_str()
        .unwrap_or_default();
    footer
        .strip_prefix('#')
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("an audit message without a seq: {message}"))
}

/// Waits until the audit channel shows every event of the store's audit
/// log, then checks it shows each exactly once, in log order, with the
/// log's title. Returns the records.
pub(crate) async fn audit_channel_matches_log(app: &TestApp) -> Vec<AuditRecord> {
    let d = &app.discord;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let records = audit_log(app).await;
        let posted = d.channel_messages(AUDIT_CHANNEL);
        if posted.len() >= records.len() || tokio::time::Instant::now() >= deadline {
            let seqs: Vec<i64> = posted.iter().map(audit_seq).collect();
            let want: Vec<i64> = records.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, want, "the audit channel shows the log, in order");
            for (message, record) in posted.iter().zip(&records) {
                let card = drawbridge::service::messages::audit(record)
                    .card
                    .expect("audit messages are cards");
                assert_eq!(message["embeds"][0]["title"], card.title.as_str());
            }
            return records;
        }
        d.wait_until(Duration::from_millis(250), |d| {
            d.channel_messages(AUDIT_CHANNEL).len() > posted.len()
        })
        .await;
    }
}

/// The emulator's initiate calls.
pub(crate) fn initiates(app: &TestApp) -> Vec<CallRecord> {
    app.azure.emulator.initiate_calls()
}

/// An initiate body's first VM port.
pub(crate) fn initiated_port(call: &CallRecord) -> &Value {
    &call.body.as_ref().expect("initiate has a body")["virtualMachines"][0]["ports"][0]
}

/// An initiate's `endTimeUtc`.
pub(crate) fn initiated_end(call: &CallRecord) -> DateTime<Utc> {
    initiated_port(call)["endTimeUtc"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .expect("endTimeUtc is an RFC 3339 time")
}

/// `<t:unix:f>` and `<t:unix:R>` of `at`.
pub(crate) fn discord_times(at: DateTime<Utc>) -> (String, String) {
    let unix = at.timestamp();
    (format!("<t:{unix}:f>"), format!("<t:{unix}:R>"))
}

#[tokio::test]
async fn a_mapped_engineer_gets_ssh_on_web_01() {
    // Arrange
    let app = spawn_app().await;
    let d = &app.discord;

    // Act
    let before = Utc::now();
    let reply = interact(&app, ssh_web_01(d)).await;

    // Assert: Azure got exactly one initiate, for port 22, the member's
    // source and two hours from now.
    let calls = initiates(&app);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let port = initiated_port(&calls[0]);
    assert_eq!(port["number"], 22);
    assert_eq!(port["allowedSourceAddressPrefix"], "203.0.113.7");
    let end = initiated_end(&calls[0]);
    let two_hours = chrono::Duration::hours(2);
    assert!(
        end >= before + two_hours - chrono::Duration::seconds(1)
            && end <= Utc::now() + two_hours + chrono::Duration::seconds(1),
        "endTimeUtc {end} is two hours ahead"
    );
    let body = calls[0].body.as_ref().unwrap();
    let justification = body["justification"].as_str().unwrap_or_default();
    assert!(
        justification.contains(&reply.sent.id.to_string()),
        "{justification}"
    );

    // The reply shows the grant.
    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    assert_eq!(reply.field("VM"), Some("rg-web/web-01"));
    assert!(reply.field("Ports").unwrap_or_default().contains("22"));
    assert_eq!(reply.field("Source"), Some("203.0.113.7"));
    let stored = grant(&app, &reply.request_id()).await;
    assert_eq!(stored.state, GrantState::Active);
    let (full, relative) = discord_times(stored.end_time.expect("an end time"));
    let window = reply.field("Window").unwrap_or_default();
    assert!(
        window.contains(&full) && window.contains(&relative),
        "{window}"
    );
    assert!(
        reply.footer().contains(&reply.sent.id.to_string()),
        "the request id: {}",
        reply.footer()
    );
    let id = reply.sent.id;
    assert_eq!(
        reply.buttons(),
        [
            ("Extend".to_owned(), format!("extend:{id}")),
            ("Close early".to_owned(), format!("close:{id}")),
        ]
    );

    // The audit channel receives the events in order.
    assert_eq!(
        audit_actions_for(&app, &reply.request_id()).await,
        [
            AuditAction::RequestReceived,
            AuditAction::AccessAllowed,
            AuditAction::AccessInitiated
        ]
    );
    let records = audit_channel_matches_log(&app).await;
    let titles: Vec<String> = d
        .channel_messages(AUDIT_CHANNEL)
        .iter()
        .zip(&records)
        .filter(|(_, r)| r.event.detail["request_id"] == reply.request_id().as_str())
        .map(|(m, _)| {
            m["embeds"][0]["title"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        titles,
        ["Request received", "Access allowed", "Port opened"]
    );
    app.finish().await;
}

#[tokio::test]
async fn a_member_without_a_mapped_role_is_denied_and_azure_sees_nothing() {
    let app = spawn_app().await;
    let d = &app.discord;
    let calls_before = app.azure.emulator.calls().len();

    let reply = interact(
        &app,
        jit(d, "ssh", "web-01", "2h", &[DEV_ROLE]).string("from", "203.0.113.7"),
    )
    .await;

    assert_eq!(reply.title(), "Access denied", "{}", reply.text());
    assert!(
        reply.description().contains("none of your roles is mapped"),
        "the reason: {}",
        reply.description()
    );
    assert!(reply.buttons().is_empty());
    assert_eq!(
        app.azure.emulator.calls().len(),
        calls_before,
        "Azure sees nothing"
    );
    assert!(
        app.store
            .grant(&reply.request_id())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        audit_actions_for(&app, &reply.request_id()).await,
        [AuditAction::RequestReceived, AuditAction::AccessDenied]
    );
    audit_channel_matches_log(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn autocomplete_offers_only_permitted_vms_without_calling_azure() {
    let app = spawn_app().await;
    let d = &app.discord;
    let calls_before = app.azure.emulator.calls().len();

    let mut answers = Vec::new();
    for roles in [vec![SRE_ROLE], vec![DEV_ROLE]] {
        let sent = d
            .send_interaction(
                d.autocomplete("jit")
                    .string("port", "ssh")
                    .focused("vm", "")
                    .roles(roles),
            )
            .await;
        let ack = d
            .wait_for_callback(sent.id, ACK_LIMIT)
            .await
            .expect("autocomplete answered");
        assert_eq!((ack.status, ack.kind()), (204, Some(8)), "{ack:?}");
        answers.push(d.autocomplete_choices(sent.id).expect("choices"));
    }
    let typed = d
        .send_interaction(
            d.autocomplete("jit")
                .focused("vm", "web-0")
                .roles([SRE_ROLE]),
        )
        .await;
    d.wait_for_callback(typed.id, ACK_LIMIT)
        .await
        .expect("answered");

    let values = |choices: &[Value]| -> Vec<String> {
        choices
            .iter()
            .map(|c| c["value"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let names = |choices: &[Value]| -> Vec<String> {
        choices
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let mut sre = names(&answers[0]);
    sre.sort();
    assert_eq!(
        sre,
        [
            "web-01 (rg-web)",
            "web-02 (rg-web)",
            "web-03 (rg-web)",
            "web-04 (rg-web)"
        ]
    );
    assert!(
        values(&answers[0]).iter().all(|v| v.len() <= 100),
        "values fit Discord's limit"
    );
    assert!(answers[1].is_empty(), "an unmapped role sees no VM");
    let typed = names(&d.autocomplete_choices(typed.id).unwrap_or_default());
    assert!(
        !typed.is_empty() && typed.iter().all(|v| v.starts_with("web-0")),
        "{typed:?}"
    );
    assert_eq!(
        app.azure.emulator.calls().len(),
        calls_before,
        "autocomplete never calls Azure"
    );
    app.finish().await;
}

/// The sample estate plus a VM with Azure's longest names: a 90-character
/// resource group and a 64-character (Linux) VM name, 155 characters as
/// `rg/name`. Returns the estate, the resource group and the name.
fn estate_with_longest_names() -> (Estate, String, String) {
    let rg = format!("rg-{}", "a".repeat(87));
    let name = format!("web-{}", "b".repeat(60));
    let extra = Estate::from_toml_str(&format!(
        r#"
        [[subscriptions]]
        id = "{SUB_PROD}"
        [[subscriptions.vms]]
        name = "{name}"
        resourceGroup = "{rg}"
        location = "westeurope"
        os = "linux"
        privateIp = "10.10.9.4"
        [[subscriptions.policies]]
        resourceGroup = "{rg}"
        location = "westeurope"
        [[subscriptions.policies.virtualMachines]]
        name = "{name}"
        ports = [{{ number = 22, protocol = "*", allowedSourceAddressPrefix = "*", maxRequestAccessDuration = "PT3H" }}]
        "#
    ))
    .expect("a valid estate");
    let mut estate = Estate::sample();
    let [extra]: [_; 1] = extra.subscriptions.try_into().expect("one subscription");
    let prod = estate
        .subscriptions
        .iter_mut()
        .find(|s| s.id == SUB_PROD)
        .expect("the sample has the production subscription");
    prod.vms.extend(extra.vms);
    prod.policies.extend(extra.policies);
    (estate, rg, name)
}

// See: issue 15 (autocomplete cut values to 100 characters, so a VM with
// long names could be offered but never requested).
#[tokio::test]
async fn a_vm_with_the_longest_names_picked_from_autocomplete_is_granted() {
    // Arrange
    let (estate, rg, name) = estate_with_longest_names();
    assert_eq!(format!("{rg}/{name}").chars().count(), 155);
    let app = TestAppBuilder::default().estate(estate).start().await;
    let d = &app.discord;

    // Act: the member types the start of the name and picks the choice.
    let typed = d
        .send_interaction(
            d.autocomplete("jit")
                .string("port", "ssh")
                .focused("vm", &name[..10])
                .roles([SRE_ROLE]),
        )
        .await;
    d.wait_for_callback(typed.id, ACK_LIMIT)
        .await
        .expect("autocomplete answered");
    let choices = d.autocomplete_choices(typed.id).expect("choices");
    let picked = choices
        .iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(&name)))
        .unwrap_or_else(|| panic!("the long VM is offered: {choices:?}"));
    let value = picked["value"].as_str().expect("a string value").to_owned();
    let ports = d
        .send_interaction(
            d.autocomplete("jit")
                .string("vm", &value)
                .focused("port", "")
                .roles([SRE_ROLE]),
        )
        .await;
    d.wait_for_callback(ports.id, ACK_LIMIT)
        .await
        .expect("answered");
    let reply = interact(
        &app,
        jit(d, "ssh", &value, "2h", &[SRE_ROLE]).string("from", "203.0.113.7"),
    )
    .await;

    // Assert
    assert!(
        (1..=100).contains(&value.chars().count()),
        "the value fits Discord's limit uncut: {value}"
    );
    let port_values: Vec<Value> = d
        .autocomplete_choices(ports.id)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c["value"].clone())
        .collect();
    assert_eq!(
        port_values,
        ["ssh", "22"],
        "the picked VM's own ports are offered"
    );
    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    let calls = initiates(&app);
    assert_eq!(calls.len(), 1, "one initiate");
    assert!(
        calls[0].path.contains(&rg)
            && calls[0].body.as_ref().is_some_and(|b| {
                b["virtualMachines"][0]["id"]
                    .as_str()
                    .is_some_and(|id| id.ends_with(&format!("/{name}")))
            }),
        "Azure was asked for the long VM: {:?}",
        calls[0]
    );
    let stored = grant(&app, &reply.request_id()).await;
    assert_eq!(stored.state, GrantState::Active);
    assert_eq!(stored.vm_name, format!("{rg}/{name}"));
    app.finish().await;
}

#[tokio::test]
async fn a_stale_vm_choice_is_refused_with_a_clear_message() {
    let app = spawn_app().await;
    let d = &app.discord;

    let reply = interact(&app, jit(d, "ssh", "#0123456789abcdef", "2h", &[SRE_ROLE])).await;

    assert!(reply.text().contains("pick it again"), "{}", reply.text());
    assert!(initiates(&app).is_empty(), "nothing asked of Azure");
    app.finish().await;
}

#[tokio::test]
async fn the_ack_never_waits_on_azure() {
    let app = spawn_app().await;
    let d = &app.discord;
    app.azure.emulator.inject(
        Route::Initiate,
        FaultRule::always(Fault::Latency { millis: 2000 }),
    );

    let reply = interact(&app, ssh_web_01(d)).await;

    assert!(
        reply.ack.elapsed < Duration::from_millis(1000),
        "acknowledged in {:?} although Azure takes 2 s",
        reply.ack.elapsed
    );
    let replied = d
        .calls()
        .into_iter()
        .filter(|c| {
            c.is(
                "PATCH",
                &format!(
                    "/webhooks/{}/{}/messages/@original",
                    d.application_id(),
                    reply.sent.token
                ),
            )
        })
        .map(|c| c.received_at)
        .next_back()
        .expect("the reply was an edit of the original response");
    assert!(
        replied.duration_since(reply.ack.received_at) >= Duration::from_secs(2),
        "the reply came after Azure answered"
    );
    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    assert_eq!(initiates(&app).len(), 1);
    app.finish().await;
}

#[tokio::test]
async fn jit_status_lists_the_grant() {
    let app = spawn_app().await;
    let d = &app.discord;
    let granted = interact(&app, ssh_web_01(d)).await;

    let status = interact(&app, d.slash("jit-status").roles([SRE_ROLE])).await;

    assert_eq!(status.title(), "Your grants", "{}", status.text());
    let text = status.text();
    assert!(text.contains("rg-web/web-01"), "{text}");
    assert!(text.contains("active"), "{text}");
    assert!(text.contains(&granted.sent.id.to_string()), "{text}");
    let other = interact(&app, d.slash("jit-status").user(BOB, "bob")).await;
    assert_eq!(other.title(), "No grants", "{}", other.text());
    app.finish().await;
}

#[tokio::test]
async fn a_saved_source_is_used_when_a_request_gives_none() {
    let app = spawn_app().await;
    let d = &app.discord;

    let saved = interact(
        &app,
        d.slash("jit-ip")
            .string("address", "203.0.113.9")
            .roles([SRE_ROLE]),
    )
    .await;
    assert_eq!(saved.title(), "Saved", "{}", saved.text());
    let reply = interact(&app, jit(d, "ssh", "web-02", "1h", &[SRE_ROLE])).await;

    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    assert_eq!(reply.field("Source"), Some("203.0.113.9"));
    let calls = initiates(&app);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        initiated_port(&calls[0])["allowedSourceAddressPrefix"],
        "203.0.113.9"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_request_without_any_source_says_how_to_give_one() {
    let app = spawn_app().await;
    let d = &app.discord;

    let reply = interact(&app, jit(d, "ssh", "web-01", "2h", &[SRE_ROLE])).await;

    assert_eq!(reply.title(), "From which address?", "{}", reply.text());
    assert!(
        reply.description().contains("from:"),
        "{}",
        reply.description()
    );
    assert!(
        reply.description().contains("/jit-ip"),
        "{}",
        reply.description()
    );
    assert!(initiates(&app).is_empty());
    app.finish().await;
}

/// A role whose mapping reaches every VM: the only kind of member told
/// about ambiguous names and VMs without JIT across resource groups.
const OPS_ROLE: u64 = 300;
const OPS_ANYWHERE: &str = r#"
[[mapping]]
name = "ops"
roles = ["300"]
vms = "*"
ports = ["ssh"]
max_duration = "1h"
"#;

#[tokio::test]
async fn a_vm_name_in_two_resource_groups_lists_both() {
    let app = TestAppBuilder::default()
        .mappings(OPS_ANYWHERE)
        .start()
        .await;
    let d = &app.discord;

    let reply = interact(
        &app,
        jit(d, "ssh", "ops-01", "1h", &[OPS_ROLE]).string("from", "203.0.113.7"),
    )
    .await;

    assert_eq!(reply.title(), "Which VM?", "{}", reply.text());
    let text = reply.description();
    assert!(
        text.contains("rg-prod/ops-01") && text.contains("rg-staging/ops-01"),
        "{text}"
    );
    assert!(initiates(&app).is_empty());
    app.finish().await;
}

#[tokio::test]
async fn a_vm_without_jit_says_an_admin_can_enable_it() {
    let app = TestAppBuilder::default()
        .mappings(OPS_ANYWHERE)
        .start()
        .await;
    let d = &app.discord;

    let reply = interact(
        &app,
        jit(d, "ssh", "legacy-01", "1h", &[OPS_ROLE]).string("from", "203.0.113.7"),
    )
    .await;

    assert_eq!(reply.title(), "VM not under JIT", "{}", reply.text());
    assert!(
        reply.description().contains("/jit-admin enable"),
        "{}",
        reply.description()
    );
    assert!(initiates(&app).is_empty());
    app.finish().await;
}

/// Requests web-01 with `fault` armed on initiate; returns the reply and
/// the stored grant.
async fn request_while_azure_fails(app: &TestApp, fault: Fault) -> (Reply, Grant) {
    app.azure
        .emulator
        .inject(Route::Initiate, FaultRule::always(fault));
    let reply = interact(app, ssh_web_01(&app.discord)).await;
    let stored = grant(app, &reply.request_id()).await;
    (reply, stored)
}

#[tokio::test]
async fn azure_refusing_the_initiate_gives_a_clear_failure_and_a_failed_grant() {
    let app = spawn_app().await;

    let (reply, stored) = request_while_azure_fails(&app, Fault::Forbidden).await;

    assert_eq!(
        reply.title(),
        "Azure did not open the port",
        "{}",
        reply.text()
    );
    assert!(
        reply.description().contains("lacks the permission"),
        "{}",
        reply.description()
    );
    assert!(reply.buttons().is_empty());
    assert_eq!(stored.state, GrantState::Failed);
    assert_eq!(stored.failure.as_deref(), Some(reply.description()));
    assert_eq!(
        audit_actions_for(&app, &reply.request_id()).await,
        [
            AuditAction::RequestReceived,
            AuditAction::AccessAllowed,
            AuditAction::AccessFailed
        ]
    );
    app.finish().await;
}

#[tokio::test]
async fn azure_failing_at_initiate_gives_a_clear_failure_and_a_failed_grant() {
    let app = spawn_app().await;

    let (reply, stored) = request_while_azure_fails(&app, Fault::ServerError { status: 500 }).await;

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
    assert_eq!(
        initiates(&app).len(),
        1,
        "an unclear initiate is not sent again"
    );
    assert!(stored.failure.is_some());
    assert_eq!(
        audit_actions_for(&app, &reply.request_id()).await.last(),
        Some(&AuditAction::AccessFailed)
    );
    app.finish().await;
}

#[tokio::test]
async fn a_double_delivered_interaction_initiates_once() {
    let app = spawn_app().await;
    let d = &app.discord;
    let sent = d.send_interaction(ssh_web_01(d)).await;
    let first = reply_to(d, sent.clone()).await;

    // The gateway delivers the same interaction again (a resume replay, a
    // second replica on the same shard).
    d.send_dispatch("INTERACTION_CREATE", sent.payload.clone())
        .expect("a READY client");
    assert!(
        d.wait_until(ACK_LIMIT, |d| d.callbacks(sent.id).len() == 2)
            .await,
        "the bot tried to acknowledge the replay"
    );

    assert_eq!(
        d.callbacks(sent.id)[1].status,
        400,
        "40060: already acknowledged"
    );
    assert!(first.title().contains("Access granted"));
    assert_eq!(initiates(&app).len(), 1);
    assert_eq!(
        audit_actions_for(&app, &first.request_id()).await,
        [
            AuditAction::RequestReceived,
            AuditAction::AccessAllowed,
            AuditAction::AccessInitiated
        ]
    );
    app.finish().await;
}

#[tokio::test]
async fn port_and_duration_autocomplete_follow_the_policy_and_the_mapping() {
    let app = spawn_app().await;
    let d = &app.discord;
    let values = |choices: Vec<Value>| -> Vec<String> {
        choices
            .iter()
            .map(|c| c["value"].as_str().unwrap_or_default().to_owned())
            .collect()
    };

    // web-01's policy has 22 and 8443; the SRE mapping allows ssh only.
    let ports = d
        .send_interaction(
            d.autocomplete("jit")
                .string("vm", "rg-web/web-01")
                .focused("port", "")
                .roles([SRE_ROLE]),
        )
        .await;
    d.wait_for_callback(ports.id, ACK_LIMIT)
        .await
        .expect("answered");
    assert_eq!(
        values(d.autocomplete_choices(ports.id).unwrap()),
        ["ssh", "22"]
    );

    // The mapping and the policy both stop at 3 hours.
    let durations = d
        .send_interaction(
            d.autocomplete("jit")
                .string("vm", "rg-web/web-01")
                .string("port", "ssh")
                .focused("duration", "")
                .roles([SRE_ROLE]),
        )
        .await;
    d.wait_for_callback(durations.id, ACK_LIMIT)
        .await
        .expect("answered");
    assert_eq!(
        values(d.autocomplete_choices(durations.id).unwrap()),
        ["15m", "30m", "45m", "1h", "1h30m", "2h", "3h"]
    );
    app.finish().await;
}
