//! The secrets credgate takes from its environment, read once in `main`
//! from the same variables the config overrides see and passed down: the
//! admin token (`CREDGATE_ADMIN_TOKEN`), the embedded store's master key
//! (`CREDGATE_MASTER_KEY`), the Vault token (`VAULT_TOKEN`) and each
//! integration's OAuth client secret (`<INTEGRATION>_CLIENT_SECRET`, or its
//! `client_secret_env`; see docs/configuration.md). Every value is held as a [`SecretString`] and
//! never shown by `Debug`.

use std::collections::BTreeMap;

use secrecy::SecretString;

use crate::config::{ENV_ADMIN_TOKEN, ENV_MASTER_KEY, IntegrationConfig};
use crate::store::vault::ENV_VAULT_TOKEN;

#[derive(Default)]
pub struct Secrets {
    admin_token: Option<SecretString>,
    /// The environment as read at start. Kept whole because a reloaded
    /// config may name another `client_secret_env`.
    env: BTreeMap<String, SecretString>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("admin_token", &self.admin_token.is_some())
            .finish_non_exhaustive()
    }
}

impl Secrets {
    /// From an environment (`std::env::vars()` in `main`).
    pub fn from_env(env: impl IntoIterator<Item = (String, String)>) -> Self {
        let env: BTreeMap<String, SecretString> = env
            .into_iter()
            .map(|(k, v)| (k, SecretString::from(v)))
            .collect();
        Secrets {
            admin_token: env.get(ENV_ADMIN_TOKEN).cloned(),
            env,
        }
    }

    /// Only an admin token (tests, benches).
    pub fn with_admin_token(token: SecretString) -> Self {
        Secrets {
            admin_token: Some(token),
            env: BTreeMap::new(),
        }
    }

    /// `CREDGATE_ADMIN_TOKEN` as set (possibly empty).
    pub fn admin_token(&self) -> Option<&SecretString> {
        self.admin_token.as_ref()
    }

    /// `CREDGATE_MASTER_KEY` as set: the embedded store's master key.
    pub fn master_key(&self) -> Option<&SecretString> {
        self.env.get(ENV_MASTER_KEY)
    }

    /// `VAULT_TOKEN` as set: the Vault token for `store.vault.auth = "token"`.
    pub fn vault_token(&self) -> Option<&SecretString> {
        self.env.get(ENV_VAULT_TOKEN)
    }

    /// The integration's OAuth client secret as set (possibly empty).
    pub fn client_secret(&self, id: &str, integration: &IntegrationConfig) -> Option<SecretString> {
        self.env.get(&integration.client_secret_env(id)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn reads_the_admin_token_and_client_secrets_and_shows_neither() {
        let s = Secrets::from_env([
            (ENV_ADMIN_TOKEN.to_owned(), "admin-secret".to_owned()),
            ("GH_APP_CLIENT_SECRET".to_owned(), "gh-secret".to_owned()),
            ("OTHER".to_owned(), "custom-secret".to_owned()),
        ]);
        assert_eq!(s.admin_token().unwrap().expose_secret(), "admin-secret");
        let config = crate::config::Config::from_toml_with_env(
            r#"
            [integrations.gh-app]
            client_id = "a"
            [integrations.x]
            client_id = "b"
            client_secret_env = "OTHER"
            [integrations.slack]
            client_id = "c"
            "#,
            Vec::new(),
        )
        .unwrap();
        let secret = |id: &str| {
            s.client_secret(id, &config.integrations[id])
                .map(|v| v.expose_secret().to_owned())
        };
        assert_eq!(secret("gh-app").as_deref(), Some("gh-secret"));
        assert_eq!(secret("x").as_deref(), Some("custom-secret"));
        assert_eq!(secret("slack"), None);
        let shown = format!("{s:?}");
        assert!(!shown.contains("secret\""), "{shown}");
        assert!(!shown.contains("admin-secret") && !shown.contains("gh-secret"));
    }
}
