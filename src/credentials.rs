//! `ccstream credentials create | list | revoke`: the operator's side of the static access keys
//! that `api.auth = "sigv4"` accepts ([`crate::auth::keys`]). The secret is printed once, by
//! `create`, and stored only sealed under `api.sigv4.master_key`.

use std::fmt::Write as _;

use anyhow::Context;
use serde_json::json;

use crate::auth::{keys, master_key, Caller, Role};
use crate::config::{AuthMode, Config};
use crate::store::{RuleStore, StoredCredential};

async fn store(config: &Config) -> anyhow::Result<RuleStore> {
    RuleStore::connect(&config.store.url)
        .await
        .context("opening the rule store")
}

/// Makes a key for (user, role, domain) and returns the JSON to print: the id and the secret.
pub async fn create(
    config: &Config,
    user: &str,
    role: &str,
    domain: &str,
) -> anyhow::Result<String> {
    let role = Role::parse(role).with_context(|| format!("--role {role:?}: Read or ReadWrite"))?;
    anyhow::ensure!(!user.is_empty(), "--user must not be empty");
    anyhow::ensure!(!domain.is_empty(), "--domain must not be empty");
    let master = master_key(&config.api.sigv4)?;
    if !config.api.auth.accepts(AuthMode::Sigv4) {
        eprintln!(
            "ccstream: note: api.auth does not accept \"sigv4\"; the key is usable once it does"
        );
    }
    let caller = Caller {
        user: user.to_owned(),
        role,
        domain: domain.to_owned(),
    };
    let (row, secret) = keys::generate(&master, &caller)?;
    store(config).await?.insert_credential(&row).await?;
    Ok(format!(
        "{}\n",
        json!({"accessKeyId": row.access_key_id, "secretAccessKey": secret})
    ))
}

/// Every key (never a secret): a table, or one JSON object per line.
pub async fn list(config: &Config, as_json: bool) -> anyhow::Result<String> {
    let rows = store(config).await?.list_credentials().await?;
    let mut out = String::new();
    if as_json {
        for row in &rows {
            let _ = writeln!(out, "{}", described(row));
        }
        return Ok(out);
    }
    let _ = writeln!(
        out,
        "{:<20}  {:<9}  {:<24}  {:<16}  {:<20}  REVOKED",
        "ACCESS KEY ID", "ROLE", "DOMAIN", "USER", "CREATED"
    );
    for row in &rows {
        let _ = writeln!(
            out,
            "{:<20}  {:<9}  {:<24}  {:<16}  {:<20}  {}",
            row.access_key_id,
            row.role,
            row.domain,
            row.user,
            rfc3339(row.created_at_ms),
            row.revoked_at_ms.map_or_else(|| "-".to_owned(), rfc3339)
        );
    }
    Ok(out)
}

/// Revokes a key; every running replica refuses it within a second.
pub async fn revoke(config: &Config, access_key_id: &str) -> anyhow::Result<String> {
    let store = store(config).await?;
    if store.revoke_credential(access_key_id).await? {
        return Ok(format!("revoked {access_key_id}\n"));
    }
    match store.credential(access_key_id).await? {
        Some(_) => anyhow::bail!("{access_key_id} was revoked already"),
        None => anyhow::bail!("no access key {access_key_id}"),
    }
}

fn described(row: &StoredCredential) -> serde_json::Value {
    json!({
        "accessKeyId": row.access_key_id,
        "user": row.user,
        "role": row.role,
        "domain": row.domain,
        "createdAt": rfc3339(row.created_at_ms),
        "revokedAt": row.revoked_at_ms.map(rfc3339),
    })
}

fn rfc3339(ms: i64) -> String {
    sinks::utc::rfc3339(u64::try_from(ms).unwrap_or(0))
}
