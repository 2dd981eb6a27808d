//! The domain tree: each domain has one parent, up to the implicit root domain `root`.
//!
//! The tree answers the questions that rule filters and authorization ask (DESIGN.md,
//! "Filter" and "Authorization"): is a thing's domain inside a rule's `filter.domain`, and may a
//! caller from one domain see or change a rule of another. It is filled from the Domain API
//! (spec 3, `id` + `parentId`) and from life cycle event topics `event/root/sub1/sub2`
//! (spec 1.3), which carry a domain's whole path.
//!
//! A domain the tree has not heard of is treated as a direct child of root. Events may name a
//! domain before the tree learns about it; placing it under root keeps it inside every root
//! rule's filter and every root user's view, and outside every other subtree, until its real
//! place is known.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// Id of the implicit root of every domain tree (spec 9.1: "the 'root' domain is implicit").
pub const ROOT: &str = "root";

/// Why a parent link was refused. Each variant names the pair, so that [`DomainTree::from_pairs`]
/// reports which one was bad.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// `root` is the top of the tree and has no parent.
    #[error("the root domain cannot have a parent (given {parent:?})")]
    Root { parent: String },
    /// Domain ids are path segments of MQTT topics (`event/root/sub1`); an empty one is a typo.
    #[error("a domain id must not be empty (parent {parent:?})")]
    EmptyId { parent: String },
    #[error("domain {id:?} cannot be its own parent")]
    SelfParent { id: String },
    /// `parent` is `id` itself or lies below it: the link would close a loop.
    #[error("making {parent:?} the parent of {id:?} would create a cycle")]
    Cycle { id: String, parent: String },
}

/// Domain id → parent id. `root` is implicit and never stored.
#[derive(Debug, Clone, Default)]
pub struct DomainTree {
    parent: HashMap<String, String>,
    /// Changes with every change of the tree, unique in the process: see [`Self::version`].
    version: u64,
}

/// Versions handed out to changed trees; 0 is an empty tree's.
static VERSIONS: AtomicU64 = AtomicU64::new(1);

/// How a caller sees a rule, from the caller's domain and the rule's `filter.domain` (spec 6.1
/// `readonly`, DESIGN.md "Authorization").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Visibility {
    /// The rule's domain is the caller's domain or below it: the caller may see and change it.
    Writable,
    /// The rule's domain is above the caller's, toward root: it can affect the caller's things,
    /// so the caller sees it, with `readonly: true`.
    ReadOnly,
    /// The rule lives in another branch of the tree.
    Hidden,
}

impl DomainTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a tree from `(id, parent)` pairs, applied in order as [`insert`](Self::insert)
    /// does (so a later pair for the same id moves it). Stops at the first pair that is refused.
    pub fn from_pairs<I, K, P>(pairs: I) -> Result<Self, DomainError>
    where
        I: IntoIterator<Item = (K, P)>,
        K: Into<String>,
        P: Into<String>,
    {
        let mut tree = Self::new();
        for (id, parent) in pairs {
            tree.insert(id, parent)?;
        }
        Ok(tree)
    }

    /// Sets the parent of `id`, adding the domain or moving it (with its subtree) when it already
    /// has another parent. The parent need not be known yet: an unknown parent counts as a child
    /// of root until it is inserted.
    ///
    /// Refused: giving `root` a parent, an empty id, a domain as its own parent, and a parent
    /// that lies below `id` (a cycle). On error the tree is unchanged.
    pub fn insert(
        &mut self,
        id: impl Into<String>,
        parent: impl Into<String>,
    ) -> Result<(), DomainError> {
        let (id, parent) = (id.into(), parent.into());
        if id == ROOT {
            return Err(DomainError::Root { parent });
        }
        if id.is_empty() {
            return Err(DomainError::EmptyId { parent });
        }
        if id == parent {
            return Err(DomainError::SelfParent { id });
        }
        if self.ancestors(&parent).any(|a| a == id) {
            return Err(DomainError::Cycle { id, parent });
        }
        self.parent.insert(id, parent);
        self.changed();
        Ok(())
    }

    /// A number that changes whenever the tree does and that no other tree of this process
    /// shares (a copy keeps it until one of the two changes), so a cache of values computed
    /// from the tree, such as domain paths, knows when it is stale.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn changed(&mut self) {
        self.version = VERSIONS.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers every domain of a root-first path such as the one in the life cycle event topic
    /// `event/root/sub1/sub2` (spec 1.3): `sub1` under `root`, `sub2` under `sub1`. The topic is
    /// the platform's current word on where a domain lives, so domains that were elsewhere move.
    ///
    /// A path that does not start with `root` is read as starting under root. The whole path is
    /// checked before anything changes: `root` past the first place, an empty segment or a domain
    /// named twice is refused and leaves the tree as it was.
    pub fn insert_path(&mut self, path: &[&str]) -> Result<(), DomainError> {
        let path = match path.split_first() {
            Some((&ROOT, rest)) => rest,
            _ => path,
        };
        let mut seen = HashSet::with_capacity(path.len());
        let mut parent = ROOT;
        for &id in path {
            if id == ROOT {
                return Err(DomainError::Root {
                    parent: parent.to_owned(),
                });
            }
            if id.is_empty() {
                return Err(DomainError::EmptyId {
                    parent: parent.to_owned(),
                });
            }
            if id == parent {
                return Err(DomainError::SelfParent { id: id.to_owned() });
            }
            if !seen.insert(id) {
                return Err(DomainError::Cycle {
                    id: id.to_owned(),
                    parent: parent.to_owned(),
                });
            }
            parent = id;
        }
        // No cycle can follow: after this loop every element's chain is the path itself, which
        // ends at root, and any other domain's chain either avoids the path or joins it.
        let mut parent = ROOT;
        for &id in path {
            self.parent.insert(id.to_owned(), parent.to_owned());
            parent = id;
        }
        self.changed();
        Ok(())
    }

    /// Removes `id` and all domains below it, as the Domain API's REMOVE does (spec 3: "Removes a
    /// domain and all of its sub-domains"). Returns how many domains were removed; `root` and
    /// unknown ids remove nothing.
    pub fn remove(&mut self, id: &str) -> usize {
        if id == ROOT || !self.parent.contains_key(id) {
            return 0;
        }
        let doomed: Vec<String> = self
            .parent
            .keys()
            .filter(|d| self.is_within(d, id))
            .cloned()
            .collect();
        for d in &doomed {
            self.parent.remove(d);
        }
        self.changed();
        doomed.len()
    }

    /// The stored parent of `id`: `None` for `root` and for domains the tree does not know
    /// (use [`ancestors`](Self::ancestors) for the effective parent, which is then `root`).
    pub fn parent(&self, id: &str) -> Option<&str> {
        self.parent.get(id).map(String::as_str)
    }

    /// Whether the tree knows `id`. Always true for `root`.
    pub fn contains(&self, id: &str) -> bool {
        id == ROOT || self.parent.contains_key(id)
    }

    /// Number of domains below root (root itself is not counted).
    pub fn len(&self) -> usize {
        self.parent.len()
    }

    /// True when the tree holds only the implicit root.
    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }

    /// The ancestors of `id`, from its parent up to and including `root`. Empty for `root`;
    /// just `root` for a domain the tree does not know. Always ends at `root`, even if the links
    /// held a cycle (insert refuses those, but a loop here would hang the hot path).
    pub fn ancestors<'a>(&'a self, id: &str) -> Ancestors<'a> {
        let next = (id != ROOT).then(|| self.parent.get(id).map_or(ROOT, String::as_str));
        Ancestors {
            tree: self,
            next,
            budget: self.parent.len(),
        }
    }

    /// True when `domain` is `ancestor` or lies below it. Every domain, known or not, is within
    /// root.
    pub fn is_within(&self, domain: &str, ancestor: &str) -> bool {
        domain == ancestor || ancestor == ROOT || self.ancestors(domain).any(|a| a == ancestor)
    }

    /// Root-first path of `id`, e.g. `["root", "sub1", "sub2"]`: the `<domainPath>` of the life
    /// cycle topic `event/root/sub1/sub2` (spec 1.3). `["root"]` for root itself.
    pub fn path<'a>(&'a self, id: &'a str) -> Vec<&'a str> {
        let mut path: Vec<&str> = self.ancestors(id).collect();
        path.reverse();
        path.push(id);
        path
    }

    /// How a caller in `caller_domain` sees a rule whose `filter.domain` is `rule_domain`.
    pub fn visibility(&self, caller_domain: &str, rule_domain: &str) -> Visibility {
        if self.is_within(rule_domain, caller_domain) {
            Visibility::Writable
        } else if self.is_within(caller_domain, rule_domain) {
            // Not equal (that case is Writable), so a strict ancestor.
            Visibility::ReadOnly
        } else {
            Visibility::Hidden
        }
    }
}

/// Iterator over a domain's ancestors, see [`DomainTree::ancestors`].
#[derive(Debug, Clone)]
pub struct Ancestors<'a> {
    tree: &'a DomainTree,
    next: Option<&'a str>,
    /// Steps left before the walk gives up and jumps to root: a chain without cycles visits each
    /// stored domain at most once, so more steps than domains means a loop.
    budget: usize,
}

impl<'a> Iterator for Ancestors<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let current = self.next?;
        self.next = if current == ROOT {
            None
        } else {
            match self.tree.parent.get(current) {
                Some(parent) if self.budget > 0 => {
                    self.budget -= 1;
                    Some(parent.as_str())
                }
                // Unknown domains hang under root; an exhausted budget means a cycle.
                _ => Some(ROOT),
            }
        };
        Some(current)
    }
}

impl std::iter::FusedIterator for Ancestors<'_> {}

#[cfg(test)]
mod tests;
