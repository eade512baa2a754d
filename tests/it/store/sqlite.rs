//! What only the SQLite backend does: its migrations, their history, and the
//! URLs it refuses.

use chrono::{DateTime, Utc};
use drawbridge::domain::audit::GENESIS_HASH;
use drawbridge::domain::{AuditAction, AuditEvent, GrantEvent, GrantState, Outcome, RequestId};
use drawbridge::store::{ScheduleKind, Store, StoreError};
use sha2::{Digest as _, Sha384};
use sqlx::Connection as _;

use super::backend::{Backend as _, Sqlite};

/// The SHA-384 of every migration as first applied; sqlx refuses to start on
/// a database where an applied migration's checksum changed.
const APPLIED: [(&str, &str); 23] = [
    (
        "0001_audit_log.sql",
        "1f1c92a0a060afef848e890a058b21bc007ba9d99786815570afb9a2f4aa419722717553a21bd263ebcb808eb72dbd9b",
    ),
    (
        "0002_mappings.sql",
        "551f81bbd5faa299752d524e73cab5437fb8e40489e8119a6975d7cc92d2ab707939e788d5f53cb173d4f994e59c12c2",
    ),
    (
        "0003_grants.sql",
        "a668b7fbdbb0a9bf3639894a0e263bb8ef79880cc867e8117e56787eaea6d9e7b208370ae5302eb53bd46cb313ba0329",
    ),
    (
        "0004_outbox.sql",
        "d90fab304f68a8597922fb3a9ffcbd56321e19fa03e855837e6b2116e7948f1559b0f94cf7b5514d35379abe333da7a9",
    ),
    (
        "0005_schedule.sql",
        "948495daa29f1d81054171bd82b60c7ca50f1ad520e32afa33ccaf73132dbbd42c5efc9019435385da6a53eedfac009e",
    ),
    (
        "0006_user_settings.sql",
        "6561fa517bf79e4e1528c360ee58253fe3280078b1a8fe64564bfb24ef1715438b9e9dd4f96582c282baf3581c27bacd",
    ),
    (
        "0007_azure_requests_seen.sql",
        "45cc4c071ed24b2f753ebb5437c9492cb07ee83cd2fef13bcbf38ad1b385ec7de877601045ee2f11b840bf29d6c8d09a",
    ),
    (
        "0008_state_and_kind_tables.sql",
        "c1a1e1fef6aabac1cc41f8f102c97e0130add259225ad7a178d5b433839d865d2d9f29ec3c6ddb07bde20b85e2c69f33",
    ),
    (
        "0020_grant_states_superseded_ended.sql",
        "1844ea21ad422d62a001edd1859f1a158a362e0a1f51089a2c9145dbbfd5c16ad781bb4e28ddd88598db21454767fb2e",
    ),
    (
        "0021_grant_state_extending.sql",
        "7d212faa2e095fe032e4c96b6a97c0b04cba47468e198a051b8d259afe575a9a489605bc85ca927f7f3add769cdffc65",
    ),
    (
        "0022_grant_state_pending_azure.sql",
        "dd80eec0d732a2c93db8fdd691f42795460de838b36a70f1934c73c2b185860dbf0c88455d88810cef1939c3aa77bacf",
    ),
    (
        "0035_interactions_seen.sql",
        "d826d554b9fa4354a601fb1ed2d80ad047d0696ad375e245e2d15117bf9c859aa71c2a8490513da3826b8434324a8014",
    ),
    (
        "0040_grant_states_confirming_cancelled.sql",
        "ae1754285ab0fcc67eb4565d987bc3dac5f8e94954d7106758380a0ad214d1650eda9c54873fae76e6b727c93f04da71",
    ),
    (
        "0045_approvals.sql",
        "0320c93f2bf8226d94c0893fd3c2482dd774355f426916657b01a1f804b9f1580c69249df55c99fb61920780e2973645",
    ),
    (
        "0050_leases.sql",
        "156eb9b773d22c9281842f0b7f392780f842e69723f13778b682de32b532e80b1c39768b84a557b7d83f80e6ffefbb78",
    ),
    (
        "0051_outbox_claims.sql",
        "c9a2a1e77b26d9a814794d02ef988fbf64b6f4b72d80ce570771b4bcdc375421cbb34b4e235c1e30b6f54fb53d99c896",
    ),
    (
        "0060_ip_links.sql",
        "f87ad3f1dedc7ef2473606401f573c1b474947111db8498836030f6eb67fc29614b56fce0d28f1bfe172616aebb58cb4",
    ),
    (
        "0070_question_timeout.sql",
        "54e846566c6f2f722d652b7534acc026d81519a2513647a9a54f47c770bee4c3eff479727059bed3eb984990fc7cf194",
    ),
    (
        "0080_weekly_reports.sql",
        "ea944d4bf48d906ba12593eb59041bfc7e901d26645c1b9f4b133a3e02193d2c9847a98cc0dfc8419dc858cb72435f6f",
    ),
    (
        "0090_mappings_version.sql",
        "4cb3f7d07304fdba22827dd9542f8b5ce1b2aa34f4a0dafffa6b579c27d270cf55696cab09a07225f35a476d29b00686",
    ),
    (
        "0100_audit_head_follows_appends.sql",
        "1074a3d6c5e0ac49daa143d607918aeb05b09f7bf8fbb0c3b75b1914e48f742dcf3f866d73bd3190b63b7895e8cb1c06",
    ),
    (
        "0110_grants_by_vm.sql",
        "54dfc312da0f845984d3a073d4d8cf99d7da0d4a3f8a832650481fe56d87fa03776e4e2dfd51c974313b5f8f943ad13f",
    ),
    (
        "0120_outbox_by_target.sql",
        "c2e16fa4db0c32218998175fe02fabc372ab7e9c7d2d6ac9742df385bbc43a9d2b1f2d546dcfae1de7c8c24aa7143bbb",
    ),
];

fn migrations_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite")
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn migrations_are_numbered_from_one_and_each_applies_once() {
    let empty = Sqlite.empty().await;
    let store = Store::connect(&empty.url).await.unwrap();
    let applied = store.migrate().await.unwrap();
    let versions: Vec<i64> = applied.iter().map(|m| m.version).collect();
    assert_eq!(
        versions,
        (1..=8)
            .chain([
                20, 21, 22, 35, 40, 45, 50, 51, 60, 70, 80, 90, 100, 110, 120
            ])
            .collect::<Vec<i64>>()
    );
    assert_eq!(applied[2].description, "grants");
    assert_eq!(applied[7].description, "state and kind tables");
    assert!(store.migrate().await.unwrap().is_empty());
}

#[test]
fn applied_migrations_are_never_edited() {
    let mut files: Vec<String> = std::fs::read_dir(migrations_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let pinned: Vec<&str> = APPLIED.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        files, pinned,
        "pin every new migration here once it is applied"
    );
    for (name, checksum) in APPLIED {
        let text = std::fs::read(migrations_dir().join(name)).unwrap();
        assert_eq!(
            hex::encode(Sha384::digest(&text)),
            checksum,
            "{name} was edited after it was applied: add a new migration instead"
        );
    }
}

#[tokio::test]
async fn in_memory_and_unknown_database_urls_are_refused_with_a_clear_message() {
    for url in ["sqlite::memory:", "sqlite://file.db?mode=memory"] {
        match Store::open(url).await.unwrap_err() {
            StoreError::InvalidInput(message) => {
                assert!(message.contains("in-memory"), "{message}")
            }
            other => panic!("{url}: expected InvalidInput, got {other:?}"),
        }
    }
    match Store::open("mysql://drawbridge:hunter2@db.internal/drawbridge")
        .await
        .unwrap_err()
    {
        StoreError::InvalidInput(message) => {
            assert!(message.contains("`mysql`"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

/// A database as the releases before issue 10 left it: migrated from the
/// flat `migrations/` folder (versions 1 to 7), with a grant, its timers and
/// an audit event in it.
async fn database_of_the_flat_layout(url: &str) {
    let flat = tempfile::tempdir().unwrap();
    for (name, _) in &APPLIED[..7] {
        std::fs::copy(migrations_dir().join(name), flat.path().join(name)).unwrap();
    }
    let migrator = sqlx::migrate::Migrator::new(flat.path()).await.unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    migrator.run(&mut conn).await.unwrap();
    conn.close().await.unwrap();

    let event = AuditEvent::new(
        time("2026-11-22T10:00:02.123456Z"),
        "discord:42",
        AuditAction::AccessInitiated,
        "rg/web-01",
        Outcome::Success,
    );
    let hash = event.chain_hash(1, GENESIS_HASH);
    Sqlite
        .raw(
            url,
            &format!(
                "INSERT INTO grants (request_id, user_id, guild_id, channel_id, vm_id, vm_name,
                     policy_id, ports, source, duration_minutes, reason, mapping, state,
                     requested_at, end_time, state_changed_at)
                 VALUES ('req-old', '42', '5', '6', '/subscriptions/sub/vm/web-01', 'rg/web-01',
                     '/subscriptions/sub/jit/default', '22', '203.0.113.7', 120, NULL, 'sre-web',
                     'active', '2026-11-22T10:00:00.000000Z', '2026-11-22T12:00:00.000000Z',
                     '2026-11-22T10:00:02.000000Z');
                 INSERT INTO grant_transitions (request_id, from_state, to_state, event, end_time, at)
                 VALUES ('req-old', 'requested', 'active', 'initiated',
                     '2026-11-22T12:00:00.000000Z', '2026-11-22T10:00:02.000000Z');
                 INSERT INTO schedule (id, request_id, kind, due_at)
                 VALUES (7, 'req-old', 'reminder', '2026-11-22T11:50:00.000000Z'),
                        (9, 'req-old', 'expiry', '2026-11-22T12:00:00.000000Z');
                 INSERT INTO audit_log (seq, at, actor, action, target, outcome, detail,
                     prev_hash, hash)
                 VALUES (1, '{}', 'discord:42', 'access_initiated', 'rg/web-01', 'success', '{}',
                     '{GENESIS_HASH}', '{hash}');
                 UPDATE audit_head SET seq = 1, hash = '{hash}' WHERE id = 1;",
                event.at_text(),
                event.detail,
            ),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_database_of_the_flat_migrations_folder_opens_and_keeps_every_row() {
    let empty = Sqlite.empty().await;
    database_of_the_flat_layout(&empty.url).await;

    let store = Store::connect(&empty.url).await.unwrap();
    let applied = store.migrate().await.unwrap();
    assert_eq!(
        applied.iter().map(|m| m.version).collect::<Vec<_>>(),
        [
            8, 20, 21, 22, 35, 40, 45, 50, 51, 60, 70, 80, 90, 100, 110, 120
        ]
    );

    let id = RequestId::parse("req-old").unwrap();
    let grant = store.grant(&id).await.unwrap().unwrap();
    assert_eq!(grant.state, GrantState::Active);
    assert_eq!(grant.end_time, Some(time("2026-11-22T12:00:00Z")));
    assert_eq!(store.grant_transitions(&id).await.unwrap().len(), 1);
    // Timer ids are kept: outbox keys name timers by id.
    let timers = store.next_due(10).await.unwrap();
    let timers: Vec<(i64, ScheduleKind)> = timers.iter().map(|t| (t.id, t.kind)).collect();
    assert_eq!(
        timers,
        [(7, ScheduleKind::Reminder), (9, ScheduleKind::Expiry)]
    );
    let audit = store.verify_audit().await.unwrap();
    assert!(audit.is_intact(), "{:?}", audit.first_broken);
    assert_eq!(audit.checked, 1);

    // The rebuilt tables still enforce their references.
    let mut tx = store.begin().await.unwrap();
    let ended = tx
        .transition_grant(&id, &GrantEvent::WindowEnded, time("2026-11-22T12:00:00Z"))
        .await
        .unwrap();
    assert_eq!(ended.state, GrantState::Expired);
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let missing = RequestId::parse("req-none").unwrap();
    assert!(
        tx.schedule(&missing, ScheduleKind::Expiry, time("2026-11-23T00:00:00Z"))
            .await
            .is_err()
    );
}

/// The plan SQLite picks for `sql` (with its parameters bound): one line a
/// step, e.g. `SEARCH schedule USING INDEX schedule_due (due_at<?)`.
async fn query_plan(url: &str, sql: &str, binds: &[&str]) -> Vec<String> {
    use sqlx::Row as _;
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let explain = format!("EXPLAIN QUERY PLAN {sql}");
    let mut query = sqlx::query(&explain);
    for bind in binds {
        query = query.bind(*bind);
    }
    let rows = query.fetch_all(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    rows.iter()
        .map(|r| r.try_get::<String, _>("detail").unwrap())
        .collect()
}

#[tokio::test]
async fn listing_a_vms_open_grants_searches_the_vm_index_instead_of_every_open_grant() {
    // Each request lists its VM's open grants twice: with 5,000 open
    // grants on other VMs, walking the open grants costs each listing
    // 5,000 rows.
    let db = Sqlite.fresh().await;
    Sqlite
        .exec(
            &db,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO grants (request_id, user_id, vm_id, vm_name, policy_id, ports, source,
                 duration_minutes, mapping, state, requested_at, state_changed_at, end_time)
             SELECT 'req-' || i, '42', '/subscriptions/sub/vm/vm-' || i, 'rg/vm-' || i,
                 '/subscriptions/sub/jit/default', '22', '203.0.113.7', 60, 'sre-web',
                 'active', '2026-11-22T00:00:00.000000Z', '2026-11-22T00:00:00.000000Z',
                 '2026-11-22T01:00:00.000000Z'
             FROM n;",
        )
        .await;

    let list = drawbridge::store::grants::open_grants_on_sql();
    let plan = query_plan(&db.url, &list, &["/subscriptions/SUB/vm/VM-77"]).await;
    assert!(
        plan.iter()
            .any(|step| step.contains("SEARCH grants USING INDEX grants_vm")),
        "the listing does not search the VM index: {plan:?}"
    );
    assert!(
        !plan.iter().any(
            |step| step.starts_with("SCAN grants") || step.contains("USING INDEX grants_state")
        ),
        "the listing walks the grants: {plan:?}"
    );

    // And the statement is the one the store runs: it finds the VM's grant
    // whatever the case of its id.
    let open = db
        .store
        .open_grants_on("/subscriptions/SUB/vm/VM-77")
        .await
        .unwrap();
    let ids: Vec<&str> = open.iter().map(|g| g.request_id.as_str()).collect();
    assert_eq!(ids, ["req-77"]);
}

#[tokio::test]
async fn each_outbox_claim_finds_a_messages_other_edits_through_the_target_index() {
    // The outbox keeps its delivered rows: with 5,000 of them, a look-up of
    // a message's other edits that walked the table would cost each claim
    // 5,000 rows for every pending edit.
    let db = Sqlite.fresh().await;
    Sqlite
        .exec(
            &db,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO outbox (kind, target, payload, idempotency_key, created_at,
                 next_attempt_at, delivered_at)
             SELECT 'message_edit', 'req-' || (i % 500), '{}', 'k-' || i,
                 '2026-11-22T00:00:00.000000Z', '2026-11-22T00:00:00.000000Z',
                 '2026-11-22T00:00:01.000000Z'
             FROM n;",
        )
        .await;

    let now = "2026-11-22T01:00:00.000000Z";
    let supersede = drawbridge::store::outbox::supersede_stale_edits_sql("");
    let claim = drawbridge::store::outbox::claim_outbox_sql("");
    for (sql, binds, alias) in [
        (supersede, vec![now, "superseded"], "later"),
        (claim, vec![now, "a", now, "10"], "earlier"),
    ] {
        let plan = query_plan(&db.url, &sql, &binds).await;
        assert!(
            plan.iter()
                .any(|step| step.contains(&format!("SEARCH {alias} USING INDEX outbox_target"))),
            "the other edits are not searched through the index: {plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "the statement walks the outbox: {plan:?}"
        );
    }
}

#[tokio::test]
async fn the_timer_claim_searches_the_pending_timers_index_instead_of_scanning_every_timer() {
    // The schedule keeps every timer ever set (two a grant), and the
    // scheduler claims due ones at every wake: at 100,000 grants a scan of
    // the table would cost each claim 200,000 rows.
    let db = Sqlite.fresh().await;
    Sqlite
        .exec(
            &db,
            "INSERT INTO grants (request_id, user_id, vm_id, vm_name, policy_id, ports, source,
                 duration_minutes, mapping, state, requested_at, state_changed_at)
             VALUES ('req-1', '42', '/subscriptions/sub/vm/web-01', 'rg/web-01',
                 '/subscriptions/sub/jit/default', '22', '203.0.113.7', 60, 'sre-web',
                 'active', '2026-11-22T00:00:00.000000Z', '2026-11-22T00:00:00.000000Z');
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
             INSERT INTO schedule (request_id, kind, due_at, done_at)
             SELECT 'req-1', 'expiry',
                 strftime('%Y-%m-%dT%H:%M:%S.000000Z', '2026-11-22', '+' || i || ' minutes'),
                 CASE WHEN i % 50 = 0 THEN NULL ELSE '2026-11-22T00:00:00.000000Z' END
             FROM n;",
        )
        .await;

    let claim = drawbridge::store::schedule::claim_due_sql("");
    let plan = query_plan(
        &db.url,
        &claim,
        &[
            "2026-11-23T00:00:00.000000Z",
            "worker-1",
            "2026-11-22T23:55:00.000000Z",
            "10",
        ],
    )
    .await;
    assert!(
        plan.iter()
            .any(|step| step.contains("SEARCH schedule USING INDEX schedule_due")),
        "the claim does not search the pending timers' index: {plan:?}"
    );
    assert!(
        !plan.iter().any(|step| step.starts_with("SCAN schedule")),
        "the claim scans the schedule: {plan:?}"
    );

    // And the statement is the one the store runs: it claims what is due.
    let claimed = db
        .store
        .claim_due(
            time("2026-11-22T02:00:00Z"),
            "worker-1",
            chrono::Duration::minutes(5),
            10,
        )
        .await
        .unwrap();
    let due: Vec<String> = claimed.iter().map(|t| t.due_at.to_rfc3339()).collect();
    assert_eq!(
        due,
        ["2026-11-22T00:50:00+00:00", "2026-11-22T01:40:00+00:00"]
    );
}
