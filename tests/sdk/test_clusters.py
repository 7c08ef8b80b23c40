"""Clusters through azure-mgmt-batchai 2.0.0 (no nodes exist: clusters stay
`resizing`)."""

import pytest
from azure.mgmt.batchai import models as bm
from msrestazure.azure_exceptions import CloudError

from helpers import PROVIDER, assert_cloud_error, poll_operations, quickstart_cluster, short, wait


def assert_runtime_fields(c):
    """What the quickstart dereferences (sdk-wire.md §4.6)."""
    assert c.allocation_state in ("steady", "resizing")
    assert c.allocation_state_transition_time is not None
    assert c.current_node_count == 0
    counts = c.node_state_counts
    assert counts is not None
    for field in ("idle_node_count", "running_node_count", "preparing_node_count",
                  "unusable_node_count", "leaving_node_count"):
        assert getattr(counts, field) == 0, field
    assert c.creation_time is not None
    assert c.provisioning_state == "succeeded"


def assert_no_secrets(c):
    assert c.user_account_settings.admin_user_name == "demoUser"
    assert c.user_account_settings.admin_user_password is None
    shares = c.node_setup.mount_volumes.azure_file_shares
    assert len(shares) == 1
    assert shares[0].credentials is not None
    assert shares[0].credentials.account_key is None


def test_cluster_create_quickstart_and_get(account, ws):
    rg, w = ws
    name = short("nc6")
    created = wait(account.batchai.clusters.create(rg, w, name, quickstart_cluster()))
    assert created.name == name
    assert created.id == f"/subscriptions/{account.sub}/resourceGroups/{rg}/{PROVIDER}/workspaces/{w}/clusters/{name}"
    assert created.type == "Microsoft.BatchAI/workspaces/clusters"
    assert_runtime_fields(created)
    assert_no_secrets(created)

    c = account.batchai.clusters.get(rg, w, name)
    assert_runtime_fields(c)
    assert_no_secrets(c)
    assert c.allocation_state == "resizing"  # target 1, no nodes yet
    assert c.vm_size.lower() == "standard_nc6"
    assert c.vm_priority == "dedicated"
    assert c.scale_settings.manual.target_node_count == 1
    assert c.scale_settings.manual.node_deallocation_option == "requeue"
    assert c.scale_settings.auto_scale is None
    share = c.node_setup.mount_volumes.azure_file_shares[0]
    assert share.account_name == "acct"
    assert share.azure_file_url == "https://127.0.0.1:10004/acct/batchaiquickstart"
    assert share.relative_mount_path == "azurefileshare"
    assert share.file_mode == "0777" and share.directory_mode == "0777"
    img = c.virtual_machine_configuration.image_reference
    assert (img.publisher, img.offer, img.sku) == ("Canonical", "UbuntuServer", "16.04-LTS")

    # The raw body never carries the secrets at all.
    raw = account.request("GET", f"{account.ws_path(rg, w)}/clusters/{name}")
    assert raw.status_code == 200
    assert "Pa55w0rd!" not in raw.text and "c2VjcmV0LWtleQ==" not in raw.text


def test_cluster_server_fills_defaults(account, ws):
    """A minimal raw body (the SDK would have sent the defaults itself)."""
    rg, w = ws
    name = short("cl")
    path = f"{account.ws_path(rg, w)}/clusters/{name}"
    resp = account.request("PUT", path, json={"properties": {
        "vmSize": "STANDARD_D1",
        "scaleSettings": {"manual": {"targetNodeCount": 0}},
        "nodeSetup": {"mountVolumes": {"azureFileShares": [{
            "accountName": "a", "azureFileUrl": "https://a.file.core.windows.net/share",
            "credentials": {"accountKey": "k"}, "relativeMountPath": "afs"}]}},
        "userAccountSettings": {"adminUserName": "u", "adminUserPassword": "p"}}})
    assert resp.status_code == 202, resp.text
    [done] = poll_operations(account.http, [resp.headers["Azure-AsyncOperation"]]).values()
    assert done["status"] == "Succeeded", done

    c = account.batchai.clusters.get(rg, w, name)
    assert c.vm_priority == "dedicated"
    assert c.scale_settings.manual.node_deallocation_option == "requeue"
    share = c.node_setup.mount_volumes.azure_file_shares[0]
    assert share.file_mode == "0777" and share.directory_mode == "0777"
    img = c.virtual_machine_configuration.image_reference
    assert (img.publisher, img.offer, img.sku) == ("Canonical", "UbuntuServer", "16.04-LTS")
    assert_runtime_fields(c)


def test_cluster_update_resize_and_autoscale(account, ws, cluster):
    rg, w = ws
    clusters = account.batchai.clusters

    resized = clusters.update(rg, w, cluster.name, scale_settings=bm.ScaleSettings(
        manual=bm.ManualScaleSettings(target_node_count=2)))
    assert resized.name == cluster.name
    assert resized.scale_settings.manual.target_node_count == 2
    assert resized.scale_settings.auto_scale is None
    assert_runtime_fields(resized)
    assert clusters.get(rg, w, cluster.name).scale_settings.manual.target_node_count == 2

    auto = clusters.update(rg, w, cluster.name, scale_settings=bm.ScaleSettings(
        auto_scale=bm.AutoScaleSettings(minimum_node_count=0, maximum_node_count=3)))
    assert auto.scale_settings.manual is None
    assert auto.scale_settings.auto_scale.minimum_node_count == 0
    assert auto.scale_settings.auto_scale.maximum_node_count == 3
    assert auto.scale_settings.auto_scale.initial_node_count == 0
    got = clusters.get(rg, w, cluster.name)
    assert got.scale_settings.manual is None
    assert got.scale_settings.auto_scale.maximum_node_count == 3
    assert_no_secrets(got)


def test_cluster_list_by_workspace(account, ws):
    rg, w = ws
    names = {account.create_cluster(rg, w).name for _ in range(3)}
    listed = list(account.batchai.clusters.list_by_workspace(rg, w))
    assert {c.name for c in listed} == names
    for c in listed:
        assert_runtime_fields(c)
        assert_no_secrets(c)
    # Another workspace does not see them.
    _, other = account.create_workspace(rg)
    assert list(account.batchai.clusters.list_by_workspace(rg, other)) == []


def test_cluster_remote_login_information_empty(account, ws, cluster):
    rg, w = ws
    assert list(account.batchai.clusters.list_remote_login_information(rg, w, cluster.name)) == []


def test_cluster_delete_then_404(account, ws, cluster):
    rg, w = ws
    wait(account.batchai.clusters.delete(rg, w, cluster.name))
    with pytest.raises(CloudError) as ei:
        account.batchai.clusters.get(rg, w, cluster.name)
    assert_cloud_error(ei, 404)
    assert list(account.batchai.clusters.list_by_workspace(rg, w)) == []


def test_cluster_autoscale_create(account, ws):
    rg, w = ws
    params = quickstart_cluster()
    params.scale_settings = bm.ScaleSettings(auto_scale=bm.AutoScaleSettings(
        minimum_node_count=0, maximum_node_count=4))
    c = account.create_cluster(rg, w, params=params)
    got = account.batchai.clusters.get(rg, w, c.name)
    assert got.scale_settings.manual is None
    assert got.scale_settings.auto_scale.maximum_node_count == 4
    assert got.scale_settings.auto_scale.initial_node_count == 0
    assert_runtime_fields(got)


def test_cluster_in_missing_workspace_is_404(account):
    rg = account.create_rg()
    with pytest.raises(CloudError) as ei:
        account.batchai.clusters.create(rg, short("nows"), short("cl"), quickstart_cluster())
    assert_cloud_error(ei, 404)
