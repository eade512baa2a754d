//! Attacks on the bot's surface (issue 12, part B), each as an attacker or a
//! careless operator would try it: the ops endpoints from the internet, a
//! replayed signed button, error text from `/readyz`, tokens in the log at
//! any filter, a secret on a broken config line, a token sent in clear, an
//! audit row edited in the database.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use drawbridge::clock::SystemClock;
use drawbridge::domain::mapping::MappingFile;
use drawbridge::domain::{AuditAction, PortAliases};
use drawbridge::sandbox::{Emulator, Estate};
use drawbridge::store::Store;
use serde_json::Value;

use crate::e2e::{initiates, reply_to, ssh_web_01};
use crate::support::app::{
    AUDIT_CHANNEL, DEFAULT_MAPPINGS, SRE_ROLE, TestApp, TestAppBuilder, app_env,
};
use crate::support::fake_discord::FakeDiscord;
use crate::support::fake_discord::signing::Signer;

async fn spawn_http_app() -> (TestApp, Signer, String) {
    let signer = Signer::test();
    let app = TestAppBuilder::default()
        .http_mode(&signer.public_key_hex())
        .start()
        .await;
    let endpoint = app.endpoint.clone().expect("HTTP mode has an endpoint");
    (app, signer, endpoint)
}

/// POSTs a signed `body`; returns the status and the JSON answer.
async fn post_signed(endpoint: &str, body: &[u8], signer: &Signer) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(endpoint)
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in signer.headers(body) {
        request = request.header(name, value);
    }
    let response = request.send().await.expect("the endpoint answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_ops_endpoints_are_not_served_on_the_interactions_port() {
    // Arrange
    let (app, _signer, endpoint) = spawn_http_app().await;
    let public = endpoint.trim_end_matches("/interactions");

    // Act
    let mut answers = Vec::new();
    for path in ["/metrics", "/readyz", "/healthz"] {
        let status = reqwest::get(format!("{public}{path}"))
            .await
            .expect("the endpoint answers")
            .status()
            .as_u16();
        answers.push((path, status));
    }

    // Assert
    assert_eq!(
        answers,
        [("/metrics", 404), ("/readyz", 404), ("/healthz", 404)]
    );
    let metrics = reqwest::get(format!("{}/metrics", app.ops_url))
        .await
        .expect("the ops listener answers");
    assert_eq!(metrics.status(), 200, "the ops listener still serves them");
    app.finish().await;
}

#[tokio::test]
async fn a_replayed_signed_button_runs_once() {
    // Arrange: a grant, and a signed press of its Extend button
    let (app, signer, endpoint) = spawn_http_app().await;
    let d = &app.discord;
    let granted = d.post_interaction(&endpoint, ssh_web_01(d), &signer).await;
    let granted = reply_to(d, granted.sent).await;
    let (_, extend) = granted
        .buttons()
        .into_iter()
        .find(|(label, _)| label == "Extend")
        .expect("an Extend button");
    let press = d.interaction_json(
        d.button(&extend)
            .on_message(granted.message.clone())
            .roles([SRE_ROLE]),
    );
    let body = press.body_bytes();
    let (status, first) = post_signed(&endpoint, &body, &signer).await;
    assert_eq!(status, 200);
    d.record_inline_response(press.id, first.clone());
    let extended = reply_to(d, press.clone()).await;
    assert!(
        extended.title().contains("Access extended"),
        "{}",
        extended.text()
    );

    // Act: the same signed body again, within the 5 minutes it stays valid
    let (replay_status, replay) = post_signed(&endpoint, &body, &signer).await;

    // Assert: answered from the first outcome; nothing ran again
    assert_eq!((replay_status, &replay), (200, &first));
    let edits = |d: &crate::support::fake_discord::FakeDiscord| {
        d.calls_to(
            "PATCH",
            &format!("/webhooks/{}/{}", d.application_id(), press.token),
        )
        .iter()
        .filter(|c| c.status == 200)
        .count()
    };
    assert!(
        !d.wait_until(Duration::from_secs(3), |d| edits(d) > 1).await,
        "the replay ran the button again"
    );
    assert_eq!(initiates(&app).len(), 2, "the grant and one extension");
    app.finish().await;
}

#[tokio::test]
async fn readyz_says_what_is_wrong_in_general_words() {
    // Arrange: a token service that refuses the audience, with its own text
    let audience = "https://arm-gateway.internal.example";
    let app = TestAppBuilder::default()
        .env("AZURE__ARM_AUDIENCE", audience)
        .start()
        .await;

    // Act
    let response = reqwest::get(format!("{}/readyz", app.ops_url))
        .await
        .expect("ops answers");

    // Assert
    assert_eq!(response.status(), 503);
    let body = response.text().await.expect("a body");
    for raw in [audience, "AADSTS", "managed_identity", "http://127.0.0.1"] {
        assert!(!body.contains(raw), "`{raw}` in {body}");
    }
    let ready: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["checks"]["database"], "ok");
    assert!(
        ready["checks"]["azure_token"]
            .as_str()
            .is_some_and(|t| t.contains("azure.arm_audience")),
        "{body}"
    );
    app.finish().await;
}

#[tokio::test]
async fn no_rust_log_brings_interaction_tokens_back() {
    // Arrange: the real binary, everything at trace and serenity's REST
    // client named explicitly (more specific directives win in RUST_LOG)
    let filter = "trace,serenity=trace,serenity::http=trace,serenity::http::client=trace,\
                  serenity::http::request=trace,serenity::http::ratelimiting=trace,\
                  serenity::http::routing=trace";
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
        .import_mappings(&mappings, "test", chrono::Utc::now())
        .await
        .expect("mappings import");
    store.close().await;
    let log_path = dir.path().join("drawbridge.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("run")
        .env_clear()
        .env("RUST_LOG", filter)
        .env("NO_COLOR", "1")
        .envs(app_env(&discord, &azure.base_url, &db))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the drawbridge binary starts");

    // Act: a real interaction, acknowledged and answered over REST
    assert!(discord.wait_until_ready(Duration::from_secs(20)).await);
    let sent = discord.send_interaction(ssh_web_01(&discord)).await;
    let reply = reply_to(&discord, sent).await;
    child.start_kill().expect("stops");
    let _ = child.wait().await;

    // Assert
    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    let text = std::fs::read_to_string(&log_path).expect("the log");
    assert!(
        text.contains("TRACE") && text.contains(&reply.sent.id.to_string()),
        "the log holds the interaction at trace level:\n{text}"
    );
    let leaks: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&reply.sent.token))
        .collect();
    assert!(
        leaks.is_empty(),
        "the interaction token leaked:\n{}",
        leaks.join("\n")
    );
}

#[test]
fn a_secret_on_a_broken_config_line_is_not_echoed() {
    // Arrange: a config file whose third line is broken and holds a secret
    let secret = "hunter2-Q8~client-secret-value";
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    write!(
        file,
        "[azure]\ncloud = \"public\"\nclient_secret = {secret}\n"
    )
    .expect("written");

    // Act
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("check-config")
        .arg("--config")
        .arg(file.path())
        .env_clear()
        .output()
        .expect("runs");

    // Assert
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success());
    assert!(
        !stdout.contains("hunter2") && !stderr.contains("hunter2"),
        "the secret was echoed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("not valid TOML at line 3"),
        "the problem is still located:\n{stderr}"
    );
}

#[test]
fn an_http_arm_endpoint_off_loopback_is_refused() {
    let check = |endpoint: &str| {
        Command::new(env!("CARGO_BIN_EXE_drawbridge"))
            .arg("check-config")
            .env_clear()
            .env("DRAWBRIDGE__AZURE__ARM_ENDPOINT", endpoint)
            .output()
            .expect("runs")
    };

    let clear = check("http://management.azure.example");
    let local = check("http://127.0.0.1:8443");

    let stderr = String::from_utf8_lossy(&clear.stderr);
    assert!(!clear.status.success());
    assert!(
        stderr.contains("azure.arm_endpoint (from the environment)") && stderr.contains("https"),
        "{stderr}"
    );
    let stderr = String::from_utf8_lossy(&local.stderr);
    assert!(
        !stderr.contains("azure.arm_endpoint"),
        "loopback may use http: {stderr}"
    );
}

#[tokio::test]
async fn a_tampered_audit_row_is_detected_at_start_up() {
    // Arrange: someone with write access to the database drops the
    // append-only trigger and edits the first row (the mappings import)
    let app = TestAppBuilder::default()
        .prepare(
            "DROP TRIGGER audit_log_no_update;
             UPDATE audit_log SET actor = 'someone-else' WHERE seq = 1;",
        )
        .start()
        .await;
    let d = &app.discord;

    // Act: the bot verifies the chain as it starts
    let alerted = d
        .wait_until(Duration::from_secs(20), |d| {
            d.channel_messages(AUDIT_CHANNEL)
                .iter()
                .any(|m| m["embeds"][0]["title"] == "Audit chain broken")
        })
        .await;

    // Assert: the alert names the first broken row; every audit message
    // carries its event's whole hash
    assert!(alerted, "{:#?}", d.channel_messages(AUDIT_CHANNEL));
    let log = app
        .store
        .audit_events(&drawbridge::store::AuditFilter::default())
        .await
        .expect("the log");
    let alert = log
        .iter()
        .find(|r| r.event.action == AuditAction::AuditChainBroken)
        .expect("the break is audited");
    assert_eq!(alert.event.detail["first_broken_row"], 1);
    let messages = d.channel_messages(AUDIT_CHANNEL);
    let shown = messages
        .iter()
        .find(|m| m["embeds"][0]["title"] == "Audit chain broken")
        .expect("posted");
    assert!(
        shown.to_string().contains(&alert.hash),
        "the message carries the event's hash: {shown}"
    );
    let started = log
        .iter()
        .find(|r| r.event.action == AuditAction::BotStarted)
        .expect("start-up is audited");
    assert!(started.event.detail["chain_head"]["hash"].is_string());
    assert_eq!(started.event.detail["config"]["discord"]["token_set"], true);
    assert!(!started.event.detail.to_string().contains("fake-token"));
    app.finish().await;
}

#[tokio::test]
async fn an_intact_chain_raises_no_alert() {
    let app = TestAppBuilder::default().start().await;
    let d = &app.discord;

    let started = d
        .wait_until(Duration::from_secs(20), |d| {
            d.channel_messages(AUDIT_CHANNEL)
                .iter()
                .any(|m| m["embeds"][0]["title"] == "Drawbridge started")
        })
        .await;

    assert!(started);
    assert!(
        !d.channel_messages(AUDIT_CHANNEL)
            .iter()
            .any(|m| m["embeds"][0]["title"] == "Audit chain broken")
    );
    app.finish().await;
}

#[tokio::test]
async fn a_metrics_scrape_runs_no_database_query() {
    // Arrange: a running app whose gauges were read once
    let app = TestAppBuilder::default().start().await;
    let metrics = format!("{}/metrics", app.ops_url);
    assert_eq!(reqwest::get(&metrics).await.expect("answers").status(), 200);
    let raw = sqlx::SqlitePool::connect(&app.settings.database.url)
        .await
        .expect("raw connection");

    // Act: the tables behind the gauges disappear, then a flood of scrapes
    sqlx::raw_sql("ALTER TABLE outbox RENAME TO outbox_hidden")
        .execute(&raw)
        .await
        .expect("renamed");
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let response = reqwest::get(&metrics).await.expect("answers");
        statuses.push(response.status().as_u16());
        assert!(
            response
                .text()
                .await
                .expect("a body")
                .contains("drawbridge_outbox_depth"),
        );
    }
    sqlx::raw_sql("ALTER TABLE outbox_hidden RENAME TO outbox")
        .execute(&raw)
        .await
        .expect("renamed back");
    raw.close().await;

    // Assert: every scrape was served from the cached gauges
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    app.finish().await;
}
