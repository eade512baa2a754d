//! A local emulator of the Azure JIT VM access API (Microsoft.Security
//! `jitNetworkAccessPolicies`, api-version 2020-01-01), with the Compute VM
//! list, the token endpoints (managed identity, and Entra's v2 endpoint for
//! client secrets and workload identity), an NSG model and fault injection.
//! It backs `drawbridge demo`, `drawbridge emulate-azure` and the tests.
//!
//! The emulator follows the REST spec (see `tests/fixtures/azure-jit-spec`):
//! the real ARM paths under its base URL, `api-version` checks, bearer tokens,
//! ARM error bodies `{"error":{"code","message"}}`, paged lists with an
//! absolute `nextLink`, and initiate validation as Azure does it (ports in the
//! policy, `endTimeUtc` within `maxRequestAccessDuration`, source within the
//! allowed prefixes). Request statuses (`Initiated`, then `Revoked` with
//! `Expired` or `NewerRequestInitiated`) are evaluated from the clock on
//! every read, so a [`ManualClock`](crate::clock::ManualClock) drives expiry.
//!
//! # Layout
//! - `estate`: the TOML seed ([`Estate`]) and its validation.
//! - `jit`: policies, request history, body validation, NSG rules.
//! - `faults`: [`Route`], [`Fault`], [`FaultRule`].
//! - `entra`: the tenant: known resources, app registrations, the v2 token
//!   endpoint, the audience rules ([`TokenRecord`]).
//! - `tls`: serving over https ([`TlsIdentity`]).
//! - `throttle`: ARM's token buckets for reads, writes and deletes, and
//!   the `Retry-After` a client must wait out.
//! - `http`: the axum routes (ARM, token endpoints, `/_emulator/*` control).
//!
//! Each ARM call is checked in Azure's order: bearer token and its audience
//! (401), path (404 or 405), `api-version` (400), subscription (400/404),
//! the caller's request bucket (429, and the remaining count in ARM's
//! header), then any injected fault, then the operation itself.
//!
//! # Audiences
//! Every token endpoint refuses a resource the tenant does not know with
//! Entra's AADSTS500011, and ARM refuses a token minted for another audience
//! with 401 `InvalidAuthenticationTokenAudience`. ARM accepts
//! [`DEFAULT_ARM_AUDIENCES`] (the public cloud's) unless
//! [`Emulator::set_arm_audience`] names another; [`Emulator::token_log`]
//! records the audience of every token request.
//!
//! # Control endpoints (for out-of-process harnesses)
//! - `POST /_emulator/faults` `{"route":"initiate","fault":{"kind":"throttle","retryAfterSecs":5},"when":{"next":2}}`
//!   (kinds `throttle`, `serverError` + `status`, `forbidden`, `latency` + `millis`, `hang`; `when` is
//!   `{"next":n}`, `{"probability":p}` or `"always"`); `DELETE /_emulator/faults` clears.
//! - `GET /_emulator/nsg?vm=<VM resource id>`: the VM's JIT NSG rules.
//! - `GET /_emulator/calls` (the call log), `DELETE /_emulator/calls` (clear it).

mod entra;
mod estate;
mod faults;
mod http;
mod jit;
mod throttle;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{SharedClock, SystemClock};

pub use entra::{
    DEFAULT_ARM_AUDIENCES, DEFAULT_TENANT_ID, TOKEN_EXCHANGE_AUDIENCE, TokenEndpoint, TokenRecord,
};
pub use estate::{Estate, EstateError, Os, PolicySeed, PolicyVmSeed, Subscription, VirtualMachine};
pub use faults::{Fault, FaultRule, Route, Trigger};
pub use jit::{NsgAccess, NsgRule, PortRule, RequestorModel, SupersedeModel};
pub use tls::TlsIdentity;

use entra::Directory;
use faults::Faults;
use jit::{Policy, VmRecord};
use tls::{TlsListener, TlsPeer};

/// Items per page of the list operations unless [`Emulator::set_page_size`]
/// says otherwise: small, so every client exercises `nextLink`.
pub const DEFAULT_PAGE_SIZE: usize = 5;

/// The principal tokens are issued to (their `oid` and `appid`), written as
/// `requestor` on initiate requests under [`RequestorModel::ObjectId`].
pub const DEFAULT_PRINCIPAL: &str = "drawbridge-test-identity";

/// The display name Azure shows as `requestor` for [`DEFAULT_PRINCIPAL`]
/// under [`RequestorModel::Name`] (a managed identity has no UPN).
pub const DEFAULT_PRINCIPAL_NAME: &str = "Drawbridge JIT";

/// The emulated Azure. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").finish_non_exhaustive()
    }
}

struct Inner {
    clock: SharedClock,
    /// Azure's clock minus the given clock, in milliseconds: Azure's clock
    /// and the bot's are never quite the same.
    clock_offset_ms: std::sync::atomic::AtomicI64,
    state: Mutex<State>,
    /// Cancelled when the server shuts down, so hung calls end and graceful
    /// shutdown does not wait on them.
    hang_release: Mutex<CancellationToken>,
    /// Ends the hangs under way ([`Emulator::release_hangs`]).
    hangs_released: tokio::sync::Notify,
}

/// Everything mutable, behind one lock that is never held across an await.
struct State {
    /// ARM's request buckets per principal, subscription and kind.
    buckets: throttle::Buckets,
    vms: Vec<VmRecord>,
    subscriptions: Vec<String>,
    /// Lower-cased (subscription, resource group) pairs that exist.
    resource_groups: Vec<(String, String)>,
    policies: Vec<Policy>,
    tokens: HashMap<String, IssuedToken>,
    token_requests: usize,
    calls: Vec<CallRecord>,
    next_call_id: u64,
    faults: Faults,
    page_size: usize,
    identity_header: String,
    principal: String,
    token_lifetime: chrono::Duration,
    directory: Directory,
    supersede: SupersedeModel,
    requestor: RequestorModel,
    /// Principal → the name written as `requestor` under
    /// [`RequestorModel::Name`] (the principal itself when absent).
    requestor_names: HashMap<String, String>,
    /// What the permissions route reports the caller holds.
    granted_actions: Vec<String>,
    /// A portal edit that races the next policy PUT (see
    /// [`Emulator::race_next_policy_put`]).
    portal_race: Option<jit::PolicyVm>,
}

struct IssuedToken {
    expires_at: DateTime<Utc>,
    principal: String,
    /// The resource it was issued for (its `aud`).
    audience: String,
}

/// One ARM call as the emulator saw it (tokens are never recorded).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    /// Sequence number, increasing.
    pub id: u64,
    /// The HTTP method.
    pub method: String,
    /// The request path.
    pub path: String,
    /// The raw query string.
    pub query: Option<String>,
    /// The operation, when the path matched one.
    pub route: Option<Route>,
    /// The answer's status; 0 while the call is in flight or hung.
    pub status: u16,
    /// The request body, when it was JSON.
    pub body: Option<serde_json::Value>,
    /// When the call arrived, by the emulator's clock.
    pub at: DateTime<Utc>,
}

impl Emulator {
    /// An emulator holding `estate`, taking time only from `clock`.
    pub fn new(estate: Estate, clock: SharedClock) -> Self {
        let vms: Vec<VmRecord> = estate
            .vms()
            .map(|(sub, vm)| VmRecord::new(sub, vm))
            .collect();
        // (subscription, rg, name) lowercase → the VM: policies name thousands.
        let by_name: HashMap<(String, String, String), usize> = vms
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let key = (
                    v.subscription.to_ascii_lowercase(),
                    v.vm.resource_group.to_ascii_lowercase(),
                    v.vm.name.to_ascii_lowercase(),
                );
                (key, i)
            })
            .collect();
        let mut resource_groups = Vec::new();
        let mut policies = Vec::new();
        for sub in &estate.subscriptions {
            let sub_key = sub.id.to_lowercase();
            let rgs = sub
                .vms
                .iter()
                .map(|v| &v.resource_group)
                .chain(sub.policies.iter().map(|p| &p.resource_group));
            for rg in rgs {
                let key = (sub_key.clone(), rg.to_lowercase());
                if !resource_groups.contains(&key) {
                    resource_groups.push(key);
                }
            }
            for seed in &sub.policies {
                policies.push(Policy {
                    subscription: sub.id.clone(),
                    resource_group: seed.resource_group.clone(),
                    location: seed.location.clone(),
                    name: seed.name.clone(),
                    kind: seed.kind.clone(),
                    virtual_machines: seed
                        .virtual_machines
                        .iter()
                        .filter_map(|pvm| {
                            let rg = pvm
                                .resource_group
                                .as_deref()
                                .unwrap_or(&seed.resource_group);
                            // Estate validation guarantees the VM exists.
                            let key = (
                                sub.id.to_ascii_lowercase(),
                                rg.to_ascii_lowercase(),
                                pvm.name.to_ascii_lowercase(),
                            );
                            let vm = &vms[*by_name.get(&key)?];
                            Some(jit::PolicyVm {
                                id: vm.id.clone(),
                                ports: pvm.ports.clone(),
                                public_ip_address: None,
                            })
                        })
                        .collect(),
                    requests: Vec::new(),
                });
            }
        }
        let state = State {
            buckets: throttle::Buckets::default(),
            vms,
            subscriptions: estate.subscriptions.iter().map(|s| s.id.clone()).collect(),
            resource_groups,
            policies,
            tokens: HashMap::new(),
            token_requests: 0,
            calls: Vec::new(),
            next_call_id: 1,
            faults: Faults::new(0),
            page_size: DEFAULT_PAGE_SIZE,
            identity_header: random_secret(),
            principal: DEFAULT_PRINCIPAL.to_owned(),
            token_lifetime: chrono::Duration::hours(1),
            directory: Directory::new(),
            supersede: SupersedeModel::default(),
            requestor: RequestorModel::default(),
            requestor_names: HashMap::from([(
                DEFAULT_PRINCIPAL.to_owned(),
                DEFAULT_PRINCIPAL_NAME.to_owned(),
            )]),
            granted_actions: crate::domain::preflight::NEEDED_ACTIONS
                .iter()
                .map(|a| (*a).to_owned())
                .collect(),
            portal_race: None,
        };
        Self {
            inner: Arc::new(Inner {
                clock,
                clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
                state: Mutex::new(state),
                hang_release: Mutex::new(CancellationToken::new()),
                hangs_released: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Which earlier requests an initiate supersedes from now on.
    pub fn set_supersede_model(&self, model: SupersedeModel) {
        self.state().supersede = model;
    }

    /// What Azure writes as `requestor` from now on.
    pub fn set_requestor_model(&self, model: RequestorModel) {
        self.state().requestor = model;
    }

    /// The name written as `requestor` for `principal`'s requests under
    /// [`RequestorModel::Name`] (a UPN, or a service principal's display
    /// name).
    pub fn set_requestor_name(&self, principal: &str, name: impl Into<String>) {
        self.state()
            .requestor_names
            .insert(principal.to_owned(), name.into());
    }

    /// The HTTP routes: ARM, the token endpoints and `/_emulator/*`.
    pub fn router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then drains
    /// connections (hung calls are released first).
    ///
    /// # Errors
    /// When the listener fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let release = self.new_hang_release();
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                release.cancel();
            })
            .await
    }

    /// Serves the same routes over https until `shutdown` completes. Entra's
    /// v2 token endpoint answers only here.
    async fn serve_tls_on(
        self,
        listener: TlsListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let release = self.new_hang_release();
        let app = self
            .router()
            .into_make_service_with_connect_info::<TlsPeer>();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                release.cancel();
            })
            .await
    }

    /// Ends every injected hang under way now (each answers 503, as at
    /// shutdown), so a test can hold a call and then let it go.
    pub fn release_hangs(&self) {
        self.inner.hangs_released.notify_waiters();
    }

    fn new_hang_release(&self) -> CancellationToken {
        let release = CancellationToken::new();
        *lock(&self.inner.hang_release) = release.clone();
        release
    }

    /// Serves on `127.0.0.1:<free port>` in a background task.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn spawn(self) -> std::io::Result<RunningEmulator> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let emulator = self.clone();
        let task = tokio::spawn(self.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(RunningEmulator {
            base_url: format!("http://{addr}"),
            tls_base_url: None,
            emulator,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Serves on two free ports of `127.0.0.1` in a background task: plain
    /// http ([`RunningEmulator::base_url`]) and https with `identity`
    /// ([`RunningEmulator::tls_base_url`]), the same routes on both.
    ///
    /// # Errors
    /// When no port can be bound or the certificate and key do not fit.
    pub async fn spawn_with_tls(self, identity: TlsIdentity) -> std::io::Result<RunningEmulator> {
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let https = TcpListener::bind("127.0.0.1:0").await?;
        let (addr, tls_addr) = (http.local_addr()?, https.local_addr()?);
        let https = TlsListener::new(https, identity).map_err(std::io::Error::other)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let down = CancellationToken::new();
        let (plain, secure) = (self.clone(), self.clone());
        let (down_plain, down_secure) = (down.clone(), down.clone());
        let task = tokio::spawn(async move {
            tokio::spawn(async move {
                let _ = stopped.await;
                down.cancel();
            });
            let (a, b) = tokio::join!(
                plain.serve(http, down_plain.cancelled_owned()),
                secure.serve_tls_on(https, down_secure.cancelled_owned()),
            );
            a.and(b)
        });
        Ok(RunningEmulator {
            base_url: format!("http://{addr}"),
            tls_base_url: Some(format!("https://{tls_addr}")),
            emulator: self,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Sets the actions the permissions route reports the caller holds
    /// (default: Drawbridge's full custom role).
    pub fn set_granted_actions(&self, actions: Vec<String>) {
        self.state().granted_actions = actions;
    }

    /// Sets how many items a list page holds (at least 1).
    pub fn set_page_size(&self, size: usize) {
        self.state().page_size = size.max(1);
    }

    /// Sets the secret the App Service token endpoint expects in
    /// `x-identity-header` (azure_identity sends `IDENTITY_HEADER`).
    pub fn set_identity_header(&self, secret: impl Into<String>) {
        self.state().identity_header = secret.into();
    }

    /// The secret expected in `x-identity-header` (random unless set).
    pub fn identity_header(&self) -> String {
        self.state().identity_header.clone()
    }

    /// Sets the principal name tokens are issued to (the `requestor`).
    pub fn set_principal_name(&self, name: impl Into<String>) {
        self.state().principal = name.into();
    }

    /// Sets how long new tokens live (default one hour).
    pub fn set_token_lifetime(&self, lifetime: chrono::Duration) {
        self.state().token_lifetime = lifetime;
    }

    /// Issues a bearer token for ARM directly, as the token endpoints would.
    pub fn issue_token(&self) -> String {
        let audience = self.state().directory.primary_arm_audience().to_owned();
        self.issue_for(&audience).0
    }

    /// Makes ARM accept tokens for `audience` only (up to a trailing slash),
    /// as the Resource Manager of another cloud would; the token endpoints
    /// know it as a resource. The default is [`DEFAULT_ARM_AUDIENCES`].
    pub fn set_arm_audience(&self, audience: impl Into<String>) {
        self.state().directory.set_arm_audience(audience.into());
    }

    /// The tenant id of the emulated directory, [`DEFAULT_TENANT_ID`].
    pub fn tenant_id(&self) -> String {
        self.state().directory.tenant_id().to_owned()
    }

    /// Registers an app `client_id` (if new) with a client secret.
    pub fn add_client_secret(&self, client_id: &str, secret: impl Into<String>) {
        self.state()
            .directory
            .add_client_secret(client_id, secret.into());
    }

    /// Registers an app `client_id` (if new) with a federated credential
    /// trusting `subject` of `issuer` (workload identity).
    pub fn add_federated_credential(
        &self,
        client_id: &str,
        issuer: impl Into<String>,
        subject: impl Into<String>,
    ) {
        self.state()
            .directory
            .add_federated_credential(client_id, issuer.into(), subject.into());
    }

    /// A service-account token of `subject` from `issuer`, as Kubernetes
    /// projects it into a pod (`AZURE_FEDERATED_TOKEN_FILE`): a JWT for
    /// `api://AzureADTokenExchange`, valid for `lifetime` from now.
    pub fn mint_federated_assertion(
        &self,
        issuer: &str,
        subject: &str,
        lifetime: chrono::Duration,
    ) -> String {
        let now = self.now();
        let expires = now.checked_add_signed(lifetime).unwrap_or(now);
        self.state()
            .directory
            .mint_assertion(issuer, subject, now, expires)
    }

    /// Every token request so far, oldest first, with the audience asked for.
    pub fn token_log(&self) -> Vec<TokenRecord> {
        self.state().directory.log.clone()
    }

    /// Forgets every token issued so far: ARM answers 401 to them, as after
    /// a revocation, until the client fetches a new one.
    pub fn revoke_tokens(&self) {
        self.state().tokens.clear();
    }

    /// How many requests the token endpoints received.
    pub fn token_requests(&self) -> usize {
        self.state().token_requests
    }

    /// Arms a fault on `route`.
    pub fn inject(&self, route: Route, rule: FaultRule) {
        self.state().faults.add(route, rule);
    }

    /// Makes a portal user race the next policy PUT: they read the policy
    /// just before that PUT lands and write it back, with `vm_id` added on
    /// `ports`, just after. Azure keeps the last writer's policy, so the PUT's
    /// change is lost unless its writer reads back and writes again.
    ///
    /// # Errors
    /// `vm_id` is not a VM of the estate, so the portal could not add it.
    pub fn race_next_policy_put(&self, vm_id: &str, ports: &[u16]) -> Result<(), String> {
        let mut state = self.state();
        let known = state.vms.iter().any(|v| v.id.eq_ignore_ascii_case(vm_id));
        if !known {
            return Err(format!("no VM {vm_id} in the estate"));
        }
        state.portal_race = Some(jit::PolicyVm::portal(vm_id, ports));
        Ok(())
    }

    /// The policies (`resource-group/name`) that hold the VM `vm_id` now.
    pub fn policies_holding(&self, vm_id: &str) -> Vec<String> {
        self.state()
            .policies
            .iter()
            .filter(|p| {
                p.virtual_machines
                    .iter()
                    .any(|v| v.id.eq_ignore_ascii_case(vm_id))
            })
            .map(|p| format!("{}/{}", p.resource_group, p.name))
            .collect()
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Reseeds the RNG of probabilistic faults (seed 0 at start).
    pub fn seed_faults(&self, seed: u64) {
        self.state().faults.reseed(seed);
    }

    /// Every ARM call so far, oldest first.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.state().calls.clone()
    }

    /// The initiate calls so far, oldest first.
    pub fn initiate_calls(&self) -> Vec<CallRecord> {
        self.state()
            .calls
            .iter()
            .filter(|c| c.route == Some(Route::Initiate))
            .cloned()
            .collect()
    }

    /// How many JIT requests the emulated policies hold, their history
    /// included: what Azure would show as having been opened.
    pub fn jit_request_count(&self) -> usize {
        self.state().policies.iter().map(|p| p.requests.len()).sum()
    }

    /// Forgets the call log.
    pub fn clear_calls(&self) {
        self.state().calls.clear();
    }

    /// The JIT rules on the NSG of the VM with resource id `vm_id`
    /// (case-insensitive) at the clock's now: one Deny rule per policy
    /// covering the VM, one Allow rule per open request port. Empty for an
    /// unknown VM.
    pub fn nsg_rules(&self, vm_id: &str) -> Vec<NsgRule> {
        let now = self.now();
        let state = self.state();
        state
            .vms
            .iter()
            .find(|v| v.id.eq_ignore_ascii_case(vm_id))
            .map(|vm| jit::nsg_rules(&state.policies, vm, now))
            .unwrap_or_default()
    }

    fn now(&self) -> DateTime<Utc> {
        let offset = self
            .inner
            .clock_offset_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        self.inner.clock.now() + chrono::Duration::milliseconds(offset)
    }

    /// Runs the emulator's clock `offset` from the one it was given
    /// (negative: Azure is behind the bot).
    pub fn set_clock_offset(&self, offset: chrono::Duration) {
        self.inner.clock_offset_ms.store(
            offset.num_milliseconds(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Issues a token for `audience`; returns it with its expiry.
    fn issue_for(&self, audience: &str) -> (String, DateTime<Utc>) {
        let now = self.now();
        let mut state = self.state();
        let expires_at = now
            .checked_add_signed(state.token_lifetime)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let principal = state.principal.clone();
        let token = access_token(&principal, audience, now, expires_at);
        state.tokens.insert(
            token.clone(),
            IssuedToken {
                expires_at,
                principal,
                audience: audience.to_owned(),
            },
        );
        (token, expires_at)
    }

    fn log_token(&self, record: TokenRecord) {
        self.state().directory.log.push(record);
    }

    fn hang_release(&self) -> CancellationToken {
        lock(&self.inner.hang_release).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// An access token shaped as Entra ID's are: a JWT whose `oid` (and
/// `appid`) name the principal Azure then records as `requestor`, so the
/// bot can learn its own identity from it. The signature is random; the
/// emulator accepts only tokens it issued, by their whole text.
fn access_token(
    principal: &str,
    audience: &str,
    now: DateTime<Utc>,
    expires: DateTime<Utc>,
) -> String {
    use base64::Engine as _;
    let enc = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": "drawbridge-emulator"});
    let claims = serde_json::json!({
        "aud": audience,
        "iss": "https://sts.windows.net/drawbridge-emulator/",
        "iat": now.timestamp(),
        "nbf": now.timestamp(),
        "exp": expires.timestamp(),
        "oid": principal,
        "appid": principal,
        "uti": random_secret(),
    });
    format!(
        "{}.{}.{}",
        enc(header),
        enc(claims),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    )
}

fn random_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// An emulator serving in the background; stops when dropped.
#[derive(Debug)]
pub struct RunningEmulator {
    /// `http://127.0.0.1:PORT`, no trailing slash: the ARM endpoint, with the
    /// token endpoints at `/msi/token` and `/metadata/identity/oauth2/token`.
    pub base_url: String,
    /// `https://127.0.0.1:PORT` when started with [`Emulator::spawn_with_tls`]:
    /// the same routes over https, and the Entra authority host (the v2 token
    /// endpoint at `/{tenant}/oauth2/v2.0/token`).
    pub tls_base_url: Option<String>,
    /// The emulator, to inspect and steer.
    pub emulator: Emulator,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningEmulator {
    /// Stops serving and waits until the server is down.
    ///
    /// # Errors
    /// When the server had failed.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How `drawbridge emulate-azure` runs the emulator.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// The estate seed; `None` for the sample.
    pub seed: Option<PathBuf>,
    /// The managed-identity secret clients send as `x-identity-header`.
    pub identity_header: String,
    /// The only audience ARM accepts; `None` for [`DEFAULT_ARM_AUDIENCES`].
    pub arm_audience: Option<String>,
    /// Which earlier requests an initiate supersedes.
    pub supersede: SupersedeModel,
    /// What a request's `requestor` shows.
    pub requestor: RequestorModel,
}

/// Runs the emulator for `drawbridge emulate-azure` on `listener` until
/// `shutdown`, on the wall clock, seeded from `seed` or the sample estate,
/// with `identity_header` as the managed-identity secret. It logs the bound
/// address (the caller may have bound port 0).
///
/// # Errors
/// When the seed is invalid.
pub async fn run_standalone(
    listener: TcpListener,
    seed: Option<PathBuf>,
    identity_header: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let options = StandaloneOptions {
        seed,
        identity_header,
        arm_audience: None,
        supersede: SupersedeModel::default(),
        requestor: RequestorModel::default(),
    };
    run_standalone_with(listener, options, shutdown).await
}

/// [`run_standalone`] with every option.
///
/// # Errors
/// When the seed is invalid.
pub async fn run_standalone_with(
    listener: TcpListener,
    options: StandaloneOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let StandaloneOptions {
        seed,
        identity_header,
        arm_audience,
        supersede,
        requestor,
    } = options;
    let estate = match &seed {
        Some(path) => Estate::from_file(path)
            .with_context(|| format!("loading the estate seed {}", path.display()))?,
        None => Estate::sample(),
    };
    let emulator = Emulator::new(estate, Arc::new(SystemClock));
    emulator.set_identity_header(identity_header);
    emulator.set_supersede_model(supersede);
    emulator.set_requestor_model(requestor);
    let audience = match arm_audience {
        Some(audience) => {
            emulator.set_arm_audience(audience.clone());
            format!("set azure.arm_audience = \"{audience}\"")
        }
        None => format!(
            "the public cloud's audience {} is kept",
            DEFAULT_ARM_AUDIENCES[0]
        ),
    };
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, seed = ?seed, "Azure JIT emulator listening");
    tracing::info!(
        "point Drawbridge at it: azure.arm_endpoint = \"http://{addr}\" ({audience}), \
         azure.credential = \"managed_identity\", with env IDENTITY_ENDPOINT=http://{addr}/msi/token \
         and IDENTITY_HEADER set to the identity header given to the emulator"
    );
    emulator
        .serve(listener, shutdown)
        .await
        .context("serving the emulator")
}
