"""Microsoft.Resources through azure-mgmt-resource 13.0.0: resource groups,
subscriptions, providers; plus Batch AI's operations and usages lists."""

import time

import pytest
from msrestazure.azure_exceptions import CloudError

from helpers import (LRO_DEADLINE_S, RG_API, assert_cloud_error, assert_lro_accepted,
                     short, wait)


def test_resource_group_create_201_then_200(account):
    rgs = account.resources.resource_groups
    name = short("rg")
    first = rgs.create_or_update(name, {"location": "eastus", "tags": {"a": "1"}}, raw=True)
    assert first.response.status_code == 201
    assert first.output.name == name
    assert first.output.location == "eastus"
    assert first.output.id.lower() == f"/subscriptions/{account.sub}/resourcegroups/{name}".lower()
    assert first.output.properties.provisioning_state == "Succeeded"

    again = rgs.create_or_update(name, {"location": "eastus", "tags": {"a": "2"}}, raw=True)
    assert again.response.status_code == 200
    assert again.output.tags == {"a": "2"}


def test_resource_group_get_exists_list(account):
    rgs = account.resources.resource_groups
    a, b = account.create_rg(), account.create_rg(location="westus2")

    got = rgs.get(a)
    assert got.name == a and got.location == "eastus"
    assert got.type == "Microsoft.Resources/resourceGroups"

    assert rgs.check_existence(a) is True
    assert rgs.check_existence(short("missing")) is False

    names = {g.name for g in rgs.list()}
    assert names == {a, b}  # a fresh subscription holds exactly these

    with pytest.raises(CloudError) as ei:
        rgs.get(short("missing"))
    assert_cloud_error(ei, 404, "ResourceGroupNotFound")


def test_resource_group_update_tags(account):
    rgs = account.resources.resource_groups
    name = account.create_rg()
    updated = rgs.update(name, {"tags": {"team": "ml", "env": "test"}})
    assert updated.tags == {"team": "ml", "env": "test"}
    assert rgs.get(name).tags == {"team": "ml", "env": "test"}


def test_resource_group_delete_cascades(account):
    rgs = account.resources.resource_groups
    rg, ws = account.create_workspace()
    exp = account.create_experiment(rg, ws)
    assert account.batchai.experiments.get(rg, ws, exp).name == exp

    wait(rgs.delete(rg))

    assert rgs.check_existence(rg) is False
    with pytest.raises(CloudError) as ei:
        account.batchai.workspaces.get(rg, ws)
    assert ei.value.status_code == 404
    assert all(w.name != ws for w in account.batchai.workspaces.list())


def test_resource_group_delete_is_202_with_location(account):
    rg = account.create_rg()
    resp = account.request("DELETE", account.rg_path(rg), api_version=RG_API)
    assert resp.status_code == 202, resp.text
    loc = resp.headers.get("Location")
    assert loc and loc.startswith(("http://", "https://")), dict(resp.headers)
    # Follow the Location the way msrestazure does: 202 while running, then 200.
    end = time.monotonic() + LRO_DEADLINE_S
    while True:
        r = account.http.get(loc, timeout=60)
        assert r.status_code in (200, 202, 204), (r.status_code, r.text)
        if r.status_code != 202:
            break
        assert time.monotonic() < end, "resource group delete did not finish"
        time.sleep(int(r.headers.get("Retry-After", "1")))
    assert account.resources.resource_groups.check_existence(rg) is False


def test_subscriptions_list_and_get(account):
    subs = account.subscriptions_client().subscriptions
    listed = list(subs.list())
    assert [s.subscription_id for s in listed] == [account.sub]
    got = subs.get(account.sub)
    assert got.subscription_id == account.sub
    assert got.id == f"/subscriptions/{account.sub}"
    assert got.state == "Enabled"


def test_provider_register_and_get(account):
    providers = account.resources.providers
    reg = providers.register("Microsoft.BatchAI")
    assert reg.namespace == "Microsoft.BatchAI"
    assert reg.registration_state in ("Registered", "Registering")
    got = providers.get("Microsoft.BatchAI")
    assert got.namespace == "Microsoft.BatchAI"
    assert got.registration_state == "Registered"


def test_operations_list(account):
    ops = list(account.batchai.operations.list())
    assert ops
    names = {o.name for o in ops}
    assert all(n.startswith("Microsoft.BatchAI/") for n in names), names
    assert any("clusters" in n.lower() for n in names)
    assert any("jobs" in n.lower() for n in names)
    for o in ops:
        assert o.display is not None and o.display.provider


def test_usages_list(account):
    usages = list(account.batchai.usages.list("eastus"))
    assert usages
    for u in usages:
        assert u.unit == "Count"
        assert u.name is not None and u.name.value
        assert isinstance(u.current_value, int) and isinstance(u.limit, int)
    assert any(u.name.value == "Clusters" for u in usages)


def test_cluster_put_is_202_lro(account):
    """The raw LRO headers every SDK poller relies on (sdk-wire.md §4.1)."""
    rg, ws = account.create_workspace()
    path = f"{account.ws_path(rg, ws)}/clusters/{short('cl')}"
    resp = account.request("PUT", path, json={"properties": {
        "vmSize": "STANDARD_NC6",
        "scaleSettings": {"manual": {"targetNodeCount": 0}},
        "userAccountSettings": {"adminUserName": "u", "adminUserPassword": "p"}}})
    assert_lro_accepted(resp)
