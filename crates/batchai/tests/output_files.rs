//! listOutputFiles and its download links against a real server process, on SQLite and
//! Postgres: files written straight into the storage root (as a node would on the share) are
//! listed, and their links download them without credentials, with ranges, until tampered with.

mod common;

use std::path::{Path, PathBuf};

use common::{BAI, Backend, Client, SUB, Server, backends};
use serde_json::{Value, json};

#[tokio::test]
async fn output_files_on_every_backend() {
    for backend in backends() {
        output_files(backend).await;
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

/// RG, workspace, experiment and a cluster mounting `https://acct.file.core.windows.net/share`
/// at `afs`; returns the cluster id.
async fn setup(c: &Client) -> String {
    let r = c
        .put(&format!("/subscriptions/{SUB}/resourcegroups/rg?api-version=2021-04-01"), &json!({"location": "eastus"}))
        .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    let r = c.put(&format!("{}?{BAI}", Server::bai("rg", "workspaces/ws")), &json!({"location": "eastus"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.put(&format!("{}?{BAI}", Server::bai("rg", "workspaces/ws/experiments/exp")), &Value::Null).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut cluster = common::cluster_body();
    cluster["properties"]["nodeSetup"]["mountVolumes"]["azureFileShares"][0]["relativeMountPath"] = json!("afs");
    let r = c.put_and_wait(&format!("{}?{BAI}", Server::bai("rg", "workspaces/ws/clusters/c")), &cluster).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["id"].as_str().expect("cluster id").to_owned()
}

/// Creates job `name` with `stdOutErrPathPrefix` = `prefix`; returns its job path and its
/// output directory under the share.
async fn job(server: &Server, c: &Client, cluster_id: &str, name: &str, prefix: &str) -> (String, PathBuf) {
    let path = Server::bai("rg", &format!("workspaces/ws/experiments/exp/jobs/{name}"));
    let body = json!({"properties": {
        "cluster": {"id": cluster_id}, "nodeCount": 1, "stdOutErrPathPrefix": prefix,
        "outputDirectories": [{"id": "MODEL", "pathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/afs/", "pathSuffix": "Models"}],
        "customToolkitSettings": {"commandLine": "echo hi"}}});
    let r = c.put_and_wait(&format!("{path}?{BAI}"), &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let segment = r.body["properties"]["jobOutputDirectoryPathSegment"].as_str().expect("segment");
    (path, server.data_dir.join("storage/acct/share").join(segment))
}

/// POST listOutputFiles with the query the SDK sends plus `extra`.
async fn list(c: &Client, job: &str, dir_id: &str, extra: &str) -> common::Reply {
    c.post(&format!("{job}/listOutputFiles?{BAI}&outputdirectoryid={dir_id}&linkexpiryinminutes=60{extra}")).await
}

fn names(r: &common::Reply) -> Vec<(String, String, Option<u64>)> {
    r.body["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|f| {
            let name = f["name"].as_str().expect("name").to_owned();
            (name, f["fileType"].as_str().expect("fileType").to_owned(), f["properties"]["contentLength"].as_u64())
        })
        .collect()
}

fn url_of(r: &common::Reply, name: &str) -> String {
    let f = r.body["value"].as_array().expect("value").iter().find(|f| f["name"] == name).expect("listed");
    f["downloadUrl"].as_str().expect("downloadUrl").to_owned()
}

async fn output_files(backend: Backend) {
    let server = Server::start(backend);
    let c = server.client();
    let cluster_id = setup(&c).await;
    let (job_path, out) = job(&server, &c, &cluster_id, "j1", "$AZ_BATCHAI_MOUNT_ROOT/afs").await;

    // Nothing written yet: an empty list, not an error.
    let r = list(&c, &job_path, "stdouterr", "&directory=.&maxresults=1000").await;
    assert_eq!((r.status, r.body.clone()), (200, json!({"value": []})), "{backend:?}");

    let big: Vec<u8> = (0..(1024 * 1024 + 12_345)).map(|i: u32| (i % 251) as u8).collect();
    let std = out.join("stdouterr");
    write(&std.join("stdout.txt"), b"hi\n");
    write(&std.join("stderr.txt"), b"");
    write(&std.join("big.bin"), &big);
    write(&std.join("sub/inner.txt"), b"inner");
    write(&out.join("outputs/Models/model.bin"), b"weights");
    std::os::unix::fs::symlink(server.data_dir.join("bootstrap.env"), std.join("leak.env")).expect("symlink");

    let r = list(&c, &job_path, "stdouterr", "&directory=.&maxresults=1000").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let expected = [
        ("big.bin", "file", Some(big.len() as u64)),
        ("stderr.txt", "file", Some(0)),
        ("stdout.txt", "file", Some(3)),
        ("sub", "directory", None),
    ]
    .map(|(n, t, l)| (n.to_owned(), t.to_owned(), l));
    assert_eq!(names(&r), expected, "sorted; the symlink out of the storage root is not listed");
    assert!(r.body.get("nextLink").is_none(), "{}", r.text);
    let stdout = r.body["value"][2].clone();
    let modified = stdout["properties"]["lastModified"].as_str().expect("lastModified");
    assert!(modified.ends_with('Z') && modified.len() == 20, "{modified}");
    assert_eq!(r.body["value"][3], json!({"name": "sub", "fileType": "directory"}));

    // Paging: nextLink is POSTed verbatim.
    let first = list(&c, &job_path, "stdouterr", "&directory=.&maxresults=3").await;
    assert_eq!(names(&first).len(), 3);
    let next = first.body["nextLink"].as_str().expect("nextLink").to_owned();
    let second = c.post(&next).await;
    assert_eq!(names(&second), expected[3..]);
    assert!(second.body.get("nextLink").is_none());

    let r = list(&c, &job_path, "stdouterr", "&directory=sub").await;
    assert_eq!(names(&r), [("inner.txt".to_owned(), "file".to_owned(), Some(5))]);
    let r = list(&c, &job_path, "stdouterr", "&directory=../x").await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (400, json!("InvalidParameter")), "{}", r.text);
    assert_eq!(r.body["error"]["target"], "directory");
    let r = list(&c, &job_path, "MODEL", "").await;
    assert_eq!(names(&r), [("model.bin".to_owned(), "file".to_owned(), Some(7))]);

    // Downloads need no credentials: the signature is the authorization.
    let r = list(&c, &job_path, "stdouterr", "").await;
    let url = url_of(&r, "big.bin");
    assert!(url.starts_with(&format!("{}/files/", server.http)), "{url}");
    let plain = reqwest::Client::new();
    let res = plain.get(&url).send().await.expect("download");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
    assert_eq!(res.headers()["accept-ranges"], "bytes");
    assert_eq!(res.headers()["content-length"], big.len().to_string().as_str());
    assert!(res.headers().contains_key("last-modified"));
    assert!(res.bytes().await.expect("body") == big, "exact bytes");

    let res = plain.get(&url).header("Range", "bytes=10-19").send().await.expect("range");
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()["content-range"], format!("bytes 10-19/{}", big.len()).as_str());
    assert_eq!(res.bytes().await.expect("body").as_ref(), &big[10..20]);

    // `az batchai job file stream` polls from the end and needs a non-2xx when nothing is new.
    let res = plain.get(&url).header("Range", format!("bytes={}-", big.len())).send().await.expect("range");
    assert_eq!(res.status(), 416);
    assert_eq!(res.headers()["content-range"], format!("bytes */{}", big.len()).as_str());

    let res = plain.head(&url).send().await.expect("head");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-length"], big.len().to_string().as_str());

    let res = plain.get(url_of(&r, "stdout.txt")).send().await.expect("download");
    assert_eq!(res.bytes().await.expect("body").as_ref(), b"hi\n");

    let (head, sig) = url.rsplit_once("&sig=").expect("sig");
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    for bad in [
        format!("{head}&sig={flipped}{}", &sig[1..]),
        url.replace("big.bin", "stdout.txt"),
        url.replace("se=", "se=9"),
        head.to_owned(),
    ] {
        let r = Client::reply(plain.get(&bad).send().await.expect("tampered")).await;
        assert_eq!((r.status, r.body["error"]["code"].clone()), (403, json!("AuthenticationFailed")), "{bad}");
    }

    // A file removed after listing: 404 with the envelope.
    std::fs::remove_file(std.join("stdout.txt")).expect("rm");
    let r = Client::reply(
        plain.get(url_of(&list(&c, &job_path, "stdouterr", "").await, "stderr.txt")).send().await.expect("get"),
    )
    .await;
    assert_eq!(r.status, 200, "an empty file downloads");
    let gone = url_of(&first, "stdout.txt");
    let r = Client::reply(plain.get(&gone).send().await.expect("get")).await;
    assert_eq!((r.status, r.body["error"]["code"].clone()), (404, json!("ResourceNotFound")), "{}", r.text);

    // A prefix that is not on a mounted share lists nothing (Azure listed only mounted shares).
    let (local_job, _) = job(&server, &c, &cluster_id, "j2", "/tmp/logs").await;
    let r = list(&c, &local_job, "stdouterr", "").await;
    assert_eq!((r.status, r.body.clone()), (200, json!({"value": []})), "{}", r.text);
}
