//! A reader that watches the block structure of a tar stream as it passes
//! through and stops it early when it breaks the limits of a layer: more
//! uncompressed bytes than allowed, or a metadata member (PAX header, GNU
//! long name or link) larger than [`META_LIMIT`], which a tar parser would
//! otherwise buffer whole in memory.
//!
//! It does not interpret entries; the tar parser does that. After the
//! first all-zero header block it stops looking and only counts.

use std::io::{self, Read};

/// Largest PAX header or GNU long name/link member accepted.
pub const META_LIMIT: u64 = 1 << 20;

/// Why a guard stopped the stream; carried inside an `io::Error`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("uncompressed stream exceeds the {0} byte limit")]
    TooLarge(u64),
    #[error("tar metadata member of {0} bytes exceeds the {META_LIMIT} byte limit")]
    MetadataTooLarge(u64),
    #[error("tar header has an invalid size field")]
    BadSize,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub struct TarGuard<R> {
    inner: R,
    limit: u64,
    total: u64,
    header: [u8; 512],
    fill: usize,
    /// Data bytes (with padding) before the next header.
    skip: u64,
    /// Collecting the data of a PAX `x` member to find its `size` record.
    pax: Option<Vec<u8>>,
    pax_size: Option<u64>,
    /// GNU sparse extension blocks follow; then this many data bytes.
    sparse_ext: Option<u64>,
    ended: bool,
}

impl<R: Read> TarGuard<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        TarGuard {
            inner,
            limit,
            total: 0,
            header: [0; 512],
            fill: 0,
            skip: 0,
            pax: None,
            pax_size: None,
            sparse_ext: None,
            ended: false,
        }
    }

    fn observe(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() && !self.ended {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                if let Some(pax) = self.pax.as_mut() {
                    pax.extend_from_slice(&data[..n]);
                }
                self.skip -= n as u64;
                data = &data[n..];
                if self.skip == 0 {
                    if let Some(pax) = self.pax.take() {
                        self.pax_size = pax_size(&pax);
                    }
                }
                continue;
            }
            let n = (512 - self.fill).min(data.len());
            self.header[self.fill..self.fill + n].copy_from_slice(&data[..n]);
            self.fill += n;
            data = &data[n..];
            if self.fill == 512 {
                self.fill = 0;
                self.on_header()?;
            }
        }
        Ok(())
    }

    fn on_header(&mut self) -> Result<()> {
        let h = self.header;
        if let Some(size) = self.sparse_ext {
            // A GNU sparse extension block: more follow while byte 504 is set.
            if h[504] == 0 {
                self.sparse_ext = None;
                self.skip = round_up(size);
            }
            return Ok(());
        }
        if h.iter().all(|b| *b == 0) {
            self.ended = true;
            return Ok(());
        }
        let field_size = parse_size(&h[124..136])?;
        let kind = h[156];
        let is_meta = matches!(kind, b'x' | b'g' | b'L' | b'K');
        let size = if is_meta {
            field_size
        } else {
            self.pax_size.take().unwrap_or(field_size)
        };
        if is_meta && size > META_LIMIT {
            return Err(Error::MetadataTooLarge(size));
        }
        if kind == b'x' {
            self.pax = Some(Vec::with_capacity(size as usize));
        }
        if kind == b'S' && h[482] != 0 {
            self.sparse_ext = Some(size);
        } else {
            self.skip = round_up(size);
        }
        if self.skip == 0 {
            if let Some(pax) = self.pax.take() {
                self.pax_size = pax_size(&pax);
            }
        }
        Ok(())
    }
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(512).saturating_mul(512)
}

/// A tar numeric field: octal text, or base-256 when the top bit is set.
fn parse_size(field: &[u8]) -> Result<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            v = v.checked_mul(256).ok_or(Error::BadSize)? | u64::from(*b);
        }
        return Ok(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .filter(|b| *b != 0 && *b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&text).map_err(|_| Error::BadSize)?;
    u64::from_str_radix(s, 8).map_err(|_| Error::BadSize)
}

/// The `size` record of a PAX extended header, if any.
fn pax_size(data: &[u8]) -> Option<u64> {
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > rest.len() {
            return None;
        }
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(v) = record.strip_prefix(b"size=") {
            return std::str::from_utf8(v).ok()?.parse().ok();
        }
        rest = &rest[len..];
    }
    None
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        if self.total > self.limit {
            return Err(io::Error::other(Error::TooLarge(self.limit)));
        }
        self.observe(&buf[..n]).map_err(io::Error::other)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_with_pax(value_len: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        let rec_body = format!("comment={}\n", "a".repeat(value_len));
        let mut len = rec_body.len() + 2;
        loop {
            let l = format!("{len} {rec_body}").len();
            if l == len {
                break;
            }
            len = l;
        }
        let rec = format!("{len} {rec_body}");
        h.set_size(rec.len() as u64);
        h.set_path("PaxHeader").unwrap();
        h.set_cksum();
        b.append(&h, rec.as_bytes()).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_path("f").unwrap();
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn passes_normal_archive() {
        let data = archive_with_pax(10);
        let mut g = TarGuard::new(&data[..], 1 << 30);
        let mut out = Vec::new();
        g.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn stops_huge_pax_header() {
        let data = archive_with_pax(2 << 20);
        let mut g = TarGuard::new(&data[..], 1 << 30);
        let err = std::io::copy(&mut g, &mut std::io::sink()).unwrap_err();
        assert!(err.to_string().contains("metadata member"), "{err}");
    }

    #[test]
    fn stops_at_total_limit() {
        let data = archive_with_pax(10);
        let mut g = TarGuard::new(&data[..], 100);
        assert!(std::io::copy(&mut g, &mut std::io::sink()).is_err());
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size(b"00000000012\0").unwrap(), 10);
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 5;
        assert_eq!(parse_size(&f).unwrap(), 5);
        assert_eq!(pax_size(b"12 size=100\n"), Some(100));
    }
}
