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
