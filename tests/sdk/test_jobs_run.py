"""Jobs that run: a `batchai server` with one `batchai agent` (the `farm`
fixture), driven through azure-mgmt-batchai 2.0.0 over HTTPS. The agent's
process runtime runs each command line with bash on this host; the cluster's
Azure file share lives under the server's storage root, where the output
listings and the signed download links read it (batchai-api.md §5, §7.2).

All tests of a backend share one cluster (and the agent's single node); each
test ends its own jobs, and the module deletes the cluster at the end so the
node is free for the next farm."""

import os
import re
import shutil
import subprocess
import sys
import time

import numpy
import pytest
import requests
from azure.mgmt.batchai import models as bm

from helpers import (BUSYBOX, REPO_ROOT, STATE_DEADLINE_S, STATE_POLL_S, TERMINAL_JOB_STATES, require_image, short,
                     wait, wait_for_idle_nodes, wait_for_job)

pytestmark = pytest.mark.agent

SHARE_ACCOUNT = "acct"
SHARE_URL = f"https://{SHARE_ACCOUNT}.file.core.windows.net/share"
MOUNT = "afs"
PREFIX = f"$AZ_BATCHAI_MOUNT_ROOT/{MOUNT}"
CNTK_EXAMPLE = os.path.join(REPO_ROOT, "examples", "cntk-mnist")
MNIST = os.path.join(REPO_ROOT, "..", "shared", "data", "mnist")


def run_cluster():
    return bm.ClusterCreateParameters(
        vm_size="STANDARD_NC6",
        scale_settings=bm.ScaleSettings(manual=bm.ManualScaleSettings(target_node_count=1)),
        node_setup=bm.NodeSetup(mount_volumes=bm.MountVolumes(azure_file_shares=[
            bm.AzureFileShareReference(
                account_name=SHARE_ACCOUNT,
                azure_file_url=SHARE_URL,
                credentials=bm.AzureStorageCredentialsInfo(account_key="c2VjcmV0LWtleQ=="),
                relative_mount_path=MOUNT)])),
        user_account_settings=bm.UserAccountSettings(
            admin_user_name="demoUser", admin_user_password="Pa55w0rd!"),
    )


class Rig:
    """One account (SDK over HTTPS), workspace, experiment and a 1-node cluster."""

    def __init__(self, farm):
        self.farm = farm
        srv = farm.server
        self.ca = srv.ca_cert
        self.acct = srv.new_account(base_url=srv.https_url, verify=self.ca)
        self.bai = self.acct.batchai
        self.rg, self.ws = self.acct.create_workspace()
        self.exp = self.acct.create_experiment(self.rg, self.ws)
        self.cluster_name = short("nc6")
        self.cluster = wait(self.bai.clusters.create(self.rg, self.ws, self.cluster_name, run_cluster()))
        self.jobs = []

    def submit(self, command, **kw):
        """Creates a custom-toolkit job and waits for the create LRO; returns its name."""
        return self.create("custom", custom_toolkit_settings=bm.CustomToolkitSettings(command_line=command), **kw)

    def create(self, tool_type, **kw):
        """Creates a one-node job of any toolkit and waits for the create LRO; returns its name."""
        kw.setdefault("std_out_err_path_prefix", PREFIX)
        params = bm.JobCreateParameters(cluster=bm.ResourceId(id=self.cluster.id), node_count=1, **kw)
        name = short("job")
        self.jobs.append(name)
        created = wait(self.bai.jobs.create(self.rg, self.ws, self.exp, name, params))
        assert created.name == name
        assert created.provisioning_state == "succeeded"
        assert created.tool_type == tool_type
        assert created.execution_state in ("queued", "running", "succeeded", "failed"), created.execution_state
        return name

    def finish(self, name, states=TERMINAL_JOB_STATES):
        return wait_for_job(self.bai, self.rg, self.ws, self.exp, name, states=states, farm=self.farm)

    def files(self, job, directory_id, directory="."):
        opts = bm.JobsListOutputFilesOptions(outputdirectoryid=directory_id, directory=directory)
        return list(self.bai.jobs.list_output_files(self.rg, self.ws, self.exp, job, opts))

    def end_jobs(self):
        """Terminates whatever a test left running, so the next test gets the node."""
        for name in self.jobs:
            j = self.bai.jobs.get(self.rg, self.ws, self.exp, name)
            if j.execution_state not in TERMINAL_JOB_STATES:
                wait(self.bai.jobs.terminate(self.rg, self.ws, self.exp, name))


@pytest.fixture(scope="module")
def rig(farm):
    r = Rig(farm)
    r.ready = wait_for_idle_nodes(r.bai, r.rg, r.ws, r.cluster_name, 1, farm=farm)
    yield r
    try:
        r.end_jobs()
    finally:
        # Gives the node back for the next farm's cluster (and shows a delete on a live cluster works).
        wait(r.bai.clusters.delete(r.rg, r.ws, r.cluster_name))


@pytest.fixture
def jobs(rig):
    """The rig, with jobs a test leaves running terminated afterwards."""
    yield rig
    rig.end_jobs()


def user_files(entries):
    """Files of a listing without the service's own execution*.log."""
    return {f.name: f for f in entries if not re.fullmatch(r"execution.*\.log", f.name)}


def download(url, ca, **kw):
    """A plain GET with no credentials, as clients fetch download links."""
    assert url, "no download_url"
    return requests.get(url, verify=ca, timeout=60, **kw)


# --------------------------------------------------------------------------- cluster


def test_cluster_gets_an_idle_node(rig):
    c = rig.ready
    assert c.provisioning_state == "succeeded"
    assert c.current_node_count == 1
    counts = c.node_state_counts
    assert (counts.idle_node_count, counts.running_node_count, counts.preparing_node_count,
            counts.unusable_node_count, counts.leaving_node_count) == (1, 0, 0, 0, 0)
    assert not c.errors, [(e.code, e.message) for e in c.errors]
    # Steady once the target is reached (idle may be seen a poll before the state flips).
    end = time.monotonic() + STATE_DEADLINE_S
    while c.allocation_state != "steady":
        assert time.monotonic() < end, f"cluster still {c.allocation_state} with its node idle"
        time.sleep(STATE_POLL_S)
        c = rig.bai.clusters.get(rig.rg, rig.ws, rig.cluster_name)
    assert c.current_node_count == 1


# --------------------------------------------------------------------------- jobs


def test_custom_job_succeeds_with_stdout_and_stderr(jobs):
    r = jobs
    name = r.submit(
        "echo hello from batchai; echo $MY_VAR; echo err >&2; echo \"secret:$MY_SECRET\" >&2",
        environment_variables=[bm.EnvironmentVariable(name="MY_VAR", value="my-value-42")],
        secrets=[bm.EnvironmentVariableWithSecretValue(name="MY_SECRET", value="s3cr3t-value")],
    )
    job = r.finish(name)
    info = job.execution_info
    assert job.execution_state == "succeeded", (job.execution_state, info and info.errors)
    assert info.exit_code == 0
    assert info.start_time is not None and info.end_time is not None
    assert info.end_time >= info.start_time
    assert not info.errors, [(e.code, e.message) for e in info.errors]
    assert job.secrets[0].value is None  # never read back

    entries = r.files(name, "stdouterr")
    files = user_files(entries)
    assert {"stdout.txt", "stderr.txt"} <= set(files), [f.name for f in entries]
    assert set(files) == {"stdout.txt", "stderr.txt"}, [f.name for f in entries]
    for f in files.values():
        assert f.file_type == "file"
        assert f.download_url
        assert f.last_modified is not None

    out = download(files["stdout.txt"].download_url, r.ca)
    assert out.status_code == 200, (out.status_code, out.text[:300])
    assert "hello from batchai" in out.text
    assert "my-value-42" in out.text
    assert files["stdout.txt"].content_length == len(out.content)
    err = download(files["stderr.txt"].download_url, r.ca)
    assert err.status_code == 200, (err.status_code, err.text[:300])
    assert "err" in err.text.splitlines()
    assert "secret:s3cr3t-value" in err.text  # secrets reach the job as environment variables

    part = download(files["stdout.txt"].download_url, r.ca, headers={"Range": "bytes=0-4"})
    assert part.status_code == 206, (part.status_code, part.text[:300])
    assert part.content == b"hello"
    assert part.headers.get("Content-Range") == f"bytes 0-4/{len(out.content)}", dict(part.headers)


def test_download_link_is_signed(jobs):
    r = jobs
    name = r.submit("echo signed")
    assert r.finish(name).execution_state == "succeeded"
    url = user_files(r.files(name, "stdouterr"))["stdout.txt"].download_url
    assert download(url, r.ca).text == "signed\n"
    base, _, query = url.partition("?")
    assert download(base, r.ca).status_code in (401, 403)  # no signature
    tampered = re.sub(r"sig=([^&])", lambda m: "sig=" + ("A" if m.group(1) != "A" else "B"), url)
    assert tampered != url
    assert download(tampered, r.ca).status_code in (401, 403)


def test_container_job_runs_in_docker_with_job_preparation_and_logs(jobs):
    require_image(BUSYBOX)
    r = jobs
    name = r.submit(
        'echo "in $(readlink /bin/ls) with $AZ_BATCHAI_NUM_GPUS GPUs"; cat $AZ_BATCHAI_JOB_TEMP/prep; echo err >&2; '
        'exit 3',
        container_settings=bm.ContainerSettings(image_source_registry=bm.ImageSourceRegistry(image=BUSYBOX),
                                                shm_size="64m"),
        job_preparation=bm.JobPreparation(command_line="echo prepared > $AZ_BATCHAI_JOB_TEMP/prep"),
    )
    job = r.finish(name)
    assert job.execution_state == "failed", job.execution_state
    assert job.execution_info.exit_code == 3
    assert job.container_settings.image_source_registry.image == BUSYBOX
    files = {f.name: f for f in r.files(name, "stdouterr")}
    # busybox's `ls` is a link to busybox: the command ran in the image, not on the host.
    assert download(files["stdout.txt"].download_url, r.ca).text == "in /bin/busybox with 0 GPUs\nprepared\n"
    assert download(files["stderr.txt"].download_url, r.ca).text == "err\n"
    log = download(files["execution.log"].download_url, r.ca).text
    assert f"using image {BUSYBOX}, present on the node" in log, log


def test_cntk_mnist_example_trains_as_a_cntk_job(jobs, tmp_path):
    """examples/cntk-mnist as the Batch AI CNTK quickstart runs it: data and script on the share,
    a CNTK (Python) job writing the model into the MODEL output directory (fast mode; the
    process runtime, with this venv's Python and numpy)."""
    r = jobs
    share = os.path.join(r.farm.server.data_dir, "storage", SHARE_ACCOUNT, "share")
    data = os.path.join(share, "mnist")
    prepare = subprocess.run([sys.executable, os.path.join(CNTK_EXAMPLE, "prepare_data.py"), MNIST, data,
                              "--limit", "3000"], capture_output=True, text=True, timeout=300)
    assert prepare.returncode == 0, prepare.stderr
    shutil.copy(os.path.join(CNTK_EXAMPLE, "ConvNet_MNIST.py"), share)
    name = r.create(
        "cntk",
        cntk_settings=bm.CNTKsettings(language_type="Python", python_interpreter_path=sys.executable,
                                      python_script_file_path=f"{PREFIX}/ConvNet_MNIST.py",
                                      command_line_args=f"{PREFIX}/mnist $AZ_BATCHAI_OUTPUT_MODEL"),
        output_directories=[bm.OutputDirectory(id="MODEL", path_prefix=PREFIX)],
        environment_variables=[bm.EnvironmentVariable(name="CONVNET_FAST", value="1")],
    )
    job = r.finish(name)
    assert job.execution_state == "succeeded", job.execution_info.errors
    model = user_files(r.files(name, "MODEL"))
    assert set(model) == {"ConvNet_MNIST.npz", "ConvNet_MNIST.json"}, list(model)
    summary = download(model["ConvNet_MNIST.json"].download_url, r.ca).json()
    assert summary["train_images"] == 2000 and summary["test_images"] == 1000, summary
    # One epoch on 2,000 images: far from the full run's accuracy, far above chance (10 %).
    assert summary["test_accuracy"] > 0.5, summary
    weights = download(model["ConvNet_MNIST.npz"].download_url, r.ca)
    (tmp_path / "m.npz").write_bytes(weights.content)
    with numpy.load(tmp_path / "m.npz") as saved:
        assert saved["c1"].shape == (25, 16) and saved["f2"].shape == (128, 10)
    stdout = download(user_files(r.files(name, "stdouterr"))["stdout.txt"].download_url, r.ca).text
    assert "Finished Epoch[1 of 1]" in stdout and "Final test accuracy" in stdout, stdout


def test_nonzero_exit_fails_job(jobs):
    r = jobs
    name = r.submit("echo about to fail; exit 3")
    job = r.finish(name)
    info = job.execution_info
    assert job.execution_state == "failed"
    assert info.exit_code == 3
    assert info.errors, "a failed job carries errors"
    assert info.errors[0].code == "JobFailed", [(e.code, e.message) for e in info.errors]
    assert info.errors[0].message
    assert info.end_time is not None
    # Its output is still there.
    files = user_files(r.files(name, "stdouterr"))
    assert "about to fail" in download(files["stdout.txt"].download_url, r.ca).text


def test_output_directory_is_listed(jobs):
    r = jobs
    name = r.submit(
        "echo x > $AZ_BATCHAI_OUTPUT_MODEL/model.txt",
        output_directories=[bm.OutputDirectory(id="MODEL", path_prefix=PREFIX)],
    )
    job = r.finish(name)
    assert job.execution_state == "succeeded", job.execution_info.errors
    assert job.execution_info.exit_code == 0

    files = user_files(r.files(name, "MODEL"))
    assert set(files) == {"model.txt"}, list(files)
    model = files["model.txt"]
    assert model.file_type == "file"
    assert model.content_length == 2
    got = download(model.download_url, r.ca)
    assert got.status_code == 200 and got.text == "x\n", (got.status_code, got.text[:300])


def test_terminate_running_job(jobs):
    r = jobs
    name = r.submit('echo "pid $$"; exec sleep 600')
    running = r.finish(name, states=("running",) + TERMINAL_JOB_STATES)
    assert running.execution_state == "running"
    assert running.execution_info is not None and running.execution_info.start_time is not None

    # stdout.txt is readable while the job runs; it names the process to be stopped.
    pid = None
    end = time.monotonic() + STATE_DEADLINE_S
    while pid is None:
        files = user_files(r.files(name, "stdouterr"))
        if "stdout.txt" in files:
            m = re.search(r"pid (\d+)", download(files["stdout.txt"].download_url, r.ca).text)
            pid = m and int(m.group(1))
        if pid is None:
            assert time.monotonic() < end, "the running job's stdout.txt never showed its pid"
            time.sleep(STATE_POLL_S)
    assert os.path.exists(f"/proc/{pid}"), "the job's process does not run on this host"

    wait(r.bai.jobs.terminate(r.rg, r.ws, r.exp, name))
    job = r.finish(name)
    info = job.execution_info
    assert job.execution_state == "failed"
    assert info.errors and info.errors[0].code == "JobTerminated", info.errors
    assert info.exit_code is None, "a terminated job has no exit code (batchai-api.md §7.2)"
    assert info.end_time is not None

    # The process is gone (the agent reaps it; a zombie would mean nobody did).
    end = time.monotonic() + STATE_DEADLINE_S
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < end, f"pid {pid} still exists after the job was terminated"
        time.sleep(STATE_POLL_S)

    # Terminating a finished job is a no-op, and the node is free for the next job.
    wait(r.bai.jobs.terminate(r.rg, r.ws, r.exp, name))
    assert r.bai.jobs.get(r.rg, r.ws, r.exp, name).execution_info.errors[0].code == "JobTerminated"
    after = r.submit("echo next")
    assert r.finish(after).execution_state == "succeeded"
