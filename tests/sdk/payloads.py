"""Request bodies the tests send: SDK models and raw JSON."""

import json

from azure.mgmt.batchai import models as bm


def quickstart_cluster(target=1, account="acct", key="c2VjcmV0LWtleQ=="):
    """The cluster of the quickstart (sdk-wire.md §3 line 12)."""
    return bm.ClusterCreateParameters(
        vm_size="STANDARD_NC6",
        vm_priority="dedicated",
        scale_settings=bm.ScaleSettings(manual=bm.ManualScaleSettings(
            target_node_count=target, node_deallocation_option="requeue")),
        node_setup=bm.NodeSetup(mount_volumes=bm.MountVolumes(azure_file_shares=[
            bm.AzureFileShareReference(
                account_name=account,
                azure_file_url=f"https://127.0.0.1:10004/{account}/batchaiquickstart",
                credentials=bm.AzureStorageCredentialsInfo(account_key=key),
                relative_mount_path="azurefileshare")])),
        user_account_settings=bm.UserAccountSettings(
            admin_user_name="demoUser", admin_user_password="Pa55w0rd!"),
    )


def custom_job(cluster_id, command="echo hi", **kw):
    return bm.JobCreateParameters(
        cluster=bm.ResourceId(id=cluster_id),
        node_count=1,
        std_out_err_path_prefix="$AZ_BATCHAI_MOUNT_ROOT/azurefileshare",
        custom_toolkit_settings=bm.CustomToolkitSettings(command_line=command),
        **kw,
    )


def cntk_job(cluster_id):
    """The job of the quickstart (sdk-wire.md §3 line 21)."""
    return bm.JobCreateParameters(
        cluster=bm.ResourceId(id=cluster_id),
        node_count=1,
        container_settings=bm.ContainerSettings(image_source_registry=bm.ImageSourceRegistry(
            image="microsoft/cntk:2.1-gpu-python3.5-cuda8.0-cudnn6.0")),
        cntk_settings=bm.CNTKsettings(
            python_script_file_path="$AZ_BATCHAI_INPUT_SAMPLE/ConvNet_MNIST.py",
            command_line_args="$AZ_BATCHAI_INPUT_SAMPLE $AZ_BATCHAI_OUTPUT_MODEL"),
        std_out_err_path_prefix="$AZ_BATCHAI_MOUNT_ROOT/azurefileshare",
        input_directories=[bm.InputDirectory(
            id="SAMPLE", path="$AZ_BATCHAI_MOUNT_ROOT/azurefileshare/mnistcntksample")],
        output_directories=[bm.OutputDirectory(
            id="MODEL", path_prefix="$AZ_BATCHAI_MOUNT_ROOT/azurefileshare", path_suffix="Models")],
    )


RAW_JOB_BODY = {
    "properties": {
        "cluster": {"id": None},
        "nodeCount": 1,
        "stdOutErrPathPrefix": "$AZ_BATCHAI_MOUNT_ROOT/x",
        "customToolkitSettings": {"commandLine": "echo hi"},
    }
}


def raw_job_body(cluster_id):
    body = json.loads(json.dumps(RAW_JOB_BODY))
    body["properties"]["cluster"]["id"] = cluster_id
    return body
