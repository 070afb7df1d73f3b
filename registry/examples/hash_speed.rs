//! Compare SHA-256 implementations on this CPU (run with --release).

#![allow(clippy::cast_precision_loss)]
fn main() {
    let data: Vec<u8> = (0..256u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let d = vessel_registry::Digest::sha256_of(&data);
        let s = t.elapsed().as_secs_f64();
        println!(
            "sha2 (Digest::sha256_of): {:.0} MB/s {}",
            data.len() as f64 / s / 1e6,
            d.short()
        );
        let t = std::time::Instant::now();
        let r = ring::digest::digest(&ring::digest::SHA256, &data);
        let s = t.elapsed().as_secs_f64();
        println!(
            "ring: {:.0} MB/s {:02x}{:02x}",
            data.len() as f64 / s / 1e6,
            r.as_ref()[0],
            r.as_ref()[1]
        );
    }
}
