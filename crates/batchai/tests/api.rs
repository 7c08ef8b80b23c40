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
