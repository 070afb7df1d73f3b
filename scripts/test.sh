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

# A from-scratch build gains nothing from incremental compilation.
export CARGO_INCREMENTAL=0

# The microVM guest kernel (cached under /var/cache/vessel/kernel; about 3
# to 7 minutes the first time on 2 cores, nothing afterwards) builds in the
# background while cargo works: cargo's serial phases leave a core idle.
echo "== guest kernel (in the background)"
kernel_log=$(mktemp /tmp/vessel-kernel-build.XXXXXX)
kstart=$(date +%s)
setsid nice runtime/vmm/guest/build-kernel.sh >"$kernel_log" 2>&1 &
kernel_pid=$!
trap 'kill -- -"$kernel_pid" 2>/dev/null || true; rm -f "$kernel_log"' EXIT

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy ($(( $(date +%s) - kstart )) s in)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build ($(( $(date +%s) - kstart )) s in)"
cargo build --workspace --all-targets --locked

echo "== waiting for the guest kernel ($(( $(date +%s) - kstart )) s in)"
if ! wait "$kernel_pid"; then
    cat "$kernel_log" >&2
    echo "test.sh: building the guest kernel failed" >&2
    exit 1
fi
echo "guest kernel ready $(( $(date +%s) - kstart )) s after it started"

echo "== tests ($(( $(date +%s) - kstart )) s in)"
# The output is kept so that, when something fails, the failures are
# repeated at the end where a truncated log still shows them.
test_log=$(mktemp /tmp/vessel-test-log.XXXXXX)
trap 'kill -- -"$kernel_pid" 2>/dev/null || true; rm -f "$kernel_log" "$test_log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads "${VESSEL_TEST_THREADS:-4}" \
    2>&1 | tee "$test_log" || status=$?
echo "== done in $(( $(date +%s) - kstart )) s"
if [ "$status" -ne 0 ]; then
    echo "== failures (repeated from above)"
    # Each failing test's own section: from its "---- name stdout ----"
    # header to the next blank-line-separated "failures:" list, capped so
    # one huge console dump cannot hide the others.
    awk '/^---- .* stdout ----$/ {on=1; n=0}
         on && n < 60 {print; n++}
         /^failures:$/ && on {on=0}' "$test_log"
    grep -E '^error: .*target.*failed|^    `-p ' "$test_log" || true
fi
exit "$status"
