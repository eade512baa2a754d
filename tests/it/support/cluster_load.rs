#![allow(dead_code)] // used by the load bench only
//! The load harness against several replicas (`cargo bench --bench load --
//! --replicas N`): N `drawbridge run` processes ([`super::cluster`]) in HTTP
//! mode on a fresh PostgreSQL database, the fake Discord and the Azure
//! emulator, `/jit` interactions posted round-robin as a load balancer does.
//! Also the ARM read rate of N idle replicas (`--arm-idle SECONDS`).
//!
//! Figures come from the fakes' records, as in [`super::load`]: the ack is
//! the fake's "interaction prepared → answer received" (here the POST's
//! inline answer), the reply the `PATCH …/messages/@original`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge::clock::SystemClock;
use drawbridge::domain::PortAliases;
use drawbridge::domain::mapping::MappingFile;
use drawbridge::sandbox::{Emulator, Fault, FaultRule, Route};
use drawbridge::store::Store;

use super::app::{DEFAULT_MAPPINGS, SRE_ROLE, app_env};
use super::cluster::{Cluster, estate, post_signed, wait_until_up};
use super::fake_discord::FakeDiscord;
use super::fake_discord::signing::Signer;
use super::load::{LoadConfig, message_text, percentile};

/// A fresh database on the server of `admin_url`, dropped by [`drop_db`].
async fn create_db(admin_url: &str, name: &str) -> String {
    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("the PostgreSQL server answers");
    // One statement each: several would run in one transaction, which
    // neither may.
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::raw_sql(&sql)
            .execute(&mut admin)
            .await
            .expect("a fresh database");
    }
    let mut url = url::Url::parse(admin_url).expect("a PostgreSQL URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

async fn drop_db(admin_url: &str, name: &str) {
    use sqlx::Connection as _;
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

/// The database, fakes and environment of `n` replicas.
struct Setup {
    db: String,
    discord: Arc<FakeDiscord>,
    azure: drawbridge::sandbox::RunningEmulator,
    signer: Signer,
    env: HashMap<String, String>,
}

async fn setup(admin_url: &str, n: usize, vms: usize, extra: &[(&str, String)]) -> Setup {
    let db = format!("drawbridge_load_{}_{n}", std::process::id());
    let url = create_db(admin_url, &db).await;
    let store = Store::open(&url).await.expect("the database opens");
    let mappings = MappingFile::parse(DEFAULT_MAPPINGS, &PortAliases::default()).unwrap();
    store
        .import_mappings(&mappings, "load", chrono::Utc::now())
        .await
        .expect("mappings import");
    store.close().await;
    let discord = Arc::new(FakeDiscord::start().await);
    let azure = Emulator::new(estate(vms), Arc::new(SystemClock))
        .spawn()
        .await
        .expect("the emulator starts");
    let signer = Signer::from_seed([14; 32]);
    let mut env = app_env(&discord, &azure.base_url, &url);
    env.insert("DRAWBRIDGE__DISCORD__MODE".into(), "http".into());
    env.insert(
        "DRAWBRIDGE__DISCORD__PUBLIC_KEY".into(),
        signer.public_key_hex(),
    );
    env.insert("RUST_LOG".into(), "warn".into());
    for (k, v) in extra {
        env.insert(format!("DRAWBRIDGE__{k}"), v.clone());
    }
    Setup {
        db,
        discord,
        azure,
        signer,
        env,
    }
}

/// `config.interactions` `/jit` requests (distinct members and VMs) against
/// `n` replicas; prints and returns the summary.
pub async fn run(config: &LoadConfig, n: usize, admin_url: &str) -> String {
    let vms = config.interactions + config.warmup;
    let timeout = format!("{}s", config.azure_timeout.as_secs().max(1));
    let s = setup(admin_url, n, vms, &[("AZURE__REQUEST_TIMEOUT", timeout)]).await;
    let cluster = Cluster::start(s.env.clone(), n);
    assert!(
        wait_until_up(&cluster, Duration::from_secs(60)).await,
        "the replicas started: {}",
        cluster.log_tails(20)
    );
    let endpoints: Vec<String> = (0..n).map(|i| cluster.endpoint(i)).collect();
    let http = reqwest::Client::new();
    let jit = |i: usize| {
        s.discord
            .slash("jit")
            .string("port", "ssh")
            .string("vm", &format!("web-{i:03}"))
            .string("duration", "1h")
            .string("from", "198.51.100.1")
            .user(40_000_000 + i as u64, &format!("member{i}"))
            .roles([SRE_ROLE])
    };
    for i in 0..config.warmup {
        let sent = post_signed(&s.discord, &http, &endpoints, &s.signer, jit(i)).await;
        s.discord
            .wait_for_interaction_response(sent.id, config.deadline, |m| {
                !message_text(m).is_empty()
            })
            .await;
    }
    if !config.azure_latency.is_zero() {
        s.azure.emulator.inject(
            Route::Initiate,
            FaultRule::always(Fault::Latency {
                millis: config.azure_latency.as_millis() as u64,
            }),
        );
    }
    s.azure.emulator.clear_calls();
    let started = Instant::now();
    let mut posting = tokio::task::JoinSet::new();
    for i in config.warmup..vms {
        if let Some(rate) = config.rate.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64((i - config.warmup) as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let (discord, http, endpoints, signer) = (
            Arc::clone(&s.discord),
            http.clone(),
            endpoints.clone(),
            s.signer.clone(),
        );
        let interaction = jit(i);
        posting.spawn(async move {
            post_signed(&discord, &http, &endpoints, &signer, interaction).await
        });
    }
    let sent = posting.join_all().await;
    let replied = |d: &FakeDiscord| {
        sent.iter()
            .filter(|x| {
                d.interaction_response(x.id)
                    .is_some_and(|m| !message_text(&m).is_empty())
            })
            .count()
    };
    let deadline = Instant::now() + config.deadline;
    while replied(&s.discord) < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tokens: HashMap<&str, ()> = sent.iter().map(|x| (x.token.as_str(), ())).collect();
    let last_reply = s
        .discord
        .calls_to("PATCH", "/webhooks/")
        .into_iter()
        .filter(|c| c.status == 200 && c.path.ends_with("/messages/@original"))
        .filter(|c| tokens.contains_key(c.path.split('/').rev().nth(2).unwrap_or_default()))
        .map(|c| c.received_at)
        .max();
    let first_sent = sent.iter().map(|x| x.sent_at).min().unwrap_or(started);
    let wall = last_reply.map_or(Duration::ZERO, |t| t.saturating_duration_since(first_sent));
    let mut acks: Vec<Duration> = sent
        .iter()
        .filter_map(|x| {
            s.discord
                .callbacks(x.id)
                .iter()
                .find(|c| c.status == 204)
                .map(|c| c.elapsed)
        })
        .collect();
    acks.sort();
    let granted = sent
        .iter()
        .filter(|x| {
            s.discord
                .interaction_response(x.id)
                .is_some_and(|m| message_text(&m).contains("Access granted"))
        })
        .count();
    let arm = s
        .azure
        .emulator
        .calls()
        .iter()
        .filter(|c| c.route != Some(Route::Token))
        .count();
    let summary = format!(
        "replicas {n} (HTTP mode, PostgreSQL): {} interactions, {}; {granted} granted, {} replied\n\
         ack latency:   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} acks)\n\
         throughput:    {:.1} grants/s (first send → last reply {:.2} s)\n\
         ARM requests:  {arm} ({:.2} per grant)\n",
        sent.len(),
        match config.rate {
            Some(r) => format!("sent at {r}/s"),
            None => "sent as one burst".into(),
        },
        replied(&s.discord),
        ms(percentile(&acks, 50.0)),
        ms(percentile(&acks, 99.0)),
        ms(acks.last().copied().unwrap_or_default()),
        acks.len(),
        granted as f64 / wall.as_secs_f64().max(1e-9),
        wall.as_secs_f64(),
        arm as f64 / granted.max(1) as f64,
    );
    drop(cluster);
    drop_db(admin_url, &s.db).await;
    summary
}

/// ARM requests `n` idle replicas make over `period`, with the VM index
/// refreshed and reconciliation run every `every`; by route.
pub async fn arm_idle(n: usize, period: Duration, every: Duration, admin_url: &str) -> String {
    let every_s = format!("{}s", every.as_secs().max(1));
    let s = setup(
        admin_url,
        n,
        20,
        &[
            ("AZURE__INDEX_REFRESH", every_s.clone()),
            ("AZURE__RECONCILE_INTERVAL", every_s),
        ],
    )
    .await;
    let cluster = Cluster::start(s.env.clone(), n);
    assert!(
        wait_until_up(&cluster, Duration::from_secs(60)).await,
        "the replicas started: {}",
        cluster.log_tails(20)
    );
    // Past the start-up listings and the first round of leases.
    tokio::time::sleep(every).await;
    s.azure.emulator.clear_calls();
    tokio::time::sleep(period).await;
    let mut by_route: BTreeMap<String, usize> = BTreeMap::new();
    for call in s.azure.emulator.calls() {
        if call.route != Some(Route::Token) {
            *by_route.entry(format!("{:?}", call.route)).or_default() += 1;
        }
    }
    let total: usize = by_route.values().sum();
    drop(cluster);
    drop_db(admin_url, &s.db).await;
    format!(
        "ARM reads of {n} idle replica(s) over {:.0} s (index refresh and reconciliation every {:?}): \
         {total} ({:.1} a minute) {by_route:?}\n",
        period.as_secs_f64(),
        every,
        total as f64 * 60.0 / period.as_secs_f64(),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
