//! Graceful shutdown of the real binary: SIGTERM while a request is in
//! flight lets it finish, and the process exits 0.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drawbridge::clock::SystemClock;
use drawbridge::domain::PortAliases;
use drawbridge::domain::mapping::MappingFile;
use drawbridge::sandbox::{Emulator, Estate, Fault, FaultRule, Route};
use drawbridge::store::Store;

use crate::support::app::{ADMIN_ROLE, AUDIT_CHANNEL, DEFAULT_MAPPINGS, SRE_ROLE, SUB_PROD};
use crate::support::fake_discord::FakeDiscord;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

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
    let env = [
        ("DISCORD__TOKEN", "fake-token".to_string()),
        (
            "DISCORD__APPLICATION_ID",
            discord.application_id().to_string(),
        ),
        ("DISCORD__GUILD_ID", discord.guild_id().to_string()),
        ("DISCORD__BASE_URL", discord.base_url()),
        ("DISCORD__AUDIT_CHANNEL_ID", AUDIT_CHANNEL.to_string()),
        ("DISCORD__ADMIN_ROLE_IDS", ADMIN_ROLE.to_string()),
        ("AZURE__CLOUD", "custom".to_string()),
        ("AZURE__ARM_ENDPOINT", azure.base_url.clone()),
        ("AZURE__AUTHORITY_HOST", "https://login.invalid".to_string()),
        ("AZURE__CREDENTIAL", "managed_identity".to_string()),
        ("AZURE__MANAGED_IDENTITY_ENDPOINT", azure.base_url.clone()),
        ("AZURE__SUBSCRIPTIONS", SUB_PROD.to_string()),
        ("DATABASE__URL", db.clone()),
        ("OPS__LISTEN", format!("127.0.0.1:{}", free_port())),
    ];
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"));
    command
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("IDENTITY_ENDPOINT")
        .env_remove("IDENTITY_HEADER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(format!("DRAWBRIDGE__{k}"), v);
    }
    let mut child = command.spawn().expect("the binary starts");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        discord.wait_until_ready(Duration::from_secs(20)).await,
        "the bot connected:\n{}",
        logs()
    );

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
