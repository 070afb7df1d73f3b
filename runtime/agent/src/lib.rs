//! The guest agent of Vessel's microVM and its protocol.
//!
//! `vessel-agent` is PID 1 inside the VM: it mounts the image layers (one
//! read-only disk each) under an overlay with a writable scratch upper,
//! runs the container's processes, forwards their stdio and signals over
//! the channel (a virtio-console port), reports exit statuses, and resets
//! the VM at the end. The library holds the [`protocol`] both sides speak,
//! the [`host`] client a runtime uses, and the [`guest`] side itself.

pub mod guest;
pub mod host;
pub mod protocol;
