#!/usr/bin/env bash
# The test command: install and start what the tests need, build everything, run every test.
# Integration tests start the built binary (and the boto3 SDK script) themselves.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-test-deps.sh
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast
