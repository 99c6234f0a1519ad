//! Client management as the admin API drives it: the request bodies, their
//! validation, and the [`Authority`] operations that write clients, rotate
//! secrets and mint static keys (each audited with the acting admin).

use std::sync::Arc;

use secrecy::SecretString;
use serde::Deserialize;
use time::{Duration, OffsetDateTime};

use super::assertion::validate_jwks;
use super::clients::{Client, ClientRecord, IpAllow, SecretHash};
use super::registry::ClientError;
use super::{Authority, Tenants};
use crate::audit::{AuditEvent, AuditKind};
use crate::error::ProxyError;
use crate::ids;

/// Default grace of the old secret after a rotation.
pub const DEFAULT_GRACE_MINUTES: u64 = 60;
/// Longest grace accepted (one week).
pub const MAX_GRACE_MINUTES: u64 = 7 * 24 * 60;
/// Default lifetime of a static API key when `expirationDays` is absent.
pub const DEFAULT_STATIC_KEY_DAYS: u64 = 30;

/// A static API key, as `generate-token` shows it (once).
#[derive(Debug)]
pub struct StaticKey {
    pub api_key: SecretString,
    pub expires_in: u64,
    pub expires_at: OffsetDateTime,
    pub scope: String,
    pub jti: String,
}

/// `POST /api/admin/oauth/clients`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NewClient {
    pub name: String,
    pub description: Option<String>,
    pub tenant: Option<String>,
    pub tenants: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub allowed_integrations: Option<Vec<String>>,
    pub allowed_tools: Option<Vec<String>>,
    pub allowed_ips: Option<Vec<String>>,
    pub token_expiration_minutes: Option<u64>,
    /// Public keys (a JWK set or one JWK) enabling `private_key_jwt`.
    pub jwks: Option<serde_json::Value>,
}

/// `PUT /api/admin/oauth/clients/{id}`: every field optional.
/// `{"active": false}` suspends, `{"active": true}` reactivates.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub tenant: Option<String>,
    pub tenants: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub allowed_integrations: Option<Vec<String>>,
    pub allowed_tools: Option<Vec<String>>,
    pub allowed_ips: Option<Vec<String>>,
    pub token_expiration_minutes: Option<u64>,
    pub jwks: Option<serde_json::Value>,
    pub active: Option<bool>,
}

fn invalid(msg: impl Into<String>) -> ClientError {
    ClientError::Invalid(msg.into())
}

fn text(field: &str, s: &str, max: usize) -> Result<String, ClientError> {
    let s = s.trim();
    if s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{field}: at most {max} printable characters"
        )));
    }
    Ok(s.to_owned())
}

fn tenants(one: Option<String>, many: Option<Vec<String>>) -> Result<Tenants, ClientError> {
    let check = |t: &str| {
        ids::validate(t)
            .map(Arc::<str>::from)
            .map_err(|e| invalid(format!("tenant: {e}")))
    };
    match (one, many) {
        (Some(t), None) => Ok(Tenants::One(check(&t)?)),
        (None, Some(list)) if !list.is_empty() && list.len() <= 1000 => {
            let mut out: Vec<Arc<str>> = Vec::with_capacity(list.len());
            for t in &list {
                let t = check(t)?;
                if !out.contains(&t) {
                    out.push(t);
                }
            }
            Ok(Tenants::Many(out.into()))
        }
        (None, Some(_)) => Err(invalid("tenants: give 1 to 1000 tenant ids")),
        _ => Err(invalid("give exactly one of tenant or tenants")),
    }
}

/// Scope tokens per RFC 6749 §3.3 (printable ASCII except space, `"`, `\`).
fn scopes(list: Vec<String>) -> Result<Vec<Arc<str>>, ClientError> {
    let mut out: Vec<Arc<str>> = Vec::new();
    for s in list {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err(invalid(format!(
                "scope `{}` is not a valid scope token",
                s.escape_default()
            )));
        }
        if !out.iter().any(|o| **o == *s) {
            out.push(s.into());
        }
    }
    Ok(out)
}

fn integrations(list: Vec<String>) -> Result<Vec<String>, ClientError> {
    for i in &list {
        ids::validate(i).map_err(|e| invalid(format!("allowedIntegrations: {e}")))?;
    }
    Ok(list)
}

fn tools(list: Vec<String>) -> Result<Vec<String>, ClientError> {
    for t in &list {
        if t.is_empty() || t.len() > 128 || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "allowedTools: names of 1 to 128 printable ASCII characters",
            ));
        }
    }
    Ok(list)
}

fn ips(list: Vec<String>) -> Result<Vec<IpAllow>, ClientError> {
    list.iter()
        .map(|s| s.parse().map_err(|e| invalid(format!("allowedIps: {e}"))))
        .collect()
}

impl Authority {
    fn check_minutes(&self, m: u64) -> Result<u64, ClientError> {
        let max = self.oauth.max_token_minutes;
        if m == 0 || m > max {
            return Err(invalid(format!("tokenExpirationMinutes must be 1..={max}")));
        }
        Ok(m)
    }

    fn audit_client(&self, kind: AuditKind, client: &Client, actor: &str) {
        self.audit.record(
            kind,
            AuditEvent {
                client_id: Some(&client.client_id),
                actor: Some(actor),
                ..Default::default()
            },
        );
    }

    /// Validates and stores a new client; the secret is returned once.
    pub async fn create_client(
        &self,
        spec: NewClient,
        actor: &str,
    ) -> Result<(Arc<Client>, SecretString), ClientError> {
        let name = text("name", &spec.name, 200)?;
        if name.is_empty() {
            return Err(invalid("name is required"));
        }
        let description = text(
            "description",
            spec.description.as_deref().unwrap_or(""),
            2000,
        )?;
        let tenants = tenants(spec.tenant, spec.tenants)?;
        let scopes = scopes(spec.scopes.unwrap_or_default())?;
        let allowed_integrations = integrations(spec.allowed_integrations.unwrap_or_default())?;
        let allowed_tools = tools(spec.allowed_tools.unwrap_or_default())?;
        let allowed_ips = ips(spec.allowed_ips.unwrap_or_default())?;
        let token_expiration_minutes = spec
            .token_expiration_minutes
            .map(|m| self.check_minutes(m))
            .transpose()?;
        let jwks = spec.jwks.map(validate_jwks).transpose().map_err(invalid)?;
        let now = OffsetDateTime::now_utc();
        let (client, secret) = self
            .clients
            .create(|client_id, secret_hash| ClientRecord {
                client_id,
                name,
                description,
                tenants,
                scopes,
                allowed_integrations,
                allowed_tools,
                allowed_ips,
                token_expiration_minutes,
                jwks,
                active: true,
                secret_hash,
                previous_secret_hash: None,
                previous_secret_valid_until: None,
                created_at: now,
                updated_at: now,
                suspended_at: None,
            })
            .await?;
        self.audit_client(AuditKind::ClientCreated, &client, actor);
        Ok((client, secret))
    }

    /// Applies a partial update. Suspension takes effect on this replica at
    /// once (the in-memory record changes before this returns) and on others
    /// at their next sync.
    pub async fn update_client(
        &self,
        client_id: &str,
        patch: ClientUpdate,
        actor: &str,
    ) -> Result<Arc<Client>, ClientError> {
        // Validate everything before touching the store.
        let name = patch
            .name
            .as_deref()
            .map(|n| text("name", n, 200))
            .transpose()?;
        if name.as_deref() == Some("") {
            return Err(invalid("name must not be empty"));
        }
        let description = patch
            .description
            .as_deref()
            .map(|d| text("description", d, 2000))
            .transpose()?;
        let new_tenants = match (patch.tenant, patch.tenants) {
            (None, None) => None,
            (one, many) => Some(tenants(one, many)?),
        };
        let new_scopes = patch.scopes.map(scopes).transpose()?;
        let new_integrations = patch.allowed_integrations.map(integrations).transpose()?;
        let new_tools = patch.allowed_tools.map(tools).transpose()?;
        let new_ips = patch.allowed_ips.map(ips).transpose()?;
        let minutes = patch
            .token_expiration_minutes
            .map(|m| self.check_minutes(m))
            .transpose()?;
        let new_jwks = patch.jwks.map(validate_jwks).transpose().map_err(invalid)?;
        let client = self
            .clients
            .update(client_id, |c| {
                if new_jwks.is_some() {
                    c.jwks = new_jwks.clone();
                }
                if let Some(v) = &name {
                    c.name = v.clone();
                }
                if let Some(v) = &description {
                    c.description = v.clone();
                }
                if let Some(v) = &new_tenants {
                    c.tenants = v.clone();
                }
                if let Some(v) = &new_scopes {
                    c.scopes = v.clone();
                }
                if let Some(v) = &new_integrations {
                    c.allowed_integrations = v.clone();
                }
                if let Some(v) = &new_tools {
                    c.allowed_tools = v.clone();
                }
                if let Some(v) = &new_ips {
                    c.allowed_ips = v.clone();
                }
                if minutes.is_some() {
                    c.token_expiration_minutes = minutes;
                }
                match patch.active {
                    Some(false) if c.active => {
                        c.active = false;
                        c.suspended_at = Some(OffsetDateTime::now_utc());
                    }
                    Some(true) => c.active = true,
                    _ => {}
                }
                Ok(())
            })
            .await?;
        self.audit_client(AuditKind::ClientUpdated, &client, actor);
        Ok(client)
    }

    /// Deletes a client; its tokens stop working at once.
    pub async fn delete_client(&self, client_id: &str, actor: &str) -> Result<(), ClientError> {
        self.clients.delete(client_id).await?;
        self.audit.record(
            AuditKind::ClientDeleted,
            AuditEvent {
                client_id: Some(client_id),
                actor: Some(actor),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// A new secret; the old one keeps working for `grace_minutes`
    /// (default [`DEFAULT_GRACE_MINUTES`]).
    pub async fn rotate_secret(
        &self,
        client_id: &str,
        grace_minutes: Option<u64>,
        actor: &str,
    ) -> Result<(Arc<Client>, SecretString, OffsetDateTime), ClientError> {
        let grace = grace_minutes.unwrap_or(DEFAULT_GRACE_MINUTES);
        if grace > MAX_GRACE_MINUTES {
            return Err(invalid(format!(
                "graceMinutes must be 0..={MAX_GRACE_MINUTES}"
            )));
        }
        let secret = super::clients::new_secret();
        let hash = SecretHash::of(&secret);
        let now = OffsetDateTime::now_utc();
        let client = self
            .clients
            .update(client_id, |c| {
                let old = std::mem::replace(&mut c.secret_hash, hash.clone());
                (c.previous_secret_hash, c.previous_secret_valid_until) = if grace == 0 {
                    (None, None)
                } else {
                    (Some(old), Some(now + Duration::minutes(grace as i64)))
                };
                Ok(())
            })
            .await?;
        self.audit_client(AuditKind::ClientSecretRotated, &client, actor);
        Ok((client, secret, now))
    }

    /// A long-lived token (static API key) for the client: issuer audience,
    /// all the client's scopes, revocable like any token.
    pub async fn static_key(
        &self,
        client_id: &str,
        days: Option<u64>,
        actor: &str,
    ) -> Result<StaticKey, ClientError> {
        let max = self.oauth.max_static_key_days;
        let days = days.unwrap_or(DEFAULT_STATIC_KEY_DAYS.min(max));
        if days == 0 || days > max {
            return Err(invalid(format!("expirationDays must be 1..={max}")));
        }
        let client = self.clients.get(client_id).ok_or(ClientError::NotFound)?;
        if !client.active {
            return Err(invalid("client is suspended"));
        }
        let (token, claims) = self
            .mint(
                &client,
                &client.scopes,
                self.issuer.clone(),
                days * 86_400,
                super::jwt::unix_now(),
            )
            .map_err(|_| {
                ClientError::Store(crate::store::StoreError::Refused("signing failed".into()))
            })?;
        self.record_issued(
            AuditKind::StaticKeyIssued,
            &client,
            &claims,
            None,
            None,
            Some(actor),
        );
        let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp as i64)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Ok(StaticKey {
            api_key: token,
            expires_in: claims.exp - claims.iat,
            expires_at,
            scope: claims.scope,
            jti: claims.jti,
        })
    }
}

impl From<ClientError> for ProxyError {
    fn from(e: ClientError) -> Self {
        use crate::store::StoreError;
        match e {
            ClientError::Invalid(m) => ProxyError::BadRequest(m),
            ClientError::NotFound => ProxyError::NotFound,
            ClientError::Store(StoreError::Conflict) => {
                ProxyError::Conflict("concurrent update; retry".into())
            }
            ClientError::Store(StoreError::Unavailable(m)) => {
                tracing::warn!(error = %m, "store unavailable during a client change");
                ProxyError::StoreUnavailable {
                    retry_after_secs: 5,
                }
            }
            ClientError::Store(e) => {
                tracing::error!(error = %e, "store failure during a client change");
                ProxyError::Internal
            }
        }
    }
}
