//! Static access keys (`api.auth = "sigv4"`): rows as the store keeps them. The secret arrives
//! here already sealed; the store never sees it in the clear.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, RuleStore, StoreError};

/// One access key's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    pub access_key_id: String,
    pub user: String,
    /// `Read` or `ReadWrite`.
    pub role: String,
    pub domain: String,
    /// base64 of the secret sealed under the master key, the access key id as associated data.
    pub sealed_secret: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

const COLUMNS: &str =
    "access_key_id, user_name, role, domain, sealed_secret, created_at, revoked_at";

impl RuleStore {
    /// Stores a new key; `created_at_ms` is set here.
    pub async fn insert_credential(
        &self,
        credential: &StoredCredential,
    ) -> Result<StoredCredential, StoreError> {
        let created_at_ms = now_ms();
        sqlx::query(
            "INSERT INTO credentials (access_key_id, user_name, role, domain, sealed_secret, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&credential.access_key_id)
        .bind(&credential.user)
        .bind(&credential.role)
        .bind(&credential.domain)
        .bind(&credential.sealed_secret)
        .bind(created_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(StoredCredential {
            created_at_ms,
            revoked_at_ms: None,
            ..credential.clone()
        })
    }

    /// One key, revoked or not.
    pub async fn credential(
        &self,
        access_key_id: &str,
    ) -> Result<Option<StoredCredential>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM credentials WHERE access_key_id = $1"
        ))
        .bind(access_key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(stored).transpose()?)
    }

    /// Every key, oldest first.
    pub async fn list_credentials(&self) -> Result<Vec<StoredCredential>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM credentials ORDER BY created_at, access_key_id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(stored).collect::<Result<_, _>>()?)
    }

    /// Marks a key revoked; false when there is no such key or it was revoked already.
    pub async fn revoke_credential(&self, access_key_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE credentials SET revoked_at = $1 \
             WHERE access_key_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(access_key_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn stored(row: &AnyRow) -> Result<StoredCredential, sqlx::Error> {
    Ok(StoredCredential {
        access_key_id: row.try_get("access_key_id")?,
        user: row.try_get("user_name")?,
        role: row.try_get("role")?,
        domain: row.try_get("domain")?,
        sealed_secret: row.try_get("sealed_secret")?,
        created_at_ms: row.try_get("created_at")?,
        revoked_at_ms: row.try_get("revoked_at")?,
    })
}
