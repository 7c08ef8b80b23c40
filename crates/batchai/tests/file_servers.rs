//! File servers (`FileServers_*`) on a real server process, on SQLite and Postgres: a create by a
//! declared name succeeds with the declared export as `mountSettings`, an undeclared one fails
//! its operation (also when the server restarts before it ends), and clusters and jobs may only
//! mount file servers that were created.

mod common;

use common::{BAI, Backend, Client, Server, ServerOptions, backends, scaffold};
use serde_json::{Value, json};

fn fs_path(rg: &str, name: &str) -> String {
    format!("{}?{BAI}", Server::bai(rg, &format!("workspaces/ws/fileServers/{name}")))
}

fn fs_id(rg: &str, name: &str) -> String {
    Server::bai(rg, &format!("workspaces/ws/fileservers/{name}"))
}

fn fs_body() -> Value {
    json!({"properties": {
        "vmSize": "STANDARD_D2_V2",
        "sshConfiguration": {"userAccountSettings": {"adminUserName": "admin", "adminUserPassword": "FSP4SSWORD",
            "adminUserSshPublicKey": "ssh-rsa AAAA test"}},
        "dataDisks": {"diskSizeInGB": 10, "diskCount": 2, "storageAccountType": "Standard_LRS"}}})
}

/// The path and query of an absolute URL (operation URLs name the server that made them).
fn local(url: &str) -> String {
    url.splitn(4, '/').nth(3).map(|rest| format!("/{rest}")).expect("absolute URL")
}

/// PUTs a file server; returns the final operation body.
async fn create(c: &Client, rg: &str, name: &str) -> Value {
    let r = c.put(&fs_path(rg, name), &fs_body()).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let op = r.headers["azure-asyncoperation"].to_str().expect("ascii").to_owned();
    assert!(op.starts_with("http") && op.contains("/operationresults/"), "{op}");
    assert!(r.headers["location"].to_str().expect("ascii").contains("/operationstatuses/"));
    assert_eq!(r.headers["retry-after"], "1");
    c.wait_operation(&op).await
}

fn declare(server: &Server, name: &str, export: &str, options: Option<&str>) -> Value {
    let mut args = vec!["file-server", "declare", name, "--export", export];
    if let Some(o) = options {
        args.extend(["--mount-options", o]);
    }
    server.admin_json(&args)
}

#[tokio::test]
async fn file_servers_on_every_backend() {
    for backend in backends() {
        lifecycle(backend).await;
    }
}

async fn lifecycle(backend: Backend) {
    let server = Server::start(backend);
    let declared = declare(&server, "NFS1", "nfs-host:/export/data", Some("vers=4.1,hard"));
    assert_eq!(declared["name"], "nfs1", "{declared}");
    assert_eq!(declared["mount_options"], "vers=4.1,hard");
    declare(&server, "local", "/srv/shared", None);
    let c = server.client();
    let cluster_id = scaffold(&c, "rg").await;

    // Declared (the name ignoring case): succeeded, with the export as mountSettings.
    assert_eq!(create(&c, "rg", "Nfs1").await["status"], "Succeeded");
    let got = c.get(&fs_path("rg", "Nfs1")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let b = &got.body;
    assert_eq!(b["id"], fs_id("rg", "Nfs1"));
    assert_eq!(b["name"], "Nfs1");
    assert_eq!(b["type"], "Microsoft.BatchAI/workspaces/fileservers");
    assert!(b.get("location").is_none(), "{b}");
    let p = &b["properties"];
    assert_eq!(p["provisioningState"], "succeeded");
    assert_eq!(
        p["mountSettings"],
        json!({"mountPoint": "/export/data", "fileServerPublicIP": "nfs-host", "fileServerInternalIP": "nfs-host"})
    );
    assert_eq!(p["dataDisks"]["cachingType"], "none");
    assert_eq!(
        p["sshConfiguration"]["userAccountSettings"],
        json!({"adminUserName": "admin", "adminUserSshPublicKey": "ssh-rsa AAAA test"})
    );
    for hidden in ["FSP4SSWORD", "x-batchai-declared", "vers=4.1"] {
        assert!(!got.text.contains(hidden), "{hidden} in {}", got.text);
    }
    assert!(p["creationTime"].is_string() && p["provisioningStateTransitionTime"].is_string(), "{p}");
    let again = c.put(&fs_path("rg", "nfs1"), &fs_body()).await;
    assert_eq!((again.status, again.body["error"]["code"].clone()), (409, json!("Conflict")), "{}", again.text);

    // A local-path export shows the node's own address.
    assert_eq!(create(&c, "rg", "local").await["status"], "Succeeded");
    let local_fs = c.get(&fs_path("rg", "local")).await;
    assert_eq!(local_fs.body["properties"]["mountSettings"]["mountPoint"], "/srv/shared");
    assert_eq!(local_fs.body["properties"]["mountSettings"]["fileServerInternalIP"], "127.0.0.1");

    // Undeclared: the operation fails with a readable error, the resource stays failed.
    let done = create(&c, "rg", "ghost").await;
    assert_eq!(done["status"], "Failed", "{done}");
    assert_eq!(done["error"]["code"], "FileServerNotDeclared");
    let message = done["error"]["message"].as_str().expect("message");
    assert!(message.contains("batchai admin file-server declare ghost --export"), "{message}");
    let ghost = c.get(&fs_path("rg", "ghost")).await;
    assert_eq!(ghost.body["properties"]["provisioningState"], "failed", "{}", ghost.text);
    assert!(ghost.body["properties"].get("mountSettings").is_none(), "{}", ghost.text);

    // Validation names the field.
    let mut bad = fs_body();
    bad["properties"]["dataDisks"]["storageAccountType"] = json!("Ultra_LRS");
    let r = c.put(&fs_path("rg", "bad"), &bad).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["error"]["target"], "properties.dataDisks.storageAccountType");
    let mut bad = fs_body();
    bad["properties"]["sshConfiguration"]["userAccountSettings"] = json!({"adminUserName": "admin"});
    let r = c.put(&fs_path("rg", "bad"), &bad).await;
    assert_eq!(r.body["error"]["target"], "properties.sshConfiguration.userAccountSettings", "{}", r.text);
    assert_eq!(c.get(&fs_path("rg", "bad")).await.status, 404);

    // Listing pages with absolute next links.
    let list = format!("{}?{BAI}&maxresults=2", Server::bai("rg", "workspaces/ws/fileServers"));
    let first = c.get(&list).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["value"].as_array().map(Vec::len), Some(2));
    let next = first.body["nextLink"].as_str().expect("a next link").to_owned();
    assert!(next.starts_with("http") && next.contains("api-version=2018-05-01"), "{next}");
    let second = c.get(&next).await;
    let mut names: Vec<String> = [&first.body, &second.body]
        .iter()
        .flat_map(|b| b["value"].as_array().cloned().unwrap_or_default())
        .map(|v| v["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["Nfs1", "ghost", "local"]);
    assert!(second.body.get("nextLink").is_none_or(Value::is_null), "{}", second.text);

    // Clusters and jobs may mount created file servers only; the error names the field.
    let cluster_with = |id: &str| {
        let mut body = common::cluster_body();
        body["properties"]["nodeSetup"]["mountVolumes"]["fileServers"] =
            json!([{"fileServer": {"id": id}, "relativeMountPath": "nfs", "mountOptions": "ro"}]);
        body
    };
    let cluster_path = |name: &str| format!("{}?{BAI}", Server::bai("rg", &format!("workspaces/ws/clusters/{name}")));
    for refused in [fs_id("rg", "ghost"), fs_id("rg", "nope"), fs_id("other-rg", "Nfs1")] {
        let r = c.put(&cluster_path("c2"), &cluster_with(&refused)).await;
        assert_eq!(r.status, 400, "{refused}: {}", r.text);
        assert_eq!(r.body["error"]["target"], "properties.nodeSetup.mountVolumes.fileServers[0].fileServer.id");
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains(&refused)), "{}", r.text);
    }
    let ok = c.put_and_wait(&cluster_path("c2"), &cluster_with(&fs_id("RG", "NFS1"))).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["properties"]["nodeSetup"]["mountVolumes"]["fileServers"][0]["mountOptions"], "ro");
    let job_path = format!("{}?{BAI}", Server::bai("rg", "workspaces/ws/experiments/exp/jobs/j1"));
    let mut job = common::job_body(&cluster_id);
    job["properties"]["mountVolumes"] =
        json!({"fileServers": [{"fileServer": {"id": fs_id("rg", "ghost")}, "relativeMountPath": "nfs"}]});
    let r = c.put(&job_path, &job).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["error"]["target"], "properties.mountVolumes.fileServers[0].fileServer.id");
    job["properties"]["mountVolumes"]["fileServers"][0]["fileServer"]["id"] = json!(fs_id("rg", "local"));
    assert_eq!(c.put_and_wait(&job_path, &job).await.status, 200);

    // Delete, then 404.
    let del = c.delete(&fs_path("rg", "ghost")).await;
    assert_eq!(del.status, 202, "{}", del.text);
    let op = del.headers["azure-asyncoperation"].to_str().expect("ascii").to_owned();
    assert_eq!(c.wait_operation(&op).await["status"], "Succeeded");
    let gone = c.get(&fs_path("rg", "ghost")).await;
    assert_eq!((gone.status, gone.body["error"]["code"].clone()), (404, json!("FileServerNotFound")));
    assert_eq!(c.delete(&fs_path("rg", "ghost")).await.status, 204);

    // Deleting the workspace deletes its file servers.
    let ws = format!("{}?{BAI}", Server::bai("rg", "workspaces/ws"));
    let del = c.delete(&ws).await;
    let op = del.headers["azure-asyncoperation"].to_str().expect("ascii").to_owned();
    assert_eq!(c.wait_operation(&op).await["status"], "Succeeded");
    assert_eq!(c.put(&ws, &json!({"location": "eastus"})).await.status, 200);
    let empty = c.get(&format!("{}?{BAI}", Server::bai("rg", "workspaces/ws/fileServers"))).await;
    assert_eq!(empty.body["value"], json!([]), "{}", empty.text);
    assert_eq!(c.get(&fs_path("rg", "Nfs1")).await.status, 404);

    // Declarations are the operator's: listed (a JSON line each, by name) and deleted through admin.
    assert_eq!(server.admin_json(&["file-server", "delete", "local"])["deleted"], "local");
    assert_eq!(server.admin_json(&["file-server", "list"])["name"], "nfs1");
    assert_eq!(server.admin_json(&["file-server", "delete", "NFS1"])["deleted"], "nfs1");
}

/// Operations that had not ended when the server was killed end after it restarts: a declared
/// file server succeeds, an undeclared one fails.
#[tokio::test]
async fn file_server_operations_end_after_a_restart() {
    for backend in backends() {
        let env = vec![("BATCHAI_LRO_DELAY_MS".to_owned(), "1500".to_owned())];
        let mut server = Server::start_with(ServerOptions { backend, env: env.clone() });
        declare(&server, "nfs", "nfs-host:/export", None);
        let c = server.client();
        let rg_path = format!("/subscriptions/{}/resourcegroups/rg?api-version=2021-04-01", common::SUB);
        assert!(c.put(&rg_path, &json!({"location": "eastus"})).await.status < 300);
        let ws = format!("{}?{BAI}", Server::bai("rg", "workspaces/ws"));
        assert_eq!(c.put(&ws, &json!({"location": "eastus"})).await.status, 200);
        let mut ops = Vec::new();
        for name in ["nfs", "ghost"] {
            let r = c.put(&fs_path("rg", name), &fs_body()).await;
            assert_eq!(r.status, 202, "{}", r.text);
            ops.push(local(r.headers["azure-asyncoperation"].to_str().expect("ascii")));
            let creating = c.get(&fs_path("rg", name)).await;
            assert_eq!(creating.body["properties"]["provisioningState"], "creating", "{}", creating.text);
        }
        let (data_dir, db) = (server.data_dir.clone(), server.database_url.clone());
        server.kill();
        let restarted = Server::spawn(&data_dir, db, &env);
        let c = restarted.client();
        assert_eq!(c.wait_operation(&ops[0]).await["status"], "Succeeded");
        assert_eq!(c.wait_operation(&ops[1]).await["status"], "Failed");
        let nfs = c.get(&fs_path("rg", "nfs")).await;
        assert_eq!(nfs.body["properties"]["provisioningState"], "succeeded", "{}", nfs.text);
        assert_eq!(nfs.body["properties"]["mountSettings"]["mountPoint"], "/export");
        assert_eq!(c.get(&fs_path("rg", "ghost")).await.body["properties"]["provisioningState"], "failed");
        drop(server);
    }
}

#[test]
fn admin_refuses_bad_declarations() {
    let server = Server::start(Backend::Sqlite);
    for args in [
        ["nfs", "--export", "no-path-here"],
        ["nfs", "--export", "host:relative"],
        ["bad.name", "--export", "host:/e"],
        ["nfs", "--export", "/a/../b"],
    ] {
        let mut cmd = std::process::Command::new(common::binary());
        cmd.args(["admin", "--data-dir"]).arg(&server.data_dir).args(["file-server", "declare"]).args(args);
        let out = cmd.env("RUST_LOG", "warn").output().expect("admin runs");
        assert!(!out.status.success(), "{args:?} was accepted");
    }
    let mut cmd = std::process::Command::new(common::binary());
    cmd.args(["admin", "--data-dir"]).arg(&server.data_dir).args(["file-server", "delete", "never"]);
    assert!(!cmd.output().expect("admin runs").status.success(), "deleting an undeclared name fails");
    declare(&server, "nfs", "h:/e", Some("ro"));
    let out = server.admin_json(&["file-server", "list"]);
    assert_eq!(out, json!({"name": "nfs", "export": "h:/e", "mount_options": "ro", "created_at": out["created_at"]}));
}
