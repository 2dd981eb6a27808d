//! Test support shared by the suites of several workspace crates (`tests/` of the binary,
//! `sinks/tests/`), which cannot import each other's test files. Only ever a dev-dependency.
//!
//! - [`search_standin`]: an OpenSearch stand-in (OpenSearch cannot be installed here).
//! - [`weed`]: a real SeaweedFS (S3) per test on free ports.
//!
//! Test support panics on setup failures (that is a failed test), hence `unwrap` here.
#![allow(clippy::unwrap_used)]

pub mod search_standin;
pub mod weed;
