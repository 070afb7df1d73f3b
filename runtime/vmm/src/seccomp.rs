//! Seccomp filters for the monitor's own threads.
//!
//! Owns a small classic-BPF allowlist, built here without libseccomp, and
//! its installation on the calling thread only (no `TSYNC`): the process
//! that embeds the monitor (a shim with its own threads) keeps its freedom,
//! while each vCPU thread and the device event loop lose everything they do
//! not need once the VM runs. vCPU threads may only issue `KVM_RUN` among
//! ioctls; nothing may open files, create sockets, fork or exec.

use std::io;

/// What a thread may do once filtered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: `KVM_RUN` and device emulation.
    Vcpu,
    /// The device event loop: epoll, eventfds, file and socket I/O.
    EventLoop,
}

/// How violations are handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// Kill the whole process on a forbidden system call.
    #[default]
    Enforce,
    /// Allow but log forbidden system calls to the kernel audit log.
    Log,
    /// No filter.
    Off,
}

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_LOG: u32 = 0x7ffc_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;

/// `KVM_RUN`: `_IO(0xae, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;

/// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG1_LOW: u32 = 16 + 8;

/// System calls every monitor thread needs: memory, locks, signals,
/// exiting, time, and I/O on descriptors it already holds.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    // Rust's standard library checks a descriptor with F_GETFD before
    // closing it in debug builds.
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_mmap,
    // glibc grows per-thread malloc arenas with mprotect.
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_getrandom,
];

/// Extra calls of the event loop: epoll, block I/O, the channel socket.
const EVENT_LOOP: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_lseek,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_setsockopt,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const SockFilter,
}

fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// The allowed system calls of `kind` (ioctl is handled separately).
pub fn allowed(kind: ThreadKind) -> Vec<libc::c_long> {
    let mut v = COMMON.to_vec();
    if kind == ThreadKind::EventLoop {
        v.extend_from_slice(EVENT_LOOP);
    }
    v
}

/// Build the filter program for `kind` with `default` as the action for
/// anything not allowed.
fn program(kind: ThreadKind, default: u32) -> Vec<SockFilter> {
    let calls = allowed(kind);
    let mut p = vec![
        stmt(BPF_LD_W_ABS, OFF_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, OFF_NR),
    ];
    // Layout after the checks: one JEQ per call jumping to ALLOW, then the
    // ioctl check (vCPU only), then the default, then ALLOW.
    let ioctl_insns = if kind == ThreadKind::Vcpu { 3 } else { 0 };
    let n = calls.len();
    for (i, nr) in calls.iter().enumerate() {
        // Distance to ALLOW: the remaining JEQs, the ioctl block, the default.
        let to_allow = (n - i - 1) + ioctl_insns + 1;
        p.push(jump(BPF_JEQ_K, *nr as u32, to_allow as u8, 0));
    }
    if kind == ThreadKind::Vcpu {
        // if nr == ioctl && arg1 == KVM_RUN: allow, else the default.
        p.push(jump(BPF_JEQ_K, libc::SYS_ioctl as u32, 0, 2));
        p.push(stmt(BPF_LD_W_ABS, OFF_ARG1_LOW));
        p.push(jump(BPF_JEQ_K, KVM_RUN as u32, 1, 0));
    }
    p.push(stmt(BPF_RET_K, default));
    p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
    p
}

/// Install the filter for `kind` on the calling thread.
pub fn apply(kind: ThreadKind, mode: SeccompMode) -> io::Result<()> {
    let default = match mode {
        SeccompMode::Off => return Ok(()),
        SeccompMode::Enforce => SECCOMP_RET_KILL_PROCESS,
        SeccompMode::Log => SECCOMP_RET_LOG,
    };
    let prog = program(kind, default);
    let fprog = SockFprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only and affects
    // the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fprog points at a valid program that outlives the call; flags
    // 0 installs it on the calling thread only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            0,
            &raw const fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny interpreter for the instructions `program` emits, to check the
    /// jump arithmetic without a kernel.
    fn eval(p: &[SockFilter], nr: u32, arch: u32, arg1: u32) -> u32 {
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            match i.code {
                BPF_LD_W_ABS => {
                    acc = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG1_LOW => arg1,
                        k => panic!("load at {k}"),
                    };
                    pc += 1;
                }
                BPF_JEQ_K => pc += 1 + usize::from(if acc == i.k { i.jt } else { i.jf }),
                BPF_RET_K => return i.k,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn vcpu_filter_allows_only_its_calls_and_kvm_run() {
        let p = program(ThreadKind::Vcpu, SECCOMP_RET_KILL_PROCESS);
        let a = AUDIT_ARCH_X86_64;
        for nr in allowed(ThreadKind::Vcpu) {
            assert_eq!(eval(&p, nr as u32, a, 0), SECCOMP_RET_ALLOW, "{nr}");
        }
        assert_eq!(
            eval(&p, libc::SYS_ioctl as u32, a, KVM_RUN as u32),
            SECCOMP_RET_ALLOW
        );
        assert_eq!(
            eval(&p, libc::SYS_ioctl as u32, a, 0x5401),
            SECCOMP_RET_KILL_PROCESS
        );
        for nr in [
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_socket,
            libc::SYS_clone,
            libc::SYS_epoll_ctl,
        ] {
            assert_eq!(eval(&p, nr as u32, a, 0), SECCOMP_RET_KILL_PROCESS, "{nr}");
        }
        assert_eq!(
            eval(&p, libc::SYS_read as u32, 0x4000_0003, 0),
            SECCOMP_RET_KILL_PROCESS
        );
    }

    #[test]
    fn event_loop_filter_allows_io_but_no_ioctl() {
        let p = program(ThreadKind::EventLoop, SECCOMP_RET_LOG);
        let a = AUDIT_ARCH_X86_64;
        for nr in allowed(ThreadKind::EventLoop) {
            assert_eq!(eval(&p, nr as u32, a, 0), SECCOMP_RET_ALLOW, "{nr}");
        }
        assert_eq!(
            eval(&p, libc::SYS_ioctl as u32, a, KVM_RUN as u32),
            SECCOMP_RET_LOG
        );
        assert_eq!(eval(&p, libc::SYS_openat as u32, a, 0), SECCOMP_RET_LOG);
    }

    #[test]
    fn filter_installs_on_one_thread_only() {
        // In a child thread: install, then a forbidden call is refused...
        // with Log mode nothing is killed, so check the install itself and
        // that the main thread stays unfiltered.
        std::thread::spawn(|| apply(ThreadKind::EventLoop, SeccompMode::Log).unwrap())
            .join()
            .unwrap();
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Seccomp:") && l.ends_with('0')),
            "{status}"
        );
    }
}
