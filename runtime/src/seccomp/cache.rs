//! Compiled filters cached on disk. Turning Docker's default profile into
//! BPF through libseccomp costs tens of milliseconds, and every container
//! of an engine uses the same few profiles; loading a cached program is a
//! file read. The key is a SHA-256 over the profile as JSON, libseccomp's
//! version, the native architecture, this crate's version and the file
//! format, so any change compiles afresh. Entries are written to a
//! temporary name and renamed, so a reader sees a whole entry or none; an
//! entry that does not parse is ignored and replaced.
//!
//! The cache lives in the runtime's root (mode 0700, root's own), so only
//! whoever could write the runtime's state can place a program there.

use std::io::Write;
use std::path::Path;

use oci_spec::runtime::LinuxSeccomp;
use sha2::{Digest, Sha256};

use super::{Program, Result};

const MAGIC: &[u8; 8] = b"VSCBPF01";

fn key(cfg: &LinuxSeccomp) -> Option<String> {
    let json = serde_json::to_vec(cfg).ok()?;
    let mut h = Sha256::new();
    h.update(MAGIC);
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(super::libseccomp_version().as_bytes());
    h.update(super::arch_name(super::native_arch()).as_bytes());
    h.update(&json);
    Some(
        h.finalize()
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                use std::fmt::Write as _;
                let _ = write!(s, "{b:02x}");
                s
            }),
    )
}

fn encode(p: &Program) -> Vec<u8> {
    let insns = p.instructions();
    let mut out = Vec::with_capacity(8 + 8 + 1 + 4 + insns.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&p.base_flags().to_le_bytes());
    out.push(u8::from(p.wants_listener()));
    out.extend_from_slice(&(insns.len() as u32).to_le_bytes());
    for i in insns {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    out
}

fn decode(b: &[u8]) -> Option<Program> {
    let rest = b.strip_prefix(MAGIC)?;
    let (flags, rest) = rest.split_first_chunk::<8>()?;
    let (listener, rest) = rest.split_first()?;
    let (count, rest) = rest.split_first_chunk::<4>()?;
    let count = u32::from_le_bytes(*count) as usize;
    if count == 0 || rest.len() != count * 8 || *listener > 1 {
        return None;
    }
    let insns = rest
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    Some(Program::from_parts(
        insns,
        u64::from_le_bytes(*flags),
        *listener == 1,
    ))
}

/// [`super::compile`], through a cache in `dir` (created if missing).
/// Cache failures only cost the compilation; they are never errors.
pub fn compile_cached(cfg: &LinuxSeccomp, dir: &Path) -> Result<Program> {
    let Some(key) = key(cfg) else {
        return super::compile(cfg);
    };
    let path = dir.join(&key);
    if let Some(p) = std::fs::read(&path).ok().and_then(|b| decode(&b)) {
        return Ok(p);
    }
    let program = super::compile(cfg)?;
    let store = || -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let tmp = dir.join(format!(".{key}.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&encode(&program))?;
        drop(f);
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = store() {
        tracing::debug!(error = %e, "seccomp cache not written");
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_program_is_identical_and_garbage_is_ignored() {
        let dir = std::env::temp_dir().join(format!("vessel-seccomp-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let caps = caps::all();
        let profile = super::super::default_profile(caps, super::super::native_arch()).unwrap();
        let fresh = super::super::compile(&profile).unwrap();
        let first = compile_cached(&profile, &dir).unwrap();
        let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(entries.len(), 1);
        let second = compile_cached(&profile, &dir).unwrap();
        for p in [&first, &second] {
            assert_eq!(encode(p), encode(&fresh));
            assert_eq!(p.flags(), fresh.flags());
        }
        // A damaged entry is recompiled and replaced.
        std::fs::write(entries[0].path(), b"VSCBPF01garbage").unwrap();
        let third = compile_cached(&profile, &dir).unwrap();
        assert_eq!(encode(&third), encode(&fresh));
        assert_eq!(
            decode(&std::fs::read(entries[0].path()).unwrap()).map(|p| encode(&p)),
            Some(encode(&fresh))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
