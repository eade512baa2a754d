//! The operations endpoints of a running app: /healthz, /readyz, /metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::app::{SRE_ROLE, TestApp, TestAppBuilder, spawn_app};

/// Samples by `name{labels}` (labels as printed), after checking every line
/// of the exposition strictly: `# HELP`/`# TYPE`/`# UNIT` lines, samples of a
/// declared family with well-formed names, labels and values, and `# EOF`
/// last.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn check_labels(labels: &str, line: &str) {
        let mut rest = labels;
        while !rest.is_empty() {
            let (key, after) = rest
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad labels: {line}"));
            assert!(is_name(key), "bad label name `{key}`: {line}");
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end.unwrap_or_else(|| panic!("unterminated label value: {line}"));
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "the exposition ends with # EOF"
    );
    for line in &lines[..lines.len() - 1] {
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name, rest) = (parts.next(), parts.next(), parts.next());
            let name = name.unwrap_or_else(|| panic!("bad metadata: {line}"));
            assert!(is_name(name), "bad family name: {line}");
            match kind {
                Some("HELP") | Some("UNIT") => {}
                Some("TYPE") => {
                    let t = rest.unwrap_or_default();
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "info",
                            "stateset",
                            "gaugehistogram"
                        ]
                        .contains(&t),
                        "bad type: {line}"
                    );
                    families.insert(name.to_owned(), t.to_owned());
                }
                _ => panic!("unknown metadata line: {line}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}"));
                check_labels(labels, line);
                name
            }
            None => series,
        };
        assert!(is_name(name), "bad metric name: {line}");
        let family = [
            "_total", "_bucket", "_sum", "_count", "_created", "_info", "",
        ]
        .iter()
        .find_map(|suffix| {
            name.strip_suffix(suffix)
                .filter(|f| families.contains_key(*f))
        })
        .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"));
        assert!(!family.is_empty());
        samples.insert(series.to_owned(), value);
    }
    samples
}

async fn get(url: &str) -> (u16, String, String) {
    let response = reqwest::get(url).await.expect("the ops endpoint answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().await.expect("a body"))
}

async fn scrape(app: &TestApp) -> BTreeMap<String, f64> {
    let (status, content_type, body) = get(&format!("{}/metrics", app.ops_url)).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    parse_exposition(&body)
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn sum_matching(samples: &BTreeMap<String, f64>, prefix: &str, part: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.contains(part))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn health_readiness_and_metrics_move_with_a_request() {
    // Arrange
    let app = spawn_app().await;
    let (status, _, body) = get(&format!("{}/healthz", app.ops_url)).await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _, body) = get(&format!("{}/readyz", app.ops_url)).await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["checks"]["database"], "ok");
    assert_eq!(ready["checks"]["discord"], "ok");
    assert_eq!(ready["checks"]["azure_token"], "ok");
    let before = scrape(&app).await;
    let granted = r#"drawbridge_interactions_total{command="jit",outcome="success"}"#;
    let acks = r#"drawbridge_interaction_ack_seconds_count{kind="command"}"#;

    // Act
    let d = &app.discord;
    let sent = d
        .send_interaction(
            d.slash("jit")
                .string("port", "ssh")
                .string("vm", "web-01")
                .string("duration", "2h")
                .string("from", "203.0.113.7")
                .roles([SRE_ROLE]),
        )
        .await;
    d.wait_for_interaction_response(sent.id, Duration::from_secs(10), |m| {
        m.to_string().contains("Access granted")
    })
    .await
    .expect("the reply shows the grant");
    // The counter is bumped just before the reply is shown, and the gauges
    // are re-read every second (ops.metrics_refresh): give them a beat.
    let mut after = scrape(&app).await;
    for _ in 0..250 {
        if value(&after, granted) > value(&before, granted)
            && value(&after, "drawbridge_active_grants") > 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = scrape(&app).await;
    }

    // Assert
    assert!(
        value(&after, granted) >= value(&before, granted) + 1.0,
        "{after:#?}"
    );
    assert!(
        value(&after, acks) >= value(&before, acks) + 1.0,
        "{after:#?}"
    );
    let initiates = |s| sum_matching(s, "drawbridge_arm_requests_total", "operation=\"initiate\"");
    assert!(initiates(&after) >= initiates(&before) + 1.0, "{after:#?}");
    assert!(
        sum_matching(
            &after,
            "drawbridge_arm_request_seconds_count",
            "operation=\"initiate\""
        ) >= 1.0
    );
    assert_eq!(
        value(&after, "drawbridge_active_grants"),
        1.0,
        "this app's store has one open grant"
    );
    assert!(after.contains_key("drawbridge_outbox_depth"));
    assert!(after.contains_key("drawbridge_outbox_oldest_age_seconds"));
    assert!(after.contains_key("drawbridge_scheduler_lag_seconds"));
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn http_mode_serves_the_ops_endpoints_on_their_own_listener() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let app = TestAppBuilder::default()
        .http_mode(&hex::encode(key.verifying_key().to_bytes()))
        .start()
        .await;
    let endpoint = app.endpoint.clone().expect("HTTP mode");
    assert!(
        !endpoint.starts_with(&app.ops_url),
        "{endpoint} vs {}",
        app.ops_url
    );
    let (status, _, _) = get(&format!("{}/healthz", app.ops_url)).await;
    assert_eq!(status, 200);
    let (status, _, body) = get(&format!("{}/readyz", app.ops_url)).await;
    assert_eq!(status, 200, "{body}");
    scrape(&app).await;
    // The healthcheck subcommand probes the same endpoint (from a process
    // of its own, while this runtime keeps serving).
    let probe = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["healthcheck", "--url", &format!("{}/healthz", app.ops_url)])
        .output()
        .await
        .expect("runs");
    assert!(probe.status.success(), "{probe:?}");
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_interactions_listener_answers_healthz_only_when_configured() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let public_key = hex::encode(key.verifying_key().to_bytes());
    let plain = TestAppBuilder::default()
        .http_mode(&public_key)
        .start()
        .await;
    let with_healthz = TestAppBuilder::default()
        .http_mode(&public_key)
        .env("HTTP__HEALTHZ", "true")
        .start()
        .await;
    let base = |app: &TestApp| {
        app.endpoint
            .clone()
            .expect("HTTP mode")
            .trim_end_matches("/interactions")
            .to_owned()
    };

    let (off, _, _) = get(&format!("{}/healthz", base(&plain))).await;
    let (on, _, body) = get(&format!("{}/healthz", base(&with_healthz))).await;
    let (readyz, _, _) = get(&format!("{}/readyz", base(&with_healthz))).await;

    assert_eq!(off, 404);
    assert_eq!((on, body.trim()), (200, "ok"));
    assert_eq!(readyz, 404, "only /healthz joins /interactions");
    plain.stop().await.expect("clean stop");
    with_healthz.stop().await.expect("clean stop");
}

#[test]
fn the_healthcheck_fails_when_nothing_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a port");
    let probe = std::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args([
            "healthcheck",
            "--url",
            &format!("http://127.0.0.1:{port}/healthz"),
        ])
        .output()
        .expect("runs");
    assert_eq!(probe.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&probe.stderr).contains("unhealthy"));
}

/// `deploy/kubernetes.yaml`, the operator guide's example for several
/// replicas: it parses, and what it sets is what the bot reads.
#[test]
fn the_kubernetes_example_runs_two_http_replicas_with_probes_a_service_and_a_budget() {
    use yaml_rust2::{Yaml, YamlLoader};

    let text = include_str!("../../deploy/kubernetes.yaml");
    let docs = YamlLoader::load_from_str(text).expect("deploy/kubernetes.yaml is YAML");
    let of_kind = |kind: &str| -> &Yaml {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} in the manifest"))
    };

    // The Deployment: two replicas, rolled one at a time.
    let deployment = of_kind("Deployment");
    assert_eq!(deployment["spec"]["replicas"].as_i64(), Some(2));
    let rolling = &deployment["spec"]["strategy"]["rollingUpdate"];
    assert_eq!(rolling["maxUnavailable"].as_i64(), Some(0));
    let pod = &deployment["spec"]["template"]["spec"];
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() >= 30);
    let container = &pod["containers"][0];
    let port = |name: &str| {
        container["ports"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
    };
    assert_eq!(
        port("ops"),
        Some(9090),
        "config/container.toml's ops.listen"
    );
    assert_eq!(port("interactions"), Some(8080), "its http.listen");
    // Probes on the ops port: readiness on /readyz, liveness on /healthz.
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"].as_str(), Some("ops"));
    }

    // Every setting it gives is a configuration key the bot knows, and it
    // runs HTTP mode (gateway mode is one replica: docs/operations.md §2).
    let known = drawbridge::config::known_keys();
    let mut settings: Vec<(String, String)> = container["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (k, v) in of_kind("ConfigMap")["data"].as_hash().unwrap() {
        settings.push((k.as_str().unwrap().into(), v.as_str().unwrap().into()));
    }
    for (name, _) in &settings {
        let key = name
            .strip_prefix("DRAWBRIDGE__")
            .unwrap_or_else(|| panic!("{name}"))
            .to_ascii_lowercase()
            .replace("__", ".");
        assert!(known.contains(&key), "{name}: no key {key}");
    }
    assert!(settings.contains(&("DRAWBRIDGE__DISCORD__MODE".into(), "http".into())));
    assert!(text.contains("DRAWBRIDGE__DATABASE__URL='postgres://"));

    // The Service routes the interactions port only; the budget keeps one up.
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    let service = of_kind("Service");
    assert_eq!(&service["spec"]["selector"], selector);
    let routed: Vec<&str> = service["spec"]["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|p| p["targetPort"].as_str())
        .collect();
    assert_eq!(routed, ["interactions"]);
    let budget = of_kind("PodDisruptionBudget");
    assert_eq!(budget["spec"]["minAvailable"].as_i64(), Some(1));
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], selector);
}

#[tokio::test]
async fn readyz_names_the_replica_and_the_leases_it_holds() {
    // Arrange: one replica takes every lease of one-at-a-time work.
    let app = spawn_app().await;

    // Act: the deliverer and the reconciler take theirs as they start.
    let mut ready = serde_json::Value::Null;
    for _ in 0..100 {
        let (status, _, body) = get(&format!("{}/readyz", app.ops_url)).await;
        assert_eq!(status, 200, "{body}");
        ready = serde_json::from_str(&body).expect("JSON");
        let leases = ready["leases"].as_array().cloned().unwrap_or_default();
        if leases.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Assert
    assert_eq!(ready["role"], "active", "{ready}");
    let leases: Vec<&str> = ready["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(leases.contains(&"outbox_audit"), "{ready}");
    assert!(leases.contains(&"reconcile"), "{ready}");
    assert!(leases.contains(&"gateway"), "{ready}");
    assert_eq!(ready["gateway"], "holder", "gateway mode: {ready}");
    assert_eq!(ready["replica"], drawbridge::service::replica::replica_id());
}
