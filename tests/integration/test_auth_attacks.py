"""Authentication attacks on a real proxy: each is refused with the error code and HTTP status
AWS S3 gives, and none reaches the store.

Requests are signed by botocore's own signers at a chosen instant (tests/authkit.py) and sent
with http.client, so every header is the test's. Between the proxy and the store (SeaweedFS,
which verifies signatures, and moto, which accepts anything) sits tests/faultproxy.py, which
records every request line it passes on: a refused request must add none, and a refused PUT
must leave no object behind. Each attack runs as a PUT (a body that must not be stored) and as
a GET (of an object that exists). Accepted look-alikes show the refusals are for the attack
alone; the 15-minute window, replays and 7-day presigned URLs are shown from both sides.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
import pytest
from authkit import Answer, Raw, Signer, WrongS3Error, expect_error
from conftest import REGION
from faultproxy import FaultProxy

from cloudtaser_s3 import sigv4
from cloudtaser_s3.localservers import ProxyProcess, S3Server
from cloudtaser_s3.s3errors import S3Error

SEEDED = b"the seeded object: only a correctly signed GET reads it"
ATTACK_BODY = b"bytes an attacker wants stored"
MINUTE = timedelta(minutes=1)
OTHER_REGION = "eu-central-1"


@dataclass
class Rig:
    """A proxy whose store sits behind a request-counting forwarder, and a bucket in it."""

    name: str
    backend: S3Server
    proxy: ProxyProcess
    store: FaultProxy  # records every request line that reaches the store
    signer: Signer
    bucket: str
    seeded: str  # key of an object stored through the proxy
    direct: Any  # boto3 client straight to the store

    def path(self, key: str) -> str:
        return f"/{self.bucket}/{key}"

    def send(self, raw: Raw) -> Answer:
        return raw.send(self.proxy.endpoint)

    def send_counting(self, raw: Raw) -> tuple[Answer, list[str]]:
        """Send ``raw``; also return the request lines that reached the store meanwhile."""
        before = len(self.store.requests)
        answer = self.send(raw)
        return answer, self.store.requests[before:]

    def stored(self, key: str) -> bool:
        try:
            self.direct.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as e:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 404
            return False
        return True


def _make_rig(name: str, backend: S3Server, proxy_factory: Callable[..., ProxyProcess]) -> Rig:
    target = urlsplit(backend.endpoint)
    store = FaultProxy(target.hostname, target.port)
    proxy = proxy_factory(backend, S3_ENDPOINT=store.url)
    signer = Signer(proxy.endpoint, backend.access_key, backend.secret_key, REGION)
    bucket = f"authatk-{uuid.uuid4().hex[:12]}"
    rig = Rig(name, backend, proxy, store, signer, bucket, "seeded", backend.client())
    rig.direct.create_bucket(Bucket=bucket)
    for _ in range(3):  # a loaded machine may make Vault slow: the seed is not under test
        put = rig.send(signer.header_signed("PUT", rig.path(rig.seeded), body=SEEDED))
        if put.status < 500:
            break
        time.sleep(1)
    assert put.status == 200, (put.status, put.body, proxy.log_tail(20))
    return rig


@pytest.fixture(scope="module")
def seaweedfs_rig(proxy_factory, seaweedfs) -> Iterator[Rig]:
    rig = _make_rig("seaweedfs", seaweedfs, proxy_factory)
    yield rig
    rig.proxy.stop()
    rig.store.stop()


@pytest.fixture(scope="module")
def moto_rig(proxy_factory, moto_s3) -> Iterator[Rig]:
    rig = _make_rig("moto", moto_s3, proxy_factory)
    yield rig
    rig.proxy.stop()
    rig.store.stop()


@pytest.fixture(scope="module", params=["seaweedfs", "moto"])
def rig(request: pytest.FixtureRequest) -> Rig:
    return request.getfixturevalue(f"{request.param}_rig")


def _now() -> datetime:
    return datetime.now(UTC)


def _body(method: str) -> bytes:
    return ATTACK_BODY if method == "PUT" else b""


def _signed(rig: Rig, method: str, key: str, signer: Signer | None = None, **kwargs) -> Raw:
    signer = signer or rig.signer
    return signer.header_signed(method, rig.path(key), body=_body(method), **kwargs)


def _presigned(rig: Rig, method: str, key: str, signer: Signer | None = None, **kwargs) -> Raw:
    signer = signer or rig.signer
    return signer.presigned(method, rig.path(key), body=_body(method), **kwargs)


# --------------------------------------------------------------------------- the attacks
#
# Each builds, for a method and a key, a request that must be refused.

Build = Callable[[Rig, str, str], Raw]


def header_signed_16_minutes_ago(rig: Rig, method: str, key: str) -> Raw:
    return _signed(rig, method, key, at=_now() - 16 * MINUTE)


def header_signed_16_minutes_ahead(rig: Rig, method: str, key: str) -> Raw:
    return _signed(rig, method, key, at=_now() + 16 * MINUTE)


def date_header_signed_16_minutes_ago(rig: Rig, method: str, key: str) -> Raw:
    """Signed with a Date header instead of X-Amz-Date (botocore writes the signing time)."""
    raw = _signed(rig, method, key, at=_now() - 16 * MINUTE, headers={"Date": "set by botocore"})
    assert "x-amz-date" not in {n.lower() for n, _ in raw.headers}
    return raw


def stale_x_amz_date_beside_a_fresh_date_header(rig: Rig, method: str, key: str) -> Raw:
    raw = _signed(rig, method, key, at=_now() - 16 * MINUTE)
    return raw.with_headers(("Date", format_datetime(_now(), usegmt=True)))


def presigned_url_past_its_expiry(rig: Rig, method: str, key: str) -> Raw:
    return _presigned(rig, method, key, at=_now() - timedelta(hours=2), expires=3600)


def presigned_url_dated_16_minutes_ahead(rig: Rig, method: str, key: str) -> Raw:
    return _presigned(rig, method, key, at=_now() + 16 * MINUTE, expires=3600)


def presigned_url_valid_for_over_seven_days(rig: Rig, method: str, key: str) -> Raw:
    return _presigned(rig, method, key, expires=sigv4.MAX_PRESIGN_EXPIRES + 1)


def signed_header_value_changed(rig: Rig, method: str, key: str) -> Raw:
    if method == "PUT":  # whose object it claims to be
        return _signed(rig, method, key, headers={"x-amz-meta-owner": "alice"}).replacing(
            "x-amz-meta-owner", "mallory"
        )
    # a signed 4-byte Range widened to the whole object
    return _signed(rig, method, key, headers={"Range": "bytes=0-3"}).replacing(
        "Range", "bytes=0-1000000"
    )


def signed_header_missing_from_the_request(rig: Rig, method: str, key: str) -> Raw:
    """A header listed in SignedHeaders is stripped on the way."""
    name, value = ("Content-Type", "text/plain") if method == "PUT" else ("Range", "bytes=0-3")
    raw = _signed(rig, method, key, headers={name: value})
    assert name.lower() in raw.header("Authorization")
    return raw.without(name)


def x_amz_header_added_after_signing(rig: Rig, method: str, key: str) -> Raw:
    return _signed(rig, method, key).with_headers(("x-amz-acl", "public-read-write"))


def host_left_out_of_signed_headers(rig: Rig, method: str, key: str) -> Raw:
    raw = _signed(rig, method, key, unsigned=["host"])
    assert "SignedHeaders=x-amz-content-sha256;x-amz-date," in raw.header("Authorization")
    return raw


def x_amz_date_left_out_of_signed_headers(rig: Rig, method: str, key: str) -> Raw:
    raw = _signed(rig, method, key, unsigned=["x-amz-date"])
    assert "SignedHeaders=host;x-amz-content-sha256," in raw.header("Authorization")
    return raw


def unsigned_x_amz_content_sha256_changed(rig: Rig, method: str, key: str) -> Raw:
    """S3 lets x-amz-content-sha256 go unsigned, but its value is the canonical request's last
    line, so it is bound all the same: here it is swapped along with the body."""
    raw = _signed(rig, method, key, unsigned=["x-amz-content-sha256"])
    if method == "PUT":
        other = b"a different body, with its own hash"
        raw = replace(raw, body=other)
        return raw.replacing("X-Amz-Content-SHA256", hashlib.sha256(other).hexdigest())
    return raw.replacing("X-Amz-Content-SHA256", sigv4.UNSIGNED_PAYLOAD)


def host_changed(rig: Rig, method: str, key: str) -> Raw:
    port = urlsplit(rig.proxy.endpoint).port
    return _signed(rig, method, key).replacing("Host", f"localhost:{port}")


def host_changed_to_route_to_another_bucket(rig: Rig, method: str, key: str) -> Raw:
    """Virtual-hosted style: the bucket is in the Host. Signed for this bucket, sent for
    another; the path, which is all the signature would cover without the Host, is the same."""
    port = urlsplit(rig.proxy.endpoint).port
    raw = rig.signer.header_signed(
        method, f"/{key}", body=_body(method), host=f"{rig.bucket}.localhost:{port}"
    )
    return raw.replacing("Host", f"victim-{rig.bucket}.localhost:{port}")


def header_signed_for_another_region(rig: Rig, method: str, key: str) -> Raw:
    return _signed(rig, method, key, signer=replace(rig.signer, region=OTHER_REGION))


def presigned_for_another_region(rig: Rig, method: str, key: str) -> Raw:
    return _presigned(rig, method, key, signer=replace(rig.signer, region=OTHER_REGION))


def header_signed_for_another_service(rig: Rig, method: str, key: str) -> Raw:
    return _signed(rig, method, key, signer=replace(rig.signer, service="ec2"))


def presigned_for_another_service(rig: Rig, method: str, key: str) -> Raw:
    return _presigned(rig, method, key, signer=replace(rig.signer, service="ec2"))


def header_and_query_signatures_together(rig: Rig, method: str, key: str) -> Raw:
    """Two valid signatures: a presigned URL, and an Authorization header that signs it."""
    url = _presigned(rig, method, key).target
    return rig.signer.header_signed(method, url, body=_body(method))


def header_signed_with_an_unknown_access_key(rig: Rig, method: str, key: str) -> Raw:
    nobody = replace(rig.signer, access_key="AKIAUNKNOWNKEY000000")
    return _signed(rig, method, key, signer=nobody)


def presigned_with_an_unknown_access_key(rig: Rig, method: str, key: str) -> Raw:
    nobody = replace(rig.signer, access_key="AKIAUNKNOWNKEY000000")
    return _presigned(rig, method, key, signer=nobody)


def presigned_with_a_wrong_secret(rig: Rig, method: str, key: str) -> Raw:
    return _presigned(rig, method, key, signer=replace(rig.signer, secret_key="guessed"))


def presigned_url_used_with_another_method(rig: Rig, method: str, key: str) -> Raw:
    """A read link used to write, or a write link used to read."""
    other = "GET" if method == "PUT" else "PUT"
    raw = _presigned(rig, other, key)
    return replace(raw, method=method, body=_body(method))


@dataclass(frozen=True)
class Attack:
    build: Build
    code: str
    status: int
    message: str | None = None  # S3's exact wording, where the test pins it


NOT_SIGNED = Attack(
    build=host_left_out_of_signed_headers,
    code="AccessDenied",
    status=403,
    message="There were headers present in the request which were not signed",
)
MISMATCH = Attack(
    build=signed_header_value_changed,
    code="SignatureDoesNotMatch",
    status=403,
    message=sigv4.MSG_SIGNATURE_MISMATCH,
)
SKEWED = Attack(
    build=header_signed_16_minutes_ago,
    code="RequestTimeTooSkewed",
    status=403,
    message="The difference between the request time and the current time is too large.",
)
UNKNOWN_KEY = Attack(
    build=header_signed_with_an_unknown_access_key,
    code="InvalidAccessKeyId",
    status=403,
    message="The AWS Access Key Id you provided does not exist in our records.",
)

# Where the wrong-region message is pinned, it is AWS S3's own (quoted in many client bug
# reports, e.g. github.com/HHS/Head-Start-TTADP/issues/370 for a presigned URL and
# github.com/aws/aws-sdk-js/issues/1786 for a header).
ATTACKS = [
    SKEWED,
    replace(SKEWED, build=header_signed_16_minutes_ahead),
    replace(SKEWED, build=date_header_signed_16_minutes_ago),
    replace(SKEWED, build=stale_x_amz_date_beside_a_fresh_date_header),
    Attack(presigned_url_past_its_expiry, "AccessDenied", 403, "Request has expired"),
    Attack(presigned_url_dated_16_minutes_ahead, "AccessDenied", 403, "Request is not yet valid"),
    Attack(presigned_url_valid_for_over_seven_days, "AuthorizationQueryParametersError", 400),
    MISMATCH,
    replace(MISMATCH, build=signed_header_missing_from_the_request),
    replace(NOT_SIGNED, build=x_amz_header_added_after_signing),
    NOT_SIGNED,
    replace(NOT_SIGNED, build=x_amz_date_left_out_of_signed_headers),
    replace(MISMATCH, build=unsigned_x_amz_content_sha256_changed),
    replace(MISMATCH, build=host_changed),
    replace(MISMATCH, build=host_changed_to_route_to_another_bucket),
    Attack(
        header_signed_for_another_region,
        "AuthorizationHeaderMalformed",
        400,
        f"The authorization header is malformed; the region '{OTHER_REGION}' is wrong; "
        f"expecting '{REGION}'",
    ),
    Attack(
        presigned_for_another_region,
        "AuthorizationQueryParametersError",
        400,
        f"Error parsing the X-Amz-Credential parameter; the region '{OTHER_REGION}' is wrong; "
        f"expecting '{REGION}'",
    ),
    Attack(header_signed_for_another_service, "AuthorizationHeaderMalformed", 400),
    Attack(presigned_for_another_service, "AuthorizationQueryParametersError", 400),
    Attack(
        header_and_query_signatures_together,
        "InvalidArgument",
        400,
        "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature "
        "query string parameter or the Authorization header should be specified",
    ),
    UNKNOWN_KEY,
    replace(UNKNOWN_KEY, build=presigned_with_an_unknown_access_key),
    replace(MISMATCH, build=presigned_with_a_wrong_secret),
    replace(MISMATCH, build=presigned_url_used_with_another_method),
]

# What the proxy answers differently from AWS S3: kept as strict xfails until fixed. (A presigned
# URL for another region got AuthorizationHeaderMalformed until issue 7 fixed it.)
FINDINGS: dict = {}


def _cases() -> list:
    cases = []
    for attack in ATTACKS:
        for method in ("PUT", "GET"):
            marks = []
            if attack.build in FINDINGS:
                # raises=WrongS3Error: only the error code may fail; reaching upstream may not.
                marks.append(
                    pytest.mark.xfail(
                        strict=True, raises=WrongS3Error, reason=FINDINGS[attack.build]
                    )
                )
            cases.append(
                pytest.param(attack, method, id=f"{attack.build.__name__}-{method}", marks=marks)
            )
    return cases


@pytest.mark.parametrize(("attack", "method"), _cases())
def test_an_attack_is_refused_as_s3_would_and_nothing_reaches_the_store(
    rig: Rig, attack: Attack, method: str
):
    key = rig.seeded if method == "GET" else f"attack-{uuid.uuid4().hex[:12]}"
    answer, upstream = rig.send_counting(attack.build(rig, method, key))
    assert upstream == [], f"the store saw {upstream}"
    if method == "PUT":
        assert not rig.stored(key)
    else:
        assert SEEDED not in answer.body
    expect_error(answer, attack.code, attack.status, attack.message)


# --------------------------------------------------------------------------- the other side


def _accepted(rig: Rig, raw: Raw) -> Answer:
    """Send ``raw``, which must succeed and must reach the store."""
    answer, upstream = rig.send_counting(raw)
    assert answer.status == 200, answer.body
    assert any(raw.path in line for line in upstream), upstream
    return answer


def test_requests_signed_14_minutes_off_either_way_are_accepted(rig: Rig):
    """The window is 15 minutes each side for header signatures, and ahead for presigned URLs."""
    for offset in (-14 * MINUTE, 14 * MINUTE):
        key = f"in-window-{uuid.uuid4().hex[:8]}"
        _accepted(
            rig, rig.signer.header_signed("PUT", rig.path(key), body=b"x", at=_now() + offset)
        )
        get = rig.signer.header_signed("GET", rig.path(key), at=_now() + offset)
        assert _accepted(rig, get).body == b"x"
    ahead = rig.signer.presigned("GET", rig.path(rig.seeded), at=_now() + 14 * MINUTE)
    assert _accepted(rig, ahead).body == SEEDED


def test_an_unsigned_x_amz_content_sha256_is_tolerated_as_on_s3_while_its_value_stays_bound(
    rig: Rig,
):
    """AWS S3 accepts x-amz-content-sha256 outside SignedHeaders (github.com/scality/Arsenal
    pull 2590); the value is signed anyway as the canonical request's payload hash, and
    changing it is refused (unsigned_x_amz_content_sha256_changed above)."""
    key = f"unsigned-sha-{uuid.uuid4().hex[:8]}"
    put = rig.signer.header_signed(
        "PUT", rig.path(key), body=b"payload", unsigned=["x-amz-content-sha256"]
    )
    assert "x-amz-content-sha256" not in put.header("Authorization")
    _accepted(rig, put)
    get = rig.signer.header_signed("GET", rig.path(key), unsigned=["x-amz-content-sha256"])
    assert _accepted(rig, get).body == b"payload"


def test_a_presigned_url_works_for_up_to_seven_days(rig: Rig):
    """Signed six days ago for seven days: still good (F10). One second more than seven days
    is refused (presigned_url_valid_for_over_seven_days above)."""
    url = rig.signer.presigned(
        "GET",
        rig.path(rig.seeded),
        at=_now() - timedelta(days=6),
        expires=sigv4.MAX_PRESIGN_EXPIRES,
    )
    assert _accepted(rig, url).body == SEEDED


def test_a_captured_request_replays_within_its_window_as_on_s3(rig: Rig):
    """There is no replay cache, as on S3: the same bytes sent again are accepted again while
    the signature's time allows (a header-signed request 15 minutes, a presigned URL until it
    expires). Past that they are refused, see the attacks above and the expiry replay below."""
    key = f"replayed-{uuid.uuid4().hex[:8]}"
    put = rig.signer.header_signed("PUT", rig.path(key), body=b"first write")
    get = rig.signer.header_signed("GET", rig.path(key))
    link = rig.signer.presigned("GET", rig.path(key))
    for _ in range(2):
        _accepted(rig, put)
        assert _accepted(rig, get).body == b"first write"
        assert _accepted(rig, link).body == b"first write"


def test_a_presigned_url_that_worked_is_refused_once_it_expires(seaweedfs_rig: Rig):
    """The same URL, byte for byte: accepted inside its lifetime, refused right after it."""
    rig = seaweedfs_rig
    lifetime = 6  # seconds: ample for two local requests, short enough to wait out
    signed_at = _now().replace(microsecond=0)  # X-Amz-Date has whole seconds
    key = f"short-lived-{uuid.uuid4().hex[:8]}"
    put = rig.signer.presigned(
        "PUT", rig.path(key), at=signed_at, expires=lifetime, body=b"short-lived"
    )
    get = rig.signer.presigned("GET", rig.path(key), at=signed_at, expires=lifetime)
    _accepted(rig, put)
    assert _accepted(rig, get).body == b"short-lived"

    expiry = signed_at + timedelta(seconds=lifetime)
    time.sleep(max(0.0, (expiry - _now()).total_seconds()) + 1.0)
    rig.direct.delete_object(Bucket=rig.bucket, Key=key)  # a replayed PUT would show
    for raw in (put, get):
        answer, upstream = rig.send_counting(raw)
        assert upstream == []
        expect_error(answer, "AccessDenied", 403, "Request has expired")
    assert not rig.stored(key)


# --------------------------------------------------------------------------- constant time


def _verify(raw: Raw, now: datetime) -> sigv4.VerifiedRequest:
    return sigv4.verify(
        raw.method, raw.path, raw.query, list(raw.headers), lambda _: "the-secret", now
    )


@pytest.mark.parametrize("form", ["header", "presigned"])
def test_the_signature_verdict_is_hmac_compare_digests_alone(
    monkeypatch: pytest.MonkeyPatch, form: str
):
    """sigv4.verify compares signatures with hmac.compare_digest (constant time) and with
    nothing else: it is called once, with both signatures as bytes, and its answer decides,
    so a wrong signature it calls equal passes and a right one it calls different fails."""
    signer = Signer("http://proxy.test:8080", "AKIDCLIENT", "the-secret")
    at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    if form == "header":
        good = signer.header_signed("PUT", "/b/k", body=b"body", at=at)
        provided = good.header("Authorization").rpartition("Signature=")[2]
        bad = good.replacing(
            "Authorization", good.header("Authorization").replace(provided, "0" * 64)
        )
    else:
        good = signer.presigned("GET", "/b/k", at=at)
        provided = good.query.rpartition("X-Amz-Signature=")[2]
        bad = replace(good, target=good.target.replace(provided, "0" * 64))

    real = sigv4.hmac.compare_digest
    calls: list[tuple[object, object]] = []
    verdict: list[bool | None] = [None]  # None: the real comparison

    def spy(a: object, b: object) -> bool:
        calls.append((a, b))
        return real(a, b) if verdict[0] is None else verdict[0]

    monkeypatch.setattr(sigv4.hmac, "compare_digest", spy)

    assert _verify(good, at).signature == provided
    assert calls == [(provided.encode(), provided.encode())]

    calls.clear()
    with pytest.raises(S3Error) as refused:
        _verify(bad, at)
    assert refused.value.code == "SignatureDoesNotMatch"
    assert calls == [(provided.encode(), b"0" * 64)]

    verdict[0] = True
    assert _verify(bad, at).signature == "0" * 64
    verdict[0] = False
    with pytest.raises(S3Error) as refused:
        _verify(good, at)
    assert refused.value.code == "SignatureDoesNotMatch"
