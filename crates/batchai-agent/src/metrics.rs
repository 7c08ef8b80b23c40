//! `/metrics` of the agent (served with `/healthz` on `health_listen`), in the Prometheus text
//! format (the `prometheus` crate: its text exposition is what `promtool check metrics` reads).
//! Label values are fixed sets, except the GPU → job mapping, which has one series per GPU in
//! use (bounded by the node's GPUs) so that GPU series from NVIDIA's exporter can be joined to
//! the job using the GPU.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::facts::GpuUsage;

pub struct AgentMetrics {
    pub running_jobs: IntGauge,
    pub sync_failures: IntCounter,
    pub gpus: IntGauge,
    /// Seconds to start a process or container, by `kind` (`process`, `container`).
    pub starts: HistogramVec,
    /// 1 per GPU in use, by `gpu_uuid` and `job` (the job's key).
    pub gpu_job: IntGaugeVec,
    /// Per GPU (`gpu_uuid`), from nvidia-smi at scrape time.
    gpu_utilization: GaugeVec,
    gpu_memory_used: GaugeVec,
    gpu_memory_total: GaugeVec,
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
            gpu_utilization: registered(
                &registry,
                GaugeVec::new(opts("gpu_utilization_ratio", "GPU busy fraction (nvidia-smi)"), &["gpu_uuid"])
                    .expect("valid"),
            ),
            gpu_memory_used: registered(
                &registry,
                GaugeVec::new(opts("gpu_memory_used_bytes", "GPU memory in use (nvidia-smi)"), &["gpu_uuid"])
                    .expect("valid"),
            ),
            gpu_memory_total: registered(
                &registry,
                GaugeVec::new(opts("gpu_memory_total_bytes", "GPU memory (nvidia-smi)"), &["gpu_uuid"]).expect("valid"),
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
    /// Replaces the per-GPU series with `usage` (a GPU gone or unreadable loses its series).
    pub fn set_gpu_usage(&self, usage: &[GpuUsage]) {
        for (vec, value) in [
            (&self.gpu_utilization, (|u: &GpuUsage| u.utilization) as fn(&GpuUsage) -> Option<f64>),
            (&self.gpu_memory_used, |u| u.memory_used_bytes),
            (&self.gpu_memory_total, |u| u.memory_total_bytes),
        ] {
            vec.reset();
            for u in usage {
                if let Some(v) = value(u) {
                    vec.with_label_values(&[u.uuid.as_str()]).set(v);
                }
            }
        }
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
