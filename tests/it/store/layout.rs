//! The store's database driver stays inside the store's backend module: the
//! rest of the crate speaks [`drawbridge::store::Store`] only, so adding a
//! backend changes no caller.

use std::path::{Path, PathBuf};

/// The only source files that may name a driver's types.
const BACKEND_FILES: [&str; 3] = [
    "src/store/backend.rs",
    "src/store/backend/postgres.rs",
    "src/store/backend/sqlite.rs",
];

/// What names sqlx's drivers: SQLite's types (`Sqlite`, `SqlitePool`,
/// `SqliteExecutor`, `SqliteConnectOptions`, …), PostgreSQL's (`PgPool`,
/// `PgConnectOptions`, `PgTx`, …) and their module paths.
const DRIVER_NAMES: [&str; 6] = [
    "Sqlite",
    "sqlx::sqlite",
    "sqlx::postgres",
    "PgPool",
    "PgConnect",
    "PgTx",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `path:line: text` for every line of `file` that names the driver.
fn driver_lines(root: &Path, file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("read source");
    let relative = file.strip_prefix(root).unwrap().display().to_string();
    text.lines()
        .enumerate()
        .filter(|(_, line)| DRIVER_NAMES.iter().any(|name| line.contains(name)))
        .map(|(i, line)| format!("{relative}:{}: {}", i + 1, line.trim()))
        .collect()
}

#[test]
fn no_driver_type_appears_outside_the_store_backend() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let (backend, others): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| {
        BACKEND_FILES
            .iter()
            .any(|allowed| f.strip_prefix(root).is_ok_and(|r| r == Path::new(allowed)))
    });

    let leaks: Vec<String> = others.iter().flat_map(|f| driver_lines(root, f)).collect();
    assert!(
        leaks.is_empty(),
        "sqlx's driver types belong in {BACKEND_FILES:?} only; found:\n{}",
        leaks.join("\n")
    );
    // The check looks where the driver really is: it cannot pass because the
    // backend moved and nothing matched.
    assert_eq!(backend.len(), BACKEND_FILES.len(), "{backend:?}");
    for file in &backend {
        assert!(!driver_lines(root, file).is_empty(), "{}", file.display());
    }
}
