//! Databases for the store tests: a fresh SQLite file and, when `BATCHAI_TEST_PG_URL` is set
//! (always in CI), a fresh Postgres database.

use std::sync::Arc;

use batchai_core::ids::{Kind, ResourceRef};
use batchai_core::names::ResourceName;
use batchai_core::state::{AllocationState, ProvisioningState};
use batchai_store::{NewCluster, NewJob, NewResource, Store, connect};

/// A store factory: a fresh database each call, plus a second handle on the same database
/// (a second "server").
pub struct Db {
    pub url: String,
    _tmp: Option<tempfile::TempDir>,
}

impl Db {
    pub async fn open(&self) -> Arc<dyn Store> {
        connect(&self.url).await.expect("store connects and migrates")
    }
}

pub fn databases() -> Vec<Db> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dbs = vec![Db { url: format!("sqlite://{}", tmp.path().join("t.sqlite").display()), _tmp: Some(tmp) }];
    match std::env::var("BATCHAI_TEST_PG_URL") {
        Ok(admin) => {
            let name = format!("batchai_store_{}", uuid::Uuid::new_v4().simple());
            let out = std::process::Command::new("psql")
                .arg(&admin)
                .arg("-qc")
                .arg(format!("CREATE DATABASE {name}"))
                .output()
                .expect("psql runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let (base, _) = admin.rsplit_once('/').expect("db in URL");
            dbs.push(Db { url: format!("{base}/{name}"), _tmp: None });
        }
        Err(_) if std::env::var("CI").is_ok() => panic!("CI needs BATCHAI_TEST_PG_URL for the Postgres half"),
        Err(_) => {}
    }
    dbs
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            for db in $crate::common::databases() {
                super::$name(&db).await;
            }
        }
    )*};
}

pub fn name(s: &str, k: Kind) -> ResourceName {
    ResourceName::parse(s, k.name_kind()).expect("valid name")
}

pub const SUB: &str = "sub-1";

pub fn rg(n: &str) -> ResourceRef {
    ResourceRef::resource_group(SUB, name(n, Kind::ResourceGroup))
}

pub fn new(r: &ResourceRef, state: ProvisioningState) -> NewResource {
    NewResource {
        key: r.key(),
        kind: r.kind,
        subscription_id: SUB.into(),
        rg_key: r.resource_group.key(),
        ws_key: match r.kind {
            Kind::Workspace => r.name.key(),
            _ => r.workspace.as_ref().map(|w| w.key()).unwrap_or_default(),
        },
        exp_key: match r.kind {
            Kind::Experiment => r.name.key(),
            _ => r.experiment.as_ref().map(|e| e.key()).unwrap_or_default(),
        },
        parent_key: r.parent().map(|p| p.key()).unwrap_or_else(|| format!("/subscriptions/{SUB}")),
        arm_id: r.id(),
        name: r.name.to_string(),
        uid: uuid::Uuid::new_v4().to_string(),
        location: Some("eastus".into()),
        tags: None,
        spec: Some(serde_json::json!({"k": "v"})),
        provisioning_state: state,
        now: 1_000,
        job: (r.kind == Kind::Job).then(|| NewJob {
            cluster_key: "c".into(),
            priority: 1,
            node_count: 1,
            tool_type: "custom".into(),
            max_wall_clock_secs: 60,
        }),
        cluster: (r.kind == Kind::Cluster)
            .then(|| NewCluster { vm_size: "STANDARD_NC6".into(), allocation_state: AllocationState::Resizing }),
        requires: None,
    }
}

/// rg/ws/exp/job and rg/ws/cluster.
pub async fn tree(s: &dyn Store, rg_name: &str) -> (ResourceRef, ResourceRef, ResourceRef, ResourceRef, ResourceRef) {
    let g = rg(rg_name);
    let ws = g.child(Kind::Workspace, name("ws", Kind::Workspace));
    let exp = ws.child(Kind::Experiment, name("exp", Kind::Experiment));
    let job = exp.child(Kind::Job, name("job", Kind::Job));
    let cl = ws.child(Kind::Cluster, name("cl", Kind::Cluster));
    for r in [&g, &ws, &exp, &job, &cl] {
        s.insert_resource(&new(r, ProvisioningState::Succeeded), None).await.expect("insert");
    }
    (g, ws, exp, job, cl)
}
