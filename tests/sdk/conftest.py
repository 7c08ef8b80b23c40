"""Fixtures for the SDK end-to-end suite.

Run: VENV=$(scripts/sdk-venv.sh) && "$VENV/bin/python" -m pytest tests/sdk -q

Environment:
  BATCHAI_BIN          the server binary (default ${CARGO_TARGET_DIR:-target}/debug/batchai)
  BATCHAI_TEST_PG_URL  a Postgres superuser URL; enables the postgres backend
                       (each server gets a fresh database named batchai_sdk_<uuid>)

Servers: `server` (shared, no agent: clusters stay `resizing` and jobs `queued`),
`server_factory` (private servers), `farm` (a server plus one `batchai agent`
process that runs jobs on this host, per module and backend) and `dev_server`
(`batchai dev`: server and agent in one process, on SQLite, writing dev.env).
"""

import os
import subprocess
import sys
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import helpers  # noqa: E402

PG_ENV = "BATCHAI_TEST_PG_URL"


def pytest_configure(config):
    config.addinivalue_line("markers", "restart: kills the server with SIGKILL and restarts it on the same store")
    config.addinivalue_line("markers", "slow: creates many resources (paging over 1,000+ jobs)")
    config.addinivalue_line("markers", "agent: runs jobs on a node agent (commands run on this host)")


class Backend:
    """A storage backend; `database_url()` gives a fresh, empty store each call
    (None for SQLite: the server then uses its data dir)."""

    def __init__(self, name, pg_url=None):
        self.name = name
        self.pg_url = pg_url
        self.created = []

    def database_url(self):
        if self.name == "sqlite":
            return None
        db = f"batchai_sdk_{uuid.uuid4().hex}"
        self._psql(f'CREATE DATABASE "{db}"')
        self.created.append(db)
        u = urlsplit(self.pg_url)
        return urlunsplit((u.scheme, u.netloc, "/" + db, u.query, u.fragment))

    def _psql(self, sql):
        cp = subprocess.run(["psql", self.pg_url, "-v", "ON_ERROR_STOP=1", "-c", sql],
                            capture_output=True, text=True, timeout=60)
        if cp.returncode != 0:
            raise RuntimeError(f"psql {sql!r} failed: {cp.stderr}")

    def cleanup(self):
        for db in self.created:
            try:
                self._psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            except RuntimeError as e:  # leave it; never fail teardown over it
                print(f"warning: {e}", file=sys.stderr)


@pytest.fixture(scope="session")
def batchai_bin():
    path = helpers.binary_path()
    if not os.access(path, os.X_OK):
        pytest.fail(f"server binary {path} not found: build it with `cargo build -p batchai` "
                    f"or set BATCHAI_BIN", pytrace=False)
    return path


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request):
    if request.param == "postgres":
        pg = os.environ.get(PG_ENV)
        if not pg:
            pytest.skip(f"postgres backend: set {PG_ENV} (a superuser URL such as "
                        f"postgres://postgres@127.0.0.1:5432/postgres) to run it")
        b = Backend("postgres", pg)
    else:
        b = Backend("sqlite")
    yield b
    b.cleanup()


_FRESH = object()


def start_server(batchai_bin, backend, data_dir, env=None, database_url=_FRESH, command="server"):
    if database_url is _FRESH:
        database_url = backend.database_url()
    srv = helpers.ServerProcess(batchai_bin, data_dir, database_url, env=env, command=command)
    try:
        srv.start()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    return srv


@pytest.fixture(scope="session")
def server(backend, batchai_bin, tmp_path_factory):
    """One server per backend, shared by the whole session. Tests isolate
    themselves by using a fresh subscription each (the `account` fixture)."""
    srv = start_server(batchai_bin, backend, tmp_path_factory.mktemp(f"server-{backend.name}"))
    yield srv
    srv.stop()


@pytest.fixture
def account(server):
    """A fresh subscription with an API token, and SDK clients over plain HTTP."""
    return server.new_account()


@pytest.fixture
def ws(account):
    """A resource group and a workspace in it: (rg, ws)."""
    return account.create_workspace()


@pytest.fixture
def cluster(account, ws):
    rg, w = ws
    return account.create_cluster(rg, w)


@pytest.fixture
def server_factory(backend, batchai_bin, tmp_path):
    """Start private servers: `start(env)` on a fresh store, `restart(srv)` on
    the store of an earlier one (same data dir and database, new ports)."""
    started = []

    class Factory:
        def start(self, env=None):
            srv = start_server(batchai_bin, backend, tmp_path / f"data-{len(started)}", env=env)
            started.append(srv)
            return srv

        def restart(self, old):
            srv = start_server(batchai_bin, backend, old.data_dir, env=old.extra_env,
                               database_url=old.database_url)
            started.append(srv)
            return srv

    yield Factory()
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def farm(backend, batchai_bin, tmp_path_factory):
    """A `batchai server` and one `batchai agent` (its own data dir, joined over
    HTTPS with a join token from `batchai admin`), per test module and backend.
    The agent serves every VM size, so it is the one node any cluster can get:
    tests sharing a farm share that node (a cluster keeps it until deleted)."""
    root = tmp_path_factory.mktemp(f"farm-{backend.name}")
    srv = start_server(batchai_bin, backend, root / "server", env=helpers.AGENT_ENV)
    agent = helpers.AgentProcess(batchai_bin, srv, root / "agent", env=helpers.AGENT_ENV)
    try:
        agent.start()
    except Exception:
        srv.stop()
        raise
    f = helpers.Farm(srv, [agent])
    yield f
    f.stop()


@pytest.fixture
def dev_factory(batchai_bin, tmp_path):
    """Start `batchai dev` servers: `start(env, database_url)`; SQLite unless a Postgres URL
    is given."""
    started = []

    def start(env=None, database_url=None):
        srv = start_server(batchai_bin, Backend("sqlite"), tmp_path / f"batchai-data-{len(started)}",
                           env={**helpers.AGENT_ENV, **(env or {})}, database_url=database_url, command="dev")
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def dev_server(batchai_bin, tmp_path):
    """`batchai dev` on a fresh data dir (SQLite): server, scheduler and a local
    agent in one process. Its `dev_env` holds what DATA_DIR/dev.env exports."""
    srv = start_server(batchai_bin, Backend("sqlite"), tmp_path / "batchai-data", env=helpers.AGENT_ENV,
                       command="dev")
    yield srv
    srv.stop()
