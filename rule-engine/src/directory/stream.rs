//! A [`DirectorySnapshot`] document read one entry at a time: an import of ten million things
//! (about 750 MB of JSON) never holds the document, nor its entries as one list, before they
//! are in the directory.
//!
//! The document is the one [`DirectorySnapshot`] describes (unknown fields refused, both lists
//! optional, in either order); its entries reach the caller in document order.

use std::fmt;
use std::io::Read;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::{DomainEntry, ThingEntry};

/// One entry of a snapshot document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotEntry {
    Domain(DomainEntry),
    Thing(ThingEntry),
}

/// Why [`read_snapshot`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadSnapshotError<E> {
    /// Not a snapshot document (with the line and column), or the reader failed.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// What the caller's function returned to stop the read.
    #[error("{0}")]
    Stopped(E),
}

/// Reads a snapshot document from `reader` (buffer it: serde_json reads byte by byte), calling
/// `each` for every entry. An error from `each` stops the read and is returned as
/// [`ReadSnapshotError::Stopped`].
pub fn read_snapshot<R: Read, E>(
    reader: R,
    mut each: impl FnMut(SnapshotEntry) -> Result<(), E>,
) -> Result<(), ReadSnapshotError<E>> {
    let mut stopped = None;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let read = Document {
        each: &mut each,
        stopped: &mut stopped,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (read, stopped) {
        (_, Some(e)) => Err(ReadSnapshotError::Stopped(e)),
        (Err(e), None) => Err(e.into()),
        (Ok(()), None) => Ok(()),
    }
}

const FIELDS: &[&str] = &["domains", "things"];

/// The document: an object with the two lists.
struct Document<'a, F, E> {
    each: &'a mut F,
    stopped: &'a mut Option<E>,
}

impl<'de, F, E> DeserializeSeed<'de> for Document<'_, F, E>
where
    F: FnMut(SnapshotEntry) -> Result<(), E>,
{
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, F, E> Visitor<'de> for Document<'_, F, E>
where
    F: FnMut(SnapshotEntry) -> Result<(), E>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a directory snapshot: {\"domains\": [...], \"things\": [...]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = [false; 2];
        while let Some(key) = map.next_key::<String>()? {
            let Some(field) = FIELDS.iter().position(|f| *f == key) else {
                return Err(de::Error::unknown_field(&key, FIELDS));
            };
            if std::mem::replace(&mut seen[field], true) {
                return Err(de::Error::duplicate_field(FIELDS[field]));
            }
            let (each, stopped) = (&mut *self.each, &mut *self.stopped);
            if field == 0 {
                map.next_value_seed(List::new(each, stopped, SnapshotEntry::Domain, "domains"))?;
            } else {
                map.next_value_seed(List::new(each, stopped, SnapshotEntry::Thing, "things"))?;
            }
        }
        Ok(())
    }
}

/// One of the lists, its entries handed on as they are read.
struct List<'a, F, E, T, W> {
    each: &'a mut F,
    stopped: &'a mut Option<E>,
    entry: W,
    what: &'static str,
    _entry: PhantomData<T>,
}

impl<'a, F, E, T, W> List<'a, F, E, T, W> {
    fn new(each: &'a mut F, stopped: &'a mut Option<E>, entry: W, what: &'static str) -> Self {
        List {
            each,
            stopped,
            entry,
            what,
            _entry: PhantomData,
        }
    }
}

impl<'de, F, E, T, W> DeserializeSeed<'de> for List<'_, F, E, T, W>
where
    F: FnMut(SnapshotEntry) -> Result<(), E>,
    T: DeserializeOwned,
    W: Fn(T) -> SnapshotEntry,
{
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F, E, T, W> Visitor<'de> for List<'_, F, E, T, W>
where
    F: FnMut(SnapshotEntry) -> Result<(), E>,
    T: DeserializeOwned,
    W: Fn(T) -> SnapshotEntry,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of {}", self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<T>()? {
            if let Err(e) = (self.each)((self.entry)(entry)) {
                *self.stopped = Some(e);
                return Err(de::Error::custom("stopped by the reader"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::directory::DirectorySnapshot;

    fn read_all(text: &str) -> Result<Vec<SnapshotEntry>, String> {
        let mut entries = Vec::new();
        read_snapshot(text.as_bytes(), |e| {
            entries.push(e);
            Ok::<_, String>(())
        })
        .map_err(|e| e.to_string())?;
        Ok(entries)
    }

    #[test]
    fn entries_come_in_document_order_as_the_whole_document_parses() {
        let text = include_str!("../../../fixtures/directory/small.json");
        let whole: DirectorySnapshot = serde_json::from_str(text).unwrap();
        let entries = read_all(text).unwrap();
        let want: Vec<SnapshotEntry> = whole
            .domains
            .into_iter()
            .map(SnapshotEntry::Domain)
            .chain(whole.things.into_iter().map(SnapshotEntry::Thing))
            .collect();
        assert_eq!(entries, want);

        // Things first, numbers as thing types, lists left out: as the whole parse takes them.
        let text = r#"{"things": [{"thingName": "n", "thingType": 7, "domain": "d"}],
                       "domains": [{"id": "d", "parent": "root"}]}"#;
        let entries = read_all(text).unwrap();
        assert!(matches!(&entries[0], SnapshotEntry::Thing(t) if t.thing_type == "7"));
        assert!(matches!(&entries[1], SnapshotEntry::Domain(d) if d.id == "d"));
        assert_eq!(read_all("{}").unwrap(), []);
    }

    #[test]
    fn what_the_whole_parse_refuses_is_refused() {
        for bad in [
            r#"{"thing": []}"#,
            r#"{"things": [{"thingName": "n", "thingType": "t"}]}"#,
            r#"{"things": [{"thingName": "n", "thingType": "t", "domain": "d", "x": 1}]}"#,
            r#"{"things": [], "things": []}"#,
            r#"{"things": {}}"#,
            r#"{"things": []} trailing"#,
            r#"{"things": [{"thingName": "n", "thingType": "t", "domain": "d"}"#,
            "",
        ] {
            assert!(
                serde_json::from_str::<DirectorySnapshot>(bad).is_err(),
                "the whole parse takes {bad}"
            );
            assert!(read_all(bad).is_err(), "the stream takes {bad}");
        }
    }

    #[test]
    fn the_callers_error_stops_the_read() {
        let text = r#"{"things": [
            {"thingName": "a", "thingType": "t", "domain": "d"},
            {"thingName": "b", "thingType": "t", "domain": "d"},
            {"thingName": "c", "thingType": "t", "domain": "d"}]}"#;
        let mut seen = 0;
        let e = read_snapshot(text.as_bytes(), |_| {
            seen += 1;
            if seen == 2 {
                Err("enough")
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(matches!(e, ReadSnapshotError::Stopped("enough")));
        assert_eq!(seen, 2);
    }
}
