//! End to end: our monitor boots our guest kernel with the agent and a
//! busybox layer, inside an L1 Linux running under QEMU's TCG with a real
//! (nested, AMD SVM) KVM, and runs container processes there.
//!
//! One L1 boot serves every case: the L1 init script boots one microVM per
//! case through `vessel-agent run --spawn vessel-vmm ...` and prints
//! markers the test parses. Needs qemu-system-x86, the guest kernel (built
//! once by guest/build-kernel.sh), Debian's cloud kernel (downloaded with
//! apt-get), busybox-static and erofs-utils; skips with the reason when
//! something is missing.

mod support;

/// The L1 script: one microVM per case.
const SCRIPT: &str = r#"
printf 'from stdin\n' > /tmp/in
kernel=/vm/vmlinux
monitor_env=
vm() { # NAME "MONITOR OPTIONS" CLIENT OPTIONS... -- COMMAND...
  name=$1; monitor=$2; shift 2
  echo "@@CASE $name"
  t0=$(now)
  timeout -s KILL 120 /bin/vessel-agent run --listen /run/ch.sock \
    --spawn "$monitor_env /bin/vessel-vmm --kernel $kernel --initrd /vm/initrd --disk /vm/layer.img,ro,serial=layer-0 --channel-connect /run/ch.sock $monitor" \
    --layer layer-0 "$@" > /tmp/out 2> /tmp/err < /tmp/in
  echo "@@EXIT $?"
  echo "@@TIME $t0 $(now)"
}
show() { echo @@OUT; cat /tmp/out; echo @@ERR; cat /tmp/err; echo @@END; }

vm echo "" -- echo hi; show
vm exit7 "" -- sh -c 'exit 7'; show
vm big "" -- sh -c 'yes abcdefg | head -c 10485760'
echo "@@SIZE $(wc -c < /tmp/out)"
echo "@@MD5 $(md5sum < /tmp/out | cut -d' ' -f1)"
echo "@@WANT $(yes abcdefg | head -c 10485760 | md5sum | cut -d' ' -f1)"
echo @@ERR; cat /tmp/err; echo @@END
vm process "" --hostname box --env FOO=bar --cwd /tmp --user 1000:1000 -- sh -c 'echo $(hostname) $FOO $(pwd) $(id -u):$(id -g)'; show
vm memory "--mem 128" -- sh -c 'grep MemTotal /proc/meminfo'; show
vm cpus "--cpus 2" -- sh -c 'grep -c ^processor /proc/cpuinfo'; show
vm isolation "" -- sh -c 'uname -r; n=0; for p in /proc/[0-9]*; do readlink $p/exe >/dev/null 2>&1 && n=$((n+1)); done; echo $n; cat /proc/[0-9]*/comm | grep -c vessel-vmm; test -e /vm/vmlinux && echo leak-l1-files; test -e /modules && echo leak-l1-modules; echo done'; show
vm tty "" -t -- sh -c 'test -t 0 && test -t 1 && echo on-a-tty'; show
vm stdin "" -i -- cat; show
vm writable "" -- sh -c 'echo data > /newfile && cat /newfile && touch /bin/busybox && echo ok'; show
vm scratch "--disk /vm/scratch.img,serial=scratch" --scratch disk:scratch -- sh -c 'echo on-disk > /f && cat /f'; show
kernel=/vm/bzImage
vm bzimage "" -- echo from-bzimage; show
kernel=/vm/vmlinux
vm nopvh "--no-pvh" -- echo from-64-bit-entry; show
monitor_env=VESSEL_LOG=trace
vm logging "" -- echo logged; show
monitor_env=
vm nomonitor "--seccomp bogus" -- true; show
vm badmonitor "--disk /vm/missing.img" -- true; show
vm panic "" -- sh -c 'echo c > /proc/sysrq-trigger; sleep 100'; show
vm afterpanic "" -- echo still-fine; show
"#;

#[test]
fn microvm_runs_containers_in_nested_kvm() {
    let Some(fx) = support::fixtures_or_skip() else {
        return;
    };
    let run = support::run_l1(&fx, "microvm-e2e", SCRIPT, &Vec::new());
    let case = |n: &str| run.case(n);

    let c = case("echo");
    assert_eq!((c.exit, c.out.as_str()), (Some(0), "hi\n"), "{c:?}");

    let c = case("exit7");
    assert_eq!(c.exit, Some(7), "{c:?}");

    let c = case("big");
    assert_eq!(c.exit, Some(0), "{c:?}");
    assert_eq!(
        c.values.get("SIZE").map(String::as_str),
        Some("10485760"),
        "{c:?}"
    );
    assert_eq!(c.values.get("MD5"), c.values.get("WANT"), "{c:?}");

    let c = case("process");
    assert_eq!(
        (c.exit, c.out.as_str()),
        (Some(0), "box bar /tmp 1000:1000\n"),
        "{c:?}"
    );

    let c = case("memory");
    assert_eq!(c.exit, Some(0), "{c:?}");
    let kb: u64 = c
        .out
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{c:?}"));
    assert!(
        kb <= 128 * 1024 && kb > 96 * 1024,
        "MemTotal {kb} kB for a 128 MiB VM"
    );

    let c = case("cpus");
    assert_eq!((c.exit, c.out.as_str()), (Some(0), "2\n"), "{c:?}");

    let c = case("isolation");
    assert_eq!(c.exit, Some(0), "{c:?}");
    let lines: Vec<&str> = c.out.lines().collect();
    assert!(
        lines[0].ends_with("-vessel"),
        "guest runs its own kernel: {c:?}"
    );
    // User processes: the agent, sh, ls, wc (kernel threads have no exe).
    let procs: u32 = lines[1].parse().unwrap_or(u32::MAX);
    assert!(procs < 8, "the guest sees only its own processes: {c:?}");
    assert_eq!(lines[2], "0", "no monitor process visible: {c:?}");
    assert_eq!(lines[3..], ["done"], "no L1 files visible: {c:?}");

    let c = case("tty");
    assert_eq!((c.exit, c.out.as_str()), (Some(0), "on-a-tty\n"), "{c:?}");

    let c = case("stdin");
    assert_eq!((c.exit, c.out.as_str()), (Some(0), "from stdin\n"), "{c:?}");

    let c = case("writable");
    assert_eq!((c.exit, c.out.as_str()), (Some(0), "data\nok\n"), "{c:?}");

    let c = case("scratch");
    // The agent found the disk by serial and mounted it as the upper layer.
    assert_eq!((c.exit, c.out.as_str()), (Some(0), "on-disk\n"), "{c:?}");

    let c = case("bzimage");
    assert_eq!(
        (c.exit, c.out.as_str()),
        (Some(0), "from-bzimage\n"),
        "{c:?}"
    );

    let c = case("nopvh");
    assert_eq!(
        (c.exit, c.out.as_str()),
        (Some(0), "from-64-bit-entry\n"),
        "{c:?}"
    );

    // Debug logging from the monitor's filtered threads stays within
    // their seccomp allowlists.
    let c = case("logging");
    assert_eq!((c.exit, c.out.as_str()), (Some(0), "logged\n"), "{c:?}");
    assert!(c.err.contains("vm started"), "{c:?}");

    // A monitor that fails before or after connecting is an error, not a
    // hang, and its own message comes through.
    let c = case("nomonitor");
    assert_eq!(c.exit, Some(125), "{c:?}");
    assert!(
        c.err.contains("did not connect") && c.err.contains("--seccomp"),
        "{c:?}"
    );
    let c = case("badmonitor");
    assert_eq!(c.exit, Some(125), "{c:?}");
    assert!(
        c.err.contains("/vm/missing.img") && c.err.contains("monitor exited"),
        "{c:?}"
    );

    let c = case("panic");
    assert_eq!(
        c.exit,
        Some(125),
        "a guest panic is an error, not an exit status: {c:?}"
    );
    assert!(c.err.contains("panic"), "{c:?}");

    let c = case("afterpanic");
    assert_eq!((c.exit, c.out.as_str()), (Some(0), "still-fine\n"), "{c:?}");
}

#[test]
fn console_markers_parse() {
    let out = "noise\n@@CASE a\n@@EXIT 3\n@@TIME 1.5 2.0\n@@OUT\nx\n@@ERR\ny\n@@END\n@@SIZE 5\n@@CASE b\n@@EXIT 0\n";
    let c = support::parse(out);
    assert_eq!(c["a"].exit, Some(3));
    assert_eq!((c["a"].out.as_str(), c["a"].err.as_str()), ("x\n", "y\n"));
    assert_eq!(c["a"].values["SIZE"], "5");
    assert_eq!(c["a"].seconds, Some(0.5));
    assert_eq!(c["b"].exit, Some(0));
}
