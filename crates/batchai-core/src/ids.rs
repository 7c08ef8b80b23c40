//! ARM resource ids of the Batch AI hierarchy.
//!
//! Clients parse these ids (`msrestazure.tools.parse_resource_id`), so [`ResourceRef::id`] spells
//! them exactly as the service did; [`ResourceRef::key`] is the case-folded form stored and
//! compared, since ARM ignores case in paths.

use crate::error::ApiError;
use crate::names::{NameKind, ResourceName};

pub const PROVIDER: &str = "Microsoft.BatchAI";

/// The kinds of resource the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    ResourceGroup,
    Workspace,
    Experiment,
    Cluster,
    FileServer,
    Job,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ResourceGroup => "resourceGroup",
            Kind::Workspace => "workspace",
            Kind::Experiment => "experiment",
            Kind::Cluster => "cluster",
            Kind::FileServer => "fileServer",
            Kind::Job => "job",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Kind::ResourceGroup, Kind::Workspace, Kind::Experiment, Kind::Cluster, Kind::FileServer, Kind::Job]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    /// The `type` string on the wire.
    pub fn arm_type(self) -> &'static str {
        match self {
            Kind::ResourceGroup => "Microsoft.Resources/resourceGroups",
            Kind::Workspace => "Microsoft.BatchAI/workspaces",
            Kind::Experiment => "Microsoft.BatchAI/workspaces/experiments",
            Kind::Cluster => "Microsoft.BatchAI/workspaces/clusters",
            Kind::FileServer => "Microsoft.BatchAI/workspaces/fileservers",
            Kind::Job => "Microsoft.BatchAI/workspaces/experiments/jobs",
        }
    }

    /// The word used in messages and in `<Word>NotFound` codes.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::ResourceGroup => "resource group",
            Kind::Workspace => "workspace",
            Kind::Experiment => "experiment",
            Kind::Cluster => "cluster",
            Kind::FileServer => "file server",
            Kind::Job => "job",
        }
    }

    pub fn name_kind(self) -> NameKind {
        match self {
            Kind::ResourceGroup => NameKind::ResourceGroup,
            k => NameKind::BatchAi(k.noun()),
        }
    }

    pub fn not_found_code(self) -> crate::ErrorCode {
        use crate::ErrorCode::*;
        match self {
            Kind::ResourceGroup => ResourceGroupNotFound,
            Kind::Workspace => WorkspaceNotFound,
            Kind::Experiment => ExperimentNotFound,
            Kind::Cluster => ClusterNotFound,
            Kind::FileServer => FileServerNotFound,
            Kind::Job => JobNotFound,
        }
    }
}

/// A resource's place in the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRef {
    pub subscription: String,
    pub resource_group: ResourceName,
    pub workspace: Option<ResourceName>,
    pub experiment: Option<ResourceName>,
    pub kind: Kind,
    pub name: ResourceName,
}

impl ResourceRef {
    pub fn resource_group(subscription: &str, rg: ResourceName) -> Self {
        Self {
            subscription: subscription.to_owned(),
            name: rg.clone(),
            resource_group: rg,
            workspace: None,
            experiment: None,
            kind: Kind::ResourceGroup,
        }
    }

    /// A child of `self` (workspace under a group, cluster/experiment/file server under a
    /// workspace, job under an experiment).
    pub fn child(&self, kind: Kind, name: ResourceName) -> Self {
        let mut r = self.clone();
        match self.kind {
            Kind::ResourceGroup => {}
            Kind::Workspace => r.workspace = Some(self.name.clone()),
            Kind::Experiment => r.experiment = Some(self.name.clone()),
            _ => {}
        }
        r.kind = kind;
        r.name = name;
        r
    }

    /// The parent resource, `None` for a resource group.
    pub fn parent(&self) -> Option<Self> {
        let mut p = self.clone();
        match self.kind {
            Kind::ResourceGroup => return None,
            Kind::Workspace => {
                p.kind = Kind::ResourceGroup;
                p.name = self.resource_group.clone();
            }
            Kind::Experiment | Kind::Cluster | Kind::FileServer => {
                p.kind = Kind::Workspace;
                p.name = self.workspace.clone()?;
                p.workspace = None;
            }
            Kind::Job => {
                p.kind = Kind::Experiment;
                p.name = self.experiment.clone()?;
                p.experiment = None;
            }
        }
        Some(p)
    }

    pub fn resource_group_ref(&self) -> Self {
        Self::resource_group(&self.subscription, self.resource_group.clone())
    }

    /// The ARM id, spelled as the service spelled it.
    pub fn id(&self) -> String {
        let rg = format!("/subscriptions/{}/resourceGroups/{}", self.subscription, self.resource_group);
        if self.kind == Kind::ResourceGroup {
            return rg;
        }
        let mut id = format!("{rg}/providers/{PROVIDER}");
        if let Some(ws) = &self.workspace {
            id.push_str(&format!("/workspaces/{ws}"));
        }
        if let Some(exp) = &self.experiment {
            id.push_str(&format!("/experiments/{exp}"));
        }
        let seg = match self.kind {
            Kind::ResourceGroup => unreachable!("handled above"),
            Kind::Workspace => "workspaces",
            Kind::Experiment => "experiments",
            Kind::Cluster => "clusters",
            Kind::FileServer => "fileservers",
            Kind::Job => "jobs",
        };
        id.push_str(&format!("/{seg}/{}", self.name));
        id
    }

    /// Case-folded id: the primary key in the store.
    pub fn key(&self) -> String {
        self.id().to_lowercase()
    }

    /// The `$`-joined resource id the real service put in finished operation bodies.
    pub fn dollar_id(&self) -> String {
        let mut parts = vec![self.subscription.clone(), self.resource_group.to_string()];
        parts.extend(self.workspace.iter().map(ToString::to_string));
        parts.extend(self.experiment.iter().map(ToString::to_string));
        if self.kind != Kind::ResourceGroup {
            parts.push(self.name.to_string());
        }
        parts.join("$")
    }

    /// Parses the id of a Batch AI resource of `kind` (as a job's `cluster.id` gives it),
    /// ignoring case in the fixed segments.
    pub fn parse_id(raw: &str, kind: Kind) -> Result<Self, String> {
        let segs: Vec<&str> = raw.trim_end_matches('/').split('/').collect();
        let fixed = |i: usize, want: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(want));
        let bad = || format!("'{raw}' is not a valid {} resource id", kind.noun());
        if segs.first() != Some(&"") || !fixed(1, "subscriptions") || !fixed(3, "resourceGroups") {
            return Err(bad());
        }
        let sub = segs.get(2).filter(|s| !s.is_empty()).ok_or_else(bad)?;
        let name = |i: usize, k: Kind| -> Result<ResourceName, String> {
            let s = segs.get(i).ok_or_else(bad)?;
            ResourceName::parse(s, k.name_kind()).map_err(|e: ApiError| e.message)
        };
        let rg = ResourceRef::resource_group(sub, name(4, Kind::ResourceGroup)?);
        if !fixed(5, "providers") || !fixed(6, PROVIDER) || !fixed(7, "workspaces") {
            return Err(bad());
        }
        let ws = rg.child(Kind::Workspace, name(8, Kind::Workspace)?);
        // A job sits one level further down, under its experiment (`batchai job why` takes
        // its id; without this arm every job id was refused).
        if kind == Kind::Job {
            if segs.len() != 13 || !fixed(9, "experiments") || !fixed(11, "jobs") {
                return Err(bad());
            }
            let exp = ws.child(Kind::Experiment, name(10, Kind::Experiment)?);
            return Ok(exp.child(Kind::Job, name(12, Kind::Job)?));
        }
        let (seg, len) = match kind {
            Kind::Cluster => ("clusters", 11),
            Kind::FileServer => ("fileServers", 11),
            Kind::Experiment => ("experiments", 11),
            _ => return Err(bad()),
        };
        if segs.len() != len || !fixed(9, seg) {
            return Err(bad());
        }
        Ok(ws.child(kind, name(10, kind)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str, k: Kind) -> ResourceName {
        ResourceName::parse(s, k.name_kind()).unwrap()
    }

    #[test]
    fn ids_match_the_service() {
        let rg = ResourceRef::resource_group("sub", n("RG", Kind::ResourceGroup));
        let ws = rg.child(Kind::Workspace, n("ws", Kind::Workspace));
        let job = ws.child(Kind::Experiment, n("exp", Kind::Experiment)).child(Kind::Job, n("j1", Kind::Job));
        assert_eq!(
            job.id(),
            "/subscriptions/sub/resourceGroups/RG/providers/Microsoft.BatchAI/workspaces/ws/experiments/exp/jobs/j1"
        );
        assert_eq!(job.dollar_id(), "sub$RG$ws$exp$j1");
        assert_eq!(job.parent().unwrap().parent().unwrap(), ws);
        assert_eq!(ws.parent().unwrap(), rg);
        assert_eq!(ws.child(Kind::FileServer, n("f", Kind::FileServer)).id().rsplit('/').nth(1), Some("fileservers"));
    }

    #[test]
    fn parses_cluster_ids_ignoring_case() {
        let id = "/SUBSCRIPTIONS/s/resourcegroups/rg/providers/microsoft.batchai/Workspaces/w/CLUSTERS/c";
        let r = ResourceRef::parse_id(id, Kind::Cluster).unwrap();
        assert_eq!(r.key(), "/subscriptions/s/resourcegroups/rg/providers/microsoft.batchai/workspaces/w/clusters/c");
    }

    #[test]
    fn parses_job_ids() {
        let id = "/subscriptions/s/resourceGroups/RG/providers/Microsoft.BatchAI/workspaces/w/experiments/e/Jobs/j";
        let r = ResourceRef::parse_id(id, Kind::Job).unwrap();
        assert_eq!(
            r.key(),
            "/subscriptions/s/resourcegroups/rg/providers/microsoft.batchai/workspaces/w/experiments/e/jobs/j"
        );
        for bad in [
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/experiments/e",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/clusters/e/jobs/j",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/experiments/e/jobs/j/x",
        ] {
            assert!(ResourceRef::parse_id(bad, Kind::Job).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspace/w/clusters/c",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/clusters",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/clusters/c/x",
            "subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/clusters/c",
        ] {
            assert!(ResourceRef::parse_id(bad, Kind::Cluster).is_err(), "{bad}");
        }
    }
}
