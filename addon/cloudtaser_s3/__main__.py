"""``python -m cloudtaser_s3 <command>``: proxy, devstack, check-config."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from . import config

SCRIPT = Path(__file__).resolve().parent.parent / "cloudtaser.py"


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


def proxy(extra: list[str]) -> int:
    """Validate the settings, then become mitmdump with the addon (the production path)."""
    settings = check_config()
    if settings is None:
        return 2
    mitmdump = shutil.which("mitmdump", path=str(Path(sys.executable).parent)) or shutil.which(
        "mitmdump"
    )
    if mitmdump is None:
        print("cloudtaser: mitmdump is not installed next to this Python", file=sys.stderr)
        return 2
    os.execv(mitmdump, [mitmdump, *mitmdump_args(settings, extra)])
    return 0  # pragma: no cover


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "proxy"
    if command == "proxy":
        return proxy(argv[1:])
    if command == "devstack":
        from .devstack import main as devstack_main

        return devstack_main()
    if command == "check-config":
        return 0 if check_config() is not None else 2
    print(
        "usage: python -m cloudtaser_s3 [proxy [mitmdump args] | devstack | check-config]",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
