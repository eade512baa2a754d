//! Crash recovery of the real binary: `drawbridge run`, configured through
//! `DRAWBRIDGE__…` variables exactly as [`crate::support::app`] configures
//! the in-process app, against the in-test fake Discord and Azure emulator,
//! is killed with SIGKILL at random (seeded) moments while reminders and
//! expiries fall due, and restarted. Every reminder and expiry notice must
//! reach Discord exactly once and the audit chain must stay intact.
//!
//! Grants of minutes cannot be waited for, so the test writes grants and
//! their timers (due within seconds) straight into the database file before
//! the first start, as the request use case would have.
//!
//! A random kill seldom lands in the few microseconds between Discord
//! accepting a message and the outbox row being marked, so after some kills
//! the test also clears `delivered_at` of a few delivered rows: exactly the
//! state such a kill leaves. The restarted bot sends them again with the same
//! nonce, and the fake Discord (like Discord) answers with the message it
//! already has.

use std::collections::HashMap;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use drawbridge::clock::SystemClock;
use drawbridge::domain::{
    AccessDuration, GrantEvent, MappingName, PortSpec, RequestId, Snowflake, SourcePrefix, UserId,
};
use drawbridge::sandbox::{Emulator, Estate};
use drawbridge::store::{NewGrant, ScheduleKind, Store};
use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;

use crate::e2e_approvals::APPROVALS;
use crate::support::app::{AUDIT_CHANNEL, SUB_PROD, app_env};
use crate::support::fake_discord::FakeDiscord;

const GRANTS: u64 = 8;
const SEED: u64 = 0x0d2a_b21d_6e5e;
/// How long the last, unkilled run may take to deliver what is left.
const DRAIN: Duration = Duration::from_secs(25);

pub(crate) struct Seeded {
    pub(crate) request_id: RequestId,
    pub(crate) user: u64,
    pub(crate) reminder_key: String,
    pub(crate) expiry_key: String,
}

/// A grant on web-01 that ends at `end`, with its reminder at `reminder`
/// (also used by `replicas.rs`).
/// A grant of `user` for SSH on the sample estate's web-01 from
/// 203.0.113.7, asked at `requested_at`.
pub(crate) fn web_01_grant(
    request_id: &RequestId,
    user: u64,
    requested_at: DateTime<Utc>,
) -> NewGrant {
    NewGrant {
        request_id: request_id.clone(),
        user_id: UserId::parse(&user.to_string()).unwrap(),
        guild_id: Snowflake::from_u64(4004),
        channel_id: Snowflake::from_u64(5005),
        vm_id: format!(
            "/subscriptions/{SUB_PROD}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web-01"
        ),
        vm_name: "rg-web/web-01".into(),
        policy_id: format!(
            "/subscriptions/{SUB_PROD}/resourceGroups/rg-web/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default"
        ),
        ports: PortSpec::from_numbers([22]).unwrap(),
        source: SourcePrefix::parse("203.0.113.7").unwrap(),
        duration: AccessDuration::from_minutes(5).unwrap(),
        reason: None,
        mapping: MappingName::parse("sre-web").unwrap(),
        requested_at,
        interaction_token: None,
    }
}

pub(crate) async fn seed_grant(
    store: &Store,
    n: u64,
    reminder: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Seeded {
    let request_id = RequestId::parse(&format!("crash-{n}")).unwrap();
    let user = 800_000 + n;
    let now = Utc::now();
    let mut tx = store.begin().await.unwrap();
    tx.insert_grant(web_01_grant(&request_id, user, now))
        .await
        .unwrap();
    tx.transition_grant(&request_id, &GrantEvent::Initiated { end }, now)
        .await
        .unwrap();
    let rem = tx
        .schedule(&request_id, ScheduleKind::Reminder, reminder)
        .await
        .unwrap();
    let exp = tx
        .schedule(&request_id, ScheduleKind::Expiry, end)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    Seeded {
        request_id,
        user,
        reminder_key: format!("rem-{rem}"),
        expiry_key: format!("exp-{exp}"),
    }
}

fn start(env: &HashMap<String, String>, log: &std::fs::File) -> Child {
    crate::support::cluster::spawn_replica(0, env, log)
}

fn nonce(m: &Value) -> Option<&str> {
    m["nonce"].as_str()
}

fn text(m: &Value) -> String {
    m.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_repeats_no_notice() {
    // Arrange: grants whose reminders fall due over the next ~8 s and whose
    // expiries follow each reminder by more than a claim lease.
    let discord = FakeDiscord::start().await;
    let azure = Emulator::new(Estate::sample(), Arc::new(SystemClock))
        .spawn()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("drawbridge.db").display());
    let store = Store::open(&db).await.unwrap();
    let t = Utc::now();
    let mut grants = Vec::new();
    for n in 0..GRANTS {
        let reminder = t + TimeDelta::milliseconds(2_000 + 800 * n as i64);
        let end = reminder + TimeDelta::seconds(14);
        grants.push(seed_grant(&store, n, reminder, end).await);
    }
    let last_end = t + TimeDelta::milliseconds(2_000 + 800 * (GRANTS as i64 - 1) + 14_000);
    let env = app_env(&discord, &azure.base_url, &db);
    let log_path = dir.path().join("drawbridge.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let expected = |d: &FakeDiscord| {
        grants
            .iter()
            .map(|g| {
                let dms = d.dm_messages(g.user);
                let has = |k: &str| dms.iter().any(|m| nonce(m) == Some(k));
                has(&g.reminder_key) as usize + has(&g.expiry_key) as usize
            })
            .sum::<usize>()
    };

    // Act: run for a random 0.3-2 s, SIGKILL, restart; until the last end.
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut kills = 0;
    let mut unmarked = 0;
    let raw = sqlx::SqlitePool::connect(&db).await.unwrap();
    while Utc::now() < last_end {
        let mut child = start(&env, &log);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_000))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        kills += 1;
        // A kill rarely lands between Discord's answer and the row being
        // marked; leave that state on purpose now and then, for a few rows.
        if rng.random_bool(0.5) {
            unmarked += sqlx::query(
                "UPDATE outbox SET delivered_at = NULL WHERE id IN (
                     SELECT id FROM outbox WHERE delivered_at IS NOT NULL
                     ORDER BY random() LIMIT 3)",
            )
            .execute(&raw)
            .await
            .unwrap()
            .rows_affected();
        }
    }
    // Then one run that is left alone until everything is delivered.
    let mut child = start(&env, &log);
    let drain = Instant::now();
    while expected(&discord) < 2 * GRANTS as usize && drain.elapsed() < DRAIN {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // room for a duplicate to show
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    // Assert
    let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
    let context = format!("after {kills} kills; log tail:\n{}", tail(&logs, 40));
    assert!(kills >= 5, "{context}");
    for g in &grants {
        let dms = discord.dm_messages(g.user);
        let by_key = |k: &str| dms.iter().filter(|m| nonce(m) == Some(k)).count();
        assert_eq!(
            by_key(&g.reminder_key),
            1,
            "reminder of {}: {context}",
            g.request_id
        );
        assert_eq!(
            by_key(&g.expiry_key),
            1,
            "expiry of {}: {context}",
            g.request_id
        );
        assert_eq!(dms.len(), 2, "nothing else, nothing twice: {dms:?}");
        let reminders = dms
            .iter()
            .filter(|m| text(m).contains("Closing <t:"))
            .count();
        let expiries = dms.iter().filter(|m| text(m).contains("Expired:")).count();
        assert_eq!((reminders, expiries), (1, 1), "by content: {dms:?}");
        assert!(dms.iter().all(|m| text(m).contains(g.request_id.as_str())));
    }
    let audit = discord.channel_messages(AUDIT_CHANNEL);
    let mut nonces: Vec<&str> = audit.iter().filter_map(nonce).collect();
    let posted = nonces.len();
    nonces.sort_unstable();
    nonces.dedup();
    assert_eq!(nonces.len(), posted, "no audit event posted twice");
    let count = |title: &str| audit.iter().filter(|m| text(m).contains(title)).count();
    assert_eq!(count("Reminder sent"), GRANTS as usize, "{context}");
    assert_eq!(count("Access expired"), GRANTS as usize, "{context}");
    assert!(store.verify_audit().await.unwrap().is_intact());
    let sends = discord.calls_to("POST", "/channels/").len();
    let created: usize = audit.len()
        + grants
            .iter()
            .map(|g| discord.dm_messages(g.user).len())
            .sum::<usize>();
    eprintln!(
        "{kills} kills, {unmarked} rows left unmarked; {sends} message POSTs for {created} messages"
    );
    assert!(
        sends > created,
        "some sends were repeated and answered from the nonce"
    );
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The bot binary's surroundings for a kill during an initiate that Azure
/// applies and never answers: the fakes, a database with `mappings`, the
/// environment (a long Azure timeout, reconciliation every second) and
/// the log file.
struct Unclear {
    discord: FakeDiscord,
    azure: drawbridge::sandbox::RunningEmulator,
    dir: tempfile::TempDir,
    store: Store,
    env: HashMap<String, String>,
    log_path: std::path::PathBuf,
    log: std::fs::File,
}

async fn unclear_setup(mappings: &str) -> Unclear {
    let discord = FakeDiscord::start().await;
    let azure = Emulator::new(Estate::sample(), Arc::new(SystemClock))
        .spawn()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("drawbridge.db").display());
    let store = Store::open(&db).await.unwrap();
    let mappings = drawbridge::domain::mapping::MappingFile::parse(
        mappings,
        &drawbridge::domain::PortAliases::default(),
    )
    .unwrap();
    store
        .import_mappings(&mappings, "test", Utc::now())
        .await
        .unwrap();
    let mut env = app_env(&discord, &azure.base_url, &db);
    env.insert("DRAWBRIDGE__AZURE__REQUEST_TIMEOUT".into(), "60s".into());
    env.insert("DRAWBRIDGE__AZURE__RECONCILE_INTERVAL".into(), "1s".into());
    let log_path = dir.path().join("drawbridge.log");
    let log = std::fs::File::create(&log_path).unwrap();
    Unclear {
        discord,
        azure,
        dir,
        store,
        env,
        log_path,
        log,
    }
}

/// The SRE's `/jit ssh <vm> 2h from:203.0.113.7`.
fn ssh_for_two_hours(
    discord: &FakeDiscord,
    vm: &str,
) -> crate::support::fake_discord::InteractionBuilder {
    discord
        .slash("jit")
        .string("port", "ssh")
        .string("vm", vm)
        .string("duration", "2h")
        .string("from", "203.0.113.7")
        .roles([crate::support::app::SRE_ROLE])
}

/// Waits until Azure applied the (hanging) initiate, then kills the bot.
async fn kill_once_applied(azure: &drawbridge::sandbox::RunningEmulator, child: &mut Child) {
    let applied = Instant::now();
    while azure.emulator.jit_request_count() == 0 && applied.elapsed() < DRAIN {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(azure.emulator.jit_request_count(), 1, "Azure applied it");
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
}

/// The bot dies while Azure holds its initiate unanswered (Azure applied
/// it): on restart the grant, left `requested`, is settled from Azure's
/// listing exactly once, `active` with its timers, the member told (their
/// `/jit` reply edited to say so, once; no DM while the reply works), and
/// Azure holds the one request; nothing is initiated again and our own
/// request is not reported as made outside Drawbridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_unclear_initiate_settles_it_once_on_restart() {
    // Arrange
    let Unclear {
        discord,
        azure,
        dir: _dir,
        store,
        env,
        log_path,
        log,
    } = unclear_setup(crate::support::app::DEFAULT_MAPPINGS).await;
    azure.emulator.inject(
        drawbridge::sandbox::Route::Initiate,
        drawbridge::sandbox::FaultRule::next(1, drawbridge::sandbox::Fault::HangAfterApply),
    );

    // Act: the initiate reaches Azure and hangs; the bot is killed.
    let mut child = start(&env, &log);
    assert!(discord.wait_until_ready(Duration::from_secs(20)).await);
    let sent = discord
        .send_interaction(ssh_for_two_hours(&discord, "web-01"))
        .await;
    let id = RequestId::parse(&sent.id.to_string()).unwrap();
    kill_once_applied(&azure, &mut child).await;
    let left = store.grant(&id).await.unwrap().unwrap();
    assert_eq!(left.state, drawbridge::domain::GrantState::Requested);
    let mut child = start(&env, &log);
    let deadline = Instant::now() + DRAIN;
    let mut settled = left.clone();
    while settled.state != drawbridge::domain::GrantState::Active && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        settled = store.grant(&id).await.unwrap().unwrap();
    }
    let dms = |d: &FakeDiscord| {
        d.dm_messages(crate::support::fake_discord::USER_ID)
            .iter()
            .filter(|m| text(m).contains("Access granted"))
            .count()
    };
    let told = |d: &FakeDiscord| reply_edits(d, "Access granted") + dms(d);
    while told(&discord) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // room for a second settling to show
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    // Assert
    let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
    let context = format!("log tail:\n{}", tail(&logs, 40));
    assert_eq!(
        settled.state,
        drawbridge::domain::GrantState::Active,
        "{context}"
    );
    assert_eq!(told(&discord), 1, "told once: {context}");
    assert_eq!(dms(&discord), 0, "told in their reply: {context}");
    assert!(
        discord
            .interaction_response(sent.id)
            .is_some_and(|m| text(&m).contains("Access granted")),
        "{context}"
    );
    assert_eq!(azure.emulator.jit_request_count(), 1, "one Azure request");
    assert_eq!(azure.emulator.initiate_calls().len(), 1, "never sent again");
    let timers: Vec<ScheduleKind> = store
        .next_due(10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.request_id == id)
        .map(|i| i.kind)
        .collect();
    assert_eq!(timers, [ScheduleKind::Reminder, ScheduleKind::Expiry]);
    let audit = store
        .audit_events(&drawbridge::store::AuditFilter::default())
        .await
        .unwrap();
    let count = |action: drawbridge::domain::AuditAction| {
        audit.iter().filter(|r| r.event.action == action).count()
    };
    assert_eq!(count(drawbridge::domain::AuditAction::AccessInitiated), 1);
    assert_eq!(
        count(drawbridge::domain::AuditAction::OpenedOutsideDrawbridge),
        0,
        "our own request is not taken for one made outside Drawbridge"
    );
    let transitions = store.grant_transitions(&id).await.unwrap();
    let opened = transitions
        .iter()
        .filter(|t| t.to == drawbridge::domain::GrantState::Active)
        .count();
    assert_eq!(opened, 1, "settled exactly once: {transitions:?}");
}

/// Edits of interaction replies that Discord accepted and that say `what`.
fn reply_edits(d: &FakeDiscord, what: &str) -> usize {
    d.calls_to("PATCH", "/webhooks/")
        .into_iter()
        .filter(|c| {
            (200..300).contains(&c.status)
                && c.path.ends_with("/messages/@original")
                && c.body.to_string().contains(what)
        })
        .count()
}

/// Waits until `id`'s grant is `active` in the store.
async fn wait_until_active(store: &Store, id: &RequestId) -> bool {
    let deadline = Instant::now() + DRAIN;
    while Instant::now() < deadline {
        let grant = store.grant(id).await.unwrap();
        if grant.is_some_and(|g| g.state == drawbridge::domain::GrantState::Active) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A `/jit` answered normally shows its reply once: the reply, also written
/// to the outbox with the grant, is marked delivered by the in-line show
/// and never sent again, not even after the outbox's hold on it ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jit_reply_shown_in_line_is_never_sent_again() {
    // Arrange
    let Unclear {
        discord,
        azure: _azure,
        dir: _dir,
        store,
        env,
        log_path,
        log,
    } = unclear_setup(crate::support::app::DEFAULT_MAPPINGS).await;
    let mut child = start(&env, &log);
    assert!(discord.wait_until_ready(Duration::from_secs(20)).await);

    // Act
    let sent = discord
        .send_interaction(ssh_for_two_hours(&discord, "web-01"))
        .await;
    let shown = discord
        .wait_until(DRAIN, |d| reply_edits(d, "Access granted") > 0)
        .await;
    let hold = drawbridge::service::reply::HOLD.to_std().unwrap();
    tokio::time::sleep(hold + Duration::from_secs(3)).await; // past the hold, and a deliverer's tick
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    // Assert
    let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
    let context = format!("log tail:\n{}", tail(&logs, 40));
    assert!(shown, "the reply is shown: {context}");
    assert_eq!(
        reply_edits(&discord, "Access granted"),
        1,
        "shown once: {context}"
    );
    assert!(
        discord
            .interaction_response(sent.id)
            .is_some_and(|m| text(&m).contains("Access granted"))
    );
    assert!(
        discord
            .dm_messages(crate::support::fake_discord::USER_ID)
            .is_empty(),
        "no DM: {context}"
    );
    let left = store.outbox_stats(Utc::now()).await.unwrap();
    assert_eq!(left.depth, 0, "nothing left to send: {context}");
}

/// The bot dies after the grant's outcome was committed and before the
/// member's `/jit` reply was edited to show it (Discord refuses the edits
/// meanwhile): on restart, the reply written with the outcome is shown,
/// exactly once, and Azure was asked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_the_grants_commit_and_its_reply_still_shows_the_reply_once() {
    // Arrange
    let Unclear {
        discord,
        azure,
        dir: _dir,
        store,
        env,
        log_path,
        log,
    } = unclear_setup(crate::support::app::DEFAULT_MAPPINGS).await;
    let mut child = start(&env, &log);
    assert!(discord.wait_until_ready(Duration::from_secs(20)).await);
    discord.fail_always(
        crate::support::fake_discord::RouteMatch::EditOriginal,
        crate::support::fake_discord::FailMode::Status(500),
    );

    // Act: the grant commits; the bot is killed before any edit got through.
    let sent = discord
        .send_interaction(ssh_for_two_hours(&discord, "web-01"))
        .await;
    let id = RequestId::parse(&sent.id.to_string()).unwrap();
    let active = wait_until_active(&store, &id).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let before_restart = reply_edits(&discord, "Access granted");
    discord.clear_faults();
    let mut child = start(&env, &log);
    let shown = discord
        .wait_until(DRAIN, |d| reply_edits(d, "Access granted") > 0)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // room for a second edit to show
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    // Assert
    let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
    let context = format!("log tail:\n{}", tail(&logs, 40));
    assert!(active, "the grant committed: {context}");
    assert_eq!(before_restart, 0, "not shown before the kill");
    assert!(shown, "the reply is shown after the restart: {context}");
    assert_eq!(
        reply_edits(&discord, "Access granted"),
        1,
        "shown once: {context}"
    );
    assert!(
        discord
            .interaction_response(sent.id)
            .is_some_and(|m| text(&m).contains("Access granted")),
        "{context}"
    );
    assert!(
        discord
            .dm_messages(crate::support::fake_discord::USER_ID)
            .is_empty(),
        "no DM while the token works: {context}"
    );
    assert_eq!(azure.emulator.initiate_calls().len(), 1, "Azure asked once");
}

/// The approval card of `id` in the approvals channel, as last edited.
fn approval_card(d: &FakeDiscord, id: &RequestId) -> Option<Value> {
    let footer = format!("Request {id}");
    d.channel_messages(APPROVALS)
        .into_iter()
        .find(|m| m["embeds"][0]["footer"]["text"] == footer.as_str())
}

/// The card says the port is open (its final state, "Approved: …").
fn is_open(card: &Value) -> bool {
    card["embeds"][0]["title"]
        .as_str()
        .is_some_and(|t| t.starts_with("Approved:"))
}

fn has_buttons(message: &Value) -> bool {
    message["components"]
        .as_array()
        .is_some_and(|rows| !rows.is_empty())
}

/// The bot dies after Azure opened an approved request but before the
/// approval card and the requester's reply were edited to say so (the card
/// may already say "approved, opening"): on restart the grant is settled
/// from Azure's listing, and the card and the reply are edited to the open
/// grant then, each exactly once (they are written with the state that
/// settles the grant, never after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_an_approved_open_reached_azure_still_edits_the_card_and_reply_once() {
    // Arrange: prod needs one approval from role 300.
    let Unclear {
        discord,
        azure,
        dir: _dir,
        store,
        mut env,
        log_path,
        log,
    } = unclear_setup(&crate::e2e_approvals::mappings(1)).await;
    env.insert(
        "DRAWBRIDGE__DISCORD__APPROVALS_CHANNEL_ID".into(),
        APPROVALS.to_string(),
    );
    let mut child = start(&env, &log);
    assert!(discord.wait_until_ready(Duration::from_secs(20)).await);
    let asked = discord
        .send_interaction(ssh_for_two_hours(&discord, "rg-prod/ops-01"))
        .await;
    let id = RequestId::parse(&asked.id.to_string()).unwrap();
    assert!(
        discord
            .wait_until(DRAIN, |d| approval_card(d, &id)
                .is_some_and(|c| has_buttons(&c)))
            .await,
        "the card is posted"
    );
    azure.emulator.inject(
        drawbridge::sandbox::Route::Initiate,
        drawbridge::sandbox::FaultRule::next(1, drawbridge::sandbox::Fault::HangAfterApply),
    );

    // Act: Bob approves; Azure applies the initiate and hangs; the bot is
    // killed before anything is settled or edited.
    discord
        .send_interaction(
            discord
                .button(&format!("approve:{id}:1"))
                .user(6007, "bob")
                .roles([300]),
        )
        .await;
    kill_once_applied(&azure, &mut child).await;
    let left = store.grant(&id).await.unwrap().unwrap();
    assert_eq!(left.state, drawbridge::domain::GrantState::Requested);
    assert!(
        approval_card(&discord, &id).is_some_and(|c| !is_open(&c)),
        "the card does not say open before Azure's answer was written"
    );
    let mut child = start(&env, &log);
    let granted = |m: &Value| text(m).contains("Access granted");
    let edited = discord
        .wait_until(DRAIN, |d| {
            approval_card(d, &id).is_some_and(|c| is_open(&c) && !has_buttons(&c))
                && d.interaction_response(asked.id)
                    .is_some_and(|m| granted(&m))
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // room for a second edit to show
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    // Assert: the card ends approved and the reply shows the grant, each
    // edited once; Azure holds the one request.
    let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
    let context = format!("log tail:\n{}", tail(&logs, 40));
    assert!(edited, "the card and the reply are edited: {context}");
    let card = approval_card(&discord, &id).unwrap();
    assert!(
        card["embeds"][0]["title"]
            .as_str()
            .is_some_and(|t| t.starts_with("Approved")),
        "{card}"
    );
    let card_id = card["id"].as_str().unwrap().to_owned();
    let card_edits = discord
        .calls_to(
            "PATCH",
            &format!("/channels/{APPROVALS}/messages/{card_id}"),
        )
        .into_iter()
        .filter(|c| c.body.to_string().contains("Open until"))
        .count();
    assert_eq!(card_edits, 1, "the card is edited to open once: {context}");
    let reply_edits = discord
        .calls_to("PATCH", "/webhooks/")
        .into_iter()
        .filter(|c| c.body.to_string().contains("Access granted"))
        .count();
    assert_eq!(reply_edits, 1, "the reply is edited once: {context}");
    assert_eq!(
        store.grant(&id).await.unwrap().unwrap().state,
        drawbridge::domain::GrantState::Active
    );
    assert_eq!(azure.emulator.initiate_calls().len(), 1, "never sent again");
}
