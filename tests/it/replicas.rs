//! Several replicas on one PostgreSQL database (issue 14): three `drawbridge
//! run` processes in HTTP mode share the database, the fake Discord and the
//! Azure emulator, while reminders and expiries fall due. The replica doing
//! the ordered work (the holder of the audit channel's lease) is killed with
//! SIGKILL again and again, at random (seeded) moments, and restarted.
//! Every reminder, expiry notice and audit-channel post must reach Discord
//! exactly once, none lost, and the audit chain must verify.
//!
//! As in `crash.rs`, grants and their timers are written straight into the
//! database before the first start. Runs only with
//! `DRAWBRIDGE_TEST_POSTGRES_URL` (see `store/backend.rs`).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use drawbridge::app::App;
use drawbridge::clock::{ManualClock, SystemClock};
use drawbridge::config::{Settings, Sources};
use drawbridge::domain::GrantState;
use drawbridge::sandbox::{Emulator, Estate};
use drawbridge::service::reconcile::{IN_FLIGHT, Reconciler};
use drawbridge::service::replica::{self, LeaseGate};
use drawbridge::store::Store;
use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;

use crate::crash::{seed_grant, tail, web_01_grant};
use crate::store::backend::{Backend as _, Postgres};
use crate::support::app::{AUDIT_CHANNEL, app_env};
use crate::support::fake_discord::FakeDiscord;

const REPLICAS: usize = 3;
const GRANTS: u64 = 12;
const KILLS: usize = 20;
const SEED: u64 = 0x5eed_0014;
/// How long the replicas, left alone at the end, may take to deliver what
/// is left: a dead holder's lease runs out after 15 s.
const DRAIN: Duration = Duration::from_secs(45);

fn start(i: usize, env: &HashMap<String, String>, log: &std::fs::File) -> Child {
    Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info,serenity=warn,sqlx=warn")
        // The replica id starts with the host name: it tells who holds a lease.
        .env("HOSTNAME", format!("replica{i}"))
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log.try_clone().unwrap())
        .spawn()
        .expect("the drawbridge binary starts")
}

fn nonce(m: &Value) -> Option<&str> {
    m["nonce"].as_str()
}

/// Which replica holds the audit channel's lease now, if any.
async fn audit_holder(store: &Store) -> Option<usize> {
    let lease = store.lease("outbox_audit", Utc::now()).await.unwrap()?;
    (0..REPLICAS).find(|i| lease.holder.starts_with(&format!("replica{i}-")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_killed_at_random_send_every_notice_and_audit_post_once() {
    let Some(pg) = Postgres::from_env() else {
        return;
    };
    // Arrange
    let db = pg.empty().await;
    let store = Store::open(&db.url).await.unwrap();
    let discord = FakeDiscord::start().await;
    let azure = Emulator::new(Estate::sample(), Arc::new(SystemClock))
        .spawn()
        .await
        .unwrap();
    let t = Utc::now();
    let mut grants = Vec::new();
    for n in 0..GRANTS {
        let reminder = t + TimeDelta::milliseconds(3_000 + 1_000 * n as i64);
        let end = reminder + TimeDelta::seconds(14); // more than a timer claim lease
        grants.push(seed_grant(&store, n, reminder, end).await);
    }
    let mut env = app_env(&discord, &azure.base_url, &db.url);
    let key = ed25519_dalek::SigningKey::from_bytes(&[14; 32]).verifying_key();
    env.insert("DRAWBRIDGE__DISCORD__MODE".into(), "http".into());
    env.insert(
        "DRAWBRIDGE__DISCORD__PUBLIC_KEY".into(),
        hex::encode(key.to_bytes()),
    );
    env.insert("DRAWBRIDGE__HTTP__LISTEN".into(), "127.0.0.1:0".into());
    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<std::fs::File> = (0..REPLICAS)
        .map(|i| std::fs::File::create(dir.path().join(format!("replica{i}.log"))).unwrap())
        .collect();
    let mut children: Vec<Child> = (0..REPLICAS).map(|i| start(i, &env, &logs[i])).collect();

    // Act: kill the audit stream's holder (or, when none holds it, any
    // replica) every 0.4-1.5 s, and restart it at once.
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut kills = 0;
    let mut holders_killed = 0;
    while kills < KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(400..1_500))).await;
        let victim = match audit_holder(&store).await {
            Some(i) => {
                holders_killed += 1;
                i
            }
            None => rng.random_range(0..REPLICAS),
        };
        children[victim].kill().expect("SIGKILL");
        children[victim].wait().unwrap();
        children[victim] = start(victim, &env, &logs[victim]);
        kills += 1;
    }
    let audited = |d: &FakeDiscord, title: &str| {
        d.channel_messages(AUDIT_CHANNEL)
            .iter()
            .filter(|m| m.to_string().contains(title))
            .count()
    };
    let done = |d: &FakeDiscord, head: i64| {
        let dms: usize = grants.iter().map(|g| d.dm_messages(g.user).len()).sum();
        dms >= 2 * GRANTS as usize
            && audited(d, "Reminder sent") >= GRANTS as usize
            && audited(d, "Access expired") >= GRANTS as usize
            && d.channel_messages(AUDIT_CHANNEL).len() as i64 >= head
    };
    let drain = Instant::now();
    while drain.elapsed() < DRAIN {
        let (head, _) = store.audit_head().await.unwrap();
        if done(&discord, head) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // room for a duplicate to show
    for child in &mut children {
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }

    // Assert
    let log_tails: String = (0..REPLICAS)
        .map(|i| {
            let text = std::fs::read_to_string(dir.path().join(format!("replica{i}.log"))).unwrap();
            format!("--- replica{i}:\n{}", tail(&text, 15))
        })
        .collect();
    let rows: Vec<OutboxRow> = {
        use sqlx::Connection as _;
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_as(
            "SELECT idempotency_key, delivered_at, claimed_by, attempts, last_error FROM outbox
             UNION ALL SELECT kind || '-' || id, done_at, claimed_by, 0, cancelled_at FROM schedule",
        )
        .fetch_all(&mut c)
        .await
        .unwrap()
    };
    let context =
        format!("after {kills} kills ({holders_killed} of the holder)\n{log_tails}\n{rows:#?}");
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
    }
    let audit = discord.channel_messages(AUDIT_CHANNEL);
    let mut nonces: Vec<&str> = audit.iter().filter_map(nonce).collect();
    let posted = nonces.len();
    nonces.sort_unstable();
    nonces.dedup();
    assert_eq!(nonces.len(), posted, "no audit event posted twice");
    // In log order: the audit-<seq> nonces come in ascending seq.
    let seqs: Vec<i64> = audit
        .iter()
        .filter_map(nonce)
        .filter_map(|n| n.strip_prefix("audit-")?.parse().ok())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seqs:?}"
    );
    let reminders = audited(&discord, "Reminder sent");
    let expiries = audited(&discord, "Access expired");
    assert_eq!(
        (reminders, expiries),
        (GRANTS as usize, GRANTS as usize),
        "{context}"
    );
    let verified = store.verify_audit().await.unwrap();
    assert!(verified.is_intact(), "{:?}", verified.first_broken);
    let (head, _) = store.audit_head().await.unwrap();
    assert_eq!(head as usize, posted, "every audit event posted, none lost");
    let sends = discord.calls_to("POST", "/channels/").len();
    eprintln!(
        "replicas: {REPLICAS} replicas, {kills} SIGKILLs ({holders_killed} of the audit holder); \
         {} reminders and {} expiry DMs, each once; {posted} audit posts for {head} events, \
         {reminders} reminders and {expiries} expiries audited, 0 duplicates; \
         {sends} message POSTs",
        GRANTS, GRANTS
    );
}

/// An outbox row as the assertion reads it.
type OutboxRow = (String, Option<String>, Option<String>, i64, Option<String>);

/// A `requested` grant for web-01, asked `age` before `now`.
async fn requested(store: &Store, id: &str, now: chrono::DateTime<Utc>, age: TimeDelta) {
    let id = drawbridge::domain::RequestId::parse(id).unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.insert_grant(web_01_grant(&id, 800_001, now - age))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// With several replicas, only the holder of the reconcile lease marks
/// interrupted requests for settling, and only those older than an
/// initiate can take elsewhere: another live replica may still be asking
/// Azure for a younger one.
#[tokio::test]
async fn only_the_reconcile_lease_holder_settles_interrupted_requests() {
    let Some(pg) = Postgres::from_env() else {
        eprintln!("skipped: DRAWBRIDGE_TEST_POSTGRES_URL is not set");
        return;
    };
    // Arrange: one replica's service on a shared database; two requests
    // still `requested`, one older than IN_FLIGHT, one younger.
    let db = pg.empty().await;
    let discord = FakeDiscord::start().await;
    let clock = ManualClock::new(Utc::now());
    let shared: Arc<dyn drawbridge::clock::Clock> = Arc::new(clock.clone());
    let azure = Emulator::new(Estate::sample(), Arc::clone(&shared))
        .spawn()
        .await
        .unwrap();
    let settings = Settings::load(&Sources {
        file: None,
        env: Some(app_env(&discord, &azure.base_url, &db.url)),
    })
    .unwrap();
    let app = App::build(settings, Arc::clone(&shared)).await.unwrap();
    let store = app.service.store().clone();
    let now = shared.now();
    requested(&store, "old-1", now, IN_FLIGHT + TimeDelta::minutes(1)).await;
    requested(&store, "young-1", now, TimeDelta::seconds(20)).await;
    let reconciler = Reconciler::new(app.service.clone());
    let ttl = TimeDelta::seconds(60);
    let other = LeaseGate::new(store.clone(), replica::RECONCILE, "replica-other", ttl);
    let mine = LeaseGate::new(store.clone(), replica::RECONCILE, "replica-mine", ttl);
    let state = |id: &'static str| {
        let store = store.clone();
        async move {
            let id = drawbridge::domain::RequestId::parse(id).unwrap();
            store.grant(&id).await.unwrap().unwrap().state
        }
    };

    // Act + Assert: while another replica holds the lease, nothing moves,
    // even for a replica that started after both requests.
    assert!(other.hold(now).await);
    assert_eq!(
        reconciler
            .settle_interrupted(&mine, now, now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(state("old-1").await, GrantState::Requested);
    assert_eq!(state("young-1").await, GrantState::Requested);

    // The holder lets go: the old request is marked, the young one left.
    other.release(now).await;
    assert_eq!(
        reconciler
            .settle_interrupted(&mine, now, now)
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(state("old-1").await, GrantState::PendingAzure);
    assert_eq!(state("young-1").await, GrantState::Requested);
    drop(db);
}
