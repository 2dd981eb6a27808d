//! Test support shared by the suites of several workspace crates (`tests/` of the binary,
//! `sinks/tests/`), which cannot import each other's test files. Only ever a dev-dependency.
//!
//! - [`search_standin`]: an OpenSearch stand-in (OpenSearch cannot be installed here).

pub mod search_standin;
