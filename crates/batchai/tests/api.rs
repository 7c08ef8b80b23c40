//! HTTP behaviour of a real server process, on SQLite and Postgres.

mod common;

use common::{BAI, Backend, Server, backends, scaffold};
use serde_json::json;

#[tokio::test]
async fn lifecycle_and_secrets_on_every_backend() {
    for backend in backends() {
        lifecycle(backend).await;
    }
}

async fn lifecycle(backend: Backend) {
    let server = Server::start(backend);
    let c = server.client();
    let cluster_id = scaffold(&c, "rg").await;
    let cluster = c.get(&format!("{}?{BAI}", Server::bai("rg", "workspaces/ws/clusters/c"))).await;
    assert_eq!(cluster.body["properties"]["allocationState"], "resizing", "{backend:?}");
    assert!(!cluster.text.contains("S3CRETKEY") && !cluster.text.contains("P4SSWORD"), "{}", cluster.text);
    let job_path = format!("{}?{BAI}", Server::bai("rg", "workspaces/ws/experiments/exp/jobs/j1"));
    let job = c.put_and_wait(&job_path, &common::job_body(&cluster_id)).await;
    assert_eq!(job.body["properties"]["executionState"], "queued");
    assert!(!job.text.contains("HUSHHUSH"), "{}", job.text);
    let del = c.delete(&job_path).await;
    assert_eq!(del.status, 202);
    let op = del.headers["azure-asyncoperation"].to_str().unwrap().to_owned();
    assert_eq!(c.wait_operation(&op).await["status"], "Succeeded");
    let gone = c.get(&job_path).await;
    assert_eq!((gone.status, gone.body["error"]["code"].clone()), (404, json!("JobNotFound")));
}

/// Two server processes on one Postgres: racing PUTs of one job name create it once, racing
/// deletes delete it once, and both servers agree on the result.
#[tokio::test]
async fn two_servers_on_one_postgres_stay_consistent() {
    if !backends().contains(&Backend::Postgres) {
        eprintln!("skipped: BATCHAI_TEST_PG_URL is not set");
        return;
    }
    let a = Server::start(Backend::Postgres);
    let b = Server::spawn(&a.data_dir, a.database_url.clone(), &[]);
    let (ca, cb) = (a.client(), b.client());
    let cluster_id = scaffold(&ca, "rg").await;
    let job_path = format!("{}?{BAI}", Server::bai("rg", "workspaces/ws/experiments/exp/jobs/raced"));
    let body = common::job_body(&cluster_id);
    let mut puts = Vec::new();
    for i in 0..20 {
        let c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        let (path, body) = (job_path.clone(), body.clone());
        puts.push(tokio::spawn(async move { c.put(&path, &body).await.status }));
    }
    let mut statuses = Vec::new();
    for p in puts {
        statuses.push(p.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 19, "{statuses:?}");
    let (ga, gb) = (ca.get(&job_path).await, cb.get(&job_path).await);
    assert_eq!(ga.body, gb.body, "both servers serve the same job");
    let mut dels = Vec::new();
    for i in 0..10 {
        let c = if i % 2 == 0 { ca.clone() } else { cb.clone() };
        let path = job_path.clone();
        dels.push(tokio::spawn(async move {
            let r = c.delete(&path).await;
            let op = r.headers.get("azure-asyncoperation").map(|v| v.to_str().unwrap().to_owned());
            (r.status, op, c)
        }));
    }
    for d in dels {
        let (status, op, c) = d.await.unwrap();
        assert!(status == 202 || status == 204, "{status}");
        if let Some(op) = op {
            assert_eq!(c.wait_operation(&op).await["status"], "Succeeded");
        }
    }
    assert_eq!(ca.get(&job_path).await.status, 404);
    assert_eq!(cb.get(&job_path).await.status, 404);
}
