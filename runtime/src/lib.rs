//! Vessel's OCI runtime.
//!
//! This crate implements the OCI runtime specification (1.x) on Linux: it
//! turns a bundle (a root filesystem plus `config.json`) into a running,
//! isolated process, and manages that process's lifecycle afterwards. The
//! `vessel-runtime` binary is a thin command-line front end that speaks runc's
//! command-line contract, so podman, conmon and containerd can drive it.
//!
//! It owns namespaces, mounts, devices, capabilities, seccomp, rlimits, hooks,
//! the console socket and cgroups for the containers it creates, and the
//! per-container state under its `--root` directory. It does not own images,
//! networks or logs: those belong to the daemon, which hands the runtime a
//! ready bundle.
