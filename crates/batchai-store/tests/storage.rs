//! Conformance of the storage account and file server half of the store, on SQLite and Postgres.

// Each test binary compiles its own copy of `common`; this one needs only the databases, not
// the resource-tree helpers.
#[allow(dead_code)]
#[macro_use]
mod common;

use batchai_store::*;
use common::Db;

mod both {
    suite!(
        storage_accounts_are_created_once_and_listed_by_name,
        storage_account_names_are_case_folded,
        storage_account_keys_rotate,
        storage_accounts_are_deleted_once,
        file_servers_are_declared_and_redeclared,
        file_servers_are_listed_by_name_and_deleted_once,
    );
}

fn account(name: &str, key: &str, at: i64) -> StorageAccountRow {
    StorageAccountRow { name: name.into(), key_cipher: key.into(), created_at: at, key_rotated_at: at }
}

fn file_server(name: &str, export: &str, options: &str, at: i64) -> FileServerRow {
    FileServerRow { name: name.into(), export: export.into(), mount_options: options.into(), created_at: at }
}

async fn storage_accounts_are_created_once_and_listed_by_name(db: &Db) {
    let s = db.open().await;
    assert!(s.list_storage_accounts().await.unwrap().is_empty());
    assert_eq!(s.get_storage_account("nosuch").await.unwrap(), None);
    let b = account("bravo", "cipher-b", 10);
    let a = account("alpha", "cipher-a", 20);
    s.create_storage_account(&b).await.unwrap();
    s.create_storage_account(&a).await.unwrap();
    let again = account("bravo", "other", 30);
    assert!(matches!(s.create_storage_account(&again).await, Err(StoreError::Conflict)));
    assert_eq!(s.get_storage_account("bravo").await.unwrap(), Some(b.clone()), "the first create stands");
    assert_eq!(s.list_storage_accounts().await.unwrap(), vec![a, b], "by name, not by creation");
    // A second server on the same database sees them.
    let other = db.open().await;
    assert_eq!(other.list_storage_accounts().await.unwrap().len(), 2);
}

async fn storage_account_names_are_case_folded(db: &Db) {
    let s = db.open().await;
    s.create_storage_account(&account("MixedCase", "c", 1)).await.unwrap();
    assert!(matches!(s.create_storage_account(&account("mixedcase", "d", 2)).await, Err(StoreError::Conflict)));
    let got = s.get_storage_account("MIXEDCASE").await.unwrap().expect("found by any spelling");
    assert_eq!((got.name.as_str(), got.key_cipher.as_str()), ("mixedcase", "c"));
    assert!(s.set_storage_account_key("MIXEDcase", "e", 3).await.unwrap());
    assert!(s.delete_storage_account("MixedCASE").await.unwrap());
    assert!(s.list_storage_accounts().await.unwrap().is_empty());
}

async fn storage_account_keys_rotate(db: &Db) {
    let s = db.open().await;
    s.create_storage_account(&account("acct", "old", 100)).await.unwrap();
    s.create_storage_account(&account("bystander", "kept", 100)).await.unwrap();
    assert!(s.set_storage_account_key("acct", "new", 500).await.unwrap());
    let got = s.get_storage_account("acct").await.unwrap().unwrap();
    assert_eq!(
        got,
        StorageAccountRow { name: "acct".into(), key_cipher: "new".into(), created_at: 100, key_rotated_at: 500 }
    );
    assert_eq!(s.get_storage_account("bystander").await.unwrap().unwrap(), account("bystander", "kept", 100));
    assert!(!s.set_storage_account_key("nosuch", "x", 600).await.unwrap(), "missing account");
    assert_eq!(s.get_storage_account("nosuch").await.unwrap(), None, "rotation creates nothing");
}

async fn storage_accounts_are_deleted_once(db: &Db) {
    let s = db.open().await;
    s.create_storage_account(&account("gone", "c", 1)).await.unwrap();
    s.create_storage_account(&account("stays", "c", 1)).await.unwrap();
    assert!(s.delete_storage_account("gone").await.unwrap());
    assert!(!s.delete_storage_account("gone").await.unwrap(), "deleted once");
    assert_eq!(s.get_storage_account("gone").await.unwrap(), None);
    assert_eq!(s.list_storage_accounts().await.unwrap(), vec![account("stays", "c", 1)]);
    // The name is free again.
    s.create_storage_account(&account("gone", "c2", 2)).await.unwrap();
    assert_eq!(s.get_storage_account("gone").await.unwrap().unwrap().key_cipher, "c2");
}

async fn file_servers_are_declared_and_redeclared(db: &Db) {
    let s = db.open().await;
    assert_eq!(s.get_file_server("nfs1").await.unwrap(), None);
    let first = file_server("nfs1", "nfs-host:/export/a", "", 100);
    s.declare_file_server(&first).await.unwrap();
    assert_eq!(s.get_file_server("nfs1").await.unwrap(), Some(first));

    // Declaring again replaces export and options but keeps when it was first declared.
    s.declare_file_server(&file_server("NFS1", "nfs-host2:/export/b", "vers=4.1,ro", 900)).await.unwrap();
    let got = s.get_file_server("nfs1").await.unwrap().unwrap();
    assert_eq!(got, file_server("nfs1", "nfs-host2:/export/b", "vers=4.1,ro", 100));
    assert_eq!(s.list_file_servers().await.unwrap().len(), 1, "updated, not duplicated");
}

async fn file_servers_are_listed_by_name_and_deleted_once(db: &Db) {
    let s = db.open().await;
    assert!(s.list_file_servers().await.unwrap().is_empty());
    let z = file_server("zulu", "z:/e", "", 1);
    let m = file_server("mike", "m:/e", "hard", 2);
    s.declare_file_server(&z).await.unwrap();
    s.declare_file_server(&m).await.unwrap();
    assert_eq!(s.list_file_servers().await.unwrap(), vec![m.clone(), z.clone()]);
    assert!(s.delete_file_server("ZULU").await.unwrap());
    assert!(!s.delete_file_server("zulu").await.unwrap(), "deleted once");
    assert_eq!(s.get_file_server("zulu").await.unwrap(), None);
    assert_eq!(s.list_file_servers().await.unwrap(), vec![m]);
    assert!(!s.delete_file_server("nosuch").await.unwrap());
}
