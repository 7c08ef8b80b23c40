//! The agent protocol's front door, against a live server on every backend: who may call it,
//! and what bad input gets (an ARM error envelope, a 4xx, and no change).

mod common;

use common::{Server, ServerOptions, backends};
use serde_json::{Value, json};

fn facts() -> Value {
    json!({"facts": {"hostname": "h", "address": "10.0.0.9", "ssh_port": 2222, "cores": 8, "memory_mb": 65536,
                     "gpus": [], "vm_sizes": ["STANDARD_D2"], "agent_version": "test"}})
}

async fn post(url: &str, bearer: Option<&str>, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).header("content-type", "application/json").body(body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let res = req.send().await.expect("sent");
    let status = res.status().as_u16();
    (status, serde_json::from_str(&res.text().await.expect("body")).unwrap_or(Value::Null))
}

fn envelope(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an ARM error envelope: {body}"))
}

fn node_count(server: &Server) -> usize {
    let out = std::process::Command::new(common::binary())
        .args(["admin", "--data-dir"])
        .arg(&server.data_dir)
        .args(server.database_url.iter().flat_map(|u| ["--database-url", u.as_str()]))
        .args(["node", "list"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("admin runs");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_join_tokens_join_and_only_node_credentials_sync() {
    for backend in backends() {
        let server = Server::start(backend);
        let join = format!("{}/agent/v1/join", server.http);
        let sync = format!("{}/agent/v1/sync", server.http);
        let token = server.admin_json(&["join-token", "create"]);
        let jt = token["join_token"].as_str().expect("token");

        // Refused: no credential, an ARM API token, a made-up token; bad bodies with a good token.
        for bearer in [None, Some(server.token.as_str()), Some("bai_join_nope")] {
            let (status, body) = post(&join, bearer, facts().to_string()).await;
            assert_eq!(status, 401, "{bearer:?}");
            assert_eq!(envelope(&body), "AuthenticationFailed");
        }
        for bad in ["", "{", "[]", "{\"facts\": 5}", "{\"facts\": {\"hostname\": 1}}", "null"] {
            let (status, body) = post(&join, Some(jt), bad).await;
            assert_eq!(status, 400, "{bad}: {body}");
            envelope(&body);
        }
        let (status, body) = post(&join, Some(jt), vec![b' '; 5 * 1024 * 1024]).await;
        assert_eq!((status, envelope(&body)), (413, "RequestEntityTooLarge"));
        assert_eq!(node_count(&server), 0, "refused joins register nothing");

        // A good join; the credential syncs, and is no ARM credential.
        let (status, joined) = post(&join, Some(jt), facts().to_string()).await;
        assert_eq!(status, 200, "{joined}");
        let credential = joined["credential"].as_str().expect("credential");
        assert!(credential.starts_with("bai_node_"));
        let (status, res) = post(&sync, Some(credential), "{}").await;
        assert_eq!(status, 200, "{res}");
        assert_eq!((res["state"].as_str(), res["tasks"].as_array().map(Vec::len)), (Some("free"), Some(0)));
        let arm = reqwest::Client::new()
            .get(format!("{}/subscriptions/{}?api-version=2021-04-01", server.http, common::SUB))
            .bearer_auth(credential)
            .send()
            .await
            .expect("sent");
        assert_eq!(arm.status(), 401, "a node credential is not an ARM credential");
        for bearer in [None, Some(jt), Some(server.token.as_str())] {
            let (status, body) = post(&sync, bearer, "{}").await;
            assert_eq!((status, envelope(&body)), (401, "AuthenticationFailed"), "{bearer:?}");
        }
        let (status, body) = post(&sync, Some(credential), "{\"tasks\": {}}").await;
        assert_eq!(status, 400, "{body}");

        // A report about a job this node does not hold changes nothing.
        let report = json!({"tasks": [{"job": "/subscriptions/x/resourcegroups/g/providers/microsoft.batchai/workspaces/w/experiments/e/jobs/j",
                                       "epoch": 1, "phase": "exited", "exit_code": 0}]});
        let (status, _) = post(&sync, Some(credential), report.to_string()).await;
        assert_eq!(status, 200);

        // A revoked join token admits no one.
        server.admin_json(&["join-token", "revoke", token["id"].as_str().expect("id")]);
        let (status, _) = post(&join, Some(jt), facts().to_string()).await;
        assert_eq!(status, 401);
        assert_eq!(node_count(&server), 1);
    }
}

/// A join token in the server's configuration (docker-compose.yml hands one secret to the server
/// and its agents) admits agents; once revoked it stays revoked when the server starts again
/// with the same configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_join_token_joins_and_stays_revoked_across_restarts() {
    let token = "bai_join_configured-0123456789abcdef";
    let env = vec![("BATCHAI_JOIN_TOKEN".to_owned(), token.to_owned())];
    for backend in backends() {
        let mut server = Server::start_with(ServerOptions { backend, env: env.clone() });
        let (status, body) = post(&format!("{}/agent/v1/join", server.http), Some(token), facts().to_string()).await;
        assert_eq!(status, 200, "{body}");
        let listed = server.admin_json(&["join-token", "list"]);
        assert_eq!((listed["name"].as_str(), listed["revoked"].as_bool()), (Some("configured"), Some(false)));
        server.admin_json(&["join-token", "revoke", listed["id"].as_str().expect("id")]);

        server.kill();
        let again = Server::spawn(&server.data_dir, server.database_url.clone(), &env);
        let (status, body) = post(&format!("{}/agent/v1/join", again.http), Some(token), facts().to_string()).await;
        assert_eq!((status, envelope(&body)), (401, "AuthenticationFailed"));
        assert_eq!(again.admin_json(&["join-token", "list"])["revoked"].as_bool(), Some(true));
        assert_eq!(node_count(&again), 1);
    }
}
