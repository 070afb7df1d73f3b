//! End to end: containers in microVMs through the runtime's own paths,
//! inside an L1 Linux under QEMU's TCG with a real (nested, AMD SVM) KVM.
//!
//! The L1 script writes OCI bundles that ask for a VM
//! (`io.vessel.sandbox=vm`, the image's layer as a cached image), runs
//! `vessel-shim` for each container the way the daemon does, and drives it
//! with `vessel-shim ctl` (start, wait, exec, kill) over the shim's socket;
//! it also runs bundles in the foreground with `vessel-runtime run`. One L1
//! boot serves every case. The fixtures (guest kernel, L1 kernel, static
//! binaries, layer image) are the monitor's nested-test fixtures; the test
//! skips with the reason when something is missing.

#[path = "../vmm/tests/support/mod.rs"]
mod support;

/// A made-up layer key: the L1 script places the busybox layer image in
/// the cache under it, as the daemon's first run would.
const KEY_HEX: &str = "00000000000000000000000000000000000000000000000000000000000000b1";

/// A container's output as recorded in its json-file log.
fn json_log(c: &support::Case) -> String {
    c.out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["log"].as_str().map(str::to_string))
        .collect()
}

const SCRIPT: &str = r#"
mkdir -p /vm/cache /s /b /run/vr
# A process that a signal kills is named in the kernel log.
echo 1 > /proc/sys/kernel/print-fatal-signals
# If the cases are still running after 150 s, something hangs: show
# every task's stack and every process (seen with VESSEL_L1_CONSOLE=1).
( sleep 150; echo "@@HUNG"; ps; echo 1 > /proc/sys/kernel/sysrq; echo t > /proc/sysrq-trigger; echo w > /proc/sysrq-trigger ) &
cp /vm/layer.img /vm/cache/sha256-@KEY@.erofs
layers='[{\"key\":\"sha256:@KEY@\",\"dir\":\"/nonexistent\"}]'
# bundle NAME TERMINAL ARGS-JSON RESOURCES-JSON
bundle() {
  mkdir -p /b/$1/rootfs
  cat > /b/$1/config.json <<EOF
{"ociVersion":"1.0.2","root":{"path":"rootfs"},"hostname":"vmbox",
 "process":{"terminal":$2,"cwd":"/","args":$3,"env":["PATH=/bin:/usr/bin:/sbin:/usr/sbin"],"user":{"uid":0,"gid":0}},
 "linux":{"resources":$4,"namespaces":[{"type":"pid"},{"type":"mount"},{"type":"uts"},{"type":"ipc"}]},
 "annotations":{"io.vessel.sandbox":"vm","io.vessel.vm.kernel":"/vm/vmlinux","io.vessel.vm.initrd":"/vm/initrd",
   "io.vessel.vm.layer-cache":"/vm/cache","io.vessel.vm.layers":"$layers"}}
EOF
}
# container NAME TERMINAL ARGS-JSON [RESOURCES-JSON]: bundle, shim, start
container() {
  res=$4; [ -n "$res" ] || res='{}'
  bundle $1 $2 "$3" "$res"
  mkdir -p /s/$1
  cat > /s/$1/shim.json <<EOF
{"id":"$1","bundle":"/b/$1","runtime_root":"/run/vr","state_dir":"/s/$1","tty":$2,"open_stdin":false,"stdin_once":false,
 "log":{"path":"/s/$1/log.json","max_size":0,"max_files":1}}
EOF
  timeout -s KILL 120 vessel-shim /s/$1 > /s/$1/launched 2> /s/$1/launch.err || echo "@@LAUNCH $1 failed: $?"
  timeout -s KILL 120 vessel-shim ctl /s/$1 start > /dev/null 2>> /s/$1/launch.err || echo "@@START $1 failed: $?"
}
# finish NAME: wait for the container, show its log
finish() {
  echo "@@EXIT $(timeout -s KILL 120 vessel-shim ctl /s/$1 wait 2> /tmp/err)"
  echo "@@TIME $t0 $(now)"
  echo @@OUT; cat /s/$1/log.json; echo @@ERR; cat /tmp/err /s/$1/launch.err /s/$1/shim.log; echo @@END
}
# ex NAME CASE ARGS...: exec into container NAME
ex() {
  c=$1; echo "@@CASE $2"; shift 2; t0=$(now)
  timeout -s KILL 120 vessel-shim ctl /s/$c exec "$@" > /tmp/out 2> /tmp/err
  echo "@@EXIT $?"; echo "@@TIME $t0 $(now)"
}
show() { echo @@OUT; cat /tmp/out; echo @@ERR; cat /tmp/err; echo @@END; }

echo "@@CASE echo"; t0=$(now); container echo false '["echo","hi"]'; finish echo
echo "@@CASE exit7"; t0=$(now); container exit7 false '["sh","-c","exit 7"]'; finish exit7
echo "@@CASE memory"; t0=$(now)
container memory false '["sh","-c","grep MemTotal /proc/meminfo; grep -c ^processor /proc/cpuinfo"]' '{"memory":{"limit":134217728},"cpu":{"quota":200000,"period":100000}}'
finish memory
echo "@@CASE tty"; t0=$(now); container tty true '["sh","-c","test -t 0 && test -t 1 && echo on-a-tty"]'; finish tty

# Two long-running containers side by side.
t0=$(now)
container a false '["sh","-c","echo secret > /secret-a; echo up; trap \"echo got-term; exit 3\" TERM; while true; do sleep 1; done"]'
container b false '["sh","-c","while true; do sleep 1; done"]'
echo "@@CASE twostarted"; echo "@@TIME $t0 $(now)"
ex a exec -- sh -c 'cat /secret-a; hostname; exit 4'; show
ex a big -- sh -c 'yes abcdefg | head -c 10485760'
echo "@@SIZE $(wc -c < /tmp/out)"
echo "@@MD5 $(md5sum < /tmp/out | cut -d' ' -f1)"
echo "@@WANT $(yes abcdefg | head -c 10485760 | md5sum | cut -d' ' -f1)"
echo @@ERR; cat /tmp/err; echo @@END
ex a exectty -t -- sh -c 'test -t 0 && test -t 1 && echo exec-on-a-tty'; show
ex a execmissing -- /no/such/program; show
ex b isolation -- sh -c 'test -e /secret-a && echo leak-other-container; n=0; for p in /proc/[0-9]*; do readlink $p/exe >/dev/null 2>&1 && n=$((n+1)); done; echo $n; grep -c "/vm\|/s/\|/b/" /proc/mounts; test -e /vm/vmlinux && echo leak-l1-files; cat /proc/[0-9]*/comm | grep -c vessel; echo done'; show

echo "@@CASE panic"; t0=$(now); container panic false '["sh","-c","echo c > /proc/sysrq-trigger; sleep 100"]'; finish panic
ex a afterpanic -- echo alive; show

for p in /proc/[0-9]*; do [ "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" = "vessel-shim /s/a " ] && echo "@@SIG ${p#/proc/} $(grep -h '^Sig' $p/status | tr '\n' ' ')"; done
echo "@@CASE stop"; t0=$(now); vessel-shim ctl /s/a kill TERM; finish a
echo "@@DMESG"; dmesg | grep -i -e 'fatal signal' -e segfault -e 'audit' -e 'trap' -e 'vessel' | tail -n 20; echo "@@DMESGEND"
echo "@@CASE kill"; t0=$(now); vessel-shim ctl /s/b kill KILL; finish b
echo "@@SHIMS $(cat /proc/[0-9]*/comm | grep -c vessel-shim)"

bundle rt false '["sh","-c","echo from-runtime; exit 5"]' '{}'
echo "@@CASE runtime"; t0=$(now)
timeout -s KILL 60 vessel-runtime --root /run/vr run --bundle /b/rt rt > /tmp/out 2> /tmp/err < /dev/null
echo "@@EXIT $?"; echo "@@TIME $t0 $(now)"; show
# Standard input left open (the console): the run still ends with the
# process.
bundle rt2 false '["sh","-c","echo from-runtime; exit 5"]' '{}'
echo "@@CASE runtime2"; t0=$(now)
timeout -s KILL 60 vessel-runtime --root /run/vr run --bundle /b/rt2 rt2 > /tmp/out 2> /tmp/err
echo "@@EXIT $?"; echo "@@TIME $t0 $(now)"; show
"#;

#[test]
fn containers_run_in_microvms_through_the_shim_and_the_runtime() {
    let Some(fx) = support::fixtures_or_skip() else {
        return;
    };
    let script = SCRIPT.replace("@KEY@", KEY_HEX);
    let run = support::run_l1(&fx, "microvm-runtime", &script, &Vec::new());
    // The shim's signal dispositions before the stop and the kernel's
    // word on any process killed by a signal, for the record.
    let mut in_dmesg = false;
    for l in run.console.lines() {
        in_dmesg = (in_dmesg || l.starts_with("@@DMESG")) && !l.starts_with("@@DMESGEND");
        if in_dmesg || l.starts_with("@@SIG") {
            eprintln!("{l}");
        }
    }
    let case = |n: &str| run.case(n);

    let c = case("echo");
    assert_eq!((c.exit, json_log(c).as_str()), (Some(0), "hi\n"), "{c:?}");

    let c = case("exit7");
    assert_eq!(c.exit, Some(7), "{c:?}");

    // --memory 128m and --cpus 2 as the spec's resources size the VM.
    let c = case("memory");
    assert_eq!(c.exit, Some(0), "{c:?}");
    let log = json_log(c);
    let kb: u64 = log
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{c:?}"));
    assert!(
        kb <= 128 * 1024 && kb > 96 * 1024,
        "MemTotal {kb} kB for a 128 MiB VM: {c:?}"
    );
    assert_eq!(log.lines().nth(1), Some("2"), "{c:?}");

    let c = case("tty");
    assert_eq!(c.exit, Some(0), "{c:?}");
    assert!(json_log(c).contains("on-a-tty"), "{c:?}");

    let c = case("exec");
    assert_eq!(
        (c.exit, c.out.as_str()),
        (Some(4), "secret\nvmbox\n"),
        "{c:?}"
    );

    let c = case("big");
    assert_eq!(c.exit, Some(0), "{c:?}");
    assert_eq!(
        c.values.get("SIZE").map(String::as_str),
        Some("10485760"),
        "{c:?}"
    );
    assert_eq!(c.values.get("MD5"), c.values.get("WANT"), "{c:?}");

    let c = case("exectty");
    assert_eq!(c.exit, Some(0), "{c:?}");
    assert!(c.out.contains("exec-on-a-tty"), "{c:?}");

    let c = case("execmissing");
    assert_eq!(c.exit, Some(125), "{c:?}");
    assert!(c.err.contains("/no/such/program"), "{c:?}");

    let c = case("isolation");
    assert_eq!(c.exit, Some(0), "{c:?}");
    let lines: Vec<&str> = c.out.lines().collect();
    assert!(
        !c.out.contains("leak-"),
        "no other container's or L1's files: {c:?}"
    );
    let procs: u32 = lines[0].parse().unwrap_or(u32::MAX);
    assert!(procs < 10, "the guest sees only its own processes: {c:?}");
    assert_eq!(lines[1], "0", "no L1 mounts visible: {c:?}");
    assert_eq!(
        lines[2..],
        ["0", "done"],
        "no shim or monitor visible: {c:?}"
    );

    // A guest panic ends that container with an error, not an exit code
    // of its own; the other container keeps running.
    let c = case("panic");
    assert_eq!(c.exit, Some(255), "{c:?}");
    assert!(c.err.contains("panic"), "{c:?}");
    let c = case("afterpanic");
    assert_eq!((c.exit, c.out.as_str()), (Some(0), "alive\n"), "{c:?}");

    // Stop: the stop signal reaches the process, which exits its own way.
    let c = case("stop");
    assert_eq!(c.exit, Some(3), "{c:?}");
    assert_eq!(json_log(c), "up\ngot-term\n", "{c:?}");
    // Kill (the end of a stop timeout): the VM goes, 128 + SIGKILL.
    let c = case("kill");
    assert_eq!(c.exit, Some(137), "{c:?}");
    let shims = run
        .cases
        .values()
        .find_map(|c| c.values.get("SHIMS"))
        .expect("shim count");
    assert_eq!(shims, "0", "every shim exited with its container");

    for name in ["runtime", "runtime2"] {
        let c = case(name);
        assert_eq!(
            (c.exit, c.out.as_str()),
            (Some(5), "from-runtime\n"),
            "{c:?}"
        );
    }
}
