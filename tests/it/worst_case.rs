//! Every message the bot can produce, at its worst case, sent through the real serenity stack to
//! the strict fake Discord (which refuses what Discord refuses, see `support/fake_discord/limits`).
//!
//! Worst case means Azure's and our own maxima: a 155-character `rg/name` (resource group 90,
//! Linux VM name 64), 16 ports in a request (our maximum) and 25 in a policy, the longest reason
//! (200), the longest mapping name (64), an IPv6 source, Azure error texts of thousands of
//! characters, many ambiguous candidates, many mappings and audit details.
//!
//! See: issue 15 (the fake checked almost nothing in message bodies).

use std::sync::Arc;

use chrono::{DateTime, Duration as TimeDelta, Utc};
use drawbridge::chat::ChatMessage;
use drawbridge::config::{Settings, Sources};
use drawbridge::discord::{DiscordSender, builders, discord_http};
use drawbridge::domain::mapping::MappingName;
use drawbridge::domain::{
    AccessDuration, AuditAction, AuditEvent, Denial, GrantState, Outcome, PortAliases, PortSpec,
    PortTruth, PortView, Reason, RequestId, SourcePrefix, UserId,
};
use drawbridge::interactions::ChatSender as _;
use drawbridge::service::lifecycle::{CloseOutcome, Closed, GrantActionError};
use drawbridge::service::messages;
use drawbridge::service::request::RequestError;
use drawbridge::store::{AuditRecord, Grant};
use serde_json::{Value, json};
use serenity::all::{CreateInteractionResponse, CreateInteractionResponseMessage, InteractionId};

use crate::e2e::{interact, reply_to};
use crate::support::app::{ADMIN_ROLE, SRE_ROLE, TestAppBuilder, app_env};
use crate::support::fake_discord::{CHANNEL_ID, FakeDiscord};

fn at() -> DateTime<Utc> {
    "2026-03-02T09:00:00Z".parse().unwrap()
}

/// A text of `n` characters that reads like words (Discord counts characters).
fn words(n: usize) -> String {
    "Ünïcödé words, and more words; "
        .chars()
        .cycle()
        .take(n)
        .collect()
}

fn longest_vm_name() -> String {
    format!("rg-{}/web-{}", "a".repeat(87), "b".repeat(60))
}

fn worst_grant(state: GrantState) -> Grant {
    let vm = longest_vm_name();
    Grant {
        request_id: RequestId::parse("1300000000000000001").unwrap(),
        user_id: UserId::parse("18446744073709551615").unwrap(),
        guild_id: None,
        channel_id: None,
        vm_id: format!("/subscriptions/3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60/resourceGroups/{vm}"),
        vm_name: vm,
        policy_id: "policy".into(),
        ports: PortSpec::from_numbers((0..16).map(|i| 65535 - i)).unwrap(),
        source: SourcePrefix::parse("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff").unwrap(),
        duration: AccessDuration::max(),
        reason: Some(Reason::parse(&words(200)).unwrap()),
        mapping: MappingName::parse(&"m".repeat(64)).unwrap(),
        state,
        requested_at: at(),
        end_time: Some(at() + TimeDelta::hours(24)),
        state_changed_at: at(),
        failure: (state == GrantState::Failed).then(|| words(5000)),
        azure_detail: None,
        interaction_token: None,
    }
}

fn worst_audit_record() -> AuditRecord {
    let detail: serde_json::Map<String, Value> = (0..30)
        .map(|i| {
            (
                format!("detail_key_{i}_{}", "k".repeat(200)),
                json!(words(3000)),
            )
        })
        .collect();
    AuditRecord {
        seq: i64::MAX,
        prev_hash: "f".repeat(64),
        hash: "e".repeat(64),
        event: AuditEvent::new(
            at(),
            format!("discord:{}", u64::MAX),
            AuditAction::OpenedOutsideDrawbridge,
            longest_vm_name(),
            Outcome::Failed,
        )
        .with_detail(Value::Object(detail)),
    }
}

/// Every message the bot renders, each at its worst case, named.
fn every_message() -> Vec<(String, ChatMessage)> {
    let aliases = PortAliases::default();
    let mut all = Vec::new();
    for state in [
        GrantState::Requested,
        GrantState::Active,
        GrantState::Extended,
        GrantState::Closing,
        GrantState::ClosedEarly,
        GrantState::Expired,
        GrantState::Failed,
        GrantState::Extending,
        GrantState::Superseded,
        GrantState::Ended,
    ] {
        all.push((
            format!("grant card, {state}"),
            messages::grant(&worst_grant(state), &aliases),
        ));
    }
    let grant = worst_grant(GrantState::Active);
    let ended = Grant {
        failure: Some(words(3000)),
        ..worst_grant(GrantState::Superseded)
    };
    let many_grants: Vec<Grant> = (0..50).map(|_| grant.clone()).collect();
    all.push((
        "status, 50 grants".into(),
        messages::status(&many_grants, &aliases),
    ));
    all.push((
        "reminder".into(),
        messages::reminder(&grant, at(), &aliases, None),
    ));
    all.push((
        "expiry notice, late".into(),
        messages::expired(&grant, true, &aliases),
    ));
    all.push((
        "question unanswered".into(),
        messages::unanswered(&grant, &aliases),
    ));
    all.push((
        "ended by Azure".into(),
        messages::ended_by_azure(&ended, &aliases),
    ));
    all.push((
        "displaced by another member".into(),
        messages::displaced(
            &ended,
            UserId::parse("999999999999999999").unwrap(),
            at(),
            &aliases,
        ),
    ));
    let closed = Closed {
        grant: grant.clone(),
        outcome: CloseOutcome::Shortened {
            requested_end: at(),
            ports: (0..25).map(|i| (65535 - i, Some(at()))).collect(),
        },
    };
    all.push((
        "closed early, 25 ports".into(),
        messages::closed(&closed, &aliases),
    ));
    let already = Closed {
        grant: ended.clone(),
        outcome: CloseOutcome::NotOpen {
            ports: (0..25)
                .map(|i| PortTruth {
                    number: 65535 - i,
                    view: PortView::Ended { reason: words(300) },
                })
                .collect(),
        },
    };
    all.push((
        "close early on a grant Azure ended".into(),
        messages::closed(&already, &aliases),
    ));
    all.push(("audit line".into(), messages::audit(&worst_audit_record())));
    let candidates: Vec<String> = (0..60)
        .map(|i| {
            format!(
                "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e6{}/{}",
                i % 10,
                longest_vm_name()
            )
        })
        .collect();
    let errors = [
        ("invalid", RequestError::Invalid(words(5000))),
        (
            "VM not found",
            RequestError::VmNotFound {
                name: words(3000),
                exists_without_jit: false,
            },
        ),
        (
            "VM without JIT",
            RequestError::VmNotFound {
                name: words(3000),
                exists_without_jit: true,
            },
        ),
        (
            "ambiguous, 60 candidates",
            RequestError::VmAmbiguous { candidates },
        ),
        ("no source", RequestError::NoSource),
        (
            "denied, source not allowed",
            RequestError::Denied(Denial::SourceNotAllowed {
                source: SourcePrefix::parse("2001:db8::/32").unwrap(),
                allowed: (0..200).map(|i| format!("2001:db8:{i:x}::/48")).collect(),
            }),
        ),
        (
            "denied, no mapping for the VM",
            RequestError::Denied(Denial::NoMappingForVm {
                vm: longest_vm_name(),
            }),
        ),
        (
            "Azure refused",
            RequestError::Azure {
                message: words(8000),
            },
        ),
        (
            "unexpected",
            RequestError::Unexpected(anyhow::anyhow!("secret cause")),
        ),
    ];
    for (name, error) in errors {
        all.push((
            format!("request error: {name}"),
            messages::request_error(&error, &"9".repeat(20)),
        ));
    }
    all.push((
        "button refused".into(),
        messages::action_error(&GrantActionError::NotFound, &"9".repeat(20)),
    ));
    all
}

fn settings(fake: &FakeDiscord) -> Settings {
    Settings::load(&Sources {
        file: None,
        env: Some(app_env(fake, "http://127.0.0.1:9", "sqlite://unused.db")),
    })
    .expect("test settings are valid")
}

#[tokio::test]
async fn every_message_at_its_worst_case_is_accepted_as_a_post_a_dm_and_a_reply() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let http = discord_http(&settings(&fake).discord).unwrap();
    let sender = DiscordSender::new(Arc::clone(&http));

    for (i, (name, message)) in every_message().into_iter().enumerate() {
        // Act: as a channel post, as a DM, and as the edit of a deferred reply.
        let posted = sender
            .post(CHANNEL_ID, &message, &format!("post-{i}"))
            .await;
        let dm = sender.direct(6006, &message, &format!("dm-{i}")).await;
        let sent = fake.interaction_json(fake.slash("jit"));
        let defer = CreateInteractionResponse::Defer(
            CreateInteractionResponseMessage::new().ephemeral(true),
        );
        http.create_interaction_response(InteractionId::new(sent.id), &sent.token, &defer, vec![])
            .await
            .expect("the deferral is accepted");
        let edited = http
            .edit_original_interaction_response(
                &sent.token,
                &builders::edit_response(&message),
                vec![],
            )
            .await;

        // Assert
        assert!(posted.is_ok(), "{name} as a channel post: {posted:?}");
        assert!(dm.is_ok(), "{name} as a DM: {dm:?}");
        assert!(edited.is_ok(), "{name} as a reply: {:?}", edited.err());
    }
    let refused: Vec<Value> = fake
        .calls()
        .into_iter()
        .filter(|c| c.status >= 400)
        .map(|c| json!({"route": c.route(), "status": c.status}))
        .collect();
    assert!(refused.is_empty(), "Discord refused: {refused:?}");
}

#[tokio::test]
async fn a_card_too_long_for_discord_says_how_much_it_left_out() {
    // The audit card shows its event as one line, never a field per detail
    // key, so the longest card is built here: 40 fields of 1000 characters.
    let mut card = drawbridge::chat::Card::new("Many fields", drawbridge::chat::Tone::Info);
    for i in 0..40 {
        card = card.field(format!("f{i}"), "x".repeat(1000), false);
    }
    let message = ChatMessage::card(card);
    let body = serde_json::to_value(builders::edit_response(&message)).unwrap();
    let fields = body["embeds"][0]["fields"].as_array().unwrap();
    let note = fields.last().unwrap();
    assert_eq!(note["name"], "…");
    assert!(
        note["value"].as_str().unwrap().ends_with("more not shown"),
        "{note}"
    );
}

/// 30 mappings, each at its longest: a 64-character name, 40 roles, 16 ports.
fn worst_mappings() -> String {
    let roles: Vec<String> = (0..40)
        .map(|i| format!("\"{}\"", 18_000_000_000_000_000_000u64 + i))
        .collect();
    let ports: Vec<String> = (0..16).map(|i| format!("\"{}\"", 65535 - i)).collect();
    let mut toml = String::new();
    for m in 0..30 {
        toml.push_str(&format!(
            "[[mapping]]\nname = \"{m:02}{}\"\nroles = [{}, \"{SRE_ROLE}\"]\nvms = \"web-*\"\nports = [{}]\nmax_duration = \"24h\"\n\n",
            "m".repeat(62),
            roles.join(", "),
            ports.join(", "),
        ));
    }
    toml
}

#[tokio::test]
async fn admin_lists_at_their_longest_are_shown_and_say_what_they_leave_out() {
    // Arrange
    let app = TestAppBuilder::default()
        .mappings(&worst_mappings())
        .start()
        .await;
    let d = &app.discord;
    for n in 0..3 {
        let request = crate::e2e::jit(d, "22", "web-01", "2h", &[SRE_ROLE])
            .string("from", "203.0.113.7")
            .string("reason", &words(200))
            .user(6006 + n, &format!("eng{n}"));
        interact(&app, request).await;
    }

    // Act
    let mappings = interact(
        &app,
        d.slash("jit-admin")
            .subcommand("mappings")
            .roles([ADMIN_ROLE]),
    )
    .await;
    let sent = d
        .send_interaction(
            d.slash("jit-admin")
                .subcommand("audit")
                .integer("limit", 100)
                .roles([ADMIN_ROLE]),
        )
        .await;
    let audit = reply_to(d, sent).await;

    // Assert: both replies replaced the loading message (the fake refuses
    // what Discord would), and a cut list says so.
    assert!(
        mappings.title().contains("30 mappings"),
        "{}",
        mappings.text()
    );
    assert!(
        mappings.text().contains("more not shown"),
        "{}",
        mappings.text()
    );
    assert!(audit.title().contains("audit events"), "{}", audit.text());
    app.finish().await;
}
