#!/usr/bin/env bash
# End-to-end container start through a daemon, side by side:
#
#   vessel      the vessel CLI against vesseld
#   docker>vd   the docker CLI against vesseld
#   docker      the docker CLI against dockerd (docker.io from Debian)
#   podman      podman (no daemon; conmon + crun/runc)
#
# all running `run --rm busybox true` on the same busybox image, with the
# engine's default network and with `--network none`, one at a time and 20 in
# parallel (hyperfine medians); then the memory each engine spends per idle
# container (its shim: vessel-shim, containerd-shim-runc-v2, conmon; RSS and
# PSS from /proc/PID/smaps_rollup) with 20 `sleep` containers, and the
# daemons' idle RSS.
#
#   bench/daemon/run.sh [--runs N] [--parallel N] [--idle N] [--results DIR]
#                       [--skip docker,podman] [--no-build] [--baseline DIR]
#
# --baseline DIR also measures the vesseld, vessel-shim and vessel binaries
# in DIR (an earlier build) as `vessel-base`, on a daemon of its own, in the
# same run, so a change can be compared under the same load.
#
# podman runs with runc (crun 1.8 refuses hybrid cgroup hosts).
#
# Needs root. Installs docker.io, podman, conmon, crun, hyperfine and jq with
# apt-get when missing; starts dockerd and vesseld on private directories and
# sockets and removes everything on exit (also on Ctrl-C).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
runs=30
parallel=20
idle=20
results=
skip=
build=1
baseline=

while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --parallel) parallel=$2; shift 2 ;;
        --idle) idle=$2; shift 2 ;;
        --results) results=$2; shift 2 ;;
        --skip) skip=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --baseline) baseline=$(cd "$2" && pwd); shift 2 ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root" >&2; exit 1; }
skipped() { case ",$skip," in *",$1,"*) return 0 ;; esac; return 1; }

need=()
for p in hyperfine:hyperfine jq:jq; do
    command -v "${p%%:*}" >/dev/null || need+=("${p#*:}")
done
skipped docker || [ -x /usr/sbin/dockerd ] || need+=(docker.io)
skipped podman || command -v podman >/dev/null || need+=(podman conmon crun)
if [ ${#need[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    # The package starts its own daemons; this script starts private ones.
    systemctl stop docker.service docker.socket containerd.service 2>/dev/null || true
fi

target=${CARGO_TARGET_DIR:-$repo/target}
if [ "$build" = 1 ]; then
    (cd "$repo" && cargo build --release -q -p vesseld -p vessel-runtime -p vessel-cli --bins)
fi
bin=$target/release
for b in vesseld vessel-shim vessel; do
    [ -x "$bin/$b" ] || { echo "run.sh: $bin/$b missing (build without --no-build)" >&2; exit 1; }
    [ -z "$baseline" ] || [ -x "$baseline/$b" ] || { echo "run.sh: $baseline/$b missing" >&2; exit 1; }
done

work=$(mktemp -d /tmp/vessel-bench-daemon.XXXXXX)
results=${results:-$here/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results"
pids=()
# The peers' default networks change host state (bridges, iptables rules,
# ip_forward): remember it and put it back on exit.
iptables-save >"$work/iptables.before" 2>/dev/null || true
ip6tables-save >"$work/ip6tables.before" 2>/dev/null || true
fwd_before=$(cat /proc/sys/net/ipv4/ip_forward)
nft_tables_before=$(nft list tables 2>/dev/null || true)
links_before=$(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort)
cleanup() {
    set +e
    for s in vd vb; do
        if [ -S "$work/$s.sock" ]; then
            DOCKER_HOST=unix://$work/$s.sock docker rm -f $(DOCKER_HOST=unix://$work/$s.sock docker ps -aq) >/dev/null 2>&1
        fi
    done
    if [ -S "$work/dd.sock" ]; then
        DOCKER_HOST=unix://$work/dd.sock docker rm -f $(DOCKER_HOST=unix://$work/dd.sock docker ps -aq) >/dev/null 2>&1
    fi
    if command -v podman >/dev/null && [ -d "$work/podman" ]; then
        podman_ rm -af >/dev/null 2>&1
        podman_ system reset -f >/dev/null 2>&1
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    grep -o " $work[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort | comm -13 <(echo "$links_before") -); do
        ip link delete "$l" 2>/dev/null
    done
    [ -s "$work/iptables.before" ] && iptables-restore <"$work/iptables.before"
    [ -s "$work/ip6tables.before" ] && ip6tables-restore <"$work/ip6tables.before"
    # Tables that did not exist before (dockerd's and podman's netavark
    # create ip filter / ip nat through iptables-nft) go entirely.
    nft list tables 2>/dev/null | while read -r _ family name; do
        grep -qx "table $family $name" <<<"$nft_tables_before" || nft delete table "$family" "$name"
    done
    echo "$fwd_before" >/proc/sys/net/ipv4/ip_forward
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# crun refuses hybrid cgroup hosts; runc works on all of them.
podman_() {
    podman --root "$work/podman/root" --runroot "$work/podman/run" \
        --cgroup-manager cgroupfs --events-backend none --runtime runc "$@"
}

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

echo "== starting vesseld" >&2
"$bin/vesseld" --root "$work/vd-root" --exec-root "$work/vd-run" -H "unix://$work/vd.sock" \
    --shim-binary "$bin/vessel-shim" >"$work/vesseld.log" 2>&1 &
pids+=($!)
vd_pid=$!
wait_sock "$work/vd.sock"
DOCKER_HOST=unix://$work/vd.sock docker load -q -i "$image" >/dev/null
if [ -n "$baseline" ]; then
    echo "== starting the baseline vesseld" >&2
    "$baseline/vesseld" --root "$work/vb-root" --exec-root "$work/vb-run" -H "unix://$work/vb.sock" \
        --shim-binary "$baseline/vessel-shim" >"$work/vesseld-base.log" 2>&1 &
    pids+=($!)
    wait_sock "$work/vb.sock"
    DOCKER_HOST=unix://$work/vb.sock docker load -q -i "$image" >/dev/null
fi

dd_pid=
if ! skipped docker; then
    echo "== starting dockerd" >&2
    # A bridge of our own, so the script never touches a docker0 it did not make.
    ip link add vbench0 type bridge
    ip addr add 10.213.0.1/24 dev vbench0
    ip link set vbench0 up
    /usr/sbin/dockerd --data-root "$work/dd-root" --exec-root "$work/dd-run" \
        -H "unix://$work/dd.sock" --pidfile "$work/dd.pid" --storage-driver overlay2 \
        --containerd-namespace "vbench$$" --bridge vbench0 \
        >"$work/dockerd.log" 2>&1 &
    pids+=($!)
    dd_pid=$!
    wait_sock "$work/dd.sock"
    DOCKER_HOST=unix://$work/dd.sock docker load -q -i "$image" >/dev/null
fi
if ! skipped podman; then
    mkdir -p "$work/podman"
    cat >"$work/podman/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
EOF
    export CONTAINERS_CONF=$work/podman/containers.conf
    podman_ load -q -i "$image" >/dev/null
fi

vd="DOCKER_HOST=unix://$work/vd.sock"
cmds=()
names=()
add() { names+=("$1"); cmds+=("$2"); }
for net in default none; do
    flag=; [ "$net" = none ] && flag="--network none"
    add "vessel $net" "$bin/vessel -H unix://$work/vd.sock run --rm $flag busybox true"
    [ -z "$baseline" ] || add "vessel-base $net" "$baseline/vessel -H unix://$work/vb.sock run --rm $flag busybox true"
    add "docker>vd $net" "env $vd docker run --rm $flag busybox true"
    skipped docker || add "docker $net" "env DOCKER_HOST=unix://$work/dd.sock docker run --rm $flag busybox true"
    skipped podman || add "podman $net" "podman --root $work/podman/root --runroot $work/podman/run --cgroup-manager cgroupfs --events-backend none --runtime runc run --rm $flag busybox true"
done

args=()
for i in "${!names[@]}"; do args+=(-n "${names[$i]}" "${cmds[$i]}"); done
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== one at a time ($runs runs each)" >&2
hyperfine -N --warmup 3 --runs "$runs" --export-json "$results/single.json" "${args[@]}" >"$results/single.txt"

pargs=()
for i in "${!names[@]}"; do
    case ${names[$i]} in *" none") continue ;; esac
    pargs+=(-n "${names[$i]} x$parallel" "bash -c 'for i in \$(seq $parallel); do ${cmds[$i]} & done; wait'")
done
echo "== $parallel in parallel" >&2
hyperfine --warmup 1 --runs "$(( runs / 5 > 3 ? runs / 5 : 3 ))" --export-json "$results/parallel.json" "${pargs[@]}" >"$results/parallel.txt"

# Memory per idle container.
rollup() { # PID FIELD -> KiB
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0
}
mem_of() { # pattern -> "count rss_kib pss_kib"
    local n=0 rss=0 pss=0
    for p in $(pgrep -f "$1"); do
        n=$((n + 1)); rss=$((rss + $(rollup "$p" Rss))); pss=$((pss + $(rollup "$p" Pss)))
    done
    echo "$n $rss $pss"
}
echo "== $idle idle containers" >&2
declare -A shim_pattern=([vessel]="vessel-shim.*$work" [docker]="containerd-shim-runc-v2.*vbench$$" [podman]="conmon.*$work/podman")
mem_lines=()
for engine in vessel docker podman; do
    skipped "$engine" && continue
    for i in $(seq "$idle"); do
        case $engine in
            vessel) "$bin/vessel" -H "unix://$work/vd.sock" run -d --network none busybox sleep 3600 >/dev/null ;;
            docker) DOCKER_HOST=unix://$work/dd.sock docker run -d --network none busybox sleep 3600 >/dev/null ;;
            podman) podman_ run -d --network none busybox sleep 3600 >/dev/null ;;
        esac
    done
    read -r n rss pss < <(mem_of "${shim_pattern[$engine]}")
    mem_lines+=("$engine $n $rss $pss")
    case $engine in
        vessel) "$bin/vessel" -H "unix://$work/vd.sock" rm -f $("$bin/vessel" -H "unix://$work/vd.sock" ps -q) >/dev/null ;;
        docker) DOCKER_HOST=unix://$work/dd.sock docker rm -f $(DOCKER_HOST=unix://$work/dd.sock docker ps -q) >/dev/null ;;
        podman) podman_ rm -f -t 0 -a >/dev/null ;;
    esac
done
vd_rss=$(rollup "$vd_pid" Rss)
dd_rss=0; ctd_rss=0
if [ -n "$dd_pid" ]; then
    dd_rss=$(rollup "$dd_pid" Rss)
    ctd=$(pgrep -f "containerd --config $work/dd-run" | head -1 || true)
    [ -n "$ctd" ] || ctd=$(pgrep -P "$dd_pid" -x containerd | head -1 || true)
    [ -n "$ctd" ] && ctd_rss=$(rollup "$ctd" Rss)
fi

{
    echo "# bench/daemon $(date -u +%FT%TZ) on $(nproc) cores"
    echo "load average: $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo
    echo "## run --rm busybox true, one at a time (median, ms)"
    jq -r '.results[] | "\(.command)\t\(.median * 1000 | floor)"' "$results/single.json" | column -t -s $'\t'
    echo
    echo "## $parallel in parallel (median wall time, ms)"
    jq -r '.results[] | "\(.command)\t\(.median * 1000 | floor)"' "$results/parallel.json" | column -t -s $'\t'
    echo
    echo "## $idle idle containers: shim memory per container (KiB)"
    printf '%-8s %6s %10s %10s\n' engine shims rss/ctr pss/ctr
    for l in "${mem_lines[@]}"; do
        read -r e n rss pss <<<"$l"
        [ "$n" -gt 0 ] || n=1
        printf '%-8s %6s %10s %10s\n' "$e" "$n" $((rss / n)) $((pss / n))
    done
    echo
    echo "## daemon idle RSS after the runs (KiB)"
    echo "vesseld $vd_rss"
    [ -n "$dd_pid" ] && echo "dockerd $dd_rss containerd $ctd_rss"
} | tee "$results/summary.txt"
