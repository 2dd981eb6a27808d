//! The directory of things and domains in the store, so that a restart keeps what life cycle
//! events and imports taught the engine.

use futures_util::TryStreamExt;
use rule_engine::directory::{
    DirectoryChange, DirectorySnapshot, DomainEntry, ImportError, ThingChange, ThingEntry,
};
use rule_engine::Directory;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{placeholders, RuleStore, StoreError};

/// A row of `SELECT thing_name, thing_type, domain FROM things`.
fn thing_entry(row: &AnyRow) -> Result<ThingEntry, sqlx::Error> {
    Ok(ThingEntry {
        thing_name: row.try_get("thing_name")?,
        thing_type: row.try_get("thing_type")?,
        domain: row.try_get("domain")?,
    })
}

/// Why the stored directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadDirectoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A row the directory refuses (written by hand, or by a version that let it in).
    #[error("the stored directory: {0}")]
    Refused(#[from] ImportError),
}

/// Rows per multi-row INSERT of an import: 3 parameters each stays far below PostgreSQL's
/// 65,535-parameter limit and SQLite's 32,766.
const IMPORT_CHUNK: usize = 1000;

impl RuleStore {
    /// The stored directory, read into a [`Directory`] row by row: at start-up, ten million
    /// things must not be held as rows and then as a snapshot before they are a directory.
    pub async fn load_directory_into(
        &self,
        directory: &mut Directory,
    ) -> Result<(), LoadDirectoryError> {
        let domains = self.load_domains().await?;
        directory.import(DirectorySnapshot {
            domains,
            things: Vec::new(),
        })?;
        let mut rows =
            sqlx::query("SELECT thing_name, thing_type, domain FROM things").fetch(&self.pool);
        let mut index = 0;
        while let Some(row) = rows.try_next().await.map_err(StoreError::Db)? {
            directory.import_thing(index, &thing_entry(&row).map_err(StoreError::Db)?)?;
            index += 1;
        }
        Ok(())
    }

    async fn load_domains(&self) -> Result<Vec<DomainEntry>, StoreError> {
        sqlx::query("SELECT id, parent FROM domains ORDER BY id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(DomainEntry {
                    id: r.try_get("id")?,
                    parent: r.try_get("parent")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(StoreError::Db)
    }

    /// Everything the directory holds, domains by id and things by name.
    pub async fn load_directory(&self) -> Result<DirectorySnapshot, StoreError> {
        let domains = self.load_domains().await?;
        let things =
            sqlx::query("SELECT thing_name, thing_type, domain FROM things ORDER BY thing_name")
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(thing_entry)
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(DirectorySnapshot { domains, things })
    }

    /// Stores what one life cycle event changed.
    pub async fn apply_directory_change(&self, change: &DirectoryChange) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for d in &change.domains {
            upsert_domains(&mut tx, std::slice::from_ref(d)).await?;
        }
        match &change.thing {
            ThingChange::Unchanged => {}
            ThingChange::Upserted {
                thing_name, thing, ..
            } => {
                let entry = ThingEntry {
                    thing_name: thing_name.clone(),
                    thing_type: thing.thing_type.clone(),
                    domain: thing.domain.clone(),
                };
                upsert_things(&mut tx, std::slice::from_ref(&entry)).await?;
            }
            ThingChange::Removed { thing_name, .. } => {
                sqlx::query("DELETE FROM things WHERE thing_name = $1")
                    .bind(thing_name)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Adds or replaces every domain and thing of `snapshot`, in one transaction (all or
    /// nothing). Entries not in the snapshot are kept: an import merges.
    pub async fn import_directory(&self, snapshot: &DirectorySnapshot) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Domains are few; one by one also keeps a domain listed twice from failing the
        // statement.
        for d in &snapshot.domains {
            upsert_domains(&mut tx, std::slice::from_ref(d)).await?;
        }
        for chunk in snapshot.things.chunks(IMPORT_CHUNK) {
            upsert_things(&mut tx, chunk).await?;
        }
        if self.announces_changes() {
            let payload = super::notify::DirectoryNotice::of(&self.instance, snapshot).encode();
            sqlx::query("SELECT pg_notify($1, $2)::text")
                .bind(super::notify::DIRECTORY_CHANNEL)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

async fn upsert_domains(tx: &mut Tx<'_>, rows: &[DomainEntry]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO domains (id, parent) VALUES {} \
         ON CONFLICT (id) DO UPDATE SET parent = excluded.parent",
        placeholders(rows.len(), 2)
    );
    let mut q = sqlx::query(&sql);
    for d in rows {
        q = q.bind(&d.id).bind(&d.parent);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

async fn upsert_things(tx: &mut Tx<'_>, rows: &[ThingEntry]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    // A name listed twice in one statement would make PostgreSQL refuse the whole upsert
    // ("cannot affect row a second time"); the last entry wins, as it would one by one.
    let mut seen = std::collections::HashMap::with_capacity(rows.len());
    for (i, t) in rows.iter().enumerate() {
        seen.insert(t.thing_name.as_str(), i);
    }
    let mut unique: Vec<&ThingEntry> = rows
        .iter()
        .enumerate()
        .filter(|(i, t)| seen.get(t.thing_name.as_str()) == Some(i))
        .map(|(_, t)| t)
        .collect();
    unique.sort_by(|a, b| a.thing_name.cmp(&b.thing_name));
    let sql = format!(
        "INSERT INTO things (thing_name, thing_type, domain) VALUES {} \
         ON CONFLICT (thing_name) DO UPDATE SET thing_type = excluded.thing_type, \
         domain = excluded.domain",
        placeholders(unique.len(), 3)
    );
    let mut q = sqlx::query(&sql);
    for t in unique {
        q = q.bind(&t.thing_name).bind(&t.thing_type).bind(&t.domain);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(1, 2), "($1, $2)");
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }
}
