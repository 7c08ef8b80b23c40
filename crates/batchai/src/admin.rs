//! `batchai admin`: service principals, API tokens, join tokens, nodes, storage accounts and
//! file servers.
//! Secrets are printed once, here, and stored only as hashes (storage account keys, which
//! SharedKey checking needs, sealed under the master key).

use anyhow::{Context, bail};
use batchai_core::time::now_millis;
use clap::Subcommand;
use serde_json::json;

use crate::config::Config;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Service principals (client id + secret) for the token service.
    Sp {
        #[command(subcommand)]
        command: SpCommand,
    },
    /// Long-lived API tokens for scripts (sent as `Authorization: Bearer`).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Join tokens: what `batchai agent --join-token` presents once to become a node.
    JoinToken {
        #[command(subcommand)]
        command: JoinTokenCommand,
    },
    /// Registered nodes.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Storage accounts served by the Azure Files endpoint (`files_listen`).
    StorageAccount {
        #[command(subcommand)]
        command: StorageAccountCommand,
    },
    /// File servers: the NFS exports (or directories every node has) that Batch AI file servers
    /// of these names stand for.
    FileServer {
        #[command(subcommand)]
        command: FileServerCommand,
    },
}

#[derive(Subcommand)]
pub enum FileServerCommand {
    /// Declare (or re-declare) a file server; prints it as JSON. A `fileServers` PUT of this name
    /// (in any workspace, ignoring case) then succeeds with this export as its `mountSettings`.
    Declare {
        /// A Batch AI resource name (letters, digits, '-', '_'; up to 64).
        name: String,
        /// `host:/path` (NFS, mounted by the agent with `mount -t nfs`) or an absolute path that
        /// every node already has (linked like a share: autofs, a cluster file system, one machine).
        #[arg(long)]
        export: String,
        /// Options for `mount -o` (comma-separated), used when a reference gives none.
        #[arg(long)]
        mount_options: Option<String>,
    },
    /// List declared file servers as JSON lines.
    List,
    /// Remove a declaration. File servers created from it keep the export they were created with.
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum StorageAccountCommand {
    /// Create an account; prints its name, key (shown once) and a connection string as JSON.
    Create {
        /// 3 to 24 lower-case letters and digits, as in Azure.
        name: String,
        /// The Files endpoint clients use, for the connection string (e.g. http://127.0.0.1:10004).
        #[arg(long)]
        files_url: Option<String>,
    },
    /// List accounts (no keys).
    List,
    /// Replace an account's key; prints the new one (shown once). The old key stops working.
    RotateKey {
        name: String,
        #[arg(long)]
        files_url: Option<String>,
    },
    /// Delete an account; its shares stay on disk under the storage root.
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum JoinTokenCommand {
    /// Create a join token; prints it (shown once) as JSON.
    Create {
        #[arg(long, default_value = "batchai-join")]
        name: String,
        /// Lifetime in seconds; without it the token lasts until revoked.
        #[arg(long, allow_negative_numbers = true)]
        expires_in_secs: Option<i64>,
    },
    /// List join tokens (no secrets).
    List,
    /// Revoke a join token by id; nodes that joined with it stay.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// List nodes as JSON lines: state, cluster, job, address, GPUs, last heartbeat.
    List,
}

#[derive(Subcommand)]
pub enum SpCommand {
    /// Create a principal; prints its client id and secret (shown once) as JSON.
    Create {
        /// Subscription it may use (repeat for several).
        #[arg(long = "subscription", required = true)]
        subscriptions: Vec<String>,
        #[arg(long, default_value = "batchai-principal")]
        name: String,
    },
    /// List principals (no secrets).
    List,
    /// Delete a principal: it gets no new tokens; access tokens already issued lapse at expiry.
    Delete { client_id: String },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token; prints it (shown once) as JSON.
    Create {
        #[arg(long = "subscription", required = true)]
        subscriptions: Vec<String>,
        #[arg(long, default_value = "batchai-token")]
        name: String,
        /// Lifetime in seconds; without it the token lasts until revoked.
        #[arg(long, allow_negative_numbers = true)]
        expires_in_secs: Option<i64>,
    },
    /// Revoke an API token by id.
    Revoke { id: String },
}

/// Creates a join token (a new random one unless `given`); returns its id and clear text
/// (shown once).
pub async fn create_join_token(
    store: &dyn batchai_store::Store,
    name: &str,
    expires_in_secs: Option<i64>,
    given: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let now = now_millis();
    let token = given.map_or_else(|| format!("bai_join_{}", batchai_api::auth::new_secret()), str::to_owned);
    let t = batchai_store::JoinToken {
        id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        token_hash: batchai_api::auth::hash_secret(&token),
        created_at: now,
        expires_at: expires_in_secs.map(|s| now + s * 1000),
        revoked_at: None,
    };
    store.create_join_token(&t).await?;
    Ok((t.id, token))
}

pub async fn run(cfg: &Config, command: AdminCommand) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let shared = batchai_store::connect(&cfg.database_url()).await.context("opening the database")?;
    let store = shared.as_ref();
    let keys = batchai_api::auth::Keys::load(store).await?;
    match command {
        AdminCommand::Sp { command: SpCommand::Create { subscriptions, name } } => {
            check_subscriptions(&subscriptions)?;
            let (p, secret) = batchai_api::auth::create_principal(store, &name, &subscriptions).await?;
            println!(
                "{}",
                json!({"client_id": p.client_id, "client_secret": secret, "tenant": keys.tenant,
                       "subscriptions": p.subscriptions, "name": p.name})
            );
        }
        AdminCommand::Sp { command: SpCommand::List } => {
            for p in store.list_principals().await? {
                println!("{}", json!({"client_id": p.client_id, "name": p.name, "subscriptions": p.subscriptions}));
            }
        }
        AdminCommand::Sp { command: SpCommand::Delete { client_id } } => {
            if !store.delete_principal(&client_id).await? {
                bail!("no principal with client id {client_id}");
            }
            println!("{}", json!({"deleted": client_id}));
        }
        AdminCommand::Token { command: TokenCommand::Create { subscriptions, name, expires_in_secs } } => {
            check_subscriptions(&subscriptions)?;
            let expires_at = expires_in_secs.map(|s| now_millis() + s * 1000);
            let (t, token) = batchai_api::auth::create_api_token(store, &name, &subscriptions, expires_at).await?;
            println!(
                "{}",
                json!({"id": t.id, "token": token, "name": t.name, "subscriptions": t.subscriptions,
                       "expires_at": t.expires_at.map(batchai_core::time::to_rfc3339)})
            );
        }
        AdminCommand::Token { command: TokenCommand::Revoke { id } } => {
            if !store.revoke_token(&id, now_millis()).await? {
                bail!("no active token with id {id}");
            }
            println!("{}", json!({"revoked": id}));
        }
        AdminCommand::JoinToken { command: JoinTokenCommand::Create { name, expires_in_secs } } => {
            let (id, token) = create_join_token(store, &name, expires_in_secs, None).await?;
            println!("{}", json!({"id": id, "join_token": token, "name": name}));
        }
        AdminCommand::JoinToken { command: JoinTokenCommand::List } => {
            for t in store.list_join_tokens().await? {
                println!(
                    "{}",
                    json!({"id": t.id, "name": t.name, "created_at": batchai_core::time::to_rfc3339(t.created_at),
                           "expires_at": t.expires_at.map(batchai_core::time::to_rfc3339),
                           "revoked": t.revoked_at.is_some()})
                );
            }
        }
        AdminCommand::JoinToken { command: JoinTokenCommand::Revoke { id } } => {
            if !store.revoke_join_token(&id, now_millis()).await? {
                bail!("no active join token with id {id}");
            }
            println!("{}", json!({"revoked": id}));
        }
        AdminCommand::Node { command: NodeCommand::List } => {
            for n in store.list_nodes(None).await? {
                println!(
                    "{}",
                    json!({"id": n.id, "state": n.state.as_str(), "cluster": n.cluster_key, "job": n.job_key,
                           "hostname": n.hostname, "address": n.address, "ssh_port": n.ssh_port, "gpus": n.gpus,
                           "error": n.error, "last_seen": batchai_core::time::to_rfc3339(n.last_seen)})
                );
            }
        }
        AdminCommand::StorageAccount { command } => storage_account(cfg, shared.clone(), command).await?,
        AdminCommand::FileServer { command } => file_server(store, command).await?,
    }
    Ok(())
}

fn file_server_json(f: &batchai_store::FileServerRow) -> serde_json::Value {
    json!({"name": f.name, "export": f.export, "mount_options": f.mount_options,
           "created_at": batchai_core::time::to_rfc3339(f.created_at)})
}

async fn file_server(store: &dyn batchai_store::Store, command: FileServerCommand) -> anyhow::Result<()> {
    use batchai_core::contract::volumes::{Export, check_mount_options};
    match command {
        FileServerCommand::Declare { name, export, mount_options } => {
            batchai_core::names::ResourceName::parse(&name, batchai_core::ids::Kind::FileServer.name_kind())
                .map_err(|e| anyhow::anyhow!(e.message))?;
            Export::parse(&export).map_err(anyhow::Error::msg)?;
            let mount_options = mount_options.unwrap_or_default();
            if !mount_options.is_empty() {
                check_mount_options(&mount_options).map_err(anyhow::Error::msg)?;
            }
            let row = batchai_store::FileServerRow { name, export, mount_options, created_at: now_millis() };
            store.declare_file_server(&row).await?;
            let saved = store.get_file_server(&row.name).await?.context("the declaration was not saved")?;
            println!("{}", file_server_json(&saved));
        }
        FileServerCommand::List => {
            for f in store.list_file_servers().await? {
                println!("{}", file_server_json(&f));
            }
        }
        FileServerCommand::Delete { name } => {
            if !store.delete_file_server(&name).await? {
                bail!("no file server named {name} is declared");
            }
            println!("{}", json!({"deleted": name.to_lowercase()}));
        }
    }
    Ok(())
}

/// The connection string azure-storage-file and the 12.x SDKs accept for a path-style endpoint.
pub fn connection_string(name: &str, key: &str, files_url: &str) -> String {
    let url = files_url.trim_end_matches('/');
    let protocol = if url.starts_with("https://") { "https" } else { "http" };
    format!("DefaultEndpointsProtocol={protocol};AccountName={name};AccountKey={key};FileEndpoint={url}/{name}")
}

/// Opens the storage accounts with the configured master key; only the server (`create`)
/// makes one when there is none.
pub fn accounts(
    cfg: &Config,
    store: std::sync::Arc<dyn batchai_store::Store>,
    create: bool,
) -> anyhow::Result<batchai_files::Accounts> {
    let path = cfg.storage_master_key();
    let master =
        if create { batchai_files::MasterKey::load_or_create(&path)? } else { batchai_files::MasterKey::load(&path)? };
    Ok(batchai_files::Accounts::new(store, master))
}

async fn storage_account(
    cfg: &Config,
    store: std::sync::Arc<dyn batchai_store::Store>,
    command: StorageAccountCommand,
) -> anyhow::Result<()> {
    let accounts = accounts(cfg, store, false)?;
    let shown = |name: &str, key: &str, files_url: Option<String>| {
        let mut out = json!({"name": name, "key": key});
        if let Some(url) = files_url {
            out["connection_string"] = connection_string(name, key, &url).into();
        }
        println!("{out}");
    };
    match command {
        StorageAccountCommand::Create { name, files_url } => shown(&name, &accounts.create(&name).await?, files_url),
        StorageAccountCommand::RotateKey { name, files_url } => shown(&name, &accounts.rotate(&name).await?, files_url),
        StorageAccountCommand::List => {
            for a in accounts.list().await? {
                println!(
                    "{}",
                    json!({"name": a.name, "created_at": batchai_core::time::to_rfc3339(a.created_at),
                           "key_rotated_at": batchai_core::time::to_rfc3339(a.key_rotated_at)})
                );
            }
        }
        StorageAccountCommand::Delete { name } => {
            accounts.delete(&name).await?;
            println!("{}", json!({"deleted": name}));
        }
    }
    Ok(())
}

/// `batchai job why <job id>`: why a queued job waits.
pub async fn why(cfg: &Config, job_id: &str) -> anyhow::Result<()> {
    let store = batchai_store::connect(&cfg.database_url()).await.context("opening the database")?;
    let r = batchai_core::ids::ResourceRef::parse_id(job_id, batchai_core::ids::Kind::Job)
        .map_err(|e| anyhow::anyhow!("'{job_id}' is not a job id: {e}"))?;
    match batchai_scheduler::runner::why(store.as_ref(), &r.key()).await? {
        Some(reason) => println!("{}", json!({"job": job_id, "state": "queued", "why": reason})),
        None => match store.get_resource(&r.key()).await?.and_then(|row| row.job) {
            Some(j) => println!("{}", json!({"job": job_id, "state": j.execution_state.as_str()})),
            None => bail!("no job {job_id}"),
        },
    }
    Ok(())
}

/// Subscription ids are path segments: keep them to what ARM clients send.
fn check_subscriptions(subs: &[String]) -> anyhow::Result<()> {
    for s in subs {
        if s.is_empty() || s.len() > 64 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("'{s}' is not a valid subscription id (letters, digits, '-' and '_')");
        }
    }
    Ok(())
}
