"""Graceful shutdown, as Kubernetes does it: SIGTERM, then the pod has its grace period.

The proxy turns /readyz 503 at once (so no new traffic is routed to it), stops accepting
connections, lets requests in flight finish, and exits 0; requests still running when the grace
period ends are cut (never completed wrongly). A second SIGTERM stops it at once."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import threading
import time
import uuid
from urllib.parse import urlsplit

import botocore.exceptions
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from conftest import http_status, no_retry_client, proxy_default_env

from cloudtaser_s3 import localservers as ls

MiB = 2**20


@pytest.fixture(scope="module")
def bucket(seaweedfs) -> str:
    name = f"shutdown-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().create_bucket(Bucket=name)
    return name


def accepts_connections(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=1).close()
        return True
    except OSError:
        return False


def trickle_put(proxy, backend, bucket: str, key: str, data: bytes, seconds: float) -> int:
    """A signed PutObject whose body arrives over ``seconds``, like a client on a poor network;
    returns the status."""
    parts = urlsplit(proxy.endpoint)
    request = AWSRequest(
        "PUT",
        f"{proxy.endpoint}/{bucket}/{key}",
        headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD", "content-length": str(len(data))},
    )
    creds = Credentials(backend.access_key, backend.secret_key)
    SigV4Auth(creds, "s3", "us-east-1").add_auth(request)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.putrequest("PUT", f"/{bucket}/{key}", skip_accept_encoding=True)
    for name, value in request.headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    pieces = 20
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        conn.send(data[i : i + step])
        time.sleep(seconds / pieces)
    status = conn.getresponse().status
    conn.close()
    return status


def slow_download(s3, bucket: str, key: str, out: dict) -> None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        got = bytearray()
        for chunk in body.iter_chunks(MiB):
            got += chunk
            time.sleep(0.08)
        out["data"] = bytes(got)
    except Exception as e:  # noqa: BLE001 - reported by the test
        out["error"] = e


def slow_upload(proxy, backend, bucket: str, key: str, data: bytes, out: dict) -> None:
    try:
        out["status"] = trickle_put(proxy, backend, bucket, key, data, seconds=4)
    except Exception as e:  # noqa: BLE001
        out["error"] = e


def test_sigterm_finishes_requests_in_flight_then_exits_0(
    openbao, openbao_token, seaweedfs, bucket, tmp_path
):
    env = {
        **proxy_default_env(seaweedfs, openbao, openbao_token),
        "CLOUDTASER_S3PROXY_SHUTDOWN_GRACE": "30s",
    }
    proxy = ls.start_proxy(env, tmp_path, stop_timeout=40)
    try:
        s3 = no_retry_client(proxy, seaweedfs)
        big = os.urandom(24 * MiB)
        s3.put_object(Bucket=bucket, Key="big", Body=big)
        upload = os.urandom(4 * MiB)
        down: dict = {}
        up: dict = {}
        threads = [
            threading.Thread(target=slow_download, args=(s3, bucket, "big", down)),
            threading.Thread(
                target=slow_upload, args=(proxy, seaweedfs, bucket, "slow-up", upload, up)
            ),
        ]
        for t in threads:
            t.start()
        time.sleep(1)  # both are in flight now; the upload goes on for 3 more seconds
        os.kill(proxy.pid, signal.SIGTERM)
        time.sleep(0.3)
        assert http_status(proxy.readyz) == 503
        assert not accepts_connections(proxy.endpoint)
        for t in threads:
            t.join(60)
        assert "error" not in down and down["data"] == big
        assert "error" not in up and up["status"] == 200
        assert proxy.process.popen.wait(30) == 0
        assert s3_direct_body(seaweedfs, bucket, "slow-up") != upload  # stored encrypted
        assert "drained; exiting" in proxy.log_tail(50)
    finally:
        proxy.stop()
    # And the object written during the drain reads back through a new proxy.
    again = ls.start_proxy(env, tmp_path / "again")
    try:
        s3 = no_retry_client(again, seaweedfs)
        assert s3.get_object(Bucket=bucket, Key="slow-up")["Body"].read() == upload
    finally:
        again.stop()


def s3_direct_body(backend, bucket: str, key: str) -> bytes:
    return backend.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_requests_outliving_the_grace_period_are_cut_and_the_proxy_still_exits_0(
    openbao, openbao_token, seaweedfs, bucket, tmp_path
):
    env = {
        **proxy_default_env(seaweedfs, openbao, openbao_token),
        "CLOUDTASER_S3PROXY_SHUTDOWN_GRACE": "1s",
    }
    proxy = ls.start_proxy(env, tmp_path)
    try:
        up: dict = {}
        t = threading.Thread(
            target=slow_upload, args=(proxy, seaweedfs, bucket, "cut", os.urandom(4 * MiB), up)
        )
        t.start()
        time.sleep(0.8)
        started = time.monotonic()
        os.kill(proxy.pid, signal.SIGTERM)
        assert proxy.process.popen.wait(20) == 0
        assert time.monotonic() - started < 10
        t.join(30)
        assert "error" in up  # cut, and the client knows it
        with pytest.raises(botocore.exceptions.ClientError):
            seaweedfs.client().head_object(Bucket=bucket, Key="cut")  # nothing half-stored
        assert "cutting 1 request" in proxy.log_tail(50)
    finally:
        proxy.stop()
