//! [`InlineStr`]: a string kept inside the value itself when it is short, used for hash map and
//! index keys on the hot path (thing names, thing types, resource names).
//!
//! Why: with 100,000 things and 10,000 rules, comparing a looked-up key with a `String` key
//! means following the key's pointer to memory that is rarely in cache. Keeping short keys in
//! place saves that cache miss per lookup. Long keys fall back to the heap and behave like
//! `Box<str>`.
//!
//! It hashes, compares and borrows as the byte slice `[u8]`, so a `HashMap<InlineStr<N>, V>` is
//! looked up with `key.as_bytes()`: comparing bytes needs no UTF-8 check of the stored key (which
//! `str` would, since this crate forbids `unsafe`).

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};

#[derive(Clone)]
pub(crate) enum InlineStr<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Heap(Box<str>),
}

impl<const N: usize> InlineStr<N> {
    pub(crate) fn new(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= N => {
                let mut bytes = [0; N];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                InlineStr::Inline { len, bytes }
            }
            _ => InlineStr::Heap(s.into()),
        }
    }

    /// The bytes, without the UTF-8 check of [`Self::as_str`]: for comparisons.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            InlineStr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            InlineStr::Heap(s) => s.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // The bytes were copied whole from a `str`, so this never fails; the check is the
            // price of `unsafe_code = "forbid"` and costs a few instructions for short keys.
            InlineStr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            InlineStr::Heap(s) => s,
        }
    }
}

impl<const N: usize> Borrow<[u8]> for InlineStr<N> {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl<const N: usize> Hash for InlineStr<N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl<const N: usize> PartialEq for InlineStr<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl<const N: usize> Eq for InlineStr<N> {}

impl<const N: usize> PartialOrd for InlineStr<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const N: usize> Ord for InlineStr<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl<const N: usize> fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn short_and_long_strings_behave_as_str() {
        for s in [
            "",
            "thing-001",
            "ü🦀",
            &"x".repeat(8),
            &"y".repeat(9),
            &"z".repeat(300),
        ] {
            let i = InlineStr::<8>::new(s);
            assert_eq!(i.as_str(), s);
            assert_eq!(matches!(i, InlineStr::Inline { .. }), s.len() <= 8);
        }
        let mut map = HashMap::new();
        map.insert(InlineStr::<8>::new("short"), 1);
        map.insert(InlineStr::<8>::new("much longer than eight"), 2);
        assert_eq!(map.get("short".as_bytes()), Some(&1));
        assert_eq!(map.get("much longer than eight".as_bytes()), Some(&2));
        assert_eq!(map.get("shor".as_bytes()), None);
        assert!(InlineStr::<8>::new("a") < InlineStr::<8>::new("b"));
        assert_eq!(format!("{:?}", InlineStr::<8>::new("a")), "\"a\"");
    }
}
