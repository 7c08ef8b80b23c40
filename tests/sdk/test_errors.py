"""Bad input: through the SDK (CloudError with status and error.code) and raw
(ARM error envelopes; nothing gets created); request-id headers."""

import json
import uuid

import pytest
from azure.mgmt.batchai import models as bm
from msrestazure.azure_exceptions import CloudError

from helpers import (BATCHAI_API, RG_API, assert_arm_error, assert_cloud_error, cntk_job, custom_job,
                     quickstart_cluster, short)


# ------------------------------------------------------------------ api-version


def test_missing_api_version(account, ws):
    rg, w = ws
    for path in (account.ws_path(rg, w), f"/subscriptions/{account.sub}/providers/Microsoft.BatchAI/workspaces",
                 account.rg_path(rg)):
        resp = account.request("GET", path, api_version=None)
        assert_arm_error(resp, 400, "MissingApiVersionParameter")


def test_unsupported_api_version_batchai(account, ws):
    rg, w = ws
    account.batchai.workspaces.api_version = "2017-01-01"
    with pytest.raises(CloudError) as ei:
        account.batchai.workspaces.get(rg, w)
    assert_cloud_error(ei, 400, "InvalidApiVersionParameter")
    # The resource-group version is not a Batch AI version either.
    resp = account.request("GET", account.ws_path(rg, w), api_version=RG_API)
    assert_arm_error(resp, 400, "InvalidApiVersionParameter")


def test_unsupported_api_version_resource_groups(account):
    rg = account.create_rg()
    ops = account.resources.resource_groups  # a new object on every access: keep this one
    ops.api_version = "2099-01-01"
    with pytest.raises(CloudError) as ei:
        ops.get(rg)
    assert_cloud_error(ei, 400, "InvalidApiVersionParameter")


# ------------------------------------------------------------------ validation through the SDK


def test_cluster_with_manual_and_autoscale(account, ws):
    rg, w = ws
    params = quickstart_cluster()
    params.scale_settings = bm.ScaleSettings(
        manual=bm.ManualScaleSettings(target_node_count=1),
        auto_scale=bm.AutoScaleSettings(minimum_node_count=0, maximum_node_count=2))
    name = short("cl")
    with pytest.raises(CloudError) as ei:
        account.batchai.clusters.create(rg, w, name, params)
    err = assert_cloud_error(ei, 400)
    assert err.target and "scalesettings" in err.target.lower(), (err.target, str(ei.value))
    assert list(account.batchai.clusters.list_by_workspace(rg, w)) == []


def test_job_with_two_toolkits(account, ws, cluster):
    rg, w = ws
    exp = account.create_experiment(rg, w)
    params = cntk_job(cluster.id)
    params.custom_toolkit_settings = bm.CustomToolkitSettings(command_line="echo hi")
    with pytest.raises(CloudError) as ei:
        account.batchai.jobs.create(rg, w, exp, short("job"), params)
    assert_cloud_error(ei, 400)
    assert list(account.batchai.jobs.list_by_experiment(rg, w, exp)) == []


def test_job_with_zero_nodes(account, ws, cluster):
    rg, w = ws
    exp = account.create_experiment(rg, w)
    params = custom_job(cluster.id)
    params.node_count = 0
    with pytest.raises(CloudError) as ei:
        account.batchai.jobs.create(rg, w, exp, short("job"), params)
    err = assert_cloud_error(ei, 400)
    assert err.target is None or "nodecount" in err.target.lower(), err.target
    assert list(account.batchai.jobs.list_by_experiment(rg, w, exp)) == []


def test_workspace_in_missing_resource_group(account):
    rg = short("norg")
    with pytest.raises(CloudError) as ei:
        account.batchai.workspaces.create(rg, short("ws"), "eastus")
    assert_cloud_error(ei, 404, "ResourceGroupNotFound")
    assert list(account.batchai.workspaces.list()) == []


def test_get_missing_workspace(account):
    rg = account.create_rg()
    with pytest.raises(CloudError) as ei:
        account.batchai.workspaces.get(rg, short("nows"))
    assert_cloud_error(ei, 404)
    assert ei.value.request_id  # msrestazure reads x-ms-request-id off errors


def test_get_missing_children(account, ws):
    rg, w = ws
    bai = account.batchai
    for call in (lambda: bai.clusters.get(rg, w, "nope"),
                 lambda: bai.experiments.get(rg, w, "nope"),
                 lambda: bai.jobs.get(rg, w, "nope", "nope")):
        with pytest.raises(CloudError) as ei:
            call()
        assert_cloud_error(ei, 404)


def test_invalid_names_rejected(account, ws):
    rg, w = ws
    resp = account.request("PUT", account.ws_path(rg, "bad.name"), json={"location": "eastus"})
    assert_arm_error(resp, 400)
    resp = account.request("PUT", account.ws_path(rg, "x" * 65), json={"location": "eastus"})
    assert_arm_error(resp, 400)
    assert {x.name for x in account.batchai.workspaces.list()} == {w}


# ------------------------------------------------------------------ raw bodies


def cluster_body():
    return {"properties": {
        "vmSize": "STANDARD_NC6",
        "scaleSettings": {"manual": {"targetNodeCount": 0}},
        "userAccountSettings": {"adminUserName": "u", "adminUserPassword": "p"}}}


def test_malformed_json(account, ws):
    rg, w = ws
    for path, body in ((f"{account.ws_path(rg, w)}/clusters/{short('cl')}", b'{"properties": {"vmSize": '),
                       (account.ws_path(rg, short("ws")), b'{"location": eastus}'),
                       (account.rg_path(short("rg")), b"[1, 2")):
        api = RG_API if "/resourcegroups/" in path and "/providers/" not in path else BATCHAI_API
        resp = account.request("PUT", path, api_version=api, data=body,
                               headers={"Content-Type": "application/json; charset=utf-8"})
        assert_arm_error(resp, 400)
    assert list(account.batchai.clusters.list_by_workspace(rg, w)) == []
    assert {x.name for x in account.batchai.workspaces.list()} == {w}
    assert {g.name for g in account.resources.resource_groups.list()} == {rg}


def test_json_of_wrong_shape(account, ws):
    rg, w = ws
    path = f"{account.ws_path(rg, w)}/clusters/{short('cl')}"
    for body in ([], {"properties": {"vmSize": 7}}, {"properties": "x"},
                 {"properties": {**cluster_body()["properties"], "scaleSettings": {"manual": {"targetNodeCount": "many"}}}}):
        resp = account.request("PUT", path, json=body)
        assert_arm_error(resp, 400)
    assert list(account.batchai.clusters.list_by_workspace(rg, w)) == []


def test_wrong_content_type(account, ws):
    rg, w = ws
    path = f"{account.ws_path(rg, w)}/clusters/{short('cl')}"
    resp = account.request("PUT", path, data=json.dumps(cluster_body()).encode(),
                           headers={"Content-Type": "text/plain"})
    assert_arm_error(resp, {400, 415})
    assert list(account.batchai.clusters.list_by_workspace(rg, w)) == []


def test_body_over_4_mib(account, ws):
    rg, w = ws
    body = cluster_body()
    body["properties"]["userAccountSettings"]["adminUserSshPublicKey"] = "A" * (4 * 1024 * 1024 + 1)
    data = json.dumps(body).encode()
    assert len(data) > 4 * 1024 * 1024
    path = f"{account.ws_path(rg, w)}/clusters/{short('cl')}"
    resp = account.request("PUT", path, data=data,
                           headers={"Content-Type": "application/json; charset=utf-8"})
    assert_arm_error(resp, 413)
    new_ws = short("ws")
    resp = account.request("PUT", account.ws_path(rg, new_ws), data=json.dumps(
        {"location": "eastus", "tags": {"big": "x" * (4 * 1024 * 1024 + 1)}}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"})
    assert_arm_error(resp, 413)
    assert list(account.batchai.clusters.list_by_workspace(rg, w)) == []
    assert {x.name for x in account.batchai.workspaces.list()} == {w}


# ------------------------------------------------------------------ request ids


def test_client_request_id_echoed_and_request_id_present(account, ws):
    rg, w = ws
    cases = [
        ("GET", account.ws_path(rg, w), BATCHAI_API, 200),
        ("GET", account.ws_path(rg, "missing"), BATCHAI_API, 404),
        ("GET", account.rg_path(rg), RG_API, 200),
        ("GET", account.ws_path(rg, w), None, 400),
        ("PUT", f"{account.ws_path(rg, w)}/clusters/{short('cl')}", BATCHAI_API, 202),
    ]
    for method, path, api, status in cases:
        rid = str(uuid.uuid1())
        kw = {"json": cluster_body()} if method == "PUT" else {}
        resp = account.request(method, path, api_version=api,
                               headers={"x-ms-client-request-id": rid}, **kw)
        assert resp.status_code == status, (method, path, resp.status_code, resp.text[:300])
        assert resp.headers.get("x-ms-client-request-id") == rid, (path, dict(resp.headers))
        assert resp.headers.get("x-ms-request-id"), (path, dict(resp.headers))
    # Request ids differ between requests.
    a = account.request("GET", account.ws_path(rg, w)).headers.get("x-ms-request-id")
    b = account.request("GET", account.ws_path(rg, w)).headers.get("x-ms-request-id")
    assert a and b and a != b


def test_sdk_sees_request_ids(account, ws):
    rg, w = ws
    raw = account.batchai.workspaces.get(rg, w, raw=True)
    sent = raw.response.request.headers["x-ms-client-request-id"]
    assert raw.response.headers.get("x-ms-client-request-id") == sent
    assert raw.response.headers.get("x-ms-request-id")
    assert raw.response.headers.get("Content-Type", "").startswith("application/json")
