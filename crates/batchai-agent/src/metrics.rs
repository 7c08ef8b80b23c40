//! `/metrics` of the agent (served with `/healthz` on `health_listen`), in the Prometheus text
//! format (the `prometheus` crate: its text exposition is what `promtool check metrics` reads).
//! Label values are fixed sets, except the GPU → job mapping, which has one series per GPU in
//! use (bounded by the node's GPUs) so that GPU series from NVIDIA's exporter can be joined to
//! the job using the GPU.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct AgentMetrics {
    pub running_jobs: IntGauge,
    pub sync_failures: IntCounter,
    pub gpus: IntGauge,
    /// Seconds to start a process or container, by `kind` (`process`, `container`).
    pub starts: HistogramVec,
    /// 1 per GPU in use, by `gpu_uuid` and `job` (the job's key).
    pub gpu_job: IntGaugeVec,
    registry: Registry,
}

fn registered<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry.register(Box::new(c.clone())).expect("metric names are unique");
    c
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("batchai_agent");
        Self {
            running_jobs: registered(
                &registry,
                IntGauge::with_opts(opts("running_jobs", "Jobs this node is running")).expect("valid"),
            ),
            sync_failures: registered(
                &registry,
                IntCounter::with_opts(opts("sync_failures_total", "Syncs with the server (the heartbeat) that failed"))
                    .expect("valid"),
            ),
            gpus: registered(&registry, IntGauge::with_opts(opts("gpus", "GPUs of this node")).expect("valid")),
            starts: registered(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new("process_start_duration_seconds", "Time to start a job's process or container")
                        .namespace("batchai_agent")
                        .buckets(prometheus::exponential_buckets(0.005, 2.0, 14).expect("valid buckets")),
                    &["kind"],
                )
                .expect("valid"),
            ),
            gpu_job: registered(
                &registry,
                IntGaugeVec::new(
                    opts("gpu_job", "1 for each GPU in use, labelled with the job using it"),
                    &["gpu_uuid", "job"],
                )
                .expect("valid"),
            ),
            registry,
        }
    }
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl AgentMetrics {
    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
