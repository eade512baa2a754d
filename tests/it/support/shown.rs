#![allow(dead_code)] // each test uses part of the harness
//! What the bot shows about when a port closes, checked against the Azure
//! emulator at the end of an end-to-end test (issue 11: "every 'open until'
//! the bot shows matches the emulator's state").
//!
//! [`assert_shown_matches_azure`] asks `/jit-status` for every member with
//! a grant, through the fake Discord, and reads the newest grant card each
//! member was shown in reply to a command or button; then, per grant:
//!
//! - open by the bot's word (`active`, `extended`, `extending`, `closing`):
//!   the end `/jit-status` and the newest card show is when Azure closes
//!   the port for the grant's source, on every port of the grant;
//! - closed early with its short window still ahead: Azure closes the port
//!   then;
//! - any other state: Azure shows the port closed for the grant's source,
//!   unless another open grant of Drawbridge holds it.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use drawbridge::domain::{GrantState, RequestId};
use drawbridge::store::Grant;
use serde_json::Value;

use drawbridge::sandbox::RunningEmulator;

use super::app::{SRE_ROLE, SUB_PROD, TestApp};

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

/// Per request id, the Window field of the newest card in a reply that
/// shows an end (a refusal or a question shows none).
fn newest_cards(app: &TestApp) -> HashMap<String, String> {
    let mut cards = HashMap::new();
    for (_, message) in app.discord.interaction_messages() {
        for embed in message["embeds"].as_array().into_iter().flatten() {
            let footer = embed["footer"]["text"].as_str().unwrap_or_default();
            let Some(id) = footer.strip_prefix("Request ") else {
                continue;
            };
            let window = embed["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|f| f["name"] == "Window")
                .and_then(|f| f["value"].as_str())
                .unwrap_or_default();
            if shown_end(window).is_some() {
                cards.insert(id.to_owned(), window.to_owned());
            }
        }
    }
    cards
}

/// Per request id, what `/jit-status` shows `user`: (entry name, window).
async fn status_of(app: &TestApp, user: u64) -> HashMap<String, (String, String)> {
    let sent = app
        .discord
        .send_interaction(
            app.discord
                .slash("jit-status")
                .user(user, &format!("user{user}"))
                .roles([SRE_ROLE]),
        )
        .await;
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
        let held_by_another = |port: u16| {
            grants.iter().any(|g| {
                g.request_id != grant.request_id
                    && g.state.is_open()
                    && g.vm_id.eq_ignore_ascii_case(&grant.vm_id)
                    && g.source == grant.source
                    && g.ports.numbers().contains(&port)
            })
        };
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

/// [`assert_ends_match_azure`] for a [`TestApp`]: what `/jit-status` shows
/// every member with a grant (asked through the fake Discord; its state too)
/// and the newest grant card in a reply.
pub async fn assert_shown_matches_azure(app: &TestApp) {
    let now = app.clock.now();
    let grants = all_grants(app).await;
    let cards = newest_cards(app);
    let mut statuses = HashMap::new();
    for grant in &grants {
        let user = grant.user_id.get();
        if let std::collections::hash_map::Entry::Vacant(e) = statuses.entry(user) {
            e.insert(status_of(app, user).await);
        }
    }
    let mut shown = ShownEnds::new();
    for grant in &grants {
        let id = grant.request_id.as_str();
        let ends = shown.entry(id.to_owned()).or_default();
        if let Some((name, window)) = statuses[&grant.user_id.get()].get(id) {
            assert!(
                name.ends_with(grant.state.as_str()),
                "/jit-status shows grant {id} as {name:?}, the bot has it {}",
                grant.state
            );
            ends.push(("/jit-status", shown_end(window)));
        }
        if let Some(window) = cards.get(id) {
            ends.push(("the newest card", shown_end(window)));
        }
    }
    assert_ends_match_azure(&app.azure, &grants, &shown, now).await;
}
