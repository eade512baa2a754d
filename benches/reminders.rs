//! Reminders and expiries at scale: N active grants (SQLite), each with a
//! reminder 10 minutes before its end and an expiry at its end, the ends
//! spread evenly over 3 hours, handled by the real [`Scheduler::tick`].
//!
//! Two passes over the same timeline:
//! - real time at `--speed`× for `--realtime-s` seconds: the clock runs at
//!   `speed` simulated seconds per second and the loop ticks every
//!   `--poll-ms`; a timer's lateness is the wall time from the moment the
//!   clock reached its due time to the end of the tick that handled it
//!   (so it includes up to one poll interval, which the real scheduler,
//!   woken at the due time, does not wait);
//! - then a manual clock, moved in 1 s steps over the rest of the 3 hours
//!   as fast as the timers are handled: throughput, the slowest tick, CPU.
//!
//! Memory: the process's RSS before, during and after, and its peak
//! (VmHWM); the scheduler holds no task per grant, so it must not grow
//! with the timers handled.
//!
//! ```text
//! cargo bench --bench reminders
//! cargo bench --bench reminders -- --grants 100000 --speed 10 --realtime-s 600
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use drawbridge::clock::{ManualClock, SharedClock};
use drawbridge::domain::{
    AccessDuration, GrantEvent, MappingName, PortSpec, RequestId, SourcePrefix, UserId,
};
use drawbridge::sandbox::{Emulator, Estate};
use drawbridge::service::scheduler::Scheduler;
use drawbridge::store::{NewGrant, ScheduleKind, Store};

#[path = "shared/mod.rs"]
mod shared;

use shared::{arm_jit, cpu_time, mib, pct, runtime, service, status_kib};

const SUB: &str = "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60";
/// Grants written per transaction while seeding.
const SEED_BATCH: usize = 1_000;
const SPREAD: TimeDelta = TimeDelta::hours(3);
const REMIND_BEFORE: TimeDelta = TimeDelta::minutes(10);

struct Args {
    grants: usize,
    speed: f64,
    realtime: Duration,
    poll: Duration,
}

fn args() -> Args {
    let mut a = Args {
        grants: 100_000,
        speed: 10.0,
        realtime: Duration::from_secs(600),
        poll: Duration::from_millis(10),
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>| -> f64 {
        v.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("usage: reminders [--grants N] [--speed X] [--realtime-s S] [--poll-ms MS]");
            std::process::exit(2)
        })
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--grants" => a.grants = num(it.next()) as usize,
            "--speed" => a.speed = num(it.next()).max(0.001),
            "--realtime-s" => a.realtime = Duration::from_secs_f64(num(it.next())),
            "--poll-ms" => a.poll = Duration::from_secs_f64(num(it.next()) / 1000.0),
            _ => {} // `--bench` and other libtest flags
        }
    }
    a
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn rss() -> String {
    mib(status_kib("self", "VmRSS"))
}

/// The `i`th of `n` grants' end: spread evenly over [`SPREAD`] after the
/// first reminder is due (the reminder 10 minutes before).
fn end_of(start: DateTime<Utc>, i: usize, n: usize) -> DateTime<Utc> {
    let span = (SPREAD - REMIND_BEFORE).num_milliseconds() as f64;
    start + REMIND_BEFORE + TimeDelta::milliseconds((span * i as f64 / n as f64) as i64)
}

/// `n` active grants with their two timers; returns every due time, sorted.
async fn seed(store: &Store, start: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let mut dues = Vec::with_capacity(2 * n);
    for first in (0..n).step_by(SEED_BATCH) {
        let mut tx = store.begin().await.expect("begin");
        for i in first..(first + SEED_BATCH).min(n) {
            let id = RequestId::parse(&format!("req-{i:06}")).expect("id");
            let end = end_of(start, i, n);
            tx.insert_grant(NewGrant {
                request_id: id.clone(),
                user_id: UserId::parse(&(10_000_000 + i).to_string()).expect("user"),
                guild_id: None,
                channel_id: None,
                vm_id: format!(
                    "/subscriptions/{SUB}/resourceGroups/rg-{}/providers/Microsoft.Compute/virtualMachines/vm-{i:06}",
                    i % 50
                ),
                vm_name: format!("rg-{}/vm-{i:06}", i % 50),
                policy_id: format!(
                    "/subscriptions/{SUB}/resourceGroups/rg-{}/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default",
                    i % 50
                ),
                ports: PortSpec::from_numbers([22]).expect("port"),
                source: SourcePrefix::parse("203.0.113.7").expect("source"),
                duration: AccessDuration::from_minutes(180).expect("duration"),
                reason: None,
                mapping: MappingName::parse("sre-web").expect("mapping"),
                requested_at: start - TimeDelta::minutes(1),
                interaction_token: None,
            })
            .await
            .expect("grant");
            tx.transition_grant(&id, &GrantEvent::Initiated { end }, start)
                .await
                .expect("initiated");
            let remind = end - REMIND_BEFORE;
            tx.schedule(&id, ScheduleKind::Reminder, remind)
                .await
                .expect("reminder");
            tx.schedule(&id, ScheduleKind::Expiry, end)
                .await
                .expect("expiry");
            dues.extend([remind, end]);
        }
        tx.commit().await.expect("commit");
    }
    dues.sort();
    dues
}

async fn run(args: &Args) {
    let start = DateTime::parse_from_rfc3339("2026-11-30T09:00:00Z")
        .expect("time")
        .with_timezone(&Utc);
    let manual = ManualClock::new(start);
    let clock: SharedClock = Arc::new(manual.clone());
    let azure = Emulator::new(Estate::sample(), Arc::clone(&clock))
        .spawn()
        .await
        .expect("emulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("reminders.db").display());
    let store = Store::open(&db).await.expect("database opens");
    let t = Instant::now();
    let dues = seed(&store, start, args.grants).await;
    println!(
        "seeded {} grants with {} timers over {} h in {:.1} s; RSS {}",
        args.grants,
        dues.len(),
        SPREAD.num_hours(),
        t.elapsed().as_secs_f64(),
        rss()
    );
    let jit = arm_jit(&azure.base_url, SUB, &clock);
    let scheduler = Scheduler::new(service(store, jit, Arc::clone(&clock)).await, "bench");
    let rss_before = rss();
    let cpu_before = cpu_time("self");

    // Real time at `speed`×.
    let mut handled = 0;
    let mut lateness = Vec::new();
    let mut slowest_tick = Duration::ZERO;
    let t0 = Instant::now();
    let sim_at = |real: Duration| {
        start + TimeDelta::microseconds((real.as_secs_f64() * args.speed * 1e6) as i64)
    };
    let real_at = |due: DateTime<Utc>| {
        Duration::from_secs_f64(
            ((due - start).num_microseconds().unwrap_or(0) as f64 / 1e6 / args.speed).max(0.0),
        )
    };
    while t0.elapsed() < args.realtime && handled < dues.len() {
        let now = sim_at(t0.elapsed());
        manual.set(now);
        let tick = Instant::now();
        scheduler.tick(now).await.expect("tick");
        slowest_tick = slowest_tick.max(tick.elapsed());
        let done = t0.elapsed();
        while handled < dues.len() && dues[handled] <= now {
            lateness.push(done.saturating_sub(real_at(dues[handled])));
            handled += 1;
        }
        tokio::time::sleep(args.poll).await;
    }
    let sim_reached = sim_at(t0.elapsed());
    lateness.sort();
    let cpu_real = cpu_time("self").zip(cpu_before).map(|(a, b)| a - b);
    println!(
        "real time at {}×, {:.0} s ({} simulated min), ticking every {}: {} timers handled; lateness p50 {} p99 {} max {}; slowest tick {}; CPU {}; RSS {} → {}",
        args.speed,
        t0.elapsed().as_secs_f64(),
        (sim_reached - start).num_minutes(),
        ms(args.poll),
        lateness.len(),
        ms(pct(&lateness, 50.0)),
        ms(pct(&lateness, 99.0)),
        ms(lateness.last().copied().unwrap_or_default()),
        ms(slowest_tick),
        cpu_real.map_or("n/a".into(), ms),
        rss_before,
        rss()
    );

    // A manual clock over the rest, 1 s a step.
    let cpu_before = cpu_time("self");
    let t1 = Instant::now();
    let mut now = sim_reached;
    let end = start + SPREAD + TimeDelta::seconds(1);
    let (mut slowest, mut slowest_at) = (Duration::ZERO, now);
    let mut rest = 0;
    let mut rss_mid = String::new();
    while now < end {
        now += TimeDelta::seconds(1);
        manual.set(now);
        let tick = Instant::now();
        let outcome = scheduler.tick(now).await.expect("tick");
        if tick.elapsed() > slowest {
            (slowest, slowest_at) = (tick.elapsed(), now);
        }
        rest += outcome.reminders + outcome.expiries + outcome.skipped;
        if rss_mid.is_empty() && now >= start + SPREAD / 2 {
            rss_mid = rss();
        }
    }
    let took = t1.elapsed();
    let cpu = cpu_time("self").zip(cpu_before).map(|(a, b)| a - b);
    println!(
        "manual clock, 1 s steps, the remaining {} simulated min: {rest} timers in {:.1} s ({:.0} a second, {} CPU each); slowest tick {} (at +{} min); RSS at 1.5 h {}, at the end {}",
        (end - sim_reached).num_minutes(),
        took.as_secs_f64(),
        rest as f64 / took.as_secs_f64().max(1e-9),
        cpu.filter(|_| rest > 0).map_or("n/a".into(), |c| format!(
            "{:.0} µs",
            c.as_secs_f64() * 1e6 / rest as f64
        )),
        ms(slowest),
        (slowest_at - start).num_minutes(),
        if rss_mid.is_empty() {
            "n/a".into()
        } else {
            rss_mid
        },
        rss()
    );
    println!(
        "all timers handled: {} of {}; peak RSS (VmHWM, whole process) {}",
        handled + rest,
        dues.len(),
        mib(status_kib("self", "VmHWM"))
    );
}

fn main() {
    let args = args();
    let rt = runtime();
    rt.block_on(run(&args));
}
