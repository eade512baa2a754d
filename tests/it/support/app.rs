#![allow(dead_code)] // each test uses part of the harness
//! `spawn_app`: the real application (the same `App::build`, `bind` and
//! `run` as `drawbridge run`) against the fake Discord and the Azure emulator, with a
//! fresh SQLite file. Tests talk to it through the fake Discord and inspect
//! the emulator and the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use drawbridge::app::App;
use drawbridge::clock::{ManualClock, SharedClock, SystemClock};
use drawbridge::config::{Settings, Sources};
use drawbridge::domain::PortAliases;
use drawbridge::domain::mapping::MappingFile;
use drawbridge::sandbox::{Emulator, Estate, Fault, FaultRule, Route, RunningEmulator};
use drawbridge::store::Store;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::fake_discord::FakeDiscord;

/// The production subscription of the sample estate.
pub const SUB_PROD: &str = "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60";
/// The audit channel the app posts to.
pub const AUDIT_CHANNEL: u64 = 7007;
pub const ADMIN_ROLE: u64 = 900;
/// A role mapped to SSH on web-* (see [`DEFAULT_MAPPINGS`]).
pub const SRE_ROLE: u64 = 100;
/// A role with no mapping.
pub const DEV_ROLE: u64 = 200;

/// The mappings a test app starts with.
pub const DEFAULT_MAPPINGS: &str = r#"
[[mapping]]
name = "sre-web"
roles = ["100"]
vms = "web-*"
ports = ["ssh"]
max_duration = "3h"
"#;

pub struct TestAppBuilder {
    discord: super::fake_discord::FakeDiscordBuilder,
    http_mode: Option<String>,
    estate: Option<Estate>,
    clock: Option<SharedClock>,
    mappings: String,
    env: Vec<(String, String)>,
    prepare: Option<String>,
    hold_index_load: bool,
}

/// A running app and the fakes around it.
pub struct TestApp {
    pub discord: FakeDiscord,
    pub azure: RunningEmulator,
    /// The database (opened separately from the app's own pool).
    pub store: Store,
    pub settings: Settings,
    /// The clock (a [`ManualClock`] when the test gave one).
    pub clock: SharedClock,
    /// HTTP mode: the interactions endpoint URL (a listener of its own).
    pub endpoint: Option<String>,
    /// `http://127.0.0.1:PORT` serving `/healthz`, `/readyz`, `/metrics`.
    pub ops_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Default for TestAppBuilder {
    fn default() -> Self {
        Self {
            discord: FakeDiscord::builder(),
            http_mode: None,
            estate: None,
            clock: None,
            mappings: DEFAULT_MAPPINGS.to_string(),
            env: Vec::new(),
            prepare: None,
            hold_index_load: false,
        }
    }
}

impl TestAppBuilder {
    /// Interactions-endpoint mode with this Ed25519 public key (hex).
    pub fn http_mode(mut self, public_key_hex: &str) -> Self {
        self.http_mode = Some(public_key_hex.to_string());
        self
    }

    /// The emulator's estate (the sample estate otherwise).
    pub fn estate(mut self, estate: Estate) -> Self {
        self.estate = Some(estate);
        self
    }

    /// Rate-limits the fake Discord's route buckets (a channel's messages
    /// among them) as Discord does: `count` per `window`.
    pub fn discord_rate_limit(mut self, count: u32, window: Duration) -> Self {
        self.discord = self.discord.rate_limit(count, window);
        self
    }

    /// A manual clock (the emulator uses it too).
    pub fn clock(mut self, clock: ManualClock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The mappings file to import before start.
    pub fn mappings(mut self, toml: &str) -> Self {
        self.mappings = toml.to_string();
        self
    }

    /// SQL run on the database after the mappings import, before the app
    /// starts: a state the app must notice (a tampered row, say).
    pub fn prepare(mut self, sql: &str) -> Self {
        self.prepare = Some(sql.to_string());
        self
    }

    /// Holds the start-up listing of the JIT policies (its first call
    /// hangs until `azure.emulator.release_hangs()`), and starts without
    /// waiting for the VM index: the bot must answer while it loads.
    pub fn hold_index_load(mut self) -> Self {
        self.hold_index_load = true;
        self
    }

    /// An extra `DRAWBRIDGE__…` setting.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        if key == "DISCORD__TOKEN" {
            // The fake Discord accepts only the token the bot is given.
            self.discord = self.discord.bot_token(value);
        }
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// `env` with this builder's mode and extra settings, loaded.
    fn settings(&self, mut env: HashMap<String, String>) -> Settings {
        if let Some(key) = &self.http_mode {
            env.insert("DRAWBRIDGE__DISCORD__MODE".into(), "http".into());
            env.insert("DRAWBRIDGE__DISCORD__PUBLIC_KEY".into(), key.clone());
            env.insert("DRAWBRIDGE__HTTP__LISTEN".into(), "127.0.0.1:0".into());
        }
        for (k, v) in &self.env {
            env.insert(format!("DRAWBRIDGE__{k}"), v.clone());
        }
        Settings::load(&Sources {
            file: None,
            env: Some(env),
        })
        .expect("test settings are valid")
    }

    /// Starts everything and waits until the bot is ready.
    pub async fn start(self) -> TestApp {
        let clock: SharedClock = self.clock.clone().unwrap_or_else(|| Arc::new(SystemClock));
        let discord = self.discord.clone().start().await;
        let estate = self.estate.clone().unwrap_or_else(Estate::sample);
        let azure = Emulator::new(estate, Arc::clone(&clock))
            .spawn()
            .await
            .expect("emulator starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let db = format!("sqlite://{}", dir.path().join("drawbridge.db").display());
        let settings = self.settings(app_env(&discord, &azure.base_url, &db));
        let store = Store::open(&db).await.expect("database opens");
        let mappings = MappingFile::parse(&self.mappings, &PortAliases::default())
            .expect("test mappings are valid");
        store
            .import_mappings(&mappings, "test", clock.now())
            .await
            .expect("mappings import");
        if let Some(sql) = &self.prepare {
            let pool = sqlx::SqlitePool::connect(&db)
                .await
                .expect("raw connection");
            sqlx::raw_sql(sql)
                .execute(&pool)
                .await
                .expect("the prepared SQL runs");
            pool.close().await;
        }
        if self.hold_index_load {
            azure
                .emulator
                .inject(Route::ListPolicies, FaultRule::next(1, Fault::Hang));
        }
        let app = App::build(settings.clone(), Arc::clone(&clock))
            .await
            .expect("app builds");
        if !self.hold_index_load {
            // Tests start from a built index unless they test the loading.
            app.index_load().await;
        }
        let server = app.bind().await.expect("the app binds its listener");
        let ops_url = format!("http://{}", server.ops_addr());
        let endpoint = server
            .interactions_addr()
            .map(|addr| format!("http://{addr}/interactions"));
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        match &endpoint {
            None => assert!(
                discord.wait_until_ready(Duration::from_secs(10)).await,
                "the bot connected to the fake gateway"
            ),
            Some(_) => wait_until_serving(&ops_url).await,
        }
        TestApp {
            discord,
            azure,
            store,
            settings,
            clock,
            endpoint,
            ops_url,
            shutdown: Some(tx),
            handle: Some(handle),
            _dir: dir,
        }
    }
}

/// The `DRAWBRIDGE__…` environment of a test app: the fake Discord, the
/// emulator at `arm_base_url` (ARM and managed identity), the sample
/// estate's production subscription and the database `db_url`. The crash
/// test gives the same variables to the real binary.
pub fn app_env(discord: &FakeDiscord, arm_base_url: &str, db_url: &str) -> HashMap<String, String> {
    [
        ("DISCORD__TOKEN", discord.config().bot_token.clone()),
        (
            "DISCORD__APPLICATION_ID",
            discord.application_id().to_string(),
        ),
        ("DISCORD__GUILD_ID", discord.guild_id().to_string()),
        ("DISCORD__BASE_URL", discord.base_url()),
        ("DISCORD__AUDIT_CHANNEL_ID", AUDIT_CHANNEL.to_string()),
        ("DISCORD__ADMIN_ROLE_IDS", ADMIN_ROLE.to_string()),
        ("AZURE__CLOUD", "public".to_string()),
        ("AZURE__ARM_ENDPOINT", arm_base_url.to_string()),
        ("AZURE__AUTHORITY_HOST", "https://login.invalid".to_string()),
        ("AZURE__CREDENTIAL", "managed_identity".to_string()),
        ("AZURE__MANAGED_IDENTITY_ENDPOINT", arm_base_url.to_string()),
        ("AZURE__SUBSCRIPTIONS", SUB_PROD.to_string()),
        ("AZURE__REQUEST_TIMEOUT", "5s".to_string()),
        ("DATABASE__URL", db_url.to_string()),
        ("OPS__LISTEN", "127.0.0.1:0".to_string()),
        ("OPS__METRICS_REFRESH", "1s".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("DRAWBRIDGE__{k}"), v))
    .collect()
}

pub async fn spawn_app() -> TestApp {
    TestAppBuilder::default().start().await
}

impl TestApp {
    /// Waits until `/readyz` reports the VM index loaded (it loads in the
    /// background after start-up).
    ///
    /// # Panics
    /// When it is not loaded within `timeout`.
    pub async fn wait_for_vm_index(&self, timeout: Duration) {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            if let Ok(answer) = http.get(format!("{}/readyz", self.ops_url)).send().await {
                let body: serde_json::Value = answer.json().await.unwrap_or_default();
                last = body["checks"]["vm_index"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if last.starts_with("ready") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the VM index did not load within {timeout:?}: {last}");
    }

    /// Stops the app and starts it again on the same database, fake
    /// Discord and emulator, as a redeploy does; returns once the new one
    /// is connected (a new IDENTIFY).
    pub async fn restart(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(20), handle)
                .await
                .expect("the app stops within 20 s")
                .expect("the app task did not panic")
                .expect("the app stopped cleanly");
        }
        let identified = self.discord.identifies().len();
        let server = App::build(self.settings.clone(), Arc::clone(&self.clock))
            .await
            .expect("app builds again")
            .bind()
            .await
            .expect("the app binds its listener again");
        self.ops_url = format!("http://{}", server.ops_addr());
        let (tx, rx) = oneshot::channel::<()>();
        self.handle = Some(tokio::spawn(server.run(async {
            let _ = rx.await;
        })));
        self.shutdown = Some(tx);
        assert!(
            self.discord
                .wait_until(Duration::from_secs(10), |d| d.identifies().len()
                    > identified)
                .await,
            "the restarted bot identified"
        );
        assert!(
            self.discord.wait_until_ready(Duration::from_secs(10)).await,
            "the restarted bot is connected"
        );
    }

    /// Sends the shutdown signal and waits for `Server::run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(handle) => tokio::time::timeout(Duration::from_secs(20), handle)
                .await
                .expect("the app stops within 20 s")
                .expect("the app task did not panic"),
            None => Ok(()),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Waits until the endpoint answers `/healthz`: bound is not yet serving.
async fn wait_until_serving(ops_url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..200 {
        let answer = http.get(format!("{ops_url}/healthz")).send().await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the interactions endpoint at {ops_url} did not start serving");
}
