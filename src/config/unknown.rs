//! Keys nobody reads: a misspelt key in a file or an environment variable
//! is otherwise silently ignored, and the setting it meant keeps its
//! default. [`unknown_keys`] names each with the nearest known key.

use std::collections::BTreeSet;

use super::{DEFAULT_TOML, ENV_PREFIX, Sources};

/// Tables whose keys are the operator's own names.
const FREE_TABLES: &[&str] = &["ports.aliases"];

/// A key no setting reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// The key as dotted path, such as `discord.tokn`.
    pub key: String,
    /// Where it was set: the file or the environment variable.
    pub source: String,
    /// The known key it most likely meant.
    pub nearest: Option<String>,
}

impl std::fmt::Display for UnknownKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown key {} (from {})", self.key, self.source)?;
        match &self.nearest {
            Some(nearest) => write!(f, "; did you mean {nearest}?"),
            None => write!(f, "; it is ignored"),
        }
    }
}

/// Every key set in `sources` (the file and `DRAWBRIDGE__*` variables)
/// that no setting reads. A file that cannot be read is left to
/// [`super::Settings::load`] to report.
pub fn unknown_keys(sources: &Sources) -> Vec<UnknownKey> {
    let known = known_keys();
    let mut found = Vec::new();
    if let Some((path, table)) = sources
        .file
        .as_ref()
        .and_then(|p| Some((p, read_table(p)?)))
    {
        let mut keys = Vec::new();
        leaves("", &table, &mut keys);
        let source = path.display().to_string();
        found.extend(keys.into_iter().map(|k| (k, source.clone())));
    }
    let env: Vec<(String, String)> = match &sources.env {
        Some(vars) => vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        None => std::env::vars().collect(),
    };
    let prefix = format!("{ENV_PREFIX}__");
    for (name, _) in env {
        if let Some(rest) = name.strip_prefix(&prefix) {
            found.push((rest.to_ascii_lowercase().replace("__", "."), name.clone()));
        }
    }
    found
        .into_iter()
        .filter(|(key, _)| !is_known(&known, key))
        .map(|(key, source)| UnknownKey {
            nearest: nearest(&known, &key),
            key,
            source,
        })
        .collect()
}

fn read_table(path: &std::path::Path) -> Option<toml::Table> {
    std::fs::read_to_string(path).ok()?.parse().ok()
}

fn is_known(known: &BTreeSet<String>, key: &str) -> bool {
    known.contains(key)
        || FREE_TABLES
            .iter()
            .any(|t| key.strip_prefix(t).is_some_and(|r| r.starts_with('.')))
}

/// The known key closest to `key`, if close enough to be a typo.
fn nearest(known: &BTreeSet<String>, key: &str) -> Option<String> {
    known
        .iter()
        .map(|k| (distance(k, key), k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 4))
        .min()
        .map(|(_, k)| k.clone())
}

/// Levenshtein distance over characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Every key the configuration reads: the defaults' keys and the keys
/// default.toml documents in comments (`# key = ""`, `# key: …`).
pub fn known_keys() -> BTreeSet<String> {
    let mut keys = Vec::new();
    if let Ok(table) = DEFAULT_TOML.parse::<toml::Table>() {
        leaves("", &table, &mut keys);
    }
    let mut section = String::new();
    for line in DEFAULT_TOML.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let Some(comment) = line.strip_prefix('#').map(str::trim_start) else {
            continue;
        };
        let end = comment
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(comment.len());
        let (word, rest) = comment.split_at(end);
        let rest = rest.trim_start();
        if !word.is_empty() && (rest.starts_with('=') || rest.starts_with(':')) {
            keys.push(format!("{section}.{word}"));
        }
    }
    keys.into_iter().collect()
}

/// Leaf keys of a table; an empty table is a leaf (`ports.aliases`).
fn leaves(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if !t.is_empty() && !FREE_TABLES.contains(&key.as_str()) => {
                leaves(&key, t, out)
            }
            _ => out.push(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources::env_only(pairs)
    }

    #[test]
    fn a_misspelt_key_is_named_with_the_key_it_meant() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[database]\nulr = \"sqlite://x.db\"\n[ports.aliases]\nadmin-panel = 8443\n",
        )
        .unwrap();
        let mut sources = env(&[
            ("DRAWBRIDGE__DISCORD__TOKN", "x"),
            ("DRAWBRIDGE__AZURE__SUBSCRIPTIONS", "a"),
            ("DRAWBRIDGE__NOTHING__LIKE__IT", "x"),
        ]);
        sources.file = Some(file);
        let mut unknown = unknown_keys(&sources);
        unknown.sort_by(|a, b| a.key.cmp(&b.key));
        let shown: Vec<String> = unknown.iter().map(ToString::to_string).collect();
        assert_eq!(unknown.len(), 3, "{shown:?}");
        assert_eq!(unknown[0].key, "database.ulr");
        assert_eq!(unknown[0].nearest.as_deref(), Some("database.url"));
        assert_eq!(unknown[1].nearest.as_deref(), Some("discord.token"));
        assert_eq!(unknown[1].source, "DRAWBRIDGE__DISCORD__TOKN");
        assert_eq!(unknown[2].key, "nothing.like.it");
        assert_eq!(unknown[2].nearest, None);
    }

    #[test]
    fn every_default_and_documented_key_is_known() {
        let known = known_keys();
        for key in [
            "discord.token",
            "discord.token_file",
            "azure.enable.ports",
            "ports.aliases",
        ] {
            assert!(known.contains(key), "{key}");
        }
    }
}
