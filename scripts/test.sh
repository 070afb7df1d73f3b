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

# The microVM guest kernel (cached under /var/cache/vessel/kernel; about 3
# to 7 minutes the first time on 2 cores, nothing afterwards). The nested
# microVM tests would build it too; doing it here shows its time apart.
echo "== guest kernel"
start=$(date +%s)
runtime/vmm/guest/build-kernel.sh >/dev/null
echo "guest kernel ready in $(( $(date +%s) - start )) s"

echo "== tests"
cargo test --workspace --locked -- --test-threads "${VESSEL_TEST_THREADS:-4}"
