//! Which Azure cloud Drawbridge talks to, and the endpoints that follow from it.

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
    /// OAuth2 scope for ARM tokens: the ARM endpoint followed by `/.default`.
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
/// required for [`AzureCloud::Custom`].
///
/// # Errors
/// [`EndpointError`] when `custom` lacks an endpoint or an override is not http(s).
pub fn resolve_endpoints(
    cloud: AzureCloud,
    arm_override: Option<Url>,
    authority_override: Option<Url>,
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
    let arm_scope = format!("{}/.default", arm.as_str().trim_end_matches('/'));
    Ok(Endpoints {
        arm,
        authority_host,
        arm_scope,
    })
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
            let e = resolve_endpoints(cloud, None, None).unwrap();
            assert_eq!(e.arm.as_str(), arm);
            assert_eq!(e.authority_host.as_str(), authority);
            assert_eq!(
                e.arm_scope,
                format!("{}/.default", arm.trim_end_matches('/'))
            );
        }
    }

    #[test]
    fn overrides_win_over_the_cloud() {
        let e =
            resolve_endpoints(AzureCloud::UsGov, Some(url("http://127.0.0.1:8080")), None).unwrap();
        assert_eq!(e.arm.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(e.arm_scope, "http://127.0.0.1:8080/.default");
        assert_eq!(
            e.authority_host.as_str(),
            "https://login.microsoftonline.us/"
        );
    }

    #[test]
    fn custom_requires_both_endpoints() {
        assert_eq!(
            resolve_endpoints(AzureCloud::Custom, None, Some(url("https://login.example"))),
            Err(EndpointError::MissingForCustom("arm_endpoint"))
        );
        assert_eq!(
            resolve_endpoints(AzureCloud::Custom, Some(url("https://arm.example")), None),
            Err(EndpointError::MissingForCustom("authority_host"))
        );
        let e = resolve_endpoints(
            AzureCloud::Custom,
            Some(url("https://arm.example")),
            Some(url("https://login.example")),
        )
        .unwrap();
        assert_eq!(e.arm_scope, "https://arm.example/.default");
    }

    #[test]
    fn non_http_overrides_are_refused() {
        let err =
            resolve_endpoints(AzureCloud::Public, Some(url("ftp://x.example")), None).unwrap_err();
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
