//! Crash safety: a child process loads and imports images in a loop and is
//! killed with SIGKILL at a random moment, 20 times. After each kill the
//! store must open, `verify` must report it consistent, no temporary files
//! may survive the open, and every listed image must be complete.

#![allow(clippy::unwrap_used, clippy::many_single_char_names)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::{E, Img, docker_archive, tar_of};
use vessel_testkit::TempRoot;
use vesseld::images::{ImageStore, ImportOptions};

const STORE_ENV: &str = "VESSEL_CRASH_STORE";
const SEED_ENV: &str = "VESSEL_CRASH_SEED";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            // Half random, half runs, so gzip has real work to do.
            let x = self.next();
            if x % 2 == 0 {
                v.extend_from_slice(&x.to_le_bytes());
            } else {
                v.extend(std::iter::repeat_n((x >> 8) as u8, 64));
            }
        }
        v.truncate(n);
        v
    }
}

/// The child: loads, imports and removes images until it is killed.
#[test]
#[ignore = "run by crash_during_load_and_import_leaves_a_consistent_store"]
fn crash_child() {
    let Ok(root) = std::env::var(STORE_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    let store = ImageStore::open(std::path::Path::new(&root)).unwrap();
    let mut rng = Rng(seed | 1);
    let busybox = std::fs::read(common::busybox_archive()).unwrap();
    // Straight to the file descriptor: the test harness captures println!.
    let mut out = std::io::stdout();
    out.write_all(b"ready\n").unwrap();
    out.flush().unwrap();

    for round in 0u64.. {
        store
            .load_archive(&busybox[..], &mut common::no_progress())
            .unwrap();
        let layers: Vec<Vec<u8>> = (0..3)
            .map(|i| {
                tar_of(&[
                    E::dir("data"),
                    E::file(&format!("data/{seed}-{round}-{i}"), &rng.bytes(1 << 20)),
                ])
            })
            .collect();
        let archive = docker_archive(&[Img::new(&format!("crash/app:{round}"), &layers, true)]);
        store
            .load_archive(&archive[..], &mut common::no_progress())
            .unwrap();
        let rootfs = common::gzip(&tar_of(&[E::file("payload", &rng.bytes(2 << 20))]));
        store
            .import(
                &rootfs[..],
                &ImportOptions {
                    reference: Some(format!("crash/imported:{round}")),
                    ..ImportOptions::default()
                },
            )
            .unwrap();
        if round % 2 == 1 {
            store
                .remove(&format!("crash/app:{}", round - 1), true)
                .unwrap();
        }
    }
}

#[test]
fn crash_during_load_and_import_leaves_a_consistent_store() {
    let t = TempRoot::new("crash");
    let root = t.join("store");
    common::busybox_archive();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1);
    let mut seen_images = 0;
    for i in 0..20u64 {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STORE_ENV, &root)
            .env(SEED_ENV, (rng.next() % 1_000_000 + i).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the child has the store open, then let it work for a
        // random while: the kill lands at a random point of its loop.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).unwrap() > 0,
                "child exited before it was ready"
            );
            // libtest prints "test crash_child ... " without a newline first.
            if line.trim_end().ends_with("ready") {
                break;
            }
        }
        let delay = std::time::Duration::from_millis(rng.next() % 1500);
        std::thread::sleep(delay); // fault injection point, not synchronisation
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {i}: the child must have been killed"
        );

        let store = ImageStore::open(&root).unwrap();
        let report = store.verify().unwrap();
        assert!(
            report.is_consistent(),
            "round {i} (killed after {delay:?}): {:?}",
            report.damage
        );
        assert!(
            report.leases.is_empty(),
            "round {i}: leases survived open: {:?}",
            report.leases
        );
        for dir in ["content/ingest", "snapshots"] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                assert!(
                    !name.starts_with("tmp-")
                        && !name.starts_with(".tmp-")
                        && !name.starts_with(".del-"),
                    "round {i}: {dir}/{name} survived open"
                );
            }
        }
        for img in store.list().unwrap() {
            let d = store.inspect(&img.id.to_string()).unwrap();
            for s in &d.snapshot_dirs {
                assert!(
                    s.is_dir(),
                    "round {i}: image {} lists a missing snapshot",
                    img.id
                );
            }
            store.history(&img.id.to_string()).unwrap();
        }
        seen_images += store.list().unwrap().len();
    }
    assert!(
        seen_images > 0,
        "no kill landed after a completed load; the test exercised nothing"
    );
}
