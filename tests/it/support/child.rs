//! For tests that run the real `drawbridge` binary as a child process. The
//! child listens on port 0 and its log says which port it got, so no test
//! picks a port in advance (a port found free and released can be taken by
//! someone else before the child binds it).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The address logged as `field` on the first line of `log` that contains
/// `message`, in the pretty (`field=addr`) or the JSON (`"field":"addr"`)
/// format. Pretty logs must be written without colours (`NO_COLOR=1`).
pub fn logged_addr(log: &str, message: &str, field: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|line| line.contains(message))?;
    [format!("{field}="), format!("\"{field}\":\"")]
        .iter()
        .find_map(|key| {
            let rest = &line[line.find(key.as_str())? + key.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"')
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
}

/// Polls `log()` (the child's log so far) until [`logged_addr`] finds the
/// address; panics with the log after `timeout`.
pub async fn wait_for_logged_addr(
    log: impl Fn() -> String,
    message: &str,
    field: &str,
    timeout: Duration,
) -> SocketAddr {
    let started = Instant::now();
    loop {
        let text = log();
        if let Some(addr) = logged_addr(&text, message, field) {
            return addr;
        }
        assert!(
            started.elapsed() < timeout,
            "no `{message}` line with {field} in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn finds_the_address_in_pretty_and_json_lines() {
    let pretty = "2026-03-01T12:00:00Z  INFO drawbridge::app: ops endpoints listening listen=127.0.0.1:41234\n";
    let json = r#"{"timestamp":"2026-03-01T12:00:00Z","level":"INFO","message":"ops endpoints listening","listen":"127.0.0.1:41235","target":"drawbridge::app"}"#;
    let other = "INFO something else listen=127.0.0.1:1\n";
    let at = |port: u16| Some(SocketAddr::from(([127, 0, 0, 1], port)));
    assert_eq!(
        logged_addr(
            &format!("{other}{pretty}"),
            "ops endpoints listening",
            "listen"
        ),
        at(41234)
    );
    assert_eq!(
        logged_addr(json, "ops endpoints listening", "listen"),
        at(41235)
    );
    assert_eq!(
        logged_addr(other, "ops endpoints listening", "listen"),
        None
    );
}
