//! `batchai admin`: service principals and API tokens. Secrets are printed once, here, and
//! stored only as hashes.

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
    /// Delete a principal; its tokens stop working at once.
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

pub async fn run(cfg: &Config, command: AdminCommand) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let store = batchai_store::connect(&cfg.database_url()).await.context("opening the database")?;
    let store = store.as_ref();
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
