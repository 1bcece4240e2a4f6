"""`./run.sh web`: the same proxy under mitmweb, for interactive debugging. The UI lists every
flow with its request metadata; bodies that stream (object data) are not kept, so the UI never
holds plaintext of an object."""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
import uuid

from conftest import proxy_default_env

from cloudtaser_s3 import localservers as ls


def web_get(port: int, path: str, password: str) -> bytes:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {password}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def test_flows_through_the_proxy_show_in_mitmwebs_api(openbao, openbao_token, moto_s3, tmp_path):
    port = ls.free_port()
    password = secrets.token_hex(12)
    env = proxy_default_env(moto_s3, openbao, openbao_token)
    proxy = ls.start_proxy(
        env,
        tmp_path,
        command="web",
        extra_args=["--set", f"web_port={port}", "--set", f"web_password={password}"],
    )
    try:
        bucket = f"web-{uuid.uuid4().hex[:10]}"
        s3 = proxy.client(moto_s3.access_key, moto_s3.secret_key)
        s3.create_bucket(Bucket=bucket)
        secret = os.urandom(200_000)
        s3.put_object(Bucket=bucket, Key="seen-in-the-ui", Body=secret)
        assert s3.get_object(Bucket=bucket, Key="seen-in-the-ui")["Body"].read() == secret

        flows = json.loads(web_get(port, "/flows", password))
        puts = [
            f
            for f in flows
            if f["request"]["method"] == "PUT" and f["request"]["path"].endswith("/seen-in-the-ui")
        ]
        assert len(puts) == 1 and puts[0]["response"]["status_code"] == 200
        gets = [
            f
            for f in flows
            if f["request"]["method"] == "GET" and "seen-in-the-ui" in f["request"]["path"]
        ]
        assert gets
        # Object bodies stream through and are not stored: neither plaintext nor ciphertext
        # (mitmweb shows no length for them and has no content to serve).
        assert puts[0]["request"]["contentLength"] is None
        assert gets[0]["response"]["contentLength"] is None
        # The UI answers nobody without the token.
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/flows", timeout=10)
            raise AssertionError("mitmweb answered without the token")
        except urllib.error.HTTPError as e:
            assert e.code == 403
    finally:
        proxy.stop()
