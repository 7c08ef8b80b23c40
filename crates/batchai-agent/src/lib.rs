//! Node-side building blocks of `batchai agent`, the process that runs on each GPU machine.
//!
//! # Layout
//!
//! - [`runtime`]: how a job's processes are started, waited for and stopped. [`runtime::Runtime`]
//!   is the seam: [`runtime::ProcessRuntime`] runs `bash -c` in its own process group on the
//!   host; [`runtime::DockerRuntime`] runs containers (images, GPUs, mounts, reattach after an
//!   agent restart); [`runtime::FakeRuntime`] scripts outcomes for tests of the logic above it.
//! - [`images`]: the operator's image map: which image a job's container runs, or that its
//!   processes run on the host instead.
//! - [`gpus`]: which of the node's GPUs each task gets.
//! - [`facts`]: what this machine is and has (hostname, cores, memory, GPUs via `nvidia-smi`),
//!   reported to the server as [`batchai_core::protocol::NodeFacts`].
//! - [`agent`]: joining the server and the sync loop ([`agent::run`] is the entry point).
//! - [`executor`]: one node's part of a job, from directories to exit code.
//! - [`setup`]: preparing the node for its cluster (mounts, setup task).
//! - [`mounts`]: real mounts (file servers over NFS, unmanaged file systems) and unmounting.

pub mod agent;
pub mod executor;
pub mod facts;
pub mod gpus;
pub mod health;
pub mod images;
pub mod metrics;
pub mod mounts;
pub mod runtime;
pub mod setup;
pub mod staging;
