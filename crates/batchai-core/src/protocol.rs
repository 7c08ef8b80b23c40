//! The node-agent protocol: what `batchai agent` and the server say to each other over
//! `/agent/v1/*` (separate from the ARM API; each node authenticates with its own credential).
//!
//! - `POST /agent/v1/join` (bearer: a join token): [`JoinRequest`] → [`JoinResponse`].
//! - `POST /agent/v1/sync` (bearer: the node credential): [`SyncRequest`] → [`SyncResponse`].
//!   The agent reports what it observes; the server answers what the node must run. When
//!   nothing differs the server holds the request up to `wait_ms` and answers as soon as
//!   something changes (a long poll), which is also the node's heartbeat. Repeating a sync
//!   changes nothing; reports carry the epoch of the assignment they are about, and a report
//!   for an epoch that is no longer current is ignored (a node that was given up for lost and
//!   comes back cannot finish, or fail, a job that has moved on).
//! - `GET|PUT /agent/v1/storage/{account}/{share}[/{path}]` (bearer: the node credential): the
//!   shares of the node's cluster and job, for agents without the shared filesystem; a share's
//!   listing is a list of [`StagedFile`].

use serde::{Deserialize, Serialize};

use crate::models::{ClusterSpec, JobSpec};

/// What a node is and has; sent on join and whenever it changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub hostname: String,
    /// Address other nodes and clients reach it at (MPI host files, remote login).
    pub address: String,
    pub ssh_port: u16,
    pub cores: u32,
    pub memory_mb: u64,
    pub gpus: Vec<Gpu>,
    /// VM sizes this node serves, as configured; `*` serves every size.
    pub vm_sizes: Vec<String>,
    pub agent_version: String,
    /// How the agent runs jobs: `docker` (containers, and host processes for jobs without
    /// `containerSettings`) or `process` (host processes only).
    #[serde(default)]
    pub runtime: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_mb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub facts: NodeFacts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_id: String,
    /// The node's own bearer credential; shown once, stored hashed by the server.
    pub credential: String,
    /// The shared storage root where shares and containers live (same path on every machine).
    pub storage_root: String,
    /// Warnings about the facts, e.g. resources below a VM size the node claims.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncRequest {
    #[serde(default)]
    pub facts: Option<NodeFacts>,
    /// The outcome of preparing the node for its cluster (mounts, setup task).
    #[serde(default)]
    pub setup: Option<SetupReport>,
    /// Every task the agent still knows of, running or finished but not yet acknowledged.
    #[serde(default)]
    pub tasks: Vec<TaskReport>,
    /// How long the server may hold the request when nothing changes (capped by the server).
    #[serde(default)]
    pub wait_ms: u64,
    /// The `version` of the last response the agent acted on: the server answers at once when
    /// what it wants differs from that, and otherwise holds the request.
    #[serde(default)]
    pub known: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetupReport {
    /// The allocation this report is about ([`ClusterAssignment::alloc_epoch`]).
    pub alloc_epoch: i64,
    /// `None` when the node is ready; otherwise why it is unusable.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskPhase {
    /// Directories, mounts and job preparation.
    Preparing,
    Running,
    Exited,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The job's key (its case-folded ARM id).
    pub job: String,
    pub epoch: i64,
    pub phase: TaskPhase,
    /// For `Exited`: the exit code of this node's part (absent when it was killed).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// For `Exited`: why it failed, as `executionInfo.errors` shows it.
    #[serde(default)]
    pub error: Option<TaskError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// A digest of the rest of the response; echoed back as [`SyncRequest::known`].
    pub version: String,
    /// The node's state as the server records it (`free`, `preparing`, `idle`, `running`,
    /// `leaving`, `unusable`).
    pub state: String,
    /// The cluster the node belongs to, if any; a node without one unmounts everything.
    pub cluster: Option<ClusterAssignment>,
    /// What the node must be running. A task the agent runs that is not here, or is here with
    /// `stop`, must be stopped; an exited task that is not here is acknowledged.
    pub tasks: Vec<TaskAssignment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterAssignment {
    pub key: String,
    /// The cluster's ARM id.
    pub id: String,
    /// Bumped each time the node is given to a cluster; setup reports name it.
    pub alloc_epoch: i64,
    /// `stdOutErrPathSuffix` of the setup task (filled by the server on create).
    pub spec: ClusterSpec,
    /// What the file servers the cluster mounts export (absent from older servers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_servers: Vec<FileServerExport>,
}

/// A file server a cluster or job mounts, resolved by the server from `fileServer.id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileServerExport {
    /// The file server's case-folded ARM id.
    pub key: String,
    /// `host:/path` (NFS) or an absolute path every node has.
    pub export: String,
    /// The declared options for `mount -o`; empty for the defaults.
    #[serde(default)]
    pub mount_options: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssignment {
    pub job: String,
    pub epoch: i64,
    /// This node's index among the job's nodes; 0 is the master.
    pub rank: usize,
    /// The job's ARM id and instance uid.
    pub id: String,
    pub uid: String,
    pub output_segment: String,
    /// The full definition, secrets included (the node must export them).
    pub spec: JobSpec,
    /// The job's nodes in rank order.
    pub nodes: Vec<Peer>,
    /// Wall-clock limit in seconds, counted from the job's start.
    pub max_wall_clock_secs: i64,
    /// When the job started (epoch ms), for the wall-clock limit.
    pub started_at: i64,
    /// The job is being terminated: stop it and report it exited.
    pub stop: bool,
    /// What the file servers the job mounts export (absent from older servers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_servers: Vec<FileServerExport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub id: String,
    pub address: String,
    /// GPUs of the node (for process counts per node).
    pub gpus: u32,
}

/// One file of a share, as the agent-storage listing gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedFile {
    /// `/`-separated, relative to the share.
    pub path: String,
    pub size: u64,
    pub modified_ms: i64,
}
