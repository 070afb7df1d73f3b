//! Seccomp for containers: the OCI `linux.seccomp` object turned into a kernel
//! filter, loading that filter, handing a user-notification listener to a
//! seccomp agent, and Vessel's default profile.
//!
//! The steps, each a separate call so the runtime can place them where they
//! belong:
//!
//! 1. [`build_filter`] translates the configuration into libseccomp rules. It
//!    needs no privilege and touches no kernel state, so the runtime can run it
//!    before it creates the container, and report a bad profile early.
//! 2. [`Filter::compile`] produces the BPF program ([`Program`]). Syscalls
//!    numbered above every syscall the profile names return `ENOSYS` instead of
//!    the default errno when the default action is `SCMP_ACT_ERRNO`, so a C
//!    library that probes a syscall newer than the profile falls back to an
//!    older one instead of failing with `EPERM` (runc does the same).
//! 3. [`load`] installs the program in the calling thread (all threads with
//!    `SECCOMP_FILTER_FLAG_TSYNC`) with one `seccomp(2)` call and, when a rule
//!    uses `SCMP_ACT_NOTIFY`, returns the listener descriptor.
//! 4. [`send_listener_fd`] passes that descriptor to the agent listening on
//!    `listenerPath`, as the runtime specification describes.
//!
//! [`default_profile`] renders the default profile (the data in
//! `default.json`, format described in the `profile` submodule) for one
//! container's capabilities and architecture; the feature helpers
//! ([`features`] and the `supported_*` functions) answer `vessel-runtime
//! features`.
//!
//! This module does not decide when the filter is loaded. The caller must
//! either set `PR_SET_NO_NEW_PRIVS` first (when `process.noNewPrivileges` is
//! true) or still hold `CAP_SYS_ADMIN`, and should load as late as possible
//! (right before `execve`), because every syscall the runtime makes afterwards
//! is filtered too; the filter must allow `execve`. Nor does it own the
//! container state it sends to the agent: the caller passes it in.

mod bpf;
mod cache;
mod listener;
mod profile;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
    ScmpVersion,
};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use tracing::debug;

pub use bpf::{Program, load};
pub use cache::compile_cached;
pub use listener::send_listener_fd;
pub use profile::{KernelVersion, default_profile, default_profile_for_kernel};

/// Everything that can go wrong in this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The default action cannot be used as a default.
    #[error("seccomp defaultAction {action}: {reason}")]
    DefaultAction {
        /// The action as written in the configuration.
        action: String,
        /// What is wrong with it.
        reason: String,
    },
    /// libseccomp refused to create the filter.
    #[error("cannot create a seccomp filter with default action {action}")]
    Init {
        /// The default action.
        action: String,
        /// libseccomp's error.
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// libseccomp on this system does not know an architecture.
    #[error("seccomp architecture {arch} is not supported by libseccomp {version}")]
    Arch {
        /// The architecture as written in the configuration.
        arch: String,
        /// libseccomp's version.
        version: String,
        /// libseccomp's error.
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// A rule is invalid (bad errnoRet, argument index, ...).
    #[error("seccomp rule for {syscalls}: {reason}")]
    Rule {
        /// The rule's syscall names, comma-separated.
        syscalls: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A rule lists no syscall names.
    #[error("seccomp rule {index} lists no syscall names")]
    NoNames {
        /// Position of the rule in `syscalls`.
        index: usize,
    },
    /// libseccomp refused a rule.
    #[error("syscall {syscall}: cannot add a {action} rule{conditions}")]
    AddRule {
        /// The syscall name.
        syscall: String,
        /// The action.
        action: String,
        /// The conditions, formatted, or empty.
        conditions: String,
        /// libseccomp's error.
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// libseccomp refused a filter attribute.
    #[error("cannot set seccomp filter attribute {attr}")]
    Attr {
        /// The attribute.
        attr: &'static str,
        /// libseccomp's error.
        #[source]
        source: libseccomp::error::SeccompError,
    },
    /// libseccomp could not produce the BPF program.
    #[error("cannot export the seccomp filter as BPF")]
    Export(#[source] libseccomp::error::SeccompError),
    /// Reading the exported program back failed.
    #[error("cannot read the exported seccomp program")]
    ExportIo(#[source] std::io::Error),
    /// The program is longer than the kernel accepts.
    #[error("seccomp program has {len} instructions, more than the kernel's limit of {max}")]
    TooLong {
        /// The program's length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// The kernel refused the filter.
    #[error("cannot load the seccomp filter (flags {flags:#x})")]
    Load {
        /// The `seccomp(2)` flags used.
        flags: u64,
        /// The kernel's error.
        #[source]
        source: std::io::Error,
    },
    /// `SECCOMP_FILTER_FLAG_TSYNC` failed because a thread has a diverging filter.
    #[error("seccomp filter not loaded: thread {tid} cannot be synchronised")]
    Tsync {
        /// The thread that could not be synchronised.
        tid: i64,
    },
    /// Talking to the seccomp agent failed.
    #[error("seccomp listener {path}: {what}")]
    Listener {
        /// The agent's socket.
        path: std::path::PathBuf,
        /// What failed.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The container state given for the agent has no pid.
    #[error("seccomp listener {path}: the container state has no pid")]
    ListenerNoPid {
        /// The agent's socket.
        path: std::path::PathBuf,
    },
    /// The container process state could not be serialised.
    #[error("cannot serialise the container process state for the seccomp agent")]
    State(#[source] serde_json::Error),
    /// The default profile's data is invalid (a bug caught by the tests).
    #[error("default seccomp profile: {0}")]
    Profile(String),
}

/// This module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `seccomp(2)` filter flags, from `<linux/seccomp.h>` (kept as `u64`
/// whatever the width of `unsigned long`).
mod flag {
    pub const TSYNC: u64 = 1 << 0;
    pub const LOG: u64 = 1 << 1;
    pub const SPEC_ALLOW: u64 = 1 << 2;
    pub const NEW_LISTENER: u64 = 1 << 3;
    pub const TSYNC_ESRCH: u64 = 1 << 4;
    pub const WAIT_KILLABLE_RECV: u64 = 1 << 5;
}

/// The errno of `SCMP_ACT_ERRNO` and `SCMP_ACT_TRACE` when `errnoRet` is absent.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;
/// The kernel clamps errno values above this (`MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;

/// A translated seccomp configuration, ready to be compiled and loaded.
pub struct Filter {
    ctx: ScmpFilterContext,
    default_action: ScmpAction,
    /// `seccomp(2)` flags from the configuration (without `NEW_LISTENER`).
    flags: u64,
    /// Whether any rule uses `SCMP_ACT_NOTIFY`.
    notify: bool,
    /// Highest syscall number named by any rule, per architecture in the filter.
    max_syscall: BTreeMap<ArchKey, i32>,
    rules: Vec<AddedRule>,
    skipped: Vec<SkippedRule>,
}

/// One rule as it was handed to libseccomp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedRule {
    /// The syscall name.
    pub syscall: String,
    /// The action.
    pub action: ScmpAction,
    /// The conditions, all of which must hold.
    pub conditions: Vec<ScmpArgCompare>,
}

/// A syscall of the configuration that is not in the filter, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRule {
    /// The syscall name.
    pub syscall: String,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// Why a syscall of the configuration is not in the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// libseccomp on this system does not know the name.
    UnknownSyscall,
    /// The rule's action is the default action, so the rule changes nothing.
    DefaultAction,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("default_action", &self.default_action)
            .field("flags", &self.flags)
            .field("notify", &self.notify)
            .field("rules", &self.rules.len())
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

impl Filter {
    /// The libseccomp filter context (for inspection or export).
    pub fn context(&self) -> &ScmpFilterContext {
        &self.ctx
    }

    /// The default action.
    pub fn default_action(&self) -> ScmpAction {
        self.default_action
    }

    /// Whether a rule uses `SCMP_ACT_NOTIFY`, so that [`load`] returns a
    /// listener descriptor that must go to `listenerPath`.
    pub fn uses_notify(&self) -> bool {
        self.notify
    }

    /// The rules handed to libseccomp, in order.
    pub fn rules(&self) -> &[AddedRule] {
        &self.rules
    }

    /// The syscalls of the configuration left out of the filter.
    pub fn skipped(&self) -> &[SkippedRule] {
        &self.skipped
    }

    /// Produce the BPF program for [`load`].
    pub fn compile(&self) -> Result<Program> {
        bpf::compile(self)
    }
}

/// Translate an OCI seccomp configuration into a libseccomp filter.
///
/// Semantics follow runc, which is what profiles written for Docker expect:
/// - `SCMP_ACT_KILL` is `SCMP_ACT_KILL_THREAD`; `SCMP_ACT_ERRNO` and
///   `SCMP_ACT_TRACE` default to `EPERM` (1) without `errnoRet`, and any other
///   action with an `errnoRet` is an error.
/// - A rule's conditions are ANDed, except when two of them test the same
///   argument index, which libseccomp cannot express: then each condition
///   becomes a rule of its own (OR).
/// - For `SCMP_CMP_MASKED_EQ`, `value` is the mask and `valueTwo` the value
///   the masked argument must equal.
/// - A name libseccomp does not know on this system is skipped (tracing debug
///   event), as is a rule whose action equals the default action.
/// - When a syscall gets two rules without conditions, libseccomp keeps the
///   first and ignores the second, as it does under runc.
/// - On architectures with multiplexed calls (32-bit x86's `socketcall` and
///   `ipc`), libseccomp also adds the matching sub-call rules, as under runc.
/// - The filter does not set `no_new_privs` itself (`SCMP_FLTATR_CTL_NNP` is
///   off): that follows `process.noNewPrivileges` and is the caller's job.
/// - The native architecture is always in the filter; `architectures` adds
///   to it.
pub fn build_filter(cfg: &LinuxSeccomp) -> Result<Filter> {
    let default_action =
        translate_action(cfg.default_action(), cfg.default_errno_ret()).map_err(|reason| {
            Error::DefaultAction {
                action: action_name(cfg.default_action()),
                reason,
            }
        })?;
    if default_action == ScmpAction::Notify {
        return Err(Error::DefaultAction {
            action: action_name(cfg.default_action()),
            reason: "SCMP_ACT_NOTIFY cannot be the default action".to_owned(),
        });
    }
    let mut ctx = ScmpFilterContext::new(default_action).map_err(|source| Error::Init {
        action: action_name(cfg.default_action()),
        source,
    })?;
    ctx.set_ctl_nnp(false).map_err(|source| Error::Attr {
        attr: "SCMP_FLTATR_CTL_NNP",
        source,
    })?;

    let mut arches = vec![ArchKey::native()];
    for &arch in cfg.architectures().iter().flatten() {
        if arch == Arch::ScmpArchNative {
            continue;
        }
        let scmp = scmp_arch(arch);
        ctx.add_arch(scmp).map_err(|source| Error::Arch {
            arch: arch_name(arch),
            version: libseccomp_version(),
            source,
        })?;
        let key = ArchKey(scmp);
        if !arches.contains(&key) {
            arches.push(key);
        }
    }

    let mut flags = 0;
    for flag in cfg.flags().iter().flatten() {
        flags |= kernel_flag(*flag);
    }

    let mut filter = Filter {
        ctx,
        default_action,
        flags,
        notify: false,
        max_syscall: BTreeMap::new(),
        rules: Vec::new(),
        skipped: Vec::new(),
    };
    for (index, rule) in cfg.syscalls().iter().flatten().enumerate() {
        add_rule(&mut filter, &arches, index, rule)?;
    }

    if !filter.notify && filter.flags & flag::WAIT_KILLABLE_RECV != 0 {
        debug!(
            "seccomp: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV dropped: no rule uses SCMP_ACT_NOTIFY"
        );
        filter.flags &= !flag::WAIT_KILLABLE_RECV;
    }
    Ok(filter)
}

/// Build and compile in one step: what a runtime usually wants.
pub fn compile(cfg: &LinuxSeccomp) -> Result<Program> {
    build_filter(cfg)?.compile()
}

fn add_rule(
    filter: &mut Filter,
    arches: &[ArchKey],
    index: usize,
    rule: &LinuxSyscall,
) -> Result<()> {
    if rule.names().is_empty() {
        return Err(Error::NoNames { index });
    }
    let rule_error = |reason: String| Error::Rule {
        syscalls: rule.names().join(","),
        reason,
    };
    let action = translate_action(rule.action(), rule.errno_ret()).map_err(rule_error)?;
    let args = rule.args().as_deref().unwrap_or_default();
    let conditions = args
        .iter()
        .map(translate_arg)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(rule_error)?;
    // libseccomp cannot AND two conditions on the same argument: like runc,
    // make each condition a rule of its own then (they are ORed).
    let same_index = args
        .iter()
        .enumerate()
        .any(|(i, a)| args[..i].iter().any(|b| b.index() == a.index()));
    let condition_sets: Vec<Vec<ScmpArgCompare>> = if same_index {
        conditions.iter().map(|c| vec![*c]).collect()
    } else {
        vec![conditions]
    };

    for name in rule.names() {
        if action == filter.default_action {
            debug!(syscall = %name, action = ?action, "seccomp rule has the default action: skipped");
            filter.skipped.push(SkippedRule {
                syscall: name.clone(),
                reason: SkipReason::DefaultAction,
            });
            continue;
        }
        let Ok(syscall) = ScmpSyscall::from_name(name) else {
            debug!(syscall = %name, "syscall unknown to libseccomp {}: skipped", libseccomp_version());
            filter.skipped.push(SkippedRule {
                syscall: name.clone(),
                reason: SkipReason::UnknownSyscall,
            });
            continue;
        };
        for set in &condition_sets {
            filter
                .ctx
                .add_rule_conditional(action, syscall, set)
                .map_err(|source| Error::AddRule {
                    syscall: name.clone(),
                    action: action_name(rule.action()),
                    conditions: describe_conditions(args),
                    source,
                })?;
            filter.rules.push(AddedRule {
                syscall: name.clone(),
                action,
                conditions: set.clone(),
            });
        }
        if action == ScmpAction::Notify {
            filter.notify = true;
        }
        for &arch in arches {
            if let Ok(nr) = ScmpSyscall::from_name_by_arch(name, arch.0) {
                let nr = nr.as_raw_syscall();
                if nr >= 0 {
                    let max = filter.max_syscall.entry(arch).or_insert(nr);
                    *max = (*max).max(nr);
                }
            }
        }
    }
    Ok(())
}

/// Translate an OCI action with its optional `errnoRet`; the error is a reason.
fn translate_action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
) -> std::result::Result<ScmpAction, String> {
    let no_errno = |scmp: ScmpAction| match errno_ret {
        None => Ok(scmp),
        Some(v) => Err(format!(
            "errnoRet {v} is not allowed with {}: only SCMP_ACT_ERRNO and SCMP_ACT_TRACE take one",
            action_name(action)
        )),
    };
    match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            no_errno(ScmpAction::KillThread)
        }
        LinuxSeccompAction::ScmpActKillProcess => no_errno(ScmpAction::KillProcess),
        LinuxSeccompAction::ScmpActTrap => no_errno(ScmpAction::Trap),
        LinuxSeccompAction::ScmpActAllow => no_errno(ScmpAction::Allow),
        LinuxSeccompAction::ScmpActLog => no_errno(ScmpAction::Log),
        LinuxSeccompAction::ScmpActNotify => no_errno(ScmpAction::Notify),
        LinuxSeccompAction::ScmpActErrno => {
            let errno = errno_ret.unwrap_or(DEFAULT_ERRNO);
            if errno > MAX_ERRNO {
                return Err(format!(
                    "errnoRet {errno} is out of range for SCMP_ACT_ERRNO (0 to {MAX_ERRNO})"
                ));
            }
            Ok(ScmpAction::Errno(errno as i32))
        }
        LinuxSeccompAction::ScmpActTrace => {
            let msg = errno_ret.unwrap_or(DEFAULT_ERRNO);
            let msg = u16::try_from(msg).map_err(|_| {
                format!("errnoRet {msg} is out of range for SCMP_ACT_TRACE (0 to 65535)")
            })?;
            Ok(ScmpAction::Trace(msg))
        }
    }
}

/// Translate one argument condition; the error is a reason.
fn translate_arg(arg: &LinuxSeccompArg) -> std::result::Result<ScmpArgCompare, String> {
    let index = u32::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| {
            format!(
                "argument index {} is out of range (syscalls have arguments 0 to 5)",
                arg.index()
            )
        })?;
    let (op, datum) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, arg.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            ScmpCompareOp::MaskedEqual(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    Ok(ScmpArgCompare::new(index, op, datum))
}

fn describe_conditions(args: &[LinuxSeccompArg]) -> String {
    if args.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = args
        .iter()
        .map(|a| {
            let op = operator_name(a.op());
            match a.value_two() {
                Some(two) => format!("arg{} {op} {:#x} {:#x}", a.index(), a.value(), two),
                None => format!("arg{} {op} {:#x}", a.index(), a.value()),
            }
        })
        .collect();
    format!(" with {}", parts.join(", "))
}

fn kernel_flag(oci: LinuxSeccompFilterFlag) -> u64 {
    match oci {
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => flag::LOG,
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => flag::TSYNC,
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => flag::SPEC_ALLOW,
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => flag::WAIT_KILLABLE_RECV,
    }
}

/// A libseccomp architecture, resolved (never `Native`), usable as a map key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ArchKey(ScmpArch);

impl ArchKey {
    fn native() -> Self {
        ArchKey(ScmpArch::native())
    }

    /// The kernel's `AUDIT_ARCH_*` value for this architecture, and whether
    /// its syscall numbers carry the x32 bit.
    fn audit(self) -> Option<(u32, bool)> {
        let oci = oci_arch(self.0)?;
        if oci == Arch::ScmpArchX32 {
            return Some((Arch::ScmpArchX86_64 as u32, true));
        }
        // libseccomp's architecture tokens are the kernel's AUDIT_ARCH_*
        // values (x32 aside), and the OCI enum carries the same numbers.
        Some((oci as u32, false))
    }
}

impl PartialOrd for ArchKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ArchKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let token = |a: ArchKey| oci_arch(a.0).map_or(0, |a| a as u32);
        token(*self).cmp(&token(*other))
    }
}

/// The OCI architecture names with their libseccomp counterparts.
const ARCHES: &[(Arch, ScmpArch)] = &[
    (Arch::ScmpArchNative, ScmpArch::Native),
    (Arch::ScmpArchX86, ScmpArch::X86),
    (Arch::ScmpArchX86_64, ScmpArch::X8664),
    (Arch::ScmpArchX32, ScmpArch::X32),
    (Arch::ScmpArchArm, ScmpArch::Arm),
    (Arch::ScmpArchAarch64, ScmpArch::Aarch64),
    (Arch::ScmpArchMips, ScmpArch::Mips),
    (Arch::ScmpArchMips64, ScmpArch::Mips64),
    (Arch::ScmpArchMips64n32, ScmpArch::Mips64N32),
    (Arch::ScmpArchMipsel, ScmpArch::Mipsel),
    (Arch::ScmpArchMipsel64, ScmpArch::Mipsel64),
    (Arch::ScmpArchMipsel64n32, ScmpArch::Mipsel64N32),
    (Arch::ScmpArchPpc, ScmpArch::Ppc),
    (Arch::ScmpArchPpc64, ScmpArch::Ppc64),
    (Arch::ScmpArchPpc64le, ScmpArch::Ppc64Le),
    (Arch::ScmpArchS390, ScmpArch::S390),
    (Arch::ScmpArchS390x, ScmpArch::S390X),
    (Arch::ScmpArchParisc, ScmpArch::Parisc),
    (Arch::ScmpArchParisc64, ScmpArch::Parisc64),
    (Arch::ScmpArchRiscv64, ScmpArch::Riscv64),
    (Arch::ScmpArchLoongarch64, ScmpArch::Loongarch64),
    (Arch::ScmpArchM68k, ScmpArch::M68k),
    (Arch::ScmpArchSh, ScmpArch::Sh),
    (Arch::ScmpArchSheb, ScmpArch::Sheb),
];

fn scmp_arch(arch: Arch) -> ScmpArch {
    ARCHES
        .iter()
        .find(|(a, _)| *a == arch)
        .map_or(ScmpArch::Native, |(_, s)| *s)
}

fn oci_arch(arch: ScmpArch) -> Option<Arch> {
    let arch = if arch == ScmpArch::Native {
        ScmpArch::native()
    } else {
        arch
    };
    ARCHES.iter().find(|(_, s)| *s == arch).map(|(a, _)| *a)
}

/// The OCI spelling of an architecture (`SCMP_ARCH_X86_64`).
pub fn arch_name(arch: Arch) -> String {
    enum_name(&arch)
}

/// The OCI spelling of an action (`SCMP_ACT_ERRNO`).
pub fn action_name(action: LinuxSeccompAction) -> String {
    enum_name(&action)
}

/// The OCI spelling of an operator (`SCMP_CMP_MASKED_EQ`).
pub fn operator_name(op: LinuxSeccompOperator) -> String {
    enum_name(&op)
}

/// The OCI spelling of a filter flag (`SECCOMP_FILTER_FLAG_TSYNC`).
pub fn flag_name(flag: LinuxSeccompFilterFlag) -> String {
    enum_name(&flag)
}

/// The JSON spelling of a unit enum variant.
fn enum_name<T: serde::Serialize + fmt::Debug>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{value:?}"),
    }
}

/// The native architecture in OCI terms (`SCMP_ARCH_X86_64` on x86-64).
pub fn native_arch() -> Arch {
    oci_arch(ScmpArch::native()).unwrap_or(Arch::ScmpArchNative)
}

/// libseccomp's version, e.g. `2.5.4`.
pub fn libseccomp_version() -> String {
    ScmpVersion::current().map_or_else(
        |_| "unknown".to_owned(),
        |v| format!("{}.{}.{}", v.major, v.minor, v.micro),
    )
}

/// Every action the translator accepts.
pub fn supported_actions() -> Vec<LinuxSeccompAction> {
    vec![
        LinuxSeccompAction::ScmpActAllow,
        LinuxSeccompAction::ScmpActErrno,
        LinuxSeccompAction::ScmpActKill,
        LinuxSeccompAction::ScmpActKillProcess,
        LinuxSeccompAction::ScmpActKillThread,
        LinuxSeccompAction::ScmpActLog,
        LinuxSeccompAction::ScmpActNotify,
        LinuxSeccompAction::ScmpActTrace,
        LinuxSeccompAction::ScmpActTrap,
    ]
}

/// Every argument operator the translator accepts.
pub fn supported_operators() -> Vec<LinuxSeccompOperator> {
    vec![
        LinuxSeccompOperator::ScmpCmpEq,
        LinuxSeccompOperator::ScmpCmpGe,
        LinuxSeccompOperator::ScmpCmpGt,
        LinuxSeccompOperator::ScmpCmpLe,
        LinuxSeccompOperator::ScmpCmpLt,
        LinuxSeccompOperator::ScmpCmpMaskedEq,
        LinuxSeccompOperator::ScmpCmpNe,
    ]
}

/// The architectures libseccomp on this system can put in a filter.
pub fn supported_architectures() -> Vec<Arch> {
    let Ok(mut ctx) = ScmpFilterContext::new(ScmpAction::Allow) else {
        return Vec::new();
    };
    ARCHES
        .iter()
        .filter(|(arch, _)| *arch != Arch::ScmpArchNative)
        .filter(|(_, scmp)| ctx.add_arch(*scmp).is_ok())
        .map(|(arch, _)| *arch)
        .collect()
}

/// Every filter flag the translator knows.
pub fn known_flags() -> Vec<LinuxSeccompFilterFlag> {
    vec![
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync,
        LinuxSeccompFilterFlag::SeccompFilterFlagLog,
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv,
    ]
}

/// The filter flags the running kernel accepts (we load the program with
/// `seccomp(2)` ourselves, so libseccomp's version does not limit them).
pub fn supported_flags() -> Vec<LinuxSeccompFilterFlag> {
    known_flags()
        .into_iter()
        .filter(|f| {
            let mut flags = kernel_flag(*f);
            if flags == flag::WAIT_KILLABLE_RECV {
                // Only valid together with a listener.
                flags |= flag::NEW_LISTENER;
            }
            bpf::kernel_accepts_flags(flags)
        })
        .collect()
}

/// The `linux.seccomp` object of `vessel-runtime features`.
pub fn features() -> oci_spec::runtime::Seccomp {
    let mut seccomp = oci_spec::runtime::Seccomp::default();
    seccomp
        .set_enabled(Some(true))
        .set_actions(Some(supported_actions()))
        .set_operators(Some(
            supported_operators()
                .into_iter()
                .map(operator_name)
                .collect(),
        ))
        .set_archs(Some(supported_architectures()))
        .set_known_flags(Some(known_flags().into_iter().map(flag_name).collect()))
        .set_supported_flags(Some(supported_flags().into_iter().map(flag_name).collect()));
    seccomp
}
