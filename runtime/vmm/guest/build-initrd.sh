#!/usr/bin/env bash
# Build the guest initramfs of Vessel's microVM containers: a static
# vessel-agent as /init, /dev/console, /dev/null and the agent's mount
# points (the same layout as vessel_vmm::initramfs::write_agent_initramfs).
#
#   runtime/vmm/guest/build-initrd.sh [OUT]
#
# OUT defaults to /var/cache/vessel/agent-initramfs.cpio (vesseld's default
# --vm-initrd). The agent is built with cargo (release, glibc with
# crt-static) into $CARGO_TARGET_DIR/static-agent; a rebuild with nothing
# changed is quick. Prints OUT. Needs: cargo, cpio.
set -euo pipefail

root=$(cd "$(dirname "$0")/../../.." && pwd)
out=${1:-/var/cache/vessel/agent-initramfs.cpio}
target=${CARGO_TARGET_DIR:-$root/target}/static-agent

command -v cpio >/dev/null 2>&1 || { echo "build-initrd: missing cpio; apt-get install cpio" >&2; exit 1; }

(cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols nice cargo build --release --locked \
    --target x86_64-unknown-linux-gnu -p vessel-agent --target-dir "$target") >&2
agent="$target/x86_64-unknown-linux-gnu/release/vessel-agent"
if ldd "$agent" >/dev/null 2>&1; then
    echo "build-initrd: $agent is not static" >&2
    exit 1
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,run,tmp,mnt}
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
install -m 755 "$agent" "$stage/init"
mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$out.tmp.$$"
mv "$out.tmp.$$" "$out"
echo "$out"
