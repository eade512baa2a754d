//! The real binary, measured from outside: `drawbridge run` as a child
//! process against the fake Discord and the Azure emulator (both in this
//! process), with N role mappings in its database.
//!
//! Reports, per mapping count: start-up to READY (spawn → the gateway's
//! READY sent) and to the slash commands registered; the child's RSS idle;
//! then a burst of `/jit` interactions (ack latency measured by the fake),
//! the child's own CPU time for it per granted access (from the first send
//! until its audit outbox is drained), and its RSS and peak RSS after it.
//!
//! ```text
//! cargo bench --bench startup
//! cargo bench --bench startup -- --mappings 10000 --interactions 200 --latency-ms 2000 --idle-s 5
//! cargo bench --bench startup -- --mappings 10 --vms 4   # 200 members on 4 VMs (each supersedes the last)
//! cargo bench --bench startup -- --mappings 10 --rate 100 # the 200 sent at 100 a second, not at once
//! ```
//!
//! By default each member asks for their own VM (an estate of as many VMs
//! as interactions), the issue-17 scenario; `--vms N` shares N VMs among
//! them instead.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge::clock::SystemClock;
use drawbridge::domain::mapping::MappingFile;
use drawbridge::sandbox::{Emulator, Fault, FaultRule, Route};
use drawbridge::store::Store;

/// The integration tests' fake Discord, shared as it is.
#[path = "../tests/it/support"]
mod support {
    pub mod fake_discord;
}

use support::fake_discord::FakeDiscord;

/// What the child-process benches share.
#[path = "shared/mod.rs"]
mod shared;

use shared::{FirstMapping, cpu_time, estate, mappings, mib, pct, runtime, status_kib, stop};

const SUB_PROD: &str = "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60";
const AUDIT_CHANNEL: u64 = 7007;
const SRE_ROLE: u64 = 100;

struct Args {
    mappings: Vec<usize>,
    interactions: usize,
    latency: Duration,
    idle: Duration,
    /// The VMs the members share; `None`: one VM each.
    vms: Option<usize>,
    /// The binary to run instead of this build's (an older build, for a
    /// before figure); it also creates and seeds the database.
    bin: Option<String>,
    /// Interactions sent a second; `None`: all at once.
    rate: Option<u64>,
}

fn args() -> Args {
    let mut a = Args {
        mappings: vec![10, 10_000],
        interactions: 200,
        latency: Duration::from_secs(2),
        idle: Duration::from_secs(5),
        vms: None,
        bin: None,
        rate: None,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>| -> u64 {
        v.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!(
                "usage: startup [--mappings N[,N…]] [--interactions N] [--latency-ms MS] [--idle-s S] [--vms N] [--rate PER_S] [--bin PATH]"
            );
            std::process::exit(2)
        })
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mappings" => {
                a.mappings = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|n| num(Some(n.to_string())) as usize)
                    .collect()
            }
            "--interactions" => a.interactions = num(it.next()) as usize,
            "--latency-ms" => a.latency = Duration::from_millis(num(it.next())),
            "--idle-s" => a.idle = Duration::from_secs(num(it.next())),
            "--vms" => a.vms = Some((num(it.next()) as usize).max(1)),
            "--bin" => a.bin = it.next(),
            "--rate" => a.rate = Some(num(it.next()).max(1)),
            _ => {} // `--bench` and other libtest flags
        }
    }
    a
}

/// The name [`estate`] gives its VM `i`.
fn vm_name(i: usize) -> String {
    format!("vm-{i:05}-{}", ["web", "db", "app", "cache"][i % 4])
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn one(n: usize, args: &Args) {
    let discord = FakeDiscord::start().await;
    let vms = args.vms.unwrap_or(args.interactions).max(1);
    let azure = Emulator::new(
        estate(SUB_PROD, vms, vms.div_ceil(50)),
        Arc::new(SystemClock),
    )
    .spawn()
    .await
    .expect("emulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("drawbridge.db").display());

    // A port of its own for the ops endpoints, so `/metrics` (the bot's own
    // ack latency) can be read after the burst.
    let ops_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let env = [
        ("DISCORD__TOKEN", "fake-token".to_string()),
        (
            "DISCORD__APPLICATION_ID",
            discord.application_id().to_string(),
        ),
        ("DISCORD__GUILD_ID", discord.guild_id().to_string()),
        ("DISCORD__BASE_URL", discord.base_url()),
        ("DISCORD__AUDIT_CHANNEL_ID", AUDIT_CHANNEL.to_string()),
        ("DISCORD__ADMIN_ROLE_IDS", "900".to_string()),
        ("AZURE__CLOUD", "public".to_string()),
        ("AZURE__ARM_ENDPOINT", azure.base_url.clone()),
        ("AZURE__AUTHORITY_HOST", "https://login.invalid".to_string()),
        ("AZURE__CREDENTIAL", "managed_identity".to_string()),
        ("AZURE__MANAGED_IDENTITY_ENDPOINT", azure.base_url.clone()),
        ("AZURE__SUBSCRIPTIONS", SUB_PROD.to_string()),
        ("DATABASE__URL", db.clone()),
        // `STARTUP_LOG=sqlx::query=debug` counts the statements, say.
        (
            "LOGGING__FILTER",
            std::env::var("STARTUP_LOG").unwrap_or_else(|_| "warn".to_string()),
        ),
        ("OPS__LISTEN", ops_addr.to_string()),
    ];
    let bin = args
        .bin
        .as_deref()
        .unwrap_or(env!("CARGO_BIN_EXE_drawbridge"));
    let seed = mappings(
        FirstMapping {
            name: "sre-fleet",
            role: SRE_ROLE,
            vms: "vm-*",
        },
        n,
    );
    if args.bin.is_some() {
        // Another build's schema may differ from this one's: it creates
        // and seeds its own database.
        let file = dir.path().join("mappings.toml");
        std::fs::write(&file, MappingFile::render(&seed)).expect("mappings file written");
        let mut import = Command::new(bin);
        import.args(["mappings", "import"]).arg(&file);
        for (k, v) in &env {
            import.env(format!("DRAWBRIDGE__{k}"), v);
        }
        let status = import
            .stdout(Stdio::null())
            .status()
            .expect("the binary runs");
        assert!(status.success(), "{bin} mappings import failed");
    } else {
        let store = Store::open(&db).await.expect("database opens");
        store
            .import_mappings(&seed, "bench", chrono::Utc::now())
            .await
            .expect("mappings import");
        store.close().await;
    }
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .env_remove("IDENTITY_ENDPOINT")
        .env_remove("IDENTITY_HEADER")
        // anyhow captures a backtrace per error when these are set, and a
        // logged error then symbolizes it (tens of MiB, and CPU): not the
        // bot's cost as shipped.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(format!("DRAWBRIDGE__{k}"), v);
    }
    let started = Instant::now();
    let child = cmd.spawn().expect("drawbridge starts");
    let pid = child.id();
    let ready = discord
        .wait_until_ready(Duration::from_secs(30))
        .await
        .then(|| started.elapsed());
    let registered = discord
        .wait_for_call(Duration::from_secs(30), |c| {
            c.method == "PUT" && c.route().ends_with("/commands")
        })
        .await
        .map(|c| c.received_at.saturating_duration_since(started));
    if ready.is_none() {
        eprintln!("{n} mappings: drawbridge did not get ready within 30 s");
        stop(child);
        std::process::exit(1);
    }
    println!(
        "{n} mappings: spawn → gateway READY {}, → commands registered {}",
        ready.map_or("never".into(), ms),
        registered.map_or("never".into(), ms)
    );
    tokio::time::sleep(args.idle).await;
    println!(
        "{n} mappings: idle {:?} after ready: VmRSS {}, VmHWM {}",
        args.idle,
        mib(status_kib(pid, "VmRSS")),
        mib(status_kib(pid, "VmHWM"))
    );

    if args.interactions > 0 {
        azure.emulator.inject(
            Route::Initiate,
            FaultRule::always(Fault::Latency {
                millis: args.latency.as_millis() as u64,
            }),
        );
        azure.emulator.clear_calls();
        let audit_before = discord.channel_message_count(AUDIT_CHANNEL);
        let cpu_before = cpu_time(pid);
        let mut sent = Vec::new();
        let mut pace = args.rate.map(|r| {
            let mut t = tokio::time::interval(Duration::from_secs(1) / r as u32);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            t
        });
        for i in 0..args.interactions {
            if let Some(t) = pace.as_mut() {
                t.tick().await;
            }
            let interaction = discord
                .slash("jit")
                .string("port", "ssh")
                .string("vm", &vm_name(i % vms))
                .string("duration", "1h")
                // One address for all: when VMs are shared, members from
                // different addresses after the first on a VM would be
                // asked first (Azure keeps one window per port) instead of
                // reaching Azure.
                .string("from", "198.51.100.1")
                .user(10_000_000 + i as u64, &format!("member{i}"))
                .roles([SRE_ROLE]);
            sent.push(discord.send_interaction(interaction).await);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let done = |d: &FakeDiscord| {
            sent.iter()
                .filter(|s| {
                    d.interaction_response(s.id).is_some_and(|m| {
                        m["flags"].as_u64().unwrap_or(0) & 128 == 0
                            && (!m["content"].as_str().unwrap_or("").is_empty()
                                || m["embeds"].as_array().is_some_and(|e| !e.is_empty()))
                    })
                })
                .count()
        };
        while done(&discord) < sent.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut acks: Vec<Duration> = sent
            .iter()
            .filter_map(|s| {
                discord
                    .callbacks(s.id)
                    .into_iter()
                    .find(|c| c.status == 204)
                    .map(|c| c.elapsed)
            })
            .collect();
        acks.sort();
        let replies = done(&discord);
        let granted = sent
            .iter()
            .filter(|s| {
                discord
                    .interaction_response(s.id)
                    .is_some_and(|m| m.to_string().contains("Access granted"))
            })
            .count();
        let calls = azure.emulator.calls();
        let arm = calls
            .iter()
            .filter(|c| c.route != Some(Route::Token))
            .count();
        let mut by_route = std::collections::BTreeMap::<String, (usize, usize)>::new();
        for c in calls.iter().filter(|c| c.route != Some(Route::Token)) {
            let entry = by_route.entry(format!("{:?}", c.route)).or_default();
            entry.0 += 1;
            entry.1 += usize::from(c.status == 429);
        }
        let by_route = by_route
            .iter()
            .map(|(route, (n, throttled))| format!("{route} {n} ({throttled} throttled)"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{n} mappings: {} /jit {}, Azure latency {:?}: ack p50 {} p99 {} max {} ({} acks); {replies} replies, {granted} granted; {arm} ARM requests",
            sent.len(),
            args.rate
                .map_or("at once".into(), |r| format!("at {r} a second")),
            args.latency,
            ms(pct(&acks, 50.0)),
            ms(pct(&acks, 99.0)),
            ms(acks.last().copied().unwrap_or_default()),
            acks.len(),
        );
        println!("{n} mappings: ARM requests by operation: {by_route}");
        println!(
            "{n} mappings: the bot's own ack latency (its `interaction_ack_seconds`: dispatch → callback answered), acks at or under: {}",
            bot_acks(ops_addr).await
        );
        // The bot's own CPU for the burst: until its audit outbox is
        // drained (no new audit message for 3 s: the sender paces itself
        // by the channel's rate limit, so messages come in bursts).
        let mut posted = discord.channel_message_count(AUDIT_CHANNEL);
        let mut quiet = Instant::now();
        while quiet.elapsed() < Duration::from_secs(3) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = discord.channel_message_count(AUDIT_CHANNEL);
            if now != posted {
                (posted, quiet) = (now, Instant::now());
            }
        }
        // Includes the 3 quiet seconds, in which the bot idles.
        let cpu = cpu_time(pid).zip(cpu_before).map(|(a, b)| a - b);
        println!(
            "{n} mappings: the bot's CPU for the run {} = {} per granted access ({} audit messages posted)",
            cpu.map_or("n/a".into(), ms),
            cpu.filter(|_| granted > 0)
                .map_or("n/a".into(), |c| ms(c / granted as u32)),
            posted - audit_before
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!(
            "{n} mappings: after the burst: VmRSS {}, VmHWM {}",
            mib(status_kib(pid, "VmRSS")),
            mib(status_kib(pid, "VmHWM"))
        );
    }
    stop(child);
}

/// The bot's command ack histogram from its `/metrics`, as cumulative
/// counts per bucket bound (`5 ms: 180, 10 ms: 199, …`).
async fn bot_acks(ops: std::net::SocketAddr) -> String {
    let body = match reqwest::get(format!("http://{ops}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => return format!("n/a ({e})"),
    };
    let prefix = "drawbridge_interaction_ack_seconds_bucket{";
    body.lines()
        .filter(|l| l.starts_with(prefix) && l.contains("kind=\"command\""))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count = l.rsplit(' ').next()?;
            let bound = match le.parse::<f64>() {
                Ok(s) if s.is_finite() => format!("{} ms", s * 1000.0),
                _ => "all".to_string(),
            };
            Some(format!("{bound}: {count}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let args = args();
    let rt = runtime();
    for &n in &args.mappings {
        rt.block_on(one(n, &args));
    }
}
