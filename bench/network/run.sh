#!/usr/bin/env bash
# Networking cost and throughput, side by side:
#
#   1. start-to-exit latency of `run --rm busybox true` with the default
#      bridge and with `--network none` (hyperfine medians), for vesseld
#      (driven by the docker CLI), dockerd (docker.io) and podman;
#   2. throughput container-to-container on a user network and from the
#      host through a published port on 127.0.0.1 (busybox nc, 512 MiB of
#      zeros; the host side writes to bash's /dev/tcp), for vesseld and
#      dockerd, taking turns for --rounds rounds (default 5) and reporting
#      the median, so that the machine's changing load hits both alike.
#
#   bench/network/run.sh [--runs N] [--rounds N] [--results DIR]
#                        [--skip docker,podman,latency] [--no-build] [--baseline DIR]
#
# --baseline DIR also measures the latency of the vesseld and vessel-shim
# binaries in DIR (an earlier build) as `vessel-base`, in the same run.
# podman runs with runc (crun 1.8 refuses hybrid cgroup hosts).
#
# Needs root. Starts vesseld and dockerd on private directories, sockets and
# (for dockerd) a private bridge; removes everything on exit. All traffic
# stays on this machine.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
runs=20
rounds=5
results=
skip=
build=1
baseline=
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --results) results=$2; shift 2 ;;
        --skip) skip=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --baseline) baseline=$(cd "$2" && pwd); shift 2 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root" >&2; exit 1; }
skipped() { case ",$skip," in *",$1,"*) return 0 ;; esac; return 1; }

need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
skipped docker || [ -x /usr/sbin/dockerd ] || need+=(docker.io)
skipped podman || command -v podman >/dev/null || need+=(podman conmon crun)
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    systemctl stop docker.service docker.socket containerd.service 2>/dev/null || true
fi

target=${CARGO_TARGET_DIR:-$repo/target}
if [ "$build" = 1 ]; then
    (cd "$repo" && cargo build --release -q -p vesseld -p vessel-runtime --bins)
fi
bin=$target/release

work=$(mktemp -d /tmp/vessel-bench-net.XXXXXX)
results=${results:-$here/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results"
pids=()
iptables-save >"$work/iptables.before" 2>/dev/null || true
ip6tables-save >"$work/ip6tables.before" 2>/dev/null || true
fwd_before=$(cat /proc/sys/net/ipv4/ip_forward)
nft_tables_before=$(nft list tables 2>/dev/null || true)
links_before=$(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort)
podman_() {
    podman --root "$work/podman/root" --runroot "$work/podman/run" \
        --cgroup-manager cgroupfs --events-backend none --runtime runc "$@"
}
cleanup() {
    set +e
    for s in vd vb dd; do
        if [ -S "$work/$s.sock" ]; then
            ids=$(DOCKER_HOST=unix://$work/$s.sock docker ps -aq)
            [ -n "$ids" ] && DOCKER_HOST=unix://$work/$s.sock docker rm -f $ids >/dev/null 2>&1
            DOCKER_HOST=unix://$work/$s.sock docker network prune -f >/dev/null 2>&1
        fi
    done
    [ -d "$work/podman" ] && { podman_ rm -af >/dev/null 2>&1; podman_ system reset -f >/dev/null 2>&1; }
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    grep -o " $work[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort | comm -13 <(echo "$links_before") -); do
        ip link delete "$l" 2>/dev/null
    done
    [ -s "$work/iptables.before" ] && iptables-restore <"$work/iptables.before"
    [ -s "$work/ip6tables.before" ] && ip6tables-restore <"$work/ip6tables.before"
    # Tables that did not exist before (dockerd's and netavark's through
    # iptables-nft) go entirely.
    nft list tables 2>/dev/null | while read -r _ family name; do
        grep -qx "table $family $name" <<<"$nft_tables_before" || nft delete table "$family" "$name"
    done
    echo "$fwd_before" >/proc/sys/net/ipv4/ip_forward
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

image=$repo/target/fixtures/busybox-image.tar
if [ ! -f "$image" ]; then
    mkdir -p "$(dirname "$image")"
    "$repo/scripts/busybox-image.sh" "$image.tmp" >/dev/null
    mv "$image.tmp" "$image"
fi
wait_sock() {
    for _ in $(seq 300); do
        [ -S "$1" ] && DOCKER_HOST=unix://$1 docker version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "run.sh: daemon on $1 did not come up" >&2
    exit 1
}

"$bin/vesseld" --root "$work/vd-root" --exec-root "$work/vd-run" -H "unix://$work/vd.sock" \
    --shim-binary "$bin/vessel-shim" >"$work/vesseld.log" 2>&1 &
pids+=($!)
wait_sock "$work/vd.sock"
DOCKER_HOST=unix://$work/vd.sock docker load -q -i "$image" >/dev/null
if [ -n "$baseline" ]; then
    "$baseline/vesseld" --root "$work/vb-root" --exec-root "$work/vb-run" -H "unix://$work/vb.sock" \
        --shim-binary "$baseline/vessel-shim" >"$work/vesseld-base.log" 2>&1 &
    pids+=($!)
    wait_sock "$work/vb.sock"
    DOCKER_HOST=unix://$work/vb.sock docker load -q -i "$image" >/dev/null
fi
if ! skipped docker; then
    ip link add vbnet0 type bridge
    ip addr add 10.214.0.1/24 dev vbnet0
    ip link set vbnet0 up
    /usr/sbin/dockerd --data-root "$work/dd-root" --exec-root "$work/dd-run" \
        -H "unix://$work/dd.sock" --pidfile "$work/dd.pid" --storage-driver overlay2 \
        --containerd-namespace "vbnet$$" --bridge vbnet0 >"$work/dockerd.log" 2>&1 &
    pids+=($!)
    wait_sock "$work/dd.sock"
    DOCKER_HOST=unix://$work/dd.sock docker load -q -i "$image" >/dev/null
fi
if ! skipped podman; then
    mkdir -p "$work/podman"
    printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n' \
        >"$work/podman/containers.conf"
    export CONTAINERS_CONF=$work/podman/containers.conf
    podman_ load -q -i "$image" >/dev/null
fi

# 1. Latency.
args=()
for net in bridge none; do
    args+=(-n "vessel $net" "env DOCKER_HOST=unix://$work/vd.sock docker run --rm --network $net busybox true")
    [ -z "$baseline" ] || args+=(-n "vessel-base $net" "env DOCKER_HOST=unix://$work/vb.sock docker run --rm --network $net busybox true")
    skipped docker || args+=(-n "docker $net" "env DOCKER_HOST=unix://$work/dd.sock docker run --rm --network $net busybox true")
    skipped podman || args+=(-n "podman $net" "podman --root $work/podman/root --runroot $work/podman/run --cgroup-manager cgroupfs --events-backend none --runtime runc run --rm --network $net busybox true")
done
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$results/load.txt"
if ! skipped latency; then
    echo "== run --rm latency ($runs runs each)" >&2
    hyperfine -N --warmup 3 --runs "$runs" --export-json "$results/latency.json" "${args[@]}" | tee "$results/latency.txt"
fi

# 2. Throughput: the engines take turns, round after round, so a change in
# the machine's load hits them alike; the median of the rounds is reported.
mib=512
engines=(vessel)
skipped docker || engines+=(docker)
sock_of() { case $1 in vessel) echo "$work/vd.sock" ;; docker) echo "$work/dd.sock" ;; esac; }
setup() { # engine: a user network, a sink and a source container
    local d="env DOCKER_HOST=unix://$(sock_of "$1")"
    $d docker network create "bnet$$" >/dev/null
    $d docker run -d --name sink --network "bnet$$" -p 127.0.0.1:0:5001 busybox sleep 3600 >/dev/null
    $d docker run -d --name src --network "bnet$$" busybox sleep 3600 >/dev/null
}
teardown() { # engine
    local d="env DOCKER_HOST=unix://$(sock_of "$1")"
    $d docker rm -f sink src >/dev/null
    $d docker network rm "bnet$$" >/dev/null
}
# busybox nc ends a connection when its stdin ends: each listener gets one
# that never does, and counts what its one connection brought.
listen() { # engine port round
    env DOCKER_HOST=unix://"$(sock_of "$1")" docker exec -d sink \
        sh -c "sleep 3600 | nc -l -p $2 | wc -c >/tmp/r$2.$3"
    sleep 0.5 # let nc listen (a benchmark, not a test)
}
received() { # engine port round -> bytes, waiting for the count
    for _ in $(seq 100); do
        local n
        n=$(env DOCKER_HOST=unix://"$(sock_of "$1")" docker exec sink sh -c "cat /tmp/r$2.$3 2>/dev/null")
        [ -n "$n" ] && { echo "$n"; return; }
        sleep 0.1
    done
    echo 0
}
rate() { # t0 t1 bytes -> MiB/s, or "incomplete"
    if [ "$3" = $((mib * 1024 * 1024)) ]; then
        echo "$mib / ($2 - $1)" | bc -l | cut -c1-7
    else
        echo incomplete
    fi
}
median() { tr ' ' '\n' | grep -v incomplete | sort -n | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "incomplete"}'; }
declare -A c2c pub
for e in "${engines[@]}"; do setup "$e"; done
echo "== throughput ($mib MiB, $rounds rounds, engines in turn)" >&2
for r in $(seq "$rounds"); do
    for e in "${engines[@]}"; do
        d="env DOCKER_HOST=unix://$(sock_of "$e")"
        port=$($d docker port sink 5001/tcp | head -1 | awk -F: '{print $NF}')
        listen "$e" 5000 "$r"
        t0=$(date +%s.%N)
        $d docker exec src sh -c "dd if=/dev/zero bs=1M count=$mib 2>/dev/null | nc sink 5000"
        t1=$(date +%s.%N)
        c2c[$e]+="$(rate "$t0" "$t1" "$(received "$e" 5000 "$r")") "
        listen "$e" 5001 "$r"
        t0=$(date +%s.%N)
        dd if=/dev/zero bs=1M count=$mib 2>/dev/null >/dev/tcp/127.0.0.1/"$port"
        t1=$(date +%s.%N)
        pub[$e]+="$(rate "$t0" "$t1" "$(received "$e" 5001 "$r")") "
    done
done
for e in "${engines[@]}"; do teardown "$e"; done
{
    for e in "${engines[@]}"; do
        echo "$e container-to-container: median $(echo "${c2c[$e]}" | median) MiB/s (rounds: ${c2c[$e]% })"
        echo "$e host->127.0.0.1 published: median $(echo "${pub[$e]}" | median) MiB/s (rounds: ${pub[$e]% })"
    done
} | tee "$results/throughput.txt"
