//! The Batch AI domain, free of I/O.
//!
//! What lives here: validated names and ARM resource ids ([`names`], [`ids`]), the 2018-05-01
//! wire models with their server-filled defaults and secret redaction ([`models`]), request
//! validation that names the offending field ([`validate`]), the state machines of jobs,
//! clusters, resources and long-running operations ([`state`]), and the table of ARM error
//! codes every crate above renders ([`error`]).

pub mod contract;
pub mod error;
pub mod ids;
pub mod models;
pub mod names;
pub mod protocol;
pub mod range;
pub mod state;
pub mod time;
pub mod validate;
pub mod vm_sizes;

pub use error::{ApiError, ErrorCode};
