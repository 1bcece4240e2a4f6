"""Horizontal scale-out: three proxy processes in front of one store and one OpenBao, with
requests spread round-robin as a Service would, and one replica SIGKILLed in the middle.

Replicas share no state: an object's key material travels in its metadata, an upload's in the
upload id the client holds (the wrapped DEK, with a MAC), and the DEK cache and layout cache are
only caches. So every object written through any replica reads through any other, and a
multipart upload whose parts went to three replicas — one of which died — completes through the
survivors."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest
from conftest import no_retry_client

MiB = 2**20


@pytest.fixture(scope="module")
def bucket(seaweedfs) -> str:
    name = f"scale-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().create_bucket(Bucket=name)
    return name


class RoundRobin:
    """Requests go to the replicas in turn; a request that fails on a dead replica is retried
    on the next one, as a client behind a Service (or its SDK's retry) would."""

    def __init__(self, clients):
        self.clients = clients
        self.dead: set[int] = set()
        self._n = 0
        self._lock = threading.Lock()
        self.failovers = 0

    def call(self, fn):
        for _ in range(len(self.clients) * 2):
            with self._lock:
                i = self._n % len(self.clients)
                self._n += 1
            if i in self.dead:
                continue
            try:
                return fn(self.clients[i])
            except botocore.exceptions.BotoCoreError:
                if i not in self.dead:
                    raise
                self.failovers += 1  # the connection died with the replica: try the next one
        raise AssertionError("no replica answered")


def test_three_replicas_one_killed_nothing_lost(proxy_factory, seaweedfs, bucket):
    proxies = [proxy_factory(seaweedfs) for _ in range(3)]
    rr = RoundRobin([no_retry_client(p, seaweedfs) for p in proxies])
    victim = 1

    # A multipart upload whose parts are spread over the replicas.
    key = "spread-multipart"
    parts = [os.urandom(5 * MiB) for _ in range(5)] + [os.urandom(1234)]
    upload_id = rr.call(lambda c: c.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
    etags: dict[int, str] = {}

    def upload_part(n: int) -> None:
        etags[n] = rr.call(
            lambda c: c.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=parts[n - 1]
            )
        )["ETag"]

    for n in (1, 2, 3):
        upload_part(n)

    # Many small objects written and read back round-robin while a replica dies.
    written: dict[str, str] = {}
    errors: list[Exception] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        rng = random.Random(worker)
        i = 0
        while not stop.is_set():
            k = f"obj/{worker}/{i}"
            body = rng.randbytes(rng.randint(1, 300_000))
            try:
                rr.call(lambda c, k=k, body=body: c.put_object(Bucket=bucket, Key=k, Body=body))
                written[k] = hashlib.sha256(body).hexdigest()
                got = rr.call(lambda c, k=k: c.get_object(Bucket=bucket, Key=k)["Body"].read())
                assert hashlib.sha256(got).hexdigest() == written[k]
            except Exception as e:  # noqa: BLE001 - collected and reported
                errors.append(e)
            i += 1

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(load, w) for w in range(4)]
        time.sleep(3)
        rr.dead.add(victim)
        os.kill(proxies[victim].pid, signal.SIGKILL)
        time.sleep(3)
        stop.set()
        for f in futures:
            f.result()

    assert not errors, errors[:3]
    assert len(written) > 20
    assert proxies[victim].process.popen.wait(10) == -signal.SIGKILL

    # The interrupted multipart upload completes through the survivors.
    for n in (4, 5, 6):
        upload_part(n)
    rr.call(
        lambda c: c.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in range(1, 7)]},
        )
    )

    # Everything acknowledged reads back intact, through a replica that never saw any of it.
    fresh = no_retry_client(proxy_factory(seaweedfs), seaweedfs)
    assert fresh.get_object(Bucket=bucket, Key=key)["Body"].read() == b"".join(parts)
    for k, digest in written.items():
        got = fresh.get_object(Bucket=bucket, Key=k)["Body"].read()
        assert hashlib.sha256(got).hexdigest() == digest, k
    stored = seaweedfs.client().get_object(Bucket=bucket, Key=key)
    assert stored["Metadata"]["cloudtaser-alg"]
