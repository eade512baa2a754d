//! Several replicas on one PostgreSQL database (issue 14). In gateway mode
//! one replica holds the Discord session and a standby takes over when it
//! dies. And three `drawbridge run` processes in HTTP mode share the database, the fake Discord and the
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
use drawbridge::clock::SystemClock;
use drawbridge::sandbox::{Emulator, Estate};
use drawbridge::store::Store;
use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;

use crate::crash::{seed_grant, tail};
use crate::store::backend::{Backend as _, Postgres};
use crate::support::app::{AUDIT_CHANNEL, SRE_ROLE, app_env};
use crate::support::fake_discord::FakeDiscord;

const REPLICAS: usize = 3;
const GRANTS: u64 = 12;
const KILLS: usize = 20;
const SEED: u64 = 0x5eed_0014;
/// How long the replicas, left alone at the end, may take to deliver what
/// is left: a dead holder's lease runs out after 15 s.
const DRAIN: Duration = Duration::from_secs(45);

/// A free TCP port on 127.0.0.1 (bound and released: a replica restarted
/// on it keeps its address, as a pod behind a Service does).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Replicas of `drawbridge run` as child processes, each with its own log
/// and fixed ports, so a restarted replica answers where it did.
struct Cluster {
    env: HashMap<String, String>,
    dir: tempfile::TempDir,
    logs: Vec<std::fs::File>,
    children: Vec<Child>,
    ops_ports: Vec<u16>,
    http_ports: Vec<u16>,
}

impl Cluster {
    fn start(env: HashMap<String, String>, n: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let logs: Vec<std::fs::File> = (0..n)
            .map(|i| std::fs::File::create(dir.path().join(format!("replica{i}.log"))).unwrap())
            .collect();
        let mut cluster = Cluster {
            env,
            dir,
            logs,
            children: Vec::new(),
            ops_ports: (0..n).map(|_| free_port()).collect(),
            http_ports: (0..n).map(|_| free_port()).collect(),
        };
        cluster.children = (0..n).map(|i| cluster.spawn(i)).collect();
        cluster
    }

    fn spawn(&self, i: usize) -> Child {
        let mut env = self.env.clone();
        env.insert(
            "DRAWBRIDGE__OPS__LISTEN".into(),
            format!("127.0.0.1:{}", self.ops_ports[i]),
        );
        env.insert(
            "DRAWBRIDGE__HTTP__LISTEN".into(),
            format!("127.0.0.1:{}", self.http_ports[i]),
        );
        start(i, &env, &self.logs[i])
    }

    /// SIGKILLs replica `i` and starts it again at once.
    fn kill_and_restart(&mut self, i: usize) {
        self.kill(i);
        self.children[i] = self.spawn(i);
    }

    fn kill(&mut self, i: usize) {
        // Err only when it has exited already (a second kill).
        let _ = self.children[i].kill();
        self.children[i].wait().expect("the replica is reaped");
    }

    fn kill_all(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }

    /// Replica `i`'s `/readyz` answer, `None` while it does not answer.
    async fn readyz(&self, i: usize) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/readyz", self.ops_ports[i]);
        let answer = reqwest::get(url).await.ok()?;
        answer.json().await.ok()
    }

    /// Each replica's gateway role (`holder`, `standby`, or `down` when it
    /// does not answer) and whether it is ready, by `/readyz`.
    async fn gateway_roles(&self) -> Vec<(String, bool)> {
        let mut roles = Vec::new();
        for i in 0..self.children.len() {
            let ready = self.readyz(i).await.unwrap_or(Value::Null);
            roles.push((
                ready["gateway"].as_str().unwrap_or("down").to_owned(),
                ready["ready"].as_bool().unwrap_or(false),
            ));
        }
        roles
    }

    /// The last lines of every replica's log.
    fn log_tails(&self, lines: usize) -> String {
        (0..self.children.len())
            .map(|i| {
                let path = self.dir.path().join(format!("replica{i}.log"));
                let text = std::fs::read_to_string(path).unwrap_or_default();
                format!("--- replica{i}:\n{}\n", tail(&text, lines))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

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
    let mut cluster = Cluster::start(env, REPLICAS);

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
        cluster.kill_and_restart(victim);
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
    cluster.kill_all();

    // Assert
    let log_tails = cluster.log_tails(15);
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

/// Gateway mode with two replicas on one PostgreSQL database: one holds the
/// gateway session (Discord delivers every event to every connected
/// session, so a second would answer everything twice), the other stands
/// by, and `/readyz` says which is which. When the holder is SIGKILLed the
/// standby takes the session over within 15 s; never are two sessions
/// connected at once, and each interaction is answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_gateway_mode_one_replica_holds_the_session_and_a_standby_takes_over_within_15_s() {
    let Some(pg) = Postgres::from_env() else {
        return;
    };
    // Arrange
    let db = pg.empty().await;
    let _store = Store::open(&db.url).await.unwrap();
    let discord = FakeDiscord::start().await;
    let azure = Emulator::new(Estate::sample(), Arc::new(SystemClock))
        .spawn()
        .await
        .unwrap();
    let mut cluster = Cluster::start(app_env(&discord, &azure.base_url, &db.url), 2);
    let settled = |roles: &[(String, bool)]| {
        let mut names: Vec<&str> = roles.iter().map(|(r, _)| r.as_str()).collect();
        names.sort_unstable();
        names == ["holder", "standby"] && roles.iter().all(|(_, ready)| *ready)
    };
    let started = Instant::now();
    let mut seen = cluster.gateway_roles().await;
    while !(settled(&seen) && discord.ready_sessions() == 1) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "one holder and one standby, both ready: {seen:?}\n{}",
            cluster.log_tails(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen = cluster.gateway_roles().await;
    }
    let holder = seen.iter().position(|(r, _)| r == "holder").unwrap();
    let before = discord
        .send_interaction(discord.slash("jit-status").roles([SRE_ROLE]))
        .await;
    let answered_before = discord.wait_for_callback(before.id, WAIT).await;

    // Act
    cluster.kill(holder);
    let killed = Instant::now();
    let took_over = discord
        .wait_until(Duration::from_secs(30), |d| {
            d.identifies().len() == 2 && d.ready_sessions() == 1
        })
        .await;
    let takeover = killed.elapsed();
    let after = discord
        .send_interaction(discord.slash("jit-status").roles([SRE_ROLE]))
        .await;
    let answered_after = discord.wait_for_callback(after.id, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // room for a second answer
    let standby = 1 - holder;
    let now_holder = cluster.readyz(standby).await.unwrap_or(Value::Null);
    let logs = cluster.log_tails(20);
    cluster.kill_all();

    // Assert
    assert!(took_over, "the standby connected: {logs}");
    eprintln!("replicas (gateway): takeover {takeover:?} after SIGKILL of the holder");
    assert!(
        takeover < Duration::from_secs(15),
        "took over in {takeover:?}: {logs}"
    );
    assert_eq!(now_holder["gateway"], "holder", "{now_holder}");
    for (what, sent, answered) in [
        ("before", &before, answered_before),
        ("after", &after, answered_after),
    ] {
        assert_eq!(answered.map(|c| c.status), Some(204), "{what}: {logs}");
        assert_eq!(
            discord.callbacks(sent.id).len(),
            1,
            "{what}: answered once, by one replica"
        );
    }
    assert_eq!(
        discord.peak_ready_sessions(),
        1,
        "never two gateway sessions at once"
    );
}

const WAIT: Duration = Duration::from_secs(10);
