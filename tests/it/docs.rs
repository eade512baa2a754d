//! The operator docs stay true: the configuration reference in
//! docs/operations.md lists every key of config/default.toml with its
//! default, and nothing else.

use std::collections::BTreeMap;

const DOCS: &str = include_str!("../../docs/operations.md");
const DEFAULTS: &str = include_str!("../../config/default.toml");

/// Leaf keys of a TOML table (an empty table is a leaf: `ports.aliases`).
fn leaves(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if !t.is_empty() => leaves(&key, t, out),
            v => {
                out.insert(key, v.clone());
            }
        }
    }
}

/// Keys documented in default.toml only as comments (`# key = ""` or
/// `# key: set …`): they have no default.
fn commented_keys() -> Vec<String> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in DEFAULTS.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let Some(comment) = line.strip_prefix('#') else {
            continue;
        };
        let comment = comment.trim_start();
        let end = comment
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(comment.len());
        let (word, rest) = comment.split_at(end);
        let rest = rest.trim_start();
        if !word.is_empty() && (rest.starts_with('=') || rest.starts_with(':')) {
            keys.push(format!("{section}.{word}"));
        }
    }
    keys
}

/// Rows of the reference table: key → default cell (without backticks).
fn documented() -> BTreeMap<String, String> {
    let start = DOCS
        .find("## 4. Configuration reference")
        .expect("the section exists");
    let section = &DOCS[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut rows = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let key = cells[0]
            .trim_start_matches("| ")
            .trim_matches('`')
            .to_owned();
        let default = cells[1].trim().trim_matches('`').to_owned();
        assert!(
            rows.insert(key.clone(), default).is_none(),
            "{key} is documented twice"
        );
    }
    rows
}

#[test]
fn every_configuration_key_is_documented_with_its_default() {
    let table: toml::Table = DEFAULTS.parse().expect("default.toml parses");
    let mut defaults = BTreeMap::new();
    leaves("", &table, &mut defaults);
    let unset = commented_keys();
    let docs = documented();

    let mut expected: Vec<String> = defaults
        .keys()
        .cloned()
        .chain(unset.iter().cloned())
        .collect();
    expected.sort();
    expected.dedup();
    let listed: Vec<String> = docs.keys().cloned().collect();
    assert_eq!(
        listed, expected,
        "docs/operations.md §4 and config/default.toml list different keys"
    );

    for (key, value) in &defaults {
        let cell = &docs[key];
        let parsed: toml::Table = format!("v = {cell}")
            .parse()
            .unwrap_or_else(|e| panic!("{key}: the documented default `{cell}` is not TOML: {e}"));
        assert_eq!(
            &parsed["v"], value,
            "{key}: documented default differs from default.toml"
        );
    }
    for key in unset.iter().filter(|k| !defaults.contains_key(*k)) {
        assert_eq!(docs[key], "unset", "{key} has no default in default.toml");
    }
}

/// Every key the configuration knows: default.toml's leaves and its
/// commented keys.
fn known_keys() -> Vec<String> {
    let table: toml::Table = DEFAULTS.parse().expect("default.toml parses");
    let mut defaults = BTreeMap::new();
    leaves("", &table, &mut defaults);
    defaults.into_keys().chain(commented_keys()).collect()
}

/// Backticked spans of `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn every_configuration_key_the_operator_guide_names_exists() {
    let known = known_keys();
    let sections = [
        "discord",
        "http",
        "ops",
        "azure",
        "database",
        "reminders",
        "ports",
        "logging",
    ];
    let mut unknown = Vec::new();
    for span in code_spans(DOCS) {
        let Some((section, rest)) = span.split_once('.') else {
            continue;
        };
        let is_key = sections.contains(&section)
            && !rest.is_empty()
            && rest
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
        if !is_key {
            continue;
        }
        let key = span.to_owned();
        let under_a_table = known
            .iter()
            .any(|k| k == &key || key.starts_with(&format!("{k}.")));
        if !under_a_table {
            unknown.push(key);
        }
    }
    assert!(
        unknown.is_empty(),
        "docs/operations.md names keys that do not exist: {unknown:?}"
    );
}

/// `drawbridge <command> …` as the docs show it: in code spans, and in lines
/// without spans (code blocks); after `docker exec drawbridge`, the last.
fn documented_commands(text: &str) -> Vec<String> {
    let spans = code_spans(text).into_iter();
    let lines = text.lines().filter(|l| !l.contains('`'));
    spans
        .chain(lines)
        .filter_map(|s| {
            let start = s
                .match_indices("drawbridge ")
                .map(|(i, _)| i)
                .filter(|i| s[i + 11..].starts_with(|c: char| c.is_ascii_lowercase()))
                .last()?;
            Some(s[start..].replace("\\|", "|"))
        })
        .collect()
}

/// Words of a documented command line, with `[optional]` parts opened and
/// `a|b` alternatives cut to the first (and, where two alternations follow
/// each other, as in `list|import FILE|export`, cut there).
fn words(command: &str) -> Vec<String> {
    let opened = command.replace(['[', ']'], " ");
    let mut out = Vec::new();
    let mut after_alternation = false;
    for word in opened.split_whitespace() {
        let shell = [">", ">>", "2>", "#", "&&", ";", "||"];
        if word == "\\" || shell.contains(&word) || (after_alternation && word.contains('|')) {
            break;
        }
        after_alternation = word.contains('|');
        out.push(word.split('|').next().unwrap_or(word).to_owned());
    }
    out
}

#[test]
fn every_command_and_flag_the_docs_use_parses() {
    use clap::Parser as _;
    use clap::error::ErrorKind;
    let readme = include_str!("../../README.md");
    let mut checked = 0;
    for text in [DOCS, readme] {
        for command in documented_commands(text) {
            let words = words(&command);
            let Err(e) = drawbridge::cli::Cli::try_parse_from(&words) else {
                checked += 1;
                continue;
            };
            // A placeholder such as ADDR is not a value, and a mention such
            // as `drawbridge explain` leaves its arguments out: the flags
            // and subcommands given exist.
            let fine = [
                ErrorKind::MissingRequiredArgument,
                ErrorKind::MissingSubcommand,
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand,
                ErrorKind::DisplayHelp,
                ErrorKind::DisplayVersion,
                ErrorKind::ValueValidation,
                ErrorKind::InvalidValue,
            ];
            assert!(fine.contains(&e.kind()), "`{command}` does not parse: {e}");
            checked += 1;
        }
    }
    assert!(checked >= 10, "the docs' commands were found ({checked})");
}

const ALERTS: &str = include_str!("../../docs/alerts.yml");

/// `drawbridge_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("drawbridge_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_alert_rules_parse_and_use_only_metrics_the_bot_exports() {
    use drawbridge::metrics::{Metrics, Snapshot};
    use yaml_rust2::YamlLoader;

    // Arrange: every family the bot exports, each with a sample.
    let metrics = Metrics::default();
    metrics.interaction("jit", "success");
    metrics.ack_latency("command", std::time::Duration::from_millis(5));
    metrics.arm_request("initiate", 202, std::time::Duration::from_millis(5));
    metrics.token_failure("managed_identity");
    metrics.delivery_refused("audit_channel");
    let exported = metrics.render(&Snapshot::default());

    // Act
    let docs = YamlLoader::load_from_str(ALERTS).expect("docs/alerts.yml is YAML");

    // Assert
    let rules = docs[0]["groups"][0]["rules"]
        .as_vec()
        .expect("groups[0].rules is a list");
    assert!(rules.len() >= 4, "{rules:?}");
    for rule in rules {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        let expr = rule["expr"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no expr"));
        assert!(
            rule["annotations"]["summary"].as_str().is_some(),
            "{name}: no summary"
        );
        assert_eq!(
            expr.matches('(').count(),
            expr.matches(')').count(),
            "{name}: unbalanced parentheses in {expr}"
        );
        for metric in metric_names(expr) {
            assert!(
                exported.lines().any(|l| l.starts_with(&metric)),
                "{name} uses {metric}, which /metrics does not export:\n{exported}"
            );
        }
    }
}

/// The custom role's `Actions` in the operator guide's JSON, and the action
/// table above it, are exactly what `drawbridge preflight` checks for.
#[test]
fn the_documented_role_lists_exactly_the_actions_preflight_checks() {
    let needed: Vec<&str> = drawbridge::domain::preflight::NEEDED_ACTIONS.to_vec();
    let start = DOCS.find("\"Actions\": [").expect("the role JSON") + "\"Actions\": [".len();
    let end = start + DOCS[start..].find(']').unwrap();
    let json: Vec<&str> = DOCS[start..end]
        .split(',')
        .map(|s| s.trim().trim_matches('"'))
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(json, needed);
    let table: Vec<&str> = DOCS
        .lines()
        .filter_map(|l| l.strip_prefix("| `Microsoft."))
        .filter_map(|l| l.split_once('`'))
        .map(|(rest, _)| rest)
        .collect();
    let table_full: Vec<String> = table.iter().map(|s| format!("Microsoft.{s}")).collect();
    assert_eq!(table_full, needed);
}
