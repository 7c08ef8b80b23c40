//! Golden test: the 33 request/response examples of the 2018-05-01 spec, replayed against a live
//! server on every backend.
//!
//! The examples are read at test time from `shared/spec/batchai/2018-05-01/examples` beside the
//! repository. Each one gets its own resource group; its parents are created through the API
//! first; then its request is sent and the reply checked against the example: the status is one
//! the example lists, every header the example shows is there, and our body has the example
//! body's shape — every key path (arrays: their first element) with the same JSON kind — and the
//! same value for enum-like keys and `type`. Ids, names, times, uuids and counts are not compared
//! by value (ids and names are checked against the request path instead). Keys we add are fine.
//!
//! The examples have known errors; each correction below cites `batchai-api.md`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{BAI, Client, Reply, SUB, Server, backends};
use reqwest::Method;
use serde_json::{Value, json};

/// Keys whose string values are enums (or the resource `type`): compared exactly.
const EXACT: &str = "type provisioningState executionState allocationState toolType vmPriority fileType unit
    nodeDeallocationOption schedulingPriority cachingType storageAccountType origin";
/// Write-only fields, never in a response (§9.3).
const SECRET_KEYS: &str = "adminUserPassword accountKey password";
/// Read-only fields, dropped when an example's response body is turned into a create body.
const READ_ONLY: &str = "creationTime provisioningState provisioningStateTransitionTime allocationState
    allocationStateTransitionTime errors currentNodeCount nodeStateCounts toolType
    jobOutputDirectoryPathSegment executionState executionStateTransitionTime executionInfo
    experimentName mountSettings";

struct Example {
    name: String,
    params: Value,
    responses: Value,
}

impl Example {
    fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key)?.as_str()
    }

    fn statuses(&self) -> Vec<u16> {
        self.responses.as_object().map(|m| m.keys().filter_map(|k| k.parse().ok()).collect()).unwrap_or_default()
    }

    fn body(&self) -> Option<&Value> {
        self.responses.get("200")?.get("body")
    }

    fn headers(&self, status: u16) -> Vec<String> {
        let h = self.responses.get(status.to_string()).and_then(|r| r.get("headers")).and_then(Value::as_object);
        h.map(|h| h.keys().cloned().collect()).unwrap_or_default()
    }
}

fn load_examples() -> BTreeMap<String, Example> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/spec/batchai/2018-05-01/examples");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "the spec examples are missing at {} ({e}): the golden test reads the 33 files of \
             shared/spec/batchai/2018-05-01/examples, the folder beside the repository",
            dir.display()
        )
    });
    let mut all = BTreeMap::new();
    for entry in entries {
        let path = entry.expect("directory entry").path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        let text = std::fs::read_to_string(&path).expect("example readable");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        all.insert(name.clone(), Example { name, params: v["parameters"].clone(), responses: v["responses"].clone() });
    }
    assert_eq!(all.len(), 33, "expected the 33 examples of 2018-05-01 in {}", dir.display());
    all
}

/// The method, from the example's name (batchai-api.md §1 table).
fn method_of(name: &str) -> Method {
    if name.starts_with("Terminate") || name == "ListOutputFiles" || name.ends_with("ListRemoteLoginInfo") {
        Method::POST
    } else if name.starts_with("Put") {
        Method::PUT
    } else if name.starts_with("Patch") {
        Method::PATCH
    } else if name.starts_with("Delete") {
        Method::DELETE
    } else {
        Method::GET
    }
}

/// Names used by one example; lists name the item the example lists.
struct Names {
    rg: String,
    ws: String,
    exp: String,
    cluster: String,
    job: String,
    fs: String,
}

#[derive(Clone, Copy, PartialEq)]
enum Need {
    Ws,
    Exp,
    Cluster,
    Job,
    FileServer,
}

/// Path (with query) and the parents to create first.
fn plan(ex: &Example, n: &Names) -> (String, &'static [Need]) {
    use Need::*;
    let p = |rest: &str| format!("{}?{BAI}", Server::bai(&n.rg, rest));
    let sub = |rest: &str| format!("/subscriptions/{SUB}/providers/Microsoft.BatchAI/{rest}?{BAI}");
    let ws = format!("workspaces/{}", n.ws);
    let exp = format!("{ws}/experiments/{}", n.exp);
    let job = format!("{exp}/jobs/{}", n.job);
    let cl = format!("{ws}/clusters/{}", n.cluster);
    let fs = format!("{ws}/fileServers/{}", n.fs);
    match ex.name.as_str() {
        "ListOperation" => (format!("/providers/Microsoft.BatchAI/operations?{BAI}"), &[]),
        "ListUsages" => (sub(&format!("locations/{}/usages", ex.param("location").unwrap_or("eastus"))), &[]),
        "ListWorkspace" => (sub("workspaces"), &[Ws]),
        "ListWorkspaceByResourceGroup" => (p("workspaces"), &[Ws]),
        "PutWorkspace" => (p(&ws), &[]),
        "GetWorkspace" | "PatchWorkspace" | "DeleteWorkspace" => (p(&ws), &[Ws]),
        "ListExperimentByWorkspace" => (p(&format!("{ws}/experiments")), &[Ws, Exp]),
        "PutExperiment" => (p(&exp), &[Ws]),
        "GetExperiment" | "DeleteExperiment" => (p(&exp), &[Ws, Exp]),
        "ListJobByExperiment" => (p(&format!("{exp}/jobs")), &[Ws, Exp, Cluster, Job]),
        "PutJob" => (p(&job), &[Ws, Exp, Cluster]),
        "GetJob" | "DeleteJob" => (p(&job), &[Ws, Exp, Cluster, Job]),
        "TerminateJob" => (p(&format!("{job}/terminate")), &[Ws, Exp, Cluster, Job]),
        "JobListRemoteLoginInfo" => (p(&format!("{job}/listRemoteLoginInformation")), &[Ws, Exp, Cluster, Job]),
        "ListOutputFiles" => {
            let dir = ex.param("outputdirectoryid").unwrap_or("stdouterr");
            (format!("{}&outputdirectoryid={dir}", p(&format!("{job}/listOutputFiles"))), &[Ws, Exp, Cluster, Job])
        }
        "ListClusterByWorkspace" => (p(&format!("{ws}/clusters")), &[Ws, Cluster]),
        "PutCluster" => (p(&cl), &[Ws]),
        "GetCluster" | "PatchCluster" | "DeleteCluster" => (p(&cl), &[Ws, Cluster]),
        "ClusterListRemoteLoginInfo" => (p(&format!("{cl}/listRemoteLoginInformation")), &[Ws, Cluster]),
        "ListFileServerByWorkspace" => (p(&format!("{ws}/fileServers")), &[Ws, FileServer]),
        "PutFileServer" => (p(&fs), &[Ws]),
        "GetFileServer" | "DeleteFileServer" => (p(&fs), &[Ws, FileServer]),
        // Clusters_List / FileServers_List / *_ListByResourceGroup are 2018-03-01 operations
        // (batchai-api.md §10): the 2018-05-01 route table (§1) has no such paths.
        "ListCluster" => (sub("clusters"), &[]),
        "ListFileServer" => (sub("fileServers"), &[]),
        "ListClusterByResourceGroup" => (p("clusters"), &[]),
        "ListFileServerByResourceGroup" => (p("fileServers"), &[]),
        other => panic!("example {other} is not in the operation table"),
    }
}

/// Applies the corrections every request body taken from an example needs.
fn fix_request(body: &Value, rg: &str) -> Value {
    let text = body
        .to_string()
        .replace("/resourceGroups/demo_resource_group/", &format!("/resourceGroups/{rg}/"))
        // PutJob's cluster id says `/workspace/`; ids use `/workspaces/` (§2).
        .replace("/Microsoft.BatchAI/workspace/", "/Microsoft.BatchAI/workspaces/");
    let mut v: Value = serde_json::from_str(&text).expect("re-parses");
    // The examples' job `priority` is really `schedulingPriority` (§3.1, Job).
    if let Some(props) = v.get_mut("properties").and_then(Value::as_object_mut)
        && let Some(p) = props.remove("priority")
    {
        props.insert("schedulingPriority".into(), p);
    }
    v
}

/// An example's resource body turned back into a create body: read-only fields dropped, and the
/// write-only ones that no response shows (password, storage key) supplied.
fn writable(resource: &Value, rg: &str) -> Value {
    let mut v = fix_request(&json!({"properties": resource["properties"]}), rg);
    let props = v["properties"].as_object_mut().expect("properties object");
    for k in READ_ONLY.split_whitespace() {
        props.remove(k);
    }
    for pointer in ["/properties/userAccountSettings", "/properties/sshConfiguration/userAccountSettings"] {
        if let Some(u) = v.pointer_mut(pointer).and_then(Value::as_object_mut) {
            u.insert("adminUserPassword".into(), "golden-P4SSWORD".into());
        }
    }
    for list in ["azureFileShares", "azureBlobFileSystems"] {
        let pointer = format!("/properties/nodeSetup/mountVolumes/{list}");
        for share in v.pointer_mut(&pointer).and_then(Value::as_array_mut).into_iter().flatten() {
            share["credentials"] = json!({"accountKey": "golden-ACCOUNTKEY"});
        }
    }
    v
}

/// The wire `type` of a resource, from the examples' spelling (they show e.g.
/// `Microsoft.BatchAI/Job`; the service sent `Microsoft.BatchAI/workspaces/experiments/jobs`, §2).
fn fixed_type(t: &str) -> Option<&'static str> {
    let kind = t.strip_prefix("Microsoft.BatchAI/")?.to_ascii_lowercase();
    Some(match kind.trim_end_matches('s') {
        "workspace" => "Microsoft.BatchAI/workspaces",
        "experiment" => "Microsoft.BatchAI/workspaces/experiments",
        "cluster" => "Microsoft.BatchAI/workspaces/clusters",
        "job" => "Microsoft.BatchAI/workspaces/experiments/jobs",
        "fileserver" => "Microsoft.BatchAI/workspaces/fileservers",
        _ => return None,
    })
}

/// Applies the known corrections to an example's response body, wherever a resource appears.
fn fix_expected(v: &mut Value) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(fix_expected),
        Value::Object(o) => {
            let fixed = o.get("type").and_then(Value::as_str).and_then(fixed_type);
            if let Some(t) = fixed {
                o.insert("type".into(), t.into());
                // Clusters and file servers are ProxyResources in 2018-05-01: no `location` (§2).
                if t.ends_with("/clusters") || t.ends_with("/fileservers") {
                    o.remove("location");
                }
                if t.ends_with("/jobs")
                    && let Some(props) = o.get_mut("properties").and_then(Value::as_object_mut)
                {
                    // `priority` is really `schedulingPriority` (§3.1, Job).
                    if let Some(p) = props.remove("priority") {
                        props.insert("schedulingPriority".into(), p);
                    }
                    // The example shows a job a node had already started. Right after creation
                    // the service answers `queued` with no `executionInfo` (§7.2 [REC]); with no
                    // node agents yet, jobs here stay queued.
                    props.insert("executionState".into(), "queued".into());
                    props.remove("executionInfo");
                }
            }
            o.values_mut().for_each(fix_expected);
        }
        _ => {}
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Shape comparison: every key path of `exp` is in `ours` with the same kind; enum-like keys
/// have the same value.
fn compare(exp: &Value, ours: Option<&Value>, path: &str, errs: &mut Vec<String>) {
    let Some(ours) = ours else {
        errs.push(format!("{path} is missing"));
        return;
    };
    if !exp.is_null() && kind(exp) != kind(ours) {
        errs.push(format!("{path} is a {}, the example has a {}", kind(ours), kind(exp)));
        return;
    }
    match (exp, ours) {
        (Value::Object(e), Value::Object(o)) => {
            for (k, v) in e {
                let p = format!("{path}.{k}");
                if EXACT.split_whitespace().any(|x| x == k) && v.is_string() && o.get(k).is_some_and(|x| x != v) {
                    errs.push(format!("{p} is {}, the example has {v}", o[k]));
                }
                compare(v, o.get(k), &p, errs);
            }
        }
        (Value::Array(e), Value::Array(o)) => {
            if let Some(first) = e.first() {
                compare(first, o.first(), &format!("{path}[0]"), errs);
            }
        }
        _ => {}
    }
}

/// Checks that hold for every body we return: no write-only field, times in the service's form.
fn check_body(v: &Value, path: &str, errs: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let p = format!("{path}.{k}");
                if SECRET_KEYS.split_whitespace().any(|x| x == k) {
                    errs.push(format!("{p}: a write-only field is echoed"));
                }
                if k == "secrets" {
                    for s in x.as_array().into_iter().flatten().filter(|s| s.get("value").is_some()) {
                        errs.push(format!("{p}: a secret value is echoed: {s}"));
                    }
                }
                if ["creationTime", "startTime", "endTime"].contains(&k.as_str()) || k.ends_with("TransitionTime") {
                    let t = x.as_str().unwrap_or_default().as_bytes();
                    let ok = t.len() == 24 && t[10] == b'T' && t[19] == b'.' && t.ends_with(b"Z");
                    if !ok {
                        errs.push(format!("{p} = {x} is not yyyy-mm-ddThh:mm:ss.fffZ (§9.7)"));
                    }
                }
                check_body(x, &p, errs);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| check_body(x, path, errs)),
        _ => {}
    }
}

/// The resource checks beyond shape: id and name as the request path spells them, and the job
/// output segment's exact form (§5.1: no GUIDs after workspace or experiment, unlike PutJob).
fn check_resource(v: &Value, id: &str, n: &Names, errs: &mut Vec<String>) {
    if v["id"] != id {
        errs.push(format!("id is {}, expected {id}", v["id"]));
    }
    if v["name"].as_str() != id.rsplit('/').next() {
        errs.push(format!("name is {}, expected the last segment of {id}", v["name"]));
    }
    if let Some(seg) = v["properties"]["jobOutputDirectoryPathSegment"].as_str() {
        let prefix = format!("{SUB}/{}/workspaces/{}/experiments/{}/jobs/{}/", n.rg, n.ws, n.exp, n.job);
        let uuid_ok = seg.strip_prefix(&prefix).is_some_and(|u| uuid::Uuid::parse_str(u).is_ok());
        if !uuid_ok {
            errs.push(format!("jobOutputDirectoryPathSegment is {seg}, expected {prefix}<uuid>"));
        }
    }
}

fn envelope_code(r: &Reply) -> Option<&str> {
    let e = &r.body["error"];
    let msg_ok = e["message"].as_str().is_some_and(|m| !m.is_empty());
    e["code"].as_str().filter(|c| !c.is_empty() && msg_ok)
}

fn expect(r: &Reply, status: u16, code: Option<&str>, what: &str) -> Result<(), String> {
    let got = envelope_code(r);
    if r.status != status || (code.is_some() && got != code) {
        return Err(format!("{what}: expected {status} {code:?}, got {} {}", r.status, r.text));
    }
    Ok(())
}

async fn finish(c: &Client, r: &Reply, what: &str) -> Result<(), String> {
    let op = r.headers.get("azure-asyncoperation").and_then(|h| h.to_str().ok());
    let op = op.ok_or_else(|| format!("{what}: 202 without Azure-AsyncOperation"))?;
    let done = c.wait_operation(op).await;
    if done["status"] != "Succeeded" {
        return Err(format!("{what}: the operation ended {done}"));
    }
    Ok(())
}

/// Creates the file servers (and their workspaces) a cluster body mounts: a cluster may only
/// mount file servers that exist.
async fn mounted_file_servers(
    c: &Client,
    all: &BTreeMap<String, Example>,
    body: &Value,
    rg: &str,
) -> Result<(), String> {
    let refs = body.pointer("/properties/nodeSetup/mountVolumes/fileServers").and_then(Value::as_array);
    for id in refs.into_iter().flatten().filter_map(|f| f["fileServer"]["id"].as_str()) {
        let ws = id.rsplitn(3, '/').nth(2).ok_or_else(|| format!("file server id {id}"))?;
        let r = c.put(&format!("{ws}?{BAI}"), &json!({"location": "eastus"})).await;
        if r.status != 200 {
            return Err(format!("workspace of {id}: {} {}", r.status, r.text));
        }
        let r = c.put(&format!("{id}?{BAI}"), &fix_request(&all["PutFileServer"].params["parameters"], rg)).await;
        match r.status {
            202 => finish(c, &r, &format!("creating {id}")).await?,
            409 => {}
            _ => return Err(format!("creating {id}: {} {}", r.status, r.text)),
        }
    }
    Ok(())
}

/// Creates the parents (and, for lists, the listed item) an example needs.
async fn setup(
    c: &Client,
    all: &BTreeMap<String, Example>,
    ex: &Example,
    n: &Names,
    needs: &[Need],
) -> Result<(), String> {
    let rg_path = format!("/subscriptions/{SUB}/resourceGroups/{}?api-version=2021-04-01", n.rg);
    let r = c.put(&rg_path, &json!({"location": "eastus"})).await;
    if r.status != 201 && r.status != 200 {
        return Err(format!("resource group: {} {}", r.status, r.text));
    }
    let req = |name: &str| fix_request(&all[name].params["parameters"], &n.rg);
    // Get/List examples show the resource they read: create it as shown; otherwise use the
    // matching Put example's request.
    let shown = ex.body().map(|b| b.get("value").and_then(|v| v.get(0)).unwrap_or(b));
    let shown_kind = shown.and_then(|s| s["type"].as_str()).and_then(fixed_type).unwrap_or_default();
    let reads = ex.name.starts_with("Get") || ex.name.starts_with("List");
    let ws = format!("workspaces/{}", n.ws);
    let cluster_path = format!("{}?{BAI}", Server::bai(&n.rg, &format!("{ws}/clusters/{}", n.cluster)));
    for need in needs {
        let (path, body, lro) = match need {
            Need::Ws => (format!("{}?{BAI}", Server::bai(&n.rg, &ws)), req("PutWorkspace"), false),
            Need::Exp => {
                let path = format!("{}?{BAI}", Server::bai(&n.rg, &format!("{ws}/experiments/{}", n.exp)));
                (path, req("PutExperiment"), false)
            }
            Need::Cluster => {
                let body = match shown {
                    Some(s) if reads && shown_kind.ends_with("/clusters") => writable(s, &n.rg),
                    _ => req("PutCluster"),
                };
                mounted_file_servers(c, all, &body, &n.rg).await?;
                (cluster_path.clone(), body, true)
            }
            Need::FileServer => {
                let body = match shown {
                    Some(s) if reads && shown_kind.ends_with("/fileservers") => writable(s, &n.rg),
                    _ => req("PutFileServer"),
                };
                (format!("{}?{BAI}", Server::bai(&n.rg, &format!("{ws}/fileServers/{}", n.fs))), body, true)
            }
            Need::Job => {
                let mut body = match shown {
                    Some(s) if reads && shown_kind.ends_with("/jobs") => writable(s, &n.rg),
                    _ => req("PutJob"),
                };
                body["properties"]["cluster"]["id"] = cluster_path.split('?').next().unwrap_or_default().into();
                let job = format!("{ws}/experiments/{}/jobs/{}", n.exp, n.job);
                (format!("{}?{BAI}", Server::bai(&n.rg, &job)), body, true)
            }
        };
        let r = c.put(&path, &body).await;
        let what = format!("creating {path}");
        match (r.status, lro) {
            (202, true) => finish(c, &r, &what).await?,
            (200, false) => {}
            _ => return Err(format!("{what}: {} {}", r.status, r.text)),
        }
    }
    Ok(())
}

async fn run(c: &Client, all: &BTreeMap<String, Example>, ex: &Example) -> Result<(), String> {
    let name = ex.name.as_str();
    let first_item = ex.body().and_then(|b| b["value"][0]["name"].as_str());
    let listed = |what: &str| if name.starts_with("List") && name.contains(what) { first_item } else { None };
    let n = Names {
        rg: format!("golden-{name}"),
        ws: listed("Workspace").or(ex.param("workspaceName")).unwrap_or("demo_workspace").to_owned(),
        exp: ex.param("experimentName").or(listed("Experiment")).unwrap_or("demo_experiment").to_owned(),
        cluster: ex.param("clusterName").or(listed("Cluster")).unwrap_or("demo_cluster").to_owned(),
        job: ex.param("jobName").or(listed("Job")).unwrap_or("demo_job").to_owned(),
        fs: ex.param("fileServerName").or(listed("FileServer")).unwrap_or("demo_nfs").to_owned(),
    };
    let (path, needs) = plan(ex, &n);
    setup(c, all, ex, &n, needs).await?;
    let method = method_of(name);
    let body = ex.params.get("parameters").map(|b| fix_request(b, &n.rg));
    if let Some(b) = body.as_ref().filter(|_| name == "PutCluster") {
        mounted_file_servers(c, all, b, &n.rg).await?;
    }
    let r = c.send(method.clone(), &path, body.as_ref()).await;
    // Ids spell the file server segment `fileservers` (§2), the path `fileServers` (§1).
    let id = path.split('?').next().unwrap_or_default().replace("/fileServers", "/fileservers");
    let mut errs = Vec::new();
    check_body(&r.body, "", &mut errs);
    let first_text = r.text.clone();
    match name {
        // Older-API paths (§10): not served under 2018-05-01, so ARM's 404 envelope.
        "ListCluster" | "ListFileServer" | "ListClusterByResourceGroup" | "ListFileServerByResourceGroup" => {
            return expect(&r, 404, Some("ResourceNotFound"), "an older-API path");
        }
        // No node agents yet: no output files and no nodes to log in to, so the lists are empty
        // (200 with an empty `value`) until they exist.
        "ListOutputFiles" | "JobListRemoteLoginInfo" | "ClusterListRemoteLoginInfo" => {
            let empty = r.body["value"].as_array().is_some_and(Vec::is_empty);
            return (r.status == 200 && empty && errs.is_empty())
                .then_some(())
                .ok_or_else(|| format!("expected 200 with an empty value, got {} {} {errs:?}", r.status, r.text));
        }
        _ => {}
    }
    if !ex.statuses().contains(&r.status) {
        return Err(format!("status {} is not one of {:?}: {}", r.status, ex.statuses(), r.text));
    }
    // Within what the example allows, the status the real service sent (§1.2 [REC]): 202 for
    // cluster/job PUT, every DELETE and terminate; 200 with the body for workspace/experiment PUT.
    let lro = name.starts_with("Delete")
        || name.starts_with("Terminate")
        || name == "PutCluster"
        || name == "PutJob"
        || name == "PutFileServer";
    let sync = name == "PutWorkspace" || name == "PutExperiment";
    if (lro && r.status != 202) || (sync && r.status != 200) {
        errs.push(format!("status {}, where the real service answered {}", r.status, if lro { 202 } else { 200 }));
    }
    for h in ex.headers(r.status) {
        if !r.headers.contains_key(h.to_ascii_lowercase().as_str()) {
            errs.push(format!("header {h} is missing"));
        }
    }
    let ours = match (method, r.status) {
        (Method::PUT, 202) => {
            finish(c, &r, name).await?;
            c.get(&path).await
        }
        (Method::DELETE, s) => {
            if s == 202 {
                finish(c, &r, name).await?;
            }
            let gone = c.get(&path).await;
            let kind = id.rsplit('/').nth(1).unwrap_or_default();
            let code = match kind {
                "workspaces" => "WorkspaceNotFound",
                "experiments" => "ExperimentNotFound",
                "clusters" => "ClusterNotFound",
                "fileservers" => "FileServerNotFound",
                _ => "JobNotFound",
            };
            expect(&gone, 404, Some(code), "GET after DELETE")?;
            return errs.is_empty().then_some(()).ok_or_else(|| errs.join("; "));
        }
        (Method::POST, s) => {
            // Terminate (the only LRO POST): a queued job ends `failed` with JobTerminated (§7.2).
            if s == 202 {
                finish(c, &r, name).await?;
            }
            let j = c.get(&format!("{}?{BAI}", id.trim_end_matches("/terminate"))).await;
            let state = &j.body["properties"]["executionState"];
            let err = &j.body["properties"]["executionInfo"]["errors"][0]["code"];
            if state != "failed" || err != "JobTerminated" {
                errs.push(format!("after terminate: executionState {state}, error {err}: {}", j.text));
            }
            return errs.is_empty().then_some(()).ok_or_else(|| errs.join("; "));
        }
        _ => r,
    };
    if ours.status != 200 {
        return Err(format!("expected 200, got {} {}", ours.status, ours.text));
    }
    check_body(&ours.body, "", &mut errs);
    for secret in ["golden-P4SSWORD", "golden-ACCOUNTKEY", "admin_user_password"] {
        if first_text.contains(secret) || ours.text.contains(secret) {
            errs.push(format!("the write-only value {secret} is echoed"));
        }
    }
    // PutFileServer's 200 response is spelled `parameters` instead of `body`.
    let put_fs = (name == "PutFileServer").then(|| ex.responses["200"]["parameters"].clone());
    let mut expected = ex.body().cloned().or(put_fs).ok_or("the example has no 200 body")?;
    fix_expected(&mut expected);
    if name == "PutCluster" {
        // The example's `subnet` is the one of the file server it mounts (§3.1: "if a FileServer
        // is mounted the file server's subnet is used automatically"); on-prem file servers have
        // no subnet.
        expected["properties"].as_object_mut().map(|p| p.remove("subnet"));
    }
    if name == "PutFileServer" {
        // The file server's `subnet` is the vnet the service made for its VM (§3.1); on-prem
        // there is none, and the request gives none.
        expected["properties"].as_object_mut().map(|p| p.remove("subnet"));
    }
    let item_id = match needs.last() {
        _ if !name.starts_with("List") => None,
        Some(Need::Ws) => Some(Server::bai(&n.rg, &format!("workspaces/{}", n.ws))),
        Some(Need::Exp) => Some(format!("{id}/{}", n.exp)),
        Some(Need::Cluster) => Some(format!("{id}/{}", n.cluster)),
        Some(Need::Job) => Some(format!("{id}/{}", n.job)),
        Some(Need::FileServer) => Some(format!("{id}/{}", n.fs)),
        None => None,
    };
    let view = match &item_id {
        // In a list, compare the item this example created (others may be there too).
        Some(item) => {
            let all_items = ours.body["value"].as_array().cloned().unwrap_or_default();
            let found = all_items.into_iter().find(|v| v["id"] == item.as_str());
            let found = found.ok_or_else(|| format!("{item} is not in the list: {}", ours.text))?;
            check_resource(&found, item, &n, &mut errs);
            json!({"value": [found]})
        }
        None if name.starts_with("List") => ours.body.clone(),
        None => {
            check_resource(&ours.body, &id, &n, &mut errs);
            ours.body.clone()
        }
    };
    compare(&expected, Some(&view), "", &mut errs);
    if name == "ListOperation" {
        let names = |v: &Value| -> Vec<String> {
            v["value"].as_array().into_iter().flatten().filter_map(|o| o["name"].as_str().map(str::to_owned)).collect()
        };
        let ours_names = names(&ours.body);
        for missing in names(&expected).iter().filter(|x| !ours_names.contains(x)) {
            errs.push(format!("operation {missing} is not listed"));
        }
    }
    errs.sort();
    errs.dedup();
    errs.is_empty().then_some(()).ok_or_else(|| errs.join("; "))
}

#[tokio::test]
async fn spec_examples_on_every_backend() {
    let all = load_examples();
    let mut failures = Vec::new();
    let mut runs = 0;
    for backend in backends() {
        let server = Server::start(backend);
        // The file servers the examples create and list, declared as an operator would.
        for name in ["demo_nfs", "fileservercedd134b"] {
            server.admin_json(&["file-server", "declare", name, "--export", "10.0.0.4:/mnt/data"]);
        }
        let c = server.client();
        for ex in all.values() {
            runs += 1;
            if let Err(e) = run(&c, &all, ex).await {
                failures.push(format!("{backend:?} {}: {e}", ex.name));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {runs} example runs failed:\n{}", failures.len(), failures.join("\n"));
}
