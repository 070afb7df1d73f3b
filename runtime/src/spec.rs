//! Reading, checking and generating OCI runtime configurations
//! (`config.json`).
//!
//! This module owns the translation from a bundle on disk to an in-memory
//! [`Spec`] that the rest of the runtime can trust: the root path made
//! absolute, unknown capability names dropped with a warning (as runc does),
//! and the invariants that later code relies on checked once, here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Mount, Spec};

use crate::error::{Error, Result};

/// The OCI runtime-spec version this runtime implements.
pub const OCI_VERSION: &str = "1.2.0";

/// A loaded bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory, absolute.
    pub dir: PathBuf,
    /// The root filesystem, absolute.
    pub rootfs: PathBuf,
    /// The configuration.
    pub spec: Spec,
}

/// Load `config.json` from a bundle directory and check it.
pub fn load_bundle(dir: &Path) -> Result<Bundle> {
    let dir = std::fs::canonicalize(dir).map_err(|e| Error::io("bundle directory", dir, e))?;
    let path = dir.join("config.json");
    let text = std::fs::read(&path).map_err(|e| Error::io("read config", &path, e))?;
    let spec = parse_spec(&text).map_err(|e| match e {
        Error::Json { context, source } => Error::Json {
            context: format!("{}: {context}", path.display()),
            source,
        },
        other => other,
    })?;
    validate(&spec)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::Config("root must be set".into()))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    let rootfs =
        std::fs::canonicalize(&rootfs).map_err(|e| Error::io("root filesystem", &rootfs, e))?;
    if !rootfs.is_dir() {
        return Err(Error::Config(format!(
            "root filesystem {} is not a directory",
            rootfs.display()
        )));
    }
    Ok(Bundle { dir, rootfs, spec })
}

/// Parse a configuration, dropping capability names this runtime does not
/// know (with a warning) instead of refusing the whole document.
pub fn parse_spec(text: &[u8]) -> Result<Spec> {
    let mut value: serde_json::Value = serde_json::from_slice(text).map_err(|e| Error::Json {
        context: "parse config".into(),
        source: e,
    })?;
    if let Some(caps) = value
        .pointer_mut("/process/capabilities")
        .and_then(serde_json::Value::as_object_mut)
    {
        for (set, list) in caps.iter_mut() {
            if let Some(list) = list.as_array_mut() {
                list.retain(|c| {
                    let known = c.as_str().is_some_and(|name| {
                        serde_json::from_value::<oci_spec::runtime::Capability>(
                            serde_json::Value::String(name.to_string()),
                        )
                        .is_ok()
                    });
                    if !known {
                        tracing::warn!(capability = %c, set = %set, "ignoring unknown capability");
                    }
                    known
                });
            }
        }
    }
    serde_json::from_value(value).map_err(|e| Error::Json {
        context: "parse config".into(),
        source: e,
    })
}

/// Check the invariants the rest of the runtime relies on.
pub fn validate(spec: &Spec) -> Result<()> {
    let major = spec.version().split('.').next().unwrap_or("");
    if major != "1" {
        return Err(Error::Config(format!(
            "unsupported ociVersion {:?} (this runtime implements {OCI_VERSION})",
            spec.version()
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Config("process must be set".into()))?;
    if process.args().as_ref().is_none_or(Vec::is_empty) {
        return Err(Error::Config("process.args must not be empty".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(Error::Config(format!(
            "process.cwd \"{}\" must be an absolute path",
            process.cwd().display()
        )));
    }
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::Config("linux must be set".into()))?;
    let namespaces = linux.namespaces().as_deref().unwrap_or_default();
    let mut seen = Vec::new();
    for ns in namespaces {
        if seen.contains(&ns.typ()) {
            return Err(Error::Config(format!(
                "namespace {} appears twice",
                ns_name(ns.typ())
            )));
        }
        seen.push(ns.typ());
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(Error::Config(format!(
                    "namespace {} path \"{}\" must be absolute",
                    ns_name(ns.typ()),
                    p.display()
                )));
            }
        }
    }
    let has = |t| namespaces.iter().any(|n| n.typ() == t);
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !has(LinuxNamespaceType::Uts) {
        return Err(Error::Config(
            "hostname requires a private UTS namespace".into(),
        ));
    }
    if (linux.uid_mappings().is_some() || linux.gid_mappings().is_some())
        && !has(LinuxNamespaceType::User)
    {
        return Err(Error::Config(
            "uid/gid mappings require a user namespace".into(),
        ));
    }
    if has(LinuxNamespaceType::User)
        && namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none())
        && (linux.uid_mappings().as_ref().is_none_or(Vec::is_empty)
            || linux.gid_mappings().as_ref().is_none_or(Vec::is_empty))
    {
        return Err(Error::Config(
            "a new user namespace needs uidMappings and gidMappings".into(),
        ));
    }
    if let Some(sysctl) = linux.sysctl() {
        for key in sysctl.keys() {
            check_sysctl(key, &has)?;
        }
    }
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if !m.destination().is_absolute() {
            return Err(Error::Config(format!(
                "mount destination \"{}\" must be absolute",
                m.destination().display()
            )));
        }
    }
    Ok(())
}

/// Refuse sysctls that would change the host rather than the container.
fn check_sysctl(key: &str, has: &dyn Fn(LinuxNamespaceType) -> bool) -> Result<()> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if key.contains("..") || key.contains('\0') {
        return Err(Error::Config(format!("sysctl {key:?} is not a valid name")));
    }
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        if has(LinuxNamespaceType::Ipc) {
            return Ok(());
        }
        return Err(Error::Config(format!(
            "sysctl {key:?} needs a private IPC namespace"
        )));
    }
    if key.starts_with("net.") {
        if has(LinuxNamespaceType::Network) {
            return Ok(());
        }
        return Err(Error::Config(format!(
            "sysctl {key:?} needs a private network namespace"
        )));
    }
    if key == "kernel.hostname" || key == "kernel.domainname" {
        if has(LinuxNamespaceType::Uts) {
            return Ok(());
        }
        return Err(Error::Config(format!(
            "sysctl {key:?} needs a private UTS namespace"
        )));
    }
    Err(Error::Config(format!(
        "sysctl {key:?} is not namespaced and would change the host"
    )))
}

/// The short name the kernel uses under /proc/PID/ns for a namespace type.
pub fn ns_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// The `CLONE_NEW*` flag of a namespace type.
pub fn ns_flag(t: LinuxNamespaceType) -> nix::sched::CloneFlags {
    use nix::sched::CloneFlags as F;
    match t {
        LinuxNamespaceType::Mount => F::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => F::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => F::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => F::CLONE_NEWIPC,
        LinuxNamespaceType::User => F::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => F::CLONE_NEWPID,
        LinuxNamespaceType::Network => F::CLONE_NEWNET,
        LinuxNamespaceType::Time => F::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The namespaces a spec asks for.
pub fn namespaces(spec: &Spec) -> &[LinuxNamespace] {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref())
        .unwrap_or_default()
}

/// Whether the spec has a namespace of this type (new or joined).
pub fn has_namespace(spec: &Spec, t: LinuxNamespaceType) -> bool {
    namespaces(spec).iter().any(|n| n.typ() == t)
}

/// A default configuration like `runc spec` writes: `sh` on a terminal as
/// root, the usual mounts, new namespaces except user (and except network
/// when rootless), masked and read-only /proc paths, a minimal capability
/// set, and a device cgroup that denies everything not explicitly allowed.
pub fn default_spec(rootless: bool) -> Spec {
    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    spec.set_hostname(Some("vessel".into()));
    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    // `Spec::default()` leaves out the cgroup mount; containers expect one.
    if !mounts
        .iter()
        .any(|m| m.destination() == Path::new("/sys/fs/cgroup"))
    {
        let mut m = Mount::default();
        m.set_destination(PathBuf::from("/sys/fs/cgroup"));
        m.set_typ(Some("cgroup".into()));
        m.set_source(Some(PathBuf::from("cgroup")));
        m.set_options(Some(
            ["nosuid", "noexec", "nodev", "relatime", "ro"]
                .map(String::from)
                .to_vec(),
        ));
        mounts.push(m);
    }
    spec.set_mounts(Some(mounts));
    if rootless {
        // SAFETY-free: getuid/getgid cannot fail.
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        spec.set_linux(Some(oci_spec::runtime::Linux::rootless(uid, gid)));
    }
    spec
}

/// Annotation that asks for the container to run in a microVM.
pub const ANNOTATION_SANDBOX: &str = "io.vessel.sandbox";

/// The annotations of a spec, or an empty map.
pub fn annotations(spec: &Spec) -> HashMap<String, String> {
    spec.annotations().clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}
        })
    }

    #[test]
    fn unknown_capabilities_are_dropped() {
        let mut v = minimal();
        v["process"]["capabilities"] =
            serde_json::json!({"bounding": ["CAP_CHOWN", "CAP_FROM_THE_FUTURE"]});
        let spec = parse_spec(v.to_string().as_bytes()).unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 1);
    }

    #[test]
    fn validate_rejects_bad_configs() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("ociVersion", serde_json::json!({"ociVersion": "2.0.0"})),
            (
                "args",
                serde_json::json!({"process": {"cwd": "/", "args": [], "user": {"uid": 0, "gid": 0}}}),
            ),
            (
                "cwd",
                serde_json::json!({"process": {"cwd": "rel", "args": ["sh"], "user": {"uid": 0, "gid": 0}}}),
            ),
            ("hostname", serde_json::json!({"hostname": "x"})),
            (
                "sysctl",
                serde_json::json!({"linux": {"namespaces": [{"type": "pid"}], "sysctl": {"net.ipv4.ip_forward": "1"}}}),
            ),
            (
                "sysctl",
                serde_json::json!({"linux": {"namespaces": [{"type": "pid"}], "sysctl": {"vm.swappiness": "1"}}}),
            ),
            (
                "twice",
                serde_json::json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "pid"}]}}),
            ),
            (
                "mappings",
                serde_json::json!({"linux": {"namespaces": [{"type": "user"}]}}),
            ),
        ];
        for (name, patch) in cases {
            let mut v = minimal();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let spec = parse_spec(v.to_string().as_bytes()).unwrap();
            assert!(validate(&spec).is_err(), "case {name} should fail");
        }
        let spec = parse_spec(minimal().to_string().as_bytes()).unwrap();
        validate(&spec).unwrap();
    }

    #[test]
    fn default_spec_is_valid() {
        let spec = default_spec(false);
        validate(&spec).unwrap();
        assert!(has_namespace(&spec, LinuxNamespaceType::Network));
        let rootless = default_spec(true);
        validate(&rootless).unwrap();
        assert!(has_namespace(&rootless, LinuxNamespaceType::User));
    }
}
