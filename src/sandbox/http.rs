//! The HTTP face of the emulator: ARM routes (matched case-insensitively, as
//! ARM does), the token endpoints (managed identity here, Entra's v2 in
//! `entra.rs`) and `/_emulator/*`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::{Value, json};

use super::entra::{self, EntraError, TokenEndpoint, TokenRecord};
use super::jit::{self, Policy, Rejection, RequestorModel, VmRecord};
use super::throttle::OpKind;
use super::tls::TlsPeer;
use super::{CallRecord, Emulator, Fault, FaultRule, Route, State as EmulatorState, Trigger};
use crate::domain::preflight::{self, PermissionEntry};

/// The only api-version of the JIT API the emulator speaks.
const SECURITY_API_VERSION: &str = "2020-01-01";
/// The one Microsoft.Authorization permissions version the emulator serves.
const PERMISSIONS_API_VERSION: &str = "2022-04-01";
/// The oldest Network api-version accepted (network interfaces and public
/// IP addresses); any later stable date is.
const OLDEST_NETWORK_API_VERSION: &str = "2015-06-15";
/// The oldest Compute api-version accepted; any later date-shaped version is.
const OLDEST_COMPUTE_API_VERSION: &str = "2015-06-15";
/// The largest request body read.
const MAX_BODY: usize = 1 << 20;
/// How long a hang fault lasts at most when the server never shuts down.
const HANG_FOR: Duration = Duration::from_secs(3600);

pub(crate) fn router(emulator: Emulator) -> Router {
    Router::new()
        .route("/msi/token", get(app_service_token))
        .route("/metadata/identity/oauth2/token", get(imds_token))
        .route("/{tenant}/oauth2/v2.0/token", post(entra::v2_token))
        .route("/_emulator/faults", post(add_fault).delete(clear_faults))
        .route("/_emulator/nsg", get(nsg))
        .route("/_emulator/calls", get(calls).delete(clear_calls))
        .fallback(arm)
        .with_state(emulator)
}

/// An ARM error answer: `{"error":{"code","message"}}`.
#[derive(Debug)]
pub(super) struct ArmError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ArmError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<Rejection> for ArmError {
    fn from(r: Rejection) -> Self {
        ArmError::new(StatusCode::BAD_REQUEST, r.code, r.message)
    }
}

impl IntoResponse for ArmError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer authorization_uri=\"https://login.microsoftonline.com/common\", error=\"invalid_token\"",
                ),
            );
        }
        response
    }
}

/// What an ARM path names.
#[derive(Debug)]
enum Target {
    Policies {
        sub: String,
        rg: Option<String>,
        location: Option<String>,
    },
    Policy {
        sub: String,
        rg: String,
        location: String,
        name: String,
        action: Option<String>,
    },
    Vms {
        sub: String,
    },
    /// One resource of a resource group the JIT API does not own: a VM,
    /// a network interface or a public IP address.
    Resource {
        sub: String,
        rg: String,
        kind: ResourceKind,
        name: String,
    },
    Permissions {
        sub: String,
    },
}

/// The resources [`Target::Resource`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResourceKind {
    Vm,
    Nic,
    PublicIp,
}

impl ResourceKind {
    fn of(provider: &str, kind: &str) -> Option<Self> {
        match (provider, kind) {
            ("microsoft.compute", "virtualmachines") => Some(Self::Vm),
            ("microsoft.network", "networkinterfaces") => Some(Self::Nic),
            ("microsoft.network", "publicipaddresses") => Some(Self::PublicIp),
            _ => None,
        }
    }

    /// ARM's spelling of the type, for "not found".
    fn arm_type(self) -> &'static str {
        match self {
            Self::Vm => "Microsoft.Compute/virtualMachines",
            Self::Nic => "Microsoft.Network/networkInterfaces",
            Self::PublicIp => "Microsoft.Network/publicIPAddresses",
        }
    }
}

impl Target {
    fn parse(path: &str) -> Option<Target> {
        let path = path.strip_prefix('/')?;
        let path = path.strip_suffix('/').unwrap_or(path);
        let segs: Vec<String> = path.split('/').map(percent_decode).collect::<Option<_>>()?;
        if segs.iter().any(String::is_empty) {
            return None;
        }
        let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
        let keys: Vec<&str> = lower.iter().map(String::as_str).collect();
        let seg = |i: usize| segs[i].clone();
        let target = match keys.as_slice() {
            [
                "subscriptions",
                _,
                "providers",
                "microsoft.security",
                "jitnetworkaccesspolicies",
            ] => Target::Policies {
                sub: seg(1),
                rg: None,
                location: None,
            },
            [
                "subscriptions",
                _,
                "providers",
                "microsoft.security",
                "locations",
                _,
                "jitnetworkaccesspolicies",
            ] => Target::Policies {
                sub: seg(1),
                rg: None,
                location: Some(seg(5)),
            },
            [
                "subscriptions",
                _,
                "providers",
                "microsoft.compute",
                "virtualmachines",
            ] => Target::Vms { sub: seg(1) },
            [
                "subscriptions",
                _,
                "providers",
                "microsoft.authorization",
                "permissions",
            ] => Target::Permissions { sub: seg(1) },
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                provider,
                kind,
                _,
            ] if ResourceKind::of(provider, kind).is_some() => Target::Resource {
                sub: seg(1),
                rg: seg(3),
                kind: ResourceKind::of(provider, kind)?,
                name: seg(7),
            },
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.security",
                "jitnetworkaccesspolicies",
            ] => Target::Policies {
                sub: seg(1),
                rg: Some(seg(3)),
                location: None,
            },
            [
                "subscriptions",
                _,
                "resourcegroups",
                _,
                "providers",
                "microsoft.security",
                "locations",
                _,
                "jitnetworkaccesspolicies",
                rest @ ..,
            ] => match rest.len() {
                0 => Target::Policies {
                    sub: seg(1),
                    rg: Some(seg(3)),
                    location: Some(seg(7)),
                },
                1 | 2 => Target::Policy {
                    sub: seg(1),
                    rg: seg(3),
                    location: seg(7),
                    name: seg(9),
                    action: segs.get(10).cloned(),
                },
                _ => return None,
            },
            _ => return None,
        };
        Some(target)
    }

    fn subscription(&self) -> &str {
        match self {
            Target::Policies { sub, .. }
            | Target::Policy { sub, .. }
            | Target::Vms { sub }
            | Target::Resource { sub, .. }
            | Target::Permissions { sub } => sub,
        }
    }

    /// The operation `method` performs on this target.
    fn route(&self, method: &Method) -> Result<Route, ArmError> {
        let route = match (self, method) {
            (Target::Policies { .. }, &Method::GET) => Route::ListPolicies,
            (Target::Vms { .. }, &Method::GET) => Route::ListVms,
            (Target::Resource { kind, .. }, &Method::GET) => match kind {
                ResourceKind::Vm => Route::GetVm,
                ResourceKind::Nic => Route::GetNic,
                ResourceKind::PublicIp => Route::GetPublicIp,
            },
            (Target::Permissions { .. }, &Method::GET) => Route::ListPermissions,
            (Target::Policy { action: None, .. }, &Method::GET) => Route::GetPolicy,
            (Target::Policy { action: None, .. }, &Method::PUT) => Route::PutPolicy,
            (Target::Policy { action: None, .. }, &Method::DELETE) => Route::DeletePolicy,
            (
                Target::Policy {
                    action: Some(action),
                    ..
                },
                method,
            ) => {
                if !action.eq_ignore_ascii_case("initiate") {
                    return Err(ArmError::new(
                        StatusCode::NOT_FOUND,
                        "InvalidResourceType",
                        format!(
                            "'{action}' is not an action of jitNetworkAccessPolicies; the only action is 'initiate' (there is no revoke)"
                        ),
                    ));
                }
                if method != Method::POST {
                    return Err(method_not_allowed(method));
                }
                Route::Initiate
            }
            (_, method) => return Err(method_not_allowed(method)),
        };
        Ok(route)
    }
}

fn method_not_allowed(method: &Method) -> ArmError {
    ArmError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("The HTTP method '{method}' is not supported for this resource."),
    )
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The first query parameter named `name` (case-insensitive), decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.into_owned())
}

fn check_api_version(route: Route, given: Option<&str>) -> Result<(), ArmError> {
    let Some(version) = given.filter(|v| !v.is_empty()) else {
        return Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        ));
    };
    let (ok, supported) = match route {
        Route::ListVms | Route::GetVm => (
            is_compute_version(version),
            format!("any date from {OLDEST_COMPUTE_API_VERSION} on"),
        ),
        Route::GetNic | Route::GetPublicIp => (
            is_network_version(version),
            format!("any date from {OLDEST_NETWORK_API_VERSION} on, without -preview"),
        ),
        Route::ListPermissions => (
            version == PERMISSIONS_API_VERSION,
            PERMISSIONS_API_VERSION.to_owned(),
        ),
        _ => (
            version == SECURITY_API_VERSION,
            SECURITY_API_VERSION.to_owned(),
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{version}' is invalid. The supported versions are '{supported}'."
            ),
        ))
    }
}

/// `YYYY-MM-DD`, not older than the oldest Network version (the Network
/// resource provider's network interfaces and public IPs have stable
/// versions only).
fn is_network_version(version: &str) -> bool {
    let parse = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
    version.len() == 10
        && matches!((parse(version), parse(OLDEST_NETWORK_API_VERSION)), (Some(d), Some(oldest)) if d >= oldest)
}

/// `YYYY-MM-DD` or `YYYY-MM-DD-preview`, not older than the oldest Compute version.
fn is_compute_version(version: &str) -> bool {
    let date = version.strip_suffix("-preview").unwrap_or(version);
    let parse = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok();
    date.len() == 10
        && matches!((parse(date), parse(OLDEST_COMPUTE_API_VERSION)), (Some(d), Some(oldest)) if d >= oldest)
}

/// ARM's 403 for a `principal` without `action` over `scope`.
fn authorization_failed(principal: &str, action: &str, scope: &str) -> ArmError {
    ArmError::new(
        StatusCode::FORBIDDEN,
        "AuthorizationFailed",
        format!(
            "The client '{principal}' with object id '{principal}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
        ),
    )
}

/// One page of `items` as ARM lists it, with an absolute `nextLink`.
fn page(items: Vec<Value>, parts: &Parts, page_size: usize) -> Result<Response, ArmError> {
    let query = parts.uri.query();
    let skip = match query_param(query, "$skipToken") {
        None => 0,
        Some(token) => token.parse::<usize>().map_err(|_| {
            ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidSkipToken",
                format!("The skip token '{token}' is invalid."),
            )
        })?,
    };
    let end = skip.saturating_add(page_size).min(items.len());
    let value: Vec<Value> = items.get(skip..end).unwrap_or_default().to_vec();
    let mut body = json!({ "value": value });
    if end < items.len() {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        let version = query_param(query, "api-version").unwrap_or_default();
        // The scheme the list was asked over: ARM's links are https, and
        // a client refuses a link to another origin.
        let scheme = if parts.extensions.get::<ConnectInfo<TlsPeer>>().is_some() {
            "https"
        } else {
            "http"
        };
        let next = format!(
            "{scheme}://{host}{}?api-version={version}&$skipToken={end}",
            parts.uri.path()
        );
        body["nextLink"] = json!(next);
    }
    Ok(Json(body).into_response())
}

/// Every ARM request: authenticate, route, check, maybe fault, answer, log.
async fn arm(State(emulator): State<Emulator>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let caller = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<TlsPeer>>()
                .map(|c| c.0.0.ip())
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let body = axum::body::to_bytes(body, MAX_BODY).await;
    let target = Target::parse(parts.uri.path());
    let route = target.as_ref().and_then(|t| t.route(&parts.method).ok());
    let call = emulator.record_call(&parts, route, body.as_deref().ok());
    let mut response = match body {
        Ok(body) => emulator
            .answer(&parts, target, &body, caller)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Err(_) => ArmError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("The request body exceeds {MAX_BODY} bytes."),
        )
        .into_response(),
    };
    emulator.finish_call(call, response.status());
    tracing::debug!(
        method = %parts.method,
        path = parts.uri.path(),
        status = response.status().as_u16(),
        "emulated ARM call"
    );
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        response.headers_mut().insert("x-ms-request-id", id);
    }
    response
}

impl EmulatorState {
    fn check_subscription(&self, sub: &str) -> Result<(), ArmError> {
        if !super::estate::is_guid(sub) {
            return Err(ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidSubscriptionId",
                format!("The provided subscription identifier '{sub}' is malformed or invalid."),
            ));
        }
        if self
            .subscriptions
            .iter()
            .any(|s| s.eq_ignore_ascii_case(sub))
        {
            Ok(())
        } else {
            Err(ArmError::new(
                StatusCode::NOT_FOUND,
                "SubscriptionNotFound",
                format!("The subscription '{sub}' could not be found."),
            ))
        }
    }

    /// A VM, its network interface or its public IP, as ARM returns it.
    fn resource_json(&self, sub: &str, rg: &str, kind: ResourceKind, name: &str) -> Option<Value> {
        let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        let in_rg = |v: &&VmRecord| same(&v.subscription, sub) && same(&v.vm.resource_group, rg);
        let mut vms = self.vms.iter().filter(in_rg);
        match kind {
            ResourceKind::Vm => vms.find(|v| same(&v.vm.name, name)).map(VmRecord::to_json),
            ResourceKind::Nic => vms
                .find(|v| same(&format!("{}-nic", v.vm.name), name))
                .map(VmRecord::nic_json),
            ResourceKind::PublicIp => vms
                .find(|v| v.vm.public_ip.is_some() && same(&format!("{}-ip", v.vm.name), name))
                .and_then(VmRecord::public_ip_json),
        }
    }

    fn check_resource_group(&self, sub: &str, rg: &str) -> Result<(), ArmError> {
        let key = (sub.to_lowercase(), rg.to_lowercase());
        if self.resource_groups.contains(&key) {
            Ok(())
        } else {
            Err(ArmError::new(
                StatusCode::NOT_FOUND,
                "ResourceGroupNotFound",
                format!("Resource group '{rg}' could not be found."),
            ))
        }
    }

    fn policy_index(&self, sub: &str, rg: &str, location: &str, name: &str) -> Option<usize> {
        self.policies
            .iter()
            .position(|p| p.is_at(sub, rg, location, name))
    }
}

/// An injected 5xx with ARM's error body.
fn server_error(status: u16) -> ArmError {
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(StatusCode::is_server_error)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = match status {
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        StatusCode::GATEWAY_TIMEOUT => "GatewayTimeout",
        _ => "InternalServerError",
    };
    ArmError::new(status, code, "The server failed (injected fault).")
}

fn policy_not_found(rg: &str, location: &str, name: &str) -> ArmError {
    ArmError::new(
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!(
            "The Resource 'Microsoft.Security/locations/{location}/jitNetworkAccessPolicies/{name}' under resource group '{rg}' was not found."
        ),
    )
}

impl Emulator {
    async fn answer(
        &self,
        parts: &Parts,
        target: Option<Target>,
        body: &[u8],
        caller: IpAddr,
    ) -> Result<Response, ArmError> {
        let principal = self.authenticate(&parts.headers)?;
        let target = target.ok_or_else(|| {
            ArmError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "The emulator has no resource at {} {}.",
                    parts.method,
                    parts.uri.path()
                ),
            )
        })?;
        let route = target.route(&parts.method)?;
        check_api_version(
            route,
            query_param(parts.uri.query(), "api-version").as_deref(),
        )?;
        self.state().check_subscription(target.subscription())?;
        self.check_authorized(route, target.subscription())?;
        let kind = OpKind::of(&parts.method);
        let left = self.take_request(&principal, target.subscription(), kind)?;
        let after = self.apply_fault(route).await?;
        let mut response = self.operate(parts, target, route, body, &principal, caller)?;
        if let Some(header) = kind.remaining_header() {
            response
                .headers_mut()
                .insert(header, HeaderValue::from(left));
        }
        match after {
            Some(fault) => self.strike_after(fault, response).await,
            None => Ok(response),
        }
    }

    /// Azure's role-based access check: the route's action must be among
    /// the caller's granted actions ([`Emulator::set_granted_actions`]),
    /// else 403 `AuthorizationFailed` naming it. Reading one's own
    /// permissions needs no grant.
    fn check_authorized(&self, route: Route, sub: &str) -> Result<(), ArmError> {
        if route == Route::ListPermissions {
            return Ok(());
        }
        let state = self.state();
        let entry = PermissionEntry {
            actions: state.granted_actions.clone(),
            not_actions: Vec::new(),
        };
        if preflight::grants(&[entry], route.action()) {
            return Ok(());
        }
        Err(authorization_failed(
            &state.principal,
            route.action(),
            &format!("/subscriptions/{sub}"),
        ))
    }

    /// Takes one request of `kind` from the caller's bucket for `sub`, as
    /// ARM's token-bucket throttling does ([`throttle`]): the count left,
    /// which ARM reports in a header; empty (or a 429's wait not over),
    /// 429 with `Retry-After`.
    fn take_request(&self, principal: &str, sub: &str, kind: OpKind) -> Result<u32, ArmError> {
        let now = self.now();
        let taken = self.state().buckets.take(principal, sub, kind, now);
        taken.map_err(|refused| {
            let seconds = refused.retry_after_s;
            let mut throttled = ArmError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "SubscriptionRequestsThrottled",
                format!(
                    "Number of '{}' requests for subscription exceeded the limit. Please try again after {seconds} seconds.",
                    kind.word()
                ),
            );
            throttled.retry_after = Some(seconds.into());
            throttled
        })
    }

    /// The operation itself, on the emulated state.
    fn operate(
        &self,
        parts: &Parts,
        target: Target,
        route: Route,
        body: &[u8],
        principal: &str,
        caller: IpAddr,
    ) -> Result<Response, ArmError> {
        let now = self.now();
        let mut state = self.state();
        match target {
            Target::Policies { sub, rg, location } => {
                if let Some(rg) = &rg {
                    state.check_resource_group(&sub, rg)?;
                }
                let is = |want: &Option<String>, have: &str| {
                    want.as_deref().is_none_or(|w| w.eq_ignore_ascii_case(have))
                };
                let items = state
                    .policies
                    .iter()
                    .filter(|p| {
                        p.subscription.eq_ignore_ascii_case(&sub)
                            && is(&rg, &p.resource_group)
                            && is(&location, &p.location)
                    })
                    .map(|p| p.to_json(now))
                    .collect();
                page(items, parts, state.page_size)
            }
            Target::Permissions { .. } => Ok(Json(json!({
                "value": [{
                    "actions": state.granted_actions,
                    "notActions": [],
                    "dataActions": [],
                    "notDataActions": [],
                }]
            }))
            .into_response()),
            Target::Resource {
                sub,
                rg,
                kind,
                name,
            } => {
                state.check_resource_group(&sub, &rg)?;
                state
                    .resource_json(&sub, &rg, kind, &name)
                    .map(|body| Json(body).into_response())
                    .ok_or_else(|| {
                        ArmError::new(
                            StatusCode::NOT_FOUND,
                            "ResourceNotFound",
                            format!(
                                "The Resource '{}/{name}' under resource group '{rg}' was not found.",
                                kind.arm_type()
                            ),
                        )
                    })
            }
            Target::Vms { sub } => {
                let items = state
                    .vms
                    .iter()
                    .filter(|v| v.subscription.eq_ignore_ascii_case(&sub))
                    .map(|v| v.to_json())
                    .collect();
                page(items, parts, state.page_size)
            }
            Target::Policy {
                sub,
                rg,
                location,
                name,
                ..
            } => {
                state.check_resource_group(&sub, &rg)?;
                let index = state.policy_index(&sub, &rg, &location, &name);
                match (route, index) {
                    (Route::GetPolicy, Some(i)) => {
                        Ok(Json(state.policies[i].to_json(now)).into_response())
                    }
                    (Route::PutPolicy, index) => {
                        let update =
                            jit::parse_policy_update(body, &sub, &location, &name, &state.vms)?;
                        let i = index.unwrap_or_else(|| {
                            state.policies.push(Policy {
                                subscription: sub,
                                resource_group: rg,
                                location,
                                name,
                                kind: "Basic".to_owned(),
                                virtual_machines: Vec::new(),
                                requests: Vec::new(),
                            });
                            state.policies.len() - 1
                        });
                        let race = state.portal_race.take();
                        let policy = &mut state.policies[i];
                        let read_by_portal = policy.virtual_machines.clone();
                        if let Some(kind) = update.kind {
                            policy.kind = kind;
                        }
                        policy.virtual_machines = update.virtual_machines;
                        let answer = policy.to_json(now);
                        if let Some(added) = race {
                            policy.virtual_machines = jit::with_vm(read_by_portal, added);
                        }
                        Ok(Json(answer).into_response())
                    }
                    (Route::DeletePolicy, Some(i)) => {
                        state.policies.remove(i);
                        Ok(StatusCode::OK.into_response())
                    }
                    (Route::DeletePolicy, None) => Ok(StatusCode::NO_CONTENT.into_response()),
                    (Route::Initiate, Some(i)) => {
                        let model = state.supersede;
                        let requestor = match state.requestor {
                            RequestorModel::ObjectId => principal.to_owned(),
                            RequestorModel::Name => state
                                .requestor_names
                                .get(principal)
                                .cloned()
                                .unwrap_or_else(|| principal.to_owned()),
                        };
                        let answer =
                            state.policies[i].initiate(body, now, &requestor, caller, model)?;
                        Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
                    }
                    _ => Err(policy_not_found(&rg, &location, &name)),
                }
            }
        }
    }

    /// The principal of a valid, unexpired bearer token.
    fn authenticate(&self, headers: &HeaderMap) -> Result<String, ArmError> {
        let unauthorized =
            |code, message: String| ArmError::new(StatusCode::UNAUTHORIZED, code, message);
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| {
                unauthorized(
                    "AuthenticationFailed",
                    "Authentication failed. The 'Authorization' header is missing.".to_owned(),
                )
            })?
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
            .map(|(_, token)| token.trim())
            .ok_or_else(|| {
                unauthorized(
                    "AuthenticationFailed",
                    "Authentication failed. The 'Authorization' header is provided in an invalid format; expected 'Bearer <token>'.".to_owned(),
                )
            })?;
        let now = self.now();
        let state = self.state();
        let token = state.tokens.get(value).ok_or_else(|| {
            unauthorized(
                "InvalidAuthenticationToken",
                "The access token is invalid.".to_owned(),
            )
        })?;
        if !state.directory.is_arm_audience(&token.audience) {
            return Err(unauthorized(
                "InvalidAuthenticationTokenAudience",
                format!(
                    "The access token has been obtained for wrong audience or resource '{}'. It should exactly match with one of the allowed audiences {}.",
                    token.audience,
                    state.directory.arm_audience_list()
                ),
            ));
        }
        if now >= token.expires_at {
            return Err(unauthorized(
                "ExpiredAuthenticationToken",
                format!(
                    "The access token expiry UTC time '{}' is earlier than current UTC time '{}'.",
                    jit::arm_time(token.expires_at),
                    jit::arm_time(now)
                ),
            ));
        }
        Ok(token.principal.clone())
    }

    /// Fires the armed fault for `route`, if any: an error answer, a delay
    /// or a hang; a fault that strikes after the operation is returned for
    /// [`Self::strike_after`].
    pub(super) async fn apply_fault(&self, route: Route) -> Result<Option<Fault>, ArmError> {
        let fault = self.state().faults.take(route);
        match fault {
            None => Ok(None),
            Some(fault) if fault.after_apply() => Ok(Some(fault)),
            Some(Fault::Throttle { retry_after_secs }) => Err(ArmError {
                retry_after: Some(retry_after_secs),
                ..ArmError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TooManyRequests",
                    format!(
                        "The request was throttled (injected fault); retry after {retry_after_secs} seconds."
                    ),
                )
            }),
            Some(Fault::ServerError { status }) => Err(server_error(status)),
            Some(Fault::Forbidden) => Err(authorization_failed(
                &self.state().principal,
                route.action(),
                "/subscriptions",
            )),
            Some(Fault::Latency { millis }) => {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(None)
            }
            Some(_) => Err(self.hang().await),
        }
    }

    /// Spoils the answer to an operation already applied, as `fault` says.
    async fn strike_after(&self, fault: Fault, response: Response) -> Result<Response, ArmError> {
        match fault {
            Fault::ServerErrorAfterApply { status } => Err(server_error(status)),
            Fault::TruncatedBody => {
                let (mut parts, body) = response.into_parts();
                let bytes = axum::body::to_bytes(body, MAX_BODY)
                    .await
                    .unwrap_or_default();
                parts.headers.remove(header::CONTENT_LENGTH);
                let cut = bytes.slice(..bytes.len() / 2);
                Ok(Response::from_parts(parts, axum::body::Body::from(cut)))
            }
            _ => Err(self.hang().await),
        }
    }

    /// Holds the call until the emulator shuts down or an hour passes.
    async fn hang(&self) -> ArmError {
        let release = self.hang_release();
        tokio::select! {
            () = release.cancelled() => {}
            () = self.inner.hangs_released.notified() => {}
            () = tokio::time::sleep(HANG_FOR) => {}
        }
        ArmError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The emulator stopped during an injected hang.",
        )
    }

    fn record_call(&self, parts: &Parts, route: Option<Route>, body: Option<&[u8]>) -> u64 {
        let at = self.now();
        let body = body.and_then(|b| serde_json::from_slice(b).ok());
        let mut state = self.state();
        let id = state.next_call_id;
        state.next_call_id += 1;
        state.calls.push(CallRecord {
            id,
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            route,
            status: 0,
            body,
            at,
        });
        id
    }

    fn finish_call(&self, id: u64, status: StatusCode) {
        if let Some(call) = self.state().calls.iter_mut().rev().find(|c| c.id == id) {
            call.status = status.as_u16();
        }
    }

    /// Both managed-identity protocols: check, maybe fault, issue; logged.
    async fn token(&self, imds: bool, headers: &HeaderMap, query: Option<&str>) -> Response {
        self.state().token_requests += 1;
        let resource = query_param(query, "resource").unwrap_or_default();
        let response = match self
            .managed_identity_token(imds, headers, query, &resource)
            .await
        {
            Ok(response) | Err(response) => response,
        };
        self.log_token(TokenRecord {
            endpoint: if imds {
                TokenEndpoint::Imds
            } else {
                TokenEndpoint::AppService
            },
            resource,
            client_id: query_param(query, "client_id"),
            status: response.status().as_u16(),
            at: self.now(),
        });
        response
    }

    async fn managed_identity_token(
        &self,
        imds: bool,
        headers: &HeaderMap,
        query: Option<&str>,
        resource: &str,
    ) -> Result<Response, Response> {
        check_managed_identity_request(self, imds, headers, query)
            .map_err(IntoResponse::into_response)?;
        if resource.is_empty() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The resource parameter is required",
            ));
        }
        let now = self.now();
        {
            let state = self.state();
            if !state.directory.knows(resource) {
                let tenant = state.directory.tenant_id().to_owned();
                return Err(EntraError::unknown_resource(resource, &tenant).into_response_at(now));
            }
        }
        self.apply_fault(Route::Token)
            .await
            .map_err(IntoResponse::into_response)?;
        let (token, expires_at) = self.issue_for(resource);
        let expires_on = expires_at.timestamp().to_string();
        let body = if imds {
            let expires_in = (expires_at - now).num_seconds().to_string();
            json!({
                "access_token": token,
                "refresh_token": "",
                "expires_in": expires_in,
                "expires_on": expires_on,
                "ext_expires_in": expires_in,
                "not_before": now.timestamp().to_string(),
                "resource": resource,
                "token_type": "Bearer",
            })
        } else {
            json!({
                "access_token": token,
                "expires_on": expires_on,
                "resource": resource,
                "token_type": "Bearer",
            })
        };
        Ok(Json(body).into_response())
    }
}

fn refuse(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// A managed-identity endpoint refusing a request: status, error, description.
struct Refusal(StatusCode, &'static str, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refuse(self.0, self.1, self.2)
    }
}

/// The protocol checks of the IMDS and App Service endpoints.
fn check_managed_identity_request(
    emulator: &Emulator,
    imds: bool,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), Refusal> {
    let version = query_param(query, "api-version").unwrap_or_default();
    let header_is = |name: &str, want: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(want))
    };
    let bad = |description| Refusal(StatusCode::BAD_REQUEST, "invalid_request", description);
    if imds {
        if !matches!(version.as_str(), "2018-02-01" | "2019-08-01") {
            return Err(bad("api-version must be 2018-02-01 or 2019-08-01"));
        }
        if !header_is("metadata", "true") {
            return Err(bad("Required metadata header not specified"));
        }
        return Ok(());
    }
    if version != "2019-08-01" {
        return Err(bad("api-version must be 2019-08-01"));
    }
    let secret = emulator.identity_header();
    let given = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if given != Some(secret.as_str()) {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The x-identity-header header is missing or wrong",
        ));
    }
    Ok(())
}

async fn app_service_token(
    State(emulator): State<Emulator>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    emulator.token(false, &headers, query.as_deref()).await
}

async fn imds_token(
    State(emulator): State<Emulator>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    emulator.token(true, &headers, query.as_deref()).await
}

#[derive(Deserialize)]
struct FaultRequest {
    route: Route,
    fault: Fault,
    when: Trigger,
}

async fn add_fault(State(emulator): State<Emulator>, body: Bytes) -> Response {
    let request: FaultRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ArmError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
                format!("expected {{\"route\",\"fault\",\"when\"}}: {e}"),
            )
            .into_response();
        }
    };
    if let Trigger::Probability(p) = request.when
        && !(0.0..=1.0).contains(&p)
    {
        return ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
            format!("probability {p} is not within 0..=1"),
        )
        .into_response();
    }
    emulator.inject(
        request.route,
        FaultRule {
            fault: request.fault,
            when: request.when,
        },
    );
    StatusCode::NO_CONTENT.into_response()
}

async fn clear_faults(State(emulator): State<Emulator>) -> StatusCode {
    emulator.clear_faults();
    StatusCode::NO_CONTENT
}

async fn nsg(State(emulator): State<Emulator>, RawQuery(query): RawQuery) -> Response {
    let Some(vm) = query_param(query.as_deref(), "vm") else {
        return ArmError::new(
            StatusCode::BAD_REQUEST,
            "MissingParameter",
            "?vm=<VM resource id> is required",
        )
        .into_response();
    };
    let known = emulator
        .state()
        .vms
        .iter()
        .any(|v| v.id.eq_ignore_ascii_case(&vm));
    if !known {
        return ArmError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!("no virtual machine '{vm}'"),
        )
        .into_response();
    }
    Json(emulator.nsg_rules(&vm)).into_response()
}

async fn calls(State(emulator): State<Emulator>) -> Json<Vec<CallRecord>> {
    Json(emulator.calls())
}

async fn clear_calls(State(emulator): State<Emulator>) -> StatusCode {
    emulator.clear_calls();
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_paths_match_case_insensitively_and_keep_values() {
        let t = Target::parse(
            "/subscriptions/S/resourcegroups/My%20Rg/providers/microsoft.security/Locations/westeurope/JitNetworkAccessPolicies/default/Initiate",
        )
        .unwrap();
        match t {
            Target::Policy {
                sub,
                rg,
                location,
                name,
                action,
            } => {
                assert_eq!(
                    (sub.as_str(), rg.as_str(), location.as_str(), name.as_str()),
                    ("S", "My Rg", "westeurope", "default")
                );
                assert_eq!(action.as_deref(), Some("Initiate"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Target::parse("/subscriptions/S/providers/Microsoft.Compute/virtualMachines").is_some()
        );
        assert!(
            Target::parse("/subscriptions//providers/Microsoft.Compute/virtualMachines").is_none()
        );
        assert!(Target::parse("/subscriptions/S/providers/Microsoft.Security/x").is_none());
        assert!(
            Target::parse("/subscriptions/%zz/providers/Microsoft.Compute/virtualMachines")
                .is_none()
        );
    }

    #[test]
    fn compute_versions_are_dates_from_2015_on() {
        assert!(is_compute_version("2024-07-01"));
        assert!(is_compute_version("2023-03-01"));
        assert!(is_compute_version("2022-08-01-preview"));
        assert!(!is_compute_version("2014-01-01"));
        assert!(!is_compute_version("2024-13-01"));
        assert!(!is_compute_version("latest"));
    }
}
