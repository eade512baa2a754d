//! The JIT model: policies and their request history, validation of PUT and
//! initiate bodies as the 2020-01-01 schema and Azure define them, and the NSG
//! rules JIT would maintain for them.

use std::collections::HashSet;
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::estate::VirtualMachine;

/// The ARM resource type of a JIT policy.
pub(crate) const POLICY_TYPE: &str = "Microsoft.Security/locations/jitNetworkAccessPolicies";

/// The shortest `maxRequestAccessDuration` Azure accepts.
const MIN_MAX_DURATION: Duration = Duration::minutes(5);
/// The longest `maxRequestAccessDuration` Azure accepts.
const MAX_MAX_DURATION: Duration = Duration::days(1);

/// Which earlier requests a new initiate supersedes (`Revoked`,
/// `NewerRequestInitiated`). Azure's documentation does not say; the REST
/// spec only names the reason. Drawbridge must report the truth under
/// either, so the emulator models both (see docs/operations.md, "Azure keeps
/// one window per port").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupersedeModel {
    /// A newer request supersedes every open one on the same VM and port,
    /// whatever its source: one window per port.
    #[default]
    AnyOnPort,
    /// A newer request supersedes only an open one on the same VM and port
    /// for the same source; other sources keep their windows.
    SameSource,
}

impl SupersedeModel {
    fn supersedes(self, old: &RequestPort, new: &RequestPort) -> bool {
        old.number == new.number
            && match self {
                Self::AnyOnPort => true,
                Self::SameSource => old.source.eq_ignore_ascii_case(&new.source),
            }
    }
}

/// What Azure writes as a request's `requestor`. The REST spec calls it
/// "the identity of the person who made the request" and its examples show
/// a UPN (`barbara@contoso.com`); for a service principal it may be its
/// object id, its app id or its display name. Drawbridge must know its own
/// requests under either, so the emulator models both (docs/operations.md,
/// "Which requests are Drawbridge's").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestorModel {
    /// The token's object id (`oid`): the bot can compare it with its own
    /// token before its first initiate.
    #[default]
    ObjectId,
    /// A sign-in or display name ([`super::Emulator::set_requestor_name`]),
    /// which the token does not carry.
    Name,
}

/// A JIT port rule (`JitNetworkAccessPortRule`), in the seed and on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRule {
    /// The port number.
    #[serde(deserialize_with = "port_number")]
    pub number: u16,
    /// `TCP`, `UDP` or `*`.
    pub protocol: String,
    /// One allowed source: `*`, an IP address or a CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    /// Several allowed sources; mutually exclusive with the single prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    /// The longest window a request may ask for, ISO 8601 (`PT3H`).
    pub max_request_access_duration: String,
}

impl PortRule {
    /// The allowed source prefixes, whichever field holds them.
    fn prefixes(&self) -> Vec<&str> {
        match (
            &self.allowed_source_address_prefix,
            &self.allowed_source_address_prefixes,
        ) {
            (Some(one), _) => vec![one.as_str()],
            (None, Some(many)) => many.iter().map(String::as_str).collect(),
            (None, None) => vec!["*"],
        }
    }

    /// The maximum window (the rule was validated when stored).
    fn max_duration(&self) -> Duration {
        parse_iso_duration(&self.max_request_access_duration).unwrap_or(MIN_MAX_DURATION)
    }
}

fn port_number<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let n = i64::deserialize(d)?;
    u16::try_from(n)
        .map_err(|_| serde::de::Error::custom(format!("port number {n} is outside 0..65535")))
}

/// Validates port rules as Azure does and normalizes their protocol.
pub(crate) fn validate_port_rules(ports: &mut [PortRule]) -> Result<(), String> {
    let mut seen = HashSet::new();
    for rule in ports.iter_mut() {
        let n = rule.number;
        if !seen.insert(n) {
            return Err(format!("port {n} appears twice"));
        }
        rule.protocol = match rule.protocol.to_ascii_uppercase().as_str() {
            "TCP" => "TCP".to_owned(),
            "UDP" => "UDP".to_owned(),
            "*" => "*".to_owned(),
            other => {
                return Err(format!(
                    "port {n}: protocol '{other}' is not one of TCP, UDP, *"
                ));
            }
        };
        let prefixes: Vec<&String> = match (
            &rule.allowed_source_address_prefix,
            &rule.allowed_source_address_prefixes,
        ) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "port {n}: allowedSourceAddressPrefix and allowedSourceAddressPrefixes are mutually exclusive"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "port {n}: allowedSourceAddressPrefix or allowedSourceAddressPrefixes is required"
                ));
            }
            (Some(one), None) => vec![one],
            (None, Some(many)) if many.is_empty() => {
                return Err(format!("port {n}: allowedSourceAddressPrefixes is empty"));
            }
            (None, Some(many)) => many.iter().collect(),
        };
        if let Some(bad) = prefixes
            .iter()
            .find(|p| p.as_str() != "*" && parse_prefix(p).is_none())
        {
            return Err(format!(
                "port {n}: source prefix '{bad}' is not '*', an IP address or a CIDR"
            ));
        }
        let max = &rule.max_request_access_duration;
        match parse_iso_duration(max) {
            Some(d) if (MIN_MAX_DURATION..=MAX_MAX_DURATION).contains(&d) => {}
            Some(_) => {
                return Err(format!(
                    "port {n}: maxRequestAccessDuration '{max}' must be between PT5M and P1D"
                ));
            }
            None => {
                return Err(format!(
                    "port {n}: maxRequestAccessDuration '{max}' is not an ISO 8601 duration like PT3H"
                ));
            }
        }
    }
    Ok(())
}

/// Parses an ISO 8601 duration of days, hours, minutes and seconds
/// (`PT3H`, `PT1H30M`, `P1D`, `PT90.5S`, `P1W`). Years and months are refused:
/// their length depends on the calendar.
pub(crate) fn parse_iso_duration(s: &str) -> Option<Duration> {
    let rest = s.strip_prefix(['P', 'p'])?;
    let (date, time) = match rest.split_once(['T', 't']) {
        Some((date, time)) if !time.is_empty() => (date, Some(time)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut parts = 0;
    for (text, units) in [
        (date, &[('W', 604_800.0), ('D', 86_400.0)][..]),
        (
            time.unwrap_or(""),
            &[('H', 3_600.0), ('M', 60.0), ('S', 1.0)][..],
        ),
    ] {
        let mut number = String::new();
        let mut next_unit = 0;
        for c in text.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                number.push(if c == ',' { '.' } else { c });
                continue;
            }
            let c = c.to_ascii_uppercase();
            let at = units[next_unit..].iter().position(|(u, _)| *u == c)? + next_unit;
            let value: f64 = number.parse().ok()?;
            total += value * units[at].1;
            parts += 1;
            next_unit = at + 1;
            number.clear();
        }
        if !number.is_empty() {
            return None;
        }
    }
    if parts == 0 || !total.is_finite() || total > 1e12 {
        return None;
    }
    Some(Duration::milliseconds((total * 1000.0).round() as i64))
}

/// An IP address (as a host prefix) or a CIDR.
fn parse_prefix(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Whether `source` (an address or CIDR) lies within one of `allowed`.
fn source_allowed(allowed: &[&str], source: &str) -> bool {
    if allowed.contains(&"*") {
        return true;
    }
    let Some(source) = parse_prefix(source) else {
        return false;
    };
    allowed
        .iter()
        .filter_map(|p| parse_prefix(p))
        .any(|net| net.contains(&source))
}

/// Formats a time as Azure does: RFC 3339 UTC with 7 fractional digits.
pub(crate) fn arm_time(t: DateTime<Utc>) -> String {
    let ticks = (t.timestamp_subsec_nanos() / 100).min(9_999_999);
    format!("{}.{ticks:07}Z", t.format("%Y-%m-%dT%H:%M:%S"))
}

/// A VM of the estate with its resource id.
#[derive(Debug, Clone)]
pub(crate) struct VmRecord {
    pub subscription: String,
    pub id: String,
    pub vm_id: Uuid,
    pub vm: VirtualMachine,
}

impl VmRecord {
    pub fn new(subscription: &str, vm: &VirtualMachine) -> Self {
        let id = vm.id(subscription);
        let vm_id = Uuid::from_u128(
            (u128::from(fnv(&id.to_lowercase())) << 64) | u128::from(fnv(&vm.name)),
        );
        Self {
            subscription: subscription.to_owned(),
            id,
            vm_id,
            vm: vm.clone(),
        }
    }

    /// The VM list entry (`Microsoft.Compute/virtualMachines`).
    pub fn to_json(&self) -> Value {
        let vm = &self.vm;
        let (config_key, config) = match vm.os {
            super::Os::Linux => (
                "linuxConfiguration",
                json!({"disablePasswordAuthentication": true}),
            ),
            super::Os::Windows => ("windowsConfiguration", json!({"provisionVMAgent": true})),
        };
        let mut os_profile = json!({"computerName": vm.name, "adminUsername": "azureuser"});
        os_profile[config_key] = config;
        let rg_prefix = format!(
            "/subscriptions/{}/resourceGroups/{}",
            self.subscription, vm.resource_group
        );
        json!({
            "id": self.id,
            "name": vm.name,
            "type": "Microsoft.Compute/virtualMachines",
            "location": vm.location,
            "tags": vm.tags,
            "properties": {
                "vmId": self.vm_id.to_string(),
                "provisioningState": "Succeeded",
                "hardwareProfile": {"vmSize": "Standard_B2s"},
                "storageProfile": {"osDisk": {
                    "osType": vm.os.arm_name(),
                    "name": format!("{}_OsDisk_1", vm.name),
                    "createOption": "FromImage",
                }},
                "osProfile": os_profile,
                "networkProfile": {"networkInterfaces": [{
                    "id": format!("{rg_prefix}/providers/Microsoft.Network/networkInterfaces/{}-nic", vm.name),
                    "properties": {"primary": true},
                }]},
            },
        })
    }

    /// The VM's network interface (`Microsoft.Network/networkInterfaces`,
    /// the `NetworkInterface` shape of the Network spec): one primary IP
    /// configuration with the private address and, if any, a reference to
    /// the public IP resource.
    pub fn nic_json(&self) -> Value {
        let vm = &self.vm;
        let nic_id = vm.nic_id(&self.subscription);
        let mut ip_config = json!({
            "provisioningState": "Succeeded",
            "privateIPAddress": vm.private_ip.to_string(),
            "privateIPAllocationMethod": "Dynamic",
            "privateIPAddressVersion": if vm.private_ip.is_ipv4() { "IPv4" } else { "IPv6" },
            "primary": true,
            "subnet": {"id": format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/virtualNetworks/{}-vnet/subnets/default",
                self.subscription, vm.resource_group, vm.resource_group
            )},
        });
        if vm.public_ip.is_some() {
            ip_config["publicIPAddress"] = json!({"id": vm.public_ip_id(&self.subscription)});
        }
        json!({
            "id": nic_id,
            "name": format!("{}-nic", vm.name),
            "type": "Microsoft.Network/networkInterfaces",
            "location": vm.location,
            "etag": format!("W/\"{}\"", self.vm_id),
            "properties": {
                "provisioningState": "Succeeded",
                "resourceGuid": self.vm_id.to_string(),
                "ipConfigurations": [{
                    "id": format!("{nic_id}/ipConfigurations/ipconfig1"),
                    "name": "ipconfig1",
                    "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
                    "properties": ip_config,
                }],
                "virtualMachine": {"id": self.id},
                "primary": true,
                "enableAcceleratedNetworking": false,
                "enableIPForwarding": false,
            },
        })
    }

    /// The VM's public IP (`Microsoft.Network/publicIPAddresses`, the
    /// `PublicIPAddress` shape), `None` for a VM with none.
    pub fn public_ip_json(&self) -> Option<Value> {
        let vm = &self.vm;
        let ip = vm.public_ip?;
        let mut properties = json!({
            "provisioningState": "Succeeded",
            "resourceGuid": self.vm_id.to_string(),
            "ipAddress": ip.to_string(),
            "publicIPAddressVersion": if ip.is_ipv4() { "IPv4" } else { "IPv6" },
            "publicIPAllocationMethod": "Static",
            "idleTimeoutInMinutes": 4,
            "ipConfiguration": {"id": format!("{}/ipConfigurations/ipconfig1", vm.nic_id(&self.subscription))},
        });
        if let Some(label) = &vm.dns_label {
            properties["dnsSettings"] = json!({
                "domainNameLabel": label,
                "fqdn": format!("{label}.{}.cloudapp.azure.com", vm.location),
            });
        }
        Some(json!({
            "id": vm.public_ip_id(&self.subscription),
            "name": format!("{}-ip", vm.name),
            "type": "Microsoft.Network/publicIPAddresses",
            "location": vm.location,
            "sku": {"name": "Standard", "tier": "Regional"},
            "properties": properties,
        }))
    }
}

/// A VM in a policy (`JitNetworkAccessPolicyVirtualMachine`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PolicyVm {
    pub id: String,
    pub ports: Vec<PortRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip_address: Option<String>,
}

impl PolicyVm {
    /// The entry the portal writes for `id` with `ports` open to any source
    /// for up to three hours.
    pub fn portal(id: &str, ports: &[u16]) -> Self {
        let rule = |number| PortRule {
            number,
            protocol: "*".to_owned(),
            allowed_source_address_prefix: Some("*".to_owned()),
            allowed_source_address_prefixes: None,
            max_request_access_duration: "PT3H".to_owned(),
        };
        Self {
            id: id.to_owned(),
            ports: ports.iter().map(|&p| rule(p)).collect(),
            public_ip_address: None,
        }
    }
}

/// `vms` with `vm` added, replacing any entry for the same VM.
pub(crate) fn with_vm(mut vms: Vec<PolicyVm>, vm: PolicyVm) -> Vec<PolicyVm> {
    vms.retain(|v| !v.id.eq_ignore_ascii_case(&vm.id));
    vms.push(vm);
    vms
}

/// A JIT network access policy with its request history.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub subscription: String,
    pub resource_group: String,
    pub location: String,
    pub name: String,
    pub kind: String,
    pub virtual_machines: Vec<PolicyVm>,
    pub requests: Vec<AccessRequest>,
}

/// One initiate request in a policy's history.
#[derive(Debug, Clone)]
pub(crate) struct AccessRequest {
    pub virtual_machines: Vec<RequestVm>,
    pub start: DateTime<Utc>,
    pub requestor: String,
    pub justification: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct RequestVm {
    pub id: String,
    pub ports: Vec<RequestPort>,
}

#[derive(Debug, Clone)]
pub(crate) struct RequestPort {
    pub number: u16,
    pub source: String,
    pub end: DateTime<Utc>,
    /// A later request for the same VM and port replaced this one.
    pub superseded: bool,
}

impl RequestPort {
    /// Whether the port is open at `now`.
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        !self.superseded && now < self.end
    }

    /// `status` and `statusReason` at `now`.
    fn status(&self, now: DateTime<Utc>) -> (&'static str, &'static str) {
        if self.superseded {
            ("Revoked", "NewerRequestInitiated")
        } else if now >= self.end {
            ("Revoked", "Expired")
        } else {
            ("Initiated", "UserRequested")
        }
    }
}

impl AccessRequest {
    /// The request as JSON; `initiating` gives the status of the 202 answer.
    fn to_json(&self, now: DateTime<Utc>, initiating: bool) -> Value {
        let vms: Vec<Value> = self
            .virtual_machines
            .iter()
            .map(|vm| {
                let ports: Vec<Value> = vm
                    .ports
                    .iter()
                    .map(|p| {
                        let (status, reason) = if initiating {
                            ("Initiating", "UserRequested")
                        } else {
                            p.status(now)
                        };
                        json!({
                            "number": p.number,
                            "allowedSourceAddressPrefix": p.source,
                            "endTimeUtc": arm_time(p.end),
                            "status": status,
                            "statusReason": reason,
                        })
                    })
                    .collect();
                json!({"id": vm.id, "ports": ports})
            })
            .collect();
        let mut out = json!({
            "virtualMachines": vms,
            "startTimeUtc": arm_time(self.start),
            "requestor": self.requestor,
        });
        if let (Some(j), Some(obj)) = (&self.justification, out.as_object_mut()) {
            obj.insert("justification".to_owned(), json!(j));
        }
        out
    }
}

impl Policy {
    /// The ARM resource id.
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Security/locations/{}/jitNetworkAccessPolicies/{}",
            self.subscription, self.resource_group, self.location, self.name
        )
    }

    /// Whether this is the policy at `rg`/`location`/`name` (case-insensitive).
    pub fn is_at(&self, subscription: &str, rg: &str, location: &str, name: &str) -> bool {
        self.subscription.eq_ignore_ascii_case(subscription)
            && self.resource_group.eq_ignore_ascii_case(rg)
            && self.location.eq_ignore_ascii_case(location)
            && self.name.eq_ignore_ascii_case(name)
    }

    /// The resource as JSON, request statuses evaluated at `now`.
    pub fn to_json(&self, now: DateTime<Utc>) -> Value {
        let requests: Vec<Value> = self
            .requests
            .iter()
            .map(|r| r.to_json(now, false))
            .collect();
        json!({
            "id": self.id(),
            "name": self.name,
            "type": POLICY_TYPE,
            "kind": self.kind,
            "location": self.location,
            "properties": {
                "virtualMachines": self.virtual_machines,
                "requests": requests,
                "provisioningState": "Succeeded",
            },
        })
    }

    /// Validates an initiate body against this policy and, if Azure would
    /// accept it, records the request (superseding earlier ones as `model`
    /// says) and returns the 202 body.
    pub fn initiate(
        &mut self,
        body: &[u8],
        now: DateTime<Utc>,
        requestor: &str,
        caller: IpAddr,
        model: SupersedeModel,
    ) -> Result<Value, Rejection> {
        let body: InitiateBody = parse_json(body)?;
        let vms = body
            .virtual_machines
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Rejection::bad("virtualMachines is required and must not be empty"))?;
        let mut accepted = Vec::new();
        for (i, vm) in vms.iter().enumerate() {
            accepted.push(self.check_initiate_vm(i, vm, now, caller)?);
        }
        if let Some(dup) = accepted
            .iter()
            .enumerate()
            .find(|(i, a)| accepted[..*i].iter().any(|b| b.id == a.id))
        {
            return Err(Rejection::bad(format!(
                "virtual machine '{}' appears twice in virtualMachines",
                dup.1.id
            )));
        }
        for earlier in &mut self.requests {
            for vm in &mut earlier.virtual_machines {
                let Some(new) = accepted.iter().find(|a| a.id == vm.id) else {
                    continue;
                };
                for port in &mut vm.ports {
                    if port.is_open(now) && new.ports.iter().any(|p| model.supersedes(port, p)) {
                        port.superseded = true;
                    }
                }
            }
        }
        let request = AccessRequest {
            virtual_machines: accepted,
            start: now,
            requestor: requestor.to_owned(),
            justification: body.justification,
        };
        let answer = request.to_json(now, true);
        self.requests.push(request);
        Ok(answer)
    }

    fn check_initiate_vm(
        &self,
        i: usize,
        vm: &InitiateVm,
        now: DateTime<Utc>,
        caller: IpAddr,
    ) -> Result<RequestVm, Rejection> {
        let id = vm
            .id
            .as_deref()
            .ok_or_else(|| Rejection::bad(format!("virtualMachines[{i}].id is required")))?;
        let policy_vm = self
            .virtual_machines
            .iter()
            .find(|v| v.id.eq_ignore_ascii_case(id))
            .ok_or_else(|| {
                Rejection::bad(format!(
                    "virtual machine '{id}' is not in JIT network access policy '{}'",
                    self.name
                ))
            })?;
        let vm_name = policy_vm.id.rsplit('/').next().unwrap_or(id);
        let ports = vm.ports.as_ref().filter(|p| !p.is_empty()).ok_or_else(|| {
            Rejection::bad(format!(
                "virtualMachines[{i}].ports is required and must not be empty"
            ))
        })?;
        let mut out: Vec<RequestPort> = Vec::new();
        for (j, port) in ports.iter().enumerate() {
            let at = format!("virtualMachines[{i}].ports[{j}]");
            let number = port
                .number
                .ok_or_else(|| Rejection::bad(format!("{at}.number is required")))?;
            let rule = policy_vm
                .ports
                .iter()
                .find(|r| i64::from(r.number) == number)
                .ok_or_else(|| {
                    let allowed: Vec<String> =
                        policy_vm.ports.iter().map(|r| r.number.to_string()).collect();
                    Rejection::bad(format!(
                        "port {number} is not in JIT network access policy '{}' for virtual machine '{vm_name}' (its ports: {})",
                        self.name,
                        allowed.join(", ")
                    ))
                })?;
            if out.iter().any(|p| p.number == rule.number) {
                return Err(Rejection::bad(format!(
                    "port {number} appears twice for virtual machine '{vm_name}'"
                )));
            }
            let end_text = port.end_time_utc.as_deref().ok_or_else(|| {
                Rejection::bad(if port.duration.is_some() {
                    format!(
                        "{at}.endTimeUtc is required; 'duration' is not a property of JitNetworkAccessPolicyInitiatePort (api-version 2020-01-01): send endTimeUtc = now + duration"
                    )
                } else {
                    format!("{at}.endTimeUtc is required")
                })
            })?;
            let end = DateTime::parse_from_rfc3339(end_text)
                .map_err(|_| {
                    Rejection::bad(format!(
                        "{at}.endTimeUtc '{end_text}' is not an RFC 3339 date-time"
                    ))
                })?
                .with_timezone(&Utc);
            if end <= now {
                return Err(Rejection::bad(format!(
                    "port {number}: endTimeUtc {} is not in the future (now is {})",
                    arm_time(end),
                    arm_time(now)
                )));
            }
            let latest = now + rule.max_duration();
            if end > latest {
                return Err(Rejection::bad(format!(
                    "port {number}: endTimeUtc {} exceeds the policy's maxRequestAccessDuration {} for virtual machine '{vm_name}' (latest allowed {})",
                    arm_time(end),
                    rule.max_request_access_duration,
                    arm_time(latest)
                )));
            }
            let source = port
                .allowed_source_address_prefix
                .clone()
                .unwrap_or_else(|| caller.to_string());
            if source != "*" && parse_prefix(&source).is_none() {
                return Err(Rejection::bad(format!(
                    "port {number}: allowedSourceAddressPrefix '{source}' is not '*', an IP address or a CIDR"
                )));
            }
            let allowed = rule.prefixes();
            if !source_allowed(&allowed, &source) {
                return Err(Rejection::bad(format!(
                    "port {number}: source '{source}' is not within the policy's allowed source prefixes ({}) for virtual machine '{vm_name}'",
                    allowed.join(", ")
                )));
            }
            out.push(RequestPort {
                number: rule.number,
                source,
                end,
                superseded: false,
            });
        }
        Ok(RequestVm {
            id: policy_vm.id.clone(),
            ports: out,
        })
    }
}

/// A request body Azure would refuse with 400.
#[derive(Debug)]
pub(crate) struct Rejection {
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            code: "BadRequest",
            message: message.into(),
        }
    }
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Rejection {
            code: "InvalidRequestContent",
            message: "The request content is empty; a JSON body is required.".to_owned(),
        });
    }
    serde_json::from_slice(body).map_err(|e| Rejection {
        code: "InvalidRequestContent",
        message: format!("The request content was invalid and could not be deserialized: {e}"),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InitiateBody {
    virtual_machines: Option<Vec<InitiateVm>>,
    justification: Option<String>,
}

#[derive(Deserialize)]
struct InitiateVm {
    id: Option<String>,
    ports: Option<Vec<InitiatePort>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InitiatePort {
    number: Option<i64>,
    end_time_utc: Option<String>,
    allowed_source_address_prefix: Option<String>,
    /// Not in the schema; kept only to explain the refusal.
    duration: Option<Value>,
}

#[derive(Deserialize)]
struct PolicyBody {
    kind: Option<String>,
    properties: Option<PolicyPropertiesBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyPropertiesBody {
    virtual_machines: Option<Vec<PolicyVm>>,
}

/// A validated PUT body: the kind (if given) and the new VM list.
pub(crate) struct PolicyUpdate {
    pub kind: Option<String>,
    pub virtual_machines: Vec<PolicyVm>,
}

/// Validates a PUT body for the policy `name` in `subscription` at
/// `location`; each VM's name and `name` together are within Azure's 56
/// characters.
/// Read-only fields (`id`, `name`, `requests`, …) are ignored.
pub(crate) fn parse_policy_update(
    body: &[u8],
    subscription: &str,
    location: &str,
    name: &str,
    vms: &[VmRecord],
) -> Result<PolicyUpdate, Rejection> {
    let body: PolicyBody = parse_json(body)?;
    let mut machines = body
        .properties
        .ok_or_else(|| Rejection::bad("properties is required"))?
        .virtual_machines
        .ok_or_else(|| Rejection::bad("properties.virtualMachines is required"))?;
    let mut seen = HashSet::new();
    for (i, machine) in machines.iter_mut().enumerate() {
        let vm = vms
            .iter()
            .find(|v| {
                v.subscription.eq_ignore_ascii_case(subscription)
                    && v.id.eq_ignore_ascii_case(&machine.id)
            })
            .ok_or_else(|| {
                Rejection::bad(format!(
                    "properties.virtualMachines[{i}].id '{}' is not a virtual machine of subscription '{subscription}'",
                    machine.id
                ))
            })?;
        if !vm.vm.location.eq_ignore_ascii_case(location) {
            return Err(Rejection::bad(format!(
                "virtual machine '{}' is in '{}', not in the policy's location '{location}'",
                vm.vm.name, vm.vm.location
            )));
        }
        if !crate::domain::jit_policy::names_fit(name, &vm.vm.name) {
            return Err(Rejection::bad(format!(
                "the policy name '{name}' and the virtual machine name '{}' together exceed {} characters",
                vm.vm.name,
                crate::domain::jit_policy::JIT_NAMES_LIMIT
            )));
        }
        if !seen.insert(vm.id.to_lowercase()) {
            return Err(Rejection::bad(format!(
                "virtual machine '{}' appears twice in properties.virtualMachines",
                vm.id
            )));
        }
        machine.id = vm.id.clone();
        validate_port_rules(&mut machine.ports).map_err(|e| {
            Rejection::bad(format!(
                "properties.virtualMachines[{i}] ('{}'): {e}",
                vm.vm.name
            ))
        })?;
    }
    Ok(PolicyUpdate {
        kind: body.kind,
        virtual_machines: machines,
    })
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NsgAccess {
    /// Traffic is let through (a JIT request).
    Allow,
    /// Traffic is blocked (the JIT policy's standing rule).
    Deny,
}

/// An inbound NSG rule as JIT would maintain it on the VM's NSG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NsgRule {
    /// `SecurityCenter-JITRule_<n>_<hex>` (deny) or `SecurityCenter-JITRule-<n>-<hex>` (allow).
    pub name: String,
    /// Allow (a request) or Deny (the policy).
    pub access: NsgAccess,
    /// 100.. for allow rules, 4096 for the deny rule.
    pub priority: u32,
    /// `TCP`, `UDP` or `*`.
    pub protocol: String,
    /// Where traffic may come from.
    pub source_address_prefixes: Vec<String>,
    /// The VM's private IP.
    pub destination_address_prefix: String,
    /// The ports the rule covers.
    pub destination_ports: Vec<u16>,
    /// When an allow rule goes away (the request's endTimeUtc).
    pub expires_at: Option<DateTime<Utc>>,
    /// The description JIT writes.
    pub description: String,
}

/// The JIT rules on `vm`'s NSG at `now`, by priority.
pub(crate) fn nsg_rules(policies: &[Policy], vm: &VmRecord, now: DateTime<Utc>) -> Vec<NsgRule> {
    let destination = vm.vm.private_ip.to_string();
    let mut rules = Vec::new();
    let mut denies = 0;
    let mut allows = 0;
    for policy in policies {
        let policy_vm = policy
            .virtual_machines
            .iter()
            .find(|v| v.id.eq_ignore_ascii_case(&vm.id));
        if let Some(policy_vm) = policy_vm {
            let protocols: HashSet<&str> = policy_vm
                .ports
                .iter()
                .map(|r| r.protocol.as_str())
                .collect();
            let protocol = match protocols.len() {
                1 => protocols.into_iter().next().unwrap_or("*"),
                _ => "*",
            };
            let n = fnv(&policy.id().to_lowercase()) as i32;
            rules.push(NsgRule {
                name: format!(
                    "SecurityCenter-JITRule_{n}_{}",
                    hex32(&format!("{}|{}", policy.id(), vm.id).to_lowercase())
                ),
                access: NsgAccess::Deny,
                priority: 4096 + denies,
                protocol: protocol.to_owned(),
                source_address_prefixes: vec!["*".to_owned()],
                destination_address_prefix: destination.clone(),
                destination_ports: policy_vm.ports.iter().map(|r| r.number).collect(),
                expires_at: None,
                description: format!(
                    "ASC JIT Network Access rule for policy '{}' of VM '{}'.",
                    policy.name, vm.vm.name
                ),
            });
            denies += 1;
        }
        for (r, request) in policy.requests.iter().enumerate() {
            for request_vm in request
                .virtual_machines
                .iter()
                .filter(|v| v.id.eq_ignore_ascii_case(&vm.id))
            {
                for port in request_vm.ports.iter().filter(|p| p.is_open(now)) {
                    let protocol = policy_vm
                        .and_then(|v| v.ports.iter().find(|rule| rule.number == port.number))
                        .map_or("*", |rule| rule.protocol.as_str());
                    let n = fnv(&policy.id().to_lowercase()) as i32;
                    rules.push(NsgRule {
                        name: format!(
                            "SecurityCenter-JITRule-{n}-{}",
                            hex32(&format!("{}|{}|{r}|{}", policy.id(), vm.id, port.number))
                        ),
                        access: NsgAccess::Allow,
                        priority: 100 + allows,
                        protocol: protocol.to_owned(),
                        source_address_prefixes: vec![port.source.clone()],
                        destination_address_prefix: destination.clone(),
                        destination_ports: vec![port.number],
                        expires_at: Some(port.end),
                        description: format!(
                            "ASC JIT Network Access rule created by an initiation request for policy '{}' of VM '{}'.",
                            policy.name, vm.vm.name
                        ),
                    });
                    allows += 1;
                }
            }
        }
    }
    rules.sort_by_key(|r| r.priority);
    rules
}

/// FNV-1a, a stable hash for names and ids.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// 32 upper-case hex digits derived from `s`, like JIT's rule-name suffixes.
fn hex32(s: &str) -> String {
    format!("{:016X}{:016X}", fnv(s), fnv(&format!("{s}#")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_durations_parse_as_azure_writes_them() {
        let h = Duration::hours;
        assert_eq!(parse_iso_duration("PT3H"), Some(h(3)));
        assert_eq!(parse_iso_duration("PT1H30M"), Some(Duration::minutes(90)));
        assert_eq!(parse_iso_duration("P1D"), Some(h(24)));
        assert_eq!(parse_iso_duration("P1DT1H"), Some(h(25)));
        assert_eq!(
            parse_iso_duration("PT0.5S"),
            Some(Duration::milliseconds(500))
        );
        for bad in [
            "", "P", "PT", "3H", "PT3", "PTH", "PT3X", "P1M", "PT3M2H", "P1Y",
        ] {
            assert_eq!(parse_iso_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sources_must_lie_within_the_allowed_prefixes() {
        assert!(source_allowed(&["*"], "203.0.113.7"));
        assert!(source_allowed(&["10.20.0.0/16"], "10.20.3.4"));
        assert!(source_allowed(&["10.20.0.0/16"], "10.20.3.0/24"));
        assert!(!source_allowed(&["10.20.0.0/16"], "10.0.0.0/8"));
        assert!(!source_allowed(&["10.20.0.0/16"], "*"));
        assert!(source_allowed(&["1.2.3.4", "10.0.0.0/8"], "10.1.1.1"));
        assert!(!source_allowed(&["10.0.0.0/8"], "::1"));
    }

    #[test]
    fn times_carry_seven_fractional_digits() {
        let t = DateTime::parse_from_rfc3339("2018-05-17T09:06:45.5691611Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(arm_time(t), "2018-05-17T09:06:45.5691611Z");
    }
}
