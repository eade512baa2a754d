//! The identity side of the emulator: one Entra tenant with the resources it
//! knows, app registrations (client secrets, federated credentials), the
//! v2 token endpoint `POST /{tenant}/oauth2/v2.0/token` for the client
//! credentials grant, and the audience rules every token endpoint applies.
//!
//! As Entra does, a token endpoint refuses a resource it does not know with
//! AADSTS500011, and ARM refuses a token minted for another audience with 401
//! `InvalidAuthenticationTokenAudience` (see `http.rs`). Entra's error bodies
//! have the documented shape: `error`, `error_description` (starting with the
//! `AADSTS` code), `error_codes`, `timestamp`, `trace_id`, `correlation_id`,
//! `error_uri`.
//!
//! Workload identity: the emulator also plays the cluster's service-account
//! issuer. [`Emulator::mint_federated_assertion`] returns a JWT as Kubernetes
//! would project it into the pod; the v2 endpoint accepts it as a client
//! assertion when it is one the emulator minted (that stands in for Entra's
//! signature check against the issuer's keys), it is within its lifetime, its
//! audience is `api://AzureADTokenExchange`, and its issuer and subject match
//! a federated credential of the client.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::tls::TlsPeer;
use super::{Emulator, Route};

/// The tenant the emulator's directory answers for.
pub const DEFAULT_TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// The ARM audiences accepted unless [`Emulator::set_arm_audience`] says
/// otherwise: the public cloud's, and its legacy identifier.
pub const DEFAULT_ARM_AUDIENCES: [&str; 2] = [
    "https://management.azure.com",
    "https://management.core.windows.net",
];

/// Other resources the tenant knows: a token for them is issued, and ARM
/// refuses it for its audience.
const OTHER_RESOURCES: [&str; 3] = [
    "https://graph.microsoft.com",
    "https://vault.azure.net",
    "https://storage.azure.com",
];

/// The audience a federated assertion must carry.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// The largest token request body read.
const MAX_FORM: usize = 64 * 1024;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Which token endpoint a [`TokenRecord`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TokenEndpoint {
    /// App Service / Container Apps managed identity (`/msi/token`).
    AppService,
    /// The instance metadata service (`/metadata/identity/oauth2/token`).
    Imds,
    /// Entra's v2 endpoint (`/{tenant}/oauth2/v2.0/token`).
    EntraV2,
}

/// One token request as the emulator saw it (secrets are never recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// The endpoint.
    pub endpoint: TokenEndpoint,
    /// The audience asked for: the `resource` parameter, or the v2 `scope`
    /// without `/.default`; empty when none was given.
    pub resource: String,
    /// The client id, when one was sent.
    pub client_id: Option<String>,
    /// The answer's status.
    pub status: u16,
    /// When, by the emulator's clock.
    pub at: DateTime<Utc>,
}

/// An app registration.
#[derive(Default)]
struct App {
    secrets: Vec<String>,
    /// (issuer, subject) pairs.
    federated: Vec<(String, String)>,
}

/// A service-account token the emulator minted.
struct Assertion {
    issuer: String,
    subject: String,
    expires: DateTime<Utc>,
}

/// The tenant: what it knows and what it was asked.
pub(crate) struct Directory {
    tenant_id: String,
    arm_audiences: Vec<String>,
    apps: HashMap<String, App>,
    assertions: HashMap<String, Assertion>,
    pub(crate) log: Vec<TokenRecord>,
}

/// One resource identifier equals another up to a trailing slash and ASCII case.
fn same_identifier(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

impl Directory {
    pub(crate) fn new() -> Self {
        Self {
            tenant_id: DEFAULT_TENANT_ID.to_owned(),
            arm_audiences: DEFAULT_ARM_AUDIENCES.map(str::to_owned).to_vec(),
            apps: HashMap::new(),
            assertions: HashMap::new(),
            log: Vec::new(),
        }
    }

    pub(crate) fn tenant_id(&self) -> &str {
        &self.tenant_id
    }

    pub(crate) fn set_arm_audience(&mut self, audience: String) {
        self.arm_audiences = vec![audience];
    }

    /// The audience tokens are issued for by default.
    pub(crate) fn primary_arm_audience(&self) -> &str {
        self.arm_audiences.first().map_or("", String::as_str)
    }

    pub(crate) fn is_arm_audience(&self, audience: &str) -> bool {
        self.arm_audiences
            .iter()
            .any(|a| same_identifier(a, audience))
    }

    /// ARM's list of accepted audiences, each with and without its slash.
    pub(crate) fn arm_audience_list(&self) -> String {
        self.arm_audiences
            .iter()
            .flat_map(|a| {
                let bare = a.trim_end_matches('/');
                [format!("'{bare}/'"), format!("'{bare}'")]
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether the tenant has a resource principal for `resource`.
    pub(crate) fn knows(&self, resource: &str) -> bool {
        self.is_arm_audience(resource)
            || OTHER_RESOURCES.iter().any(|r| same_identifier(r, resource))
    }

    pub(crate) fn add_client_secret(&mut self, client_id: &str, secret: String) {
        self.app_mut(client_id).secrets.push(secret);
    }

    pub(crate) fn add_federated_credential(
        &mut self,
        client_id: &str,
        issuer: String,
        subject: String,
    ) {
        self.app_mut(client_id).federated.push((issuer, subject));
    }

    fn app_mut(&mut self, client_id: &str) -> &mut App {
        self.apps.entry(client_id.to_ascii_lowercase()).or_default()
    }

    /// A JWT as the cluster would project it: issuer, subject, the token
    /// exchange audience, valid from `now` until `expires`.
    pub(crate) fn mint_assertion(
        &mut self,
        issuer: &str,
        subject: &str,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> String {
        let header = json!({"alg": "RS256", "kid": "drawbridge-emulator", "typ": "JWT"});
        let claims = json!({
            "aud": [TOKEN_EXCHANGE_AUDIENCE],
            "iss": issuer,
            "sub": subject,
            "iat": now.timestamp(),
            "nbf": now.timestamp(),
            "exp": expires.timestamp(),
        });
        let signature: [u8; 64] = rand::random();
        let jwt = [
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature),
        ]
        .join(".");
        self.assertions.insert(
            jwt.clone(),
            Assertion {
                issuer: issuer.to_owned(),
                subject: subject.to_owned(),
                expires,
            },
        );
        jwt
    }
}

/// An Entra error answer.
pub(crate) struct EntraError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

impl EntraError {
    pub(crate) fn new(
        status: StatusCode,
        error: &'static str,
        code: u32,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            code,
            description: description.into(),
        }
    }

    /// AADSTS500011: the tenant has no resource principal for `resource`.
    pub(crate) fn unknown_resource(resource: &str, tenant: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500_011,
            format!(
                "The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
            ),
        )
    }

    pub(crate) fn into_response_at(self, now: DateTime<Utc>) -> Response {
        let trace = uuid::Uuid::new_v4();
        let correlation = uuid::Uuid::new_v4();
        let stamp = now.format("%Y-%m-%d %H:%M:%SZ");
        let description = format!(
            "AADSTS{}: {} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {stamp}",
            self.code, self.description
        );
        let body = json!({
            "error": self.error,
            "error_description": description,
            "error_codes": [self.code],
            "timestamp": stamp.to_string(),
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        (self.status, Json(body)).into_response()
    }
}

/// The request body's parameters (first value of each name).
struct Form(HashMap<String, String>);

impl Form {
    fn parse(headers: &HeaderMap, body: &[u8]) -> Self {
        let is_form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';').next().is_some_and(|t| {
                    t.trim()
                        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                })
            });
        let mut map = HashMap::new();
        if is_form {
            for (k, v) in url::form_urlencoded::parse(body) {
                map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
            }
        }
        Self(map)
    }

    /// A required parameter (AADSTS900144 when missing).
    fn required(&self, name: &str) -> Result<&str, EntraError> {
        self.get(name).ok_or_else(|| {
            EntraError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900_144,
                format!("The request body must contain the following parameter: '{name}'."),
            )
        })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn v2_token(
    State(emulator): State<Emulator>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    let over_tls = request.extensions().get::<ConnectInfo<TlsPeer>>().is_some();
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_FORM)
        .await
        .unwrap_or_default();
    let form = Form::parse(&parts.headers, &body);
    let scope = form.get("scope").unwrap_or_default();
    let resource = scope
        .split_whitespace()
        .next()
        .map(|s| s.strip_suffix("/.default").unwrap_or(s))
        .unwrap_or_default()
        .to_owned();
    let client_id = form.get("client_id").map(str::to_owned);
    let now = emulator.now();
    let response = match over_tls.then_some(()) {
        None => (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": "invalid_request",
                "error_description": "The emulated Entra token endpoint answers over https only, as Entra does.",
            })),
        )
            .into_response(),
        Some(_) => match emulator.client_credentials(&tenant, &form, now).await {
            Ok(response) => response,
            Err(e) => e.into_response_at(now),
        },
    };
    emulator.log_token(TokenRecord {
        endpoint: TokenEndpoint::EntraV2,
        resource,
        client_id,
        status: response.status().as_u16(),
        at: now,
    });
    response
}

impl Emulator {
    /// The client credentials grant, checked in Entra's order: tenant,
    /// parameters, client, its credential, scope, resource; then any fault.
    async fn client_credentials(
        &self,
        tenant: &str,
        form: &Form,
        now: DateTime<Utc>,
    ) -> Result<Response, EntraError> {
        let resource = {
            let state = self.state();
            let dir = &state.directory;
            if !tenant.eq_ignore_ascii_case(dir.tenant_id()) {
                return Err(EntraError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    90_002,
                    format!(
                        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
                    ),
                ));
            }
            let grant = form.required("grant_type")?;
            if grant != "client_credentials" {
                return Err(EntraError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    70_003,
                    format!("The app requested an unsupported grant type '{grant}'."),
                ));
            }
            let client_id = form.required("client_id")?;
            let scope = form.required("scope")?;
            let app = dir.apps.get(&client_id.to_ascii_lowercase()).ok_or_else(|| {
                EntraError::new(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    700_016,
                    format!("Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", dir.tenant_id()),
                )
            })?;
            authenticate_client(dir, app, client_id, form, now)?;
            let resource = default_scope_resource(scope)?;
            if !dir.knows(resource) {
                return Err(EntraError::unknown_resource(resource, dir.tenant_id()));
            }
            resource.to_owned()
        };
        if let Err(e) = self.apply_fault(Route::Token).await {
            return Ok(e.into_response());
        }
        let (token, expires_at) = self.issue_for(&resource);
        let expires_in = (expires_at - now).num_seconds();
        Ok(Json(json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "ext_expires_in": expires_in,
            "access_token": token,
        }))
        .into_response())
    }
}

/// The one resource of a client-credentials scope: `<resource>/.default`.
fn default_scope_resource(scope: &str) -> Result<&str, EntraError> {
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    match scopes.as_slice() {
        [one] if one.ends_with("/.default") && one.len() > "/.default".len() => {
            Ok(&one[..one.len() - "/.default".len()])
        }
        _ => Err(EntraError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1_002_012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        )),
    }
}

/// Entra's 401 `invalid_client`, with its AADSTS code.
fn invalid_client(code: u32, description: String) -> EntraError {
    EntraError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        code,
        description,
    )
}

/// Checks the client secret or the client assertion of `app`.
fn authenticate_client(
    dir: &Directory,
    app: &App,
    client_id: &str,
    form: &Form,
    now: DateTime<Utc>,
) -> Result<(), EntraError> {
    match (form.get("client_secret"), form.get("client_assertion")) {
        (Some(secret), _) => {
            if app.secrets.iter().any(|s| s == secret) {
                Ok(())
            } else {
                Err(invalid_client(7_000_215, format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'.")))
            }
        }
        (None, Some(assertion)) => {
            if form.get("client_assertion_type") != Some(ASSERTION_TYPE) {
                return Err(EntraError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    900_144,
                    "The request body must contain the following parameter: 'client_assertion_type'.",
                ));
            }
            check_assertion(dir, app, assertion, now)
        }
        (None, None) => Err(invalid_client(
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".to_owned(),
        )),
    }
}

/// A federated client assertion: minted here, in its lifetime, for the token
/// exchange audience, from an issuer and subject the app trusts.
fn check_assertion(
    dir: &Directory,
    app: &App,
    assertion: &str,
    now: DateTime<Utc>,
) -> Result<(), EntraError> {
    let claims = decode_claims(assertion).ok_or_else(|| {
        invalid_client(50_027, "JWT token is invalid or is malformed.".to_owned())
    })?;
    let minted = dir.assertions.get(assertion).ok_or_else(|| {
        invalid_client(
            700_027,
            "Client assertion failed signature validation.".to_owned(),
        )
    })?;
    if now >= minted.expires {
        return Err(invalid_client(
            700_024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, expiry time of assertion {}.",
                now.to_rfc3339(),
                minted.expires.to_rfc3339()
            ),
        ));
    }
    let audiences: Vec<&str> = match &claims["aud"] {
        serde_json::Value::String(one) => vec![one.as_str()],
        serde_json::Value::Array(many) => many.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&TOKEN_EXCHANGE_AUDIENCE) {
        return Err(invalid_client(
            700_212,
            format!(
                "No matching federated identity record found for presented assertion audience '{}'.",
                audiences.join(",")
            ),
        ));
    }
    let (issuer, subject) = (&minted.issuer, &minted.subject);
    if !app.federated.iter().any(|(i, _)| i == issuer) {
        return Err(invalid_client(
            700_211,
            format!(
                "No matching federated identity record found for presented assertion issuer '{issuer}'."
            ),
        ));
    }
    if !app
        .federated
        .iter()
        .any(|(i, s)| i == issuer && s == subject)
    {
        return Err(invalid_client(
            70_021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{issuer}'. Assertion Subject: '{subject}'. Assertion Audience: '{TOKEN_EXCHANGE_AUDIENCE}'."
            ),
        ));
    }
    Ok(())
}

/// The claims of a JWT, unverified.
fn decode_claims(jwt: &str) -> Option<serde_json::Value> {
    let mut parts = jwt.split('.');
    let (_, payload, _, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
    if rest.is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_match_up_to_a_trailing_slash_and_case() {
        assert!(same_identifier(
            "https://management.azure.com/",
            "https://Management.Azure.com"
        ));
        assert!(!same_identifier(
            "https://management.azure.com.evil",
            "https://management.azure.com"
        ));
    }

    #[test]
    fn a_default_scope_names_exactly_one_resource() {
        assert_eq!(
            default_scope_resource("https://management.azure.com/.default").ok(),
            Some("https://management.azure.com")
        );
        assert_eq!(
            default_scope_resource("https://management.core.windows.net//.default").ok(),
            Some("https://management.core.windows.net/")
        );
        for bad in [
            "https://management.azure.com/user_impersonation",
            "a/.default b/.default",
            "/.default",
            "",
        ] {
            let e = default_scope_resource(bad).expect_err(bad);
            assert_eq!(e.code, 1_002_012);
        }
    }

    #[test]
    fn minted_assertions_decode_to_their_claims() {
        let mut dir = Directory::new();
        let now = Utc::now();
        let jwt = dir.mint_assertion(
            "https://oidc.example/",
            "system:serviceaccount:ns:sa",
            now,
            now,
        );
        let claims = decode_claims(&jwt).unwrap();
        assert_eq!(claims["sub"], "system:serviceaccount:ns:sa");
        assert_eq!(claims["aud"][0], TOKEN_EXCHANGE_AUDIENCE);
        assert!(decode_claims("a.b").is_none());
    }
}
