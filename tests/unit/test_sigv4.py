"""SigV4 for S3: the proxy accepts what real S3 clients sign, refuses the rest as S3 would,
and signs what it forwards so that the same rules accept it.

Requests here are signed by botocore itself: a boto3 client whose HTTP send is intercepted and
``generate_presigned_url`` (both sign through the AWS Common Runtime's C signer when awscrt is
installed, as it is here), ``S3SigV4Auth``/``S3SigV4QueryAuth`` used directly (botocore's pure
Python signer), plus the worked examples AWS publishes in the S3 API reference.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from unittest import mock
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from cloudtaser_s3.s3errors import S3Error
from cloudtaser_s3.sigv4 import (
    MSG_SIGNATURE_MISMATCH,
    RESIGN_HEADERS,
    VerifiedRequest,
    canonical_query,
    canonical_uri,
    resign,
    strip_presign_query,
    verify,
)

ACCESS_KEY = "AKIDCLIENTEXAMPLE"
SECRET_KEY = "client/Secret+Key/with/slashes/EXAMPLEKEY"
REGION = "eu-west-1"
ENDPOINT = "https://proxy.test:8443"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SIGNED_AT = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def secret_for(access_key: str) -> str | None:
    return {ACCESS_KEY: SECRET_KEY}.get(access_key)


@contextmanager
def botocore_clock(at: datetime) -> Iterator[None]:
    """Make botocore's signers (pure Python and, when awscrt is installed, CRT) sign at ``at``."""

    def clock(remove_tzinfo: bool = True) -> datetime:
        return at.replace(tzinfo=None) if remove_tzinfo else at

    with (
        mock.patch("botocore.auth.get_current_datetime", clock),
        mock.patch("botocore.crt.auth.get_current_datetime", clock),
    ):
        yield


@dataclass(frozen=True)
class Wire:
    """A request as the proxy receives it: what verify() is given."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]

    def verify(self, now: datetime = SIGNED_AT, **kwargs: object) -> VerifiedRequest:
        return verify(self.method, self.path, self.query, self.headers, secret_for, now, **kwargs)

    def with_headers(self, *extra: tuple[str, str]) -> Wire:
        return replace(self, headers=self.headers + extra)

    def without(self, name: str) -> Wire:
        return replace(
            self, headers=tuple((n, v) for n, v in self.headers if n.lower() != name.lower())
        )

    def replacing(self, name: str, value: str) -> Wire:
        return self.without(name).with_headers((name, value))


def wire_from_url(method: str, url: str, headers: list[tuple[str, str]]) -> Wire:
    parts = urlsplit(url)
    names = {n.lower() for n, _ in headers}
    host = [] if "host" in names else [("Host", parts.netloc)]
    return Wire(method, parts.path, parts.query, tuple(host + headers))


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class _Sent(Exception):
    def __init__(self, request: AWSPreparedRequest) -> None:
        super().__init__("captured")
        self.request = request


def boto3_client(endpoint: str = ENDPOINT, **config: object) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}, **config),
    )


def sent_by(call: Callable[[object], object], endpoint: str = ENDPOINT) -> Wire:
    """What a real boto3 client puts on the wire for ``call(client)``; nothing is sent."""
    client = boto3_client(endpoint)

    def capture(request: AWSPreparedRequest, **_: object) -> None:
        raise _Sent(request)

    client.meta.events.register("before-send.s3", capture)
    with botocore_clock(SIGNED_AT), pytest.raises(_Sent) as sent:
        call(client)
    request = sent.value.request
    headers = [(_text(n), _text(v)) for n, v in request.headers.items()]
    return wire_from_url(request.method, request.url, headers)


def signed_by_botocore(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    signer_class: type[S3SigV4Auth] = S3SigV4Auth,
) -> Wire:
    """An AWSRequest signed with S3SigV4Auth, botocore's pure Python S3 signer."""
    request = AWSRequest(method=method, url=url, headers=headers or {})
    signer = signer_class(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION)
    with botocore_clock(SIGNED_AT):
        signer.add_auth(request)
    return wire_from_url(method, url, [(n, _text(v)) for n, v in request.headers.items()])


def presigned_by_botocore(
    url: str, expires: int = 3600, headers: dict[str, str] | None = None
) -> Wire:
    request = AWSRequest(method="GET", url=url, headers=headers or {})
    signer = S3SigV4QueryAuth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION, expires=expires)
    with botocore_clock(SIGNED_AT):
        signer.add_auth(request)
    return wire_from_url("GET", request.url, [(n, _text(v)) for n, v in request.headers.items()])


def refusal(wire: Wire, now: datetime = SIGNED_AT, **kwargs: object) -> S3Error:
    with pytest.raises(S3Error) as refused:
        wire.verify(now, **kwargs)
    return refused.value


# --------------------------------------------------------------------------- AWS's own examples


class TestAwsPublishedExamples:
    """The worked examples of "Signature Calculations for the Authorization Header" and
    "Authenticating Requests: Using Query Parameters" in the S3 API reference."""

    KEY = "AKIAIOSFODNN7EXAMPLE"
    SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    NOW = datetime(2013, 5, 24, tzinfo=UTC)
    HOST = ("Host", "examplebucket.s3.amazonaws.com")

    def check(self, method: str, path: str, query: str, headers: list[tuple[str, str]]):
        return verify(method, path, query, headers, {self.KEY: self.SECRET}.get, self.NOW)

    def auth(self, signed_headers: str, signature: str) -> tuple[str, str]:
        return (
            "Authorization",
            f"AWS4-HMAC-SHA256 Credential={self.KEY}/20130524/us-east-1/s3/aws4_request,"
            f"SignedHeaders={signed_headers},Signature={signature}",
        )

    def test_get_object_with_range(self):
        verified = self.check(
            "GET",
            "/test.txt",
            "",
            [
                self.HOST,
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
                self.auth(
                    "host;range;x-amz-content-sha256;x-amz-date",
                    "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
                ),
            ],
        )
        assert verified.region == "us-east-1"
        assert verified.scope == "20130524/us-east-1/s3/aws4_request"
        assert verified.payload_hash == EMPTY_SHA256

    def test_put_object_signing_a_date_header_and_an_encoded_key(self):
        payload = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        verified = self.check(
            "PUT",
            "/test%24file.text",
            "",
            [
                self.HOST,
                ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-date", "20130524T000000Z"),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                ("x-amz-content-sha256", payload),
                self.auth(
                    "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
                    "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
                ),
            ],
        )
        assert verified.payload_hash == payload

    def test_get_bucket_lifecycle_a_query_key_without_value(self):
        self.check(
            "GET",
            "/",
            "lifecycle",
            [
                self.HOST,
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
                self.auth(
                    "host;x-amz-content-sha256;x-amz-date",
                    "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
                ),
            ],
        )

    def test_list_objects_query_sorted_by_name(self):
        self.check(
            "GET",
            "/",
            "max-keys=2&prefix=J",
            [
                self.HOST,
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", "20130524T000000Z"),
                self.auth(
                    "host;x-amz-content-sha256;x-amz-date",
                    "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
                ),
            ],
        )

    def test_presigned_get_object(self):
        query = (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
            "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        )
        verified = self.check("GET", "/test.txt", query, [self.HOST])
        assert verified.presigned
        assert verified.payload_hash == "UNSIGNED-PAYLOAD"
        assert verified.signed_headers == ("host",)


# --------------------------------------------------------------------------- canonical forms


class TestCanonicalForms:
    def test_uri_is_decoded_once_and_reencoded_strictly(self):
        assert canonical_uri("/b/a b+c") == "/b/a%20b%2Bc"
        assert canonical_uri("/b/a%20b%2bc") == "/b/a%20b%2Bc"  # hex case does not matter
        assert canonical_uri("/b/%41%7e") == "/b/A~"  # unreserved come back unencoded
        assert canonical_uri("/b/100%25") == "/b/100%25"  # no double encoding
        assert canonical_uri("/b/%C3%A9") == "/b/%C3%A9"

    def test_uri_keeps_empty_and_dot_segments(self):
        assert canonical_uri("/b//x/./y/../z") == "/b//x/./y/../z"
        assert canonical_uri("") == "/"

    def test_query_sorted_by_name_then_value_and_bare_keys_get_empty_values(self):
        assert canonical_query("uploads") == "uploads="
        assert canonical_query("b=2&a=1&a=0&c") == "a=0&a=1&b=2&c="

    def test_query_reencodes_slash_and_reads_plus_as_space(self):
        # '+' in a raw query is a space to AWS S3 (and MinIO, Ceph RGW): SDKs send %2B for '+'.
        assert canonical_query("prefix=a+b") == "prefix=a%20b"
        assert canonical_query("uploadId=a%2Bb%2fc") == "uploadId=a%2Bb%2Fc"
        assert canonical_query("k=a/b") == "k=a%2Fb"

    def test_query_can_exclude_a_parameter(self):
        assert canonical_query("a=1&X-Amz-Signature=abc", exclude=["X-Amz-Signature"]) == "a=1"

    def test_strip_presign_query_keeps_the_rest_as_sent(self):
        query = "versionId=a+b%2F&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00&uploads"
        assert strip_presign_query(query) == "versionId=a+b%2F&uploads"


# --------------------------------------------------------------------------- what clients sign

KEYS = [
    "plain.txt",
    "with space.txt",
    "plus+sign.txt",
    "unicodé/ключ/鍵.bin",
    "100%.txt",
    "literal%2Fpercent-escape",
    "dir//double//slash/",
    "star*paren()!quote'tilde~",
    "question?hash#amp&eq=",
    "/leading-slash",
    "tab\tand\nnewline",
]


class TestAcceptsWhatBoto3Sends:
    @pytest.mark.parametrize("key", KEYS)
    def test_put_object_key_encodings(self, key: str):
        wire = sent_by(lambda s3: s3.put_object(Bucket="bucket", Key=key, Body=b"hello"))
        verified = wire.verify()
        assert verified.access_key == ACCESS_KEY
        assert verified.region == REGION
        assert not verified.presigned

    @pytest.mark.parametrize("key", KEYS)
    def test_get_object_key_encodings(self, key: str):
        sent_by(lambda s3: s3.get_object(Bucket="bucket", Key=key)).verify()

    def test_streaming_put_over_https_signs_a_trailer_payload(self):
        wire = sent_by(lambda s3: s3.put_object(Bucket="b", Key="k", Body=b"hello"))
        verified = wire.verify()
        assert verified.payload_hash == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        assert "x-amz-decoded-content-length" in verified.signed_headers

    def test_put_over_http_signs_the_body_hash(self):
        wire = sent_by(
            lambda s3: s3.put_object(Bucket="b", Key="k", Body=b"hello"),
            endpoint="http://proxy.test:8080",
        )
        verified = wire.verify()
        assert re.fullmatch(r"[0-9a-f]{64}", verified.payload_hash)

    def test_create_multipart_upload_query_key_without_value(self):
        wire = sent_by(lambda s3: s3.create_multipart_upload(Bucket="b", Key="k"))
        assert wire.query == "uploads"
        wire.verify()

    def test_upload_part_with_plus_and_slash_in_upload_id(self):
        wire = sent_by(
            lambda s3: s3.upload_part(
                Bucket="b", Key="k", PartNumber=1, UploadId="a+b/c", Body=b"part"
            )
        )
        assert wire.query == "partNumber=1&uploadId=a%2Bb%2Fc"
        wire.verify()

    @pytest.mark.parametrize("prefix", ["a b", "a+b", "ü/x", "%2F"])
    def test_list_objects_v2_prefixes(self, prefix: str):
        sent_by(lambda s3: s3.list_objects_v2(Bucket="b", Prefix=prefix)).verify()

    def test_range_metadata_and_copy_source_headers(self):
        sent_by(lambda s3: s3.get_object(Bucket="b", Key="k", Range="bytes=0-9")).verify()
        wire = sent_by(
            lambda s3: s3.copy_object(
                Bucket="b",
                Key="dst",
                CopySource={"Bucket": "src", "Key": "a b+c/é"},
                Metadata={"note": "  two   spaces  "},
            )
        )
        verified = wire.verify()
        assert {"x-amz-copy-source", "x-amz-meta-note"} <= set(verified.signed_headers)

    def test_header_names_in_any_case(self):
        wire = sent_by(lambda s3: s3.head_object(Bucket="b", Key="k"))
        shouted = replace(wire, headers=tuple((n.upper(), v) for n, v in wire.headers))
        shouted.verify()


class TestAcceptsWhatS3SigV4AuthSigns:
    def test_repeated_headers_are_joined_with_commas(self):
        request = AWSRequest(
            method="PUT",
            url="https://proxy.test/b/k",
            headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
        )
        request.headers["X-Amz-Meta-Tag"] = "one"
        request.headers["X-Amz-Meta-Tag"] = "  two   words "  # a second value, not a replacement
        with botocore_clock(SIGNED_AT):
            S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", REGION).add_auth(request)
        wire = wire_from_url(
            "PUT", request.url, [(n, _text(v)) for n, v in request.headers.items()]
        )
        assert [v for n, v in wire.headers if n.lower() == "x-amz-meta-tag"] == [
            "one",
            "  two   words ",
        ]
        wire.verify()

    def test_date_header_instead_of_x_amz_date(self):
        # botocore signs with the Date header when the request already has one.
        wire = signed_by_botocore(
            "GET", "https://proxy.test/b/k", {"Date": "Sun, 01 Mar 2026 00:00:00 GMT"}
        )
        assert "x-amz-date" not in {n.lower() for n, _ in wire.headers}
        assert wire.verify().amz_date == "20260301T120000Z"

    def test_a_space_sent_as_plus_in_the_query_is_a_space(self):
        # A client that signs "%20" but lets its HTTP library write "+" (s3cmd, aws4fetch).
        wire = signed_by_botocore("GET", "https://proxy.test/b?prefix=a%20b")
        replace(wire, query="prefix=a+b").verify()

    def test_a_literal_plus_must_be_sent_as_2B(self):
        signed_plus = signed_by_botocore("GET", "https://proxy.test/b?prefix=a%2Bb")
        signed_plus.verify()
        # Sent raw, S3 would read the '+' as a space: not what the client signed.
        assert refusal(replace(signed_plus, query="prefix=a+b")).code == "SignatureDoesNotMatch"


class TestAcceptsPresignedUrls:
    def test_generate_presigned_url_get(self):
        client = boto3_client(signature_version="s3v4")
        with botocore_clock(SIGNED_AT):
            url = client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": "b",
                    "Key": "dir/a b+c/é.txt",
                    "ResponseContentDisposition": 'attachment; filename="a b.txt"',
                },
                ExpiresIn=600,
            )
        verified = wire_from_url("GET", url, []).verify(SIGNED_AT + timedelta(seconds=599))
        assert verified.presigned
        assert verified.payload_hash == "UNSIGNED-PAYLOAD"

    def test_generate_presigned_url_put(self):
        client = boto3_client(signature_version="s3v4")
        with botocore_clock(SIGNED_AT):
            url = client.generate_presigned_url(
                "put_object", Params={"Bucket": "b", "Key": "up load"}, ExpiresIn=60
            )
        wire_from_url("PUT", url, [("Content-Length", "5")]).verify()

    def test_boto3_presigns_with_sigv2_unless_told_s3v4(self):
        # Without signature_version="s3v4" boto3 still presigns SigV2 for a custom endpoint;
        # the proxy answers as S3 does in SigV4-only regions.
        with botocore_clock(SIGNED_AT):
            url = boto3_client().generate_presigned_url(
                "get_object", Params={"Bucket": "b", "Key": "k"}
            )
        assert "AWSAccessKeyId=" in url
        error = refusal(wire_from_url("GET", url, []))
        assert (error.code, error.status) == ("InvalidRequest", 400)
        assert error.message == (
            "The authorization mechanism you have provided is not supported. "
            "Please use AWS4-HMAC-SHA256."
        )

    def test_s3sigv4queryauth_with_a_signed_header(self):
        wire = presigned_by_botocore(
            "https://proxy.test/b/k?versionId=v%2B1", headers={"X-Amz-Meta-A": "1"}
        )
        assert wire.verify().signed_headers == ("host", "x-amz-meta-a")

    def test_unsigned_content_sha256_header_is_tolerated(self):
        wire = presigned_by_botocore("https://proxy.test/b/k")
        wire.with_headers(("x-amz-content-sha256", "UNSIGNED-PAYLOAD")).verify()


# --------------------------------------------------------------------------- refusals


@pytest.fixture
def signed_get() -> Wire:
    return signed_by_botocore("GET", "https://proxy.test/b/k?list-type=2")


@pytest.fixture
def presigned_get() -> Wire:
    return presigned_by_botocore("https://proxy.test/b/k", expires=3600)


def _set_query(wire: Wire, name: str, value: str) -> Wire:
    parts = [p for p in wire.query.split("&") if p.partition("=")[0] != name]
    return replace(wire, query="&".join([*parts, f"{name}={value}"]))


def _authorization(wire: Wire) -> str:
    return next(v for n, v in wire.headers if n.lower() == "authorization")


class TestRefusals:
    def test_anonymous(self):
        wire = Wire("GET", "/b/k", "", (("Host", "proxy.test"),))
        error = refusal(wire)
        assert (error.code, error.status) == ("AccessDenied", 403)
        assert error.message == "Anonymous requests are not allowed through the proxy"

    def test_header_and_query_authentication_at_once(self, signed_get, presigned_get):
        both = replace(signed_get, query=presigned_get.query)
        assert (refusal(both).code, refusal(both).status) == ("InvalidArgument", 400)

    @pytest.mark.parametrize(
        "authorization",
        [
            "AWS AKIDCLIENTEXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=",  # SigV2
            "AWS4-ECDSA-P256-SHA256 Credential=AKIDCLIENTEXAMPLE/20260301/s3/aws4_request, "
            "SignedHeaders=host, Signature=3045",  # SigV4A
            "Bearer token",
        ],
    )
    def test_other_authorization_schemes(self, signed_get, authorization):
        error = refusal(signed_get.replacing("Authorization", authorization))
        assert (error.code, error.status) == ("InvalidRequest", 400)
        assert "Please use AWS4-HMAC-SHA256" in error.message

    def test_sigv2_presigned_url(self):
        wire = Wire(
            "GET",
            "/b/k",
            "AWSAccessKeyId=AKIDCLIENTEXAMPLE&Expires=1&Signature=abc",
            (("Host", "proxy.test"),),
        )
        assert (refusal(wire).code, refusal(wire).status) == ("InvalidRequest", 400)

    def test_presigned_with_other_algorithm(self, presigned_get):
        wire = _set_query(presigned_get, "X-Amz-Algorithm", "AWS4-ECDSA-P256-SHA256")
        assert (refusal(wire).code, refusal(wire).status) == (
            "AuthorizationQueryParametersError",
            400,
        )

    @pytest.mark.parametrize(
        "mangle",
        [
            lambda a: a.replace(", Signature=", ", Sig="),
            lambda a: a.replace("SignedHeaders=", "Signed="),
            lambda a: a + ", Extra=1",
            lambda a: a.replace(f"{ACCESS_KEY}/", f"{ACCESS_KEY}-"),  # four scope parts
            lambda a: a.replace("/s3/", "/ec2/"),
            lambda a: a.replace("/aws4_request", "/aws4_reques"),
            lambda a: a.replace("/20260301/", "/2026-03-01/"),
            lambda a: a.replace(f"/{REGION}/", "//"),
        ],
    )
    def test_malformed_authorization_header(self, signed_get, mangle):
        wire = signed_get.replacing("Authorization", mangle(_authorization(signed_get)))
        error = refusal(wire)
        assert (error.code, error.status) == ("AuthorizationHeaderMalformed", 400)

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("X-Amz-Credential", "AKIDCLIENTEXAMPLE%2F20260301%2Feu-west-1%2Fs3"),
            ("X-Amz-Credential", "AKIDCLIENTEXAMPLE%2F20260301%2Feu-west-1%2Fiam%2Faws4_request"),
            ("X-Amz-Date", "2026-03-01T12:00:00Z"),
            ("X-Amz-Expires", "604801"),
            ("X-Amz-Expires", "0"),
            ("X-Amz-Expires", "-5"),
            ("X-Amz-Expires", "soon"),
        ],
    )
    def test_malformed_query_parameters(self, presigned_get, name, value):
        error = refusal(_set_query(presigned_get, name, value))
        assert (error.code, error.status) == ("AuthorizationQueryParametersError", 400)

    def test_missing_query_parameter(self, presigned_get):
        parts = [p for p in presigned_get.query.split("&") if not p.startswith("X-Amz-Expires")]
        error = refusal(replace(presigned_get, query="&".join(parts)))
        assert (error.code, error.status) == ("AuthorizationQueryParametersError", 400)

    def test_unknown_access_key(self, signed_get):
        wire = signed_get.replacing(
            "Authorization", _authorization(signed_get).replace(ACCESS_KEY, "AKIDNOBODY")
        )
        error = refusal(wire)
        assert (error.code, error.status) == ("InvalidAccessKeyId", 403)

    def test_credential_date_differs_from_x_amz_date(self, signed_get, presigned_get):
        wire = signed_get.replacing("X-Amz-Date", "20260302T000000Z")
        error = refusal(wire, now=datetime(2026, 3, 2, tzinfo=UTC))
        assert (error.code, error.status) == ("AuthorizationHeaderMalformed", 400)
        assert "Date is not the same as X-Amz-Date" in error.message
        query = _set_query(presigned_get, "X-Amz-Date", "20260302T000000Z")
        error = refusal(query, now=datetime(2026, 3, 2, tzinfo=UTC))
        assert (error.code, error.status) == ("AuthorizationQueryParametersError", 400)

    @pytest.mark.parametrize("date", [None, "yesterday", "20260301T120000", "20261301T120000Z"])
    def test_missing_or_unreadable_date(self, signed_get, date):
        wire = signed_get.without("X-Amz-Date")
        if date is not None:
            wire = wire.with_headers(("X-Amz-Date", date))
        error = refusal(wire)
        assert (error.code, error.status) == ("AccessDenied", 403)
        assert error.message == "AWS authentication requires a valid Date or x-amz-date header"

    @pytest.mark.parametrize("offset", [timedelta(minutes=16), -timedelta(minutes=16)])
    def test_request_time_too_skewed(self, signed_get, offset):
        error = refusal(signed_get, now=SIGNED_AT + offset)
        assert (error.code, error.status) == ("RequestTimeTooSkewed", 403)
        signed_get.verify(SIGNED_AT + offset / 2)
        signed_get.verify(SIGNED_AT + offset, max_skew=timedelta(minutes=20))

    def test_presigned_url_expires(self, presigned_get):
        presigned_get.verify(SIGNED_AT + timedelta(seconds=3600))
        error = refusal(presigned_get, now=SIGNED_AT + timedelta(seconds=3601))
        assert (error.code, error.status, error.message) == (
            "AccessDenied",
            403,
            "Request has expired",
        )

    def test_presigned_url_from_the_future(self, presigned_get):
        presigned_get.verify(SIGNED_AT - timedelta(minutes=14))
        error = refusal(presigned_get, now=SIGNED_AT - timedelta(minutes=16))
        assert (error.code, error.status) == ("AccessDenied", 403)

    def test_host_must_be_signed(self):
        class LeavesHostOut(S3SigV4Auth):
            def headers_to_sign(self, request):
                headers = super().headers_to_sign(request)
                del headers["host"]
                return headers

        wire = signed_by_botocore("GET", "https://proxy.test/b/k", signer_class=LeavesHostOut)
        assert "SignedHeaders=x-amz-content-sha256;x-amz-date," in _authorization(wire)
        error = refusal(wire)
        assert (error.code, error.status) == ("AccessDenied", 403)
        assert error.message == "There were headers present in the request which were not signed"

    def test_unsigned_amz_header_is_refused(self, signed_get, presigned_get):
        for wire in (signed_get, presigned_get):
            error = refusal(wire.with_headers(("x-amz-copy-source", "/other/secret-object")))
            assert (error.code, error.status) == ("AccessDenied", 403)

    def test_unsigned_ordinary_header_is_ignored(self, signed_get):
        signed_get.with_headers(("User-Agent", "changed"), ("X-Amzn-Trace-Id", "Root=1")).verify()

    def test_signed_header_missing_from_request(self):
        wire = signed_by_botocore("GET", "https://proxy.test/b/k", {"Range": "bytes=0-9"})
        error = refusal(wire.without("Range"))
        assert (error.code, error.status) == ("SignatureDoesNotMatch", 403)

    def test_header_form_needs_x_amz_content_sha256(self, signed_get):
        error = refusal(signed_get.without("X-Amz-Content-SHA256"))
        assert (error.code, error.status) == ("InvalidRequest", 400)
        assert error.message == "Missing required header for this request: x-amz-content-sha256"

    def test_invalid_x_amz_content_sha256(self, signed_get):
        wire = signed_get.replacing("X-Amz-Content-SHA256", "sha256-of-what")
        assert (refusal(wire).code, refusal(wire).status) == ("InvalidArgument", 400)

    @pytest.mark.parametrize(
        "tamper",
        [
            lambda w: replace(w, method="DELETE"),
            lambda w: replace(w, path="/b/other"),
            lambda w: replace(w, path="/B/k"),
            lambda w: replace(w, query="list-type=1"),
            lambda w: replace(w, query=""),
            lambda w: w.replacing("Host", "elsewhere.test"),
            lambda w: w.replacing("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD"),
            lambda w: w.replacing(
                "Authorization",
                re.sub(r"Signature=\w+", "Signature=" + "0" * 64, _authorization(w)),
            ),
            lambda w: w.replacing(
                "Authorization", _authorization(w).replace("Signature=", "Signature=é")
            ),
        ],
    )
    def test_signature_mismatch(self, signed_get, tamper):
        error = refusal(tamper(signed_get))
        assert (error.code, error.status) == ("SignatureDoesNotMatch", 403)
        assert error.message == MSG_SIGNATURE_MISMATCH
        assert error.message == (
            "The request signature we calculated does not match the signature you provided. "
            "Check your key and signing method."
        )

    def test_wrong_secret(self, signed_get):
        with pytest.raises(S3Error) as refused:
            verify(
                signed_get.method,
                signed_get.path,
                signed_get.query,
                signed_get.headers,
                lambda _: "not-the-secret",
                SIGNED_AT,
            )
        assert refused.value.code == "SignatureDoesNotMatch"

    def test_presigned_signature_mismatch(self, presigned_get):
        wire = replace(presigned_get, path="/b/other")
        assert (refusal(wire).code, refusal(wire).status) == ("SignatureDoesNotMatch", 403)

    def test_no_refusal_reveals_a_secret_or_a_signature(self, signed_get, presigned_get):
        cases = [
            replace(signed_get, path="/b/other"),
            replace(presigned_get, path="/b/other"),
            signed_get.replacing("X-Amz-Date", "garbage"),
            signed_get.without("X-Amz-Content-SHA256"),
            signed_get.with_headers(("x-amz-acl", "public-read")),
            replace(signed_get, query=presigned_get.query),
            _set_query(presigned_get, "X-Amz-Expires", "999999"),
        ]
        for wire in cases:
            error = refusal(wire)
            for text in (error.message, str(error), repr(error)):
                assert SECRET_KEY not in text
                assert not re.search(r"[0-9a-f]{64}", text), text


# --------------------------------------------------------------------------- re-signing

UPSTREAM = Credentials("AKIDPROXYUPSTREAM", "proxy/upstream+secret")
UPSTREAM_WITH_TOKEN = Credentials("ASIAPROXYUPSTREAM", "proxy/upstream+secret", "session-token")


def upstream_wire(
    method: str, url: str, headers: list[tuple[str, str]], signed: dict[str, str]
) -> Wire:
    """The forwarded request: the original headers minus the replaced ones, plus resign()'s."""
    replaced = {name.lower() for name in RESIGN_HEADERS}
    kept = [(n, v) for n, v in headers if n.lower() not in replaced and n.lower() != "host"]
    return wire_from_url(method, url, kept + list(signed.items()))


def verify_upstream(wire: Wire, credentials: Credentials, now: datetime) -> VerifiedRequest:
    return verify(
        wire.method,
        wire.path,
        wire.query,
        wire.headers,
        {credentials.access_key: credentials.secret_key}.get,
        now,
    )


class TestResign:
    URL = "https://s3.upstream.test/bucket/dir/a%20b%2Bc.txt?partNumber=1&uploadId=a%2Bb%2Fc"
    HEADERS = [
        ("Content-Type", "text/plain"),
        ("Content-MD5", "XUFAKrxLKna5cZ2REBfFkg=="),
        ("x-amz-meta-cloudtaser-dek", "vault:v1:abc"),
        ("Connection", "keep-alive"),
        ("Expect", "100-continue"),
        ("Transfer-Encoding", "chunked"),
        ("User-Agent", "aws-cli/2"),
        ("Content-Length", "44"),
        ("Via", "1.1 proxy"),
        ("X-Amzn-Trace-Id", "Root=1-abc"),
    ]

    def test_round_trip_verifies_with_the_upstream_credentials(self):
        signed = resign(
            "PUT", self.URL, self.HEADERS, UPSTREAM, "us-east-2", "UNSIGNED-PAYLOAD", now=SIGNED_AT
        )
        assert set(signed) == {"Authorization", "X-Amz-Date", "X-Amz-Content-SHA256"}
        verified = verify_upstream(
            upstream_wire("PUT", self.URL, self.HEADERS, signed), UPSTREAM, SIGNED_AT
        )
        assert verified.access_key == UPSTREAM.access_key
        assert verified.region == "us-east-2"
        assert verified.payload_hash == "UNSIGNED-PAYLOAD"
        assert verified.amz_date == "20260301T120000Z"

    def test_only_s3_meaningful_headers_are_signed(self):
        signed = resign(
            "PUT", self.URL, self.HEADERS, UPSTREAM, REGION, EMPTY_SHA256, now=SIGNED_AT
        )
        verified = verify_upstream(
            upstream_wire("PUT", self.URL, self.HEADERS, signed), UPSTREAM, SIGNED_AT
        )
        assert verified.signed_headers == (
            "content-md5",
            "content-type",
            "host",
            "x-amz-content-sha256",
            "x-amz-date",
            "x-amz-meta-cloudtaser-dek",
        )

    @pytest.mark.parametrize(
        "payload_hash",
        [
            "UNSIGNED-PAYLOAD",
            EMPTY_SHA256,
            "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        ],
    )
    @pytest.mark.parametrize("scheme", ["https", "http"])
    def test_signs_exactly_the_payload_hash_given(self, payload_hash, scheme):
        # botocore alone would hash the (empty) body over http: the given value must win.
        url = f"{scheme}://s3.upstream.test/b/k"
        signed = resign("PUT", url, [], UPSTREAM, REGION, payload_hash, now=SIGNED_AT)
        assert signed["X-Amz-Content-SHA256"] == payload_hash
        verified = verify_upstream(upstream_wire("PUT", url, [], signed), UPSTREAM, SIGNED_AT)
        assert verified.payload_hash == payload_hash

    def test_signing_twice_is_stable_and_ignores_old_auth_headers(self):
        first = resign("GET", self.URL, self.HEADERS, UPSTREAM, REGION, EMPTY_SHA256, now=SIGNED_AT)
        stale = self.HEADERS + [
            ("Authorization", "AWS4-HMAC-SHA256 Credential=old"),
            ("X-Amz-Date", "20200101T000000Z"),
            ("X-Amz-Security-Token", "old-token"),
            ("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD"),
            ("Date", "Wed, 01 Jan 2020 00:00:00 GMT"),
            ("Host", "client-facing.proxy.test"),
        ]
        second = resign("GET", self.URL, stale, UPSTREAM, REGION, EMPTY_SHA256, now=SIGNED_AT)
        assert second == first
        later = resign(
            "GET",
            self.URL,
            self.HEADERS,
            UPSTREAM,
            REGION,
            EMPTY_SHA256,
            now=SIGNED_AT + timedelta(seconds=1),
        )
        assert later["Authorization"] != first["Authorization"]

    def test_dict_headers(self):
        as_dict = resign(
            "GET", self.URL, dict(self.HEADERS), UPSTREAM, REGION, EMPTY_SHA256, now=SIGNED_AT
        )
        as_list = resign(
            "GET", self.URL, self.HEADERS, UPSTREAM, REGION, EMPTY_SHA256, now=SIGNED_AT
        )
        assert as_dict == as_list

    @pytest.mark.parametrize(
        ("method", "url", "headers", "payload_hash"),
        [
            ("PUT", URL, HEADERS, "UNSIGNED-PAYLOAD"),
            ("GET", "https://s3.upstream.test:8443/b/k?list-type=2&prefix=a+b", [], EMPTY_SHA256),
            ("HEAD", "http://127.0.0.1:9000/b/%E2%82%AC/x", [("Range", "bytes=0-9")], EMPTY_SHA256),
            ("POST", "http://[::1]:9000/b/k?uploads", [("x-amz-meta-a", " 1  2 ")], EMPTY_SHA256),
            ("DELETE", "https://S3.Upstream.test/b/k?versionId=x%2Fy", [], EMPTY_SHA256),
        ],
    )
    @pytest.mark.parametrize("credentials", [UPSTREAM, UPSTREAM_WITH_TOKEN])
    def test_signs_exactly_what_botocore_signs(
        self, method, url, headers, payload_hash, credentials
    ):
        """Our signer against botocore's (the reference every SDK agrees with): the same
        Authorization, byte for byte, for the headers resign() chooses to sign."""

        class FixedPayload(S3SigV4Auth):
            def payload(self, request: AWSRequest) -> str:
                return payload_hash

        ours = resign(method, url, headers, credentials, REGION, payload_hash, now=SIGNED_AT)
        parts = urlsplit(url)
        signed_url = f"{parts.scheme}://{parts.netloc}{canonical_uri(parts.path)}"
        if parts.query:
            signed_url += "?" + canonical_query(parts.query)
        request = AWSRequest(method=method, url=signed_url)
        for name, value in headers:
            if name.lower().startswith("x-amz-") or name.lower() in {
                "content-md5",
                "content-type",
                "range",
            }:
                request.headers[name] = value
        request.context["timestamp"] = SIGNED_AT.strftime("%Y%m%dT%H%M%SZ")
        reference = FixedPayload(credentials, "s3", REGION)
        with botocore_clock(SIGNED_AT):
            reference.add_auth(request)
        assert ours["Authorization"] == request.headers["Authorization"]
        assert ours["X-Amz-Date"] == request.headers["X-Amz-Date"]

    def test_session_token_is_set_and_signed(self):
        signed = resign(
            "GET", self.URL, [], UPSTREAM_WITH_TOKEN, REGION, EMPTY_SHA256, now=SIGNED_AT
        )
        assert signed["X-Amz-Security-Token"] == "session-token"
        verified = verify_upstream(
            upstream_wire("GET", self.URL, [], signed), UPSTREAM_WITH_TOKEN, SIGNED_AT
        )
        assert "x-amz-security-token" in verified.signed_headers

    @pytest.mark.parametrize(
        ("url", "host"),
        [
            ("https://s3.upstream.test:443/b/k", "s3.upstream.test"),
            ("http://s3.upstream.test:80/b/k", "s3.upstream.test"),
            ("http://127.0.0.1:9000/b/k", "127.0.0.1:9000"),
            ("http://[::1]:9000/b/k", "[::1]:9000"),
        ],
    )
    def test_signed_host_drops_only_default_ports(self, url, host):
        signed = resign("GET", url, [], UPSTREAM, REGION, EMPTY_SHA256, now=SIGNED_AT)
        parts = urlsplit(url)
        wire = Wire("GET", parts.path, "", (("Host", host), *signed.items()))
        verify_upstream(wire, UPSTREAM, SIGNED_AT)

    def test_non_canonical_wire_encoding_is_signed_as_s3_reads_it(self):
        # Forwarded as the client sent it; S3 canonicalises before checking, and so does resign.
        url = "https://s3.upstream.test/b/it's(1)!.txt?prefix=a+b&versionId=x%2fy"
        signed = resign("GET", url, [], UPSTREAM, REGION, EMPTY_SHA256, now=SIGNED_AT)
        verify_upstream(upstream_wire("GET", url, [], signed), UPSTREAM, SIGNED_AT)

    def test_repeated_headers_round_trip(self):
        headers = [("x-amz-meta-a", "1"), ("X-Amz-Meta-A", " 2  3 ")]
        url = "https://s3.upstream.test/b/k"
        signed = resign("PUT", url, headers, UPSTREAM, REGION, EMPTY_SHA256, now=SIGNED_AT)
        verify_upstream(upstream_wire("PUT", url, headers, signed), UPSTREAM, SIGNED_AT)

    def test_refuses_a_url_still_carrying_query_authentication(self):
        with pytest.raises(ValueError, match="query authentication"):
            resign(
                "GET",
                "https://s3.upstream.test/b/k?X-Amz-Signature=00",
                [],
                UPSTREAM,
                REGION,
                EMPTY_SHA256,
                now=SIGNED_AT,
            )

    def test_a_presigned_client_request_is_forwarded_with_header_authentication(self):
        client_wire = presigned_by_botocore("https://proxy.test/b/a%20b?versionId=v1")
        verified = client_wire.verify()
        url = f"https://s3.upstream.test{client_wire.path}?{strip_presign_query(client_wire.query)}"
        signed = resign(
            "GET",
            url,
            list(client_wire.headers),
            UPSTREAM,
            REGION,
            verified.payload_hash,
            now=SIGNED_AT,
        )
        upstream = verify_upstream(
            upstream_wire("GET", url, list(client_wire.headers), signed), UPSTREAM, SIGNED_AT
        )
        assert not upstream.presigned
        assert upstream.payload_hash == "UNSIGNED-PAYLOAD"

    def test_default_now_is_the_clock(self):
        signed = resign("GET", self.URL, [], UPSTREAM, REGION, EMPTY_SHA256)
        when = datetime.strptime(signed["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert abs(datetime.now(UTC) - when) < timedelta(minutes=1)
