//! Attacks a member could try, one test each (issue 12): every one of them
//! worked before its fix. Each test acts through the fake Discord, as the
//! attacker would, and checks what they could see and what Azure was asked.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use drawbridge::clock::ManualClock;
use drawbridge::domain::{AuditAction, PortAliases, SourcePrefix, UserId};

use crate::e2e::{ACK_LIMIT, BOB, WAIT, audit_log, initiates, interact, jit, reply_to, ssh_web_01};
use crate::support::app::{
    ADMIN_ROLE, AUDIT_CHANNEL, DEV_ROLE, SRE_ROLE, TestApp, TestAppBuilder, spawn_app,
};
use crate::support::fake_discord::{FakeDiscord, InteractionBuilder, USER_ID};

/// `from:0.0.0.0/0` and `from:::/0` would open SSH to the whole internet.
#[tokio::test]
async fn a_request_for_the_whole_internet_is_refused() {
    let app = spawn_app().await;
    let d = &app.discord;

    for everyone in ["0.0.0.0/0", "::/0", "*"] {
        let reply = interact(
            &app,
            jit(d, "ssh", "web-01", "2h", &[SRE_ROLE]).string("from", everyone),
        )
        .await;

        assert_eq!(
            reply.title(),
            "Access denied",
            "{everyone}: {}",
            reply.text()
        );
        let text = reply.text();
        assert!(text.contains("single address"), "{everyone}: {text}");
        for broad in ["0.0.0.0/0", "::/0"] {
            assert!(
                everyone == broad || !text.contains(broad),
                "no message suggests a broad range: {text}"
            );
        }
    }
    assert!(initiates(&app).is_empty(), "Azure was asked for nothing");
    app.finish().await;
}

/// `/jit-ip ::/0` would have been saved, and every later request opened to
/// the whole IPv6 internet; a broad source saved before the fix is refused
/// when a request uses it.
#[tokio::test]
async fn a_broad_saved_source_is_neither_saved_nor_used() {
    let app = spawn_app().await;
    let d = &app.discord;

    let saved = interact(
        &app,
        d.slash("jit-ip")
            .string("address", "::/0")
            .roles([SRE_ROLE]),
    )
    .await;
    assert_eq!(saved.title(), "Not saved", "{}", saved.text());
    assert!(saved.text().contains("single address"), "{}", saved.text());
    let user = UserId::parse(&USER_ID.to_string()).unwrap();
    assert_eq!(app.store.saved_source(user).await.unwrap(), None);
    assert!(
        audit_log(&app)
            .await
            .iter()
            .any(|r| r.event.action == AuditAction::ActionRefused
                && r.event.detail["action"] == "jit-ip"),
        "the refusal is audited"
    );

    // Saved before the fix, straight into the database.
    let broad = SourcePrefix::parse("::/0").unwrap();
    app.store
        .save_source(user, &broad, Utc::now())
        .await
        .unwrap();
    let reply = interact(&app, jit(d, "ssh", "web-01", "2h", &[SRE_ROLE])).await;

    assert_eq!(reply.title(), "Access denied", "{}", reply.text());
    assert!(initiates(&app).is_empty(), "Azure was asked for nothing");
    let granted = interact(&app, ssh_web_01(d)).await;
    assert!(
        granted.title().contains("Access granted"),
        "{}",
        granted.text()
    );
    app.finish().await;
}

/// The `action_refused` audit records, as (action, code).
async fn refusals(app: &TestApp) -> Vec<(String, String)> {
    audit_log(app)
        .await
        .into_iter()
        .filter(|r| r.event.action == AuditAction::ActionRefused)
        .map(|r| {
            let text = |k: &str| r.event.detail[k].as_str().unwrap_or_default().to_owned();
            (text("action"), text("code"))
        })
        .collect()
}

/// A bot invited to a second server answered `/jit` there too, with that
/// server's roles.
#[tokio::test]
async fn a_request_from_another_guild_is_refused_and_audited() {
    let app = spawn_app().await;
    let d = &app.discord;

    let reply = interact(&app, ssh_web_01(d).guild(d.guild_id() + 1)).await;

    assert_eq!(reply.title(), "Not here", "{}", reply.text());
    assert!(initiates(&app).is_empty(), "Azure was asked for nothing");
    assert_eq!(
        refusals(&app).await,
        [("jit".to_owned(), "other_guild".to_owned())]
    );
    app.finish().await;
}

/// Commands registered globally worked in DMs.
#[tokio::test]
async fn a_command_in_a_dm_is_refused_and_audited() {
    let app = spawn_app().await;
    let d = &app.discord;

    let reply = interact(&app, ssh_web_01(d).in_dm()).await;

    assert_eq!(reply.title(), "Not here", "{}", reply.text());
    assert!(initiates(&app).is_empty());
    assert_eq!(
        refusals(&app).await,
        [("jit".to_owned(), "direct_message".to_owned())]
    );
    assert!(
        d.global_commands().is_empty() && !d.guild_commands(d.guild_id()).is_empty(),
        "the commands are registered to the guild only"
    );
    app.finish().await;
}

/// Another member's Extend or Close early was refused, but never audited.
#[tokio::test]
async fn a_strangers_button_is_refused_and_audited() {
    let app = spawn_app().await;
    let d = &app.discord;
    let granted = interact(&app, ssh_web_01(d)).await;
    let id = granted.sent.id;

    for custom_id in [format!("extend:{id}"), format!("close:{id}")] {
        let reply = interact(
            &app,
            d.button(&custom_id)
                .on_message(granted.message.clone())
                .user(BOB, "bob")
                .roles([SRE_ROLE]),
        )
        .await;
        assert!(
            reply.text().contains("only the engineer who asked"),
            "{}",
            reply.text()
        );
    }

    assert_eq!(initiates(&app).len(), 1, "Azure was not asked again");
    assert_eq!(
        refusals(&app).await,
        [
            ("extend".to_owned(), "not_owner".to_owned()),
            ("close".to_owned(), "not_owner".to_owned()),
        ]
    );
    app.finish().await;
}

/// The reminder DM's Extend always failed: a DM interaction carries no
/// roles. Drawbridge now reads the member's current roles from the guild.
#[tokio::test]
async fn extend_from_the_reminder_dm_works_with_the_members_current_roles() {
    let clock = ManualClock::new(Utc::now());
    let app = TestAppBuilder::default().clock(clock.clone()).start().await;
    let d = &app.discord;
    let granted = interact(&app, ssh_web_01(d)).await;
    assert!(
        granted.title().contains("Access granted"),
        "{}",
        granted.text()
    );

    // The reminder is due 10 minutes before the end; any interaction wakes
    // the scheduler.
    clock.advance(chrono::Duration::minutes(115));
    interact(
        &app,
        jit(d, "ssh", "web-03", "1h", &[DEV_ROLE])
            .user(BOB, "bob")
            .string("from", "203.0.113.7"),
    )
    .await;
    let with_buttons = |d: &FakeDiscord| {
        d.dm_messages(USER_ID)
            .into_iter()
            .find(|m| m["components"].as_array().is_some_and(|c| !c.is_empty()))
    };
    assert!(
        d.wait_until(WAIT, |d| with_buttons(d).is_some()).await,
        "a reminder DM with buttons"
    );
    let reminder = with_buttons(d).expect("the reminder");
    let extend_id = reminder["components"][0]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["label"] == "Extend")
        .and_then(|b| b["custom_id"].as_str())
        .expect("an Extend button")
        .to_owned();
    let in_dm = |d: &FakeDiscord| {
        d.button(&extend_id)
            .in_dm()
            .channel(d.dm_channel(USER_ID).expect("a DM channel"))
            .on_message(reminder.clone())
    };

    let extended = interact(&app, in_dm(d)).await;

    assert!(
        extended.title().contains("Access extended"),
        "{}",
        extended.text()
    );
    assert_eq!(initiates(&app).len(), 2, "the grant and its extension");
    let member_reads = d.calls_to(
        "GET",
        &format!("/guilds/{}/members/{USER_ID}", d.guild_id()),
    );
    assert_eq!(member_reads.len(), 1, "the roles were read from the guild");

    // Once the role is taken away, the same button is refused.
    d.set_member_roles(USER_ID, []);
    let refused = interact(&app, in_dm(d)).await;
    assert!(
        !refused.title().contains("Access extended"),
        "{}",
        refused.text()
    );
    assert_eq!(initiates(&app).len(), 2, "Azure was not asked again");
    app.finish().await;
}

/// `/jit` resolved the VM before any role check: a member with no mapped
/// role learned which names exist, and made Azure re-list on every typo.
#[tokio::test]
async fn a_member_without_mappings_is_refused_before_any_lookup() {
    let app = spawn_app().await;
    let d = &app.discord;
    let calls_before = app.azure.emulator.calls().len();

    let mut texts = Vec::new();
    for vm in ["web-01", "legacy-01", "no-such-vm"] {
        let reply = interact(
            &app,
            jit(d, "ssh", vm, "1h", &[DEV_ROLE]).string("from", "203.0.113.7"),
        )
        .await;
        assert_eq!(reply.title(), "Access denied", "{vm}: {}", reply.text());
        texts.push(reply.description().to_owned());
    }

    assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
    assert_eq!(
        app.azure.emulator.calls().len(),
        calls_before,
        "Azure was not asked to look anything up"
    );
    app.finish().await;
}

/// A VM outside the member's mappings was "mapped to none of your roles"
/// (with its resource group), one without JIT was "not under JIT", and an
/// ambiguous name listed every resource group: now each is the answer for a
/// VM that does not exist.
#[tokio::test]
async fn not_found_and_ambiguity_reveal_no_vm_outside_the_members_mappings() {
    let app = TestAppBuilder::default()
        .mappings(
            r#"
[[mapping]]
name = "sre-web"
roles = ["100"]
vms = "web-*"
ports = ["ssh"]
max_duration = "3h"

[[mapping]]
name = "prod-ops"
roles = ["300"]
vms = "rg:rg-prod"
ports = ["ssh"]
max_duration = "1h"
"#,
        )
        .start()
        .await;
    let d = &app.discord;
    let ask = |vm: &str, role: u64| jit(d, "ssh", vm, "1h", &[role]).string("from", "203.0.113.7");

    let answer = |reply: &crate::e2e::Reply, vm: &str| {
        (
            reply.title().to_owned(),
            reply.description().replace(vm, "<vm>"),
        )
    };
    let missing = interact(&app, ask("no-such-vm", SRE_ROLE)).await;
    let missing = answer(&missing, "no-such-vm");
    for vm in ["db-01", "legacy-01", "ops-01", "rg-staging/ops-01"] {
        let reply = interact(&app, ask(vm, SRE_ROLE)).await;
        assert_eq!(answer(&reply, vm), missing, "{vm}: {}", reply.text());
        let text = reply.text().replace(vm, "<vm>");
        for leak in [
            "rg-data",
            "rg-legacy",
            "rg-prod",
            "rg-staging",
            "JIT policy",
        ] {
            assert!(!text.contains(leak), "{vm}: {text}");
        }
    }
    // ops-01 is in two resource groups; the member may request one of them.
    let ops = interact(&app, ask("ops-01", 300).user(BOB, "bob")).await;
    assert!(ops.title().contains("Access granted"), "{}", ops.text());
    assert_eq!(ops.field("VM"), Some("rg-prod/ops-01"));
    app.finish().await;
}

/// Autocomplete for the port and the duration answered differently for a
/// VM that exists outside the member's mappings and one that does not.
#[tokio::test]
async fn autocomplete_reveals_nothing_about_vms_outside_the_members_mappings() {
    let app = spawn_app().await;
    let d = &app.discord;
    let choices = |interaction: InteractionBuilder| async move {
        let sent = d.send_interaction(interaction).await;
        d.wait_for_callback(sent.id, ACK_LIMIT)
            .await
            .expect("autocomplete answered");
        d.autocomplete_choices(sent.id).expect("choices")
    };

    for (role, vms) in [
        (SRE_ROLE, ["db-01", "no-such-vm"]),
        (DEV_ROLE, ["web-01", "no-such-vm"]),
    ] {
        let mut answers = Vec::new();
        for vm in vms {
            let ports = choices(
                d.autocomplete("jit")
                    .string("vm", vm)
                    .focused("port", "")
                    .roles([role]),
            )
            .await;
            let durations = choices(
                d.autocomplete("jit")
                    .string("vm", vm)
                    .string("port", "ssh")
                    .focused("duration", "")
                    .roles([role]),
            )
            .await;
            answers.push((ports, durations));
        }
        assert_eq!(answers[0], answers[1], "role {role}: {answers:?}");
        if role == DEV_ROLE {
            assert_eq!(
                answers[0],
                (Vec::new(), Vec::new()),
                "a member without mappings is offered nothing"
            );
        }
    }
    app.finish().await;
}

/// A member with no role flooded the audit channel with two posts per
/// refused `/jit`, delivered in order under Discord's channel limit: real
/// grants' audit messages then waited behind them for hours.
#[tokio::test]
async fn after_a_flood_of_refusals_a_grants_audit_message_arrives_within_5_s() {
    let app = TestAppBuilder::default()
        .discord_rate_limit(5, Duration::from_secs(5))
        .start()
        .await;
    let d = &app.discord;
    let flood = || {
        jit(d, "ssh", "web-01", "1h", &[DEV_ROLE])
            .user(BOB, "bob")
            .string("from", "203.0.113.7")
    };

    // Act: 1,000 refused requests, 25 at a time.
    let mut titles = BTreeMap::<String, usize>::new();
    for _ in 0..40 {
        let mut sent = Vec::new();
        for _ in 0..25 {
            sent.push(d.send_interaction(flood()).await);
        }
        for s in sent {
            let reply = reply_to(d, s).await;
            *titles.entry(reply.title().to_owned()).or_default() += 1;
        }
    }
    let granted = interact(&app, ssh_web_01(d)).await;

    // Assert: the flood was slowed down, every refusal is in the log...
    assert!(
        titles.get("Slow down").copied().unwrap_or(0) > 900,
        "{titles:?}"
    );
    assert_eq!(titles.values().sum::<usize>(), 1000, "{titles:?}");
    let bobs = audit_log(&app)
        .await
        .iter()
        .filter(|r| r.event.actor == format!("discord:{BOB}"))
        .count();
    assert!(bobs >= 1000, "every refusal is audited: {bobs} rows");
    // ...and the grant's "Port opened" reached the audit channel within 5 s.
    let opened = d
        .wait_for_call(WAIT, |c| {
            c.is("POST", &format!("/channels/{AUDIT_CHANNEL}/messages"))
                && c.status == 200
                && c.body["embeds"][0]["title"] == "Port opened"
        })
        .await
        .expect("the grant's audit message was posted");
    let after = opened
        .received_at
        .saturating_duration_since(granted.sent.sent_at);
    assert!(
        after < Duration::from_secs(5),
        "posted {after:?} after the grant"
    );
    app.finish().await;
}

/// `reason:"[Approved by SecOps](https://evil)"` rendered as a link in the
/// admins' audit channel, and a display name could pose as part of the
/// justification Azure records.
#[tokio::test]
async fn a_markdown_link_in_the_reason_is_shown_as_typed() {
    let app = spawn_app().await;
    let d = &app.discord;
    let link = "[Approved by SecOps](https://evil)";
    let shown = r"\[Approved by SecOps\]\(https://evil\)";

    let reply = interact(
        &app,
        ssh_web_01(d)
            .string("reason", link)
            .user(USER_ID, "bob) approved by SecOps (x"),
    )
    .await;

    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    assert_eq!(reply.field("Reason"), Some(shown));
    assert!(
        d.wait_until(WAIT, |d| {
            d.channel_messages(AUDIT_CHANNEL)
                .iter()
                .any(|m| m["embeds"][0]["title"] == "Access allowed")
        })
        .await,
        "the grant was audited"
    );
    let posted = d.channel_messages(AUDIT_CHANNEL);
    let lines: Vec<String> = posted
        .iter()
        .filter_map(|m| m["embeds"][0]["description"].as_str().map(str::to_owned))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("reason: {shown}"))),
        "the audit channel shows the reason as typed: {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains(link)),
        "never as a link: {lines:?}"
    );
    let body = initiates(&app)[0].body.clone().unwrap_or_default();
    let justification = body["justification"].as_str().unwrap_or_default();
    assert!(
        justification.starts_with(&format!(
            "Drawbridge request {} by Discord user {USER_ID} (name \"bob) approved by SecOps (x\")",
            reply.sent.id
        )),
        "{justification}"
    );
    app.finish().await;
}

/// `/jit-admin <sub>` from an admin.
fn admin(d: &FakeDiscord, sub: &str) -> InteractionBuilder {
    d.slash("jit-admin").subcommand(sub).roles([ADMIN_ROLE])
}

/// `/jit-admin explain` read a `reason` option it never registered, so a
/// mapping that requires a reason could never be explained as allowed.
#[tokio::test]
async fn explain_reads_the_reason_option_it_registers() {
    let app = TestAppBuilder::default()
        .mappings(
            r#"
[[mapping]]
name = "sre-web"
roles = ["100"]
vms = "web-*"
ports = ["ssh"]
max_duration = "3h"
require_reason = true
"#,
        )
        .start()
        .await;
    let d = &app.discord;
    assert!(
        d.wait_until(WAIT, |d| !d.guild_commands(d.guild_id()).is_empty())
            .await,
        "the commands are registered"
    );
    let admin_command = d
        .guild_commands(d.guild_id())
        .into_iter()
        .find(|c| c["name"] == "jit-admin")
        .expect("jit-admin is registered");
    let explain = admin_command["options"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["name"] == "explain")
        .expect("explain is registered")
        .clone();
    assert!(
        explain["options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o["name"] == "reason")),
        "{explain}"
    );

    let reply = interact(
        &app,
        admin(d, "explain")
            .string("vm", "web-01")
            .string("port", "ssh")
            .string("duration", "1h")
            .string("roles", &SRE_ROLE.to_string())
            .string("reason", "incident 42"),
    )
    .await;
    assert_eq!(reply.title(), "Would be allowed", "{}", reply.text());
    app.finish().await;
}

/// `map` took one role, so re-mapping a mapping of several roles silently
/// took the others' access away; and `vms` read one selector although its
/// description says comma-separated.
#[tokio::test]
async fn map_keeps_every_role_and_reads_every_vm_selector() {
    let app = TestAppBuilder::default()
        .mappings(
            r#"
[[mapping]]
name = "web"
roles = ["100", "200"]
vms = "web-*"
ports = ["ssh"]
max_duration = "3h"
"#,
        )
        .start()
        .await;
    let d = &app.discord;
    let map = |more: Option<&str>| {
        let m = admin(d, "map")
            .string("name", "web")
            .option("role", 8, serde_json::json!(SRE_ROLE.to_string()))
            .string("vms", "web-01, ops-01")
            .string("ports", "ssh")
            .string("max_duration", "1h");
        match more {
            Some(more) => m.string("more_roles", more),
            None => m,
        }
    };

    let refused = interact(&app, map(None)).await;
    assert_eq!(refused.title(), "That did not work", "{}", refused.text());
    assert!(
        refused.text().contains(&format!("<@&{DEV_ROLE}>")),
        "{}",
        refused.text()
    );
    let changed = interact(&app, map(Some(&format!("<@&{DEV_ROLE}>")))).await;
    assert_eq!(changed.title(), "Mapping changed", "{}", changed.text());

    let stored = app
        .store
        .list_mappings(&PortAliases::default())
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].roles.len(), 2, "both roles are still mapped");
    assert_eq!(stored[0].vms.to_string(), "web-01,ops-01");
    let dev = interact(
        &app,
        jit(d, "ssh", "rg-staging/ops-01", "1h", &[DEV_ROLE])
            .user(BOB, "bob")
            .string("from", "203.0.113.7"),
    )
    .await;
    assert!(dev.title().contains("Access granted"), "{}", dev.text());
    app.finish().await;
}

/// `check-config --mappings FILE` refuses a broad range without
/// `allow_broad_sources` and flags one with it loudly.
#[test]
fn check_config_flags_broad_sources_in_a_mappings_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, extra: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[[mapping]]\nname = \"wide\"\nroles = [\"1\"]\nvms = \"*\"\nports = [\"ssh\"]\nmax_duration = \"1h\"\nsources = [\"0.0.0.0/0\"]\n{extra}"
            ),
        )
        .unwrap();
        path
    };
    let check = |path: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
            .arg("check-config")
            .arg("--mappings")
            .arg(path)
            .env_clear()
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let refused = check(&file("refused.toml", ""));
    let flagged = check(&file("flagged.toml", "allow_broad_sources = true"));

    assert!(
        refused.contains("mappings (from") && refused.contains("allow_broad_sources = true"),
        "{refused}"
    );
    assert!(
        flagged.contains("WARNING: mapping `wide` ⚠ BROAD SOURCES (0.0.0.0/0)"),
        "{flagged}"
    );
    assert!(!flagged.contains("mappings (from"), "{flagged}");
}
