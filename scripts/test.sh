#!/usr/bin/env bash
# Vessel's whole test suite: formatting, lints, then every crate's unit,
# integration and end-to-end tests against real kernels, real engines and
# real clients. Installs what it needs first (scripts/deps.sh).
#
# Privileged tests skip with a reason when a prerequisite is missing;
# with VESSEL_REQUIRE_PRIVILEGED=1 (as CI runs it) a skip is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --workspace --all-targets --locked

echo "== tests"
cargo test --workspace --locked -- --test-threads "${VESSEL_TEST_THREADS:-4}"
