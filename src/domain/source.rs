//! Source prefixes: where the engineer connects from.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// IPv4 networks with a prefix shorter than this are broad.
pub const BROAD_V4_BELOW: u8 = 16;
/// IPv6 networks with a prefix shorter than this are broad.
pub const BROAD_V6_BELOW: u8 = 32;

/// Whether `net` is shorter than `/16` (IPv4) or `/32` (IPv6).
pub fn is_broad_net(net: &IpNet) -> bool {
    match net {
        IpNet::V4(v4) => v4.prefix_len() < BROAD_V4_BELOW,
        IpNet::V6(v6) => v6.prefix_len() < BROAD_V6_BELOW,
    }
}

/// Why a source was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// Nothing was given.
    #[error(
        "no source given: give an IP address such as 203.0.113.7 or a CIDR such as 203.0.113.0/24"
    )]
    Empty,
    /// Not an address or CIDR.
    #[error(
        "`{0}` is not an IP address or CIDR: use forms like 203.0.113.7, 203.0.113.0/24 or 2001:db8::/48"
    )]
    Malformed(String),
    /// A CIDR with host bits set.
    #[error("`{given}` has bits set beyond its prefix length: did you mean {suggested}?")]
    HostBitsSet {
        /// What was typed.
        given: String,
        /// The network it lies in.
        suggested: String,
    },
}

/// The address range a grant is opened for: any source (`*`) or one network
/// (a single address is a network of full length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourcePrefix {
    /// Any source: Azure's `*`. Only a mapping that allows any source permits it.
    Any,
    /// One address or network.
    Net(IpNet),
}

impl SourcePrefix {
    /// Parses `*`, `any`, an IPv4/IPv6 address or a CIDR.
    pub fn parse(input: &str) -> Result<Self, SourceError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(SourceError::Empty);
        }
        if input == "*" || input.eq_ignore_ascii_case("any") {
            return Ok(Self::Any);
        }
        if let Ok(addr) = input.parse::<IpAddr>() {
            return Ok(Self::Net(IpNet::from(addr)));
        }
        let net: IpNet = input
            .parse()
            .map_err(|_| SourceError::Malformed(input.chars().take(60).collect()))?;
        if net.trunc() != net {
            return Err(SourceError::HostBitsSet {
                given: input.to_string(),
                suggested: net.trunc().to_string(),
            });
        }
        Ok(Self::Net(net))
    }

    /// Whether this is one address (`/32`, `/128`) rather than a network or `*`.
    pub fn is_single_address(&self) -> bool {
        matches!(self, Self::Net(net) if net.prefix_len() == net.max_prefix_len())
    }

    /// Whether this is `*` or a network shorter than [`BROAD_V4_BELOW`]
    /// (IPv4) or [`BROAD_V6_BELOW`] (IPv6): a range only a mapping with
    /// `allow_broad_sources` may open to.
    pub fn is_broad(&self) -> bool {
        match self {
            Self::Any => true,
            Self::Net(net) => is_broad_net(net),
        }
    }

    /// Whether this range lies within `outer`.
    pub fn within(&self, outer: &IpNet) -> bool {
        match self {
            Self::Any => false,
            Self::Net(net) => outer.contains(net),
        }
    }
}

/// `*`, a bare address for a single host, or a CIDR: the form Azure takes
/// for `allowedSourceAddressPrefix`.
impl fmt::Display for SourcePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                write!(f, "{}", net.addr())
            }
            Self::Net(net) => write!(f, "{net}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_networks_and_any_parse() {
        assert_eq!(SourcePrefix::parse("*"), Ok(SourcePrefix::Any));
        assert_eq!(SourcePrefix::parse("ANY"), Ok(SourcePrefix::Any));
        assert_eq!(
            SourcePrefix::parse("203.0.113.7").unwrap().to_string(),
            "203.0.113.7"
        );
        assert_eq!(
            SourcePrefix::parse("203.0.113.7/32").unwrap().to_string(),
            "203.0.113.7"
        );
        assert_eq!(
            SourcePrefix::parse("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            SourcePrefix::parse("2001:db8::/48").unwrap().to_string(),
            "2001:db8::/48"
        );
        assert_eq!(
            SourcePrefix::parse("2001:db8::1").unwrap().to_string(),
            "2001:db8::1"
        );
    }

    #[test]
    fn malformed_sources_get_specific_messages() {
        assert_eq!(SourcePrefix::parse(" "), Err(SourceError::Empty));
        for bad in [
            "300.1.1.1",
            "1.2.3",
            "10.0.0.0/33",
            "host.example",
            "1.2.3.4/",
            "::g",
        ] {
            assert!(
                matches!(SourcePrefix::parse(bad), Err(SourceError::Malformed(_))),
                "{bad}"
            );
        }
        let err = SourcePrefix::parse("10.1.2.3/8").unwrap_err();
        assert_eq!(
            err.to_string(),
            "`10.1.2.3/8` has bits set beyond its prefix length: did you mean 10.0.0.0/8?"
        );
    }

    #[test]
    fn containment_never_lets_any_through() {
        let office: IpNet = "203.0.113.0/24".parse().unwrap();
        assert!(SourcePrefix::parse("203.0.113.7").unwrap().within(&office));
        assert!(
            SourcePrefix::parse("203.0.113.0/25")
                .unwrap()
                .within(&office)
        );
        assert!(
            !SourcePrefix::parse("203.0.112.0/23")
                .unwrap()
                .within(&office)
        );
        assert!(!SourcePrefix::Any.within(&"0.0.0.0/0".parse().unwrap()));
    }

    #[test]
    fn broad_means_star_or_shorter_than_16_or_32() {
        let broad = |s: &str| SourcePrefix::parse(s).unwrap().is_broad();
        for wide in ["*", "0.0.0.0/0", "::/0", "10.0.0.0/15", "2001:db8::/31"] {
            assert!(broad(wide), "{wide}");
        }
        for narrow in ["10.0.0.0/16", "203.0.113.7", "2001:db8::/32", "2001:db8::1"] {
            assert!(!broad(narrow), "{narrow}");
        }
        assert!(
            SourcePrefix::parse("203.0.113.7/32")
                .unwrap()
                .is_single_address()
        );
        assert!(SourcePrefix::parse("::1").unwrap().is_single_address());
        assert!(
            !SourcePrefix::parse("203.0.113.0/31")
                .unwrap()
                .is_single_address()
        );
        assert!(!SourcePrefix::Any.is_single_address());
    }
}
