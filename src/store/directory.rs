//! The directory of things and domains in the store, so that a restart keeps what life cycle
//! events and imports taught the engine.

use std::borrow::Cow;

use rule_engine::directory::{
    DirectoryChange, DirectorySnapshot, DomainEntry, ImportError, ThingChange, ThingEntry,
};
use rule_engine::Directory;
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{placeholders, Engine, RuleStore, StoreError};

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
    /// A page of things the database built that is not the JSON asked for (a bug).
    #[error("the stored directory: a page of things is unreadable: {0}")]
    Page(serde_json::Error),
}

/// Things per page of [`RuleStore::read_directory`].
pub const READ_PAGE: i64 = 4096;

/// A page of things after a rowid (SQLite: in table order, no index lookups), as one JSON array.
/// The aggregate answers one row even for an empty page, with `last` NULL.
const SQLITE_PAGE: &str = "SELECT json_group_array(json_array(thing_name, thing_type, domain)) \
     AS page, CAST(max(id) AS TEXT) AS last FROM (SELECT rowid AS id, thing_name, thing_type, \
     domain FROM things WHERE rowid > CAST($1 AS INTEGER) ORDER BY rowid LIMIT $2)";

/// A page of things after a name (PostgreSQL: along the primary key).
const POSTGRES_PAGE: &str =
    "SELECT json_agg(json_build_array(thing_name, thing_type, domain))::text \
     AS page, max(thing_name) AS last FROM (SELECT thing_name, thing_type, domain \
     FROM things WHERE thing_name > $1 ORDER BY thing_name LIMIT $2) AS things_page";

/// A thing of a page: name, type and domain, borrowed from the page where JSON needs no
/// unescaping.
#[derive(Debug, Deserialize)]
pub struct StoredThing<'a>(
    #[serde(borrow)] pub Cow<'a, str>,
    #[serde(borrow)] pub Cow<'a, str>,
    #[serde(borrow)] pub Cow<'a, str>,
);

/// A piece of the stored directory (see [`RuleStore::read_directory`]).
pub enum StoredPart<'a> {
    Domains(&'a [DomainEntry]),
    /// Things in the store's order; `first` is the row number of the first (for errors).
    Things {
        first: usize,
        things: &'a [StoredThing<'a>],
    },
}

impl StoredPart<'_> {
    /// Merges this piece into `directory`.
    pub fn import_into(self, directory: &mut Directory) -> Result<(), ImportError> {
        match self {
            StoredPart::Domains(domains) => directory.import_domains(domains),
            StoredPart::Things { first, things } => things
                .iter()
                .enumerate()
                .try_for_each(|(i, t)| directory.import_thing(first + i, &t.0, &t.1, &t.2)),
        }
    }
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
        // Sized once: a table grown by doubling holds the old table while it moves.
        let things: i64 = sqlx::query_scalar("SELECT count(*) FROM things")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::Db)?;
        directory.reserve(usize::try_from(things).unwrap_or(0));
        self.read_directory(|part| part.import_into(directory))
            .await
    }

    /// The stored directory, handed to `apply` a piece at a time (the domains, then pages of
    /// [`READ_PAGE`] things), so that a replica merging it holds its directory's lock for one
    /// piece at a time, and no copy of the whole directory is ever made. An error from `apply`
    /// stops the read.
    ///
    /// A page is one row: the things as one JSON array, built by the database. Ten million rows
    /// one by one cost a hand-off between sqlx's SQLite thread and the reader, a row
    /// conversion and three strings each, twice what putting them in the directory costs; a
    /// page parses in place.
    pub async fn read_directory(
        &self,
        mut apply: impl FnMut(StoredPart<'_>) -> Result<(), ImportError>,
    ) -> Result<(), LoadDirectoryError> {
        let domains = self.load_domains().await?;
        apply(StoredPart::Domains(&domains))?;
        // Where the next page starts, as text on both engines (SQLite's rowid cast).
        let (sql, mut after) = match self.engine {
            Engine::Sqlite => (SQLITE_PAGE, "0".to_owned()),
            Engine::Postgres => (POSTGRES_PAGE, String::new()),
        };
        let mut first = 0;
        loop {
            let row = sqlx::query(sql)
                .bind(after.as_str())
                .bind(READ_PAGE)
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::Db)?;
            let page: Option<String> = row.try_get("page").map_err(StoreError::Db)?;
            match row.try_get::<Option<String>, _>("last") {
                Ok(Some(last)) => after = last,
                Ok(None) => break,
                Err(e) => return Err(StoreError::Db(e).into()),
            }
            let things: Vec<StoredThing> = serde_json::from_str(page.as_deref().unwrap_or("[]"))
                .map_err(LoadDirectoryError::Page)?;
            apply(StoredPart::Things {
                first,
                things: &things,
            })?;
            first += things.len();
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
        let mut import = self.begin_directory_import().await?;
        import.domains(&snapshot.domains).await?;
        import.things(&snapshot.things).await?;
        import.commit(Some(snapshot)).await
    }

    /// An import written piece by piece, in one transaction: a streamed import file.
    pub async fn begin_directory_import(&self) -> Result<DirectoryImport<'_>, StoreError> {
        Ok(DirectoryImport {
            store: self,
            tx: self.pool.begin().await?,
        })
    }
}

/// An import in progress (see [`RuleStore::begin_directory_import`]); nothing of it is stored
/// unless it is committed.
pub struct DirectoryImport<'s> {
    store: &'s RuleStore,
    tx: Tx<'static>,
}

impl DirectoryImport<'_> {
    pub async fn domains(&mut self, domains: &[DomainEntry]) -> Result<(), StoreError> {
        // Domains are few; one by one also keeps a domain listed twice from failing the
        // statement.
        for d in domains {
            upsert_domains(&mut self.tx, std::slice::from_ref(d)).await?;
        }
        Ok(())
    }

    pub async fn things(&mut self, things: &[ThingEntry]) -> Result<(), StoreError> {
        for chunk in things.chunks(IMPORT_CHUNK) {
            upsert_things(&mut self.tx, chunk).await?;
        }
        Ok(())
    }

    /// Commits, announcing the import to the other replicas (PostgreSQL): with the snapshot
    /// when it is given and fits in a notification, else as "read the stored directory".
    pub async fn commit(mut self, snapshot: Option<&DirectorySnapshot>) -> Result<(), StoreError> {
        if self.store.announces_changes() {
            let notice = match snapshot {
                Some(snapshot) => {
                    super::notify::DirectoryNotice::of(&self.store.instance, snapshot)
                }
                None => super::notify::DirectoryNotice::reload(&self.store.instance),
            };
            sqlx::query("SELECT pg_notify($1, $2)::text")
                .bind(super::notify::DIRECTORY_CHANNEL)
                .bind(notice.encode())
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
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
