"""Workspaces and experiments through azure-mgmt-batchai 2.0.0."""

import pytest
from msrestazure.azure_exceptions import CloudError

from helpers import PROVIDER, assert_cloud_error, custom_job, quickstart_cluster, short, wait


def test_workspace_create_get_list_update_delete(account):
    bai = account.batchai
    rg = account.create_rg()
    other_rg = account.create_rg()
    name = short("ws")

    created = wait(bai.workspaces.create(rg, name, "eastus", tags={"k": "v"}))
    assert created.name == name
    assert created.id == f"/subscriptions/{account.sub}/resourceGroups/{rg}/{PROVIDER}/workspaces/{name}"
    assert created.type == "Microsoft.BatchAI/workspaces"
    assert created.location == "eastus"
    assert created.tags == {"k": "v"}
    assert created.provisioning_state == "succeeded"
    assert created.creation_time is not None
    assert created.provisioning_state_transition_time is not None

    got = bai.workspaces.get(rg, name)
    assert got.id == created.id and got.provisioning_state == "succeeded"

    _, second = account.create_workspace(other_rg)
    assert {w.name for w in bai.workspaces.list()} == {name, second}
    assert [w.name for w in bai.workspaces.list_by_resource_group(rg)] == [name]
    assert [w.name for w in bai.workspaces.list_by_resource_group(other_rg)] == [second]

    updated = bai.workspaces.update(rg, name, tags={"k": "w", "new": "1"})
    assert updated.tags == {"k": "w", "new": "1"}
    assert bai.workspaces.get(rg, name).tags == {"k": "w", "new": "1"}

    wait(bai.workspaces.delete(rg, name))
    with pytest.raises(CloudError) as ei:
        bai.workspaces.get(rg, name)
    assert_cloud_error(ei, 404)
    assert [w.name for w in bai.workspaces.list_by_resource_group(rg)] == []


def test_workspace_put_is_synchronous_200(account):
    """Workspace PUT answers 200 with the resource, first time and again
    (sdk-wire.md §4.1, batchai-api.md §1.2)."""
    rg = account.create_rg()
    path = account.ws_path(rg, short("ws"))
    for _ in range(2):
        resp = account.request("PUT", path, json={"location": "eastus"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["properties"]["provisioningState"] == "succeeded"
        assert body["location"] == "eastus"
    assert account.request("GET", path).status_code == 200


def test_experiment_create_get_list_delete(account, ws):
    rg, w = ws
    bai = account.batchai
    name = short("exp")

    created = wait(bai.experiments.create(rg, w, name))
    assert created.name == name
    assert created.id == f"/subscriptions/{account.sub}/resourceGroups/{rg}/{PROVIDER}/workspaces/{w}/experiments/{name}"
    assert created.type == "Microsoft.BatchAI/workspaces/experiments"
    assert created.provisioning_state == "succeeded"
    assert created.creation_time is not None

    got = bai.experiments.get(rg, w, name)
    assert got.id == created.id

    other = account.create_experiment(rg, w)
    assert {e.name for e in bai.experiments.list_by_workspace(rg, w)} == {name, other}

    wait(bai.experiments.delete(rg, w, name))
    with pytest.raises(CloudError) as ei:
        bai.experiments.get(rg, w, name)
    assert_cloud_error(ei, 404)
    assert [e.name for e in bai.experiments.list_by_workspace(rg, w)] == [other]


def test_experiment_put_without_body_is_200(account, ws):
    """The SDK sends no body at all (Content-Length 0); the spec example sends
    {"properties":{}}; both must be accepted synchronously."""
    rg, w = ws
    base = f"{account.ws_path(rg, w)}/experiments"
    r1 = account.request("PUT", f"{base}/{short('e')}", data=b"",
                         headers={"Content-Type": "application/json; charset=utf-8"})
    assert r1.status_code == 200, r1.text
    assert r1.json()["properties"]["provisioningState"] == "succeeded"
    r2 = account.request("PUT", f"{base}/{short('e')}", json={"properties": {}})
    assert r2.status_code == 200, r2.text


def test_experiment_delete_cascades_jobs(account, ws, cluster):
    rg, w = ws
    exp = account.create_experiment(rg, w)
    job = short("job")
    wait(account.batchai.jobs.create(rg, w, exp, job, custom_job(cluster.id)))
    wait(account.batchai.experiments.delete(rg, w, exp))
    with pytest.raises(CloudError) as ei:
        account.batchai.jobs.get(rg, w, exp, job)
    assert ei.value.status_code == 404


def test_workspace_delete_cascades(account, ws, cluster):
    rg, w = ws
    exp = account.create_experiment(rg, w)
    wait(account.batchai.workspaces.delete(rg, w))
    for call in (lambda: account.batchai.clusters.get(rg, w, cluster.name),
                 lambda: account.batchai.experiments.get(rg, w, exp)):
        with pytest.raises(CloudError) as ei:
            call()
        assert ei.value.status_code == 404


def test_children_created_while_parents_in_flight(account):
    """The quickstart never awaits workspaces.create / experiments.create before
    creating the cluster / job (sdk-wire.md §3 lines 11-12, 20-21)."""
    bai = account.batchai
    rg = account.create_rg()
    w, c, e, j = short("ws"), short("cl"), short("exp"), short("job")

    ws_poller = bai.workspaces.create(rg, w, "eastus")
    cl_poller = bai.clusters.create(rg, w, c, quickstart_cluster())
    exp_poller = bai.experiments.create(rg, w, e)
    cluster_id = f"/subscriptions/{account.sub}/resourceGroups/{rg}/{PROVIDER}/workspaces/{w}/clusters/{c}"
    job_poller = bai.jobs.create(rg, w, e, j, custom_job(cluster_id))

    assert wait(ws_poller).name == w
    assert wait(cl_poller).name == c
    assert wait(exp_poller).name == e
    job = wait(job_poller)
    assert job.name == j and job.cluster.id.lower() == cluster_id.lower()
    assert bai.jobs.get(rg, w, e, j).execution_state == "queued"
