//! Containers through the Docker engine (bollard), one per process of a job.
//!
//! A container is labelled with its node, job, attempt epoch and process, named after them, and
//! kept after it exits until the agent [forgets](Runtime::forget) the task (its outcome is then
//! safe with the server). So an agent that was killed finds every container of its tasks again
//! by label ([`Runtime::adopt`]), running or exited with its code, and nothing it started is
//! started twice. The job writes its own `stdout.txt`/`stderr.txt` through bind mounts (see
//! `spec::ENTRYPOINT`), so no log stream has to survive the agent.
//!
//! Specs without a container (jobs without `containerSettings`, the cluster's setup task) run
//! on the host through the [`ProcessRuntime`], as Batch AI ran them.

mod spec;

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::models::ContainerSummaryStateEnum;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{ContainerSpec, Exit, ProcessRuntime, ProcessSpec, Running, Runtime, RuntimeError, TaskOwner};

/// How job containers run on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// Docker's network mode for job containers. `host` (the default) gives a job the node's
    /// own address and ports, so the nodes of a multi-node job reach each other at the
    /// addresses in their host file, as on Batch AI. An agent that itself runs in a container
    /// uses `container:<its container>` so its jobs share its address.
    pub network: String,
}

impl Default for DockerConfig {
    fn default() -> Self {
        Self { network: "host".to_owned() }
    }
}

/// Runs container specs in Docker and the rest as host processes.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    cfg: DockerConfig,
    host: ProcessRuntime,
}

fn engine(context: impl Into<String>) -> impl FnOnce(DockerError) -> RuntimeError {
    let context = context.into();
    move |e| RuntimeError::Engine { context, message: e.to_string() }
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

impl DockerRuntime {
    /// Connects to the engine named by `DOCKER_HOST` (else the local socket) and agrees on an
    /// API version with it (Debian's engine speaks 1.41, older than bollard's default). Fails
    /// when no engine answers, so a caller can fall back to the process runtime.
    pub async fn connect(cfg: DockerConfig) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_defaults().map_err(engine("connecting to Docker"))?;
        let docker = docker.negotiate_version().await.map_err(engine("asking Docker for its API version"))?;
        docker.ping().await.map_err(engine("pinging Docker"))?;
        Ok(Self { docker, cfg, host: ProcessRuntime::new() })
    }

    /// The engine's client, for tests and tools that inspect what the runtime did.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    async fn list(&self, node: &str, task: Option<&TaskOwner>) -> Result<Vec<Found>, RuntimeError> {
        let filters = spec::filters(node, task);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let found = self.docker.list_containers(Some(options)).await.map_err(engine("listing containers"))?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(Found {
                    id: c.id?,
                    job: labels.get(spec::LABEL_JOB)?.clone(),
                    epoch: labels.get(spec::LABEL_EPOCH)?.parse().ok()?,
                    process: labels.get(spec::LABEL_PROCESS)?.clone(),
                    created_only: c.state == Some(ContainerSummaryStateEnum::CREATED),
                })
            })
            .collect())
    }

    /// Stops (SIGTERM, then SIGKILL after `grace`) and removes a container; gone already is fine.
    async fn discard(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let stop = StopContainerOptionsBuilder::new().t(grace_secs(grace)).build();
        match self.docker.stop_container(id, Some(stop)).await {
            Ok(()) => {}
            Err(e) if matches!(status_of(&e), Some(304 | 404)) => {}
            Err(e) => return Err(engine(format!("stopping container {id}"))(e)),
        }
        self.remove(id).await
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self.docker.remove_container(id, Some(options)).await {
            Err(e) if status_of(&e) != Some(404) => Err(engine(format!("removing container {id}"))(e)),
            _ => Ok(()),
        }
    }

    async fn start_container(
        &self,
        spec: ProcessSpec,
        container: &ContainerSpec,
    ) -> Result<DockerRunning, RuntimeError> {
        let image = &container.image;
        let body = spec::create_body(&spec, container, image, &self.cfg.network)
            .map_err(|message| RuntimeError::Engine { context: format!("container for {}", spec.name), message })?;
        // Created here, by the agent, so they exist (and are the agent's) even if the container
        // never starts.
        for path in [&spec.stdout, &spec.stderr] {
            tokio::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .await
                .map_err(|source| RuntimeError::Io { context: format!("opening {}", path.display()), source })?;
        }
        let name = spec::container_name(&container.owner, &container.process);
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = match self.docker.create_container(Some(options.clone()), body.clone()).await {
            // A container of that name nobody adopted: left by an agent that died between
            // creating and starting it, or (its task markers lost) by an earlier run of this
            // very attempt. The attempt is this one now, so it is replaced.
            Err(e) if status_of(&e) == Some(409) => {
                tracing::info!(container = %name, "replacing a container left from an earlier start");
                self.remove(&name).await?;
                self.docker.create_container(Some(options), body).await
            }
            other => other,
        }
        .map_err(engine(format!("creating container {name} for {} from {image}", spec.name)))?;
        for warning in &created.warnings {
            tracing::warn!(container = %name, warning = %warning, "Docker warned about a job container");
        }
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(RuntimeError::Spawn {
                name: spec.name,
                source: std::io::Error::other(format!("Docker could not start {name} from {image}: {e}")),
            });
        }
        tracing::debug!(process.name = %spec.name, container = %name, image = %image, "container started");
        Ok(DockerRunning { docker: self.docker.clone(), id: created.id, name, exit: None })
    }
}

/// A container of this node, from its labels.
struct Found {
    id: String,
    job: String,
    epoch: i64,
    process: String,
    /// Created but never started.
    created_only: bool,
}

fn grace_secs(grace: Duration) -> i32 {
    i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)).unwrap_or(i32::MAX)
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: ProcessSpec) -> Result<Box<dyn Running>, RuntimeError> {
        match spec.container.clone() {
            Some(container) => Ok(Box::new(self.start_container(spec, &container).await?)),
            None => self.host.start(spec).await,
        }
    }

    async fn pull(
        &self,
        container: &ContainerSpec,
        progress: &mpsc::UnboundedSender<String>,
    ) -> Result<(), RuntimeError> {
        let say = |line: String| {
            let _ = progress.send(line);
        };
        let image = &container.image;
        match self.docker.inspect_image(image).await {
            Ok(_) => {
                say(format!("using image {image}, present on the node"));
                return Ok(());
            }
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(engine(format!("inspecting image {image}"))(e)),
        }
        let reference = spec::with_tag(image);
        let registry = container.registry.as_ref();
        let server = registry.and_then(|r| r.server.clone());
        say(format!("pulling image {reference} from {}", server.as_deref().unwrap_or("the default registry")));
        let credentials =
            registry.filter(|r| r.username.is_some() || r.password.is_some()).map(|r| DockerCredentials {
                username: r.username.clone(),
                password: r.password.clone(),
                serveraddress: r.server.clone(),
                ..DockerCredentials::default()
            });
        let options = CreateImageOptionsBuilder::new().from_image(&reference).build();
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        // Progress bars arrive many times a second; one line per layer and status is enough.
        let mut seen = HashSet::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| RuntimeError::Image { image: reference.clone(), message: e.to_string() })?;
            let Some(status) = info.status else { continue };
            let line = match info.id {
                Some(id) => format!("{id}: {status}"),
                None => status,
            };
            if seen.insert(line.clone()) {
                say(line);
            }
        }
        Ok(())
    }

    async fn adopt(&self, task: &TaskOwner) -> Result<Vec<(String, Box<dyn Running>)>, RuntimeError> {
        let mut adopted: Vec<(String, Box<dyn Running>)> = Vec::new();
        for found in self.list(&task.node, Some(task)).await? {
            if found.created_only {
                // It never ran: the process is started afresh under the same name.
                self.remove(&found.id).await?;
                continue;
            }
            let name = spec::container_name(task, &found.process);
            tracing::info!(job.id = %task.job, container = %name, "reattached to a container");
            let running = DockerRunning { docker: self.docker.clone(), id: found.id, name, exit: None };
            adopted.push((found.process, Box::new(running)));
        }
        Ok(adopted)
    }

    async fn forget(&self, task: &TaskOwner) -> Result<(), RuntimeError> {
        for found in self.list(&task.node, Some(task)).await? {
            // Exited by now; a running one would be a bug elsewhere, and must not outlive this.
            self.discard(&found.id, Duration::ZERO).await?;
        }
        Ok(())
    }

    async fn sweep(&self, node: &str, keep: &[(String, i64)], grace: Duration) -> Result<(), RuntimeError> {
        for found in self.list(node, None).await? {
            if keep.iter().any(|(job, epoch)| *job == found.job && *epoch == found.epoch) {
                continue;
            }
            tracing::info!(job.id = %found.job, epoch = found.epoch, process = %found.process, "removing a container of a task this node no longer runs");
            self.discard(&found.id, grace).await?;
        }
        Ok(())
    }
}

/// A job container. Dropping it leaves the container as it is.
#[derive(Debug)]
pub struct DockerRunning {
    docker: Docker,
    id: String,
    name: String,
    exit: Option<Exit>,
}

#[async_trait]
impl Running for DockerRunning {
    fn id(&self) -> String {
        self.id.chars().take(12).collect()
    }

    async fn wait(&mut self) -> Result<Exit, RuntimeError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        // Waiting again on a container that has exited answers at once, so dropping this
        // future midway loses nothing.
        let options = WaitContainerOptionsBuilder::new().condition("not-running").build();
        let first = self.docker.wait_container(&self.id, Some(options)).next().await;
        let code = match first {
            Some(Ok(response)) => response.status_code,
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(engine(format!("waiting for container {}", self.name))(e)),
            None => {
                return Err(RuntimeError::Engine {
                    context: format!("waiting for container {}", self.name),
                    message: "Docker closed the wait without an exit code".to_owned(),
                });
            }
        };
        // The code of the command; 128 + n when it was killed by signal n (as a shell says).
        let exit = Exit::Code(i32::try_from(code).unwrap_or(-1));
        self.exit = Some(exit);
        tracing::debug!(container = %self.name, ?exit, "container exited");
        Ok(exit)
    }

    async fn stop(&mut self, grace: Duration) -> Result<Exit, RuntimeError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        // Docker sends the stop signal, waits `t` seconds, then SIGKILLs; the init as PID 1
        // takes every process of the container down with it.
        let options = StopContainerOptionsBuilder::new().t(grace_secs(grace)).build();
        match self.docker.stop_container(&self.id, Some(options)).await {
            Err(e) if status_of(&e) != Some(304) => Err(engine(format!("stopping container {}", self.name))(e)),
            _ => self.wait().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_grace_rounds_up_to_whole_seconds() {
        assert_eq!(grace_secs(Duration::ZERO), 0);
        assert_eq!(grace_secs(Duration::from_millis(1)), 1);
        assert_eq!(grace_secs(Duration::from_secs(10)), 10);
    }
}
