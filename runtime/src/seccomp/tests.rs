//! Tests of the seccomp module: translation, the default profile, and the
//! real kernel.
//!
//! Kernel tests never load a filter into the test harness itself: each one
//! runs this test binary again as a child process (`child_entry`, selected by
//! an environment variable) that loads the filter and checks what the kernel
//! answers, and reports failures through its exit status.

use std::collections::HashSet;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use caps::Capability;
use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpSyscall};
use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag};
use serde_json::json;

use super::*;

fn config(value: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(value).expect("test configuration is valid OCI")
}

/// A filter with default `default` and one rule.
fn one_rule(default: &str, rule: &serde_json::Value) -> Result<Filter> {
    build_filter(&config(
        json!({ "defaultAction": default, "syscalls": [rule] }),
    ))
}

/// The capabilities Docker gives a container by default.
const DOCKER_DEFAULT_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

const NEW_KERNEL: KernelVersion = KernelVersion { major: 6, minor: 1 };

fn docker_default_profile() -> LinuxSeccomp {
    default_profile_for_kernel(
        DOCKER_DEFAULT_CAPS.iter().copied(),
        native_arch(),
        NEW_KERNEL,
    )
    .expect("default profile renders")
}

fn all_caps_profile() -> LinuxSeccomp {
    default_profile_for_kernel(caps::all(), native_arch(), NEW_KERNEL)
        .expect("default profile renders")
}

/// Names allowed without conditions by a rendered profile.
fn allowed(profile: &LinuxSeccomp) -> HashSet<String> {
    profile
        .syscalls()
        .iter()
        .flatten()
        .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.args().is_none())
        .flat_map(|r| r.names().iter().cloned())
        .collect()
}

/// Every name mentioned by any rule of a rendered profile.
fn mentioned(profile: &LinuxSeccomp) -> HashSet<String> {
    profile
        .syscalls()
        .iter()
        .flatten()
        .flat_map(|r| r.names().iter().cloned())
        .collect()
}

// ---------------------------------------------------------------------------
// Translation

#[test]
fn every_action_translates() {
    let cases = [
        ("SCMP_ACT_KILL", None, ScmpAction::KillThread),
        ("SCMP_ACT_KILL_THREAD", None, ScmpAction::KillThread),
        ("SCMP_ACT_KILL_PROCESS", None, ScmpAction::KillProcess),
        ("SCMP_ACT_TRAP", None, ScmpAction::Trap),
        ("SCMP_ACT_ERRNO", None, ScmpAction::Errno(libc::EPERM)),
        ("SCMP_ACT_ERRNO", Some(38), ScmpAction::Errno(libc::ENOSYS)),
        ("SCMP_ACT_TRACE", None, ScmpAction::Trace(1)),
        ("SCMP_ACT_TRACE", Some(7), ScmpAction::Trace(7)),
        ("SCMP_ACT_LOG", None, ScmpAction::Log),
        ("SCMP_ACT_NOTIFY", None, ScmpAction::Notify),
    ];
    for (action, errno, expected) in cases {
        let mut rule = json!({ "names": ["getpid"], "action": action });
        if let Some(errno) = errno {
            rule["errnoRet"] = json!(errno);
        }
        let filter = one_rule("SCMP_ACT_ALLOW", &rule).expect(action);
        assert_eq!(filter.rules().len(), 1, "{action}");
        assert_eq!(filter.rules()[0].action, expected, "{action}");
        assert_eq!(
            filter.uses_notify(),
            expected == ScmpAction::Notify,
            "{action}"
        );
        assert!(filter.skipped().is_empty(), "{action}");
    }
    let filter = one_rule(
        "SCMP_ACT_ERRNO",
        &json!({ "names": ["getpid"], "action": "SCMP_ACT_ALLOW" }),
    )
    .expect("allow rule");
    assert_eq!(filter.rules()[0].action, ScmpAction::Allow);
    assert_eq!(filter.default_action(), ScmpAction::Errno(libc::EPERM));
}

#[test]
fn default_errno_ret_is_used() {
    let filter = build_filter(&config(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
    })))
    .expect("filter");
    assert_eq!(filter.default_action(), ScmpAction::Errno(libc::ENOSYS));
}

#[test]
fn every_operator_translates() {
    let cases = [
        ("SCMP_CMP_NE", ScmpCompareOp::NotEqual, 5),
        ("SCMP_CMP_LT", ScmpCompareOp::Less, 5),
        ("SCMP_CMP_LE", ScmpCompareOp::LessOrEqual, 5),
        ("SCMP_CMP_EQ", ScmpCompareOp::Equal, 5),
        ("SCMP_CMP_GE", ScmpCompareOp::GreaterEqual, 5),
        ("SCMP_CMP_GT", ScmpCompareOp::Greater, 5),
        // MASKED_EQ: value is the mask, valueTwo what the masked value must be.
        ("SCMP_CMP_MASKED_EQ", ScmpCompareOp::MaskedEqual(5), 4),
    ];
    for (op, expected, datum) in cases {
        let filter = one_rule(
            "SCMP_ACT_ALLOW",
            &json!({
                "names": ["getpgid"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{ "index": 2, "value": 5, "valueTwo": 4, "op": op }],
            }),
        )
        .expect(op);
        assert_eq!(
            filter.rules()[0].conditions,
            vec![ScmpArgCompare::new(2, expected, datum)],
            "{op}"
        );
    }
    assert_eq!(supported_operators().len(), 7);
}

#[test]
fn conditions_on_different_arguments_are_one_rule() {
    let filter = one_rule(
        "SCMP_ACT_ALLOW",
        &json!({
            "names": ["socket"],
            "action": "SCMP_ACT_ERRNO",
            "args": [
                { "index": 0, "value": 1, "op": "SCMP_CMP_EQ" },
                { "index": 1, "value": 2, "op": "SCMP_CMP_EQ" },
            ],
        }),
    )
    .expect("filter");
    assert_eq!(filter.rules().len(), 1);
    assert_eq!(
        filter.rules()[0].conditions,
        vec![
            ScmpArgCompare::new(0, ScmpCompareOp::Equal, 1),
            ScmpArgCompare::new(1, ScmpCompareOp::Equal, 2),
        ]
    );
}

#[test]
fn conditions_on_the_same_argument_become_separate_rules() {
    let filter = one_rule(
        "SCMP_ACT_ERRNO",
        &json!({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                { "index": 0, "value": 0, "op": "SCMP_CMP_EQ" },
                { "index": 0, "value": 8, "op": "SCMP_CMP_EQ" },
                { "index": 0, "value": 4_294_967_295_u64, "op": "SCMP_CMP_EQ" },
            ],
        }),
    )
    .expect("filter");
    let conditions: Vec<_> = filter
        .rules()
        .iter()
        .map(|r| r.conditions.clone())
        .collect();
    assert_eq!(
        conditions,
        vec![
            vec![ScmpArgCompare::new(0, ScmpCompareOp::Equal, 0)],
            vec![ScmpArgCompare::new(0, ScmpCompareOp::Equal, 8)],
            vec![ScmpArgCompare::new(0, ScmpCompareOp::Equal, 0xffff_ffff)],
        ]
    );
}

#[test]
fn unknown_syscalls_are_skipped() {
    let filter = one_rule(
        "SCMP_ACT_ERRNO",
        &json!({ "names": ["getpid", "no_such_syscall_vessel"], "action": "SCMP_ACT_ALLOW" }),
    )
    .expect("unknown names are not an error");
    assert_eq!(filter.rules().len(), 1);
    assert_eq!(filter.rules()[0].syscall, "getpid");
    assert_eq!(
        filter.skipped(),
        &[SkippedRule {
            syscall: "no_such_syscall_vessel".to_owned(),
            reason: SkipReason::UnknownSyscall,
        }]
    );
}

#[test]
fn rules_with_the_default_action_are_skipped() {
    let filter = build_filter(&config(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "syscalls": [
            { "names": ["getpid"], "action": "SCMP_ACT_ERRNO" },
            { "names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 },
            { "names": ["gettid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38 },
            { "names": ["read"], "action": "SCMP_ACT_ALLOW" },
        ],
    })))
    .expect("filter");
    let skipped: Vec<_> = filter
        .skipped()
        .iter()
        .map(|s| (s.syscall.as_str(), s.reason))
        .collect();
    assert_eq!(
        skipped,
        vec![
            ("getpid", SkipReason::DefaultAction),
            ("getppid", SkipReason::DefaultAction)
        ]
    );
    let added: Vec<_> = filter
        .rules()
        .iter()
        .map(|r| (r.syscall.as_str(), r.action))
        .collect();
    assert_eq!(
        added,
        vec![
            ("gettid", ScmpAction::Errno(libc::ENOSYS)),
            ("read", ScmpAction::Allow)
        ]
    );
}

#[test]
fn architectures_are_added() {
    let filter = build_filter(&config(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": [{ "names": ["getpid"], "action": "SCMP_ACT_ERRNO" }],
    })))
    .expect("filter");
    for arch in [
        libseccomp::ScmpArch::X8664,
        libseccomp::ScmpArch::X86,
        libseccomp::ScmpArch::X32,
        libseccomp::ScmpArch::Aarch64,
        libseccomp::ScmpArch::Arm,
    ] {
        assert!(
            filter.context().is_arch_present(arch).expect("query"),
            "{arch:?}"
        );
    }
    filter.compile().expect("compiles");
}

#[test]
fn unsupported_architecture_is_an_error_naming_it() {
    // libseccomp learnt LoongArch in 2.6.
    let version = libseccomp::ScmpVersion::current().expect("version");
    if (version.major, version.minor) >= (2, 6) {
        eprintln!("SKIP: libseccomp {version} knows every OCI architecture");
        return;
    }
    let err = build_filter(&config(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_LOONGARCH64"],
    })))
    .expect_err("LoongArch is unknown to libseccomp 2.5");
    assert!(matches!(err, Error::Arch { .. }), "{err:?}");
    assert!(err.to_string().contains("SCMP_ARCH_LOONGARCH64"), "{err}");
    assert!(!supported_architectures().contains(&Arch::ScmpArchLoongarch64));
}

#[test]
fn unknown_operator_or_action_is_rejected_when_parsing() {
    // OCI names outside the enums never reach the translator: the
    // configuration does not parse.
    let op = serde_json::from_value::<LinuxSeccomp>(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["read"], "action": "SCMP_ACT_ERRNO",
                       "args": [{ "index": 0, "value": 1, "op": "SCMP_CMP_BETWEEN" }] }],
    }))
    .expect_err("unknown operator");
    assert!(op.to_string().contains("SCMP_CMP_BETWEEN"), "{op}");
    let arch = serde_json::from_value::<LinuxSeccomp>(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_VAX"],
    }))
    .expect_err("unknown architecture");
    assert!(arch.to_string().contains("SCMP_ARCH_VAX"), "{arch}");
}

#[test]
fn bad_rules_are_errors_naming_the_syscall() {
    let cases = [
        (
            json!({ "names": ["read"], "action": "SCMP_ACT_ERRNO",
                    "args": [{ "index": 6, "value": 1, "op": "SCMP_CMP_EQ" }] }),
            "argument index 6",
        ),
        (
            json!({ "names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1 }),
            "errnoRet 1 is not allowed with SCMP_ACT_ALLOW",
        ),
        (
            json!({ "names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5000 }),
            "errnoRet 5000 is out of range",
        ),
        (
            json!({ "names": ["read"], "action": "SCMP_ACT_TRACE", "errnoRet": 70000 }),
            "errnoRet 70000 is out of range",
        ),
    ];
    for (rule, expected) in cases {
        let err = one_rule("SCMP_ACT_KILL_PROCESS", &rule).expect_err(expected);
        let msg = err.to_string();
        assert!(msg.contains("read") && msg.contains(expected), "{msg}");
    }
    let err = one_rule(
        "SCMP_ACT_ALLOW",
        &json!({ "names": [], "action": "SCMP_ACT_ERRNO" }),
    )
    .expect_err("no names");
    assert!(matches!(err, Error::NoNames { index: 0 }), "{err:?}");
}

#[test]
fn bad_default_actions_are_errors() {
    for (cfg, expected) in [
        (
            json!({ "defaultAction": "SCMP_ACT_NOTIFY" }),
            "SCMP_ACT_NOTIFY cannot be the default action",
        ),
        (
            json!({ "defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1 }),
            "errnoRet 1 is not allowed with SCMP_ACT_ALLOW",
        ),
    ] {
        let err = build_filter(&config(cfg)).expect_err(expected);
        assert!(err.to_string().contains(expected), "{err}");
    }
}

#[test]
fn flags_reach_the_program() {
    let program = compile(&config(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                  "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
    })))
    .expect("program");
    // WAIT_KILLABLE_RECV means nothing without a listener and is dropped.
    let expected = flag::TSYNC | flag::LOG | flag::SPEC_ALLOW;
    assert_eq!(program.flags(), expected);
    assert!(!program.wants_listener());

    let program = compile(&config(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
        "syscalls": [{ "names": ["getppid"], "action": "SCMP_ACT_NOTIFY" }],
    })))
    .expect("program");
    let expected = flag::TSYNC | flag::WAIT_KILLABLE_RECV | flag::NEW_LISTENER | flag::TSYNC_ESRCH;
    assert_eq!(program.flags(), expected);
    assert!(program.wants_listener());
}

#[test]
fn enosys_prefix_only_with_an_errno_default() {
    let rules = json!([{ "names": ["getpid", "futex"], "action": "SCMP_ACT_ALLOW" }]);
    let errno = compile(&config(
        json!({ "defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules }),
    ))
    .expect("program");
    let first = errno.instructions()[0];
    // ld [arch]
    assert_eq!((first.code, first.k), (0x20, 4));
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    assert!(
        errno
            .instructions()
            .iter()
            .any(|i| i.code == 0x06 && i.k == enosys)
    );

    let kill = compile(&config(
        json!({ "defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": rules }),
    ))
    .expect("program");
    assert!(
        !kill
            .instructions()
            .iter()
            .any(|i| i.code == 0x06 && i.k == enosys)
    );
    assert!(kill.len() < errno.len());
}

#[test]
fn names_use_the_oci_spelling() {
    assert_eq!(arch_name(Arch::ScmpArchX86_64), "SCMP_ARCH_X86_64");
    assert_eq!(arch_name(Arch::ScmpArchMips64n32), "SCMP_ARCH_MIPS64N32");
    assert_eq!(
        action_name(LinuxSeccompAction::ScmpActKillProcess),
        "SCMP_ACT_KILL_PROCESS"
    );
    assert_eq!(
        operator_name(oci_spec::runtime::LinuxSeccompOperator::ScmpCmpMaskedEq),
        "SCMP_CMP_MASKED_EQ"
    );
    assert_eq!(
        flag_name(LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv),
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"
    );
}

#[test]
fn features_describe_this_machine() {
    let f = features();
    assert_eq!(*f.enabled(), Some(true));
    assert_eq!(f.actions().as_ref().map(Vec::len), Some(9));
    let ops = f.operators().clone().unwrap_or_default();
    assert!(ops.contains(&"SCMP_CMP_MASKED_EQ".to_owned()), "{ops:?}");
    let archs = f.archs().clone().unwrap_or_default();
    assert!(archs.contains(&native_arch()), "{archs:?}");
    assert!(!archs.contains(&Arch::ScmpArchNative));
    let known = f.known_flags().clone().unwrap_or_default();
    assert_eq!(known.len(), 4);
    // Every kernel with seccomp filters knows TSYNC (3.17) and LOG (4.14).
    let supported = f.supported_flags().clone().unwrap_or_default();
    assert!(
        supported.contains(&"SECCOMP_FILTER_FLAG_TSYNC".to_owned()),
        "{supported:?}"
    );
    assert!(supported.iter().all(|s| known.contains(s)));
    let version = libseccomp_version();
    assert!(version.starts_with("2."), "{version}");
    // The JSON is what `features` prints.
    let text = serde_json::to_string(&f).expect("serialise");
    assert!(text.contains("\"knownFlags\""), "{text}");
}

// ---------------------------------------------------------------------------
// The default profile

#[test]
fn kernel_versions_parse() {
    assert_eq!(
        KernelVersion::parse("6.18.44-fc-v669"),
        Some(KernelVersion {
            major: 6,
            minor: 18
        })
    );
    assert_eq!(
        KernelVersion::parse("4.8"),
        Some(KernelVersion { major: 4, minor: 8 })
    );
    assert_eq!(KernelVersion::parse("garbage"), None);
    assert!(
        KernelVersion::current()
            >= KernelVersion {
                major: 3,
                minor: 17
            }
    );
}

#[test]
fn default_profile_for_docker_default_caps() {
    let profile = docker_default_profile();
    assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(profile.default_errno_ret(), Some(1));
    let allowed = allowed(&profile);
    for name in [
        "read",
        "write",
        "execve",
        "openat",
        "chroot",
        "ptrace",
        "arch_prctl",
    ] {
        if name == "arch_prctl" && native_arch() != Arch::ScmpArchX86_64 {
            continue;
        }
        assert!(allowed.contains(name), "{name} should be allowed");
    }
    let mentioned = mentioned(&profile);
    for name in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "pivot_root",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "open_by_handle_at",
        "reboot",
        "swapon",
        "acct",
        "settimeofday",
        "clock_settime",
        "syslog",
        "vhangup",
        "io_uring_setup",
        "socketcall",
        "iopl",
        "ioperm",
        "quotactl",
        "fanotify_init",
        "lookup_dcookie",
        "kcmp",
        "pidfd_getfd",
        "mbind",
        "nfsservctl",
        "uselib",
    ] {
        assert!(
            !mentioned.contains(name),
            "{name} must stay denied without capabilities"
        );
    }
    // clone without namespace flags, clone3 answers ENOSYS.
    let clone = profile
        .syscalls()
        .iter()
        .flatten()
        .find(|r| r.names().contains(&"clone".to_owned()))
        .expect("clone rule");
    let arg = clone.args().as_ref().expect("clone is filtered")[0];
    assert_eq!(
        arg.op(),
        oci_spec::runtime::LinuxSeccompOperator::ScmpCmpMaskedEq
    );
    assert_eq!(arg.value(), 0x7e02_0000);
    assert_eq!(arg.value_two(), Some(0));
    let clone3 = profile
        .syscalls()
        .iter()
        .flatten()
        .find(|r| r.names().contains(&"clone3".to_owned()))
        .expect("clone3 rule");
    assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
    assert_eq!(clone3.errno_ret(), Some(38));
    // personality: five alternatives on argument 0.
    let personality = profile
        .syscalls()
        .iter()
        .flatten()
        .filter(|r| r.names().contains(&"personality".to_owned()))
        .count();
    assert_eq!(personality, 5);
}

#[test]
fn default_profile_for_all_caps() {
    let profile = all_caps_profile();
    let allowed = allowed(&profile);
    for name in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "clone",
        "clone3",
        "bpf",
        "perf_event_open",
        "ptrace",
        "kcmp",
        "init_module",
        "reboot",
        "chroot",
        "settimeofday",
        "mbind",
        "acct",
        "vhangup",
        "open_by_handle_at",
        "syslog",
    ] {
        assert!(
            allowed.contains(name),
            "{name} should be allowed with every capability"
        );
    }
    let mentioned = mentioned(&profile);
    for name in [
        "keyctl",
        "add_key",
        "request_key",
        "kexec_load",
        "userfaultfd",
        "io_uring_setup",
    ] {
        assert!(
            !mentioned.contains(name),
            "{name} stays denied even with every capability"
        );
    }
    // No rule repeats a name with the same treatment.
    for rule in profile.syscalls().iter().flatten() {
        let unique: HashSet<_> = rule.names().iter().collect();
        assert_eq!(unique.len(), rule.names().len(), "{:?}", rule.names());
    }
}

#[test]
fn capability_groups_need_one_of_their_capabilities() {
    let with = |caps: &[Capability]| {
        allowed(
            &default_profile_for_kernel(caps.iter().copied(), native_arch(), NEW_KERNEL)
                .expect("renders"),
        )
    };
    assert!(with(&[Capability::CAP_BPF]).contains("bpf"));
    assert!(!with(&[Capability::CAP_BPF]).contains("perf_event_open"));
    assert!(with(&[Capability::CAP_PERFMON]).contains("perf_event_open"));
    assert!(with(&[Capability::CAP_SYSLOG]).contains("syslog"));
    assert!(with(&[Capability::CAP_SYS_PTRACE]).contains("process_madvise"));
    assert!(with(&[Capability::CAP_SYS_MODULE]).contains("finit_module"));
    assert!(with(&[Capability::CAP_SYS_TIME]).contains("clock_settime"));
    assert!(with(&[Capability::CAP_SYS_BOOT]).contains("reboot"));
    assert!(with(&[Capability::CAP_SYS_PACCT]).contains("acct"));
    assert!(with(&[Capability::CAP_SYS_TTY_CONFIG]).contains("vhangup"));
    assert!(with(&[Capability::CAP_SYS_NICE]).contains("set_mempolicy"));
    assert!(with(&[Capability::CAP_DAC_READ_SEARCH]).contains("open_by_handle_at"));
    assert!(!with(&[]).contains("chroot"));
    if native_arch() == Arch::ScmpArchX86_64 {
        assert!(with(&[Capability::CAP_SYS_RAWIO]).contains("iopl"));
    }
}

#[test]
fn ptrace_needs_a_kernel_from_4_8_or_the_capability() {
    let old = KernelVersion { major: 4, minor: 4 };
    let profile =
        default_profile_for_kernel(DOCKER_DEFAULT_CAPS.iter().copied(), native_arch(), old)
            .expect("renders");
    assert!(!mentioned(&profile).contains("ptrace"));
    let profile = default_profile_for_kernel([Capability::CAP_SYS_PTRACE], native_arch(), old)
        .expect("renders");
    assert!(allowed(&profile).contains("ptrace"));
    assert!(allowed(&docker_default_profile()).contains("process_vm_readv"));
}

#[test]
fn default_profile_per_architecture() {
    let x86 = default_profile_for_kernel(
        DOCKER_DEFAULT_CAPS.iter().copied(),
        Arch::ScmpArchX86_64,
        NEW_KERNEL,
    )
    .expect("renders");
    assert_eq!(
        x86.architectures().clone().unwrap_or_default(),
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    );
    assert!(allowed(&x86).contains("arch_prctl"));
    assert!(allowed(&x86).contains("modify_ldt"));
    assert!(!mentioned(&x86).contains("cacheflush"));

    let arm = default_profile_for_kernel(
        DOCKER_DEFAULT_CAPS.iter().copied(),
        Arch::ScmpArchAarch64,
        NEW_KERNEL,
    )
    .expect("renders");
    assert_eq!(
        arm.architectures().clone().unwrap_or_default(),
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    );
    assert!(allowed(&arm).contains("cacheflush"));
    assert!(!mentioned(&arm).contains("arch_prctl"));

    // s390 keeps clone's flags in the second argument.
    let s390 = default_profile_for_kernel(
        DOCKER_DEFAULT_CAPS.iter().copied(),
        Arch::ScmpArchS390x,
        NEW_KERNEL,
    )
    .expect("renders");
    let clone = s390
        .syscalls()
        .iter()
        .flatten()
        .find(|r| r.names().contains(&"clone".to_owned()))
        .expect("clone rule");
    assert_eq!(clone.args().as_ref().expect("filtered")[0].index(), 1);

    // An architecture the data does not list gets a filter for itself.
    let parisc =
        default_profile_for_kernel([], Arch::ScmpArchParisc64, NEW_KERNEL).expect("renders");
    assert_eq!(
        parisc.architectures().clone().unwrap_or_default(),
        vec![Arch::ScmpArchParisc64]
    );

    // Every rendering builds into a filter here, foreign architectures too
    // (libseccomp cannot mix byte orders in one filter: big-endian s390x is
    // left out).
    for arch in [
        Arch::ScmpArchX86_64,
        Arch::ScmpArchAarch64,
        Arch::ScmpArchPpc64le,
        Arch::ScmpArchRiscv64,
    ] {
        for profile in [
            default_profile_for_kernel(DOCKER_DEFAULT_CAPS.iter().copied(), arch, NEW_KERNEL),
            default_profile_for_kernel(caps::all(), arch, NEW_KERNEL),
        ] {
            let program = compile(&profile.expect("renders"))
                .unwrap_or_else(|e| panic!("{}: {e:?}", arch_name(arch)));
            assert!(program.len() <= bpf::MAX_INSNS);
        }
    }
}

/// Names in default.json that the libseccomp of this machine may not know
/// yet (newer than it): everything else must resolve, which catches typos.
const NEWER_THAN_LIBSECCOMP: &[&str] = &[
    "mseal",
    "getxattrat",
    "setxattrat",
    "listxattrat",
    "removexattrat",
    "file_getattr",
    "file_setattr",
    "open_tree_attr",
    "riscv_hwprobe",
];

#[test]
fn every_name_in_the_default_profile_is_a_syscall() {
    let profile = all_caps_profile();
    let mut unknown: Vec<String> = Vec::new();
    for arch in [
        Arch::ScmpArchX86_64,
        Arch::ScmpArchAarch64,
        Arch::ScmpArchS390x,
        Arch::ScmpArchPpc64le,
        Arch::ScmpArchRiscv64,
    ] {
        let profile = default_profile_for_kernel(caps::all(), arch, NEW_KERNEL).expect("renders");
        for name in mentioned(&profile) {
            if ScmpSyscall::from_name(&name).is_err()
                && !NEWER_THAN_LIBSECCOMP.contains(&name.as_str())
                && !unknown.contains(&name)
            {
                unknown.push(name);
            }
        }
    }
    assert!(unknown.is_empty(), "not syscalls: {unknown:?}");
    assert!(!mentioned(&profile).is_empty());
}

/// What a busybox shell needs to start, run pipelines and commands, as seen
/// with strace on x86-64 (plus the generic equivalents on other machines).
const BUSYBOX_SYSCALLS: &[&str] = &[
    "execve",
    "openat",
    "read",
    "write",
    "close",
    "mmap",
    "munmap",
    "mprotect",
    "brk",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "wait4",
    "getpid",
    "getppid",
    "getuid",
    "ioctl",
    "fcntl",
    "dup3",
    "pipe2",
    "chdir",
    "getcwd",
    "newfstatat",
    "fstat",
    "uname",
    "exit_group",
    "set_tid_address",
    "set_robust_list",
    "rseq",
    "prlimit64",
    "getdents64",
    "lseek",
    "readlinkat",
    "faccessat",
    "ppoll",
    "sendfile",
    "getrandom",
    "prctl",
    "clock_nanosleep",
    "statx",
    "kill",
    "setpgid",
];

const BUSYBOX_SYSCALLS_X86_64: &[&str] = &[
    "arch_prctl",
    "dup2",
    "pipe",
    "readlink",
    "access",
    "stat",
    "lstat",
    "poll",
    "fork",
    "vfork",
];

#[test]
fn default_profile_allows_what_a_busybox_shell_needs() {
    let profile = docker_default_profile();
    let allowed = allowed(&profile);
    let mut needed: Vec<&str> = BUSYBOX_SYSCALLS.to_vec();
    if native_arch() == Arch::ScmpArchX86_64 {
        needed.extend(BUSYBOX_SYSCALLS_X86_64);
    }
    for name in needed {
        let nr = ScmpSyscall::from_name(name).unwrap_or_else(|_| panic!("libseccomp knows {name}"));
        assert!(nr.as_raw_syscall() >= 0, "{name} exists on this machine");
        assert!(allowed.contains(name), "{name} must be allowed");
    }
    // And every one of them ends up in the filter, not skipped.
    let filter = build_filter(&profile).expect("filter");
    let skipped: Vec<_> = filter
        .skipped()
        .iter()
        .map(|s| s.syscall.as_str())
        .collect();
    for name in BUSYBOX_SYSCALLS {
        assert!(!skipped.contains(name), "{name} skipped");
    }
}

// ---------------------------------------------------------------------------
// The real kernel, in child processes

const CHILD_ENV: &str = "VESSEL_SECCOMP_TEST_CHILD";
const LISTENER_ENV: &str = "VESSEL_SECCOMP_TEST_LISTENER";

fn seccomp_available() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.contains("Seccomp_filters:"))
}

/// Start this test binary again, running only `child_entry` with `scenario`.
fn child_command(scenario: &str) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, rest)| rest);
    let mut cmd = Command::new(exe);
    cmd.args([
        &format!("{module}::child_entry"),
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, scenario)
    .stdin(Stdio::null());
    cmd
}

/// Run a scenario to its end; returns its exit status and stderr.
fn run_child(scenario: &str) -> (std::process::ExitStatus, String) {
    let out = child_command(scenario)
        .output()
        .expect("run the test binary");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_child_ok(scenario: &str) {
    let (status, stderr) = run_child(scenario);
    assert!(
        status.success(),
        "scenario {scenario} failed ({status}):\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("scenario {scenario} passed")),
        "{stderr}"
    );
}

/// The entry point of child processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Ok(scenario) = std::env::var(CHILD_ENV) else {
        return;
    };
    let outcome = match scenario.as_str() {
        "errno-and-allow" => child_errno_and_allow(),
        "operators" => child_operators(),
        "same-index-or" => child_same_index_or(),
        "default-profile" => child_default_profile(),
        "notify" => child_notify(),
        "tsync" => child_tsync(),
        "trace-without-tracer" => child_trace_without_tracer(),
        "kill-process" => child_fatal("SCMP_ACT_KILL_PROCESS"),
        "trap" => child_fatal("SCMP_ACT_TRAP"),
        other => Err(format!("unknown scenario {other}")),
    };
    match outcome {
        Ok(()) => {
            eprintln!("scenario {scenario} passed");
            std::process::exit(0);
        }
        Err(msg) => {
            eprintln!("scenario {scenario} FAILED: {msg}");
            std::process::exit(1);
        }
    }
}

type Check = std::result::Result<(), String>;

/// A raw syscall's result: the value, or the errno.
fn sys(nr: libc::c_long, args: [libc::c_long; 4]) -> std::result::Result<libc::c_long, i32> {
    // SAFETY: the scenarios only pass plain integers, null pointers or
    // pointers to live locals, as each syscall expects.
    let rc = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3]) };
    if rc == -1 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(rc)
    }
}

fn expect_errno(what: &str, got: std::result::Result<libc::c_long, i32>, errno: i32) -> Check {
    match got {
        Err(e) if e == errno => Ok(()),
        other => Err(format!("{what}: expected errno {errno}, got {other:?}")),
    }
}

fn expect_ok(what: &str, got: std::result::Result<libc::c_long, i32>) -> Check {
    got.map(|_| ())
        .map_err(|e| format!("{what}: expected success, got errno {e}"))
}

fn set_no_new_privs() -> Check {
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("PR_SET_NO_NEW_PRIVS: {e}"))
}

fn load_config(
    cfg: serde_json::Value,
) -> std::result::Result<Option<std::os::fd::OwnedFd>, String> {
    let program = compile(&config(cfg)).map_err(|e| format!("compile: {e:?}"))?;
    set_no_new_privs()?;
    load(&program).map_err(|e| format!("load: {e:?}"))
}

fn child_errno_and_allow() -> Check {
    load_config(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            { "names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES },
            { "names": ["getpgrp", "getpgid"], "action": "SCMP_ACT_ERRNO" },
            { "names": ["getsid"], "action": "SCMP_ACT_LOG" },
        ],
    }))?;
    expect_errno("getppid", sys(libc::SYS_getppid, [0; 4]), libc::EACCES)?;
    expect_errno("getpgid", sys(libc::SYS_getpgid, [0; 4]), libc::EPERM)?;
    expect_ok("getsid (logged)", sys(libc::SYS_getsid, [0; 4]))?;
    expect_ok("getpid", sys(libc::SYS_getpid, [0; 4]))?;
    expect_ok("gettid", sys(libc::SYS_gettid, [0; 4]))
}

fn child_operators() -> Check {
    let rule = |name: &str, errno: i32, index: u32, op: &str, value: u64, two: u64| {
        json!({ "names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": errno,
                "args": [{ "index": index, "value": value, "valueTwo": two, "op": op }] })
    };
    load_config(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            rule("getpgid", 101, 0, "SCMP_CMP_NE", 0, 0),
            rule("getsid", 102, 0, "SCMP_CMP_LT", 5, 0),
            rule("sched_getscheduler", 103, 0, "SCMP_CMP_LE", 0, 0),
            rule("sched_get_priority_max", 104, 0, "SCMP_CMP_EQ", 1, 0),
            rule("sched_get_priority_min", 105, 0, "SCMP_CMP_GE", 2, 0),
            rule("getpriority", 106, 1, "SCMP_CMP_GT", 1_000_000, 0),
            rule("dup", 107, 0, "SCMP_CMP_MASKED_EQ", 0xf00, 0x100),
        ],
    }))?;
    let me = libc::c_long::from(std::process::id() as i32);
    expect_ok("getpgid(0)", sys(libc::SYS_getpgid, [0; 4]))?;
    expect_errno(
        "getpgid(me) NE 0",
        sys(libc::SYS_getpgid, [me, 0, 0, 0]),
        101,
    )?;
    expect_errno("getsid(0) LT 5", sys(libc::SYS_getsid, [0; 4]), 102)?;
    expect_ok("getsid(me)", sys(libc::SYS_getsid, [me, 0, 0, 0]))?;
    expect_errno(
        "sched_getscheduler(0) LE 0",
        sys(libc::SYS_sched_getscheduler, [0; 4]),
        103,
    )?;
    expect_ok(
        "sched_getscheduler(me)",
        sys(libc::SYS_sched_getscheduler, [me, 0, 0, 0]),
    )?;
    expect_errno(
        "sched_get_priority_max(1) EQ 1",
        sys(libc::SYS_sched_get_priority_max, [1, 0, 0, 0]),
        104,
    )?;
    expect_ok(
        "sched_get_priority_max(0)",
        sys(libc::SYS_sched_get_priority_max, [0; 4]),
    )?;
    expect_errno(
        "sched_get_priority_min(2) GE 2",
        sys(libc::SYS_sched_get_priority_min, [2, 0, 0, 0]),
        105,
    )?;
    expect_ok(
        "sched_get_priority_min(1)",
        sys(libc::SYS_sched_get_priority_min, [1, 0, 0, 0]),
    )?;
    expect_errno(
        "getpriority(who > 1e6)",
        sys(libc::SYS_getpriority, [0, 2_000_000, 0, 0]),
        106,
    )?;
    expect_ok("getpriority(0, 0)", sys(libc::SYS_getpriority, [0; 4]))?;
    expect_errno(
        "dup(0x1ff) masked",
        sys(libc::SYS_dup, [0x1ff, 0, 0, 0]),
        107,
    )?;
    expect_errno(
        "dup(0x2ff) not masked: EBADF",
        sys(libc::SYS_dup, [0x2ff, 0, 0, 0]),
        libc::EBADF,
    )?;
    Ok(())
}

fn child_same_index_or() -> Check {
    load_config(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            // Same index: either value is refused.
            { "names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES,
              "args": [{ "index": 0, "value": 0x0004_0000, "op": "SCMP_CMP_EQ" },
                       { "index": 0, "value": 0x0040_0000, "op": "SCMP_CMP_EQ" }] },
            // Different indexes: both must hold.
            { "names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES,
              "args": [{ "index": 0, "value": libc::AF_UNIX, "op": "SCMP_CMP_EQ" },
                       { "index": 1, "value": libc::SOCK_DGRAM, "op": "SCMP_CMP_EQ" }] },
        ],
    }))?;
    expect_errno(
        "personality(ADDR_NO_RANDOMIZE)",
        sys(libc::SYS_personality, [0x0004_0000, 0, 0, 0]),
        libc::EACCES,
    )?;
    expect_errno(
        "personality(READ_IMPLIES_EXEC)",
        sys(libc::SYS_personality, [0x0040_0000, 0, 0, 0]),
        libc::EACCES,
    )?;
    expect_ok(
        "personality(query)",
        sys(libc::SYS_personality, [0xffff_ffff, 0, 0, 0]),
    )?;
    let socket = |family: i32, kind: i32| sys(libc::SYS_socket, [family.into(), kind.into(), 0, 0]);
    expect_errno(
        "socket(AF_UNIX, SOCK_DGRAM)",
        socket(libc::AF_UNIX, libc::SOCK_DGRAM),
        libc::EACCES,
    )?;
    expect_ok(
        "socket(AF_UNIX, SOCK_STREAM)",
        socket(libc::AF_UNIX, libc::SOCK_STREAM),
    )?;
    expect_ok(
        "socket(AF_INET, SOCK_DGRAM)",
        socket(libc::AF_INET, libc::SOCK_DGRAM),
    )
}

fn child_default_profile() -> Check {
    let profile = default_profile(DOCKER_DEFAULT_CAPS.iter().copied(), native_arch())
        .map_err(|e| format!("render: {e}"))?;
    let program = compile(&profile).map_err(|e| format!("compile: {e:?}"))?;
    let busybox = vessel_testkit::have_command("busybox");
    set_no_new_privs()?;
    if load(&program)
        .map_err(|e| format!("load: {e:?}"))?
        .is_some()
    {
        return Err("the default profile asked for a listener".to_owned());
    }

    // Ordinary work.
    expect_ok("getpid", sys(libc::SYS_getpid, [0; 4]))?;
    let msg = b"written under the default profile\n";
    expect_ok(
        "write",
        sys(
            libc::SYS_write,
            [
                2,
                msg.as_ptr() as libc::c_long,
                msg.len() as libc::c_long,
                0,
            ],
        ),
    )?;
    // The test harness runs this on a thread of its own: look at this thread.
    let status = std::fs::read_to_string("/proc/thread-self/status")
        .map_err(|e| format!("open /proc: {e}"))?;
    if !status
        .lines()
        .any(|l| l.starts_with("Seccomp:") && l.ends_with('2'))
    {
        return Err("the process is not in seccomp filter mode".to_owned());
    }
    // A thread: glibc tries clone3, gets ENOSYS, falls back to clone.
    let answer = std::thread::spawn(|| 42)
        .join()
        .map_err(|_| "thread panicked".to_owned())?;
    if answer != 42 {
        return Err("thread result".to_owned());
    }
    expect_errno("clone3", sys(libc::SYS_clone3, [0; 4]), libc::ENOSYS)?;
    expect_ok(
        "personality(query)",
        sys(libc::SYS_personality, [0xffff_ffff, 0, 0, 0]),
    )?;
    expect_ok(
        "personality(PER_LINUX)",
        sys(libc::SYS_personality, [0, 0, 0, 0]),
    )?;
    expect_errno(
        "personality(ADDR_NO_RANDOMIZE)",
        sys(libc::SYS_personality, [0x0004_0000, 0, 0, 0]),
        libc::EPERM,
    )?;
    let socket = |family: i32| {
        sys(
            libc::SYS_socket,
            [family.into(), libc::SOCK_STREAM.into(), 0, 0],
        )
    };
    expect_ok("socket(AF_UNIX)", socket(libc::AF_UNIX))?;
    expect_ok("socket(AF_INET)", socket(libc::AF_INET))?;
    expect_errno("socket(AF_VSOCK)", socket(libc::AF_VSOCK), libc::EPERM)?;
    expect_errno(
        "socket(AF_ALG)",
        sys(
            libc::SYS_socket,
            [libc::AF_ALG.into(), libc::SOCK_SEQPACKET.into(), 0, 0],
        ),
        libc::EPERM,
    )?;
    // ptrace passes the filter (kernel >= 4.8); the kernel then finds no such process.
    expect_errno(
        "ptrace(PEEKDATA, no such pid)",
        sys(
            libc::SYS_ptrace,
            [libc::PTRACE_PEEKDATA as libc::c_long, 0x7fff_fff0, 0, 0],
        ),
        libc::ESRCH,
    )?;

    // The dangerous calls.
    let keyring = libc::c_long::from(libc::KEY_SPEC_SESSION_KEYRING);
    expect_errno(
        "keyctl",
        sys(
            libc::SYS_keyctl,
            [libc::KEYCTL_GET_KEYRING_ID as libc::c_long, keyring, 0, 0],
        ),
        libc::EPERM,
    )?;
    expect_errno("add_key", sys(libc::SYS_add_key, [0; 4]), libc::EPERM)?;
    expect_errno(
        "request_key",
        sys(libc::SYS_request_key, [0; 4]),
        libc::EPERM,
    )?;
    expect_errno(
        "unshare(CLONE_NEWUSER)",
        sys(libc::SYS_unshare, [libc::CLONE_NEWUSER.into(), 0, 0, 0]),
        libc::EPERM,
    )?;
    expect_errno(
        "unshare(CLONE_NEWNS)",
        sys(libc::SYS_unshare, [libc::CLONE_NEWNS.into(), 0, 0, 0]),
        libc::EPERM,
    )?;
    expect_errno("setns", sys(libc::SYS_setns, [0, 0, 0, 0]), libc::EPERM)?;
    expect_errno("mount", sys(libc::SYS_mount, [0; 4]), libc::EPERM)?;
    expect_errno("umount2", sys(libc::SYS_umount2, [0; 4]), libc::EPERM)?;
    expect_errno("bpf", sys(libc::SYS_bpf, [0; 4]), libc::EPERM)?;
    expect_errno(
        "perf_event_open",
        sys(libc::SYS_perf_event_open, [0; 4]),
        libc::EPERM,
    )?;
    expect_errno(
        "userfaultfd",
        sys(libc::SYS_userfaultfd, [0; 4]),
        libc::EPERM,
    )?;
    expect_errno("kexec_load", sys(libc::SYS_kexec_load, [0; 4]), libc::EPERM)?;
    expect_errno(
        "init_module",
        sys(libc::SYS_init_module, [0; 4]),
        libc::EPERM,
    )?;
    expect_errno(
        "open_by_handle_at",
        sys(libc::SYS_open_by_handle_at, [0; 4]),
        libc::EPERM,
    )?;
    expect_errno(
        "io_uring_setup",
        sys(libc::SYS_io_uring_setup, [0; 4]),
        libc::EPERM,
    )?;
    // A syscall number beyond everything the profile names: ENOSYS, so C
    // libraries fall back as they do on an older kernel.
    expect_errno("syscall 1000", sys(1000, [0; 4]), libc::ENOSYS)?;
    // A real syscall newer than this libseccomp (mseal, Linux 6.10) too,
    // while one the profile leaves out below that line is refused.
    if cfg!(target_arch = "x86_64") && ScmpSyscall::from_name("mseal").is_err() {
        expect_errno("mseal", sys(462, [0; 4]), libc::ENOSYS)?;
    }
    expect_errno("swapoff", sys(libc::SYS_swapoff, [0; 4]), libc::EPERM)?;

    // A busybox shell works, and its children inherit the filter.
    if busybox {
        let out = Command::new("busybox")
            .args(["sh", "-c", "echo hi | cat; ls / >/dev/null && grep -q '^Seccomp:.*2$' /proc/self/status && echo filtered"])
            .output()
            .map_err(|e| format!("run busybox: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || stdout != "hi\nfiltered\n" {
            return Err(format!(
                "busybox sh: {} {stdout:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    } else {
        eprintln!("busybox not installed: shell check left out");
    }
    Ok(())
}

fn child_notify() -> Check {
    let path = std::env::var(LISTENER_ENV).map_err(|_| "no listener path".to_owned())?;
    let listener = load_config(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["getppid"], "action": "SCMP_ACT_NOTIFY" }],
    }))?
    .ok_or("no listener descriptor")?;
    let mut state = oci_spec::runtime::State::default();
    state
        .set_version("1.2.0".to_owned())
        .set_id("notify-test".to_owned())
        .set_status(oci_spec::runtime::ContainerState::Creating)
        .set_pid(Some(std::process::id() as i32))
        .set_bundle("/bundle".into());
    send_listener_fd(
        std::path::Path::new(&path),
        std::os::fd::AsFd::as_fd(&listener),
        &state,
        Some("hello agent"),
    )
    .map_err(|e| format!("send: {e:?}"))?;
    drop(listener);
    // The agent answers 4242 for getppid.
    match sys(libc::SYS_getppid, [0; 4]) {
        Ok(4242) => Ok(()),
        other => Err(format!("getppid through the agent: {other:?}")),
    }
}

fn child_tsync() -> Check {
    let (to_thread, requests) = std::sync::mpsc::channel::<()>();
    let (to_main, answers) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        while requests.recv().is_ok() {
            let _ = to_main.send(sys(libc::SYS_getppid, [0; 4]));
        }
    });
    load_config(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC"],
        "syscalls": [{ "names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES }],
    }))?;
    to_thread.send(()).map_err(|_| "thread gone")?;
    let got = answers.recv().map_err(|_| "no answer")?;
    drop(to_thread);
    other.join().map_err(|_| "thread panicked")?;
    expect_errno("getppid in another thread", got, libc::EACCES)
}

fn child_trace_without_tracer() -> Check {
    load_config(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["getppid"], "action": "SCMP_ACT_TRACE" }],
    }))?;
    // With no tracer attached the kernel fails the call with ENOSYS.
    expect_errno(
        "getppid (trace, no tracer)",
        sys(libc::SYS_getppid, [0; 4]),
        libc::ENOSYS,
    )
}

fn child_fatal(action: &str) -> Check {
    load_config(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{ "names": ["getppid"], "action": action }],
    }))?;
    eprintln!("calling getppid");
    let got = sys(libc::SYS_getppid, [0; 4]);
    Err(format!("still alive after {action}: {got:?}"))
}

#[test]
fn kernel_errno_log_and_allow() {
    vessel_testkit::require!(seccomp_available(), "seccomp filters not available");
    assert_child_ok("errno-and-allow");
}

#[test]
fn kernel_every_operator() {
    vessel_testkit::require!(seccomp_available(), "seccomp filters not available");
    assert_child_ok("operators");
}

#[test]
fn kernel_same_index_is_or_and_different_indexes_are_and() {
    vessel_testkit::require!(seccomp_available(), "seccomp filters not available");
    assert_child_ok("same-index-or");
}

#[test]
fn kernel_default_profile() {
    vessel_testkit::require!(seccomp_available(), "seccomp filters not available");
    assert_child_ok("default-profile");
}

#[test]
fn kernel_tsync_covers_other_threads() {
    vessel_testkit::require!(seccomp_available(), "seccomp filters not available");
    assert_child_ok("tsync");
}

#[test]
fn kernel_trace_without_tracer() {
    vessel_testkit::require!(seccomp_available(), "seccomp filters not available");
    assert_child_ok("trace-without-tracer");
}

#[test]
fn kernel_kill_process_and_trap_end_with_sigsys() {
    vessel_testkit::require!(seccomp_available(), "seccomp filters not available");
    for scenario in ["kill-process", "trap"] {
        let (status, stderr) = run_child(scenario);
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{scenario}: {status}\n{stderr}"
        );
        assert!(stderr.contains("calling getppid"), "{scenario}: {stderr}");
        assert!(!stderr.contains("still alive"), "{scenario}: {stderr}");
    }
}

#[test]
fn kernel_notify_listener_reaches_the_agent() {
    vessel_testkit::require!(seccomp_available(), "seccomp filters not available");
    let dir = vessel_testkit::TempRoot::new("seccomp-agent");
    let path = dir.join("agent.sock");
    let agent = UnixListener::bind(&path).expect("bind the agent socket");
    let mut child = child_command("notify")
        .env(LISTENER_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the child");
    let mut child_out = child.stdout.take().expect("piped stdout");

    // Wait for the connection, or for the child to end without connecting
    // (its stdout closes), whichever comes first.
    let (conn, _) = loop {
        let mut fds = [
            libc::pollfd {
                fd: agent.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: child_out.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the whole call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        assert!(rc > 0, "poll: {}", std::io::Error::last_os_error());
        if fds[0].revents & libc::POLLIN != 0 {
            break agent.accept().expect("accept");
        }
        let mut buf = [0u8; 4096];
        let n = child_out.read(&mut buf).expect("read child stdout");
        if n == 0 {
            let out = child.wait_with_output().expect("child output");
            panic!(
                "child ended without connecting: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };

    // One message: the process state as JSON with the descriptor attached.
    let mut payload = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut payload)];
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .expect("recvmsg");
    let mut received = None;
    for c in msg.cmsgs().expect("control messages") {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            received = fds.first().copied();
        }
    }
    let first_len = msg.bytes;
    let notify_fd = received.expect("a descriptor came with the state");
    // SAFETY: SCM_RIGHTS gave this process a new descriptor that nothing else owns.
    let notify_fd =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(notify_fd) };
    let mut rest = Vec::new();
    (&conn)
        .read_to_end(&mut rest)
        .expect("read the rest until the runtime closes");
    let mut json_bytes = payload[..first_len].to_vec();
    json_bytes.extend(rest);
    let state: serde_json::Value = serde_json::from_slice(&json_bytes).expect("the state is JSON");
    assert_eq!(state["fds"], json!(["seccompFd"]));
    assert_eq!(state["metadata"], json!("hello agent"));
    assert_eq!(state["ociVersion"], json!("1.2.0"));
    assert_eq!(state["pid"], json!(child.id()));
    assert_eq!(state["state"]["id"], json!("notify-test"));
    assert_eq!(state["state"]["status"], json!("creating"));
    assert_eq!(state["state"]["pid"], json!(child.id()));

    // Act as the agent: answer the child's getppid with 4242. Wait for the
    // notification, or for the filter's last user to end (POLLHUP).
    let mut pfd = libc::pollfd {
        fd: notify_fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd for the whole call.
    let rc = unsafe { libc::poll(&raw mut pfd, 1, -1) };
    assert!(rc > 0, "poll: {}", std::io::Error::last_os_error());
    assert!(
        pfd.revents & libc::POLLIN != 0,
        "the child ended before asking (revents {:#x})",
        pfd.revents
    );
    let req =
        libseccomp::ScmpNotifReq::receive(notify_fd.as_raw_fd()).expect("receive the notification");
    // The kernel reports the thread that made the call: one of the child's.
    assert!(
        std::path::Path::new(&format!("/proc/{}/task/{}", child.id(), req.pid)).exists(),
        "notification from thread {} of another process",
        req.pid
    );
    assert_eq!(
        req.data.syscall,
        ScmpSyscall::from_name("getppid").expect("getppid")
    );
    libseccomp::ScmpNotifResp::new_val(req.id, 4242, libseccomp::ScmpNotifRespFlags::empty())
        .respond(notify_fd.as_raw_fd())
        .expect("respond");

    let out = child.wait_with_output().expect("child output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child failed ({}):\n{stderr}",
        out.status
    );
    assert!(stderr.contains("scenario notify passed"), "{stderr}");
}
