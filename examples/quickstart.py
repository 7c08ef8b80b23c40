#!/usr/bin/env python3
"""The Azure Batch AI CNTK quickstart (Python SDK: azure-mgmt-batchai 2.0.0, azure-mgmt-resource,
azure-storage-file), run against batchai.

    cargo run --release -p batchai -- dev      # in one terminal; writes batchai-data/dev.env
    scripts/sdk-venv.sh                        # once: the pinned SDKs in /var/tmp/batchai-venv
    source batchai-data/dev.env
    /var/tmp/batchai-venv/bin/python examples/quickstart.py

What it does, step by step as the quickstart did: turn MNIST into CNTK's text format, upload it
and the training script ConvNet_MNIST.py to an Azure file share, create a workspace, a one-node
STANDARD_NC6 cluster that mounts the share, an experiment and a CNTK job in
microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0, wait for it, then list and download the job's
logs (`stdouterr`) and the trained model (`MODEL`) into ./quickstart-output. With Docker,
`batchai dev` runs that image as its local Python image (scripts/build-images.sh builds it);
without Docker it runs the job on this machine with its `python` (which needs numpy).

Only the lines marked ENDPOINTS below differ from the code that ran against Azure: where the
services are and the credentials, all from dev.env. Running it again reuses the resources and
submits a new job. `--fast` (or CONVNET_FAST=1) trains one epoch on 2,000 images.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import requests
from azure.mgmt.batchai import BatchAIManagementClient
from azure.mgmt.batchai import models
from azure.mgmt.resource import ResourceManagementClient
from azure.storage.file import FileService
from msrestazure.azure_active_directory import ServicePrincipalCredentials
from msrestazure.azure_cloud import Cloud, CloudEndpoints
from msrestazure.azure_exceptions import CloudError

HERE = os.path.dirname(os.path.abspath(__file__))
LOCATION = "eastus"
RESOURCE_GROUP = "batchai-quickstart"
WORKSPACE = "quickstart"
EXPERIMENT = "quickstart"
CLUSTER = "nc6"
AZURE_FILE_SHARE = "batchaiquickstart"
MNIST_DIRECTORY = "mnistcntksample"
IMAGE = "microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0"
FILES = ["Train-28x28_cntk_text.txt", "Test-28x28_cntk_text.txt", "ConvNet_MNIST.py"]
# ARM's AAD resource (audience) for the token.
ARM_RESOURCE = "https://management.core.windows.net/"
TIMEOUT_S = int(os.environ.get("QUICKSTART_TIMEOUT_S", "1800"))


def setting(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set: start `batchai dev` and `source batchai-data/dev.env` first")
    return value


def clients():
    # ENDPOINTS: Azure's clouds are built in; here the cloud is batchai's, from dev.env.
    url = setting("BATCHAI_URL")
    # adal only trusts https authorities; one ending in /adfs is not checked against Microsoft's list.
    cloud = Cloud("batchai", endpoints=CloudEndpoints(
        active_directory=setting("BATCHAI_AAD_AUTHORITY"),
        active_directory_resource_id=ARM_RESOURCE,
        resource_manager=url))
    ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("BATCHAI_CA_CERT") or True
    creds = ServicePrincipalCredentials(
        setting("AAD_CLIENT_ID"), setting("AAD_SECRET"), tenant=setting("AAD_TENANT"),
        resource=ARM_RESOURCE, cloud_environment=cloud, verify=ca)
    subscription = setting("AZURE_SUBSCRIPTION_ID")
    resources = ResourceManagementClient(creds, subscription, base_url=url)
    batchai = BatchAIManagementClient(creds, subscription, base_url=url)
    for client in (resources, batchai):
        client.config.connection.verify = ca
    # ENDPOINTS: Azure's FileService(account_name, account_key) finds the account by DNS; a
    # local endpoint needs the connection string's FileEndpoint.
    files = FileService(connection_string=setting("AZURE_STORAGE_CONNECTION_STRING"))
    return resources, batchai, files, ca


def prepare_data(source, out):
    """MNIST (IDX, gzip) → the quickstart's CNTK text files, beside ConvNet_MNIST.py."""
    example = os.path.join(HERE, "cntk-mnist")
    subprocess.run([sys.executable, os.path.join(example, "prepare_data.py"), source, out], check=True)
    with open(os.path.join(example, "ConvNet_MNIST.py"), "rb") as src, \
            open(os.path.join(out, "ConvNet_MNIST.py"), "wb") as dst:
        dst.write(src.read())


def upload(files, local_dir):
    files.create_share(AZURE_FILE_SHARE, fail_on_exist=False)
    files.create_directory(AZURE_FILE_SHARE, MNIST_DIRECTORY, fail_on_exist=False)
    for f in FILES:
        files.create_file_from_path(AZURE_FILE_SHARE, MNIST_DIRECTORY, f, os.path.join(local_dir, f))
        size = files.get_file_properties(AZURE_FILE_SHARE, MNIST_DIRECTORY, f).properties.content_length
        print(f"uploaded {f} ({size} bytes) to {AZURE_FILE_SHARE}/{MNIST_DIRECTORY}")


def get_or_create_cluster(batchai, files):
    try:
        cluster = batchai.clusters.get(RESOURCE_GROUP, WORKSPACE, CLUSTER)
        print(f"cluster {CLUSTER} exists")
        return cluster
    except CloudError as e:
        if e.status_code != 404:
            raise
    print(f"creating cluster {CLUSTER} (1 x STANDARD_NC6) mounting {AZURE_FILE_SHARE}")
    parameters = models.ClusterCreateParameters(
        vm_size="STANDARD_NC6",
        scale_settings=models.ScaleSettings(manual=models.ManualScaleSettings(target_node_count=1)),
        node_setup=models.NodeSetup(mount_volumes=models.MountVolumes(azure_file_shares=[
            models.AzureFileShareReference(
                account_name=files.account_name,
                azure_file_url="https://{0}/{1}".format(files.primary_endpoint, AZURE_FILE_SHARE),
                credentials=models.AzureStorageCredentialsInfo(account_key=files.account_key),
                relative_mount_path="azurefileshare")])),
        user_account_settings=models.UserAccountSettings(
            admin_user_name="demoUser", admin_user_password="Pa55w0rd!"),
    )
    return batchai.clusters.create(RESOURCE_GROUP, WORKSPACE, CLUSTER, parameters).result()


def wait_for_job(batchai, job_name):
    deadline = time.monotonic() + TIMEOUT_S
    last = None
    while True:
        job = batchai.jobs.get(RESOURCE_GROUP, WORKSPACE, EXPERIMENT, job_name)
        if job.execution_state != last:
            print(f"job {job_name}: {job.execution_state}")
            last = job.execution_state
        if job.execution_state in ("succeeded", "failed"):
            return job
        if time.monotonic() > deadline:
            cluster = batchai.clusters.get(RESOURCE_GROUP, WORKSPACE, CLUSTER)
            counts = cluster.node_state_counts
            errors = "; ".join(f"{e.code}: {e.message}" for e in cluster.errors or [])
            sys.exit(f"job {job_name} still {job.execution_state} after {TIMEOUT_S}s; cluster "
                     f"{cluster.allocation_state}, {counts.idle_node_count} idle / "
                     f"{counts.running_node_count} running nodes. {errors}")
        time.sleep(2)


def download_outputs(batchai, job_name, directory_id, out_dir, ca):
    """Lists an output directory of the job and downloads its files (signed links, no credentials)."""
    os.makedirs(out_dir, exist_ok=True)
    files = batchai.jobs.list_output_files(
        RESOURCE_GROUP, WORKSPACE, EXPERIMENT, job_name,
        models.JobsListOutputFilesOptions(outputdirectoryid=directory_id))
    got = []
    for f in files:
        if not f.download_url:
            continue
        resp = requests.get(f.download_url, verify=ca, timeout=300)
        resp.raise_for_status()
        with open(os.path.join(out_dir, f.name), "wb") as out:
            out.write(resp.content)
        print(f"  {directory_id}/{f.name} ({f.content_length} bytes) -> {os.path.join(out_dir, f.name)}")
        got.append(f.name)
    return got


def main():
    parser = argparse.ArgumentParser(description="The Batch AI CNTK quickstart, against batchai.")
    parser.add_argument("--mnist", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist"),
                        help="directory with MNIST's four .idx*-ubyte.gz files")
    parser.add_argument("--out", default="quickstart-output", help="where the logs and the model are downloaded")
    parser.add_argument("--fast", action="store_true", help="train one epoch on 2,000 images (CONVNET_FAST=1)")
    args = parser.parse_args()
    fast = args.fast or os.environ.get("CONVNET_FAST") == "1"
    resources, batchai, files, ca = clients()

    with tempfile.TemporaryDirectory() as local:
        prepare_data(args.mnist, local)
        upload(files, local)

    resources.resource_groups.create_or_update(RESOURCE_GROUP, {"location": LOCATION})
    batchai.workspaces.create(RESOURCE_GROUP, WORKSPACE, LOCATION).result()
    batchai.experiments.create(RESOURCE_GROUP, WORKSPACE, EXPERIMENT).result()
    cluster = get_or_create_cluster(batchai, files)
    counts = cluster.node_state_counts
    print(f"cluster {CLUSTER}: {cluster.allocation_state}, {counts.idle_node_count} idle node(s)")

    job_name = "cntk-{}".format(datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))
    afs = "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare"
    parameters = models.JobCreateParameters(
        cluster=models.ResourceId(id=cluster.id),
        node_count=1,
        input_directories=[models.InputDirectory(id="SAMPLE", path=f"{afs}/{MNIST_DIRECTORY}")],
        output_directories=[models.OutputDirectory(id="MODEL", path_prefix=afs, path_suffix="Models")],
        std_out_err_path_prefix=afs,
        container_settings=models.ContainerSettings(image_source_registry=models.ImageSourceRegistry(image=IMAGE)),
        environment_variables=[models.EnvironmentVariable(name="CONVNET_FAST", value="1")] if fast else None,
        cntk_settings=models.CNTKsettings(
            python_script_file_path="$AZ_BATCHAI_INPUT_SAMPLE/ConvNet_MNIST.py",
            command_line_args="$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL"),
    )
    print(f"submitting job {job_name} ({IMAGE})")
    batchai.jobs.create(RESOURCE_GROUP, WORKSPACE, EXPERIMENT, job_name, parameters).result()

    job = wait_for_job(batchai, job_name)
    info = job.execution_info
    print(f"exit code: {info.exit_code}")
    for error in info.errors or []:
        print(f"error {error.code}: {error.message}")

    out_dir = os.path.join(args.out, job_name)
    print(f"job {job_name} outputs:")
    logs = download_outputs(batchai, job_name, "stdouterr", out_dir, ca)
    model = download_outputs(batchai, job_name, "MODEL", out_dir, ca) if job.execution_state == "succeeded" else []
    if "stdout.txt" in logs:
        with open(os.path.join(out_dir, "stdout.txt")) as f:
            tail = f.read().splitlines()[-5:]
        print("----- stdout.txt (last lines) -----")
        print("\n".join(tail))
        print("-----------------------------------")
    if model:
        print(f"trained model: {', '.join(model)} in {out_dir}")
    return 0 if job.execution_state == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
