"""Settings from the environment, as the product page's reference table defines them.

Every parser is a small pure function that raises ConfigError naming the variable, so a bad
value stops the start with one line a user can act on — never a traceback.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

DEFAULT_LISTEN = ":8099"
DEFAULT_HEALTH = ":8098"
DEFAULT_REGION = "eu-west-1"
DEFAULT_AUTH_METHOD = "kubernetes"
DEFAULT_AUTH_MOUNT = "auth/kubernetes"
DEFAULT_TRANSIT_MOUNT = "transit"
DEFAULT_MAX_OBJECT_SIZE = "5Gi"
DEFAULT_K8S_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"

AUTH_METHODS = ("kubernetes", "token")
UPSTREAM_IDENTITIES = ("client", "proxy")
PLAINTEXT_POLICIES = ("serve", "refuse")
MULTIPART_GET_LENGTHS = ("known", "always")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A setting is missing or malformed; str() is the one line shown to the user."""

    def __init__(self, variable: str, problem: str):
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class Address:
    host: str  # "" means every interface, as mitmproxy's listen_host
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class KeyRoute:
    """Objects in ``bucket`` whose key starts with ``prefix`` are wrapped with ``key``."""

    bucket: str
    prefix: str
    key: str


@dataclass(frozen=True)
class Settings:
    listen: Address
    health: Address
    s3_endpoint: str
    s3_region: str
    vault_addr: str
    vault_auth_method: str
    vault_auth_role: str | None
    vault_auth_mount_path: str
    transit_key: str
    transit_mount: str
    max_object_size: int
    vault_token: str | None = field(default=None, repr=False)
    vault_k8s_jwt_path: str = DEFAULT_K8S_JWT_PATH
    vault_cacert: str | None = None
    vault_namespace: str | None = None
    client_credentials_file: str | None = None
    upstream_identity: str = "client"
    verify_signatures: bool = True
    plaintext_objects: str = "serve"
    # Whole GET of a multipart object whose part layout is not cached: "known" streams it at
    # once without a Content-Length; "always" first asks the store for the layout (1-3 HEADs).
    multipart_get_length: str = "known"
    virtual_host_domains: tuple[str, ...] = ("localhost",)
    # Transit key per bucket or bucket/prefix (longest match wins); transit_key otherwise.
    transit_key_map: tuple[KeyRoute, ...] = ()
    vault_timeout: float = 5.0  # seconds, per attempt
    vault_retries: int = 2  # further attempts after a connection failure or a 5xx
    dek_cache_size: int = 1024  # unwrapped DEKs kept for reads; 0 turns the cache off
    dek_cache_ttl: float = 300.0  # seconds a cached DEK lives after it was unwrapped
    # Pre-wrapped DEKs ready for new objects (keycache.DataKeyPool); 0 (the default) = off.
    dek_pool_size: int = 32
    dek_pool_max_age: float = 30.0  # seconds a pooled DEK may wait (bounds rotation lag)
    log_format: str = "text"
    shutdown_grace: float = 25.0  # seconds in-flight requests get after SIGTERM
    # Seconds a connection may go without a byte moving either way (a stalled store, an idle
    # client) before it is dropped: mitmproxy's tcp_timeout (boto3's read timeout is also 60 s).
    upstream_timeout: float = 60.0
    tls_cert: str | None = None  # PEM chain the listener serves (with tls_key)
    tls_key: str | None = None
    upstream_ca_bundle: str | None = None  # PEM CAs that verify the S3 endpoint's certificate
    # Which of the two were set explicitly: mitmdump's own flags may fill in the others.
    listen_explicit: bool = False
    endpoint_explicit: bool = False


def parse_address(variable: str, value: str) -> Address:
    """ ":8099", "127.0.0.1:8099", "[::1]:8099" or "localhost:8099"."""
    v = value.strip()
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^:\[\]]*):([0-9]{1,5})", v)
    if not m:
        raise ConfigError(variable, f"{value!r} is not host:port (for example ':8099')")
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ConfigError(variable, f"port {port} is out of range 1-65535")
    if host in ("0.0.0.0", "*"):
        host = ""
    return Address(host, port)


def parse_endpoint(variable: str, value: str) -> str:
    """An http(s) URL with a host and no path, query or credentials; no trailing slash."""
    v = value.strip().rstrip("/")
    try:
        parts = urlsplit(v)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        raise ConfigError(variable, f"{value!r} is not an http(s)://host[:port] URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(variable, f"{value!r} is not an http(s)://host[:port] URL")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(variable, f"{value!r} must be scheme://host[:port] only")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ConfigError(variable, f"{value!r} has an invalid port") from None
    return v


def aws_endpoint(region: str) -> str:
    return f"https://s3.{region}.amazonaws.com"


_SIZE_UNITS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "k": 10**3,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_size(variable: str, value: str) -> int:
    """Bytes from "5Gi", "500M", "1048576" (Kubernetes quantity suffixes)."""
    m = re.fullmatch(r"\s*([0-9]{1,20})\s*([KMGT]i?|k)?\s*", value)
    if not m:
        raise ConfigError(
            variable, f"{value!r} is not a size (bytes, or a number with Ki/Mi/Gi/Ti or K/M/G/T)"
        )
    size = int(m.group(1)) * _SIZE_UNITS[m.group(2) or ""]
    if size <= 0:
        raise ConfigError(variable, "must be greater than zero")
    return size


def parse_choice(variable: str, value: str, choices: tuple[str, ...]) -> str:
    v = value.strip().lower()
    if v not in choices:
        raise ConfigError(variable, f"{value!r} is not one of {', '.join(choices)}")
    return v


def parse_bool(variable: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(variable, f"{value!r} is not true or false")


def parse_region(variable: str, value: str) -> str:
    v = value.strip()
    if not re.fullmatch(r"[a-z0-9-]{2,32}", v):
        raise ConfigError(variable, f"{value!r} is not a region name (for example eu-west-1)")
    return v


def parse_name(variable: str, value: str) -> str:
    """A Vault path segment: key names, mounts, roles."""
    v = value.strip().strip("/")
    if not v or not re.fullmatch(r"[A-Za-z0-9_.\-/]+", v) or ".." in v:
        raise ConfigError(variable, f"{value!r} is not a valid name")
    return v


def parse_auth_mount(value: str) -> str:
    """The auth mount as Vault's login path needs it: ``auth/kubernetes`` (the product page's
    spelling) and ``kubernetes`` both mean the mount ``kubernetes``."""
    name = parse_name("VAULT_AUTH_MOUNT_PATH", value)
    bare = name.removeprefix("auth/")
    if not bare or bare == "auth":
        raise ConfigError("VAULT_AUTH_MOUNT_PATH", f"{value!r} names no auth mount")
    return bare


def parse_domains(variable: str, value: str) -> tuple[str, ...]:
    """Comma-separated DNS names under which ``<bucket>.<name>`` addresses a bucket."""
    names = tuple(d.strip().lower().strip(".") for d in value.split(",") if d.strip())
    for d in names:
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", d):
            raise ConfigError(variable, f"{d!r} is not a DNS name")
    return names


def parse_duration(variable: str, value: str, allow_zero: bool = False) -> float:
    """Seconds from "30", "30s", "500ms", "5m", "1h"."""
    m = re.fullmatch(r"\s*([0-9]{1,9}(?:\.[0-9]{1,9})?)\s*(ms|s|m|h)?\s*", value)
    if not m:
        raise ConfigError(variable, f"{value!r} is not a duration (for example 30s, 500ms, 5m)")
    seconds = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigError(variable, "must be greater than zero")
    return seconds


def parse_count(variable: str, value: str, maximum: int) -> int:
    """A whole number from 0 to ``maximum``."""
    v = value.strip()
    if not re.fullmatch(r"[0-9]{1,12}", v) or int(v) > maximum:
        raise ConfigError(variable, f"{value!r} is not a whole number from 0 to {maximum}")
    return int(v)


def parse_key_map(variable: str, value: str) -> tuple[KeyRoute, ...]:
    """``bucket=key,bucket/prefix=key`` -> routes, longest (most specific) first."""
    routes = []
    for item in (i.strip() for i in value.split(",")):
        if not item:
            continue
        where, sep, key = item.partition("=")
        bucket, _, prefix = where.strip().partition("/")
        if not sep or not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,62}", bucket):
            raise ConfigError(variable, f"{item!r} is not bucket=key or bucket/prefix=key")
        routes.append(KeyRoute(bucket, prefix, parse_name(variable, key)))
    seen = [(r.bucket, r.prefix) for r in routes]
    if len(set(seen)) != len(seen):
        raise ConfigError(variable, "names the same bucket/prefix twice")
    return tuple(sorted(routes, key=lambda r: (r.bucket, -len(r.prefix))))


def transit_key_for(settings: Settings, bucket: str, key: str) -> str:
    """The Transit key that wraps new objects at bucket/key."""
    for route in settings.transit_key_map:
        if route.bucket == bucket and key.startswith(route.prefix):
            return route.key
    return settings.transit_key


def _loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return Address(host, 0).is_loopback


def cleartext_warnings(settings: Settings) -> list[str]:
    """Hops that would carry secrets in clear beyond this machine: allowed (inside a cluster
    network some choose to), but said at every start."""
    out = []
    if not settings.tls_cert and not settings.listen.is_loopback:
        out.append(
            f"CLOUDTASER_S3PROXY_LISTEN_ADDR {settings.listen} serves plain HTTP: object data "
            "and request signatures cross the network in clear (set CLOUDTASER_S3PROXY_TLS_CERT)"
        )
    if settings.vault_addr.startswith("http://") and not _loopback_url(settings.vault_addr):
        out.append(
            "VAULT_ADDR is plain http: the Vault token and every data key cross the network "
            "in clear"
        )
    if settings.s3_endpoint.startswith("http://") and not _loopback_url(settings.s3_endpoint):
        out.append("S3_ENDPOINT is plain http: request signatures and metadata cross in clear")
    return out


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value is not None and value.strip() != "" else None


def _required(env: Mapping[str, str], name: str, why: str = "") -> str:
    value = _get(env, name)
    if value is None:
        raise ConfigError(name, f"required{why}, not set")
    return value


def from_env(env: Mapping[str, str]) -> Settings:
    """Settings from environment variables; raises ConfigError for the first problem found."""
    region = parse_region("S3_REGION", _get(env, "S3_REGION") or DEFAULT_REGION)
    listen_raw = _get(env, "CLOUDTASER_S3PROXY_LISTEN_ADDR")
    endpoint_raw = _get(env, "S3_ENDPOINT")
    vault_addr = parse_endpoint("VAULT_ADDR", _required(env, "VAULT_ADDR"))
    method = parse_choice(
        "VAULT_AUTH_METHOD", _get(env, "VAULT_AUTH_METHOD") or DEFAULT_AUTH_METHOD, AUTH_METHODS
    )
    role = _get(env, "VAULT_AUTH_ROLE")
    token = _get(env, "VAULT_TOKEN")
    if method == "kubernetes":
        why = " when VAULT_AUTH_METHOD=kubernetes"
        role = parse_name("VAULT_AUTH_ROLE", _required(env, "VAULT_AUTH_ROLE", why))
    elif token is None:
        raise ConfigError("VAULT_TOKEN", "required when VAULT_AUTH_METHOD=token, not set")
    verify = parse_bool(
        "CLOUDTASER_S3PROXY_VERIFY_SIGNATURES",
        _get(env, "CLOUDTASER_S3PROXY_VERIFY_SIGNATURES") or "true",
    )
    identity_raw = _get(env, "CLOUDTASER_S3PROXY_UPSTREAM_IDENTITY")
    identity = parse_choice(
        "CLOUDTASER_S3PROXY_UPSTREAM_IDENTITY",
        identity_raw or ("client" if verify else "proxy"),
        UPSTREAM_IDENTITIES,
    )
    listen = parse_address("CLOUDTASER_S3PROXY_LISTEN_ADDR", listen_raw or DEFAULT_LISTEN)
    tls_cert = _get(env, "CLOUDTASER_S3PROXY_TLS_CERT")
    tls_key = _get(env, "CLOUDTASER_S3PROXY_TLS_KEY")
    if (tls_cert is None) != (tls_key is None):
        missing = "CLOUDTASER_S3PROXY_TLS_KEY" if tls_key is None else "CLOUDTASER_S3PROXY_TLS_CERT"
        raise ConfigError(missing, "required with the other TLS setting, not set")
    if not verify:
        if not listen.is_loopback:
            raise ConfigError(
                "CLOUDTASER_S3PROXY_VERIFY_SIGNATURES",
                "may be false only when CLOUDTASER_S3PROXY_LISTEN_ADDR is a loopback address "
                f"(a sidecar reachable only from its pod), not {listen}",
            )
        if identity == "client":
            raise ConfigError(
                "CLOUDTASER_S3PROXY_UPSTREAM_IDENTITY",
                "'client' needs the client's secret, so it needs signature verification "
                "(CLOUDTASER_S3PROXY_VERIFY_SIGNATURES=true)",
            )
    return Settings(
        listen=listen,
        health=parse_address(
            "CLOUDTASER_S3PROXY_HEALTH_ADDR",
            _get(env, "CLOUDTASER_S3PROXY_HEALTH_ADDR") or DEFAULT_HEALTH,
        ),
        s3_endpoint=parse_endpoint("S3_ENDPOINT", endpoint_raw)
        if endpoint_raw
        else aws_endpoint(region),
        s3_region=region,
        vault_addr=vault_addr,
        vault_auth_method=method,
        vault_auth_role=role,
        vault_auth_mount_path=parse_auth_mount(
            _get(env, "VAULT_AUTH_MOUNT_PATH") or DEFAULT_AUTH_MOUNT
        ),
        transit_key=parse_name(
            "CLOUDTASER_S3PROXY_TRANSIT_KEY", _required(env, "CLOUDTASER_S3PROXY_TRANSIT_KEY")
        ),
        transit_mount=parse_name(
            "TRANSIT_MOUNT", _get(env, "TRANSIT_MOUNT") or DEFAULT_TRANSIT_MOUNT
        ),
        max_object_size=parse_size(
            "MAX_OBJECT_SIZE", _get(env, "MAX_OBJECT_SIZE") or DEFAULT_MAX_OBJECT_SIZE
        ),
        vault_token=token,
        vault_k8s_jwt_path=_get(env, "VAULT_K8S_JWT_PATH") or DEFAULT_K8S_JWT_PATH,
        vault_cacert=_get(env, "VAULT_CACERT"),
        vault_namespace=_get(env, "VAULT_NAMESPACE"),
        client_credentials_file=_get(env, "CLOUDTASER_S3PROXY_CLIENT_CREDENTIALS_FILE"),
        upstream_identity=identity,
        verify_signatures=verify,
        plaintext_objects=parse_choice(
            "CLOUDTASER_S3PROXY_PLAINTEXT_OBJECTS",
            _get(env, "CLOUDTASER_S3PROXY_PLAINTEXT_OBJECTS") or "serve",
            PLAINTEXT_POLICIES,
        ),
        multipart_get_length=parse_choice(
            "CLOUDTASER_S3PROXY_MULTIPART_GET_LENGTH",
            _get(env, "CLOUDTASER_S3PROXY_MULTIPART_GET_LENGTH") or "known",
            MULTIPART_GET_LENGTHS,
        ),
        virtual_host_domains=parse_domains(
            "CLOUDTASER_S3PROXY_VIRTUAL_HOST_DOMAINS",
            env.get("CLOUDTASER_S3PROXY_VIRTUAL_HOST_DOMAINS", "localhost"),
        ),
        transit_key_map=parse_key_map(
            "CLOUDTASER_S3PROXY_TRANSIT_KEYS", _get(env, "CLOUDTASER_S3PROXY_TRANSIT_KEYS") or ""
        ),
        upstream_timeout=parse_duration(
            "CLOUDTASER_S3PROXY_UPSTREAM_TIMEOUT",
            _get(env, "CLOUDTASER_S3PROXY_UPSTREAM_TIMEOUT") or "60s",
        ),
        vault_timeout=parse_duration(
            "CLOUDTASER_S3PROXY_VAULT_TIMEOUT",
            _get(env, "CLOUDTASER_S3PROXY_VAULT_TIMEOUT") or "5s",
        ),
        vault_retries=parse_count(
            "CLOUDTASER_S3PROXY_VAULT_RETRIES",
            _get(env, "CLOUDTASER_S3PROXY_VAULT_RETRIES") or "2",
            10,
        ),
        dek_cache_size=parse_count(
            "CLOUDTASER_S3PROXY_DEK_CACHE_SIZE",
            _get(env, "CLOUDTASER_S3PROXY_DEK_CACHE_SIZE") or "1024",
            1_000_000,
        ),
        dek_cache_ttl=parse_duration(
            "CLOUDTASER_S3PROXY_DEK_CACHE_TTL",
            _get(env, "CLOUDTASER_S3PROXY_DEK_CACHE_TTL") or "5m",
            allow_zero=True,
        ),
        dek_pool_size=parse_count(
            "CLOUDTASER_S3PROXY_DEK_POOL_SIZE",
            _get(env, "CLOUDTASER_S3PROXY_DEK_POOL_SIZE") or "32",
            1000,
        ),
        dek_pool_max_age=parse_duration(
            "CLOUDTASER_S3PROXY_DEK_POOL_MAX_AGE",
            _get(env, "CLOUDTASER_S3PROXY_DEK_POOL_MAX_AGE") or "30s",
        ),
        log_format=parse_choice(
            "CLOUDTASER_S3PROXY_LOG_FORMAT",
            _get(env, "CLOUDTASER_S3PROXY_LOG_FORMAT") or "text",
            LOG_FORMATS,
        ),
        tls_cert=tls_cert,
        tls_key=tls_key,
        upstream_ca_bundle=_get(env, "CLOUDTASER_S3PROXY_UPSTREAM_CA_BUNDLE"),
        shutdown_grace=parse_duration(
            "CLOUDTASER_S3PROXY_SHUTDOWN_GRACE",
            _get(env, "CLOUDTASER_S3PROXY_SHUTDOWN_GRACE") or "25s",
            allow_zero=True,
        ),
        listen_explicit=listen_raw is not None,
        endpoint_explicit=endpoint_raw is not None,
    )


@dataclass(frozen=True)
class MitmdumpFlags:
    """The mitmproxy options that overlap with our variables, as mitmdump was started."""

    modes: tuple[str, ...]
    listen_host: str
    listen_port: int | None


def _mode_spec(endpoint: str, listen: Address) -> str:
    return f"reverse:{endpoint}@{listen}" if listen.host else f"reverse:{endpoint}@{listen.port}"


def reconcile(settings: Settings, flags: MitmdumpFlags) -> tuple[Settings, str]:
    """Merge mitmdump's --mode/--listen-* flags with our variables, or refuse a conflict.

    A value given in only one place is used; the same value in both is fine; two different
    values stop the start, so the proxy never silently listens or forwards somewhere else.
    Returns the settings in force and the one mitmproxy mode spec that expresses them.
    """
    from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode

    endpoint, listen = settings.s3_endpoint, settings.listen
    given = [m for m in flags.modes if m != "regular"]
    if len(flags.modes) > 1 or len(given) > 1:
        raise ConfigError("--mode", "the proxy runs in exactly one mode: reverse:<S3 endpoint>")
    flag_host = flags.listen_host or None
    flag_port = flags.listen_port
    if given:
        try:
            mode = ProxyMode.parse(given[0])
        except ValueError as e:
            raise ConfigError("--mode", str(e)) from None
        if not isinstance(mode, ReverseMode):
            raise ConfigError("--mode", f"{given[0]!r}: the proxy runs only as reverse:<endpoint>")
        mode_endpoint = parse_endpoint("--mode", mode.data)
        if settings.endpoint_explicit and mode_endpoint != endpoint:
            raise ConfigError(
                "S3_ENDPOINT",
                f"is {endpoint} but mitmdump was started with --mode reverse:{mode_endpoint}; "
                "set one of them, or make them equal",
            )
        endpoint = mode_endpoint
        if mode.custom_listen_host is not None:
            flag_host = mode.custom_listen_host
        if mode.custom_listen_port is not None:
            flag_port = mode.custom_listen_port
    if flag_port is not None or flag_host is not None:
        wanted = Address(
            "" if flag_host in (None, "0.0.0.0") else flag_host,  # type: ignore[arg-type]
            flag_port if flag_port is not None else listen.port,
        )
        if settings.listen_explicit and (
            wanted.port != listen.port or (flag_host is not None and wanted.host != listen.host)
        ):
            raise ConfigError(
                "CLOUDTASER_S3PROXY_LISTEN_ADDR",
                f"is {listen} but mitmdump was started to listen on {wanted}; "
                "set one of them, or make them equal",
            )
        if not settings.listen_explicit:
            listen = wanted
    if not settings.verify_signatures and not listen.is_loopback:
        raise ConfigError(
            "CLOUDTASER_S3PROXY_VERIFY_SIGNATURES",
            f"may be false only on a loopback listen address, and mitmdump listens on {listen}",
        )
    merged = replace(settings, s3_endpoint=endpoint, listen=listen)
    return merged, _mode_spec(endpoint, listen)
