//! A scripted runtime for tests of the logic above [`Runtime`] (the executor, the sync loop).
//!
//! Nothing is executed. Each start is recorded; how the "process" ends is decided by the first
//! [`Script`] whose pattern is part of its name or command, and a process no script matches
//! runs until it is stopped or [`FakeRuntime::finish`]ed. Tests await what they expect to
//! happen ([`FakeRuntime::wait_started`], [`FakeRuntime::wait_until`]) instead of sleeping: the
//! record is a `watch` channel, so every change wakes the waiters.
//!
//! Like Docker, it keeps container processes across "agent restarts": a new agent handed a clone
//! of the runtime [adopts](Runtime::adopt) the container processes of a task, running or not.
//! Images are always "present": [`Runtime::pull`] succeeds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::{ContainerSpec, Exit, ProcessSpec, Running, Runtime, RuntimeError, TaskOwner};

/// How a started process behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// It ends at once, this way.
    Exit(Exit),
    /// It runs until stopped or finished (what unmatched processes do).
    Hang,
    /// `start` fails with [`RuntimeError::Spawn`] carrying this message; nothing is recorded.
    FailToStart(String),
}

/// One start, as recorded by [`FakeRuntime`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedProcess {
    pub id: String,
    pub spec: ProcessSpec,
    /// `None` while it runs.
    pub exit: Option<Exit>,
    /// The grace of each `stop` call made on it, in order.
    pub stops: Vec<Duration>,
}

impl StartedProcess {
    /// Whether `pattern` is part of its name or its command.
    pub fn matches(&self, pattern: &str) -> bool {
        spec_matches(&self.spec, pattern)
    }
}

fn spec_matches(spec: &ProcessSpec, pattern: &str) -> bool {
    spec.name.contains(pattern) || spec.command.contains(pattern)
}

/// Cheap to clone; clones share the scripts and the record, so a test keeps one and hands
/// another to the code under test.
#[derive(Debug, Clone, Default)]
pub struct FakeRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    scripts: Mutex<Vec<(String, Script)>>,
    started: watch::Sender<Vec<StartedProcess>>,
    next_id: AtomicU64,
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// Processes whose name or command contains `pattern` behave as `script`. The first script
    /// added that matches wins; an empty pattern matches every process.
    pub fn script(&self, pattern: impl Into<String>, script: Script) -> &Self {
        self.inner.scripts.lock().unwrap_or_else(PoisonError::into_inner).push((pattern.into(), script));
        self
    }

    /// Every process started so far, in start order.
    pub fn started(&self) -> Vec<StartedProcess> {
        self.inner.started.borrow().clone()
    }

    /// Waits until a process whose name or command contains `pattern` has started (already
    /// started ones count) and returns the first such.
    pub async fn wait_started(&self, pattern: &str) -> StartedProcess {
        let mut found = None;
        self.wait_until(|started| {
            found = started.iter().find(|p| p.matches(pattern)).cloned();
            found.is_some()
        })
        .await;
        match found {
            Some(process) => process,
            // `wait_until` only returns once the predicate held, which set `found`.
            None => std::future::pending().await,
        }
    }

    /// Waits until `condition` holds for the record (checked now and after every change).
    pub async fn wait_until(&self, mut condition: impl FnMut(&[StartedProcess]) -> bool) {
        let mut record = self.inner.started.subscribe();
        // `wait_for` only fails once the sender is gone, and `self.inner` holds it.
        if record.wait_for(|started| condition(started)).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Ends every running process that matches `pattern` with `exit`; returns how many.
    pub fn finish(&self, pattern: &str, exit: Exit) -> usize {
        let mut finished = 0;
        self.inner.started.send_if_modified(|started| {
            for process in started.iter_mut().filter(|p| p.exit.is_none() && p.matches(pattern)) {
                process.exit = Some(exit);
                finished += 1;
            }
            finished > 0
        });
        finished
    }

    fn script_for(&self, spec: &ProcessSpec) -> Script {
        let scripts = self.inner.scripts.lock().unwrap_or_else(PoisonError::into_inner);
        scripts
            .iter()
            .find(|(pattern, _)| spec_matches(spec, pattern))
            .map_or(Script::Hang, |(_, script)| script.clone())
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, spec: ProcessSpec) -> Result<Box<dyn Running>, RuntimeError> {
        let exit = match self.script_for(&spec) {
            Script::Exit(exit) => Some(exit),
            Script::Hang => None,
            Script::FailToStart(message) => {
                return Err(RuntimeError::Spawn { name: spec.name, source: std::io::Error::other(message) });
            }
        };
        let id = format!("fake-{}", self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let mut index = 0;
        self.inner.started.send_modify(|started| {
            index = started.len();
            started.push(StartedProcess { id: id.clone(), spec, exit, stops: Vec::new() });
        });
        Ok(Box::new(FakeRunning { inner: Arc::clone(&self.inner), index, id }))
    }

    async fn pull(
        &self,
        container: &ContainerSpec,
        progress: &mpsc::UnboundedSender<String>,
    ) -> Result<(), RuntimeError> {
        let _ = progress.send(format!("using image {}", container.image));
        Ok(())
    }

    async fn adopt(&self, task: &TaskOwner) -> Result<Vec<(String, Box<dyn Running>)>, RuntimeError> {
        let started = self.started();
        let owned = started.iter().enumerate().filter_map(|(index, p)| {
            let container = p.spec.container.as_ref().filter(|c| c.owner == *task)?;
            let running: Box<dyn Running> =
                Box::new(FakeRunning { inner: Arc::clone(&self.inner), index, id: p.id.clone() });
            Some((container.process.clone(), running))
        });
        Ok(owned.collect())
    }
}

struct FakeRunning {
    inner: Arc<Inner>,
    /// Its place in the record, which only ever grows.
    index: usize,
    id: String,
}

#[async_trait]
impl Running for FakeRunning {
    fn id(&self) -> String {
        self.id.clone()
    }

    async fn wait(&mut self) -> Result<Exit, RuntimeError> {
        let mut record = self.inner.started.subscribe();
        let index = self.index;
        let mut exit = None;
        // Cancel-safe: it only reads the record. `wait_for` only fails once the sender is
        // gone, and `self.inner` holds it.
        if record
            .wait_for(|started| {
                exit = started.get(index).and_then(|p| p.exit);
                exit.is_some()
            })
            .await
            .is_err()
        {
            std::future::pending::<()>().await;
        }
        match exit {
            Some(exit) => Ok(exit),
            None => std::future::pending().await,
        }
    }

    async fn stop(&mut self, grace: Duration) -> Result<Exit, RuntimeError> {
        let mut exit = Exit::Signal(15);
        self.inner.started.send_modify(|started| {
            if let Some(process) = started.get_mut(self.index) {
                process.stops.push(grace);
                exit = *process.exit.get_or_insert(Exit::Signal(15));
            }
        });
        Ok(exit)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn spec(name: &str, command: &str) -> ProcessSpec {
        ProcessSpec {
            name: name.to_owned(),
            command: command.to_owned(),
            env: vec![("A".to_owned(), "1".to_owned())],
            cwd: PathBuf::from("/work"),
            stdout: PathBuf::from("/out/stdout.txt"),
            stderr: PathBuf::from("/out/stderr.txt"),
            container: None,
        }
    }

    #[tokio::test]
    async fn scripted_exit_by_name_or_command_and_first_script_wins() {
        let fake = FakeRuntime::new();
        fake.script("train", Script::Exit(Exit::Code(3)))
            .script("python", Script::Exit(Exit::Code(0)))
            .script("train", Script::Exit(Exit::Code(7)));

        let mut by_name = fake.start(spec("job/train", "python x.py")).await.unwrap();
        let mut by_command = fake.start(spec("job/eval", "python eval.py")).await.unwrap();
        assert_eq!(by_name.wait().await.unwrap(), Exit::Code(3));
        assert_eq!(by_command.wait().await.unwrap(), Exit::Code(0));
        // Waiting again gives the same answer.
        assert_eq!(by_name.wait().await.unwrap(), Exit::Code(3));

        let started = fake.started();
        assert_eq!(started.len(), 2);
        assert_eq!(started[0].spec, spec("job/train", "python x.py"));
        assert_eq!(started[0].id, by_name.id());
        assert_ne!(started[0].id, started[1].id);
        assert_eq!(started[1].exit, Some(Exit::Code(0)));
    }

    #[tokio::test]
    async fn unmatched_process_runs_until_stopped() {
        let fake = FakeRuntime::new();
        let mut running = fake.start(spec("setup", "sleep")).await.unwrap();
        // Still running: a wait that is polled and dropped does not end it.
        tokio::select! {
            biased;
            exit = running.wait() => panic!("ended by itself: {exit:?}"),
            () = std::future::ready(()) => {}
        }
        assert_eq!(fake.started()[0].exit, None);

        assert_eq!(running.stop(Duration::from_secs(5)).await.unwrap(), Exit::Signal(15));
        assert_eq!(running.wait().await.unwrap(), Exit::Signal(15));
        let recorded = &fake.started()[0];
        assert_eq!(recorded.exit, Some(Exit::Signal(15)));
        assert_eq!(recorded.stops, vec![Duration::from_secs(5)]);
    }

    #[tokio::test]
    async fn stop_after_exit_reports_the_exit() {
        let fake = FakeRuntime::new();
        fake.script("", Script::Exit(Exit::Code(1)));
        let mut running = fake.start(spec("a", "b")).await.unwrap();
        assert_eq!(running.stop(Duration::ZERO).await.unwrap(), Exit::Code(1));
        assert_eq!(fake.started()[0].stops, vec![Duration::ZERO]);
    }

    #[tokio::test]
    async fn wait_started_wakes_on_the_matching_start() {
        let fake = FakeRuntime::new();
        let waiter = tokio::spawn({
            let fake = fake.clone();
            async move { fake.wait_started("rank-1").await }
        });
        fake.start(spec("job/rank-0", "true")).await.unwrap();
        fake.start(spec("job/rank-1", "true")).await.unwrap();
        let started = waiter.await.unwrap();
        assert_eq!(started.spec.name, "job/rank-1");
        // Already started processes count too.
        assert_eq!(fake.wait_started("rank-0").await.spec.name, "job/rank-0");
    }

    #[tokio::test]
    async fn finish_ends_matching_running_processes() {
        let fake = FakeRuntime::new();
        let mut a = fake.start(spec("a", "python train.py")).await.unwrap();
        let mut b = fake.start(spec("b", "python eval.py")).await.unwrap();
        let waiter = tokio::spawn(async move { a.wait().await.unwrap() });

        assert_eq!(fake.finish("train", Exit::Code(4)), 1);
        assert_eq!(waiter.await.unwrap(), Exit::Code(4));
        // Finished processes are not finished again.
        assert_eq!(fake.finish("python", Exit::Code(0)), 1);
        assert_eq!(b.wait().await.unwrap(), Exit::Code(0));
        assert_eq!(fake.finish("python", Exit::Code(9)), 0);

        fake.wait_until(|started| started.iter().all(|p| p.exit.is_some())).await;
    }

    #[tokio::test]
    async fn fail_to_start_is_an_error_and_not_recorded() {
        let fake = FakeRuntime::new();
        fake.script("broken", Script::FailToStart("no bash".to_owned()));
        let err = fake.start(spec("broken", "x")).await.err().unwrap();
        assert!(matches!(err, RuntimeError::Spawn { ref name, .. } if name == "broken"), "{err:?}");
        assert!(fake.started().is_empty());
        assert_eq!(fake.name(), "fake");
    }
}
