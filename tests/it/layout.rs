//! The layout holds: the use cases see Azure only through their port, in
//! domain terms; a VM is resolved in one place; the bot goes through the
//! use cases. Checked on the source text, so a change that breaks the
//! layout fails here instead of in review.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir` (or `dir` itself plus its `dir.rs`
/// sibling), with its text.
fn rust_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let sibling = dir.with_extension("rs");
    if sibling.is_file() {
        out.push((sibling.clone(), std::fs::read_to_string(&sibling).unwrap()));
    }
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    assert!(!out.is_empty(), "no Rust files under {}", dir.display());
    out
}

fn offenders(files: &[(PathBuf, String)], needle: &str) -> Vec<String> {
    files
        .iter()
        .flat_map(|(path, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, line)| line.contains(needle))
                .map(move |(n, line)| format!("{}:{}: {}", path.display(), n + 1, line.trim()))
        })
        .collect()
}

#[test]
fn the_use_cases_import_nothing_from_the_azure_adapter() {
    let service = rust_files(&src().join("service"));
    for needle in ["azure::", "ArmError", "wire::"] {
        let found = offenders(&service, needle);
        assert!(
            found.is_empty(),
            "src/service must reach Azure only through its JitPort, in domain types; `{needle}` in:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn a_vm_is_resolved_in_one_place() {
    // Outside the adapter (which implements the port over its index), the
    // port's `resolve` is called once, and only that place reads its
    // not-found answer.
    let outside_azure: Vec<_> = rust_files(&src())
        .into_iter()
        .filter(|(path, _)| !path.starts_with(src().join("azure")))
        .collect();
    let calls: Vec<String> = [".resolve(", "::resolve("]
        .iter()
        .flat_map(|n| offenders(&outside_azure, n))
        .collect();
    assert_eq!(
        calls.len(),
        1,
        "expected one call of resolve, found:\n{}",
        calls.join("\n")
    );
    assert!(
        calls[0].contains("service/phases/resolve.rs"),
        "resolve is called outside the resolve phase: {}",
        calls[0]
    );
    let readers: Vec<String> = offenders(&outside_azure, "NotUnderJit")
        .into_iter()
        .filter(|l| !l.contains("service/jit_port.rs"))
        .collect();
    assert!(
        readers
            .iter()
            .all(|l| l.contains("service/phases/resolve.rs")),
        "the port's lookup errors are read outside the resolve phase:\n{}",
        readers.join("\n")
    );
}

#[test]
fn the_bot_reads_nothing_itself_and_leaves_admin_checks_to_the_use_cases() {
    let bot = rust_files(&src().join("service").join("bot"));
    for needle in [".store()", "is_admin(", "admin_roles"] {
        let found = offenders(&bot, needle);
        assert!(
            found.is_empty(),
            "the bot must go through the use cases; `{needle}` in:\n{}",
            found.join("\n")
        );
    }
}
