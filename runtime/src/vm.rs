//! Containers in a microVM: from an OCI bundle to a booted sandbox VM whose
//! agent is ready to start the container's process.
//!
//! A bundle asks for a VM with the annotation `io.vessel.sandbox=vm`. This
//! module owns the translation of the bundle into the sandbox's shape: the
//! root filesystem (the image's layer directories, named by annotation and
//! converted once into cached read-only images, or else the bundle's
//! `root.path` as one image), the VM's size from the spec's memory limit and
//! CPU quota, and the agent's start request from `process`. It boots the VM
//! (`vessel-vmm`) and waits for the agent (`vessel-agent`).
//!
//! It does not drive the session afterwards: the shim multiplexes the
//! channel into its own event loop, and `vessel-runtime run` runs it in
//! the foreground with the agent's blocking client. Namespaces, cgroups,
//! mounts, hooks and seccomp profiles of the spec do not apply: the VM
//! boundary replaces them.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};
use vessel_agent::host::Client;
use vessel_agent::protocol::{ProcessSpec, ReadyInfo, Rlimit, RootSpec, Scratch, StartRequest};
use vessel_vmm::layer::{self, ImageFormat, LayerImages};
use vessel_vmm::{Sandbox, SandboxConfig, SerialOutput};

use crate::spec::{ANNOTATION_SANDBOX, Bundle};

/// The value of [`ANNOTATION_SANDBOX`] that selects a microVM.
pub const SANDBOX_VM: &str = "vm";
/// Annotation: the guest kernel (default [`DEFAULT_KERNEL`]).
pub const ANNOTATION_KERNEL: &str = "io.vessel.vm.kernel";
/// Annotation: the agent initramfs (default [`DEFAULT_INITRD`]).
pub const ANNOTATION_INITRD: &str = "io.vessel.vm.initrd";
/// Annotation: the image's layers as a JSON list of [`LayerDir`], lowest
/// first. Without it the bundle's root filesystem becomes one image.
pub const ANNOTATION_LAYERS: &str = "io.vessel.vm.layers";
/// Annotation: the container's own changes (its overlay upper
/// directory), imaged at every start on top of [`ANNOTATION_LAYERS`] when
/// not empty; the cached layers stay shared.
pub const ANNOTATION_UPPER: &str = "io.vessel.vm.upper";
/// Annotation: where layer images are cached (default
/// [`DEFAULT_LAYER_CACHE`]).
pub const ANNOTATION_LAYER_CACHE: &str = "io.vessel.vm.layer-cache";
/// Annotation: guest serial console to this file (debugging; slow).
pub const ANNOTATION_CONSOLE: &str = "io.vessel.vm.console";

/// Where `guest/build-kernel.sh` links its latest build.
pub const DEFAULT_KERNEL: &str = "/var/cache/vessel/kernel/current/vmlinux";
/// Where `guest/build-initrd.sh` writes the agent initramfs.
pub const DEFAULT_INITRD: &str = "/var/cache/vessel/agent-initramfs.cpio";
/// Shared layer image cache.
pub const DEFAULT_LAYER_CACHE: &str = "/var/lib/vessel/vm/layers";
/// The most read-only disks (layers, plus the container's own changes) a
/// VM takes.
pub const MAX_LAYERS: usize = 16;
/// Guest memory without a memory limit in the spec.
pub const DEFAULT_MEM_MIB: u32 = 256;
/// The smallest guest that boots the kernel and the agent comfortably.
pub const MIN_MEM_MIB: u32 = 64;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot be run in a VM.
    #[error("vm sandbox: {0}")]
    Config(String),
    /// The kernel or initramfs is missing.
    #[error("vm sandbox: {what} {}: not found (build it with runtime/vmm/guest/{script})", .path.display())]
    Missing {
        /// kernel or initramfs.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The script that makes it.
        script: &'static str,
    },
    /// Converting a layer to an image failed.
    #[error("vm sandbox: layer image of {}", .dir.display())]
    Layer {
        /// The layer directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: layer::Error,
    },
    /// The monitor failed to start.
    #[error("vm sandbox: starting the monitor")]
    Monitor(#[source] vessel_vmm::vm::Error),
    /// The agent did not come up.
    #[error("vm sandbox: waiting for the agent")]
    Agent(#[source] vessel_agent::host::Error),
    /// A host-side I/O operation failed.
    #[error("vm sandbox: {0}")]
    Io(&'static str, #[source] std::io::Error),
    /// The guest did not get as far as its agent in time.
    #[error(
        "vm sandbox: the guest's agent was not ready within {0:?} (a hung guest kernel? \
         the annotation {ANNOTATION_CONSOLE} names a file for its console)"
    )]
    BootTimeout(Duration),
}

/// How long a guest may take from the monitor's start to its agent's
/// `Ready`. Booting takes well under a second on hardware KVM and a few
/// seconds under nested emulation; a guest that takes this long has hung.
pub const BOOT_LIMIT: Duration = Duration::from_secs(60);

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One layer of an image: its diff ID (the cache key) and its unpacked
/// directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerDir {
    /// `sha256:...`, names the cached image.
    pub key: String,
    /// The unpacked layer.
    pub dir: PathBuf,
}

/// Whether a spec asks for a microVM.
pub fn wants_vm(spec: &Spec) -> bool {
    crate::spec::annotations(spec)
        .get(ANNOTATION_SANDBOX)
        .is_some_and(|v| v == SANDBOX_VM)
}

/// Everything needed to boot a container's VM, derived from its bundle.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Agent initramfs.
    pub initrd: PathBuf,
    /// Layers from the annotation (cached), lowest first.
    pub layers: Vec<LayerDir>,
    /// The layer image cache.
    pub layer_cache: PathBuf,
    /// Without layers: the root filesystem, imaged per container.
    pub rootfs: Option<PathBuf>,
    /// With layers: the container's own changes, imaged per start.
    pub upper: Option<PathBuf>,
    /// Guest memory.
    pub mem_mib: u32,
    /// vCPUs.
    pub vcpus: u8,
    /// Serial console file, for debugging.
    pub console: Option<PathBuf>,
    /// What the agent starts (layer serials filled in at boot).
    pub start: StartRequest,
}

/// Derive the VM's shape from a loaded bundle.
pub fn plan(bundle: &Bundle, id: &str) -> Result<Plan> {
    let spec = &bundle.spec;
    let ann = crate::spec::annotations(spec);
    let path =
        |key: &str, default: &str| PathBuf::from(ann.get(key).map_or(default, String::as_str));
    let layers: Vec<LayerDir> = match ann.get(ANNOTATION_LAYERS) {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("annotation {ANNOTATION_LAYERS}: {e}")))?,
        None => Vec::new(),
    };
    let upper = (!layers.is_empty())
        .then(|| ann.get(ANNOTATION_UPPER).map(PathBuf::from))
        .flatten();
    let disks = layers.len() + usize::from(upper.is_some());
    if disks > MAX_LAYERS {
        return Err(Error::Config(format!(
            "{disks} layers; a VM takes at most {MAX_LAYERS} (flatten the image)"
        )));
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Config("the spec has no process".into()))?;
    let (mem_mib, vcpus) = size(spec)?;
    let readonly = spec
        .root()
        .as_ref()
        .and_then(oci_spec::runtime::Root::readonly)
        .unwrap_or(false);
    let hostname = spec.hostname().clone().unwrap_or_else(|| id.to_string());
    Ok(Plan {
        kernel: path(ANNOTATION_KERNEL, DEFAULT_KERNEL),
        initrd: path(ANNOTATION_INITRD, DEFAULT_INITRD),
        rootfs: layers.is_empty().then(|| bundle.rootfs.clone()),
        upper,
        layers,
        layer_cache: path(ANNOTATION_LAYER_CACHE, DEFAULT_LAYER_CACHE),
        mem_mib,
        vcpus,
        console: ann.get(ANNOTATION_CONSOLE).map(PathBuf::from),
        start: StartRequest {
            root: RootSpec {
                layers: Vec::new(),
                scratch: Scratch::Tmpfs,
                readonly,
            },
            hostname,
            process: process_spec(process)?,
        },
    })
}

/// Guest memory (MiB) and vCPUs from the spec's resources: the memory
/// limit rounded up to an even number of MiB, the CPU quota (or the cpuset)
/// rounded up to whole vCPUs.
pub fn size(spec: &Spec) -> Result<(u32, u8)> {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let mut mem_mib = DEFAULT_MEM_MIB;
    if let Some(limit) = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(oci_spec::runtime::LinuxMemory::limit)
        .filter(|l| *l > 0)
    {
        let mib = (limit as u64).div_ceil(1 << 20);
        let mib = mib + (mib & 1);
        if mib < u64::from(MIN_MEM_MIB) {
            return Err(Error::Config(format!(
                "memory limit of {limit} bytes is below the {MIN_MEM_MIB} MiB a VM needs"
            )));
        }
        mem_mib = u32::try_from(mib)
            .map_err(|_| Error::Config(format!("memory limit of {limit} bytes is too large")))?;
    }
    let mut vcpus: u64 = 1;
    if let Some(cpu) = resources.and_then(|r| r.cpu().as_ref()) {
        if let (Some(quota), Some(period)) = (cpu.quota(), cpu.period()) {
            if quota > 0 && period > 0 {
                vcpus = (quota as u64).div_ceil(period);
            }
        } else if let Some(set) = cpu.cpus() {
            vcpus = cpuset_len(set).max(1);
        }
    }
    if vcpus > 32 {
        return Err(Error::Config(format!(
            "{vcpus} CPUs; a VM takes at most 32"
        )));
    }
    Ok((mem_mib, vcpus as u8))
}

fn cpuset_len(set: &str) -> u64 {
    set.split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
                    (b >= a).then(|| b - a + 1)
                }
                None => part.parse::<u64>().ok().map(|_| 1),
            }
        })
        .sum()
}

/// The agent's view of an OCI process.
pub fn process_spec(p: &Process) -> Result<ProcessSpec> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(Error::Config("process.args is empty".into()));
    }
    let user = p.user();
    let rlimits = p
        .rlimits()
        .as_ref()
        .map(|list| {
            list.iter()
                .map(|r| {
                    let kind = serde_json::to_value(r.typ())
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    Rlimit {
                        kind,
                        soft: r.soft(),
                        hard: r.hard(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ProcessSpec {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().to_string_lossy().into_owned(),
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        terminal: p.terminal().unwrap_or(false),
        rlimits,
    })
}

/// A booted VM whose agent said `Ready`.
pub struct Booted {
    /// The VM.
    pub sandbox: Sandbox,
    /// The host end of the agent channel (blocking).
    pub channel: UnixStream,
    /// The start request, with the layer serials filled in.
    pub start: StartRequest,
    /// What the agent said.
    pub ready: ReadyInfo,
    /// An image made for this container only (remove it when done).
    pub own_image: Option<PathBuf>,
}

/// Make the layer images, boot the VM and wait for the agent. `work`
/// holds a per-container root filesystem image when there are no cached
/// layers.
pub fn boot(plan: &Plan, work: &Path) -> Result<Booted> {
    for (what, path, script) in [
        ("kernel", &plan.kernel, "build-kernel.sh"),
        ("initramfs", &plan.initrd, "build-initrd.sh"),
    ] {
        if !path.is_file() {
            return Err(Error::Missing {
                what,
                path: path.clone(),
                script,
            });
        }
    }
    let mut images = Vec::new();
    let mut own_image = None;
    if let Some(rootfs) = &plan.rootfs {
        let out = work.join("rootfs.erofs");
        let _ = std::fs::remove_file(&out);
        layer::build_image(rootfs, &out, ImageFormat::Erofs).map_err(|source| Error::Layer {
            dir: rootfs.clone(),
            source,
        })?;
        images.push(out.clone());
        own_image = Some(out);
    } else {
        let cache = LayerImages::new(&plan.layer_cache, ImageFormat::Erofs).map_err(|source| {
            Error::Layer {
                dir: plan.layer_cache.clone(),
                source,
            }
        })?;
        for l in &plan.layers {
            images.push(
                cache
                    .get_or_build(&l.key, &l.dir)
                    .map_err(|source| Error::Layer {
                        dir: l.dir.clone(),
                        source,
                    })?,
            );
        }
        if let Some(upper) = plan.upper.as_ref().filter(|d| has_entries(d)) {
            let out = work.join("upper.erofs");
            let _ = std::fs::remove_file(&out);
            layer::build_image(upper, &out, ImageFormat::Erofs).map_err(|source| Error::Layer {
                dir: upper.clone(),
                source,
            })?;
            images.push(out.clone());
            own_image = Some(out);
        }
    }
    let (host_end, guest_end) = UnixStream::pair().map_err(|e| Error::Io("socket pair", e))?;
    let serial = match &plan.console {
        Some(path) => SerialOutput::Writer(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::Io("console file", e))?,
        )),
        None => SerialOutput::None,
    };
    let sandbox = Sandbox::start(SandboxConfig {
        kernel: plan.kernel.clone(),
        initrd: plan.initrd.clone(),
        layers: images,
        scratch: None,
        mem_mib: plan.mem_mib,
        vcpus: plan.vcpus,
        channel: guest_end.into(),
        extra_cmdline: String::new(),
        serial,
    })
    .map_err(Error::Monitor)?;
    let mut start = plan.start.clone();
    start.root.layers = sandbox.layer_serials();
    let reader = host_end
        .try_clone()
        .map_err(|e| Error::Io("socket clone", e))?;
    // The limit is on the socket, so it holds for the clone the client
    // reads; it is lifted once the agent is up.
    host_end
        .set_read_timeout(Some(BOOT_LIMIT))
        .map_err(|e| Error::Io("socket timeout", e))?;
    let mut client = Client::new(reader).map_err(Error::Agent)?;
    let ready = match client.wait_ready() {
        Ok(r) => r,
        Err(e) => {
            sandbox.vm().kill();
            let outcome = sandbox.wait();
            tracing::warn!(exit = ?outcome.exit, "vm ended before the agent was ready");
            if is_timeout(&e) {
                return Err(Error::BootTimeout(BOOT_LIMIT));
            }
            return Err(Error::Agent(e));
        }
    };
    host_end
        .set_read_timeout(None)
        .map_err(|e| Error::Io("socket timeout", e))?;
    Ok(Booted {
        sandbox,
        channel: host_end,
        start,
        ready,
        own_image,
    })
}

/// Whether `dir` is a directory with anything in it.
fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Whether the agent client gave up because the socket's read timeout
/// expired.
fn is_timeout(e: &vessel_agent::host::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value)] // called with json! temporaries
    fn spec(extra: serde_json::Value) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "box",
            "process": {
                "cwd": "/tmp", "args": ["sh", "-c", "exit 7"], "env": ["A=b"],
                "terminal": true,
                "user": {"uid": 1000, "gid": 100, "additionalGids": [5]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}]
            },
            "annotations": {"io.vessel.sandbox": "vm"}
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in e {
                o.insert(k.clone(), val.clone());
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn bundle(s: Spec) -> Bundle {
        Bundle {
            dir: "/b".into(),
            rootfs: "/b/rootfs".into(),
            spec: s,
        }
    }

    #[test]
    fn a_read_timeout_is_told_apart_from_other_agent_errors() {
        let timeout = vessel_agent::host::Error::Io(std::io::ErrorKind::WouldBlock.into());
        assert!(is_timeout(&timeout));
        let reset = vessel_agent::host::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert!(!is_timeout(&reset));
        assert!(!is_timeout(&vessel_agent::host::Error::Vanished("Ready")));
        assert!(
            Error::BootTimeout(BOOT_LIMIT)
                .to_string()
                .contains(ANNOTATION_CONSOLE)
        );
    }

    #[test]
    fn annotation_selects_the_vm() {
        assert!(wants_vm(&spec(serde_json::json!({}))));
        let s = spec(serde_json::json!({"annotations": {"io.vessel.sandbox": "namespaces"}}));
        assert!(!wants_vm(&s));
        let s = spec(serde_json::json!({"annotations": {}}));
        assert!(!wants_vm(&s));
    }

    #[test]
    fn process_and_root_come_from_the_spec() {
        let p = plan(&bundle(spec(serde_json::json!({}))), "c1").unwrap();
        assert_eq!(p.start.hostname, "box");
        assert!(p.start.root.readonly);
        let proc = &p.start.process;
        assert_eq!(proc.args, ["sh", "-c", "exit 7"]);
        assert_eq!(
            (proc.uid, proc.gid, &proc.additional_gids[..]),
            (1000, 100, &[5][..])
        );
        assert_eq!((proc.cwd.as_str(), proc.terminal), ("/tmp", true));
        assert_eq!(proc.env, ["A=b"]);
        assert_eq!(
            proc.rlimits,
            [Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                soft: 10,
                hard: 20
            }]
        );
        assert_eq!(p.rootfs.as_deref(), Some(Path::new("/b/rootfs")));
        assert_eq!(p.kernel, Path::new(DEFAULT_KERNEL));
        assert_eq!((p.mem_mib, p.vcpus), (DEFAULT_MEM_MIB, 1));
    }

    #[test]
    fn layers_and_paths_come_from_annotations() {
        let s = spec(serde_json::json!({"annotations": {
            "io.vessel.sandbox": "vm",
            "io.vessel.vm.kernel": "/k",
            "io.vessel.vm.initrd": "/i",
            "io.vessel.vm.layer-cache": "/c",
            "io.vessel.vm.layers": "[{\"key\":\"sha256:aa\",\"dir\":\"/l0\"},{\"key\":\"sha256:bb\",\"dir\":\"/l1\"}]"
        }}));
        let p = plan(&bundle(s), "c1").unwrap();
        assert_eq!(
            (
                p.kernel.as_path(),
                p.initrd.as_path(),
                p.layer_cache.as_path()
            ),
            (Path::new("/k"), Path::new("/i"), Path::new("/c"))
        );
        assert_eq!(p.layers.len(), 2);
        assert_eq!(p.layers[1].dir, Path::new("/l1"));
        assert!(p.rootfs.is_none());
        assert!(p.upper.is_none());

        // The container's own changes go on top of the layers; 16 disks
        // at most, counting them.
        let layers = |n: usize| {
            serde_json::to_string(
                &(0..n)
                    .map(|i| LayerDir {
                        key: format!("sha256:{i:064x}"),
                        dir: PathBuf::from(format!("/l{i}")),
                    })
                    .collect::<Vec<_>>(),
            )
            .unwrap()
        };
        let with = |n: usize| {
            spec(serde_json::json!({"annotations": {
                "io.vessel.sandbox": "vm",
                "io.vessel.vm.layers": layers(n),
                "io.vessel.vm.upper": "/u"
            }}))
        };
        let p = plan(&bundle(with(15)), "c1").unwrap();
        assert_eq!(p.upper.as_deref(), Some(Path::new("/u")));
        let e = plan(&bundle(with(16)), "c1").unwrap_err().to_string();
        assert!(e.contains("17 layers"), "{e}");

        let s = spec(serde_json::json!({"annotations": {
            "io.vessel.sandbox": "vm", "io.vessel.vm.layers": "{"
        }}));
        let e = plan(&bundle(s), "c1").unwrap_err().to_string();
        assert!(e.contains("io.vessel.vm.layers"), "{e}");
    }

    #[test]
    fn resources_size_the_vm() {
        let s = spec(serde_json::json!({"linux": {"resources": {
            "memory": {"limit": 134_217_728},
            "cpu": {"quota": 150_000, "period": 100_000}
        }}}));
        assert_eq!(size(&s).unwrap(), (128, 2));
        // Odd and partial MiB round up to an even count.
        let s =
            spec(serde_json::json!({"linux": {"resources": {"memory": {"limit": 100_000_000}}}}));
        assert_eq!(size(&s).unwrap(), (96, 1));
        let s = spec(serde_json::json!({"linux": {"resources": {"cpu": {"cpus": "0-2,5"}}}}));
        assert_eq!(size(&s).unwrap(), (DEFAULT_MEM_MIB, 4));
        let s = spec(serde_json::json!({"linux": {"resources": {"memory": {"limit": 8_388_608}}}}));
        let e = size(&s).unwrap_err().to_string();
        assert!(e.contains("below the 64 MiB"), "{e}");
        let s = spec(
            serde_json::json!({"linux": {"resources": {"cpu": {"quota": 6_400_000, "period": 100_000}}}}),
        );
        assert!(size(&s).is_err());
    }

    #[test]
    fn missing_kernel_names_the_script() {
        let mut p = plan(&bundle(spec(serde_json::json!({}))), "c1").unwrap();
        p.kernel = "/nonexistent/vmlinux".into();
        let e = boot(&p, Path::new("/tmp")).err().unwrap().to_string();
        assert!(
            e.contains("/nonexistent/vmlinux") && e.contains("build-kernel.sh"),
            "{e}"
        );
    }
}
