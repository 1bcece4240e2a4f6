"""mitmproxy's built-in addons that have nothing to do in this proxy, taken out of its chain.

mitmproxy hands every event to every addon in its chain: mitmdump has 36, and a request makes
about ten chain passes (requestheaders, request, responseheaders, response, each followed by an
"update" event, plus one per log line). Each pass over an addon costs a few microseconds even
when it has no hook for the event, so the chain alone cost about 0.8 ms of CPU per request,
more than SigV4 verification and re-signing together. The addons below implement features that
are off and refused here (their options are in ``addon._FORBIDDEN_OPTIONS``) or that only act
on DNS flows, which a reverse HTTP(S) proxy never has, or that only offer commands (export,
cut, comment, browser, command history): mitmproxy's command manager keeps every command it
collected, so those still work from mitmweb's UI. Without them a request's chain passes cost
about half.

The same goes for log lines: mitmproxy turns every log record into a deprecated ``add_log``
event for the whole chain (``log.LegacyLogEvents``, a wake-up of the event loop and one more
chain pass per line, and the proxy writes a line per request). No addon of mitmproxy 11 or 12
listens to it; the handler is uninstalled unless a loaded addon does.
"""

from __future__ import annotations

import inspect
from typing import Any

from mitmproxy.addonmanager import traverse

# Class names, as mitmproxy 11 and 12 spell them (mitmproxy/addons/__init__.py).
UNUSED = frozenset(
    {
        "AntiCache",  # anticache
        "AntiComp",  # anticomp
        "BlockList",  # block_list
        "Browser",  # commands only
        "ClientPlayback",  # client_replay
        "CommandHistory",  # commands only
        "Comment",  # commands only
        "Cut",  # commands only
        "DnsResolver",  # DNS flows only
        "Export",  # commands only
        "MapLocal",  # map_local
        "MapRemote",  # map_remote
        "ModifyBody",  # modify_body
        "ModifyHeaders",  # modify_headers
        "Onboarding",  # the mitm.it certificate page: for a forward proxy's clients
        "ProxyAuth",  # proxyauth
        "Save",  # save_stream_file
        "SaveHar",  # hardump
        "ServerPlayback",  # server_replay
        "StickyAuth",  # stickyauth
        "StickyCookie",  # stickycookie
        "StripDnsHttpsRecords",  # DNS flows only
        "UpstreamAuth",  # upstream_auth
    }
)


async def remove_unused(addons: Any) -> list[str]:
    """Take the unused addons out of mitmproxy's addon manager; the names removed.

    Like ``AddonManager.remove`` (chain and lookup), but awaits an async ``done`` hook, which
    ``remove`` refuses to call. The chain is replaced, not changed in place, so an event being
    dispatched right now finishes over the old one.
    """
    gone = [a for a in addons.chain if type(a).__name__ in UNUSED]
    if not gone:
        return []
    addons.chain = [a for a in addons.chain if a not in gone]
    for name, addon in list(addons.lookup.items()):
        if addon in gone:
            del addons.lookup[name]
    for addon in gone:
        done = getattr(addon, "done", None)
        if callable(done):
            result = done()
            if inspect.isawaitable(result):
                await result
    return sorted(type(a).__name__ for a in gone)


def stop_legacy_log_events(master: Any) -> bool:
    """Uninstall mitmproxy's ``add_log`` event source if no addon listens; whether it did."""
    handler = getattr(master, "_legacy_log_events", None)  # mitmproxy 11 and 12: Master
    if handler is None or any(hasattr(a, "add_log") for a in traverse(master.addons.chain)):
        return False
    handler.uninstall()
    return True
