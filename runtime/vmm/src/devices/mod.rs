//! Device models: the legacy PC devices and the virtio devices.

pub mod legacy;
pub mod virtio;
