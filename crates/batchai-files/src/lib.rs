//! The Azure Files data plane, served from the storage root.
//!
//! A listener of its own answers path-style requests (`http(s)://host:port/{account}/{share}/{path}`)
//! the way azure-storage-file 2.1.0 and azure-storage-file-share 12.x make them: shares,
//! directories, files, ranged reads and writes, listings. What it owns:
//! - [`accounts`]: storage accounts and their keys, sealed at rest under a master key.
//! - `auth`: SharedKey and SAS checking.
//! - [`shares`]: the file system behind it (`{storage_root}/{account}/{share}`, the directories
//!   clusters mount), with atomic uploads.
//! - `handler`: one request: route by method and `restype`/`comp`, authorize, act, answer with
//!   the service's headers, or its error XML.

pub mod accounts;
mod auth;
mod error;
mod handler;
pub mod shares;
mod xml;

use std::sync::Arc;

use axum::Router;

pub use accounts::{AccountError, Accounts, MasterKey};
pub use error::StorageError;
pub use shares::Shares;

/// The quota every share reports, in GiB (Azure's default; nothing enforces it here).
const SHARE_QUOTA_GIB: u64 = 5120;

/// The one security descriptor every file and directory reports: POSIX permissions are not
/// mapped to Windows ACLs.
const PERMISSION_KEY: &str = "batchai-default";

/// The `x-ms-version` answered when a request names none.
const SERVICE_VERSION: &str = "2019-02-02";

/// Shared by every Files request.
#[derive(Clone)]
pub struct FilesState {
    pub accounts: Arc<Accounts>,
    pub shares: Arc<Shares>,
    /// Whether this listener serves TLS (a SAS may require it).
    pub https: bool,
}

/// The Files application: every path goes to one handler, as the service routes by query.
pub fn router(state: FilesState) -> Router {
    Router::new().fallback(handler::handle).with_state(state)
}
