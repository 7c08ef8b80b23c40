//! Job PUT throughput and GET latency through the real HTTP API (the server runs in this
//! process, over real HTTP on loopback), beside a raw sqlx loop inserting same-size rows into
//! the same kind of database at the same concurrency. Prints our ratio to the raw rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::Args;
use crate::api::SUB;
use crate::server::fresh_pg;
use crate::stats::{ms, pct, run_clients};

pub async fn run(args: &Args) -> anyhow::Result<()> {
    let clients = args.clients.unwrap_or(16);
    let jobs = args.jobs.unwrap_or(4000);
    let tmp = tempfile::tempdir()?;
    let (api_url, raw_url) = match args.backend() {
        "sqlite" => (
            format!("sqlite://{}", tmp.path().join("api.sqlite").display()),
            format!("sqlite://{}", tmp.path().join("raw.sqlite").display()),
        ),
        "postgres" => {
            let admin = args.pg_url.clone().context("--pg-url (or BATCHAI_TEST_PG_URL) is needed for postgres")?;
            (fresh_pg(&admin).await?.0, fresh_pg(&admin).await?.0)
        }
        other => bail!("unknown backend {other}"),
    };
    let store = batchai_store::connect(&api_url).await?;
    let state = batchai_api::AppState::new(store.clone(), batchai_api::ApiSettings::default()).await?;
    let subs = [SUB.to_owned()];
    let token = match args.auth.as_str() {
        "jwt" => {
            let (p, _) = batchai_api::auth::create_principal(store.as_ref(), "bench", &subs).await?;
            state.keys.issue(&p.client_id, &subs, "https://management.core.windows.net/", "bench", 3600).0
        }
        "token" => batchai_api::auth::create_api_token(store.as_ref(), "bench", &subs, None).await?.1,
        other => bail!("unknown auth {other}"),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = batchai_api::router(state.clone(), batchai_api::Scheme::Http);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(batchai_api::lro::run(state, stop_rx));

    let http = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let api = Api { http, base, token };
    let rg = format!("/subscriptions/{SUB}/resourceGroups/bench");
    let bai = format!("{rg}/providers/Microsoft.BatchAI/workspaces/ws");
    api.put(&format!("{rg}?api-version=2021-04-01"), &json!({"location": "eastus"})).await?;
    api.put(&format!("{bai}?api-version=2018-05-01"), &json!({"location": "eastus"})).await?;
    api.put(&format!("{bai}/experiments/exp?api-version=2018-05-01"), &Value::Null).await?;
    let cluster = json!({"properties": {"vmSize": "STANDARD_NC6", "scaleSettings": {"manual": {"targetNodeCount": 1}},
        "userAccountSettings": {"adminUserName": "u", "adminUserPassword": "p"}}});
    api.put(&format!("{bai}/clusters/c?api-version=2018-05-01"), &cluster).await?;
    let job = json!({"properties": {
        "cluster": {"id": format!("{bai}/clusters/c")}, "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        "customToolkitSettings": {"commandLine": "python train.py --epochs 10 --data $AZ_BATCHAI_INPUT_DATA"},
        "inputDirectories": [{"id": "DATA", "path": "$AZ_BATCHAI_MOUNT_ROOT/afs/data"}],
        "outputDirectories": [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs", "pathSuffix": "models"}],
        "environmentVariables": [{"name": "EPOCHS", "value": "10"}]}});
    let row_bytes = job.to_string().len();

    // Job PUT throughput.
    let jobs_path = format!("{bai}/experiments/exp/jobs");
    let started = Instant::now();
    let (api2, jobs_path2, job2) = (api.clone(), jobs_path.clone(), job.clone());
    let put_lat = run_clients(clients, jobs, move |i| {
        let (api, jobs_path, job) = (api2.clone(), &jobs_path2, &job2);
        let path = format!("{jobs_path}/job-{i:07}?api-version=2018-05-01");
        let job = job.clone();
        async move { api.put(&path, &job).await }
    })
    .await?;
    let put_secs = started.elapsed().as_secs_f64();

    // GET latency.
    let n = jobs;
    let api2 = api.clone();
    let get_lat = run_clients(clients, args.gets, move |i| {
        let api = api2.clone();
        let path = format!("{jobs_path}/job-{:07}?api-version=2018-05-01", (i * 7919) % n);
        async move { api.get(&path).await }
    })
    .await?;

    // The HTTP floor: an authenticated request that touches no database.
    let floor_started = Instant::now();
    run_clients(clients, args.gets, move |_| {
        let api = api.clone();
        async move { api.get("/providers/Microsoft.BatchAI/operations?api-version=2018-05-01").await }
    })
    .await?;
    let floor_rate = args.gets as f64 / floor_started.elapsed().as_secs_f64();

    // Raw baseline: one autocommit INSERT of a same-size row per job, same concurrency.
    let raw_secs = raw_inserts(&raw_url, clients, jobs, row_bytes).await?;

    let put_rate = jobs as f64 / put_secs;
    let raw_rate = jobs as f64 / raw_secs;
    println!(
        "backend: {}  auth: {}  clients: {}  jobs: {}  row: {row_bytes} B",
        args.backend(),
        args.auth,
        clients,
        jobs
    );
    println!("| metric | value |");
    println!("|---|---|");
    println!("| job PUT throughput | {put_rate:.0} jobs/s |");
    println!("| job PUT latency p50 / p99 | {} / {} ms |", ms(pct(&put_lat, 50.0)), ms(pct(&put_lat, 99.0)));
    println!("| job GET latency p50 / p99 | {} / {} ms |", ms(pct(&get_lat, 50.0)), ms(pct(&get_lat, 99.0)));
    println!("| HTTP floor (no database) | {floor_rate:.0} req/s |");
    println!("| raw sqlx INSERT throughput | {raw_rate:.0} rows/s |");
    println!("| ratio PUT / raw INSERT | {:.2} (target >= 0.5) |", put_rate / raw_rate);
    Ok(())
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn put(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        let mut req = self.http.put(format!("{}{path}", self.base)).bearer_auth(&self.token);
        if !body.is_null() {
            req = req.json(body);
        }
        let res = req.send().await?;
        if !res.status().is_success() {
            bail!("PUT {path}: {} {}", res.status(), res.text().await.unwrap_or_default());
        }
        Ok(())
    }

    async fn get(&self, path: &str) -> anyhow::Result<()> {
        let res = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await?;
        if !res.status().is_success() {
            bail!("GET {path}: {}", res.status());
        }
        res.bytes().await?;
        Ok(())
    }
}

async fn raw_inserts(url: &str, clients: usize, rows: usize, row_bytes: usize) -> anyhow::Result<f64> {
    let body = "x".repeat(row_bytes);
    // As pgbench does it: every client has its own connection and inserts one row per
    // autocommit statement; the same loop over either connection type.
    macro_rules! timed_inserts {
        ($connect:expr) => {{
            let mut conns = Vec::new();
            for _ in 0..clients {
                conns.push($connect.await?);
            }
            sqlx::query("CREATE TABLE raw_jobs (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
                .execute(&mut conns[0])
                .await?;
            let next = Arc::new(AtomicUsize::new(0));
            let started = Instant::now();
            let tasks: Vec<_> = conns
                .into_iter()
                .map(|mut conn| {
                    let (next, body) = (next.clone(), body.clone());
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= rows {
                                return anyhow::Ok(());
                            }
                            sqlx::query("INSERT INTO raw_jobs (id, body) VALUES ($1, $2)")
                                .bind(format!("row-{i}"))
                                .bind(&body)
                                .execute(&mut conn)
                                .await?;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await??;
            }
            started.elapsed().as_secs_f64()
        }};
    }
    use sqlx::Connection;
    if url.starts_with("postgres") {
        Ok(timed_inserts!(sqlx::postgres::PgConnection::connect(url)))
    } else {
        use std::str::FromStr;
        let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        Ok(timed_inserts!(sqlx::sqlite::SqliteConnection::connect_with(&opts)))
    }
}
