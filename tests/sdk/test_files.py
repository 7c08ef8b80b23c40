"""The Azure Files endpoint through the real storage SDKs: azure-storage-file 2.1.0 (what the
Batch AI quickstart uploads with) and azure-storage-file-share 12.x, against a server on both
backends, with accounts made by `batchai admin storage-account create`."""

import base64
import hashlib
import hmac
import http.client
import os
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from urllib.parse import urlsplit

import pytest
import requests
from azure.common import AzureHttpError
from azure.storage.common import AccountPermissions, ResourceTypes
from azure.storage.file import FilePermissions, FileService, SharePermissions

MIB = 1024 * 1024


@pytest.fixture
def storage(server):
    """A fresh storage account: {name, key, connection_string}."""
    return server.create_storage_account()


def service(acct, **kw):
    return FileService(connection_string=acct["connection_string"], **kw)


def on_disk(server, acct, *parts):
    return os.path.join(server.data_dir, "storage", acct["name"], *parts)


def status_of(excinfo):
    return excinfo.value.status_code


def test_shares_directories_and_files_round_trip(server, storage):
    s = service(storage)
    assert s.create_share("data", fail_on_exist=False) is True
    assert s.create_share("data", fail_on_exist=False) is False, "409 on the second create"
    assert s.exists("data") and not s.exists("nodata")
    assert [x.name for x in s.list_shares(prefix="da")] == ["data"]
    assert s.create_directory("data", "in", fail_on_exist=False) is True
    assert s.create_directory("data", "in/deep", fail_on_exist=False) is True
    s.create_file_from_text("data", "in", "hello.txt", "hello world\n")
    s.create_file_from_bytes("data", "in/deep", "zero.bin", b"")

    listed = {(e.name, getattr(e.properties, "content_length", None)) for e in s.list_directories_and_files("data", "in")}
    assert listed == {("hello.txt", 12), ("deep", None)}
    props = s.get_file_properties("data", "in", "hello.txt").properties
    assert props.content_length == 12 and props.etag and props.last_modified
    assert s.get_file_to_text("data", "in", "hello.txt").content == "hello world\n"
    assert s.get_file_to_bytes("data", "in", "hello.txt", start_range=6, end_range=10).content == b"world"
    assert s.get_file_to_bytes("data", "in/deep", "zero.bin").content == b""
    # Shares are the directories clusters mount.
    with open(on_disk(server, storage, "data", "in", "hello.txt")) as f:
        assert f.read() == "hello world\n"

    with pytest.raises(AzureHttpError) as e:
        s.delete_directory("data", "in", fail_not_exist=True)
    assert status_of(e) == 409, "not empty"
    s.delete_file("data", "in", "hello.txt")
    assert not s.exists("data", "in", "hello.txt")
    with pytest.raises(AzureHttpError) as e:
        s.get_file_to_bytes("data", "in", "hello.txt")
    assert status_of(e) == 404
    s.delete_file("data", "in/deep", "zero.bin")
    assert s.delete_directory("data", "in/deep") is True
    assert s.delete_directory("data", "in") is True
    assert s.delete_share("data") is True
    assert not s.exists("data")
    assert not os.path.exists(on_disk(server, storage, "data"))


def test_listings_page_with_markers(storage):
    s = service(storage)
    s.create_share("paged")
    for i in range(7):
        s.create_file_from_text("paged", None, f"f{i}.txt", str(i))
    first = s.list_directories_and_files("paged", num_results=3)
    assert [e.name for e in first] == ["f0.txt", "f1.txt", "f2.txt"] and first.next_marker
    everything = [e.name for e in s.list_directories_and_files("paged")]
    assert everything == [f"f{i}.txt" for i in range(7)]
    assert [e.name for e in s.list_directories_and_files("paged", prefix="f6")] == ["f6.txt"]


def test_a_10_mib_file_goes_up_in_parallel_ranges_and_comes_back_in_ranges(server, storage):
    s = service(storage)
    s.create_share("big")
    s.create_directory("big", "d")
    data = os.urandom(10 * MIB + 123)
    s.create_file_from_bytes("big", "d", "blob.bin", data, max_connections=4)
    assert s.get_file_properties("big", "d", "blob.bin").properties.content_length == len(data)
    # Force the ranged, parallel download path (the default single GET is 32 MiB).
    s.MAX_SINGLE_GET_SIZE = 4 * MIB
    s.MAX_CHUNK_GET_SIZE = 2 * MIB
    got = s.get_file_to_bytes("big", "d", "blob.bin", max_connections=4).content
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    with open(on_disk(server, storage, "big", "d", "blob.bin"), "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()


def test_range_checksums_are_checked_and_a_mismatch_writes_nothing(server, storage):
    s = service(storage)
    s.create_share("sums")
    # validate_content: every 4 MiB range carries its Content-MD5, which the server checks over
    # the body as it arrived (many frames per range).
    data = os.urandom(9 * MIB + 5)
    s.create_file_from_bytes("sums", None, "data.bin", data, validate_content=True)
    assert s.get_file_to_bytes("sums", None, "data.bin").content == data

    token = s.generate_share_shared_access_signature(
        "sums", permission=SharePermissions(read=True, write=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    url = s.make_file_url("sums", None, "data.bin", sas_token=token) + "&comp=range"

    def put_range(body, md5):
        headers = {"x-ms-version": "2019-02-02", "x-ms-write": "update",
                   "x-ms-range": f"bytes=0-{len(body) - 1}", "Content-MD5": base64.b64encode(md5).decode()}
        return requests.put(url, data=body, headers=headers, timeout=30)

    r = put_range(b"x" * 1000, hashlib.md5(b"y" * 1000).digest())
    assert (r.status_code, r.headers.get("x-ms-error-code")) == (400, "Md5Mismatch"), r.text
    assert s.get_file_to_bytes("sums", None, "data.bin").content == data, "a refused range wrote nothing"
    r = put_range(b"x" * 1000, hashlib.md5(b"x" * 1000).digest())
    assert r.status_code == 201, r.text
    assert s.get_file_to_bytes("sums", None, "data.bin", start_range=0, end_range=1000).content == b"x" * 1000 + data[1000:1001]


def test_an_upload_is_invisible_until_its_last_range(server, storage):
    s = service(storage)
    s.create_share("atomic")
    observer = service(storage)
    path = on_disk(server, storage, "atomic", "model.bin")
    seen = []

    def progress(current, total):
        seen.append((current, total, observer.exists("atomic", None, "model.bin"), os.path.exists(path)))

    data = os.urandom(9 * MIB)
    s.create_file_from_bytes("atomic", None, "model.bin", data, max_connections=1, progress_callback=progress)
    assert len(seen) >= 3, seen
    for current, total, listed, present in seen:
        if current < total:
            assert not listed and not present, f"visible after {current} of {total} bytes"
    assert seen[-1][2:] == (True, True)
    # A new version replaces the old one only once complete: readers see old, then new.
    s.create_file("atomic", None, "model.bin", 4)
    s.update_range("atomic", None, "model.bin", b"ne", 0, 1)
    assert observer.get_file_properties("atomic", None, "model.bin").properties.content_length == len(data)
    s.update_range("atomic", None, "model.bin", b"w!", 2, 3)
    assert observer.get_file_to_bytes("atomic", None, "model.bin").content == b"new!"


def test_a_wrong_key_is_refused_with_403_and_changes_nothing(server, storage):
    key = base64.b64decode(storage["key"])
    wrong = base64.b64encode(bytes([key[0] ^ 1]) + key[1:]).decode()
    bad = FileService(connection_string=storage["connection_string"].replace(storage["key"], wrong))
    with pytest.raises(AzureHttpError) as e:
        bad.create_share("nope")
    assert status_of(e) == 403 and "AuthenticationFailed" in str(e.value)
    assert not os.path.exists(on_disk(server, storage, "nope"))

    # A rotated key stops working at once; the new one works.
    s = service(storage)
    s.create_share("rotating")
    rotated = server.admin("storage-account", "rotate-key", storage["name"], "--files-url", server.files_url).json
    with pytest.raises(AzureHttpError) as e:
        s.exists("rotating")
    assert status_of(e) == 403
    assert FileService(connection_string=rotated["connection_string"]).exists("rotating")


def test_sas_tokens_grant_what_they_say_until_they_expire(storage):
    s = service(storage)
    s.create_share("sas")
    s.create_file_from_text("sas", None, "read.txt", "readable")
    soon = datetime.now(timezone.utc) + timedelta(hours=1)

    token = s.generate_file_shared_access_signature("sas", None, "read.txt", permission=FilePermissions.READ,
                                                    expiry=soon)
    url = s.make_file_url("sas", None, "read.txt", sas_token=token)
    r = requests.get(url, timeout=30)
    assert (r.status_code, r.text) == (200, "readable")
    r = requests.put(url, headers={"x-ms-type": "file", "x-ms-content-length": "1", "x-ms-version": "2019-02-02"},
                     timeout=30)
    assert r.status_code == 403 and r.headers["x-ms-error-code"] == "AuthorizationPermissionMismatch"
    r = requests.get(url.replace("read.txt", "other.txt"), timeout=30)
    assert r.status_code == 403, "a file SAS names one file"
    tampered = url.replace("sp=r", "sp=rw")
    assert requests.get(tampered, timeout=30).status_code == 403

    expired = s.generate_file_shared_access_signature("sas", None, "read.txt", permission=FilePermissions.READ,
                                                      expiry=datetime.now(timezone.utc) - timedelta(minutes=1))
    r = requests.get(s.make_file_url("sas", None, "read.txt", sas_token=expired), timeout=30)
    assert r.status_code == 403 and r.headers["x-ms-error-code"] == "AuthenticationFailed"
    assert "expir" in r.text

    # A share SAS lists and writes through the SDK itself.
    share_token = s.generate_share_shared_access_signature(
        "sas", permission=SharePermissions(read=True, write=True, list=True), expiry=soon)
    by_sas = FileService(connection_string=storage["connection_string"].replace(
        f"AccountKey={storage['key']}", f"SharedAccessSignature={share_token}"))
    by_sas.create_file_from_text("sas", None, "written.txt", "by sas")
    assert sorted(e.name for e in by_sas.list_directories_and_files("sas")) == ["read.txt", "written.txt"]

    # An account SAS for the File service covers shares and objects.
    account_token = s.generate_account_shared_access_signature(
        ResourceTypes(container=True, object=True), AccountPermissions(read=True, list=True), soon)
    assert "ss=f" in account_token
    r = requests.get(s.make_file_url("sas", None, "written.txt", sas_token=account_token), timeout=30)
    assert (r.status_code, r.text) == (200, "by sas")


def signed_get(files_url, acct, raw_path):
    """A GET for a raw (not normalised) path, signed with SharedKey as the SDKs sign."""
    date = formatdate(usegmt=True)
    headers = {"x-ms-date": date, "x-ms-version": "2019-02-02"}
    string_to_sign = "GET\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:2019-02-02\n/{acct['name']}{raw_path}"
    sig = hmac.new(base64.b64decode(acct["key"]), string_to_sign.encode(), hashlib.sha256).digest()
    headers["Authorization"] = f"SharedKey {acct['name']}:{base64.b64encode(sig).decode()}"
    u = urlsplit(files_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("GET", raw_path, headers=headers)
    r = conn.getresponse()
    out = (r.status, r.getheader("x-ms-error-code"), r.read())
    conn.close()
    return out


def test_paths_cannot_leave_the_share(server, storage):
    s = service(storage)
    s.create_share("jail")
    s.create_file_from_text("jail", None, "inside.txt", "in")
    secret = os.path.join(server.data_dir, "storage", "secret.txt")
    with open(secret, "w") as f:
        f.write("secret")
    name = storage["name"]
    assert signed_get(server.files_url, storage, f"/{name}/jail/inside.txt")[:2] == (200, None), "the signer is right"
    for raw in [f"/{name}/jail/../../secret.txt", f"/{name}/jail/%2E%2E/%2E%2E/secret.txt",
                f"/{name}/jail/..%2F..%2Fsecret.txt", f"/{name}/jail/a%5C..%5C..%5Csecret.txt"]:
        status, code, body = signed_get(server.files_url, storage, raw)
        assert status == 400 and code == "InvalidResourceName", (raw, status, code, body)
        assert b"secret" not in body.replace(b"secret.txt", b"")
    # A symlink a job left in its share does not lead out of it.
    os.symlink(os.path.dirname(secret), on_disk(server, storage, "jail", "up"))
    status, code, _ = signed_get(server.files_url, storage, f"/{name}/jail/up/secret.txt")
    assert (status, code) == (404, "ResourceNotFound")
    assert [e.name for e in s.list_directories_and_files("jail")] == ["inside.txt"]


@pytest.mark.restart
def test_files_and_an_unfinished_upload_survive_a_server_restart(server_factory):
    srv = server_factory.start()
    acct = srv.create_storage_account()
    s = service(acct)
    s.create_share("keep")
    data = os.urandom(6 * MIB)
    s.create_file_from_bytes("keep", None, "done.bin", data, max_connections=2)
    s.create_file("keep", None, "half.bin", 8)
    s.update_range("keep", None, "half.bin", b"1234", 0, 3)
    srv.kill9()

    again = server_factory.restart(srv)
    s = FileService(connection_string=acct["connection_string"].replace(srv.files_url, again.files_url))
    assert s.get_file_to_bytes("keep", None, "done.bin").content == data
    assert not s.exists("keep", None, "half.bin"), "still not complete"
    s.update_range("keep", None, "half.bin", b"5678", 4, 7)
    assert s.get_file_to_bytes("keep", None, "half.bin").content == b"12345678"


def test_the_current_sdk_azure_storage_file_share_12(server, storage):
    from azure.core.exceptions import ClientAuthenticationError, ResourceExistsError, ResourceNotFoundError
    from azure.storage.fileshare import ShareServiceClient

    svc = ShareServiceClient.from_connection_string(storage["connection_string"])
    share = svc.create_share("modern")
    with pytest.raises(ResourceExistsError):
        svc.create_share("modern")
    share.create_directory("dir")
    data = os.urandom(5 * MIB + 7)
    f = share.get_file_client("dir/data.bin")
    f.upload_file(data, max_concurrency=2)
    assert f.get_file_properties().size == len(data)
    assert f.download_file().readall() == data
    assert f.download_file(offset=10, length=5).readall() == data[10:15]
    assert [e["name"] for e in share.list_directories_and_files("dir")] == ["data.bin"]
    assert [s["name"] for s in svc.list_shares()] == ["modern"]
    f.delete_file()
    with pytest.raises(ResourceNotFoundError):
        f.get_file_properties()
    share.get_directory_client("dir").delete_directory()
    svc.delete_share("modern")

    wrong = storage["connection_string"].replace(storage["key"], base64.b64encode(b"x" * 64).decode())
    with pytest.raises(ClientAuthenticationError):
        list(ShareServiceClient.from_connection_string(wrong).list_shares())


def test_mounting_a_registered_accounts_share_needs_its_key(storage, account, ws):
    from msrestazure.azure_exceptions import CloudError

    from helpers import wait
    from payloads import quickstart_cluster

    rg, w = ws
    wrong = base64.b64encode(b"x" * 64).decode()
    with pytest.raises(CloudError) as e:
        account.batchai.clusters.create(rg, w, "wrongkey", quickstart_cluster(account=storage["name"], key=wrong))
    assert e.value.status_code == 400, e.value
    assert f"not the key of storage account '{storage['name']}'" in str(e.value), e.value
    with pytest.raises(CloudError) as e:
        account.batchai.clusters.get(rg, w, "wrongkey")
    assert e.value.status_code == 404, "nothing was created"
    cluster = wait(account.batchai.clusters.create(rg, w, "rightkey",
                                                   quickstart_cluster(account=storage["name"], key=storage["key"])))
    assert cluster.provisioning_state == "succeeded"
    # An account this server does not know is a plain directory of the storage root, as before.
    wait(account.batchai.clusters.create(rg, w, "unknown", quickstart_cluster(account="notregistered", key=wrong)))
