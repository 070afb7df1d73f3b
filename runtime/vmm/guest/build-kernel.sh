#!/usr/bin/env bash
# Build Vessel's microVM guest kernel from Debian's linux-source-6.1 package
# with the configuration kept next to this script, once per machine.
#
#   runtime/vmm/guest/build-kernel.sh [--print-dir]
#
# The result lives in $VESSEL_KERNEL_CACHE (default /var/cache/vessel/kernel)
# under a key made of the configuration, the source package's version and
# BUILD_REVISION below (bump it when a change here changes the output):
# KEY/vmlinux (ELF without symbols, booted through its PVH note),
# KEY/vmlinux.symbols (the same with symbols, for debugging), KEY/bzImage,
# KEY/config and KEY/build-seconds; `current` links the latest KEY. A second run with the same inputs does
# nothing and prints the same directory. The build runs under `nice` on
# all cores. Needs: linux-source-6.1 build-essential bc flex bison
# libelf-dev libssl-dev (apt-get install them).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
config="$here/vessel-guest.config"
cache=${VESSEL_KERNEL_CACHE:-/var/cache/vessel/kernel}
tarball=/usr/src/linux-source-6.1.tar.xz
BUILD_REVISION=2

missing=()
for tool in gcc make bc flex bison; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -f "$tarball" ] || missing+=(linux-source-6.1)
[ -f /usr/include/libelf.h ] || missing+=(libelf-dev)
if [ ${#missing[@]} -gt 0 ]; then
    echo "build-kernel: missing ${missing[*]}; apt-get install linux-source-6.1 build-essential bc flex bison libelf-dev libssl-dev" >&2
    exit 1
fi

version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null || echo unknown)
key=$( (cat "$config"; echo "$version $BUILD_REVISION") | sha256sum | cut -c1-16)
out="$cache/6.1-$key"

# $cache/current points at the latest build (vesseld's default --vm-kernel).
link_current() { ln -sfn "$(basename "$out")" "$cache/current.tmp.$$" && mv -T "$cache/current.tmp.$$" "$cache/current"; }

if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
    link_current
    echo "$out"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
# $cache/current points at the latest build (vesseld's default --vm-kernel).
link_current() { ln -sfn "$(basename "$out")" "$cache/current.tmp.$$" && mv -T "$cache/current.tmp.$$" "$cache/current"; }

if [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; then
    link_current
    echo "$out"
    exit 0
fi

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
echo "build-kernel: unpacking $tarball ($version)" >&2
tar -xf "$tarball" -C "$work"
src="$work/linux-source-6.1"

jobs=$(nproc)
cd "$src"
echo "build-kernel: configuring" >&2
make -s ARCH=x86_64 KCONFIG_ALLCONFIG="$config" allnoconfig >"$work/config.log" 2>&1

# Every option we ask for must have survived Kconfig's dependency rules.
bad=0
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    if ! grep -qxF -- "$line" .config; then
        echo "build-kernel: $line did not survive configuration (got: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo unset))" >&2
        bad=1
    fi
done <"$config"
[ "$bad" -eq 0 ] || exit 1

echo "build-kernel: building with $jobs jobs (log: $out.log)" >&2
if ! nice -n 10 make -j"$jobs" ARCH=x86_64 bzImage >"$work/build.log" 2>&1; then
    mkdir -p "$(dirname "$out")"
    cp "$work/build.log" "$out.log"
    tail -30 "$work/build.log" >&2
    exit 1
fi
end=$(date +%s)

stage="$out.tmp.$$"
rm -rf "$stage"
mkdir -p "$stage"
cp vmlinux "$stage/vmlinux.symbols"
strip --strip-all -o "$stage/vmlinux" vmlinux
cp arch/x86/boot/bzImage "$stage/bzImage"
cp .config "$stage/config"
echo $((end - start)) >"$stage/build-seconds"
echo "$version" >"$stage/source-version"
rm -rf "$out"
mv "$stage" "$out"
link_current
echo "build-kernel: built in $((end - start)) s" >&2
echo "$out"
