#!/usr/bin/env bash
# Image load benchmark: our image store against podman load and skopeo copy
# of the same docker-archive, and against the raw cost of the work (gunzip,
# sha256 of compressed and uncompressed data, writing the files, sync).
#
#   bench/images/run.sh [RUNS]        (default 3 runs each; needs root)
#
# Builds a five-layer gzip image of a few hundred MB from directories of this
# machine, prints the median of each contender and its ratio to the raw cost,
# and removes everything it made.
set -euo pipefail

runs=${1:-3}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$top/target}
work=$(mktemp -d /var/tmp/vessel-bench-images.XXXXXX)
runroot=$(mktemp -d /tmp/vbi.XXXXXX)   # podman wants a short run root
cleanup() {
    for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($work|$runroot)" | sort -r); do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$work" "$runroot"
}
trap cleanup EXIT

for tool in podman skopeo openssl gzip tar; do
    command -v "$tool" >/dev/null || { echo "bench/images: $tool is not installed" >&2; exit 1; }
done

echo "building the example binary (release)..." >&2
cargo build --quiet --release -p vesseld --example image-load
loader="$CARGO_TARGET_DIR/release/examples/image-load"

# ---- the image: five gzip layers from this machine's /usr and /etc ----
layers=(usr/lib/gcc usr/include "usr/lib/python3.11 usr/lib/python3" usr/libexec etc)
mkdir -p "$work/archive"
uncompressed=0
diff_ids=()
layer_paths=()
for i in "${!layers[@]}"; do
    # shellcheck disable=SC2086
    tar --create --format=gnu --numeric-owner --owner=0 --group=0 --mtime=@0 --sort=name \
        --ignore-failed-read --directory / ${layers[$i]} 2>/dev/null > "$work/layer$i.tar" || true
    diff_ids+=("sha256:$(sha256sum "$work/layer$i.tar" | cut -d' ' -f1)")
    uncompressed=$((uncompressed + $(stat -c %s "$work/layer$i.tar")))
    gzip -6 -n -c "$work/layer$i.tar" > "$work/layer$i.tar.gz"
    rm "$work/layer$i.tar"
    hex=$(sha256sum "$work/layer$i.tar.gz" | cut -d' ' -f1)
    mkdir -p "$work/archive/$hex"
    mv "$work/layer$i.tar.gz" "$work/archive/$hex/layer.tar"
    layer_paths+=("\"$hex/layer.tar\"")
done
ids=$(printf '"%s",' "${diff_ids[@]}"); ids=${ids%,}
hist=$(printf '{"created_by":"bench layer"},%.0s' "${diff_ids[@]}"); hist=${hist%,}
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":[%s]},"history":[%s]}' "$ids" "$hist" > "$work/config.json"
cfg=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/archive/$cfg.json"
lp=$(IFS=,; echo "${layer_paths[*]}")
printf '[{"Config":"%s.json","RepoTags":["bench/images:latest"],"Layers":[%s]}]' "$cfg" "$lp" > "$work/archive/manifest.json"
tar --create --file "$work/image.tar" --directory "$work/archive" .
compressed=$(du -sb "$work/archive" | cut -f1)
rm -rf "$work/archive"
mkdir -p "$work/x"
echo "image: ${#layers[@]} layers, $((uncompressed / 1048576)) MiB of tar, $((compressed / 1048576)) MiB gzip" >&2


# ---- contenders; each prints nothing, times are taken around it ----
t_now() { date +%s.%N; }
run_vessel() { "$loader" --root "$work/store" "$work/image.tar" >/dev/null 2>&1; }
reset_vessel() { rm -rf "$work/store"; }
podman_cmd() { podman --root "$work/podman" --runroot "$runroot" --storage-driver overlay --cgroup-manager=cgroupfs --events-backend=none "$@"; }
run_podman() { podman_cmd load -q -i "$work/image.tar" >/dev/null 2>&1; }
reset_podman() { podman_cmd rmi -a -f >/dev/null 2>&1 || true; cleanup_mounts; rm -rf "$work/podman"; }
cleanup_mounts() { for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($work/podman|$runroot)" | sort -r); do umount -l "$m" 2>/dev/null || true; done; }
run_skopeo() { skopeo copy -q "docker-archive:$work/image.tar" "oci:$work/skopeo:latest" >/dev/null 2>&1; }
reset_skopeo() { rm -rf "$work/skopeo"; }
# Raw cost: for every layer, hash the compressed bytes, gunzip, hash the
# tar stream and write the files; then sync. Pipelines run their stages
# concurrently, as a good implementation would.
run_raw() {
    local dir=$work/raw n=0
    mkdir -p "$dir"
    tar -xf "$work/image.tar" -C "$work/x"
    for l in "$work"/x/*/layer.tar; do
        mkdir -p "$dir/$n"
        openssl dgst -sha256 "$l" >/dev/null
        gzip -dc "$l" | tee >(openssl dgst -sha256 >/dev/null) | tar -x -C "$dir/$n"
        n=$((n + 1))
    done
    sync
}
reset_raw() { rm -rf "$work/raw" "$work/x"; mkdir -p "$work/x"; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# Round robin: each round runs every contender once, so load from other
# processes on the machine spreads over all of them alike.
declare -A med all
for _ in $(seq "$runs"); do
    for name in raw vessel podman skopeo; do
        "reset_$name"
        sync
        start=$(t_now)
        "run_$name" || { echo "bench/images: $name failed" >&2; exit 1; }
        end=$(t_now)
        all[$name]="${all[$name]:-} $(echo "$end - $start" | bc)"
        "reset_$name"
    done
done
for name in raw vessel podman skopeo; do
    # shellcheck disable=SC2086
    med[$name]=$(printf '%s\n' ${all[$name]} | median)
    echo "$name: runs${all[$name]}" >&2
done


printf '%-28s %10s %10s\n' "contender" "median s" "x raw"
for name in raw vessel podman skopeo; do
    label=$name
    case $name in
        raw) label="raw (gunzip+sha256+write)" ;;
        vessel) label="vessel load" ;;
        podman) label="podman load (overlay)" ;;
        skopeo) label="skopeo copy to oci:" ;;
    esac
    printf '%-28s %10.2f %10.2f\n' "$label" "${med[$name]}" "$(echo "${med[$name]} / ${med[raw]}" | bc -l)"
done
