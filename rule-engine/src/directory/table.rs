//! [`ThingTable`]: thing name → (thing type id, domain id), compact enough for ten million
//! things per replica (issue 18).
//!
//! The names live back to back in one byte arena, each behind its length (LEB128, one byte for
//! names under 128 bytes); the hash table holds 12-byte slots: the name's offset in the arena
//! and the two interned ids. A `HashMap<String, _>` would spend a 24-byte `String`, a heap
//! block and its allocator header on every name, and the map's slack on each of them.
//!
//! Names come from tenants, so the table hashes them with std's keyed SipHash (a random key per
//! table), as the `HashMap` it replaces did.
//!
//! A removed thing's name stays in the arena as garbage until the garbage outweighs the live
//! names; then the arena is rewritten once (amortised: a removal costs O(1) on average).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::hash_table::{Entry, HashTable};

/// What the table keeps per thing: the interned thing type and domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ids {
    pub thing_type: u32,
    pub domain: u32,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Offset of the name's length prefix in the arena.
    name: u32,
    ids: Ids,
}

/// The arena outgrew what a slot's 32-bit offset can address (4 GiB of names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the directory's names fill its 4 GiB arena")]
pub struct Full;

/// Garbage the arena keeps before it is worth rewriting, whatever the live names' size.
const MIN_GARBAGE_TO_COMPACT: usize = 1 << 20;

#[derive(Debug, Clone, Default)]
pub(crate) struct ThingTable {
    slots: HashTable<Slot>,
    arena: Vec<u8>,
    /// Bytes of the arena that belong to removed things.
    garbage: usize,
    hasher: RandomState,
}

impl ThingTable {
    pub fn get(&self, name: &str) -> Option<Ids> {
        let hash = self.hasher.hash_one(name.as_bytes());
        self.slots
            .find(hash, |s| name_at(&self.arena, s.name) == name.as_bytes())
            .map(|s| s.ids)
    }

    /// Adds or replaces a thing's ids; returns the ones it replaced.
    pub fn insert(&mut self, name: &str, ids: Ids) -> Result<Option<Ids>, Full> {
        let Self {
            slots,
            arena,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(name.as_bytes());
        let entry = slots.entry(
            hash,
            |s| name_at(arena, s.name) == name.as_bytes(),
            |s| hasher.hash_one(name_at(arena, s.name)),
        );
        match entry {
            Entry::Occupied(mut o) => Ok(Some(std::mem::replace(&mut o.get_mut().ids, ids))),
            Entry::Vacant(v) => {
                // The slot is taken only once the name is stored: a full arena changes nothing.
                let offset = push_name(arena, name)?;
                v.insert(Slot { name: offset, ids });
                Ok(None)
            }
        }
    }

    /// Removes a thing; returns its ids.
    pub fn remove(&mut self, name: &str) -> Option<Ids> {
        let hash = self.hasher.hash_one(name.as_bytes());
        let arena = &self.arena;
        let (slot, _) = self
            .slots
            .find_entry(hash, |s| name_at(arena, s.name) == name.as_bytes())
            .ok()?
            .remove();
        self.garbage += stored_len(name.len());
        if self.garbage > MIN_GARBAGE_TO_COMPACT && self.garbage > self.arena.len() / 2 {
            self.compact_arena();
        }
        Some(slot.ids)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Every thing, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Ids)> + '_ {
        self.slots
            .iter()
            .map(|s| (str_at(&self.arena, s.name), s.ids))
    }

    pub fn reserve(&mut self, additional: usize) {
        let Self {
            slots,
            arena,
            hasher,
            ..
        } = self;
        slots.reserve(additional, |s| hasher.hash_one(name_at(arena, s.name)));
    }

    /// Gives back what growth over-allocated, after a bulk load.
    pub fn shrink_to_fit(&mut self) {
        let Self {
            slots,
            arena,
            hasher,
            ..
        } = self;
        slots.shrink_to_fit(|s| hasher.hash_one(name_at(arena, s.name)));
        arena.shrink_to_fit();
    }

    /// Copies the live names into a new arena, dropping the garbage.
    fn compact_arena(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for slot in self.slots.iter_mut() {
            let name = name_at(&self.arena, slot.name);
            // Never more than the old arena held, which fitted.
            slot.name = u32::try_from(arena.len()).unwrap_or(u32::MAX);
            push_len(&mut arena, name.len());
            arena.extend_from_slice(name);
        }
        self.arena = arena;
        self.garbage = 0;
    }
}

/// Appends a name behind its length; returns where it starts.
fn push_name(arena: &mut Vec<u8>, name: &str) -> Result<u32, Full> {
    let offset = u32::try_from(arena.len()).map_err(|_| Full)?;
    if arena.len() + stored_len(name.len()) > u32::MAX as usize {
        return Err(Full);
    }
    push_len(arena, name.len());
    arena.extend_from_slice(name.as_bytes());
    Ok(offset)
}

fn push_len(arena: &mut Vec<u8>, mut len: usize) {
    while len >= 0x80 {
        arena.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    arena.push(len as u8);
}

/// Bytes a name of `len` bytes takes in the arena, its length included.
fn stored_len(len: usize) -> usize {
    let mut prefix = 1;
    let mut rest = len >> 7;
    while rest > 0 {
        prefix += 1;
        rest >>= 7;
    }
    prefix + len
}

/// The name stored at `offset` (which the table wrote, so it is well-formed).
fn name_at(arena: &[u8], offset: u32) -> &[u8] {
    let mut at = offset as usize;
    let mut len = 0usize;
    let mut shift = 0;
    while let Some(&b) = arena.get(at) {
        at += 1;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    arena.get(at..at + len).unwrap_or_default()
}

fn str_at(arena: &[u8], offset: u32) -> &str {
    // Only `&str` names are ever stored, whole: the bytes are UTF-8.
    std::str::from_utf8(name_at(arena, offset)).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ids(t: u32, d: u32) -> Ids {
        Ids {
            thing_type: t,
            domain: d,
        }
    }

    #[test]
    fn names_of_every_length_round_trip() {
        let mut table = ThingTable::default();
        let names: Vec<String> = [0, 1, 127, 128, 300, 20_000]
            .iter()
            .map(|&n| "é".repeat(n / 2) + &"x".repeat(n % 2))
            .collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(table.insert(name, ids(i as u32, 0)).unwrap(), None);
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(table.get(name), Some(ids(i as u32, 0)), "{}", name.len());
        }
        let mut listed: Vec<&str> = table.iter().map(|(n, _)| n).collect();
        listed.sort_unstable();
        let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(listed, want);
        assert_eq!(stored_len(127), 128);
        assert_eq!(stored_len(128), 130);
        assert_eq!(stored_len(20_000), 20_003);
    }

    #[test]
    fn insert_replaces_and_remove_forgets() {
        let mut table = ThingTable::default();
        assert_eq!(table.insert("a", ids(1, 1)).unwrap(), None);
        assert_eq!(table.insert("a", ids(2, 3)).unwrap(), Some(ids(1, 1)));
        assert_eq!(table.len(), 1);
        assert_eq!(table.remove("a"), Some(ids(2, 3)));
        assert_eq!(table.remove("a"), None);
        assert_eq!(table.get("a"), None);
        assert_eq!(table.insert("a", ids(4, 4)).unwrap(), None);
        assert_eq!(table.get("a"), Some(ids(4, 4)));
    }

    /// Removals past the garbage bound rewrite the arena; what is left stays findable, and the
    /// arena shrinks to the live names.
    #[test]
    fn the_arena_is_rewritten_once_garbage_outweighs_the_names() {
        let mut table = ThingTable::default();
        let mut model = HashMap::new();
        let n = 200_000u32;
        for i in 0..n {
            let name = format!("device-{i:08}");
            table.insert(&name, ids(i, i % 7)).unwrap();
            model.insert(name, ids(i, i % 7));
        }
        let full = table.arena.len();
        for i in (0..n).filter(|i| i % 4 != 0) {
            let name = format!("device-{i:08}");
            assert_eq!(table.remove(&name), model.remove(&name));
        }
        assert!(table.arena.len() < full / 2, "arena not rewritten");
        assert!(table.garbage < table.arena.len() + MIN_GARBAGE_TO_COMPACT);
        assert_eq!(table.len(), model.len());
        for (name, want) in &model {
            assert_eq!(table.get(name), Some(*want));
        }
        table.shrink_to_fit();
        for (name, want) in &model {
            assert_eq!(table.get(name), Some(*want));
        }
    }
}
