//! The process runtime against real `bash` processes.
//!
//! Tests hand-shake with the processes through FIFOs (the process writes a line when it has
//! reached a point, or blocks reading until the test lets it go), so nothing depends on how
//! fast anything runs. Timeouts only turn a hang into a failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use batchai_agent::runtime::{ContainerSpec, Exit, ProcessRuntime, ProcessSpec, Runtime, RuntimeError, TaskOwner};
use nix::sys::stat::Mode;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;

/// Only a guard against hangs; every wait below ends as soon as the event happens.
const GUARD: Duration = Duration::from_secs(60);

fn spec(dir: &Path, command: &str) -> ProcessSpec {
    ProcessSpec {
        name: "test".to_owned(),
        command: command.to_owned(),
        env: Vec::new(),
        cwd: dir.to_owned(),
        stdout: dir.join("stdout.txt"),
        stderr: dir.join("stderr.txt"),
        container: None,
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// A FIFO the process writes lines to; the test reads them.
struct Signals {
    path: PathBuf,
    lines: BufReader<pipe::Receiver>,
}

impl Signals {
    fn new(dir: &Path) -> Self {
        let path = dir.join("signals.fifo");
        nix::unistd::mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
        // Read-write, so opening does not wait for a writer and no EOF is seen between writers.
        let receiver = pipe::OpenOptions::new().read_write(true).open_receiver(&path).unwrap();
        Self { path, lines: BufReader::new(receiver) }
    }

    async fn next(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(GUARD, self.lines.read_line(&mut line))
            .await
            .expect("the process did not signal in time")
            .unwrap();
        line.trim_end().to_owned()
    }
}

/// `stop` returns only once nothing of the group runs: `pid` is gone, or a zombie that its new
/// parent (init) has not reaped yet.
fn assert_not_running(pid: i32) {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
        assert!(matches!(state, Some('Z' | 'X')), "process {pid} still runs: {stat}");
    }
}

async fn wait(running: &mut Box<dyn batchai_agent::runtime::Running>) -> Exit {
    tokio::time::timeout(GUARD, running.wait()).await.expect("the process did not exit").unwrap()
}

#[tokio::test]
async fn exit_code_is_propagated() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = ProcessRuntime::new().start(spec(dir.path(), "exit 3")).await.unwrap();
    assert!(running.id().parse::<u32>().is_ok(), "id is the pid: {}", running.id());
    assert_eq!(wait(&mut running).await, Exit::Code(3));
    // Waiting again returns the same exit.
    assert_eq!(wait(&mut running).await, Exit::Code(3));
}

#[tokio::test]
async fn stdout_and_stderr_are_appended_to_their_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stdout.txt"), "earlier\n").unwrap();
    let mut running = ProcessRuntime::new().start(spec(dir.path(), "echo out; echo err >&2")).await.unwrap();
    assert_eq!(wait(&mut running).await, Exit::Code(0));
    assert_eq!(read(&dir.path().join("stdout.txt")), "earlier\nout\n");
    assert_eq!(read(&dir.path().join("stderr.txt")), "err\n");
}

#[tokio::test]
async fn env_is_added_to_the_agent_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), r#"echo "$BATCHAI_TEST_VAR"; echo "${PATH:+inherited}""#);
    spec.env = vec![("BATCHAI_TEST_VAR".to_owned(), "hello world".to_owned())];
    let mut running = ProcessRuntime::new().start(spec).await.unwrap();
    assert_eq!(wait(&mut running).await, Exit::Code(0));
    assert_eq!(read(&dir.path().join("stdout.txt")), "hello world\ninherited\n");
}

#[tokio::test]
async fn cwd_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut spec = spec(dir.path(), "pwd -P");
    spec.cwd = work.clone();
    let mut running = ProcessRuntime::new().start(spec).await.unwrap();
    assert_eq!(wait(&mut running).await, Exit::Code(0));
    let printed = read(&dir.path().join("stdout.txt"));
    assert_eq!(Path::new(printed.trim_end()), work.canonicalize().unwrap());
}

#[tokio::test]
async fn output_is_visible_while_the_process_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut signals = Signals::new(dir.path());
    let gate = dir.path().join("gate.fifo");
    nix::unistd::mkfifo(&gate, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    // Opened read-write so it does not wait for the process to open its end.
    let mut gate_writer = pipe::OpenOptions::new().read_write(true).open_sender(&gate).unwrap();

    let mut spec = spec(dir.path(), r#"echo first; echo ready > "$SIGNALS"; read -r _ < "$GATE"; echo second"#);
    spec.env = vec![
        ("SIGNALS".to_owned(), signals.path.display().to_string()),
        ("GATE".to_owned(), gate.display().to_string()),
    ];
    let mut running = ProcessRuntime::new().start(spec).await.unwrap();
    assert_eq!(signals.next().await, "ready");

    // The process is blocked on the gate, and its first line is already in the file.
    assert_eq!(read(&dir.path().join("stdout.txt")), "first\n");
    // A wait that is given up on (as in a `select!`) leaves the handle usable.
    tokio::select! {
        biased;
        exit = running.wait() => panic!("exited while blocked: {exit:?}"),
        () = std::future::ready(()) => {}
    }

    gate_writer.write_all(b"go\n").await.unwrap();
    assert_eq!(wait(&mut running).await, Exit::Code(0));
    assert_eq!(read(&dir.path().join("stdout.txt")), "first\nsecond\n");
}

#[tokio::test]
async fn stop_ends_a_process_with_sigterm_within_grace() {
    let dir = tempfile::tempdir().unwrap();
    let mut signals = Signals::new(dir.path());
    let mut spec = spec(dir.path(), r#"echo ready > "$SIGNALS"; sleep 1000"#);
    spec.env = vec![("SIGNALS".to_owned(), signals.path.display().to_string())];
    let mut running = ProcessRuntime::new().start(spec).await.unwrap();
    assert_eq!(signals.next().await, "ready");

    let exit = tokio::time::timeout(GUARD, running.stop(GUARD / 2)).await.unwrap().unwrap();
    assert_eq!(exit, Exit::Signal(15));
    assert_eq!(exit.code(), None);
}

#[tokio::test]
async fn stop_kills_a_process_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut signals = Signals::new(dir.path());
    // The trap is set before `ready`, so the SIGTERM cannot arrive before it.
    let mut spec = spec(dir.path(), r#"trap '' TERM; echo ready > "$SIGNALS"; sleep 1000"#);
    spec.env = vec![("SIGNALS".to_owned(), signals.path.display().to_string())];
    let mut running = ProcessRuntime::new().start(spec).await.unwrap();
    assert_eq!(signals.next().await, "ready");

    let exit = tokio::time::timeout(GUARD, running.stop(Duration::from_millis(100))).await.unwrap().unwrap();
    assert_eq!(exit, Exit::Signal(9));
    assert_eq!(wait(&mut running).await, Exit::Signal(9));
}

#[tokio::test]
async fn stop_kills_the_children_of_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let mut signals = Signals::new(dir.path());
    let mut spec = spec(dir.path(), r#"sleep 1000 & echo $! > child.pid; echo ready > "$SIGNALS"; wait"#);
    spec.env = vec![("SIGNALS".to_owned(), signals.path.display().to_string())];
    let mut running = ProcessRuntime::new().start(spec).await.unwrap();
    assert_eq!(signals.next().await, "ready");
    let child: i32 = read(&dir.path().join("child.pid")).trim().parse().unwrap();

    // The child honours SIGTERM, so stop returns long before the grace is up.
    let exit = tokio::time::timeout(GUARD, running.stop(GUARD / 2)).await.unwrap().unwrap();
    assert_eq!(exit, Exit::Signal(15));
    assert_not_running(child);
}

#[tokio::test]
async fn stop_kills_children_that_ignore_sigterm_after_the_shell_has_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut signals = Signals::new(dir.path());
    // The shell dies of the SIGTERM; the child it leaves behind ignores it.
    let mut spec = spec(
        dir.path(),
        r#"( trap '' TERM; echo $BASHPID > child.pid; echo ready > "$SIGNALS"; exec sleep 1000 ) & wait"#,
    );
    spec.env = vec![("SIGNALS".to_owned(), signals.path.display().to_string())];
    let mut running = ProcessRuntime::new().start(spec).await.unwrap();
    assert_eq!(signals.next().await, "ready");
    let child: i32 = read(&dir.path().join("child.pid")).trim().parse().unwrap();

    let exit = tokio::time::timeout(GUARD, running.stop(Duration::from_millis(100))).await.unwrap().unwrap();
    assert_eq!(exit, Exit::Signal(15));
    assert_not_running(child);
}

#[tokio::test]
async fn stop_after_exit_returns_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mut running = ProcessRuntime::new().start(spec(dir.path(), "exit 0")).await.unwrap();
    assert_eq!(wait(&mut running).await, Exit::Code(0));
    let exit = tokio::time::timeout(GUARD, running.stop(Duration::from_secs(1))).await.unwrap().unwrap();
    assert_eq!(exit, Exit::Code(0));
    assert!(exit.success());
}

#[tokio::test]
async fn container_spec_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), "true");
    spec.container = Some(ContainerSpec {
        image: "ubuntu:22.04".to_owned(),
        gpus: vec!["GPU-1234".to_owned()],
        mounts: vec![(dir.path().to_owned(), PathBuf::from("/mnt"))],
        shm_size: Some("8g".to_owned()),
        registry: None,
        owner: TaskOwner { node: "n".to_owned(), job: "j".to_owned(), epoch: 1 },
        process: "main".to_owned(),
    });
    let runtime = ProcessRuntime::new();
    assert_eq!(runtime.name(), "process");
    let err = runtime.start(spec).await.err().expect("a container must be refused");
    assert!(matches!(err, RuntimeError::Unsupported(_)), "{err:?}");
    // Refused before anything was touched.
    assert!(!dir.path().join("stdout.txt").exists());
}

#[tokio::test]
async fn missing_working_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), "true");
    spec.cwd = dir.path().join("missing");
    let err = ProcessRuntime::new().start(spec).await.err().expect("a missing cwd must be refused");
    assert!(matches!(err, RuntimeError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing"), "{err}");
}
