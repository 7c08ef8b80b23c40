//! The agent's HTTP loop against a scripted server: the test receives each request the agent
//! sends and decides the answer (or holds it, as a long poll would), so every step is awaited.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use batchai_agent::agent::{AgentConfig, AgentError, run};
use batchai_agent::facts::FactsConfig;
use batchai_agent::images::ImageMap;
use batchai_agent::runtime::{Exit, FakeRuntime};
use batchai_core::protocol::{JoinResponse, SyncRequest, SyncResponse, TaskAssignment, TaskPhase};
use batchai_core::time::now_millis;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Only a guard against hangs.
const GUARD: Duration = Duration::from_secs(60);

struct Request {
    path: String,
    bearer: Option<String>,
    body: serde_json::Value,
    reply: oneshot::Sender<(u16, String)>,
}

impl Request {
    fn sync(&self) -> SyncRequest {
        assert_eq!(self.path, "/agent/v1/sync");
        serde_json::from_value(self.body.clone()).unwrap()
    }

    fn answer(self, status: u16, body: &impl serde::Serialize) {
        let _ = self.reply.send((status, serde_json::to_string(body).unwrap()));
    }
}

/// An HTTP/1.1 server on a free port that hands every request to the test.
async fn server() -> (String, mpsc::UnboundedReceiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(connection(socket, tx.clone()));
        }
    });
    (url, rx)
}

async fn connection(mut socket: TcpStream, requests: mpsc::UnboundedSender<Request>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
        };
        let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0; 4096];
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or_default();
        buf.drain(..head_end + length);
        let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
        let (reply, answer) = oneshot::channel();
        let _ = requests.send(Request { path, bearer, body, reply });
        // Dropped unanswered: the test holds it until the agent gives up on it.
        let Ok((status, body)) = answer.await else { return };
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn next(requests: &mut mpsc::UnboundedReceiver<Request>) -> Request {
    tokio::time::timeout(GUARD, requests.recv()).await.expect("no request in time").unwrap()
}

/// Answers syncs with `answer` until one satisfies `wanted`, which is returned unanswered.
async fn until(
    requests: &mut mpsc::UnboundedReceiver<Request>,
    answer: &SyncResponse,
    wanted: impl Fn(&SyncRequest) -> bool,
) -> Request {
    loop {
        let request = next(requests).await;
        if wanted(&request.sync()) {
            return request;
        }
        request.answer(200, answer);
    }
}

fn config(url: &str, data: &Path) -> AgentConfig {
    AgentConfig {
        server_url: url.to_owned(),
        ca_cert: None,
        join_token: Some("join-token".into()),
        data_dir: data.to_owned(),
        facts: FactsConfig { nvidia_smi: "/nonexistent/nvidia-smi".into(), ..FactsConfig::default() },
        storage_root: Some(data.join("storage")),
        sync_wait: Duration::from_secs(20),
        stop_grace: Duration::from_secs(1),
        image_map: ImageMap::default(),
        staged: false,
        health_listen: None,
    }
}

fn task(command: &str) -> TaskAssignment {
    TaskAssignment {
        job: "job1".into(),
        epoch: 1,
        rank: 0,
        id: "/x/jobs/job1".into(),
        uid: "uid1".into(),
        output_segment: "seg".into(),
        spec: serde_json::from_value(json!({"cluster": {"id": "c"}, "nodeCount": 1,
            "stdOutErrPathPrefix": "$AZ_BATCHAI_JOB_TEMP", "customToolkitSettings": {"commandLine": command}}))
        .unwrap(),
        nodes: Vec::new(),
        max_wall_clock_secs: 3600,
        started_at: now_millis(),
        stop: false,
        file_servers: Vec::new(),
    }
}

fn answer(version: &str, tasks: Vec<TaskAssignment>) -> SyncResponse {
    SyncResponse { version: version.into(), state: "running".into(), cluster: None, tasks }
}

#[tokio::test]
async fn joins_then_long_polls_and_wakes_when_a_task_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut requests) = server().await;
    let fake = FakeRuntime::new();
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let agent = tokio::spawn(run(config(&url, dir.path()), Arc::new(fake.clone()), shutdown_rx));

    let join = next(&mut requests).await;
    assert_eq!((join.path.as_str(), join.bearer.as_deref()), ("/agent/v1/join", Some("join-token")));
    assert!(join.body["facts"]["hostname"].as_str().is_some_and(|h| !h.is_empty()));
    let identity = JoinResponse {
        node_id: "node-1".into(),
        credential: "node-credential".into(),
        storage_root: "/elsewhere".into(),
        warnings: vec!["smaller than STANDARD_NC6".into()],
    };
    join.answer(200, &identity);

    let first = next(&mut requests).await;
    let sync = first.sync();
    assert_eq!(first.bearer.as_deref(), Some("node-credential"));
    assert!(sync.facts.is_some() && sync.known.is_none() && sync.wait_ms == 0);
    let saved = dir.path().join("node.json");
    assert_eq!(std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777, 0o600);
    let v1 = answer("v1", vec![task("train")]);
    first.answer(200, &v1);

    let running = until(&mut requests, &v1, |s| s.tasks.first().is_some_and(|t| t.phase == TaskPhase::Running)).await;
    assert!(running.sync().facts.is_none(), "facts are sent once");
    assert_eq!(running.sync().wait_ms, 0, "news is reported without waiting");
    running.answer(200, &v1);
    // Nothing new: the agent waits on the server, and a local exit cuts the wait short.
    let held = until(&mut requests, &v1, |s| s.wait_ms == 20_000 && s.known.as_deref() == Some("v1")).await;
    fake.wait_started("train").await;
    assert_eq!(fake.finish("train", Exit::Code(0)), 1);
    let woke = next(&mut requests).await;
    let report = &woke.sync().tasks[0];
    assert_eq!((woke.sync().wait_ms, report.phase, report.exit_code), (0, TaskPhase::Exited, Some(0)));
    drop(held);

    let removed = json!({"error": {"code": "AuthenticationFailed", "message": "The node was removed."}});
    woke.answer(401, &removed);
    let result = tokio::time::timeout(GUARD, agent).await.unwrap().unwrap();
    assert!(matches!(&result, Err(AgentError::Removed(m)) if m.contains("AuthenticationFailed")), "{result:?}");
}

#[tokio::test]
async fn a_joined_node_keeps_its_identity_and_stops_its_tasks_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let identity = json!({"node_id": "node-7", "credential": "saved-credential", "storage_root": "/s", "warnings": []});
    std::fs::write(dir.path().join("node.json"), identity.to_string()).unwrap();
    let (url, mut requests) = server().await;
    let fake = FakeRuntime::new();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut cfg = config(&url, dir.path());
    cfg.join_token = None;
    let agent = tokio::spawn(run(cfg, Arc::new(fake.clone()), shutdown_rx));

    let first = next(&mut requests).await;
    assert_eq!(first.bearer.as_deref(), Some("saved-credential"));
    first.answer(200, &answer("v1", vec![task("train forever")]));
    fake.wait_started("train forever").await;
    shutdown.send(true).unwrap();
    let result = tokio::time::timeout(GUARD, agent).await.unwrap().unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(fake.started()[0].exit, Some(Exit::Signal(15)));
}

#[tokio::test]
async fn a_refused_join_token_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (url, mut requests) = server().await;
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let agent = tokio::spawn(run(config(&url, dir.path()), Arc::new(FakeRuntime::new()), shutdown_rx));
    let join = next(&mut requests).await;
    join.answer(401, &json!({"error": {"code": "AuthenticationFailed", "message": "The join token is unknown."}}));
    let result = tokio::time::timeout(GUARD, agent).await.unwrap().unwrap();
    assert!(matches!(&result, Err(AgentError::JoinRefused(m)) if m.contains("unknown")), "{result:?}");
    assert!(!dir.path().join("node.json").exists());
}
