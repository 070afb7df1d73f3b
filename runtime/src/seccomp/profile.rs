//! Vessel's default seccomp profile: the data in `default.json` and its
//! rendering into an OCI `linux.seccomp` object for one container.
//!
//! The goal is Docker's behaviour: a container that works under Docker's
//! default profile works under this one, and the calls Docker refuses are
//! refused with `EPERM` (keyrings, kexec, modules, `bpf`/`perf_event_open`
//! without their capabilities, `userfaultfd`, `io_uring`, mounts and new
//! namespaces without `CAP_SYS_ADMIN`, `open_by_handle_at`, ...). `ptrace` is
//! allowed on kernels from 4.8 on, as Docker does, because since then a tracer
//! cannot use it to get around the filter.
//!
//! `socket(2)` is refused for `AF_ALG` and `AF_VSOCK` and the `socketcall(2)`
//! multiplexer is not allowed as such. One gap remains, shared with runc and
//! Docker: for 32-bit x86 processes libseccomp turns the allowed socket calls
//! into `socketcall` sub-calls, and `socketcall(SYS_SOCKET)` cannot look at
//! the address family, which sits in memory. Adding those rules exactly
//! (without the rewrite) would close it but break the many i386 C libraries
//! that create every socket through `socketcall`.
//!
//! # The format of `default.json`
//!
//! ```json
//! {
//!   "about": "free text",
//!   "defaultAction": "SCMP_ACT_ERRNO",
//!   "defaultErrnoRet": 1,
//!   "architectures": { "SCMP_ARCH_X86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"] },
//!   "groups": [ { "why": "...", "syscalls": ["read", "write"] } ]
//! }
//! ```
//!
//! - `architectures` maps the native architecture of the machine running the
//!   container to the architectures the filter covers (the native one and
//!   the compatibility modes its CPU can run). A native architecture missing
//!   from the map gets a filter for itself alone.
//! - Each entry of `groups` is a set of syscalls with one treatment:
//!   - `why` (required): the reason, for readers.
//!   - `syscalls` (required): names as libseccomp spells them; names a given
//!     libseccomp or architecture does not know are skipped when the filter
//!     is built.
//!   - `action` (default `SCMP_ACT_ALLOW`) and `errnoRet`: as in OCI.
//!   - `args`: OCI argument conditions (`index`, `value`, `valueTwo`, `op`),
//!     all of which must hold.
//!   - `argsAnyOf`: a list of such condition lists; the syscall is allowed if
//!     any one list holds. Each becomes its own OCI rule.
//!   - `ifAnyCap`: the group applies only if the container has at least one
//!     of these capabilities (`CAP_*` names).
//!   - `unlessAnyCap`: the group applies only if the container has none of
//!     these capabilities.
//!   - `arch` / `notArch`: the group applies only when the native
//!     architecture is (is not) one of these.
//!   - `minKernel`: `"major.minor"`; the group applies only on that kernel or
//!     newer.
//!
//! Rendering keeps the applicable groups and merges those with the same
//! action, errno and conditions into one OCI rule, in file order, without
//! repeating a name.

use std::collections::BTreeMap;
use std::str::FromStr;

use caps::Capability;
use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSyscall};
use serde::Deserialize;
use tracing::debug;

use super::{Error, Result, arch_name};

/// The profile data, compiled into the binary.
const DEFAULT_JSON: &str = include_str!("default.json");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProfileData {
    #[allow(dead_code, reason = "documentation inside the data")]
    about: String,
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    architectures: BTreeMap<String, Vec<Arch>>,
    groups: Vec<Group>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Group {
    #[allow(dead_code, reason = "documentation inside the data")]
    why: String,
    syscalls: Vec<String>,
    #[serde(default = "allow")]
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<LinuxSeccompArg>,
    #[serde(default)]
    args_any_of: Vec<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    if_any_cap: Vec<String>,
    #[serde(default)]
    unless_any_cap: Vec<String>,
    #[serde(default)]
    arch: Vec<Arch>,
    #[serde(default)]
    not_arch: Vec<Arch>,
    min_kernel: Option<String>,
}

fn allow() -> LinuxSeccompAction {
    LinuxSeccompAction::ScmpActAllow
}

/// A kernel version as far as the profile cares: major and minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    /// Major version (6 in 6.1.0).
    pub major: u32,
    /// Minor version (1 in 6.1.0).
    pub minor: u32,
}

impl KernelVersion {
    /// The running kernel's version, from `uname(2)`. A release string that
    /// does not start with `major.minor` counts as 0.0, so that no
    /// version-gated relaxation applies.
    pub fn current() -> KernelVersion {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        KernelVersion::parse(&release).unwrap_or_else(|| {
            debug!(release = %release, "cannot parse the kernel release; assuming 0.0");
            KernelVersion { major: 0, minor: 0 }
        })
    }

    /// Parse the leading `major.minor` of a release string like `6.1.0-18-amd64`.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(KernelVersion { major, minor })
    }
}

/// Render the default profile for a container with capabilities `caps` (its
/// bounding set, as in `process.capabilities.bounding`) running on a machine
/// whose native architecture is `arch` (usually [`super::native_arch`]),
/// for the running kernel.
pub fn default_profile(
    caps: impl IntoIterator<Item = Capability>,
    arch: Arch,
) -> Result<LinuxSeccomp> {
    default_profile_for_kernel(caps, arch, KernelVersion::current())
}

/// [`default_profile`] for a given kernel version.
pub fn default_profile_for_kernel(
    caps: impl IntoIterator<Item = Capability>,
    arch: Arch,
    kernel: KernelVersion,
) -> Result<LinuxSeccomp> {
    let data = parse_data()?;
    let caps: Vec<Capability> = caps.into_iter().collect();

    let architectures = data
        .architectures
        .iter()
        .find(|(native, _)| **native == arch_name(arch))
        .map_or_else(|| vec![arch], |(_, list)| list.clone());

    // (action, errnoRet, args) -> names, in file order.
    let mut rules: Vec<LinuxSyscall> = Vec::new();
    for group in &data.groups {
        if !applies(group, &caps, arch, kernel)? {
            continue;
        }
        let alternatives: Vec<Option<Vec<LinuxSeccompArg>>> = if group.args_any_of.is_empty() {
            vec![(!group.args.is_empty()).then(|| group.args.clone())]
        } else {
            group
                .args_any_of
                .iter()
                .map(|set| {
                    let mut all = group.args.clone();
                    all.extend(set.iter().copied());
                    Some(all)
                })
                .collect()
        };
        for args in alternatives {
            let existing = rules.iter_mut().find(|r| {
                r.action() == group.action && r.errno_ret() == group.errno_ret && *r.args() == args
            });
            let rule = if let Some(rule) = existing {
                rule
            } else {
                let mut rule = LinuxSyscall::default();
                rule.set_action(group.action)
                    .set_errno_ret(group.errno_ret)
                    .set_args(args)
                    .set_names(Vec::new());
                rules.push(rule);
                rules.last_mut().expect("a rule was just pushed")
            };
            let mut names = rule.names().clone();
            for name in &group.syscalls {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
            rule.set_names(names);
        }
    }

    let mut profile = LinuxSeccomp::default();
    profile
        .set_default_action(data.default_action)
        .set_default_errno_ret(data.default_errno_ret)
        .set_architectures(Some(architectures))
        .set_syscalls(Some(rules));
    Ok(profile)
}

fn parse_data() -> Result<ProfileData> {
    serde_json::from_str(DEFAULT_JSON).map_err(|e| Error::Profile(format!("default.json: {e}")))
}

fn applies(group: &Group, caps: &[Capability], arch: Arch, kernel: KernelVersion) -> Result<bool> {
    let has_any = |names: &[String]| -> Result<bool> {
        let mut found = false;
        for name in names {
            let cap = Capability::from_str(name).map_err(|_| {
                Error::Profile(format!(
                    "group {:?}: unknown capability {name}",
                    group.syscalls
                ))
            })?;
            found |= caps.contains(&cap);
        }
        Ok(found)
    };
    if !group.if_any_cap.is_empty() && !has_any(&group.if_any_cap)? {
        return Ok(false);
    }
    if has_any(&group.unless_any_cap)? {
        return Ok(false);
    }
    if !group.arch.is_empty() && !group.arch.contains(&arch) {
        return Ok(false);
    }
    if group.not_arch.contains(&arch) {
        return Ok(false);
    }
    if let Some(min) = &group.min_kernel {
        let min = KernelVersion::parse(min).ok_or_else(|| {
            Error::Profile(format!("group {:?}: bad minKernel {min:?}", group.syscalls))
        })?;
        if kernel < min {
            return Ok(false);
        }
    }
    Ok(true)
}
