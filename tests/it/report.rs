//! Issue 16, the weekly picture: `drawbridge report` draws a seeded week
//! into a PNG (checked by size and a few pixels) and a CSV, and prints the
//! summary.
//!
//! `DRAWBRIDGE_WRITE_DOCS=1 cargo test --test it report_` also writes the
//! picture to docs/weekly-report.png, the one the README shows.

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, Duration, Utc};
use drawbridge::domain::{AuditAction, AuditEvent, Outcome};
use drawbridge::report::{GROUP_COLOURS, HEAT_FULL, HEIGHT, WIDTH};
use drawbridge::store::Store;

/// Members, with their user ids.
const MEMBERS: [(&str, u64); 4] = [
    ("sam", 330_000_000_000_000_001),
    ("dana", 330_000_000_000_000_002),
    ("alex", 330_000_000_000_000_003),
    ("lee", 330_000_000_000_000_004),
];

/// One seeded grant: member index, VM, days before now, start hour, hours
/// asked, state, and for an early close the hours it was held.
type Seed = (
    usize,
    &'static str,
    i64,
    u32,
    i64,
    &'static str,
    Option<i64>,
);

const WEEK: &[Seed] = &[
    (0, "rg-web/web-01", 6, 9, 2, "expired", None),
    (1, "rg-web/web-02", 6, 10, 1, "expired", None),
    (0, "rg-data/db-01", 5, 14, 1, "closed_early", Some(0)),
    (2, "rg-web/web-01", 5, 9, 3, "expired", None),
    (3, "rg-prod/win-07", 4, 8, 4, "expired", None),
    (0, "rg-web/web-03", 4, 13, 2, "expired", None),
    (1, "rg-data/db-01", 3, 9, 1, "expired", None),
    (1, "rg-web/web-01", 3, 11, 2, "failed", None),
    (2, "rg-prod/win-07", 2, 16, 2, "closed_early", Some(1)),
    (0, "rg-web/web-01", 1, 9, 3, "expired", None),
    (3, "rg-web/web-04", 1, 10, 1, "expired", None),
    (0, "rg-web/web-02", 0, 0, 1, "expired", None),
];

/// The seeded week's first day, so that every seed lands inside it.
fn seed_time(now: DateTime<Utc>, days_ago: i64, hour: u32) -> DateTime<Utc> {
    let day = (now - Duration::days(days_ago)).date_naive();
    day.and_hms_opt(hour, 5, 0)
        .unwrap()
        .and_utc()
        .min(now - Duration::hours(2))
}

async fn seed(db: &Path, now: DateTime<Utc>) {
    let store = Store::open(&format!("sqlite://{}", db.display()))
        .await
        .expect("database opens");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    for (i, &(member, vm, days_ago, hour, hours, state, held)) in WEEK.iter().enumerate() {
        let (name, user) = MEMBERS[member];
        let at = seed_time(now, days_ago, hour);
        let request_id = format!("{}", 1_400_000_000_000_000_000u64 + i as u64);
        let end = (state != "failed").then(|| at + Duration::hours(hours));
        let changed = held.map_or(at, |h| at + Duration::minutes(h * 60 + 30));
        let (rg, vm_name) = vm.split_once('/').unwrap();
        sqlx::query(
            "INSERT INTO grants (request_id, user_id, vm_id, vm_name, policy_id, ports, source,
             duration_minutes, mapping, state, requested_at, end_time, state_changed_at)
             VALUES ($1, $2, $3, $4, 'policy', '22', '203.0.113.7', $5, 'sre', $6, $7, $8, $9)",
        )
        .bind(&request_id)
        .bind(user.to_string())
        .bind(format!(
            "/subscriptions/s/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm_name}"
        ))
        .bind(vm)
        .bind(hours * 60)
        .bind(state)
        .bind(drawbridge::domain::audit::format_time(at))
        .bind(end.map(drawbridge::domain::audit::format_time))
        .bind(drawbridge::domain::audit::format_time(changed))
        .execute(&pool)
        .await
        .expect("a seeded grant");
        let received = AuditEvent::new(
            at,
            format!("discord:{user}"),
            AuditAction::RequestReceived,
            vm,
            Outcome::Info,
        )
        .with_detail(serde_json::json!({"request_id": request_id, "user": name}));
        store.append_audit(&received).await.unwrap();
    }
    for days_ago in [5, 2, 2] {
        let denied = AuditEvent::new(
            seed_time(now, days_ago, 12),
            format!("discord:{}", MEMBERS[2].1),
            AuditAction::AccessDenied,
            "rg-data/db-01",
            Outcome::Denied,
        );
        store.append_audit(&denied).await.unwrap();
    }
    for days_ago in [4, 1] {
        let skipped = AuditEvent::new(
            seed_time(now, days_ago, 3),
            format!("discord:{}", MEMBERS[3].1),
            AuditAction::BreakGlassUsed,
            "rg-prod/win-07",
            Outcome::Success,
        );
        store.append_audit(&skipped).await.unwrap();
    }
    pool.close().await;
    store.close().await;
}

fn pixel(data: &[u8], x: u32, y: u32) -> [u8; 3] {
    let i = ((y * WIDTH + x) * 3) as usize;
    [data[i], data[i + 1], data[i + 2]]
}

#[tokio::test]
async fn report_draws_the_seeded_week_into_a_png_and_a_csv() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("week.db");
    // The week up to yesterday's end: every seed, today's too, lies wholly
    // in the past whatever the time of day the test runs.
    let yesterday = Utc::now().date_naive().pred_opt().unwrap();
    let end = yesterday
        .and_hms_micro_opt(23, 59, 59, 999_999)
        .unwrap()
        .and_utc();
    seed(&db, end).await;
    let png = dir.path().join("report.png");
    let csv = dir.path().join("report.csv");

    // Act
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["report", "--since", "7d", "--until"])
        .arg(yesterday.to_string())
        .arg("--out")
        .arg(&png)
        .arg("--csv")
        .arg(&csv)
        .arg(&db)
        .env_clear()
        .output()
        .expect("the binary runs");

    // Assert: the summary
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": 11 grants,"), "{stdout}");
    assert!(stdout.contains("3 denials"), "{stdout}");
    assert!(stdout.contains("2 break-glass uses"), "{stdout}");
    assert!(stdout.contains("Longest held: sam"), "{stdout}");

    // the picture: its size, the white background, a bar in the first
    // group's colour, and the heat map's hottest cell
    let file = std::fs::File::open(&png).expect("the PNG was written");
    let mut reader = png::Decoder::new(file).read_info().expect("a PNG");
    let mut data = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut data).expect("one frame");
    assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(pixel(&data, 3, 3), [255, 255, 255]);
    let count = |colour: [u8; 3]| {
        (0..HEIGHT)
            .flat_map(|y| (0..WIDTH).map(move |x| (x, y)))
            .filter(|&(x, y)| pixel(&data, x, y) == colour)
            .count()
    };
    let first_group = GROUP_COLOURS[0];
    assert!(
        count([first_group.0, first_group.1, first_group.2]) > 500,
        "grant bars are drawn"
    );
    assert!(
        count([HEAT_FULL.0, HEAT_FULL.1, HEAT_FULL.2]) > 500,
        "the hottest cell is drawn"
    );
    // No empty column after the last day: today's bar (rg-web, the third
    // group) reaches the right end of the chart.
    let today = GROUP_COLOURS[2];
    let near_right_edge = (WIDTH - 60..WIDTH - 20)
        .flat_map(|x| (100..400).map(move |y| (x, y)))
        .any(|(x, y)| pixel(&data, x, y) == [today.0, today.1, today.2]);
    assert!(
        near_right_edge,
        "the last day's bar ends at the chart's edge"
    );
    // No empty row above the first member nor column after Sunday: the
    // heat map's cells reach the top and the right of its area.
    let cell_at = |x: u32, y: u32| pixel(&data, x, y) != [255, 255, 255];
    assert!(
        (510..540).any(|y| cell_at(400, y)),
        "the first member's row is at the top"
    );
    assert!(
        (770..800).any(|x| cell_at(x, 700)),
        "Sunday's column is at the right"
    );

    // the numbers
    let csv = std::fs::read_to_string(&csv).expect("the CSV was written");
    assert!(csv.starts_with("kind,key,when,value\n"), "{csv}");
    assert!(csv.contains("hours_open,sam,"), "{csv}");
    assert!(csv.contains("denials,,,3"), "{csv}");
    assert!(csv.contains("break_glass,,,2"), "{csv}");

    if std::env::var_os("DRAWBRIDGE_WRITE_DOCS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/weekly-report.png");
        std::fs::copy(&png, docs).expect("docs/weekly-report.png written");
    }
}

#[test]
fn report_refuses_a_period_that_is_not_whole_days() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .args(["report", "--since", "36h"])
        .arg(dir.path().join("none.db"))
        .env_clear()
        .output()
        .expect("the binary runs");

    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--since: `36h` is not a number of days"),
        "{stderr}"
    );
}
