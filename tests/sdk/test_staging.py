"""An agent without the shared filesystem (`storage_mode = "staged"`): its storage root is its
own directory, not the server's. The CNTK quickstart (examples/quickstart.py, fast mode) runs
against a `batchai server` with such an agent: the data it uploads through the Files endpoint
reaches the node before the job starts, and the logs and the model the job writes reach the
server (listOutputFiles, downloads) during and after it."""

import os
import subprocess
import sys

import pytest

import helpers
from helpers import REPO_ROOT

pytestmark = pytest.mark.agent

QUICKSTART = os.path.join(REPO_ROOT, "examples", "quickstart.py")


def test_the_quickstart_runs_on_an_agent_that_stages_its_shares(server_factory, tmp_path):
    srv = server_factory.start(env=helpers.AGENT_ENV)
    account = srv.create_storage_account("quickstart")
    config = tmp_path / "agent.toml"
    # Host processes with the suite's Python (numpy), the quickstart's image run on the host.
    config.write_text('runtime = "process"\nstorage_mode = "staged"\n'
                      '[[image_map]]\npattern = "microsoft/cntk:*"\nimage = "host"\n')
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    agent_dir = tmp_path / "agent"
    agent = helpers.AgentProcess(srv.binary, srv, agent_dir,
                                 env={**helpers.AGENT_ENV, "BATCHAI_CONFIG": str(config), "PATH": path})
    agent.start()
    try:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BATCHAI_", "AAD_", "AZURE_", "STORAGE_"))
               and k not in ("REQUESTS_CA_BUNDLE", "CONVNET_FAST")}
        env.update(helpers.read_env_file(os.path.join(srv.data_dir, "bootstrap.env")))
        env["AZURE_STORAGE_CONNECTION_STRING"] = account["connection_string"]
        env["QUICKSTART_TIMEOUT_S"] = "300"
        cp = subprocess.run([sys.executable, QUICKSTART, "--fast"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600, stdin=subprocess.DEVNULL)
        out = f"rc={cp.returncode}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}\nagent log:\n{agent.log_tail(40)}"
        assert cp.returncode == 0, out
        assert "exit code: 0" in cp.stdout and "Final test accuracy" in cp.stdout, out

        # The node had its own copy of the share: the data came down, the outputs went up.
        local_share = agent_dir / "storage" / "quickstart" / "batchaiquickstart"
        assert (local_share / "mnistcntksample" / "Train-28x28_cntk_text.txt").is_file(), out
        server_share = os.path.join(srv.data_dir, "storage", "quickstart", "batchaiquickstart")
        models = [os.path.join(d, f) for d, _, files in os.walk(server_share) for f in files
                  if f == "ConvNet_MNIST.npz"]
        assert len(models) == 1, (models, out)
        job_dir = os.path.join(tmp_path, "quickstart-output", os.listdir(tmp_path / "quickstart-output")[0])
        got = set(os.listdir(job_dir))
        assert {"stdout.txt", "execution.log", "ConvNet_MNIST.npz", "ConvNet_MNIST.json"} <= got, got
        with open(os.path.join(job_dir, "ConvNet_MNIST.npz"), "rb") as a, open(models[0], "rb") as b:
            assert a.read() == b.read()
    finally:
        agent.stop()
