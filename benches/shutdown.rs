//! How long the real binary takes to stop: `drawbridge run` as a child
//! process against the fake Discord and the Azure emulator (both in this
//! process), SIGTERM, and the time until it exits, with its exit code.
//!
//! Three cases, each from a fresh process:
//! - idle: nothing in flight;
//! - in flight: 20 `/jit` whose Azure initiates take 2 s each;
//! - Azure hangs: 20 `/jit` whose initiates never answer (the worst case
//!   the docs' bound covers: the interactions' 10 s, then the workers').
//!
//! ```text
//! cargo bench --bench shutdown
//! cargo test --bench shutdown     # the same, with a debug build
//! ```

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge::clock::SystemClock;
use drawbridge::domain::PortAliases;
use drawbridge::domain::mapping::MappingFile;
use drawbridge::sandbox::{Emulator, Estate, Fault, FaultRule, Route};
use drawbridge::store::Store;

/// The integration tests' support modules, shared as they are.
#[path = "../tests/it/support"]
mod support {
    pub mod app;
    pub mod fake_discord;
}

use support::app::{DEFAULT_MAPPINGS, SRE_ROLE, app_env};
use support::fake_discord::FakeDiscord;

#[derive(Clone, Copy, Debug)]
enum Case {
    Idle,
    InFlight,
    AzureHangs,
}

async fn measure(case: Case) -> (Duration, Option<i32>) {
    let discord = FakeDiscord::start().await;
    let azure = Emulator::new(Estate::sample(), Arc::new(SystemClock))
        .spawn()
        .await
        .expect("emulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("drawbridge.db").display());
    let store = Store::open(&db).await.expect("database opens");
    let mappings = MappingFile::parse(DEFAULT_MAPPINGS, &PortAliases::default()).expect("valid");
    store
        .import_mappings(&mappings, "bench", chrono::Utc::now())
        .await
        .expect("import");
    store.close().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("run")
        .env_remove("IDENTITY_ENDPOINT")
        .env_remove("IDENTITY_HEADER")
        .env("DRAWBRIDGE__LOGGING__FILTER", "warn")
        .envs(app_env(&discord, &azure.base_url, &db))
        // The shipped default, not the tests' 5 s: a hung Azure call is then
        // cut by the shutdown's own bounds, the case the docs' figure covers.
        .env("DRAWBRIDGE__AZURE__REQUEST_TIMEOUT", "30s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("drawbridge starts");
    assert!(
        discord.wait_until_ready(Duration::from_secs(30)).await,
        "drawbridge did not get ready"
    );
    let fault = match case {
        Case::Idle => None,
        Case::InFlight => Some(Fault::Latency { millis: 2_000 }),
        Case::AzureHangs => Some(Fault::Hang),
    };
    if let Some(fault) = fault {
        azure
            .emulator
            .inject(Route::Initiate, FaultRule::always(fault));
        for i in 0..20u64 {
            let jit = discord
                .slash("jit")
                .string("port", "ssh")
                .string("vm", &format!("web-0{}", 1 + i % 4))
                .string("duration", "1h")
                .string("from", &format!("203.0.113.{}", 1 + i))
                .user(10_000_000 + i, &format!("member{i}"))
                .roles([SRE_ROLE]);
            discord.send_interaction(jit).await;
        }
        let until = Instant::now() + Duration::from_secs(10);
        while !azure
            .emulator
            .calls()
            .iter()
            .any(|c| c.route == Some(Route::Initiate))
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let sent = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let code = tokio::task::spawn_blocking(move || child.wait().expect("waited").code())
        .await
        .expect("joined");
    (sent.elapsed(), code)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    for case in [Case::Idle, Case::InFlight, Case::AzureHangs] {
        let (took, code) = rt.block_on(measure(case));
        println!(
            "{case:?}: SIGTERM → exit {:.2} s, exit code {}",
            took.as_secs_f64(),
            code.map_or("none (signal)".into(), |c| c.to_string())
        );
    }
}
