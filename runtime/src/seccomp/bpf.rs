//! The BPF program: libseccomp's export, an `ENOSYS` prefix for syscalls
//! newer than the profile, and the `seccomp(2)` call that installs it.
//!
//! We load the program ourselves instead of through `seccomp_load` for three
//! reasons: the prefix (libseccomp cannot express "every syscall above N"),
//! flags that the installed libseccomp may not know
//! (`SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` needs libseccomp 2.6), and the
//! notification listener, which `seccomp(2)` returns to us as a descriptor we
//! own, instead of one kept in libseccomp's global state.

use std::io::{Read, Seek};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use super::{ArchKey, Error, Filter, Result, flag};

/// The kernel's limit on the length of a seccomp program (`BPF_MAXINSNS`).
pub(super) const MAX_INSNS: usize = 4096;

/// `seccomp_data.nr` and `seccomp_data.arch` offsets.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// The bit that marks an x32 syscall number on x86-64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// A compiled seccomp program, ready for [`load`]. Building it allocates and
/// talks to libseccomp; loading it is a single syscall.
#[derive(Clone)]
pub struct Program {
    insns: Vec<libc::sock_filter>,
    flags: u64,
    listener: bool,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("instructions", &self.insns.len())
            .field("flags", &self.flags)
            .field("listener", &self.listener)
            .finish()
    }
}

impl Program {
    /// A program from its parts (the on-disk cache).
    pub(crate) fn from_parts(insns: Vec<libc::sock_filter>, flags: u64, listener: bool) -> Program {
        Program {
            insns,
            flags,
            listener,
        }
    }

    /// The filter's own flags, before the listener's are added.
    pub(crate) fn base_flags(&self) -> u64 {
        self.flags
    }

    /// Number of BPF instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Whether the program is empty (never true for a compiled filter).
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// The instructions, prefix included.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.insns
    }

    /// Whether [`load`] will return a notification listener.
    pub fn wants_listener(&self) -> bool {
        self.listener
    }

    /// The `seccomp(2)` flags [`load`] will use.
    pub fn flags(&self) -> u64 {
        let mut flags = self.flags;
        if self.listener {
            flags |= flag::NEW_LISTENER;
            if flags & flag::TSYNC != 0 {
                // The kernel refuses TSYNC with a listener unless a failed
                // synchronisation is reported as ESRCH instead of a thread id.
                flags |= flag::TSYNC_ESRCH;
            }
        }
        flags
    }
}

/// Install `program` in the calling thread (in every thread of the process
/// with `SECCOMP_FILTER_FLAG_TSYNC`).
///
/// The caller must have set `PR_SET_NO_NEW_PRIVS` or hold `CAP_SYS_ADMIN`,
/// otherwise the kernel answers `EACCES`. Returns the notification listener
/// when the filter has `SCMP_ACT_NOTIFY` rules; it is close-on-exec.
pub fn load(program: &Program) -> Result<Option<OwnedFd>> {
    let flags = program.flags();
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.insns.len()).map_err(|_| Error::TooLong {
            len: program.insns.len(),
            max: MAX_INSNS,
        })?,
        filter: program.insns.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `program.insns`, which lives for the whole
    // call and holds `fprog.len` instructions; the kernel copies the program
    // and keeps no pointer to our memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags as libc::c_ulong,
            &raw const fprog,
        )
    };
    if rc < 0 {
        return Err(Error::Load {
            flags,
            source: std::io::Error::last_os_error(),
        });
    }
    if program.listener {
        let fd = RawFd::try_from(rc).map_err(|_| Error::Load {
            flags,
            source: std::io::Error::other(format!("seccomp(2) returned {rc}, not a descriptor")),
        })?;
        // SAFETY: with SECCOMP_FILTER_FLAG_NEW_LISTENER a successful
        // seccomp(2) returns a new descriptor that nothing else owns.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    if rc > 0 {
        // Without TSYNC_ESRCH a failed TSYNC returns the offending thread.
        return Err(Error::Tsync { tid: rc });
    }
    Ok(None)
}

/// Whether the running kernel knows every bit of `flags` for
/// `SECCOMP_SET_MODE_FILTER`.
pub(super) fn kernel_accepts_flags(flags: u64) -> bool {
    // SAFETY: the program pointer is NULL: the kernel checks the flags, then
    // fails to copy the program (EFAULT) before installing anything. EINVAL
    // means it does not know a flag.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags as libc::c_ulong,
            std::ptr::null::<libc::sock_fprog>(),
        )
    };
    rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EFAULT)
}

/// Export the filter from libseccomp and put the prefix in front of it.
pub(super) fn compile(filter: &Filter) -> Result<Program> {
    let body = export(filter)?;
    let mut insns = if matches!(filter.default_action, libseccomp::ScmpAction::Errno(_)) {
        enosys_prefix(&filter.max_syscall)
    } else {
        Vec::new()
    };
    insns.extend(body);
    if insns.len() > MAX_INSNS {
        return Err(Error::TooLong {
            len: insns.len(),
            max: MAX_INSNS,
        });
    }
    Ok(Program {
        insns,
        flags: filter.flags,
        listener: filter.notify,
    })
}

/// libseccomp's program, read back through a memory file (the in-memory
/// export needs libseccomp 2.6).
fn export(filter: &Filter) -> Result<Vec<libc::sock_filter>> {
    let file =
        nix::sys::memfd::memfd_create(c"vessel-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| Error::ExportIo(e.into()))?;
    let mut file = std::fs::File::from(file);
    filter.ctx.export_bpf(&file).map_err(Error::Export)?;
    file.rewind().map_err(Error::ExportIo)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(Error::ExportIo)?;
    let size = std::mem::size_of::<libc::sock_filter>();
    if bytes.len() % size != 0 {
        return Err(Error::ExportIo(std::io::Error::other(format!(
            "exported program is {} bytes, not a multiple of {size}",
            bytes.len()
        ))));
    }
    Ok(bytes
        .chunks_exact(size)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Where a jump goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Label {
    /// The first instruction of an architecture's block.
    Block(usize),
    /// The x32 half of the x86-64 block.
    X32(usize),
    /// The shared `return ENOSYS`.
    Enosys,
    /// The first instruction of libseccomp's program.
    Filter,
}

/// One prefix instruction before jump targets are resolved.
enum Op {
    Load(u32),
    /// Jump to the label if the accumulator equals k, else fall through.
    JumpIfEq(u32, Label),
    /// Jump to the label if the accumulator is greater than k.
    JumpIfGreater(u32, Label),
    /// Jump to the label if the accumulator has any bit of k.
    JumpIfSet(u32, Label),
    Jump(Label),
    Place(Label),
    ReturnEnosys,
}

/// Per kernel architecture value: the highest syscall number the profile
/// names, for plain and (x86-64 only) x32 numbers.
#[derive(Default)]
struct Limits {
    plain: Option<u32>,
    x32: Option<u32>,
}

/// The prefix that answers `ENOSYS` for syscalls numbered above everything
/// the profile names, per architecture, and otherwise falls through into
/// libseccomp's program (which checks the architecture again itself).
///
/// ```text
///         ld  [arch]
///         jeq AUDIT_ARCH_A, block_a      ; one per architecture
///         ja  filter
/// block_a: ld  [nr]
///         jgt MAX_A, enosys
///         ja  filter
/// enosys: ret SECCOMP_RET_ERRNO | ENOSYS
/// filter: ...libseccomp's program...
/// ```
/// On x86-64 the block first tests the x32 bit and compares x32 numbers
/// against the x32 maximum.
fn enosys_prefix(max: &std::collections::BTreeMap<ArchKey, i32>) -> Vec<libc::sock_filter> {
    let mut by_audit: Vec<(u32, Limits)> = Vec::new();
    for (arch, &nr) in max {
        let (Some((audit, x32)), Ok(nr)) = (arch.audit(), u32::try_from(nr)) else {
            continue;
        };
        let pos = by_audit
            .iter()
            .position(|(a, _)| *a == audit)
            .unwrap_or_else(|| {
                by_audit.push((audit, Limits::default()));
                by_audit.len() - 1
            });
        let limits = &mut by_audit[pos].1;
        if x32 {
            limits.x32 = Some(nr);
        } else {
            limits.plain = Some(nr);
        }
    }
    if by_audit.is_empty() {
        return Vec::new();
    }

    let mut ops = vec![Op::Load(OFFSET_ARCH)];
    for (i, (audit, _)) in by_audit.iter().enumerate() {
        ops.push(Op::JumpIfEq(*audit, Label::Block(i)));
    }
    ops.push(Op::Jump(Label::Filter));
    for (i, (audit, limits)) in by_audit.iter().enumerate() {
        ops.push(Op::Place(Label::Block(i)));
        ops.push(Op::Load(OFFSET_NR));
        let x86_64 = *audit == oci_spec::runtime::Arch::ScmpArchX86_64 as u32;
        if x86_64 {
            ops.push(Op::JumpIfSet(X32_SYSCALL_BIT, Label::X32(i)));
        }
        if let Some(plain) = limits.plain {
            ops.push(Op::JumpIfGreater(plain, Label::Enosys));
        }
        ops.push(Op::Jump(Label::Filter));
        if x86_64 {
            ops.push(Op::Place(Label::X32(i)));
            if let Some(x32) = limits.x32 {
                ops.push(Op::JumpIfGreater(x32, Label::Enosys));
            }
            ops.push(Op::Jump(Label::Filter));
        }
    }
    ops.push(Op::Place(Label::Enosys));
    ops.push(Op::ReturnEnosys);
    ops.push(Op::Place(Label::Filter));
    assemble(&ops)
}

fn assemble(ops: &[Op]) -> Vec<libc::sock_filter> {
    // First pass: where each label lands.
    let mut labels: Vec<(Label, usize)> = Vec::new();
    let mut pc = 0;
    for op in ops {
        match op {
            Op::Place(label) => labels.push((*label, pc)),
            _ => pc += 1,
        }
    }
    let target = |label: Label| {
        labels
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, at)| *at)
            .expect("every jump target is placed by enosys_prefix")
    };
    let insn = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let mut out = Vec::with_capacity(pc);
    for op in ops {
        let next = out.len() + 1;
        // The prefix is a few dozen instructions, so every forward distance
        // fits the 8-bit conditional offsets.
        let offset = |label: Label| {
            u8::try_from(target(label) - next)
                .expect("the ENOSYS prefix is shorter than 256 instructions")
        };
        match op {
            Op::Place(_) => {}
            Op::Load(at) => out.push(insn(LD_W_ABS, 0, 0, *at)),
            Op::JumpIfEq(k, label) => out.push(insn(JEQ_K, offset(*label), 0, *k)),
            Op::JumpIfGreater(k, label) => out.push(insn(JGT_K, offset(*label), 0, *k)),
            Op::JumpIfSet(k, label) => out.push(insn(JSET_K, offset(*label), 0, *k)),
            Op::Jump(label) => out.push(insn(JA, 0, 0, u32::from(offset(*label)))),
            Op::ReturnEnosys => out.push(insn(
                RET_K,
                0,
                0,
                libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32),
            )),
        }
    }
    out
}
