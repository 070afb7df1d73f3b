//! `features`: what this runtime supports, in the runtime-spec's
//! features.md document shape, so that engines can probe it.

use serde_json::{Value, json};

use crate::{cgroups, mounts, seccomp, spec};

/// The features document.
pub fn document() -> Value {
    let caps: Vec<String> = caps::all().iter().map(ToString::to_string).collect();
    let to_strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let layout = cgroups::layout();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": spec::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": mounts::KNOWN_OPTIONS,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": {
                "v1": layout != cgroups::Layout::V2,
                "v2": layout != cgroups::Layout::V1,
                "systemd": false,
                "systemdUser": false,
                "rdma": false
            },
            "seccomp": {
                "enabled": true,
                "actions": to_strings(seccomp::supported_actions().into_iter().map(seccomp::action_name).collect()),
                "operators": to_strings(seccomp::supported_operators().into_iter().map(seccomp::operator_name).collect()),
                "archs": to_strings(seccomp::supported_architectures().into_iter().map(seccomp::arch_name).collect()),
                "knownFlags": to_strings(seccomp::known_flags().into_iter().map(seccomp::flag_name).collect()),
                "supportedFlags": to_strings(seccomp::supported_flags().into_iter().map(seccomp::flag_name).collect())
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}}
        },
        "annotations": {
            "io.vessel.runtime.version": crate::VERSION,
            "io.vessel.runtime.libseccomp.version": seccomp::libseccomp_version(),
            spec::ANNOTATION_SANDBOX: "namespaces"
        }
    })
}
