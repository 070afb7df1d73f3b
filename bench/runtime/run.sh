#!/usr/bin/env bash
# Side-by-side start-up benchmark of OCI runtimes on one bundle.
#
#   bench/runtime/run.sh [--runs N] [--runtime PATH]... [options]
#
# Measures vessel-runtime (built from this repository), crun and runc on the
# same busybox bundle with the same config.json, using hyperfine:
#   run       `RUNTIME run --bundle B ID` of /bin/true, a new ID every run
#   create    `create` alone        (prepare: delete the previous container)
#   start     `start` alone         (prepare: create)
#   delete    `delete` alone        (prepare: create, start, wait until stopped)
#   parallel  wall time of COUNT concurrent `run`s of /bin/true
# in two namespace variants: "netns" (the namespaces of `runc spec`, which
# include a network namespace) and "nonet" (the same without it).
#
# Options:
#   --runs N            timed runs per case and runtime (default 50)
#   --rounds N          split the runs into N rounds that alternate between the
#                       runtimes (default 5)
#   --warmup N          untimed runs at the start of every round (default 3)
#   --parallel N        containers started at once in the parallel case (default 20)
#   --parallel-runs N   timed runs of the parallel case (default: --runs)
#   --runtime PATH      a runtime to measure; repeat it to measure several. The
#                       default set is vessel-runtime (built here), crun and runc;
#                       giving --runtime replaces that set
#   --variants LIST     comma-separated namespace variants (default netns,nonet)
#   --no-build          do not build vessel-runtime; use the binary already in
#                       the target directory if there is one
#   --no-cgroup-change  never move hugetlb off cgroup2 (crun is then skipped on
#                       a hybrid host)
#   --cgroup-wait S     how long to wait for processes in cgroup2 cgroups that
#                       use hugetlb to exit before giving up the move (default 120)
#   --results DIR       where to write hyperfine's JSON and logs
#                       (default bench/runtime/results/<UTC time>)
#
# Needs root. Installs crun, runc, hyperfine, busybox-static and jq with
# apt-get when they are missing. On a hybrid cgroup host (a cgroup2 hierarchy
# at /sys/fs/cgroup/unified with hugetlb enabled) crun refuses to start
# containers; for its measurement the script moves hugetlb to a cgroup v1
# hierarchy and moves it back on exit (see README.md).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
phase=$here/phase.sh

runs=50
warmup=3
rounds=5
parallel=20
parallel_runs=
variants=netns,nonet
build=1
cgroup_change=1
cgroup_wait=120
results=
given_runtimes=()

die() {
    echo "run.sh: $*" >&2
    exit 1
}
log() { printf '%s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
positive() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 needs a positive integer, got \"$2\""; }

while (($# > 0)); do
    case $1 in
        --runs) positive "$1" "${2-}"; runs=$2; shift 2 ;;
        --warmup) [[ ${2-} =~ ^[0-9]+$ ]] || die "--warmup needs a number"; warmup=$2; shift 2 ;;
        --rounds) positive "$1" "${2-}"; rounds=$2; shift 2 ;;
        --parallel) positive "$1" "${2-}"; parallel=$2; shift 2 ;;
        --parallel-runs) positive "$1" "${2-}"; parallel_runs=$2; shift 2 ;;
        --runtime) [[ -n ${2-} ]] || die "--runtime needs a path"; given_runtimes+=("$2"); shift 2 ;;
        --variants) [[ -n ${2-} ]] || die "--variants needs a list"; variants=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --no-cgroup-change) cgroup_change=0; shift ;;
        --cgroup-wait) [[ ${2-} =~ ^[0-9]+$ ]] || die "--cgroup-wait needs a number of seconds"; cgroup_wait=$2; shift 2 ;;
        --results) [[ -n ${2-} ]] || die "--results needs a directory"; results=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument \"$1\" (see --help)" ;;
    esac
done
parallel_runs=${parallel_runs:-$runs}
((rounds <= runs && rounds <= parallel_runs)) || die "--rounds must not exceed --runs or --parallel-runs"
# Every round gets an equal share of the runs (rounded up).
round_runs=$(((runs + rounds - 1) / rounds))
round_parallel_runs=$(((parallel_runs + rounds - 1) / rounds))
IFS=, read -r -a variant_list <<<"$variants"
for v in "${variant_list[@]}"; do
    case $v in netns | nonet) ;; *) die "unknown variant \"$v\" (netns, nonet)" ;; esac
done

[[ $(id -u) == 0 ]] || die "needs root (runtimes create namespaces and cgroups)"

# --- tools -----------------------------------------------------------------

wants_crun=1
if ((${#given_runtimes[@]} > 0)); then
    wants_crun=0
    for r in "${given_runtimes[@]}"; do [[ $r == crun ]] && wants_crun=1; done
fi
missing=()
command -v hyperfine >/dev/null || missing+=(hyperfine)
command -v jq >/dev/null || missing+=(jq)
command -v runc >/dev/null || missing+=(runc) # also writes the base config.json
((wants_crun)) && ! command -v crun >/dev/null && missing+=(crun)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' ||
    missing+=(busybox-static)
if ((${#missing[@]} > 0)); then
    log "installing ${missing[*]}"
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
    }
    apt_install "${missing[@]}" >/dev/null ||
        { apt-get update -q >/dev/null && apt_install "${missing[@]}" >/dev/null; } ||
        die "apt-get could not install ${missing[*]}"
fi

# --- cgroup setup --------------------------------------------------------------

work=
prefix=vbench$$
labels=()
declare -A rt_path=() rt_skip=()

cgroot=/sys/fs/cgroup
unified=$cgroot/unified
hugetlb_mnt=$cgroot/hugetlb
hugetlb_moved=0
hugetlb_mkdir=0

v2_controllers() {
    if [[ $(stat -f -c %T "$unified" 2>/dev/null) == cgroup2fs ]]; then
        cat "$unified/cgroup.controllers"
    fi
}

setups=(host)
host_cgroups="cgroup v2 only or v1 only"
if [[ $(stat -f -c %T "$cgroot") == tmpfs && $(stat -f -c %T "$unified" 2>/dev/null) == cgroup2fs ]]; then
    host_cgroups="hybrid: v1 controllers, cgroup2 at $unified with controllers [$(v2_controllers)]"
    if [[ $(v2_controllers) == hugetlb ]]; then
        if ((cgroup_change)); then
            setups+=(hugetlb-v1)
        else
            log "not moving hugetlb off cgroup2 (--no-cgroup-change): crun will be skipped"
        fi
    elif [[ -n $(v2_controllers) ]]; then
        log "cgroup2 at $unified holds [$(v2_controllers)], not just hugetlb: no workaround for crun"
    fi
fi

# Moving hugetlb: a controller can be bound to a cgroup v1 hierarchy as long
# as no cgroup below the cgroup2 root has it enabled. Mounting a v1 hierarchy
# with only that controller takes it off cgroup2, whose cgroup.controllers
# becomes empty, which is what crun requires. Unmounting the v1 hierarchy
# (once it has no child cgroups) destroys it and the kernel gives the
# controller back to cgroup2, asynchronously, within a few milliseconds.
#
# If hugetlb is enabled in cgroup.subtree_control below the cgroup2 root (a
# runtime that manages the hybrid layout's cgroup2 side does that), it is
# disabled there first, deepest cgroup first, but only when no process is in
# any cgroup below the root; restore_hugetlb enables it again, top down.
move_fail=
subtree_disabled=()

move_hugetlb() {
    local err dir i busy
    if [[ $(<"$unified/cgroup.subtree_control") == *hugetlb* ]]; then
        # Another user's containers may be running there; give them a while.
        for ((i = 0; ; i++)); do
            busy=$(grep -l '^populated 1' "$unified"/*/cgroup.events 2>/dev/null | head -n3 |
                sed "s|^$unified/||; s|/cgroup.events\$||" | paste -sd, || true)
            [[ -n $busy ]] || break
            if ((i >= cgroup_wait * 10)); then
                move_fail="hugetlb is enabled below $unified and these cgroups there hold processes: $busy"
                return 1
            fi
            ((i > 0)) || log "cgroups: waiting up to ${cgroup_wait}s for the processes in $unified/{$busy} to exit"
            sleep 0.1
        done
        while read -r dir; do
            [[ $(<"$dir/cgroup.subtree_control") == *hugetlb* ]] || continue
            if ! err=$( (echo -hugetlb >"$dir/cgroup.subtree_control") 2>&1); then
                move_fail="could not disable hugetlb in $dir/cgroup.subtree_control: ${err##*: }"
                restore_subtree
                return 1
            fi
            subtree_disabled=("$dir" ${subtree_disabled[@]+"${subtree_disabled[@]}"})
            log "cgroups: disabled hugetlb in $dir/cgroup.subtree_control"
        done < <(find "$unified" -depth -type d)
    fi
    if [[ -e $hugetlb_mnt ]]; then
        if [[ ! -d $hugetlb_mnt || -n $(ls -A "$hugetlb_mnt") ]]; then
            move_fail="$hugetlb_mnt exists and is not an empty directory"
            restore_subtree
            return 1
        fi
    else
        mkdir "$hugetlb_mnt"
        hugetlb_mkdir=1
    fi
    # Disabled controllers leave the cgroups asynchronously: until they are
    # gone the mount fails with EBUSY, so try for up to five seconds.
    for ((i = 0; i < 100; i++)); do
        err=$(mount -t cgroup -o hugetlb cgroup "$hugetlb_mnt" 2>&1) && break
        sleep 0.05
    done
    if ! mountpoint -q "$hugetlb_mnt"; then
        move_fail="mounting a v1 hugetlb hierarchy at $hugetlb_mnt failed: ${err%%$'\n'*}"
        restore_hugetlb
        return 1
    fi
    hugetlb_moved=1
    if [[ -n $(v2_controllers) ]]; then
        move_fail="hugetlb still listed in $unified/cgroup.controllers after the move"
        restore_hugetlb
        return 1
    fi
    log "cgroups: moved hugetlb off cgroup2: mounted a v1 hierarchy with only hugetlb at $hugetlb_mnt"
}

# Enables hugetlb again where move_hugetlb disabled it, top down.
restore_subtree() {
    local dir failed=0
    for dir in ${subtree_disabled[@]+"${subtree_disabled[@]}"}; do
        [[ -d $dir ]] || continue
        if (echo +hugetlb >"$dir/cgroup.subtree_control") 2>/dev/null; then
            log "cgroups: enabled hugetlb again in $dir/cgroup.subtree_control"
        else
            log "WARNING: could not enable hugetlb again in $dir/cgroup.subtree_control"
            failed=1
        fi
    done
    subtree_disabled=()
    return "$failed"
}

# The commands that enable hugetlb again where move_hugetlb disabled it.
subtree_hint() {
    local dir
    for dir in ${subtree_disabled[@]+"${subtree_disabled[@]}"}; do
        printf '; echo +hugetlb >%s/cgroup.subtree_control' "$dir"
    done
}

hugetlb_cgroups() { awk '$1 == "hugetlb" { print $3 }' /proc/cgroups; }

restore_hugetlb() {
    local dir left i attempt
    if ((hugetlb_moved)); then
        # Child cgroups would keep the hierarchy alive after the unmount, and
        # hugetlb with it; remove the empty ones (rmdir refuses the others).
        # Other users' containers that started while hugetlb was on v1 have
        # cgroups here too: wait for them to go.
        for ((i = 0; ; i++)); do
            while read -r dir; do
                [[ -n $dir ]] || continue
                if rmdir "$dir" 2>/dev/null && [[ $(basename "$dir") != "$prefix"* ]]; then
                    log "removed empty cgroup $dir, created while hugetlb was on v1"
                fi
            done < <(find "$hugetlb_mnt" -mindepth 1 -depth -type d)
            left=$(find "$hugetlb_mnt" -mindepth 1 -type d | paste -sd' ')
            [[ -n $left ]] || break
            if ((i >= cgroup_wait * 10)); then
                log "WARNING: not restoring hugetlb: cgroups in use below $hugetlb_mnt: $left"
                log "WARNING: when they are gone: umount $hugetlb_mnt && rmdir $hugetlb_mnt$(subtree_hint)"
                return 1
            fi
            ((i > 0)) || log "cgroups: waiting up to ${cgroup_wait}s for the processes in $left to exit"
            sleep 0.1
        done
        for ((attempt = 1; attempt <= 5; attempt++)); do
            # A removed cgroup lingers until the kernel releases it (the count
            # in /proc/cgroups includes it until then). Unmounting before that
            # leaves the hierarchy alive but invisible, with hugetlb bound to it.
            for ((i = 0; i < 200; i++)); do
                [[ $(hugetlb_cgroups) == 1 ]] && break
                sleep 0.05
            done
            for ((i = 0; i < 50; i++)); do
                umount "$hugetlb_mnt" 2>/dev/null && break
                sleep 0.1
            done
            if mountpoint -q "$hugetlb_mnt"; then
                log "WARNING: could not unmount $hugetlb_mnt; run: umount $hugetlb_mnt && rmdir $hugetlb_mnt$(subtree_hint)"
                return 1
            fi
            for ((i = 0; i < 40; i++)); do
                [[ $(v2_controllers) == *hugetlb* ]] && break
                sleep 0.05
            done
            if [[ $(v2_controllers) == *hugetlb* ]]; then
                hugetlb_moved=0
                log "cgroups: restored: hugetlb is back on $unified"
                restore_subtree || true
                break
            fi
            # Mounting the same options again reattaches the lingering
            # hierarchy, so the next unmount can destroy it.
            mount -t cgroup -o hugetlb cgroup "$hugetlb_mnt" || break
        done
        if ((hugetlb_moved)); then
            log "WARNING: hugetlb did not come back to $unified; to restore it:"
            log "WARNING:   mount -t cgroup -o hugetlb cgroup $hugetlb_mnt; sleep 1; umount $hugetlb_mnt$(subtree_hint)"
            return 1
        fi
    fi
    if ((!hugetlb_moved && ${#subtree_disabled[@]} > 0)); then
        restore_subtree || true
    fi
    if ((hugetlb_mkdir)) && [[ -d $hugetlb_mnt ]] && ! mountpoint -q "$hugetlb_mnt"; then
        rmdir "$hugetlb_mnt" && hugetlb_mkdir=0
    fi
    return 0
}

# --- cleanup ---------------------------------------------------------------------

cleaned=0
snapshot_taken=0
declare -A new_parents=() cg_where=()
cleanup() {
    local label rt id dir pid i
    ((cleaned)) && return
    cleaned=1
    set +e
    # Containers, through each runtime's own state directory.
    for label in "${labels[@]}"; do
        rt=${rt_path[$label]}
        [[ -n $rt && -d $work/state/$label ]] || continue
        {
            ls "$work/state/$label"
            "$rt" --root "$work/state/$label" list -q 2>/dev/null
        } | sort -u | grep "^$prefix" | while read -r id; do
            "$rt" --root "$work/state/$label" delete --force "$id" >/dev/null 2>&1
        done
    done
    # Cgroups the runtimes left behind, named after our container IDs; a
    # process still in one of them is a container process of this run.
    mapfile -t dirs < <(find "$cgroot" -mindepth 2 -maxdepth 8 -type d -name "$prefix*" 2>/dev/null)
    if ((${#dirs[@]} > 0)); then
        for dir in "${dirs[@]}"; do
            while read -r pid; do
                [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null
            done < <(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null)
        done
        for ((i = 0; i < 20; i++)); do
            for dir in "${dirs[@]}"; do
                [[ -d $dir ]] && find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
            done
            left=0
            for dir in "${dirs[@]}"; do [[ -d $dir ]] && left=1; done
            ((left)) || break
            sleep 0.1
        done
        for dir in "${dirs[@]}"; do [[ -d $dir ]] && log "WARNING: could not remove cgroup $dir"; done
    fi
    restore_hugetlb
    if ((snapshot_taken)); then
        # Parent cgroups that a runtime under test created during the run
        # (found by probe_cgroups), if they are empty now; and hugetlb in the
        # cgroup2 root's subtree_control if a runtime enabled it there.
        for dir in "${!new_parents[@]}"; do
            [[ -d $dir && $dir != "$hugetlb_mnt"/* ]] || continue
            rmdir "$dir" 2>/dev/null && log "cgroups: removed $dir, made by a runtime under test"
        done
        if [[ $subtree_before != *hugetlb* && $(cat "$unified/cgroup.subtree_control" 2>/dev/null) == *hugetlb* &&
            -z $(find "$unified" -mindepth 1 -maxdepth 1 -type d) ]]; then
            echo -hugetlb >"$unified/cgroup.subtree_control" &&
                log "cgroups: disabled hugetlb in $unified/cgroup.subtree_control again, as found"
        fi
    fi
    # Nothing should be mounted below the scratch directory (the runtimes
    # mount inside the containers' mount namespaces), but a broken runtime
    # might leak a mount: unmount before deleting.
    [[ -z $work ]] || awk -v w="$work/" 'index($5, w) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m"; done
    [[ -z $work ]] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Top-level cgroups and the cgroup2 root's subtree_control as found, so that
# cleanup can remove what the runtimes under test leave behind.
top_cgroups() { find "$cgroot" -mindepth 2 -maxdepth 2 -type d 2>/dev/null | sort; }
top_before=$(top_cgroups)
subtree_before=$(cat "$unified/cgroup.subtree_control" 2>/dev/null || true)
snapshot_taken=1

# --- results and scratch directories ----------------------------------------

results=${results:-$here/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results/rounds"
results=$(cd "$results" && pwd)
work=$(mktemp -d /tmp/vessel-bench-runtime.XXXXXX)
for p in "$results" "$work" "$repo"; do
    [[ $p != *[[:space:]]* ]] || die "path \"$p\" contains white space"
done

# --- runtimes ------------------------------------------------------------------

add_runtime() { # LABEL PATH-OR-EMPTY SKIP-REASON
    local label=$1
    [[ -z ${rt_path[$label]+x} ]] || die "runtime $label given twice"
    labels+=("$label")
    rt_path[$label]=$2
    [[ -z $3 ]] || rt_skip[$label]=$3
}

build_vessel() {
    local target=${CARGO_TARGET_DIR:-$repo/target}
    local bin=$target/release/vessel-runtime
    if ((!build)); then
        if [[ -x $bin ]]; then
            add_runtime vessel-runtime "$bin" ""
        else
            add_runtime vessel-runtime "" "not built (--no-build and no $bin)"
        fi
        return
    fi
    [[ -x $HOME/.cargo/bin/cargo ]] && PATH=$PATH:$HOME/.cargo/bin
    if ! command -v cargo >/dev/null; then
        add_runtime vessel-runtime "" "cargo not found"
        return
    fi
    log "building vessel-runtime (cargo build --release -p vessel-runtime, log: $results/build.log)"
    if (cd "$repo" && cargo build --release -p vessel-runtime) >"$results/build.log" 2>&1 && [[ -x $bin ]]; then
        add_runtime vessel-runtime "$bin" ""
    else
        add_runtime vessel-runtime "" "build failed: $(grep -m1 '^error' "$results/build.log" || tail -n1 "$results/build.log")"
    fi
}

if ((${#given_runtimes[@]} == 0)); then
    build_vessel
    given_runtimes=(crun runc)
fi
for r in "${given_runtimes[@]}"; do
    if [[ $r == */* ]]; then
        [[ -x $r ]] || die "runtime $r is not an executable file"
        path=$(cd "$(dirname "$r")" && pwd)/$(basename "$r")
    else
        path=$(command -v "$r") || die "runtime $r not found on PATH"
    fi
    [[ $path != *[[:space:]]* ]] || die "runtime path \"$path\" contains white space"
    add_runtime "$(basename "$r")" "$path" ""
done
for label in "${labels[@]}"; do mkdir -p "$work/state/$label"; done

# --- bundle ----------------------------------------------------------------------

log "making the bundle in $work"
"$repo/scripts/busybox-rootfs.sh" "$work/rootfs" >/dev/null
(cd "$work" && runc spec && mv config.json spec.json)
jq --arg root "$work/rootfs" \
    '.process.args = ["/bin/true"] | .process.terminal = false | .root.path = $root' \
    "$work/spec.json" >"$work/base.json"
mkdir -p "$work/bundle-netns" "$work/bundle-nonet" "$work/bundle-smoke"
cp "$work/base.json" "$work/bundle-netns/config.json"
jq '.linux.namespaces |= map(select(.type != "network"))' "$work/base.json" >"$work/bundle-nonet/config.json"
# shellcheck disable=SC2016 # $$ is for the container's shell
jq '.process.args = ["/bin/sh", "-c", "echo $$"]' "$work/base.json" >"$work/bundle-smoke/config.json"
cp "$work/bundle-netns/config.json" "$results/config-netns.json"
cp "$work/bundle-nonet/config.json" "$results/config-nonet.json"

# --- measuring ----------------------------------------------------------------------

declare -A median=() failure=() smoke_fail=()

# Checks that LABEL really runs a container: /bin/sh must be PID 1 of a new
# PID namespace. A runtime that exits 0 without doing anything fails here.
smoke() { # SETUP LABEL
    local rt=${rt_path[$2]} root=$work/state/$2 id=$prefix-smoke out err
    err=$work/smoke.err
    if ! out=$("$rt" --root "$root" run --bundle "$work/bundle-smoke" "$id" </dev/null 2>"$err"); then
        smoke_fail[$1|$2]="run failed: $(grep -v -e '^\s*$' -e 'level=warn' "$err" | tail -n1)"
        "$rt" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
        return 1
    fi
    if [[ $out != 1 ]]; then
        smoke_fail[$1|$2]="run of \`sh -c 'echo \$\$'\` printed \"${out:0:40}\", not 1: no container was started"
        return 1
    fi
}

# Finds where LABEL puts a container's cgroups (for the report) and which
# top-level parent cgroups it creates (for the cleanup): creates a container,
# looks for cgroups named after it, deletes it. The runtime's output goes to
# a file: the created container's process keeps it open until it is deleted.
probe_cgroups() { # SETUP LABEL
    local rt=${rt_path[$2]} root=$work/state/$2 id=$prefix-probe dir top where=()
    "$rt" --root "$root" create --bundle "$work/bundle-netns" "$id" </dev/null >"$work/probe.out" 2>&1 || return 0
    while read -r dir; do
        where+=("${dir#"$cgroot"/}")
        top=$(cut -d/ -f1-6 <<<"$dir")
        if [[ $top != "$dir" && $'\n'$top_before$'\n' != *$'\n'$top$'\n'* ]]; then
            new_parents[$top]=1
        fi
    done < <(find "$cgroot" -mindepth 2 -maxdepth 8 -type d -name "$id" 2>/dev/null)
    "$rt" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
    # "cpu/x/ID memory/y/ID" becomes "/x/<id> (cpu), /y/<id> (memory)".
    cg_where[$1|$2]=$(printf '%s\n' ${where[@]+"${where[@]}"} | sed "s|/$id\$|/<id>|" | sort |
        awk -F/ '{ c = $1; sub(/^[^\/]*/, ""); l[$0] = l[$0] (l[$0] == "" ? "" : ",") c }
                 END { for (p in l) printf "%s%s (%s)", (n++ ? ", " : ""), p, l[p] }')
}

# One round of one case for one runtime: a hyperfine run with its own JSON
# export and log in rounds/. Returns non-zero (and records why) on failure.
bench_round() { # SETUP VARIANT SCENARIO LABEL ROUND
    local setup=$1 variant=$2 scenario=$3 label=$4 round=$5
    local rt=${rt_path[$label]} root=$work/state/$label bundle=$work/bundle-$variant
    local key="$setup|$variant|$scenario|$label" name="rounds/$setup.$variant.$scenario.$label.r$round"
    local id=$prefix-$scenario n=$round_runs
    [[ $scenario != parallel ]] || n=$round_parallel_runs
    local cmd=(--warmup "$warmup" --runs "$n" --style basic --export-json "$results/$name.json")
    case $scenario in
        run)
            # Through sh so that $$ gives every run its own ID; hyperfine
            # subtracts the time sh itself takes.
            cmd+=("$rt --root $root run --bundle $bundle $prefix-run-\$\$")
            ;;
        create | start | delete)
            cmd=(-N "${cmd[@]}"
                --prepare "bash $phase prep-$scenario $rt $root $bundle $id"
                --cleanup "bash $phase remove $rt $root $id")
            case $scenario in
                create) cmd+=("$rt --root $root create --bundle $bundle $id") ;;
                start) cmd+=("$rt --root $root start $id") ;;
                delete) cmd+=("$rt --root $root delete $id") ;;
            esac
            ;;
        parallel)
            cmd=(-N "${cmd[@]}" "bash $phase parallel $rt $root $bundle $prefix-par $parallel")
            ;;
    esac
    rm -f "$work/phase-errors"*
    if PHASE_ERRORS=$work/phase-errors hyperfine "${cmd[@]}" >"$results/$name.log" 2>&1; then
        return 0
    fi
    if [[ -s $work/phase-errors ]]; then
        failure[$key]=$(head -n1 "$work/phase-errors")
    else
        failure[$key]="hyperfine failed: $(grep -v '^\s*$' "$results/$name.log" | tail -n1 | sed 's/^\s*//; s/\. Use the .*//')"
    fi
    cat "$work/phase-errors" >>"$results/$name.log" 2>/dev/null || true
    rm -f "$results/$name.json"
    log "  $setup/$variant $scenario $label (round $round): ${failure[$key]}"
    return 1
}

# Pools the times of every round into SETUP.VARIANT.SCENARIO.LABEL.json (the
# shape of a hyperfine export: results[0] with command, times and the
# statistics over all of them) and records the median.
merge_rounds() { # SETUP VARIANT SCENARIO LABEL
    local setup=$1 variant=$2 scenario=$3 label=$4
    local key="$setup|$variant|$scenario|$label" name="$setup.$variant.$scenario.$label"
    [[ -z ${failure[$key]-} ]] || return 0
    jq -s '[.[].results[0]] as $r | ($r | map(.times) | add | sort) as $t | ($t | length) as $n
        | { results: [ { command: $r[0].command, rounds: ($r | length), times: $t,
              mean: ($t | add / $n), min: $t[0], max: $t[-1],
              median: (if $n % 2 == 1 then $t[($n - 1) / 2] else ($t[$n / 2 - 1] + $t[$n / 2]) / 2 end),
              stddev: (($t | add / $n) as $m | ($t | map((. - $m) * (. - $m)) | add / $n) | sqrt) } ] }' \
        "$results"/rounds/"$name".r*.json >"$results/$name.json"
    median[$key]=$(jq -r '.results[0].median' "$results/$name.json")
    log "  $setup/$variant $scenario $label: median $(ms "${median[$key]}")"
}

ms() { awk -v s="$1" 'BEGIN { printf "%.1f ms", s * 1000 }'; }

scenarios=(run create start delete parallel)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for setup in "${setups[@]}"; do
    if [[ $setup == hugetlb-v1 ]] && ! move_hugetlb; then
        log "cgroup setup $setup not possible: $move_fail"
        for label in "${labels[@]}"; do smoke_fail[$setup|$label]="could not move hugetlb off cgroup2: $move_fail"; done
        continue
    fi
    log "cgroup setup $setup"
    ok=()
    for label in "${labels[@]}"; do
        if [[ -n ${rt_skip[$label]-} ]]; then
            smoke_fail[$setup|$label]=${rt_skip[$label]}
        elif smoke "$setup" "$label"; then
            ok+=("$label")
            probe_cgroups "$setup" "$label"
        fi
        [[ -z ${smoke_fail[$setup|$label]-} ]] || log "  $label skipped: ${smoke_fail[$setup|$label]}"
    done
    for variant in "${variant_list[@]}"; do
        for scenario in "${scenarios[@]}"; do
            # Rounds alternate the runtimes, so that a burst of load from
            # elsewhere on the machine does not fall on one runtime only.
            for ((round = 1; round <= rounds; round++)); do
                for label in ${ok[@]+"${ok[@]}"}; do
                    [[ -n ${failure[$setup|$variant|$scenario|$label]-} ]] ||
                        bench_round "$setup" "$variant" "$scenario" "$label" "$round" || true
                done
            done
            for label in ${ok[@]+"${ok[@]}"}; do
                merge_rounds "$setup" "$variant" "$scenario" "$label"
            done
        done
    done
    if [[ $setup == hugetlb-v1 ]]; then
        restore_hugetlb || log "hugetlb is restored again on exit"
    fi
done

# --- report ----------------------------------------------------------------------

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }

cell() { # KEY LABEL SETUP
    if [[ -n ${median[$1]-} ]]; then
        ms "${median[$1]}"
    elif [[ -n ${smoke_fail[$3|$2]-} ]]; then
        printf skipped
    elif [[ -n ${failure[$1]-} ]]; then
        printf failed
    else
        printf -- -
    fi
}

describe_setup() {
    case $1 in
        host) printf 'host as found (%s)' "$host_cgroups" ;;
        hugetlb-v1) printf 'hugetlb moved to a v1 hierarchy at %s for the measurement; cgroup2 at %s has no controllers' "$hugetlb_mnt" "$unified" ;;
    esac
}

report() {
    local setup variant scenario label key row v c r
    printf 'OCI runtime start-up, medians of %s runs in %s rounds (%s warm-up runs each), %s, %s CPUs, load average %s\n' \
        "$((round_runs * rounds))" "$rounds" "$warmup" "$(uname -r)" "$(nproc)" "$load_before at the start, $(cut -d" " -f1-3 /proc/loadavg) at the end"
    for label in "${labels[@]}"; do
        v=
        [[ -z ${rt_path[$label]} ]] || v=$("${rt_path[$label]}" --version 2>/dev/null | head -n1 || true)
        printf '  %-16s %s %s\n' "$label" "${rt_path[$label]:-(none)}" "${v:+($v)}"
    done
    printf '  bundle: busybox rootfs, config.json from runc spec with args [/bin/true], terminal false\n'
    for setup in "${setups[@]}"; do
        for label in "${labels[@]}"; do
            [[ -z ${cg_where[$setup|$label]-} ]] ||
                printf '  cgroups of a %s container under %s: %s\n' "$label" "$setup" "${cg_where[$setup|$label]}"
        done
    done
    for setup in "${setups[@]}"; do
        for variant in "${variant_list[@]}"; do
            printf '\n== cgroups: %s\n== namespaces: %s\n' "$(describe_setup "$setup")" \
                "$([[ $variant == netns ]] && echo 'runc spec default (pid, network, ipc, uts, mount)' || echo 'runc spec default without the network namespace')"
            row=$(printf '%-26s' scenario)
            for label in "${labels[@]}"; do row+=$(printf '%16s' "$label"); done
            [[ -n ${rt_path[crun]+x} && -n ${rt_path[vessel-runtime]+x} ]] && row+=$(printf '%14s' vessel/crun)
            [[ -n ${rt_path[runc]+x} && -n ${rt_path[vessel-runtime]+x} ]] && row+=$(printf '%14s' vessel/runc)
            printf '%s\n' "$row"
            for scenario in run create start delete sum parallel; do
                case $scenario in
                    run) row=$(printf '%-26s' 'run /bin/true') ;;
                    create | start | delete) row=$(printf '%-26s' "$scenario") ;;
                    sum) row=$(printf '%-26s' 'create+start+delete') ;;
                    parallel) row=$(printf '%-26s' "$parallel parallel runs (wall)") ;;
                esac
                for label in "${labels[@]}"; do
                    key="$setup|$variant|$scenario|$label"
                    if [[ $scenario == sum ]]; then
                        local c1=${median["$setup|$variant|create|$label"]-} c2=${median["$setup|$variant|start|$label"]-} c3=${median["$setup|$variant|delete|$label"]-}
                        [[ -n $c1 && -n $c2 && -n $c3 ]] && median[$key]=$(awk -v a="$c1" -v b="$c2" -v c="$c3" 'BEGIN { print a + b + c }')
                    fi
                    row+=$(printf '%16s' "$(cell "$key" "$label" "$setup")")
                done
                for r in crun runc; do
                    [[ -n ${rt_path[$r]+x} && -n ${rt_path[vessel-runtime]+x} ]] || continue
                    v=${median["$setup|$variant|$scenario|vessel-runtime"]-}
                    c=${median["$setup|$variant|$scenario|$r"]-}
                    if [[ -n $v && -n $c ]]; then row+=$(printf '%14s' "$(ratio "$v" "$c")"); else row+=$(printf '%14s' -); fi
                done
                printf '%s\n' "$row"
            done
        done
    done
    local printed=0
    for setup in "${setups[@]}"; do
        for label in "${labels[@]}"; do
            [[ -n ${smoke_fail[$setup|$label]-} ]] || continue
            ((printed++)) || printf '\nSkipped:\n'
            printf '  %s under %s: %s\n' "$label" "$setup" "${smoke_fail[$setup|$label]}"
        done
    done
    printed=0
    for key in "${!failure[@]}"; do
        ((printed++)) || printf '\nFailed:\n'
        printf '  %s: %s\n' "${key//|/ }" "${failure[$key]}"
    done
    printf '\nhyperfine JSON and logs: %s\n' "$results"
}

report | tee "$results/summary.txt"
{
    printf 'setup\tvariant\tscenario\truntime\tmedian_s\tstatus\n'
    for key in "${!median[@]}"; do printf '%s\t%s\tok\n' "${key//|/$'\t'}" "${median[$key]}"; done
    for key in "${!failure[@]}"; do printf '%s\t\t%s\n' "${key//|/$'\t'}" "${failure[$key]}"; done
    for key in "${!smoke_fail[@]}"; do printf '%s\t*\t*\t%s\t\tskipped: %s\n' "${key%%|*}" "${key#*|}" "${smoke_fail[$key]}"; done
} | sort >"$results/summary.tsv"
