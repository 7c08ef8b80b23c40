//! Helpers for tests that run jobs on real `batchai agent` processes: a farm (resource group,
//! workspace, experiment, cluster), job bodies, and waiting the way a client waits — polling
//! the API until a state is reached, with an overall limit only to turn a hang into a failure.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{BAI, Backend, Client, SUB, Server, ServerOptions};

/// The overall limit of one wait; reaching it is a failure (a hang), never a timing assertion.
pub const LIMIT: Duration = Duration::from_secs(90);

/// Short long polls and a quick node timeout, for servers and agents alike, so that lost
/// nodes are noticed within seconds.
pub fn env() -> Vec<(String, String)> {
    vec![("BATCHAI_AGENT_MAX_WAIT_MS".into(), "1000".into()), ("BATCHAI_NODE_TIMEOUT_SECS".into(), "4".into())]
}

pub fn start(backend: Backend, env: Vec<(String, String)>) -> Server {
    Server::start_with(ServerOptions { backend, env })
}

/// GETs `path` until `pred` holds for the body; returns that body.
pub async fn wait_for(c: &Client, path: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let r = c.get(&format!("{path}?{BAI}")).await;
        if r.status == 200 && pred(&r.body) {
            return r.body;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; last: {}", r.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls `probe` until it returns something (for state outside the API: files, node lists).
pub async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The path of workspace `ws` in `rg`.
pub fn workspace(rg: &str) -> String {
    Server::bai(rg, "workspaces/ws")
}

/// The path of cluster `name` in `rg`'s workspace.
pub fn cluster_path(rg: &str, name: &str) -> String {
    format!("{}/clusters/{name}", workspace(rg))
}

/// The ARM id of cluster `name` in `rg`'s workspace.
pub fn cluster_id(rg: &str, name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.BatchAI/workspaces/ws/clusters/{name}")
}

/// Resource group `rg`, workspace `ws` and experiment `exp`; returns the experiment path.
pub async fn experiment(c: &Client, rg: &str) -> String {
    let r = c
        .put(
            &format!("/subscriptions/{SUB}/resourcegroups/{rg}?api-version=2021-04-01"),
            &json!({"location": "eastus"}),
        )
        .await;
    assert!(r.status < 300, "{}", r.text);
    let ws = workspace(rg);
    let r = c.put(&format!("{ws}?{BAI}"), &json!({"location": "eastus"})).await;
    assert!(r.status < 300, "{}", r.text);
    let exp = format!("{ws}/experiments/exp");
    let r = c.send(reqwest::Method::PUT, &format!("{exp}?{BAI}"), None).await;
    assert!(r.status < 300, "{}", r.text);
    exp
}

/// An NC6 cluster's properties: `scale` as its scaleSettings, a file share
/// (`acct/share`) mounted at `afs`.
pub fn cluster_props(scale: Value) -> Value {
    json!({
        "vmSize": "STANDARD_NC6",
        "scaleSettings": scale,
        "userAccountSettings": {"adminUserName": "u", "adminUserPassword": "p"},
        "nodeSetup": {"mountVolumes": {"azureFileShares": [{
            "accountName": "acct", "azureFileUrl": "https://acct.file.core.windows.net/share",
            "credentials": {"accountKey": "a2V5"}, "relativeMountPath": "afs"}]}}
    })
}

/// Creates cluster `name` in `rg`'s workspace (accepted, not waited for); returns its path.
pub async fn create_cluster(c: &Client, rg: &str, name: &str, props: Value) -> String {
    let path = cluster_path(rg, name);
    let r = c.put(&format!("{path}?{BAI}"), &json!({ "properties": props })).await;
    assert_eq!(r.status, 202, "{}", r.text);
    path
}

/// Waits until cluster `path` has `n` idle nodes and is steady.
pub async fn wait_idle(c: &Client, path: &str, n: i64) -> Value {
    wait_for(c, path, &format!("{n} idle nodes"), |b| {
        b["properties"]["nodeStateCounts"]["idleNodeCount"] == json!(n)
            && b["properties"]["currentNodeCount"] == json!(n)
            && b["properties"]["allocationState"] == "steady"
    })
    .await
}

/// Resizes a manually scaled cluster with PATCH.
pub async fn resize(c: &Client, path: &str, manual: Value) {
    let body = json!({"properties": {"scaleSettings": {"manual": manual}}});
    let r = c.send(reqwest::Method::PATCH, &format!("{path}?{BAI}"), Some(&body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Resource group, workspace, experiment and cluster `c1` of `nodes` nodes (see
/// [`cluster_props`]); waits until all nodes are idle. Returns the experiment path.
pub async fn farm(c: &Client, rg: &str, nodes: i32) -> String {
    let exp = experiment(c, rg).await;
    let path = create_cluster(c, rg, "c1", cluster_props(json!({"manual": {"targetNodeCount": nodes}}))).await;
    wait_idle(c, &path, i64::from(nodes)).await;
    exp
}

/// A job on `rg`'s cluster `c1` with `nodes` nodes, logging to the share, with a variable
/// `PLAIN=plain-value` and a secret `SECRET=s3cr3t`; `settings` adds or replaces properties.
pub fn job_body(rg: &str, nodes: i32, settings: Value) -> Value {
    let mut props = json!({
        "cluster": {"id": cluster_id(rg, "c1")},
        "nodeCount": nodes,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        "environmentVariables": [{"name": "PLAIN", "value": "plain-value"}],
        "secrets": [{"name": "SECRET", "value": "s3cr3t"}],
    });
    for (k, v) in settings.as_object().expect("object") {
        props[k] = v.clone();
    }
    json!({ "properties": props })
}

/// PUTs job `name` into the experiment; returns its path.
pub async fn submit(c: &Client, exp: &str, name: &str, body: &Value) -> String {
    let path = format!("{exp}/jobs/{name}");
    let r = c.put(&format!("{path}?{BAI}"), body).await;
    assert_eq!(r.status, 202, "{}", r.text);
    path
}

pub async fn state_is(c: &Client, job: &str, state: &str) -> Value {
    wait_for(c, job, &format!("job {job} {state}"), |b| b["properties"]["executionState"] == state).await
}

pub async fn finished(c: &Client, job: &str) -> Value {
    wait_for(c, job, "the job to end", |b| {
        matches!(b["properties"]["executionState"].as_str(), Some("succeeded" | "failed"))
    })
    .await
}

/// Waits for the job to end and asserts it succeeded with exit code 0.
pub async fn succeeded(c: &Client, job: &str) -> Value {
    let done = finished(c, job).await;
    assert_eq!(done["properties"]["executionState"], "succeeded", "{job}: {done}");
    assert_eq!(done["properties"]["executionInfo"]["exitCode"], 0, "{job}: {done}");
    done
}

/// Lists an output directory and downloads one file by its signed URL, without a token.
pub async fn output(c: &Client, job: &str, dir: &str, file: &str) -> String {
    let r = c.post(&format!("{job}/listOutputFiles?{BAI}&outputdirectoryid={dir}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entry = r.body["value"]
        .as_array()
        .expect("value")
        .iter()
        .find(|f| f["name"].as_str().is_some_and(|n| n.ends_with(file)))
        .unwrap_or_else(|| panic!("{file} not listed in {dir}: {}", r.text))
        .clone();
    let url = entry["downloadUrl"].as_str().expect("downloadUrl");
    let res = reqwest::get(url).await.expect("download");
    assert_eq!(res.status(), 200);
    res.text().await.expect("text")
}

/// The names of the files in a job's output directory.
pub async fn output_names(c: &Client, job: &str, dir: &str) -> Vec<String> {
    let r = c.post(&format!("{job}/listOutputFiles?{BAI}&outputdirectoryid={dir}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["value"]
        .as_array()
        .expect("value")
        .iter()
        .filter_map(|f| f["name"].as_str().map(|n| n.rsplit('/').next().unwrap_or(n).to_owned()))
        .collect()
}

/// `batchai admin node list` as (id, state, cluster key) per node.
pub fn nodes(server: &Server) -> Vec<(String, String, Option<String>)> {
    let mut cmd = std::process::Command::new(super::binary());
    cmd.args(["admin", "node", "list", "--data-dir"]).arg(&server.data_dir).env("RUST_LOG", "warn");
    if let Some(url) = &server.database_url {
        cmd.arg("--database-url").arg(url);
    }
    let out = cmd.output().expect("admin runs");
    assert!(out.status.success(), "node list failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let n: Value = serde_json::from_str(l).expect("a JSON line per node");
            let s = |k: &str| n[k].as_str().map(str::to_owned);
            (s("id").expect("id"), s("state").expect("state"), s("cluster"))
        })
        .collect()
}

/// Writes an executable file.
pub fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write executable");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}
