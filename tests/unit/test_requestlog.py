"""Request lines and JSON logging: what a line says, what it must never say, and how it fits
mitmdump's own log handlers."""

import io
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from mitmproxy.addons.errorcheck import ErrorCheckHandler
from mitmproxy.addons.termlog import TermLogHandler

from cloudtaser_s3 import requestlog
from cloudtaser_s3.requestlog import (
    JsonFormatter,
    RequestRecord,
    ScrubbingFormatter,
    client_ip,
    configure_logging,
    format_record,
    log_request,
    scrub,
)

VAULT_TOKEN = "hvs.CAESIJ3x7nQk2mZ0pVbXw9Lr4TgYhUe8sDfKjAo1cNqRzT5vGhsKcyAHo"
LEGACY_TOKEN = "s.Qf1s5zigZ4LX6vPFnBsXa1qU"
WRAPPED = "vault:v3:8SDd3WHDOjf7mq69CyCqYjBXAiQQAVZRkFM13ok481zoCmHnSeDX9vyf7w=="
SIGNATURE = "fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024"
DEK_B64 = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80="  # 32 bytes
SECRETS = (VAULT_TOKEN, LEGACY_TOKEN, WRAPPED.split(":")[2], SIGNATURE, DEK_B64)

PUT = RequestRecord(
    operation="PutObject",
    bucket="b",
    status=200,
    bytes_in=1048576,
    bytes_out=0,
    duration_ms=12.34,
    vault_calls=1,
    outcome="ok",
)


# ---------------------------------------------------------------- the request line


def test_the_text_line_is_key_value():
    assert format_record(PUT, json_output=False) == (
        "PutObject bucket=b status=200 in=1048576 out=0 ms=12.3 vault=1 outcome=ok"
    )


def test_optional_fields_follow_when_present_and_missing_ones_show_a_dash():
    r = RequestRecord(
        "GetObject", None, None, 0, 0, 5.0, 0, "aborted", "SlowDown", "4F2A9C", "10.0.0.7"
    )
    assert format_record(r, json_output=False) == (
        "GetObject bucket=- status=- in=0 out=0 ms=5.0 vault=0 outcome=aborted "
        "error=SlowDown id=4F2A9C client=10.0.0.7"
    )


def test_client_chosen_values_are_quoted_so_they_cannot_forge_fields_or_lines():
    r = RequestRecord("GET /", "a b\nfake=1", 400, 0, 0, 1.0, 0, "client_error")
    line = format_record(r, json_output=False)
    assert "\n" not in line
    assert line.startswith('"GET /" bucket="a b\\nfake=1" status=400')


def test_a_long_bucket_is_clipped():
    r = RequestRecord("ListObjects", "x" * 1000, 200, 0, 10, 1.0, 0, "ok")
    assert len(format_record(r, json_output=False)) < 400


def test_the_json_line_has_stable_keys_and_parses():
    line = format_record(PUT, json_output=True, ts=0.25)
    assert "\n" not in line
    data = json.loads(line)
    assert list(data) == [
        "ts",
        "level",
        "logger",
        "message",
        "operation",
        "bucket",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "vault_calls",
        "outcome",
        "error_code",
        "request_id",
        "client",
    ]
    assert data["ts"] == "1970-01-01T00:00:00.250Z"
    assert data["level"] == "info"
    assert data["operation"] == "PutObject"
    assert data["bytes_in"] == 1048576
    assert data["error_code"] is None


def test_failed_requests_are_warnings():
    r = RequestRecord("GetObject", "b", 503, 0, 0, 1.0, 1, "server_error", "ServiceUnavailable")
    assert json.loads(format_record(r, json_output=True))["level"] == "warning"


def test_a_record_has_no_field_for_an_object_key():
    """Object keys can be personal data; a request line cannot carry one by construction."""
    fields = set(RequestRecord.__dataclass_fields__)
    assert not fields & {"key", "object_key", "path", "url", "resource"}


def test_client_ip_keeps_only_the_address():
    assert client_ip(("192.0.2.1", 51234)) == "192.0.2.1"
    assert client_ip(("2001:db8::1", 51234, 0, 0)) == "2001:db8::1"
    assert client_ip(None) is None


# ---------------------------------------------------------------- scrubbing


@pytest.mark.parametrize(
    "message",
    [
        f"login ok, token {VAULT_TOKEN}",
        f"X-Vault-Token: {LEGACY_TOKEN}",
        f"unwrap of {WRAPPED} failed",
        f"Authorization: AWS4-HMAC-SHA256 Credential=AKIA/x, SignedHeaders=host, "
        f"Signature={SIGNATURE}",
        f"GET /b/k?X-Amz-Credential=AKIA%2Fx&X-Amz-Signature={SIGNATURE}&X-Amz-Expires=60",
        f"5;chunk-signature={SIGNATURE}",
        f"signature {SIGNATURE} does not match",
        f'{{"plaintext": "{DEK_B64}"}}',
        f"dek {DEK_B64}",
    ],
)
def test_scrub_removes_tokens_wrapped_keys_signatures_and_keys(message):
    out = scrub(message)
    for secret in SECRETS:
        assert secret not in out
    assert requestlog.REDACTED in out


def test_scrub_removes_session_tokens_and_secret_keys():
    out = scrub(
        "X-Amz-Security-Token=FwoGZXIvYXdzEBYaDHqa0AP1%2FabcDEF&x=1 "
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    )
    assert "FwoGZXIvYXdzEBYaDHqa0AP1" not in out
    assert "wJalrXUtnFEMI" not in out


def test_scrub_keeps_the_transit_key_version_and_ordinary_text():
    assert scrub(WRAPPED) == f"vault:v3:{requestlog.REDACTED}"
    text = (
        "cloudtaser: refused PUT /my-bucket: AccessDenied (403); "
        "s3.eu-west-1.amazonaws.com, ETag 9b2cf535f27731c974343645a3985328"
    )
    assert scrub(text) == text


# ---------------------------------------------------------------- formatters


def make_record(msg: str, *args, name: str = "cloudtaser", level: int = logging.INFO, **extra):
    record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_the_json_formatter_writes_one_parsable_line_without_secrets():
    record = make_record("cloudtaser: got %s and %s\nsecond line", VAULT_TOKEN, WRAPPED)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["level"] == "info"
    assert data["logger"] == "cloudtaser"
    assert data["message"].startswith("cloudtaser: got [redacted] and vault:v3:[redacted]")
    assert data["ts"].endswith("Z")
    for secret in SECRETS:
        assert secret not in line


def test_the_json_formatter_scrubs_tracebacks():
    try:
        raise RuntimeError(f"Vault refused token {VAULT_TOKEN}")
    except RuntimeError:
        record = make_record("cloudtaser: hook failed")
        record.exc_info = sys.exc_info()
    data = json.loads(JsonFormatter().format(record))
    assert "RuntimeError" in data["exception"]
    assert VAULT_TOKEN not in data["exception"]


def test_the_json_formatter_shows_a_request_record_as_fields_not_as_a_string():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cloudtaser.request.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        log_request(PUT, logger)
    finally:
        logger.removeHandler(handler)
    data = json.loads(stream.getvalue())
    assert data["operation"] == "PutObject"
    assert data["status"] == 200
    assert data["message"] == format_record(PUT, json_output=False)


def test_the_json_formatter_keeps_only_the_ip_of_mitmproxys_client_address():
    record = make_record("client connect", name="mitmproxy.proxy.server", client=("10.1.2.3", 4))
    assert json.loads(JsonFormatter().format(record))["client"] == "10.1.2.3"


def test_the_scrubbing_formatter_leaves_the_shared_record_alone():
    record = make_record("token %s", VAULT_TOKEN)
    out = ScrubbingFormatter(logging.Formatter("%(message)s")).format(record)
    assert out == "token [redacted]"
    assert record.getMessage() == f"token {VAULT_TOKEN}"  # other handlers see it as logged


# ---------------------------------------------------------------- configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Leave our loggers as the test found them."""
    loggers = [logging.getLogger(n) for n in (*requestlog.LOGGER_FAMILIES, "")]
    levels = [lg.level for lg in loggers]
    yield
    configure_logging(json_output=False)
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


@contextmanager
def mitmdump_handlers() -> Iterator[tuple[io.StringIO, ErrorCheckHandler]]:
    """Root handlers as mitmdump installs them: termlog printing, errorcheck collecting.
    (Made inside the test: mitmproxy's handlers ignore records from other pytest phases.)"""
    out = io.StringIO()
    term = TermLogHandler(out)
    term.setLevel(logging.INFO)
    errors = ErrorCheckHandler()
    root = logging.getLogger()
    root.addHandler(term)
    root.addHandler(errors)
    root.setLevel(logging.DEBUG)  # as mitmdump's main() does
    try:
        yield out, errors
    finally:
        configure_logging(json_output=False)
        root.removeHandler(term)
        root.removeHandler(errors)


def test_json_logging_under_mitmdump_makes_every_terminal_line_json():
    with mitmdump_handlers() as (out, _):
        configure_logging(json_output=True, level="info")
        logging.getLogger("cloudtaser").info("cloudtaser: token %s", VAULT_TOKEN)
        logging.getLogger("cloudtaser_s3.transit").warning("Vault slow")
        logging.getLogger("mitmproxy.proxy.server").info("client connect")
        log_request(PUT)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["logger"] for d in lines] == [
        "cloudtaser",
        "cloudtaser_s3.transit",
        "mitmproxy.proxy.server",
        "cloudtaser.request",
    ]
    assert lines[0]["message"] == "cloudtaser: token [redacted]"
    assert lines[3]["bytes_in"] == 1048576
    assert VAULT_TOKEN not in out.getvalue()


def test_start_up_errors_still_reach_mitmdumps_error_check():
    """Why configure_logging does not detach our loggers from root: mitmdump exits on an error
    logged during start-up only if its ErrorCheck handler sees it."""
    with mitmdump_handlers() as (_, errors):
        configure_logging(json_output=True)
        logging.getLogger("cloudtaser").error("cloudtaser: configuration error: VAULT_ADDR: x")
    assert [r.getMessage() for r in errors.has_errored] == [
        "cloudtaser: configuration error: VAULT_ADDR: x"
    ]


def test_text_logging_keeps_mitmproxys_format_but_scrubs():
    with mitmdump_handlers() as (out, _):
        configure_logging(json_output=True)
        configure_logging(json_output=False)  # switching back: mitmproxy's format, scrubbed
        logging.getLogger("cloudtaser").info("cloudtaser: X-Amz-Signature=%s", SIGNATURE)
        log_request(PUT)
    first, second = out.getvalue().splitlines()
    assert first.startswith("[") and first.endswith("cloudtaser: X-Amz-Signature=[redacted]")
    assert second.endswith(
        "PutObject bucket=b status=200 in=1048576 out=0 ms=12.3 vault=1 outcome=ok"
    )


def test_the_level_applies_to_our_loggers():
    with mitmdump_handlers() as (out, _):
        configure_logging(json_output=True, level=logging.WARNING)
        logging.getLogger("cloudtaser").info("hidden")
        logging.getLogger("cloudtaser").warning("shown")
    assert [json.loads(x)["message"] for x in out.getvalue().splitlines()] == ["shown"]


def test_without_mitmdump_json_goes_to_stderr_once(capsys):
    root_terms = [h for h in logging.getLogger().handlers if isinstance(h, TermLogHandler)]
    assert not root_terms  # pytest runs no mitmdump
    try:
        configure_logging(json_output=True)
        configure_logging(json_output=True)  # idempotent: still one handler
        logging.getLogger("cloudtaser").warning("cloudtaser: plain python %s", LEGACY_TOKEN)
    finally:
        configure_logging(json_output=False)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    data = json.loads(err[0])
    assert data["message"] == "cloudtaser: plain python [redacted]"
    assert not logging.getLogger("cloudtaser").handlers  # text mode removed it again
