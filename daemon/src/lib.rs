//! `vesseld`: Vessel's engine library. Subsystems live in their own modules;
//! the Docker API server wires them together.

pub mod images;
pub mod build;
