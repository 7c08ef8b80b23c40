"""Helpers for the SDK end-to-end suite: the server process (`batchai server`
or `batchai dev`), node agents, the admin CLI, SDK clients bound to a server,
raw-HTTP helpers, LRO polling and waits on cluster and job states.

Nothing here sleeps to synchronise with the server: waits either read the
server's output (READY line), follow the server's own Retry-After, or poll a
resource's state through the SDK (nodes coming up, jobs running and ending,
which have no LRO to follow), and every wait is bounded by a deadline whose
only effect is to fail the test.
"""

import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from azure.mgmt.batchai import BatchAIManagementClient
from azure.mgmt.resource import ResourceManagementClient, SubscriptionClient
from msrest.authentication import BasicTokenAuthentication

from payloads import cntk_job, custom_job, quickstart_cluster, raw_job_body  # noqa: F401 (re-exported)

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
READY_PREFIX = "BATCHAI_READY "
BATCHAI_API = "2018-05-01"
RG_API = "2021-04-01"
PROVIDER = "providers/Microsoft.BatchAI"
READY_TIMEOUT_S = 120
LRO_DEADLINE_S = 120
# Nodes joining a cluster and jobs running: seconds here, the deadline only fails the test.
STATE_DEADLINE_S = 120
STATE_POLL_S = 0.25
# The longest a server holds an agent's sync; short, so an agent hears of work at once and
# stops quickly. Set for the server and the agent.
AGENT_ENV = {"BATCHAI_AGENT_MAX_WAIT_MS": "1000"}
# Built by scripts/build-images.sh, which .ci/run runs before the tests.
BUSYBOX = "batchai/busybox:latest"


def require_image(image):
    """Skips the test when Docker or `image` is missing here; under CI that is a failure."""
    try:
        present = subprocess.run(["docker", "image", "inspect", image], capture_output=True,
                                 timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        present = False
    if not present:
        message = f"needs Docker with {image} (scripts/build-images.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
TERMINAL_JOB_STATES = ("succeeded", "failed")


def binary_path():
    if os.environ.get("BATCHAI_BIN"):
        return os.path.abspath(os.environ["BATCHAI_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    if not os.path.isabs(target):
        target = os.path.join(REPO_ROOT, target)
    return os.path.join(target, "debug", "batchai")


def short(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- server


def _drain(proc, log, on_stdout_line=None):
    """Threads copying the process's stdout and stderr into `log` (so the pipes
    never fill); `on_stdout_line(line)` sees each stdout line, then None at EOF."""

    def drain_stdout(stream):
        for line in stream:
            log.write(line)
            if on_stdout_line:
                on_stdout_line(line)
        if on_stdout_line:
            on_stdout_line(None)

    def drain_stderr(stream):
        for line in stream:
            log.write(line)

    threads = [
        threading.Thread(target=drain_stdout, args=(proc.stdout,), daemon=True),
        threading.Thread(target=drain_stderr, args=(proc.stderr,), daemon=True),
    ]
    for t in threads:
        t.start()
    return threads


def _tail(path, n=60):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "<no log>"


def read_env_file(path):
    """`export NAME=value` lines (as dev.env and bootstrap.env hold) as a dict."""
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("export "):
                line = line[len("export "):]
            name, sep, value = line.partition("=")
            if sep:
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                    value = value[1:-1]
                env[name.strip()] = value
    return env



def _terminate(proc, grace):
    """SIGTERM, then SIGKILL if `proc` is still running after `grace` seconds."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

class ServerProcess:
    """One `batchai server` process, or `batchai dev` (the server with a local
    agent in the same process) with command="dev". Its stdout/stderr are
    drained into a log file by background threads so the pipes never fill."""

    def __init__(self, binary, data_dir, database_url=None, env=None, log_path=None, command="server"):
        self.binary = binary
        self.data_dir = str(data_dir)
        self.database_url = database_url
        self.extra_env = dict(env or {})
        self.command = command
        self.log_path = log_path or os.path.join(self.data_dir, f"{command}.log")
        self.proc = None
        self.info = None
        self._threads = []

    # The base arguments shared by `server` and `admin`.
    def _db_args(self):
        args = ["--data-dir", self.data_dir]
        if self.database_url:
            args += ["--database-url", self.database_url]
        return args

    def start(self):
        os.makedirs(self.data_dir, exist_ok=True)
        env = dict(os.environ)
        env.update(self.extra_env)
        cmd = [self.binary, self.command, *self._db_args(),
               "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--files-listen", "127.0.0.1:0"]
        log = open(self.log_path, "a", buffering=1)
        log.write(f"=== start {' '.join(cmd)} env={self.extra_env}\n")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=env)
        ready = queue.Queue()
        seen = []

        def on_line(line):
            if line is None:
                ready.put(None)  # EOF: the process closed stdout (usually: exited)
            elif not seen and line.startswith(READY_PREFIX):
                seen.append(True)
                ready.put(line[len(READY_PREFIX):].strip())

        self._threads = _drain(self.proc, log, on_line)
        try:
            payload = ready.get(timeout=READY_TIMEOUT_S)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"server printed no BATCHAI_READY line within {READY_TIMEOUT_S}s; "
                               f"log {self.log_path}:\n{self.log_tail()}")
        if payload is None:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"server exited (rc={self.proc.returncode}) before BATCHAI_READY; "
                               f"log {self.log_path}:\n{self.log_tail()}")
        self.info = json.loads(payload)
        for key in ("https_url", "http_url", "ca_cert", "tenant"):
            if key not in self.info:
                raise RuntimeError(f"BATCHAI_READY line lacks {key!r}: {payload}")
        return self

    @property
    def http_url(self):
        return self.info["http_url"].rstrip("/")

    @property
    def https_url(self):
        return self.info["https_url"].rstrip("/")

    @property
    def files_url(self):
        return self.info["files_url"].rstrip("/")

    @property
    def ca_cert(self):
        return self.info["ca_cert"]

    @property
    def tenant(self):
        return self.info["tenant"]

    def log_tail(self, n=60):
        return _tail(self.log_path, n)

    @property
    def dev_env(self):
        """What `batchai dev` wrote to DATA_DIR/dev.env, as a dict."""
        return read_env_file(os.path.join(self.data_dir, "dev.env"))

    def stop(self):
        _terminate(self.proc, grace=15)
        self._join()

    def kill9(self):
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._join()

    def _join(self):
        for t in self._threads:
            t.join(timeout=10)

    # ------------------------------------------------------------------ admin CLI

    def admin(self, *args, check=True):
        """Run `batchai admin` against this server's data dir / database.
        Returns the CompletedProcess; .json holds the last stdout line parsed
        as JSON when it is JSON."""
        cmd = [self.binary, "admin", *self._db_args(), *args]
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
        if check and cp.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {cp.returncode}:\n"
                               f"stdout: {cp.stdout}\nstderr: {cp.stderr}")
        cp.json = None
        lines = [line for line in cp.stdout.splitlines() if line.strip()]
        if lines:
            try:
                cp.json = json.loads(lines[-1])
            except ValueError:
                pass
        return cp

    def create_token(self, sub, name=None, expires_in=None):
        args = ["token", "create", "--subscription", sub]
        if name:
            args += ["--name", name]
        if expires_in is not None:
            args.append(f"--expires-in-secs={expires_in}")
        out = self.admin(*args).json
        assert out and out.get("token") and out.get("id"), out
        return out

    def create_sp(self, sub, name=None):
        args = ["sp", "create", "--subscription", sub]
        if name:
            args += ["--name", name]
        out = self.admin(*args).json
        assert out and out.get("client_id") and out.get("client_secret"), out
        return out

    def create_join_token(self, name=None):
        args = ["join-token", "create"]
        if name:
            args += ["--name", name]
        out = self.admin(*args).json
        assert out and out.get("join_token") and out.get("id"), out
        return out

    def create_storage_account(self, name=None):
        """A storage account on this server's Files endpoint: {name, key, connection_string}."""
        name = name or "acct" + uuid.uuid4().hex[:12]
        out = self.admin("storage-account", "create", name, "--files-url", self.files_url).json
        assert out and out.get("key") and out.get("connection_string"), out
        return out

    def new_account(self, base_url=None, verify=None):
        sub = str(uuid.uuid4())
        tok = self.create_token(sub, name=short("tok"))
        return Account(sub, tok["token"], base_url or self.http_url, token_id=tok["id"], verify=verify)


class AgentProcess:
    """One `batchai agent` process with its own data dir, joined to a server
    with a fresh join token. It prints no READY line: a test knows it serves
    once a cluster has its node (`wait_for_idle_nodes`)."""

    def __init__(self, binary, server, data_dir, env=None, over_https=True):
        self.binary = binary
        self.server = server
        self.data_dir = str(data_dir)
        self.extra_env = dict(env or {})
        self.over_https = over_https
        self.log_path = os.path.join(self.data_dir, "agent.log")
        self.proc = None
        self._threads = []

    def start(self):
        os.makedirs(self.data_dir, exist_ok=True)
        token = self.server.create_join_token(name=short("agent"))["join_token"]
        if self.over_https:
            url = ["--server", self.server.https_url, "--ca-cert", self.server.ca_cert]
        else:
            url = ["--server", self.server.http_url]
        cmd = [self.binary, "agent", "--data-dir", self.data_dir, *url, "--join-token", token]
        env = dict(os.environ)
        env.update(self.extra_env)
        log = open(self.log_path, "a", buffering=1)
        log.write(f"=== start {' '.join(cmd[:-1])} <join token> env={self.extra_env}\n")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=env)
        self._threads = _drain(self.proc, log)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=60):
        return _tail(self.log_path, n)

    def stop(self):
        # The agent stops its jobs' processes on SIGTERM before it exits: a longer grace.
        _terminate(self.proc, grace=30)
        for t in self._threads:
            t.join(timeout=10)


class Farm:
    """A server and the agents that run its jobs (none of its own for `batchai dev`,
    whose agent runs in the server process)."""

    def __init__(self, server, agents=()):
        self.server = server
        self.agents = list(agents)

    def diagnostics(self):
        out = [f"--- {self.server.command} log {self.server.log_path}:\n{self.server.log_tail(40)}"]
        for a in self.agents:
            state = "running" if a.alive() else f"exited rc={a.proc.returncode}"
            out.append(f"--- agent ({state}) log {a.log_path}:\n{a.log_tail(40)}")
        return "\n".join(out)

    def check_agents(self):
        for a in self.agents:
            if not a.alive():
                raise AssertionError(f"the agent exited (rc={a.proc.returncode}):\n{self.diagnostics()}")

    def stop(self):
        for a in self.agents:
            a.stop()
        self.server.stop()


# --------------------------------------------------------------------------- clients


def tune(config):
    """Poll every second when a server forgets Retry-After (the raw tests check
    that it sends one), never retry (a 5xx is a failure, not a slow retry) and
    give up on a hung request after 60 s rather than msrest's 100 s."""
    config.long_running_operation_timeout = 1
    config.retry_policy.retries = 0
    config.connection.timeout = 60
    return config


class Account:
    """A subscription with a bearer token and SDK clients bound to one base URL
    (`verify`: the CA bundle for an https one)."""

    def __init__(self, sub, token, base_url, token_id=None, verify=None):
        self.sub = sub
        self.token = token
        self.token_id = token_id
        self.base_url = base_url.rstrip("/")
        creds = BasicTokenAuthentication({"access_token": token})
        self.creds = creds
        self.batchai = BatchAIManagementClient(creds, sub, base_url=self.base_url)
        self.resources = ResourceManagementClient(creds, sub, base_url=self.base_url)
        tune(self.batchai.config)
        tune(self.resources.config)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"
        if verify is not None:
            self.batchai.config.connection.verify = verify
            self.resources.config.connection.verify = verify
            self.http.verify = verify

    def subscriptions_client(self):
        c = SubscriptionClient(self.creds, base_url=self.base_url)
        tune(c.config)
        return c

    # paths -----------------------------------------------------------------
    def rg_path(self, rg):
        return f"/subscriptions/{self.sub}/resourcegroups/{rg}"

    def ws_path(self, rg, ws):
        return f"/subscriptions/{self.sub}/resourceGroups/{rg}/{PROVIDER}/workspaces/{ws}"

    def url(self, path, api_version=BATCHAI_API):
        u = self.base_url + path
        if api_version is not None:
            u += ("&" if "?" in u else "?") + f"api-version={api_version}"
        return u

    # raw requests -------------------------------------------------------------
    def request(self, method, path, api_version=BATCHAI_API, **kw):
        kw.setdefault("timeout", 60)
        return self.http.request(method, self.url(path, api_version), **kw)

    # SDK shortcuts -------------------------------------------------------------
    def create_rg(self, name=None, location="eastus"):
        name = name or short("rg")
        self.resources.resource_groups.create_or_update(name, {"location": location})
        return name

    def create_workspace(self, rg=None, name=None, location="eastus"):
        rg = rg or self.create_rg()
        name = name or short("ws")
        wait(self.batchai.workspaces.create(rg, name, location))
        return rg, name

    def create_experiment(self, rg, ws, name=None):
        name = name or short("exp")
        wait(self.batchai.experiments.create(rg, ws, name))
        return name

    def create_cluster(self, rg, ws, name=None, params=None):
        name = name or short("cl")
        cluster = wait(self.batchai.clusters.create(rg, ws, name, params or quickstart_cluster()))
        return cluster


def wait(poller, timeout=LRO_DEADLINE_S):
    """`.result()` bounded by a deadline that only fails the test."""
    result = poller.result(timeout=timeout)
    assert poller.done(), f"LRO not finished after {timeout}s"
    return result


# --------------------------------------------------------------------------- assertions


def assert_arm_error(resp, status, code=None):
    """The response is an ARM error envelope with `status` (an int or a set)."""
    statuses = status if isinstance(status, (set, tuple, list)) else {status}
    assert resp.status_code in statuses, (resp.status_code, resp.text[:500])
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"error body is not JSON: {resp.text[:500]!r}")
    err = body.get("error")
    assert isinstance(err, dict), body
    assert isinstance(err.get("code"), str) and err["code"], body
    assert isinstance(err.get("message"), str) and err["message"], body
    if code is not None:
        assert err["code"] == code, body
    assert resp.headers.get("x-ms-request-id"), dict(resp.headers)
    return err


def assert_cloud_error(excinfo, status, code=None):
    """A msrestazure CloudError raised by the SDK carries status and code."""
    exc = excinfo.value
    assert exc.status_code == status, (exc.status_code, str(exc))
    assert exc.error is not None, f"no ARM error body: {exc}"
    assert exc.error.error, f"error.code missing: {exc}"
    assert exc.error.message, f"error.message missing: {exc}"
    if code is not None:
        assert exc.error.error == code, str(exc)
    return exc.error


# --------------------------------------------------------------------------- raw LRO


def rebase(url, base_url):
    """Point `url` at another server (same path and query)."""
    u, b = urlsplit(url), urlsplit(base_url)
    return urlunsplit((b.scheme, b.netloc, u.path, u.query, u.fragment))


def assert_lro_accepted(resp):
    """A 202 of an ARM LRO: absolute Azure-AsyncOperation and Location, integer
    Retry-After. Returns the Azure-AsyncOperation URL."""
    assert resp.status_code == 202, (resp.status_code, resp.text[:500])
    aso = resp.headers.get("Azure-AsyncOperation")
    loc = resp.headers.get("Location")
    for h in (aso, loc):
        assert h and urlsplit(h).scheme in ("http", "https") and urlsplit(h).netloc, dict(resp.headers)
    ra = resp.headers.get("Retry-After")
    assert ra is not None and ra.isdigit(), dict(resp.headers)
    return aso


def _retry_after(resp):
    ra = resp.headers.get("Retry-After", "1")
    return int(ra) if ra.isdigit() else 1


def poll_operations(session, urls, deadline_s=LRO_DEADLINE_S, terminal=("Succeeded", "Failed", "Canceled")):
    """Poll Azure-AsyncOperation URLs until each reports a terminal status,
    waiting what the server's Retry-After says between rounds. Returns
    {url: final body}. The deadline only fails the test."""
    pending = list(urls)
    done = {}
    end = time.monotonic() + deadline_s
    while pending:
        delays = []
        with ThreadPoolExecutor(max_workers=min(16, len(pending))) as ex:
            resps = list(ex.map(lambda u: session.get(u, timeout=60), pending))
        still = []
        for u, r in zip(pending, resps):
            assert r.status_code == 200, (u, r.status_code, r.text[:300])
            body = r.json()
            assert "status" in body, body
            if body["status"] in terminal:
                done[u] = body
            else:
                still.append(u)
                delays.append(_retry_after(r))
        pending = still
        if pending:
            if time.monotonic() > end:
                raise AssertionError(f"{len(pending)} operations not finished after {deadline_s}s: {pending[:3]}")
            time.sleep(max(delays) if delays else 1)
    return done


# --------------------------------------------------------------------------- nodes and jobs


def _describe_cluster(c):
    counts = c.node_state_counts
    errors = [(e.code, e.message) for e in (c.errors or [])]
    return (f"allocation_state={c.allocation_state} current_node_count={c.current_node_count} "
            f"idle={counts and counts.idle_node_count} running={counts and counts.running_node_count} "
            f"preparing={counts and counts.preparing_node_count} unusable={counts and counts.unusable_node_count} "
            f"leaving={counts and counts.leaving_node_count} errors={errors}")


def wait_for_idle_nodes(client, rg, ws, cluster, count=1, deadline_s=STATE_DEADLINE_S, farm=None):
    """Polls `clusters.get` until `count` nodes are idle; returns the cluster.
    The deadline (and a dead agent of `farm`) only fails the test."""
    end = time.monotonic() + deadline_s
    while True:
        c = client.clusters.get(rg, ws, cluster)
        if c.node_state_counts is not None and c.node_state_counts.idle_node_count == count:
            return c
        if farm is not None:
            farm.check_agents()
        if time.monotonic() > end:
            extra = f"\n{farm.diagnostics()}" if farm is not None else ""
            raise AssertionError(f"cluster {cluster}: {count} idle node(s) not reached after "
                                 f"{deadline_s}s: {_describe_cluster(c)}{extra}")
        time.sleep(STATE_POLL_S)


def wait_for_job(client, rg, ws, exp, job, states=TERMINAL_JOB_STATES, deadline_s=STATE_DEADLINE_S, farm=None):
    """Polls `jobs.get` until the job's execution_state is one of `states`;
    returns the job. The deadline (and a dead agent of `farm`) only fails the test."""
    end = time.monotonic() + deadline_s
    while True:
        j = client.jobs.get(rg, ws, exp, job)
        if j.execution_state in states:
            return j
        if farm is not None:
            farm.check_agents()
        if time.monotonic() > end:
            extra = f"\n{farm.diagnostics()}" if farm is not None else ""
            raise AssertionError(f"job {job} still {j.execution_state} after {deadline_s}s "
                                 f"(waiting for {states}){extra}")
        time.sleep(STATE_POLL_S)
