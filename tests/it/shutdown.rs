//! Graceful shutdown of the real binary: SIGTERM while a request is in
//! flight lets it finish, and the process exits 0. The binary listens on
//! port 0 and logs the address it got.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge::clock::SystemClock;
use drawbridge::domain::PortAliases;
use drawbridge::domain::mapping::MappingFile;
use drawbridge::sandbox::{Emulator, Estate, Fault, FaultRule, Route};
use drawbridge::store::Store;

use crate::support::app::{DEFAULT_MAPPINGS, SRE_ROLE, app_env};
use crate::support::child::wait_for_logged_addr;
use crate::support::fake_discord::FakeDiscord;

#[tokio::test]
async fn sigterm_during_a_request_lets_it_finish_and_exits_0() {
    // Arrange: the fakes, a slow initiate, the mappings, the binary.
    let discord = FakeDiscord::start().await;
    let azure = Emulator::new(Estate::sample(), Arc::new(SystemClock))
        .spawn()
        .await
        .expect("emulator starts");
    azure.emulator.inject(
        Route::Initiate,
        FaultRule::next(1, Fault::Latency { millis: 2_000 }),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("drawbridge.db").display());
    let store = Store::open(&db).await.expect("database opens");
    let mappings = MappingFile::parse(DEFAULT_MAPPINGS, &PortAliases::default()).expect("valid");
    store
        .import_mappings(&mappings, "test", chrono::Utc::now())
        .await
        .expect("import");
    store.close().await;
    let log = dir.path().join("drawbridge.log");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"));
    command
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("IDENTITY_ENDPOINT")
        .env_remove("IDENTITY_HEADER")
        .env("NO_COLOR", "1")
        .envs(app_env(&discord, &azure.base_url, &db))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the binary starts");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let ops = wait_for_logged_addr(
        logs,
        "ops endpoints listening",
        "listen",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        discord.wait_until_ready(Duration::from_secs(20)).await,
        "the bot connected:\n{}",
        logs()
    );
    let health = reqwest::get(format!("http://{ops}/healthz"))
        .await
        .expect("the logged ops address answers");
    assert!(health.status().is_success(), "{health:?}");

    // Act: a /jit, and SIGTERM while Azure is still answering its initiate.
    let sent = discord
        .send_interaction(
            discord
                .slash("jit")
                .string("port", "ssh")
                .string("vm", "web-01")
                .string("duration", "2h")
                .string("from", "203.0.113.7")
                .roles([SRE_ROLE]),
        )
        .await;
    let started = Instant::now();
    loop {
        let in_flight = azure
            .emulator
            .calls()
            .iter()
            .any(|c| c.route == Some(Route::Initiate) && c.status == 0);
        if in_flight {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the initiate never started:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = child.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(killed.success());

    // Assert
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap_or_else(|_| panic!("the bot did not exit within 20 s:\n{}", logs()))
        .expect("waited");
    assert_eq!(status.code(), Some(0), "logs:\n{}", logs());
    let reply = discord
        .wait_for_interaction_response(sent.id, Duration::from_secs(1), |m| {
            m.to_string().contains("Access granted")
        })
        .await;
    assert!(
        reply.is_some(),
        "the reply was edited before exit:\n{}",
        logs()
    );
    let text = logs();
    assert!(text.contains("SIGTERM"), "{text}");
    let initiate = azure
        .emulator
        .initiate_calls()
        .into_iter()
        .next()
        .expect("one initiate");
    assert!(
        initiate.status >= 200 && initiate.status < 300,
        "{initiate:?}"
    );
}
