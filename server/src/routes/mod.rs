//! One router per resource.

pub mod chat;
pub mod checkpoints;
pub mod spans;
pub mod system;
pub mod timeline;
pub mod web;
