//! Every credential kind end to end: the real `drawbridge` binary gets its
//! ARM token from the emulator (managed identity, workload identity, client
//! secret, and the Azure CLI through a stand-in `az` on `PATH`), then lists
//! the JIT policies, or grants access.
//!
//! ARM's endpoint is overridden (the emulator's https address, as a proxy or
//! private link would be) while the cloud stays `public`: tokens must still
//! be asked for `https://management.azure.com`, which the emulator records.
//! A wrong `azure.arm_audience` is reported under that key.
//!
//! These run the binary because the credentials read the process
//! environment (`AZURE_FEDERATED_TOKEN_FILE`, `IDENTITY_ENDPOINT`, `PATH`,
//! and `SSL_CERT_FILE` to trust the test CA), which a test must not change in
//! its own process. See: issue 15.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use drawbridge::clock::SystemClock;
use drawbridge::sandbox::{
    DEFAULT_TENANT_ID, Emulator, Estate, Route, RunningEmulator, TokenEndpoint,
};

use crate::e2e::{initiates, interact, ssh_web_01};
use crate::support::app::{
    ADMIN_ROLE, AUDIT_CHANNEL, DEFAULT_MAPPINGS, SRE_ROLE, SUB_PROD, TestAppBuilder, spawn_app,
};
use crate::support::fake_discord::FakeDiscord;
use crate::support::tls::TestCa;

const ARM_AUDIENCE: &str = "https://management.azure.com";
const APP: &str = "5d7e0b1c-2f3a-4b5c-8d9e-0f1a2b3c4d5e";
const SECRET: &str = "it-client-secret-value";
const ISSUER: &str = "https://oidc.aks.example/00000000-0000-0000-0000-000000000000/";
const SUBJECT: &str = "system:serviceaccount:drawbridge:drawbridge";
const IDENTITY_HEADER: &str = "it-identity-header";

/// The emulator over http and https, the CA the binary is told to trust, and
/// a scratch directory (mappings, token file, fake `az`).
struct World {
    azure: RunningEmulator,
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let ca = TestCa::new();
        let azure = Emulator::new(Estate::sample(), Arc::new(SystemClock))
            .spawn_with_tls(ca.server_identity())
            .await
            .expect("emulator starts");
        azure.emulator.set_identity_header(IDENTITY_HEADER);
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("mappings.toml"), DEFAULT_MAPPINGS).expect("mappings");
        World { azure, ca, dir }
    }

    fn https(&self) -> &str {
        self.azure.tls_base_url.as_deref().expect("https")
    }

    fn emulator(&self) -> &Emulator {
        &self.azure.emulator
    }

    /// The process environment shared by every run: public cloud, ARM at the
    /// emulator's https address, the test CA trusted, nothing inherited.
    fn env(&self, credential: &str) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("AZURE__CLOUD", "public"),
            ("AZURE__ARM_ENDPOINT", self.https()),
            ("AZURE__CREDENTIAL", credential),
            ("AZURE__SUBSCRIPTIONS", SUB_PROD),
            ("AZURE__REQUEST_TIMEOUT", "10s"),
        ]
        .into_iter()
        .map(|(k, v)| (format!("DRAWBRIDGE__{k}"), v.to_owned()))
        .collect();
        env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
        env.insert(
            "SSL_CERT_FILE".into(),
            self.ca.ca_file.display().to_string(),
        );
        env.insert(
            "DRAWBRIDGE__DATABASE__URL".into(),
            format!("sqlite://{}", self.dir.path().join("unused.db").display()),
        );
        env
    }

    /// `drawbridge explain` for SSH on web-01, which looks the VM up in Azure.
    async fn explain(&self, env: &HashMap<String, String>) -> Output {
        let mappings = self.dir.path().join("mappings.toml");
        tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
            .args([
                "explain",
                "--roles",
                &SRE_ROLE.to_string(),
                "--vm",
                "web-01",
            ])
            .args(["--port", "ssh", "--duration", "1h", "--json", "--mappings"])
            .arg(&mappings)
            .env_clear()
            .envs(env)
            .output()
            .await
            .expect("the binary runs")
    }

    /// [`World::env`] with a client secret the emulator's Entra knows.
    fn client_secret_env(&self) -> HashMap<String, String> {
        self.emulator().add_client_secret(APP, SECRET);
        let mut env = self.env("client_secret");
        env.insert(
            "DRAWBRIDGE__AZURE__AUTHORITY_HOST".into(),
            self.https().into(),
        );
        env.insert(
            "DRAWBRIDGE__AZURE__TENANT_ID".into(),
            DEFAULT_TENANT_ID.into(),
        );
        env.insert("DRAWBRIDGE__AZURE__CLIENT_ID".into(), APP.into());
        env.insert("DRAWBRIDGE__AZURE__CLIENT_SECRET".into(), SECRET.into());
        env
    }

    /// The emulator listed the policies with a token, and every token was
    /// asked for ARM's audience at `endpoint`.
    fn assert_listed_with_arm_tokens(&self, endpoint: TokenEndpoint, output: &Output) {
        let (stdout, stderr) = text(output);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        let decision: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
        assert_eq!(decision["decision"], "allow", "{stdout}");
        let listed = self
            .emulator()
            .calls()
            .iter()
            .any(|c| c.route == Some(Route::ListPolicies) && c.status == 200);
        assert!(listed, "the policies were listed");
        let log = self.emulator().token_log();
        assert!(!log.is_empty(), "a token was requested");
        for record in &log {
            assert_eq!(record.endpoint, endpoint, "{log:?}");
            assert_eq!(record.resource, ARM_AUDIENCE, "{log:?}");
            assert_eq!(record.status, 200, "{log:?}");
        }
    }

    /// A stand-in `az` logged in as a service principal: like the real CLI
    /// it gets the token from Entra (here the emulator, over https).
    fn fake_az(&self) -> std::path::PathBuf {
        let bin = self.dir.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        let script = FAKE_AZ
            .replace("@AUTHORITY@", self.https())
            .replace("@CA@", &self.ca.ca_file.display().to_string())
            .replace("@CLIENT@", APP)
            .replace("@SECRET@", SECRET);
        let az = bin.join("az");
        std::fs::write(&az, script).expect("az script");
        make_executable(&az);
        bin
    }
}

/// `az account get-access-token -o json --scope S [--tenant T]`, answered
/// from the emulated Entra's v2 endpoint; errors go to stderr as `az` does.
const FAKE_AZ: &str = r#"#!/bin/sh
scope=""
tenant=""
while [ $# -gt 0 ]; do
  case "$1" in
    --scope) scope="$2"; shift 2 ;;
    --tenant) tenant="$2"; shift 2 ;;
    *) shift ;;
  esac
done
if [ -z "$tenant" ]; then echo "ERROR: Please run 'az login' to setup account." >&2; exit 1; fi
response=$(curl -sS --cacert "@CA@" "@AUTHORITY@/$tenant/oauth2/v2.0/token" \
  --data-urlencode "client_id=@CLIENT@" --data-urlencode "client_secret=@SECRET@" \
  --data-urlencode "grant_type=client_credentials" --data-urlencode "scope=$scope") || exit 1
token=$(printf '%s' "$response" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
if [ -z "$token" ]; then
  printf 'ERROR: %s\n' "$(printf '%s' "$response" | sed -n 's/.*"error_description":"\([^"]*\)".*/\1/p')" >&2
  exit 1
fi
expires_in=$(printf '%s' "$response" | sed -n 's/.*"expires_in":\([0-9]*\).*/\1/p')
expires_on=$(( $(date +%s) + expires_in ))
printf '{"accessToken":"%s","expiresOn":"","expires_on":%s,"subscription":"","tenant":"%s","tokenType":"Bearer"}\n' "$token" "$expires_on" "$tenant"
"#;

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(path).expect("metadata").permissions();
    permissions.set_mode(0o755);
    std::fs::set_permissions(path, permissions).expect("chmod");
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn managed_identity_gets_arm_tokens_from_imds_and_app_service() {
    // Arrange: IMDS at the emulator (config), then App Service (environment)
    let world = World::start().await;
    let mut imds = world.env("managed_identity");
    imds.insert(
        "DRAWBRIDGE__AZURE__MANAGED_IDENTITY_ENDPOINT".into(),
        world.azure.base_url.clone(),
    );

    // Act / Assert
    let output = world.explain(&imds).await;
    world.assert_listed_with_arm_tokens(TokenEndpoint::Imds, &output);

    world.emulator().clear_calls();
    let before = world.emulator().token_log().len();
    let mut app_service = world.env("managed_identity");
    app_service.insert(
        "IDENTITY_ENDPOINT".into(),
        format!("{}/msi/token", world.azure.base_url),
    );
    app_service.insert("IDENTITY_HEADER".into(), IDENTITY_HEADER.into());
    let output = world.explain(&app_service).await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let log = world.emulator().token_log();
    let new: Vec<_> = log[before..].iter().collect();
    assert!(!new.is_empty());
    assert!(
        new.iter().all(|r| r.endpoint == TokenEndpoint::AppService
            && r.resource == ARM_AUDIENCE
            && r.status == 200),
        "{new:?}"
    );
}

#[tokio::test]
async fn workload_identity_exchanges_the_federated_token_file() {
    // Arrange: a federated credential, and the token Kubernetes would project
    let world = World::start().await;
    world
        .emulator()
        .add_federated_credential(APP, ISSUER, SUBJECT);
    let assertion =
        world
            .emulator()
            .mint_federated_assertion(ISSUER, SUBJECT, chrono::TimeDelta::hours(1));
    let token_file = world.dir.path().join("azure-identity-token");
    std::fs::write(&token_file, assertion).expect("token file");
    let mut env = world.env("workload_identity");
    env.insert(
        "DRAWBRIDGE__AZURE__AUTHORITY_HOST".into(),
        world.https().into(),
    );
    env.insert(
        "DRAWBRIDGE__AZURE__TENANT_ID".into(),
        DEFAULT_TENANT_ID.into(),
    );
    env.insert("DRAWBRIDGE__AZURE__CLIENT_ID".into(), APP.into());
    env.insert(
        "AZURE_FEDERATED_TOKEN_FILE".into(),
        token_file.display().to_string(),
    );

    // Act
    let output = world.explain(&env).await;

    // Assert
    world.assert_listed_with_arm_tokens(TokenEndpoint::EntraV2, &output);
    assert!(
        world
            .emulator()
            .token_log()
            .iter()
            .all(|r| r.client_id.as_deref() == Some(APP))
    );
}

#[tokio::test]
async fn client_secret_gets_arm_tokens_from_the_v2_endpoint_over_https() {
    // Arrange
    let world = World::start().await;
    let env = world.client_secret_env();

    // Act
    let output = world.explain(&env).await;

    // Assert
    world.assert_listed_with_arm_tokens(TokenEndpoint::EntraV2, &output);
}

/// ARM's lists link their next page over https: with one policy a page,
/// the binary follows every link of the listing to its end.
#[tokio::test]
async fn a_list_of_many_pages_over_https_is_followed_to_its_end() {
    // Arrange
    let world = World::start().await;
    world.emulator().set_page_size(1);
    let env = world.client_secret_env();

    // Act
    let output = world.explain(&env).await;

    // Assert
    world.assert_listed_with_arm_tokens(TokenEndpoint::EntraV2, &output);
    let pages = world
        .emulator()
        .calls()
        .iter()
        .filter(|c| c.route == Some(Route::ListPolicies) && c.status == 200)
        .count();
    assert!(pages > 1, "one page only: {pages}");
}

#[tokio::test]
async fn azure_cli_runs_az_which_gets_arm_tokens_from_entra() {
    // Arrange: `az` on PATH, logged in as a service principal
    let world = World::start().await;
    world.emulator().add_client_secret(APP, SECRET);
    let bin = world.fake_az();
    let mut env = world.env("azure_cli");
    env.insert(
        "DRAWBRIDGE__AZURE__TENANT_ID".into(),
        DEFAULT_TENANT_ID.into(),
    );
    env.insert(
        "PATH".into(),
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );

    // Act
    let output = world.explain(&env).await;

    // Assert
    world.assert_listed_with_arm_tokens(TokenEndpoint::EntraV2, &output);
}

#[tokio::test]
async fn an_audience_the_token_service_does_not_know_names_azure_arm_audience() {
    // Arrange: the issue's case, a managed identity asking for an unknown
    // audience (Azure answers AADSTS500011; azure_identity alone would say
    // "the requested identity has not been assigned to this resource")
    let world = World::start().await;
    world.emulator().add_client_secret(APP, SECRET);
    let unknown = "https://arm-proxy.internal.example";
    let mut managed = world.env("managed_identity");
    managed.insert(
        "DRAWBRIDGE__AZURE__MANAGED_IDENTITY_ENDPOINT".into(),
        world.azure.base_url.clone(),
    );
    let mut secret = world.env("client_secret");
    for (k, v) in [
        ("AUTHORITY_HOST", world.https()),
        ("TENANT_ID", DEFAULT_TENANT_ID),
        ("CLIENT_ID", APP),
        ("CLIENT_SECRET", SECRET),
    ] {
        secret.insert(format!("DRAWBRIDGE__AZURE__{k}"), v.to_owned());
    }

    for mut env in [managed, secret] {
        env.insert("DRAWBRIDGE__AZURE__ARM_AUDIENCE".into(), unknown.into());

        // Act
        let output = world.explain(&env).await;

        // Assert
        let (stdout, stderr) = text(&output);
        assert!(!output.status.success(), "{stdout}");
        assert!(
            stderr.contains("azure.arm_audience")
                && stderr.contains(unknown)
                && stderr.contains("AADSTS500011"),
            "{stderr}"
        );
        assert!(!stderr.contains(SECRET), "{stderr}");
    }
    assert!(
        world
            .emulator()
            .calls()
            .iter()
            .all(|c| c.route != Some(Route::ListPolicies)),
        "no ARM call without a token"
    );
}

#[tokio::test]
async fn a_token_arm_refuses_for_its_audience_names_azure_arm_audience() {
    // Arrange: an audience the tenant knows, but not Resource Manager's
    let world = World::start().await;
    let mut env = world.env("managed_identity");
    env.insert(
        "DRAWBRIDGE__AZURE__MANAGED_IDENTITY_ENDPOINT".into(),
        world.azure.base_url.clone(),
    );
    env.insert(
        "DRAWBRIDGE__AZURE__ARM_AUDIENCE".into(),
        "https://vault.azure.net".into(),
    );

    // Act
    let output = world.explain(&env).await;

    // Assert
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stderr.contains("azure.arm_audience")
            && stderr.contains("InvalidAuthenticationTokenAudience")
            && stderr.contains("https://vault.azure.net"),
        "{stderr}"
    );
    let refused: Vec<u16> = world
        .emulator()
        .calls()
        .iter()
        .filter(|c| c.route == Some(Route::ListPolicies))
        .map(|c| c.status)
        .collect();
    assert_eq!(refused, [401], "refused once, not retried with a new token");
}

#[tokio::test]
async fn the_app_asks_for_arm_tokens_despite_the_endpoint_override_and_grants_access() {
    // Arrange: the test app runs with cloud = public and arm_endpoint at the emulator
    let app = spawn_app().await;

    // Act
    let reply = interact(&app, ssh_web_01(&app.discord)).await;

    // Assert
    assert!(reply.text().contains("Access granted"), "{}", reply.text());
    assert_eq!(initiates(&app).len(), 1);
    let log = app.azure.emulator.token_log();
    assert!(!log.is_empty());
    assert!(
        log.iter()
            .all(|r| r.resource == ARM_AUDIENCE && r.status == 200),
        "{log:?}"
    );
}

#[tokio::test]
async fn the_real_bot_with_a_client_secret_grants_access() {
    // Arrange: `drawbridge run` against the fake Discord, tokens from the
    // v2 endpoint over https
    let world = World::start().await;
    world.emulator().add_client_secret(APP, SECRET);
    let discord = FakeDiscord::start().await;
    let db = format!("sqlite://{}", world.dir.path().join("bot.db").display());
    let store = drawbridge::store::Store::open(&db).await.expect("database");
    let mappings = drawbridge::domain::mapping::MappingFile::parse(
        DEFAULT_MAPPINGS,
        &drawbridge::domain::PortAliases::default(),
    )
    .expect("valid mappings");
    store
        .import_mappings(&mappings, "test", chrono::Utc::now())
        .await
        .expect("import");
    store.close().await;
    let mut env = world.env("client_secret");
    for (k, v) in [
        ("AZURE__AUTHORITY_HOST", world.https().to_owned()),
        ("AZURE__TENANT_ID", DEFAULT_TENANT_ID.to_owned()),
        ("AZURE__CLIENT_ID", APP.to_owned()),
        ("AZURE__CLIENT_SECRET", SECRET.to_owned()),
        ("DATABASE__URL", db),
        ("DISCORD__TOKEN", "fake-token".to_owned()),
        (
            "DISCORD__APPLICATION_ID",
            discord.application_id().to_string(),
        ),
        ("DISCORD__GUILD_ID", discord.guild_id().to_string()),
        ("DISCORD__BASE_URL", discord.base_url()),
        ("DISCORD__AUDIT_CHANNEL_ID", AUDIT_CHANNEL.to_string()),
        ("DISCORD__ADMIN_ROLE_IDS", ADMIN_ROLE.to_string()),
        ("OPS__LISTEN", "127.0.0.1:0".to_owned()),
    ] {
        env.insert(format!("DRAWBRIDGE__{k}"), v);
    }
    let log = world.dir.path().join("bot.log");
    let mut bot = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("run")
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        discord.wait_until_ready(Duration::from_secs(20)).await,
        "the bot connected:\n{}",
        logs()
    );

    // Act
    let sent = discord.send_interaction(ssh_web_01(&discord)).await;
    let reply = discord
        .wait_for_interaction_response(sent.id, Duration::from_secs(20), |m| {
            m.to_string().contains("Access granted")
        })
        .await;

    // Assert
    let _ = bot.kill().await;
    assert!(reply.is_some(), "access was granted:\n{}", logs());
    let initiated = world
        .emulator()
        .initiate_calls()
        .iter()
        .filter(|c| c.status == 202)
        .count();
    assert_eq!(initiated, 1);
    let tokens = world.emulator().token_log();
    assert!(
        tokens.iter().all(|r| r.endpoint == TokenEndpoint::EntraV2
            && r.resource == ARM_AUDIENCE
            && r.status == 200),
        "{tokens:?}"
    );
    assert!(!logs().contains(SECRET), "the secret stays out of the log");
}

#[tokio::test]
async fn check_config_requires_the_audience_of_a_custom_cloud_and_checks_its_form() {
    let run = |extra: &[(&str, &str)]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"));
        command
            .arg("check-config")
            .env_clear()
            .env("DRAWBRIDGE__AZURE__CLOUD", "custom")
            .env(
                "DRAWBRIDGE__AZURE__ARM_ENDPOINT",
                "https://management.local.azurestack.external",
            )
            .env(
                "DRAWBRIDGE__AZURE__AUTHORITY_HOST",
                "https://adfs.local.azurestack.external/adfs",
            );
        for (k, v) in extra {
            command.env(k, v);
        }
        command.output()
    };

    let missing = run(&[]).await.unwrap();
    let scope = run(&[(
        "DRAWBRIDGE__AZURE__ARM_AUDIENCE",
        "https://management.adfs.azurestack.local/4de154de/.default",
    )])
    .await
    .unwrap();

    let (_, stderr) = text(&missing);
    assert!(!missing.status.success());
    assert!(
        stderr.contains("azure.arm_audience (not set): required when azure.cloud is custom"),
        "{stderr}"
    );
    let (_, stderr) = text(&scope);
    assert!(!scope.status.success());
    assert!(
        stderr.contains("azure.arm_audience (from the environment)")
            && stderr.contains("leave out /.default"),
        "{stderr}"
    );
}

#[tokio::test]
async fn readyz_and_the_reply_name_azure_arm_audience_when_the_token_service_refuses_it() {
    // Arrange: the test app with an audience the tenant does not know
    let app = TestAppBuilder::default()
        .env(
            "AZURE__ARM_AUDIENCE",
            "https://arm-gateway.internal.example",
        )
        .start()
        .await;

    // Act
    let reply = interact(&app, ssh_web_01(&app.discord)).await;
    let response = reqwest::get(format!("{}/readyz", app.ops_url))
        .await
        .expect("ops answers");

    // Assert
    assert!(
        reply.text().contains("(azure.arm_audience) is wrong"),
        "{}",
        reply.text()
    );
    assert_eq!(response.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = response.json().await.expect("JSON");
    let token = body["checks"]["azure_token"].as_str().unwrap_or_default();
    assert!(token.contains("azure.arm_audience"), "{body}");
    assert!(
        !token.contains("arm-gateway.internal.example") && !token.contains("AADSTS"),
        "general words only, the details go to the log: {body}"
    );
}
