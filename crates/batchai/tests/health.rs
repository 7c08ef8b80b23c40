//! `/healthz` and `/readyz` of a real server process: alive always; ready while its database
//! answers, 503 while it does not (Postgres refusing its connections), ready again once it does.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Backend, Server, backends};
use serde_json::Value;

async fn probe(server: &Server, path: &str) -> (u16, Value) {
    let res = reqwest::get(format!("{}{path}", server.http)).await.expect("the server answers");
    let status = res.status().as_u16();
    (status, res.json().await.expect("JSON"))
}

/// Polls `/readyz` until it answers `status` (the server notices a database change on its own
/// next query; there is no event to wait for).
async fn readiness_becomes(server: &Server, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (got, body) = probe(server, "/readyz").await;
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz still {got} ({body}), waiting for {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn psql(sql: &str) {
    let admin = std::env::var("BATCHAI_TEST_PG_URL").expect("BATCHAI_TEST_PG_URL");
    let out = Command::new("psql").arg(&admin).arg("-qc").arg(sql).output().expect("psql runs");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn readiness_follows_the_database() {
    let sqlite = Server::start(Backend::Sqlite);
    assert_eq!(probe(&sqlite, "/healthz").await, (200, serde_json::json!({"status": "ok"})));
    let (status, body) = probe(&sqlite, "/readyz").await;
    assert_eq!((status, &body["status"], &body["database"]), (200, &"ready".into(), &"ok".into()));

    if !backends().contains(&Backend::Postgres) {
        eprintln!("the Postgres half skipped: BATCHAI_TEST_PG_URL is not set");
        return;
    }
    let server = Server::start(Backend::Postgres);
    assert_eq!(probe(&server, "/readyz").await.0, 200);
    let url = server.database_url.clone().expect("a Postgres server");
    let db = url.rsplit('/').next().expect("a database name").to_owned();
    psql(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"));
    psql(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"));
    let body = readiness_becomes(&server, 503).await;
    assert_eq!((&body["status"], &body["database"]), (&"unready".into(), &"unreachable".into()), "{body}");
    assert_eq!(probe(&server, "/healthz").await.0, 200, "alive while not ready");
    psql(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"));
    let body = readiness_becomes(&server, 200).await;
    assert_eq!(body["status"], "ready");
}

#[tokio::test]
async fn the_agent_says_which_node_it_is_and_when_it_last_synced() {
    let server = Server::start(Backend::Sqlite);
    let port = common::free_port();
    let _agent = common::Agent::start(&server, &[("BATCHAI_HEALTH_LISTEN".into(), format!("127.0.0.1:{port}"))]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        // Refused until the agent listens; `last_sync` is null until its first sync.
        if let Ok(res) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await {
            assert_eq!(res.status().as_u16(), 200);
            let body: Value = res.json().await.expect("JSON");
            if body["last_sync"].is_string() {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "the agent's /healthz never showed a sync");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["status"], "ok");
    let node = body["node"].as_str().expect("the node id");
    let nodes = common::farm::nodes(&server);
    assert!(nodes.iter().any(|(id, _, _)| id == node), "{node} is a registered node: {nodes:?}");
}
