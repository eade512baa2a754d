//! The load harness: the real app against the fake Discord and the Azure
//! emulator (all in this process), N concurrent `/jit` interactions with the
//! emulator's latency set, optionally with faults.
//!
//! ```text
//! cargo bench --bench load                       # 200 interactions, 2 s Azure latency
//! cargo bench --bench load -- --interactions 500 --latency-ms 2000
//! cargo bench --bench load -- --rate 100         # 200 spread over 2 s: all in flight at once
//! cargo bench --bench load -- --faults all       # azure,token,discord,gateway
//! DRAWBRIDGE_LOAD_INTERACTIONS=50 cargo bench --bench load
//! # N `drawbridge run` processes on PostgreSQL (DRAWBRIDGE_TEST_POSTGRES_URL), HTTP mode:
//! cargo bench --bench load -- --replicas 3 --rate 50
//! cargo bench --bench load -- --replicas 3 --arm-idle 60   # ARM reads of idle replicas
//! ```
//!
//! Exits non-zero when a check fails (a missing reply, a request initiated
//! twice, an audit event lost or duplicated, a broken chain). The peak RSS
//! it reports is that of this whole process: harness, fakes, emulator and app.

use std::time::Duration;

/// The integration tests' support modules, shared as they are.
#[path = "../tests/it/support"]
mod support {
    pub mod app;
    pub mod cluster;
    pub mod cluster_load;
    pub mod fake_discord;
    pub mod load;
    pub mod procfs;
}

use support::load::{AzureFaults, LoadConfig, start_and_run};

fn usage() -> ! {
    eprintln!(
        "usage: load [--interactions N] [--rate PER_SEC] [--warmup N] [--latency-ms MS] [--timeout-s S] \
         [--faults none|all|azure,token,discord,gateway] [--replicas N [--arm-idle SECONDS]]\n\
         env: DRAWBRIDGE_LOAD_INTERACTIONS, DRAWBRIDGE_LOAD_RATE, DRAWBRIDGE_LOAD_WARMUP, DRAWBRIDGE_LOAD_LATENCY_MS, DRAWBRIDGE_LOAD_FAULTS"
    );
    std::process::exit(2)
}

/// `--replicas N` and `--arm-idle SECONDS`, when given.
fn replicas_args() -> (Option<usize>, Option<u64>) {
    let mut replicas = None;
    let mut idle = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "--replicas" | "--arm-idle" => args.next().and_then(|v| v.parse::<u64>().ok()),
            _ => continue,
        };
        let Some(value) = value else { usage() };
        match arg.as_str() {
            "--replicas" => replicas = Some(value.max(1) as usize),
            _ => idle = Some(value.max(1)),
        }
    }
    (replicas, idle)
}

/// The load against N replica processes on PostgreSQL, or their idle ARM
/// reads.
fn main_replicas(config: LoadConfig, n: usize, idle: Option<u64>) {
    let Ok(admin) = std::env::var("DRAWBRIDGE_TEST_POSTGRES_URL") else {
        eprintln!("--replicas needs DRAWBRIDGE_TEST_POSTGRES_URL (a PostgreSQL server)");
        std::process::exit(2)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let summary = match idle {
        Some(secs) => rt.block_on(support::cluster_load::arm_idle(
            n,
            Duration::from_secs(secs),
            Duration::from_secs(10),
            &admin,
        )),
        None => rt.block_on(support::cluster_load::run(&config, n, &admin)),
    };
    print!("{summary}");
}

fn config() -> LoadConfig {
    let mut c = LoadConfig::default();
    let env = |k: &str| std::env::var(k).ok();
    let mut interactions = env("DRAWBRIDGE_LOAD_INTERACTIONS");
    let mut latency = env("DRAWBRIDGE_LOAD_LATENCY_MS");
    let mut rate = env("DRAWBRIDGE_LOAD_RATE");
    let mut warmup = env("DRAWBRIDGE_LOAD_WARMUP");
    let mut timeout = env("DRAWBRIDGE_LOAD_TIMEOUT_S");
    let mut faults = env("DRAWBRIDGE_LOAD_FAULTS");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--interactions" => interactions = args.next(),
            "--latency-ms" => latency = args.next(),
            "--rate" => rate = args.next(),
            "--warmup" => warmup = args.next(),
            "--timeout-s" => timeout = args.next(),
            "--faults" => faults = args.next(),
            "--replicas" | "--arm-idle" => {
                args.next();
            }
            // `cargo bench` passes `--bench`; ignore it and other libtest flags.
            "--bench" => {}
            "-h" | "--help" => usage(),
            other if other.starts_with('-') => {}
            _ => {}
        }
    }
    let number = |v: Option<String>, what: &str| {
        v.map(|v| {
            v.parse::<u64>().unwrap_or_else(|_| {
                eprintln!("{what} must be a number, got {v:?}");
                usage()
            })
        })
    };
    if let Some(n) = number(interactions, "interactions") {
        c.interactions = n.max(1) as usize;
    }
    if let Some(w) = number(warmup, "warmup") {
        c.warmup = w as usize;
    }
    if let Some(r) = number(rate, "rate") {
        c.rate = Some(r as f64);
    }
    if let Some(ms) = number(latency, "latency") {
        c.azure_latency = Duration::from_millis(ms);
    }
    if let Some(ms) = number(timeout, "timeout") {
        c.azure_timeout = Duration::from_secs(ms);
    }
    for f in faults.unwrap_or_default().split(',').map(str::trim) {
        match f {
            "" | "none" => {}
            "all" => {
                c.azure_faults = Some(AzureFaults::default());
                c.token_outage = Some(3);
                c.audit_channel_faults = Some(2);
                c.gateway_faults = true;
            }
            "azure" => c.azure_faults = Some(AzureFaults::default()),
            "token" => c.token_outage = Some(3),
            "discord" => c.audit_channel_faults = Some(2),
            "gateway" => c.gateway_faults = true,
            other => {
                eprintln!("unknown fault {other:?}");
                usage()
            }
        }
    }
    c
}

fn main() {
    let config = config();
    if let (Some(n), idle) = replicas_args() {
        return main_replicas(config, n, idle);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "load: {} concurrent /jit interactions, Azure latency {:?}, faults: azure {} token {} discord {} gateway {}; {} cores",
        config.interactions,
        config.azure_latency,
        config.azure_faults.is_some(),
        config.token_outage.is_some(),
        config.audit_channel_faults.is_some(),
        config.gateway_faults,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let started = std::time::Instant::now();
    let report = rt.block_on(start_and_run(config));
    print!("{}", report.summary());
    if std::env::var_os("DRAWBRIDGE_LOAD_DUMP").is_some() {
        for o in &report.outcomes {
            println!(
                "{} ack {:?} reply {:?} {}",
                o.id, o.ack, o.reply, o.reply_text
            );
        }
    }
    println!("run took {:.1} s", started.elapsed().as_secs_f64());
    if !report.problems.is_empty() {
        std::process::exit(1);
    }
}
