//! Test harness: real `batchai server` processes on random ports, on SQLite or on a fresh
//! Postgres database, driven over real HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

pub mod farm;

pub const SUB: &str = "00000000-0000-0000-0000-000000000000";
pub const BAI: &str = "api-version=2018-05-01";

/// Which database a test server uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backends to run against: SQLite always; Postgres when `BATCHAI_TEST_PG_URL` is set
/// (required under CI, so a missing database fails instead of silently skipping).
pub fn backends() -> Vec<Backend> {
    let mut b = vec![Backend::Sqlite];
    if std::env::var("BATCHAI_TEST_PG_URL").is_ok() {
        b.push(Backend::Postgres);
    } else if std::env::var("CI").is_ok() {
        panic!("CI is set but BATCHAI_TEST_PG_URL is not: the Postgres half of the suite would not run");
    }
    b
}

/// A fresh, empty Postgres database; returns its URL.
pub fn fresh_pg_database() -> String {
    let admin = std::env::var("BATCHAI_TEST_PG_URL").expect("BATCHAI_TEST_PG_URL");
    let name = format!("batchai_test_{}", uuid::Uuid::new_v4().simple());
    let out =
        Command::new("psql").arg(&admin).arg("-qc").arg(format!("CREATE DATABASE {name}")).output().expect("psql runs");
    assert!(out.status.success(), "CREATE DATABASE failed: {}", String::from_utf8_lossy(&out.stderr));
    let (base, _) = admin.rsplit_once('/').expect("URL has a database part");
    format!("{base}/{name}")
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_batchai"))
}

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub http: String,
    pub https: String,
    pub ca_cert: PathBuf,
    pub token: String,
    _tmp: Option<tempfile::TempDir>,
}

pub struct ServerOptions {
    pub backend: Backend,
    pub env: Vec<(String, String)>,
}

impl Server {
    pub fn start(backend: Backend) -> Self {
        Self::start_with(ServerOptions { backend, env: Vec::new() })
    }

    pub fn start_with(opts: ServerOptions) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().to_owned();
        let database_url = (opts.backend == Backend::Postgres).then(fresh_pg_database);
        let mut s = Self::spawn(&data_dir, database_url.clone(), &opts.env);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server on an existing data dir / database (a restart).
    pub fn spawn(data_dir: &Path, database_url: Option<String>, env: &[(String, String)]) -> Self {
        let mut cmd = Command::new(binary());
        cmd.arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("BATCHAI_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(url) = &database_url {
            cmd.arg("--database-url").arg(url);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        // BATCHAI_LISTEN serves HTTPS beyond loopback (agents in containers).
        if !env.iter().any(|(k, _)| k == "BATCHAI_LISTEN") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        // A fixed port (BATCHAI_HTTP_LISTEN) lets agents find a restarted server.
        if !env.iter().any(|(k, _)| k == "BATCHAI_HTTP_LISTEN") {
            cmd.args(["--http-listen", "127.0.0.1:0"]);
        }
        let mut child = cmd.spawn().expect("server starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready: Value = loop {
            let line = lines.next().expect("server printed BATCHAI_READY before exiting").expect("stdout readable");
            if let Some(json) = line.strip_prefix("BATCHAI_READY ") {
                break serde_json::from_str(json).expect("ready line is JSON");
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let mut s = Self {
            child,
            data_dir: data_dir.to_owned(),
            database_url,
            http: ready["http_url"].as_str().expect("http url").to_owned(),
            https: ready["https_url"].as_str().expect("https url").to_owned(),
            ca_cert: PathBuf::from(ready["ca_cert"].as_str().expect("ca")),
            token: String::new(),
            _tmp: None,
        };
        s.token =
            s.admin_json(&["token", "create", "--subscription", SUB])["token"].as_str().expect("token").to_owned();
        s
    }

    /// Runs `batchai admin …` against this server's database; returns its JSON output.
    pub fn admin_json(&self, args: &[&str]) -> Value {
        let mut cmd = Command::new(binary());
        cmd.arg("admin").arg("--data-dir").arg(&self.data_dir).args(args).env("RUST_LOG", "warn");
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        let out = cmd.output().expect("admin runs");
        assert!(out.status.success(), "admin {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("admin prints JSON")
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn client(&self) -> Client {
        Client { http: reqwest::Client::new(), base: self.http.clone(), token: self.token.clone() }
    }

    /// The path of `/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.BatchAI/…`.
    pub fn bai(rg: &str, rest: &str) -> String {
        format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.BatchAI/{rest}")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A thin authenticated HTTP client.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

/// Status, headers and JSON body (Null when empty or not JSON).
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Client {
    pub fn url(&self, path_and_query: &str) -> String {
        if path_and_query.starts_with("http") {
            path_and_query.to_owned()
        } else {
            format!("{}{path_and_query}", self.base)
        }
    }

    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Reply {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(&self.token);
        if let Some(b) = body.filter(|b| !b.is_null()) {
            req = req.json(b);
        }
        Self::reply(req.send().await.expect("request sent")).await
    }

    pub async fn reply(res: reqwest::Response) -> Reply {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body read");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, body, text }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    pub async fn post(&self, path: &str) -> Reply {
        self.send(reqwest::Method::POST, path, None).await
    }

    /// Follows an operation URL until it ends, honouring Retry-After; panics after `limit`
    /// polls (a hang, not a timing assertion).
    pub async fn wait_operation(&self, url: &str) -> Value {
        for _ in 0..600 {
            let r = self.get(url).await;
            assert_eq!(r.status, 200, "poll of {url}: {}", r.text);
            if r.body["status"] != "InProgress" {
                return r.body;
            }
            // The protocol's own pacing (Retry-After says 1 s; tests poll faster).
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("operation {url} never ended");
    }

    /// PUT and wait for the operation the 202 names (or take the 200 body).
    pub async fn put_and_wait(&self, path: &str, body: &Value) -> Reply {
        let r = self.put(path, body).await;
        if r.status == 202 {
            let op = r.headers.get("azure-asyncoperation").expect("async header").to_str().expect("ascii").to_owned();
            let done = self.wait_operation(&op).await;
            assert_eq!(done["status"], "Succeeded", "{done}");
            return self.get(path).await;
        }
        r
    }
}

/// The quickstart's cluster body.
pub fn cluster_body() -> Value {
    serde_json::json!({"properties": {
        "vmSize": "STANDARD_NC6", "vmPriority": "dedicated",
        "scaleSettings": {"manual": {"targetNodeCount": 1, "nodeDeallocationOption": "requeue"}},
        "nodeSetup": {"mountVolumes": {"azureFileShares": [{"accountName": "acct",
            "azureFileUrl": "https://acct.file.core.windows.net/share", "credentials": {"accountKey": "S3CRETKEY"},
            "relativeMountPath": "azurefileshare", "fileMode": "0777", "directoryMode": "0777"}]}},
        "userAccountSettings": {"adminUserName": "admin", "adminUserPassword": "P4SSWORD"}}})
}

/// A custom-toolkit job on `cluster_id`.
pub fn job_body(cluster_id: &str) -> Value {
    serde_json::json!({"properties": {
        "cluster": {"id": cluster_id}, "nodeCount": 1, "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare",
        "customToolkitSettings": {"commandLine": "echo hi"},
        "secrets": [{"name": "SECRET", "value": "HUSHHUSH"}]}})
}

/// Creates rg, workspace `ws`, experiment `exp` and cluster `c` under `rg`; returns the
/// cluster id.
pub async fn scaffold(c: &Client, rg: &str) -> String {
    let r = c
        .put(
            &format!("/subscriptions/{SUB}/resourcegroups/{rg}?api-version=2021-04-01"),
            &serde_json::json!({"location": "eastus"}),
        )
        .await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
    let r =
        c.put(&format!("{}?{BAI}", Server::bai(rg, "workspaces/ws")), &serde_json::json!({"location": "eastus"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.put(&format!("{}?{BAI}", Server::bai(rg, "workspaces/ws/experiments/exp")), &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.put_and_wait(&format!("{}?{BAI}", Server::bai(rg, "workspaces/ws/clusters/c")), &cluster_body()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["id"].as_str().expect("cluster id").to_owned()
}

/// A free loopback port (for a server that must come back on the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running `batchai agent` process with its own data dir; killed when dropped.
pub struct Agent {
    pub child: Child,
    pub data_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Agent {
    /// Joins `server` with a fresh join token.
    pub fn start(server: &Server, env: &[(String, String)]) -> Self {
        let token = server.admin_json(&["join-token", "create"])["join_token"].as_str().expect("token").to_owned();
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().to_owned();
        let mut a = Self { child: Self::spawn(&server.http, &data_dir, Some(&token), env), data_dir, _tmp: tmp };
        a.child.stdin.take();
        a
    }

    fn spawn(url: &str, data_dir: &Path, token: Option<&str>, env: &[(String, String)]) -> Child {
        let mut cmd = Command::new(binary());
        cmd.arg("agent")
            .arg("--server")
            .arg(url)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--address", "127.0.0.1", "--vm-size", "STANDARD_NC6"])
            .env_remove("BATCHAI_DATABASE_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(t) = token {
            cmd.arg("--join-token").arg(t);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().expect("agent starts")
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as systemd, Docker and Kubernetes stop it; waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let term = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(term.success(), "kill -TERM failed");
        self.child.wait().expect("the agent exits")
    }

    /// Starts the agent again on its data dir (it has joined: no token), after a [`Agent::kill`].
    pub fn restart(&mut self, server: &Server, env: &[(String, String)]) {
        self.child = Self::spawn(&server.http, &self.data_dir, None, env);
        self.child.stdin.take();
    }

    /// The node id it joined as, once it has.
    pub fn node_id(&self) -> Option<String> {
        let saved: Value = serde_json::from_slice(&std::fs::read(self.data_dir.join("node.json")).ok()?).ok()?;
        saved["node_id"].as_str().map(str::to_owned)
    }

    /// Ids of the Docker containers of its node, every state (`docker ps -a` by label).
    pub fn containers(&self) -> Vec<String> {
        let Some(node) = self.node_id() else { return Vec::new() };
        let out = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label=io.batchai.node={node}")])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
    }
}

impl Drop for Agent {
    /// Stops the agent as an operator would (SIGTERM), so that it stops its jobs' processes:
    /// they run in process groups of their own and outlive a `kill -9` of the agent. Killed
    /// after a while if it does not exit.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while std::time::Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        self.kill();
        // Containers of a test that failed midway would outlive it on the shared engine.
        let leftovers = self.containers();
        if !leftovers.is_empty() {
            let _ = Command::new("docker").args(["rm", "-f"]).args(&leftovers).output();
        }
    }
}
