//! ARM paths → [`Route`]. ARM ignores case in path segments, so fixed segments are compared
//! case-insensitively; names keep their spelling and are validated by the handlers.

use percent_encoding::percent_decode_str;

/// Which api-versions a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    BatchAi,
    Resources,
    Subscriptions,
}

/// What a Batch AI action POST asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    ListOutputFiles,
    ListRemoteLoginInformation,
    Terminate,
}

/// A recognised ARM path. Names are raw (unvalidated) path segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    ProviderOperations,
    Subscriptions,
    Subscription { sub: String },
    ResourceGroups { sub: String },
    ResourceGroup { sub: String, rg: String },
    GroupOperation { sub: String, op: String },
    Providers { sub: String },
    Provider { sub: String, ns: String },
    ProviderRegister { sub: String, ns: String },
    WorkspacesBySubscription { sub: String },
    Usages { sub: String, location: String },
    BatchOperation { sub: String, location: String, op: String },
    Workspaces { sub: String, rg: String },
    Workspace { sub: String, rg: String, ws: String },
    Experiments { sub: String, rg: String, ws: String },
    Experiment { sub: String, rg: String, ws: String, exp: String },
    Jobs { sub: String, rg: String, ws: String, exp: String },
    Job { sub: String, rg: String, ws: String, exp: String, job: String },
    JobAction { sub: String, rg: String, ws: String, exp: String, job: String, action: JobAction },
    Clusters { sub: String, rg: String, ws: String },
    Cluster { sub: String, rg: String, ws: String, cluster: String },
    ClusterRemoteLogin { sub: String, rg: String, ws: String, cluster: String },
    FileServers { sub: String, rg: String, ws: String },
    FileServer { sub: String, rg: String, ws: String, fs: String },
}

impl Route {
    pub fn family(&self) -> Family {
        match self {
            Route::Subscriptions | Route::Subscription { .. } => Family::Subscriptions,
            Route::ResourceGroups { .. }
            | Route::ResourceGroup { .. }
            | Route::GroupOperation { .. }
            | Route::Providers { .. }
            | Route::Provider { .. }
            | Route::ProviderRegister { .. } => Family::Resources,
            _ => Family::BatchAi,
        }
    }

    pub fn subscription(&self) -> Option<&str> {
        use Route::*;
        match self {
            ProviderOperations | Subscriptions => None,
            Subscription { sub }
            | ResourceGroups { sub }
            | ResourceGroup { sub, .. }
            | GroupOperation { sub, .. }
            | Providers { sub }
            | Provider { sub, .. }
            | ProviderRegister { sub, .. }
            | WorkspacesBySubscription { sub }
            | Usages { sub, .. }
            | BatchOperation { sub, .. }
            | Workspaces { sub, .. }
            | Workspace { sub, .. }
            | Experiments { sub, .. }
            | Experiment { sub, .. }
            | Jobs { sub, .. }
            | Job { sub, .. }
            | JobAction { sub, .. }
            | Clusters { sub, .. }
            | Cluster { sub, .. }
            | ClusterRemoteLogin { sub, .. }
            | FileServers { sub, .. }
            | FileServer { sub, .. } => Some(sub),
        }
    }
}

/// Parses a request path; `None` when it is not an ARM path we serve.
pub fn parse(path: &str) -> Option<Route> {
    let raw: Vec<String> = path
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    if raw.iter().any(|s| s.is_empty()) {
        return None;
    }
    let low: Vec<String> = raw.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = low.iter().map(String::as_str).collect();
    let r = |i: usize| raw[i].clone();
    const BAI: &str = "microsoft.batchai";
    let route = match l.as_slice() {
        ["providers", BAI, "operations"] => Route::ProviderOperations,
        ["subscriptions"] => Route::Subscriptions,
        ["subscriptions", _] => Route::Subscription { sub: r(1) },
        ["subscriptions", _, "resourcegroups"] => Route::ResourceGroups { sub: r(1) },
        ["subscriptions", _, "resourcegroups", _] => Route::ResourceGroup { sub: r(1), rg: r(3) },
        ["subscriptions", _, "operationresults", _] => Route::GroupOperation { sub: r(1), op: r(3) },
        ["subscriptions", _, "providers"] => Route::Providers { sub: r(1) },
        ["subscriptions", _, "providers", BAI, "workspaces"] => Route::WorkspacesBySubscription { sub: r(1) },
        ["subscriptions", _, "providers", BAI, "locations", _, "usages"] => Route::Usages { sub: r(1), location: r(5) },
        ["subscriptions", _, "providers", BAI, "locations", _, "operationresults" | "operationstatuses", _] => {
            Route::BatchOperation { sub: r(1), location: r(5), op: r(7) }
        }
        ["subscriptions", _, "providers", _] => Route::Provider { sub: r(1), ns: r(3) },
        ["subscriptions", _, "providers", _, "register"] => Route::ProviderRegister { sub: r(1), ns: r(3) },
        ["subscriptions", _, "resourcegroups", _, "providers", BAI, rest @ ..] => {
            let (sub, rg) = (r(1), r(3));
            let n = |i: usize| raw[6 + i].clone();
            match rest {
                ["workspaces"] => Route::Workspaces { sub, rg },
                ["workspaces", _] => Route::Workspace { sub, rg, ws: n(1) },
                ["workspaces", _, "experiments"] => Route::Experiments { sub, rg, ws: n(1) },
                ["workspaces", _, "experiments", _] => Route::Experiment { sub, rg, ws: n(1), exp: n(3) },
                ["workspaces", _, "experiments", _, "jobs"] => Route::Jobs { sub, rg, ws: n(1), exp: n(3) },
                ["workspaces", _, "experiments", _, "jobs", _] => {
                    Route::Job { sub, rg, ws: n(1), exp: n(3), job: n(5) }
                }
                ["workspaces", _, "experiments", _, "jobs", _, action] => {
                    let action = match *action {
                        "listoutputfiles" => JobAction::ListOutputFiles,
                        "listremotelogininformation" => JobAction::ListRemoteLoginInformation,
                        "terminate" => JobAction::Terminate,
                        _ => return None,
                    };
                    Route::JobAction { sub, rg, ws: n(1), exp: n(3), job: n(5), action }
                }
                ["workspaces", _, "clusters"] => Route::Clusters { sub, rg, ws: n(1) },
                ["workspaces", _, "clusters", _] => Route::Cluster { sub, rg, ws: n(1), cluster: n(3) },
                ["workspaces", _, "clusters", _, "listremotelogininformation"] => {
                    Route::ClusterRemoteLogin { sub, rg, ws: n(1), cluster: n(3) }
                }
                ["workspaces", _, "fileservers"] => Route::FileServers { sub, rg, ws: n(1) },
                ["workspaces", _, "fileservers", _] => Route::FileServer { sub, rg, ws: n(1), fs: n(3) },
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mixed_case_paths() {
        let p = "/subscriptions/S/resourcegroups/RG/providers/microsoft.batchai/Workspaces/w/experiments/e/jobs/j/listOutputFiles";
        assert_eq!(
            parse(p),
            Some(Route::JobAction {
                sub: "S".into(),
                rg: "RG".into(),
                ws: "w".into(),
                exp: "e".into(),
                job: "j".into(),
                action: JobAction::ListOutputFiles
            })
        );
        assert_eq!(
            parse("/subscriptions/s/resourceGroups/my%20rg"),
            Some(Route::ResourceGroup { sub: "s".into(), rg: "my rg".into() })
        );
        assert_eq!(
            parse("/subscriptions/s/providers/Microsoft.BatchAI/locations/eastus/operationstatuses/abc"),
            Some(Route::BatchOperation { sub: "s".into(), location: "eastus".into(), op: "abc".into() })
        );
        assert_eq!(parse("/providers/Microsoft.BatchAI/operations"), Some(Route::ProviderOperations));
    }

    #[test]
    fn rejects_unknown_and_empty_segments() {
        assert_eq!(parse("/"), None);
        assert_eq!(parse("/subscriptions//resourceGroups/x"), None);
        assert_eq!(parse("/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/nope"), None);
        assert_eq!(
            parse("/subscriptions/s/resourceGroups/rg/providers/Microsoft.BatchAI/workspaces/w/experiments/e/jobs/j/x"),
            None
        );
    }
}
