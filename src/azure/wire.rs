//! Serde types for the JIT network access policy API, api-version `2020-01-01`,
//! plus the ARM error body and the Compute VM list item.
//!
//! Parsing ignores unknown keys. Enumerations Azure marks `modelAsString`
//! (`protocol`, `status`, `statusReason`) stay open strings: Azure answers
//! values outside the documented enum (e.g. `"status": "Initiating"`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// The api-version of every JIT call.
pub const JIT_API_VERSION: &str = "2020-01-01";
/// The api-version used to list VMs (Microsoft.Compute).
pub const COMPUTE_API_VERSION: &str = "2024-07-01";

/// The Network api-version for network interfaces and public IPs.
pub const NETWORK_API_VERSION: &str = "2024-05-01";

/// A VM as `VirtualMachines_Get` returns it: only what finding its
/// addresses needs.
#[derive(Debug, Deserialize)]
pub struct VmDetail {
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub properties: VmDetailProperties,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VmDetailProperties {
    #[serde(default)]
    pub os_profile: Option<OsProfile>,
    #[serde(default)]
    pub network_profile: Option<NetworkProfile>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OsProfile {
    #[serde(default)]
    pub admin_username: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkProfile {
    #[serde(default)]
    pub network_interfaces: Vec<SubResourceRef>,
}

/// A reference to another resource, with `properties.primary` where the
/// spec has it.
#[derive(Debug, Deserialize)]
pub struct SubResourceRef {
    pub id: String,
    #[serde(default)]
    pub properties: Option<PrimaryFlag>,
}

#[derive(Debug, Deserialize)]
pub struct PrimaryFlag {
    #[serde(default)]
    pub primary: Option<bool>,
}

/// A network interface (`NetworkInterfaces_Get`).
#[derive(Debug, Deserialize)]
pub struct Nic {
    #[serde(default)]
    pub properties: NicProperties,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NicProperties {
    #[serde(default)]
    pub ip_configurations: Vec<IpConfiguration>,
}

#[derive(Debug, Deserialize)]
pub struct IpConfiguration {
    #[serde(default)]
    pub properties: IpConfigurationProperties,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpConfigurationProperties {
    #[serde(default, rename = "privateIPAddress")]
    pub private_ip_address: Option<String>,
    #[serde(default)]
    pub primary: Option<bool>,
    #[serde(default, rename = "publicIPAddress")]
    pub public_ip_address: Option<SubResourceRef>,
}

/// A public IP address (`PublicIPAddresses_Get`).
#[derive(Debug, Deserialize)]
pub struct PublicIp {
    #[serde(default)]
    pub properties: PublicIpProperties,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicIpProperties {
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default)]
    pub dns_settings: Option<DnsSettings>,
}

#[derive(Debug, Deserialize)]
pub struct DnsSettings {
    #[serde(default)]
    pub fqdn: Option<String>,
}

/// Microsoft.Authorization's permissions list.
pub const PERMISSIONS_API_VERSION: &str = "2022-04-01";

/// One entry of the permissions list (data actions are not needed).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permission {
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub not_actions: Vec<String>,
}

/// A page of a list: `{ value, nextLink }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    /// Items on this page.
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    /// URL of the next page, to be followed verbatim; absent on the last page.
    #[serde(default)]
    pub next_link: Option<String>,
}

/// A page of a list read item by item: each item of `value` is handed to
/// `sink` as soon as it is parsed and then dropped, so a page of a thousand
/// policies never exists as a `Vec` of them. Yields the `nextLink`.
///
/// Why: one policy page of a 50,000-VM estate is tens of megabytes parsed;
/// the index keeps a few dozen bytes per VM of it.
pub struct PageSeed<'a, T> {
    /// Receives every item of `value`, in order.
    pub sink: &'a mut dyn FnMut(T),
}

impl<'de, T: Deserialize<'de>> serde::de::DeserializeSeed<'de> for PageSeed<'_, T> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for PageSeed<'_, T> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list page { value, nextLink }")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut next_link = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "value" => map.next_value_seed(ItemsSeed {
                    sink: &mut *self.sink,
                })?,
                "nextLink" => next_link = map.next_value::<Option<String>>()?,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(next_link)
    }
}

/// The `value` array of a [`PageSeed`] (`null` reads as empty).
struct ItemsSeed<'a, T> {
    sink: &'a mut dyn FnMut(T),
}

impl<'de, T: Deserialize<'de>> serde::de::DeserializeSeed<'de> for ItemsSeed<'_, T> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ItemsSeed<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of items")
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<T>()? {
            (self.sink)(item);
        }
        Ok(())
    }
}

/// `JitNetworkAccessPolicy`: the resource as Azure returns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Resource id of the policy.
    pub id: String,
    /// Policy name, e.g. `default`.
    #[serde(default)]
    pub name: Option<String>,
    /// `Basic` in every known policy.
    #[serde(default)]
    pub kind: Option<String>,
    /// Region of the policy (the `ascLocation`).
    #[serde(default)]
    pub location: Option<String>,
    /// The policy body.
    pub properties: PolicyProperties,
}

/// `JitNetworkAccessPolicyProperties`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyProperties {
    /// VMs covered by the policy.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub virtual_machines: Vec<PolicyVm>,
    /// History of initiate requests.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub requests: Vec<JitRequest>,
    /// e.g. `Succeeded`.
    #[serde(default)]
    pub provisioning_state: Option<String>,
}

/// `JitNetworkAccessPolicyVirtualMachine`: one VM's port rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVm {
    /// VM resource id.
    pub id: String,
    /// Port rules.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ports: Vec<PortRule>,
    /// Public IP of a linked Azure Firewall, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip_address: Option<String>,
    /// Fields this version does not know, kept so a PUT does not drop them.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `JitNetworkAccessPortRule`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRule {
    /// Port number.
    pub number: u16,
    /// `TCP`, `UDP` or `*`.
    #[serde(default = "any_protocol")]
    pub protocol: String,
    /// One allowed source (`*`, an IP or a CIDR); exclusive with the list form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefix: Option<String>,
    /// Several allowed sources; exclusive with the single form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    /// ISO 8601 duration, e.g. `PT3H` (5 minutes to 1 day).
    pub max_request_access_duration: String,
    /// Fields this version does not know, kept so a PUT does not drop them.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn any_protocol() -> String {
    "*".to_owned()
}

/// An array written as `null` reads as empty, as when it is left out: one
/// such policy must not stop the whole list from parsing.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// `JitNetworkAccessRequest`: an initiate request as Azure records it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JitRequest {
    /// VMs and ports of the request.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub virtual_machines: Vec<RequestVm>,
    /// When the request was made.
    #[serde(default)]
    pub start_time_utc: Option<DateTime<Utc>>,
    /// Identity that made the request (for Drawbridge: the bot's principal).
    #[serde(default)]
    pub requestor: Option<String>,
    /// The justification sent with the request.
    #[serde(default)]
    pub justification: Option<String>,
}

/// `JitNetworkAccessRequestVirtualMachine`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestVm {
    /// VM resource id.
    pub id: String,
    /// The ports requested.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ports: Vec<RequestPort>,
}

/// `JitNetworkAccessRequestPort`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestPort {
    /// Port number.
    pub number: u16,
    /// The source the port was opened for.
    #[serde(default)]
    pub allowed_source_address_prefix: Option<String>,
    /// Sources, list form.
    #[serde(default)]
    pub allowed_source_address_prefixes: Option<Vec<String>>,
    /// When Azure closes the port.
    pub end_time_utc: DateTime<Utc>,
    /// `Initiating`, `Initiated`, `Revoked`, or anything newer.
    pub status: String,
    /// `Expired`, `UserRequested`, `NewerRequestInitiated`, or anything newer.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// Firewall DNAT port, if behind Azure Firewall.
    #[serde(default)]
    pub mapped_port: Option<u32>,
}

/// The body of a policy PUT: only what a client may write.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyPut {
    /// `Basic`.
    pub kind: String,
    /// The writable properties.
    pub properties: PolicyPutProperties,
}

/// Writable policy properties: the whole `virtualMachines` array (PUT replaces it).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPutProperties {
    /// Every VM of the policy, not only the changed one.
    pub virtual_machines: Vec<PolicyVm>,
}

/// `JitNetworkAccessPolicyInitiateRequest`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitiateRequest {
    /// VMs to open.
    pub virtual_machines: Vec<InitiateVm>,
    /// Shown in Azure's request history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
}

/// `JitNetworkAccessPolicyInitiateVirtualMachine`.
#[derive(Debug, Clone, Serialize)]
pub struct InitiateVm {
    /// VM resource id.
    pub id: String,
    /// Ports to open.
    pub ports: Vec<InitiatePort>,
}

/// `JitNetworkAccessPolicyInitiatePort`: `endTimeUtc`, never `duration`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InitiatePort {
    /// Port number.
    pub number: u16,
    /// When to close, RFC 3339 in UTC to the second (`2026-01-01T12:00:00Z`).
    #[serde(serialize_with = "rfc3339_utc")]
    pub end_time_utc: DateTime<Utc>,
    /// `*`, an IP or a CIDR. Sent always: if omitted Azure would use the
    /// bot's own egress address.
    pub allowed_source_address_prefix: String,
}

fn rfc3339_utc<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// `CloudError`: ARM's error body.
#[derive(Debug, Clone, Deserialize)]
pub struct CloudError {
    /// The error.
    pub error: CloudErrorBody,
}

/// `CloudErrorBody`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CloudErrorBody {
    /// Machine-readable code, e.g. `AuthorizationFailed`.
    #[serde(default)]
    pub code: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// What the error refers to.
    #[serde(default)]
    pub target: Option<String>,
    /// Nested errors.
    #[serde(default)]
    pub details: Vec<CloudErrorBody>,
}

/// A Compute VM as listed by `Microsoft.Compute/virtualMachines`.
#[derive(Debug, Clone, Deserialize)]
pub struct ComputeVm {
    /// VM resource id.
    pub id: String,
    /// VM name.
    pub name: String,
    /// Region.
    #[serde(default)]
    pub location: String,
}

/// The vendored REST spec and its examples (see its README for source and licence).
#[cfg(test)]
pub(crate) fn spec_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/azure-jit-spec")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn example_files() -> Vec<PathBuf> {
        let mut files = Vec::new();
        for dir in ["examples/JitNetworkAccessPolicies", "alt-revisions"] {
            for entry in
                std::fs::read_dir(spec_dir().join(dir)).expect("the vendored spec examples")
            {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "json") {
                    files.push(path);
                }
            }
        }
        files.sort();
        files
    }

    /// Parses a response body with the type its shape calls for; returns what it was.
    fn parse_body(body: &Value) -> &'static str {
        let obj = body.as_object().expect("body is an object");
        if obj.is_empty() {
            "empty"
        } else if obj.contains_key("value") {
            let list: List<Policy> = serde_json::from_value(body.clone()).unwrap();
            assert!(!list.value.is_empty());
            "list"
        } else if obj.contains_key("properties") {
            serde_json::from_value::<Policy>(body.clone()).unwrap();
            "policy"
        } else {
            let r: JitRequest = serde_json::from_value(body.clone()).unwrap();
            assert!(!r.virtual_machines[0].ports.is_empty());
            "request"
        }
    }

    #[test]
    fn every_example_response_parses() {
        let files = example_files();
        assert_eq!(files.len(), 9, "8 examples + 1 alt revision");
        let mut seen = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let doc: Value = serde_json::from_str(&text).unwrap();
            for (status, response) in doc["responses"].as_object().unwrap() {
                let kind = match response.get("body") {
                    Some(body) => parse_body(body),
                    None => "nobody",
                };
                seen.push(format!(
                    "{}:{status}:{kind}",
                    file.file_name().unwrap().to_string_lossy()
                ));
            }
            // A request body that is a policy (the Create example) parses too.
            if let Some(body) = doc["parameters"]
                .get("body")
                .filter(|b| b.get("properties").is_some())
            {
                serde_json::from_value::<Policy>(body.clone()).unwrap();
            }
        }
        assert!(seen.iter().any(|s| s.ends_with(":request")), "{seen:?}");
        assert_eq!(
            seen.iter().filter(|s| s.ends_with(":list")).count(),
            4,
            "{seen:?}"
        );
    }

    #[test]
    fn the_get_example_reads_as_expected() {
        let text = std::fs::read_to_string(
            spec_dir()
                .join("examples/JitNetworkAccessPolicies/GetJitNetworkAccessPolicy_example.json"),
        )
        .unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let p: Policy = serde_json::from_value(doc["responses"]["200"]["body"].clone()).unwrap();
        assert_eq!(p.location.as_deref(), Some("westeurope"));
        let vm = &p.properties.virtual_machines[0];
        assert_eq!(
            vm.ports.iter().map(|p| p.number).collect::<Vec<_>>(),
            [22, 3389]
        );
        assert_eq!(vm.ports[0].max_request_access_duration, "PT3H");
        let port = &p.properties.requests[0].virtual_machines[0].ports[0];
        assert_eq!(port.status, "Initiated");
        assert_eq!(port.end_time_utc.timestamp_subsec_nanos(), 569_161_100);
    }

    /// Checks `value` against a definition of the spec: every key is a declared
    /// property and every required property is present, recursively through `$ref`s.
    fn check_shape(defs: &Value, def: &str, value: &Value) {
        let d = &defs[def];
        let props = d["properties"].as_object().unwrap();
        let obj = value.as_object().unwrap();
        for key in obj.keys() {
            assert!(props.contains_key(key), "{def} has no property {key}");
        }
        for req in d["required"].as_array().into_iter().flatten() {
            assert!(
                obj.contains_key(req.as_str().unwrap()),
                "{def} requires {req}"
            );
        }
        for (key, v) in obj {
            let p = &props[key];
            if let Some(r) = p["items"]["$ref"].as_str() {
                for item in v.as_array().unwrap() {
                    check_shape(defs, r.trim_start_matches("#/definitions/"), item);
                }
            }
            if p["format"] == "date-time" {
                DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
            }
        }
    }

    #[test]
    fn initiate_request_has_the_schema_shape() {
        let spec: Value = serde_json::from_str(
            &std::fs::read_to_string(spec_dir().join("jitNetworkAccessPolicies.json")).unwrap(),
        )
        .unwrap();
        let req = InitiateRequest {
            virtual_machines: vec![InitiateVm {
                id: "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1".into(),
                ports: vec![InitiatePort {
                    number: 22,
                    end_time_utc: "2026-01-01T12:00:00Z".parse().unwrap(),
                    allowed_source_address_prefix: "203.0.113.7".into(),
                }],
            }],
            justification: Some("alice: patching (req 1)".into()),
        };
        let json = serde_json::to_value(&req).unwrap();
        check_shape(
            &spec["definitions"],
            "JitNetworkAccessPolicyInitiateRequest",
            &json,
        );
        let port = &json["virtualMachines"][0]["ports"][0];
        assert_eq!(port["endTimeUtc"], "2026-01-01T12:00:00Z");
        assert!(port.get("duration").is_none());
    }

    #[test]
    fn policy_put_sends_only_kind_and_virtual_machines() {
        let put = PolicyPut {
            kind: "Basic".into(),
            properties: PolicyPutProperties {
                virtual_machines: vec![PolicyVm {
                    id: "vm".into(),
                    ports: vec![PortRule {
                        number: 22,
                        protocol: "*".into(),
                        allowed_source_address_prefix: Some("*".into()),
                        allowed_source_address_prefixes: None,
                        max_request_access_duration: "PT3H".into(),
                        extra: Map::new(),
                    }],
                    public_ip_address: None,
                    extra: Map::new(),
                }],
            },
        };
        let json = serde_json::to_value(&put).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "Basic", "properties": {"virtualMachines": [{"id": "vm", "ports": [
                {"number": 22, "protocol": "*", "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": "PT3H"}
            ]}]}})
        );
    }

    #[test]
    fn cloud_errors_parse_with_or_without_optional_fields() {
        let e: CloudError = serde_json::from_str(
            r#"{"error":{"code":"AuthorizationFailed","message":"no","extra":1}}"#,
        )
        .unwrap();
        assert_eq!(e.error.code, "AuthorizationFailed");
        assert!(e.error.details.is_empty());
        let e: CloudError =
            serde_json::from_str(r#"{"error":{"code":"X","message":"m","target":"t","details":[{"code":"Y","message":"n"}]}}"#).unwrap();
        assert_eq!(e.error.details[0].code, "Y");
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert!(serde_json::from_str::<Policy>(r#"{"id":1}"#).is_err());
        assert!(serde_json::from_str::<List<Policy>>("not json").is_err());
        assert!(
            serde_json::from_str::<JitRequest>(
                r#"{"virtualMachines":[{"id":"x","ports":[{"number":70000}]}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn arrays_written_as_null_read_as_empty() {
        let policy: Policy = serde_json::from_str(
            r#"{"id":"p","properties":{"virtualMachines":[{"id":"v","ports":null}],"requests":null}}"#,
        )
        .unwrap();
        assert!(policy.properties.virtual_machines[0].ports.is_empty());
        assert!(policy.properties.requests.is_empty());
        let request: JitRequest =
            serde_json::from_str(r#"{"virtualMachines":[{"id":"v","ports":null}]}"#).unwrap();
        assert!(request.virtual_machines[0].ports.is_empty());
    }
}
