//! Port specs: `ssh`, `rdp`, `winrm`, `22`, `ssh,8443`, and configured aliases.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The most ports one request may name.
pub const MAX_PORTS_PER_REQUEST: usize = 16;

/// A TCP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(u16);

impl Port {
    /// A port from its number; `None` for 0.
    pub fn new(number: u16) -> Option<Self> {
        (number != 0).then_some(Self(number))
    }

    /// The port number.
    pub fn number(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a port spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSpecError {
    /// Nothing was given.
    #[error("no port given: name one such as ssh, rdp, winrm or a number like 22")]
    Empty,
    /// A list item was empty, as in `ssh,,rdp`.
    #[error("`{0}` has an empty item: separate ports with single commas, as in ssh,8443")]
    EmptyItem(String),
    /// A number outside 1 to 65535.
    #[error("port `{0}` is out of range: ports are numbers from 1 to 65535")]
    OutOfRange(String),
    /// A name that is neither built in nor configured.
    #[error("`{token}` is not a port I know: use a number from 1 to 65535 or one of {known}")]
    Unknown {
        /// What was typed.
        token: String,
        /// The names that are accepted, comma-separated.
        known: String,
    },
    /// Too many ports in one request.
    #[error("too many ports: one request may name at most {MAX_PORTS_PER_REQUEST}")]
    TooMany,
}

/// Port names: the built-in ones plus those from `ports.aliases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortAliases {
    names: BTreeMap<String, Vec<Port>>,
}

/// Why a configured alias was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    /// A name that could be confused with a number or a list.
    #[error(
        "alias `{0}` is not a valid name: use lowercase letters, digits and hyphens, starting with a letter"
    )]
    BadName(String),
    /// A name that shadows a built-in one.
    #[error("alias `{0}` would replace the built-in port name of the same name")]
    ShadowsBuiltIn(String),
    /// An alias without ports or with a bad port.
    #[error("alias `{name}`: {reason}")]
    BadPorts {
        /// The alias.
        name: String,
        /// What is wrong with its ports.
        reason: String,
    },
}

const BUILT_IN: &[(&str, &[u16])] = &[
    ("ssh", &[22]),
    ("rdp", &[3389]),
    ("winrm", &[5985, 5986]),
    ("winrm-http", &[5985]),
    ("winrm-https", &[5986]),
];

impl Default for PortAliases {
    fn default() -> Self {
        let names = BUILT_IN
            .iter()
            .map(|(name, ports)| {
                let ports = ports.iter().filter_map(|&p| Port::new(p)).collect();
                ((*name).to_string(), ports)
            })
            .collect();
        Self { names }
    }
}

impl PortAliases {
    /// The built-ins plus configured aliases (`name -> port numbers`).
    pub fn with_aliases<'a>(
        aliases: impl IntoIterator<Item = (&'a str, &'a [u16])>,
    ) -> Result<Self, AliasError> {
        let mut set = Self::default();
        for (name, ports) in aliases {
            let valid_name = name.len() <= 32
                && name.starts_with(|c: char| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid_name {
                return Err(AliasError::BadName(name.to_string()));
            }
            if BUILT_IN.iter().any(|(b, _)| *b == name) {
                return Err(AliasError::ShadowsBuiltIn(name.to_string()));
            }
            if ports.is_empty() {
                return Err(AliasError::BadPorts {
                    name: name.to_string(),
                    reason: "it names no port".into(),
                });
            }
            let ports = ports
                .iter()
                .map(|&p| {
                    Port::new(p).ok_or_else(|| AliasError::BadPorts {
                        name: name.to_string(),
                        reason: "port 0 is not a port".into(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            set.names.insert(name.to_string(), ports);
        }
        Ok(set)
    }

    /// The ports a name stands for.
    pub fn lookup(&self, name: &str) -> Option<&[Port]> {
        self.names.get(name).map(Vec::as_slice)
    }

    /// Every known name with its ports, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Port])> {
        self.names.iter().map(|(n, p)| (n.as_str(), p.as_slice()))
    }

    /// The best name for exactly this set of ports, if one exists.
    pub fn name_for(&self, ports: &[Port]) -> Option<&str> {
        self.names
            .iter()
            .find(|(_, p)| p.len() == ports.len() && p.iter().all(|x| ports.contains(x)))
            .map(|(n, _)| n.as_str())
    }

    fn known_names(&self) -> String {
        self.names.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// One or more ports, sorted, without duplicates.
///
/// A boxed slice rather than a `BTreeSet`: every role mapping holds one,
/// and a set's node is 48 bytes of heap for a spec that is almost always one
/// or two ports (issue 17, the mapping set's memory).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSpec(Box<[Port]>);

impl PortSpec {
    /// Parses `ssh`, `22`, `ssh,8443`, `winrm` (two ports), or a configured
    /// alias. Names are case-insensitive; duplicates fold.
    pub fn parse(input: &str, aliases: &PortAliases) -> Result<Self, PortSpecError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(PortSpecError::Empty);
        }
        let mut ports = BTreeSet::new();
        for item in input.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(PortSpecError::EmptyItem(input.to_string()));
            }
            if item.bytes().all(|b| b.is_ascii_digit()) {
                let port = item
                    .parse::<u16>()
                    .ok()
                    .and_then(Port::new)
                    .ok_or_else(|| PortSpecError::OutOfRange(item.to_string()))?;
                ports.insert(port);
            } else {
                let lower = item.to_ascii_lowercase();
                let named = aliases
                    .lookup(&lower)
                    .ok_or_else(|| PortSpecError::Unknown {
                        token: item.chars().take(40).collect(),
                        known: aliases.known_names(),
                    })?;
                ports.extend(named.iter().copied());
            }
            if ports.len() > MAX_PORTS_PER_REQUEST {
                return Err(PortSpecError::TooMany);
            }
        }
        Ok(Self(ports.into_iter().collect()))
    }

    /// A spec from port numbers; `None` if empty, too long or holding 0.
    pub fn from_numbers(numbers: impl IntoIterator<Item = u16>) -> Option<Self> {
        let ports = numbers
            .into_iter()
            .map(Port::new)
            .collect::<Option<BTreeSet<_>>>()?;
        (!ports.is_empty() && ports.len() <= MAX_PORTS_PER_REQUEST)
            .then(|| Self(ports.into_iter().collect()))
    }

    /// The ports, ascending.
    pub fn ports(&self) -> impl Iterator<Item = Port> + '_ {
        self.0.iter().copied()
    }

    /// The port numbers, ascending.
    pub fn numbers(&self) -> Vec<u16> {
        self.0.iter().map(|p| p.number()).collect()
    }

    /// Whether every port of `other` is in this spec.
    pub fn covers(&self, other: &PortSpec) -> bool {
        other.ports().all(|port| self.contains(port))
    }

    /// Whether this spec holds `port`.
    pub fn contains(&self, port: Port) -> bool {
        self.0.binary_search(&port).is_ok()
    }

    /// A human description such as `ssh (22)` or `22, 8443`.
    pub fn describe(&self, aliases: &PortAliases) -> String {
        match aliases.name_for(&self.0) {
            Some(name) => format!("{name} ({})", self.joined(", ")),
            None => self.joined(", "),
        }
    }

    fn joined(&self, sep: &str) -> String {
        self.0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(sep)
    }
}

/// The canonical, parseable form: port numbers separated by commas.
impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.joined(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<u16>, PortSpecError> {
        PortSpec::parse(s, &PortAliases::default()).map(|p| p.numbers())
    }

    #[test]
    fn a_spec_covers_exactly_the_specs_whose_ports_it_holds() {
        let spec = |s: &str| PortSpec::parse(s, &PortAliases::default()).unwrap();
        let wide = spec("8443,ssh,rdp");
        assert!(wide.covers(&spec("ssh")) && wide.covers(&spec("rdp,22")));
        assert!(wide.covers(&wide));
        assert!(!wide.covers(&spec("ssh,winrm")));
        assert!(!spec("ssh").covers(&spec("ssh,rdp")));
        assert!(wide.contains(Port::new(3389).unwrap()));
        assert!(!wide.contains(Port::new(3390).unwrap()));
        assert_eq!(wide.describe(&PortAliases::default()), "22, 3389, 8443");
        assert_eq!(
            spec("winrm").describe(&PortAliases::default()),
            "winrm (5985, 5986)"
        );
    }

    #[test]
    fn built_in_names_numbers_and_lists_parse() {
        let cases: &[(&str, &[u16])] = &[
            ("ssh", &[22]),
            ("SSH", &[22]),
            ("rdp", &[3389]),
            ("winrm", &[5985, 5986]),
            ("winrm-http", &[5985]),
            ("winrm-https", &[5986]),
            ("22", &[22]),
            ("65535", &[65535]),
            ("1", &[1]),
            ("ssh,8443", &[22, 8443]),
            ("8443, ssh", &[22, 8443]),
            ("ssh,22,ssh", &[22]),
            ("winrm,winrm-https", &[5985, 5986]),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).unwrap(), *want, "{input}");
        }
    }

    #[test]
    fn bad_ports_get_specific_messages() {
        assert_eq!(parse(""), Err(PortSpecError::Empty));
        assert_eq!(parse("0"), Err(PortSpecError::OutOfRange("0".into())));
        assert_eq!(
            parse("65536"),
            Err(PortSpecError::OutOfRange("65536".into()))
        );
        assert!(matches!(
            parse("ssh,,rdp"),
            Err(PortSpecError::EmptyItem(_))
        ));
        let err = parse("telnet").unwrap_err();
        assert!(err.to_string().contains("`telnet` is not a port I know"));
        assert!(err.to_string().contains("ssh"));
        assert!(matches!(parse("-22"), Err(PortSpecError::Unknown { .. })));
        let many = (1..=17)
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse(&many), Err(PortSpecError::TooMany));
    }

    #[test]
    fn configured_aliases_extend_the_names() {
        let ports: &[u16] = &[8443];
        let aliases = PortAliases::with_aliases([("admin-panel", ports)]).unwrap();
        let spec = PortSpec::parse("ssh,admin-panel", &aliases).unwrap();
        assert_eq!(spec.numbers(), vec![22, 8443]);
        assert_eq!(
            PortSpec::parse("admin-panel", &aliases)
                .unwrap()
                .describe(&aliases),
            "admin-panel (8443)"
        );
        assert!(matches!(
            PortAliases::with_aliases([("ssh", ports)]),
            Err(AliasError::ShadowsBuiltIn(_))
        ));
        assert!(matches!(
            PortAliases::with_aliases([("8443", ports)]),
            Err(AliasError::BadName(_))
        ));
        let none: &[u16] = &[];
        assert!(PortAliases::with_aliases([("empty", none)]).is_err());
    }

    #[test]
    fn display_is_parseable_and_describe_names_known_sets() {
        let aliases = PortAliases::default();
        let spec = PortSpec::parse("winrm", &aliases).unwrap();
        assert_eq!(spec.to_string(), "5985,5986");
        assert_eq!(PortSpec::parse(&spec.to_string(), &aliases).unwrap(), spec);
        assert_eq!(spec.describe(&aliases), "winrm (5985, 5986)");
        assert_eq!(
            PortSpec::parse("22,8443", &aliases)
                .unwrap()
                .describe(&aliases),
            "22, 8443"
        );
    }
}
