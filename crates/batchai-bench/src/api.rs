//! The ARM API as the benchmarks drive it: an authenticated client (a service principal's JWT,
//! what the SDK's `ServicePrincipalCredentials` sends), the scaffold every scenario needs (group,
//! workspace, experiment, cluster) and job bodies.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub const SUB: &str = "00000000-0000-0000-0000-0000000000be";
pub const BAI: &str = "api-version=2018-05-01";

#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    /// A client of the server at `base` whose database is `database_url`: creates a principal
    /// there and signs its token with the installation's key, as the token service would.
    pub async fn for_database(base: &str, database_url: &str, clients: usize) -> anyhow::Result<Self> {
        let store = batchai_store::connect(database_url).await?;
        let keys = batchai_api::auth::Keys::load(store.as_ref()).await?;
        let subs = [SUB.to_owned()];
        let (p, _) = batchai_api::auth::create_principal(store.as_ref(), "bench", &subs).await?;
        let token = keys.issue(&p.client_id, &subs, "https://management.core.windows.net/", "bench", 4 * 3600).0;
        let http = reqwest::Client::builder().pool_max_idle_per_host(clients.max(1)).build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), token })
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::PUT, path, body).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::PATCH, path, body).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::GET, path, &Value::Null).await
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> anyhow::Result<Value> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(&self.token);
        if !body.is_null() {
            req = req.json(body);
        }
        let res = req.send().await?;
        let status = res.status();
        let bytes = res.bytes().await?;
        if !status.is_success() {
            bail!("{method} {path}: {status} {}", String::from_utf8_lossy(&bytes));
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// `/subscriptions/…/workspaces/ws` of resource group `bench`.
pub fn workspace() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/bench/providers/Microsoft.BatchAI/workspaces/ws")
}

/// The path of job `name` in experiment `exp`.
pub fn job_path(name: &str) -> String {
    format!("{}/experiments/exp/jobs/{name}?{BAI}", workspace())
}

pub fn cluster_path() -> String {
    format!("{}/clusters/c?{BAI}", workspace())
}

pub fn cluster_id() -> String {
    format!("{}/clusters/c", workspace())
}

/// Creates group, workspace, experiment and a STANDARD_NC6 cluster `c` of `nodes` nodes with
/// an Azure file share mounted (jobs write their output there).
pub async fn scaffold(api: &Api, nodes: usize) -> anyhow::Result<()> {
    let rg = format!("/subscriptions/{SUB}/resourceGroups/bench");
    api.put(&format!("{rg}?api-version=2021-04-01"), &json!({"location": "eastus"})).await?;
    api.put(&format!("{}?{BAI}", workspace()), &json!({"location": "eastus"})).await?;
    api.put(&format!("{}/experiments/exp?{BAI}", workspace()), &Value::Null).await?;
    let cluster = json!({"properties": {
        "vmSize": "STANDARD_NC6", "vmPriority": "dedicated",
        "scaleSettings": {"manual": {"targetNodeCount": nodes, "nodeDeallocationOption": "requeue"}},
        "nodeSetup": {"mountVolumes": {"azureFileShares": [{"accountName": "acct",
            "azureFileUrl": "https://acct.file.core.windows.net/share", "credentials": {"accountKey": "KEY"},
            "relativeMountPath": "afs", "fileMode": "0777", "directoryMode": "0777"}]}},
        "userAccountSettings": {"adminUserName": "u", "adminUserPassword": "p"}}});
    api.put(&cluster_path(), &cluster).await?;
    Ok(())
}

/// Resizes cluster `c` (manual scale).
pub async fn resize(api: &Api, nodes: usize) -> anyhow::Result<()> {
    let body = json!({"properties": {"scaleSettings": {"manual": {"targetNodeCount": nodes}}}});
    api.patch(&cluster_path(), &body).await?;
    Ok(())
}

/// A one-node custom-toolkit job running `command`.
pub fn job_body(command: &str) -> Value {
    json!({"properties": {
        "cluster": {"id": cluster_id()}, "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs",
        "customToolkitSettings": {"commandLine": command}}})
}

/// PUTs job `path` and polls it every 2 ms until it ended; returns the time from sending the
/// PUT to the GET that saw the end, and that last body. Fails after 60 s or if it failed.
pub async fn run_lone(api: &Api, path: &str, body: &Value) -> anyhow::Result<(Duration, Value)> {
    let started = std::time::Instant::now();
    api.put(path, body).await?;
    loop {
        let job = api.get(path).await?;
        match job["properties"]["executionState"].as_str() {
            Some("succeeded") => return Ok((started.elapsed(), job)),
            Some("failed") => bail!("job {path} failed: {}", job["properties"]["executionInfo"]),
            _ if started.elapsed() > Duration::from_secs(60) => bail!("job {path} did not end in 60 s: {job}"),
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

/// Waits until cluster `c` reports `idle` idle nodes; fails after `limit`.
pub async fn wait_idle(api: &Api, idle: usize, limit: Duration) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let c = api.get(&cluster_path()).await?;
        let counts = &c["properties"]["nodeStateCounts"];
        if counts["idleNodeCount"].as_u64() == Some(idle as u64) {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("cluster not idle after {limit:?}: {counts}; errors: {}", c["properties"]["errors"]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Milliseconds between two RFC 3339 times of a job (`creationTime`, `executionInfo.endTime`).
pub fn millis_between(from: &Value, to: &Value) -> anyhow::Result<i64> {
    let parse = |v: &Value| -> anyhow::Result<i64> {
        let s = v.as_str().context("time is a string")?;
        Ok(chrono::DateTime::parse_from_rfc3339(s)?.timestamp_millis())
    };
    Ok(parse(to)? - parse(from)?)
}
