//! Static access keys: made by `ccstream credentials create`, kept in the rule store with the
//! secret sealed under the master key, and looked up by the API for every signed request.
//!
//! Lookups go through a small cache whose entries live [`MAX_AGE`]: every replica reads a key's
//! row again at most twice a second, so a revocation written by any replica (or by the CLI)
//! takes effect everywhere within a second, without a notification channel and on SQLite as on
//! PostgreSQL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::random;
use super::seal::{MasterKey, SealError};
use super::{Caller, Role};
use crate::store::{RuleStore, StoreError, StoredCredential};

/// How long a looked-up key (or the knowledge that there is none) is trusted.
pub const MAX_AGE: Duration = Duration::from_millis(500);

/// Past this many cached keys the cache starts over, so a flood of made-up key ids cannot grow
/// it without bound.
const MAX_ENTRIES: usize = 10_000;

/// An access key that may sign requests, with what it resolves to. Its `Debug` hides the
/// secret.
#[derive(PartialEq, Eq)]
pub struct Known {
    pub secret: String,
    pub caller: Caller,
}

impl std::fmt::Debug for Known {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Known")
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unknown or revoked access key")]
    Unknown,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A row that cannot be used: its secret does not open under this master key (the key was
    /// changed, or the row was copied between keys), or its role is not one we know.
    #[error("access key {access_key_id}: {reason}")]
    Unusable {
        access_key_id: String,
        reason: String,
    },
}

struct Cached {
    at: Instant,
    known: Option<Arc<Known>>,
}

pub struct StaticKeys {
    store: RuleStore,
    master: MasterKey,
    cache: Mutex<HashMap<String, Cached>>,
}

impl StaticKeys {
    pub fn new(store: RuleStore, master: MasterKey) -> StaticKeys {
        StaticKeys {
            store,
            master,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn resolve(&self, access_key_id: &str) -> Result<Arc<Known>, KeyError> {
        if let Some(known) = self.cached(access_key_id) {
            return known.ok_or(KeyError::Unknown);
        }
        // The answer is as old as the moment the query started: a revocation written while it
        // runs must still show within MAX_AGE of being written.
        let asked = Instant::now();
        let row = self.store.credential(access_key_id).await?;
        let known = match row {
            Some(row) if row.revoked_at_ms.is_none() => Some(Arc::new(open(&self.master, &row)?)),
            _ => None,
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_ENTRIES {
                // Made-up ids go first; real keys stay unless there are that many of them.
                cache.retain(|_, c| c.known.is_some() && c.at.elapsed() < MAX_AGE);
                if cache.len() >= MAX_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(
                access_key_id.to_owned(),
                Cached {
                    at: asked,
                    known: known.clone(),
                },
            );
        }
        known.ok_or(KeyError::Unknown)
    }

    /// The cached answer while it is fresh: `Some(None)` for a key known not to exist.
    fn cached(&self, access_key_id: &str) -> Option<Option<Arc<Known>>> {
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(access_key_id)?;
        (entry.at.elapsed() < MAX_AGE).then(|| entry.known.clone())
    }
}

/// A stored row's secret opened and its identity read.
pub fn open(master: &MasterKey, row: &StoredCredential) -> Result<Known, KeyError> {
    let unusable = |reason: String| KeyError::Unusable {
        access_key_id: row.access_key_id.clone(),
        reason,
    };
    let sealed = STANDARD
        .decode(&row.sealed_secret)
        .map_err(|e| unusable(format!("sealed secret is not base64: {e}")))?;
    let secret = master
        .open(&sealed, row.access_key_id.as_bytes())
        .map_err(|e: SealError| unusable(e.to_string()))?;
    let secret = String::from_utf8(secret).map_err(|_| unusable("secret is not text".into()))?;
    let role = Role::parse(&row.role).ok_or_else(|| unusable(format!("role {:?}", row.role)))?;
    Ok(Known {
        secret,
        caller: Caller {
            user: row.user.clone(),
            role,
            domain: row.domain.clone(),
        },
    })
}

/// A new key for `caller`: its row (secret sealed) and the secret, shown once.
pub fn generate(
    master: &MasterKey,
    caller: &Caller,
) -> Result<(StoredCredential, String), KeyError> {
    let access_key_id = random::key_id("AKIA");
    let secret = random::secret();
    let sealed = master
        .seal(secret.as_bytes(), access_key_id.as_bytes())
        .map_err(|e| KeyError::Unusable {
            access_key_id: access_key_id.clone(),
            reason: e.to_string(),
        })?;
    let row = StoredCredential {
        access_key_id,
        user: caller.user.clone(),
        role: caller.role.as_str().to_owned(),
        domain: caller.domain.clone(),
        sealed_secret: STANDARD.encode(sealed),
        created_at_ms: 0,
        revoked_at_ms: None,
    };
    Ok((row, secret))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn tenant() -> Caller {
        Caller {
            user: "ann".into(),
            role: Role::ReadWrite,
            domain: "a".into(),
        }
    }

    #[tokio::test]
    async fn keys_resolve_until_revoked_and_the_revocation_shows_within_max_age() {
        let store = RuleStore::connect("sqlite::memory:").await.unwrap();
        let master = MasterKey::from_base64(KEY).unwrap();
        let (row, secret) = generate(&master, &tenant()).unwrap();
        assert!(row.access_key_id.starts_with("AKIA") && row.access_key_id.len() == 20);
        assert_eq!(secret.len(), 40);
        assert!(!row.sealed_secret.contains(&secret));
        store.insert_credential(&row).await.unwrap();

        let keys = StaticKeys::new(store.clone(), master);
        let known = keys.resolve(&row.access_key_id).await.unwrap();
        assert_eq!(known.secret, secret);
        assert_eq!(known.caller, tenant());
        assert!(matches!(
            keys.resolve("AKIANOSUCHKEY").await,
            Err(KeyError::Unknown)
        ));

        assert!(store.revoke_credential(&row.access_key_id).await.unwrap());
        assert!(!store.revoke_credential(&row.access_key_id).await.unwrap());
        tokio::time::sleep(MAX_AGE).await;
        assert!(matches!(
            keys.resolve(&row.access_key_id).await,
            Err(KeyError::Unknown)
        ));
    }

    #[tokio::test]
    async fn a_secret_sealed_for_another_key_or_master_is_unusable() {
        let master = MasterKey::from_base64(KEY).unwrap();
        let (mut row, _) = generate(&master, &tenant()).unwrap();
        let other = MasterKey::from_base64(&STANDARD.encode([9u8; 32])).unwrap();
        assert!(matches!(open(&other, &row), Err(KeyError::Unusable { .. })));
        row.access_key_id = "AKIAOTHER".into();
        assert!(matches!(
            open(&master, &row),
            Err(KeyError::Unusable { .. })
        ));
    }
}
