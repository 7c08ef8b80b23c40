//! `/metrics` of the server, in the Prometheus text format (the `prometheus` crate: its text
//! exposition is what `promtool check metrics` reads), unauthenticated like `/healthz`: counts
//! and durations only, nothing secret. Label values come from fixed sets — a route class, the
//! method, the status, an operation kind, a state — never from ids or names a user chose, so
//! the number of series stays bounded.
//!
//! Requests are counted as they are served (a middleware); jobs, nodes and GPUs are read from
//! the database at scrape time, so every server of a farm reports the same farm-wide values.

use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use batchai_core::state::{NodeState, Priority};
use batchai_scheduler::WaitClass;
use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use crate::AppState;

/// What the server counts as it goes; farm-wide gauges are filled at scrape time.
pub struct Metrics {
    /// Seconds per request, by `route` (class), `method`, `status`.
    requests: HistogramVec,
    /// Long-running operations finished, by `kind` and `outcome`.
    pub operations: IntCounterVec,
    /// Jobs by `state` and `priority`.
    jobs: IntGaugeVec,
    /// Nodes by `state`.
    nodes: IntGaugeVec,
    gpus: IntGauge,
    gpus_allocated: IntGauge,
    /// Seconds per scheduling pass (all clusters).
    passes: Histogram,
    /// Jobs placed, by `backfilled`.
    placements: IntCounterVec,
    /// Seconds from submission to placement.
    queue_wait: Histogram,
    requeues: IntCounter,
    /// Queued jobs by `reason` class, as this server's last scheduling pass found them.
    pending: IntGaugeVec,
    /// Seconds from start to end of jobs that ended on their nodes, by `outcome`.
    run_time: HistogramVec,
    /// GPUs × seconds of those jobs, by `resource_group`, `workspace` and `experiment`.
    gpu_seconds: CounterVec,
    /// The database pool's connections by `state` (`in_use`, `idle`), and its limit.
    db_connections: IntGaugeVec,
    db_connections_max: IntGauge,
    registry: Registry,
}

fn registered<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("batchai");
        // Doubling buckets from `first` seconds.
        let histogram = |name: &str, help: &str, first: f64, count: usize| {
            HistogramOpts::new(name, help)
                .namespace("batchai")
                .buckets(prometheus::exponential_buckets(first, 2.0, count).expect("valid buckets"))
        };
        Self {
            requests: registered(
                &registry,
                HistogramVec::new(
                    histogram(
                        "http_request_duration_seconds",
                        "HTTP requests served, by route class, method and status",
                        0.0005,
                        16,
                    ),
                    &["route", "method", "status"],
                )
                .expect("valid"),
            ),
            operations: registered(
                &registry,
                IntCounterVec::new(
                    opts("operations_total", "Long-running operations finished, by kind and outcome"),
                    &["kind", "outcome"],
                )
                .expect("valid"),
            ),
            jobs: registered(
                &registry,
                IntGaugeVec::new(opts("jobs", "Jobs by execution state and priority"), &["state", "priority"])
                    .expect("valid"),
            ),
            nodes: registered(
                &registry,
                IntGaugeVec::new(opts("nodes", "Registered nodes by state"), &["state"]).expect("valid"),
            ),
            gpus: registered(
                &registry,
                IntGauge::with_opts(opts("gpus", "GPUs of all registered nodes")).expect("valid"),
            ),
            gpus_allocated: registered(
                &registry,
                IntGauge::with_opts(opts("gpus_allocated", "GPUs of nodes running a job")).expect("valid"),
            ),
            passes: registered(
                &registry,
                Histogram::with_opts(histogram(
                    "scheduling_pass_duration_seconds",
                    "Scheduling passes over every cluster",
                    0.0005,
                    16,
                ))
                .expect("valid"),
            ),
            placements: registered(
                &registry,
                IntCounterVec::new(
                    opts("placements_total", "Jobs placed on nodes, by whether they were backfilled"),
                    &["backfilled"],
                )
                .expect("valid"),
            ),
            queue_wait: registered(
                &registry,
                Histogram::with_opts(histogram(
                    "queue_wait_seconds",
                    "Time from a job's submission to its placement",
                    0.01,
                    20,
                ))
                .expect("valid"),
            ),
            requeues: registered(
                &registry,
                IntCounter::with_opts(opts("requeues_total", "Jobs put back in the queue after losing their nodes"))
                    .expect("valid"),
            ),
            pending: registered(
                &registry,
                IntGaugeVec::new(
                    opts("pending_jobs", "Queued jobs by why they wait (this server's last scheduling pass)"),
                    &["reason"],
                )
                .expect("valid"),
            ),
            run_time: registered(
                &registry,
                HistogramVec::new(
                    histogram("job_run_seconds", "Time from a job's start to its end, by outcome", 1.0, 20),
                    &["outcome"],
                )
                .expect("valid"),
            ),
            gpu_seconds: registered(
                &registry,
                CounterVec::new(
                    opts("gpu_seconds_total", "GPU time of ended jobs (GPUs of their nodes × run time)"),
                    &["resource_group", "workspace", "experiment"],
                )
                .expect("valid"),
            ),
            db_connections: registered(
                &registry,
                IntGaugeVec::new(opts("db_connections", "Database pool connections by state"), &["state"])
                    .expect("valid"),
            ),
            db_connections_max: registered(
                &registry,
                IntGauge::with_opts(opts("db_connections_max", "The most connections the database pool opens"))
                    .expect("valid"),
            ),
            registry,
        }
    }
}

impl batchai_scheduler::runner::Observer for Metrics {
    fn pass(&self, secs: f64) {
        self.passes.observe(secs);
    }

    fn placed(&self, queued_secs: f64, backfilled: bool) {
        self.queue_wait.observe(queued_secs);
        self.placements.with_label_values(&[if backfilled { "true" } else { "false" }]).inc();
    }

    fn requeued(&self) {
        self.requeues.inc();
    }

    fn pending(&self, counts: &[(WaitClass, usize)]) {
        for (class, n) in counts {
            self.pending.with_label_values(&[class.as_str()]).set(*n as i64);
        }
    }
}

impl Metrics {
    /// A job ended on its nodes (`outcome`: its final state) after running `run_secs` on nodes
    /// with `gpus` GPUs in all.
    pub fn job_ended(&self, arm_id: &str, outcome: &str, run_secs: f64, gpus: i64) {
        self.run_time.with_label_values(&[outcome]).observe(run_secs);
        if gpus > 0 {
            let (rg, ws, exp) = job_scope(arm_id);
            self.gpu_seconds.with_label_values(&[rg, ws, exp]).inc_by(run_secs * gpus as f64);
        }
    }
}

/// The resource group, workspace and experiment of a job's ARM id (empty where missing).
fn job_scope(arm_id: &str) -> (&str, &str, &str) {
    let segs: Vec<&str> = arm_id.split('/').collect();
    let after = |name: &str| {
        segs.iter().position(|s| s.eq_ignore_ascii_case(name)).and_then(|i| segs.get(i + 1)).copied().unwrap_or("")
    };
    (after("resourceGroups"), after("workspaces"), after("experiments"))
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

/// A fixed name for what a path addresses (the ARM resource kind or the service), so request
/// series do not grow with resource names.
fn route_class(path: &str) -> &'static str {
    let lower = path.to_ascii_lowercase();
    let segs: Vec<&str> = lower.split('/').filter(|s| !s.is_empty()).collect();
    let has = |s: &str| segs.contains(&s);
    match segs.first().copied() {
        Some("agent") => {
            return if has("sync") {
                "agent_sync"
            } else if has("storage") {
                "agent_storage"
            } else if has("leave") {
                "agent_leave"
            } else {
                "agent_join"
            };
        }
        Some("files") => return "files_download",
        Some("healthz" | "readyz" | "metrics") => return "health",
        Some("adfs") => return "token",
        _ => {}
    }
    if segs.iter().any(|s| s.starts_with("oauth2")) || has(".well-known") {
        return "token";
    }
    if has("operationstatuses") || has("operationresults") {
        return "operations";
    }
    for (seg, class) in [
        ("jobs", "jobs"),
        ("experiments", "experiments"),
        ("clusters", "clusters"),
        ("fileservers", "fileservers"),
        ("workspaces", "workspaces"),
        ("usages", "usages"),
        ("operations", "operations"),
        ("resourcegroups", "resourcegroups"),
        ("providers", "providers"),
        ("subscriptions", "subscriptions"),
    ] {
        if has(seg) {
            return class;
        }
    }
    "other"
}

/// Times every request (the middleware of [`crate::router`]).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = route_class(req.uri().path());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    state
        .metrics
        .requests
        .with_label_values(&[route, method.as_str(), status.as_str()])
        .observe(started.elapsed().as_secs_f64());
    res
}

fn priority_name(rank: i32) -> &'static str {
    Priority::ALL.iter().find(|p| p.rank() == rank).map(|p| p.as_str()).unwrap_or("unknown")
}

async fn scrape(State(state): State<AppState>) -> Response {
    let m = state.metrics.clone();
    if let Err(e) = refresh(&state, &m).await {
        // Served anyway: the counters are still right; the farm gauges keep their last values.
        tracing::warn!(error = %e, "reading the farm's state for /metrics");
    }
    let mut text = Vec::new();
    if TextEncoder::new().encode(&m.registry.gather(), &mut text).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut res = text.into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(prometheus::TEXT_FORMAT));
    res
}

async fn refresh(state: &AppState, m: &Metrics) -> Result<(), batchai_store::StoreError> {
    let counts = state.store.job_counts().await?;
    m.jobs.reset();
    for (job_state, priority, n) in counts {
        m.jobs.with_label_values(&[job_state.as_str(), priority_name(priority)]).set(n);
    }
    let nodes = state.store.list_nodes(None).await?;
    for &s in NodeState::ALL {
        let n = nodes.iter().filter(|node| node.state == s).count();
        m.nodes.with_label_values(&[s.as_str()]).set(n as i64);
    }
    m.gpus.set(nodes.iter().map(|n| i64::from(n.gpus.max(0))).sum());
    m.gpus_allocated.set(nodes.iter().filter(|n| n.job_key.is_some()).map(|n| i64::from(n.gpus.max(0))).sum());
    let pool = state.store.pool_use();
    m.db_connections.with_label_values(&["in_use"]).set(i64::from(pool.open.saturating_sub(pool.idle)));
    m.db_connections.with_label_values(&["idle"]).set(i64::from(pool.idle));
    m.db_connections_max.set(i64::from(pool.max));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_fall_into_a_few_fixed_classes() {
        let rg = "/subscriptions/s/resourceGroups/my-rg/providers/Microsoft.BatchAI";
        assert_eq!(route_class(&format!("{rg}/workspaces/w/experiments/e/jobs/secret-name")), "jobs");
        assert_eq!(route_class(&format!("{rg}/workspaces/w/clusters/c")), "clusters");
        assert_eq!(route_class(&format!("{rg}/workspaces/w")), "workspaces");
        assert_eq!(
            route_class("/subscriptions/s/providers/Microsoft.BatchAI/locations/eastus/operationstatuses/x"),
            "operations"
        );
        assert_eq!(route_class("/subscriptions/s/resourcegroups/rg"), "resourcegroups");
        assert_eq!(route_class("/agent/v1/sync"), "agent_sync");
        assert_eq!(route_class("/agent/v1/leave"), "agent_leave");
        assert_eq!(route_class("/adfs/oauth2/token"), "token");
        assert_eq!(route_class("/tenant/oauth2/v2.0/token"), "token");
        assert_eq!(route_class("/files/a/b?sig=x"), "files_download");
        assert_eq!(route_class("/anything/else"), "other");
    }

    #[test]
    fn gpu_time_is_labelled_by_the_job_scope() {
        let id = "/subscriptions/s/resourceGroups/RG1/providers/Microsoft.BatchAI/workspaces/ws/experiments/exp/jobs/j";
        assert_eq!(job_scope(id), ("RG1", "ws", "exp"));
        assert_eq!(job_scope("/nothing"), ("", "", ""));
        let m = Metrics::default();
        m.job_ended(id, "succeeded", 10.0, 2);
        m.job_ended(id, "failed", 5.0, 2);
        m.job_ended(id, "succeeded", 7.0, 0);
        assert_eq!(m.gpu_seconds.with_label_values(&["RG1", "ws", "exp"]).get(), 30.0);
        assert_eq!(m.run_time.with_label_values(&["succeeded"]).get_sample_count(), 2);
    }

    #[test]
    fn priorities_are_named() {
        assert_eq!(
            (priority_name(0), priority_name(1), priority_name(2), priority_name(9)),
            ("low", "normal", "high", "unknown")
        );
    }
}
