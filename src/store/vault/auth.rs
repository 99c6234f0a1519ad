//! Vault authentication: the configured method, its logins, and what Vault
//! said about the token it holds (its [`Lease`]). Renewal is in
//! [`super::renewal`].

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use vaultrs::client::VaultClient;
use zeroize::Zeroizing;

use super::failure::Failure;
use crate::config::{VaultAuth, VaultConfig};
use crate::store::StoreError;

/// How credgate authenticates to Vault.
pub(super) enum Auth {
    /// A given token (`VAULT_TOKEN`); renewed, never replaced.
    Token,
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
}

impl Auth {
    pub(super) fn from_config(c: &VaultConfig) -> Result<Self, StoreError> {
        let missing = |what: &str| {
            StoreError::Refused(format!("vault auth {:?} needs {what}", c.auth).to_lowercase())
        };
        Ok(match c.auth {
            VaultAuth::Token => Auth::Token,
            VaultAuth::Approle => Auth::AppRole {
                mount: c.approle_mount.clone(),
                role_id_file: c
                    .role_id_file
                    .clone()
                    .ok_or_else(|| missing("role_id_file"))?,
                secret_id_file: c
                    .secret_id_file
                    .clone()
                    .ok_or_else(|| missing("secret_id_file"))?,
            },
            VaultAuth::Kubernetes => Auth::Kubernetes {
                mount: c.kubernetes_mount.clone(),
                role: c.role.clone().ok_or_else(|| missing("role"))?,
                jwt_file: c.jwt_file.clone(),
            },
        })
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            Auth::Token => "token",
            Auth::AppRole { .. } => "approle",
            Auth::Kubernetes { .. } => "kubernetes",
        }
    }

    pub(super) fn can_login(&self) -> bool {
        !matches!(self, Auth::Token)
    }

    /// One login with the `base` (token-less) client. Credential files are
    /// read every time: agents rotate secret ids and projected JWTs.
    pub(super) async fn login(
        &self,
        base: &VaultClient,
        timeout_ms: u64,
    ) -> Result<(String, Lease), Failure> {
        let vault = |e| Failure::from_vaultrs(e, timeout_ms);
        let info = match self {
            Auth::Token => return Err(Failure::Local("token auth cannot log in".into())),
            Auth::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let role_id = read_secret_file(role_id_file).await?;
                let secret_id = read_secret_file(secret_id_file).await?;
                vaultrs::auth::approle::login(base, mount, &role_id, &secret_id)
                    .await
                    .map_err(vault)?
            }
            Auth::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = read_secret_file(jwt_file).await?;
                vaultrs::auth::kubernetes::login(base, mount, role, &jwt)
                    .await
                    .map_err(vault)?
            }
        };
        let ttl = Duration::from_secs(info.lease_duration);
        Ok((info.client_token, Lease::issued(ttl, info.renewable)))
    }
}

async fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, Failure> {
    let text = Zeroizing::new(
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| Failure::Local(format!("cannot read {}: {e}", path.display())))?,
    );
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Failure::Local(format!("{} is empty", path.display())));
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

/// What Vault told us about the current token.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    /// False until a login or lookup succeeded.
    pub(super) known: bool,
    /// Time to live from `obtained`; zero = never expires (e.g. root).
    pub(super) ttl: Duration,
    pub(super) renewable: bool,
    pub(super) obtained: Instant,
    /// The TTL at issue: a renewal granting far less means the token's max
    /// TTL is near, so a fresh login is due.
    pub(super) issued_ttl: Duration,
}

impl Lease {
    pub(super) fn unknown() -> Self {
        Lease {
            known: false,
            ttl: Duration::ZERO,
            renewable: false,
            obtained: Instant::now(),
            issued_ttl: Duration::ZERO,
        }
    }

    pub(super) fn issued(ttl: Duration, renewable: bool) -> Self {
        Lease {
            known: true,
            ttl,
            renewable,
            obtained: Instant::now(),
            issued_ttl: ttl,
        }
    }

    pub(super) fn renewed(self, ttl: Duration) -> Self {
        Lease {
            ttl,
            obtained: Instant::now(),
            ..self
        }
    }

    /// Whether a renewal granted so little that renewing again is futile.
    pub(super) fn near_max_ttl(&self) -> bool {
        self.ttl < self.issued_ttl / 3
    }
}

/// Counters for tests and logs.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) logins: AtomicU64,
    pub(super) renewals: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_renewal_means_the_max_ttl_is_near() {
        let l = Lease::issued(Duration::from_secs(3600), true);
        assert!(!l.renewed(Duration::from_secs(3600)).near_max_ttl());
        assert!(!l.renewed(Duration::from_secs(1300)).near_max_ttl());
        assert!(l.renewed(Duration::from_secs(1100)).near_max_ttl());
    }
}
