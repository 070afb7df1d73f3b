//! Device access control on cgroup v2: cgroup2 has no `devices` controller;
//! the kernel instead asks a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached
//! to the cgroup whether an access (mknod, read, write of a block or
//! character device) is allowed. This module compiles the spec's device
//! rules (plus the runtime's implicit ones) into such a program, loads it
//! and attaches it to a cgroup directory.
//!
//! Semantics match the v1 controller as runtimes use it: rules apply in
//! order and the last rule that matches an access decides; an access no
//! rule matches is denied. The program therefore checks the rules from the
//! last to the first and returns the verdict of the first match.
//!
//! The program is plain eBPF written out here (no compiler, no libbpf): it
//! reads the context `struct bpf_cgroup_dev_ctx { u32 access_type; u32
//! major; u32 minor; }`, where `access_type` is `(access << 16) | type`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{Error, Result};

// Context field offsets and encodings (include/uapi/linux/bpf.h).
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        }
    }
    /// `dst = *(u32 *)(src + off)`
    const fn load_word(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x61, dst, src, off, 0)
    }
    /// `dst32 = src32`
    const fn mov32_reg(dst: u8, src: u8) -> Insn {
        Insn::new(0xbc, dst, src, 0, 0)
    }
    /// `dst32 &= imm`
    const fn and32(dst: u8, imm: i32) -> Insn {
        Insn::new(0x54, dst, 0, 0, imm)
    }
    /// `dst32 >>= imm`
    const fn rsh32(dst: u8, imm: i32) -> Insn {
        Insn::new(0x74, dst, 0, 0, imm)
    }
    /// `if dst != imm goto +off`
    const fn jne(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(0x55, dst, 0, off, imm)
    }
    /// `r0 = imm` (64-bit move)
    const fn ret_value(imm: i32) -> Insn {
        Insn::new(0xb7, 0, 0, 0, imm)
    }
    const fn exit() -> Insn {
        Insn::new(0x95, 0, 0, 0, 0)
    }
}

// Registers: r1 = context on entry, then scratch; r2 = type; r3 = access;
// r4 = major; r5 = minor.
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

fn access_bits(access: Option<&str>) -> Result<i32> {
    let access = access.unwrap_or("rwm");
    let mut bits = 0;
    for c in access.chars() {
        bits |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            other => {
                return Err(Error::Config(format!(
                    "device rule access {access:?}: unknown letter {other:?}"
                )));
            }
        };
    }
    Ok(bits)
}

/// Compile device rules into a program (last matching rule wins; default
/// deny).
pub fn compile(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>> {
    let mut prog = vec![
        Insn::load_word(R2, R1, 0),
        Insn::and32(R2, 0xffff),
        Insn::load_word(R3, R1, 0),
        Insn::rsh32(R3, 16),
        Insn::load_word(R4, R1, 4),
        Insn::load_word(R5, R1, 8),
    ];
    for rule in rules.iter().rev() {
        let mut block = Vec::new();
        // Each check jumps over the rest of this block when it fails; the
        // offsets are patched once the block's length is known.
        let mut jumps = Vec::new();
        match rule.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => {}
            LinuxDeviceType::B => {
                jumps.push(block.len());
                block.push(Insn::jne(R2, DEV_BLOCK, 0));
            }
            LinuxDeviceType::C | LinuxDeviceType::U => {
                jumps.push(block.len());
                block.push(Insn::jne(R2, DEV_CHAR, 0));
            }
            LinuxDeviceType::P => continue, // FIFOs are never device-checked
        }
        let bits = access_bits(rule.access().as_deref())?;
        if bits != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // The rule covers the access only if every requested bit is in
            // the rule.
            block.push(Insn::mov32_reg(R1, R3));
            block.push(Insn::and32(R1, !bits));
            jumps.push(block.len());
            block.push(Insn::jne(R1, 0, 0));
        }
        if let Some(major) = rule.major().filter(|m| *m >= 0) {
            jumps.push(block.len());
            block.push(Insn::jne(R4, major as i32, 0));
        }
        if let Some(minor) = rule.minor().filter(|m| *m >= 0) {
            jumps.push(block.len());
            block.push(Insn::jne(R5, minor as i32, 0));
        }
        block.push(Insn::ret_value(i32::from(rule.allow())));
        block.push(Insn::exit());
        let end = block.len();
        let matches_everything = jumps.is_empty();
        for j in jumps {
            block[j].off = (end - j - 1) as i16;
        }
        prog.extend(block);
        if matches_everything {
            // Earlier rules and the default can never be reached, and the
            // verifier refuses unreachable instructions.
            return Ok(prog);
        }
    }
    prog.push(Insn::ret_value(0));
    prog.push(Insn::exit());
    Ok(prog)
}

/// `union bpf_attr` for BPF_PROG_LOAD (the fields up to `kern_version`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Load a device program into the kernel.
pub fn load(prog: &[Insn]) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    // SAFETY: attr points to a properly laid out bpf_attr prefix whose
    // pointers (instructions, license, log buffer) stay valid for the call;
    // the kernel reads at most size_of::<ProgLoadAttr>() bytes.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let errno = nix::errno::Errno::last();
        let log = String::from_utf8_lossy(&log);
        let log = log.trim_end_matches('\0').trim();
        return Err(Error::sys(
            format!("load the cgroup device filter (verifier: {log})"),
            errno,
        ));
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attach a loaded device program to a cgroup2 directory.
pub fn attach(prog: &OwnedFd, cgroup_dir: &Path) -> Result<()> {
    let dir = std::fs::File::open(cgroup_dir).map_err(|e| Error::Io {
        context: "open the cgroup to attach the device filter",
        path: cgroup_dir.to_path_buf(),
        source: e,
    })?;
    let attr = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix for BPF_PROG_ATTACH and both
    // descriptors are open for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &raw const attr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc < 0 {
        return Err(Error::sys(
            format!("attach the device filter to {}", cgroup_dir.display()),
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

/// Compile, load and attach in one step.
pub fn install(rules: &[LinuxDeviceCgroup], cgroup_dir: &Path) -> Result<()> {
    let prog = compile(rules)?;
    let fd = load(&prog)?;
    // The attachment holds its own reference; our descriptor can go.
    attach(&fd, cgroup_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: i64,
        minor: i64,
        acc: &str,
    ) -> LinuxDeviceCgroup {
        LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .major(major)
            .minor(minor)
            .access(acc.to_string())
            .build()
            .expect("valid rule")
    }

    /// Run the program over a context in a tiny interpreter of exactly the
    /// instructions `compile` emits, to check the logic without the kernel.
    fn eval(prog: &[Insn], typ: i32, access: i32, major: i32, minor: i32) -> i32 {
        let ctx = [((access << 16) | typ) as u32, major as u32, minor as u32];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                0x61 => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                0xbc => r[dst] = r[src] & 0xffff_ffff,
                0x54 => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                0x74 => r[dst] = (r[dst] as u32 >> i.imm) as u64,
                0x55 => {
                    if r[dst] as u32 != i.imm as u32 {
                        pc += i.off as usize;
                    }
                }
                0xb7 => r[dst] = i.imm as u64,
                0x95 => return r[0] as i32,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn last_matching_rule_wins_and_default_denies() {
        let rules = [
            rule(false, LinuxDeviceType::A, -1, -1, "rwm"),
            rule(true, LinuxDeviceType::C, 1, 3, "rw"),
            rule(true, LinuxDeviceType::C, 136, -1, "rwm"),
            rule(false, LinuxDeviceType::C, 136, 2, "w"),
        ];
        let p = compile(&rules).unwrap();
        // c 1:3 read/write allowed, mknod not.
        assert_eq!(eval(&p, DEV_CHAR, ACC_READ, 1, 3), 1);
        assert_eq!(eval(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3), 1);
        assert_eq!(eval(&p, DEV_CHAR, ACC_MKNOD, 1, 3), 0);
        // block 1:3 is another device.
        assert_eq!(eval(&p, DEV_BLOCK, ACC_READ, 1, 3), 0);
        assert_eq!(eval(&p, DEV_CHAR, ACC_READ, 1, 5), 0);
        // Wildcard minor; the later deny of writes to 136:2 wins.
        assert_eq!(eval(&p, DEV_CHAR, ACC_WRITE, 136, 7), 1);
        assert_eq!(eval(&p, DEV_CHAR, ACC_WRITE, 136, 2), 0);
        assert_eq!(eval(&p, DEV_CHAR, ACC_READ, 136, 2), 1);
        // Nothing matches: denied.
        assert_eq!(eval(&p, DEV_BLOCK, ACC_READ, 8, 0), 0);
        assert_eq!(eval(&compile(&[]).unwrap(), DEV_CHAR, ACC_READ, 1, 3), 0);
    }

    #[test]
    fn bad_access_letters_are_refused() {
        let err = compile(&[rule(true, LinuxDeviceType::C, 1, 3, "rx")]).unwrap_err();
        assert!(err.to_string().contains("unknown letter 'x'"), "{err}");
    }
}
