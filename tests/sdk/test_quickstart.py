"""examples/quickstart.py, the Batch AI CNTK quickstart, run as a new user runs it: against
`batchai dev` with nothing but the variables of its dev.env (service principal over HTTPS, CA
through REQUESTS_CA_BUNDLE, the storage account's connection string). It uploads MNIST through
the Files endpoint, trains ConvNet_MNIST.py (fast mode) as a CNTK job in the quickstart's image,
and downloads the logs and the model. Once on SQLite with host processes (the dev image map runs
the CNTK image on the host when there is no Docker), once on Postgres in Docker."""

import os
import subprocess
import sys

import pytest
import requests
from azure.storage.file import FileService

from conftest import PG_ENV, Backend
from helpers import REPO_ROOT, require_image

pytestmark = pytest.mark.agent

QUICKSTART = os.path.join(REPO_ROOT, "examples", "quickstart.py")
PYTHON_IMAGE = "batchai/python:latest"
CNTK_IMAGE = "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0"
# dev.env's variables; nothing else of ours may leak into the script's environment.
DEV_ENV_KEYS = {"BATCHAI_URL", "BATCHAI_CA_CERT", "REQUESTS_CA_BUNDLE", "AZURE_SUBSCRIPTION_ID", "AAD_TENANT",
                "AAD_CLIENT_ID", "AAD_SECRET", "BATCHAI_AAD_AUTHORITY", "BATCHAI_TOKEN",
                "AZURE_STORAGE_CONNECTION_STRING", "STORAGE_ACCOUNT_NAME", "STORAGE_ACCOUNT_KEY", "BATCHAI_FILES_URL",
                "BATCHAI_METRICS_URL", "BATCHAI_AGENT_METRICS_URL"}


def run_quickstart(dev, cwd):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BATCHAI_", "AAD_", "AZURE_", "STORAGE_"))
           and k not in ("REQUESTS_CA_BUNDLE", "OAUTHLIB_INSECURE_TRANSPORT", "CONVNET_FAST")}
    env.update(dev.dev_env)
    env["QUICKSTART_TIMEOUT_S"] = "300"
    cp = subprocess.run([sys.executable, QUICKSTART, "--fast"], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=600, stdin=subprocess.DEVNULL)
    out = f"rc={cp.returncode}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}\n{dev.command} log:\n{dev.log_tail(40)}"
    return cp, out


def check_trained(dev, cwd, cp, out):
    assert cp.returncode == 0, out
    for f in ("Train-28x28_cntk_text.txt", "Test-28x28_cntk_text.txt", "ConvNet_MNIST.py"):
        assert f"uploaded {f}" in cp.stdout, out
    # Uploaded through the Files endpoint into the share the cluster mounts.
    share = os.path.join(dev.data_dir, "storage", dev.dev_env["STORAGE_ACCOUNT_NAME"], "batchaiquickstart")
    assert os.path.getsize(os.path.join(share, "mnistcntksample", "Train-28x28_cntk_text.txt")) > 10_000_000, out
    assert "exit code: 0" in cp.stdout and "Final test accuracy" in cp.stdout, out
    jobs = os.listdir(os.path.join(cwd, "quickstart-output"))
    assert len(jobs) == 1, jobs
    got = set(os.listdir(os.path.join(cwd, "quickstart-output", jobs[0])))
    assert {"stdout.txt", "stderr.txt", "execution.log", "ConvNet_MNIST.npz", "ConvNet_MNIST.json"} <= got, got
    # What the job wrote is on the share: the Files API serves the same model file.
    model = [os.path.join(d, f) for d, _, files in os.walk(share) for f in files if f == "ConvNet_MNIST.npz"]
    assert len(model) == 1, model
    directory, name = os.path.split(os.path.relpath(model[0], share))
    files = FileService(connection_string=dev.dev_env["AZURE_STORAGE_CONNECTION_STRING"])
    with open(os.path.join(cwd, "quickstart-output", jobs[0], "ConvNet_MNIST.npz"), "rb") as f:
        assert files.get_file_to_bytes("batchaiquickstart", directory, name).content == f.read()
    with open(os.path.join(cwd, "quickstart-output", jobs[0], "execution.log")) as f:
        return f.read()


def test_quickstart_trains_on_sqlite_with_host_processes(dev_factory, tmp_path):
    # The job runs `python` on this machine: the suite's, which has numpy.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    dev = dev_factory(env={"BATCHAI_RUNTIME": "process", "PATH": path})
    assert DEV_ENV_KEYS <= set(dev.dev_env), sorted(dev.dev_env)
    cp, out = run_quickstart(dev, tmp_path)
    log = check_trained(dev, tmp_path, cp, out)
    assert f"image {CNTK_IMAGE} runs on the host" in log, log
    # dev.env points Prometheus (or a curious user) at the server's metrics.
    metrics = requests.get(dev.dev_env["BATCHAI_METRICS_URL"], verify=dev.ca_cert, timeout=30)
    assert metrics.status_code == 200, metrics.text
    assert 'batchai_jobs{priority="normal",state="succeeded"} 1' in metrics.text, metrics.text
    # ... and at the in-process agent's: the job ran there and is done.
    agent = requests.get(dev.dev_env["BATCHAI_AGENT_METRICS_URL"], timeout=30)
    assert agent.status_code == 200, agent.text
    assert "\nbatchai_agent_running_jobs 0\n" in agent.text, agent.text
    assert "\nbatchai_agent_process_start_duration_seconds_count" in agent.text, agent.text


def test_quickstart_trains_in_docker_on_postgres(dev_factory, tmp_path):
    pg = os.environ.get(PG_ENV)
    if not pg:
        pytest.skip(f"set {PG_ENV} to run the quickstart on Postgres")
    require_image(PYTHON_IMAGE)
    backend = Backend("postgres", pg)
    dev = None
    try:
        dev = dev_factory(database_url=backend.database_url())
        cp, out = run_quickstart(dev, tmp_path)
        log = check_trained(dev, tmp_path, cp, out)
        assert f"image {CNTK_IMAGE} is mapped to {PYTHON_IMAGE} on this node" in log, log
        # Run again: the resources are reused, the data uploaded anew, a new job trained.
        cp, out = run_quickstart(dev, tmp_path)
        assert cp.returncode == 0 and "cluster nc6 exists" in cp.stdout, out
        assert len(os.listdir(tmp_path / "quickstart-output")) == 2, out
    finally:
        if dev:
            dev.stop()
        backend.cleanup()
