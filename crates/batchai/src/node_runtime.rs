//! Picks how an agent runs jobs (`runtime` in the config): Docker when wanted and available,
//! else host processes.

use std::sync::Arc;

use anyhow::Context;
use batchai_agent::runtime::{DockerRuntime, ProcessRuntime, Runtime};

use crate::config::Config;

pub async fn pick(cfg: &Config) -> anyhow::Result<Arc<dyn Runtime>> {
    let docker = || DockerRuntime::connect(cfg.docker_config());
    Ok(match cfg.runtime.as_str() {
        "process" => Arc::new(ProcessRuntime::new()),
        "docker" => Arc::new(docker().await.context("runtime = \"docker\", but no Docker engine answers")?),
        _ => match docker().await {
            Ok(runtime) => Arc::new(runtime),
            Err(e) => {
                tracing::warn!(error = %e, "no Docker engine: jobs run as host processes, and jobs with containerSettings fail on this node unless the image map sends their image to `host`");
                Arc::new(ProcessRuntime::new())
            }
        },
    })
}
