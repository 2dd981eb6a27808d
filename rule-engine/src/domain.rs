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
mod tests {
    use super::*;

    /// root ─ a ─ b ─ c
    ///      └ x ─ y
    fn sample() -> DomainTree {
        DomainTree::from_pairs([("a", ROOT), ("b", "a"), ("c", "b"), ("x", ROOT), ("y", "x")])
            .expect("valid tree")
    }

    fn ancestors<'a>(tree: &'a DomainTree, id: &str) -> Vec<&'a str> {
        tree.ancestors(id).collect()
    }

    #[test]
    fn version_changes_with_every_change_and_is_not_shared() {
        let mut tree = sample();
        let v = tree.version();
        assert_eq!(tree.path("c").join("/"), "root/a/b/c");
        let mut copy = tree.clone();
        assert_eq!(copy.version(), v, "an unchanged copy is the same tree");
        tree.insert("c", "x").expect("move c");
        assert_ne!(tree.version(), v);
        copy.insert("c", "a").expect("move c");
        assert_ne!(copy.version(), v);
        assert_ne!(
            copy.version(),
            tree.version(),
            "two different trees, two versions"
        );
        let v = tree.version();
        tree.insert_path(&["root", "p", "q"]).expect("path");
        assert_ne!(tree.version(), v);
        let v = tree.version();
        assert_eq!(tree.remove("unknown"), 0);
        assert_eq!(tree.version(), v, "nothing removed, nothing changed");
        assert_eq!(tree.remove("p"), 2);
        assert_ne!(tree.version(), v);
    }

    #[test]
    fn new_tree_holds_only_root() {
        let tree = DomainTree::new();
        assert!(tree.is_empty());
        assert_eq!(tree.len(), 0);
        assert!(tree.contains(ROOT));
        assert!(!tree.contains("a"));
        assert_eq!(tree.parent(ROOT), None);
        assert_eq!(ancestors(&tree, ROOT), Vec::<&str>::new());
        assert_eq!(tree.path(ROOT), vec![ROOT]);
    }

    #[test]
    fn insert_and_look_up() {
        let tree = sample();
        assert_eq!(tree.len(), 5);
        assert!(!tree.is_empty());
        assert_eq!(tree.parent("c"), Some("b"));
        assert_eq!(tree.parent("a"), Some(ROOT));
        assert!(tree.contains("y"));
        assert_eq!(ancestors(&tree, "c"), vec!["b", "a", ROOT]);
        assert_eq!(ancestors(&tree, "a"), vec![ROOT]);
        assert_eq!(tree.path("c"), vec![ROOT, "a", "b", "c"]);
        assert_eq!(tree.path("y"), vec![ROOT, "x", "y"]);
    }

    #[test]
    fn unknown_domains_hang_under_root() {
        let tree = sample();
        assert!(!tree.contains("nowhere"));
        assert_eq!(tree.parent("nowhere"), None);
        assert_eq!(ancestors(&tree, "nowhere"), vec![ROOT]);
        assert_eq!(tree.path("nowhere"), vec![ROOT, "nowhere"]);
        assert!(tree.is_within("nowhere", ROOT));
        assert!(tree.is_within("nowhere", "nowhere"));
        assert!(!tree.is_within("nowhere", "a"));
        assert!(!tree.is_within("a", "nowhere"));
        assert!(!tree.is_within("", "a"));
    }

    #[test]
    fn unknown_parent_counts_as_child_of_root() {
        let tree = DomainTree::from_pairs([("b", "a")]).expect("valid");
        assert!(!tree.contains("a"));
        assert_eq!(ancestors(&tree, "b"), vec!["a", ROOT]);
        assert!(tree.is_within("b", "a"));
    }

    #[test]
    fn is_within() {
        let tree = sample();
        assert!(tree.is_within("c", "c"));
        assert!(tree.is_within("c", "b"));
        assert!(tree.is_within("c", "a"));
        assert!(tree.is_within("c", ROOT));
        assert!(tree.is_within(ROOT, ROOT));
        assert!(!tree.is_within("a", "c"));
        assert!(!tree.is_within(ROOT, "a"));
        assert!(!tree.is_within("y", "a"));
        assert!(!tree.is_within("c", "x"));
    }

    #[test]
    fn refuses_root_empty_self_parent_and_cycles() {
        let mut tree = sample();
        let before = tree.clone();
        assert_eq!(
            tree.insert(ROOT, "a"),
            Err(DomainError::Root { parent: "a".into() })
        );
        assert_eq!(
            tree.insert("", "a"),
            Err(DomainError::EmptyId { parent: "a".into() })
        );
        assert_eq!(
            tree.insert("a", "a"),
            Err(DomainError::SelfParent { id: "a".into() })
        );
        // a above c: making c the parent of a would loop a → c → b → a.
        assert_eq!(
            tree.insert("a", "c"),
            Err(DomainError::Cycle {
                id: "a".into(),
                parent: "c".into()
            })
        );
        assert_eq!(
            tree.insert("b", "c"),
            Err(DomainError::Cycle {
                id: "b".into(),
                parent: "c".into()
            })
        );
        assert_eq!(tree.parent, before.parent, "refusals change nothing");
    }

    #[test]
    fn two_domain_cycle_is_refused() {
        let mut tree = DomainTree::from_pairs([("a", "b")]).expect("valid");
        assert_eq!(
            tree.insert("b", "a"),
            Err(DomainError::Cycle {
                id: "b".into(),
                parent: "a".into()
            })
        );
    }

    #[test]
    fn reinsert_moves_the_domain_and_its_subtree() {
        let mut tree = sample();
        tree.insert("b", "y").expect("move b under y");
        assert_eq!(tree.len(), 5);
        assert_eq!(tree.parent("b"), Some("y"));
        assert_eq!(tree.path("c"), vec![ROOT, "x", "y", "b", "c"]);
        assert!(!tree.is_within("c", "a"));
        assert!(tree.is_within("c", "x"));
        // Moving sideways and back up to root is fine too.
        tree.insert("b", ROOT).expect("move b under root");
        assert_eq!(tree.path("c"), vec![ROOT, "b", "c"]);
    }

    #[test]
    fn from_pairs_reports_the_first_bad_pair() {
        let result = DomainTree::from_pairs([("a", ROOT), ("b", "a"), ("a", "b"), (ROOT, "a")]);
        assert_eq!(
            result.map(|t| t.len()),
            Err(DomainError::Cycle {
                id: "a".into(),
                parent: "b".into()
            })
        );
        let result = DomainTree::from_pairs(vec![("a".to_owned(), "a".to_owned())]);
        assert_eq!(
            result.map(|t| t.len()),
            Err(DomainError::SelfParent { id: "a".into() })
        );
        let err = DomainTree::from_pairs([(ROOT, "a")]).expect_err("root");
        assert_eq!(
            err.to_string(),
            "the root domain cannot have a parent (given \"a\")"
        );
    }

    #[test]
    fn remove_takes_the_subtree_with_it() {
        let mut tree = sample();
        assert_eq!(tree.remove("b"), 2);
        assert_eq!(tree.len(), 3);
        assert!(!tree.contains("b"));
        assert!(!tree.contains("c"));
        assert!(tree.contains("a"));
        assert_eq!(ancestors(&tree, "c"), vec![ROOT]);
        assert_eq!(tree.remove("b"), 0, "already gone");
        assert_eq!(tree.remove("nowhere"), 0);
        assert_eq!(tree.remove(ROOT), 0, "root cannot be removed");
        assert_eq!(tree.len(), 3);
    }

    #[test]
    fn deep_chain() {
        let depth = 2_000;
        let names: Vec<String> = (0..depth).map(|i| format!("d{i}")).collect();
        let mut tree = DomainTree::new();
        let mut parent = ROOT.to_owned();
        for name in &names {
            tree.insert(name.as_str(), parent.as_str())
                .expect("chain link");
            parent = name.clone();
        }
        let deepest = names.last().expect("non-empty");
        assert_eq!(tree.ancestors(deepest).count(), depth);
        assert_eq!(tree.path(deepest).len(), depth + 1);
        assert!(tree.is_within(deepest, "d0"));
        assert_eq!(tree.visibility("d0", deepest), Visibility::Writable);
        assert_eq!(tree.visibility(deepest, "d0"), Visibility::ReadOnly);
        let refused = tree.insert("d0", deepest.as_str());
        assert!(matches!(refused, Err(DomainError::Cycle { .. })));
    }

    #[test]
    fn ancestors_end_even_if_links_loop() {
        // insert cannot build this; poke the map directly to test the guard.
        let mut tree = DomainTree::new();
        tree.parent.insert("a".into(), "b".into());
        tree.parent.insert("b".into(), "c".into());
        tree.parent.insert("c".into(), "a".into());
        let walk: Vec<&str> = tree.ancestors("a").collect();
        assert_eq!(walk.last(), Some(&ROOT));
        assert!(walk.len() <= tree.len() + 2, "{walk:?}");
        assert!(!tree.is_within("a", "nowhere"));
        assert_eq!(tree.path("a").first(), Some(&ROOT));

        let mut self_loop = DomainTree::new();
        self_loop.parent.insert("a".into(), "a".into());
        assert_eq!(self_loop.ancestors("a").last(), Some(ROOT));
    }

    #[test]
    fn insert_path_registers_each_parent() {
        let mut tree = DomainTree::new();
        tree.insert_path(&[ROOT, "sub1", "sub2"])
            .expect("valid path");
        assert_eq!(tree.parent("sub1"), Some(ROOT));
        assert_eq!(tree.parent("sub2"), Some("sub1"));
        assert_eq!(tree.path("sub2"), vec![ROOT, "sub1", "sub2"]);

        // Round trip: a domain's path registers it where it already is.
        let before = tree.parent.clone();
        let path = tree
            .path("sub2")
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>();
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        tree.insert_path(&path).expect("same path");
        assert_eq!(tree.parent, before);

        tree.insert_path(&[]).expect("empty path");
        tree.insert_path(&[ROOT]).expect("root alone");
        assert_eq!(tree.parent, before);
    }

    #[test]
    fn insert_path_without_root_starts_under_root() {
        let mut tree = DomainTree::new();
        tree.insert_path(&["sub1", "sub2"]).expect("valid path");
        assert_eq!(tree.path("sub2"), vec![ROOT, "sub1", "sub2"]);
    }

    #[test]
    fn insert_path_moves_domains() {
        let mut tree = sample();
        // The event says c now lives under x.
        tree.insert_path(&[ROOT, "x", "c"]).expect("valid path");
        assert_eq!(tree.path("c"), vec![ROOT, "x", "c"]);
        // A path through a domain's own descendant re-roots both without a cycle.
        tree.insert_path(&[ROOT, "y", "x"]).expect("valid path");
        assert_eq!(tree.path("x"), vec![ROOT, "y", "x"]);
        assert_eq!(tree.path("c"), vec![ROOT, "y", "x", "c"]);
        assert_eq!(tree.path("y"), vec![ROOT, "y"]);
    }

    #[test]
    fn insert_path_refusals_change_nothing() {
        let mut tree = sample();
        let before = tree.parent.clone();
        let refusals = [
            (
                vec![ROOT, "a", ROOT],
                DomainError::Root { parent: "a".into() },
            ),
            (
                vec![ROOT, "n", "", "m"],
                DomainError::EmptyId { parent: "n".into() },
            ),
            (
                vec![ROOT, "n", "n"],
                DomainError::SelfParent { id: "n".into() },
            ),
            (
                vec![ROOT, "n", "m", "n"],
                DomainError::Cycle {
                    id: "n".into(),
                    parent: "m".into(),
                },
            ),
        ];
        for (path, expected) in refusals {
            assert_eq!(tree.insert_path(&path), Err(expected), "{path:?}");
            assert_eq!(tree.parent, before, "{path:?} changed the tree");
        }
    }

    #[test]
    fn visibility() {
        let tree = sample();
        // Own domain and below: writable.
        assert_eq!(tree.visibility("a", "a"), Visibility::Writable);
        assert_eq!(tree.visibility("a", "c"), Visibility::Writable);
        assert_eq!(tree.visibility(ROOT, "y"), Visibility::Writable);
        assert_eq!(tree.visibility(ROOT, "nowhere"), Visibility::Writable);
        // Above, toward root: read-only (spec 6.1 `readonly`).
        assert_eq!(tree.visibility("c", "b"), Visibility::ReadOnly);
        assert_eq!(tree.visibility("c", ROOT), Visibility::ReadOnly);
        assert_eq!(tree.visibility("nowhere", ROOT), Visibility::ReadOnly);
        // Another branch: hidden.
        assert_eq!(tree.visibility("c", "y"), Visibility::Hidden);
        assert_eq!(tree.visibility("x", "a"), Visibility::Hidden);
        assert_eq!(tree.visibility("b", "nowhere"), Visibility::Hidden);
        assert_eq!(tree.visibility("nowhere", "a"), Visibility::Hidden);
    }
}
