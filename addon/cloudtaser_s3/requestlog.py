"""One log line per finished request, JSON logging, and scrubbing secrets out of log text.

What a request line holds: operation, bucket, status, body bytes in and out, duration, Vault
calls, outcome, and optionally the S3 error code, the request id and the client's IP address.
What it never holds:

* **object keys** — they can be personal data ("invoices/jane-doe-2026.pdf"); bucket names
  are configuration and are logged;
* **secrets** — no DEK (plain or wrapped), no Vault token, no AWS signature, secret or session
  token; the record has no field that could carry one.

Free-text log messages are written by people and can slip; ``scrub`` is the net under them: it
replaces anything shaped like a Vault token, a Transit-wrapped key, a SigV4 signature or
session token, or a 256-bit key in base64, and every handler ``configure_logging`` touches runs
it, in both output forms (request lines excepted: they are built from fields that cannot hold
a secret). It is a net, not the guarantee: code must not log such values.

How this fits mitmdump's logging (mitmproxy 12, ``mitmproxy/log.py``, ``addons/termlog.py``):
mitmdump attaches its handlers to the *root* logger — ``TermLogHandler`` prints each record on
stdout (level from ``termlog_verbosity``), and ``ErrorCheckHandler`` collects ERROR records
during start-up so that mitmdump exits with status 1 after one. Our loggers (``cloudtaser``,
``cloudtaser.request``, and the package's ``cloudtaser_s3.*``) propagate to root.

We deliberately do *not* give our loggers a StreamHandler of their own with
``propagate=False`` under mitmdump: start-up errors ("configuration error: ...") would no
longer reach ErrorCheck, so a bad setting would stop printing the error and keep running;
mitmweb's event log and pytest's caplog would lose our lines too; and stdout would still carry
mitmproxy's own text lines, so the stream would be mixed anyway. Instead ``configure_logging``
swaps the *formatter* of mitmdump's terminal handler: JSON for every line on stdout (ours and
mitmproxy's, one format per stream, as log collectors want), or mitmproxy's own text format
behind the scrubber. Levels, verbosity and ErrorCheck keep working untouched. Only when no
terminal handler exists (mitmweb, or a plain Python process) and JSON is asked for does it add
a JSON StreamHandler on stderr to our loggers, still propagating.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import sys
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime

REQUEST_LOGGER = "cloudtaser.request"
LOGGER_FAMILIES = ("cloudtaser", "cloudtaser_s3")
REQUEST_ATTR = "cloudtaser_request"  # the LogRecord attribute log_request puts the record in
REDACTED = "[redacted]"
MAX_FIELD = 256  # a client-chosen value (bucket, operation) is clipped to this in a log line


@dataclass(frozen=True)
class RequestRecord:
    """One finished request. ``bytes_in``/``bytes_out`` are body bytes from and to the client
    (plaintext, as the client sees them); ``client`` is the client's IP address only."""

    operation: str
    bucket: str | None
    status: int | None
    bytes_in: int
    bytes_out: int
    duration_ms: float
    vault_calls: int
    outcome: str
    error_code: str | None = None
    request_id: str | None = None
    client: str | None = None


def client_ip(peername: object) -> str | None:
    """The IP address of mitmproxy's ``client_conn.peername`` (``(host, port[, ...])``)."""
    if isinstance(peername, tuple | list) and peername:
        return str(peername[0])
    if isinstance(peername, str):
        return peername
    return None


def level_of(outcome: str) -> int:
    """Requests the proxy or the store failed are warnings; everything else is info."""
    return logging.WARNING if outcome in ("server_error", "aborted") else logging.INFO


# ------------------------------------------------------------------ scrubbing

_SCRUBBERS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Transit-wrapped data keys: keep the key version, drop the ciphertext.
    (re.compile(r"vault:v(\d+):[A-Za-z0-9+/=]+"), r"vault:v\1:" + REDACTED),
    # Vault/OpenBao tokens: hvs./hvb./hvr. and the legacy s./b./r. forms.
    (re.compile(r"\b(?:hv[sbr]|[sbr])\.[A-Za-z0-9_-]{20,}"), REDACTED),
    # SigV4 signatures: Authorization's Signature=, X-Amz-Signature=, chunk-signature=.
    (
        re.compile(r"(?i)\b((?:x-amz-|chunk-)?signature)(\s*[=:]\s*)[0-9a-f]{16,}"),
        r"\1\2" + REDACTED,
    ),
    # Named credentials: session tokens, Vault token headers, secret keys, Transit plaintext.
    (
        re.compile(
            r"(?i)\b(x-amz-security-token|x-vault-token|vault_token|client_token|"
            r"aws_session_token|aws_secret_access_key|secret_?access_?key|plaintext)"
            r"(\"?'?\s*[=:]\s*\"?'?)[^\s\"'&,;]+"
        ),
        r"\1\2" + REDACTED,
    ),
    # A bare SigV4 signature (64 hex digits; payload hashes of plaintext go too).
    (re.compile(r"(?i)\b[0-9a-f]{64}\b"), REDACTED),
    # A 256-bit key in base64 (a DEK as Transit returns it).
    (re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])"), REDACTED),
)


MAX_MESSAGE = 16384  # longer log messages (mitmproxy quotes whole request heads) are clipped


def scrub(text: str) -> str:
    """``text`` with everything that looks like a token, wrapped key or signature redacted;
    clipped to MAX_MESSAGE characters. A little more than that is scrubbed first, so nothing
    cut at the edge escapes the patterns."""
    extra = len(text) - MAX_MESSAGE
    text = text[: MAX_MESSAGE + 1024]
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    if extra > 0:
        text = f"{text[:MAX_MESSAGE]}... [{extra} more characters]"
    return text


# ------------------------------------------------------------------ request lines

_BARE = re.compile(r"[A-Za-z0-9_.:/@+\-]+")


def _clip(value: str) -> str:
    return value if len(value) <= MAX_FIELD else value[:MAX_FIELD] + "..."


def _text_value(value: object) -> str:
    """``-`` for nothing, bare when safe, else JSON-quoted (spaces, quotes, newlines), so a
    client-chosen value can never forge a field or a second line."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    text = _clip(str(value))
    return text if _BARE.fullmatch(text) else json.dumps(text)


def record_fields(record: RequestRecord) -> dict[str, object]:
    """The record's fields in their stable order, with client-chosen values clipped."""
    return {
        "operation": _clip(record.operation),
        "bucket": _clip(record.bucket) if record.bucket is not None else None,
        "status": record.status,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "duration_ms": round(record.duration_ms, 3),
        "vault_calls": record.vault_calls,
        "outcome": record.outcome,
        "error_code": record.error_code,
        "request_id": record.request_id,
        "client": record.client,
    }


def _text(record: RequestRecord) -> str:
    parts = [
        _text_value(record.operation),
        f"bucket={_text_value(record.bucket)}",
        f"status={_text_value(record.status)}",
        f"in={record.bytes_in}",
        f"out={record.bytes_out}",
        f"ms={_text_value(float(record.duration_ms))}",
        f"vault={record.vault_calls}",
        f"outcome={_text_value(record.outcome)}",
    ]
    for name, value in (
        ("error", record.error_code),
        ("id", record.request_id),
        ("client", record.client),
    ):
        if value is not None:
            parts.append(f"{name}={_text_value(value)}")
    return " ".join(parts)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_line(fields: dict[str, object]) -> str:
    return json.dumps(fields, separators=(",", ":"), default=str)


def format_record(record: RequestRecord, json_output: bool, ts: float | None = None) -> str:
    """The request as one line: ``PutObject bucket=b status=200 in=1048576 out=0 ms=12.3
    vault=1 outcome=ok``, or a JSON object with ``ts`` (ISO-8601 UTC), ``level``, ``logger``,
    ``message`` (the text form) and every field of the record."""
    text = _text(record)
    if not json_output:
        return text
    when = datetime.now(UTC).timestamp() if ts is None else ts
    return _json_line(
        {
            "ts": _iso(when),
            "level": logging.getLevelName(level_of(record.outcome)).lower(),
            "logger": REQUEST_LOGGER,
            "message": text,
            **record_fields(record),
        }
    )


def log_request(record: RequestRecord, logger: logging.Logger | None = None) -> None:
    """Emit the request line through logging: text handlers print the text form, the JSON
    formatter prints the record's own fields (not the text wrapped in a JSON string)."""
    (logger or logging.getLogger(REQUEST_LOGGER)).log(
        level_of(record.outcome), "%s", _text(record), extra={REQUEST_ATTR: record}
    )


# ------------------------------------------------------------------ formatters


def _is_request_line(record: logging.LogRecord) -> bool:
    """A line from ``log_request``: built from a RequestRecord, whose fields cannot hold a
    secret, so it skips the scrubber (six regexes per line, on every request)."""
    request = getattr(record, REQUEST_ATTR, None)
    return record.exc_info is None and isinstance(request, RequestRecord)


class JsonFormatter(logging.Formatter):
    """Every record as one JSON object: ``ts``, ``level``, ``logger``, ``message`` (scrubbed),
    plus ``exception`` (scrubbed) and ``client`` (IP only) when present; a request record
    (from ``log_request``) adds its fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if _is_request_line(record):
            fields.update(record_fields(getattr(record, REQUEST_ATTR)))
        else:
            fields["message"] = scrub(record.getMessage())
            if (client := client_ip(getattr(record, "client", None))) is not None:
                fields["client"] = client  # mitmproxy's connection records carry (host, port)
        if record.exc_info:
            fields["exception"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            fields["stack"] = scrub(self.formatStack(record.stack_info))
        return _json_line(fields)


class ScrubbingFormatter(logging.Formatter):
    """Another formatter's output, from a scrubbed copy of the record (message, traceback and
    stack folded into the message); the shared record other handlers see is left alone."""

    def __init__(self, inner: logging.Formatter | None = None):
        super().__init__()
        self.inner = inner or logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if _is_request_line(record):
            return self.inner.format(record)
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{self.inner.formatException(record.exc_info)}"
        elif record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if record.stack_info:
            text = f"{text}\n{self.inner.formatStack(record.stack_info)}"
        clean = copy.copy(record)
        clean.msg, clean.args = scrub(text), None
        clean.exc_info = clean.exc_text = clean.stack_info = None
        return self.inner.format(clean)


# ------------------------------------------------------------------ wiring


class _DropStreamingNotes(logging.Filter):
    """mitmproxy notes "Streaming request to <host>." for every streamed body, which here is
    every object request: a second line per request that says less than the request line."""

    NOTES = ("Streaming request to ", "Streaming response from ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.NOTES))


_STREAMING_NOTES = _DropStreamingNotes()


class _OwnHandler(logging.StreamHandler):
    """The JSON handler configure_logging adds when mitmdump's terminal handler is absent."""


_original_formatters: weakref.WeakKeyDictionary[logging.Handler, logging.Formatter | None] = (
    weakref.WeakKeyDictionary()
)


def _terminal_handlers() -> list[logging.Handler]:
    """mitmdump's TermLogHandler(s) on the root logger; none outside mitmdump."""
    try:
        from mitmproxy.addons.termlog import TermLogHandler
    except ImportError:  # pragma: no cover (mitmproxy is a dependency)
        return []
    return [h for h in logging.getLogger().handlers if isinstance(h, TermLogHandler)]


def configure_logging(json_output: bool, level: int | str = logging.INFO) -> None:
    """Set our loggers' level and the output form: JSON lines or mitmproxy's text, scrubbed.

    Idempotent; call it again to switch forms. See the module docstring for why it reformats
    mitmdump's terminal handler instead of detaching our loggers from root.
    """
    if isinstance(level, str):
        level = level.upper()
    for name in LOGGER_FAMILIES:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for h in [h for h in logger.handlers if isinstance(h, _OwnHandler)]:
            logger.removeHandler(h)
            h.close()
    logging.getLogger("mitmproxy.proxy.server").addFilter(_STREAMING_NOTES)  # idempotent
    terminals = _terminal_handlers()
    for h in terminals:
        if h not in _original_formatters:
            _original_formatters[h] = h.formatter
        h.setFormatter(
            JsonFormatter() if json_output else ScrubbingFormatter(_original_formatters[h])
        )
    if json_output and not terminals:
        own = _OwnHandler(sys.stderr)
        own.setFormatter(JsonFormatter())
        for name in LOGGER_FAMILIES:
            logging.getLogger(name).addHandler(own)
