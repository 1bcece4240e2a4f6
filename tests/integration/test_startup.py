"""Starting the proxy: bad configuration stops it with one line naming the setting; mitmdump's
own flags are reconciled with the environment or refused — never a silent third value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import proxy_default_env

from cloudtaser_s3 import localservers as ls

SCRIPT = Path(__file__).resolve().parents[2] / "addon" / "cloudtaser.py"
MITMDUMP = str(Path(sys.executable).parent / "mitmdump")


def run(argv, env, tmp_path, timeout=30):
    child_env, _, _ = ls.proxy_env(env, tmp_path)
    return subprocess.run(
        argv, env=child_env, capture_output=True, text=True, timeout=timeout, check=False
    )


BASE = {
    "VAULT_ADDR": "http://127.0.0.1:9",
    "VAULT_AUTH_METHOD": "token",
    "VAULT_TOKEN": "t",
    "CLOUDTASER_S3PROXY_TRANSIT_KEY": "s3-dek-wrapper",
    "S3_ENDPOINT": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "a",
    "AWS_SECRET_ACCESS_KEY": "b",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"VAULT_ADDR": None}, "VAULT_ADDR: required, not set"),
        ({"CLOUDTASER_S3PROXY_TRANSIT_KEY": None}, "CLOUDTASER_S3PROXY_TRANSIT_KEY: required"),
        ({"VAULT_AUTH_METHOD": None}, "VAULT_AUTH_ROLE: required when VAULT_AUTH_METHOD"),
        ({"MAX_OBJECT_SIZE": "5GB"}, "MAX_OBJECT_SIZE: '5GB' is not a size"),
        ({"S3_ENDPOINT": "minio:9000"}, "S3_ENDPOINT: 'minio:9000' is not an http(s)"),
    ],
)
def test_bad_configuration_stops_the_start_with_one_line(tmp_path, change, message):
    done = run([sys.executable, "-m", "cloudtaser_s3", "proxy"], {**BASE, **change}, tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1


def test_mitmdump_by_hand_refuses_a_conflicting_mode(tmp_path):
    done = run([MITMDUMP, "-s", str(SCRIPT), "--mode", "reverse:http://other:9000"], BASE, tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "S3_ENDPOINT: is http://127.0.0.1:9 but mitmdump was started with" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    "option",
    [
        "stream_large_bodies=1m",
        "body_size_limit=10m",
        "ignore_hosts=.*",  # would pass connections through untouched: plaintext at the store
        "allow_hosts=nothing-matches",
        "tcp_hosts=.*",
        "ssl_insecure=true",  # would stop checking the store's certificate
        "map_remote=|.*|http://elsewhere",
        "modify_body=|.*|x",
        "modify_headers=|.*|x-amz-meta-cloudtaser-alg|none",
    ],
)
def test_options_that_would_bypass_the_encryption_are_refused(tmp_path, option):
    done = run([MITMDUMP, "-s", str(SCRIPT), "--set", option], BASE, tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"mitmproxy option {option.split('=')[0]}: must stay unset" in out


@pytest.mark.parametrize(
    "option",
    [
        "anticache=true",  # would strip If-None-Match and the other conditional headers
        "proxyauth=user:pass",  # would take the Authorization header SigV4 uses
        "upstream_auth=user:pass",  # would replace the proxy's signature towards the store
        "hardump=flows.har",  # would write request headers, credentials included, to disk
    ],
)
def test_mitmproxy_features_the_proxy_does_not_run_are_refused(tmp_path, option):
    """Their addons are taken out of mitmproxy's chain (mitmaddons.py): setting one would
    otherwise do nothing without saying so."""
    done = run([MITMDUMP, "-s", str(SCRIPT), "--set", option], BASE, tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"mitmproxy option {option.split('=')[0]}: must stay unset" in out
    assert "Traceback" not in out


def test_mitmdump_by_hand_takes_its_mode_when_s3_endpoint_is_unset(
    openbao, openbao_token, moto_s3, tmp_path
):
    env = {**proxy_default_env(moto_s3, openbao, openbao_token), "S3_ENDPOINT": None}
    listen = ls.free_port()
    child_env, _, health = ls.proxy_env(env, tmp_path)
    del child_env["CLOUDTASER_S3PROXY_LISTEN_ADDR"]  # the flags below say where to listen
    proc = ls.ServerProcess(
        "mitmdump",
        [
            MITMDUMP,
            "-s",
            str(SCRIPT),
            "--mode",
            f"reverse:{moto_s3.endpoint}",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(listen),
        ],
        log_path=tmp_path / "mitmdump.log",
        env=child_env,
    )
    try:
        ls.wait_for_http(f"{health}/readyz", 60, proc=proc)
        s3 = ls.s3_client(f"http://127.0.0.1:{listen}", moto_s3.access_key, moto_s3.secret_key)
        s3.create_bucket(Bucket="by-hand")
        s3.put_object(Bucket="by-hand", Key="k", Body=b"by hand")
        assert s3.get_object(Bucket="by-hand", Key="k")["Body"].read() == b"by hand"
        stored = moto_s3.client().get_object(Bucket="by-hand", Key="k")["Body"].read()
        assert stored.startswith(b"CTS1")
    finally:
        proc.stop()
