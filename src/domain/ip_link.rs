//! The IP capture link: a one-time URL that saves the address the member
//! opens it from, so that nobody has to look up their own public IP.
//!
//! Two pure parts live here: the link's token (random bytes in, so this
//! module stays free of I/O; only its hash is stored, so a database dump
//! opens nothing), and which address a visit comes from when the page sits
//! behind reverse proxies. `X-Forwarded-For` is only believed from a
//! trusted proxy: anyone else can write anything there.

use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ipnet::IpNet;
use sha2::{Digest as _, Sha256};

/// How long a link may be used after it was made.
pub const LINK_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);
/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;

/// A link's secret: 32 random bytes, written in URL-safe base64. Its
/// `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkToken(String);

/// Why a path segment is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a link token")]
pub struct NotAToken;

impl LinkToken {
    /// The token of `random` (from a secure random source).
    pub fn from_random(random: [u8; TOKEN_BYTES]) -> Self {
        Self(URL_SAFE_NO_PAD.encode(random))
    }

    /// A token as it arrives in a URL: exactly the 43 characters a token
    /// is written with, nothing else.
    ///
    /// # Errors
    /// [`NotAToken`] for anything else.
    pub fn parse(text: &str) -> Result<Self, NotAToken> {
        match URL_SAFE_NO_PAD.decode(text) {
            Ok(bytes) if bytes.len() == TOKEN_BYTES => Ok(Self(text.to_owned())),
            _ => Err(NotAToken),
        }
    }

    /// The text for the URL.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What is stored: the SHA-256 of the token, in hex.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl fmt::Debug for LinkToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkToken([redacted])")
    }
}

/// Where a visit comes from: the connection's peer, unless the peer is a
/// trusted proxy; then the rightmost address in `X-Forwarded-For` that is
/// not itself a trusted proxy (each proxy appends the address it saw, so
/// everything left of the first untrusted hop may be forged by the client).
///
/// `None` when the header from a trusted proxy is unreadable, or names only
/// trusted proxies: the page then says it cannot tell, rather than saving
/// a proxy's address.
pub fn client_address(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let hops = forwarded_for
        .iter()
        .flat_map(|header| header.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let ip = parse_hop(hop)?.to_canonical();
        if !is_trusted(&ip) {
            return Some(ip);
        }
    }
    None
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`203.0.113.7:51234`, `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(socket) = hop.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(ip("198.51.100.9"), &["203.0.113.7"], &trusted),
            Some(ip("198.51.100.9"))
        );
        assert_eq!(
            client_address(ip("198.51.100.9"), &[], &[]),
            Some(ip("198.51.100.9"))
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "192.0.2.10/32"]);
        // The client forged 1.1.1.1; the edge proxy appended what it saw.
        let chain = ["1.1.1.1, 203.0.113.7", "192.0.2.10"];
        assert_eq!(
            client_address(ip("10.1.2.3"), &chain, &trusted),
            Some(ip("203.0.113.7"))
        );
    }

    #[test]
    fn a_trusted_proxy_without_a_readable_client_gives_no_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(client_address(ip("10.1.2.3"), &[], &trusted), None);
        assert_eq!(
            client_address(ip("10.1.2.3"), &["10.9.9.9"], &trusted),
            None
        );
        assert_eq!(
            client_address(ip("10.1.2.3"), &["203.0.113.7, nonsense"], &trusted),
            None
        );
    }

    #[test]
    fn ports_and_mapped_addresses_are_understood() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &["[2001:db8::7]:443"], &trusted),
            Some(ip("2001:db8::7"))
        );
        assert_eq!(
            client_address(ip("::ffff:203.0.113.7"), &[], &trusted),
            Some(ip("203.0.113.7"))
        );
    }

    #[test]
    fn tokens_round_trip_and_hide_themselves() {
        let token = LinkToken::from_random([7; TOKEN_BYTES]);
        assert_eq!(token.expose().len(), 43);
        assert_eq!(LinkToken::parse(token.expose()), Ok(token.clone()));
        assert_eq!(LinkToken::parse("short"), Err(NotAToken));
        assert_eq!(LinkToken::parse("../../etc/passwd"), Err(NotAToken));
        assert!(!format!("{token:?}").contains(token.expose()));
        assert_eq!(token.hash().len(), 64);
        assert_ne!(
            token.hash(),
            LinkToken::from_random([8; TOKEN_BYTES]).hash()
        );
    }
}
