//! Which Azure cloud Drawbridge talks to, and the endpoints that follow from it.
//!
//! The ARM token audience is a property of the cloud, not of the ARM
//! endpoint's URL: a proxy, a private link or an ARM-compatible gateway in
//! front of ARM changes the endpoint, never the audience. Entra refuses a token
//! for a resource it does not know (AADSTS500011), and ARM refuses a token
//! minted for another audience (401 `InvalidAuthenticationTokenAudience`), so
//! the audience is its own setting (`azure.arm_audience`), defaulting per cloud
//! and kept when only the endpoint is overridden. Azure Stack Hub, the main
//! custom cloud, has an audience unlike its endpoint, so `custom` requires it.

use serde::{Deserialize, Serialize};
use url::Url;

/// An Azure cloud (config key `azure.cloud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AzureCloud {
    /// Azure public cloud.
    #[default]
    Public,
    /// Azure US Government.
    UsGov,
    /// Azure China (21Vianet).
    China,
    /// Any other cloud (Azure Stack, a test emulator): both endpoints must be configured.
    Custom,
}

/// The endpoints of one cloud, after configuration overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Azure Resource Manager base URL, e.g. `https://management.azure.com/`.
    pub arm: Url,
    /// Entra ID authority host, e.g. `https://login.microsoftonline.com/`.
    pub authority_host: Url,
    /// The audience ARM tokens are requested for, e.g. `https://management.azure.com`.
    pub arm_audience: String,
    /// OAuth2 scope for ARM tokens: the audience followed by `/.default`.
    pub arm_scope: String,
}

/// Why the endpoints could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// `custom` needs an explicit endpoint that is missing.
    #[error("azure.cloud = \"custom\" requires azure.{0} to be set")]
    MissingForCustom(&'static str),
    /// An endpoint is not an http(s) URL with a host.
    #[error("azure.{key} must be an http or https URL with a host, got {url}")]
    NotHttp {
        /// The config key.
        key: &'static str,
        /// The offending URL.
        url: String,
    },
}

impl AzureCloud {
    /// The cloud's own ARM token audience (`None` for `Custom`).
    pub fn arm_audience(self) -> Option<&'static str> {
        match self {
            Self::Public => Some("https://management.azure.com"),
            Self::UsGov => Some("https://management.usgovcloudapi.net"),
            Self::China => Some("https://management.chinacloudapi.cn"),
            Self::Custom => None,
        }
    }

    /// The cloud's own ARM endpoint and authority host (`None` for `Custom`).
    fn defaults(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Public => Some((
                "https://management.azure.com",
                "https://login.microsoftonline.com",
            )),
            Self::UsGov => Some((
                "https://management.usgovcloudapi.net",
                "https://login.microsoftonline.us",
            )),
            Self::China => Some((
                "https://management.chinacloudapi.cn",
                "https://login.chinacloudapi.cn",
            )),
            Self::Custom => None,
        }
    }
}

/// Resolves the endpoints for `cloud`. An override wins whenever it is set and is
/// required for [`AzureCloud::Custom`]. The audience never follows the ARM
/// endpoint: without `audience_override` it is the cloud's own.
///
/// # Errors
/// [`EndpointError`] when `custom` lacks an endpoint or the audience, or an
/// override is not http(s).
pub fn resolve_endpoints(
    cloud: AzureCloud,
    arm_override: Option<Url>,
    authority_override: Option<Url>,
    audience_override: Option<String>,
) -> Result<Endpoints, EndpointError> {
    let defaults = cloud.defaults();
    let pick = |over: Option<Url>, default: Option<&str>, key: &'static str| {
        let url = match (over, default) {
            (Some(url), _) => url,
            (None, Some(default)) => Url::parse(default).expect("built-in endpoint is a valid URL"),
            (None, None) => return Err(EndpointError::MissingForCustom(key)),
        };
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(EndpointError::NotHttp {
                key,
                url: url.to_string(),
            });
        }
        Ok(url)
    };
    let arm = pick(arm_override, defaults.map(|d| d.0), "arm_endpoint")?;
    let authority_host = pick(authority_override, defaults.map(|d| d.1), "authority_host")?;
    let arm_audience = audience_override
        .or_else(|| cloud.arm_audience().map(str::to_owned))
        .ok_or(EndpointError::MissingForCustom("arm_audience"))?;
    Ok(Endpoints {
        arm,
        authority_host,
        arm_scope: scope_for(&arm_audience),
        arm_audience,
    })
}

/// The `.default` scope of `audience`. An audience written with a trailing
/// slash keeps it (`https://management.core.windows.net//.default`), as Entra
/// expects: the token is then issued for exactly that identifier.
pub fn scope_for(audience: &str) -> String {
    format!("{audience}/.default")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn each_cloud_has_its_endpoints_and_scope() {
        let cases = [
            (
                AzureCloud::Public,
                "https://management.azure.com/",
                "https://login.microsoftonline.com/",
            ),
            (
                AzureCloud::UsGov,
                "https://management.usgovcloudapi.net/",
                "https://login.microsoftonline.us/",
            ),
            (
                AzureCloud::China,
                "https://management.chinacloudapi.cn/",
                "https://login.chinacloudapi.cn/",
            ),
        ];
        for (cloud, arm, authority) in cases {
            let e = resolve_endpoints(cloud, None, None, None).unwrap();
            assert_eq!(e.arm.as_str(), arm);
            assert_eq!(e.authority_host.as_str(), authority);
            assert_eq!(e.arm_audience, arm.trim_end_matches('/'));
            assert_eq!(
                e.arm_scope,
                format!("{}/.default", arm.trim_end_matches('/'))
            );
        }
    }

    #[test]
    fn an_endpoint_override_keeps_the_clouds_audience() {
        let e = resolve_endpoints(
            AzureCloud::UsGov,
            Some(url("http://127.0.0.1:8080")),
            None,
            None,
        )
        .unwrap();
        assert_eq!(e.arm.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(e.arm_audience, "https://management.usgovcloudapi.net");
        assert_eq!(e.arm_scope, "https://management.usgovcloudapi.net/.default");
        assert_eq!(
            e.authority_host.as_str(),
            "https://login.microsoftonline.us/"
        );
    }

    #[test]
    fn an_audience_override_is_used_verbatim() {
        let e = resolve_endpoints(
            AzureCloud::Public,
            None,
            None,
            Some("https://management.core.windows.net/".into()),
        )
        .unwrap();
        assert_eq!(e.arm.as_str(), "https://management.azure.com/");
        assert_eq!(e.arm_scope, "https://management.core.windows.net//.default");
    }

    #[test]
    fn custom_requires_both_endpoints_and_the_audience() {
        let (arm, login) = (url("https://arm.example"), url("https://login.example"));
        assert_eq!(
            resolve_endpoints(AzureCloud::Custom, None, Some(login.clone()), None),
            Err(EndpointError::MissingForCustom("arm_endpoint"))
        );
        assert_eq!(
            resolve_endpoints(AzureCloud::Custom, Some(arm.clone()), None, None),
            Err(EndpointError::MissingForCustom("authority_host"))
        );
        assert_eq!(
            resolve_endpoints(
                AzureCloud::Custom,
                Some(arm.clone()),
                Some(login.clone()),
                None
            ),
            Err(EndpointError::MissingForCustom("arm_audience"))
        );
        let stack_hub =
            "https://management.adfs.azurestack.local/4de154de-f8a8-4017-af41-df619da68155";
        let e = resolve_endpoints(
            AzureCloud::Custom,
            Some(arm),
            Some(login),
            Some(stack_hub.into()),
        )
        .unwrap();
        assert_eq!(e.arm_scope, format!("{stack_hub}/.default"));
    }

    #[test]
    fn non_http_overrides_are_refused() {
        let err = resolve_endpoints(AzureCloud::Public, Some(url("ftp://x.example")), None, None)
            .unwrap_err();
        assert!(matches!(
            err,
            EndpointError::NotHttp {
                key: "arm_endpoint",
                ..
            }
        ));
    }

    #[test]
    fn cloud_names_are_lowercase_in_config() {
        #[derive(Deserialize)]
        struct C {
            cloud: AzureCloud,
        }
        for (s, c) in [
            ("public", AzureCloud::Public),
            ("usgov", AzureCloud::UsGov),
            ("china", AzureCloud::China),
            ("custom", AzureCloud::Custom),
        ] {
            let parsed: C = serde_json::from_str(&format!(r#"{{"cloud":"{s}"}}"#)).unwrap();
            assert_eq!(parsed.cloud, c);
        }
    }
}
