//! One router per resource.

pub mod chat;
pub mod checkpoints;
pub mod evals;
pub mod memory;
pub mod spans;
pub mod system;
pub mod timeline;
pub mod web;
