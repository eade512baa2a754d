//! The Azure JIT emulator against the REST spec's examples and Azure's
//! documented behaviour: shapes, validation, paging, auth, expiry, NSG rules,
//! faults and the token endpoints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drawbridge::clock::ManualClock;
use drawbridge::sandbox::{
    Emulator, Estate, Fault, FaultRule, NsgAccess, Route, RunningEmulator, run_standalone,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SUB_A: &str = "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60";
const SEC: &str = "api-version=2020-01-01";

fn start_time() -> DateTime<Utc> {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

/// The vendored REST spec and its examples (see its README for source and licence).
fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/azure-jit-spec")
}

fn example(name: &str) -> Value {
    read_json(
        &spec_dir()
            .join("examples/JitNetworkAccessPolicies")
            .join(format!("{name}.json")),
    )
}

fn alt_example(name: &str) -> Value {
    read_json(
        &spec_dir()
            .join("alt-revisions")
            .join(format!("{name}.json")),
    )
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The estate the spec examples describe: `vm1` in `myRg1`, policy `default`.
fn example_estate() -> Estate {
    Estate::from_toml_str(
        r#"
        [[subscriptions]]
        id = "20ff7fc3-e762-44dd-bd96-b71116dcdc23"
        [[subscriptions.vms]]
        name = "vm1"
        resourceGroup = "myRg1"
        location = "westeurope"
        os = "windows"
        privateIp = "10.0.0.4"
        [[subscriptions.policies]]
        resourceGroup = "myRg1"
        location = "westeurope"
        name = "default"
        [[subscriptions.policies.virtualMachines]]
        name = "vm1"
        ports = [
          { number = 22, protocol = "*", allowedSourceAddressPrefix = "*", maxRequestAccessDuration = "PT3H" },
          { number = 3389, protocol = "*", allowedSourceAddressPrefix = "*", maxRequestAccessDuration = "PT3H" },
        ]
        "#,
    )
    .unwrap()
}

/// The ARM path an example's `parameters` name (a list when no policy name).
fn example_path(example: &Value) -> String {
    let p = &example["parameters"];
    let mut path = format!("/subscriptions/{}", p["subscriptionId"].as_str().unwrap());
    if let Some(rg) = p["resourceGroupName"].as_str() {
        path += &format!("/resourceGroups/{rg}");
    }
    path += "/providers/Microsoft.Security";
    if let Some(loc) = p["ascLocation"].as_str() {
        path += &format!("/locations/{loc}");
    }
    path += "/jitNetworkAccessPolicies";
    if let Some(name) = p["jitNetworkAccessPolicyName"].as_str() {
        path += &format!("/{name}");
    }
    if let Some(action) = p["jitNetworkAccessPolicyInitiateType"].as_str() {
        path += &format!("/{action}");
    }
    format!("{path}?api-version={}", p["api-version"].as_str().unwrap())
}

/// Keys the spec marks optional that our answers may carry beyond an example.
const OPTIONAL_KEYS: &[&str] = &["justification", "publicIpAddress", "mappedPort"];

/// `ours` has every key of `theirs` with the same JSON type, recursively, and
/// no keys beyond those and the spec's optional ones.
fn assert_same_shape(ours: &Value, theirs: &Value, at: &str) {
    match (ours, theirs) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, tv) in t {
                let ov = o
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} missing in {ours}"));
                assert_same_shape(ov, tv, &format!("{at}.{k}"));
            }
            for k in o.keys() {
                assert!(
                    t.contains_key(k) || OPTIONAL_KEYS.contains(&k.as_str()),
                    "{at}.{k} is not in the example"
                );
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            if let Some(first) = t.first() {
                for (i, ov) in o.iter().enumerate() {
                    assert_same_shape(ov, first, &format!("{at}[{i}]"));
                }
            }
        }
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => {}
        _ => panic!("{at}: {ours} has another type than {theirs}"),
    }
}

/// An emulator on a manual clock with an HTTP client and a valid token.
struct Azure {
    running: RunningEmulator,
    clock: ManualClock,
    http: reqwest::Client,
    token: String,
}

impl Azure {
    async fn start(estate: Estate) -> Azure {
        let clock = ManualClock::new(start_time());
        let emulator = Emulator::new(estate, Arc::new(clock.clone()));
        // Long enough for any test's clock jumps; the 401 test makes its own.
        emulator.set_token_lifetime(chrono::Duration::days(7));
        let token = emulator.issue_token();
        emulator.set_token_lifetime(chrono::Duration::hours(1));
        let running = emulator.spawn().await.unwrap();
        Azure {
            running,
            clock,
            http: reqwest::Client::new(),
            token,
        }
    }

    async fn sample() -> Azure {
        Azure::start(Estate::sample()).await
    }

    fn emulator(&self) -> &Emulator {
        &self.running.emulator
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.running.base_url)
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        read(request.send().await.unwrap()).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn initiate(&self, policy: &str, body: &Value) -> (StatusCode, Value) {
        let path = format!("{policy}/initiate?{SEC}");
        self.call(Method::POST, &path, Some(body)).await
    }
}

/// Status and JSON body (`Null` when empty).
async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, body)
}

fn policy_path(rg: &str) -> String {
    format!(
        "/subscriptions/{SUB_A}/resourceGroups/{rg}/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default"
    )
}

fn vm_id(rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{SUB_A}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
    )
}

fn initiate_body(vm: &str, port: u16, end: DateTime<Utc>, source: &str) -> Value {
    json!({
        "virtualMachines": [{"id": vm, "ports": [{
            "number": port,
            "endTimeUtc": end.to_rfc3339(),
            "allowedSourceAddressPrefix": source,
        }]}],
        "justification": "alice: deploy fix (request 42)",
    })
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no ARM error body: {body}"))
}

fn error_message(body: &Value) -> &str {
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no ARM error body: {body}"))
}

/// The alt-revision Initiate body with its 2018 `endTimeUtc` moved to `end`.
fn alt_initiate_body(end: DateTime<Utc>) -> Value {
    let mut body =
        alt_example("InitiateJitNetworkAccessPolicy_example")["parameters"]["body"].clone();
    body["virtualMachines"][0]["ports"][0]["endTimeUtc"] =
        json!(format!("{}.1234567Z", end.format("%Y-%m-%dT%H:%M:%S")));
    body
}

#[tokio::test]
async fn spec_examples_are_accepted_and_answers_have_the_documented_shapes() {
    // Arrange
    let azure = Azure::start(example_estate()).await;
    let alt = alt_example("InitiateJitNetworkAccessPolicy_example");
    let end = start_time() + chrono::Duration::hours(1);

    // Act: initiate with the schema-conformant example body, 7 fractional digits
    let (status, initiated) = azure
        .call(
            Method::POST,
            &example_path(&alt),
            Some(&alt_initiate_body(end)),
        )
        .await;

    // Assert
    assert_eq!(status, StatusCode::ACCEPTED, "{initiated}");
    for ex in [
        alt.clone(),
        example("InitiateJitNetworkAccessPolicy_example"),
    ] {
        assert_same_shape(&initiated, &ex["responses"]["202"]["body"], "initiate");
    }
    let port = &initiated["virtualMachines"][0]["ports"][0];
    assert_eq!(port["status"], "Initiating");
    assert_eq!(port["statusReason"], "UserRequested");
    assert_eq!(port["endTimeUtc"], "2026-03-01T13:00:00.1234567Z");
    assert_eq!(port["allowedSourceAddressPrefix"], "192.127.0.2");
    assert_eq!(initiated["requestor"], "drawbridge-test-identity");
    assert_eq!(initiated["startTimeUtc"], "2026-03-01T12:00:00.0000000Z");
    assert_eq!(
        initiated["justification"],
        "testing a new version of the product"
    );

    // GET and the four lists answer like their examples
    let get = example("GetJitNetworkAccessPolicy_example");
    let (status, policy) = azure.get(&example_path(&get)).await;
    assert_eq!(status, StatusCode::OK);
    assert_same_shape(&policy, &get["responses"]["200"]["body"], "get");
    let request_port = &policy["properties"]["requests"][0]["virtualMachines"][0]["ports"][0];
    assert_eq!(request_port["status"], "Initiated");
    for name in [
        "GetJitNetworkAccessPoliciesSubscription_example",
        "GetJitNetworkAccessPoliciesSubscriptionLocation_example",
        "GetJitNetworkAccessPoliciesResourceGroup_example",
        "GetJitNetworkAccessPoliciesResourceGroupLocation_example",
    ] {
        let ex = example(name);
        let (status, list) = azure.get(&example_path(&ex)).await;
        assert_eq!(status, StatusCode::OK, "{name}: {list}");
        assert_same_shape(&list, &ex["responses"]["200"]["body"], name);
        assert_eq!(list["value"].as_array().unwrap().len(), 1, "{name}");
        assert_eq!(list["value"][0], policy, "{name}");
    }

    // PUT the Create example body, read-only fields and 2018 history included
    let create = example("CreateJitNetworkAccessPolicy_example");
    let body = &create["parameters"]["body"];
    let (status, put) = azure
        .call(Method::PUT, &example_path(&create), Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_same_shape(&put, &create["responses"]["200"]["body"], "create");
    assert_eq!(put["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        put["properties"]["virtualMachines"],
        body["properties"]["virtualMachines"]
    );
    let requests = put["properties"]["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 1, "history kept, body's requests ignored");
    assert_eq!(requests[0]["requestor"], "drawbridge-test-identity");

    // DELETE (an action Drawbridge's role does not hold): 200, then 204
    // with no body, then GET is 404
    let delete_action = "Microsoft.Security/locations/jitNetworkAccessPolicies/delete";
    azure
        .emulator()
        .set_granted_actions(vec!["Microsoft.Security/*".into(), delete_action.into()]);
    let delete = example("DeleteJitNetworkAccessPolicy_example");
    let (status, _) = azure
        .call(Method::DELETE, &example_path(&delete), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = azure
        .call(Method::DELETE, &example_path(&delete), None)
        .await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, body) = azure.get(&example_path(&get)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "ResourceNotFound");
}

#[tokio::test]
async fn the_current_initiate_example_with_duration_is_refused() {
    // Arrange
    let azure = Azure::start(example_estate()).await;
    let current = example("InitiateJitNetworkAccessPolicy_example");

    // Act
    let (status, body) = azure
        .call(
            Method::POST,
            &example_path(&current),
            Some(&current["parameters"]["body"]),
        )
        .await;

    // Assert
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = error_message(&body);
    assert!(message.contains("endTimeUtc is required"), "{message}");
    assert!(message.contains("'duration'"), "{message}");
    assert!(
        azure
            .emulator()
            .nsg_rules(&vm1())
            .iter()
            .all(|r| r.access == NsgAccess::Deny)
    );
}

fn vm1() -> String {
    "/subscriptions/20ff7fc3-e762-44dd-bd96-b71116dcdc23/resourceGroups/myRg1/providers/Microsoft.Compute/virtualMachines/vm1".to_owned()
}

#[tokio::test]
async fn the_example_with_its_2018_end_time_is_refused_as_past() {
    let azure = Azure::start(example_estate()).await;
    let alt = alt_example("InitiateJitNetworkAccessPolicy_example");

    let (status, body) = azure
        .call(
            Method::POST,
            &example_path(&alt),
            Some(&alt["parameters"]["body"]),
        )
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_message(&body).contains("not in the future"), "{body}");
}

/// Follows `nextLink` from `path`; returns every item and the page count.
async fn collect_pages(azure: &Azure, path: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut url = azure.url(path);
    let mut pages = 0;
    loop {
        let response = azure
            .http
            .get(&url)
            .bearer_auth(&azure.token)
            .send()
            .await
            .unwrap();
        let (status, body) = read(response).await;
        assert_eq!(status, StatusCode::OK, "{url}: {body}");
        pages += 1;
        items.extend(body["value"].as_array().unwrap().iter().cloned());
        match body.get("nextLink") {
            Some(next) => {
                let next = next.as_str().unwrap();
                assert!(
                    next.starts_with(&azure.running.base_url),
                    "absolute: {next}"
                );
                assert!(next.contains("$skipToken="), "{next}");
                url = next.to_owned();
            }
            None => return (items, pages),
        }
    }
}

#[tokio::test]
async fn lists_page_through_next_link_until_it_is_absent() {
    // Arrange
    let azure = Azure::sample().await;
    azure.emulator().set_page_size(2);

    // Act
    let policies_path = format!(
        "/subscriptions/{SUB_A}/providers/Microsoft.Security/jitNetworkAccessPolicies?{SEC}"
    );
    let (policies, policy_pages) = collect_pages(&azure, &policies_path).await;
    let vms_path = format!(
        "/subscriptions/{SUB_A}/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01"
    );
    let (vms, vm_pages) = collect_pages(&azure, &vms_path).await;

    // Assert
    assert_eq!((policies.len(), policy_pages), (4, 2));
    assert_eq!((vms.len(), vm_pages), (9, 5));
    let ids: std::collections::HashSet<&str> =
        policies.iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "no policy twice");
    let legacy = vms
        .iter()
        .find(|v| v["name"] == "legacy-01")
        .expect("legacy-01 listed");
    assert_eq!(legacy["type"], "Microsoft.Compute/virtualMachines");
    assert_eq!(
        legacy["properties"]["storageProfile"]["osDisk"]["osType"],
        "Linux"
    );
    assert!(legacy["properties"]["vmId"].is_string());
    let win = vms.iter().find(|v| v["name"] == "win-07").unwrap();
    assert_eq!(
        win["properties"]["storageProfile"]["osDisk"]["osType"],
        "Windows"
    );
    let covered: Vec<&str> = policies
        .iter()
        .flat_map(|p| p["properties"]["virtualMachines"].as_array().unwrap())
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert!(!covered.contains(&legacy["id"].as_str().unwrap()));
}

#[tokio::test]
async fn a_missing_or_wrong_api_version_is_refused() {
    let azure = Azure::sample().await;
    let list =
        format!("/subscriptions/{SUB_A}/providers/Microsoft.Security/jitNetworkAccessPolicies");
    let vms = format!("/subscriptions/{SUB_A}/providers/Microsoft.Compute/virtualMachines");

    let (status, body) = azure.get(&list).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "MissingApiVersionParameter");

    let (status, body) = azure
        .get(&format!("{list}?api-version=2015-06-01-preview"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "InvalidApiVersionParameter");
    assert!(error_message(&body).contains("2020-01-01"));

    let (status, body) = azure.get(&format!("{vms}?api-version=latest")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "InvalidApiVersionParameter");
    for version in ["2023-03-01", "2024-11-01"] {
        let (status, _) = azure.get(&format!("{vms}?api-version={version}")).await;
        assert_eq!(status, StatusCode::OK, "{version}");
    }
}

#[tokio::test]
async fn calls_without_a_valid_token_get_401() {
    // Arrange
    let azure = Azure::sample().await;
    let url = azure.url(&format!(
        "/subscriptions/{SUB_A}/providers/Microsoft.Security/jitNetworkAccessPolicies?{SEC}"
    ));

    // Act / Assert: no header, a made-up token, then an expired one
    let (status, body) = read(azure.http.get(&url).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "AuthenticationFailed");

    let (status, body) = read(
        azure
            .http
            .get(&url)
            .bearer_auth("made-up")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "InvalidAuthenticationToken");

    let token = azure.emulator().issue_token(); // lives one hour
    let response = azure
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    azure.clock.advance(chrono::Duration::minutes(60));
    let response = azure
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&body), "ExpiredAuthenticationToken");
    assert_eq!(azure.emulator().calls().last().unwrap().status, 401);
}

#[tokio::test]
async fn initiate_outside_the_policy_is_refused_naming_the_problem() {
    // Arrange
    let azure = Azure::sample().await;
    let now = start_time();
    let web = policy_path("rg-web");
    let data = policy_path("rg-data");
    let web01 = vm_id("rg-web", "web-01");
    let db01 = vm_id("rg-data", "db-01");
    let hours = chrono::Duration::hours;
    let cases = [
        (
            &web,
            initiate_body(&web01, 3389, now + hours(1), "*"),
            "port 3389",
        ),
        (
            &web,
            initiate_body(&web01, 22, now + hours(4), "*"),
            "maxRequestAccessDuration PT3H",
        ),
        (
            &web,
            initiate_body(&web01, 22, now - hours(1), "*"),
            "not in the future",
        ),
        (
            &data,
            initiate_body(&db01, 22, now + hours(1), "203.0.113.7"),
            "10.20.0.0/16",
        ),
        (
            &data,
            initiate_body(&db01, 22, now + hours(1), "*"),
            "not within",
        ),
        (
            &web,
            initiate_body(&web01, 22, now + hours(1), "not-an-ip"),
            "not '*', an IP",
        ),
        (
            &web,
            initiate_body(&vm_id("rg-legacy", "legacy-01"), 22, now + hours(1), "*"),
            "is not in JIT network access policy",
        ),
        (
            &web,
            json!({"virtualMachines": []}),
            "virtualMachines is required",
        ),
        (
            &web,
            json!({"virtualMachines": [{"id": web01, "ports": [{"number": 22}]}]}),
            "endTimeUtc is required",
        ),
        (
            &web,
            json!({"virtualMachines": [{"id": web01, "ports": [{"number": 22, "endTimeUtc": "tomorrow"}]}]}),
            "RFC 3339",
        ),
        (&web, json!([1, 2]), "could not be deserialized"),
    ];

    for (policy, body, expected) in cases {
        // Act
        let (status, answer) = azure.initiate(policy, &body).await;

        // Assert
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let message = error_message(&answer);
        assert!(
            message.contains(expected),
            "expected '{expected}' in: {message}"
        );
    }
    let (_, policy) = azure.get(&format!("{web}?{SEC}")).await;
    assert_eq!(
        policy["properties"]["requests"],
        json!([]),
        "refusals record nothing"
    );

    // Malformed JSON text is a 400 too, not a panic
    let response = azure
        .http
        .post(azure.url(&format!("{web}/initiate?{SEC}")))
        .bearer_auth(&azure.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "InvalidRequestContent");

    // Within the policy: a source inside the CIDR, the full maximum window
    let (status, _) = azure
        .initiate(
            &data,
            &initiate_body(&db01, 22, now + hours(1), "10.20.3.0/24"),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_prefixes_list_and_a_missing_source_are_checked_too() {
    let azure = Azure::sample().await;
    let sub_b = "9c8d7e6f-5a4b-4c3d-8e2f-0a1b2c3d4e5f";
    let policy = format!(
        "/subscriptions/{sub_b}/resourceGroups/rg-dev/providers/Microsoft.Security/locations/northeurope/jitNetworkAccessPolicies/default"
    );
    let dev02 = format!(
        "/subscriptions/{sub_b}/resourceGroups/rg-dev/providers/Microsoft.Compute/virtualMachines/dev-02"
    );
    let end = start_time() + chrono::Duration::hours(8);

    let (status, _) = azure
        .initiate(&policy, &initiate_body(&dev02, 22, end, "198.51.100.20"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = azure
        .initiate(&policy, &initiate_body(&dev02, 22, end, "192.0.2.1"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Omitted source = the caller's address (127.0.0.1), outside the list
    let body = json!({"virtualMachines": [{"id": dev02, "ports": [{"number": 22, "endTimeUtc": end.to_rfc3339()}]}]});
    let (status, answer) = azure.initiate(&policy, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_message(&answer).contains("127.0.0.1"), "{answer}");
}

fn port_status(policy: &Value, request: usize) -> (String, String) {
    let port = &policy["properties"]["requests"][request]["virtualMachines"][0]["ports"][0];
    (
        port["status"].as_str().unwrap().to_owned(),
        port["statusReason"].as_str().unwrap().to_owned(),
    )
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

#[tokio::test]
async fn a_newer_request_revokes_the_open_one_and_requests_expire_by_the_clock() {
    // Arrange
    let azure = Azure::sample().await;
    let web = policy_path("rg-web");
    let web01 = vm_id("rg-web", "web-01");
    let now = start_time();
    azure
        .initiate(
            &web,
            &initiate_body(&web01, 22, now + chrono::Duration::hours(2), "*"),
        )
        .await;

    // Act
    azure.clock.advance(chrono::Duration::minutes(10));
    let (status, _) = azure
        .initiate(
            &web,
            &initiate_body(&web01, 22, now + chrono::Duration::hours(1), "203.0.113.7"),
        )
        .await;

    // Assert
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, policy) = azure.get(&format!("{web}?{SEC}")).await;
    assert_eq!(
        port_status(&policy, 0),
        pair("Revoked", "NewerRequestInitiated")
    );
    assert_eq!(port_status(&policy, 1), pair("Initiated", "UserRequested"));

    azure.clock.advance(chrono::Duration::minutes(50));
    let (_, policy) = azure.get(&format!("{web}?{SEC}")).await;
    assert_eq!(
        port_status(&policy, 0),
        pair("Revoked", "NewerRequestInitiated")
    );
    assert_eq!(port_status(&policy, 1), pair("Revoked", "Expired"));
}

/// ARM's write bucket: 200 writes, counted down in
/// `x-ms-ratelimit-remaining-subscription-writes`, then 429 with
/// `Retry-After`. A write sent before that wait is over is not processed
/// (and gets a new wait); after it, writes go through again.
#[tokio::test]
async fn writes_are_throttled_after_200_and_an_early_retry_is_not_processed() {
    // Arrange
    let azure = Azure::sample().await;
    let web = policy_path("rg-web");
    let web01 = vm_id("rg-web", "web-01");
    let end = start_time() + chrono::Duration::hours(1);
    let body = initiate_body(&web01, 22, end, "203.0.113.7");
    let url = azure.url(&format!("{web}/initiate?{SEC}"));
    let initiate = || async {
        let response = azure
            .http
            .post(&url)
            .bearer_auth(&azure.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let left = header("x-ms-ratelimit-remaining-subscription-writes");
        (response.status(), left, header("retry-after"))
    };

    // Act
    let mut left = Vec::new();
    for _ in 0..200 {
        let (status, remaining, _) = initiate().await;
        assert_eq!(status, StatusCode::ACCEPTED);
        left.push(remaining.expect("the writes left"));
    }
    let refused = initiate().await;
    azure.clock.advance(chrono::Duration::milliseconds(500));
    let early = initiate().await;
    azure.clock.advance(chrono::Duration::milliseconds(500));
    let after = initiate().await;

    // Assert
    assert_eq!((left[0].as_str(), left[199].as_str()), ("199", "0"));
    assert_eq!(
        (refused.0, refused.2.as_deref()),
        (StatusCode::TOO_MANY_REQUESTS, Some("1"))
    );
    assert_eq!(early.0, StatusCode::TOO_MANY_REQUESTS, "not processed");
    assert_eq!(after.0, StatusCode::ACCEPTED);
    let (_, policy) = azure.get(&format!("{web}?{SEC}")).await;
    let requests = policy["properties"]["requests"].as_array().unwrap().len();
    assert_eq!(requests, 201, "the refused initiates left no request");
}

/// Azure's role check: an operation whose action the caller's role lacks
/// is refused 403 `AuthorizationFailed`, naming the action; nothing
/// changes, and what the role allows still works.
#[tokio::test]
async fn an_action_the_role_lacks_is_refused_403_naming_it() {
    // Arrange: Drawbridge's role without initiate.
    let azure = Azure::sample().await;
    let initiate = "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action";
    let granted = drawbridge::domain::preflight::NEEDED_ACTIONS
        .iter()
        .filter(|a| **a != initiate)
        .map(|a| (*a).to_owned())
        .collect();
    azure.emulator().set_granted_actions(granted);
    let web = policy_path("rg-web");
    let body = initiate_body(
        &vm_id("rg-web", "web-01"),
        22,
        start_time() + chrono::Duration::hours(1),
        "203.0.113.7",
    );

    // Act
    let (refused, error) = azure.initiate(&web, &body).await;
    let (read, policy) = azure.get(&format!("{web}?{SEC}")).await;
    let (deleted, _) = azure
        .call(Method::DELETE, &format!("{web}?{SEC}"), None)
        .await;

    // Assert
    assert_eq!(refused, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&error), "AuthorizationFailed");
    assert!(error_message(&error).contains(initiate), "{error}");
    assert_eq!(read, StatusCode::OK);
    assert_eq!(
        policy["properties"]["requests"],
        json!([]),
        "nothing opened"
    );
    assert_eq!(deleted, StatusCode::FORBIDDEN, "delete is not in the role");
}

#[tokio::test]
async fn the_nsg_allow_rule_lives_from_initiate_until_end_time() {
    // Arrange
    let azure = Azure::sample().await;
    let web01 = vm_id("rg-web", "web-01");
    let before = azure.emulator().nsg_rules(&web01);
    assert_eq!(before.len(), 1);
    let deny = &before[0];
    assert_eq!(deny.access, NsgAccess::Deny);
    assert_eq!(deny.priority, 4096);
    assert!(
        deny.name.starts_with("SecurityCenter-JITRule_"),
        "{}",
        deny.name
    );
    assert_eq!(deny.destination_ports, vec![22, 8443]);
    assert_eq!(deny.destination_address_prefix, "10.10.1.4");

    // Act
    let end = start_time() + chrono::Duration::minutes(30);
    let (status, _) = azure
        .initiate(
            &policy_path("rg-web"),
            &initiate_body(&web01, 8443, end, "203.0.113.7"),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // Assert
    let rules = azure.emulator().nsg_rules(&web01);
    assert_eq!(rules.len(), 2);
    let allow = &rules[0];
    assert_eq!(allow.access, NsgAccess::Allow);
    assert_eq!(allow.priority, 100);
    assert!(
        allow.name.starts_with("SecurityCenter-JITRule-"),
        "{}",
        allow.name
    );
    assert_eq!(allow.source_address_prefixes, vec!["203.0.113.7"]);
    assert_eq!(allow.destination_ports, vec![8443]);
    assert_eq!(allow.protocol, "TCP");
    assert_eq!(allow.expires_at, Some(end));

    // The same over HTTP, for out-of-process harnesses
    let nsg_url = azure.url(&format!("/_emulator/nsg?vm={web01}"));
    let (_, over_http) = read(azure.http.get(&nsg_url).send().await.unwrap()).await;
    assert_eq!(over_http.as_array().unwrap().len(), 2);
    assert_eq!(over_http[0]["access"], "Allow");

    azure.clock.advance(chrono::Duration::minutes(30));
    assert_eq!(azure.emulator().nsg_rules(&web01), before);
}

/// Azure's limit on a policy's name and a VM's name together, 56
/// characters: a PUT of `default` covering a VM of 50 characters is
/// refused, one of 49 is taken.
#[tokio::test]
async fn a_policy_whose_name_and_a_vms_exceed_56_characters_is_refused() {
    // Arrange
    let (long, fits) = ("v".repeat(50), "w".repeat(49));
    let mut estate = Estate::sample();
    let prod = &mut estate.subscriptions[0];
    let legacy = prod
        .vms
        .iter()
        .find(|v| v.name == "legacy-01")
        .unwrap()
        .clone();
    for (name, ip) in [(&long, "10.50.0.8"), (&fits, "10.50.0.9")] {
        let mut vm = legacy.clone();
        vm.name.clone_from(name);
        vm.private_ip = ip.parse().unwrap();
        prod.vms.push(vm);
    }
    let azure = Azure::start(estate).await;
    let policy = format!("{}?{SEC}", policy_path("rg-legacy"));
    let put = |vm: &str| {
        json!({"kind": "Basic", "properties": {"virtualMachines": [{
            "id": vm_id("rg-legacy", vm),
            "ports": [{"number": 22, "protocol": "*", "allowedSourceAddressPrefix": "*",
                       "maxRequestAccessDuration": "PT3H"}],
        }]}})
    };

    // Act
    let (refused, error) = azure.call(Method::PUT, &policy, Some(&put(&long))).await;
    let (taken, _) = azure.call(Method::PUT, &policy, Some(&put(&fits))).await;

    // Assert
    assert_eq!(refused, StatusCode::BAD_REQUEST);
    assert!(error_message(&error).contains("56 characters"), "{error}");
    assert_eq!(taken, StatusCode::OK);
}

#[tokio::test]
async fn put_validates_the_body_and_replaces_the_vm_list() {
    // Arrange
    let azure = Azure::sample().await;
    let web = format!("{}?{SEC}", policy_path("rg-web"));
    let web01 = vm_id("rg-web", "web-01");
    let rule = |number: i64, protocol: &str, max: &str| json!({"number": number, "protocol": protocol, "allowedSourceAddressPrefix": "*", "maxRequestAccessDuration": max});
    let body = |vm: &str, port: Value| json!({"kind": "Basic", "properties": {"virtualMachines": [{"id": vm, "ports": [port]}]}});
    let both = json!({"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
        "allowedSourceAddressPrefixes": ["10.0.0.0/8"], "maxRequestAccessDuration": "PT1H"});
    let cases = [
        (
            json!({"kind": "Basic", "properties": {}}),
            "properties.virtualMachines is required",
        ),
        (
            body(&vm_id("rg-web", "nope"), rule(22, "*", "PT1H")),
            "is not a virtual machine",
        ),
        (body(&web01, rule(70000, "*", "PT1H")), "70000"),
        (body(&web01, rule(22, "ICMP", "PT1H")), "ICMP"),
        (body(&web01, rule(22, "*", "P2D")), "between PT5M and P1D"),
        (body(&web01, rule(22, "*", "PT1M")), "between PT5M and P1D"),
        (body(&web01, rule(22, "*", "three hours")), "ISO 8601"),
        (body(&web01, both), "mutually exclusive"),
    ];
    for (bad, expected) in cases {
        // Act
        let (status, answer) = azure.call(Method::PUT, &web, Some(&bad)).await;
        // Assert
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        let message = error_message(&answer);
        assert!(
            message.contains(expected),
            "expected '{expected}' in: {message}"
        );
    }

    let (status, put) = azure
        .call(
            Method::PUT,
            &web,
            Some(&body(&web01.to_uppercase(), rule(22, "tcp", "PT2H"))),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    let (_, policy) = azure.get(&web).await;
    assert_eq!(policy, put);
    let vms = policy["properties"]["virtualMachines"].as_array().unwrap();
    assert_eq!(vms.len(), 1, "replaced, not merged");
    assert_eq!(vms[0]["id"], web01, "canonical id");
    assert_eq!(vms[0]["ports"][0]["protocol"], "TCP");
    assert!(
        azure
            .emulator()
            .nsg_rules(&vm_id("rg-web", "web-02"))
            .is_empty()
    );

    // A new policy in an existing resource group
    let new = format!(
        "/subscriptions/{SUB_A}/resourceGroups/rg-legacy/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default?{SEC}"
    );
    let legacy = vm_id("rg-legacy", "legacy-01");
    let (status, created) = azure
        .call(
            Method::PUT,
            &new,
            Some(&body(&legacy, rule(22, "*", "PT3H"))),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(
        created["type"],
        "Microsoft.Security/locations/jitNetworkAccessPolicies"
    );
    assert_eq!(created["name"], "default");
    assert_eq!(azure.emulator().nsg_rules(&legacy).len(), 1);
}

#[tokio::test]
async fn unknown_subscriptions_groups_and_routes_are_arm_errors() {
    let azure = Azure::sample().await;
    let cases = [
        (
            format!(
                "/subscriptions/00000000-0000-0000-0000-000000000000/providers/Microsoft.Security/jitNetworkAccessPolicies?{SEC}"
            ),
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
        ),
        (
            format!(
                "/subscriptions/not-a-guid/providers/Microsoft.Security/jitNetworkAccessPolicies?{SEC}"
            ),
            StatusCode::BAD_REQUEST,
            "InvalidSubscriptionId",
        ),
        (
            format!(
                "/subscriptions/{SUB_A}/resourceGroups/rg-none/providers/Microsoft.Security/jitNetworkAccessPolicies?{SEC}"
            ),
            StatusCode::NOT_FOUND,
            "ResourceGroupNotFound",
        ),
        (
            format!("{}/revoke?{SEC}", policy_path("rg-web")),
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
        ),
        (
            format!("/subscriptions/{SUB_A}/whatever?{SEC}"),
            StatusCode::NOT_FOUND,
            "NotFound",
        ),
    ];
    for (path, status, code) in cases {
        let (got, body) = azure.get(&path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(error_code(&body), code, "{path}");
    }
    // Lower-case path keywords are the same resource, as in ARM
    let lower = policy_path("rg-web")
        .to_lowercase()
        .replace(&SUB_A.to_lowercase(), SUB_A);
    let (status, _) = azure.get(&format!("{lower}?{SEC}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = azure
        .call(
            Method::PATCH,
            &format!("{}?{SEC}", policy_path("rg-web")),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
}

#[tokio::test]
async fn injected_faults_answer_as_armed_and_then_clear() {
    // Arrange
    let azure = Azure::sample().await;
    let list = format!(
        "/subscriptions/{SUB_A}/providers/Microsoft.Security/jitNetworkAccessPolicies?{SEC}"
    );
    let emulator = azure.emulator();

    // 429 with Retry-After, once
    emulator.inject(
        Route::ListPolicies,
        FaultRule::next(
            1,
            Fault::Throttle {
                retry_after_secs: 7,
            },
        ),
    );
    let response = azure
        .http
        .get(azure.url(&list))
        .bearer_auth(&azure.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["retry-after"], "7");
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&body), "TooManyRequests");
    assert_eq!(azure.get(&list).await.0, StatusCode::OK);

    // 500 and 503 with ARM bodies, only on their route
    emulator.inject(
        Route::GetPolicy,
        FaultRule::next(1, Fault::ServerError { status: 500 }),
    );
    emulator.inject(
        Route::GetPolicy,
        FaultRule::next(1, Fault::ServerError { status: 503 }),
    );
    let get = format!("{}?{SEC}", policy_path("rg-web"));
    assert_eq!(azure.get(&list).await.0, StatusCode::OK);
    let (status, body) = azure.get(&get).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError")
    );
    let (status, body) = azure.get(&get).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
    );
    assert_eq!(azure.get(&get).await.0, StatusCode::OK);

    // Latency delays a normal answer
    emulator.inject(
        Route::GetPolicy,
        FaultRule::next(1, Fault::Latency { millis: 300 }),
    );
    let started = Instant::now();
    assert_eq!(azure.get(&get).await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // Always until cleared
    emulator.inject(
        Route::ListVms,
        FaultRule::always(Fault::ServerError { status: 503 }),
    );
    let vms = format!(
        "/subscriptions/{SUB_A}/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01"
    );
    for _ in 0..3 {
        assert_eq!(azure.get(&vms).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    emulator.clear_faults();
    assert_eq!(azure.get(&vms).await.0, StatusCode::OK);

    // A hang outlasts the client's timeout
    emulator.inject(Route::Initiate, FaultRule::next(1, Fault::Hang));
    let body = initiate_body(
        &vm_id("rg-web", "web-01"),
        22,
        start_time() + chrono::Duration::hours(1),
        "*",
    );
    let result = azure
        .http
        .post(azure.url(&format!("{}/initiate?{SEC}", policy_path("rg-web"))))
        .bearer_auth(&azure.token)
        .json(&body)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
    assert_eq!(emulator.initiate_calls().last().unwrap().status, 0, "hung");
    let (status, _) = azure.initiate(&policy_path("rg-web"), &body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn faults_and_the_call_log_are_reachable_over_http() {
    // Arrange
    let azure = Azure::sample().await;
    let list = format!(
        "/subscriptions/{SUB_A}/providers/Microsoft.Security/jitNetworkAccessPolicies?{SEC}"
    );
    let faults = azure.url("/_emulator/faults");
    let arm = json!({"route": "listPolicies", "fault": {"kind": "serverError", "status": 503}, "when": "always"});

    // Act
    let response = azure.http.post(&faults).json(&arm).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let faulted = azure.get(&list).await.0;
    azure.http.delete(&faults).send().await.unwrap();
    let cleared = azure.get(&list).await.0;
    let bad = azure
        .http
        .post(&faults)
        .json(&json!({"route": "nope"}))
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(
        (faulted, cleared),
        (StatusCode::SERVICE_UNAVAILABLE, StatusCode::OK)
    );
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let (_, calls) = read(
        azure
            .http
            .get(azure.url("/_emulator/calls"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let statuses: Vec<&Value> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["status"])
        .collect();
    assert_eq!(statuses, [&json!(503), &json!(200)]);
    assert_eq!(calls[0]["route"], "listPolicies");
    assert_eq!(calls[0]["method"], "GET");
    assert_eq!(calls[0]["query"], "api-version=2020-01-01");
}

#[tokio::test]
async fn the_call_log_records_initiate_bodies() {
    let azure = Azure::sample().await;
    let body = initiate_body(
        &vm_id("rg-web", "web-02"),
        22,
        start_time() + chrono::Duration::hours(1),
        "*",
    );

    azure.initiate(&policy_path("rg-web"), &body).await;

    let calls = azure.emulator().initiate_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].status, 202);
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].body.as_ref(), Some(&body));
    assert_eq!(calls[0].at, start_time());
}

#[tokio::test]
async fn the_app_service_token_endpoint_needs_the_identity_header() {
    // Arrange
    let azure = Azure::sample().await;
    azure.emulator().set_identity_header("s3cret");
    let url =
        azure.url("/msi/token?api-version=2019-08-01&resource=https%3A%2F%2Fmanagement.azure.com");

    // Act / Assert
    let missing = azure
        .http
        .get(&url)
        .header("metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    let wrong = azure
        .http
        .get(&url)
        .header("x-identity-header", "guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let bad_version = azure
        .http
        .get(url.replace("2019-08-01", "2017-09-01"))
        .header("x-identity-header", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_version.status(), StatusCode::BAD_REQUEST);

    let response = azure
        .http
        .get(&url)
        .header("metadata", "true")
        .header("x-identity-header", "s3cret")
        .send()
        .await
        .unwrap();
    let (status, body) = read(response).await;
    assert_eq!(status, StatusCode::OK);
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["access_token", "expires_on", "resource", "token_type"]
    );
    let expires_on = (start_time() + chrono::Duration::hours(1))
        .timestamp()
        .to_string();
    assert_eq!(
        body["expires_on"],
        json!(expires_on),
        "a string of unix seconds"
    );
    assert_eq!(body["resource"], "https://management.azure.com");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(azure.emulator().token_requests(), 4);

    // The token works on ARM
    let token = body["access_token"].as_str().unwrap();
    let list = azure.url(&format!(
        "/subscriptions/{SUB_A}/providers/Microsoft.Security/jitNetworkAccessPolicies?{SEC}"
    ));
    let response = azure
        .http
        .get(&list)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_imds_token_endpoint_needs_the_metadata_header_and_can_fault() {
    let azure = Azure::sample().await;
    let url = azure.url("/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com");

    let missing = azure.http.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);

    let (status, body) = read(
        azure
            .http
            .get(&url)
            .header("Metadata", "true")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["access_token"].is_string());
    assert_eq!(body["expires_in"], "3600");

    azure.emulator().inject(
        Route::Token,
        FaultRule::next(
            1,
            Fault::Throttle {
                retry_after_secs: 2,
            },
        ),
    );
    let throttled = azure
        .http
        .get(&url)
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["retry-after"], "2");
    assert_eq!(azure.emulator().token_requests(), 3);
}

#[tokio::test]
async fn the_standalone_emulator_serves_the_sample_estate_until_shut_down() {
    // Arrange: a listener on any free port, handed to the standalone server
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run_standalone(
        listener,
        None,
        "harness-secret".to_owned(),
        async move {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let base = format!("http://{listen}");

    // Act: a token over the App Service protocol, then the VM list
    let mut token = None;
    for _ in 0..50 {
        let attempt = http
            .get(format!(
                "{base}/msi/token?api-version=2019-08-01&resource=https://management.azure.com"
            ))
            .header("x-identity-header", "harness-secret")
            .send()
            .await;
        if let Ok(response) = attempt {
            token = Some(
                read(response).await.1["access_token"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = token.expect("the standalone emulator came up");
    let vms = http
        .get(format!("{base}/subscriptions/{SUB_A}/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();

    // Assert
    assert_eq!(vms.status(), StatusCode::OK);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_bad_seed_file_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("estate.toml");
    std::fs::write(&path, "[[subscriptions]]\nid = \"x\"\n").unwrap();

    let err = run_standalone(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(path.clone()),
        String::new(),
        async {},
    )
    .await
    .unwrap_err();

    let text = format!("{err:#}");
    assert!(text.contains("estate.toml"), "{text}");
    assert!(text.contains("not a GUID"), "{text}");
    assert!(Estate::from_file(dir.path().join("missing.toml")).is_err());
}

#[tokio::test]
async fn odd_requests_get_arm_errors_not_panics() {
    let azure = Azure::sample().await;
    let web = format!("{}?{SEC}", policy_path("rg-web"));
    let initiate = format!("{}/initiate?{SEC}", policy_path("rg-web"));
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(Method, String, String)> = vec![
        (Method::PUT, web.clone(), String::new()),
        (Method::PUT, web.clone(), "null".to_owned()),
        (
            Method::PUT,
            web.clone(),
            r#"{"properties":{"virtualMachines":[{"id":5}]}}"#.to_owned(),
        ),
        (
            Method::PUT,
            web.clone(),
            r#"{"properties":{"virtualMachines":[{"id":"x","ports":[{"number":-1}]}]}}"#.to_owned(),
        ),
        (Method::POST, initiate.clone(), deep),
        (
            Method::POST,
            initiate.clone(),
            r#"{"virtualMachines":[{"id":null,"ports":[]}]}"#.to_owned(),
        ),
        (
            Method::POST,
            initiate.clone(),
            r#"{"virtualMachines":[{"ports":[{"number":99999999999999999999}]}]}"#.to_owned(),
        ),
        (
            Method::GET,
            format!(
                "/subscriptions/{SUB_A}/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01&$skipToken=-1"
            ),
            String::new(),
        ),
        (
            Method::GET,
            format!(
                "/subscriptions/{SUB_A}/providers/Microsoft.Security/jitNetworkAccessPolicies?{SEC}&$skipToken=abc"
            ),
            String::new(),
        ),
        (
            Method::GET,
            "/subscriptions/%ff%fe/providers/Microsoft.Compute/virtualMachines".to_owned(),
            String::new(),
        ),
    ];
    for (method, path, body) in cases {
        let response = azure
            .http
            .request(method.clone(), azure.url(&path))
            .bearer_auth(&azure.token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, answer) = read(response).await;
        assert!(
            status.is_client_error(),
            "{method} {path} {body:.80}: {status} {answer}"
        );
        assert!(!error_message(&answer).is_empty());
    }
    // A far-away skip token is an empty last page
    let far = format!(
        "/subscriptions/{SUB_A}/providers/Microsoft.Security/jitNetworkAccessPolicies?{SEC}&$skipToken=999"
    );
    let (status, page) = azure.get(&far).await;
    assert_eq!((status, page), (StatusCode::OK, json!({"value": []})));
}

#[tokio::test]
async fn the_permissions_route_reports_the_granted_actions_and_checks_its_api_version() {
    let azure = Azure::sample().await;
    let path = format!("/subscriptions/{SUB_A}/providers/Microsoft.Authorization/permissions");
    let (status, body) = azure.get(&format!("{path}?api-version=2022-04-01")).await;
    assert_eq!(status, StatusCode::OK);
    let actions = body["value"][0]["actions"].as_array().unwrap().clone();
    assert_eq!(
        actions,
        drawbridge::domain::preflight::NEEDED_ACTIONS
            .iter()
            .map(|a| json!(a))
            .collect::<Vec<_>>()
    );
    assert_eq!(body["value"][0]["notActions"], json!([]));

    azure
        .emulator()
        .set_granted_actions(vec!["Microsoft.Security/*".to_owned()]);
    let (_, body) = azure.get(&format!("{path}?api-version=2022-04-01")).await;
    assert_eq!(body["value"][0]["actions"], json!(["Microsoft.Security/*"]));

    let (status, body) = azure.get(&format!("{path}?api-version=2020-01-01")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "InvalidApiVersionParameter");
    assert!(error_message(&body).contains("2022-04-01"));
}

// ----- Issue 16: network interfaces and public IPs (the grant card's address) ---------------

fn network_path(rg: &str, kind: &str, name: &str, api_version: &str) -> String {
    format!(
        "/subscriptions/{SUB_A}/resourceGroups/{rg}/providers/Microsoft.Network/{kind}/{name}?api-version={api_version}"
    )
}

#[tokio::test]
async fn a_vms_nic_and_public_ip_are_served_with_the_network_shapes() {
    let azure = Azure::sample().await;

    let (vm_status, vm) = azure
        .get(&format!(
            "{}?api-version=2024-07-01",
            vm_id("rg-web", "web-01")
        ))
        .await;
    let nic_ref = vm["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (nic_status, nic) = azure
        .get(&format!("{nic_ref}?api-version=2024-05-01"))
        .await;
    let config = &nic["properties"]["ipConfigurations"][0]["properties"];
    let ip_ref = config["publicIPAddress"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (ip_status, ip) = azure.get(&format!("{ip_ref}?api-version=2024-05-01")).await;

    assert_eq!(vm_status, StatusCode::OK, "{vm}");
    assert_eq!(vm["tags"]["drawbridge-ssh-user"], "azureuser", "{vm}");
    assert_eq!(nic_status, StatusCode::OK, "{nic}");
    assert_eq!(nic["type"], "Microsoft.Network/networkInterfaces");
    assert_eq!(config["privateIPAddress"], "10.10.1.4", "{nic}");
    assert_eq!(config["primary"], true);
    assert_eq!(ip_status, StatusCode::OK, "{ip}");
    assert_eq!(ip["type"], "Microsoft.Network/publicIPAddresses");
    assert_eq!(ip["properties"]["ipAddress"], "20.105.12.34", "{ip}");
    assert_eq!(
        ip["properties"]["ipConfiguration"]["id"],
        format!("{nic_ref}/ipConfigurations/ipconfig1")
    );
}

#[tokio::test]
async fn a_private_only_vm_has_no_public_ip_resource() {
    let azure = Azure::sample().await;

    let (nic_status, nic) = azure
        .get(&network_path(
            "rg-web",
            "networkInterfaces",
            "web-03-nic",
            "2024-05-01",
        ))
        .await;
    let (ip_status, ip) = azure
        .get(&network_path(
            "rg-web",
            "publicIPAddresses",
            "web-03-ip",
            "2024-05-01",
        ))
        .await;

    assert_eq!(nic_status, StatusCode::OK, "{nic}");
    let config = &nic["properties"]["ipConfigurations"][0]["properties"];
    assert_eq!(config["privateIPAddress"], "10.10.1.6");
    assert!(config.get("publicIPAddress").is_none(), "{nic}");
    assert_eq!(ip_status, StatusCode::NOT_FOUND, "{ip}");
    assert_eq!(error_code(&ip), "ResourceNotFound");
}

#[tokio::test]
async fn network_reads_check_the_api_version_strictly() {
    let azure = Azure::sample().await;
    let nic = |v: &str| network_path("rg-web", "networkInterfaces", "web-01-nic", v);

    let (missing, m) = azure
        .get(&format!(
            "/subscriptions/{SUB_A}/resourceGroups/rg-web/providers/Microsoft.Network/networkInterfaces/web-01-nic"
        ))
        .await;
    let (preview, p) = azure.get(&nic("2024-05-01-preview")).await;
    let (security, s) = azure.get(&nic("2020-01-01x")).await;
    let (old, o) = azure.get(&nic("2014-01-01")).await;

    assert_eq!(
        (missing, error_code(&m)),
        (StatusCode::BAD_REQUEST, "MissingApiVersionParameter")
    );
    for (status, body) in [(preview, &p), (security, &s), (old, &o)] {
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(error_code(body), "InvalidApiVersionParameter");
    }
}
