//! A large estate, measured from outside: the release `drawbridge run` as a
//! child process against the fake Discord and the Azure emulator (both in
//! this process), the emulator seeded with N VMs in P JIT policies (one
//! resource group per policy), ARM serving `--page-size` items per page.
//!
//! Reports:
//! - spawn → gateway READY, and spawn → the answer to a `/jit` and to an
//!   autocomplete sent right after READY (while the index may still load);
//! - spawn → VM index complete (`/readyz`'s `vm_index`, or READY when the
//!   binary has no such check: it then built the index before connecting);
//! - the child's RSS idle, its peak (VmHWM, reset before each refresh
//!   through `/proc/<pid>/clear_refs`) during each of `--refreshes` index
//!   refreshes, and its RSS after each: flat means no growth;
//! - the ARM requests, by operation, for start-up and per refresh.
//!
//! Then, in this process, the real `Service::complete_vm` over the same
//! estate and `--mappings` role mappings, for a member whose one mapping
//! covers one resource group (1 / P of the VMs): p50 / p99 / max over
//! `--queries` keystrokes.
//!
//! ```text
//! cargo bench --bench scale
//! cargo bench --bench scale -- --vms 5000 --policies 50 --refreshes 3
//! cargo bench --bench scale -- --autocomplete-only
//! cargo bench --bench scale -- --child-only --child-env MALLOC_ARENA_MAX=2
//! cargo bench --bench scale -- --child-only --bin /path/to/older/drawbridge
//! cargo bench --bench scale -- --child-only --vms 5000 --refreshes 0 --refresh-s 20 --reconcile-s 10 --arm-window 60 --arm-grants 30
//! cargo bench --bench scale -- --child-only --wrap "heaptrack -o /tmp/scale"
//! ```
//!
//! `--arm-window S` counts the ARM requests by operation over S seconds
//! idle, then over S seconds with `--arm-grants N` `/jit` spread over them
//! (`--reconcile-s`: the reconciler's interval, 1 h unless given).
//!
//! `--wrap` starts the child under a command (heaptrack, say): RSS and CPU
//! are then read from the binary's own process under it, and it is
//! stopped with SIGTERM so that the wrapper can write its output.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge::clock::SystemClock;
use drawbridge::domain::RoleId;
use drawbridge::sandbox::{Emulator, Route};
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

use shared::{
    FirstMapping, arm_jit, cpu_time, estate, mappings, mib, rg, runtime, service, status_kib, stop,
};

const SUB: &str = "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60";
const AUDIT_CHANNEL: u64 = 7007;
/// The member's role: mapped to resource group `rg-scale-007` only.
const MEMBER_ROLE: u64 = 100;

struct Args {
    vms: usize,
    policies: usize,
    page_size: usize,
    refreshes: usize,
    refresh_every: u64,
    reconcile_every: u64,
    arm_window: u64,
    arm_grants: usize,
    idle: Duration,
    mappings: usize,
    queries: usize,
    /// The binary to run instead of this build's (an older build, for a
    /// before figure).
    bin: Option<String>,
    /// `K=V` set in the child's environment only (`LD_PRELOAD=…`,
    /// `MALLOC_ARENA_MAX=2`), to compare allocators.
    child_env: Vec<(String, String)>,
    /// A command (split at spaces) the child runs under, e.g.
    /// `heaptrack -o /tmp/scale`.
    wrap: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        vms: 50_000,
        policies: 50,
        page_size: 1_000,
        refreshes: 10,
        refresh_every: 10,
        reconcile_every: 3_600,
        arm_window: 0,
        arm_grants: 0,
        idle: Duration::from_secs(5),
        mappings: 1_000,
        queries: 2_000,
        bin: None,
        child_env: Vec::new(),
        wrap: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>| -> usize {
        v.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!(
                "usage: scale [--vms N] [--policies N] [--page-size N] [--refreshes N] [--refresh-s S] [--reconcile-s S] [--arm-window S] [--arm-grants N] [--idle-s S] [--mappings N] [--queries N] [--bin PATH] [--child-env K=V]… [--wrap CMD] [--autocomplete-only] [--child-only]"
            );
            std::process::exit(2)
        })
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--vms" => a.vms = num(it.next()),
            "--policies" => a.policies = num(it.next()).max(1),
            "--page-size" => a.page_size = num(it.next()),
            "--refreshes" => a.refreshes = num(it.next()),
            "--refresh-s" => a.refresh_every = num(it.next()) as u64,
            "--reconcile-s" => a.reconcile_every = num(it.next()) as u64,
            "--arm-window" => a.arm_window = num(it.next()) as u64,
            "--arm-grants" => a.arm_grants = num(it.next()),
            "--idle-s" => a.idle = Duration::from_secs(num(it.next()) as u64),
            "--mappings" => a.mappings = num(it.next()),
            "--queries" => a.queries = num(it.next()),
            "--bin" => a.bin = it.next(),
            "--wrap" => {
                a.wrap = it
                    .next()
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
            }
            "--child-env" => {
                if let Some((k, v)) = it.next().as_deref().and_then(|kv| kv.split_once('=')) {
                    a.child_env.push((k.to_owned(), v.to_owned()));
                }
            }
            _ => {} // `--bench` and other libtest flags
        }
    }
    a
}

/// The member's mapping (their one resource group) and `n - 1` others.
fn member_mappings(n: usize) -> Vec<drawbridge::domain::RoleMapping> {
    let vms = format!("rg:{}", rg(7));
    let first = FirstMapping {
        name: "member",
        role: MEMBER_ROLE,
        vms: &vms,
    };
    mappings(first, n)
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` value 5).
fn reset_peak(pid: u32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        eprintln!("cannot reset the peak RSS: {e}");
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// ARM requests (not tokens) by route since `from` (a call id).
fn arm_calls(emulator: &Emulator, from: u64) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in emulator.calls() {
        if c.id > from && c.route != Some(Route::Token) {
            *out.entry(format!("{:?}", c.route)).or_default() += 1;
        }
    }
    out
}

fn last_call_id(emulator: &Emulator) -> u64 {
    emulator.calls().last().map_or(0, |c| c.id)
}

fn list_policy_calls(emulator: &Emulator) -> usize {
    emulator
        .calls()
        .iter()
        .filter(|c| {
            c.route == Some(Route::ListPolicies)
                && !c.query.as_deref().unwrap_or("").contains("skipToken")
        })
        .count()
}

/// `/readyz`'s `checks.vm_index`, if the binary reports it.
async fn index_state(ops: &str) -> Option<String> {
    let body = reqwest::get(format!("http://{ops}/readyz"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["checks"]["vm_index"].as_str().map(str::to_owned)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn run_child(args: &Args) {
    let t0 = Instant::now();
    let estate = estate(SUB, args.vms, args.policies);
    let discord = FakeDiscord::start().await;
    let azure = Emulator::new(estate, Arc::new(SystemClock))
        .spawn()
        .await
        .expect("emulator starts");
    azure.emulator.set_page_size(args.page_size);
    println!(
        "estate: {} VMs in {} policies, {} per page (seeded in {})",
        args.vms,
        args.policies,
        args.page_size,
        ms(t0.elapsed())
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("drawbridge.db").display());
    let store = Store::open(&db).await.expect("database opens");
    store
        .import_mappings(&member_mappings(10), "bench", chrono::Utc::now())
        .await
        .expect("mappings import");
    store.close().await;
    let ops = format!("127.0.0.1:{}", free_port());
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
        ("AZURE__SUBSCRIPTIONS", SUB.to_string()),
        ("AZURE__INDEX_REFRESH", format!("{}s", args.refresh_every)),
        (
            "AZURE__RECONCILE_INTERVAL",
            format!("{}s", args.reconcile_every),
        ),
        ("DATABASE__URL", db.clone()),
        ("LOGGING__FILTER", "warn".to_string()),
        ("OPS__LISTEN", ops.clone()),
    ];
    let bin = args
        .bin
        .as_deref()
        .unwrap_or(env!("CARGO_BIN_EXE_drawbridge"));
    let mut cmd = match args.wrap.split_first() {
        Some((wrapper, wrapper_args)) => {
            let mut cmd = Command::new(wrapper);
            cmd.args(wrapper_args).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    cmd.envs(args.child_env.iter().map(|(k, v)| (k, v)));
    cmd.arg("run")
        .env_remove("IDENTITY_ENDPOINT")
        .env_remove("IDENTITY_HEADER")
        // As in production: with backtraces on, a logged error's backtrace
        // is symbolized and its debug-info caches (tens of MiB) stay.
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
    if !discord.wait_until_ready(Duration::from_secs(120)).await {
        eprintln!("drawbridge did not get ready within 120 s");
        stop(child);
        std::process::exit(1);
    }
    let pid = if args.wrap.is_empty() {
        child.id()
    } else {
        running_under(child.id(), bin).expect("the binary runs under the wrapper")
    };
    let ready = started.elapsed();
    // A member asks right away, by resource group and name, and types in
    // the VM option.
    // A VM of the member's resource group (policy 7), and a prefix of it.
    let vm = 7 * args.vms.div_ceil(args.policies) + 1;
    let vm_name = format!("vm-{vm:05}-{}", ["web", "db", "app", "cache"][vm % 4]);
    let jit = discord
        .send_interaction(
            discord
                .slash("jit")
                .user(42, "member")
                .roles([MEMBER_ROLE])
                .string("port", "ssh")
                .string("vm", &format!("{}/{vm_name}", rg(7)))
                .string("duration", "1h")
                .string("from", "203.0.113.7"),
        )
        .await;
    let complete = discord
        .send_interaction(
            discord
                .autocomplete("jit")
                .user(42, "member")
                .roles([MEMBER_ROLE])
                .focused("vm", &vm_name[..7]),
        )
        .await;
    let answered = |id| {
        let deadline = Instant::now() + Duration::from_secs(120);
        let discord = &discord;
        async move {
            while Instant::now() < deadline {
                if let Some(m) = discord.interaction_response(id) {
                    let text = m.to_string();
                    if m["flags"].as_u64().unwrap_or(0) & 128 == 0 && text.len() > 20 {
                        return Some((started.elapsed(), text));
                    }
                }
                if let Some(c) = discord
                    .callbacks(id)
                    .into_iter()
                    .find(|c| c.body["type"].as_u64() == Some(8))
                {
                    return Some((started.elapsed(), c.body.to_string()));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        }
    };
    // Both watched at once: the autocomplete's answer is not timed by the
    // /jit's, which waits on Azure.
    let (jit_answer, complete_answer) = tokio::join!(answered(jit.id), answered(complete.id));
    let mut index_done = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        match index_state(&ops).await.as_deref() {
            None => {
                index_done = Some(ready);
                break;
            }
            Some(s) if s.starts_with("ready") => {
                index_done = Some(started.elapsed());
                break;
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let show = |a: &Option<(Duration, String)>| match a {
        Some((t, text)) => format!(
            "{} ({}…)",
            ms(*t),
            text.chars().take(90).collect::<String>()
        ),
        None => "no answer".into(),
    };
    println!("spawn → gateway READY {}", ms(ready));
    println!("spawn → /jit answered {}", show(&jit_answer));
    println!("spawn → autocomplete answered {}", show(&complete_answer));
    println!(
        "spawn → VM index complete {} (the child's CPU until now {})",
        index_done.map_or("never".into(), ms),
        cpu_time(pid).map_or("n/a".into(), ms)
    );
    println!(
        "ARM requests until now: {:?}",
        arm_calls(&azure.emulator, 0)
    );
    tokio::time::sleep(args.idle).await;
    println!(
        "idle {:?} after the index: VmRSS {}, VmHWM (since start) {}",
        args.idle,
        mib(status_kib(pid, "VmRSS")),
        mib(status_kib(pid, "VmHWM"))
    );
    let mut rss = Vec::new();
    for n in 1..=args.refreshes {
        let lists = list_policy_calls(&azure.emulator);
        let from = last_call_id(&azure.emulator);
        let before = status_kib(pid, "VmRSS");
        let cpu_before = cpu_time(pid);
        reset_peak(pid);
        let t = Instant::now();
        while list_policy_calls(&azure.emulator) == lists
            && t.elapsed() < Duration::from_secs(args.refresh_every * 3)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the refresh finish (the calls stop) and settle.
        let mut quiet = 0;
        let mut last = last_call_id(&azure.emulator);
        while quiet < 20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = last_call_id(&azure.emulator);
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
        }
        let after = status_kib(pid, "VmRSS");
        rss.push(after.unwrap_or(0));
        let cpu = cpu_time(pid).zip(cpu_before).map(|(a, b)| a - b);
        println!(
            "refresh {n}: VmRSS before {}, peak during {}, after {}; CPU {}; ARM {:?}",
            mib(before),
            mib(status_kib(pid, "VmHWM")),
            mib(after),
            cpu.map_or("n/a".into(), ms),
            arm_calls(&azure.emulator, from)
        );
    }
    if let (Some(first), Some(last)) = (rss.first(), rss.last()) {
        println!(
            "RSS after refresh 1 → {}: {} → {} ({:+.1} MiB)",
            rss.len(),
            mib(Some(*first)),
            mib(Some(*last)),
            (*last as f64 - *first as f64) / 1024.0
        );
    }
    arm_windows(args, &discord, &azure.emulator).await;
    if args.wrap.is_empty() {
        stop(child);
    } else {
        // The binary itself, so that the wrapper sees it exit and writes
        // its output.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let mut child = child;
        let _ = child.wait();
    }
}

/// The process running `bin` among `pid`'s descendants (a wrapper's child).
fn running_under(pid: u32, bin: &str) -> Option<u32> {
    let want = std::fs::canonicalize(bin).ok()?;
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if std::fs::read_link(format!("/proc/{p}/exe")).ok().as_ref() == Some(&want) {
            return Some(p);
        }
        let children = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"));
        todo.extend(
            children
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    None
}

/// The ARM requests by operation over `--arm-window` seconds idle, then
/// over as long again with `--arm-grants` `/jit` spread over it (each by
/// another member, on another VM of the member's resource group).
async fn arm_windows(args: &Args, discord: &FakeDiscord, emulator: &Emulator) {
    if args.arm_window == 0 {
        return;
    }
    let window = Duration::from_secs(args.arm_window);
    let every = format!(
        "index refresh every {} s, reconciliation every {} s",
        args.refresh_every, args.reconcile_every
    );
    let from = last_call_id(emulator);
    tokio::time::sleep(window).await;
    println!(
        "ARM over {window:?} idle ({every}): {:?}",
        arm_calls(emulator, from)
    );
    if args.arm_grants == 0 {
        return;
    }
    let from = last_call_id(emulator);
    let per = args.vms.div_ceil(args.policies);
    let gap = window / u32::try_from(args.arm_grants).unwrap_or(u32::MAX);
    for i in 0..args.arm_grants {
        let vm = 7 * per + i % per;
        let name = format!(
            "{}/vm-{vm:05}-{}",
            rg(7),
            ["web", "db", "app", "cache"][vm % 4]
        );
        discord
            .send_interaction(
                discord
                    .slash("jit")
                    .user(10_000 + i as u64, "member")
                    .roles([MEMBER_ROLE])
                    .string("port", "ssh")
                    .string("vm", &name)
                    .string("duration", "1h")
                    .string("from", "203.0.113.7"),
            )
            .await;
        tokio::time::sleep(gap).await;
    }
    println!(
        "ARM over {window:?} with {} /jit ({every}): {:?}",
        args.arm_grants,
        arm_calls(emulator, from)
    );
}

/// The real `Service::complete_vm` in this process over the same estate
/// and `--mappings` mappings: the member's one mapping covers one resource
/// group of `--policies`.
async fn autocomplete(args: &Args) {
    let clock: drawbridge::clock::SharedClock = Arc::new(SystemClock);
    let azure = Emulator::new(estate(SUB, args.vms, args.policies), Arc::clone(&clock))
        .spawn()
        .await
        .expect("emulator starts");
    azure.emulator.set_page_size(args.page_size);
    let jit = arm_jit(&azure.base_url, SUB, &clock);
    let vms = jit.refresh().await.expect("the index builds");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("ac.db").display());
    let store = Store::open(&db).await.expect("database opens");
    store
        .import_mappings(&member_mappings(args.mappings), "bench", chrono::Utc::now())
        .await
        .expect("mappings import");
    let service = service(store, jit, clock).await;
    let roles = [RoleId::parse(&MEMBER_ROLE.to_string()).expect("role")];
    // Keystrokes a member types: prefixes of their VMs' names, substrings,
    // and misses.
    let per = args.vms.div_ceil(args.policies);
    let mut queries: Vec<String> = Vec::new();
    for i in 0..args.queries {
        let vm = 7 * per + (i * 7919) % per;
        let name = format!("vm-{vm:05}");
        queries.push(match i % 5 {
            0 => String::new(),
            1 => name[..4 + i % 4].to_owned(),
            2 => name[3..].to_owned(),
            3 => format!("{}", vm % 1000),
            _ => "zzz".to_owned(),
        });
    }
    let mut times = Vec::with_capacity(queries.len());
    let mut first = None;
    for q in &queries {
        let t = Instant::now();
        let choices = service.complete_vm(&roles, q).await;
        let took = t.elapsed();
        first.get_or_insert(took);
        std::hint::black_box(choices);
        times.push(took);
    }
    let cold = first.unwrap_or_default();
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "autocomplete (real complete_vm, {vms} VMs, {} mappings, member sees 1/{}): first {}, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs over {} queries",
        args.mappings,
        args.policies,
        ms(cold),
        p(0.50).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
        times.len()
    );
}

fn main() {
    let args = args();
    let rt = runtime();
    if std::env::args().any(|a| a == "--autocomplete-only") {
        rt.block_on(autocomplete(&args));
        return;
    }
    rt.block_on(run_child(&args));
    if !std::env::args().any(|a| a == "--child-only") {
        rt.block_on(autocomplete(&args));
    }
}
