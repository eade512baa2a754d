//! Fuzzing on the stable toolchain: proptest at scale over the request
//! grammar, the duration and CIDR parsers, and the HTTP interactions
//! endpoint (bodies, headers, signatures). cargo-fuzz and cargo-afl need a
//! nightly toolchain or extra tooling this project does not install; see
//! BENCHMARKS.md.
//!
//! Case counts are modest by default (CI); set `DRAWBRIDGE_FUZZ_CASES` for a
//! long run, e.g. `DRAWBRIDGE_FUZZ_CASES=100000 cargo test --release --test it fuzz`.
//! Failures shrink to a minimal input, which proptest stores under
//! `tests/it/fuzz.proptest-regressions` and replays first on every run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use drawbridge::chat::{ButtonAction, ChatMessage};
use drawbridge::clock::SystemClock;
use drawbridge::discord::endpoint::MAX_BODY_BYTES;
use drawbridge::discord::interactions_router;
use drawbridge::domain::{AccessDuration, AccessRequest, PortAliases, SourcePrefix};
use drawbridge::interactions::{
    AutocompleteQuery, Choice, InteractionHandler, Invocation, SlashCommand,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::support::fake_discord::signing::Signer;

/// Cases per property: `DRAWBRIDGE_FUZZ_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("DRAWBRIDGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> Config {
    Config {
        cases: cases(default),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/it/fuzz.proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// The longest any single parse may take: generous for a debug build on a
/// busy CI machine, far below anything a user would notice.
const PARSE_BUDGET: Duration = Duration::from_millis(50);

/// Fragments of the grammar, so random lines get past the tokenizer often.
fn grammar_token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/jit".to_string()),
        Just("ssh".to_string()),
        Just("rdp,winrm".to_string()),
        Just("22,8443".to_string()),
        "[a-z0-9-]{1,12}",
        "[a-z]{1,6}/[a-z0-9-]{1,10}",
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/rg/vm",
        "[0-9]{1,4}[hmd]{1,2}",
        "PT[0-9]{1,3}[HMS]",
        "reason:\"[ -~]{0,20}\"?",
        "reason:[a-z]{0,8}",
        "from:[0-9.:/a-f*]{0,20}",
        "\"[^\"]{0,10}",
        "\\PC{0,8}",
    ]
}

fn grammar_line() -> impl Strategy<Value = String> {
    proptest::collection::vec(grammar_token(), 0..8).prop_map(|t| t.join(" "))
}

#[test]
fn the_request_grammar_never_panics_and_what_parses_round_trips() {
    let aliases = PortAliases::default();
    let strategy = prop_oneof![
        // Anything at all, including very long lines and odd Unicode.
        "\\PC{0,200}",
        any::<String>(),
        "[ -~]{900,1100}",
        grammar_line(),
    ];
    let mut runner = TestRunner::new(config(1_000));
    runner
        .run(&strategy, |line| {
            let started = Instant::now();
            let parsed = AccessRequest::parse_line(&line, &aliases);
            prop_assert!(started.elapsed() < PARSE_BUDGET, "slow on {line:?}");
            if let Ok(request) = parsed {
                // The canonical form parses back to the same request.
                let again = AccessRequest::parse_line(&request.to_string(), &aliases);
                prop_assert_eq!(again.as_ref().ok(), Some(&request), "{}", request);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_duration_parser_never_panics_and_stays_in_bounds() {
    let strategy = prop_oneof![
        any::<String>(),
        "[0-9]{0,25}",
        "[0-9 hmdHMDsS.]{0,16}",
        "[Pp]?[Tt]?[0-9]{0,20}[HMShmsD]?([0-9]{0,20}[HMShms])?",
        "P[0-9]{0,4}DT[0-9]{0,4}H[0-9]{0,4}M[0-9]{0,4}S",
    ];
    let mut runner = TestRunner::new(config(2_000));
    runner
        .run(&strategy, |input| {
            if let Ok(d) = AccessDuration::parse(&input) {
                prop_assert!(AccessDuration::min() <= d && d <= AccessDuration::max());
                prop_assert_eq!(AccessDuration::parse(&d.to_string()).ok(), Some(d));
                prop_assert_eq!(AccessDuration::parse(&d.to_iso8601()).ok(), Some(d));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_source_parser_never_panics_and_what_parses_round_trips() {
    let strategy = prop_oneof![
        any::<String>(),
        "[0-9./]{0,24}",
        "[0-9a-fA-F:./%]{0,48}",
        (any::<[u8; 4]>(), 0u8..=40)
            .prop_map(|(b, p)| format!("{}/{p}", std::net::Ipv4Addr::from(b))),
        (any::<[u8; 16]>(), 0u8..=140)
            .prop_map(|(b, p)| format!("{}/{p}", std::net::Ipv6Addr::from(b))),
    ];
    let mut runner = TestRunner::new(config(2_000));
    runner
        .run(&strategy, |input| {
            if let Ok(source) = SourcePrefix::parse(&input) {
                prop_assert_eq!(SourcePrefix::parse(&source.to_string()).ok(), Some(source));
            }
            Ok(())
        })
        .unwrap();
}

// ----- the HTTP interactions endpoint ----------------------------------------------------------

/// A handler that answers at once; the endpoint is what is under test.
struct Quiet;

#[async_trait]
impl InteractionHandler for Quiet {
    async fn command(&self, _who: &Invocation, _command: &SlashCommand) -> ChatMessage {
        ChatMessage::text("ok")
    }
    async fn autocomplete(&self, _who: &Invocation, _query: &AutocompleteQuery) -> Vec<Choice> {
        Vec::new()
    }
    async fn button(&self, _who: &Invocation, _action: &ButtonAction) -> ChatMessage {
        ChatMessage::text("ok")
    }
}

/// What to send: a body and how to sign it.
#[derive(Debug, Clone)]
enum Signature {
    /// No signature headers at all.
    Missing,
    /// Random header values.
    Random {
        signature: String,
        timestamp: String,
    },
    /// A valid signature, with the timestamp this far from now.
    Valid { skew_secs: i64 },
    /// A valid signature over a different body.
    OtherBody,
}

fn signature() -> impl Strategy<Value = Signature> {
    prop_oneof![
        Just(Signature::Missing),
        ("[0-9a-fA-F]{0,130}|\\PC{0,20}", "-?[0-9]{0,12}|\\PC{0,12}").prop_map(
            |(signature, timestamp)| Signature::Random {
                signature,
                timestamp
            }
        ),
        // Mostly fresh, sometimes just inside or outside the 5 min window.
        prop_oneof![4 => Just(0i64), 1 => -400i64..400]
            .prop_map(|skew_secs| Signature::Valid { skew_secs }),
        Just(Signature::OtherBody),
    ]
}

/// Bodies: junk, JSON-ish values, interaction-shaped objects and
/// oversized ones.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let json_leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    let json = json_leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("type".to_string()),
                    Just("id".to_string()),
                    Just("token".to_string()),
                    Just("data".to_string()),
                    Just("member".to_string()),
                    Just("application_id".to_string()),
                    "[a-z_]{1,10}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        json.prop_map(|v| serde_json::to_vec(&v).expect("serializes")),
        // A PING-shaped object with random extra fields and type.
        (0u8..6, "[0-9]{1,20}").prop_map(|(t, id)| format!(
            r#"{{"type":{t},"id":"{id}","application_id":"{id}","token":"t","version":1}}"#
        )
        .into_bytes()),
        // Over the 64 KiB limit.
        (MAX_BODY_BYTES + 1..MAX_BODY_BYTES + 4096).prop_map(|n| vec![b'{'; n]),
    ]
}

#[test]
fn the_interactions_endpoint_answers_random_requests_with_400_401_or_413_quickly() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let signer = Signer::test();
    let key: [u8; 32] = hex::decode(signer.public_key_hex())
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    // The follow-up REST calls go nowhere: nothing here gets that far
    // except a valid PING, which is answered inline.
    let http = Arc::new(
        serenity::http::HttpBuilder::new("fuzz-token")
            .proxy("http://127.0.0.1:9")
            .ratelimiter_disabled(true)
            .build(),
    );
    let tracker = TaskTracker::new();
    let router = interactions_router(
        key,
        http,
        Arc::new(Quiet),
        Arc::new(SystemClock),
        tracker,
        Arc::new(crate::support::ledger::MemoryLedger::default()),
    )
    .expect("router");
    let strategy = (
        body(),
        signature(),
        proptest::option::of("\\PC{0,30}"),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(config(300));
    runner
        .run(&strategy, |(body, signature, content_type, bad_path)| {
            let now = chrono::Utc::now().timestamp();
            let mut request = Request::builder().method("POST").uri(if bad_path {
                "/interactions/"
            } else {
                "/interactions"
            });
            if let Some(ct) = content_type
                .as_deref()
                .filter(|c| axum::http::HeaderValue::from_str(c).is_ok())
            {
                request = request.header("content-type", ct);
            }
            let mut fresh_and_valid = false;
            // A timestamp right at the 5 min edge may go either way.
            let mut edge = false;
            match &signature {
                Signature::Missing => {}
                Signature::Random {
                    signature,
                    timestamp,
                } => {
                    if axum::http::HeaderValue::from_str(signature).is_ok() {
                        request = request.header("x-signature-ed25519", signature);
                    }
                    if axum::http::HeaderValue::from_str(timestamp).is_ok() {
                        request = request.header("x-signature-timestamp", timestamp);
                    }
                }
                Signature::Valid { skew_secs } => {
                    let ts = (now + skew_secs).to_string();
                    fresh_and_valid = skew_secs.abs() < 299;
                    edge = (299..=301).contains(&skew_secs.abs());
                    request = request
                        .header("x-signature-ed25519", signer.sign(&ts, &body))
                        .header("x-signature-timestamp", ts);
                }
                Signature::OtherBody => {
                    let ts = now.to_string();
                    request = request
                        .header("x-signature-ed25519", signer.sign(&ts, b"{\"type\":1}"))
                        .header("x-signature-timestamp", ts);
                }
            }
            let request = request.body(Body::from(body.clone())).expect("request");
            let started = Instant::now();
            let response = rt
                .block_on(async {
                    tokio::time::timeout(Duration::from_secs(5), router.clone().oneshot(request))
                        .await
                })
                .expect("answered within 5 s")
                .expect("infallible");
            let elapsed = started.elapsed();
            let status = response.status();
            prop_assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
            if bad_path {
                prop_assert_eq!(status, StatusCode::NOT_FOUND);
                return Ok(());
            }
            let is_ping = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .is_some_and(|v| v["type"] == 1);
            let allowed: &[StatusCode] = if body.len() > MAX_BODY_BYTES {
                &[StatusCode::PAYLOAD_TOO_LARGE]
            } else if edge {
                &[
                    StatusCode::UNAUTHORIZED,
                    StatusCode::OK,
                    StatusCode::BAD_REQUEST,
                ]
            } else if !fresh_and_valid {
                &[StatusCode::UNAUTHORIZED]
            } else if is_ping {
                // A valid PING (or something serenity reads as one).
                &[StatusCode::OK, StatusCode::BAD_REQUEST]
            } else {
                &[StatusCode::BAD_REQUEST]
            };
            prop_assert!(
                allowed.contains(&status),
                "status {status} not in {allowed:?} for {signature:?}, body {:?}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
            Ok(())
        })
        .unwrap();
}
