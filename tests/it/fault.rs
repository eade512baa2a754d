//! Fault injection under load: the load harness (`support::load`, also
//! `cargo bench --bench load`) in a short configuration. Each run checks
//! that every interaction was acknowledged once and ended with a definite
//! reply, that no request id was initiated twice in Azure, that the audit
//! channel holds every stored event exactly once and in order, and that the
//! audit chain verifies.

use std::time::Duration;

use crate::support::load::{AzureFaults, LoadConfig, LoadReport, run, start, start_and_run};

/// A short run: few interactions, a little Azure latency, a 1 s timeout.
fn short() -> LoadConfig {
    LoadConfig {
        interactions: 40,
        azure_latency: Duration::from_millis(100),
        azure_timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(45),
        ..LoadConfig::default()
    }
}

fn assert_clean(report: &LoadReport) {
    println!("{}", report.summary());
    assert!(report.problems.is_empty(), "{}", report.summary());
    assert_eq!(report.acks().len(), report.config.interactions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_costs_at_most_two_arm_requests_per_granted_access() {
    // Act
    let report = start_and_run(short()).await;

    // Assert
    assert_clean(&report);
    assert_eq!(report.granted(), 40, "{}", report.summary());
    // The initiate, and a read-back that read-backs of the same policy
    // asked while another was on its way share (all four VMs are in one).
    let read_backs = report.arm_calls - report.address_calls - report.initiate_calls;
    assert!(
        (1..40).contains(&read_backs),
        "read-backs {read_backs}: {}",
        report.summary()
    );
    // The grant card's address: VM, NIC and public IP read once per VM
    // (the load spreads over web-01..web-04), then cached.
    assert!(
        (1..=3 * 4).contains(&report.address_calls),
        "address reads {}: {}",
        report.address_calls,
        report.summary()
    );
    assert_eq!(report.initiate_calls, 40);
    assert_eq!(report.token_requests, 0, "the start-up token is reused");
    assert_eq!(
        report.audit_events - report.ended_in_azure,
        3 * 40,
        "received, allowed, initiated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_throttling_errors_and_hangs_end_in_definite_replies() {
    // Arrange: ~10 % 429 (Retry-After: 1), ~10 % 500, ~5 % hangs.
    let config = LoadConfig {
        interactions: 60,
        azure_faults: Some(AzureFaults {
            hang: 0.05,
            ..AzureFaults::default()
        }),
        ..short()
    };

    // Act
    let report = start_and_run(config).await;

    // Assert
    assert_clean(&report);
    assert!(
        report.initiate_calls > report.granted(),
        "faults made the client retry: {}",
        report.summary()
    );
    assert!(report.granted() >= 40, "{}", report.summary());
    for o in report.outcomes.iter().filter(|o| !o.granted) {
        assert!(
            o.reply_text.contains("Azure"),
            "a failure names Azure: {:?}",
            o.reply_text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_outage_fails_requests_clearly_and_then_recovers() {
    // Arrange: halfway through the burst, ARM stops accepting the token and
    // the token endpoint fails its next 3 calls.
    let during = LoadConfig {
        token_outage: Some(3),
        ..short()
    };
    let app = start(&during).await;

    // Act: the burst, then a second one once the endpoint is back.
    let outage = run(&app, during).await;
    app.azure.emulator.clear_faults();
    let after = run(&app, short()).await;

    // Assert
    assert_clean(&outage);
    assert!(outage.token_requests >= 1, "{}", outage.summary());
    for o in outage.outcomes.iter().filter(|o| !o.granted) {
        assert!(
            o.reply_text.contains("sign in to Azure"),
            "the failure says why: {:?}",
            o.reply_text
        );
    }
    assert_clean(&after);
    assert_eq!(after.granted(), 40, "{}", after.summary());
    app.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discord_429_and_500_on_the_audit_channel_lose_and_duplicate_nothing() {
    // Arrange: the audit channel answers 429 once, then 500 once.
    let config = LoadConfig {
        audit_channel_faults: Some(1),
        ..short()
    };

    // Act
    let report = start_and_run(config).await;

    // Assert
    assert_clean(&report);
    assert_eq!(report.granted(), 40, "{}", report.summary());
    assert_eq!(report.audit_messages, report.audit_events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reconnect_and_invalid_session_mid_load_drop_nothing() {
    // Arrange: op 7 after a third of the burst, op 9 (not resumable) after two.
    let config = LoadConfig {
        gateway_faults: true,
        ..short()
    };

    // Act
    let report = start_and_run(config).await;

    // Assert
    assert_clean(&report);
    assert_eq!(report.granted(), 40, "{}", report.summary());
}
