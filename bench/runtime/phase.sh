#!/usr/bin/env bash
# Helper steps for bench/runtime/run.sh; hyperfine calls these as --prepare,
# --cleanup and (for the parallel case) as the timed command itself.
#
#   phase.sh prep-create  RUNTIME ROOT BUNDLE ID   remove ID if it exists
#   phase.sh prep-start   RUNTIME ROOT BUNDLE ID   remove ID, then create it
#   phase.sh prep-delete  RUNTIME ROOT BUNDLE ID   remove ID, create, start, wait until stopped
#   phase.sh remove       RUNTIME ROOT ID          delete --force ID, ignoring "does not exist"
#   phase.sh wait-stopped RUNTIME ROOT ID          poll `state` until the status is "stopped"
#   phase.sh parallel     RUNTIME ROOT BUNDLE PREFIX COUNT
#                                                  COUNT concurrent `run`s; fails if any fails
#
# Every step exits non-zero with a message on stderr when the runtime fails,
# so that hyperfine stops instead of timing a broken runtime. hyperfine
# discards that output; if PHASE_ERRORS names a file, the message is also
# appended there (and the parallel runs keep their stderr in PHASE_ERRORS.N).
set -euo pipefail

step=${1:?usage: phase.sh STEP ARGS...}
shift

fail() {
    echo "phase: $*" >&2
    [[ -z ${PHASE_ERRORS-} ]] || echo "$*" >>"$PHASE_ERRORS"
    return 1
}

# The last line of a runtime's stderr that is not a warning.
last_error() { grep -v -e '^\s*$' -e 'level=warn' -e '^WARN' "$1" 2>/dev/null | tail -n1; }

# Runs a runtime command; on failure records its stderr. The stderr goes to a
# file, never to a pipe: the container process of `create` inherits it and
# keeps it open until it runs, so reading a pipe to its end would hang.
must() {
    local err=/dev/null
    [[ -z ${PHASE_ERRORS-} ]] || err=$PHASE_ERRORS.cmd
    if ! "$@" >/dev/null 2>"$err"; then
        fail "$(basename "$1") ${*:4}: $(last_error "$err")"
    fi
}

remove() {
    local rt=$1 root=$2 id=$3
    # A missing container is the normal case; any other failure is reported by
    # the next step (create would fail on the existing ID).
    "$rt" --root "$root" delete --force "$id" >/dev/null 2>&1 || true
}

wait_stopped() {
    local rt=$1 root=$2 id=$3 state i
    # /bin/true exits within a few milliseconds of `start`; poll every
    # millisecond for up to ten seconds.
    for ((i = 0; i < 10000; i++)); do
        if ! state=$("$rt" --root "$root" state "$id" 2>&1); then
            fail "$id: state failed: $state"
            return 1
        fi
        [[ $(jq -r .status <<<"$state") != stopped ]] || return 0
        sleep 0.001
    done
    fail "$id: not stopped after 10 s"
}

case $step in
    prep-create)
        remove "$1" "$2" "$4"
        ;;
    prep-start)
        remove "$1" "$2" "$4"
        must "$1" --root "$2" create --bundle "$3" "$4"
        ;;
    prep-delete)
        remove "$1" "$2" "$4"
        must "$1" --root "$2" create --bundle "$3" "$4"
        must "$1" --root "$2" start "$4"
        wait_stopped "$1" "$2" "$4"
        ;;
    remove)
        remove "$1" "$2" "$3"
        ;;
    wait-stopped)
        wait_stopped "$1" "$2" "$3"
        ;;
    parallel)
        rt=$1 root=$2 bundle=$3 prefix=$4 count=$5
        errs=${PHASE_ERRORS:-/dev/null}
        pids=()
        for ((i = 0; i < count; i++)); do
            if [[ $errs == /dev/null ]]; then
                "$rt" --root "$root" run --bundle "$bundle" "$prefix-$$-$i" </dev/null 2>/dev/null &
            else
                "$rt" --root "$root" run --bundle "$bundle" "$prefix-$$-$i" </dev/null 2>"$errs.$i" &
            fi
            pids+=($!)
        done
        failed=0 first=
        for i in "${!pids[@]}"; do
            if ! wait "${pids[$i]}"; then
                failed=$((failed + 1))
                [[ -n $first || $errs == /dev/null ]] || first=$(last_error "$errs.$i")
            fi
        done
        if ((failed > 0)); then
            fail "$failed of $count parallel runs failed${first:+, the first with: $first}"
        fi
        ;;
    *)
        echo "phase: unknown step $step" >&2
        exit 2
        ;;
esac
