"""The addon's hooks driven directly with mitmproxy's taddons: every hook ends with the flow
transformed, an S3 error answered, or the body routed away — never forwarded as it came."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

from cloudtaser_s3 import addon as addon_module
from cloudtaser_s3 import envelope
from cloudtaser_s3.addon import CloudTaser
from cloudtaser_s3.layout import Layout

AK, SK = "AKIDEXAMPLE000000001", "secret/key+for/tests"
UPSTREAM = ("s3.example.internal", 9000)
ENV = {
    "VAULT_ADDR": "http://127.0.0.1:9",
    "VAULT_AUTH_METHOD": "token",
    "VAULT_TOKEN": "t",
    "CLOUDTASER_S3PROXY_TRANSIT_KEY": "s3-dek-wrapper",
    "S3_ENDPOINT": f"http://{UPSTREAM[0]}:{UPSTREAM[1]}",
    "S3_REGION": "eu-west-1",
    "CLOUDTASER_S3PROXY_LISTEN_ADDR": "127.0.0.1:8099",
    "AWS_ACCESS_KEY_ID": AK,
    "AWS_SECRET_ACCESS_KEY": SK,
}


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)


def signed_flow(method: str, path: str, body: bytes = b"", headers=None, secret: str = SK):
    """A flow as mitmproxy hands it to requestheaders: client headers, upstream address."""
    url = f"http://127.0.0.1:8099{path}"
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    req.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    req.context["timestamp"] = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    S3SigV4Auth(Credentials(AK, secret), "s3", "eu-west-1").add_auth(req)
    hdrs = http.Headers(host="127.0.0.1:8099", **{"content-length": str(len(body))})
    for k, v in req.headers.items():
        hdrs[k] = v
    f = tflow.tflow(
        req=tutils.treq(
            method=method.encode(),
            host=UPSTREAM[0],
            port=UPSTREAM[1],
            path=path.encode(),
            headers=hdrs,
            content=None,
        )
    )
    return f


def run(scenario):
    """Run ``scenario(addon)`` inside a configured taddons context on an event loop."""

    async def main():
        ct = CloudTaser()
        with taddons.context(Proxyserver(), ct) as tctx:
            tctx.configure(ct)
            await ct.refusals.start()
            try:
                return await scenario(ct)
            finally:
                await ct.refusals.stop()

    return asyncio.run(main())


def error_code(f: http.HTTPFlow) -> tuple[int, str]:
    assert f.response is not None
    body = f.response.get_text()
    return f.response.status_code, body.split("<Code>")[1].split("</Code>")[0]


def test_configure_takes_the_mode_from_the_environment():
    async def scenario(ct):
        from mitmproxy import ctx

        assert ctx.options.mode == ["reverse:http://s3.example.internal:9000@127.0.0.1:8099"]
        assert ctx.options.keep_host_header is True
        return ct.settings

    settings = run(scenario)
    assert settings.s3_region == "eu-west-1"


def test_an_unsigned_request_is_answered_with_access_denied():
    async def scenario(ct):
        f = tflow.tflow(req=tutils.treq(method=b"GET", path=b"/bucket/key", content=None))
        f.request.headers.clear()
        await ct.requestheaders(f)
        return f

    assert error_code(run(scenario)) == (403, "AccessDenied")


def test_a_wrong_signature_is_answered_before_anything_else():
    async def scenario(ct):
        f = signed_flow("GET", "/bucket/key", secret="wrong")
        await ct.requestheaders(f)
        return f

    assert error_code(run(scenario)) == (403, "SignatureDoesNotMatch")


def test_a_ranged_get_asks_the_store_for_whole_segments():
    async def scenario(ct):
        stored = envelope.sealed_part_length(1_000_000)
        ct.layouts.put("bucket", "key", Layout.single('"etag"', stored))
        f = signed_flow("GET", "/bucket/key", headers={"Range": "bytes=70000-70009"})
        await ct.requestheaders(f)
        return f

    f = run(scenario)
    assert f.response is None
    # Segment 1 of the stored object: 16 + 65564 .. 16 + 2 * 65564 - 1.
    assert f.request.headers["range"] == "bytes=65580-131143"


def test_a_refused_request_with_a_body_goes_to_the_local_responder_not_upstream():
    async def scenario(ct):
        f = signed_flow("PUT", "/bucket/key?partNumber=1&uploadId=u", body=b"x" * 1000)
        await ct.requestheaders(f)
        return f, ct.refusals.port

    f, port = run(scenario)
    assert f.response is None  # answered by the responder, after mitmproxy drops the body
    assert (f.request.host, f.request.port) == ("127.0.0.1", port)
    assert "authorization" not in f.request.headers
    assert callable(f.request.stream)
    assert f.request.stream(b"plaintext that must go nowhere") == []


def test_an_exception_inside_the_hook_becomes_an_internal_error(monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(addon_module, "classify", explode)

    async def scenario(ct):
        f = signed_flow("GET", "/bucket/key")
        await ct.requestheaders(f)
        return f

    assert error_code(run(scenario)) == (500, "InternalError")


def test_pass_through_requests_lose_client_metadata_and_are_re_signed_for_upstream():
    async def scenario(ct):
        f = signed_flow("PUT", "/bucket", headers={"x-amz-meta-cloudtaser-dek": "forged"})
        client_auth = f.request.headers["authorization"]
        await ct.requestheaders(f)
        return f, client_auth

    f, client_auth = run(scenario)
    assert f.response is None
    assert "x-amz-meta-cloudtaser-dek" not in f.request.headers
    assert f.request.host_header == "s3.example.internal:9000"
    assert f.request.headers["authorization"] != client_auth
    assert "/eu-west-1/s3/aws4_request" in f.request.headers["authorization"]


def test_a_request_while_unconfigured_is_refused(monkeypatch):
    monkeypatch.delenv("VAULT_ADDR")

    async def scenario(ct):
        assert ct.settings is None
        f = signed_flow("GET", "/bucket/key")
        await ct.requestheaders(f)
        return f

    assert error_code(run(scenario)) == (503, "ServiceUnavailable")


async def encrypted_response_flow(
    ct, method: str, alg: str = envelope.ALG, stored_length: int = 44
):
    """A GET/HEAD that went upstream, with the stored object's response headers arriving."""
    f = signed_flow(method, "/bucket/key")
    await ct.requestheaders(f)
    f.response = tutils.tresp(
        headers=http.Headers(
            **{
                "content-length": str(stored_length),
                "x-amz-meta-cloudtaser-alg": alg,
                "x-amz-checksum-crc32": "AAAAAA==",
                "etag": '"abc"',
            }
        ),
        content=None,
    )
    return f


def test_head_reports_the_plaintext_length_and_drops_ciphertext_checksums():
    async def scenario(ct):
        stored = envelope.sealed_part_length(1000)
        f = await encrypted_response_flow(ct, "HEAD", stored_length=stored)
        await ct.responseheaders(f)
        return f

    f = run(scenario)
    assert f.response.headers["content-length"] == "1000"
    assert "x-amz-checksum-crc32" not in f.response.headers
    assert f.response.headers["x-amz-meta-cloudtaser-alg"] == envelope.ALG


def test_an_unknown_format_is_turned_into_an_error_without_reading_the_body_into_memory():
    async def scenario(ct):
        f = await encrypted_response_flow(
            ct, "GET", alg="AES-256-GCM-SEG64K-99", stored_length=1 << 30
        )
        await ct.responseheaders(f)
        return f

    f = run(scenario)
    assert f.response.status_code == 409
    body = f.response.stream(b"ciphertext chunk") + b"".join(f.response.stream(b"more"))
    assert b"<Code>InvalidObjectState</Code>" in body
    assert int(f.response.headers["content-length"]) == len(body)


def test_a_refusal_that_cannot_be_routed_kills_the_flow_instead_of_forwarding_it():
    async def scenario(ct):
        await ct.refusals.stop()  # as if the local responder were gone
        f = signed_flow("PUT", "/bucket/key?partNumber=1&uploadId=u", body=b"x" * 1000)
        await ct.requestheaders(f)
        return f

    f = run(scenario)
    assert f.error is not None and f.error.msg == "Connection killed."
    assert (f.request.host, f.request.port) == UPSTREAM  # untouched, and never sent: killed
