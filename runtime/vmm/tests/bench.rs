//! Benchmark (ignored by default; `bench/microvm/run.sh` runs it): inside
//! one L1 guest with nested KVM, our monitor against QEMU's `microvm`
//! machine with the same kernel, initramfs, agent and layer image.
//!
//! - boot-to-init: monitor start until the guest's init writes the debug
//!   exit port (`VESSEL_BOOTMARK=1` on the command line; QEMU gets an
//!   `isa-debug-exit` device at the same port); for our monitor also with
//!   our kernel as a bzImage and with Debian's cloud kernel;
//! - boot-to-exit: `vessel-agent run ... -- true`, the whole container
//!   round trip from starting the monitor to its exit; and the same
//!   through the runtime (`vessel-runtime run` of a bundle asking for a
//!   VM: spec, layer cache, monitor in-process, agent client);
//! - memory: RSS and PSS of the monitor process while a container sleeps,
//!   minus the guest RAM mapping.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MEM_MIB: u32 = 256;

fn script(rounds: u32) -> String {
    format!(
        r#"
ours="/bin/vessel-vmm --kernel /vm/vmlinux --initrd /vm/initrd --mem {MEM_MIB}"
qemu="/usr/bin/qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,isa-serial=off -enable-kvm -cpu host -m {MEM_MIB} -smp 1 -nodefaults -no-user-config -display none -no-reboot -kernel /vm/vmlinux -initrd /vm/initrd"
qdisk="-drive id=l0,file=/vm/layer.img,format=raw,if=none,readonly=on -device virtio-blk-device,drive=l0,serial=layer-0"
timed() {{ # NAME ROUND MAX-EXIT-CODE COMMAND...
  name=$1; round=$2; max=$3; shift 3
  t0=$(now); timeout -s KILL 120 "$@" > /tmp/out 2> /tmp/err; rc=$?; t1=$(now)
  # A failed run is no measurement: it is reported and left out.
  if [ $rc -le $max ]; then
    echo "@@R $name $round $(awk "BEGIN {{print $t1 - $t0}}") $rc"
  else
    echo "@@FAIL $name exit $rc: $(head -c 300 /tmp/err | tr '\n' ' ')"
  fi
}}
mem() {{ # NAME PROCESS COMMAND...
  name=$1; proc=$2; shift 2
  "$@" > /tmp/mout 2> /tmp/merr &
  bg=$!
  sleep 3
  pid=$(pidof $proc)
  awk '/^Size:/ {{size=$2}} /^Rss:/ {{rss=$2}} /^Pss:/ {{pss=$2; if (size >= {mem_kb}) {{grss+=rss; gpss+=pss}} trss+=rss; tpss+=pss}} END {{print "@@MEM", "'$name'", trss, tpss, grss, gpss}}' /proc/$pid/smaps
  wait $bg
}}
# A container bundle that asks for a VM (the layer image cached under a
# made-up key), for the runtime's own path: `vessel-runtime run`.
mkdir -p /vm/cache /b/rt/rootfs /run/vr
cp /vm/layer.img /vm/cache/sha256-{key}.erofs
cat > /b/rt/config.json <<EOF
{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"process":{{"cwd":"/","args":["true"],"env":["PATH=/bin"],"user":{{"uid":0,"gid":0}}}},"linux":{{"resources":{{"memory":{{"limit":{mem_bytes}}}}}}},
 "annotations":{{"io.vessel.sandbox":"vm","io.vessel.vm.kernel":"/vm/vmlinux","io.vessel.vm.initrd":"/vm/initrd","io.vessel.vm.layer-cache":"/vm/cache",
   "io.vessel.vm.layers":"[{{\\"key\\":\\"sha256:{key}\\",\\"dir\\":\\"/nonexistent\\"}}]"}}}}
EOF
i=0
while [ $i -lt {rounds} ]; do
  i=$((i+1))
  timed run-runtime $i 0 /bin/vessel-runtime --root /run/vr run --bundle /b/rt rt$i
  timed init-ours $i 1 $ours --debug-exit --append "reboot=k panic=-1 quiet VESSEL_BOOTMARK=1"
  timed init-qemu $i 1 $qemu -device isa-debug-exit,iobase=0xf4,iosize=0x04 -append "reboot=t panic=-1 quiet VESSEL_BOOTMARK=1"
  timed init-ours-bzimage $i 1 /bin/vessel-vmm --kernel /vm/bzImage --initrd /vm/initrd --mem {MEM_MIB} --debug-exit --append "reboot=k panic=-1 quiet VESSEL_BOOTMARK=1"
  timed init-ours-debian-cloud $i 1 /bin/vessel-vmm --kernel /vm/cloud-vmlinuz --initrd /vm/initrd --mem {MEM_MIB} --debug-exit --append "reboot=k panic=-1 quiet VESSEL_BOOTMARK=1"
  timed run-ours $i 0 /bin/vessel-agent run --listen /run/o.sock --spawn "$ours --disk /vm/layer.img,ro,serial=layer-0 --channel-connect /run/o.sock" --layer layer-0 -- true
  timed run-qemu $i 0 /bin/vessel-agent run --listen /run/q.sock --spawn "$qemu -append 'reboot=t panic=-1 quiet' $qdisk -device virtio-serial-device -chardev socket,id=ch,path=/run/q.sock -device virtserialport,chardev=ch,name=vessel.agent" --layer layer-0 -- true
done
mem ours vessel-vmm /bin/vessel-agent run --listen /run/o.sock --spawn "$ours --disk /vm/layer.img,ro,serial=layer-0 --channel-connect /run/o.sock" --layer layer-0 -- sleep 6
mem qemu qemu-system-x86_64 /bin/vessel-agent run --listen /run/q.sock --spawn "$qemu -append 'reboot=t panic=-1 quiet' $qdisk -device virtio-serial-device -chardev socket,id=ch,path=/run/q.sock -device virtserialport,chardev=ch,name=vessel.agent" --layer layer-0 -- sleep 6
"#,
        mem_kb = MEM_MIB * 1024,
        mem_bytes = u64::from(MEM_MIB) << 20,
        key = "00000000000000000000000000000000000000000000000000000000000000b1",
    )
}

/// QEMU, its shared libraries and the microvm firmware, for the L1 initramfs.
fn qemu_files() -> Result<support::Extra, String> {
    let qemu = PathBuf::from("/usr/bin/qemu-system-x86_64");
    let mut files = vec![(qemu.to_string_lossy().into_owned(), qemu.clone())];
    let (cloud, _) = support::l1_kernel()?;
    files.push(("vm/cloud-vmlinuz".to_string(), cloud));
    let ldd = Command::new("ldd")
        .arg(&qemu)
        .output()
        .map_err(|e| e.to_string())?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            let real = std::fs::canonicalize(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            files.push((p.to_string_lossy().into_owned(), real));
        }
    }
    for fw in ["bios-microvm.bin", "qboot.rom"] {
        let p = Path::new("/usr/share/qemu").join(fw);
        if p.exists() {
            files.push((p.to_string_lossy().into_owned(), p));
        }
    }
    Ok(files)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

#[test]
#[ignore = "benchmark: run bench/microvm/run.sh"]
fn microvm_against_qemu_microvm() {
    let fx = support::fixtures().expect("fixtures");
    let extra = qemu_files().expect("qemu files");
    let rounds: u32 = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tmp = vessel_testkit::TempRoot::new("microvm-bench");
    let initrd = tmp.join("l1.cpio");
    support::l1_initramfs(&fx, &script(rounds), &extra, &initrd).expect("L1 initramfs");
    let console = support::boot_l1(&fx, &initrd, Duration::from_secs(3600)).expect("L1 boot");
    let mut times: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in console.lines() {
        if let Some(r) = line.strip_prefix("@@R ") {
            let f: Vec<&str> = r.split_whitespace().collect();
            if let [name, _round, secs, _rc] = f[..] {
                times
                    .entry(name.to_string())
                    .or_default()
                    .push(secs.parse().unwrap_or(f64::NAN));
            }
        }
        if line.starts_with("@@FAIL") || line.starts_with("@@MEM") {
            println!("{line}");
        }
    }
    println!(
        "\nmedians over {rounds} rounds (seconds, L2 inside a TCG L1: compare ratios, not absolutes)"
    );
    let mut med = BTreeMap::new();
    for (name, v) in &mut times {
        let m = median(v);
        println!("{name:24} median {m:.2}  all {v:?}");
        med.insert(name.clone(), m);
    }
    for what in ["init", "run"] {
        if let (Some(o), Some(q)) = (
            med.get(&format!("{what}-ours")),
            med.get(&format!("{what}-qemu")),
        ) {
            println!("{what}: ours/qemu = {:.2}", o / q);
        }
    }
    assert!(console.contains("@@DONE"), "{console}");
    assert!(
        !console.contains("@@FAIL"),
        "some runs failed (see the @@FAIL lines above)"
    );
}
