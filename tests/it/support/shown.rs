#![allow(dead_code)] // each test uses part of the harness
//! What the bot shows about when a port closes, checked against the Azure
//! emulator at the end of every end-to-end test (issue 11: "every 'open
//! until' the bot shows matches the emulator's state"); `TestApp::finish`
//! calls [`assert_shown_matches_azure`].
//!
//! It gathers everything the bot showed through the fake Discord (replies
//! and their edits, followups, DMs, channel cards), reads each message's
//! claims and holds them to Azure's requests ([`super::said`] has the
//! rules); then asks `/jit-status` for every member with a grant and holds
//! its answers to the same rules.
//!
//! [`assert_ends_match_azure`] is the older, narrower check of given ends
//! (the service-level lifecycle tests, which have no Discord, use it).

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use drawbridge::domain::{AuditAction, GrantState, RequestId};
use drawbridge::store::{AuditFilter, Grant};
use serde_json::Value;

use drawbridge::sandbox::RunningEmulator;

use super::app::{SRE_ROLE, SUB_PROD, TestApp};
use super::fake_discord::signing::Signer;
use super::said::{self, Claim, Flagged};

/// Azure writes 100 ns ticks; Discord timestamps are whole seconds.
const SAME: TimeDelta = TimeDelta::seconds(1);

/// Every grant in the app's database.
async fn all_grants(app: &TestApp) -> Vec<Grant> {
    let raw = sqlx::SqlitePool::connect(&app.settings.database.url)
        .await
        .expect("the database opens");
    let ids: Vec<(String,)> = sqlx::query_as("SELECT request_id FROM grants ORDER BY requested_at")
        .fetch_all(&raw)
        .await
        .expect("grants are listed");
    raw.close().await;
    let mut grants = Vec::new();
    for (id,) in ids {
        let id = RequestId::parse(&id).expect("a stored request id");
        grants.push(
            app.store
                .grant(&id)
                .await
                .expect("the store answers")
                .expect("the grant is stored"),
        );
    }
    grants
}

/// The end a grant card or `/jit-status` entry shows: `… → <t:END:f> …`.
pub fn shown_end(text: &str) -> Option<DateTime<Utc>> {
    let rest = &text[text.find("→ <t:")? + "→ <t:".len()..];
    let secs: i64 = rest[..rest.find(':')?].parse().ok()?;
    DateTime::from_timestamp(secs, 0)
}

/// Per request id, what `/jit-status` shows `user`: (entry name, window).
async fn status_of(app: &TestApp, user: u64) -> HashMap<String, (String, String)> {
    let ask = app
        .discord
        .slash("jit-status")
        .user(user, &format!("user{user}"))
        .roles([SRE_ROLE]);
    let sent = match &app.endpoint {
        // HTTP mode: signed as e2e_http's apps are (the test key).
        Some(endpoint) => {
            app.discord
                .post_interaction(endpoint, ask, &Signer::test())
                .await
                .sent
        }
        None => app.discord.send_interaction(ask).await,
    };
    let reply = crate::e2e::reply_to(&app.discord, sent).await;
    let mut shown = HashMap::new();
    for field in reply.message["embeds"][0]["fields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let value = field["value"].as_str().unwrap_or_default();
        let Some((window, id)) = value.rsplit_once("\nRequest ") else {
            continue;
        };
        let name = field["name"].as_str().unwrap_or_default().to_owned();
        shown.insert(id.to_owned(), (name, window.to_owned()));
    }
    shown
}

/// The requests of the policy `policy_id` as the emulator shows it.
pub async fn policy_requests(azure: &RunningEmulator, policy_id: &str) -> Vec<Value> {
    let url = format!("{}{policy_id}?api-version=2020-01-01", azure.base_url);
    let policy: Value = reqwest::Client::new()
        .get(url)
        .bearer_auth(azure.emulator.issue_token())
        .send()
        .await
        .expect("the emulator answers")
        .json()
        .await
        .expect("a policy");
    policy["properties"]["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Until when Azure keeps `port` of the sample estate's rg-web VM `vm`
/// (`web-01`) open for `source` at `now`.
pub async fn azure_open_until(
    azure: &RunningEmulator,
    vm: &str,
    port: u16,
    source: &str,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let prefix = format!("/subscriptions/{SUB_PROD}/resourceGroups/rg-web/providers");
    let policy = format!(
        "{prefix}/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default"
    );
    let vm_id = format!("{prefix}/Microsoft.Compute/virtualMachines/{vm}");
    azure_until(
        &policy_requests(azure, &policy).await,
        &vm_id,
        port,
        source,
        now,
    )
}

/// Until when Azure keeps `port` of `vm_id` open for `source` at `now`.
pub fn azure_until(
    requests: &[Value],
    vm_id: &str,
    port: u16,
    source: &str,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    requests
        .iter()
        .flat_map(|r| r["virtualMachines"].as_array().cloned().unwrap_or_default())
        .filter(|vm| {
            vm["id"]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(vm_id))
        })
        .flat_map(|vm| vm["ports"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["number"] == port && p["status"] == "Initiated")
        .filter(|p| p["allowedSourceAddressPrefix"].as_str() == Some(source))
        .filter_map(|p| p["endTimeUtc"].as_str()?.parse::<DateTime<Utc>>().ok())
        .filter(|end| *end > now)
        .max()
}

fn same(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).abs() < SAME
}

/// What the bot shows of each grant, by request id: where, and the end
/// shown there (`None`: no end).
pub type ShownEnds = HashMap<String, Vec<(&'static str, Option<DateTime<Utc>>)>>;

/// Asserts that every "open until" the bot shows matches the emulator, and
/// that what it shows closed is closed there; see the module docs. The
/// TestApp harness gathers what it shows with [`assert_shown_matches_azure`].
pub async fn assert_ends_match_azure(
    azure: &RunningEmulator,
    grants: &[Grant],
    shown: &ShownEnds,
    now: DateTime<Utc>,
) {
    let mut policies: HashMap<String, Vec<Value>> = HashMap::new();
    for grant in grants {
        if let std::collections::hash_map::Entry::Vacant(e) =
            policies.entry(grant.policy_id.clone())
        {
            e.insert(policy_requests(azure, &grant.policy_id).await);
        }
    }
    for grant in grants {
        let id = grant.request_id.as_str();
        let requests = &policies[&grant.policy_id];
        let source = grant.source.to_string();
        let until: Vec<(u16, Option<DateTime<Utc>>)> = grant
            .ports
            .numbers()
            .into_iter()
            .map(|n| (n, azure_until(requests, &grant.vm_id, n, &source, now)))
            .collect();
        let held_by_another = |port: u16| said::held_by_another(grants, grant, port, now);
        if grant.state.is_open() {
            for (place, end) in shown.get(id).into_iter().flatten() {
                let end = end.unwrap_or_else(|| {
                    panic!("{place} shows no end for open grant {id}: {grant:?}")
                });
                for (port, azure) in &until {
                    assert!(
                        azure.is_some_and(|a| same(a, end)),
                        "{place} shows grant {id} open until {end}, Azure closes port {port} for {source} at {azure:?}"
                    );
                }
            }
        } else if grant.state == GrantState::ClosedEarly
            && grant.end_time.is_some_and(|end| end > now)
        {
            let end = grant.end_time.expect("checked");
            for (port, azure) in &until {
                assert!(
                    azure.is_some_and(|a| same(a, end)) || held_by_another(*port),
                    "grant {id} closes early at {end}, Azure closes port {port} for {source} at {azure:?}"
                );
            }
        } else {
            for (port, azure) in &until {
                assert!(
                    azure.is_none() || held_by_another(*port),
                    "the bot shows grant {id} {}, Azure keeps port {port} open for {source} until {azure:?}",
                    grant.state
                );
            }
        }
    }
}

/// Every message the bot showed, each once as last edited: replies and
/// their followups, DMs and channel posts (a button's copy of the message
/// it is on counts once, at its newest).
fn gathered_claims(app: &TestApp) -> Vec<Claim> {
    let audit = app.settings.discord.audit_channel_id.map(|c| c.get());
    let mut newest: HashMap<String, (String, Value, bool)> = HashMap::new();
    let mut keep = |place: String, message: Value, history: bool| {
        let id = message["id"].as_str().unwrap_or_default().to_owned();
        let fresher = newest
            .get(&id)
            .is_none_or(|(_, old, _)| said::shown_at(old) <= said::shown_at(&message));
        if fresher {
            newest.insert(id, (place, message, history));
        }
    };
    for (interaction, message) in app.discord.interaction_messages() {
        keep(
            format!("the reply to interaction {interaction}"),
            message,
            false,
        );
    }
    for (channel, message) in app.discord.all_channel_messages() {
        let place = match app.discord.dm_recipient(channel) {
            Some(user) => format!("a DM to {user}"),
            None => format!("channel {channel}"),
        };
        keep(place, message, Some(channel) == audit);
    }
    newest
        .values()
        .flat_map(|(place, message, history)| said::claims_in(message, place, *history))
        .collect()
}

/// Waits until the outbox has delivered what the bot has decided to say
/// (a notice held back by Discord's rate limits or a retry due within
/// 5 s; up to 10 s), so that it has reached the fake Discord. Under a
/// manual clock only what is due now is waited for.
async fn settle_outbox(app: &TestApp) {
    let raw = sqlx::SqlitePool::connect(&app.settings.database.url)
        .await
        .expect("the database opens");
    let first = app.clock.now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let ahead = if app.clock.now() == first {
        TimeDelta::zero()
    } else {
        TimeDelta::seconds(5)
    };
    for _ in 0..200 {
        let horizon =
            (app.clock.now() + ahead).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let due: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND next_attempt_at <= ?",
        )
        .bind(horizon)
        .fetch_one(&raw)
        .await
        .expect("the outbox is read");
        if due.0 == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    raw.close().await;
}

/// Each grant policy's requests as the emulator shows them now.
async fn requests_of(azure: &RunningEmulator, grants: &[Grant]) -> HashMap<String, Vec<Value>> {
    let mut policies = HashMap::new();
    for grant in grants {
        if !policies.contains_key(&grant.policy_id) {
            let requests = policy_requests(azure, &grant.policy_id).await;
            policies.insert(grant.policy_id.clone(), requests);
        }
    }
    policies
}

/// Every way what the bot showed (replies, their edits, DMs, channel
/// cards) misstates Azure now; see [`said`]. Empty when all is true.
pub async fn shown_violations(app: &TestApp) -> Vec<String> {
    settle_outbox(app).await;
    let now = app.clock.now();
    let grants = all_grants(app).await;
    let claims = gathered_claims(app);
    let requests = requests_of(&app.azure, &grants).await;
    let flagged: Vec<Flagged> = app
        .store
        .audit_events(&AuditFilter {
            action: Some(AuditAction::OpenedOutsideDrawbridge),
            ..AuditFilter::default()
        })
        .await
        .expect("the audit log is read")
        .iter()
        .filter_map(|r| Flagged::from_detail(&r.event.detail))
        .collect();
    said::violations(&claims, &grants, &requests, &flagged, now)
}

/// Asserts that everything the bot showed is true by Azure
/// ([`shown_violations`]); then asks `/jit-status` for every member with a
/// grant (through the fake Discord), checks it names each grant's state,
/// and asserts the same of its answers, now the newest word on each grant.
pub async fn assert_shown_matches_azure(app: &TestApp) {
    let wrong = shown_violations(app).await;
    assert!(
        wrong.is_empty(),
        "what the bot showed is not what Azure shows:\n{}",
        wrong.join("\n")
    );
    let grants = all_grants(app).await;
    let mut statuses = HashMap::new();
    for grant in &grants {
        let user = grant.user_id.get();
        if let std::collections::hash_map::Entry::Vacant(e) = statuses.entry(user) {
            e.insert(status_of(app, user).await);
        }
    }
    for grant in &grants {
        let id = grant.request_id.as_str();
        if let Some((name, _)) = statuses[&grant.user_id.get()].get(id) {
            let label = match grant.state {
                GrantState::PendingApproval => "waiting for approval",
                state => state.as_str(),
            };
            assert!(
                name.ends_with(label),
                "/jit-status shows grant {id} as {name:?}, the bot has it {}",
                grant.state
            );
        }
    }
    let wrong = shown_violations(app).await;
    assert!(
        wrong.is_empty(),
        "what /jit-status shows is not what Azure shows:\n{}",
        wrong.join("\n")
    );
}

impl TestApp {
    /// The teardown of every end-to-end test: everything the bot showed
    /// (replies, edits, DMs, channel cards) is true by the emulator
    /// ([`assert_shown_matches_azure`]), then a clean stop. (Here, not in
    /// `app.rs`: the benches share that file without this one.)
    pub async fn finish(self) {
        assert_shown_matches_azure(&self).await;
        self.stop().await.expect("clean stop");
    }
}
