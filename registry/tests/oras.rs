//! The `oras` Python client (PyPI) against vessel-registry: true chunked
//! uploads (PATCH with Content-Range), pulls, and tag listing that follows
//! `Link` pagination.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{Http, TestRegistry, random_bytes, run};
use vessel_testkit::{TempRoot, require};

const SCRIPT: &str = r#"
import hashlib, os, sys
import oras.client
host, work = sys.argv[1], sys.argv[2]
os.chdir(work)
c = oras.client.OrasClient(hostname=host, insecure=True)
files = ["big.bin", "small.txt"]
# 64 KiB chunks: the 1 MiB file goes up in 16 PATCH requests.
c.push(files=files, target=f"{host}/oras/art:v1", do_chunked=True, chunk_size=65536)
for i in range(7):
    c.push(files=["small.txt"], target=f"{host}/oras/art:t{i}", do_chunked=True, chunk_size=4)
out = os.path.join(work, "out")
got = c.pull(target=f"{host}/oras/art:v1", outdir=out)
for f in files:
    a = open(f, "rb").read()
    b = open(os.path.join(out, f), "rb").read()
    assert a == b, f"{f} differs after pull"
# The server pages by 3: the client must follow Link headers to see all 8.
tags = c.get_tags(f"{host}/oras/art", N=None)
print("TAGS", ",".join(tags))
limited = c.get_tags(f"{host}/oras/art", N=5)
print("LIMITED", ",".join(limited))
"#;

fn have_oras() -> bool {
    Command::new("python3")
        .args(["-c", "import oras.client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_chunked_push_pull_and_paginated_tags() {
    require!(
        have_oras(),
        "the oras Python package is not installed (pip install oras)"
    );
    // Pages of at most 3 tags: listing all 8 needs three requests.
    let reg = TestRegistry::start_with(|c| c.server.max_page_size = 3).await;
    let tmp = TempRoot::new("oras");
    std::fs::write(tmp.join("big.bin"), random_bytes(1 << 20, 40)).unwrap();
    std::fs::write(tmp.join("small.txt"), b"hello from oras\n").unwrap();
    std::fs::write(tmp.join("t.py"), SCRIPT).unwrap();
    let out = run(Command::new("python3")
        .arg(tmp.join("t.py"))
        .arg(reg.host())
        .arg(tmp.path()));
    let tags_line = out
        .lines()
        .find(|l| l.starts_with("TAGS "))
        .expect("script prints tags");
    assert_eq!(tags_line, "TAGS t0,t1,t2,t3,t4,t5,t6,v1");
    let limited = out.lines().find(|l| l.starts_with("LIMITED ")).unwrap();
    assert_eq!(limited, "LIMITED t0,t1,t2,t3,t4");

    // The chunked uploads really were chunked: many PATCH requests.
    let http = Http::new(&reg.url());
    let m = String::from_utf8_lossy(&http.get("/metrics").await.body).into_owned();
    let patches: u64 = m
        .lines()
        .filter(|l| l.starts_with("vessel_registry_http_requests_total{method=\"PATCH\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        patches >= 16,
        "expected chunked PATCH uploads, saw {patches}\n{m}"
    );
    reg.stop().await;
}
