//! Load an image archive into an image store and print the time taken:
//! a thin command-line wrapper over `ImageStore::load_archive`, used by
//! bench/images/run.sh.
//!
//!     image-load --root DIR ARCHIVE.tar

use std::time::Instant;

use anyhow::Context as _;
use vesseld::images::ImageStore;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(flag), Some(root), Some(archive)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: image-load --root DIR ARCHIVE.tar");
    };
    anyhow::ensure!(flag == "--root", "usage: image-load --root DIR ARCHIVE.tar");
    let start = Instant::now();
    let store = ImageStore::open(root.as_ref()).with_context(|| format!("open store {root}"))?;
    let file = std::fs::File::open(&archive).with_context(|| format!("open {archive}"))?;
    let ids = store
        .load_archive(
            std::io::BufReader::with_capacity(1 << 20, file),
            &mut |_| {},
        )
        .context("load")?;
    let secs = start.elapsed().as_secs_f64();
    for id in ids {
        println!("{id}");
    }
    eprintln!("loaded in {secs:.3} s");
    Ok(())
}
