"""docker-compose.yml, run as an operator would: Postgres, server and agent containers from the
images scripts/build-images.sh builds without a registry (`farm`), then the SDK against the
published ports: a file uploaded through the Files endpoint is read by a job that the agent runs
in a container of the host's engine, and the job's output comes back through listOutputFiles
and the Files endpoint. A restart of the server container loses nothing. The `monitoring`
profile's Prometheus (from Debian's packages) scrapes the server and the agent and loads the
alert rules (its Grafana has no image without a registry).

Needs Docker, docker-compose (or `docker compose`) and the images batchai/{postgres,server,agent}
and batchai/busybox; without them the module is skipped, except under CI.
"""

import json
import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest
import requests
from azure.mgmt.batchai import models as bm
from azure.storage.file import FileService

from helpers import (BUSYBOX, READY_TIMEOUT_S, REPO_ROOT, STATE_POLL_S, TERMINAL_JOB_STATES, Account,
                     read_env_file, require_image, short, wait, wait_for_idle_nodes, wait_for_job)

pytestmark = pytest.mark.agent

IMAGES = ("batchai/postgres:latest", "batchai/server:latest", "batchai/agent:latest", BUSYBOX)
ACCOUNT = "composeacct"
SHARE = "data"


def compose_command():
    """`docker-compose` (v1, Debian's) or `docker compose` (v2), whichever is here."""
    for cmd in (["docker-compose"], ["docker", "compose"]):
        try:
            if subprocess.run(cmd + ["version"], capture_output=True, timeout=60).returncode == 0:
                return cmd
        except OSError:
            continue
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComposeFarm:
    """One compose project of docker-compose.yml, with its own name, ports and host directories."""

    def __init__(self, tmp):
        self.cmd = compose_command()
        self.project = f"batchai-test-{uuid.uuid4().hex[:8]}"
        self.dir = tmp
        self.port, self.files_port, self.prometheus_port = free_port(), free_port(), free_port()
        settings = {
            "BATCHAI_POSTGRES_PASSWORD": uuid.uuid4().hex,
            "BATCHAI_JOIN_TOKEN": f"bai_join_{uuid.uuid4().hex}",
            "BATCHAI_POSTGRES_IMAGE": "batchai/postgres:latest",
            "BATCHAI_SERVER_IMAGE": "batchai/server:latest",
            "BATCHAI_AGENT_IMAGE": "batchai/agent:latest",
            "BATCHAI_STORAGE_ROOT": os.path.join(tmp, "storage"),
            "BATCHAI_AGENT_DIR": os.path.join(tmp, "agent"),
            "BATCHAI_PORT": str(self.port),
            "BATCHAI_FILES_PORT": str(self.files_port),
            "BATCHAI_PROMETHEUS_IMAGE": "batchai/prometheus:latest",
            "BATCHAI_PROMETHEUS_PORT": str(self.prometheus_port),
        }
        # An env file of its own, so that a developer's .env beside the compose file is not read.
        self.env_file = os.path.join(tmp, "compose.env")
        with open(self.env_file, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in settings.items())
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHAI_")}

    def command(self, *args):
        return self.cmd + ["--project-name", self.project, "--project-directory", REPO_ROOT, "--env-file",
                           self.env_file, "-f", os.path.join(REPO_ROOT, "docker-compose.yml"), *args]

    def run(self, *args, check=True, timeout=300):
        cp = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and cp.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}"
                                 f"\n{self.diagnostics()}")
        return cp

    def exec(self, service, *command):
        return self.run("exec", "-T", service, *command).stdout

    def up(self):
        # Returns once the server is healthy (/readyz: database reachable, migrations current)
        # and the agent started: the agent waits for that health check (depends_on).
        self.run("up", "-d", "--no-build")

    def wait_ready(self):
        """Polls the server's /readyz on the published port until it answers 200 (after a
        restart); the deadline only fails the test."""
        end = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                if requests.get(f"{self.url}/readyz", verify=self.ca, timeout=10).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            assert time.monotonic() < end, f"the server is not ready after {READY_TIMEOUT_S}s\n{self.diagnostics()}"
            time.sleep(STATE_POLL_S)

    def check_agents(self):
        running = self.run("ps", "--services", "--filter", "status=running").stdout.split()
        assert "agent" in running, f"the agent container is not running\n{self.diagnostics()}"

    def diagnostics(self):
        cp = subprocess.run(self.command("logs", "--no-color", "--tail", "40"), capture_output=True, text=True,
                            timeout=120, env=self.env)
        return f"compose logs:\n{cp.stdout[-8000:]}{cp.stderr[-2000:]}"

    def down(self):
        self.run("down", "--volumes", "--remove-orphans", check=False)
        # The containers wrote these as root; so is CI.
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    if compose_command() is None:
        if os.environ.get("CI"):
            pytest.fail("needs docker-compose or docker compose")
        pytest.skip("needs docker-compose or docker compose")
    for image in IMAGES:
        require_image(image)
    farm = ComposeFarm(str(tmp_path_factory.mktemp("compose")))
    try:
        farm.up()
        bootstrap = os.path.join(farm.dir, "bootstrap.env")
        with open(bootstrap, "w") as f:
            f.write(farm.exec("server", "cat", "/var/lib/batchai/bootstrap.env"))
        env = read_env_file(bootstrap)
        farm.ca = os.path.join(farm.dir, "ca.pem")
        with open(farm.ca, "w") as f:
            f.write(farm.exec("server", "cat", "/var/lib/batchai/tls/ca.pem"))
        farm.url = f"https://localhost:{farm.port}"
        farm.account = Account(env["AZURE_SUBSCRIPTION_ID"], env["BATCHAI_TOKEN"], farm.url, verify=farm.ca)
        yield farm
    finally:
        farm.down()


def test_compose_farm_runs_a_job_on_a_share_and_survives_a_server_restart(compose):
    acct = compose.account
    bai = acct.batchai
    ready = requests.get(f"{compose.url}/readyz", verify=compose.ca, timeout=30)
    assert ready.status_code == 200, ready.text

    # A storage account of the server's (admin CLI in the server container), and a file
    # uploaded to one of its shares through the Files endpoint on the published port.
    storage = json.loads(compose.exec("server", "batchai", "admin", "storage-account", "create", ACCOUNT,
                                      "--files-url", f"https://localhost:{compose.files_port}"))
    key = storage["key"]
    session = requests.Session()
    session.verify = compose.ca
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, when set, beats session.verify
    files = FileService(connection_string=storage["connection_string"], request_session=session)
    files.create_share(SHARE)
    files.create_file_from_bytes(SHARE, None, "input.txt", b"forty-two\n")

    rg, ws = acct.create_workspace()
    exp = acct.create_experiment(rg, ws)
    cluster = short("nc6")
    wait(bai.clusters.create(rg, ws, cluster, bm.ClusterCreateParameters(
        vm_size="STANDARD_NC6",
        scale_settings=bm.ScaleSettings(manual=bm.ManualScaleSettings(target_node_count=1)),
        node_setup=bm.NodeSetup(mount_volumes=bm.MountVolumes(azure_file_shares=[
            bm.AzureFileShareReference(
                account_name=ACCOUNT, azure_file_url=f"https://{ACCOUNT}.file.core.windows.net/{SHARE}",
                credentials=bm.AzureStorageCredentialsInfo(account_key=key), relative_mount_path="afs")])),
        user_account_settings=bm.UserAccountSettings(admin_user_name="demoUser", admin_user_password="Pa55w0rd!"),
    )))
    c = wait_for_idle_nodes(bai, rg, ws, cluster, 1, farm=compose)
    assert c.current_node_count == 1

    job = short("job")
    wait(bai.jobs.create(rg, ws, exp, job, bm.JobCreateParameters(
        cluster=bm.ResourceId(id=c.id),
        node_count=1,
        container_settings=bm.ContainerSettings(image_source_registry=bm.ImageSourceRegistry(image=BUSYBOX)),
        std_out_err_path_prefix="$AZ_BATCHAI_MOUNT_ROOT/afs",
        output_directories=[bm.OutputDirectory(id="MODEL", path_prefix="$AZ_BATCHAI_MOUNT_ROOT/afs")],
        custom_toolkit_settings=bm.CustomToolkitSettings(
            command_line="cat $AZ_BATCHAI_MOUNT_ROOT/afs/input.txt; "
                         "echo trained > $AZ_BATCHAI_OUTPUT_MODEL/model.txt; "
                         "echo done > $AZ_BATCHAI_MOUNT_ROOT/afs/result.txt"),
    )))
    done = wait_for_job(bai, rg, ws, exp, job, states=TERMINAL_JOB_STATES, farm=compose)
    assert done.execution_state == "succeeded", (done.execution_info, compose.diagnostics())

    # The output through listOutputFiles (download links on the published port) ...
    logs = {f.name: f for f in bai.jobs.list_output_files(
        rg, ws, exp, job, bm.JobsListOutputFilesOptions(outputdirectoryid="stdouterr"))}
    stdout = requests.get(logs["stdout.txt"].download_url, verify=compose.ca, timeout=60)
    assert stdout.status_code == 200 and stdout.text == "forty-two\n", (stdout.status_code, stdout.text)
    model = {f.name: f for f in bai.jobs.list_output_files(
        rg, ws, exp, job, bm.JobsListOutputFilesOptions(outputdirectoryid="MODEL"))}
    assert requests.get(model["model.txt"].download_url, verify=compose.ca, timeout=60).text == "trained\n"
    # ... and through the Files endpoint: the job wrote into the share the file was uploaded to.
    assert files.get_file_to_bytes(SHARE, None, "result.txt").content == b"done\n"

    # The server container restarts (SIGTERM, then the same volumes): the job and its output stay.
    compose.run("restart", "server")
    compose.wait_ready()
    again = bai.jobs.get(rg, ws, exp, job)
    assert again.execution_state == "succeeded"
    stdout = requests.get(logs["stdout.txt"].download_url, verify=compose.ca, timeout=60)
    assert stdout.text == "forty-two\n"

    metrics = requests.get(f"{compose.url}/metrics", verify=compose.ca, timeout=30).text
    succeeded = [line for line in metrics.splitlines()
                 if line.startswith("batchai_jobs{") and 'state="succeeded"' in line]
    assert [float(line.rsplit(" ", 1)[1]) for line in succeeded] == [1.0], succeeded
    wait(bai.clusters.delete(rg, ws, cluster))


def test_compose_prometheus_scrapes_the_server_and_the_agent(compose):
    require_image("batchai/prometheus:latest")
    # Named, a service of a profile starts without the profile (depends_on: server, up already).
    compose.run("up", "-d", "--no-build", "prometheus")
    api = f"http://127.0.0.1:{compose.prometheus_port}/api/v1"
    # Scrapes every 15 s: the deadline only fails the test.
    end = time.monotonic() + 120
    health = {}
    while True:
        try:
            targets = requests.get(f"{api}/targets", timeout=10).json()["data"]["activeTargets"]
            health = {t["labels"]["job"]: (t["health"], t.get("lastError")) for t in targets}
        except (requests.ConnectionError, ValueError, KeyError):
            pass
        if health.get("batchai-server", ("",))[0] == "up" and health.get("batchai-agent", ("",))[0] == "up":
            break
        assert time.monotonic() < end, f"targets not up: {health}\n{compose.diagnostics()}"
        time.sleep(STATE_POLL_S * 4)
    rules = requests.get(f"{api}/rules", timeout=10).json()["data"]["groups"]
    names = {r["name"] for g in rules for r in g["rules"]}
    assert {"BatchAIServerDown", "BatchAINodeUnusable", "BatchAIQueueStalled"} <= names, names
    # The server's series, with the TLS the compose file sets up (the server's generated CA).
    result = requests.get(f"{api}/query", params={"query": 'batchai_db_connections_max{job="batchai-server"}'},
                          timeout=10).json()["data"]["result"]
    assert result and float(result[0]["value"][1]) >= 1, result
