//! The provider side of a refresh: each integration's OAuth app, the
//! refresh_token and client_credentials grants against its token endpoint,
//! and how an answer becomes a [`Credential`] or a [`RefreshError`]
//! (`invalid_grant` is final, the rest may pass). The HTTP client under it is
//! [`super::provider_http`].

use std::collections::BTreeMap;

use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, RefreshToken, RequestTokenError,
    Scope, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use super::provider_http::LimitedClient;
use super::{RefreshError, SetupError};
use crate::config::{ClientAuthMethod, Config, IntegrationGrant};
use crate::credentials::{Credential, Status};
use crate::secrets::Secrets;

/// Lifetimes a provider announces are capped at ten years.
const MAX_LIFETIME_SECS: u64 = 10 * 365 * 86400;

/// An integration's OAuth app, for the refresh_token grant.
pub(super) struct Provider {
    pub(super) grant: IntegrationGrant,
    scopes: Vec<Scope>,
    token_url: TokenUrl,
    client_id: ClientId,
    client_secret: Option<SecretString>,
    auth: AuthType,
}

type TokenClient =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

impl Provider {
    /// A client for the provider's token endpoint, authenticating as configured.
    fn client(&self) -> TokenClient {
        let client = BasicClient::new(self.client_id.clone())
            .set_token_uri(self.token_url.clone())
            .set_auth_type(self.auth.clone());
        match &self.client_secret {
            Some(s) => client.set_client_secret(ClientSecret::new(s.expose_secret().to_owned())),
            None => client,
        }
    }

    /// The client_credentials grant: a new integration-wide token and its lifetime.
    pub(super) async fn client_credentials(
        &self,
        http: &reqwest::Client,
    ) -> Result<(Credential, Option<time::Duration>), RefreshError> {
        let resp = self
            .client()
            .exchange_client_credentials()
            .add_scopes(self.scopes.iter().cloned())
            .request_async(&LimitedClient(http))
            .await
            .map_err(classify)?;
        let lifetime = resp
            .expires_in()
            .map(|d| time::Duration::seconds(d.as_secs().min(MAX_LIFETIME_SECS) as i64));
        let now = OffsetDateTime::now_utc();
        Ok((
            Credential {
                access_token: injectable(resp.access_token().secret())?,
                refresh_token: None,
                expires_at: lifetime.map(|l| now + l),
                scopes: resp
                    .scopes()
                    .map(|s| s.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_default(),
                token_type: "Bearer".into(),
                created_by: "client_credentials".into(),
                auto_refresh: false,
                refresh_count: 0,
                status: Status::Active,
            },
            lifetime,
        ))
    }

    /// The refresh_token grant: `c` with a new access token (and the rotated
    /// refresh token, if the provider rotates).
    pub(super) async fn refresh(
        &self,
        http: &reqwest::Client,
        c: &Credential,
    ) -> Result<Credential, RefreshError> {
        let refresh_token = c
            .refresh_token
            .as_ref()
            .ok_or(RefreshError::Reauthorization)?;
        let resp = self
            .client()
            .exchange_refresh_token(&RefreshToken::new(refresh_token.expose_secret().to_owned()))
            .request_async(&LimitedClient(http))
            .await
            .map_err(classify)?;
        let now = OffsetDateTime::now_utc();
        Ok(Credential {
            access_token: injectable(resp.access_token().secret())?,
            // A provider that does not rotate leaves the old refresh token valid.
            refresh_token: Some(
                resp.refresh_token()
                    .map(|r| SecretString::from(r.secret().to_owned()))
                    .unwrap_or_else(|| refresh_token.clone()),
            ),
            expires_at: resp
                .expires_in()
                .map(|d| now + time::Duration::seconds(d.as_secs().min(MAX_LIFETIME_SECS) as i64)),
            scopes: resp
                .scopes()
                .map(|s| s.iter().map(|s| s.to_string()).collect())
                .unwrap_or_else(|| c.scopes.clone()),
            token_type: "Bearer".into(),
            created_by: c.created_by.clone(),
            auto_refresh: c.auto_refresh,
            refresh_count: c.refresh_count + 1,
            status: Status::Active,
        })
    }
}

/// Sorts a token endpoint failure: `invalid_grant` is final, the rest may pass.
fn classify<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> RefreshError {
    match e {
        RequestTokenError::ServerResponse(r)
            if *r.error() == BasicErrorResponseType::InvalidGrant =>
        {
            RefreshError::Reauthorization
        }
        RequestTokenError::ServerResponse(r) => {
            RefreshError::Provider(format!("provider answered {}", r.error()))
        }
        RequestTokenError::Request(e) => RefreshError::Provider(format!("request: {e}")),
        RequestTokenError::Parse(_, _) => {
            RefreshError::Provider("unparseable provider answer".into())
        }
        RequestTokenError::Other(e) => RefreshError::Provider(e),
    }
}

/// A provider's access token, if credgate can inject it: RFC 6750 token
/// characters only (visible ASCII and space, RFC 6749 VSCHAR). Anything else
/// would make every later request fail, so it is a refresh failure instead.
fn injectable(token: &str) -> Result<SecretString, RefreshError> {
    if token.is_empty() || !token.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(RefreshError::Provider(
            "provider access token is not a valid header value".into(),
        ));
    }
    Ok(SecretString::from(token.to_owned()))
}

/// The OAuth apps of the configured integrations that can refresh.
pub(super) fn providers_of(
    config: &Config,
    secrets: &Secrets,
) -> Result<BTreeMap<String, Provider>, SetupError> {
    let mut providers = BTreeMap::new();
    for (id, i) in &config.integrations {
        let (Some(url), Some(client_id)) = (&i.token_url, &i.client_id) else {
            continue;
        };
        let token_url = TokenUrl::new(url.clone()).map_err(|e| SetupError::TokenUrl {
            integration: id.clone(),
            message: e.to_string(),
        })?;
        let client_secret = secrets.client_secret(id, i);
        providers.insert(
            id.clone(),
            Provider {
                grant: i.grant,
                scopes: i
                    .scope
                    .as_deref()
                    .unwrap_or("")
                    .split_whitespace()
                    .map(|s| Scope::new(s.to_owned()))
                    .collect(),
                token_url,
                client_id: ClientId::new(client_id.clone()),
                client_secret,
                auth: match i.auth_method {
                    ClientAuthMethod::ClientSecretPost => AuthType::RequestBody,
                    ClientAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
                },
            },
        );
    }
    Ok(providers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_header_safe_tokens_are_injectable() {
        assert!(injectable("gho_abc-._~+/=").is_ok());
        for bad in ["", "a\r\nX-Evil: 1", "tab\there", "caf\u{e9}", "nul\0"] {
            assert!(
                matches!(injectable(bad), Err(RefreshError::Provider(_))),
                "{bad:?} accepted"
            );
        }
    }
}
