//! The ARM client for the JIT API: list, get, put (enable), initiate, close early.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::{Serialize, de::DeserializeOwned};
use tokio::time::Instant;
use url::Url;

use super::{
    credential::TokenSource,
    error::{ArmError, ArmStats, Operation, is_wrong_audience},
    ids::{VmId, check_subscription},
    pacing::ReadPacer,
    retry::{RetryPolicy, server_retry_hint},
    wire::{
        COMPUTE_API_VERSION, ComputeVm, InitiatePort, InitiateRequest, InitiateVm, JIT_API_VERSION,
        JitRequest, NETWORK_API_VERSION, Nic, PERMISSIONS_API_VERSION, PageSeed, Permission,
        Policy, PolicyPut, PolicyPutProperties, PolicyVm, PortRule, PublicIp, VmDetail,
    },
};
use crate::clock::SharedClock;
use crate::domain::connect::{Connection, SSH_USER_TAG};
use crate::domain::preflight::PermissionEntry;
use crate::domain::{PolicyDefaults, PolicyId};

/// Most pages one list may span before we call it a loop.
const MAX_PAGES: usize = 10_000;

/// How to build an [`ArmClient`].
#[derive(Debug, Clone)]
pub struct ArmClientOptions {
    /// ARM base URL (may carry a path prefix).
    pub arm_endpoint: Url,
    /// Bearer tokens.
    pub token_source: Arc<dyn TokenSource>,
    /// Limit on one HTTP request, connect to last body byte.
    pub request_timeout: Duration,
    /// Retries on 429, 5xx, timeouts and connection errors.
    pub retry: RetryPolicy,
    /// "Now", for HTTP-date `Retry-After` values.
    pub clock: SharedClock,
}

/// The policy name `/jit-admin enable` creates, as the portal does.
pub const ENABLE_POLICY_NAME: &str = "default";

/// Azure Resource Manager client for the JIT API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ArmClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: Url,
    tokens: Arc<dyn TokenSource>,
    retry: RetryPolicy,
    clock: SharedClock,
    stats: ArmStats,
    /// The subscription read bucket as ARM last reported it.
    pacer: ReadPacer,
}

/// Why an attempt should be retried.
enum Transient {
    Throttled(Option<Duration>),
    Failed(String, Option<Duration>),
}

impl ArmClient {
    /// Who our token names ([`super::Bearer::identities`]): Drawbridge's own
    /// identity, known before any initiate, so a request is taken for ours
    /// only if Azure's `requestor` is one of these.
    ///
    /// # Errors
    /// [`ArmError::Unauthorized`] when no token can be had.
    pub async fn identity(&self) -> Result<Vec<String>, ArmError> {
        let bearer = self
            .inner
            .tokens
            .bearer()
            .await
            .map_err(|e| ArmError::Unauthorized {
                message: e.to_string(),
            })?;
        Ok(bearer.identities())
    }

    /// Builds the client.
    ///
    /// # Errors
    /// [`ArmError::InvalidInput`] for a non-http endpoint; `Unexpected` if the
    /// HTTP client cannot be built.
    pub fn new(options: ArmClientOptions) -> Result<Self, ArmError> {
        if !matches!(options.arm_endpoint.scheme(), "http" | "https")
            || options.arm_endpoint.host().is_none()
        {
            return Err(ArmError::InvalidInput(format!(
                "ARM endpoint {} is not an http(s) URL",
                options.arm_endpoint
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the ARM HTTP client")?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base: options.arm_endpoint,
                tokens: options.token_source,
                retry: options.retry,
                clock: options.clock,
                stats: ArmStats::default(),
                pacer: ReadPacer::default(),
            }),
        })
    }

    /// Requests sent so far, by operation and status.
    pub fn stats(&self) -> &ArmStats {
        &self.inner.stats
    }

    /// Whether ARM's read bucket has at least half left, as last reported
    /// ([`ReadPacer::plenty`]): reads that can be done without wait for it.
    pub fn reads_plenty(&self) -> bool {
        self.inner.pacer.plenty(std::time::Instant::now())
    }

    /// All JIT policies of a subscription, every page.
    ///
    /// # Errors
    /// [`ArmError`]; `InvalidInput` when `subscription` is not a GUID.
    pub async fn list_policies(&self, subscription: &str) -> Result<Vec<Policy>, ArmError> {
        check_subscription(subscription)?;
        let url = self.url(
            &[
                "subscriptions",
                subscription,
                "providers",
                "Microsoft.Security",
                "jitNetworkAccessPolicies",
            ],
            JIT_API_VERSION,
        );
        self.list_all(Operation::ListPolicies, url).await
    }

    /// All VMs of a subscription (for coverage reports), every page.
    ///
    /// # Errors
    /// [`ArmError`]; `InvalidInput` when `subscription` is not a GUID.
    pub async fn list_vms(&self, subscription: &str) -> Result<Vec<ComputeVm>, ArmError> {
        let mut vms = Vec::new();
        self.each_vm(subscription, &mut |vm| vms.push(vm)).await?;
        Ok(vms)
    }

    /// Every VM of a subscription, each handed to `sink` as it is parsed:
    /// no page and no list of the estate is kept.
    ///
    /// # Errors
    /// [`ArmError`]; `InvalidInput` when `subscription` is not a GUID.
    pub async fn each_vm(
        &self,
        subscription: &str,
        sink: &mut (dyn FnMut(ComputeVm) + Send),
    ) -> Result<(), ArmError> {
        check_subscription(subscription)?;
        let url = self.url(
            &[
                "subscriptions",
                subscription,
                "providers",
                "Microsoft.Compute",
                "virtualMachines",
            ],
            COMPUTE_API_VERSION,
        );
        self.list_each(Operation::ListVms, url, sink).await
    }

    /// The caller's effective permissions in a subscription, one entry per
    /// role assignment (read by `drawbridge preflight`).
    ///
    /// # Errors
    /// [`ArmError`]; `InvalidInput` when `subscription` is not a GUID.
    pub async fn list_permissions(
        &self,
        subscription: &str,
    ) -> Result<Vec<PermissionEntry>, ArmError> {
        check_subscription(subscription)?;
        let url = self.url(
            &[
                "subscriptions",
                subscription,
                "providers",
                "Microsoft.Authorization",
                "permissions",
            ],
            PERMISSIONS_API_VERSION,
        );
        let entries: Vec<Permission> = self.list_all(Operation::ListPermissions, url).await?;
        Ok(entries
            .into_iter()
            .map(|p| PermissionEntry {
                actions: p.actions,
                not_actions: p.not_actions,
            })
            .collect())
    }

    /// One JIT policy.
    ///
    /// # Errors
    /// [`ArmError::NotFound`] when it does not exist; other [`ArmError`]s.
    pub async fn get_policy(&self, policy: &PolicyId) -> Result<Policy, ArmError> {
        let url = self.url(&policy.segments(), JIT_API_VERSION);
        let body = self
            .send(Operation::GetPolicy, Method::GET, url, None::<&()>)
            .await?;
        parse(Operation::GetPolicy, &body)
    }

    /// Creates or replaces a JIT policy with exactly `virtual_machines`
    /// (the PUT replaces the whole array: include every VM to keep).
    ///
    /// # Errors
    /// [`ArmError`].
    pub async fn put_policy(
        &self,
        policy: &PolicyId,
        virtual_machines: Vec<PolicyVm>,
    ) -> Result<Policy, ArmError> {
        let body = PolicyPut {
            kind: "Basic".to_owned(),
            properties: PolicyPutProperties { virtual_machines },
        };
        let url = self.url(&policy.segments(), JIT_API_VERSION);
        let body = self
            .send(Operation::PutPolicy, Method::PUT, url, Some(&body))
            .await?;
        parse(Operation::PutPolicy, &body)
    }

    /// Enables JIT for a VM: reads the policy [`ENABLE_POLICY_NAME`] in
    /// `resource_group`/`location` (absent = a new one), merges the VM into its
    /// `virtualMachines` without touching the other VMs (a VM already present
    /// keeps its rules and gains only missing default ports), and PUTs it back.
    /// Nothing is written when nothing would change.
    ///
    /// # Errors
    /// [`ArmError`]; `InvalidInput` for malformed ids.
    pub async fn enable_vm(
        &self,
        subscription: &str,
        resource_group: &str,
        location: &str,
        vm_id: &str,
        defaults: &PolicyDefaults,
    ) -> Result<Policy, ArmError> {
        let vm = VmId::parse(vm_id)?;
        let policy = PolicyId::new(subscription, resource_group, location, ENABLE_POLICY_NAME)?;
        let existing = match self.get_policy(&policy).await {
            Ok(existing) => Some(existing),
            Err(ArmError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let mut vms = existing
            .as_ref()
            .map(|p| p.properties.virtual_machines.clone())
            .unwrap_or_default();
        let rule = |number| PortRule {
            number,
            protocol: "*".to_owned(),
            allowed_source_address_prefix: Some(defaults.source.to_string()),
            allowed_source_address_prefixes: None,
            max_request_access_duration: defaults.max_duration.to_iso8601(),
            extra: Default::default(),
        };
        match vms.iter_mut().find(|v| v.id.eq_ignore_ascii_case(vm_id)) {
            Some(entry) => {
                for &port in &defaults.ports {
                    if !entry.ports.iter().any(|p| p.number == port) {
                        entry.ports.push(rule(port));
                    }
                }
            }
            None => vms.push(PolicyVm {
                id: vm.to_string(),
                ports: defaults.ports.iter().map(|&p| rule(p)).collect(),
                public_ip_address: None,
                extra: Default::default(),
            }),
        }
        match existing {
            Some(existing) if existing.properties.virtual_machines == vms => Ok(existing),
            _ => self.put_policy(&policy, vms).await,
        }
    }

    /// Asks Azure to open `ports` of `vm_id` for `source` (`*`, an IP or a CIDR)
    /// until `end_time_utc`. One ARM request (plus retries).
    ///
    /// # Errors
    /// [`ArmError`]; `InvalidInput` for a malformed VM id, source or empty ports.
    pub async fn initiate(
        &self,
        policy: &PolicyId,
        vm_id: &str,
        ports: &[u16],
        end_time_utc: DateTime<Utc>,
        source: &str,
        justification: &str,
    ) -> Result<JitRequest, ArmError> {
        let vm = VmId::parse(vm_id)?;
        if ports.is_empty() {
            return Err(ArmError::InvalidInput("no ports to open".to_owned()));
        }
        if source != "*"
            && source.parse::<ipnet::IpNet>().is_err()
            && source.parse::<std::net::IpAddr>().is_err()
        {
            return Err(ArmError::InvalidInput(format!(
                "source {source:?} is not `*`, an IP address or a CIDR"
            )));
        }
        let body = InitiateRequest {
            virtual_machines: vec![InitiateVm {
                id: vm.to_string(),
                ports: ports
                    .iter()
                    .map(|&number| InitiatePort {
                        number,
                        end_time_utc,
                        allowed_source_address_prefix: source.to_owned(),
                    })
                    .collect(),
            }],
            justification: (!justification.is_empty()).then(|| justification.to_owned()),
        };
        let mut url = self.url(&policy.segments(), JIT_API_VERSION);
        url.path_segments_mut()
            .expect("http URL has a path")
            .push("initiate");
        let body = self
            .send(Operation::Initiate, Method::POST, url, Some(&body))
            .await?;
        parse(Operation::Initiate, &body)
    }

    /// How to reach the VM `vm_id`: its primary network interface's
    /// private address and public IP (with its DNS name), and the SSH
    /// user (the `drawbridge-ssh-user` tag, else the OS profile's admin
    /// user). Three reads: VM, network interface, public IP, each tried
    /// once: the address can be done without, and a retry after a 429
    /// would take reads from the bucket that read-backs need.
    ///
    /// # Errors
    /// [`ArmError`]; `InvalidInput` for a malformed VM id or a reference
    /// in Azure's answer that is not a resource of the expected type.
    pub async fn connection(&self, vm_id: &str) -> Result<Connection, ArmError> {
        VmId::parse(vm_id)?;
        let vm: VmDetail = self
            .get_resource_once(Operation::GetVm, vm_id, COMPUTE_API_VERSION)
            .await?;
        let ssh_user = vm.tags.get(SSH_USER_TAG).cloned().or_else(|| {
            vm.properties
                .os_profile
                .as_ref()
                .and_then(|p| p.admin_username.clone())
        });
        let nics = vm
            .properties
            .network_profile
            .map(|p| p.network_interfaces)
            .unwrap_or_default();
        let primary = nics
            .iter()
            .find(|n| n.properties.as_ref().and_then(|p| p.primary) == Some(true))
            .or(nics.first());
        let mut connection = Connection {
            fqdn: None,
            public_ip: None,
            private_ip: None,
            ssh_user,
        };
        let Some(nic_ref) = primary else {
            return Ok(connection);
        };
        let nic_id = resource_id(&nic_ref.id, "Microsoft.Network/networkInterfaces")?;
        let nic: Nic = self
            .get_resource_once(Operation::GetNic, &nic_id, NETWORK_API_VERSION)
            .await?;
        let configs = &nic.properties.ip_configurations;
        let Some(config) = configs
            .iter()
            .find(|c| c.properties.primary == Some(true))
            .or(configs.first())
        else {
            return Ok(connection);
        };
        connection.private_ip = config
            .properties
            .private_ip_address
            .as_deref()
            .and_then(|ip| ip.parse().ok());
        if let Some(public) = &config.properties.public_ip_address {
            let ip_id = resource_id(&public.id, "Microsoft.Network/publicIPAddresses")?;
            let ip: PublicIp = self
                .get_resource_once(Operation::GetPublicIp, &ip_id, NETWORK_API_VERSION)
                .await?;
            connection.public_ip = ip
                .properties
                .ip_address
                .as_deref()
                .and_then(|a| a.parse().ok());
            connection.fqdn = ip
                .properties
                .dns_settings
                .and_then(|d| d.fqdn)
                .filter(|f| !f.is_empty());
        }
        Ok(connection)
    }

    /// One read of the resource `id`, not retried.
    async fn get_resource_once<T: DeserializeOwned>(
        &self,
        op: Operation,
        id: &str,
        api_version: &str,
    ) -> Result<T, ArmError> {
        let segments: Vec<&str> = id.trim_start_matches('/').split('/').collect();
        let url = self.url(&segments, api_version);
        let once = RetryPolicy {
            max_attempts: 1,
            ..self.inner.retry
        };
        let body = self
            .send_with(op, Method::GET, url, None::<&()>, once)
            .await?;
        parse(op, &body)
    }

    /// `base` + segments (each percent-encoded) + `?api-version=`.
    fn url(&self, segments: &[&str], api_version: &str) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("http URL has a path")
            .pop_if_empty()
            .extend(segments);
        url.query_pairs_mut()
            .append_pair("api-version", api_version);
        url
    }

    async fn list_all<T: DeserializeOwned + Send>(
        &self,
        op: Operation,
        first: Url,
    ) -> Result<Vec<T>, ArmError> {
        let mut items = Vec::new();
        self.list_each(op, first, &mut |item| items.push(item))
            .await?;
        Ok(items)
    }

    /// Every item of a paged list, handed to `sink` as it is parsed: no page
    /// is kept once read. Pages after the first wait while the subscription's
    /// read bucket is nearly empty ([`ReadPacer`]).
    async fn list_each<T: DeserializeOwned + Send>(
        &self,
        op: Operation,
        first: Url,
        sink: &mut (dyn FnMut(T) + Send),
    ) -> Result<(), ArmError> {
        let mut next = Some(first);
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(anyhow::anyhow!(
                    "{op}: more than {MAX_PAGES} pages; is nextLink looping?"
                )
                .into());
            }
            if pages > 1 {
                self.pace_reads().await;
            }
            let body = self.send(op, Method::GET, url, None::<&()>).await?;
            let link = parse_page(op, &body, sink)?;
            drop(body);
            next = link
                .map(|link| self.check_next_link(op, &link))
                .transpose()?;
        }
        Ok(())
    }

    /// Every JIT policy of a subscription, each handed to `sink` as it is
    /// parsed (the VM index and the reconciler read one listing together).
    ///
    /// # Errors
    /// [`ArmError`]; `InvalidInput` when `subscription` is not a GUID.
    pub async fn each_policy(
        &self,
        subscription: &str,
        sink: &mut (dyn FnMut(Policy) + Send),
    ) -> Result<(), ArmError> {
        check_subscription(subscription)?;
        let url = self.url(
            &[
                "subscriptions",
                subscription,
                "providers",
                "Microsoft.Security",
                "jitNetworkAccessPolicies",
            ],
            JIT_API_VERSION,
        );
        self.list_each(Operation::ListPolicies, url, sink).await
    }

    /// The JIT policies of one resource group (a direct look-up while the
    /// index is still loading).
    ///
    /// # Errors
    /// [`ArmError`]; `InvalidInput` when `subscription` is not a GUID or
    /// `resource_group` is not a resource group name.
    pub async fn list_policies_in_group(
        &self,
        subscription: &str,
        resource_group: &str,
    ) -> Result<Vec<Policy>, ArmError> {
        check_subscription(subscription)?;
        crate::domain::ResourceGroupName::parse(resource_group)
            .map_err(|e| ArmError::InvalidInput(e.to_string()))?;
        let url = self.url(
            &[
                "subscriptions",
                subscription,
                "resourceGroups",
                resource_group,
                "providers",
                "Microsoft.Security",
                "jitNetworkAccessPolicies",
            ],
            JIT_API_VERSION,
        );
        self.list_all(Operation::ListPolicies, url).await
    }

    /// Waits while the last read left the bucket under 10 %.
    async fn pace_reads(&self) {
        let wait = self.inner.pacer.delay(std::time::Instant::now());
        if !wait.is_zero() {
            tracing::debug!(
                wait_ms = wait.as_millis() as u64,
                "ARM read bucket under 10 %: pacing the list"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// A nextLink is followed verbatim, but only on the ARM endpoint's origin:
    /// the bearer token must never go anywhere else.
    fn check_next_link(&self, op: Operation, link: &str) -> Result<Url, ArmError> {
        let url =
            Url::parse(link).with_context(|| format!("{op}: nextLink is not an absolute URL"))?;
        if url.origin() != self.inner.base.origin() {
            return Err(anyhow::anyhow!(
                "{op}: refusing to follow a nextLink to another origin ({}) with our token",
                url.origin().ascii_serialization()
            )
            .into());
        }
        Ok(url)
    }

    /// Sends one request with retries; returns the body of a 2xx answer.
    async fn send<B: Serialize + ?Sized>(
        &self,
        op: Operation,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<Vec<u8>, ArmError> {
        self.send_with(op, method, url, body, self.inner.retry)
            .await
    }

    /// [`ArmClient::send`] with the retry `policy` given.
    async fn send_with<B: Serialize + ?Sized>(
        &self,
        op: Operation,
        method: Method,
        url: Url,
        body: Option<&B>,
        policy: RetryPolicy,
    ) -> Result<Vec<u8>, ArmError> {
        let inner = &self.inner;
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .context("serializing the request")?;
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut refused_token = false;
        loop {
            attempt += 1;
            let bearer = inner
                .tokens
                .bearer()
                .await
                .map_err(|e| ArmError::Unauthorized {
                    message: e.to_string(),
                })?;
            let mut req = inner
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(bearer.expose())
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(body) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let t0 = Instant::now();
            let outcome = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    read_body(resp).await.map(|b| (status, headers, b))
                }
                Err(e) => Err(e),
            };
            let latency_ms = t0.elapsed().as_millis() as u64;
            let transient = match outcome {
                Ok((status, headers, bytes)) => {
                    inner.stats.record(op, status.as_u16(), t0.elapsed());
                    tracing::debug!(
                        operation = op.name(),
                        status = status.as_u16(),
                        latency_ms,
                        attempt,
                        "ARM call"
                    );
                    if method == Method::GET {
                        inner.pacer.observe(&headers, std::time::Instant::now());
                    }
                    if status.is_success() {
                        return Ok(bytes);
                    }
                    let hint = server_retry_hint(&headers, inner.clock.now());
                    match status {
                        StatusCode::UNAUTHORIZED
                            if !refused_token && !is_wrong_audience(&bytes) =>
                        {
                            // A token ARM refuses (expired early, revoked): get a new one once.
                            refused_token = true;
                            inner.tokens.reject(&bearer);
                            attempt -= 1;
                            continue;
                        }
                        StatusCode::TOO_MANY_REQUESTS => Transient::Throttled(hint),
                        StatusCode::REQUEST_TIMEOUT => Transient::Failed("408".to_owned(), hint),
                        s if s.is_server_error() => Transient::Failed(s.as_u16().to_string(), hint),
                        s => return Err(ArmError::from_response(op, s, &bytes)),
                    }
                }
                Err(e) => {
                    inner.stats.record(op, 0, t0.elapsed());
                    let kind = if e.is_timeout() {
                        "timeout"
                    } else if e.is_connect() {
                        "connection error"
                    } else {
                        "transport error"
                    };
                    tracing::debug!(
                        operation = op.name(),
                        status = kind,
                        latency_ms,
                        attempt,
                        "ARM call failed"
                    );
                    Transient::Failed(kind.to_owned(), None)
                }
            };
            let (exhausted, hint) = match transient {
                Transient::Throttled(hint) => (ArmError::Throttled { attempts: attempt }, hint),
                Transient::Failed(last, hint) => (
                    ArmError::Unavailable {
                        attempts: attempt,
                        last,
                    },
                    hint,
                ),
            };
            if attempt >= policy.max_attempts || applied_maybe(op, &exhausted) {
                return Err(exhausted);
            }
            let delay = policy.delay(attempt - 1, hint, &mut rand::rng());
            if started.elapsed() + delay > policy.max_total {
                return Err(exhausted);
            }
            tracing::debug!(
                operation = op.name(),
                attempt,
                delay_ms = delay.as_millis() as u64,
                "retrying ARM call"
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// Whether a failed call may still have taken effect in Azure and so must
/// not be sent again: an initiate that reached ARM (a 5xx, 408, timeout or
/// broken transfer; not a refused connection). A second initiate would open
/// a second window; the caller reads the policy back instead.
fn applied_maybe(op: Operation, error: &ArmError) -> bool {
    matches!(op, Operation::Initiate)
        && matches!(error, ArmError::Unavailable { last, .. } if last != "connection error")
}

/// The body, chunk by chunk into one buffer sized by `Content-Length`:
/// collecting it whole first would hold a large page twice.
async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let size = resp.content_length().unwrap_or(0).min(64 << 20);
    let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = resp.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Streams one list page into `sink`; returns its `nextLink`.
fn parse_page<T: DeserializeOwned>(
    op: Operation,
    body: &[u8],
    sink: &mut (dyn FnMut(T) + Send),
) -> Result<Option<String>, ArmError> {
    use serde::de::DeserializeSeed as _;
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut sink = |item: T| sink(item);
    PageSeed { sink: &mut sink }
        .deserialize(&mut de)
        .and_then(|link| de.end().map(|()| link))
        .with_context(|| format!("{op}: ARM answered a body that does not parse"))
        .map_err(ArmError::Unexpected)
}

fn parse<T: DeserializeOwned>(op: Operation, body: &[u8]) -> Result<T, ArmError> {
    serde_json::from_slice(body)
        .with_context(|| format!("{op}: ARM answered a body that does not parse"))
        .map_err(ArmError::Unexpected)
}

/// `id` if it is an ARM resource id of `kind` (`Microsoft.Network/networkInterfaces`):
/// `/subscriptions/{s}/resourceGroups/{rg}/providers/{kind}/{name}`.
fn resource_id(id: &str, kind: &str) -> Result<String, ArmError> {
    let parts: Vec<&str> = id.trim_start_matches('/').split('/').collect();
    let well_formed = matches!(parts.as_slice(),
        [subs, _, rgs, _, providers, ns, ty, name]
            if subs.eq_ignore_ascii_case("subscriptions")
                && rgs.eq_ignore_ascii_case("resourceGroups")
                && providers.eq_ignore_ascii_case("providers")
                && format!("{ns}/{ty}").eq_ignore_ascii_case(kind)
                && !name.is_empty())
        && parts
            .iter()
            .all(|p| !p.is_empty() && *p != "." && *p != "..");
    if well_formed {
        Ok(format!("/{}", parts.join("/")))
    } else {
        Err(ArmError::InvalidInput(format!(
            "Azure referred to {id:?}, which is not a {kind} resource id"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        azure::credential::{AzureTokenSource, CredentialKind, CredentialOptions},
        clock::SystemClock,
    };

    /// A client that is never used to send: building a managed identity
    /// credential does no I/O.
    fn client(base: &str) -> ArmClient {
        let clock: SharedClock = Arc::new(SystemClock);
        let tokens = AzureTokenSource::new(CredentialOptions {
            kind: CredentialKind::ManagedIdentity,
            tenant_id: None,
            client_id: None,
            client_secret: None,
            user_assigned_id: None,
            federated_token_file: None,
            authority_host: Url::parse("https://login.microsoftonline.com").unwrap(),
            scope: "https://management.azure.com/.default".into(),
            managed_identity_endpoint: None,
            timeout: Duration::from_secs(1),
            clock: clock.clone(),
        })
        .unwrap();
        ArmClient::new(ArmClientOptions {
            arm_endpoint: Url::parse(base).unwrap(),
            token_source: Arc::new(tokens),
            request_timeout: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            clock,
        })
        .unwrap()
    }

    const SUB: &str = "20ff7fc3-e762-44dd-bd96-b71116dcdc23";

    #[test]
    fn urls_are_built_segment_by_segment_under_the_base_path() {
        let policy = PolicyId::new(SUB, "Grüne(1)", "westeurope", "default").unwrap();
        let c = client("https://arm.example/prefix");
        assert_eq!(
            c.url(&policy.segments(), JIT_API_VERSION).as_str(),
            format!(
                "https://arm.example/prefix/subscriptions/{SUB}/resourceGroups/Gr%C3%BCne(1)/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default?api-version=2020-01-01"
            )
        );
        let c = client("https://management.azure.com/");
        assert!(
            c.url(&["a"], "v")
                .as_str()
                .starts_with("https://management.azure.com/a?")
        );
    }

    #[test]
    fn next_links_must_stay_on_the_arm_origin() {
        let c = client("https://management.azure.com");
        assert!(
            c.check_next_link(
                Operation::ListPolicies,
                "https://management.azure.com/x?$skipToken=1"
            )
            .is_ok()
        );
        for bad in [
            "https://evil.example/x",
            "http://management.azure.com/x",
            "https://management.azure.com:444/x",
            "/relative",
        ] {
            assert!(
                c.check_next_link(Operation::ListPolicies, bad).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn bad_inputs_are_refused_before_any_request() {
        let c = client("http://127.0.0.1:9");
        let policy = PolicyId::new(SUB, "rg", "westeurope", "default").unwrap();
        let vm = format!(
            "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1"
        );
        let end = Utc::now();
        for (vm, ports, source) in [
            ("../../x", &[22][..], "*"),
            (vm.as_str(), &[][..], "*"),
            (vm.as_str(), &[22][..], "10.0.0.0/33"),
            (vm.as_str(), &[22][..], "me"),
        ] {
            let err = c
                .initiate(&policy, vm, ports, end, source, "")
                .await
                .unwrap_err();
            assert!(matches!(err, ArmError::InvalidInput(_)), "{err:?}");
        }
        assert!(matches!(
            c.list_policies("not-a-sub").await,
            Err(ArmError::InvalidInput(_))
        ));
        assert!(c.stats().snapshot().is_empty());
    }
}
