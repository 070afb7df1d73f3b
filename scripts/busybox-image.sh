#!/usr/bin/env bash
# Build busybox:latest offline as a single-layer image archive in the format
# `docker save` writes (manifest.json plus blobs/sha256/*), from the root
# filesystem that scripts/busybox-rootfs.sh makes out of Debian's
# busybox-static package.
#
#   scripts/busybox-image.sh OUT.tar [TAG]
#
# TAG defaults to busybox:latest. The output is deterministic for a given
# busybox binary: entries sorted by name, mtime 0, uid/gid 0, GNU tar
# headers, compact JSON. Load it with `vessel load -i OUT.tar`,
# `podman load -i OUT.tar` or `docker load -i OUT.tar`.
set -euo pipefail

out=${1:?usage: busybox-image.sh OUT.tar [TAG]}
tag=${2:-busybox:latest}
here=$(cd "$(dirname "$0")" && pwd)

case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) arch=$(uname -m) ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$here/busybox-rootfs.sh" "$work/rootfs" >/dev/null

# Same flags for the layer and the outer archive: reproducible output.
det_tar() { # DIR OUT: tar every entry below DIR, sorted, normalised
    (cd "$1" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) > "$work/list"
    tar --create --file "$2" --directory "$1" --no-recursion --files-from "$work/list" \
        --format=gnu --numeric-owner --owner=0 --group=0 --mtime=@0
}

det_tar "$work/rootfs" "$work/layer.tar"
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
version=$("$work/rootfs/bin/busybox" 2>/dev/null | head -n1 | sed -n 's/^BusyBox \(v[^ ]*\).*/\1/p')

mkdir -p "$work/archive/blobs/sha256"
printf '{"architecture":"%s","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"created":"1970-01-01T00:00:00Z","history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/busybox-image.sh (busybox %s from busybox-static)"}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "${version:-unknown}" "$diff_id" > "$work/config.json"
config_id=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/archive/blobs/sha256/$config_id"
mv "$work/layer.tar" "$work/archive/blobs/sha256/$diff_id"
printf '[{"Config":"blobs/sha256/%s","RepoTags":["%s"],"Layers":["blobs/sha256/%s"]}]' \
    "$config_id" "$tag" "$diff_id" > "$work/archive/manifest.json"
repo=${tag%:*}
printf '{"%s":{"%s":"%s"}}' "$repo" "${tag##*:}" "$diff_id" > "$work/archive/repositories"

det_tar "$work/archive" "$work/out.tar"
mv "$work/out.tar" "$out"
echo "$out: $tag sha256:$config_id"
