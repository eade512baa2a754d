//! `drawbridge demo` as a user runs it: the real binary, a script on stdin.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `drawbridge demo` with `script` on stdin; returns (exit code, stdout).
pub(crate) fn run_demo(script: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drawbridge"))
        .arg("demo")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("the script is written");
    // stdin is dropped here: end of input.
    let started = Instant::now();
    while child.try_wait().expect("waitable").is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the demo did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn position(haystack: &str, needle: &str) -> usize {
    haystack
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` is missing from:\n{haystack}"))
}

#[test]
fn the_demo_grants_denies_reminds_and_expires_from_a_script() {
    // Arrange
    let script = "\
:as sre
/jit ssh web-01 2h
:as dev
/jit ssh ops-01 2h
:advance 1h55m
:advance 10m
";

    // Act
    let (code, out, err) = run_demo(script);

    // Assert
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let grant = position(
        &out,
        "[reply → Sam (SRE), only they see it] [ok] Access granted: ssh (22) on rg-web/web-01",
    );
    let opened = position(
        &out,
        "] [ok] Port opened — Who: @Sam (SRE) · Target: rg-web/web-01",
    );
    let denial = position(
        &out,
        "[reply → Dana (developer), only they see it] [denied] Access denied",
    );
    let reason = position(&out, "the duration is over your maximum of 1h for this VM");
    let denied_audit = position(&out, "] [denied] Access denied — Who: @Dana (developer)");
    let reminder = position(
        &out,
        "[DM → Sam (SRE)] [!] Closing in 10m: ssh (22) on rg-web/web-01",
    );
    let reminder_audit = position(
        &out,
        "] [i] Reminder sent — Who: system · Target: rg-web/web-01",
    );
    let expiry = position(
        &out,
        "[DM → Sam (SRE)] [i] Expired: ssh (22) on rg-web/web-01",
    );
    let expiry_audit = position(
        &out,
        "] [i] Access expired — Who: system · Target: rg-web/web-01",
    );
    assert!(grant < opened && opened < denial, "{out}");
    assert!(denial < reason && reason < denied_audit, "{out}");
    assert!(
        denied_audit < reminder && reminder < reminder_audit,
        "{out}"
    );
    assert!(reminder_audit < expiry && expiry < expiry_audit, "{out}");
    assert!(
        !out.contains("was not running when the window ended"),
        "the expiry fired on time:\n{out}"
    );
    assert!(
        out.contains("rg-web/web-01 closed for @Sam (SRE) at "),
        "the audit line reads as a sentence:\n{out}"
    );
    assert!(
        !out.contains("<t:"),
        "times are rendered for the terminal:\n{out}"
    );
    assert!(!out.contains("error:"), "{out}");
}

#[test]
fn the_demo_explains_mistakes_and_keeps_going() {
    let (code, out, err) = run_demo(
        ":help\n/jit ssh\n:as nobody\n:advance soon\n/jit-admin explain web-01 ssh 2h user:dev\n:as admin\n/jit-admin explain web-01 ssh 2h user:dev\n:quit\n/jit-status\n",
    );
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("/jit port vm duration [reason] [from]"),
        "{out}"
    );
    assert!(out.contains("error: vm is missing"), "{out}");
    assert!(out.contains("error: :as sre|dev|admin|lead"), "{out}");
    assert!(out.contains("error: `soon` is not a duration"), "{out}");
    assert!(
        out.contains("[denied] Not allowed"),
        "only admins may explain:\n{out}"
    );
    assert!(out.contains("[denied] Would be denied"), "{out}");
    assert!(
        !out.contains("admin> /jit-status"),
        ":quit stops reading:\n{out}"
    );
}
