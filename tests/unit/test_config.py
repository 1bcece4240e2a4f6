"""The product page's environment variables: defaults, required ones, and one-line errors."""

import pytest

from cloudtaser_s3 import config
from cloudtaser_s3.config import Address, ConfigError, MitmdumpFlags, from_env, reconcile

MINIMAL_TOKEN = {
    "VAULT_ADDR": "https://vault.example.com:8200",
    "VAULT_AUTH_METHOD": "token",
    "VAULT_TOKEN": "s.secret",
    "CLOUDTASER_S3PROXY_TRANSIT_KEY": "s3-dek-wrapper",
}
MINIMAL_K8S = {
    "VAULT_ADDR": "https://vault.example.com:8200",
    "VAULT_AUTH_ROLE": "s3-proxy",
    "CLOUDTASER_S3PROXY_TRANSIT_KEY": "s3-dek-wrapper",
}


def test_defaults_are_the_product_pages():
    s = from_env(MINIMAL_K8S)
    assert s.listen == Address("", 8099)
    assert s.health == Address("", 8098)
    assert s.s3_region == "eu-west-1"
    assert s.s3_endpoint == "https://s3.eu-west-1.amazonaws.com"
    assert s.vault_auth_method == "kubernetes"
    assert s.vault_auth_mount_path == "kubernetes"  # the page's "auth/kubernetes"
    assert s.transit_mount == "transit"
    assert s.max_object_size == 5 * 2**30
    assert s.verify_signatures is True
    assert s.plaintext_objects == "serve"


def test_the_default_endpoint_follows_the_region():
    s = from_env({**MINIMAL_K8S, "S3_REGION": "eu-central-1"})
    assert s.s3_endpoint == "https://s3.eu-central-1.amazonaws.com"


@pytest.mark.parametrize(
    "missing",
    ["VAULT_ADDR", "CLOUDTASER_S3PROXY_TRANSIT_KEY", "VAULT_AUTH_ROLE"],
)
def test_required_variables_are_enforced_by_name(missing):
    env = {k: v for k, v in MINIMAL_K8S.items() if k != missing}
    with pytest.raises(ConfigError) as e:
        from_env(env)
    assert str(e.value).startswith(f"{missing}: required")


def test_role_is_not_required_for_token_auth_but_the_token_is():
    assert from_env(MINIMAL_TOKEN).vault_auth_role is None
    env = {k: v for k, v in MINIMAL_TOKEN.items() if k != "VAULT_TOKEN"}
    with pytest.raises(ConfigError, match="^VAULT_TOKEN: required"):
        from_env(env)


def test_the_vault_token_never_shows_in_a_repr():
    assert "s.secret" not in repr(from_env(MINIMAL_TOKEN))


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("5Gi", 5 * 2**30),
        ("512Mi", 512 * 2**20),
        ("1Ti", 2**40),
        ("64Ki", 65536),
        ("5G", 5 * 10**9),
        ("100M", 10**8),
        ("2T", 2 * 10**12),
        ("10K", 10_000),
        ("10k", 10_000),
        ("1048576", 1048576),
    ],
)
def test_max_object_size_units(value, size):
    assert from_env({**MINIMAL_K8S, "MAX_OBJECT_SIZE": value}).max_object_size == size


@pytest.mark.parametrize("value", ["5GB", "-1", "0", "1.5Gi", "lots", "5 Gi B"])
def test_a_malformed_size_names_the_variable(value):
    with pytest.raises(ConfigError, match="^MAX_OBJECT_SIZE: "):
        from_env({**MINIMAL_K8S, "MAX_OBJECT_SIZE": value})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CLOUDTASER_S3PROXY_LISTEN_ADDR", "8099"),
        ("CLOUDTASER_S3PROXY_LISTEN_ADDR", "host:99999"),
        ("CLOUDTASER_S3PROXY_HEALTH_ADDR", "nonsense"),
        ("S3_ENDPOINT", "s3.amazonaws.com"),
        ("S3_ENDPOINT", "ftp://s3.example.com"),
        ("S3_ENDPOINT", "https://s3.example.com/bucket"),
        ("VAULT_ADDR", "vault:8200"),
        ("VAULT_AUTH_METHOD", "ldap"),
        ("S3_REGION", "EU WEST"),
        ("CLOUDTASER_S3PROXY_VERIFY_SIGNATURES", "maybe"),
        ("CLOUDTASER_S3PROXY_PLAINTEXT_OBJECTS", "sometimes"),
        ("CLOUDTASER_S3PROXY_MULTIPART_GET_LENGTH", "sometimes"),
        ("CLOUDTASER_S3PROXY_VAULT_TIMEOUT", "soon"),
        ("CLOUDTASER_S3PROXY_VAULT_TIMEOUT", "0s"),
        ("CLOUDTASER_S3PROXY_VAULT_RETRIES", "-1"),
        ("CLOUDTASER_S3PROXY_VAULT_RETRIES", "99"),
        ("CLOUDTASER_S3PROXY_DEK_CACHE_SIZE", "lots"),
        ("CLOUDTASER_S3PROXY_DEK_CACHE_TTL", "forever"),
        ("CLOUDTASER_S3PROXY_DEK_POOL_SIZE", "1.5"),
        ("CLOUDTASER_S3PROXY_DEK_POOL_MAX_AGE", "0"),
        ("CLOUDTASER_S3PROXY_TRANSIT_KEYS", "bucket-only"),
        ("CLOUDTASER_S3PROXY_TRANSIT_KEYS", "Bad_Bucket=key"),
        ("CLOUDTASER_S3PROXY_TRANSIT_KEYS", "b1=k1,b1=k2"),
        ("CLOUDTASER_S3PROXY_LOG_FORMAT", "xml"),
        ("CLOUDTASER_S3PROXY_SHUTDOWN_GRACE", "a while"),
    ],
)
def test_malformed_values_stop_with_one_line_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as e:
        from_env({**MINIMAL_K8S, variable: value})
    assert str(e.value).startswith(f"{variable}: ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        (":8099", Address("", 8099)),
        ("0.0.0.0:8099", Address("", 8099)),
        ("127.0.0.1:9000", Address("127.0.0.1", 9000)),
        ("[::1]:9000", Address("::1", 9000)),
        ("localhost:9000", Address("localhost", 9000)),
    ],
)
def test_listen_addresses(value, address):
    assert config.parse_address("X", value) == address


def test_turning_verification_off_needs_a_loopback_listener():
    env = {**MINIMAL_K8S, "CLOUDTASER_S3PROXY_VERIFY_SIGNATURES": "false"}
    with pytest.raises(ConfigError, match="^CLOUDTASER_S3PROXY_VERIFY_SIGNATURES: .*loopback"):
        from_env(env)
    s = from_env({**env, "CLOUDTASER_S3PROXY_LISTEN_ADDR": "127.0.0.1:8099"})
    assert s.verify_signatures is False
    assert s.upstream_identity == "proxy"


def test_client_identity_needs_verification():
    env = {
        **MINIMAL_K8S,
        "CLOUDTASER_S3PROXY_VERIFY_SIGNATURES": "false",
        "CLOUDTASER_S3PROXY_LISTEN_ADDR": "127.0.0.1:8099",
        "CLOUDTASER_S3PROXY_UPSTREAM_IDENTITY": "client",
    }
    with pytest.raises(ConfigError, match="^CLOUDTASER_S3PROXY_UPSTREAM_IDENTITY: "):
        from_env(env)


# ---- mitmdump's own flags against our variables


def flags(*modes, host="", port=None):
    return MitmdumpFlags(tuple(modes) or ("regular",), host, port)


def test_without_flags_the_variables_decide_the_mode():
    s = from_env({**MINIMAL_K8S, "S3_ENDPOINT": "http://127.0.0.1:9000"})
    merged, spec = reconcile(s, flags())
    assert spec == "reverse:http://127.0.0.1:9000@8099"
    assert merged.listen == Address("", 8099)


def test_a_reverse_flag_fills_in_an_unset_endpoint():
    s = from_env(MINIMAL_K8S)
    merged, spec = reconcile(s, flags("reverse:http://minio:9000"))
    assert merged.s3_endpoint == "http://minio:9000"
    assert spec == "reverse:http://minio:9000@8099"


def test_the_same_endpoint_in_both_places_is_fine():
    s = from_env({**MINIMAL_K8S, "S3_ENDPOINT": "http://minio:9000/"})
    merged, _ = reconcile(s, flags("reverse:http://minio:9000"))
    assert merged.s3_endpoint == "http://minio:9000"


def test_two_different_endpoints_stop_the_start():
    s = from_env({**MINIMAL_K8S, "S3_ENDPOINT": "http://minio:9000"})
    with pytest.raises(ConfigError, match="^S3_ENDPOINT: .*--mode reverse:http://other:9000"):
        reconcile(s, flags("reverse:http://other:9000"))


def test_listen_flags_fill_in_an_unset_listen_address():
    s = from_env(MINIMAL_K8S)
    merged, spec = reconcile(s, flags(host="127.0.0.1", port=9100))
    assert merged.listen == Address("127.0.0.1", 9100)
    assert spec.endswith("@127.0.0.1:9100")


def test_a_listen_port_in_the_mode_spec_counts_as_a_flag():
    s = from_env({**MINIMAL_K8S, "CLOUDTASER_S3PROXY_LISTEN_ADDR": ":8099"})
    with pytest.raises(ConfigError, match="^CLOUDTASER_S3PROXY_LISTEN_ADDR: "):
        reconcile(s, flags("reverse:http://minio:9000@9999"))


def test_conflicting_listen_port_stops_the_start():
    s = from_env({**MINIMAL_K8S, "CLOUDTASER_S3PROXY_LISTEN_ADDR": ":8099"})
    with pytest.raises(ConfigError, match="^CLOUDTASER_S3PROXY_LISTEN_ADDR: "):
        reconcile(s, flags(port=9000))
    merged, _ = reconcile(s, flags(port=8099))
    assert merged.listen.port == 8099


@pytest.mark.parametrize("mode", ["regular", "transparent", "socks5"])
def test_other_proxy_modes_are_refused(mode):
    s = from_env(MINIMAL_K8S)
    if mode == "regular":
        with pytest.raises(ConfigError, match="^--mode: "):
            reconcile(s, flags("regular", "reverse:http://a:1"))
    else:
        with pytest.raises(ConfigError, match="^--mode: "):
            reconcile(s, flags(mode))


def test_reconcile_is_idempotent():
    s = from_env({**MINIMAL_K8S, "S3_ENDPOINT": "http://127.0.0.1:9000"})
    merged, spec = reconcile(s, flags())
    again, spec2 = reconcile(s, flags(spec))
    assert (again, spec2) == (merged, spec)


@pytest.mark.parametrize(
    ("value", "mount"),
    [("auth/kubernetes", "kubernetes"), ("kubernetes", "kubernetes"), ("auth/k8s/eu", "k8s/eu")],
)
def test_auth_mount_with_or_without_the_auth_prefix(value, mount):
    assert from_env({**MINIMAL_K8S, "VAULT_AUTH_MOUNT_PATH": value}).vault_auth_mount_path == mount


def test_transit_keys_route_by_the_longest_prefix():
    s = from_env(
        {
            **MINIMAL_K8S,
            "CLOUDTASER_S3PROXY_TRANSIT_KEYS": "tenant-a=key-a, tenant-a/secret/=key-s,b2=key-b",
        }
    )
    assert config.transit_key_for(s, "tenant-a", "secret/x") == "key-s"
    assert config.transit_key_for(s, "tenant-a", "public/x") == "key-a"
    assert config.transit_key_for(s, "b2", "x") == "key-b"
    assert config.transit_key_for(s, "other", "x") == s.transit_key


@pytest.mark.parametrize(
    ("text", "seconds"), [("30", 30), ("30s", 30), ("500ms", 0.5), ("5m", 300), ("1h", 3600)]
)
def test_durations(text, seconds):
    assert config.parse_duration("X", text) == seconds


def test_cleartext_hops_beyond_this_machine_are_warned_about():
    local = from_env(
        {
            **MINIMAL_K8S,
            "VAULT_ADDR": "http://127.0.0.1:8200",
            "CLOUDTASER_S3PROXY_LISTEN_ADDR": "127.0.0.1:8099",
            "S3_ENDPOINT": "http://localhost:9000",
        }
    )
    assert config.cleartext_warnings(local) == []
    remote = from_env(
        {
            **MINIMAL_K8S,
            "VAULT_ADDR": "http://vault.example:8200",
            "S3_ENDPOINT": "http://minio.example:9000",
        }
    )
    warned = " ".join(config.cleartext_warnings(remote))
    assert "CLOUDTASER_S3PROXY_LISTEN_ADDR" in warned
    assert "VAULT_ADDR" in warned and "S3_ENDPOINT" in warned
