//! Storage accounts: names, keys, and the master key that keeps the keys encrypted at rest.
//!
//! SharedKey and SAS checking need each account's key itself (not a hash), so the store holds
//! it sealed with AES-256-GCM under a master key that lives outside the database (a file only
//! the server's user reads): a database dump or backup alone reveals no account key. The
//! account name is the AEAD's associated data, so a sealed key copied onto another account's
//! row does not open.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use batchai_core::time::now_millis;
use batchai_store::{StorageAccountRow, Store, StoreError};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Sealed keys start with this, so a later scheme can tell them apart.
const SEALED_PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("'{0}' is not a valid storage account name: 3 to 24 characters, lower-case letters and digits only")]
    BadName(String),
    #[error("storage account '{0}' exists already")]
    Exists(String),
    #[error("no storage account '{0}'")]
    NotFound(String),
    #[error("the master key in {path} is unusable: {why}")]
    MasterKey { path: String, why: String },
    #[error("the stored key of account '{0}' does not open with this master key (another server's key file?)")]
    Sealed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Azure's rule for account names; it also keeps names safe as directory names.
pub fn check_name(name: &str) -> Result<(), AccountError> {
    let ok = (3..=24).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok { Ok(()) } else { Err(AccountError::BadName(name.to_owned())) }
}

/// The key that seals account keys.
pub struct MasterKey {
    key: LessSafeKey,
}

impl MasterKey {
    /// Reads the key file (32 bytes, base64), creating it (mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<Self, AccountError> {
        Self::read(path, true)
    }

    /// Reads the key file; a missing one is an error. What runs beside the servers (`batchai
    /// admin`) must use their key: a new one would seal keys no server can open.
    pub fn load(path: &Path) -> Result<Self, AccountError> {
        Self::read(path, false)
    }

    fn read(path: &Path, create: bool) -> Result<Self, AccountError> {
        let bad = |why: String| AccountError::MasterKey { path: path.display().to_string(), why };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
                return Err(bad(
                    "it does not exist: the server creates it on its first start; point storage_master_key at \
                     the file the servers use"
                        .into(),
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut raw = [0u8; 32];
                SystemRandom::new().fill(&mut raw).map_err(|_| bad("no randomness".into()))?;
                let text = STANDARD.encode(raw);
                write_new_private(path, &text)?;
                text
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let raw = STANDARD.decode(text.trim()).map_err(|e| bad(e.to_string()))?;
        Self::from_bytes(&raw).ok_or_else(|| bad(format!("{} bytes instead of 32", raw.len())))
    }

    pub fn from_bytes(raw: &[u8]) -> Option<Self> {
        let key = UnboundKey::new(&AES_256_GCM, raw).ok()?;
        Some(Self { key: LessSafeKey::new(key) })
    }

    fn seal(&self, account: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("the system random source works");
        let mut data = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(account.as_bytes()), &mut data)
            .expect("AES-GCM seals any input of this size");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(out))
    }

    fn open(&self, account: &str, sealed: &str) -> Option<Vec<u8>> {
        let raw = STANDARD.decode(sealed.strip_prefix(SEALED_PREFIX)?).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, data) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::from(account.as_bytes()), &mut data).ok()?;
        Some(plain.to_vec())
    }
}

/// Creates `path` with mode 0600; fails if it exists (two servers starting at once keep the
/// first one's key: the loser reads it back).
fn write_new_private(path: &Path, text: &str) -> Result<(), AccountError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut f) => {
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A new account key: 64 random bytes, base64, as Azure hands them out.
fn new_key() -> Vec<u8> {
    let mut key = vec![0u8; 64];
    SystemRandom::new().fill(&mut key).expect("the system random source works");
    key
}

/// The storage accounts the Files endpoint serves. Keys are read from the store on every
/// request (one indexed read, next to a request that moves up to 4 MiB): a rotation or a
/// deletion made through any server takes effect at once everywhere.
pub struct Accounts {
    store: Arc<dyn Store>,
    master: MasterKey,
}

impl Accounts {
    pub fn new(store: Arc<dyn Store>, master: MasterKey) -> Self {
        Self { store, master }
    }

    /// Creates an account; returns its key (base64), which is shown once.
    pub async fn create(&self, name: &str) -> Result<String, AccountError> {
        check_name(name)?;
        let key = new_key();
        let now = now_millis();
        let row = StorageAccountRow {
            name: name.to_owned(),
            key_cipher: self.master.seal(name, &key),
            created_at: now,
            key_rotated_at: now,
        };
        match self.store.create_storage_account(&row).await {
            Err(StoreError::Conflict) => Err(AccountError::Exists(name.to_owned())),
            other => other.map(|()| STANDARD.encode(&key)).map_err(Into::into),
        }
    }

    /// Replaces an account's key; returns the new one. The old key stops working at once.
    pub async fn rotate(&self, name: &str) -> Result<String, AccountError> {
        let key = new_key();
        if !self.store.set_storage_account_key(name, &self.master.seal(name, &key), now_millis()).await? {
            return Err(AccountError::NotFound(name.to_owned()));
        }
        Ok(STANDARD.encode(&key))
    }

    pub async fn delete(&self, name: &str) -> Result<(), AccountError> {
        if !self.store.delete_storage_account(name).await? {
            return Err(AccountError::NotFound(name.to_owned()));
        }
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<StorageAccountRow>, AccountError> {
        Ok(self.store.list_storage_accounts().await?)
    }

    /// The key of `name`, `None` when there is no such account.
    pub async fn key(&self, name: &str) -> Result<Option<Vec<u8>>, AccountError> {
        match self.store.get_storage_account(name).await? {
            Some(row) => {
                Ok(Some(self.master.open(name, &row.key_cipher).ok_or_else(|| AccountError::Sealed(name.to_owned()))?))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_for_their_account_and_master() {
        let master = MasterKey::from_bytes(&[7; 32]).unwrap();
        let sealed = master.seal("acct", b"secret");
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("secret"));
        assert_eq!(master.open("acct", &sealed).as_deref(), Some(&b"secret"[..]));
        assert_eq!(master.open("other", &sealed), None, "bound to the account name");
        assert_eq!(MasterKey::from_bytes(&[8; 32]).unwrap().open("acct", &sealed), None);
        assert_ne!(master.seal("acct", b"secret"), sealed, "fresh nonce each time");
    }

    #[test]
    fn account_names_follow_azure() {
        for ok in ["abc", "batchaidev", "a1b2c3", "x23456789012345678901234"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "Abc", "a-b", "a_b", "a.b", "", "x234567890123456789012345", "../x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn master_key_file_is_created_private_and_reread() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/storage-master.key");
        assert!(matches!(MasterKey::load(&path), Err(AccountError::MasterKey { .. })), "load never creates");
        assert!(!path.exists());
        let a = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let b = MasterKey::load(&path).unwrap();
        assert_eq!(b.open("x", &a.seal("x", b"k")).as_deref(), Some(&b"k"[..]));
        std::fs::write(&path, "short").unwrap();
        assert!(matches!(MasterKey::load_or_create(&path), Err(AccountError::MasterKey { .. })));
    }
}
