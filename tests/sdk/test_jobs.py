"""Jobs through azure-mgmt-batchai 2.0.0 (no nodes exist: jobs stay `queued`)."""

import datetime
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
from azure.mgmt.batchai import models as bm
from msrestazure.azure_exceptions import CloudError

from helpers import (PROVIDER, assert_cloud_error, cntk_job, custom_job, poll_operations,
                     raw_job_body, short, wait)

UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


@pytest.fixture
def exp(account, ws):
    rg, w = ws
    return account.create_experiment(rg, w)


def job_path(account, rg, w, exp, job=""):
    return f"{account.ws_path(rg, w)}/experiments/{exp}/jobs" + (f"/{job}" if job else "")


def test_custom_job_create_and_get(account, ws, cluster, exp):
    rg, w = ws
    name = short("job")
    params = custom_job(
        cluster.id,
        environment_variables=[bm.EnvironmentVariable(name="PLAIN", value="visible")],
        secrets=[bm.EnvironmentVariableWithSecretValue(name="TOKEN", value="s3cr3t-value")],
    )
    created = wait(account.batchai.jobs.create(rg, w, exp, name, params))

    for job in (created, account.batchai.jobs.get(rg, w, exp, name)):
        assert job.name == name
        assert job.id == f"/subscriptions/{account.sub}/resourceGroups/{rg}/{PROVIDER}/workspaces/{w}/experiments/{exp}/jobs/{name}"
        assert job.type == "Microsoft.BatchAI/workspaces/experiments/jobs"
        assert job.provisioning_state == "succeeded"
        assert job.execution_state == "queued"
        assert job.execution_state_transition_time is not None
        assert job.creation_time is not None
        assert job.tool_type == "custom"
        assert job.custom_toolkit_settings.command_line == "echo hi"
        assert job.cluster.id.lower() == cluster.id.lower()
        assert job.node_count == 1
        assert job.scheduling_priority == "normal"
        assert job.constraints.max_wall_clock_time == datetime.timedelta(days=7)
        seg = f"{account.sub}/{rg}/workspaces/{w}/experiments/{exp}/jobs/{name}/"
        assert job.job_output_directory_path_segment.startswith(seg), job.job_output_directory_path_segment
        assert re.fullmatch(re.escape(seg) + UUID, job.job_output_directory_path_segment)
        assert [(e.name, e.value) for e in job.environment_variables] == [("PLAIN", "visible")]
        assert [s.name for s in job.secrets] == ["TOKEN"]
        assert job.secrets[0].value is None

    raw = account.request("GET", job_path(account, rg, w, exp, name))
    assert raw.status_code == 200
    assert raw.json()["properties"]["experimentName"] == exp
    assert "s3cr3t-value" not in raw.text


def test_job_output_segment_is_fresh_per_instance(account, ws, cluster, exp):
    rg, w = ws
    name = short("job")
    first = wait(account.batchai.jobs.create(rg, w, exp, name, custom_job(cluster.id)))
    wait(account.batchai.jobs.delete(rg, w, exp, name))
    second = wait(account.batchai.jobs.create(rg, w, exp, name, custom_job(cluster.id)))
    assert first.job_output_directory_path_segment != second.job_output_directory_path_segment


def test_cntk_quickstart_job(account, ws, cluster, exp):
    rg, w = ws
    name = short("job")
    job = wait(account.batchai.jobs.create(rg, w, exp, name, cntk_job(cluster.id)))
    assert job.tool_type == "cntk"
    assert job.execution_state == "queued"
    assert job.cntk_settings.python_script_file_path == "$AZ_BATCHAI_INPUT_SAMPLE/ConvNet_MNIST.py"
    assert job.container_settings.image_source_registry.image.startswith("microsoft/cntk:")
    assert [(d.id, d.path) for d in job.input_directories] == [
        ("SAMPLE", "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare/mnistcntksample")]
    assert [(d.id, d.path_suffix) for d in job.output_directories] == [("MODEL", "Models")]
    assert job.std_out_err_path_prefix == "$AZ_BATCHAI_MOUNT_ROOT/azurefileshare"


def test_job_constraints_and_priority_echoed(account, ws, cluster, exp):
    rg, w = ws
    params = custom_job(cluster.id, scheduling_priority="high",
                        constraints=bm.JobBasePropertiesConstraints(
                            max_wall_clock_time=datetime.timedelta(hours=2)))
    job = wait(account.batchai.jobs.create(rg, w, exp, short("job"), params))
    assert job.scheduling_priority == "high"
    assert job.constraints.max_wall_clock_time == datetime.timedelta(hours=2)


def test_jobs_list_by_experiment(account, ws, cluster, exp):
    rg, w = ws
    names = set()
    for params in (custom_job(cluster.id), cntk_job(cluster.id), custom_job(cluster.id)):
        names.add(wait(account.batchai.jobs.create(rg, w, exp, short("job"), params)).name)
    listed = list(account.batchai.jobs.list_by_experiment(rg, w, exp))
    assert {j.name for j in listed} == names
    assert all(j.execution_state == "queued" for j in listed)
    other = account.create_experiment(rg, w)
    assert list(account.batchai.jobs.list_by_experiment(rg, w, other)) == []


def test_job_remote_login_information_empty(account, ws, cluster, exp):
    rg, w = ws
    name = short("job")
    wait(account.batchai.jobs.create(rg, w, exp, name, custom_job(cluster.id)))
    assert list(account.batchai.jobs.list_remote_login_information(rg, w, exp, name)) == []


def test_job_terminate(account, ws, cluster, exp):
    rg, w = ws
    name = short("job")
    wait(account.batchai.jobs.create(rg, w, exp, name, custom_job(cluster.id)))
    wait(account.batchai.jobs.terminate(rg, w, exp, name))
    job = account.batchai.jobs.get(rg, w, exp, name)
    assert job.execution_state == "failed"
    info = job.execution_info
    assert info is not None and info.end_time is not None
    assert info.exit_code is None
    assert [e.code for e in info.errors] == ["JobTerminated"]
    assert info.errors[0].message

    # Terminating a finished job is a successful no-op.
    wait(account.batchai.jobs.terminate(rg, w, exp, name))
    assert account.batchai.jobs.get(rg, w, exp, name).execution_state == "failed"


def test_job_delete_then_404_job_not_found(account, ws, cluster, exp):
    rg, w = ws
    name = short("job")
    wait(account.batchai.jobs.create(rg, w, exp, name, custom_job(cluster.id)))
    wait(account.batchai.jobs.delete(rg, w, exp, name))
    with pytest.raises(CloudError) as ei:
        account.batchai.jobs.get(rg, w, exp, name)
    assert_cloud_error(ei, 404, "JobNotFound")
    assert list(account.batchai.jobs.list_by_experiment(rg, w, exp)) == []


def test_job_lro_statuses(account, ws, cluster, exp):
    """Raw: job PUT, terminate and DELETE are 202 LROs whose operations end
    in Succeeded and stay readable afterwards."""
    rg, w = ws
    path = job_path(account, rg, w, exp, short("job"))
    urls = []
    r = account.request("PUT", path, json=raw_job_body(cluster.id))
    assert r.status_code == 202, r.text
    urls.append(r.headers["Azure-AsyncOperation"])
    poll_operations(account.http, urls[-1:])
    r = account.request("POST", path + "/terminate")
    assert r.status_code == 202, r.text
    urls.append(r.headers["Azure-AsyncOperation"])
    poll_operations(account.http, urls[-1:])
    r = account.request("DELETE", path)
    assert r.status_code == 202, r.text
    urls.append(r.headers["Azure-AsyncOperation"])
    finals = poll_operations(account.http, urls)  # all three, the first two again
    assert [finals[u]["status"] for u in urls] == ["Succeeded"] * 3


@pytest.mark.slow
def test_jobs_paging_over_1000(account, ws, cluster, exp):
    rg, w = ws
    n = 1003
    base = job_path(account, rg, w, exp)
    body = raw_job_body(cluster.id)
    local = threading.local()

    def put(i):
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
            s.headers["Authorization"] = f"Bearer {account.token}"
        r = s.put(account.url(f"{base}/job-{i:05d}"), json=body, timeout=60)
        assert r.status_code in (200, 202), (i, r.status_code, r.text[:300])
        return r.headers.get("Azure-AsyncOperation") if r.status_code == 202 else None

    with ThreadPoolExecutor(max_workers=16) as ex:
        ops = [u for u in ex.map(put, range(n)) if u]
    finals = poll_operations(account.http, ops)
    assert {b["status"] for b in finals.values()} == {"Succeeded"}

    # Through the SDK (default page size 1000: two pages).
    names = [j.name for j in account.batchai.jobs.list_by_experiment(rg, w, exp)]
    assert len(names) == n
    assert set(names) == {f"job-{i:05d}" for i in range(n)}

    # Through the SDK with a small page size.
    opts = bm.JobsListByExperimentOptions(max_results=100)
    small = [j.name for j in account.batchai.jobs.list_by_experiment(rg, w, exp, jobs_list_by_experiment_options=opts)]
    assert len(small) == n and len(set(small)) == n

    # Raw: nextLink absolute, followed verbatim, absent (or null) on the last page.
    resp = account.request("GET", base)
    pages, seen = 0, []
    while True:
        assert resp.status_code == 200, resp.text[:300]
        page = resp.json()
        pages += 1
        assert len(page["value"]) <= 1000
        seen += [j["name"] for j in page["value"]]
        nxt = page.get("nextLink")
        if nxt is None:
            break
        parts = urlsplit(nxt)
        assert parts.scheme in ("http", "https") and parts.netloc, nxt
        assert "api-version=" in parts.query, nxt
        assert pages < 10, "paging does not end"
        resp = account.http.get(nxt, timeout=60)
    assert pages == 2
    assert len(seen) == n and len(set(seen)) == n
