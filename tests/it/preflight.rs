//! `drawbridge preflight`'s Azure checks against the emulator: the real
//! managed-identity token path and the real ARM client, with the granted
//! actions set on the emulator.

use std::{sync::Arc, time::Duration};

use drawbridge::{
    azure::{
        ArmClient, ArmClientOptions, AzureTokenSource, CredentialKind, CredentialOptions,
        RetryPolicy,
    },
    clock::{SharedClock, SystemClock},
    domain::preflight::NEEDED_ACTIONS,
    preflight::{Checklist, check_azure},
    sandbox::{Emulator, Estate, RunningEmulator},
};
use url::Url;

const PROD: &str = "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60";

async fn azure() -> (RunningEmulator, ArmClient) {
    let clock: SharedClock = Arc::new(SystemClock);
    let running = Emulator::new(Estate::sample(), clock.clone())
        .spawn()
        .await
        .unwrap();
    let tokens = AzureTokenSource::new(CredentialOptions {
        kind: CredentialKind::ManagedIdentity,
        tenant_id: None,
        client_id: None,
        client_secret: None,
        user_assigned_id: None,
        federated_token_file: None,
        authority_host: Url::parse("https://login.microsoftonline.com").unwrap(),
        scope: "https://management.azure.com/.default".to_owned(),
        managed_identity_endpoint: Some(Url::parse(&running.base_url).unwrap()),
        timeout: Duration::from_secs(10),
        clock: clock.clone(),
    })
    .unwrap();
    let arm = ArmClient::new(ArmClientOptions {
        arm_endpoint: Url::parse(&running.base_url).unwrap(),
        token_source: Arc::new(tokens),
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            max_total: Duration::from_secs(5),
        },
        clock,
    })
    .unwrap();
    (running, arm)
}

async fn checklist(arm: &ArmClient) -> Checklist {
    Checklist(check_azure(arm, &[PROD.to_owned()]).await)
}

#[tokio::test]
async fn preflight_passes_with_the_full_role() {
    let (_azure, arm) = azure().await;
    let list = checklist(&arm).await;
    let text = list.to_string();
    assert!(list.passed(), "{text}");
    assert!(text.contains("✓ Azure credential yields a token"), "{text}");
    assert!(
        text.contains(&format!(
            "✓ subscription {PROD}: the identity holds all 9 needed actions"
        )),
        "{text}"
    );
    assert!(text.contains("JIT policies are listable"), "{text}");
}

#[tokio::test]
async fn preflight_names_the_one_action_the_role_lacks() {
    let (azure, arm) = azure().await;
    let write = "Microsoft.Security/locations/jitNetworkAccessPolicies/write";
    azure.emulator.set_granted_actions(
        NEEDED_ACTIONS
            .iter()
            .filter(|a| **a != write)
            .map(|a| (*a).to_owned())
            .collect(),
    );
    let list = checklist(&arm).await;
    let text = list.to_string();
    assert!(!list.passed(), "{text}");
    assert!(
        text.contains(&format!(
            "✗ subscription {PROD}: the identity lacks {write}\n    fix: "
        )),
        "{text}"
    );
}
