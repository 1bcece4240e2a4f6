"""TLS on both sides: the listener serves the operator's certificate (and only that one — never
one from mitmproxy's own CA), and the upstream's certificate is verified, against a custom CA
bundle when the store has a private CA."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import uuid
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from conftest import proxy_default_env
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloudtaser_s3 import localservers as ls
from cloudtaser_s3.config import ConfigError
from cloudtaser_s3.tlsfiles import combined_pem


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(folder: Path, tag: str) -> dict[str, str]:
    """A private CA and a certificate for 127.0.0.1/localhost signed by it, as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(f"test CA {tag}"))
        .issuer_name(_name(f"test CA {tag}"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {n: str(folder / f"{n}.pem") for n in ("ca", "cert", "key")}
    Path(paths["ca"]).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    Path(paths["cert"]).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    Path(paths["key"]).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"), "listener")


@pytest.fixture(scope="module")
def bucket(moto_s3) -> str:
    name = f"tls-{uuid.uuid4().hex[:12]}"
    moto_s3.client().create_bucket(Bucket=name)
    return name


def https_client(proxy, backend, verify):
    return boto3.client(
        "s3",
        endpoint_url=proxy.endpoint.replace("http://", "https://"),
        aws_access_key_id=backend.access_key,
        aws_secret_access_key=backend.secret_key,
        region_name="us-east-1",
        verify=verify,
        config=Config(retries={"total_max_attempts": 1}),
    )


def test_the_listener_serves_the_given_certificate_and_boto3_streams_through_it(
    proxy_factory, moto_s3, bucket, pki
):
    proxy = proxy_factory(
        moto_s3, CLOUDTASER_S3PROXY_TLS_CERT=pki["cert"], CLOUDTASER_S3PROXY_TLS_KEY=pki["key"]
    )
    s3 = https_client(proxy, moto_s3, pki["ca"])
    data = os.urandom(3 * 2**20 + 5)
    # Over HTTPS boto3 sends aws-chunked bodies with a trailing checksum.
    s3.put_object(Bucket=bucket, Key="over-tls", Body=data)
    assert s3.get_object(Bucket=bucket, Key="over-tls")["Body"].read() == data
    stored = moto_s3.client().get_object(Bucket=bucket, Key="over-tls")
    assert stored["Metadata"]["cloudtaser-alg"] and stored["Body"].read() != data
    # Plain HTTP on a TLS listener is refused, never served.
    plain = proxy.client(moto_s3.access_key, moto_s3.secret_key)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        plain.get_object(Bucket=bucket, Key="over-tls")
    assert e.value.response["Error"]["Code"] == "AccessDenied"


def test_without_a_certificate_tls_is_refused_never_answered_by_mitmproxys_ca(proxy_moto):
    host, port = proxy_moto.endpoint.removeprefix("http://").split(":")
    trusting_anything = ssl.create_default_context()
    trusting_anything.check_hostname = False
    trusting_anything.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
        trusting_anything.wrap_socket(raw, server_hostname="localhost") as tls_sock,
    ):
        tls_sock.getpeercert(binary_form=True)


def test_the_upstream_certificate_is_verified_against_the_given_ca_bundle(
    proxy_factory, tmp_path, openbao, openbao_token
):
    store_pki = make_pki(tmp_path / "store-pki", "store")
    store = ls.start_moto(
        workdir=tmp_path / "moto-tls", tls=(store_pki["cert"], store_pki["key"], store_pki["ca"])
    )
    try:
        store.client().create_bucket(Bucket="private-ca")
        trusting = proxy_factory(store, CLOUDTASER_S3PROXY_UPSTREAM_CA_BUNDLE=store_pki["ca"])
        s3 = trusting.client(store.access_key, store.secret_key)
        s3.put_object(Bucket="private-ca", Key="k", Body=b"through verified TLS")
        assert s3.get_object(Bucket="private-ca", Key="k")["Body"].read() == b"through verified TLS"

        env = proxy_default_env(store, openbao, openbao_token)
        untrusting = ls.start_proxy(env, tmp_path / "untrusting")
        try:
            s3 = untrusting.client(store.access_key, store.secret_key)
            # The upstream handshake fails: the client's request fails (mitmproxy drops the
            # connection it was streaming on), and nothing reaches the store.
            with pytest.raises(
                (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)
            ):
                s3.put_object(Bucket="private-ca", Key="k2", Body=b"must not arrive")
            ls.wait_until(
                lambda: "Certificate verify failed" in untrusting.log_tail(200), 10, "the log line"
            )
            with pytest.raises(botocore.exceptions.ClientError):
                store.client().head_object(Bucket="private-ca", Key="k2")
        finally:
            untrusting.stop()
    finally:
        store.stop()


def test_a_key_that_is_not_the_certificates_stops_the_start_naming_the_setting(tmp_path, pki):
    other = make_pki(tmp_path / "other", "other")
    with pytest.raises(ConfigError) as e:
        combined_pem(pki["cert"], other["key"])
    assert e.value.variable == "CLOUDTASER_S3PROXY_TLS_KEY"
    with pytest.raises(ConfigError) as e:
        combined_pem(pki["key"], pki["key"])
    assert e.value.variable == "CLOUDTASER_S3PROXY_TLS_CERT"


def served_certificate(endpoint: str) -> bytes:
    host, port = endpoint.removeprefix("http://").split(":")
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # only to look at what is served
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        insecure.wrap_socket(raw, server_hostname="localhost") as tls_sock,
    ):
        return tls_sock.getpeercert(binary_form=True)


def test_a_renewed_certificate_is_served_without_a_restart(proxy_factory, moto_s3, tmp_path):
    first = make_pki(tmp_path / "first", "first")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(Path(first["cert"]).read_bytes())
    key.write_bytes(Path(first["key"]).read_bytes())
    proxy = proxy_factory(
        moto_s3, CLOUDTASER_S3PROXY_TLS_CERT=str(cert), CLOUDTASER_S3PROXY_TLS_KEY=str(key)
    )
    before = served_certificate(proxy.endpoint)
    second = make_pki(tmp_path / "second", "second")
    # As a Secret volume is updated: both files replaced.
    for src, dst in ((second["key"], key), (second["cert"], cert)):
        tmp = dst.with_suffix(".new")
        tmp.write_bytes(Path(src).read_bytes())
        os.replace(tmp, dst)
    ls.wait_until(lambda: served_certificate(proxy.endpoint) != before, 20, "the renewed cert")
    pem = Path(second["cert"]).read_bytes()
    assert served_certificate(proxy.endpoint) == x509.load_pem_x509_certificate(pem).public_bytes(
        serialization.Encoding.DER
    )
    s3 = https_client(proxy, moto_s3, second["ca"])
    s3.list_buckets()
