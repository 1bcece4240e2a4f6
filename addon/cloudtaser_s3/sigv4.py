"""AWS Signature Version 4 for S3: verify what clients sign, re-sign what the proxy forwards.

The proxy stands where S3 would, so it checks a client's signature the way S3 does (same
canonical form, same error codes and messages), then signs the request it forwards with its own
upstream credentials. Both halves follow the S3 flavour of SigV4:

* Canonical URI: the path is percent-decoded once and re-encoded byte by byte, leaving only
  ``A-Za-z0-9-_.~`` and ``/``; no dot-segment normalisation, no double encoding.
* Canonical query: each name and value decoded once (``+`` is a space, as AWS S3, MinIO and
  Ceph RGW read a query string) and re-encoded with the same rule, ``/`` included; sorted by
  name, then value. botocore (and the AWS CRT signer) put exactly this strict form on the wire,
  so for them the canonical query *is* the raw query.
* Canonical headers: lower-case names; repeated values joined with ``,``; each value trimmed
  with runs of whitespace collapsed to one space.

Everything here is pure: no I/O, no logging, and no message ever carries a secret key or a
computed signature.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from urllib.parse import SplitResult, quote, unquote_to_bytes, urlsplit

from botocore.credentials import Credentials

from cloudtaser_s3.s3errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
TERMINAL = "aws4_request"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_PRESIGN_EXPIRES = 604800  # seven days: a SigV4 signing key is valid for no longer

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PAYLOAD_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_PAYLOAD_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
#: x-amz-content-sha256 values other than a SHA-256 hex digest that the proxy accepts.
PAYLOAD_HASH_KEYWORDS = frozenset(
    {
        UNSIGNED_PAYLOAD,
        STREAMING_PAYLOAD,
        STREAMING_PAYLOAD_TRAILER,
        STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    }
)

#: Query parameters that carry SigV4 query (presigned) authentication; none may go upstream.
PRESIGN_QUERY_PARAMS = frozenset(
    {
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
        "X-Amz-Content-Sha256",
    }
)
#: Headers that resign() replaces: callers drop every copy of these before applying its result.
RESIGN_HEADERS = ("Authorization", "X-Amz-Date", "X-Amz-Content-SHA256", "X-Amz-Security-Token")

# Headers resign() signs besides host and x-amz-*: they change what S3 does and no
# proxy rewrites them. Hop-by-hop and transport headers (connection, expect, transfer-encoding,
# content-length, user-agent, via, ...) stay unsigned so mitmproxy may adjust them.
_RESIGNED_STANDARD_HEADERS = frozenset(
    {
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-md5",
        "content-type",
        "expires",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-unmodified-since",
        "range",
    }
)

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SCOPE_DATE = re.compile(r"[0-9]{8}")
_WHITESPACE_RUN = re.compile(r"[ \t\r\n\f\v]+")

# S3's own wording wherever S3 has one, so clients show their users what S3 would have said.
MSG_ANONYMOUS = "Anonymous requests are not allowed through the proxy"
MSG_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method."
)
MSG_UNSUPPORTED_MECHANISM = (
    "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
)
MSG_TWO_MECHANISMS = (
    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query "
    "string parameter or the Authorization header should be specified"
)
MSG_BAD_DATE = "AWS authentication requires a valid Date or x-amz-date header"
MSG_SKEWED = "The difference between the request time and the current time is too large."
MSG_UNKNOWN_KEY = "The AWS Access Key Id you provided does not exist in our records."
MSG_NOT_SIGNED = "There were headers present in the request which were not signed"
MSG_NO_CONTENT_SHA256 = "Missing required header for this request: x-amz-content-sha256"
MSG_BAD_CONTENT_SHA256 = (
    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER "
    "or a valid sha256 value."
)
MSG_EXPIRED = "Request has expired"
MSG_NOT_YET_VALID = "Request is not yet valid"
MSG_QUERY_PARAMS_REQUIRED = (
    "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
    "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
)
MSG_CREDENTIAL_DATE = "Invalid credential date. Date is not the same as X-Amz-Date."
_CREDENTIAL_SHAPE = 'expecting "<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'

_HEADER_MALFORMED = "The authorization header is malformed; "
_THREE_COMPONENTS = (
    "the authorization header requires three components: Credential, SignedHeaders, and Signature."
)
_QUERY_CREDENTIAL = "Error parsing the X-Amz-Credential parameter; "


@dataclass(frozen=True)
class VerifiedRequest:
    """What a valid client signature established; callers check the region themselves."""

    access_key: str
    region: str  # from the credential scope
    payload_hash: str  # as signed: hex (either case), UNSIGNED-PAYLOAD or STREAMING-...
    signed_headers: tuple[str, ...]  # lower-case, in the client's order
    presigned: bool
    signature: str  # seeds the chunk-signature chain of an aws-chunked body
    amz_date: str  # YYYYMMDDTHHMMSSZ
    scope: str  # YYYYMMDD/region/s3/aws4_request


@dataclass(frozen=True)
class _Credential:
    access_key: str
    date: str
    region: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{SERVICE}/{TERMINAL}"


# --------------------------------------------------------------------------- canonical forms


def _encode(raw: bytes, safe: str) -> str:
    # quote() never encodes A-Za-z0-9-_.~ and writes upper-case hex, as SigV4 requires.
    return quote(raw, safe=safe)


def canonical_uri(raw_path: str) -> str:
    """The S3 canonical URI of a path as sent on the wire (decoded once, re-encoded strictly)."""
    if not raw_path:
        return "/"
    return _encode(unquote_to_bytes(raw_path), safe="/")


def _decode_component(raw: str) -> bytes:
    return unquote_to_bytes(raw.replace("+", " "))


def query_pairs(raw_query: str) -> list[tuple[bytes, bytes]]:
    """Decoded (name, value) pairs in wire order; a name without '=' has an empty value."""
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_decode_component(name), _decode_component(value)))
    return pairs


def canonical_query(raw_query: str, exclude: Iterable[str] = ()) -> str:
    """The canonical query string of a raw query, leaving out the parameter names in exclude."""
    skip = {name.encode() for name in exclude}
    encoded = sorted(
        (_encode(name, safe=""), _encode(value, safe=""))
        for name, value in query_pairs(raw_query)
        if name not in skip
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def strip_presign_query(raw_query: str) -> str:
    """The raw query without its SigV4 query-authentication parameters, the rest left as sent.

    A presigned request is forwarded with header authentication; leaving X-Amz-Signature and
    friends in the URL would make the upstream see two auth mechanisms at once.
    """
    kept = [
        part
        for part in raw_query.split("&")
        if part
        and _decode_component(part.partition("=")[0]).decode("utf-8", "replace")
        not in PRESIGN_QUERY_PARAMS
    ]
    return "&".join(kept)


def _header_value(values: Sequence[str]) -> str:
    return ",".join(_WHITESPACE_RUN.sub(" ", value).strip(" ") for value in values)


@functools.lru_cache(maxsize=256)
def signing_key(secret_key: str, scope_date: str, region: str, service: str = SERVICE) -> bytes:
    """kSigning = HMAC chain over date, region, service and aws4_request, seeded by the secret.

    Cached: four HMACs per request otherwise, and a key serves every request of its day; the
    cache holds nothing a process memory dump would not already show (the secrets)."""
    key = ("AWS4" + secret_key).encode("utf-8")
    for part in (scope_date, region, service, TERMINAL):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def _sign(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- verification


class _Headers:
    """Received headers by lower-case name, keeping every repeated value in order."""

    def __init__(self, headers: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in headers:
            self._values.setdefault(name.strip().lower(), []).append(value)

    def get_all(self, name: str) -> list[str]:
        return self._values.get(name, [])

    def get(self, name: str) -> str | None:
        values = self._values.get(name)
        return values[0] if values else None

    def names(self) -> Iterable[str]:
        return self._values.keys()


def _parse_credential(text: str, malformed: Callable[[str], S3Error]) -> _Credential:
    parts = text.split("/")
    if len(parts) != 5 or not all(parts[:3]):
        raise malformed(f"the Credential is mal-formed; {_CREDENTIAL_SHAPE}")
    access_key, date, region, service, terminal = parts
    if not _SCOPE_DATE.fullmatch(date) or _parse_amz_date(date + "T000000Z") is None:
        raise malformed(
            f'incorrect date format "{date}". This date in the credential must be in the '
            'format "yyyyMMdd".'
        )
    if service != SERVICE:
        raise malformed(f'incorrect service "{service}". This endpoint belongs to "{SERVICE}".')
    if terminal != TERMINAL:
        raise malformed(f'incorrect terminal "{terminal}". This endpoint uses "{TERMINAL}".')
    return _Credential(access_key, date, region)


def _parse_signed_headers(text: str, malformed: Callable[[str], S3Error]) -> tuple[str, ...]:
    names = tuple(name.strip().lower() for name in text.split(";"))
    if not all(names) or len(set(names)) != len(names):
        raise malformed("the SignedHeaders list is mal-formed.")
    return names


def _parse_amz_date(text: str) -> datetime | None:
    if not _AMZ_DATE.fullmatch(text):
        return None
    year = int(text[0:4])
    if year > 9000:  # no request is signed then; date arithmetic near 9999 overflows
        return None
    try:  # the fields by position: strptime costs more than the rest of verify() together
        return datetime(
            year,
            int(text[4:6]),
            int(text[6:8]),
            int(text[9:11]),
            int(text[11:13]),
            int(text[13:15]),
            tzinfo=UTC,
        )
    except ValueError:
        return None


def _header_malformed(detail: str) -> S3Error:
    return S3Error("AuthorizationHeaderMalformed", _HEADER_MALFORMED + detail, 400)


def _query_error(message: str) -> S3Error:
    return S3Error("AuthorizationQueryParametersError", message, 400)


def _query_credential_error(detail: str) -> S3Error:
    return _query_error(_QUERY_CREDENTIAL + detail)


@dataclass(frozen=True)
class _Claim:
    """The parts of a signature claim common to header and query form."""

    credential: _Credential
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str
    when: datetime
    payload_hash: str
    expires: datetime | None  # presigned only: when the URL stops working


def _parse_authorization(value: str, headers: _Headers) -> _Claim:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise S3Error("InvalidRequest", MSG_UNSUPPORTED_MECHANISM, 400)
    fields: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, field = item.strip().partition("=")
        if not sep or key in fields:
            raise _header_malformed(_THREE_COMPONENTS)
        fields[key] = field.strip()
    if set(fields) != {"Credential", "SignedHeaders", "Signature"}:
        raise _header_malformed(_THREE_COMPONENTS)
    credential = _parse_credential(fields["Credential"], _header_malformed)
    signed_headers = _parse_signed_headers(fields["SignedHeaders"], _header_malformed)

    amz_date_value = headers.get("x-amz-date")
    if amz_date_value is not None:
        when = _parse_amz_date(amz_date_value.strip())
    else:
        when = _parse_http_date(headers.get("date"))
    if when is None:
        raise S3Error("AccessDenied", MSG_BAD_DATE, 403)
    if credential.date != when.strftime("%Y%m%d"):
        raise _header_malformed(MSG_CREDENTIAL_DATE)

    payload_hash = headers.get("x-amz-content-sha256")
    if payload_hash is None:
        raise S3Error("InvalidRequest", MSG_NO_CONTENT_SHA256, 400)
    return _Claim(
        credential=credential,
        signed_headers=signed_headers,
        signature=fields["Signature"],
        amz_date=when.strftime(AMZ_DATE_FORMAT),
        when=when,
        payload_hash=payload_hash.strip(),
        expires=None,
    )


def _parse_http_date(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000": UTC with no local zone (RFC 5322); botocore writes it
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # a date near year 9999 in a zone east of UTC
        return None


def _parse_presigned(params: Mapping[str, list[str]], headers: _Headers) -> _Claim:
    required = (
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Signature",
        "X-Amz-Date",
        "X-Amz-SignedHeaders",
        "X-Amz-Expires",
    )
    if any(len(params.get(name, ())) != 1 for name in required):
        raise _query_error(MSG_QUERY_PARAMS_REQUIRED)
    value = {name: params[name][0] for name in required}
    if value["X-Amz-Algorithm"] != ALGORITHM:
        raise _query_error(f'X-Amz-Algorithm only supports "{ALGORITHM}"')
    credential = _parse_credential(value["X-Amz-Credential"], _query_credential_error)
    signed_headers = _parse_signed_headers(value["X-Amz-SignedHeaders"], _query_error)

    when = _parse_amz_date(value["X-Amz-Date"])
    if when is None:
        raise _query_error("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
    expires_text = value["X-Amz-Expires"]
    if not expires_text.isascii() or not expires_text.isdigit() or int(expires_text) < 1:
        raise _query_error("X-Amz-Expires must be a whole number of seconds, at least 1")
    expires = int(expires_text)
    if expires > MAX_PRESIGN_EXPIRES:
        raise _query_error(
            "X-Amz-Expires must be less than a week (in seconds); that is, the given "
            f"X-Amz-Expires must be less than {MAX_PRESIGN_EXPIRES} seconds"
        )
    if credential.date != when.strftime("%Y%m%d"):
        raise _query_error(MSG_CREDENTIAL_DATE)

    # A presigned URL cannot know its body: UNSIGNED-PAYLOAD unless the client said otherwise.
    content_sha256 = params.get("X-Amz-Content-Sha256")
    if content_sha256:
        payload_hash = content_sha256[0]
    else:
        payload_hash = (headers.get("x-amz-content-sha256") or UNSIGNED_PAYLOAD).strip()
    return _Claim(
        credential=credential,
        signed_headers=signed_headers,
        signature=value["X-Amz-Signature"],
        amz_date=value["X-Amz-Date"],
        when=when,
        payload_hash=payload_hash,
        expires=when + timedelta(seconds=expires),
    )


def verify(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    secret_for: Callable[[str], str | None],
    now: datetime,
    max_skew: timedelta = timedelta(minutes=15),
) -> VerifiedRequest:
    """Check a client's SigV4 signature (header or presigned form) as S3 would; S3Error if not.

    ``raw_path`` and ``raw_query`` are exactly as received (percent-encoded, no '?');
    ``headers`` are the received headers, names in any case, repeats allowed. The Host header
    must be the one the client sent, not the upstream host mitmproxy rewrites it to.
    ``secret_for`` maps an access key to its secret, or None for an unknown key. A naive
    ``now`` is taken as UTC.
    """
    hdrs = _Headers(headers)
    params: dict[str, list[str]] = {}
    for name, value in query_pairs(raw_query):
        params.setdefault(name.decode("utf-8", "replace"), []).append(
            value.decode("utf-8", "replace")
        )
    authorization = hdrs.get_all("authorization")
    query_v4 = any(n in params for n in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature"))
    query_v2 = "Signature" in params or "AWSAccessKeyId" in params

    if authorization and (query_v4 or query_v2):
        raise S3Error("InvalidArgument", MSG_TWO_MECHANISMS, 400)
    if authorization:
        if len(authorization) != 1:
            raise _header_malformed("only one Authorization header is allowed.")
        claim = _parse_authorization(authorization[0], hdrs)
    elif query_v4:
        if query_v2:
            raise S3Error("InvalidArgument", MSG_TWO_MECHANISMS, 400)
        claim = _parse_presigned(params, hdrs)
    elif query_v2:
        raise S3Error("InvalidRequest", MSG_UNSUPPORTED_MECHANISM, 400)
    else:
        raise S3Error("AccessDenied", MSG_ANONYMOUS, 403)
    presigned = claim.expires is not None

    if claim.payload_hash not in PAYLOAD_HASH_KEYWORDS and not _HEX64.fullmatch(claim.payload_hash):
        raise S3Error("InvalidArgument", MSG_BAD_CONTENT_SHA256, 400)

    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    if claim.expires is not None:
        if claim.when - now > max_skew:
            raise S3Error("AccessDenied", MSG_NOT_YET_VALID, 403)
        if now > claim.expires:
            raise S3Error("AccessDenied", MSG_EXPIRED, 403)
    elif abs(now - claim.when) > max_skew:
        raise S3Error("RequestTimeTooSkewed", MSG_SKEWED, 403)

    # Every header that changes what S3 does must be covered: host always, x-amz-* when sent.
    signed = set(claim.signed_headers)
    unsigned_amz = [
        name
        for name in hdrs.names()
        if name.startswith("x-amz-") and name != "x-amz-content-sha256" and name not in signed
    ]
    if "host" not in signed or unsigned_amz:
        raise S3Error("AccessDenied", MSG_NOT_SIGNED, 403)
    if any(not hdrs.get_all(name) for name in claim.signed_headers):
        raise S3Error("SignatureDoesNotMatch", MSG_SIGNATURE_MISMATCH, 403)

    secret = secret_for(claim.credential.access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", MSG_UNKNOWN_KEY, 403)

    canonical_headers = "".join(
        f"{name}:{_header_value(hdrs.get_all(name))}\n" for name in claim.signed_headers
    )
    canonical_request = "\n".join(
        (
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query, exclude=("X-Amz-Signature",) if presigned else ()),
            canonical_headers,
            ";".join(claim.signed_headers),
            claim.payload_hash,
        )
    )
    key = signing_key(secret, claim.credential.date, claim.credential.region)
    expected = _sign(key, string_to_sign(claim.amz_date, claim.credential.scope, canonical_request))
    provided = claim.signature.encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(expected.encode("ascii"), provided):
        raise S3Error("SignatureDoesNotMatch", MSG_SIGNATURE_MISMATCH, 403)

    return VerifiedRequest(
        access_key=claim.credential.access_key,
        region=claim.credential.region,
        payload_hash=claim.payload_hash,
        signed_headers=claim.signed_headers,
        presigned=presigned,
        signature=claim.signature,
        amz_date=claim.amz_date,
        scope=claim.credential.scope,
    )


# --------------------------------------------------------------------------- re-signing


def _header_items(headers: Sequence[tuple[str, str]] | Mapping[str, str]) -> list[tuple[str, str]]:
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


def _resigned(name: str) -> bool:
    lname = name.lower()
    if lname in {"x-amz-date", "x-amz-content-sha256", "x-amz-security-token"}:
        return False  # set by the signer itself
    return lname.startswith("x-amz-") or lname in _RESIGNED_STANDARD_HEADERS


def resign(
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]] | Mapping[str, str],
    credentials: Credentials,
    region: str,
    payload_hash: str,
    now: datetime | None = None,
) -> dict[str, str]:
    """Sign the upstream request with the proxy's credentials; returns the headers to set.

    ``url`` is the full upstream URL with the raw path and query that will be sent; it is
    signed in canonical form, which is what S3 computes from any encoding of the same path and
    query. The host signed is the URL's (port omitted when default for the scheme), so the
    request must carry that Host. Of ``headers``, only x-amz-* and the S3-meaningful standard
    headers in _RESIGNED_STANDARD_HEADERS are signed; they must then be sent unchanged. Callers
    remove every header named in RESIGN_HEADERS before setting the result. ``payload_hash`` is
    signed as x-amz-content-sha256 verbatim (a hex digest, UNSIGNED-PAYLOAD, STREAMING-...).
    Refreshable credentials may block while refreshing: call this off the event loop.
    """
    parts = urlsplit(url)
    if any(
        name.decode("utf-8", "replace") in PRESIGN_QUERY_PARAMS
        for name, _ in query_pairs(parts.query)
    ):
        raise ValueError("the upstream URL still carries query authentication parameters")
    when = now if now is not None else datetime.now(UTC)
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    amz_date = when.strftime(AMZ_DATE_FORMAT)
    frozen = credentials.get_frozen_credentials()  # one consistent key/secret/token triple

    signed: dict[str, list[str]] = {}
    for name, value in _header_items(headers):
        if _resigned(name):
            signed.setdefault(name.lower(), []).append(value)  # repeats are joined with ","
    signed["host"] = [_signed_host(parts)]
    signed["x-amz-content-sha256"] = [payload_hash]
    signed["x-amz-date"] = [amz_date]
    if frozen.token:
        signed["x-amz-security-token"] = [frozen.token]
    names = sorted(signed)
    canonical_request = "\n".join(
        (
            method.upper(),
            canonical_uri(parts.path),
            canonical_query(parts.query),
            "".join(f"{name}:{_header_value(signed[name])}\n" for name in names),
            ";".join(names),
            payload_hash,
        )
    )
    scope = f"{amz_date[:8]}/{region}/{SERVICE}/{TERMINAL}"
    key = signing_key(frozen.secret_key, amz_date[:8], region)
    signature = _sign(key, string_to_sign(amz_date, scope, canonical_request))
    result = {
        "Authorization": (
            f"{ALGORITHM} Credential={frozen.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        ),
        "X-Amz-Date": amz_date,
        "X-Amz-Content-SHA256": payload_hash,
    }
    if frozen.token:
        result["X-Amz-Security-Token"] = frozen.token
    return result


def _signed_host(parts: SplitResult) -> str:
    """The Host a request to this URL carries: lower-case, the port only when not the default
    for the scheme, IPv6 literals in brackets (as botocore and every SDK send it)."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != {"http": 80, "https": 443}.get(parts.scheme):
        host = f"{host}:{port}"
    return host
