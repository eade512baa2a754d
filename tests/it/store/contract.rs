//! The store's contract: what every backend must do, written once.
//!
//! Each test is a function of a [`Backend`]; `store_contract!` instantiates
//! every one of them as a `#[tokio::test]` per backend (see `store.rs`), so a
//! new backend adds one line there and gets the whole suite. A test that
//! needs a backend's own SQL gets it from the [`Backend`] trait; everything
//! else here is plain SQL both backends accept.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use drawbridge::domain::audit::GENESIS_HASH;
use drawbridge::domain::mapping::MappingSpec;
use drawbridge::domain::request::Reason;
use drawbridge::domain::{
    AccessDuration, AuditAction, AuditEvent, GrantEvent, GrantState, MappingName, Outcome,
    PortAliases, PortSpec, RequestId, RoleMapping, Snowflake, SourcePrefix, UserId,
};
use drawbridge::store::export::{Format, write_audit};
use drawbridge::store::{
    AuditFilter, Grant, InsertOutcome, InteractionToken, MappingChange, NewGrant, OutboxKind,
    OutboxMessage, ScheduleKind, Store, StoreError,
};

use super::backend::{Backend, TestDb};

/// Instantiates every contract test for one backend, as
/// `store::<module>::<test>`: `store_contract!(sqlite, Some(Sqlite));`. The
/// backend is an `Option`: a backend whose server is not configured is
/// `None`, and its tests pass without running (the backend says so once).
macro_rules! store_contract {
    ($module:ident, $backend:expr) => {
        mod $module {
            $crate::store::contract::store_contract!(@tests $backend;
                a_fresh_database_migrates_and_migrating_again_is_a_no_op,
                the_chain_verifies_after_many_appends,
                a_transaction_dropped_before_commit_leaves_nothing_and_frees_the_database_at_once,
                a_closed_store_refuses_work_with_an_error,
                audit_events_filter_by_time_actor_action_and_limit,
                the_database_refuses_updates_and_deletes_of_audit_rows,
                an_audit_row_goes_in_only_at_the_head_and_its_insert_moves_the_head,
                appends_follow_rows_another_process_appended_meanwhile,
                editing_a_rows_target_detail_or_outcome_is_detected_at_that_seq,
                a_rewritten_row_with_a_recomputed_hash_breaks_the_next_link,
                deleting_middle_rows_is_detected,
                deleting_the_last_row_is_detected_through_the_head,
                reordering_rows_is_detected,
                concurrent_appends_from_several_tasks_keep_the_chain_valid,
                audit_export_writes_jsonl_and_csv_with_every_column,
                mapping_import_reports_the_exact_diff_and_audits_each_change,
                importing_two_mappings_with_one_name_changes_nothing,
                add_and_remove_mapping_audit_only_real_changes,
                a_stored_mapping_that_no_longer_validates_is_reported_not_dropped,
                the_mappings_version_counts_each_change_of_the_mappings_and_nothing_else,
                inserting_a_request_id_twice_returns_the_first_grant,
                transitions_follow_the_state_machine_and_record_each_change,
                an_invalid_transition_is_refused_and_changes_nothing,
                user_grants_list_open_ones_first_and_open_grants_are_listed,
                a_grant_row_that_cannot_be_read_back_is_a_typed_error,
                states_and_timer_kinds_the_code_does_not_know_are_refused,
                audit_rows_are_delivered_in_order_and_a_failed_one_holds_back_later_ones,
                outbox_keys_deduplicate_and_stats_show_the_backlog,
                rows_marked_delivered_together_are_exactly_those_named,
                rows_delivered_before_the_cutoff_are_deleted_in_batches_and_pending_ones_stay,
                scheduling_several_timers_at_once_writes_each_once_and_revives_a_cancelled_one,
                a_transition_records_azures_answer_in_the_same_step,
                a_transition_from_a_grant_as_seen_rereads_it_only_when_it_changed,
                two_concurrent_claimers_never_get_the_same_timer,
                a_stale_claim_is_reclaimed_after_its_lease,
                cancelled_timers_are_not_due_and_not_due_timers_are_not_claimed,
                pending_due_times_list_every_timer_not_fired_or_cancelled,
                a_saved_source_round_trips_and_can_be_replaced,
                an_azure_request_is_reported_once_and_forgotten_when_old,
                a_lease_has_one_holder_until_it_expires_and_its_fence_grows_with_each_new_holder,
                replicas_racing_for_a_lease_get_exactly_one_holder,
                outbox_claims_split_rows_between_replicas_and_a_dead_replicas_claims_run_out,
                concurrent_outbox_claimers_never_get_the_same_row,
                edits_of_one_message_go_one_at_a_time_and_a_stale_one_is_never_sent,
                a_sqlite_database_copies_into_a_new_one_with_its_audit_chain_verified,
            );
        }
    };
    (@tests $backend:expr; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                if let Some(backend) = $backend {
                    $crate::store::contract::$test(&backend).await;
                }
            }
        )+
    };
}

pub(crate) use store_contract;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn event(i: usize) -> AuditEvent {
    AuditEvent::new(
        t0() + Duration::milliseconds(i as i64 * 1234) + Duration::nanoseconds(789),
        format!("discord:{}", 100 + i % 3),
        if i.is_multiple_of(2) {
            AuditAction::AccessInitiated
        } else {
            AuditAction::AccessDenied
        },
        format!("rg/web-{i:02}"),
        Outcome::Success,
    )
    .with_detail(serde_json::json!({"i": i, "ports": [22, 8443], "nested": {"b": 1, "a": null}}))
}

async fn append_n(store: &Store, n: usize) {
    for i in 1..=n {
        store.append_audit(&event(i)).await.expect("append");
    }
}

async fn broken(store: &Store) -> (i64, String) {
    let v = store.verify_audit().await.expect("verify");
    let b = v.first_broken.expect("the chain should be broken");
    (b.seq, b.problem)
}

// ---------------------------------------------------------------- migrations

pub async fn a_fresh_database_migrates_and_migrating_again_is_a_no_op(b: &impl Backend) {
    let empty = b.empty().await;

    let store = Store::connect(&empty.url).await.unwrap();
    let applied = store.migrate().await.unwrap();
    let versions: Vec<i64> = applied.iter().map(|m| m.version).collect();
    assert!(!versions.is_empty());
    assert!(versions.windows(2).all(|v| v[0] < v[1]), "{versions:?}");
    assert!(store.migrate().await.unwrap().is_empty());
    store.ping().await.unwrap();
    store.close().await;

    let reopened = Store::open(&empty.url).await.unwrap();
    assert!(reopened.migrate().await.unwrap().is_empty());
    assert!(reopened.verify_audit().await.unwrap().is_intact());
}

// ---------------------------------------------------------------- audit chain

pub async fn the_chain_verifies_after_many_appends(b: &impl Backend) {
    let db = b.fresh().await;
    // Some single appends, some several in one transaction.
    append_n(&db.store, 150).await;
    let mut tx = db.store.begin().await.unwrap();
    for i in 151..=200 {
        tx.append_audit(&event(i)).await.unwrap();
    }
    tx.commit().await.unwrap();

    let v = db.store.verify_audit().await.unwrap();
    assert_eq!(v.checked, 200);
    assert!(v.is_intact(), "{:?}", v.first_broken);

    let all = db
        .store
        .audit_events(&AuditFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 200);
    assert_eq!(all[0].prev_hash, GENESIS_HASH);
    for pair in all.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    // The stored event is the appended one, to the microsecond.
    let mut expected = event(7);
    expected.at = DateTime::from_timestamp_micros(expected.at.timestamp_micros()).unwrap();
    assert_eq!(all[6].event, expected);
}

/// A use case that fails half-way drops its transaction: what it wrote is
/// gone, and the lock it held is given up then, not at the store's next use
/// (another process, a CLI command, waits for SQLite's write lock and for
/// PostgreSQL's row locks).
pub async fn a_transaction_dropped_before_commit_leaves_nothing_and_frees_the_database_at_once(
    b: &impl Backend,
) {
    let db = b.fresh().await;
    let mut tx = db.store.begin().await.unwrap();
    tx.append_audit(&event(1)).await.unwrap();
    drop(tx);

    // Another process writes the row the append locked; the store is idle.
    let other = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        b.raw(&db.url, "UPDATE audit_head SET seq = seq WHERE id = 1"),
    )
    .await;
    assert!(
        matches!(other, Ok(Ok(()))),
        "another process could not write after the drop: {other:?}"
    );

    assert_eq!(db.store.audit_head().await.unwrap().0, 0);
    let record = db.store.append_audit(&event(2)).await.unwrap();
    assert_eq!(record.seq, 1);
    assert!(db.store.verify_audit().await.unwrap().is_intact());
}

/// After shutdown closed the store, a late caller gets an error at once
/// instead of waiting for a connection.
pub async fn a_closed_store_refuses_work_with_an_error(b: &impl Backend) {
    let db = b.fresh().await;
    append_n(&db.store, 1).await;
    db.store.close().await;

    let read = tokio::time::timeout(std::time::Duration::from_secs(5), db.store.audit_head()).await;
    assert!(matches!(read, Ok(Err(_))), "{read:?}");
    let write = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        db.store.append_audit(&event(2)),
    )
    .await;
    assert!(matches!(write, Ok(Err(_))), "{write:?}");
    let begin = tokio::time::timeout(std::time::Duration::from_secs(5), db.store.begin()).await;
    assert!(matches!(begin, Ok(Err(_))), "{:?}", begin.map(|r| r.err()));
}

pub async fn audit_events_filter_by_time_actor_action_and_limit(b: &impl Backend) {
    let db = b.fresh().await;
    append_n(&db.store, 30).await;
    let filter = AuditFilter {
        since: Some(event(10).at),
        actor: Some("discord:101".into()),
        action: Some(AuditAction::AccessInitiated),
        limit: None,
    };
    let found = db.store.audit_events(&filter).await.unwrap();
    let seqs: Vec<i64> = found.iter().map(|r| r.seq).collect();
    // i % 3 == 1 (actor 101) and i even (initiated), i >= 10.
    assert_eq!(seqs, vec![10, 16, 22, 28]);

    let latest = db
        .store
        .audit_events(&AuditFilter {
            limit: Some(3),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let seqs: Vec<i64> = latest.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![28, 29, 30]);
}

pub async fn the_database_refuses_updates_and_deletes_of_audit_rows(b: &impl Backend) {
    let db = b.fresh().await;
    append_n(&db.store, 3).await;
    for sql in [
        "UPDATE audit_log SET target = 'x' WHERE seq = 2",
        "DELETE FROM audit_log WHERE seq = 3",
        "UPDATE audit_head SET seq = 2",
        "DELETE FROM audit_head",
    ] {
        let err = b.raw(&db.url, sql).await.unwrap_err();
        assert!(err.contains("audit"), "{sql}: {err}");
    }
    assert!(db.store.verify_audit().await.unwrap().is_intact());
}

pub async fn an_audit_row_goes_in_only_at_the_head_and_its_insert_moves_the_head(b: &impl Backend) {
    let db = b.fresh().await;
    append_n(&db.store, 3).await;
    let (_, head_hash) = db.store.audit_head().await.unwrap();
    let insert = |seq: i64, hash: &str| {
        format!(
            "INSERT INTO audit_log (seq, at, actor, action, target, outcome, detail, prev_hash, hash)
             VALUES ({seq}, '2026-11-30T10:00:00.000000Z', 'cli', 'mapping_added', 'm', 'success',
                     '{{}}', '{head_hash}', '{hash}')"
        )
    };

    let skipped = b.raw(&db.url, &insert(5, "five")).await.unwrap_err();
    assert!(skipped.contains("audit_head"), "{skipped}");
    let unlinked = insert(4, "four").replace(&head_hash, "not-the-heads-hash");
    let unlinked = b.raw(&db.url, &unlinked).await.unwrap_err();
    assert!(unlinked.contains("audit_head"), "{unlinked}");
    assert_eq!(db.store.audit_head().await.unwrap().0, 3);

    b.raw(&db.url, &insert(4, "four")).await.unwrap();
    assert_eq!(
        db.store.audit_head().await.unwrap(),
        (4, "four".to_string())
    );
    // The previous release sets the head itself after its INSERT: to what
    // the INSERT already set, which the head's guard lets pass.
    b.raw(
        &db.url,
        "UPDATE audit_head SET seq = 4, hash = 'four' WHERE id = 1",
    )
    .await
    .unwrap();
    assert_eq!(
        db.store.audit_head().await.unwrap(),
        (4, "four".to_string())
    );
}

pub async fn appends_follow_rows_another_process_appended_meanwhile(b: &impl Backend) {
    let db = b.fresh().await;
    let other = Store::open(&db.url).await.unwrap();
    append_n(&db.store, 2).await;

    // A CLI command (another store on the same database) appends twice.
    other.append_audit(&event(3)).await.unwrap();
    other.append_audit(&event(4)).await.unwrap();
    // The bot appends again: after the CLI's rows, not over them.
    let record = db.store.append_audit(&event(5)).await.unwrap();
    let mut tx = db.store.begin().await.unwrap();
    let second = tx.append_audit(&event(6)).await.unwrap();
    let third = tx.append_audit(&event(7)).await.unwrap();
    tx.commit().await.unwrap();

    assert_eq!((record.seq, second.seq, third.seq), (5, 6, 7));
    let verified = db.store.verify_audit().await.unwrap();
    assert!(verified.is_intact(), "{verified:?}");
    assert_eq!(verified.checked, 7);
    assert_eq!(other.audit_head().await.unwrap().0, 7);
}

pub async fn editing_a_rows_target_detail_or_outcome_is_detected_at_that_seq(b: &impl Backend) {
    for set in [
        "target = 'rg/other'",
        "detail = '{\"i\":4,\"extra\":true}'",
        "outcome = 'failed'",
        "actor = 'discord:999'",
        "at = '2026-11-22T10:00:04.937000Z'",
    ] {
        let db = b.fresh().await;
        append_n(&db.store, 8).await;
        b.tamper(&db, &format!("UPDATE audit_log SET {set} WHERE seq = 4;"))
            .await;

        let v = db.store.verify_audit().await.unwrap();
        assert_eq!(v.checked, 3, "{set}");
        let b = v.first_broken.unwrap();
        assert_eq!(
            (b.seq, b.problem.as_str()),
            (4, "hash mismatch: row was changed"),
            "{set}"
        );
    }
}

pub async fn a_rewritten_row_with_a_recomputed_hash_breaks_the_next_link(b: &impl Backend) {
    let db = b.fresh().await;
    append_n(&db.store, 6).await;
    let row3 = &db
        .store
        .audit_events(&AuditFilter::default())
        .await
        .unwrap()[2];
    let mut forged = row3.event.clone();
    forged.target = "rg/forged".into();
    let hash = forged.chain_hash(3, &row3.prev_hash);
    b.tamper(
        &db,
        &format!("UPDATE audit_log SET target = 'rg/forged', hash = '{hash}' WHERE seq = 3;"),
    )
    .await;

    assert_eq!(
        broken(&db.store).await,
        (4, "prev_hash does not match row 3".to_string())
    );
}

pub async fn deleting_middle_rows_is_detected(b: &impl Backend) {
    let db = b.fresh().await;
    append_n(&db.store, 10).await;
    b.tamper(&db, "DELETE FROM audit_log WHERE seq = 5;").await;
    assert_eq!(broken(&db.store).await, (5, "missing row 5".to_string()));

    b.tamper(&db, "DELETE FROM audit_log WHERE seq IN (4, 6);")
        .await;
    assert_eq!(
        broken(&db.store).await,
        (4, "missing rows 4..6".to_string())
    );
}

pub async fn deleting_the_last_row_is_detected_through_the_head(b: &impl Backend) {
    let db = b.fresh().await;
    append_n(&db.store, 10).await;
    b.tamper(&db, "DELETE FROM audit_log WHERE seq = 10;").await;

    let v = db.store.verify_audit().await.unwrap();
    assert_eq!(v.checked, 9);
    let b = v.first_broken.unwrap();
    assert_eq!((b.seq, b.problem.as_str()), (10, "missing row 10"));

    // Appending after the deletion does not paper over the gap.
    db.store.append_audit(&event(11)).await.unwrap();
    assert_eq!(broken(&db.store).await, (10, "missing row 10".to_string()));
}

pub async fn reordering_rows_is_detected(b: &impl Backend) {
    let db = b.fresh().await;
    append_n(&db.store, 5).await;
    // Swap rows 2 and 3 by renumbering them.
    b.tamper(
        &db,
        "UPDATE audit_log SET seq = 100 WHERE seq = 2;
         UPDATE audit_log SET seq = 2 WHERE seq = 3;
         UPDATE audit_log SET seq = 3 WHERE seq = 100;",
    )
    .await;
    let (seq, problem) = broken(&db.store).await;
    assert_eq!(seq, 2);
    assert_eq!(problem, "prev_hash does not match row 1");
}

pub async fn concurrent_appends_from_several_tasks_keep_the_chain_valid(b: &impl Backend) {
    let db = b.fresh().await;
    // A second store on the same file stands for a second process.
    let other = Store::open(&db.url).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = if t % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25 {
                let record = store.append_audit(&event(t * 100 + i)).await.unwrap();
                seqs.push(record.seq);
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    assert_eq!(all, (1..=200).collect::<BTreeSet<i64>>());
    let v = db.store.verify_audit().await.unwrap();
    assert_eq!(v.checked, 200);
    assert!(v.is_intact(), "{:?}", v.first_broken);
}

pub async fn audit_export_writes_jsonl_and_csv_with_every_column(b: &impl Backend) {
    let db = b.fresh().await;
    append_n(&db.store, 3).await;
    let records = db
        .store
        .audit_events(&AuditFilter::default())
        .await
        .unwrap();

    let mut jsonl = Vec::new();
    write_audit(&records, Format::Jsonl, &mut jsonl).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["seq"], 2);
    assert_eq!(lines[1]["action"], "access_initiated");
    assert_eq!(lines[1]["detail"]["ports"], serde_json::json!([22, 8443]));
    assert_eq!(lines[1]["prev_hash"], records[0].hash.as_str());

    let mut csv_out = Vec::new();
    write_audit(&records, Format::Csv, &mut csv_out).unwrap();
    let mut reader = csv::Reader::from_reader(csv_out.as_slice());
    assert_eq!(
        reader.headers().unwrap(),
        vec![
            "seq",
            "at",
            "actor",
            "action",
            "target",
            "outcome",
            "detail",
            "hash",
            "prev_hash"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3);
    let detail: serde_json::Value = serde_json::from_str(&rows[2][6]).unwrap();
    assert_eq!(detail, records[2].event.detail);
    assert_eq!(&rows[2][1], records[2].event.at_text());
    assert_eq!("CSV".parse::<Format>().unwrap(), Format::Csv);
    assert!("xml".parse::<Format>().is_err());
}

// ---------------------------------------------------------------- mappings

fn mapping(name: &str, vms: &str, max: &str) -> RoleMapping {
    MappingSpec {
        name: name.into(),
        roles: vec!["111".parse().unwrap()],
        vms: vms.into(),
        ports: vec!["ssh".into(), "8443".into()],
        max_duration: max.into(),
        sources: Some(vec!["203.0.113.0/24".into()]),
        allow_broad_sources: false,
        default_source: None,
        require_reason: false,
        ..MappingSpec::default()
    }
    .validate(&PortAliases::default())
    .unwrap()
}

fn names(list: &[MappingName]) -> Vec<&str> {
    list.iter().map(MappingName::as_str).collect()
}

pub async fn mapping_import_reports_the_exact_diff_and_audits_each_change(b: &impl Backend) {
    let db = b.fresh().await;
    let first = [
        mapping("alpha", "web-*", "2h"),
        mapping("bravo", "rg:prod", "4h"),
        mapping("charlie", "*", "1h"),
    ];
    let diff = db.store.import_mappings(&first, "cli", t0()).await.unwrap();
    assert_eq!(names(&diff.added), ["alpha", "bravo", "charlie"]);

    let second = [
        mapping("delta", "db-*", "30m"),
        mapping("alpha", "web-*", "2h"),
        mapping("bravo", "rg:prod", "8h"),
    ];
    let diff = db
        .store
        .import_mappings(&second, "admin:42", t0() + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(names(&diff.added), ["delta"]);
    assert_eq!(names(&diff.removed), ["charlie"]);
    assert_eq!(names(&diff.changed), ["bravo"]);
    assert_eq!(names(&diff.unchanged), ["alpha"]);

    let stored = db
        .store
        .list_mappings(&PortAliases::default())
        .await
        .unwrap();
    let mut expected = second.to_vec();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(stored, expected);

    let events = db
        .store
        .audit_events(&AuditFilter {
            actor: Some("admin:42".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let summary: Vec<(AuditAction, &str)> = events
        .iter()
        .map(|r| (r.event.action, r.event.target.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (AuditAction::MappingAdded, "delta"),
            (AuditAction::MappingAdded, "bravo"),
            (AuditAction::MappingRemoved, "charlie"),
            (AuditAction::MappingsImported, "mappings"),
        ]
    );
    assert_eq!(events[1].event.detail["change"], "changed");
    assert_eq!(events[1].event.detail["before"]["max_duration"], "4h");
    assert_eq!(
        events[3].event.detail["removed"],
        serde_json::json!(["charlie"])
    );
    assert_eq!(
        events[3].event.detail["unchanged"],
        serde_json::json!(["alpha"])
    );
    assert!(db.store.verify_audit().await.unwrap().is_intact());
}

pub async fn importing_two_mappings_with_one_name_changes_nothing(b: &impl Backend) {
    let db = b.fresh().await;
    let twice = [mapping("alpha", "web-*", "2h"), mapping("alpha", "*", "1h")];
    let err = db
        .store
        .import_mappings(&twice, "cli", t0())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    assert!(
        db.store
            .list_mappings(&PortAliases::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(db.store.verify_audit().await.unwrap().checked, 0);
}

pub async fn add_and_remove_mapping_audit_only_real_changes(b: &impl Backend) {
    let db = b.fresh().await;
    let store = &db.store;
    let m = mapping("alpha", "web-*", "2h");
    assert_eq!(
        store.add_mapping(&m, "admin:1", t0()).await.unwrap(),
        MappingChange::Added
    );
    assert_eq!(
        store.add_mapping(&m, "admin:1", t0()).await.unwrap(),
        MappingChange::Unchanged
    );
    let changed = mapping("alpha", "web-*", "3h");
    match store.add_mapping(&changed, "admin:1", t0()).await.unwrap() {
        MappingChange::Changed { before } => assert_eq!(before.max_duration, "2h"),
        other => panic!("expected a change, got {other:?}"),
    }
    let name = MappingName::parse("alpha").unwrap();
    let removed = store.remove_mapping(&name, "admin:1", t0()).await.unwrap();
    assert_eq!(removed.unwrap().max_duration, "3h");
    assert!(
        store
            .remove_mapping(&name, "admin:1", t0())
            .await
            .unwrap()
            .is_none()
    );

    let actions: Vec<AuditAction> = store
        .audit_events(&AuditFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event.action)
        .collect();
    assert_eq!(
        actions,
        [
            AuditAction::MappingAdded,
            AuditAction::MappingAdded,
            AuditAction::MappingRemoved
        ]
    );
}

pub async fn the_mappings_version_counts_each_change_of_the_mappings_and_nothing_else(
    b: &impl Backend,
) {
    let db = b.fresh().await;
    let store = &db.store;
    let version = || async { store.mappings_version().await.unwrap() };
    let two = [mapping("alpha", "*", "2h"), mapping("bravo", "*", "2h")];
    let empty = version().await;

    store.import_mappings(&two, "cli", t0()).await.unwrap();
    let imported = version().await;
    store.import_mappings(&two, "cli", t0()).await.unwrap();
    let same_again = version().await;
    store
        .import_mappings(&[mapping("alpha", "*", "3h")], "cli", t0())
        .await
        .unwrap();
    let changed_and_removed = version().await;
    let alpha = MappingName::parse("alpha").unwrap();
    store.remove_mapping(&alpha, "admin", t0()).await.unwrap();
    let removed = version().await;
    store.remove_mapping(&alpha, "admin", t0()).await.unwrap();

    assert_eq!(empty, 0);
    assert!(imported > empty);
    assert_eq!(same_again, imported, "an import that changed nothing");
    assert!(changed_and_removed > imported);
    assert!(removed > changed_and_removed);
    assert_eq!(version().await, removed, "removing what is gone");
}

pub async fn a_stored_mapping_that_no_longer_validates_is_reported_not_dropped(b: &impl Backend) {
    let db = b.fresh().await;
    db.store
        .import_mappings(
            &[mapping("alpha", "*", "2h"), mapping("bravo", "*", "2h")],
            "cli",
            t0(),
        )
        .await
        .unwrap();
    // Stored before validation tightened: a duration no mapping may have.
    let mut stale = mapping("bravo", "*", "2h").to_spec();
    stale.max_duration = "30h".into();
    let stale = serde_json::to_string(&stale).unwrap();
    b.exec(
        &db,
        &format!("UPDATE mappings SET spec = '{stale}' WHERE name = 'bravo';"),
    )
    .await;

    let err = db
        .store
        .list_mappings(&PortAliases::default())
        .await
        .unwrap_err();
    match err {
        StoreError::InvalidStoredMapping { name, message } => {
            assert_eq!(name, "bravo");
            assert!(message.contains("max_duration"), "{message}");
        }
        other => panic!("expected InvalidStoredMapping, got {other:?}"),
    }
    // It can still be replaced.
    let diff = db
        .store
        .import_mappings(
            &[mapping("alpha", "*", "2h"), mapping("bravo", "*", "2h")],
            "cli",
            t0(),
        )
        .await
        .unwrap();
    assert_eq!(names(&diff.changed), ["bravo"]);
    assert_eq!(
        db.store
            .list_mappings(&PortAliases::default())
            .await
            .unwrap()
            .len(),
        2
    );
}

// ---------------------------------------------------------------- grants

fn new_grant(id: &str, user: u64, at: DateTime<Utc>) -> NewGrant {
    NewGrant {
        request_id: RequestId::parse(id).unwrap(),
        user_id: UserId(Snowflake::from_u64(user).unwrap()),
        guild_id: Snowflake::from_u64(5),
        channel_id: Snowflake::from_u64(6),
        vm_id: "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-01".into(),
        vm_name: "rg/web-01".into(),
        policy_id: "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default".into(),
        ports: PortSpec::from_numbers([22, 8443]).unwrap(),
        source: SourcePrefix::parse("203.0.113.7").unwrap(),
        duration: AccessDuration::parse("2h").unwrap(),
        reason: Some(Reason::parse("patching").unwrap()),
        mapping: MappingName::parse("sre-web").unwrap(),
        requested_at: at,
        interaction_token: Some(InteractionToken::new("secret-interaction-token")),
    }
}

pub async fn inserting_a_request_id_twice_returns_the_first_grant(b: &impl Backend) {
    let db = b.fresh().await;
    let first = db
        .store
        .insert_grant(new_grant("req-1", 42, t0()))
        .await
        .unwrap();
    let InsertOutcome::Inserted(grant) = first else {
        panic!("expected an insert");
    };
    assert_eq!(grant.state, GrantState::Requested);
    assert_eq!(grant.ports.to_string(), "22,8443");
    assert_eq!(grant.state_changed_at, t0());
    assert!(!format!("{grant:?}").contains("secret-interaction-token"));
    assert_eq!(
        grant
            .interaction_token
            .as_ref()
            .map(InteractionToken::expose),
        Some("secret-interaction-token")
    );

    let mut again = new_grant("req-1", 42, t0() + Duration::minutes(5));
    again.vm_name = "rg/other".into();
    let mut tx = db.store.begin().await.unwrap();
    let second = tx.insert_grant(again).await.unwrap();
    // The duplicate failed no statement: the transaction goes on.
    tx.append_audit(&event(1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(second, InsertOutcome::Duplicate(grant.clone()));
    assert_eq!(
        db.store.grant(&grant.request_id).await.unwrap(),
        Some(grant)
    );
}

pub async fn transitions_follow_the_state_machine_and_record_each_change(b: &impl Backend) {
    let db = b.fresh().await;
    let id = RequestId::parse("req-2").unwrap();
    db.store
        .insert_grant(new_grant("req-2", 42, t0()))
        .await
        .unwrap();
    let end = t0() + Duration::hours(2);
    let later_end = t0() + Duration::hours(3);

    let mut tx = db.store.begin().await.unwrap();
    let active = tx
        .transition_grant(
            &id,
            &GrantEvent::Initiated { end },
            t0() + Duration::seconds(2),
        )
        .await
        .unwrap();
    tx.set_azure_detail(&id, &serde_json::json!({"id": "jit-req-7"}))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(active.state, GrantState::Active);
    assert_eq!(active.end_time, Some(end));

    let mut tx = db.store.begin().await.unwrap();
    tx.transition_grant(&id, &GrantEvent::ExtendRequested, t0() + Duration::hours(1))
        .await
        .unwrap();
    let extended = tx
        .transition_grant(
            &id,
            &GrantEvent::Extended { end: later_end },
            t0() + Duration::hours(1),
        )
        .await
        .unwrap();
    let expired = tx
        .transition_grant(&id, &GrantEvent::WindowEnded, later_end)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(extended.state, GrantState::Extended);
    assert_eq!(expired.state, GrantState::Expired);
    assert_eq!(expired.end_time, Some(later_end));
    assert_eq!(expired.state_changed_at, later_end);
    assert_eq!(
        expired.azure_detail,
        Some(serde_json::json!({"id": "jit-req-7"}))
    );

    let history: Vec<(GrantState, GrantState, String)> = db
        .store
        .grant_transitions(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.from, t.to, t.event))
        .collect();
    assert_eq!(
        history,
        [
            (
                GrantState::Requested,
                GrantState::Active,
                "initiated".to_string()
            ),
            (
                GrantState::Active,
                GrantState::Extending,
                "extend requested".to_string()
            ),
            (
                GrantState::Extending,
                GrantState::Extended,
                "extended".to_string()
            ),
            (
                GrantState::Extended,
                GrantState::Expired,
                "window ended".to_string()
            ),
        ]
    );
}

pub async fn an_invalid_transition_is_refused_and_changes_nothing(b: &impl Backend) {
    let db = b.fresh().await;
    let id = RequestId::parse("req-3").unwrap();
    db.store
        .insert_grant(new_grant("req-3", 42, t0()))
        .await
        .unwrap();
    let mut tx = db.store.begin().await.unwrap();
    tx.transition_grant(&id, &GrantEvent::Failed, t0())
        .await
        .unwrap();
    tx.set_grant_failure(&id, "Azure refused: the policy has no port 8443")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let before = db.store.grant(&id).await.unwrap().unwrap();

    let mut tx = db.store.begin().await.unwrap();
    let err = tx
        .transition_grant(
            &id,
            &GrantEvent::Initiated {
                end: t0() + Duration::hours(1),
            },
            t0() + Duration::minutes(1),
        )
        .await
        .unwrap_err();
    tx.commit().await.unwrap();
    match err {
        StoreError::InvalidTransition(e) => {
            assert_eq!(e.to_string(), "a grant that is failed cannot be initiated")
        }
        other => panic!("expected InvalidTransition, got {other:?}"),
    }
    let after = db.store.grant(&id).await.unwrap().unwrap();
    assert_eq!(after, before);
    assert_eq!(
        after.failure.as_deref(),
        Some("Azure refused: the policy has no port 8443")
    );
    assert_eq!(db.store.grant_transitions(&id).await.unwrap().len(), 1);

    let missing = RequestId::parse("nope").unwrap();
    let mut tx = db.store.begin().await.unwrap();
    let err = tx
        .transition_grant(&missing, &GrantEvent::Failed, t0())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "grant", .. }),
        "{err}"
    );
}

pub async fn user_grants_list_open_ones_first_and_open_grants_are_listed(b: &impl Backend) {
    let db = b.fresh().await;
    for (i, id) in ["old-open", "newer-closed", "newest-requested"]
        .iter()
        .enumerate()
    {
        db.store
            .insert_grant(new_grant(id, 42, t0() + Duration::minutes(i as i64)))
            .await
            .unwrap();
    }
    db.store
        .insert_grant(new_grant("someone-else", 7, t0()))
        .await
        .unwrap();
    let mut tx = db.store.begin().await.unwrap();
    let end = t0() + Duration::hours(2);
    for id in ["old-open", "newer-closed", "someone-else"] {
        tx.transition_grant(
            &RequestId::parse(id).unwrap(),
            &GrantEvent::Initiated { end },
            t0(),
        )
        .await
        .unwrap();
    }
    tx.transition_grant(
        &RequestId::parse("newer-closed").unwrap(),
        &GrantEvent::WindowEnded,
        end,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let user = UserId(Snowflake::from_u64(42).unwrap());
    let ids: Vec<String> = db
        .store
        .grants_for_user(user, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.request_id.to_string())
        .collect();
    assert_eq!(ids, ["old-open", "newest-requested", "newer-closed"]);
    assert_eq!(db.store.grants_for_user(user, 1).await.unwrap().len(), 1);

    let open: Vec<String> = db
        .store
        .open_grants()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.request_id.to_string())
        .collect();
    assert_eq!(open, ["old-open", "someone-else"]);
}

pub async fn a_grant_row_that_cannot_be_read_back_is_a_typed_error(b: &impl Backend) {
    let db = b.fresh().await;
    let id = RequestId::parse("req-bad").unwrap();
    db.store
        .insert_grant(new_grant("req-bad", 42, t0()))
        .await
        .unwrap();
    b.exec(
        &db,
        "UPDATE grants SET ports = '22,ssh' WHERE request_id = 'req-bad';",
    )
    .await;

    match db.store.grant(&id).await.unwrap_err() {
        StoreError::CorruptRow {
            table,
            key,
            message,
        } => {
            assert_eq!((table, key.as_str()), ("grants", "req-bad"));
            assert!(message.contains("ports"), "{message}");
        }
        other => panic!("expected CorruptRow, got {other:?}"),
    }
}

pub async fn states_and_timer_kinds_the_code_does_not_know_are_refused(b: &impl Backend) {
    let db = b.fresh().await;
    let id = grant_with_timers(&db, "req-k", 1).await;

    // A state or kind from a newer release (or a typo) never lands.
    for sql in [
        "UPDATE grants SET state = 'awaiting_quorum' WHERE request_id = 'req-k'",
        "UPDATE schedule SET kind = 'quorum_reminder' WHERE request_id = 'req-k'",
    ] {
        assert!(b.raw(&db.url, sql).await.is_err(), "{sql}");
    }
    let grant = db.store.grant(&id).await.unwrap().unwrap();
    assert_eq!(grant.state, GrantState::Requested);

    // Making room for one is a single insert, as a later migration will do.
    b.exec(
        &db,
        "INSERT INTO grant_states (name) VALUES ('awaiting_quorum');
         UPDATE grants SET state = 'awaiting_quorum' WHERE request_id = 'req-k';",
    )
    .await;
    // This release cannot read it back, and says so instead of guessing.
    match db.store.grant(&id).await.unwrap_err() {
        StoreError::CorruptRow { table, message, .. } => {
            assert_eq!(table, "grants");
            assert!(message.contains("awaiting_quorum"), "{message}");
        }
        other => panic!("expected CorruptRow, got {other:?}"),
    }
}

// ---------------------------------------------------------------- outbox

fn dm(text: &str, at: DateTime<Utc>) -> OutboxMessage {
    OutboxMessage {
        kind: OutboxKind::Dm,
        target: Some("42".into()),
        payload: serde_json::json!({"content": text}),
        idempotency_key: None,
        created_at: at,
    }
}

pub async fn audit_rows_are_delivered_in_order_and_a_failed_one_holds_back_later_ones(
    b: &impl Backend,
) {
    let db = b.fresh().await;
    let store = &db.store;
    let now = t0() + Duration::minutes(1);
    let a1 = store.append_audit(&event(1)).await.unwrap();
    let d1 = store.enqueue(dm("hello", t0())).await.unwrap();
    store.append_audit(&event(2)).await.unwrap();
    store.append_audit(&event(3)).await.unwrap();

    let batch = store.next_outbox_batch(now, 10).await.unwrap();
    let kinds: Vec<OutboxKind> = batch.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            OutboxKind::AuditChannel,
            OutboxKind::Dm,
            OutboxKind::AuditChannel,
            OutboxKind::AuditChannel
        ]
    );
    assert_eq!(batch[0].payload["seq"], a1.seq);
    assert_eq!(batch[0].payload["hash"], a1.hash.as_str());
    assert_eq!(batch[0].idempotency_key, "audit-1");
    assert_eq!(batch[1].id, d1);
    let audit_ids: Vec<i64> = batch
        .iter()
        .filter(|r| r.kind == OutboxKind::AuditChannel)
        .map(|r| r.id)
        .collect();

    // The first audit row fails: later audit rows wait, the DM does not.
    let retry_at = now + Duration::seconds(30);
    store
        .mark_failed(audit_ids[0], "HTTP 503 from Discord", retry_at)
        .await
        .unwrap();
    let batch = store.next_outbox_batch(now, 10).await.unwrap();
    assert_eq!(batch.iter().map(|r| r.id).collect::<Vec<_>>(), [d1]);
    store.mark_delivered(d1, now).await.unwrap();
    assert!(store.next_outbox_batch(now, 10).await.unwrap().is_empty());

    // At the retry time, all three come back, in order.
    let batch = store.next_outbox_batch(retry_at, 10).await.unwrap();
    assert_eq!(batch.iter().map(|r| r.id).collect::<Vec<_>>(), audit_ids);
    assert_eq!(batch[0].attempts, 1);
    assert_eq!(
        batch[0].last_error.as_deref(),
        Some("HTTP 503 from Discord")
    );
    assert_eq!(batch[0].next_attempt_at, retry_at);

    // A limit cuts from the end, never from the middle of the order.
    let first_two = store.next_outbox_batch(retry_at, 2).await.unwrap();
    assert_eq!(
        first_two.iter().map(|r| r.id).collect::<Vec<_>>(),
        audit_ids[..2]
    );

    for id in &audit_ids {
        store.mark_delivered(*id, retry_at).await.unwrap();
    }
    // Delivered rows never come back, and marking again changes nothing.
    let much_later = retry_at + Duration::days(1);
    assert!(
        store
            .next_outbox_batch(much_later, 10)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .mark_delivered(audit_ids[0], much_later)
        .await
        .unwrap();
    assert_eq!(
        store.outbox_row(audit_ids[0]).await.unwrap().delivered_at,
        Some(retry_at)
    );
    assert!(matches!(
        store.mark_delivered(999, now).await.unwrap_err(),
        StoreError::NotFound { .. }
    ));
}

pub async fn outbox_keys_deduplicate_and_stats_show_the_backlog(b: &impl Backend) {
    let db = b.fresh().await;
    let store = &db.store;
    let mut msg = dm("reminder", t0());
    msg.idempotency_key = Some("rem-req-1".into());
    let first = store.enqueue(msg.clone()).await.unwrap();
    msg.payload = serde_json::json!({"content": "changed"});
    assert_eq!(store.enqueue(msg.clone()).await.unwrap(), first);
    assert_eq!(
        store.outbox_row(first).await.unwrap().payload["content"],
        "reminder"
    );

    msg.idempotency_key = Some("k".repeat(26));
    assert!(matches!(
        store.enqueue(msg).await.unwrap_err(),
        StoreError::InvalidInput(_)
    ));
    let generated = store
        .enqueue(dm("x", t0() + Duration::minutes(5)))
        .await
        .unwrap();
    let key = store.outbox_row(generated).await.unwrap().idempotency_key;
    assert!(key.len() <= 25 && key.starts_with("ob-"), "{key}");

    let stats = store
        .outbox_stats(t0() + Duration::minutes(10))
        .await
        .unwrap();
    assert_eq!(stats.depth, 2);
    assert_eq!(stats.oldest_age, Some(Duration::minutes(10)));
    store.mark_delivered(first, t0()).await.unwrap();
    store.mark_delivered(generated, t0()).await.unwrap();
    let stats = store.outbox_stats(t0()).await.unwrap();
    assert_eq!((stats.depth, stats.oldest_age), (0, None));
}

pub async fn rows_marked_delivered_together_are_exactly_those_named(b: &impl Backend) {
    let db = b.fresh().await;
    let store = &db.store;
    let mut ids = Vec::new();
    for text in ["a", "b", "c"] {
        ids.push(store.enqueue(dm(text, t0())).await.unwrap());
    }
    let delivered = |id: i64| async move { store.outbox_row(id).await.unwrap().delivered_at };

    store.mark_all_delivered(&[], t0()).await.unwrap();
    store
        .mark_all_delivered(&[ids[0], ids[2]], t0() + Duration::seconds(1))
        .await
        .unwrap();
    store
        .mark_all_delivered(&[ids[0]], t0() + Duration::seconds(9))
        .await
        .unwrap();

    let one_second = Some(t0() + Duration::seconds(1));
    assert_eq!(
        delivered(ids[0]).await,
        one_second,
        "marked once, at the first time"
    );
    assert_eq!(delivered(ids[1]).await, None);
    assert_eq!(delivered(ids[2]).await, one_second);
    let stats = store.outbox_stats(t0()).await.unwrap();
    assert_eq!(stats.depth, 1);
}

pub async fn rows_delivered_before_the_cutoff_are_deleted_in_batches_and_pending_ones_stay(
    b: &impl Backend,
) {
    // Arrange: four rows delivered at t0, one two days later, one pending
    // since t0.
    let db = b.fresh().await;
    let store = &db.store;
    let mut old = Vec::new();
    for text in ["a", "b", "c", "d"] {
        old.push(store.enqueue(dm(text, t0())).await.unwrap());
    }
    let recent = store.enqueue(dm("recent", t0())).await.unwrap();
    let pending = store.enqueue(dm("pending", t0())).await.unwrap();
    store.mark_all_delivered(&old, t0()).await.unwrap();
    store
        .mark_delivered(recent, t0() + Duration::days(2))
        .await
        .unwrap();

    // Act: delete what was delivered before day one, three at a time.
    let cutoff = t0() + Duration::days(1);
    let mut batches = Vec::new();
    for _ in 0..3 {
        batches.push(store.prune_delivered_outbox(cutoff, 3).await.unwrap());
    }

    // Assert
    assert_eq!(batches, [3, 1, 0]);
    for id in old {
        assert!(
            matches!(store.outbox_row(id).await, Err(StoreError::NotFound { .. })),
            "row {id} delivered at t0 is deleted"
        );
    }
    assert!(
        store
            .outbox_row(recent)
            .await
            .unwrap()
            .delivered_at
            .is_some()
    );
    assert_eq!(store.outbox_row(pending).await.unwrap().delivered_at, None);
    assert_eq!(store.outbox_stats(t0()).await.unwrap().depth, 1);
}

pub async fn scheduling_several_timers_at_once_writes_each_once_and_revives_a_cancelled_one(
    b: &impl Backend,
) {
    let db = b.fresh().await;
    let id = RequestId::parse("req-timers").unwrap();
    db.store
        .insert_grant(new_grant("req-timers", 42, t0()))
        .await
        .unwrap();
    let reminder = (ScheduleKind::Reminder, t0() + Duration::minutes(50));
    let expiry = (ScheduleKind::Expiry, t0() + Duration::hours(1));
    let pending = || async {
        let due = db.store.next_due(10).await.unwrap();
        due.iter().map(|t| (t.kind, t.due_at)).collect::<Vec<_>>()
    };

    let mut tx = db.store.begin().await.unwrap();
    tx.schedule_all(&id, &[reminder, expiry, reminder])
        .await
        .unwrap();
    tx.schedule_all(&id, &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(pending().await, vec![reminder, expiry]);

    let mut tx = db.store.begin().await.unwrap();
    tx.cancel_schedule(&id, &[ScheduleKind::Reminder], t0())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(pending().await, vec![expiry]);

    let mut tx = db.store.begin().await.unwrap();
    tx.schedule_all(&id, &[reminder, expiry]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(pending().await, vec![reminder, expiry]);
}

pub async fn a_transition_records_azures_answer_in_the_same_step(b: &impl Backend) {
    let db = b.fresh().await;
    let id = RequestId::parse("req-noted").unwrap();
    db.store
        .insert_grant(new_grant("req-noted", 42, t0()))
        .await
        .unwrap();
    let answer = serde_json::json!({"id": "jit-req-9", "requestor": "drawbridge"});
    let end = t0() + Duration::hours(2);

    let mut tx = db.store.begin().await.unwrap();
    let active = tx
        .transition_grant_noting(&id, &GrantEvent::Initiated { end }, Some(&answer), t0())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(active.azure_detail.as_ref(), Some(&answer));
    let stored = db.store.grant(&id).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.end_time),
        (GrantState::Active, Some(end))
    );
    assert_eq!(stored.azure_detail.as_ref(), Some(&answer));

    // A transition that notes nothing keeps what Azure said.
    let mut tx = db.store.begin().await.unwrap();
    tx.transition_grant(
        &id,
        &GrantEvent::ExtendRequested,
        t0() + Duration::minutes(1),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let stored = db.store.grant(&id).await.unwrap().unwrap();
    assert_eq!(stored.azure_detail, Some(answer));
}

pub async fn a_transition_from_a_grant_as_seen_rereads_it_only_when_it_changed(b: &impl Backend) {
    let db = b.fresh().await;
    let id = RequestId::parse("req-seen").unwrap();
    let InsertOutcome::Inserted(requested) = db
        .store
        .insert_grant(new_grant("req-seen", 42, t0()))
        .await
        .unwrap()
    else {
        panic!("a new request id inserts");
    };
    let end = t0() + Duration::hours(2);
    let at = |s: i64| t0() + Duration::seconds(s);

    let mut tx = db.store.begin().await.unwrap();
    let active = tx
        .transition_seen_grant(&requested, &GrantEvent::Initiated { end }, None, at(2))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(active, db.store.grant(&id).await.unwrap().unwrap());

    // Seen before it opened: the event does not apply to the grant as it is.
    let mut tx = db.store.begin().await.unwrap();
    let again = tx
        .transition_seen_grant(&requested, &GrantEvent::Initiated { end }, None, at(3))
        .await
        .unwrap_err();
    tx.rollback().await.unwrap();
    assert!(
        matches!(again, StoreError::InvalidTransition(_)),
        "{again:?}"
    );

    // Seen in its state but not as it is: answered from the grant as it is.
    let stale = Grant {
        state_changed_at: at(1),
        vm_name: "rg/stale".into(),
        ..active.clone()
    };
    let mut tx = db.store.begin().await.unwrap();
    let extending = tx
        .transition_seen_grant(&stale, &GrantEvent::ExtendRequested, None, at(4))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(extending.state, GrantState::Extending);
    assert_eq!(extending.vm_name, active.vm_name);
    assert_eq!(extending, db.store.grant(&id).await.unwrap().unwrap());
    assert_eq!(db.store.grant_transitions(&id).await.unwrap().len(), 2);
}

// ---------------------------------------------------------------- schedule

async fn grant_with_timers(db: &TestDb, id: &str, count: i64) -> RequestId {
    let request_id = RequestId::parse(id).unwrap();
    db.store
        .insert_grant(new_grant(id, 42, t0()))
        .await
        .unwrap();
    let mut tx = db.store.begin().await.unwrap();
    for i in 0..count {
        tx.schedule(
            &request_id,
            ScheduleKind::Reminder,
            t0() + Duration::seconds(i),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    request_id
}

pub async fn two_concurrent_claimers_never_get_the_same_timer(b: &impl Backend) {
    let db = b.fresh().await;
    grant_with_timers(&db, "req-s", 60).await;
    let now = t0() + Duration::minutes(5);

    // Each claimer has its own store, as two processes would.
    let claimer = |store: Store, worker: &'static str| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let items = store
                    .claim_due(now, worker, Duration::minutes(1), 3)
                    .await
                    .unwrap();
                if items.is_empty() {
                    return got;
                }
                assert!(
                    items
                        .iter()
                        .all(|i| i.claimed_by.as_deref() == Some(worker))
                );
                got.extend(items.into_iter().map(|i| i.id));
                tokio::task::yield_now().await;
            }
        })
    };
    let a = claimer(Store::open(&db.url).await.unwrap(), "worker-a");
    let b = claimer(Store::open(&db.url).await.unwrap(), "worker-b");
    let (a, b) = (a.await.unwrap(), b.await.unwrap());

    let a_set: BTreeSet<i64> = a.iter().copied().collect();
    let b_set: BTreeSet<i64> = b.iter().copied().collect();
    assert_eq!(a_set.len(), a.len());
    assert!(a_set.is_disjoint(&b_set));
    assert_eq!(a_set.len() + b_set.len(), 60);
}

pub async fn a_stale_claim_is_reclaimed_after_its_lease(b: &impl Backend) {
    let db = b.fresh().await;
    let request_id = grant_with_timers(&db, "req-t", 1).await;
    let lease = Duration::minutes(2);
    let now = t0() + Duration::seconds(10);

    assert_eq!(db.store.next_due(10).await.unwrap().len(), 1);
    let claimed = db.store.claim_due(now, "a", lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].request_id, request_id);
    assert_eq!(claimed[0].claimed_at, Some(now));
    assert!(db.store.next_due(10).await.unwrap().is_empty());

    // Within the lease nobody else gets it; after it, another worker does.
    assert!(
        db.store
            .claim_due(now + Duration::minutes(1), "b", lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let reclaimed = db
        .store
        .claim_due(now + lease, "b", lease, 10)
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].claimed_by.as_deref(), Some("b"));

    // It fires once: the second completion says it was done already.
    assert!(
        db.store
            .complete_schedule(claimed[0].id, now)
            .await
            .unwrap()
    );
    assert!(
        !db.store
            .complete_schedule(claimed[0].id, now)
            .await
            .unwrap()
    );
    assert!(
        db.store
            .claim_due(now + Duration::hours(1), "c", lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn cancelled_timers_are_not_due_and_not_due_timers_are_not_claimed(b: &impl Backend) {
    let db = b.fresh().await;
    let id = grant_with_timers(&db, "req-c", 0).await;
    let mut tx = db.store.begin().await.unwrap();
    let reminder = tx
        .schedule(&id, ScheduleKind::Reminder, t0() + Duration::minutes(110))
        .await
        .unwrap();
    let expiry = tx
        .schedule(&id, ScheduleKind::Expiry, t0() + Duration::minutes(120))
        .await
        .unwrap();
    assert_eq!(
        tx.schedule(&id, ScheduleKind::Expiry, t0() + Duration::minutes(120))
            .await
            .unwrap(),
        expiry
    );
    tx.commit().await.unwrap();

    let due: Vec<i64> = db
        .store
        .next_due(10)
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(due, [reminder, expiry]);
    assert!(
        db.store
            .claim_due(t0() + Duration::minutes(100), "a", Duration::minutes(1), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let mut tx = db.store.begin().await.unwrap();
    let cancelled = tx
        .cancel_schedule(&id, &[ScheduleKind::Reminder, ScheduleKind::Expiry], t0())
        .await
        .unwrap();
    assert!(!tx.complete_schedule(reminder, t0()).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(cancelled, 2);
    assert!(db.store.next_due(10).await.unwrap().is_empty());
    assert!(
        db.store
            .claim_due(t0() + Duration::hours(3), "a", Duration::minutes(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn pending_due_times_list_every_timer_not_fired_or_cancelled(b: &impl Backend) {
    let db = b.fresh().await;
    let id = grant_with_timers(&db, "req-p", 3).await;
    let at = |s: i64| t0() + Duration::seconds(s);
    assert_eq!(
        db.store.pending_due_times().await.unwrap(),
        [at(0), at(1), at(2)]
    );

    // Claimed still counts (it has not fired); fired and cancelled do not.
    let claimed = db
        .store
        .claim_due(at(1), "a", Duration::minutes(1), 2)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(
        db.store
            .complete_schedule(claimed[0].id, at(1))
            .await
            .unwrap()
    );
    let mut tx = db.store.begin().await.unwrap();
    let expiry = tx
        .schedule(&id, ScheduleKind::Expiry, at(60))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        db.store.pending_due_times().await.unwrap(),
        [at(1), at(2), at(60)]
    );
    let mut tx = db.store.begin().await.unwrap();
    tx.cancel_schedule(&id, &[ScheduleKind::Expiry], at(2))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db.store.pending_due_times().await.unwrap(), [at(1), at(2)]);
    assert!(!db.store.complete_schedule(expiry, at(61)).await.unwrap());
}

// ---------------------------------------------------------------- settings

pub async fn a_saved_source_round_trips_and_can_be_replaced(b: &impl Backend) {
    let db = b.fresh().await;
    let user = UserId(Snowflake::from_u64(42).unwrap());
    assert_eq!(db.store.saved_source(user).await.unwrap(), None);

    let office = SourcePrefix::parse("203.0.113.0/24").unwrap();
    db.store.save_source(user, &office, t0()).await.unwrap();
    assert_eq!(db.store.saved_source(user).await.unwrap(), Some(office));

    let host = SourcePrefix::parse("2001:db8::1").unwrap();
    db.store.save_source(user, &host, t0()).await.unwrap();
    assert_eq!(db.store.saved_source(user).await.unwrap(), Some(host));
    let other = UserId(Snowflake::from_u64(43).unwrap());
    assert_eq!(db.store.saved_source(other).await.unwrap(), None);
}

// ---------------------------------------------------------------- reconciliation

pub async fn an_azure_request_is_reported_once_and_forgotten_when_old(b: &impl Backend) {
    let db = b.fresh().await;
    let policy = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default";
    let started = Some(t0());
    assert!(!db.store.azure_request_seen("k1").await.unwrap());

    let mut tx = db.store.begin().await.unwrap();
    assert!(
        tx.remember_azure_request("k1", policy, started, 1, t0())
            .await
            .unwrap()
    );
    // The second report of the same request writes nothing and fails no
    // statement: the same transaction goes on.
    assert!(
        !tx.remember_azure_request("k1", policy, started, 2, t0())
            .await
            .unwrap()
    );
    tx.remember_azure_request("k2", policy, Some(t0() + Duration::days(2)), 3, t0())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(db.store.azure_request_seen("k1").await.unwrap());

    let mut tx = db.store.begin().await.unwrap();
    let forgotten = tx
        .forget_azure_requests(t0() + Duration::days(1))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(forgotten, 1);
    assert!(!db.store.azure_request_seen("k1").await.unwrap());
    assert!(db.store.azure_request_seen("k2").await.unwrap());
}

// ---------------------------------------------------------------- replicas

pub async fn a_lease_has_one_holder_until_it_expires_and_its_fence_grows_with_each_new_holder(
    b: &impl Backend,
) {
    let db = b.fresh().await;
    let store = &db.store;
    let ttl = Duration::seconds(30);
    let now = t0();

    let first = store.try_lease("reconcile", "a", now, ttl).await.unwrap();
    let first = first.expect("a free lease is taken");
    assert_eq!((first.holder.as_str(), first.fence), ("a", 1));
    assert_eq!(first.expires_at, now + ttl);
    // Another replica cannot take it while it runs; its holder renews it.
    let later = now + Duration::seconds(20);
    assert!(
        store
            .try_lease("reconcile", "b", later, ttl)
            .await
            .unwrap()
            .is_none()
    );
    let renewed = store
        .try_lease("reconcile", "a", later, ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((renewed.fence, renewed.acquired_at), (1, now));
    assert_eq!(renewed.expires_at, later + ttl);
    // Other leases are separate.
    assert!(
        store
            .try_lease("index_refresh", "b", later, ttl)
            .await
            .unwrap()
            .is_some()
    );

    // Once it expires (its holder died), another takes it, fenced.
    let expired = later + ttl;
    let taken = store
        .try_lease("reconcile", "b", expired, ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((taken.holder.as_str(), taken.fence), ("b", 2));
    assert!(
        store
            .try_lease("reconcile", "a", expired, ttl)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store
            .lease("reconcile", expired)
            .await
            .unwrap()
            .map(|l| l.holder),
        Some("b".to_string())
    );

    // A released lease is free at once.
    store
        .release_lease("reconcile", "b", expired)
        .await
        .unwrap();
    assert!(store.lease("reconcile", expired).await.unwrap().is_none());
    let back = store
        .try_lease("reconcile", "a", expired, ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.fence, 3);
    // Releasing someone else's lease changes nothing.
    store
        .release_lease("reconcile", "b", expired)
        .await
        .unwrap();
    assert_eq!(
        store
            .lease("reconcile", expired)
            .await
            .unwrap()
            .unwrap()
            .holder,
        "a"
    );
}

pub async fn replicas_racing_for_a_lease_get_exactly_one_holder(b: &impl Backend) {
    let db = b.fresh().await;
    let other = Store::open(&db.url).await.unwrap();
    // Each round, six replicas race for the lease at once; a round starts
    // when the last one's lease has run out.
    for round in 0..5 {
        let at = t0() + Duration::minutes(round);
        let mut tasks = Vec::new();
        for r in 0..6 {
            let store = if r % 2 == 0 {
                db.store.clone()
            } else {
                other.clone()
            };
            tasks.push(tokio::spawn(async move {
                let holder = format!("round-{round}-replica-{r}");
                let got = store
                    .try_lease("outbox_audit", &holder, at, Duration::seconds(30))
                    .await
                    .unwrap();
                got.map(|l| (holder, l.fence))
            }));
        }
        let mut won = Vec::new();
        for task in tasks {
            won.extend(task.await.unwrap());
        }
        assert_eq!(won.len(), 1, "round {round}: {won:?}");
        assert_eq!(won[0].1, round + 1, "one new fence per new holder");
    }
}

pub async fn outbox_claims_split_rows_between_replicas_and_a_dead_replicas_claims_run_out(
    b: &impl Backend,
) {
    let db = b.fresh().await;
    let store = &db.store;
    let now = t0() + Duration::minutes(1);
    let claim = Duration::seconds(15);
    for i in 0..6 {
        store.enqueue(dm(&format!("dm {i}"), t0())).await.unwrap();
    }
    store.append_audit(&event(1)).await.unwrap();
    store.append_audit(&event(2)).await.unwrap();

    // Replica a, holding the audit stream, claims four DMs and both audit rows.
    let a = store
        .claim_outbox_batch(now, "a", claim, true, 4)
        .await
        .unwrap();
    let dms_a: Vec<i64> = a
        .iter()
        .filter(|r| r.kind == OutboxKind::Dm)
        .map(|r| r.id)
        .collect();
    let audit_a: Vec<&str> = a
        .iter()
        .filter(|r| r.kind == OutboxKind::AuditChannel)
        .map(|r| r.idempotency_key.as_str())
        .collect();
    assert_eq!((dms_a.len(), audit_a), (4, vec!["audit-1", "audit-2"]));
    assert!(a.windows(2).all(|w| w[0].id < w[1].id), "in id order");
    // Replica b, without it, gets the two other DMs and no audit row.
    let b_rows = store
        .claim_outbox_batch(now, "b", claim, false, 10)
        .await
        .unwrap();
    let dms_b: Vec<i64> = b_rows.iter().map(|r| r.id).collect();
    assert_eq!(dms_b.len(), 2);
    assert!(b_rows.iter().all(|r| r.kind == OutboxKind::Dm));
    assert!(dms_b.iter().all(|id| !dms_a.contains(id)));
    assert!(
        store
            .claim_outbox_batch(now, "b", claim, false, 10)
            .await
            .unwrap()
            .is_empty()
    );
    for id in &dms_b {
        store.mark_delivered(*id, now).await.unwrap();
    }

    // a delivers one and fails one (the failure frees it for whoever is
    // next when it is due); then a dies. Its other claims run out.
    store.mark_delivered(dms_a[0], now).await.unwrap();
    store
        .mark_failed(dms_a[1], "HTTP 500", now + Duration::seconds(5))
        .await
        .unwrap();
    let before_expiry = now + Duration::seconds(10);
    let got = store
        .claim_outbox_batch(before_expiry, "b", claim, false, 10)
        .await
        .unwrap();
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), [dms_a[1]]);
    let after_expiry = now + claim;
    let got = store
        .claim_outbox_batch(after_expiry, "b", claim, false, 10)
        .await
        .unwrap();
    let mut taken: Vec<i64> = got.iter().map(|r| r.id).collect();
    taken.sort_unstable();
    assert_eq!(taken, dms_a[2..]);
}

/// An edit (`kind`) of the message `target`, keyed `key`.
fn edit(kind: OutboxKind, target: &str, key: &str) -> OutboxMessage {
    OutboxMessage {
        kind,
        target: Some(target.into()),
        payload: serde_json::json!({"message": key}),
        idempotency_key: Some(key.into()),
        created_at: t0(),
    }
}

fn ids(rows: &[drawbridge::store::OutboxRow]) -> Vec<i64> {
    rows.iter().map(|r| r.id).collect()
}

// An edit carries the whole message: an older one sent after a newer one
// (its retry, or another replica's send) would show a state that is over.
pub async fn edits_of_one_message_go_one_at_a_time_and_a_stale_one_is_never_sent(b: &impl Backend) {
    let db = b.fresh().await;
    let store = &db.store;
    let now = t0() + Duration::minutes(1);
    let claim = Duration::seconds(15);
    let card = OutboxKind::MessageEdit;
    let first = store.enqueue(edit(card, "req-x", "cx-1")).await.unwrap();
    let other_card = store.enqueue(edit(card, "req-y", "cy-1")).await.unwrap();
    let a = store
        .claim_outbox_batch(now, "a", claim, false, 10)
        .await
        .unwrap();
    assert_eq!(ids(&a), [first, other_card]);
    store.mark_delivered(other_card, now).await.unwrap();

    // While replica a sends card x's first edit, its second is written, and
    // an edit of request x's reply (another message).
    let second = store.enqueue(edit(card, "req-x", "cx-2")).await.unwrap();
    let reply = store
        .enqueue(edit(OutboxKind::InteractionEdit, "req-x", "rx-1"))
        .await
        .unwrap();
    let b_rows = store
        .claim_outbox_batch(now, "b", claim, false, 10)
        .await
        .unwrap();
    assert_eq!(ids(&b_rows), [reply], "the second edit waits for the first");
    store.mark_delivered(reply, now).await.unwrap();

    // a's send fails. Its retry would come after the second edit: it is
    // dropped instead, and the second edit goes.
    store
        .mark_failed(first, "HTTP 500", now + Duration::seconds(1))
        .await
        .unwrap();
    let later = now + Duration::seconds(2);
    let got = store
        .claim_outbox_batch(later, "b", claim, false, 10)
        .await
        .unwrap();
    assert_eq!(ids(&got), [second]);
    let stale = store.outbox_row(first).await.unwrap();
    assert_eq!(stale.delivered_at, Some(later), "{stale:?}");
    assert!(
        stale
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("superseded")),
        "{stale:?}"
    );
    store.mark_delivered(second, later).await.unwrap();
    let much_later = later + Duration::hours(2);
    assert!(
        store
            .claim_outbox_batch(much_later, "c", claim, false, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.outbox_stats(much_later).await.unwrap().depth, 0);

    // Two edits of one message waiting together: only the newer is sent.
    let third = store.enqueue(edit(card, "req-x", "cx-3")).await.unwrap();
    let fourth = store.enqueue(edit(card, "req-x", "cx-4")).await.unwrap();
    let got = store
        .claim_outbox_batch(much_later, "c", claim, false, 10)
        .await
        .unwrap();
    assert_eq!(ids(&got), [fourth]);
    assert!(
        store
            .outbox_row(third)
            .await
            .unwrap()
            .delivered_at
            .is_some()
    );
}

pub async fn concurrent_outbox_claimers_never_get_the_same_row(b: &impl Backend) {
    let db = b.fresh().await;
    for i in 0..60 {
        db.store
            .enqueue(dm(&format!("dm {i}"), t0()))
            .await
            .unwrap();
    }
    let other = Store::open(&db.url).await.unwrap();
    let now = t0() + Duration::minutes(1);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = if w % 2 == 0 {
            db.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            let worker = format!("w{w}");
            let mut mine = Vec::new();
            loop {
                let rows = store
                    .claim_outbox_batch(now, &worker, Duration::seconds(15), false, 7)
                    .await
                    .unwrap();
                if rows.is_empty() {
                    break mine;
                }
                mine.extend(rows.into_iter().map(|r| r.id));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let distinct: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!((all.len(), distinct.len()), (60, 60));
}

// ---------------------------------------------------------------- migrate-store

/// A SQLite database with a bit of everything: the kind `drawbridge
/// migrate-store` moves onto the backend under test.
async fn busy_sqlite() -> TestDb {
    let db = super::backend::Sqlite.fresh().await;
    let store = &db.store;
    store
        .import_mappings(&[mapping("alpha", "web-*", "2h")], "cli", t0())
        .await
        .unwrap();
    grant_with_timers(&db, "req-copy", 3).await;
    let id = RequestId::parse("req-copy").unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.transition_grant(
        &id,
        &GrantEvent::Initiated {
            end: t0() + Duration::hours(1),
        },
        t0(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    store.enqueue(dm("hello", t0())).await.unwrap();
    append_n(store, 25).await;
    db
}

pub async fn a_sqlite_database_copies_into_a_new_one_with_its_audit_chain_verified(
    b: &impl Backend,
) {
    let source = busy_sqlite().await;
    let target = b.fresh().await;

    let report = source.store.copy_into(&target.store).await.unwrap();

    // Every row is there, and the chain verifies with the source's head.
    let rows = |name: &str| {
        report
            .tables
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, n)| *n)
    };
    let (head, _) = source.store.audit_head().await.unwrap();
    assert_eq!(rows("audit_log"), Some(head as u64));
    assert_eq!(report.audit_verified, head as u64);
    assert_eq!(report.head, source.store.audit_head().await.unwrap());
    assert_eq!(rows("grants"), Some(1));
    assert_eq!(rows("schedule"), Some(3));
    assert_eq!(rows("grant_transitions"), Some(1));
    assert_eq!(rows("mappings"), Some(1));
    let outbox = head as u64 + 1;
    assert_eq!(rows("outbox"), Some(outbox));
    assert!(
        rows("leases").is_none(),
        "leases stay with the old replicas"
    );
    let id = RequestId::parse("req-copy").unwrap();
    assert_eq!(
        target.store.grant(&id).await.unwrap(),
        source.store.grant(&id).await.unwrap()
    );
    assert_eq!(
        target
            .store
            .list_mappings(&PortAliases::default())
            .await
            .unwrap(),
        source
            .store
            .list_mappings(&PortAliases::default())
            .await
            .unwrap()
    );
    assert_eq!(
        target.store.next_due(10).await.unwrap(),
        source.store.next_due(10).await.unwrap()
    );

    // The copy is a working database: the chain and the ids go on.
    let next = target.store.append_audit(&event(99)).await.unwrap();
    assert_eq!(next.seq, head + 1);
    let new_row = target.store.enqueue(dm("after", t0())).await.unwrap();
    assert!(new_row > outbox as i64, "{new_row}");
    assert!(target.store.verify_audit().await.unwrap().is_intact());

    // A second copy into the same, no longer empty, database is refused.
    match source.store.copy_into(&target.store).await.unwrap_err() {
        StoreError::InvalidInput(message) => assert!(message.contains("not empty"), "{message}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}
