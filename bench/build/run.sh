#!/usr/bin/env bash
# Build benchmark: the same two Dockerfiles built cold and cached by vessel
# (POST /build through the docker CLI's classic path), by dockerd with
# BuildKit and with its classic builder, and by buildah, with hyperfine.
#
#   bench/build/run.sh [RUNS]        (default 5 runs each; needs root)
#
# Everything runs on private roots and sockets made here and removed at the
# end: a vesseld, a dockerd (docker.io from Debian, no bridge, no iptables)
# and buildah's own storage. Every builder runs RUN without a network
# (vessel's default; --network none for dockerd, which has no bridge here).
# "cold" removes the contender's build cache and the result before each run
# (the base image stays); "cached" rebuilds unchanged.
set -euo pipefail

runs=${1:-5}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$top/target}
work=$(mktemp -d /var/tmp/vessel-bench-build.XXXXXX)
runroot=$(mktemp -d /tmp/vbb.XXXXXX)
vpid=""; dpid=""
cleanup() {
    [ -n "$vpid" ] && kill "$vpid" 2>/dev/null && wait "$vpid" 2>/dev/null || true
    [ -n "$dpid" ] && kill "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null || true
    for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($work|$runroot)" | sort -r); do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$work" "$runroot"
}
trap cleanup EXIT

for tool in hyperfine dockerd buildah; do
    command -v "$tool" >/dev/null || echo "bench/build: $tool is not installed; skipping it" >&2
done

# BENCH_SKIP_VESSEL=1 measures only the peers.
skip_vessel=${BENCH_SKIP_VESSEL:-0}
if [ "$skip_vessel" != 1 ]; then
    echo "building vessel (release)..." >&2
    cargo build --quiet --release -p vesseld -p vessel-runtime -p vessel-cli --bins
fi
bin=$CARGO_TARGET_DIR/release
archive=$work/busybox.tar
"$top/scripts/busybox-image.sh" "$archive" >/dev/null

# ---- the two Dockerfiles ----
small=$work/small
mkdir -p "$small/files"
for i in $(seq 1 20); do head -c $((i * 4096)) /dev/urandom > "$small/files/f$i"; done
cat > "$small/Dockerfile" <<'DF'
FROM busybox
ENV APP=bench
WORKDIR /app
RUN head -c 52428800 /dev/urandom > /app/blob
COPY files/ /app/files/
CMD ["sh"]
DF
multi=$work/multi
mkdir -p "$multi/src"
for i in $(seq 1 20); do echo "part $i" > "$multi/src/p$i.txt"; done
cat > "$multi/Dockerfile" <<'DF'
FROM busybox AS deps
RUN mkdir -p /out && head -c 20971520 /dev/urandom > /out/deps.bin
FROM busybox AS assets
COPY src/ /src/
RUN cat /src/*.txt > /assets.txt && head -c 10485760 /dev/urandom > /assets.bin
FROM busybox AS unused
RUN head -c 104857600 /dev/urandom > /waste
FROM busybox
WORKDIR /app
COPY --from=deps /out/deps.bin ./
COPY --from=assets /assets.txt /assets.bin ./
ENV MODE=prod
CMD ["ls", "-l", "/app"]
DF

# ---- vessel ----
vsock=$work/vessel.sock
V="docker -H unix://$vsock"
if [ "$skip_vessel" != 1 ]; then
    "$bin/vesseld" --root "$work/vroot" --exec-root "$work/vrun" -H "unix://$vsock" \
        --shim-binary "$bin/vessel-shim" >"$work/vesseld.log" 2>&1 &
    vpid=$!
    for _ in $(seq 200); do [ -S "$vsock" ] && break; sleep 0.05; done
    $V load -q -i "$archive" >/dev/null
fi

# ---- dockerd (classic builder and BuildKit) ----
have_docker=0
if command -v dockerd >/dev/null; then
    dsock=$work/docker.sock
    dockerd --data-root "$work/droot" --exec-root "$runroot/d" -H "unix://$dsock" \
        --pidfile "$work/dockerd.pid" --storage-driver=overlay2 --bridge=none --iptables=false \
        --ip-masq=false >"$work/dockerd.log" 2>&1 &
    dpid=$!
    for _ in $(seq 400); do [ -S "$dsock" ] && /usr/bin/docker -H "unix://$dsock" info >/dev/null 2>&1 && break; sleep 0.05; done
    /usr/bin/docker -H "unix://$dsock" load -q -i "$archive" >/dev/null && have_docker=1
fi
D="/usr/bin/docker -H unix://$work/docker.sock"

# ---- buildah ----
have_buildah=0
B="buildah --root $work/broot --runroot $runroot/b --storage-driver overlay"
if command -v buildah >/dev/null; then
    mkdir -p "$work/bconf"
    printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n' > "$work/bconf/containers.conf"
    export CONTAINERS_CONF=$work/bconf/containers.conf
    $B pull -q "docker-archive:$archive" >/dev/null 2>&1 && $B tag "$($B images -q | head -1)" busybox:latest >/dev/null 2>&1 && have_buildah=1
fi

results=$work/results.md
: > "$results"
bench() { # name prepare command
    hyperfine --runs "$runs" --warmup 1 --prepare "$2" --export-markdown "$work/one.md" -n "$1" "$3" >&2
    tail -n 1 "$work/one.md" >> "$results"
}

for df in small multi; do
    ctx=${!df}
    [ "$skip_vessel" = 1 ] || bench "vessel $df cold" "$V builder prune -f >/dev/null 2>&1; $V rmi -f bench-$df >/dev/null 2>&1; true" \
        "DOCKER_BUILDKIT=0 $V build -q -t bench-$df $ctx >/dev/null"
    [ "$skip_vessel" = 1 ] || bench "vessel $df cached" "true" "DOCKER_BUILDKIT=0 $V build -q -t bench-$df $ctx >/dev/null"
    if [ $have_docker = 1 ]; then
        bench "buildkit $df cold" "$D builder prune -af >/dev/null 2>&1; $D rmi -f bench-$df >/dev/null 2>&1; true" \
            "DOCKER_BUILDKIT=1 $D build --network none -q -t bench-$df $ctx >/dev/null"
        bench "buildkit $df cached" "true" "DOCKER_BUILDKIT=1 $D build --network none -q -t bench-$df $ctx >/dev/null"
        bench "classic $df cold" "$D rmi -f bench-$df >/dev/null 2>&1; $D image prune -f >/dev/null 2>&1; true" \
            "DOCKER_BUILDKIT=0 $D build --network none -q --rm -t bench-$df $ctx >/dev/null"
        bench "classic $df cached" "true" "DOCKER_BUILDKIT=0 $D build --network none -q -t bench-$df $ctx >/dev/null"
    fi
    if [ $have_buildah = 1 ]; then
        bench "buildah $df cold" "$B rmi -f bench-$df >/dev/null 2>&1; $B rmi --prune >/dev/null 2>&1; true" \
            "$B bud -q --layers --isolation chroot -t bench-$df $ctx >/dev/null"
        bench "buildah $df cached" "true" "$B bud -q --layers --isolation chroot -t bench-$df $ctx >/dev/null"
    fi
done

echo
echo "| Command | Mean [s] | Min [s] | Max [s] | Relative |"
echo "|:---|---:|---:|---:|---:|"
cat "$results"
