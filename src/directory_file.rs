//! `directory.import_file`: a directory snapshot merged at start-up into the directory and the
//! store, read a piece at a time. A file of ten million things is about 750 MB of JSON; neither
//! it nor its entries as one list are ever held, so the import's peak memory is the directory's
//! own (issue 18).
//!
//! A thread parses the file (serde_json reads byte by byte, which is blocking work) and hands
//! pieces of [`PIECE`] entries over a short channel; the start-up task puts each piece into
//! the directory and into one store transaction. A bad entry or bad JSON fails the start, with
//! the entry's index or the line and column, and the transaction is rolled back: the store is
//! as before, and the directory being built is dropped with the process.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::Context;
use rule_engine::directory::{
    read_snapshot, DirectorySnapshot, ImportError, ReadSnapshotError, SnapshotEntry,
};
use rule_engine::Directory;

use crate::store::RuleStore;

/// Entries per piece handed from the parsing thread.
const PIECE: usize = 1024;
/// Pieces parsed ahead of the import.
const PIECES_AHEAD: usize = 4;
/// Entries of a file small enough for the other replicas' notice to carry it (the notice
/// falls back to "read the store" when it does not fit).
const INLINE_ENTRIES: usize = 100;

/// What an import file held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub domains: usize,
    pub things: usize,
}

/// The import stopped reading because the importer is gone (it failed, and says why).
#[derive(Debug)]
struct ImporterGone;

/// Merges the snapshot in `path` into `directory` and the store.
pub async fn import_file(
    path: &Path,
    directory: &mut Directory,
    store: &RuleStore,
) -> anyhow::Result<Imported> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (pieces, mut received) = tokio::sync::mpsc::channel::<Vec<SnapshotEntry>>(PIECES_AHEAD);
    let reader = tokio::task::spawn_blocking(move || {
        let mut piece = Vec::with_capacity(PIECE);
        read_snapshot(BufReader::with_capacity(1 << 20, file), |entry| {
            piece.push(entry);
            if piece.len() == PIECE {
                let full = std::mem::replace(&mut piece, Vec::with_capacity(PIECE));
                pieces.blocking_send(full).map_err(|_| ImporterGone)?;
            }
            Ok(())
        })?;
        if !piece.is_empty() {
            pieces
                .blocking_send(piece)
                .map_err(|_| ReadSnapshotError::Stopped(ImporterGone))?;
        }
        Ok::<_, ReadSnapshotError<ImporterGone>>(())
    });

    let mut import = store
        .begin_directory_import()
        .await
        .context("starting the store's import")?;
    let mut counts = Imported::default();
    let mut things = Vec::with_capacity(PIECE);
    // A small file travels in the notice, as `POST /directory` does: a start does not make
    // every other replica read the whole stored directory.
    let mut inline = Some(DirectorySnapshot::default());
    while let Some(piece) = received.recv().await {
        for entry in piece {
            match entry {
                SnapshotEntry::Domain(d) => {
                    directory
                        .insert_domain(&d.id, &d.parent)
                        .map_err(|source| ImportError::Domain {
                            index: counts.domains,
                            source,
                        })?;
                    import
                        .domains(std::slice::from_ref(&d))
                        .await
                        .context("storing the imported directory")?;
                    counts.domains += 1;
                    if let Some(snapshot) = inline.as_mut() {
                        snapshot.domains.push(d);
                    }
                }
                SnapshotEntry::Thing(t) => {
                    directory.import_thing(
                        counts.things,
                        &t.thing_name,
                        &t.thing_type,
                        &t.domain,
                    )?;
                    if let Some(snapshot) = inline.as_mut() {
                        snapshot.things.push(t.clone());
                    }
                    things.push(t);
                    counts.things += 1;
                }
            }
            // Past what a notice carries, nothing more is copied for it.
            if counts.domains + counts.things > INLINE_ENTRIES {
                inline = None;
            }
        }
        import
            .things(&things)
            .await
            .context("storing the imported directory")?;
        things.clear();
    }
    match reader.await.context("the import file's reader")? {
        Ok(()) => {}
        Err(ReadSnapshotError::Json(e)) => return Err(e).context("not a directory snapshot"),
        // The receiving side only goes away by returning above.
        Err(ReadSnapshotError::Stopped(ImporterGone)) => anyhow::bail!("import interrupted"),
    }
    import
        .commit(inline.as_ref())
        .await
        .context("storing the imported directory")?;
    Ok(counts)
}
