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

/// The value of the sample `name{labels}` in an exposition, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

async fn scrape(url: &str) -> String {
    let text = reqwest::get(url).await.expect("scraped").text().await.expect("text");
    // promtool (Debian's prometheus package; scripts/test.sh installs it under CI) checks the
    // exposition the way Prometheus reads it.
    match Command::new("promtool").args(["check", "metrics"]).stdin(std::process::Stdio::piped()).output_with(&text) {
        Some(out) => {
            assert!(out.status.success(), "promtool check metrics: {}\n{text}", String::from_utf8_lossy(&out.stderr))
        }
        None if std::env::var("CI").is_ok() => panic!("promtool is missing under CI"),
        None => eprintln!("promtool not installed: exposition not checked"),
    }
    text
}

trait OutputWith {
    fn output_with(&mut self, stdin: &str) -> Option<std::process::Output>;
}

impl OutputWith for Command {
    fn output_with(&mut self, stdin: &str) -> Option<std::process::Output> {
        use std::io::Write;
        let mut child = self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().ok()?;
        child.stdin.take().expect("stdin piped").write_all(stdin.as_bytes()).expect("written");
        child.wait_with_output().ok()
    }
}

#[tokio::test]
async fn a_running_job_shows_in_the_job_and_gpu_metrics_until_it_ends() {
    for backend in backends() {
        let server = common::farm::start(backend, common::farm::env());
        // One GPU, as nvidia-smi would list it, so the GPU → job series can be seen here.
        let bin = tempfile::tempdir().unwrap();
        common::farm::write_executable(
            &bin.path().join("nvidia-smi"),
            "#!/bin/sh\ncase \"$*\" in\n*utilization*) echo 'GPU-00000000-0000-0000-0000-000000000001, 37, 1024, 16384' ;;\n\
             *) echo '0, GPU-00000000-0000-0000-0000-000000000001, Test GPU, 16384' ;;\nesac\n",
        );
        let path = format!("{}:{}", bin.path().display(), std::env::var("PATH").unwrap_or_default());
        let port = common::free_port();
        let mut env = common::farm::env();
        env.extend([("BATCHAI_HEALTH_LISTEN".into(), format!("127.0.0.1:{port}")), ("PATH".into(), path)]);
        let _agent = common::Agent::start(&server, &env);
        let c = server.client();
        let exp = common::farm::farm(&c, "rg", 1).await;
        let gate = tempfile::tempdir().unwrap();
        let go = gate.path().join("go");
        let command = format!("while [ ! -e {} ]; do sleep 0.1; done", go.display());
        let body =
            common::farm::job_body("rg", 1, serde_json::json!({"customToolkitSettings": {"commandLine": command}}));
        let job = common::farm::submit(&c, &exp, "metered", &body).await;
        common::farm::state_is(&c, &job, "running").await;

        let server_metrics = format!("{}/metrics", server.http);
        let agent_metrics = format!("http://127.0.0.1:{port}/metrics");
        let text = scrape(&server_metrics).await;
        assert_eq!(sample(&text, r#"batchai_jobs{priority="normal",state="running"}"#), Some(1.0), "{text}");
        assert_eq!(sample(&text, r#"batchai_nodes{state="running"}"#), Some(1.0), "{text}");
        assert_eq!((sample(&text, "batchai_gpus"), sample(&text, "batchai_gpus_allocated")), (Some(1.0), Some(1.0)));
        assert!(
            text.contains(r#"batchai_http_request_duration_seconds_count{method="PUT",route="jobs",status="202"}"#),
            "{text}"
        );
        let agent = scrape(&agent_metrics).await;
        assert_eq!(sample(&agent, "batchai_agent_running_jobs"), Some(1.0), "{agent}");
        let gpu = r#"batchai_agent_gpu_job{gpu_uuid="GPU-00000000-0000-0000-0000-000000000001","#;
        assert!(agent.lines().any(|l| l.starts_with(gpu) && l.contains("metered") && l.ends_with(" 1")), "{agent}");
        assert!(agent.contains(r#"batchai_agent_process_start_duration_seconds_count{kind="process"} 1"#), "{agent}");
        let gpu = r#"{gpu_uuid="GPU-00000000-0000-0000-0000-000000000001"}"#;
        assert_eq!(sample(&agent, &format!("batchai_agent_gpu_utilization_ratio{gpu}")), Some(0.37), "{agent}");
        assert_eq!(sample(&agent, &format!("batchai_agent_gpu_memory_used_bytes{gpu}")), Some(1073741824.0));
        assert_eq!(sample(&agent, &format!("batchai_agent_gpu_memory_total_bytes{gpu}")), Some(17179869184.0));
        assert!(sample(&text, "batchai_db_connections_max").is_some_and(|n| n >= 1.0), "{text}");

        // A second job waits for the only node: the scheduler says why, by class.
        let second = common::farm::submit(
            &c,
            &exp,
            "second",
            &common::farm::job_body(
                "rg",
                1,
                serde_json::json!({
            "customToolkitSettings": {"commandLine": "true"}}),
            ),
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while sample(&scrape(&server_metrics).await, r#"batchai_pending_jobs{reason="no_idle_nodes"}"#) != Some(1.0) {
            assert!(Instant::now() < deadline, "the queued job is not counted as waiting for idle nodes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        std::fs::write(&go, "").unwrap();
        common::farm::succeeded(&c, &job).await;
        common::farm::succeeded(&c, &second).await;
        // The agent counts the job ended when it has reported it; the server counts it at once.
        let text = scrape(&server_metrics).await;
        assert_eq!(sample(&text, r#"batchai_jobs{priority="normal",state="running"}"#), None, "{text}");
        assert_eq!(sample(&text, r#"batchai_jobs{priority="normal",state="succeeded"}"#), Some(2.0), "{text}");
        assert_eq!(sample(&text, r#"batchai_job_run_seconds_count{outcome="succeeded"}"#), Some(2.0), "{text}");
        let gpu_time = text
            .lines()
            .find(|l| l.starts_with("batchai_gpu_seconds_total{") && l.contains(r#"resource_group="rg""#))
            .and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok());
        assert!(gpu_time.is_some_and(|s| s > 0.0), "{text}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let agent = scrape(&agent_metrics).await;
            if sample(&agent, "batchai_agent_running_jobs") == Some(0.0) && !agent.contains("batchai_agent_gpu_job{") {
                break;
            }
            assert!(Instant::now() < deadline, "the agent still counts the job: {agent}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
