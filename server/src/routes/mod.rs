//! One router per resource.

pub mod spans;
pub mod system;
pub mod timeline;
