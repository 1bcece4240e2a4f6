"""``python -m cloudtaser_s3 <command>``: proxy, web, devstack, check-config, rewrap, migrate."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from . import config

SCRIPT = Path(__file__).resolve().parent / "entry" / "cloudtaser.py"
WEB_DEFAULTS = {"web_host": "127.0.0.1", "web_open_browser": "false"}


def check_config() -> config.Settings | None:
    """Validate the environment; print one line naming the setting on failure."""
    try:
        return config.from_env(os.environ)
    except config.ConfigError as e:
        print(f"cloudtaser: configuration error: {e}", file=sys.stderr)
        return None


def mitmdump_args(settings: config.Settings, extra: list[str]) -> list[str]:
    """mitmdump's arguments: our script, and the mode our variables give unless the caller
    passed mode or listen flags of their own (the addon reconciles those, or refuses them)."""
    quiet = [] if any("flow_detail" in a for a in extra) else ["--set", "flow_detail=0"]
    args = ["-s", str(SCRIPT), *quiet, *extra]
    own_flags = ("-m", "--mode", "-p", "--listen-port", "--listen-host", "--set=mode")
    if not any(a.split("=", 1)[0] in own_flags for a in extra):
        _, spec = config.reconcile(settings, config.MitmdumpFlags(("regular",), "", None))
        args += ["--mode", spec]
    return args


def web_args(extra: list[str]) -> list[str]:
    """mitmweb's UI on loopback and no browser, unless the caller said otherwise."""
    given = " ".join(extra)
    defaults = [f"{k}={v}" for k, v in WEB_DEFAULTS.items() if k not in given]
    return [a for d in defaults for a in ("--set", d)]


def proxy(extra: list[str], tool: str = "mitmdump") -> int:
    """Validate the settings, then become mitmdump (or mitmweb) with the addon: the
    production path, and the debugging one with the very same settings."""
    settings = check_config()
    if settings is None:
        return 2
    here = str(Path(sys.executable).parent)
    binary = shutil.which(tool, path=here) or shutil.which(tool)
    if binary is None:
        print(f"cloudtaser: {tool} is not installed next to this Python", file=sys.stderr)
        return 2
    args = mitmdump_args(settings, extra)
    if tool == "mitmweb":
        args = web_args(extra) + args
    os.execv(binary, [binary, *args])
    return 0  # pragma: no cover


def parser() -> argparse.ArgumentParser:
    """The commands. ``proxy`` hands everything after it to mitmdump, so it is dispatched
    before argparse sees it; it is listed here for --help."""
    from . import migrate, rewrap

    p = argparse.ArgumentParser(
        prog="python -m cloudtaser_s3",
        description="CloudTaser S3 encryption proxy and its operator commands. All of them "
        "take their settings from the environment, as the proxy does.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("proxy", help="run the proxy (default); further arguments go to mitmdump")
    sub.add_parser(
        "web",
        help="the same proxy under mitmweb (UI on 127.0.0.1:8081); further arguments go to mitmweb",
    )
    sub.add_parser("devstack", help="run the local demo stack (OpenBao, SeaweedFS, the proxy)")
    sub.add_parser("check-config", help="validate the environment and exit")
    rewrap.add_arguments(
        sub.add_parser(
            "rewrap",
            help="rewrap every object's data key with the Transit key's latest version "
            "(metadata only, server-side copy)",
            description="Rewrap the data key of every object under s3://BUCKET/PREFIX that "
            "is wrapped by an older Transit key version, with Transit rewrap (batched), and "
            "replace only its metadata by a server-side copy onto itself. No object data "
            "passes through this command. Reruns skip what is up to date.",
        )
    )
    migrate.add_arguments(
        sub.add_parser(
            "migrate",
            help="encrypt, in place, objects stored before the proxy (plaintext)",
            description="Encrypt in place every plaintext object under s3://BUCKET/PREFIX "
            "(read, seal as the proxy does, write back under the same key with its content "
            "headers, user metadata and tags). Reruns skip what is already encrypted.",
        )
    )
    return p


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "proxy"
    if command == "proxy":
        return proxy(argv[1:])
    if command == "web":
        return proxy(argv[1:], tool="mitmweb")
    args = parser().parse_args(argv)
    if args.command == "devstack":
        from .devstack import main as devstack_main

        return devstack_main()
    if args.command == "check-config":
        return 0 if check_config() is not None else 2
    if args.command == "rewrap":
        from .rewrap import main as rewrap_main

        return rewrap_main(args)
    if args.command == "migrate":
        from .migrate import main as migrate_main

        return migrate_main(args)
    parser().print_usage(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
