//! ARM tokens from `azure_identity` 1.0.0, behind a small seam ([`TokenSource`]).
//!
//! One [`AzureTokenSource`] lives for the whole process: azure_identity caches
//! the token per credential instance and refreshes it five minutes before it
//! expires. The instance is replaced only when the token it hands out is already
//! expired by Drawbridge's own [`Clock`](crate::clock::Clock), or when ARM
//! refuses it ([`TokenSource::reject`]): azure_identity 1.0.0 has no way to
//! clear its cache, so a fresh instance is the only way to force a new token.
//!
//! # Managed identity endpoints
//!
//! azure_identity chooses the managed identity source from the environment:
//!
//! * `IDENTITY_ENDPOINT` **and** `IDENTITY_HEADER` set (App Service, Container
//!   Apps, or any local stand-in): tokens come from `IDENTITY_ENDPOINT` (plain
//!   http allowed), with the header `x-identity-header: $IDENTITY_HEADER`. This
//!   needs no Drawbridge configuration at all.
//! * otherwise IMDS at the hard-coded `http://169.254.169.254/metadata/identity/oauth2/token`.
//!   Setting [`CredentialOptions::managed_identity_endpoint`] sends those IMDS
//!   requests to another URL instead, without touching the process environment:
//!   a transport rewrites the IMDS origin (and the path too, when the configured
//!   URL has one). For IMDS azure_identity forces its own retry policy (6 retries,
//!   at most 72 s); [`CredentialOptions::timeout`] bounds the wait regardless.

use std::{fmt, path::PathBuf, sync::Arc, sync::RwLock, time::Duration};

use async_trait::async_trait;
use azure_core::{
    cloud::{CloudConfiguration, CustomConfiguration},
    credentials::{Secret, TokenCredential},
    http::{
        AsyncRawResponse, ClientOptions, ExponentialRetryOptions, HttpClient, Request,
        RetryOptions, Transport,
    },
};
use azure_identity::{
    AzureCliCredential, AzureCliCredentialOptions, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions, ManagedIdentityCredential,
    ManagedIdentityCredentialOptions, UserAssignedId, WorkloadIdentityCredential,
    WorkloadIdentityCredentialOptions,
};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::clock::SharedClock;

/// A bearer token for ARM. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct Bearer {
    token: SecretString,
    expires_on: DateTime<Utc>,
    /// Which credential instance issued it (see [`TokenSource::reject`]).
    generation: u64,
}

impl Bearer {
    /// Wraps a token.
    pub fn new(token: SecretString, expires_on: DateTime<Utc>) -> Self {
        Self {
            token,
            expires_on,
            generation: 0,
        }
    }

    /// The token, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        self.token.expose_secret()
    }

    /// When the token expires.
    pub fn expires_on(&self) -> DateTime<Utc> {
        self.expires_on
    }
}

impl Bearer {
    /// Who the token names: its `oid` (the principal's object id) and its
    /// `appid` / `azp` (the application), read from the JWT's claims
    /// without checking the signature (it is our own token, straight from
    /// the token service; ARM checks it). Azure records one of these as
    /// `requestor` on our initiates. Empty for a token that is not a JWT.
    pub fn identities(&self) -> Vec<String> {
        token_identities(self.expose())
    }
}

/// The `oid`, `appid` and `azp` claims of a JWT, unverified; the token
/// itself never leaves this function.
fn token_identities(token: &str) -> Vec<String> {
    use base64::Engine as _;
    let Some(payload) = token.split('.').nth(1) else {
        return Vec::new();
    };
    let Ok(bytes) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('='))
    else {
        return Vec::new();
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    let mut found: Vec<String> = Vec::new();
    for key in ["oid", "appid", "azp"] {
        if let Some(value) = claims.get(key).and_then(|v| v.as_str())
            && !value.is_empty()
            && !found.iter().any(|f| f.eq_ignore_ascii_case(value))
        {
            found.push(value.to_owned());
        }
    }
    found
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bearer")
            .field("token", &"[REDACTED]")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

/// Why no token could be had. The text never contains a secret or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The credential could not be built from the configuration.
    #[error("the {credential} credential is misconfigured: {message}")]
    Configuration {
        /// Which credential.
        credential: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The token endpoint refused or failed.
    #[error("could not get an ARM token with the {credential} credential: {message}")]
    Acquire {
        /// Which credential.
        credential: &'static str,
        /// What went wrong (redacted).
        message: String,
    },
    /// The token service does not know the audience asked for (Entra's
    /// AADSTS500011): `azure.arm_audience` (or the cloud's default) is wrong.
    #[error(
        "azure.arm_audience: the token service does not know the audience `{audience}` (AADSTS500011: resource principal not found), so the {credential} credential got no token; set azure.arm_audience to the audience your cloud's Resource Manager accepts"
    )]
    UnknownAudience {
        /// Which credential.
        credential: &'static str,
        /// The audience asked for.
        audience: String,
    },
    /// The token endpoint did not answer in time.
    #[error("timed out after {after:?} getting an ARM token with the {credential} credential")]
    Timeout {
        /// Which credential.
        credential: &'static str,
        /// The limit.
        after: Duration,
    },
}

/// Where ARM bearer tokens come from.
#[async_trait]
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// A token for the ARM scope, fresh enough to use now.
    ///
    /// # Errors
    /// [`TokenError`] when no token can be had.
    async fn bearer(&self) -> Result<Bearer, TokenError>;

    /// ARM refused `bearer` (HTTP 401): forget it so the next [`bearer`](Self::bearer)
    /// fetches a new one. The default does nothing.
    fn reject(&self, _bearer: &Bearer) {}
}

/// Which azure_identity credential to use (config key `azure.credential`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A managed identity (App Service style via env vars, or IMDS).
    #[default]
    ManagedIdentity,
    /// AKS workload identity (federated token file).
    WorkloadIdentity,
    /// A service principal with a client secret.
    ClientSecret,
    /// The developer's `az login` (no caching: every call runs `az`).
    AzureCli,
}

impl CredentialKind {
    /// The `azure.credential` value: the metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::ManagedIdentity => "managed_identity",
            Self::WorkloadIdentity => "workload_identity",
            Self::ClientSecret => "client_secret",
            Self::AzureCli => "azure_cli",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::ManagedIdentity => "managed identity",
            Self::WorkloadIdentity => "workload identity",
            Self::ClientSecret => "client secret",
            Self::AzureCli => "Azure CLI",
        }
    }
}

/// Which user-assigned managed identity to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAssigned {
    /// By client (application) id.
    ClientId(String),
    /// By object (principal) id.
    ObjectId(String),
    /// By Azure resource id (not supported by the App Service source).
    ResourceId(String),
}

/// Everything needed to build a [`AzureTokenSource`].
#[derive(Debug, Clone)]
pub struct CredentialOptions {
    /// Which credential.
    pub kind: CredentialKind,
    /// Entra tenant id (client secret; workload identity and CLI optional).
    pub tenant_id: Option<String>,
    /// Application (client) id (client secret; workload identity optional).
    pub client_id: Option<String>,
    /// Client secret (client secret credential only).
    pub client_secret: Option<SecretString>,
    /// User-assigned managed identity; `None` = system-assigned.
    pub user_assigned_id: Option<UserAssigned>,
    /// Federated token file (workload identity; defaults to `AZURE_FEDERATED_TOKEN_FILE`).
    pub federated_token_file: Option<PathBuf>,
    /// Entra authority host (must be https for secret and workload credentials).
    pub authority_host: Url,
    /// The ARM scope, e.g. `https://management.azure.com/.default`.
    pub scope: String,
    /// Send IMDS token requests here instead of `169.254.169.254` (see module docs).
    pub managed_identity_endpoint: Option<Url>,
    /// Bound on one token fetch, retries included.
    pub timeout: Duration,
    /// "Now", to judge whether a cached token is still good.
    pub clock: SharedClock,
}

/// The IMDS token URL azure_identity 1.0.0 hard-codes.
const IMDS_HOST: &str = "169.254.169.254";

/// A transport that sends IMDS token requests to a configured endpoint.
#[derive(Debug)]
struct ImdsRedirect {
    target: Url,
    inner: reqwest::Client,
}

impl ImdsRedirect {
    fn rewrite(&self, url: &Url) -> Option<Url> {
        if url.host_str() != Some(IMDS_HOST) {
            return None;
        }
        let mut to = self.target.clone();
        if matches!(to.path(), "" | "/") {
            to.set_path(url.path());
        }
        to.set_query(url.query());
        Some(to)
    }
}

#[async_trait]
impl HttpClient for ImdsRedirect {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        match self.rewrite(request.url()) {
            Some(url) => {
                let mut redirected = request.clone();
                *redirected.url_mut() = url;
                self.inner.execute_request(&redirected).await
            }
            None => self.inner.execute_request(request).await,
        }
    }
}

/// The production [`TokenSource`]: an azure_identity credential.
pub struct AzureTokenSource {
    options: CredentialOptions,
    current: RwLock<(u64, Arc<dyn TokenCredential>)>,
}

impl fmt::Debug for AzureTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureTokenSource")
            .field("kind", &self.options.kind)
            .field("scope", &self.options.scope)
            .finish_non_exhaustive()
    }
}

impl AzureTokenSource {
    /// Builds the credential.
    ///
    /// # Errors
    /// [`TokenError::Configuration`] when required options are missing or
    /// azure_identity refuses them (e.g. an http authority host).
    pub fn new(options: CredentialOptions) -> Result<Self, TokenError> {
        let credential = build_credential(&options)?;
        Ok(Self {
            options,
            current: RwLock::new((0, credential)),
        })
    }

    fn current(&self) -> (u64, Arc<dyn TokenCredential>) {
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        (guard.0, guard.1.clone())
    }

    /// Replaces the credential instance if it is still generation `seen`.
    fn renew(&self, seen: u64) -> Result<(), TokenError> {
        let mut guard = self.current.write().unwrap_or_else(|e| e.into_inner());
        if guard.0 == seen {
            *guard = (seen + 1, build_credential(&self.options)?);
            tracing::debug!(
                credential = self.options.kind.name(),
                "replaced the credential to drop its cached token"
            );
        }
        Ok(())
    }

    async fn fetch(&self) -> Result<Bearer, TokenError> {
        let (generation, credential) = self.current();
        let name = self.options.kind.name();
        let scopes = [self.options.scope.as_str()];
        let fut = credential.get_token(&scopes, None);
        let token = tokio::time::timeout(self.options.timeout, fut)
            .await
            .map_err(|_| TokenError::Timeout {
                credential: name,
                after: self.options.timeout,
            })?
            .map_err(|e| self.acquire_error(&e))?;
        let exp = token.expires_on;
        let expires_on =
            DateTime::from_timestamp(exp.unix_timestamp(), exp.nanosecond()).unwrap_or_default();
        Ok(Bearer {
            token: SecretString::from(token.token.secret()),
            expires_on,
            generation,
        })
    }
}

impl AzureTokenSource {
    async fn fresh_bearer(&self) -> Result<Bearer, TokenError> {
        let bearer = self.fetch().await?;
        if bearer.expires_on > self.options.clock.now() + EXPIRY_MARGIN {
            return Ok(bearer);
        }
        self.renew(bearer.generation)?;
        self.fetch().await
    }

    fn acquire_error(&self, e: &azure_core::Error) -> TokenError {
        let credential = self.options.kind.name();
        if is_unknown_resource(e) {
            let scope = self.options.scope.as_str();
            return TokenError::UnknownAudience {
                credential,
                audience: scope.strip_suffix("/.default").unwrap_or(scope).to_owned(),
            };
        }
        TokenError::Acquire {
            credential,
            message: redact(&e.to_string(), self.options.client_secret.as_ref()),
        }
    }
}

/// Entra's code for "the resource principal was not found in the tenant".
const UNKNOWN_RESOURCE: &str = "AADSTS500011";

/// Whether `e`, or an error it wraps, is Entra's AADSTS500011. azure_identity
/// keeps it in different places per credential: the message (client secret,
/// workload identity, the CLI's stderr), the error code, or only the raw
/// response (managed identity, whose message reads "The requested identity
/// has not been assigned to this resource" for any 400).
fn is_unknown_resource(e: &azure_core::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if err.to_string().contains(UNKNOWN_RESOURCE) {
            return true;
        }
        if let Some(azure) = err.downcast_ref::<azure_core::Error>()
            && let azure_core::error::ErrorKind::HttpResponse {
                error_code,
                raw_response,
                ..
            } = azure.kind()
        {
            let code = error_code.as_deref().unwrap_or_default();
            let body = raw_response.as_ref().map(|r| &**r.body());
            if code.split(',').any(|c| c.trim() == "500011")
                || body.is_some_and(|b| String::from_utf8_lossy(b).contains(UNKNOWN_RESOURCE))
            {
                return true;
            }
        }
        current = err.source();
    }
    false
}

/// How close to expiry (by our clock) a token is no longer handed out.
/// Smaller than azure_identity's own 5-minute margin, so with the system clock
/// azure_identity always refreshes first.
const EXPIRY_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

#[async_trait]
impl TokenSource for AzureTokenSource {
    /// Counts every failure in `/metrics` by credential kind, so an Entra
    /// or managed-identity outage shows before any ARM call is made.
    async fn bearer(&self) -> Result<Bearer, TokenError> {
        let result = self.fresh_bearer().await;
        if result.is_err() {
            crate::metrics::global().token_failure(self.options.kind.label());
        }
        result
    }

    fn reject(&self, bearer: &Bearer) {
        if let Err(e) = self.renew(bearer.generation) {
            tracing::warn!(error = %e, "could not replace the credential after ARM refused its token");
        }
    }
}

fn build_credential(o: &CredentialOptions) -> Result<Arc<dyn TokenCredential>, TokenError> {
    let name = o.kind.name();
    let misconfigured = |message: String| TokenError::Configuration {
        credential: name,
        message,
    };
    let required = |v: &Option<String>, key: &str| {
        v.clone()
            .ok_or_else(|| misconfigured(format!("azure.{key} is required")))
    };
    let azure_err =
        |e: azure_core::Error| misconfigured(redact(&e.to_string(), o.client_secret.as_ref()));

    let mut client_options = ClientOptions {
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::milliseconds(200),
            max_retries: 2,
            max_total_elapsed: azure_core::time::Duration::seconds(10),
            max_delay: azure_core::time::Duration::seconds(2),
        }),
        ..Default::default()
    };
    let mut custom = CustomConfiguration::default();
    custom.authority_host = o.authority_host.as_str().trim_end_matches('/').to_owned();
    client_options.cloud = Some(Arc::new(CloudConfiguration::from(custom)));

    Ok(match o.kind {
        CredentialKind::ManagedIdentity => {
            if let Some(target) = &o.managed_identity_endpoint {
                let inner = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(o.timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| misconfigured(e.to_string()))?;
                let redirect = ImdsRedirect {
                    target: target.clone(),
                    inner,
                };
                client_options.transport = Some(Transport::new(Arc::new(redirect)));
            }
            let user_assigned_id = o.user_assigned_id.clone().map(|u| match u {
                UserAssigned::ClientId(v) => UserAssignedId::ClientId(v),
                UserAssigned::ObjectId(v) => UserAssignedId::ObjectId(v),
                UserAssigned::ResourceId(v) => UserAssignedId::ResourceId(v),
            });
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id,
                client_options,
            }))
            .map_err(azure_err)?
        }
        CredentialKind::WorkloadIdentity => {
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options },
                client_id: o.client_id.clone(),
                tenant_id: o.tenant_id.clone(),
                token_file_path: o.federated_token_file.clone(),
            }))
            .map_err(azure_err)?
        }
        CredentialKind::ClientSecret => {
            let tenant = required(&o.tenant_id, "tenant_id")?;
            let client_id = required(&o.client_id, "client_id")?;
            let secret = o
                .client_secret
                .as_ref()
                .ok_or_else(|| misconfigured("azure.client_secret is required".into()))?;
            ClientSecretCredential::new(
                &tenant,
                client_id,
                Secret::new(secret.expose_secret().to_owned()),
                Some(ClientSecretCredentialOptions { client_options }),
            )
            .map_err(azure_err)?
        }
        CredentialKind::AzureCli => AzureCliCredential::new(Some(AzureCliCredentialOptions {
            tenant_id: o.tenant_id.clone(),
            ..Default::default()
        }))
        .map_err(azure_err)?,
    })
}

/// Removes the client secret and anything shaped like a JWT from `message`,
/// and bounds its length.
fn redact(message: &str, secret: Option<&SecretString>) -> String {
    let mut out = message.to_owned();
    if let Some(s) = secret
        .map(ExposeSecret::expose_secret)
        .filter(|s| !s.is_empty())
    {
        out = out.replace(s, "[REDACTED]");
    }
    let out: Vec<String> = out
        .split(' ')
        .map(|w| {
            if w.contains("eyJ") {
                "[REDACTED]".to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect();
    let mut out = out.join(" ");
    if out.len() > 400 {
        let cut = (0..=400)
            .rev()
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(0);
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_identities_are_its_oid_and_appid_claims() {
        use base64::Engine as _;
        let enc = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let jwt = format!(
            "{}.{}.sig",
            enc(r#"{"alg":"RS256"}"#),
            enc(r#"{"oid":"1111-aaaa","appid":"2222-bbbb","azp":"2222-BBBB","aud":"x"}"#)
        );
        assert_eq!(token_identities(&jwt), ["1111-aaaa", "2222-bbbb"]);
        assert!(token_identities("opaque-token").is_empty());
        assert!(token_identities("a.!!!.c").is_empty());
    }
    use crate::clock::SystemClock;

    fn options(kind: CredentialKind) -> CredentialOptions {
        CredentialOptions {
            kind,
            tenant_id: None,
            client_id: None,
            client_secret: None,
            user_assigned_id: None,
            federated_token_file: None,
            authority_host: Url::parse("https://login.microsoftonline.com").unwrap(),
            scope: "https://management.azure.com/.default".into(),
            managed_identity_endpoint: None,
            timeout: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
        }
    }

    #[test]
    fn bearer_debug_hides_the_token() {
        let b = Bearer::new(SecretString::from("eyJhbGciOi.secret.sig"), Utc::now());
        let dbg = format!("{b:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
        assert_eq!(b.expose(), "eyJhbGciOi.secret.sig");
    }

    #[test]
    fn client_secret_needs_its_settings_and_errors_hide_the_secret() {
        let mut o = options(CredentialKind::ClientSecret);
        o.client_secret = Some(SecretString::from("hunter2-very-secret"));
        let err = AzureTokenSource::new(o.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the client secret credential is misconfigured: azure.tenant_id is required"
        );

        o.tenant_id = Some("00000000-0000-0000-0000-000000000001".into());
        o.client_id = Some("app".into());
        o.authority_host = Url::parse("http://login.example").unwrap();
        let err = AzureTokenSource::new(o.clone()).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("HTTPS"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn redact_removes_secrets_and_tokens() {
        let s = SecretString::from("p@ss");
        assert_eq!(
            redact("bad p@ss and eyJ0eXAi.x.y here", Some(&s)),
            "bad [REDACTED] and [REDACTED] here"
        );
        assert!(redact(&"x".repeat(1000), None).chars().count() <= 401);
    }

    #[test]
    fn imds_requests_are_redirected_and_others_left_alone() {
        let r = |target: &str| ImdsRedirect {
            target: Url::parse(target).unwrap(),
            inner: reqwest::Client::new(),
        };
        let imds = Url::parse("http://169.254.169.254/metadata/identity/oauth2/token?api-version=2019-08-01&resource=x").unwrap();
        assert_eq!(
            r("http://127.0.0.1:9000").rewrite(&imds).unwrap().as_str(),
            "http://127.0.0.1:9000/metadata/identity/oauth2/token?api-version=2019-08-01&resource=x"
        );
        assert_eq!(
            r("http://127.0.0.1:9000/custom/token")
                .rewrite(&imds)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9000/custom/token?api-version=2019-08-01&resource=x"
        );
        assert!(
            r("http://127.0.0.1:9000")
                .rewrite(&Url::parse("https://login.microsoftonline.com/t").unwrap())
                .is_none()
        );
    }

    #[test]
    fn credential_kinds_use_config_names() {
        let k: CredentialKind = serde_json::from_str(r#""managed_identity""#).unwrap();
        assert_eq!(k, CredentialKind::ManagedIdentity);
        let k: CredentialKind = serde_json::from_str(r#""azure_cli""#).unwrap();
        assert_eq!(k, CredentialKind::AzureCli);
    }
}
