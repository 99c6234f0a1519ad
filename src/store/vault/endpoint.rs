//! Where Vault is and how to reach it: the address, namespace, CA and
//! timeout, checked once, and the vaultrs and HTTP clients built from them.

use std::time::Duration;

use http::HeaderValue;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

use super::failure::Failure;
use crate::config::VaultConfig;
use crate::store::StoreError;

/// Where Vault is and how to reach it; builds vaultrs clients.
pub(super) struct Endpoint {
    pub(super) address: String,
    pub(super) namespace: Option<String>,
    ca_certs: Vec<String>,
    pub(super) timeout_ms: u64,
}

impl Endpoint {
    pub(super) fn new(config: &VaultConfig) -> Result<Self, StoreError> {
        let address = config.address.trim_end_matches('/').to_owned();
        let uri: http::Uri = address
            .parse()
            .map_err(|_| StoreError::Refused(format!("invalid vault address {address:?}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(StoreError::Refused(format!(
                "vault address {address:?} must be an http(s) URL"
            )));
        }
        let namespace = config.namespace.clone().filter(|n| !n.is_empty());
        if namespace
            .as_deref()
            .is_some_and(|ns| HeaderValue::from_str(ns).is_err())
        {
            return Err(StoreError::Refused("invalid VAULT_NAMESPACE".into()));
        }
        let ca_certs = match &config.ca_cert {
            Some(p) => vec![
                p.to_str()
                    .ok_or_else(|| StoreError::Refused("VAULT_CACERT is not UTF-8".into()))?
                    .to_owned(),
            ],
            None => Vec::new(),
        };
        Ok(Endpoint {
            address,
            namespace,
            ca_certs,
            timeout_ms: config.timeout_ms.max(1),
        })
    }

    /// A vaultrs client for `token` with every setting explicit (the builder
    /// would otherwise read `VAULT_*` itself). Reads the CA file.
    pub(super) fn client(&self, token: &str) -> Result<VaultClient, Failure> {
        if !token.is_empty() && HeaderValue::from_str(token).is_err() {
            // vaultrs would panic on it when building the header.
            return Err(Failure::Local(
                "vault token is not a valid header value".into(),
            ));
        }
        let settings = VaultClientSettingsBuilder::default()
            .address(&self.address)
            .ca_certs(self.ca_certs.clone())
            .identity(None)
            .timeout(Some(Duration::from_millis(self.timeout_ms)))
            .token(token)
            .verify(true)
            .namespace(self.namespace.clone())
            .build()
            .map_err(|e| Failure::Local(format!("vault client settings: {e}")))?;
        let mut client =
            VaultClient::new(settings).map_err(|e| Failure::from_vaultrs(e, self.timeout_ms))?;
        // vaultrs builds its reqwest client with the default redirect policy,
        // which would carry `X-Vault-Token` to wherever a 3xx points. Swap in
        // one with the same TLS settings that never follows a redirect.
        client.http.http = self.http_client()?;
        Ok(client)
    }

    /// The HTTP client under every Vault call: rustls with the configured CA,
    /// the timeout, and no redirects (a 3xx is answered as an error).
    fn http_client(&self) -> Result<reqwest::Client, Failure> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_millis(self.timeout_ms))
            .redirect(reqwest::redirect::Policy::none());
        for path in &self.ca_certs {
            let pem = std::fs::read(path)
                .map_err(|e| Failure::Local(format!("VAULT_CACERT {path}: {e}")))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| Failure::Local(format!("VAULT_CACERT {path}: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build()
            .map_err(|e| Failure::Local(format!("vault http client: {e}")))
    }
}
