//! The command line, run as the real binary: migrate, check-config,
//! mappings, explain and the audit log.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::child::wait_for_logged_addr;

const SUB: &str = "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60";

const MAPPINGS: &str = r#"
[[mapping]]
name = "sre-web"
roles = ["100"]
vms = "web-*"
ports = ["ssh"]
max_duration = "3h"
sources = ["203.0.113.0/24"]

[[mapping]]
name = "db-audited"
roles = ["200"]
vms = "rg:rg-data"
ports = ["ssh"]
max_duration = "1h"
require_reason = true
"#;

fn drawbridge(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(args)
        .env_clear()
        .env(
            "DRAWBRIDGE__DATABASE__URL",
            format!("sqlite://{}", db.display()),
        )
        .output()
        .expect("the binary runs")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.db");
    let file = dir.path().join("mappings.toml");
    std::fs::write(&file, MAPPINGS).unwrap();
    let out = drawbridge(&db, &["mappings", "import", file.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    (dir, db)
}

#[test]
fn migrate_on_a_fresh_file_applies_every_migration_then_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    let first = drawbridge(&db, &["migrate"]);
    let (stdout, _) = text(&first);
    assert!(first.status.success());
    assert!(stdout.contains("applied migration 1"), "{stdout}");
    let again = drawbridge(&db, &["migrate"]);
    assert_eq!(text(&again).0.trim(), "database is up to date");
}

#[test]
fn import_reports_the_diff_and_export_round_trips() {
    let (dir, db) = setup();
    let changed = MAPPINGS.replace("max_duration = \"3h\"", "max_duration = \"2h\"");
    let changed = changed
        .split("[[mapping]]\nname = \"db-audited\"")
        .next()
        .unwrap()
        .to_string()
        + "[[mapping]]\nname = \"new-one\"\nroles = [\"300\"]\nvms = \"*\"\nports = [\"rdp\"]\nmax_duration = \"1h\"\n";
    let file = dir.path().join("changed.toml");
    std::fs::write(&file, changed).unwrap();

    let dry = drawbridge(
        &db,
        &["mappings", "import", "--dry-run", file.to_str().unwrap()],
    );
    assert!(
        text(&dry)
            .0
            .contains("dry run: 1 added, 1 removed, 1 changed, 0 unchanged"),
        "{:?}",
        text(&dry)
    );
    let listed = text(&drawbridge(&db, &["mappings", "list"])).0;
    assert!(
        listed.contains("db-audited"),
        "a dry run changes nothing: {listed}"
    );

    let real = drawbridge(&db, &["mappings", "import", file.to_str().unwrap()]);
    let (stdout, _) = text(&real);
    assert!(stdout.contains("added new-one"), "{stdout}");
    assert!(stdout.contains("removed db-audited"), "{stdout}");
    assert!(stdout.contains("changed sre-web"), "{stdout}");

    let exported = text(&drawbridge(&db, &["mappings", "export"])).0;
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &exported).unwrap();
    let reimport = drawbridge(&db, &["mappings", "import", again.to_str().unwrap()]);
    assert!(
        text(&reimport)
            .0
            .contains("0 added, 0 removed, 0 changed, 2 unchanged"),
        "{:?}",
        text(&reimport)
    );
    let json = text(&drawbridge(&db, &["mappings", "list", "--json"])).0;
    let specs: serde_json::Value = serde_json::from_str(&json).expect("one JSON array");
    let names: Vec<&str> = specs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["new-one", "sre-web"], "{json}");

    let audit = text(&drawbridge(&db, &["audit", "export", "--format", "jsonl"])).0;
    assert!(
        audit.lines().any(|l| l.contains("\"mappings_imported\"")),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"mapping_removed\"") && l.contains("db-audited"))
    );
}

#[test]
fn add_and_remove_from_the_shell_and_bad_input_is_refused() {
    let (_dir, db) = setup();
    let add = drawbridge(
        &db,
        &[
            "mappings",
            "add",
            "--name",
            "ops",
            "--roles",
            "500,501",
            "--vms",
            "rg:rg-prod",
            "--ports",
            "ssh,rdp",
            "--max-duration",
            "90m",
        ],
    );
    assert_eq!(text(&add).0.trim(), "mapping ops added");
    let bad = drawbridge(
        &db,
        &[
            "mappings",
            "add",
            "--name",
            "Bad Name",
            "--roles",
            "1",
            "--vms",
            "*",
            "--ports",
            "ssh",
            "--max-duration",
            "1h",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).1.contains("not a valid mapping name"),
        "{:?}",
        text(&bad)
    );
    let remove = drawbridge(&db, &["mappings", "remove", "ops"]);
    assert_eq!(text(&remove).0.trim(), "mapping ops removed");
    let missing = drawbridge(&db, &["mappings", "remove", "ops"]);
    assert!(!missing.status.success());
    assert!(text(&missing).1.contains("no mapping named ops"));
}

#[test]
fn explain_json_allows_and_denies_with_reasons() {
    let (_dir, db) = setup();
    let vm = format!("{SUB}/rg-web/web-01");
    let allow = drawbridge(
        &db,
        &[
            "explain",
            "--roles",
            "100",
            "--vm",
            &vm,
            "--port",
            "ssh",
            "--duration",
            "2h",
            "--from",
            "203.0.113.7",
            "--json",
        ],
    );
    assert!(allow.status.success());
    let json: serde_json::Value = serde_json::from_slice(&allow.stdout).expect("one JSON object");
    assert_eq!(json["decision"], "allow");
    assert_eq!(json["mapping"], "sre-web");
    assert_eq!(json["max_duration"], "PT3H");
    assert!(json["reason"].as_str().unwrap().contains("sre-web"));

    let deny = drawbridge(
        &db,
        &[
            "explain",
            "--roles",
            "100",
            "--vm",
            &vm,
            "--port",
            "ssh",
            "--duration",
            "4h",
            "--json",
        ],
    );
    assert_eq!(deny.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&deny.stdout).unwrap();
    assert_eq!(json["decision"], "deny");
    assert!(
        json["reason"].as_str().unwrap().contains("maximum of 3h"),
        "{json}"
    );

    let reason = drawbridge(
        &db,
        &[
            "explain",
            "--roles",
            "200",
            "--vm",
            &format!("{SUB}/rg-data/db-01"),
            "--port",
            "ssh",
            "--duration",
            "30m",
        ],
    );
    assert!(
        text(&reason).0.starts_with("deny: a reason is required"),
        "{:?}",
        text(&reason)
    );

    let bad = drawbridge(
        &db,
        &[
            "explain",
            "--roles",
            "abc",
            "--vm",
            &vm,
            "--port",
            "ssh",
            "--duration",
            "2h",
        ],
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad).1.contains("--roles: `abc` is not a Discord id"),
        "{:?}",
        text(&bad)
    );
    let bad = drawbridge(
        &db,
        &[
            "explain",
            "--roles",
            "1",
            "--vm",
            &vm,
            "--port",
            "ssh",
            "--duration",
            "2x",
        ],
    );
    assert!(
        text(&bad).1.contains("--duration: `2x` is not a duration"),
        "{:?}",
        text(&bad)
    );
}

#[test]
fn audit_verify_names_the_row_after_it_is_edited_in_the_database() {
    let (_dir, db) = setup();
    let ok = drawbridge(&db, &["audit", "verify"]);
    assert!(ok.status.success(), "{:?}", text(&ok));
    assert!(text(&ok).0.contains("audit log intact"));

    // Edit row 2 as someone with the sqlite3 shell would (dropping the
    // guard trigger first).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query("DROP TRIGGER audit_log_no_update")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_log SET target = 'nothing-to-see' WHERE seq = 2")
            .execute(&mut conn)
            .await
            .unwrap();
    });
    let broken = drawbridge(&db, &["audit", "verify"]);
    assert!(!broken.status.success());
    let (_, stderr) = text(&broken);
    assert!(stderr.contains("row 2"), "{stderr}");
}

#[test]
fn audit_verify_against_an_export_finds_a_rebuilt_chain() {
    // Arrange: an export kept outside, then the tail cut and the head moved
    // back by someone with write access: the chain alone still verifies
    let (dir, db) = setup();
    let export = drawbridge(&db, &["audit", "export", "--format", "jsonl"]);
    let export_text = text(&export).0;
    let rows = export_text.lines().count() as i64;
    assert!(rows >= 2, "{export_text}");
    let file = dir.path().join("audit.jsonl");
    std::fs::write(&file, &export_text).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::raw_sql(&format!(
            "DROP TRIGGER audit_log_no_delete;
             DROP TRIGGER audit_head_forward_only;
             DELETE FROM audit_log WHERE seq = {rows};
             UPDATE audit_head SET seq = {prev},
                 hash = (SELECT hash FROM audit_log WHERE seq = {prev}) WHERE id = 1;",
            prev = rows - 1
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    });

    // Act
    let chain_only = drawbridge(&db, &["audit", "verify"]);
    let against = drawbridge(
        &db,
        &["audit", "verify", "--against", file.to_str().unwrap()],
    );

    // Assert
    assert!(chain_only.status.success(), "{:?}", text(&chain_only));
    assert_eq!(against.status.code(), Some(3), "{:?}", text(&against));
    let (_, stderr) = text(&against);
    assert!(
        stderr.contains(&format!("at row {rows}: the row is missing")),
        "{stderr}"
    );
}

#[test]
fn audit_verify_on_a_missing_file_fails_and_creates_nothing() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let configured = dir.path().join("configured.db");

    // Act
    let named = drawbridge(&configured, &["audit", "verify", missing.to_str().unwrap()]);
    let from_config = drawbridge(&configured, &["audit", "verify"]);
    let export = drawbridge(&configured, &["audit", "export"]);

    // Assert
    for out in [&named, &from_config, &export] {
        assert!(!out.status.success(), "{:?}", text(out));
        assert!(
            text(out).1.contains("there is no database file at"),
            "{:?}",
            text(out)
        );
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing is created: {left:?}");
}

#[test]
fn audit_verify_does_not_migrate_or_write_the_database_it_reads() {
    // Arrange: a database whose schema is one migration short.
    let (_dir, db) = setup();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let last = rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let (last,): (i64,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = ?")
            .bind(last)
            .execute(&mut conn)
            .await
            .unwrap();
        last
    });

    // Act
    let out = drawbridge(&db, &["audit", "verify", db.to_str().unwrap()]);

    // Assert
    assert!(out.status.success(), "{:?}", text(&out));
    let applied: Option<i64> = rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE version = ?")
            .bind(last)
            .fetch_optional(&mut conn)
            .await
            .unwrap()
    });
    assert_eq!(applied, None, "audit verify ran a migration");
}

#[test]
fn backup_copies_the_database_and_verifies_the_copy() {
    // Arrange
    let (dir, db) = setup();
    let copy = dir.path().join("backup.db");

    // Act
    let out = drawbridge(&db, &["backup", copy.to_str().unwrap()]);
    let again = drawbridge(&db, &["backup", copy.to_str().unwrap()]);
    let verified = drawbridge(&db, &["audit", "verify", copy.to_str().unwrap()]);
    let exported = drawbridge(&db, &["audit", "export", copy.to_str().unwrap()]);

    // Assert
    assert!(out.status.success(), "{:?}", text(&out));
    let (stdout, _) = text(&out);
    assert!(stdout.contains("audit log intact"), "{stdout}");
    assert!(stdout.contains("backup written to"), "{stdout}");
    assert!(
        !again.status.success(),
        "an existing file is not overwritten"
    );
    assert!(
        text(&again).1.contains("already exists"),
        "{:?}",
        text(&again)
    );
    assert!(verified.status.success(), "{:?}", text(&verified));
    assert!(
        text(&exported).0.contains("\"mappings_imported\""),
        "{:?}",
        text(&exported)
    );
}

#[test]
fn audit_export_csv_has_a_header_and_since_filters() {
    let (_dir, db) = setup();
    let csv = text(&drawbridge(&db, &["audit", "export", "--format", "csv"])).0;
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("seq,"), "{csv}");
    assert!(lines.count() >= 3);
    let recent = text(&drawbridge(&db, &["audit", "export", "--since", "1h"])).0;
    assert!(recent.lines().count() >= 3);
    let bad = drawbridge(&db, &["audit", "export", "--since", "soon"]);
    assert!(text(&bad).1.contains("--since: `soon` is not a duration"));
}

#[test]
fn check_config_reports_every_problem_with_key_and_source() {
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("check-config")
        .env_clear()
        .env("DRAWBRIDGE__AZURE__CLOUD", "mars")
        .env("DRAWBRIDGE__DISCORD__GUILD_ID", "guild")
        .env("DRAWBRIDGE__REMINDERS__BEFORE", "soon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    for want in [
        "azure.cloud (from the environment): `mars` is not a cloud",
        "discord.guild_id (from the environment)",
        "reminders.before (from the environment)",
    ] {
        assert!(stderr.contains(want), "{want} missing from {stderr}");
    }

    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("check-config")
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("discord.token (not set): the bot token is missing"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret-value"));
}

#[test]
fn check_config_names_the_workload_identity_variables_the_environment_lacks() {
    let check = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_drawbridge"));
        cmd.arg("check-config")
            .env_clear()
            .env("DRAWBRIDGE__AZURE__CREDENTIAL", "workload_identity");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        text(&cmd.output().unwrap()).1
    };
    let stderr = check(&[]);
    for want in [
        "azure.tenant_id (not set): required when azure.credential is workload_identity: set azure.tenant_id or the environment variable AZURE_TENANT_ID",
        "azure.client_id (not set): required when azure.credential is workload_identity: set azure.client_id or the environment variable AZURE_CLIENT_ID",
        "AZURE_FEDERATED_TOKEN_FILE (not set): required when azure.credential is workload_identity",
    ] {
        assert!(stderr.contains(want), "{want} missing from {stderr}");
    }
    // Config values supply the ids; the environment supplies the token file.
    let stderr = check(&[
        ("DRAWBRIDGE__AZURE__TENANT_ID", "t"),
        ("AZURE_CLIENT_ID", "c"),
        ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/token"),
    ]);
    assert!(!stderr.contains("workload_identity"), "{stderr}");
}

#[test]
fn check_config_warns_of_a_misspelt_key_with_the_key_it_meant() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("drawbridge.toml");
    std::fs::write(&file, "[database]\nulr = \"sqlite:///data/x.db\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["--config", file.to_str().unwrap(), "check-config"])
        .env_clear()
        .env("DRAWBRIDGE__AZURE__SUBSCRIPTION", "x")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("warning: unknown key database.ulr (from ")
            && stderr.contains("did you mean database.url?"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "unknown key azure.subscription (from DRAWBRIDGE__AZURE__SUBSCRIPTION); did you mean azure.subscriptions?"
        ),
        "{stderr}"
    );
}

#[test]
fn explain_looks_a_bare_vm_name_up_in_azure() {
    let (_dir, db) = setup();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let emulator = rt.block_on(async {
        let clock: drawbridge::clock::SharedClock =
            std::sync::Arc::new(drawbridge::clock::SystemClock);
        drawbridge::sandbox::Emulator::new(drawbridge::sandbox::Estate::sample(), clock)
            .spawn()
            .await
            .unwrap()
    });
    let run = |vm: &str| {
        Command::new(env!("CARGO_BIN_EXE_drawbridge"))
            .args([
                "explain",
                "--roles",
                "100",
                "--vm",
                vm,
                "--port",
                "ssh",
                "--duration",
                "1h",
                "--json",
            ])
            .env_clear()
            .env(
                "DRAWBRIDGE__DATABASE__URL",
                format!("sqlite://{}", db.display()),
            )
            .env("DRAWBRIDGE__AZURE__CLOUD", "public")
            .env("DRAWBRIDGE__AZURE__ARM_ENDPOINT", &emulator.base_url)
            .env("DRAWBRIDGE__AZURE__AUTHORITY_HOST", "https://login.invalid")
            .env(
                "DRAWBRIDGE__AZURE__MANAGED_IDENTITY_ENDPOINT",
                &emulator.base_url,
            )
            .env("DRAWBRIDGE__AZURE__SUBSCRIPTIONS", SUB)
            .output()
            .unwrap()
    };
    let out = run("WEB-01");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(json["decision"], "allow", "{:?}", text(&out));
    let out = run("ops-01");
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("several VMs are named like that"),
        "{:?}",
        text(&out)
    );
    drop(emulator);
}

#[test]
fn emulate_azure_serves_the_jit_api_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("emulator.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["emulate-azure", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("IDENTITY_HEADER", "test-header")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listed = rt.block_on(async {
        let addr = wait_for_logged_addr(
            || std::fs::read_to_string(&log).unwrap_or_default(),
            "Azure JIT emulator listening",
            "addr",
            std::time::Duration::from_secs(10),
        )
        .await;
        let base = format!("http://{addr}");
        let http = reqwest::Client::new();
        let token: serde_json::Value = http
            .get(format!("{base}/msi/token?api-version=2019-08-01&resource=https://management.azure.com"))
            .header("x-identity-header", "test-header")
            .send()
            .await
            .expect("the logged address answers")
            .json()
            .await
            .unwrap();
        let token = token["access_token"]
            .as_str()
            .expect("the emulator answers the managed-identity protocol");
        http.get(format!(
            "{base}/subscriptions/{SUB}/providers/Microsoft.Security/jitNetworkAccessPolicies?api-version=2020-01-01"
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(!listed["value"].as_array().unwrap().is_empty(), "{listed}");
}

/// `drawbridge` with the database at `url` (any backend).
fn drawbridge_on(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(args)
        .env_clear()
        .env("DRAWBRIDGE__DATABASE__URL", url)
        .output()
        .expect("the binary runs")
}

/// `drawbridge migrate-store` moves a SQLite deployment onto PostgreSQL
/// while the SQLite database is in use (another process holds an
/// uncommitted write): the copy has every committed row, its audit chain
/// verifies with `audit verify` on PostgreSQL, the mappings export the same,
/// and a second run into the now busy database is refused without a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_copies_a_live_sqlite_database_into_postgres() {
    use crate::store::backend::{Backend as _, Postgres};
    let Some(postgres) = Postgres::from_env() else {
        return;
    };
    // Arrange: mappings imported (audit events), a writer mid-transaction.
    let (_dir, db) = setup();
    let from = format!("sqlite://{}", db.display());
    let target = postgres.empty().await;
    let live = drawbridge::store::Store::open(&from).await.unwrap();
    let (committed, _) = live.audit_head().await.unwrap();
    let mut writing = live.begin().await.unwrap();
    let uncommitted = drawbridge::domain::AuditEvent::new(
        chrono::Utc::now(),
        "discord:1",
        drawbridge::domain::AuditAction::AccessDenied,
        "rg/web-01",
        drawbridge::domain::Outcome::Success,
    );
    writing.append_audit(&uncommitted).await.unwrap();

    // Act
    let copy = tokio::task::spawn_blocking({
        let (from, to) = (from.clone(), target.url.clone());
        move || drawbridge_on(&from, &["migrate-store", "--from", &from, "--to", &to])
    })
    .await
    .unwrap();
    writing.commit().await.unwrap();
    let again = drawbridge_on(
        &from,
        &["migrate-store", "--from", &from, "--to", &target.url],
    );

    // Assert
    let (stdout, stderr) = text(&copy);
    assert!(copy.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "audit chain verified in the copy: {committed} events"
        )),
        "{stdout}"
    );
    let verify = drawbridge_on(&target.url, &["audit", "verify"]);
    assert!(verify.status.success(), "{:?}", text(&verify));
    assert!(
        text(&verify).0.contains("audit log intact"),
        "{:?}",
        text(&verify)
    );
    let export = |url: &str| text(&drawbridge_on(url, &["mappings", "export"])).0;
    assert_eq!(export(&target.url), export(&from));
    assert!(export(&from).contains("sre-web"));
    let (_, refused) = text(&again);
    assert!(!again.status.success());
    assert!(refused.contains("not empty"), "{refused}");
    let (head, _) = drawbridge::store::Store::open(&target.url)
        .await
        .unwrap()
        .audit_head()
        .await
        .unwrap();
    assert_eq!(head, committed, "the refused copy changed nothing");
}
