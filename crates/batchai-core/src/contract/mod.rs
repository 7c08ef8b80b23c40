//! The runtime contract of a job on a node (`batchai-api.md` §4–6), as pure functions shared by
//! the node agent (which builds directories, environment and command lines from it) and the
//! server (which finds a job's output files from it).
//!
//! - [`paths`]: the output path segment, `$VAR` expansion, and where mount volumes live under
//!   the storage root.
//! - [`env`]: every `$AZ_BATCHAI_*` variable of a job's processes.
//! - [`toolkit`]: which processes each toolkit starts on which node, with which command line
//!   and log files.
//! - [`volumes`]: every mount volume as a node mounts it (links, NFS mounts of file servers,
//!   unmanaged file systems' mount commands).

pub mod env;
pub mod paths;
pub mod toolkit;
pub mod volumes;
