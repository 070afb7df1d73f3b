#!/usr/bin/env bash
# Vessel's microVM monitor against QEMU's microvm machine, side by side
# inside one nested-KVM L1 guest.
#
#   bench/microvm/run.sh [--rounds N]
#
# This machine's /dev/kvm (PVM) cannot run a Linux guest, so both monitors
# run inside an L1 Linux booted under QEMU's TCG with kvm-amd (nested SVM),
# with the same guest kernel (runtime/vmm/guest/build-kernel.sh), the same
# initramfs (vessel-agent as /init), the same busybox layer image and the
# same 256 MiB / 1 vCPU. The L1 script (runtime/vmm/tests/bench.rs) times:
#   init-*  monitor start until the guest's init writes the debug exit port
#   run-*   `vessel-agent run -- true`: monitor start to monitor exit, with
#           the agent mounting the layer and running the process
#   run-runtime  `vessel-runtime run` of a bundle that asks for a VM
#           (io.vessel.sandbox=vm), `true`: the runtime's end-to-end path
# and reads /proc/PID/smaps of each monitor while a container sleeps (RSS and
# PSS beyond the guest RAM mapping). Absolute times are those of an L2 guest
# inside a TCG-emulated L1 and say nothing about real hardware; the ratio is
# the figure to compare.
#
# Needs: qemu-system-x86 busybox-static erofs-utils linux-source-6.1
# build-essential bc flex bison libelf-dev (and network access to Debian's
# archive for linux-image-cloud-amd64 on the first run).
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=5
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        *) echo "usage: $0 [--rounds N]" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-vmm}
ROUNDS=$rounds cargo test -p vessel-vmm --test bench -- --ignored --nocapture 2>&1 \
    | grep -E "^(@@|medians|init|run)" || true
