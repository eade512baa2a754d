//! Logs: one span per interaction with its request id, member, command and
//! VM; and no secret at any level.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drawbridge::config::LogFormat;

use crate::support::app::{SRE_ROLE, TestAppBuilder};
use crate::support::fake_discord::USER_ID;

/// A `MakeWriter` that keeps everything written.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

const DISCORD_TOKEN: &str = "MTA5ODc2NTQzMjE.Gx7Yq1.secret-discord-token-do-not-log";
const CLIENT_SECRET: &str = "azure-client-secret-8Q~never-in-a-log";

// A current-thread runtime: the app's tasks run on this thread, so the
// thread-local subscriber below sees them.
#[tokio::test(flavor = "current_thread")]
async fn a_full_flow_at_trace_level_logs_spans_but_no_secret() {
    // Arrange
    let capture = Capture::default();
    let subscriber = drawbridge::telemetry::subscriber(LogFormat::Json, "trace", capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = TestAppBuilder::default()
        .env("DISCORD__TOKEN", DISCORD_TOKEN)
        .env("AZURE__CLIENT_SECRET", CLIENT_SECRET)
        .env("AZURE__TENANT_ID", "00000000-0000-0000-0000-000000000001")
        .env("AZURE__CLIENT_ID", "00000000-0000-0000-0000-000000000002")
        .start()
        .await;
    let d = &app.discord;

    // Act
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
    let status = d
        .send_interaction(d.slash("jit-status").roles([SRE_ROLE]))
        .await;
    d.wait_for_interaction_response(status.id, Duration::from_secs(10), |m| {
        m.to_string().contains("web-01")
    })
    .await
    .expect("status answers");
    app.stop().await.expect("clean stop");

    // Assert
    let text = String::from_utf8(capture.0.lock().unwrap().clone()).expect("UTF-8 logs");
    assert!(text.lines().count() > 50, "trace level logs a lot:\n{text}");
    assert!(!text.contains(DISCORD_TOKEN), "the Discord token leaked");
    assert!(
        !text.contains("secret-discord-token"),
        "part of the Discord token leaked"
    );
    assert!(!text.contains(CLIENT_SECRET), "the client secret leaked");
    let leaks: Vec<&str> = text.lines().filter(|l| l.contains(&sent.token)).collect();
    assert!(
        leaks.is_empty(),
        "an interaction token leaked:\n{}",
        leaks.join("\n")
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let id = sent.id.to_string();
    let in_span: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["span"]["name"] == "interaction" && l["span"]["request_id"] == id.as_str())
        .collect();
    assert!(!in_span.is_empty(), "events of the /jit carry its span");
    let last = in_span.last().expect("one");
    assert_eq!(last["span"]["command"], "jit");
    assert_eq!(last["span"]["vm"], "web-01");
    assert_eq!(last["span"]["member_id"], USER_ID);
}
