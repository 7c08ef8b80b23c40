//! Storage accounts and on-prem NFS file servers: the shared storage clusters and jobs mount.
//! Written once for both databases, like [`crate::sql`].
//!
//! An account's key is stored only as the cipher the server made of it; the store neither
//! encrypts nor reads it. Names are case-folded here, so two spellings of one name can never
//! become two rows.

use async_trait::async_trait;
use batchai_core::time::Millis;
use sqlx::Row;

use crate::sql::is_unique_violation;
use crate::{PgStore, Result, SqliteStore, StoreError};

/// A storage account as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageAccountRow {
    /// Lower-case account name.
    pub name: String,
    /// The account key, encrypted by the server; opaque here.
    pub key_cipher: String,
    pub created_at: Millis,
    pub key_rotated_at: Millis,
}

/// An NFS export declared by the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct FileServerRow {
    /// Lower-case name.
    pub name: String,
    /// What a node mounts, e.g. `nfs-host:/export/path`.
    pub export: String,
    /// Mount options as given to `mount -o`; empty for the defaults.
    pub mount_options: String,
    pub created_at: Millis,
}

/// Storage account and file server persistence (a supertrait of [`crate::Store`]).
#[async_trait]
pub trait Storage: Send + Sync {
    /// Fails with [`StoreError::Conflict`] when an account of that name exists.
    async fn create_storage_account(&self, a: &StorageAccountRow) -> Result<()>;
    async fn get_storage_account(&self, name: &str) -> Result<Option<StorageAccountRow>>;
    /// All accounts by name.
    async fn list_storage_accounts(&self) -> Result<Vec<StorageAccountRow>>;
    /// Replaces an account's key, recording `now` as its rotation time; false when missing.
    async fn set_storage_account_key(&self, name: &str, key_cipher: &str, now: Millis) -> Result<bool>;
    async fn delete_storage_account(&self, name: &str) -> Result<bool>;

    /// Inserts a file server, or replaces the export and options of the one of that name
    /// (keeping its `created_at`).
    async fn declare_file_server(&self, f: &FileServerRow) -> Result<()>;
    async fn get_file_server(&self, name: &str) -> Result<Option<FileServerRow>>;
    /// All file servers by name.
    async fn list_file_servers(&self) -> Result<Vec<FileServerRow>>;
    async fn delete_file_server(&self, name: &str) -> Result<bool>;
}

fn storage_account_from<R: Row>(row: &R) -> Result<StorageAccountRow>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StorageAccountRow {
        name: row.try_get("name")?,
        key_cipher: row.try_get("key_cipher")?,
        created_at: row.try_get("created_at")?,
        key_rotated_at: row.try_get("key_rotated_at")?,
    })
}

fn file_server_from<R: Row>(row: &R) -> Result<FileServerRow>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(FileServerRow {
        name: row.try_get("name")?,
        export: row.try_get("export")?,
        mount_options: row.try_get("mount_options")?,
        created_at: row.try_get("created_at")?,
    })
}

macro_rules! storage_store {
    ($store:ident) => {
        #[async_trait]
        impl Storage for $store {
            async fn create_storage_account(&self, a: &StorageAccountRow) -> Result<()> {
                sqlx::query(
                    "INSERT INTO storage_accounts (name, key_cipher, created_at, key_rotated_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(a.name.to_lowercase())
                .bind(&a.key_cipher)
                .bind(a.created_at)
                .bind(a.key_rotated_at)
                .execute(self.writer())
                .await
                .map_err(|e| if is_unique_violation(&e) { StoreError::Conflict } else { e.into() })?;
                Ok(())
            }

            async fn get_storage_account(&self, name: &str) -> Result<Option<StorageAccountRow>> {
                let row = sqlx::query(
                    "SELECT name, key_cipher, created_at, key_rotated_at FROM storage_accounts WHERE name = $1",
                )
                .bind(name.to_lowercase())
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(storage_account_from).transpose()
            }

            async fn list_storage_accounts(&self) -> Result<Vec<StorageAccountRow>> {
                let rows = sqlx::query(
                    "SELECT name, key_cipher, created_at, key_rotated_at FROM storage_accounts ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(storage_account_from).collect()
            }

            async fn set_storage_account_key(&self, name: &str, key_cipher: &str, now: Millis) -> Result<bool> {
                let done =
                    sqlx::query("UPDATE storage_accounts SET key_cipher = $2, key_rotated_at = $3 WHERE name = $1")
                        .bind(name.to_lowercase())
                        .bind(key_cipher)
                        .bind(now)
                        .execute(self.writer())
                        .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_storage_account(&self, name: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM storage_accounts WHERE name = $1")
                    .bind(name.to_lowercase())
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn declare_file_server(&self, f: &FileServerRow) -> Result<()> {
                // One statement rather than read-then-write: two servers declaring the same
                // name at once both succeed, the later one's export standing.
                sqlx::query(
                    "INSERT INTO file_servers (name, export, mount_options, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (name) DO UPDATE SET export = excluded.export, \
                     mount_options = excluded.mount_options",
                )
                .bind(f.name.to_lowercase())
                .bind(&f.export)
                .bind(&f.mount_options)
                .bind(f.created_at)
                .execute(self.writer())
                .await?;
                Ok(())
            }

            async fn get_file_server(&self, name: &str) -> Result<Option<FileServerRow>> {
                let row =
                    sqlx::query("SELECT name, export, mount_options, created_at FROM file_servers WHERE name = $1")
                        .bind(name.to_lowercase())
                        .fetch_optional(&self.pool)
                        .await?;
                row.as_ref().map(file_server_from).transpose()
            }

            async fn list_file_servers(&self) -> Result<Vec<FileServerRow>> {
                let rows =
                    sqlx::query("SELECT name, export, mount_options, created_at FROM file_servers ORDER BY name")
                        .fetch_all(&self.pool)
                        .await?;
                rows.iter().map(file_server_from).collect()
            }

            async fn delete_file_server(&self, name: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM file_servers WHERE name = $1")
                    .bind(name.to_lowercase())
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() == 1)
            }
        }
    };
}

storage_store!(PgStore);
storage_store!(SqliteStore);
