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

// ----- the Discord half, and the command end to end ---------------------------------------------

mod discord {
    use std::collections::HashMap;
    use std::process::Output;

    use drawbridge::config::{Settings, Sources};
    use drawbridge::preflight::{Checklist, check_discord};

    use super::*;
    use crate::support::app::{AUDIT_CHANNEL, app_env};
    use crate::support::fake_discord::guild::{BOT_ROLE_ID, bits};
    use crate::support::fake_discord::{FakeDiscord, FakeDiscordBuilder};

    /// The fake Discord with the audit channel, and the emulator.
    async fn services(discord: FakeDiscordBuilder) -> (FakeDiscord, RunningEmulator) {
        let discord = discord.start().await;
        discord.add_channel(AUDIT_CHANNEL, &[]);
        let clock: SharedClock = Arc::new(SystemClock);
        let azure = Emulator::new(Estate::sample(), clock)
            .spawn()
            .await
            .unwrap();
        (discord, azure)
    }

    fn env(discord: &FakeDiscord, azure: &RunningEmulator) -> HashMap<String, String> {
        app_env(
            discord,
            &azure.base_url,
            "sqlite:///nonexistent/never-opened.db",
        )
    }

    async fn discord_checks(discord: &FakeDiscord, token: &str) -> Checklist {
        let mut env = app_env(discord, "https://arm.invalid", "sqlite::memory:");
        env.insert("DRAWBRIDGE__DISCORD__TOKEN".into(), token.into());
        let settings = Settings::load(&Sources {
            file: None,
            env: Some(env),
        })
        .unwrap();
        let http = drawbridge::discord::discord_http(&settings.discord).unwrap();
        Checklist(check_discord(&http, &settings.discord).await)
    }

    async fn preflight_cli(env: &HashMap<String, String>) -> (Output, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_drawbridge"))
            .arg("preflight")
            .env_clear()
            .envs(env)
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out, text)
    }

    #[tokio::test]
    async fn the_command_passes_against_a_correct_setup_and_writes_nothing() {
        let (discord, azure) = services(FakeDiscord::builder()).await;
        let (out, text) = preflight_cli(&env(&discord, &azure)).await;
        assert!(out.status.success(), "{text}");
        for line in [
            "✓ Discord token works: the bot is drawbridge",
            &format!(
                "✓ application id {} matches discord.application_id",
                discord.application_id()
            ),
            "✓ the bot is private (Public Bot off)",
            &format!("✓ the bot is in guild Fake Guild ({})", discord.guild_id()),
            &format!("✓ audit channel {AUDIT_CHANNEL}: the bot may post embeds"),
            "✓ slash commands can be registered (jit, jit-status",
            "✓ Azure credential yields a token",
            "JIT policies are listable",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(!text.contains('✗'), "{text}");
        let writes: Vec<_> = discord
            .calls()
            .into_iter()
            .filter(|c| c.method != "GET")
            .map(|c| format!("{} {}", c.method, c.path))
            .collect();
        assert!(writes.is_empty(), "preflight wrote to Discord: {writes:?}");
    }

    #[tokio::test]
    async fn a_refused_token_fails_by_name_and_never_shows_the_token() {
        let (discord, azure) = services(FakeDiscord::builder().bot_token("the-real-token")).await;
        let mut env = env(&discord, &azure);
        env.insert(
            "DRAWBRIDGE__DISCORD__TOKEN".into(),
            "stale-token-s3cr3t".into(),
        );
        let (out, text) = preflight_cli(&env).await;
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains("✗ Discord token refused (401 Unauthorized)\n    fix: "),
            "{text}"
        );
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(!text.contains("the bot is in guild"), "{text}");
    }

    #[tokio::test]
    async fn a_channel_overwrite_that_takes_embed_links_away_is_named() {
        let (discord, _azure) = services(FakeDiscord::builder()).await;
        discord.add_channel(AUDIT_CHANNEL, &[(BOT_ROLE_ID, false, 0, bits::EMBED_LINKS)]);
        let list = discord_checks(&discord, "fake-token").await;
        let text = list.to_string();
        assert!(!list.passed(), "{text}");
        assert!(
            text.contains(&format!(
                "✗ audit channel {AUDIT_CHANNEL}: the bot lacks EMBED_LINKS\n    fix: "
            )),
            "{text}"
        );
        // A member overwrite for the bot gives it back.
        discord.add_channel(
            AUDIT_CHANNEL,
            &[
                (BOT_ROLE_ID, false, 0, bits::EMBED_LINKS),
                (discord.bot_user_id(), true, bits::EMBED_LINKS, 0),
            ],
        );
        assert!(discord_checks(&discord, "fake-token").await.passed());
    }

    #[tokio::test]
    async fn a_channel_without_attach_files_is_named_for_the_weekly_report() {
        let (discord, _azure) = services(FakeDiscord::builder()).await;
        discord.add_channel(
            AUDIT_CHANNEL,
            &[(BOT_ROLE_ID, false, 0, bits::ATTACH_FILES)],
        );
        let list = discord_checks(&discord, "fake-token").await;
        let text = list.to_string();
        assert!(!list.passed(), "{text}");
        assert!(
            text.contains(&format!(
                "✗ audit channel {AUDIT_CHANNEL}: the bot lacks ATTACH_FILES\n    fix: "
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_hidden_channel_a_public_bot_and_a_missing_commands_scope_each_fail() {
        let (discord, _azure) = services(FakeDiscord::builder().bot_public(true)).await;
        discord.hide_channel(AUDIT_CHANNEL);
        discord.set_commands_scope(false);
        let text = discord_checks(&discord, "fake-token").await.to_string();
        for line in [
            "✗ the bot is public: anyone can add it to their own server",
            &format!("✗ audit channel {AUDIT_CHANNEL}: the bot cannot see it"),
            "✗ slash commands cannot be registered in guild",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[tokio::test]
    async fn a_wrong_application_id_and_a_role_without_send_are_named() {
        let (discord, _azure) = services(FakeDiscord::builder()).await;
        discord.set_role_permissions(BOT_ROLE_ID, bits::VIEW_CHANNEL);
        discord.set_role_permissions(discord.guild_id(), 0);
        let mut env = app_env(&discord, "https://arm.invalid", "sqlite::memory:");
        env.insert("DRAWBRIDGE__DISCORD__APPLICATION_ID".into(), "42".into());
        let settings = Settings::load(&Sources {
            file: None,
            env: Some(env),
        })
        .unwrap();
        let http = drawbridge::discord::discord_http(&settings.discord).unwrap();
        let text = Checklist(check_discord(&http, &settings.discord).await).to_string();
        assert!(
            text.contains(&format!(
                "✗ discord.application_id is 42, but the token belongs to application {}",
                discord.application_id()
            )),
            "{text}"
        );
        assert!(
            text.contains("the bot lacks SEND_MESSAGES, EMBED_LINKS"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_command_names_a_missing_azure_action() {
        let (discord, azure) = services(FakeDiscord::builder()).await;
        let read = "Microsoft.Compute/virtualMachines/read";
        azure.emulator.set_granted_actions(
            NEEDED_ACTIONS
                .iter()
                .filter(|a| **a != read)
                .map(|a| (*a).to_owned())
                .collect(),
        );
        let (out, text) = preflight_cli(&env(&discord, &azure)).await;
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(
            text.contains(&format!("the identity lacks {read}")),
            "{text}"
        );
        assert!(text.contains("✓ Discord token works"), "{text}");
    }
}
