"""File servers and unmanaged file systems through azure-mgmt-batchai 2.0.0.

On-prem a file server is an export an operator declares (`batchai admin file-server declare
NAME --export host:/path|/local/path`): a create by a declared name succeeds with the export as
`mountSettings`, an undeclared one fails its operation with a message that names the command.
The `farm` tests run a real agent: a cluster mounts a file server declared with a local-path
export (linked, as every node is assumed to have it) and an unmanaged file system whose mount
command writes into the path appended to it; a job reads both. No NFS server is involved: the
agent's `mount -t nfs` command line is covered by the Rust unit tests."""

import os
import re
import time

import pytest
import requests
from azure.mgmt.batchai import models as bm
from msrestazure.azure_exceptions import CloudError

from helpers import (LRO_DEADLINE_S, PROVIDER, STATE_DEADLINE_S, STATE_POLL_S, assert_cloud_error, short, wait,
                     wait_for_idle_nodes, wait_for_job)


def fs_params(vm_size="STANDARD_D2_V2"):
    return bm.FileServerCreateParameters(
        vm_size=vm_size,
        ssh_configuration=bm.SshConfiguration(user_account_settings=bm.UserAccountSettings(
            admin_user_name="fsadmin", admin_user_password="Fs-Pa55w0rd!")),
        data_disks=bm.DataDisks(disk_size_in_gb=10, disk_count=2, storage_account_type="Standard_LRS"),
    )


def declare(server, name, export, options=None):
    args = ["file-server", "declare", name, "--export", export]
    if options:
        args += ["--mount-options", options]
    out = server.admin(*args).json
    assert out and out["name"] == name.lower() and out["export"] == export, out
    return out


# --------------------------------------------------------------------------- FileServers_*


def test_declared_file_server_succeeds_with_mount_settings(server, account, ws):
    rg, w = ws
    name = short("nfs")
    declare(server, name, "nfs-host.example:/export/data", "vers=4.1,hard")
    spelled = name.upper()  # names are compared ignoring case, as ARM does
    fs = wait(account.batchai.file_servers.create(rg, w, spelled, fs_params()))
    assert fs.name == spelled
    assert fs.id == f"/subscriptions/{account.sub}/resourceGroups/{rg}/{PROVIDER}/workspaces/{w}/fileservers/{spelled}"
    assert fs.type == "Microsoft.BatchAI/workspaces/fileservers"
    assert fs.provisioning_state == "succeeded"
    assert fs.creation_time is not None and fs.provisioning_state_transition_time is not None
    assert fs.vm_size == "STANDARD_D2_V2"
    assert fs.data_disks.disk_count == 2 and fs.data_disks.caching_type == "none"
    assert fs.ssh_configuration.user_account_settings.admin_user_name == "fsadmin"
    assert fs.ssh_configuration.user_account_settings.admin_user_password is None
    ms = fs.mount_settings
    assert (ms.mount_point, ms.file_server_public_ip, ms.file_server_internal_ip) == \
        ("/export/data", "nfs-host.example", "nfs-host.example")

    got = account.batchai.file_servers.get(rg, w, name)
    assert got.id == fs.id and got.mount_settings.mount_point == "/export/data"
    raw = account.request("GET", f"{account.ws_path(rg, w)}/fileServers/{name}")
    assert raw.status_code == 200
    for hidden in ("Fs-Pa55w0rd!", "vers=4.1", "x-batchai"):
        assert hidden not in raw.text, raw.text

    listed = list(account.batchai.file_servers.list_by_workspace(rg, w))
    assert [f.name for f in listed] == [spelled]

    wait(account.batchai.file_servers.delete(rg, w, name))
    with pytest.raises(CloudError) as ei:
        account.batchai.file_servers.get(rg, w, name)
    assert_cloud_error(ei, 404, "FileServerNotFound")


def test_undeclared_file_server_fails_with_a_readable_error(account, ws):
    rg, w = ws
    name = short("ghost")
    poller = account.batchai.file_servers.create(rg, w, name, fs_params())
    with pytest.raises(CloudError) as ei:
        poller.result(timeout=LRO_DEADLINE_S)
    message = str(ei.value)
    assert "FileServerNotDeclared" in message, message
    assert f"batchai admin file-server declare {name}" in message, message
    fs = account.batchai.file_servers.get(rg, w, name)
    assert fs.provisioning_state == "failed"
    assert fs.mount_settings is None
    # A cluster cannot mount it; the error names the field.
    params = bm.ClusterCreateParameters(
        vm_size="STANDARD_NC6",
        scale_settings=bm.ScaleSettings(manual=bm.ManualScaleSettings(target_node_count=0)),
        node_setup=bm.NodeSetup(mount_volumes=bm.MountVolumes(file_servers=[
            bm.FileServerReference(file_server=bm.ResourceId(id=fs.id), relative_mount_path="nfs")])),
        user_account_settings=bm.UserAccountSettings(admin_user_name="u", admin_user_password="p"),
    )
    with pytest.raises(CloudError) as ei:
        account.batchai.clusters.create(rg, w, short("cl"), params).result(timeout=LRO_DEADLINE_S)
    err = assert_cloud_error(ei, 400, "InvalidParameter")
    assert fs.id in err.message
    body = {"properties": {
        "vmSize": "STANDARD_NC6", "scaleSettings": {"manual": {"targetNodeCount": 0}},
        "nodeSetup": {"mountVolumes": {"fileServers": [{"fileServer": {"id": fs.id}, "relativeMountPath": "nfs"}]}},
        "userAccountSettings": {"adminUserName": "u", "adminUserPassword": "p"}}}
    raw = account.request("PUT", f"{account.ws_path(rg, w)}/clusters/{short('cl')}", json=body)
    assert raw.status_code == 400, raw.text
    assert raw.json()["error"]["target"] == "properties.nodeSetup.mountVolumes.fileServers[0].fileServer.id"
    # Deleting a failed file server works.
    wait(account.batchai.file_servers.delete(rg, w, name))
    assert list(account.batchai.file_servers.list_by_workspace(rg, w)) == []


def test_workspace_delete_cascades_to_file_servers(server, account, ws):
    rg, w = ws
    names = [short("fs") for _ in range(3)]
    for n in names:
        declare(server, n, f"/srv/{n}")
        wait(account.batchai.file_servers.create(rg, w, n, fs_params()))
    page = account.request("GET", f"{account.ws_path(rg, w)}/fileServers?maxresults=2").json()
    assert len(page["value"]) == 2 and page["nextLink"].startswith("http"), page
    assert sorted(f.name for f in account.batchai.file_servers.list_by_workspace(rg, w)) == sorted(names)
    local = account.batchai.file_servers.get(rg, w, names[0])
    assert local.mount_settings.mount_point == f"/srv/{names[0]}"
    assert local.mount_settings.file_server_internal_ip == "127.0.0.1"

    wait(account.batchai.workspaces.delete(rg, w))
    wait(account.batchai.workspaces.create(rg, w, "eastus"))
    assert list(account.batchai.file_servers.list_by_workspace(rg, w)) == []
    with pytest.raises(CloudError) as ei:
        account.batchai.file_servers.get(rg, w, names[0])
    assert_cloud_error(ei, 404, "FileServerNotFound")


# --------------------------------------------------------------------------- mounted by a real agent

SHARE = "afs"


def share_mount():
    return bm.AzureFileShareReference(
        account_name="acct", azure_file_url="https://acct.file.core.windows.net/share",
        credentials=bm.AzureStorageCredentialsInfo(account_key="c2VjcmV0LWtleQ=="), relative_mount_path=SHARE)


def one_node_cluster(file_servers=None, unmanaged=None):
    return bm.ClusterCreateParameters(
        vm_size="STANDARD_NC6",
        scale_settings=bm.ScaleSettings(manual=bm.ManualScaleSettings(target_node_count=1)),
        node_setup=bm.NodeSetup(mount_volumes=bm.MountVolumes(
            azure_file_shares=[share_mount()], file_servers=file_servers, unmanaged_file_systems=unmanaged)),
        user_account_settings=bm.UserAccountSettings(admin_user_name="demoUser", admin_user_password="Pa55w0rd!"),
    )


def user_files(entries):
    return {f.name: f for f in entries if not re.fullmatch(r"execution.*\.log", f.name)}


@pytest.fixture(scope="module")
def mounted(farm, tmp_path_factory):
    """An account over HTTPS, a workspace, an experiment, and a file server declared with a
    local-path export: a directory of this host holding data.txt and sub/inner.txt."""
    srv = farm.server
    export = tmp_path_factory.mktemp("export")
    (export / "data.txt").write_text("from the file server\n")
    (export / "sub").mkdir()
    (export / "sub" / "inner.txt").write_text("from a source directory\n")
    acct = srv.new_account(base_url=srv.https_url, verify=srv.ca_cert)
    rg, w = acct.create_workspace()
    exp = acct.create_experiment(rg, w)
    name = short("localfs")
    declare(srv, name, str(export))
    fs = wait(acct.batchai.file_servers.create(rg, w, name, fs_params()))
    assert fs.provisioning_state == "succeeded" and fs.mount_settings.mount_point == str(export)
    return {"acct": acct, "rg": rg, "ws": w, "exp": exp, "fs": fs, "export": export, "farm": farm}


@pytest.mark.agent
def test_a_job_reads_a_file_server_and_an_unmanaged_file_system(mounted):
    m = mounted
    bai, rg, w, exp, farm = m["acct"].batchai, m["rg"], m["ws"], m["exp"], m["farm"]
    fs_ref = bm.ResourceId(id=m["fs"].id)
    cluster = short("mnt")
    wait(bai.clusters.create(rg, w, cluster, one_node_cluster(
        file_servers=[bm.FileServerReference(file_server=fs_ref, relative_mount_path="fs", mount_options="ro")],
        unmanaged=[bm.UnmanagedFileSystemReference(
            mount_command="sh -c 'echo mounted > \"$0/marker\"'", relative_mount_path="um")])))
    try:
        c = wait_for_idle_nodes(bai, rg, w, cluster, 1, farm=farm)
        assert not c.errors, [(e.code, e.message) for e in c.errors]
        command = ("cat $AZ_BATCHAI_MOUNT_ROOT/fs/data.txt; cat $AZ_BATCHAI_MOUNT_ROOT/um/marker; "
                   "cat $AZ_BATCHAI_JOB_MOUNT_ROOT/jfs/inner.txt; cat $AZ_BATCHAI_JOB_MOUNT_ROOT/jum/marker; "
                   "echo $AZ_BATCHAI_JOB_MOUNT_ROOT > $AZ_BATCHAI_MOUNT_ROOT/afs/job-mount-root-" + cluster)
        job = short("job")
        params = bm.JobCreateParameters(
            cluster=bm.ResourceId(id=c.id), node_count=1,
            std_out_err_path_prefix=f"$AZ_BATCHAI_MOUNT_ROOT/{SHARE}",
            mount_volumes=bm.MountVolumes(
                file_servers=[bm.FileServerReference(file_server=fs_ref, relative_mount_path="jfs",
                                                     source_directory="sub")],
                unmanaged_file_systems=[bm.UnmanagedFileSystemReference(
                    mount_command="sh -c 'echo job-mounted > \"$0/marker\"'", relative_mount_path="jum")]),
            custom_toolkit_settings=bm.CustomToolkitSettings(command_line=command))
        wait(bai.jobs.create(rg, w, exp, job, params))
        done = wait_for_job(bai, rg, w, exp, job, farm=farm)
        info = done.execution_info
        assert done.execution_state == "succeeded", (done.execution_state, info and info.errors, farm.diagnostics())

        opts = bm.JobsListOutputFilesOptions(outputdirectoryid="stdouterr")
        files = user_files(bai.jobs.list_output_files(rg, w, exp, job, opts))
        out = requests.get(files["stdout.txt"].download_url, verify=m["acct"].http.verify, timeout=60)
        assert out.status_code == 200, out.text[:300]
        assert out.text.splitlines() == ["from the file server", "mounted", "from a source directory", "job-mounted"]

        # The job's mounts are gone after it: its file server link is removed.
        share_dir = os.path.join(farm.server.data_dir, "storage", "acct", "share")
        with open(os.path.join(share_dir, f"job-mount-root-{cluster}")) as f:
            job_mount_root = f.read().strip()
        assert job_mount_root, "the job wrote its mount root"
        assert not os.path.lexists(os.path.join(job_mount_root, "jfs")), os.listdir(job_mount_root)
    finally:
        wait(bai.clusters.delete(rg, w, cluster))


@pytest.mark.agent
def test_a_failing_mount_command_makes_the_node_unusable(mounted):
    m = mounted
    bai, rg, w, farm = m["acct"].batchai, m["rg"], m["ws"], m["farm"]
    cluster = short("bad")
    failing = "sh -c 'echo cannot reach the gluster volume >&2; exit 3'"
    wait(bai.clusters.create(rg, w, cluster, one_node_cluster(
        unmanaged=[bm.UnmanagedFileSystemReference(mount_command=failing, relative_mount_path="bad")])))
    try:
        end = time.monotonic() + STATE_DEADLINE_S
        while True:
            c = bai.clusters.get(rg, w, cluster)
            errors = [e for e in (c.errors or []) if e.code == "NodeSetupFailed"]
            if c.node_state_counts.unusable_node_count == 1 and errors:
                break
            farm.check_agents()
            assert time.monotonic() < end, f"no NodeSetupFailed: {c.node_state_counts} {c.errors}\n" \
                                           f"{farm.diagnostics()}"
            time.sleep(STATE_POLL_S)
        message = errors[0].message
        assert failing in message, message
        assert "exited with code 3" in message and "cannot reach the gluster volume" in message, message
    finally:
        wait(bai.clusters.delete(rg, w, cluster))
