#!/usr/bin/env bash
# Pulling an image from a local vessel-registry: `vessel pull` and
# `docker pull` through vesseld, against `podman pull`, all cold (the image
# is removed before every run), measured with hyperfine.
#
#   bench/pull/run.sh                    # 5 layers x 60 MB, 5 runs
#   RUNS=3 LAYER_MB=20 bench/pull/run.sh
#
# The image is generated here: LAYERS gzip layers, each a tar of LAYER_MB of
# data that is half random (incompressible) and half text (compressible), as
# an OCI layout that skopeo copies into the registry once. Everything runs on
# loopback with temporary roots; every process and directory the script
# started is removed on exit, also on failure or Ctrl-C. Needs root.
set -euo pipefail

RUNS=${RUNS:-5}
LAYERS=${LAYERS:-5}
LAYER_MB=${LAYER_MB:-60}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-bench-pull}

[ "$(id -u)" = 0 ] || { echo "bench/pull needs root (vesseld and podman unpack layers)" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1; }
pkgs=()
need skopeo || pkgs+=(skopeo)
need podman || pkgs+=(podman)
need hyperfine || pkgs+=(hyperfine)
need docker || { echo "the docker CLI is needed" >&2; exit 1; }
if [ ${#pkgs[@]} -gt 0 ]; then
    echo "installing ${pkgs[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

WORK=$(mktemp -d /tmp/vessel-bench-pull.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" --storage-driver overlay \
        rmi -a -f >/dev/null 2>&1 || true
    umount -R "$WORK/podman/root" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "building vesseld, vessel-shim, vessel and vessel-registry (release)..." >&2
cargo build --release -q --manifest-path "$ROOT/Cargo.toml" \
    -p vesseld -p vessel-registry -p vessel-cli -p vessel-runtime --bins
BIN=$CARGO_TARGET_DIR/release

wait_for() { # $1 test command, $2 name, $3 pid
    for _ in $(seq 1 1500); do
        if eval "$1" 2>/dev/null; then return 0; fi
        kill -0 "$3" 2>/dev/null || { echo "$2 exited (log: $WORK/$2.log)" >&2; cat "$WORK/$2.log" >&2; return 1; }
        sleep 0.02
    done
    echo "$2 did not come up" >&2
    return 1
}
sha() { sha256sum "$1" | cut -d' ' -f1; }

# ---- the image ---------------------------------------------------------------
echo "making a ${LAYERS}-layer image of ~$((LAYERS * LAYER_MB)) MB..." >&2
LAYOUT=$WORK/image
mkdir -p "$LAYOUT/blobs/sha256" "$WORK/gen"
diff_ids=""
layers_json=""
for i in $(seq 1 "$LAYERS"); do
    mkdir -p "$WORK/gen/l$i/data"
    half=$((LAYER_MB * 1024 * 1024 / 2))
    head -c "$half" /dev/urandom >"$WORK/gen/l$i/data/random.bin"
    # Compressible half: many small text files, as real images have.
    for f in $(seq 1 200); do
        { yes "layer $i file $f: the quick brown fox jumps over the lazy dog" || true; } |
            head -c $((half / 200)) >"$WORK/gen/l$i/data/text-$f.txt"
    done
    tar -C "$WORK/gen/l$i" -cf "$WORK/gen/l$i.tar" .
    gzip -6 -c "$WORK/gen/l$i.tar" >"$WORK/gen/l$i.tar.gz"
    did=$(sha "$WORK/gen/l$i.tar")
    d=$(sha "$WORK/gen/l$i.tar.gz")
    size=$(stat -c %s "$WORK/gen/l$i.tar.gz")
    mv "$WORK/gen/l$i.tar.gz" "$LAYOUT/blobs/sha256/$d"
    rm -rf "$WORK/gen/l$i" "$WORK/gen/l$i.tar"
    diff_ids+="${diff_ids:+,}\"sha256:$did\""
    layers_json+="${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$d\",\"size\":$size}"
done
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$diff_ids" >"$WORK/gen/config.json"
cd_=$(sha "$WORK/gen/config.json"); cs=$(stat -c %s "$WORK/gen/config.json")
cp "$WORK/gen/config.json" "$LAYOUT/blobs/sha256/$cd_"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' "$cd_" "$cs" "$layers_json" >"$WORK/gen/manifest.json"
md=$(sha "$WORK/gen/manifest.json"); ms=$(stat -c %s "$WORK/gen/manifest.json")
cp "$WORK/gen/manifest.json" "$LAYOUT/blobs/sha256/$md"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' "$md" "$ms" >"$LAYOUT/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"
echo "image: $(du -sm "$LAYOUT/blobs" | cut -f1) MB compressed in $LAYERS layers" >&2

# ---- registry and daemon -----------------------------------------------------
# Port 0: the registry logs the address it bound (a port picked free here
# and bound later could be taken by something else in between).
"$BIN/vessel-registry" --addr 127.0.0.1:0 --log-json --root "$WORK/registry" >"$WORK/registry.log" 2>&1 &
PIDS+=($!)
wait_for "grep -q '\"registry listening\"' $WORK/registry.log" registry "$!"
REG_PORT=$(grep '"registry listening"' "$WORK/registry.log" | grep -o '"addr":"127\.0\.0\.1:[0-9]*"' | head -1 | grep -o '[0-9]*"$' | tr -d '"')
[ -n "$REG_PORT" ] || { echo "no address in the registry log" >&2; cat "$WORK/registry.log" >&2; exit 1; }
IMAGE=127.0.0.1:$REG_PORT/bench/img:v1
skopeo copy -q --dest-tls-verify=false "oci:$LAYOUT:v1" "docker://$IMAGE"

SOCK=$WORK/vessel.sock
"$BIN/vesseld" --root "$WORK/vessel/root" --exec-root "$WORK/vessel/run" -H "unix://$SOCK" \
    --pidfile "$WORK/vessel/vesseld.pid" --shim-binary "$BIN/vessel-shim" -l warn >"$WORK/vesseld.log" 2>&1 &
PIDS+=($!)
wait_for "[ -S $SOCK ]" vesseld "$!"
export DOCKER_HOST=unix://$SOCK VESSEL_HOST=unix://$SOCK DOCKER_CONFIG=$WORK/docker-config
# podman reads DOCKER_CONFIG too and refuses a directory without a config.
mkdir -p "$DOCKER_CONFIG" && echo '{}' >"$DOCKER_CONFIG/config.json"
PODMAN="podman --root $WORK/podman/root --runroot $WORK/podman/run --storage-driver overlay"

RMI_VESSEL="docker rmi -f $IMAGE >/dev/null 2>&1 || true"
hyperfine --runs "$RUNS" --export-markdown "$WORK/result.md" \
    --prepare "$RMI_VESSEL" --prepare "$RMI_VESSEL" \
    --prepare "$PODMAN rmi -a -f >/dev/null 2>&1 || true" \
    -n "vessel pull (vesseld)" "$BIN/vessel pull $IMAGE" \
    -n "docker pull (vesseld)" "docker pull -q $IMAGE" \
    -n "podman pull" "$PODMAN pull -q --tls-verify=false $IMAGE"
cat "$WORK/result.md"
