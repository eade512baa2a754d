//! The emulator's token side, as Entra and ARM behave: unknown audiences
//! are refused with AADSTS500011 at every token endpoint, ARM refuses a
//! token minted for another audience, and Entra's v2 endpoint serves the
//! client-credentials grant (client secret, federated assertion) over https
//! only. See: issue 15.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use drawbridge::clock::{ManualClock, SharedClock};
use drawbridge::sandbox::{DEFAULT_TENANT_ID, Emulator, Estate, RunningEmulator, TokenEndpoint};
use reqwest::StatusCode;
use serde_json::Value;

use crate::support::tls::TestCa;

const SUB: &str = "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60";
const APP: &str = "0b6e7c2a-54f1-4c39-9d0e-6f7a8b9c0d1e";
const ISSUER: &str = "https://oidc.aks.example/tenant/cluster/";
const SUBJECT: &str = "system:serviceaccount:drawbridge:drawbridge";

struct Azure {
    running: RunningEmulator,
    clock: ManualClock,
    /// Trusts the test CA only.
    https: reqwest::Client,
    _ca: TestCa,
}

impl Azure {
    async fn start() -> Azure {
        let clock = ManualClock::new(Utc::now());
        let shared: SharedClock = Arc::new(clock.clone());
        let ca = TestCa::new();
        let running = Emulator::new(Estate::sample(), shared)
            .spawn_with_tls(ca.server_identity())
            .await
            .expect("emulator starts");
        running.emulator.set_identity_header("it-header");
        Azure {
            running,
            clock,
            https: ca.client(),
            _ca: ca,
        }
    }

    fn emulator(&self) -> &Emulator {
        &self.running.emulator
    }

    fn tls(&self) -> &str {
        self.running.tls_base_url.as_deref().expect("https")
    }

    async fn imds(&self, resource: &str) -> (StatusCode, Value) {
        let url = format!("{}/metadata/identity/oauth2/token", self.running.base_url);
        let response = reqwest::Client::new()
            .get(url)
            .query(&[("api-version", "2019-08-01"), ("resource", resource)])
            .header("Metadata", "true")
            .send()
            .await
            .unwrap();
        read(response).await
    }

    async fn app_service(&self, resource: &str) -> (StatusCode, Value) {
        let url = format!("{}/msi/token", self.running.base_url);
        let response = reqwest::Client::new()
            .get(url)
            .query(&[("api-version", "2019-08-01"), ("resource", resource)])
            .header("x-identity-header", "it-header")
            .send()
            .await
            .unwrap();
        read(response).await
    }

    async fn v2(&self, base: &str, tenant: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = self
            .https
            .post(format!("{base}/{tenant}/oauth2/v2.0/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        read(response).await
    }

    async fn secret_grant(&self, secret: &str, scope: &str) -> (StatusCode, Value) {
        self.v2(
            self.tls(),
            DEFAULT_TENANT_ID,
            &[
                ("client_id", APP),
                ("client_secret", secret),
                ("grant_type", "client_credentials"),
                ("scope", scope),
            ],
        )
        .await
    }

    async fn assertion_grant(&self, assertion: &str) -> (StatusCode, Value) {
        self.v2(
            self.tls(),
            DEFAULT_TENANT_ID,
            &[
                ("client_assertion", assertion),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_id", APP),
                ("grant_type", "client_credentials"),
                ("scope", "https://management.azure.com/.default"),
            ],
        )
        .await
    }

    /// Lists the policies of the sample subscription with `token` (over http).
    async fn list_with(&self, token: &str) -> (StatusCode, Value) {
        let url = format!(
            "{}/subscriptions/{SUB}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01",
            self.running.base_url
        );
        let response = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        read(response).await
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

fn token(body: &Value) -> &str {
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {body}"))
}

/// An Entra error body: `error`, the AADSTS code first in the description,
/// `error_codes`, trace and correlation ids, timestamp, error URI.
fn assert_entra_error(body: &Value, error: &str, code: u32) {
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], serde_json::json!([code]), "{body}");
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{body}"
    );
    for key in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(body[key].is_string(), "{key} missing from {body}");
    }
}

#[tokio::test]
async fn every_token_endpoint_refuses_an_unknown_audience_with_aadsts500011() {
    // Arrange
    let azure = Azure::start().await;
    azure.emulator().add_client_secret(APP, "s3cret");
    let unknown = "http://127.0.0.1:8080";

    // Act
    let imds = azure.imds(unknown).await;
    let app_service = azure.app_service(unknown).await;
    let v2 = azure
        .secret_grant("s3cret", &format!("{unknown}/.default"))
        .await;

    // Assert
    for (status, body) in [&imds, &app_service, &v2] {
        assert_eq!(*status, StatusCode::BAD_REQUEST, "{body}");
        assert_entra_error(body, "invalid_resource", 500_011);
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.contains(&format!(
                "The resource principal named {unknown} was not found in the tenant named {DEFAULT_TENANT_ID}"
            )),
            "{description}"
        );
    }
    let log = azure.emulator().token_log();
    let seen: Vec<(TokenEndpoint, &str, u16)> = log
        .iter()
        .map(|r| (r.endpoint, r.resource.as_str(), r.status))
        .collect();
    assert_eq!(
        seen,
        [
            (TokenEndpoint::Imds, unknown, 400),
            (TokenEndpoint::AppService, unknown, 400),
            (TokenEndpoint::EntraV2, unknown, 400),
        ]
    );
}

#[tokio::test]
async fn arm_refuses_a_token_minted_for_another_audience() {
    // Arrange: a token for a resource the tenant knows, but not ARM
    let azure = Azure::start().await;
    let (status, graph) = azure.imds("https://graph.microsoft.com").await;
    assert_eq!(status, StatusCode::OK, "{graph}");

    // Act
    let (status, body) = azure.list_with(token(&graph)).await;

    // Assert
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "InvalidAuthenticationTokenAudience");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("wrong audience or resource 'https://graph.microsoft.com'")
            && message.contains("'https://management.azure.com/'"),
        "{message}"
    );
    // Both spellings of the public cloud's ARM audience are accepted.
    for audience in [
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://management.core.windows.net/",
    ] {
        let (status, arm) = azure.app_service(audience).await;
        assert_eq!(status, StatusCode::OK, "{arm}");
        assert_eq!(
            azure.list_with(token(&arm)).await.0,
            StatusCode::OK,
            "{audience}"
        );
    }
}

#[tokio::test]
async fn another_clouds_audience_replaces_the_public_one() {
    // Arrange
    let azure = Azure::start().await;
    let (_, public) = azure.imds("https://management.azure.com").await;
    azure
        .emulator()
        .set_arm_audience("https://management.usgovcloudapi.net");

    // Act
    let old_token = azure.list_with(token(&public)).await;
    let refused = azure.imds("https://management.azure.com").await;
    let (status, usgov) = azure.imds("https://management.usgovcloudapi.net").await;

    // Assert
    assert_eq!(old_token.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        old_token.1["error"]["code"],
        "InvalidAuthenticationTokenAudience"
    );
    assert_entra_error(&refused.1, "invalid_resource", 500_011);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(azure.list_with(token(&usgov)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_v2_endpoint_grants_a_client_secret_over_https_only() {
    // Arrange
    let azure = Azure::start().await;
    azure.emulator().add_client_secret(APP, "s3cret");
    let scope = "https://management.azure.com/.default";

    // Act: over http, then over https
    let plain = azure
        .v2(
            &azure.running.base_url,
            DEFAULT_TENANT_ID,
            &[
                ("client_id", APP),
                ("client_secret", "s3cret"),
                ("grant_type", "client_credentials"),
                ("scope", scope),
            ],
        )
        .await;
    let (status, body) = azure.secret_grant("s3cret", scope).await;

    // Assert
    assert_eq!(plain.0, StatusCode::BAD_REQUEST);
    assert!(
        plain.1["error_description"]
            .as_str()
            .unwrap()
            .contains("https only")
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(azure.list_with(token(&body)).await.0, StatusCode::OK);
    let last = azure.emulator().token_log().pop().unwrap();
    assert_eq!(
        (
            last.endpoint,
            last.resource.as_str(),
            last.client_id.as_deref(),
            last.status
        ),
        (
            TokenEndpoint::EntraV2,
            "https://management.azure.com",
            Some(APP),
            200
        )
    );
    let log = format!("{:?}", azure.emulator().token_log());
    assert!(!log.contains("s3cret"), "{log}");
}

/// What is wrong, the tenant, the form, and Entra's status, error and code.
type Refusal = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    StatusCode,
    &'static str,
    u32,
);

#[tokio::test]
async fn the_v2_endpoint_refuses_what_entra_refuses() {
    let azure = Azure::start().await;
    azure.emulator().add_client_secret(APP, "s3cret");
    let arm = "https://management.azure.com/.default";
    let form = |secret: &'static str, grant: &'static str, scope: &'static str| {
        vec![
            ("client_id", APP),
            ("client_secret", secret),
            ("grant_type", grant),
            ("scope", scope),
        ]
    };
    let cases: Vec<Refusal> = vec![
        (
            "a wrong secret",
            DEFAULT_TENANT_ID,
            form("guess", "client_credentials", arm),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_215,
        ),
        (
            "another tenant",
            "00000000-0000-0000-0000-000000000001",
            form("s3cret", "client_credentials", arm),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90_002,
        ),
        (
            "a user grant",
            DEFAULT_TENANT_ID,
            form("s3cret", "password", arm),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70_003,
        ),
        (
            "a delegated scope",
            DEFAULT_TENANT_ID,
            form(
                "s3cret",
                "client_credentials",
                "https://management.azure.com/user_impersonation",
            ),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1_002_012,
        ),
        (
            "no scope",
            DEFAULT_TENANT_ID,
            vec![
                ("client_id", APP),
                ("client_secret", "s3cret"),
                ("grant_type", "client_credentials"),
            ],
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900_144,
        ),
        (
            "no credential",
            DEFAULT_TENANT_ID,
            vec![
                ("client_id", APP),
                ("grant_type", "client_credentials"),
                ("scope", arm),
            ],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_218,
        ),
        (
            "an unknown app",
            DEFAULT_TENANT_ID,
            vec![
                ("client_id", "11111111-2222-3333-4444-555555555555"),
                ("client_secret", "s3cret"),
                ("grant_type", "client_credentials"),
                ("scope", arm),
            ],
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700_016,
        ),
    ];
    for (what, tenant, form, status, error, code) in cases {
        let (got, body) = azure.v2(azure.tls(), tenant, &form).await;
        assert_eq!(got, status, "{what}: {body}");
        assert_entra_error(&body, error, code);
    }
    assert!(
        azure.emulator().token_log().iter().all(|r| r.status != 200),
        "nothing was issued"
    );
}

#[tokio::test]
async fn a_federated_assertion_is_exchanged_only_when_the_app_trusts_it() {
    // Arrange
    let azure = Azure::start().await;
    let emulator = azure.emulator();
    emulator.add_federated_credential(APP, ISSUER, SUBJECT);
    let hour = TimeDelta::hours(1);
    let good = emulator.mint_federated_assertion(ISSUER, SUBJECT, hour);
    let other_subject =
        emulator.mint_federated_assertion(ISSUER, "system:serviceaccount:other:sa", hour);
    let other_issuer =
        emulator.mint_federated_assertion("https://elsewhere.example/", SUBJECT, hour);
    let forged = {
        // The same claims with another signature: not what the issuer signed.
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[2] = "c2lnbmF0dXJl";
        parts.join(".")
    };

    // Act / Assert
    let (status, body) = azure.assertion_grant(&good).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(azure.list_with(token(&body)).await.0, StatusCode::OK);
    for (assertion, code) in [
        (other_subject.as_str(), 70_021),
        (other_issuer.as_str(), 700_211),
        (forged.as_str(), 700_027),
        ("not-a-jwt", 50_027),
    ] {
        let (status, body) = azure.assertion_grant(assertion).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_entra_error(&body, "invalid_client", code);
    }
    azure.clock.advance(hour + TimeDelta::seconds(1));
    let (status, body) = azure.assertion_grant(&good).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_entra_error(&body, "invalid_client", 700_024);
}

#[tokio::test]
async fn emulate_azure_takes_the_audience_its_arm_accepts() {
    // Arrange
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["emulate-azure", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--arm-audience", "https://management.usgovcloudapi.net"])
        .env_clear()
        .env("IDENTITY_HEADER", "it-header")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let token = |resource: &'static str| {
        http.get(format!("http://127.0.0.1:{port}/msi/token"))
            .query(&[("api-version", "2019-08-01"), ("resource", resource)])
            .header("x-identity-header", "it-header")
            .send()
    };
    let mut up = false;
    for _ in 0..100 {
        if token("https://management.usgovcloudapi.net").await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(up, "the emulator came up");

    // Act
    let (public, body) = read(token("https://management.azure.com").await.unwrap()).await;
    let (usgov, _) = read(token("https://management.usgovcloudapi.net").await.unwrap()).await;

    // Assert
    let _ = child.kill().await;
    assert_eq!(public, StatusCode::BAD_REQUEST);
    assert_entra_error(&body, "invalid_resource", 500_011);
    assert_eq!(usgov, StatusCode::OK);
}
