//! `batchai server` (and `batchai dev`): binds the listeners, starts the operation runner, the
//! scheduler and the agent-protocol change watcher, prints where clients connect, and shuts
//! down gracefully on SIGTERM or Ctrl-C. `dev` also runs one local agent in the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use batchai_api::{AppState, Scheme};
use serde_json::json;
use tokio::sync::watch;

use crate::config::Config;
use crate::tls;

/// Runs the server; with `dev`, also a local agent serving every VM size, and writes
/// `dev.env` for clients.
pub async fn run(mut cfg: Config, dev: bool) -> anyhow::Result<()> {
    if dev && cfg.http_listen.is_none() {
        // The in-process agent talks plain HTTP over loopback.
        cfg.http_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&cfg.data_dir)?;
    let store = batchai_store::connect(&cfg.database_url()).await.context("opening the database")?;
    tracing::info!(backend = store.backend(), "database ready");
    let mut settings = cfg.api_settings();
    std::fs::create_dir_all(&settings.storage_root)
        .with_context(|| format!("creating the storage root {}", settings.storage_root.display()))?;
    // Absolute, so links and listings do not depend on the working directory.
    settings.storage_root = std::fs::canonicalize(&settings.storage_root)?;
    // Storage accounts: checked on cluster and job mounts, served by the Files endpoint.
    let accounts = Arc::new(crate::admin::accounts(&cfg, store.clone(), true)?);
    let state = AppState::new(store, settings).await?.with_share_keys(Arc::new(ShareKeys(accounts.clone())));

    let tls = tls::ensure(&data_dir, cfg.tls_cert.as_deref(), cfg.tls_key.as_deref())?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rustls_config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
        .await
        .context("loading the TLS certificate")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let https = std::net::TcpListener::bind(cfg.listen).with_context(|| format!("binding {}", cfg.listen))?;
    https.set_nonblocking(true)?;
    let https_addr = https.local_addr()?;
    let handle = axum_server::Handle::new();
    let https_app = batchai_api::router(state.clone(), Scheme::Https);
    let https_task = tokio::spawn({
        let handle = handle.clone();
        let rustls_config = rustls_config.clone();
        async move {
            axum_server::from_tcp_rustls(https, rustls_config)?
                .handle(handle)
                .serve(https_app.into_make_service())
                .await
        }
    });

    let mut http_url = None;
    let mut http_task = None;
    if let Some(addr) = cfg.http_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        http_url = Some(format!("http://{local}"));
        let app = batchai_api::router(state.clone(), Scheme::Http);
        let mut stop = stop_rx.clone();
        http_task = Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    let files_addr = cfg.files_listen.or(dev.then(|| SocketAddr::from(([127, 0, 0, 1], 0))));
    let files = match files_addr {
        Some(addr) => Some(start_files(&state, accounts.clone(), addr, rustls_config.clone()).await?),
        None => None,
    };
    let runner = tokio::spawn(batchai_api::lro::run(state.clone(), stop_rx.clone()));
    let scheduler = tokio::spawn(batchai_scheduler::runner::run(
        state.store.clone(),
        cfg.scheduler_settings(),
        state.scheduler.clone(),
        stop_rx.clone(),
    ));
    let watcher = tokio::spawn(batchai_api::agent::watch_changes(
        state.clone(),
        Duration::from_millis(200),
        state.scheduler.changed.clone(),
        stop_rx.clone(),
    ));

    let https_url = format!("https://{https_addr}");
    let ca = tls.ca.display().to_string();
    let fingerprint = tls::fingerprint(&tls.ca).unwrap_or_default();
    println!("batchai server listening on {https_url} (ARM API and token service)");
    if let Some(u) = &http_url {
        println!("plain HTTP (loopback) on {u}");
    }
    if let Some(f) = &files {
        println!("Azure Files endpoint on {} (path style: {}/<account>/<share>/…)", f.url, f.url);
    }
    println!("trust this CA certificate: {ca}");
    println!("CA SHA-256 fingerprint: {fingerprint}");
    println!("tenant: {}", state.keys.tenant);
    let client_url = cfg.public_url.clone().unwrap_or_else(|| https_url.replace("0.0.0.0", "localhost"));
    bootstrap(&state, &cfg, &data_dir, &client_url, &ca).await?;
    if let Some(token) = cfg.join_token.as_deref().filter(|_| !dev) {
        register_join_token(state.store.as_ref(), token).await?;
    }
    let files_url = files.as_ref().map(|f| f.url.clone());
    let agent = match (dev, &http_url) {
        (true, Some(url)) => {
            let mut env = format!("export BATCHAI_METRICS_URL={https_url}/metrics\n");
            if let Some(f) = &files {
                env.push_str(&dev_storage_env(f).await?);
            }
            // Stopped first, while the server still answers, so it can hand its jobs back.
            let (agent_stop, agent_stop_rx) = watch::channel(false);
            Some((start_dev_agent(&state, &cfg, &data_dir, url, env, agent_stop_rx).await?, agent_stop))
        }
        _ => None,
    };
    println!(
        "BATCHAI_READY {}",
        json!({"https_url": https_url, "http_url": http_url, "files_url": files_url, "ca_cert": ca,
               "tenant": state.keys.tenant})
    );

    shutdown_signal().await;
    tracing::info!("shutting down");
    if let Some((task, stop)) = agent {
        let _ = stop.send(true);
        let _ = task.await;
    }
    let _ = stop_tx.send(true);
    handle.graceful_shutdown(Some(Duration::from_secs(10)));
    let _ = https_task.await;
    if let Some(t) = http_task {
        let _ = t.await;
    }
    if let Some(f) = files {
        f.handle.graceful_shutdown(Some(Duration::from_secs(10)));
        let _ = f.task.await;
    }
    for task in [runner, scheduler, watcher] {
        let _ = task.await;
    }
    Ok(())
}

/// The Files endpoint's accounts, as the API checks mounts' keys against them.
struct ShareKeys(Arc<batchai_files::Accounts>);

impl batchai_api::ShareKeys for ShareKeys {
    fn key<'a>(&'a self, account: &'a str) -> futures_util::future::BoxFuture<'a, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move { self.0.key(account).await.map_err(|e| e.to_string()) })
    }
}

/// The running Azure Files endpoint.
struct FilesEndpoint {
    url: String,
    accounts: Arc<batchai_files::Accounts>,
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves the Files endpoint on `addr`: plain HTTP on loopback, HTTPS with the server's
/// certificate elsewhere (SharedKey signs requests but does not hide the data).
async fn start_files(
    state: &AppState,
    accounts: Arc<batchai_files::Accounts>,
    addr: SocketAddr,
    tls: axum_server::tls_rustls::RustlsConfig,
) -> anyhow::Result<FilesEndpoint> {
    let shares = batchai_files::Shares::open(&state.settings.storage_root)
        .with_context(|| format!("opening the storage root {}", state.settings.storage_root.display()))?;
    let https = !addr.ip().is_loopback();
    let app = batchai_files::router(batchai_files::FilesState {
        accounts: accounts.clone(),
        shares: Arc::new(shares),
        https,
    })
    .into_make_service_with_connect_info::<SocketAddr>();
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding the Files endpoint {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let task = if https {
        let server = axum_server::from_tcp_rustls(listener, tls)?.handle(handle.clone());
        tokio::spawn(async move { server.serve(app).await })
    } else {
        let server = axum_server::from_tcp(listener)?.handle(handle.clone());
        tokio::spawn(async move { server.serve(app).await })
    };
    let scheme = if https { "https" } else { "http" };
    Ok(FilesEndpoint { url: format!("{scheme}://{local}"), accounts, handle, task })
}

/// The account `batchai dev` serves for the quickstart, and the client settings for it.
const DEV_ACCOUNT: &str = "batchaidev";

async fn dev_storage_env(files: &FilesEndpoint) -> anyhow::Result<String> {
    use base64::Engine;
    let key = match files.accounts.key(DEV_ACCOUNT).await? {
        Some(k) => base64::engine::general_purpose::STANDARD.encode(k.as_slice()),
        None => files.accounts.create(DEV_ACCOUNT).await?,
    };
    let conn = crate::admin::connection_string(DEV_ACCOUNT, &key, &files.url);
    Ok(format!(
        "export BATCHAI_FILES_URL={url}\nexport STORAGE_ACCOUNT_NAME={DEV_ACCOUNT}\nexport STORAGE_ACCOUNT_KEY={key}\n\
         export AZURE_STORAGE_CONNECTION_STRING='{conn}'\n",
        url = files.url
    ))
}

/// `batchai dev`: joins a local agent (data in `data_dir/agent`, every VM size) and writes
/// `data_dir/dev.env` with what a client needs.
async fn start_dev_agent(
    state: &AppState,
    cfg: &Config,
    data_dir: &std::path::Path,
    http_url: &str,
    extra_env: String,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let agent_dir = data_dir.join("agent");
    let mut agent_cfg = Config { server_url: Some(http_url.to_owned()), vm_sizes: vec!["*".into()], ..cfg.clone() };
    if !agent_dir.join("node.json").exists() {
        let (_, token) = crate::admin::create_join_token(state.store.as_ref(), "dev", Some(600), None).await?;
        agent_cfg.join_token = Some(token);
    }
    let runtime = crate::node_runtime::pick(&agent_cfg).await?;
    let docker = runtime.name() == "docker";
    if agent_cfg.image_map.is_empty() {
        agent_cfg.image_map = crate::config::dev_image_map(docker);
    }
    let agent_cfg = agent_cfg.agent_config(agent_dir)?;
    let runs = if docker {
        "jobs with containerSettings run in Docker, the others on this machine"
    } else {
        "jobs run on this machine; images mapped to `host` in the image map (the CNTK quickstart's) run on the \
         host too, other container jobs fail"
    };
    // The agent's /healthz and /metrics: where `health_listen` says, else a free loopback port.
    let addr = cfg.health_listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let health = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let agent_metrics = format!("export BATCHAI_AGENT_METRICS_URL=http://{}/metrics\n", health.local_addr()?);
    let task = tokio::spawn(async move {
        if let Err(e) = batchai_agent::agent::run_with_health(agent_cfg, runtime, stop, Some(health)).await {
            tracing::error!(error = %e, "the local agent stopped");
        }
    });
    let bootstrap = std::fs::read_to_string(data_dir.join("bootstrap.env"))
        .context("reading bootstrap.env (the dev data dir was not created by `batchai dev`?)")?;
    let path = data_dir.join("dev.env");
    write_private(&path, &(bootstrap + &extra_env + &agent_metrics))?;
    println!(
        "batchai dev: a local agent serves every VM size; {runs}; job files live in {}",
        cfg.storage_root().display()
    );
    println!("client settings: source {}", path.display());
    Ok(task)
}

/// Writes a file only its owner can read (it holds credentials).
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// On the very first start of an installation, creates a service principal and an API token
/// for the bootstrap subscription, prints them once and writes them to `bootstrap.env`
/// (mode 0600) in the data dir.
async fn bootstrap(
    state: &AppState,
    cfg: &Config,
    data_dir: &std::path::Path,
    url: &str,
    ca: &str,
) -> anyhow::Result<()> {
    let claim = uuid::Uuid::new_v4().to_string();
    if state.store.meta_get_or_insert("bootstrapped", &claim).await? != claim {
        return Ok(());
    }
    let store = state.store.as_ref();
    let subs = [cfg.bootstrap_subscription.clone()];
    let (p, secret) = batchai_api::auth::create_principal(store, "bootstrap", &subs).await?;
    let (_, token) = batchai_api::auth::create_api_token(store, "bootstrap", &subs, None).await?;
    let env = format!(
        "export BATCHAI_URL={url}\nexport BATCHAI_CA_CERT={ca}\nexport REQUESTS_CA_BUNDLE={ca}\n\
         export AZURE_SUBSCRIPTION_ID={sub}\nexport AAD_TENANT={tenant}\nexport AAD_CLIENT_ID={id}\n\
         export AAD_SECRET={secret}\nexport BATCHAI_AAD_AUTHORITY={url}/adfs\nexport BATCHAI_TOKEN={token}\n",
        sub = subs[0],
        tenant = state.keys.tenant,
        id = p.client_id,
    );
    let path = data_dir.join("bootstrap.env");
    write_private(&path, &env)?;
    println!("first start: created credentials for subscription {} (shown once):", subs[0]);
    print!("{env}");
    println!("they are also in {} (mode 0600): `source {}`", path.display(), path.display());
    Ok(())
}

/// Accepts the configured `join_token` (deployments that hand one secret to the server and its
/// agents, as docker-compose.yml does). Registered once, by hash: revoking it with `batchai
/// admin join-token revoke` lasts across restarts.
async fn register_join_token(store: &dyn batchai_store::Store, token: &str) -> anyhow::Result<()> {
    if token.len() < 24 {
        bail!("join_token must be at least 24 characters (`batchai admin join-token create` prints one)");
    }
    let hash = batchai_api::auth::hash_secret(token);
    if store.find_join_token(&hash).await?.is_none() {
        if let Err(e) = crate::admin::create_join_token(store, "configured", None, Some(token)).await {
            // Another server on the same database may have registered it first.
            if store.find_join_token(&hash).await?.is_none() {
                return Err(e);
            }
        }
        tracing::info!("registered the configured join token");
    }
    Ok(())
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
