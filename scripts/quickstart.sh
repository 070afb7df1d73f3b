#!/usr/bin/env bash
# From a fresh Debian bookworm machine to a running container: install the
# system packages, build Vessel in release mode, make the offline busybox
# root filesystem and run a container from it with vessel-runtime.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh
cargo build --release --locked --bins

work=$(mktemp -d /tmp/vessel-quickstart.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bundle"
./scripts/busybox-rootfs.sh "$work/bundle/rootfs"
rt=target/release/vessel-runtime
"$rt" spec --bundle "$work/bundle"
# A non-interactive process for the demo.
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c", "echo \"hello from $(hostname), a vessel container: $(id)\"; cat /proc/self/cgroup | head -3"]
json.dump(c, open(path, "w"), indent=2)
PY
echo "== running a container with $rt"
"$rt" --root "$work/state" run --bundle "$work/bundle" "quickstart-$$"
echo "== done"
