//! The README's demo is true: every command it suggests works for the
//! member it names, and its transcript is what the demo prints.

use crate::demo::run_demo;

const README: &str = include_str!("../../README.md");

/// The README's "### The demo" section.
fn demo_section() -> &'static str {
    let start = README
        .find("### The demo")
        .expect("the README has a demo section");
    let rest = &README[start..];
    let end = rest[4..].find("\n## ").map_or(rest.len(), |e| e + 4);
    &rest[..end]
}

/// The `| as | command |` rows: (member, command).
fn suggested_commands() -> Vec<(String, String)> {
    demo_section()
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 2, "a row is `| member | command |`: {l}");
            let cell = |i: usize| cells[i].trim().trim_matches('`').to_owned();
            (cell(0), cell(1))
        })
        .collect()
}

/// What the demo printed after echoing `member> command`, up to the next
/// echoed line.
fn answer_to(out: &str, member: &str, command: &str) -> String {
    let echo = format!("{member}> {command}");
    let mut lines = out.lines().skip_while(|l| *l != echo);
    assert!(lines.next().is_some(), "`{echo}` is not echoed:\n{out}");
    let is_echo = |l: &str| {
        ["sre> ", "dev> ", "admin> ", "lead> "]
            .iter()
            .any(|p| l.starts_with(p))
    };
    lines
        .take_while(|l| !is_echo(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_command_the_readme_suggests_works_for_the_member_it_names() {
    // Arrange
    let commands = suggested_commands();
    assert!(commands.len() >= 5, "the table was found: {commands:?}");
    let script: String = commands
        .iter()
        .map(|(member, command)| format!(":as {member}\n{command}\n"))
        .collect();

    // Act
    let (code, out, err) = run_demo(&script);

    // Assert
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for (member, command) in &commands {
        let answer = answer_to(&out, member, command);
        let reply = answer
            .lines()
            .find(|l| l.starts_with("[reply → "))
            .unwrap_or_else(|| panic!("`{command}` as {member} got no reply:\n{answer}"));
        for bad in ["[denied]", "[error]"] {
            assert!(
                !reply.contains(bad),
                "`{command}` as {member} failed:\n{answer}"
            );
        }
        assert!(
            !answer.contains("error:"),
            "`{command}` as {member}:\n{answer}"
        );
    }
}

/// The piped script of the README's `printf '…' | … demo` example.
fn readme_script() -> String {
    let section = demo_section();
    let start = section.find("printf '").expect("a printf example") + "printf '".len();
    let script = &section[start..];
    let script = &script[..script.find('\'').expect("the script ends")];
    script.replace("\\n", "\n")
}

/// The ```text block after the printf example: the transcript.
fn readme_transcript() -> Vec<&'static str> {
    let section = demo_section();
    let example = section.find("printf '").expect("a printf example");
    let rest = &section[example..];
    let start = rest.find("```text\n").expect("a transcript block") + "```text\n".len();
    let block = &rest[start..];
    block[..block.find("```").expect("the block ends")]
        .lines()
        .collect()
}

/// `line` matches `pattern`, where each `…` in the pattern stands for any
/// text (times, ports and ids differ from run to run).
fn matches(pattern: &str, line: &str) -> bool {
    let mut pieces = pattern.split('…');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(i) => rest = &rest[i + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[test]
fn the_readme_transcript_is_what_the_demo_prints() {
    // Arrange
    let script = readme_script();
    let transcript = readme_transcript();

    // Act
    let (code, out, err) = run_demo(&script);

    // Assert
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    let printed: Vec<&str> = out.lines().collect();
    assert_eq!(
        transcript.len(),
        printed.len(),
        "the README transcript has {} lines, the demo printed {}:\n{out}",
        transcript.len(),
        printed.len()
    );
    for (want, got) in transcript.iter().zip(&printed) {
        assert!(
            matches(want, got),
            "README: {want}\ndemo:   {got}\nwhole output:\n{out}"
        );
    }
}

#[test]
fn an_ellipsis_in_the_transcript_stands_for_any_text() {
    assert!(matches("at …:… now", "at 10:45 now"));
    assert!(matches("a", "a"));
    assert!(!matches("a", "ab"));
    assert!(!matches("a…c", "abd"));
    assert!(matches("a…", "abd"));
}
