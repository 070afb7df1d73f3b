#!/usr/bin/env bash
# Side-by-side benchmark: vessel-registry against docker-registry
# (distribution), both on loopback with temporary storage, skopeo as the
# client, wrk as the load generator.
#
#   bench/registry/run.sh            # defaults: 5 layers x 60 MB, 5 runs
#   RUNS=3 LAYER_MB=20 bench/registry/run.sh
#
# Measures: cold push and cold pull of a 5-layer image (fresh registry
# storage for every push, fresh destination for every pull) with skopeo
# and with Vessel's own client library (registry/examples/transfer.rs), blob GET
# (1 MiB) and manifest GET throughput with 16 connections, and the raw
# limit of the machine for the same bytes (sha256 + write, with and without
# fsync). Prints medians and ratios. Cleans up every process and directory
# it started, also on failure or Ctrl-C.
set -euo pipefail

RUNS=${RUNS:-5}
LAYERS=${LAYERS:-5}
LAYER_MB=${LAYER_MB:-60}
WRK_SECONDS=${WRK_SECONDS:-10}
WRK_CONNS=${WRK_CONNS:-16}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-bench-registry}

need() { command -v "$1" >/dev/null 2>&1; }
install_missing() {
    local pkgs=()
    need docker-registry || pkgs+=(docker-registry)
    need skopeo || pkgs+=(skopeo)
    need wrk || pkgs+=(wrk)
    need hyperfine || pkgs+=(hyperfine)
    need openssl || pkgs+=(openssl)
    need bc || pkgs+=(bc)
    need curl || pkgs+=(curl)
    if [ ${#pkgs[@]} -gt 0 ]; then
        echo "installing ${pkgs[*]}" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
    fi
}
install_missing

WORK=$(mktemp -d /tmp/vessel-bench-registry.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "building vessel-registry (release)..." >&2
cargo build --release -q -p vessel-registry --manifest-path "$ROOT/Cargo.toml" --bin vessel-registry --example transfer
VESSEL_BIN=$CARGO_TARGET_DIR/release/vessel-registry
TRANSFER=$CARGO_TARGET_DIR/release/examples/transfer

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { # $1 port, $2 name, $3 pid
    for _ in $(seq 1 1500); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        kill -0 "$3" 2>/dev/null || { echo "$2 exited before listening on port $1 (log: $WORK/$2.log)" >&2; cat "$WORK/$2.log" >&2; return 1; }
        sleep 0.02
    done
    echo "$2 does not listen on port $1 after 30 s" >&2
    return 1
}
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# ---- registries -------------------------------------------------------------
DIST_PORT=$(free_port)
VESSEL_PORT=$(free_port)
DIST_PID=""
VESSEL_PID=""
start_dist() {
    rm -rf "$WORK/dist-storage"
    cat >"$WORK/dist.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/dist-storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$DIST_PORT
EOF
    env -u REGISTRY_AUTH_FILE docker-registry serve "$WORK/dist.yml" >"$WORK/dist.log" 2>&1 &
    DIST_PID=$!
    PIDS+=("$DIST_PID")
    wait_port "$DIST_PORT" dist "$DIST_PID"
}
stop_dist() { kill "$DIST_PID" 2>/dev/null || true; wait "$DIST_PID" 2>/dev/null || true; }
start_vessel() {
    rm -rf "$WORK/vessel-storage"
    cat >"$WORK/vessel.toml" <<EOF
[server]
addr = "127.0.0.1:$VESSEL_PORT"
access_log = false
[storage]
root = "$WORK/vessel-storage"
fsync = ${VESSEL_FSYNC:-true}
EOF
    "$VESSEL_BIN" --config "$WORK/vessel.toml" --log error >"$WORK/vessel.log" 2>&1 &
    VESSEL_PID=$!
    PIDS+=("$VESSEL_PID")
    wait_port "$VESSEL_PORT" vessel "$VESSEL_PID"
}
stop_vessel() { kill "$VESSEL_PID" 2>/dev/null || true; wait "$VESSEL_PID" 2>/dev/null || true; }

# ---- the image: LAYERS gzip layers of random data as an OCI layout --------
echo "making a ${LAYERS}-layer image of ~$((LAYERS * LAYER_MB)) MB..." >&2
LAYOUT=$WORK/image
mkdir -p "$LAYOUT/blobs/sha256" "$WORK/gen"
sha() { openssl dgst -sha256 -r "$1" | cut -d' ' -f1; }
layers_json=""
diff_ids=""
for i in $(seq 1 "$LAYERS"); do
    mkdir -p "$WORK/gen/l$i"
    head -c "$((LAYER_MB * 1024 * 1024))" /dev/urandom >"$WORK/gen/l$i/data-$i.bin"
    tar -C "$WORK/gen/l$i" -cf "$WORK/gen/l$i.tar" .
    gzip -1 -c "$WORK/gen/l$i.tar" >"$WORK/gen/l$i.tar.gz"
    did=$(sha "$WORK/gen/l$i.tar")
    d=$(sha "$WORK/gen/l$i.tar.gz")
    size=$(stat -c %s "$WORK/gen/l$i.tar.gz")
    mv "$WORK/gen/l$i.tar.gz" "$LAYOUT/blobs/sha256/$d"
    rm -rf "$WORK/gen/l$i" "$WORK/gen/l$i.tar"
    layers_json+="${layers_json:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$d\",\"size\":$size}"
    diff_ids+="${diff_ids:+,}\"sha256:$did\""
done
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$diff_ids" >"$WORK/gen/config.json"
cd_=$(sha "$WORK/gen/config.json"); cs=$(stat -c %s "$WORK/gen/config.json")
cp "$WORK/gen/config.json" "$LAYOUT/blobs/sha256/$cd_"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' "$cd_" "$cs" "$layers_json" >"$WORK/gen/manifest.json"
md=$(sha "$WORK/gen/manifest.json"); ms=$(stat -c %s "$WORK/gen/manifest.json")
cp "$WORK/gen/manifest.json" "$LAYOUT/blobs/sha256/$md"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' "$md" "$ms" >"$LAYOUT/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$LAYOUT/oci-layout"
TOTAL_BYTES=$(du -cb "$LAYOUT"/blobs/sha256/* | tail -1 | cut -f1)
echo "image: $((TOTAL_BYTES / 1024 / 1024)) MiB in $LAYERS layers" >&2
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$WORK/policy.json"
# Not exported: distribution reads REGISTRY_* variables as config overrides.
SKOPEO=(env "REGISTRY_AUTH_FILE=$WORK/auth.json" skopeo --policy "$WORK/policy.json")

# ---- raw limit: sha256 + write of the same bytes ----------------------------
raw_once() { # $1: fsync or nosync
    rm -rf "$WORK/raw"; mkdir -p "$WORK/raw"
    local t0 t1
    t0=$(now)
    for f in "$LAYOUT"/blobs/sha256/*; do
        openssl dgst -sha256 "$f" >/dev/null
        if [ "$1" = fsync ]; then
            dd if="$f" of="$WORK/raw/$(basename "$f")" bs=1M conv=fsync status=none
        else
            dd if="$f" of="$WORK/raw/$(basename "$f")" bs=1M status=none
        fi
    done
    t1=$(now)
    echo "$t1 - $t0" | bc -l
}
raw_sync=$(for _ in $(seq 1 "$RUNS"); do raw_once fsync; done | median)
raw_nosync=$(for _ in $(seq 1 "$RUNS"); do raw_once nosync; done | median)
rm -rf "$WORK/raw"

# ---- cold push / pull ---------------------------------------------------------
# These run in the main shell (not in $(...)), so the registries they
# restart stay known to the cleanup trap; timings go to files.
push_times() { # $1: dist|vessel, $2: output file
    local port t0 t1
    : >"$2"
    for _ in $(seq 1 "$RUNS"); do
        if [ "$1" = dist ]; then stop_dist; start_dist; port=$DIST_PORT; else stop_vessel; start_vessel; port=$VESSEL_PORT; fi
        t0=$(now)
        "${SKOPEO[@]}" copy -q --dest-tls-verify=false "oci:$LAYOUT:v1" "docker://127.0.0.1:$port/bench/app:v1" >/dev/null
        t1=$(now)
        echo "$t1 - $t0" | bc -l >>"$2"
    done
}
pull_times() { # $1: port, $2: output file
    local t0 t1
    : >"$2"
    for _ in $(seq 1 "$RUNS"); do
        rm -rf "$WORK/pull"
        t0=$(now)
        "${SKOPEO[@]}" copy -q --src-tls-verify=false "docker://127.0.0.1:$1/bench/app:v1" "oci:$WORK/pull:v1" >/dev/null
        t1=$(now)
        echo "$t1 - $t0" | bc -l >>"$2"
    done
    rm -rf "$WORK/pull"
}
echo "cold push/pull, $RUNS runs each..." >&2
start_dist
start_vessel
push_times dist "$WORK/t-dist-push"
push_times vessel "$WORK/t-vessel-push"
pull_times "$DIST_PORT" "$WORK/t-dist-pull"
pull_times "$VESSEL_PORT" "$WORK/t-vessel-pull"
# The same with Vessel's client library (what the daemon will use).
lib_push_times() { # $1: dist|vessel, $2: output file
    local port t0 t1
    : >"$2"
    for _ in $(seq 1 "$RUNS"); do
        if [ "$1" = dist ]; then stop_dist; start_dist; port=$DIST_PORT; else stop_vessel; start_vessel; port=$VESSEL_PORT; fi
        t0=$(now)
        "$TRANSFER" push "$LAYOUT" v1 "127.0.0.1:$port/bench/app:v1" >/dev/null
        t1=$(now)
        echo "$t1 - $t0" | bc -l >>"$2"
    done
}
lib_pull_times() { # $1: port, $2: output file
    local t0 t1
    : >"$2"
    for _ in $(seq 1 "$RUNS"); do
        rm -rf "$WORK/pull"
        t0=$(now)
        "$TRANSFER" pull "127.0.0.1:$1/bench/app:v1" "$WORK/pull" >/dev/null
        t1=$(now)
        echo "$t1 - $t0" | bc -l >>"$2"
    done
    rm -rf "$WORK/pull"
}
echo "the same with vessel's client library..." >&2
lib_push_times dist "$WORK/l-dist-push"
lib_push_times vessel "$WORK/l-vessel-push"
lib_pull_times "$DIST_PORT" "$WORK/l-dist-pull"
lib_pull_times "$VESSEL_PORT" "$WORK/l-vessel-pull"
ldist_push=$(median <"$WORK/l-dist-push")
lvessel_push=$(median <"$WORK/l-vessel-push")
ldist_pull=$(median <"$WORK/l-dist-pull")
lvessel_pull=$(median <"$WORK/l-vessel-pull")
dist_push=$(median <"$WORK/t-dist-push")
vessel_push=$(median <"$WORK/t-vessel-push")
dist_pull=$(median <"$WORK/t-dist-pull")
vessel_pull=$(median <"$WORK/t-vessel-pull")

# ---- throughput with wrk ----------------------------------------------------
head -c $((1024 * 1024)) /dev/urandom >"$WORK/blob1m"
b1d=$(sha "$WORK/blob1m")
put_blob() { # $1 port
    local loc
    loc=$(curl -sS -o /dev/null -D - -X POST "http://127.0.0.1:$1/v2/bench/app/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
    case "$loc" in http*) ;; *) loc="http://127.0.0.1:$1$loc" ;; esac
    case "$loc" in *\?*) sep='&' ;; *) sep='?' ;; esac
    curl -sS -f -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$WORK/blob1m" "$loc${sep}digest=sha256:$b1d"
}
put_blob "$DIST_PORT"
put_blob "$VESSEL_PORT"
rps() { # $1 url, extra args: headers
    local url=$1; shift
    wrk -t2 -c"$WRK_CONNS" -d"${WRK_SECONDS}s" "$@" "$url" | awk '/Requests\/sec/ {print $2}'
}
echo "wrk: ${WRK_CONNS} connections, ${WRK_SECONDS}s per measurement..." >&2
ACCEPT=(-H "Accept: application/vnd.oci.image.manifest.v1+json")
dist_blob=$(rps "http://127.0.0.1:$DIST_PORT/v2/bench/app/blobs/sha256:$b1d")
vessel_blob=$(rps "http://127.0.0.1:$VESSEL_PORT/v2/bench/app/blobs/sha256:$b1d")
dist_man=$(rps "http://127.0.0.1:$DIST_PORT/v2/bench/app/manifests/v1" "${ACCEPT[@]}")
vessel_man=$(rps "http://127.0.0.1:$VESSEL_PORT/v2/bench/app/manifests/v1" "${ACCEPT[@]}")

# ---- report ------------------------------------------------------------------
ratio() { echo "scale=2; $1 / $2" | bc -l; }
mb=$((TOTAL_BYTES / 1024 / 1024))
cat <<EOF

vessel-registry vs docker-registry (distribution $(docker-registry --version 2>/dev/null | awk '{print $3}')), skopeo $(skopeo --version | awk '{print $3}'), ${mb} MiB in ${LAYERS} layers, medians of ${RUNS}
vessel storage fsync: ${VESSEL_FSYNC:-true}

raw limit (sha256 + write)        fsync: $(printf '%.3f' "$raw_sync") s    no fsync: $(printf '%.3f' "$raw_nosync") s

                              distribution      vessel    vessel/dist   vessel/raw   dist/raw  (raw = fsync / no fsync)
cold push (s)                 $(printf '%12.3f %11.3f %14s %7s/%-5s %5s/%-5s' "$dist_push" "$vessel_push" "$(ratio "$vessel_push" "$dist_push")" "$(ratio "$vessel_push" "$raw_sync")" "$(ratio "$vessel_push" "$raw_nosync")" "$(ratio "$dist_push" "$raw_sync")" "$(ratio "$dist_push" "$raw_nosync")")
cold pull (s)                 $(printf '%12.3f %11.3f %14s %7s/%-5s %5s/%-5s' "$dist_pull" "$vessel_pull" "$(ratio "$vessel_pull" "$dist_pull")" "$(ratio "$vessel_pull" "$raw_sync")" "$(ratio "$vessel_pull" "$raw_nosync")" "$(ratio "$dist_pull" "$raw_sync")" "$(ratio "$dist_pull" "$raw_nosync")")
  client library instead of skopeo:
cold push, library (s)        $(printf '%12.3f %11.3f %14s %7s/%-5s %5s/%-5s' "$ldist_push" "$lvessel_push" "$(ratio "$lvessel_push" "$ldist_push")" "$(ratio "$lvessel_push" "$raw_sync")" "$(ratio "$lvessel_push" "$raw_nosync")" "$(ratio "$ldist_push" "$raw_sync")" "$(ratio "$ldist_push" "$raw_nosync")")
cold pull, library (s)        $(printf '%12.3f %11.3f %14s %7s/%-5s %5s/%-5s' "$ldist_pull" "$lvessel_pull" "$(ratio "$lvessel_pull" "$ldist_pull")" "$(ratio "$lvessel_pull" "$raw_sync")" "$(ratio "$lvessel_pull" "$raw_nosync")" "$(ratio "$ldist_pull" "$raw_sync")" "$(ratio "$ldist_pull" "$raw_nosync")")
blob GET 1 MiB (req/s)        $(printf '%12.0f %11.0f %14s' "$dist_blob" "$vessel_blob" "$(ratio "$vessel_blob" "$dist_blob")")
manifest GET (req/s)          $(printf '%12.0f %11.0f %14s' "$dist_man" "$vessel_man" "$(ratio "$vessel_man" "$dist_man")")
EOF
