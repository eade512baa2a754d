//! How to reach a VM once its port is open: the address Azure gives it
//! (its public IP's DNS name or address, else its private address for VPN
//! users) and a ready command. Read from Azure (VM → network interface →
//! public IP) by the adapter; what to say about it is decided here.

use std::net::IpAddr;

/// The tag naming the SSH user on a VM.
pub const SSH_USER_TAG: &str = "drawbridge-ssh-user";

/// A login name for `ssh user@host` (and the `.rdp` file's user): 1 to 64
/// letters, digits, `.`, `_` or `-`, not starting with `-` or `.`, so that
/// it is shown in a command as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshUser(String);

impl SshUser {
    /// Checks a login name.
    ///
    /// # Errors
    /// Says what a login name may hold.
    pub fn parse(input: &str) -> Result<Self, String> {
        let ok = (1..=64).contains(&input.len())
            && !input.starts_with(['-', '.'])
            && input
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(input.to_owned()))
        } else {
            Err(format!(
                "`{}` is not a login name: 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `-` or `.`",
                input.chars().take(64).collect::<String>()
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SshUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A VM's addresses as Azure reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The public IP's DNS name, if it has one.
    pub fqdn: Option<String>,
    /// The public IP address, if the primary NIC has one.
    pub public_ip: Option<IpAddr>,
    /// The primary NIC's private address.
    pub private_ip: Option<IpAddr>,
    /// The SSH user: the VM's `drawbridge-ssh-user` tag, else its admin
    /// user from the OS profile.
    pub ssh_user: Option<String>,
}

impl Connection {
    /// This connection with the mapping's login user, which takes
    /// precedence over the VM's tag and its admin user.
    #[must_use]
    pub fn with_user(mut self, user: Option<&SshUser>) -> Self {
        if let Some(user) = user {
            self.ssh_user = Some(user.to_string());
        }
        self
    }

    /// Where to connect from the internet: the DNS name, else the public
    /// address; `None` for a VM with only a private address.
    pub fn public_host(&self) -> Option<String> {
        self.fqdn.clone().or_else(|| self.public_ip.map(host_text))
    }

    /// The line for the grant card: a ready command for `port`, or where a
    /// private-only VM is reached.
    pub fn how_to_connect(&self, port: u16) -> Option<String> {
        match (self.public_host(), self.private_ip) {
            (Some(host), _) => Some(self.command(&host, port)),
            (None, Some(private)) => Some(format!(
                "This VM has no public address: connect over the VPN to {} ({}).",
                host_text(private),
                self.command(&host_text(private), port)
            )),
            (None, None) => None,
        }
    }

    fn command(&self, host: &str, port: u16) -> String {
        match port {
            22 => match &self.ssh_user {
                Some(user) => format!("ssh {user}@{host}"),
                None => format!("ssh <user>@{host}"),
            },
            3389 => format!("mstsc /v:{host}"),
            port => format!("{host}:{port}"),
        }
    }
}

/// The RDP port: a grant that opens it gets a `.rdp` file.
pub const RDP_PORT: u16 = 3389;

impl Connection {
    /// Where to connect: the public host, else the private address.
    fn any_host(&self) -> Option<String> {
        self.public_host()
            .or_else(|| self.private_ip.map(host_text))
    }

    /// A Remote Desktop connection file for `port`: `full address` with
    /// the host and the granted port, the user when known, and defaults
    /// that ask for the password and warn on a certificate problem. `None`
    /// when the VM has no address at all. Lines end in CRLF, as mstsc
    /// writes them.
    pub fn rdp_file(&self, port: u16) -> Option<String> {
        let host = self.any_host()?;
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let mut lines = vec![format!("full address:s:{host}:{port}")];
        if let Some(user) = &self.ssh_user {
            lines.push(format!("username:s:{user}"));
        }
        lines.extend(
            [
                "prompt for credentials:i:1",
                "authentication level:i:2",
                "screen mode id:i:2",
                "session bpp:i:32",
                "redirectclipboard:i:1",
                "audiomode:i:0",
            ]
            .map(str::to_owned),
        );
        let mut text = lines.join("\r\n");
        text.push_str("\r\n");
        Some(text)
    }
}

/// A name for a VM's `.rdp` file: its name (without a resource group),
/// with any character a file name should not hold replaced by `-`.
pub fn rdp_file_name(vm_name: &str) -> String {
    let name = vm_name.rsplit('/').next().unwrap_or(vm_name);
    let clean: String = name
        .chars()
        .take(60)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() {
        "vm.rdp".to_owned()
    } else {
        format!("{clean}.rdp")
    }
}

/// An address as a host in a command (IPv6 in brackets is not needed by
/// ssh, which takes the bare address).
fn host_text(ip: IpAddr) -> String {
    ip.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(fqdn: Option<&str>, public: Option<&str>, private: Option<&str>) -> Connection {
        Connection {
            fqdn: fqdn.map(str::to_owned),
            public_ip: public.map(|p| p.parse().unwrap()),
            private_ip: private.map(|p| p.parse().unwrap()),
            ssh_user: Some("azureuser".into()),
        }
    }

    #[test]
    fn a_public_vm_gets_a_ready_command() {
        let c = conn(None, Some("20.1.2.3"), Some("10.0.0.4"));
        assert_eq!(
            c.how_to_connect(22).as_deref(),
            Some("ssh azureuser@20.1.2.3")
        );
        assert_eq!(c.how_to_connect(3389).as_deref(), Some("mstsc /v:20.1.2.3"));
        assert_eq!(c.how_to_connect(8443).as_deref(), Some("20.1.2.3:8443"));
        let named = conn(
            Some("web.westeurope.cloudapp.azure.com"),
            Some("20.1.2.3"),
            None,
        );
        assert_eq!(
            named.how_to_connect(22).as_deref(),
            Some("ssh azureuser@web.westeurope.cloudapp.azure.com")
        );
    }

    #[test]
    fn an_rdp_file_names_host_port_and_user() {
        let file = conn(None, Some("20.1.2.3"), Some("10.0.0.4"))
            .rdp_file(3389)
            .unwrap();
        let lines: Vec<&str> = file.split("\r\n").collect();
        assert_eq!(lines[0], "full address:s:20.1.2.3:3389");
        assert_eq!(lines[1], "username:s:azureuser");
        assert!(file.ends_with("\r\n"));
        let private_v6 = Connection {
            ssh_user: None,
            ..conn(None, None, Some("fd00::4"))
        };
        let file = private_v6.rdp_file(3390).unwrap();
        assert!(
            file.starts_with("full address:s:[fd00::4]:3390\r\n"),
            "{file}"
        );
        assert!(!file.contains("username"));
        assert_eq!(conn(None, None, None).rdp_file(3389), None);
        assert_eq!(rdp_file_name("rg-web/win-01"), "win-01.rdp");
        assert_eq!(rdp_file_name("odd name.x"), "odd-name-x.rdp");
        assert_eq!(rdp_file_name(""), "vm.rdp");
    }

    #[test]
    fn the_mappings_user_wins_and_login_names_are_checked() {
        let user = SshUser::parse("deploy").unwrap();
        let c = conn(None, Some("20.1.2.3"), None).with_user(Some(&user));
        assert_eq!(c.how_to_connect(22).as_deref(), Some("ssh deploy@20.1.2.3"));
        let kept = conn(None, Some("20.1.2.3"), None).with_user(None);
        assert_eq!(kept.ssh_user.as_deref(), Some("azureuser"));
        for bad in [
            "",
            "-oProxyCommand=x",
            ".hidden",
            "a b",
            "a;b",
            "ü",
            &"a".repeat(65),
        ] {
            assert!(SshUser::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SshUser::parse("svc_deploy-2.x").is_ok());
    }

    #[test]
    fn a_private_only_vm_says_so() {
        let c = conn(None, None, Some("10.20.0.10"));
        assert_eq!(
            c.how_to_connect(22).as_deref(),
            Some(
                "This VM has no public address: connect over the VPN to 10.20.0.10 (ssh azureuser@10.20.0.10)."
            )
        );
        assert_eq!(conn(None, None, None).how_to_connect(22), None);
    }
}
