//! stub
pub mod content;
pub mod digest;
pub mod layer;
mod sys;
mod targuard;
