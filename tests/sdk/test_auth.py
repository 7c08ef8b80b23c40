"""Authentication: API tokens (admin CLI), service principals through adal /
msrestazure over HTTPS, azure-identity; 401/403 envelopes."""

import uuid

import adal
import pytest
import requests
from azure.mgmt.batchai import BatchAIManagementClient
from azure.mgmt.resource import ResourceManagementClient
from msrest.exceptions import AuthenticationError
from msrestazure.azure_active_directory import ServicePrincipalCredentials
from msrestazure.azure_cloud import Cloud, CloudEndpoints
from msrestazure.azure_exceptions import CloudError

from helpers import (RG_API, Account, assert_arm_error, assert_cloud_error, quickstart_cluster, short, tune,
                     wait)

ARM_RESOURCE = "https://management.core.windows.net/"


def rg_list(base_url, sub, token=None, **kw):
    headers = kw.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(f"{base_url}/subscriptions/{sub}/resourcegroups?api-version={RG_API}",
                        headers=headers, timeout=60, **kw)


def assert_401(resp, code=None):
    assert_arm_error(resp, 401, code)
    assert resp.headers.get("WWW-Authenticate"), dict(resp.headers)


def cloud(server):
    return Cloud("batchai", endpoints=CloudEndpoints(
        active_directory=server.https_url + "/adfs",
        active_directory_resource_id=ARM_RESOURCE,
        resource_manager=server.https_url))


def sp_credentials(server, sp, secret=None):
    return ServicePrincipalCredentials(
        sp["client_id"], secret or sp["client_secret"], tenant=sp.get("tenant") or server.tenant,
        cloud_environment=cloud(server), verify=server.ca_cert)


# ------------------------------------------------------------------ API tokens


def test_no_token_is_401(server, account):
    rid = str(uuid.uuid1())
    resp = rg_list(server.http_url, account.sub, headers={"x-ms-client-request-id": rid})
    assert_401(resp, "InvalidAuthenticationToken")
    assert resp.headers.get("x-ms-client-request-id") == rid


def test_garbage_token_is_401(server, account):
    assert_401(rg_list(server.http_url, account.sub, "not-a-token"))
    assert_401(rg_list(server.http_url, account.sub, account.token + "x"))
    resp = rg_list(server.http_url, account.sub, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_401(resp)


def test_sdk_without_valid_token_raises_cloud_error(server, account):
    bad = Account(account.sub, "garbage", server.http_url)
    with pytest.raises(CloudError) as ei:
        list(bad.batchai.workspaces.list())
    assert_cloud_error(ei, 401)


def test_token_works_over_https_too(server, account):
    resp = rg_list(server.https_url, account.sub, account.token, verify=server.ca_cert)
    assert resp.status_code == 200, resp.text
    assert resp.json()["value"] == []


def test_revoked_token_is_401(server):
    sub = str(uuid.uuid4())
    tok = server.create_token(sub, name=short("revoke"))
    assert rg_list(server.http_url, sub, tok["token"]).status_code == 200
    server.admin("token", "revoke", tok["id"])
    assert_401(rg_list(server.http_url, sub, tok["token"]))


def test_expired_token_is_401(server):
    sub = str(uuid.uuid4())
    tok = None
    for secs in (-60, 0):
        cp = server.admin("token", "create", "--subscription", sub, f"--expires-in-secs={secs}", check=False)
        if cp.returncode == 0 and cp.json and cp.json.get("token"):
            tok = cp.json
            break
    if tok is None:
        pytest.skip("`batchai admin token create` accepts neither --expires-in-secs=-60 nor =0; "
                    "an expired token cannot be made without waiting")
    assert_401(rg_list(server.http_url, sub, tok["token"]))


def test_token_of_other_subscription_is_403(server, account):
    other = server.new_account()
    resp = rg_list(server.http_url, other.sub, account.token)
    assert_arm_error(resp, 403, "AuthorizationFailed")
    # Through the SDK, writes too.
    intruder = Account(other.sub, account.token, server.http_url)
    with pytest.raises(CloudError) as ei:
        intruder.resources.resource_groups.create_or_update(short("rg"), {"location": "eastus"})
    assert_cloud_error(ei, 403, "AuthorizationFailed")
    assert list(other.resources.resource_groups.list()) == []


# ------------------------------------------------------------------ service principals (adal)


def test_service_principal_end_to_end_over_https(server):
    sub = str(uuid.uuid4())
    sp = server.create_sp(sub, name=short("sp"))
    assert sub in sp["subscriptions"]
    creds = sp_credentials(server, sp)  # fetches the token in the constructor
    assert creds.token.get("access_token")

    rm = ResourceManagementClient(creds, sub, base_url=server.https_url)
    bai = BatchAIManagementClient(creds, sub, base_url=server.https_url)
    for c in (rm, bai):
        tune(c.config)
        c.config.connection.verify = server.ca_cert

    rg = short("rg")
    assert rm.resource_groups.create_or_update(rg, {"location": "eastus"}).name == rg
    ws = short("ws")
    assert wait(bai.workspaces.create(rg, ws, "eastus")).name == ws
    assert bai.workspaces.get(rg, ws).provisioning_state == "succeeded"
    # An LRO polled over HTTPS with OAuth credentials: the operation URLs the
    # server hands out must be reachable on the listener the client used.
    cl = wait(bai.clusters.create(rg, ws, short("cl"), quickstart_cluster()))
    assert cl.provisioning_state == "succeeded"
    wait(bai.clusters.delete(rg, ws, cl.name))
    # The same token is good on the plain-HTTP listener.
    resp = rg_list(server.http_url, sub, creds.token["access_token"])
    assert resp.status_code == 200 and [g["name"] for g in resp.json()["value"]] == [rg]


def test_service_principal_wrong_secret(server):
    sp = server.create_sp(str(uuid.uuid4()))
    with pytest.raises((AuthenticationError, adal.AdalError)):
        sp_credentials(server, sp, secret="wrong-" + sp["client_secret"])


def test_service_principal_unknown_client(server):
    sp = {"client_id": str(uuid.uuid4()), "client_secret": "whatever"}
    with pytest.raises((AuthenticationError, adal.AdalError)):
        sp_credentials(server, sp)


def test_service_principal_deleted(server):
    sp = server.create_sp(str(uuid.uuid4()))
    sp_credentials(server, sp)
    server.admin("sp", "delete", sp["client_id"])
    with pytest.raises((AuthenticationError, adal.AdalError)):
        sp_credentials(server, sp)


def test_token_endpoint_wire_format(server):
    sub = str(uuid.uuid4())
    sp = server.create_sp(sub)
    form = {"grant_type": "client_credentials", "client_id": sp["client_id"],
            "client_secret": sp["client_secret"], "resource": ARM_RESOURCE}
    for path in ("/adfs/oauth2/token", f"/{server.tenant}/oauth2/token"):
        resp = requests.post(server.https_url + path, data=form, verify=server.ca_cert, timeout=60)
        assert resp.status_code == 200, (path, resp.text)
        body = resp.json()
        assert body["token_type"].lower() == "bearer"
        assert int(body["expires_in"]) > 0
        assert rg_list(server.http_url, sub, body["access_token"]).status_code == 200
    bad = requests.post(server.https_url + "/adfs/oauth2/token", data={**form, "client_secret": "nope"},
                        verify=server.ca_cert, timeout=60)
    assert 400 <= bad.status_code < 500
    assert bad.json().get("error")


# ------------------------------------------------------------------ azure-identity (MSAL)


def test_azure_identity_client_secret_credential(server):
    from azure.identity import ClientSecretCredential

    sub = str(uuid.uuid4())
    sp = server.create_sp(sub)
    cred = ClientSecretCredential(sp.get("tenant") or server.tenant, sp["client_id"], sp["client_secret"],
                                  authority=server.https_url, disable_instance_discovery=True,
                                  connection_verify=server.ca_cert)
    tok = cred.get_token("https://management.azure.com/.default")
    assert tok.token and tok.expires_on > 0
    resp = rg_list(server.https_url, sub, tok.token, verify=server.ca_cert)
    assert resp.status_code == 200, resp.text
    # And the ARM API accepts it through the track-1 SDK as well.
    acct = Account(sub, tok.token, server.http_url)
    assert acct.create_rg() in {g.name for g in acct.resources.resource_groups.list()}
