//! [`Interner`]: each distinct thing type (or domain) stored once, named by a `u32` the
//! [`ThingTable`](super::table::ThingTable) keeps per thing. A string is counted by the things
//! that use it and forgotten with the last of them, so its id can be reused.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

#[derive(Debug, Clone, Default)]
pub(crate) struct Interner {
    /// By id; `None` for a free id.
    strings: Vec<Option<Box<str>>>,
    /// Things using each id.
    uses: Vec<u32>,
    free: Vec<u32>,
    ids: HashTable<u32>,
    hasher: RandomState,
}

impl Interner {
    /// The id of `s`, counted as used once more.
    pub fn acquire(&mut self, s: &str) -> u32 {
        let Self {
            strings,
            uses,
            free,
            ids,
            hasher,
        } = self;
        let hash = hasher.hash_one(s);
        let id = match ids.find(hash, |&id| string(strings, id) == s) {
            Some(&id) => id,
            None => {
                let id = match free.pop() {
                    Some(id) => {
                        strings[id as usize] = Some(s.into());
                        id
                    }
                    None => {
                        // Ids outnumber no `u32`: each is used by a thing, and things are
                        // fewer (a 32-bit arena offset names each).
                        let id = u32::try_from(strings.len()).unwrap_or(u32::MAX);
                        strings.push(Some(s.into()));
                        uses.push(0);
                        id
                    }
                };
                ids.insert_unique(hash, id, |&id| hasher.hash_one(string(strings, id)));
                id
            }
        };
        uses[id as usize] += 1;
        id
    }

    /// One use of `id` less; the string is forgotten with its last use.
    pub fn release(&mut self, id: u32) {
        let Some(count) = self.uses.get_mut(id as usize) else {
            return;
        };
        debug_assert!(
            *count > 0,
            "interned id {id} released more often than acquired"
        );
        *count = count.saturating_sub(1);
        if *count > 0 {
            return;
        }
        let Some(s) = self.strings[id as usize].take() else {
            return;
        };
        let hash = self.hasher.hash_one(&*s);
        if let Ok(entry) = self.ids.find_entry(hash, |&other| other == id) {
            entry.remove();
        }
        self.free.push(id);
    }

    /// The string of a used id.
    pub fn get(&self, id: u32) -> &str {
        string(&self.strings, id)
    }
}

fn string(strings: &[Option<Box<str>>], id: u32) -> &str {
    strings
        .get(id as usize)
        .and_then(Option::as_deref)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_lives_as_long_as_its_uses() {
        let mut interner = Interner::default();
        let pump = interner.acquire("Pump");
        assert_eq!(interner.acquire("Pump"), pump);
        let valve = interner.acquire("Valve");
        assert_ne!(pump, valve);
        assert_eq!((interner.get(pump), interner.get(valve)), ("Pump", "Valve"));
        interner.release(pump);
        assert_eq!(interner.get(pump), "Pump", "one use is left");
        interner.release(pump);
        assert_eq!(interner.ids.len(), 1);
        // The freed id is reused, under its new string only.
        let meter = interner.acquire("Meter");
        assert_eq!(meter, pump);
        assert_eq!(interner.get(meter), "Meter");
        assert_eq!(interner.acquire("Pump"), 2);
        assert_eq!(interner.acquire("Meter"), meter);
    }
}
