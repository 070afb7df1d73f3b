#!/usr/bin/env bash
# Install everything Vessel needs to build and to run its test suite on a
# Debian bookworm machine: the C library headers the build links against,
# the tools the tests drive as real peers and clients, and Python packages
# some black-box tests use. Safe to run again: it only installs what is
# missing.
set -euo pipefail

packages=(
    # Build.
    build-essential pkg-config libseccomp-dev
    # The offline busybox root filesystem and base image.
    busybox-static
    # Peers and black-box clients used by tests and benchmarks.
    crun runc podman conmon containerd skopeo docker-registry
    # Tools the tests and scripts call.
    iproute2 nftables procps util-linux jq curl python3-pip python3-venv
    hyperfine strace e2fsprogs erofs-utils openssl
    # The microVM: the guest kernel's source and build tools
    # (runtime/vmm/guest/build-kernel.sh), the agent initramfs, and QEMU
    # for the nested end-to-end tests and the benchmark.
    linux-source-6.1 bc flex bison libelf-dev libssl-dev cpio qemu-system-x86
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian starts some of these as services on install; the tests start their
# own instances on private sockets and roots instead.
for svc in containerd docker-registry; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
        systemctl disable "$svc" >/dev/null 2>&1 || true
    fi
done

# Python clients for black-box registry tests.
if ! python3 -c 'import oras' >/dev/null 2>&1; then
    python3 -m pip install --quiet oras
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "deps: cargo is missing; install the Rust toolchain first" >&2
    exit 1
fi
