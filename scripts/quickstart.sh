#!/usr/bin/env bash
# From a fresh Debian bookworm machine to running containers: install the
# system packages, build Vessel in release mode, then run the main job end
# to end on embedded defaults:
#
#   1. vessel-runtime alone runs a container from an offline busybox root;
#   2. vesseld starts on private directories, loads the offline busybox
#      image, and the vessel CLI runs containers through it (with a
#      published port, an exec and a build);
#   3. everything started here is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh
cargo build --release --locked --bins
# For `--runtime vm`: the guest kernel (built once, 3 to 7 minutes) and the
# agent initramfs, where vesseld looks for them by default.
runtime/vmm/guest/build-kernel.sh
runtime/vmm/guest/build-initrd.sh

bin=$PWD/target/release
work=$(mktemp -d /tmp/vessel-quickstart.XXXXXX)
daemon_pid=
cleanup() {
    set +e
    if [ -n "$daemon_pid" ]; then
        "$bin/vessel" -H "unix://$work/vessel.sock" rm -f $("$bin/vessel" -H "unix://$work/vessel.sock" ps -aq) >/dev/null 2>&1
        kill "$daemon_pid" 2>/dev/null
        wait "$daemon_pid" 2>/dev/null
    fi
    grep -o " $work[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== 1. a container with vessel-runtime"
mkdir -p "$work/bundle"
./scripts/busybox-rootfs.sh "$work/bundle/rootfs"
rt=$bin/vessel-runtime
"$rt" spec --bundle "$work/bundle"
# A non-interactive process for the demo.
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c", "echo \"hello from $(hostname), a vessel container: $(id)\""]
json.dump(c, open(path, "w"), indent=2)
PY
"$rt" --root "$work/state" run --bundle "$work/bundle" "quickstart-$$"

echo "== 2. vesseld and the vessel CLI"
"$bin/vesseld" --root "$work/root" --exec-root "$work/run" \
    -H "unix://$work/vessel.sock" --shim-binary "$bin/vessel-shim" \
    --network-prefix "vqs$$" >"$work/vesseld.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do
    [ -S "$work/vessel.sock" ] && break
    sleep 0.1
done
vessel() { "$bin/vessel" -H "unix://$work/vessel.sock" "$@"; }
./scripts/busybox-image.sh "$work/busybox.tar" >/dev/null
vessel load -i "$work/busybox.tar"
vessel run --rm busybox sh -c 'echo "hello from $(hostname), through vesseld"'

# A web server with a published port, reached from the host.
mkdir -p "$work/site"
echo "served by a vessel container" >"$work/site/index.html"
vessel run -d --name web -p 127.0.0.1:0:80 -v "$work/site:/www:ro" busybox httpd -f -p 80 -h /www >/dev/null
port=$(vessel port web 80 | head -1 | sed 's/.*://')
echo "web is on 127.0.0.1:$port"
for _ in $(seq 50); do
    if out=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$port/').read().decode().strip())" 2>/dev/null); then
        echo "GET / -> $out"
        break
    fi
    sleep 0.1
done
vessel exec web sh -c 'echo "exec inside web: $(ls /www)"'
vessel rm -f web >/dev/null

# A build from a Dockerfile.
mkdir -p "$work/ctx"
cat >"$work/ctx/Dockerfile" <<'EOF'
FROM busybox
RUN echo "built by vessel" > /greeting
CMD ["cat", "/greeting"]
EOF
vessel build -q -t quickstart:latest "$work/ctx" >/dev/null
vessel run --rm quickstart:latest
vessel images
echo "== done"
