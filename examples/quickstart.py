#!/usr/bin/env python3
"""Run a job on batchai with the Azure Batch AI Python SDK (azure-mgmt-batchai 2.0.0).

    cargo run --release -p batchai -- dev      # in one terminal; writes batchai-data/dev.env
    scripts/sdk-venv.sh                        # once: the pinned SDK in /var/tmp/batchai-venv
    source batchai-data/dev.env
    /var/tmp/batchai-venv/bin/python examples/quickstart.py

The same code runs against Azure Batch AI: only the endpoints and credentials, which come
from dev.env, differ. It signs in as a service principal, creates a resource group, a
workspace, an experiment and a one-node STANDARD_NC6 cluster that mounts an Azure file share,
submits a job, waits for it, prints its exit code and its stdout.txt. Running it again
reuses the resources and submits a new job.

    /var/tmp/batchai-venv/bin/python examples/quickstart.py --image batchai/busybox:latest

runs the job in a Docker container of that image instead (`containerSettings`); build the
image first with scripts/build-images.sh.
"""

import argparse
import os
import sys
import time
import uuid
from datetime import datetime, timezone

import requests
from azure.mgmt.batchai import BatchAIManagementClient
from azure.mgmt.batchai import models
from azure.mgmt.resource import ResourceManagementClient
from msrestazure.azure_active_directory import ServicePrincipalCredentials
from msrestazure.azure_cloud import Cloud, CloudEndpoints
from msrestazure.azure_exceptions import CloudError

LOCATION = "eastus"
RESOURCE_GROUP = "batchai-quickstart"
WORKSPACE = "quickstart"
EXPERIMENT = "quickstart"
CLUSTER = "nc6"
# The share the cluster mounts at $AZ_BATCHAI_MOUNT_ROOT/afs; batchai keeps it in its storage root.
SHARE_URL = "https://quickstart.file.core.windows.net/batchaiquickstart"
SHARE_KEY = "c2VjcmV0LWtleQ=="  # batchai does not check it; Azure needs the account's key
# ARM's AAD resource (audience) for the token.
ARM_RESOURCE = "https://management.core.windows.net/"
TIMEOUT_S = int(os.environ.get("QUICKSTART_TIMEOUT_S", "600"))


def setting(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set: start `batchai dev` and `source batchai-data/dev.env` first")
    return value


def clients():
    url = setting("BATCHAI_URL")
    subscription = setting("AZURE_SUBSCRIPTION_ID")
    # adal only trusts https authorities; one ending in /adfs is not checked against Microsoft's list.
    cloud = Cloud("batchai", endpoints=CloudEndpoints(
        active_directory=setting("BATCHAI_AAD_AUTHORITY"),
        active_directory_resource_id=ARM_RESOURCE,
        resource_manager=url))
    ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("BATCHAI_CA_CERT") or True
    creds = ServicePrincipalCredentials(
        setting("AAD_CLIENT_ID"), setting("AAD_SECRET"), tenant=setting("AAD_TENANT"),
        resource=ARM_RESOURCE, cloud_environment=cloud, verify=ca)
    resources = ResourceManagementClient(creds, subscription, base_url=url)
    batchai = BatchAIManagementClient(creds, subscription, base_url=url)
    for client in (resources, batchai):
        client.config.connection.verify = ca
    return resources, batchai, ca


def cluster_parameters():
    return models.ClusterCreateParameters(
        vm_size="STANDARD_NC6",
        scale_settings=models.ScaleSettings(manual=models.ManualScaleSettings(target_node_count=1)),
        node_setup=models.NodeSetup(mount_volumes=models.MountVolumes(azure_file_shares=[
            models.AzureFileShareReference(
                account_name="quickstart",
                azure_file_url=SHARE_URL,
                credentials=models.AzureStorageCredentialsInfo(account_key=SHARE_KEY),
                relative_mount_path="afs")])),
        user_account_settings=models.UserAccountSettings(
            admin_user_name="demoUser", admin_user_password="Pa55w0rd!"),
    )


def get_or_create_cluster(batchai):
    try:
        cluster = batchai.clusters.get(RESOURCE_GROUP, WORKSPACE, CLUSTER)
        print(f"cluster {CLUSTER} exists")
        return cluster
    except CloudError as e:
        if e.status_code != 404:
            raise
    print(f"creating cluster {CLUSTER} (1 x STANDARD_NC6)")
    return batchai.clusters.create(RESOURCE_GROUP, WORKSPACE, CLUSTER, cluster_parameters()).result()


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
        time.sleep(1)


def main():
    parser = argparse.ArgumentParser(description="Run a job on batchai with the Azure Batch AI SDK.")
    parser.add_argument("--image", help="run the job in a Docker container of this image")
    args = parser.parse_args()
    resources, batchai, ca = clients()

    resources.resource_groups.create_or_update(RESOURCE_GROUP, {"location": LOCATION})
    batchai.workspaces.create(RESOURCE_GROUP, WORKSPACE, LOCATION).result()
    batchai.experiments.create(RESOURCE_GROUP, WORKSPACE, EXPERIMENT).result()
    cluster = get_or_create_cluster(batchai)
    counts = cluster.node_state_counts
    print(f"cluster {CLUSTER}: {cluster.allocation_state}, {counts.idle_node_count} idle node(s)")

    job_name = "job-{}-{}".format(datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"), uuid.uuid4().hex[:6])
    job = models.JobCreateParameters(
        cluster=models.ResourceId(id=cluster.id),
        node_count=1,
        std_out_err_path_prefix="$AZ_BATCHAI_MOUNT_ROOT/afs",
        environment_variables=[models.EnvironmentVariable(name="GREETING", value="hello from batchai")],
        custom_toolkit_settings=models.CustomToolkitSettings(
            command_line='echo "$GREETING"; echo "on $(hostname) with $AZ_BATCHAI_NUM_GPUS GPU(s)"'),
        container_settings=models.ContainerSettings(
            image_source_registry=models.ImageSourceRegistry(image=args.image)) if args.image else None,
    )
    print(f"submitting job {job_name}" + (f" in image {args.image}" if args.image else ""))
    batchai.jobs.create(RESOURCE_GROUP, WORKSPACE, EXPERIMENT, job_name, job).result()

    job = wait_for_job(batchai, job_name)
    info = job.execution_info
    print(f"exit code: {info.exit_code}")
    for error in info.errors or []:
        print(f"error {error.code}: {error.message}")

    files = batchai.jobs.list_output_files(
        RESOURCE_GROUP, WORKSPACE, EXPERIMENT, job_name,
        models.JobsListOutputFilesOptions(outputdirectoryid="stdouterr"))
    stdout_url = None
    for f in files:
        print(f"  {f.name} ({f.content_length} bytes)")
        if f.name == "stdout.txt":
            stdout_url = f.download_url
    if stdout_url:
        # A signed link: plain GET, no credentials.
        resp = requests.get(stdout_url, verify=ca, timeout=60)
        resp.raise_for_status()
        print("----- stdout.txt -----")
        print(resp.text, end="")
        print("----------------------")
    return 0 if job.execution_state == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
