"""examples/quickstart.py, run as a new user runs it: against `batchai dev`
with nothing but the variables of its dev.env (service principal over HTTPS,
CA through REQUESTS_CA_BUNDLE). Run twice: a re-run reuses the resources."""

import glob
import os
import subprocess
import sys

import pytest

from helpers import BUSYBOX, REPO_ROOT, require_image

pytestmark = pytest.mark.agent

QUICKSTART = os.path.join(REPO_ROOT, "examples", "quickstart.py")
# dev.env's variables; nothing else of ours may leak into the script's environment.
DEV_ENV_KEYS = {"BATCHAI_URL", "BATCHAI_CA_CERT", "REQUESTS_CA_BUNDLE", "AZURE_SUBSCRIPTION_ID", "AAD_TENANT",
                "AAD_CLIENT_ID", "AAD_SECRET", "BATCHAI_AAD_AUTHORITY", "BATCHAI_TOKEN"}


def run_quickstart(env, cwd, *args):
    cp = subprocess.run([sys.executable, QUICKSTART, *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300, stdin=subprocess.DEVNULL)
    return cp


def quickstart_env(dev_server):
    dev = dev_server.dev_env
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BATCHAI_", "AAD_", "AZURE_")) and k not in ("REQUESTS_CA_BUNDLE",
                                                                           "OAUTHLIB_INSECURE_TRANSPORT")}
    env.update(dev)
    env["QUICKSTART_TIMEOUT_S"] = "120"
    return env


def test_quickstart_runs_a_job(dev_server, tmp_path):
    dev = dev_server.dev_env
    assert DEV_ENV_KEYS <= set(dev), sorted(dev)
    assert dev["BATCHAI_URL"].rstrip("/") == dev_server.https_url
    assert dev["REQUESTS_CA_BUNDLE"] == dev["BATCHAI_CA_CERT"] == dev_server.ca_cert
    assert dev["BATCHAI_AAD_AUTHORITY"].startswith("https://") and dev["BATCHAI_AAD_AUTHORITY"].endswith("/adfs")
    env = quickstart_env(dev_server)

    for attempt in (1, 2):
        cp = run_quickstart(env, tmp_path)
        out = f"run {attempt}: rc={cp.returncode}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}\n" \
              f"{dev_server.command} log:\n{dev_server.log_tail(40)}"
        assert cp.returncode == 0, out
        assert "exit code: 0" in cp.stdout, out
        assert "stdout.txt" in cp.stdout, out
        # The job's own stdout, downloaded through its link and printed.
        assert "----- stdout.txt -----\nhello from batchai\n" in cp.stdout, out
        assert ("cluster nc6 exists" in cp.stdout) == (attempt == 2), out  # reused on the re-run


def test_quickstart_runs_a_job_in_a_container(dev_server, tmp_path):
    require_image(BUSYBOX)
    cp = run_quickstart(quickstart_env(dev_server), tmp_path, "--image", BUSYBOX)
    out = f"rc={cp.returncode}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}\n" \
          f"{dev_server.command} log:\n{dev_server.log_tail(40)}"
    assert cp.returncode == 0, out
    assert f"in image {BUSYBOX}" in cp.stdout, out
    assert "exit code: 0" in cp.stdout, out
    assert "----- stdout.txt -----\nhello from batchai\non " in cp.stdout, out
    # The agent ran it in Docker: its execution log says which image it used.
    logs = glob.glob(str(tmp_path / "batchai-data" / "storage" / "**" / "execution.log"), recursive=True)
    assert any(f"using image {BUSYBOX}, present on the node" in open(p).read() for p in logs), logs
