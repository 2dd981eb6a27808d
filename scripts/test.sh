#!/usr/bin/env bash
# The test command: install and start what the tests need, build everything, run every test,
# then every fuzz target for 30 s from its committed corpus (scripts/fuzz.sh; FUZZ_SECONDS
# changes the time, 0 skips them).
# Integration tests start the built binary (and the boto3 SDK script) themselves.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-test-deps.sh
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast
if [[ "${FUZZ_SECONDS:-30}" != 0 ]]; then
    scripts/fuzz.sh --seconds "${FUZZ_SECONDS:-30}"
fi
