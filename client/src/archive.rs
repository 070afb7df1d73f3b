//! Tar archives the CLI writes and reads: the build context (honouring
//! `.dockerignore`), a local path sent with `cp` (renamed as the
//! destination requires), and extraction of what the daemon returns for
//! `cp` without ever writing outside the destination.

use std::fs;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::ignore::Matcher;

/// Archive errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {op}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("archive entry {0:?} escapes the destination")]
    Escape(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn header_for(meta: &fs::Metadata) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    h.set_uid(0);
    h.set_gid(0);
    let _ = h.set_username("");
    let _ = h.set_groupname("");
    h
}

fn append_entry<W: Write>(b: &mut tar::Builder<W>, full: &Path, name: &str) -> Result<()> {
    let meta = fs::symlink_metadata(full).map_err(io("stat", full))?;
    let mut h = header_for(&meta);
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(full).map_err(io("read link", full))?;
        h.set_size(0);
        b.append_link(&mut h, name, &target)
            .map_err(io("add to archive", full))?;
    } else if ft.is_dir() {
        h.set_size(0);
        let n = format!("{}/", name.trim_end_matches('/'));
        b.append_data(&mut h, n, std::io::empty())
            .map_err(io("add to archive", full))?;
    } else if ft.is_file() {
        let f = fs::File::open(full).map_err(io("open", full))?;
        b.append_data(&mut h, name, f)
            .map_err(io("add to archive", full))?;
    }
    // Sockets, fifos and devices are left out of a build context, as docker
    // does for sockets.
    Ok(())
}

/// Write the build context in `dir` as a tar to `w`, skipping what
/// `matcher` excludes. `extra` adds a file at the top (a Dockerfile that
/// lives outside the context or came from stdin). Returns the writer.
pub fn context_tar<W: Write>(
    dir: &Path,
    matcher: &Matcher,
    w: W,
    extra: Option<(&str, &[u8])>,
) -> Result<W> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    walk(dir, "", matcher, &mut b)?;
    if let Some((name, data)) = extra {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(0);
        b.append_data(&mut h, name, data)
            .map_err(io("add to archive", Path::new(name)))?;
    }
    b.into_inner().map_err(io("finish archive", dir))
}

/// A tar holding one file (a Dockerfile from stdin with an empty context).
pub fn single_file_tar<W: Write>(name: &str, data: &[u8], w: W) -> Result<W> {
    let mut b = tar::Builder::new(w);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(0);
    b.append_data(&mut h, name, data)
        .map_err(io("add to archive", Path::new(name)))?;
    b.into_inner()
        .map_err(io("finish archive", Path::new(name)))
}

fn walk<W: Write>(root: &Path, rel: &str, m: &Matcher, b: &mut tar::Builder<W>) -> Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut names: Vec<String> = fs::read_dir(&dir)
        .map_err(io("read directory", &dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    for name in names {
        let rel_child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let full = root.join(&rel_child);
        let meta = fs::symlink_metadata(&full).map_err(io("stat", &full))?;
        let excluded = m.excluded(&rel_child);
        if meta.is_dir() {
            if excluded && m.can_skip_dir(&rel_child) {
                continue;
            }
            if !excluded {
                append_entry(b, &full, &rel_child)?;
            }
            walk(root, &rel_child, m, b)?;
        } else if !excluded {
            append_entry(b, &full, &rel_child)?;
        }
    }
    Ok(())
}

/// Tar `src` (a file, link or directory tree) with its top entry named
/// `name`, for `cp` into a container.
pub fn tar_path<W: Write>(src: &Path, name: &str, w: W, follow: bool) -> Result<W> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    let src = if follow {
        fs::canonicalize(src).map_err(io("resolve", src))?
    } else {
        src.to_path_buf()
    };
    tar_tree(&src, name, &mut b)?;
    b.into_inner().map_err(io("finish archive", &src))
}

fn tar_tree<W: Write>(full: &Path, name: &str, b: &mut tar::Builder<W>) -> Result<()> {
    append_entry(b, full, name)?;
    let meta = fs::symlink_metadata(full).map_err(io("stat", full))?;
    if meta.is_dir() {
        let mut kids: Vec<_> = fs::read_dir(full)
            .map_err(io("read directory", full))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        kids.sort();
        for k in kids {
            let child_name = format!("{name}/{}", k.to_string_lossy());
            tar_tree(&full.join(&k), &child_name, b)?;
        }
    }
    Ok(())
}

/// Extract a tar into `dest_dir`, renaming its top-level entry `from` to
/// `to` (docker's copy semantics). Entries that would land outside
/// `dest_dir` are refused.
pub fn extract_renamed<R: Read>(r: R, dest_dir: &Path, from: &str, to: &str) -> Result<()> {
    let mut a = tar::Archive::new(r);
    a.set_preserve_permissions(true);
    a.set_overwrite(true);
    let entries = a.entries().map_err(io("read archive", dest_dir))?;
    for e in entries {
        let mut e = e.map_err(io("read archive", dest_dir))?;
        let path = e.path().map_err(io("read archive", dest_dir))?.into_owned();
        let mut comps = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(s) => comps.push(s.to_string_lossy().into_owned()),
                Component::CurDir => {}
                _ => return Err(Error::Escape(path.display().to_string())),
            }
        }
        if comps.is_empty() {
            continue;
        }
        if comps[0] == from {
            comps[0] = to.to_string();
        }
        let target = dest_dir.join(comps.join("/"));
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        // A hard link's target is inside the archive; resolve it the same way.
        if e.header().entry_type() == tar::EntryType::Link {
            if let Ok(Some(link)) = e.link_name() {
                let mut lc: Vec<String> = link
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                        _ => None,
                    })
                    .collect();
                if lc.first().is_some_and(|f| f == from) {
                    lc[0] = to.to_string();
                }
                let src = dest_dir.join(lc.join("/"));
                let _ = fs::remove_file(&target);
                fs::hard_link(&src, &target).map_err(io("link", &target))?;
                continue;
            }
        }
        e.unpack(&target).map_err(io("extract", &target))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_honours_ignore_and_adds_extra() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("Dockerfile"), "FROM x\n").unwrap();
        fs::write(d.path().join("a.log"), "x").unwrap();
        fs::create_dir_all(d.path().join("src/deep")).unwrap();
        fs::write(d.path().join("src/deep/f.rs"), "fn").unwrap();
        std::os::unix::fs::symlink("src", d.path().join("link")).unwrap();
        let m = Matcher::parse("*.log\n").unwrap();
        let buf =
            context_tar(d.path(), &m, Vec::new(), Some((".dockerfile.x", b"FROM y"))).unwrap();
        let mut a = tar::Archive::new(&buf[..]);
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            vec![
                "Dockerfile",
                "link",
                "src/",
                "src/deep/",
                "src/deep/f.rs",
                ".dockerfile.x"
            ]
        );
    }

    #[test]
    fn extract_renames_top_and_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("dir");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("sub/f"), "hi").unwrap();
        let tar = tar_path(&src, "dir", Vec::new(), false).unwrap();
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        extract_renamed(&tar[..], &out, "dir", "copy").unwrap();
        assert_eq!(fs::read_to_string(out.join("copy/sub/f")).unwrap(), "hi");

        let mut evil = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // Write the name bytes directly: the builder refuses "..".
        h.as_gnu_mut().unwrap().name[..7].copy_from_slice(b"../evil");
        h.set_cksum();
        evil.append(&h, &b"x"[..]).unwrap();
        let data = evil.into_inner().unwrap();
        assert!(extract_renamed(&data[..], &out, "a", "b").is_err());
        assert!(!d.path().join("evil").exists());
    }
}
