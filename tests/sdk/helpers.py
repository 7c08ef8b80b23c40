"""Helpers for the SDK end-to-end suite: the server process, the admin CLI,
SDK clients bound to a server, raw-HTTP helpers and LRO polling.

Nothing here sleeps to synchronise with the server: waits either read the
server's output (READY line) or follow the server's own Retry-After, and every
wait is bounded by a deadline whose only effect is to fail the test.
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


class ServerProcess:
    """One `batchai server` process. Its stdout/stderr are drained into a log
    file by background threads so the pipes never fill."""

    def __init__(self, binary, data_dir, database_url=None, env=None, log_path=None):
        self.binary = binary
        self.data_dir = str(data_dir)
        self.database_url = database_url
        self.extra_env = dict(env or {})
        self.log_path = log_path or os.path.join(self.data_dir, "server.log")
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
        cmd = [self.binary, "server", *self._db_args(),
               "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
        log = open(self.log_path, "a", buffering=1)
        log.write(f"=== start {' '.join(cmd)} env={self.extra_env}\n")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=env)
        ready = queue.Queue()

        def drain_stdout(stream):
            seen = False
            for line in stream:
                log.write(line)
                if not seen and line.startswith(READY_PREFIX):
                    seen = True
                    ready.put(line[len(READY_PREFIX):].strip())
            ready.put(None)  # EOF: the process closed stdout (usually: exited)

        def drain_stderr(stream):
            for line in stream:
                log.write(line)

        self._threads = [
            threading.Thread(target=drain_stdout, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=drain_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for t in self._threads:
            t.start()
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
    def ca_cert(self):
        return self.info["ca_cert"]

    @property
    def tenant(self):
        return self.info["tenant"]

    def log_tail(self, n=60):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return "<no log>"

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
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

    def new_account(self, base_url=None):
        sub = str(uuid.uuid4())
        tok = self.create_token(sub, name=short("tok"))
        return Account(sub, tok["token"], base_url or self.http_url, token_id=tok["id"])


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
    """A subscription with a bearer token and SDK clients bound to one base URL."""

    def __init__(self, sub, token, base_url, token_id=None):
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
