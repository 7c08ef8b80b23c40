//! Bounded hostile-input run against a live server on every backend.
//!
//! A seeded generator (`BATCHAI_FUZZ_SEED`, `BATCHAI_FUZZ_CASES` override the defaults) sends raw
//! HTTP/1.1 requests over TCP, so paths, headers and bodies reach the server byte for byte:
//! random methods and paths from ARM's segment vocabulary plus garbage, bad or missing
//! api-versions, malformed and oversized bodies, valid cluster/job bodies with one field broken,
//! wrong content types and bad credentials. Every reply must be below 500, and every 4xx with a
//! body must be an ARM error envelope (token-service paths answer in OAuth's shape instead).
//!
//! "Nothing written by rejected requests": every request that could write (PUT, PATCH, POST,
//! DELETE) carries a defect the contract requires rejecting — a broken body, name, api-version,
//! credential, content type, query or method (for bodies: the spec's types, required fields, enums
//! and ranges, plus the rules of batchai-core's `validate`) — and is asserted to get a 4xx. Only
//! reads (GET, HEAD) may succeed. The writes aim at a pre-created resource group (`keep` with
//! ws/exp/c/j) and at new names beside it, so a write that slipped through would show: a snapshot
//! of the subscription's groups and workspaces, the provider state and every list and resource
//! under `keep`, taken before the run, must be identical after it. This keeps the assertion
//! honest without fencing the writes off into a namespace the snapshot does not look at.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{BAI, Client, SUB, Server, backends, cluster_body, job_body, scaffold};
use serde_json::{Value, json};

const DEFAULT_SEED: u64 = 0x2018_0501;
const DEFAULT_CASES: usize = 400;
const MAX_BODY: usize = 4 * 1024 * 1024;

/// splitmix64: a small, seeded, reproducible generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    /// A word of a whitespace-separated table (`∅` is the empty string).
    fn word(&mut self, table: &'static str) -> &'static str {
        let w = *self.pick(&table.split_whitespace().collect::<Vec<_>>());
        if w == "∅" { "" } else { w }
    }
    /// A line of a table of lines.
    fn line(&mut self, table: &'static str) -> &'static str {
        let lines: Vec<_> = table.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        lines[self.below(lines.len())]
    }
}

/// One raw request and the defect planted in it (empty: none, so it may succeed).
struct Req {
    method: String,
    target: String,
    auth: Option<Vec<u8>>,
    content_type: Option<String>,
    body: Vec<u8>,
    chunked: bool,
    defect: String,
}

impl Req {
    /// A well-formed request (valid credentials, JSON content type, no body) with `defect`.
    fn new(method: &str, target: String, ctx: &Ctx, defect: String) -> Self {
        let content_type = Some("application/json".to_owned());
        Self {
            method: method.into(),
            target,
            auth: bearer(ctx),
            content_type,
            body: Vec::new(),
            chunked: false,
            defect,
        }
    }

    fn describe(&self, ctx: &Ctx) -> String {
        let cut = |s: &str, n: usize| s.chars().take(n).collect::<String>();
        let auth = match &self.auth {
            a if *a == bearer(ctx) => Some("<valid token>".to_owned()),
            a => a.as_ref().map(|a| cut(&String::from_utf8_lossy(a).replace(&ctx.token, "<token>"), 40)),
        };
        let (body, len) = (cut(&String::from_utf8_lossy(&self.body), 160), self.body.len());
        let chunked = if self.chunked { ", chunked" } else { "" };
        let (m, t, ct, d) = (&self.method, cut(&self.target, 200), &self.content_type, &self.defect);
        format!("{m} {t} auth={auth:?} ct={ct:?} body[{len}{chunked}]={body:?} defect={d:?}")
    }

    /// Paths the token service owns answer in OAuth's shape, need no credentials and write nothing.
    fn token_service(&self) -> bool {
        let t = self.target.to_ascii_lowercase();
        t.contains("oauth2") || t.contains("well-known")
    }
}

struct Ctx {
    token: String,
    cluster_id: String,
}

const VOCAB: &str = "subscriptions 00000000-0000-0000-0000-000000000000 resourceGroups resourcegroups keep
    fuzz-new providers Microsoft.BatchAI microsoft.batchai Microsoft.Resources workspaces ws ws2 experiments exp
    jobs j clusters c fileServers fileservers nfs locations eastus operationresults operationstatuses usages
    operations listOutputFiles listRemoteLoginInformation terminate register oauth2 token v2.0 .well-known
    openid-configuration adfs";
const GARBAGE: &str = r#"∅ . .. %2E%2E %2e %2F a%2Fb %00 %ZZ % %C3%28 %F0%9F%92%A9 ü 名前 %20 * ~ ' " \ ; {} <script>
    a.b rg. - _ $AZ_BATCHAI_MOUNT_ROOT %252E%252E ..%2F..%2F CON %E2%80%AE"#;
const BAD_VERSIONS: &str = "∅ 2018-03-01 2017-09-01-preview latest 2018-05-01x 2018-5-1 %202018-05-01 2018-05-01%00
    %FF%FE %EF%BC%92018-05-01 2018-05-01;DROP 1";
const BAD_RG_NAMES: &str = "rg. a%2Fb a%20b a*b %00 ~ a%3Fb %2E%2E%2Fkeep";
const BAD_NAMES: &str = "a.b .. %2E%2E a%2Fb a%20b a*b %00 x! c%3Bd %E2%80%AE =x";
const BAD_CONTENT_TYPES: &str = "text/plain\napplication/xml\napplication/x-www-form-urlencoded\n\
    multipart/form-data; boundary=x\n \napplication/jsonx\njson";
/// Not JSON by RFC 8259's grammar, one per line.
const MALFORMED: &str = r#"{
    {"properties":
    {"a":1,}
    {"location":"eastus"}}
    nul
    {"a" 1}
    {"location":'eastus'}
    NaN
    {"a":"\ud800"
    [1,2
    {"location":"eastus"} x"#;
/// Every write the API serves: method, path template, body kind, api-version.
const WRITES: &str = "
    PUT /subscriptions/{sub}/resourceGroups/{rg} group 2021-04-01
    PATCH /subscriptions/{sub}/resourceGroups/{rg} tags 2021-04-01
    DELETE /subscriptions/{sub}/resourceGroups/{rg} - 2021-04-01
    POST /subscriptions/{sub}/providers/Microsoft.BatchAI/register - 2021-04-01
    PUT {bai}/workspaces/{ws} group 2018-05-01
    PATCH {bai}/workspaces/{ws} tags 2018-05-01
    DELETE {bai}/workspaces/{ws} - 2018-05-01
    PUT {bai}/workspaces/{ws}/experiments/{exp} experiment 2018-05-01
    DELETE {bai}/workspaces/{ws}/experiments/{exp} - 2018-05-01
    PUT {bai}/workspaces/{ws}/clusters/{c} cluster 2018-05-01
    PATCH {bai}/workspaces/{ws}/clusters/{c} scale 2018-05-01
    DELETE {bai}/workspaces/{ws}/clusters/{c} - 2018-05-01
    PUT {bai}/workspaces/{ws}/experiments/{exp}/jobs/{j} job 2018-05-01
    DELETE {bai}/workspaces/{ws}/experiments/{exp}/jobs/{j} - 2018-05-01
    POST {bai}/workspaces/{ws}/experiments/{exp}/jobs/{j}/terminate - 2018-05-01";
/// Paths reads are served at.
const READS: &str = "/subscriptions /subscriptions/{sub} /subscriptions/{sub}/resourcegroups
    /subscriptions/{sub}/resourceGroups/{rg} /subscriptions/{sub}/providers/Microsoft.BatchAI
    /subscriptions/{sub}/providers/Microsoft.BatchAI/workspaces /providers/Microsoft.BatchAI/operations
    /subscriptions/{sub}/providers/Microsoft.BatchAI/locations/eastus/usages {bai}/workspaces {bai}/workspaces/{ws}
    {bai}/workspaces/{ws}/experiments {bai}/workspaces/{ws}/experiments/{exp} {bai}/workspaces/{ws}/clusters
    {bai}/workspaces/{ws}/experiments/{exp}/jobs {bai}/workspaces/{ws}/experiments/{exp}/jobs/{j}
    {bai}/workspaces/{ws}/clusters/{c} {bai}/workspaces/{ws}/fileServers";
/// Methods a path does not serve (batchai-api.md §1): must be rejected.
const WRONG_METHODS: &str = "
    POST {bai}/workspaces/{ws}
    PATCH {bai}/workspaces/{ws}/experiments/{exp}
    POST {bai}/workspaces/{ws}/experiments/{exp}
    PATCH {bai}/workspaces/{ws}/experiments/{exp}/jobs/{j}
    PUT {bai}/workspaces/{ws}/experiments/{exp}/jobs/{j}/terminate
    DELETE {bai}/workspaces/{ws}/experiments/{exp}/jobs/{j}/listOutputFiles
    POST {bai}/workspaces/{ws}/clusters/{c}
    PUT {bai}/workspaces/{ws}/clusters
    DELETE {bai}/workspaces/{ws}/experiments
    POST {bai}/workspaces
    PATCH {bai}/workspaces/{ws}/fileServers/nfs
    PUT /providers/Microsoft.BatchAI/operations
    DELETE /subscriptions/{sub}/providers/Microsoft.BatchAI/locations/eastus/usages";

// One broken field per line: a JSON pointer (`.` is the root) and new values to pick from, split by
// ` | ` (`-` removes the field).
const CLUSTER_DEFECTS: &str = r#"
    /properties/vmSize - | "" | 7
    /properties/vmPriority "bogus"
    /properties/userAccountSettings -
    /properties/userAccountSettings/adminUserName ""
    /properties/userAccountSettings/adminUserPassword -
    /properties/scaleSettings {} | {"autoScale":{"minimumNodeCount":3,"maximumNodeCount":1}}
    /properties/scaleSettings {"autoScale":{"minimumNodeCount":-1,"maximumNodeCount":1}}
    /properties/scaleSettings/autoScale {"minimumNodeCount":0,"maximumNodeCount":1}
    /properties/scaleSettings/manual/targetNodeCount -1 | 1e30 | 2147483648 | "1" | 1.5
    /properties/scaleSettings/manual/nodeDeallocationOption "sometimes"
    /properties/nodeSetup/mountVolumes/azureFileShares/0/relativeMountPath "../x" | "/abs"
    /properties/nodeSetup/mountVolumes/azureFileShares/0/azureFileUrl "ftp://a/s"
    /properties/nodeSetup/mountVolumes/azureFileShares/0/credentials {}
    /properties/nodeSetup/mountVolumes/azureFileShares/0/fileMode "999"
    /properties/nodeSetup/mountVolumes/fileServers [{"fileServer":{"id":"x"},"relativeMountPath":"n"}]
    /properties/virtualMachineConfiguration {"imageReference":{"publisher":"","offer":"o","sku":"s"}}
    /properties/nodeSetup/setupTask/commandLine ""
    /properties/nodeSetup/setupTask/secrets [{"name":"S"}]
    /properties/nodeSetup/setupTask/environmentVariables [{"name":"1BAD","value":"v"}]
    /properties null | [] | -"#;
const JOB_DEFECTS: &str = r#"
    /properties/nodeCount 0 | -1 | "1" | 1e30 | 2147483648 | -
    /properties/cluster/id "" | "garbage" | "{bai}/workspaces/ws/clusters/nope"
    /properties/cluster/id "/subscriptions/{sub}/resourceGroups/keep/providers/Microsoft.BatchAI/clusters/c"
    /properties/cluster -
    /properties/customToolkitSettings -
    /properties/cntkSettings {"pythonScriptFilePath":"a.py"}
    /properties/schedulingPriority "urgent" | 5
    /properties/constraints {"maxWallClockTime":"forever"} | {"maxWallClockTime":"P0D"}
    /properties/secrets [{"name":"S"}]
    /properties/environmentVariables [{"name":"1X","value":"v"}] | [{"name":"SECRET","value":"dup"}]
    /properties/inputDirectories [{"id":"A","path":"p"},{"id":"A","path":"q"}]
    /properties/outputDirectories [{"id":"stdouterr","pathPrefix":"p"}]
    /properties/outputDirectories [{"id":"O","pathPrefix":"p","pathSuffix":"../x"}]
    /properties/stdOutErrPathPrefix "" | -
    /properties/containerSettings {"imageSourceRegistry":{"image":""}}
    /properties/containerSettings {"imageSourceRegistry":{"image":"x","credentials":{"username":"u"}}}
    /properties/jobPreparation {"commandLine":""}
    /properties/pyTorchSettings {"pythonScriptFilePath":""}
    /properties null"#;
const GROUP_DEFECTS: &str = r#"
    /location - | 5 | ""
    /tags [] | {"a":1}
    . [] | "eastus""#;
const TAG_DEFECTS: &str = r#"
    /tags [] | {"a":1} | "x" | 7"#;
const SCALE_DEFECTS: &str = r#"
    /properties/scaleSettings {}
    /properties/scaleSettings/manual/targetNodeCount -1 | "x"
    /properties/scaleSettings/autoScale {"minimumNodeCount":0,"maximumNodeCount":1}
    /properties [] | -"#;
const OUTPUT_FILES_QUERIES: &str = "∅ &outputdirectoryid=nope &outputdirectoryid=
    &outputdirectoryid=stdouterr&linkexpiryinminutes=4 &outputdirectoryid=stdouterr&linkexpiryinminutes=601
    &outputdirectoryid=stdouterr&linkexpiryinminutes=x &outputdirectoryid=stdouterr&directory=../x
    &outputdirectoryid=stdouterr&directory=/etc &outputdirectoryid=stdouterr&directory=a/../../b
    &outputdirectoryid=stdouterr&maxresults=0 &outputdirectoryid=stdouterr&maxresults=1001";

fn cluster_base() -> Value {
    let mut c = cluster_body();
    c["properties"]["nodeSetup"]["setupTask"] =
        json!({"commandLine": "true", "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare"});
    c
}

fn fill(template: &str, names: &[(&str, &str)]) -> String {
    let mut s = template.replace("{bai}", "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.BatchAI");
    for (k, v) in names {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

fn valid_body(kind: &str, ctx: &Ctx) -> Vec<u8> {
    let v = match kind {
        "group" => json!({"location": "eastus", "tags": {"k": "v"}}),
        "tags" => json!({"tags": {"k": "v"}}),
        "experiment" => json!({}),
        "cluster" => cluster_base(),
        "scale" => json!({"properties": {"scaleSettings": {"manual": {"targetNodeCount": 2}}}}),
        "job" => job_body(&ctx.cluster_id),
        _ => return Vec::new(),
    };
    v.to_string().into_bytes()
}

/// `body` with one defect line applied: the value at the pointer replaced, added or removed.
fn broken(body: &[u8], pointer: &str, to: &str, names: &[(&str, &str)]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).expect("valid body");
    let to: Option<Value> = (to != "-").then(|| serde_json::from_str(&fill(to, names)).expect("defect is JSON"));
    if pointer == "." {
        return to.unwrap_or_default().to_string().into_bytes();
    }
    let (parent, last) = pointer.rsplit_once('/').expect("pointer");
    match (v.pointer_mut(parent).expect("defect parent exists"), to) {
        (Value::Object(o), Some(x)) => drop(o.insert(last.to_owned(), x)),
        (Value::Object(o), None) => drop(o.remove(last)),
        (Value::Array(a), Some(x)) => a[last.parse::<usize>().expect("index")] = x,
        _ => panic!("defect {pointer} does not fit"),
    }
    v.to_string().into_bytes()
}

fn bearer(ctx: &Ctx) -> Option<Vec<u8>> {
    Some(format!("Bearer {}", ctx.token).into_bytes())
}

fn bad_auth(rng: &mut Rng, ctx: &Ctx) -> Option<Vec<u8>> {
    let choices: [&[u8]; 8] = [
        b"Bearer",
        b"Bearer ",
        b"Bearer garbage",
        b"bearer bai_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        b"Basic dXNlcjpwYXNz",
        b"Bearer eyJhbGciOiJub25lIn0.eyJhcHBpZCI6ImFkbWluIiwiZXhwIjo5OTk5OTk5OTk5fQ.",
        b"Bearer \xff\xfe",
        b"",
    ];
    match rng.below(10) {
        0 => None,
        1 => Some(format!("Bearer {}x", ctx.token).into_bytes()),
        _ => Some(rng.pick(&choices).to_vec()),
    }
}

/// The names of the resources created before the run.
const EXISTING: [(&str, &str); 6] =
    [("sub", SUB), ("rg", "keep"), ("ws", "ws"), ("exp", "exp"), ("c", "c"), ("j", "j")];

/// Existing names, or new ones beside them.
fn names(rng: &mut Rng) -> Vec<(&'static str, &'static str)> {
    let rg = if rng.chance(70) { "keep" } else { "fuzz-new" };
    let ws = if rng.chance(70) { "ws" } else { "ws2" };
    let (exp, c, j) = if rng.chance(50) { ("exp", "c", "j") } else { ("exp2", "c2", "j2") };
    vec![("sub", SUB), ("rg", rg), ("ws", ws), ("exp", exp), ("c", c), ("j", j)]
}

/// A random write the API serves: method, template, body kind, api-version query.
fn write(rng: &mut Rng, with_body: bool) -> (&'static str, &'static str, &'static str, String) {
    loop {
        let w: Vec<&str> = rng.line(WRITES).split(' ').collect();
        if !with_body || w[0] != "DELETE" {
            return (w[0], w[1], w[2], format!("?api-version={}", w[3]));
        }
    }
}

/// A write the API serves, well-formed but for one planted defect of `kind`.
fn templated(rng: &mut Rng, ctx: &Ctx, kind: &str) -> Req {
    let (method, template, body_kind, mut version) = write(rng, matches!(kind, "content-type" | "oversize"));
    let mut n = names(rng);
    let mut req = Req::new(method, String::new(), ctx, String::new());
    req.body = valid_body(body_kind, ctx);
    req.defect = match kind {
        "name" => {
            let slots: Vec<usize> = (1..n.len()).filter(|i| template.contains(&format!("{{{}}}", n[*i].0))).collect();
            let Some(&i) = (!slots.is_empty()).then(|| rng.pick(&slots)) else { return templated(rng, ctx, "version") };
            n[i].1 = rng.word(if n[i].0 == "rg" { BAD_RG_NAMES } else { BAD_NAMES });
            format!("invalid {} name {:?}", n[i].0, n[i].1)
        }
        "version" => {
            version = if rng.chance(25) { String::new() } else { format!("?api-version={}", rng.word(BAD_VERSIONS)) };
            format!("api-version {version:?}")
        }
        "auth" if rng.chance(20) => {
            n[0].1 = "11111111-2222-3333-4444-555555555555";
            "a subscription the caller may not use".into()
        }
        "auth" => {
            req.auth = bad_auth(rng, ctx);
            "bad credentials".into()
        }
        "content-type" => {
            if req.body.is_empty() {
                req.body = b"{}".to_vec();
            }
            req.content_type = Some(rng.line(BAD_CONTENT_TYPES).to_owned());
            format!("content type {:?}", req.content_type)
        }
        _ => {
            let pad = "x".repeat(MAX_BODY + rng.below(4096));
            req.body = format!(r#"{{"location":"eastus","tags":{{"pad":"{pad}"}}}}"#).into_bytes();
            req.chunked = rng.chance(50);
            "a body over 4 MiB".into()
        }
    };
    req.target = format!("{}{version}", fill(template, &n));
    req
}

/// A PUT/PATCH with a valid envelope and a body the contract rejects.
fn bad_body(rng: &mut Rng, ctx: &Ctx) -> Req {
    let (method, template, body_kind, version) = loop {
        let w = write(rng, true);
        if w.2 != "-" {
            break w;
        }
    };
    // Mostly existing resources, so that PATCH reaches validation instead of a 404.
    let n = if rng.chance(75) { EXISTING.to_vec() } else { names(rng) };
    let mut req = Req::new(method, format!("{}{version}", fill(template, &n)), ctx, String::new());
    let defects = match body_kind {
        "cluster" => CLUSTER_DEFECTS,
        "job" => JOB_DEFECTS,
        "group" => GROUP_DEFECTS,
        "tags" => TAG_DEFECTS,
        "scale" => SCALE_DEFECTS,
        _ => "",
    };
    if defects.is_empty() || rng.chance(30) {
        req.body = match rng.below(12) {
            0 => "[".repeat(100_000).into_bytes(),
            1 => b"{\"location\":\"eastus\xff\"}".to_vec(),
            _ => rng.line(MALFORMED).as_bytes().to_vec(),
        };
        req.defect = "malformed JSON".into();
    } else {
        let (pointer, values) = rng.line(defects).split_once(' ').expect("pointer and values");
        let value = *rng.pick(&values.split(" | ").collect::<Vec<_>>());
        req.body = broken(&valid_body(body_kind, ctx), pointer, value, &n);
        req.defect = format!("{pointer} {value}");
    }
    req
}

/// Out-of-range query parameters of listOutputFiles and of lists.
fn bad_query(rng: &mut Rng, ctx: &Ctx) -> Req {
    let n = EXISTING;
    if rng.chance(70) {
        let q = rng.word(OUTPUT_FILES_QUERIES);
        let path = fill("{bai}/workspaces/{ws}/experiments/{exp}/jobs/{j}/listOutputFiles", &n);
        return Req::new("POST", format!("{path}?{BAI}{q}"), ctx, format!("listOutputFiles query {q:?}"));
    }
    let q = rng.word("maxresults=0 maxresults=1001 maxresults=x %24skiptoken=!!! maxresults=");
    let path = fill(rng.word("{bai}/workspaces {bai}/workspaces/{ws}/clusters {bai}/workspaces/{ws}/experiments"), &n);
    Req::new("GET", format!("{path}?{BAI}&{q}"), ctx, format!("list query {q:?}"))
}

fn wrong_method(rng: &mut Rng, ctx: &Ctx) -> Req {
    let (method, template) = rng.line(WRONG_METHODS).split_once(' ').expect("method and path");
    let n = EXISTING;
    let mut req = Req::new(method, format!("{}?{BAI}", fill(template, &n)), ctx, "method".into());
    if rng.chance(50) {
        req.body = b"{}".to_vec();
    }
    req
}

/// Anything at all; a write gets bad credentials or a bad api-version, so it must fail.
fn garbage(rng: &mut Rng, ctx: &Ctx) -> Req {
    let read = rng.chance(25);
    let method = rng.word(if read { "GET HEAD" } else { "GET HEAD PUT PATCH POST DELETE" });
    let mut path = String::new();
    if read {
        let n = names(rng);
        path = fill(rng.word(READS), &n);
    } else if rng.chance(50) {
        path.push_str(&format!("/subscriptions/{SUB}/resourceGroups/keep/providers/Microsoft.BatchAI"));
    }
    for _ in 0..if read { 0 } else { 1 + rng.below(10) } {
        let table = if rng.chance(70) { VOCAB } else { GARBAGE };
        let seg = rng.word(table);
        path.push('/');
        path.push_str(seg);
    }
    if rng.chance(3) {
        path.push_str(&format!("/{}", "x".repeat(1 + rng.below(70_000))));
    }
    let mut req = Req::new(method, String::new(), ctx, String::new());
    let mut version = rng.word("2018-05-01 2021-04-01 2018-05-01 2022-12-01").to_owned();
    if rng.chance(20) {
        req.auth = bad_auth(rng, ctx);
        req.defect = "bad credentials".into();
    } else if !read && method != "GET" && method != "HEAD" {
        if rng.chance(50) {
            req.auth = bad_auth(rng, ctx);
            req.defect = "bad credentials".into();
        } else {
            version = rng.word(BAD_VERSIONS).to_owned();
            req.defect = format!("api-version {version:?}");
        }
    }
    let mut query = if req.defect.starts_with("api-version") && rng.chance(20) {
        String::new()
    } else {
        format!("?api-version={version}")
    };
    if rng.chance(20) {
        query.push_str(rng.word("&maxresults=2 && &= &api-version=2018-05-01 &%24skiptoken=a #frag"));
    }
    req.target = format!("{path}{query}");
    req.body = match rng.below(8) {
        0 | 1 => Vec::new(),
        2 => rng.line(MALFORMED).as_bytes().to_vec(),
        3 => valid_body("cluster", ctx),
        4 => valid_body("job", ctx),
        5 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
        6 => br#"{"properties":{"a":[[[{"b":1e300}]]],"nodeCount":-9007199254740993}}"#.to_vec(),
        _ => br#"{"location":"eastus"}"#.to_vec(),
    };
    req.content_type = match rng.below(4) {
        0 => None,
        1 => Some("text/plain".into()),
        2 => Some("application/json; charset=utf-16".into()),
        _ => req.content_type,
    };
    if req.token_service() {
        req.defect.clear();
    }
    req
}

const ARRAY_CLUSTER: &str = concat!(
    r#"{"properties":["STANDARD_NC6",null,{"manual":{"targetNodeCount":0}},null,null,"#,
    r#"{"adminUserName":"u","adminUserPassword":"p"}]}"#
);

/// Defects found by earlier runs, replayed first on every run so they stay fixed.
fn known_cases(ctx: &Ctx) -> Vec<Req> {
    let p = |path: &str| format!("{}?{BAI}", Server::bai("keep", path));
    let group = format!("/subscriptions/{SUB}/resourceGroups/fuzz-new?api-version=2021-04-01");
    let cases = [
        ("PUT", group, r#"{"location":"eastus"} x"#),
        ("PUT", p("workspaces/ws2"), r#"{"location":"eastus"}}"#),
        ("PATCH", p("workspaces/ws"), r#"{"tags":{"k":"v"}} x"#),
        ("PUT", p("workspaces/ws/experiments/exp2"), "{} x"),
        // Arrays where objects belong are read positionally as structs.
        ("PATCH", p("workspaces/ws/clusters/c"), r#"{"properties":[{"manual":{"targetNodeCount":5}}]}"#),
        ("PUT", p("workspaces/ws/clusters/c2"), ARRAY_CLUSTER),
    ];
    let as_req = |(m, target, body): (&str, String, &str)| {
        let mut r = Req::new(m, target, ctx, format!("known case {body:?}"));
        r.body = body.as_bytes().to_vec();
        r
    };
    cases.into_iter().map(as_req).collect()
}

fn generate(rng: &mut Rng, ctx: &Ctx) -> Req {
    match rng.below(100) {
        0..35 => garbage(rng, ctx),
        35..60 => bad_body(rng, ctx),
        60..70 => templated(rng, ctx, "name"),
        70..77 => templated(rng, ctx, "version"),
        77..84 => templated(rng, ctx, "auth"),
        84..88 => templated(rng, ctx, "content-type"),
        88..91 => templated(rng, ctx, "oversize"),
        91..96 => bad_query(rng, ctx),
        _ => wrong_method(rng, ctx),
    }
}

/// Status and body of one raw exchange; `Err` when no status line came back.
fn exchange(addr: &str, req: &Req) -> Result<(u16, Vec<u8>), String> {
    let mut head =
        format!("{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n", req.method, req.target).into_bytes();
    if let Some(a) = &req.auth {
        head.extend_from_slice(b"Authorization: ");
        head.extend_from_slice(a);
        head.extend_from_slice(b"\r\n");
    }
    if let Some(ct) = &req.content_type {
        head.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
    }
    let body = if req.chunked {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        let mut b = Vec::new();
        for chunk in req.body.chunks(64 * 1024) {
            b.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            b.extend_from_slice(chunk);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    } else {
        head.extend_from_slice(format!("Content-Length: {}\r\n", req.body.len()).as_bytes());
        req.body.clone()
    };
    head.extend_from_slice(b"\r\n");
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    // A guard against a hung server, not a performance threshold.
    s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    // Write on another thread: a server may answer (413) before reading a large body.
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&head).and_then(|()| w.write_all(&body));
    });
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let _ = writer.join();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let status = raw.get(9..12).and_then(|s| std::str::from_utf8(s).ok()?.parse().ok());
    match (status, end) {
        (Some(status), Some(end)) => Ok((status, dechunk(&raw[..end], &raw[end + 4..]))),
        _ => Err(format!("no response ({read:?}, {} bytes: {:?})", raw.len(), String::from_utf8_lossy(&raw))),
    }
}

fn dechunk(head: &[u8], body: &[u8]) -> Vec<u8> {
    if !String::from_utf8_lossy(head).to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return body.to_vec();
    }
    let (mut out, mut rest) = (Vec::new(), body);
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..i]).trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < i + 2 + size {
            break;
        }
        out.extend_from_slice(&rest[i + 2..i + 2 + size]);
        rest = &rest[(i + 4 + size).min(rest.len())..];
    }
    out
}

/// Everything a slipped-through write could change, as text.
async fn snapshot(c: &Client) -> Vec<String> {
    let ws = |rest: &str| format!("{}?{BAI}", Server::bai("keep", rest));
    let paths = [
        format!("/subscriptions/{SUB}/resourcegroups?api-version=2021-04-01"),
        format!("/subscriptions/{SUB}/resourcegroups/keep?api-version=2021-04-01"),
        format!("/subscriptions/{SUB}/providers/Microsoft.BatchAI?api-version=2021-04-01"),
        format!("/subscriptions/{SUB}/providers/Microsoft.BatchAI/workspaces?{BAI}"),
        ws("workspaces"),
        ws("workspaces/ws"),
        ws("workspaces/ws/experiments"),
        ws("workspaces/ws/clusters"),
        ws("workspaces/ws/fileServers"),
        ws("workspaces/ws/experiments/exp/jobs"),
    ];
    let mut out = Vec::new();
    for p in paths {
        let r = c.get(&p).await;
        assert_eq!(r.status, 200, "snapshot {p}: {}", r.text);
        out.push(format!("{p} -> {}", r.text));
    }
    out
}

#[tokio::test]
async fn hostile_requests_are_rejected_cleanly_on_every_backend() {
    let seed = std::env::var("BATCHAI_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEED);
    let cases = std::env::var("BATCHAI_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_CASES);
    let mut failures = Vec::new();
    for backend in backends() {
        let mut server = Server::start(backend);
        let c = server.client();
        let cluster_id = scaffold(&c, "keep").await;
        let job = c
            .put_and_wait(
                &format!("{}?{BAI}", Server::bai("keep", "workspaces/ws/experiments/exp/jobs/j")),
                &job_body(&cluster_id),
            )
            .await;
        assert_eq!(job.status, 200, "{}", job.text);
        // The scheduler's first pass over the new cluster (no node joins: it reports
        // InsufficientNodes) must be over, or the snapshot would catch it midway.
        let cluster = format!("{}?{BAI}", Server::bai("keep", "workspaces/ws/clusters/c"));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        while c.get(&cluster).await.body["properties"]["errors"].as_array().is_none_or(Vec::is_empty) {
            assert!(tokio::time::Instant::now() < deadline, "the scheduler never looked at the cluster");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let before = snapshot(&c).await;
        let ctx = Ctx { token: server.token.clone(), cluster_id };
        let addr = server.http.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let mut rng = Rng(seed);
        let mut counts = [0usize; 6];
        let mut known = known_cases(&ctx).into_iter();
        let total = known.len() + cases;
        for i in 0..total {
            let req = known.next().unwrap_or_else(|| generate(&mut rng, &ctx));
            let what = format!("{backend:?} seed {seed} #{i}: {}", req.describe(&ctx));
            let (status, body) = match exchange(&addr, &req) {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{what}\n  -> {e}"));
                    continue;
                }
            };
            counts[usize::from(status / 100).min(5)] += 1;
            let text = String::from_utf8_lossy(&body);
            let reply = format!("{what}\n  -> {status} {}", text.chars().take(300).collect::<String>());
            if status >= 500 {
                failures.push(format!("server error: {reply}"));
            } else if !req.defect.is_empty() && status < 400 {
                failures.push(format!("defective write accepted: {reply}"));
            }
            if (400..500).contains(&status) && !body.is_empty() && req.method != "HEAD" && !req.token_service() {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let ok = |k: &str| v["error"][k].as_str().is_some_and(|s| !s.is_empty());
                if !ok("code") || !ok("message") {
                    failures.push(format!("not an ARM error envelope: {reply}"));
                }
            }
        }
        eprintln!("{backend:?}: {total} requests, by status class (1xx..5xx): {:?}", &counts[1..]);
        assert!(server.child.try_wait().expect("child status").is_none(), "{backend:?}: the server died");
        let after = snapshot(&c).await;
        for (b, a) in before.iter().zip(&after) {
            if a != b {
                let at = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count().saturating_sub(60);
                let (b, a) = (b.get(at..).unwrap_or(b), a.get(at..).unwrap_or(a));
                failures.push(format!("{backend:?}: state changed at …{b:.160}\n  now …{a:.160}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
