"""The Batch AI CNTK quickstart's job, as its client sends it, on `batchai dev` with Docker: a CNTK
(Python) job in `microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0`, which dev's image map runs
in the local `batchai/python:latest` (scripts/build-images.sh), training
examples/cntk-mnist/ConvNet_MNIST.py (fast mode) on MNIST from the cluster's share and writing the
model into the MODEL output directory. The share is filled on disk here; its upload through the
Files endpoint comes with the storage issue."""

import os
import shutil
import subprocess
import sys

import pytest
import requests
from azure.mgmt.batchai import BatchAIManagementClient
from azure.mgmt.batchai import models as bm
from azure.mgmt.resource import ResourceManagementClient
from msrest.authentication import BasicTokenAuthentication

from helpers import REPO_ROOT, require_image, wait, wait_for_idle_nodes, wait_for_job

pytestmark = pytest.mark.agent

CNTK_IMAGE = "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0"
PYTHON_IMAGE = "batchai/python:latest"
EXAMPLE = os.path.join(REPO_ROOT, "examples", "cntk-mnist")
MNIST = os.path.join(REPO_ROOT, "..", "shared", "data", "mnist")
AFS = "$AZ_BATCHAI_MOUNT_ROOT/afs"


def test_cntk_quickstart_job_trains_in_the_mapped_image(dev_server, tmp_path):
    require_image(PYTHON_IMAGE)
    dev = dev_server.dev_env
    creds = BasicTokenAuthentication({"access_token": dev["BATCHAI_TOKEN"]})
    sub, url = dev["AZURE_SUBSCRIPTION_ID"], dev["BATCHAI_URL"]
    resources = ResourceManagementClient(creds, sub, base_url=url)
    bai = BatchAIManagementClient(creds, sub, base_url=url)
    for client in (resources, bai):
        client.config.connection.verify = dev["BATCHAI_CA_CERT"]

    share = os.path.join(dev_server.data_dir, "storage", "mnistacct", "share")
    prepare = subprocess.run([sys.executable, os.path.join(EXAMPLE, "prepare_data.py"), MNIST,
                              os.path.join(share, "mnist"), "--limit", "3000"], capture_output=True, text=True,
                             timeout=300)
    assert prepare.returncode == 0, prepare.stderr
    shutil.copy(os.path.join(EXAMPLE, "ConvNet_MNIST.py"), share)

    rg, ws, exp, cluster, job = "cntk-rg", "ws", "exp", "nc6", "convnet"
    resources.resource_groups.create_or_update(rg, {"location": "eastus"})
    wait(bai.workspaces.create(rg, ws, "eastus"))
    wait(bai.experiments.create(rg, ws, exp))
    wait(bai.clusters.create(rg, ws, cluster, bm.ClusterCreateParameters(
        vm_size="STANDARD_NC6",
        scale_settings=bm.ScaleSettings(manual=bm.ManualScaleSettings(target_node_count=1)),
        node_setup=bm.NodeSetup(mount_volumes=bm.MountVolumes(azure_file_shares=[bm.AzureFileShareReference(
            account_name="mnistacct", azure_file_url="https://mnistacct.file.core.windows.net/share",
            credentials=bm.AzureStorageCredentialsInfo(account_key="a2V5"), relative_mount_path="afs")])),
        user_account_settings=bm.UserAccountSettings(admin_user_name="demoUser", admin_user_password="Pa55w0rd!"))))
    cluster_id = wait_for_idle_nodes(bai, rg, ws, cluster, 1).id

    params = bm.JobCreateParameters(
        cluster=bm.ResourceId(id=cluster_id),
        node_count=1,
        container_settings=bm.ContainerSettings(image_source_registry=bm.ImageSourceRegistry(image=CNTK_IMAGE)),
        std_out_err_path_prefix=AFS,
        output_directories=[bm.OutputDirectory(id="MODEL", path_prefix=AFS)],
        environment_variables=[bm.EnvironmentVariable(name="CONVNET_FAST", value="1")],
        cntk_settings=bm.CNTKsettings(language_type="Python", python_script_file_path=f"{AFS}/ConvNet_MNIST.py",
                                      command_line_args=f"{AFS}/mnist $AZ_BATCHAI_OUTPUT_MODEL"),
    )
    wait(bai.jobs.create(rg, ws, exp, job, params))
    done = wait_for_job(bai, rg, ws, exp, job)
    logs = {f.name: f for f in bai.jobs.list_output_files(
        rg, ws, exp, job, bm.JobsListOutputFilesOptions(outputdirectoryid="stdouterr"))}
    fetch = lambda f: requests.get(f.download_url, verify=dev["BATCHAI_CA_CERT"], timeout=60).text  # noqa: E731
    context = {name: fetch(f) for name, f in logs.items()}
    errors = [(e.code, e.message) for e in done.execution_info.errors or []]
    assert done.execution_state == "succeeded", (errors, context)
    assert f"image {CNTK_IMAGE} is mapped to {PYTHON_IMAGE} on this node" in context["execution.log"], context
    # The default interpreter (`python`) is the image's, with Debian's numpy.
    assert "numpy" in context["stdout.txt"] and "Final test accuracy" in context["stdout.txt"], context
    model = {f.name for f in bai.jobs.list_output_files(
        rg, ws, exp, job, bm.JobsListOutputFilesOptions(outputdirectoryid="MODEL"))}
    assert model == {"ConvNet_MNIST.npz", "ConvNet_MNIST.json"}, model
