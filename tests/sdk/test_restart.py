"""Crash safety: long-running operations accepted before a SIGKILL finish after
the server restarts on the same store (run per backend)."""

import pytest
from msrestazure.azure_exceptions import CloudError

from helpers import (Account, assert_lro_accepted, poll_operations, quickstart_cluster, raw_job_body,
                     rebase, short)

pytestmark = pytest.mark.restart

DELAY_MS = 3000


def test_operations_survive_sigkill(server_factory):
    srv = server_factory.start(env={"BATCHAI_LRO_DELAY_MS": str(DELAY_MS)})
    acct = srv.new_account()
    bai = acct.batchai

    rg = acct.create_rg()
    _, ws = acct.create_workspace(rg)  # synchronous: not held by the delay
    _, doomed_ws = acct.create_workspace(rg)
    exp = acct.create_experiment(rg, ws)

    # A cluster for the job to run on, created (and waited for) before the crash.
    base_cluster = short("cl")
    path = f"{acct.ws_path(rg, ws)}/clusters/{base_cluster}"
    body = bai.clusters._serialize.body(quickstart_cluster(), "ClusterCreateParameters")
    resp = acct.request("PUT", path, json=body)
    poll_operations(acct.http, [assert_lro_accepted(resp)])
    cluster_id = bai.clusters.get(rg, ws, base_cluster).id

    # Three operations in flight (each held DELAY_MS before it executes) ...
    new_cluster = short("cl")
    job = short("job")
    pending = []
    resp = acct.request("PUT", f"{acct.ws_path(rg, ws)}/clusters/{new_cluster}", json=body)
    pending.append(assert_lro_accepted(resp))
    resp = acct.request("PUT", f"{acct.ws_path(rg, ws)}/experiments/{exp}/jobs/{job}",
                        json=raw_job_body(cluster_id))
    pending.append(assert_lro_accepted(resp))
    resp = acct.request("DELETE", acct.ws_path(rg, doomed_ws))
    pending.append(assert_lro_accepted(resp))

    # ... when the server dies without any chance to clean up.
    srv.kill9()
    assert srv.proc.returncode == -9

    again = server_factory.restart(srv)
    acct2 = Account(acct.sub, acct.token, again.http_url)

    urls = [rebase(u, again.http_url) for u in pending]
    finals = poll_operations(acct2.http, urls)
    assert [finals[u]["status"] for u in urls] == ["Succeeded"] * 3, finals

    c = acct2.batchai.clusters.get(rg, ws, new_cluster)
    assert c.provisioning_state == "succeeded"
    assert c.user_account_settings.admin_user_password is None
    j = acct2.batchai.jobs.get(rg, ws, exp, job)
    assert j.provisioning_state == "succeeded"
    assert j.execution_state == "queued"
    with pytest.raises(CloudError) as ei:
        acct2.batchai.workspaces.get(rg, doomed_ws)
    assert ei.value.status_code == 404
    # The surviving workspace and the first cluster are untouched.
    assert acct2.batchai.workspaces.get(rg, ws).provisioning_state == "succeeded"
    assert {x.name for x in acct2.batchai.clusters.list_by_workspace(rg, ws)} == {base_cluster, new_cluster}


def test_restart_keeps_state_and_tokens(server_factory):
    """A clean restart (SIGTERM) keeps resources, tokens and the CA."""
    srv = server_factory.start()
    acct = srv.new_account()
    rg, ws = acct.create_workspace()
    ca = open(srv.ca_cert).read()
    tenant = srv.tenant
    srv.stop()

    again = server_factory.restart(srv)
    acct2 = Account(acct.sub, acct.token, again.http_url)
    assert acct2.batchai.workspaces.get(rg, ws).name == ws
    assert again.tenant == tenant
    assert open(again.ca_cert).read() == ca
