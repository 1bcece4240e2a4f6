"""Fuzzing the SigV4 verifier, header and presigned (query) forms.

1. Requests signed by botocore (``S3SigV4Auth`` for the Authorization header,
   ``S3SigV4QueryAuth`` for presigned URLs) with random methods, keys (any Unicode), queries,
   headers and payload hashes verify, as they arrive on the wire.
2. Any one change of what was signed — the method, the path, the query, a signed header, the
   date, the region, the service, the access key, the signature, the payload hash, a presigned
   URL's expiry or signed-header list — is refused with S3Error, never another exception.
3. Garbage Authorization headers, query parameters, dates and content hashes are refused with
   S3Error only.

Two findings of this target were fixed (tests at the end): a presigned X-Amz-Date of
99991231T235959Z plus X-Amz-Expires, and a Date header past year 9999 in UTC, raised
OverflowError before any signature was checked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote, urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from fuzzkit import budget
from hypothesis import event, given
from hypothesis import strategies as st

from cloudtaser_s3.s3errors import S3Error
from cloudtaser_s3.sigv4 import AMZ_DATE_FORMAT, VerifiedRequest, verify

ACCESS_KEY = "AKIDFUZZEXAMPLE"
SECRET = "fuzz/Secret+Key/EXAMPLE"
OTHER_KEY = "AKIDOTHEREXAMPLE"  # known, with another secret
REGION = "eu-west-1"
HOST = "proxy.test:8443"
SECRETS = {ACCESS_KEY: SECRET, OTHER_KEY: "another/secret"}


@dataclass(frozen=True)
class Wire:
    """A request as the proxy receives it: what verify() is given."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    now: datetime

    def verify(self) -> VerifiedRequest:
        return verify(self.method, self.path, self.query, self.headers, SECRETS.get, self.now)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name), None)

    def set_header(self, name: str, value: str | None) -> Wire:
        kept = tuple((n, v) for n, v in self.headers if n.lower() != name)
        return replace(self, headers=kept + (((name, value),) if value is not None else ()))

    def params(self) -> list[tuple[str, str]]:
        return [tuple(p.partition("=")[::2]) for p in self.query.split("&") if p]

    def set_param(self, name: str, value: str) -> Wire:
        pairs = [(n, v) for n, v in self.params() if n != name] + [(name, value)]
        return replace(self, query="&".join(f"{n}={v}" for n, v in pairs))


# --------------------------------------------------------------------------------------------
# Requests as botocore signs them
# --------------------------------------------------------------------------------------------

METHODS = ["GET", "PUT", "HEAD", "DELETE", "POST"]
# Characters that SigV4 encodes differently, or that parsers trip on: reserved, percent, plus,
# space, controls, and non-ASCII of every UTF-8 length.
ALPHABET = "aZ09-_.~ /+%&=?#;:,@!$'()*[]\t\x00\x7féü☃東😀\ufeff"
KEY_TEXT = st.text(ALPHABET, min_size=1, max_size=24)
BUCKET = st.sampled_from(["b", "bucket-1", "my.bucket", "a1b2c3"])
PARAM_NAME = st.one_of(
    st.sampled_from(["prefix", "uploadId", "partNumber", "versionId", "list-type", "tagging"]),
    st.text(ALPHABET, min_size=1, max_size=10),
).filter(lambda n: not n.lower().startswith("x-amz-") and n not in ("Signature", "AWSAccessKeyId"))
PARAMS = st.dictionaries(PARAM_NAME, st.text(ALPHABET, max_size=12), max_size=4)
FIELD_VALUE = st.text('aZ09 -_.;,=/:"*\t()', max_size=30)
HEADERS = st.dictionaries(
    st.one_of(
        st.sampled_from(["x-amz-meta-a", "x-amz-meta-long-name-1", "x-amz-tagging"]),
        st.sampled_from(["Content-Type", "Range", "If-Match", "x-amz-copy-source", "Content-MD5"]),
    ),
    FIELD_VALUE.map(lambda v: v.strip() or "v"),
    max_size=3,
)
PAYLOAD = st.one_of(
    st.sampled_from(["UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"]),
    st.binary(max_size=20).map(lambda b: hashlib.sha256(b).hexdigest()),
)


def encoded(text: str, safe: str) -> str:
    """The strict SigV4 encoding SDKs put on the wire."""
    return quote(text.encode("utf-8"), safe=safe)


@st.composite
def header_signed(draw: st.DrawFn) -> Wire:
    method = draw(st.sampled_from(METHODS))
    path = "/" + draw(BUCKET) + "/" + encoded(draw(KEY_TEXT), safe="/")
    query = "&".join(f"{encoded(n, '')}={encoded(v, '')}" for n, v in draw(PARAMS).items())
    headers = {**draw(HEADERS), "X-Amz-Content-SHA256": draw(PAYLOAD)}
    url = f"https://{HOST}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, headers=headers)
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET), "s3", REGION).add_auth(request)
    return on_the_wire(request, method)


@st.composite
def presigned(draw: st.DrawFn) -> Wire:
    method = draw(st.sampled_from(METHODS))
    path = "/" + draw(BUCKET) + "/" + encoded(draw(KEY_TEXT), safe="/")
    query = "&".join(f"{encoded(n, '')}={encoded(v, '')}" for n, v in draw(PARAMS).items())
    url = f"https://{HOST}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, headers=draw(HEADERS))
    expires = draw(st.integers(1, 604800))
    S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET), "s3", REGION, expires=expires).add_auth(
        request
    )
    return on_the_wire(request, method)


def on_the_wire(request: AWSRequest, method: str) -> Wire:
    parts = urlsplit(request.url)
    headers = [(n, v.decode() if isinstance(v, bytes) else v) for n, v in request.headers.items()]
    wire = Wire(method, parts.path, parts.query, (("Host", HOST), *headers), datetime.now(UTC))
    signed_at = wire.header("x-amz-date") or dict(wire.params()).get("X-Amz-Date")
    assert signed_at is not None
    return replace(wire, now=datetime.strptime(signed_at, AMZ_DATE_FORMAT).replace(tzinfo=UTC))


WIRES = st.one_of(header_signed(), presigned())


@budget(0.25)
@given(wire=WIRES)
def test_what_botocore_signs_verifies(wire):
    verified = wire.verify()
    assert verified.access_key == ACCESS_KEY
    assert verified.region == REGION
    assert verified.presigned == (wire.header("authorization") is None)


# --------------------------------------------------------------------------------------------
# One change
# --------------------------------------------------------------------------------------------

CHANGES = [
    "method",
    "path",
    "query-added",
    "query-value",
    "query-dropped",
    "signed-header",
    "signed-header-dropped",
    "unsigned-amz-header",
    "date",
    "region",
    "service",
    "access-key",
    "unknown-key",
    "signature",
    "payload-hash",
    "expires",
    "signed-headers-list",
]


def _credential(wire: Wire) -> tuple[str, list[str]]:
    auth = wire.header("authorization")
    if auth is not None:
        field = next(f for f in auth.split(", ") if "Credential=" in f)
        return "header", field.partition("Credential=")[2].split("/")
    return "query", unquote(dict(wire.params())["X-Amz-Credential"]).split("/")


def _with_credential(wire: Wire, parts: list[str]) -> Wire:
    auth = wire.header("authorization")
    if auth is not None:
        old = _credential(wire)[1]
        return wire.set_header("authorization", auth.replace("/".join(old), "/".join(parts)))
    return wire.set_param("X-Amz-Credential", encoded("/".join(parts), ""))


def _bump(stamp: str, seconds: int) -> str:
    when = datetime.strptime(stamp, AMZ_DATE_FORMAT) + timedelta(seconds=seconds)
    return when.strftime(AMZ_DATE_FORMAT)


def change(wire: Wire, kind: str, pick: int, text: str) -> Wire | None:
    """``wire`` with one thing it signed changed; None when that thing is not in this request."""
    presigned_form = wire.header("authorization") is None
    auth = wire.header("authorization")
    signed = (
        [h for h in dict(wire.params())["X-Amz-SignedHeaders"].split("%3B")]
        if presigned_form
        else auth.partition("SignedHeaders=")[2].partition(",")[0].split(";")
    )
    if kind == "method":
        others = [m for m in METHODS if m != wire.method]
        return replace(wire, method=others[pick % len(others)])
    if kind == "path":
        decoded = unquote(wire.path)
        at = 1 + pick % len(decoded)
        return replace(wire, path=encoded(decoded[:at] + (text or "x") + decoded[at:], "/"))
    if kind == "query-added":
        name = encoded(text or "x", "")
        return replace(wire, query=(wire.query + "&" if wire.query else "") + f"fuzz{name}=1")
    own = [p for p in wire.params() if not p[0].startswith("X-Amz-")]
    if kind in ("query-value", "query-dropped"):
        if not own:
            return None
        name, value = own[pick % len(own)]
        pairs = wire.params()
        pairs.remove((name, value))
        if kind == "query-value":
            pairs.append((name, value + encoded(text or "x", "")))
        return replace(wire, query="&".join(f"{n}={v}" for n, v in pairs))
    if kind in ("signed-header", "signed-header-dropped"):
        name = signed[pick % len(signed)]
        value = wire.header(name)
        if value is None:  # a presigned URL signs only host, and headers it was given
            return None
        new = None if kind == "signed-header-dropped" else value + (text.strip() or "x") + "x"
        return wire.set_header(name, new)
    if kind == "unsigned-amz-header":
        return wire.set_header(f"x-amz-meta-unsigned{pick % 10}", text.strip() or "x")
    if kind == "date":
        seconds = [1, -1, 60, -3600][pick % 4]
        if presigned_form:
            return wire.set_param("X-Amz-Date", _bump(dict(wire.params())["X-Amz-Date"], seconds))
        return wire.set_header("X-Amz-Date", _bump(wire.header("x-amz-date"), seconds))
    if kind in ("region", "service", "access-key", "unknown-key"):
        _, parts = _credential(wire)
        index = {"region": 2, "service": 3, "access-key": 0, "unknown-key": 0}[kind]
        new = {
            "region": ["us-east-1", "eu-west-2", REGION + (text or "x")][pick % 3],
            "service": ["s3x", "iam", "S3", "s3" + (text or "x")][pick % 4],
            "access-key": OTHER_KEY,
            "unknown-key": "AKIDUNKNOWN" + encoded(text, ""),
        }[kind]
        parts = parts.copy()
        parts[index] = new
        return _with_credential(wire, parts)
    if kind == "signature":
        sig = wire.header("authorization") or dict(wire.params())["X-Amz-Signature"]
        sig = sig.rpartition("Signature=")[2] if not presigned_form else sig
        at = pick % len(sig)
        flipped = (
            sig[:at] + "0123456789abcdef"[(int(sig[at], 16) + 1 + pick % 15) % 16] + sig[at + 1 :]
        )
        if presigned_form:
            return wire.set_param("X-Amz-Signature", flipped)
        return wire.set_header("authorization", auth[: -len(sig)] + flipped)
    if kind == "payload-hash":
        current = wire.header("x-amz-content-sha256")
        if presigned_form or current is None:
            return None
        others = ["UNSIGNED-PAYLOAD", hashlib.sha256(text.encode() + b"x").hexdigest()]
        return wire.set_header("x-amz-content-sha256", [o for o in others if o != current][0])
    if kind == "expires":
        if not presigned_form:
            return None
        old = int(dict(wire.params())["X-Amz-Expires"])
        return wire.set_param("X-Amz-Expires", str(old + 1 if old < 604800 else old - 1))
    if kind == "signed-headers-list":
        extra = "x-amz-meta-extra"
        new = ";".join([*signed, extra])
        if presigned_form:
            return wire.set_param("X-Amz-SignedHeaders", encoded(new, "")).set_header(extra, "1")
        old = "SignedHeaders=" + ";".join(signed)
        changed = wire.set_header("authorization", auth.replace(old, "SignedHeaders=" + new))
        return changed.set_header(extra, "1")
    raise AssertionError(kind)


@budget(0.5)
@given(
    wire=WIRES,
    kind=st.sampled_from(CHANGES),
    pick=st.integers(0, 2**16),
    text=st.text(ALPHABET, max_size=3),
)
def test_any_one_change_of_what_was_signed_is_refused_with_s3error(wire, kind, pick, text):
    changed = change(wire, kind, pick, text)
    if changed is None or changed == wire:
        event(f"change not applicable: {kind}")
        return
    event(f"change: {kind}")
    with pytest.raises(S3Error):
        changed.verify()


# --------------------------------------------------------------------------------------------
# Garbage
# --------------------------------------------------------------------------------------------

DIGITS8 = st.one_of(
    st.integers(0, 99999999).map("{:08d}".format),
    st.sampled_from(["99991231", "00010101", "20260301"]),
)
AMZ_DATE = st.one_of(
    st.builds("{}T{:06d}Z".format, DIGITS8, st.integers(0, 999999)),
    st.sampled_from(
        ["99991231T235959Z", "90001231T235959Z", "00010101T000000Z", "20260301T120000Z"]
    ),
    st.text(max_size=20),
)
HTTP_DATE = st.one_of(
    st.builds(
        "{}, {:02d} {} {:04d} {:02d}:{:02d}:{:02d} {}".format,
        st.sampled_from(["Mon", "Fri", "Sun"]),
        st.integers(1, 31),
        st.sampled_from(["Jan", "Feb", "Dec"]),
        st.one_of(st.integers(1, 9999), st.sampled_from([1, 9999])),
        st.integers(0, 23),
        st.integers(0, 59),
        st.integers(0, 60),
        st.sampled_from(["GMT", "-0000", "+0100", "-0100", "+2359", "-2359", "UT", "XYZ"]),
    ),
    st.text(max_size=40),
)
JUNK = st.one_of(st.text(ALPHABET + "AWS4-HMAC-SHA256Credential", max_size=40), st.text(max_size=8))
CREDENTIAL = st.one_of(
    st.builds(
        "{}/{}/{}/{}/{}".format,
        st.sampled_from([ACCESS_KEY, "AKID", ""]),
        st.one_of(DIGITS8, st.just("20260301")),
        st.sampled_from([REGION, "", "x"]),
        st.sampled_from(["s3", "iam", ""]),
        st.sampled_from(["aws4_request", "x"]),
    ),
    JUNK,
)
SIGNED_HEADERS = st.one_of(
    st.sampled_from(["host", "host;x-amz-date", "host;;", "HOST;host"]), JUNK
)
SIGNATURE = st.one_of(st.binary(min_size=32, max_size=32).map(bytes.hex), JUNK)
AUTHORIZATION = st.one_of(
    st.builds(
        "{} Credential={}, SignedHeaders={}, Signature={}".format,
        st.sampled_from(["AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1", "AWS", ""]),
        CREDENTIAL,
        SIGNED_HEADERS,
        SIGNATURE,
    ),
    JUNK,
)
PRESIGN = st.fixed_dictionaries(
    {},
    optional={
        "X-Amz-Algorithm": st.sampled_from(["AWS4-HMAC-SHA256", "x"]),
        "X-Amz-Credential": CREDENTIAL,
        "X-Amz-Date": AMZ_DATE,
        "X-Amz-Expires": st.one_of(st.integers(-5, 700_000).map(str), JUNK),
        "X-Amz-SignedHeaders": SIGNED_HEADERS,
        "X-Amz-Signature": SIGNATURE,
        "X-Amz-Content-Sha256": st.sampled_from(["UNSIGNED-PAYLOAD", "x"]),
        "Signature": JUNK,
        "AWSAccessKeyId": JUNK,
    },
)
GARBAGE_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Authorization": AUTHORIZATION,
        "X-Amz-Date": AMZ_DATE,
        "Date": HTTP_DATE,
        "X-Amz-Content-SHA256": st.one_of(PAYLOAD, JUNK),
        "Host": st.sampled_from([HOST, ""]),
        "x-amz-meta-a": JUNK,
    },
)


@budget(0.25)
@given(
    method=st.one_of(st.sampled_from(METHODS), JUNK),
    path=st.one_of(st.just("/b/k"), st.text(max_size=30)),
    params=PRESIGN,
    extra_query=st.one_of(st.just(""), st.text(max_size=30)),
    headers=GARBAGE_HEADERS,
    repeats=st.lists(st.sampled_from(["Authorization", "X-Amz-Date", "Host"]), max_size=2),
    now=st.one_of(
        st.just(datetime(2026, 3, 1, 12, tzinfo=UTC)), st.datetimes(timezones=st.just(UTC))
    ),
)
def test_garbage_is_refused_with_s3error_only(
    method, path, params, extra_query, headers, repeats, now
):
    query = "&".join(f"{n}={encoded(v, '')}" for n, v in params.items())
    query = "&".join(q for q in (query, extra_query) if q)
    items = list(headers.items()) + [(r, headers.get(r, "x")) for r in repeats]
    try:
        verify(method, path, query, items, SECRETS.get, now)
    except S3Error:
        return
    raise AssertionError("garbage verified")


# --------------------------------------------------------------------------------------------
# Fixed findings: dates at the end of the calendar
# --------------------------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_a_presigned_url_dated_near_year_9999_is_refused_with_s3error():
    """Was a finding (when + X-Amz-Expires overflowed): fixed, dates past 9000 are refused."""
    query = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F99991231%2Feu-west-1%2Fs3"
        "%2Faws4_request&X-Amz-Date=99991231T235959Z&X-Amz-Expires=1"
        "&X-Amz-SignedHeaders=host&X-Amz-Signature=00"
    )
    with pytest.raises(S3Error):
        verify("GET", "/b/k", query, [("Host", HOST)], SECRETS.get, NOW)


def test_a_date_header_past_year_9999_in_utc_is_refused_with_s3error():
    # The credential date is an ordinary one: the Date header is parsed before it is compared.
    auth = (
        "AWS4-HMAC-SHA256 Credential=AK/20260301/eu-west-1/s3/aws4_request, "
        "SignedHeaders=host, Signature=00"
    )
    headers = [("Host", HOST), ("Authorization", auth), ("Date", "Fri, 31 Dec 9999 23:59:59 -0100")]
    with pytest.raises(S3Error):
        verify("GET", "/b/k", "", headers, SECRETS.get, NOW)
