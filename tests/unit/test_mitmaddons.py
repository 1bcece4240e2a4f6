"""Which of mitmproxy's own addons the proxy takes out of the chain, and why that is safe:
each one's feature is switched on by an option the proxy refuses at start, or it only acts on
DNS flows, or it serves a page for a forward proxy's clients."""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import options
from mitmproxy.tools.dump import DumpMaster

from cloudtaser_s3 import mitmaddons
from cloudtaser_s3.addon import _FORBIDDEN_OPTIONS

# The option that switches each removed addon's feature on.
SWITCHED_ON_BY = {
    "AntiCache": "anticache",
    "AntiComp": "anticomp",
    "BlockList": "block_list",
    "ClientPlayback": "client_replay",
    "MapLocal": "map_local",
    "MapRemote": "map_remote",
    "ModifyBody": "modify_body",
    "ModifyHeaders": "modify_headers",
    "ProxyAuth": "proxyauth",
    "Save": "save_stream_file",
    "SaveHar": "hardump",
    "ServerPlayback": "server_replay",
    "StickyAuth": "stickyauth",
    "StickyCookie": "stickycookie",
    "UpstreamAuth": "upstream_auth",
}
NOTHING_TO_DO_IN_REVERSE_MODE = {"DnsResolver", "StripDnsHttpsRecords", "Onboarding"}
# Their commands stay with mitmproxy's command manager; the addons only cost chain passes.
COMMANDS_ONLY = {"Browser", "CommandHistory", "Comment", "Cut", "Export"}
# What the proxy needs from mitmproxy besides its own addon.
NEEDED = {
    "Block",
    "Core",
    "DisableH2C",
    "Dumper",
    "ErrorCheck",
    "NextLayer",
    "Proxyserver",
    "ScriptLoader",
    "TlsConfig",
    "UpdateAltSvc",
}


def chain_after_removal() -> tuple[list[str], list[str], list[str]]:
    async def run() -> tuple[list[str], list[str], list[str]]:
        master = DumpMaster(options.Options(), with_termlog=False)
        before = [type(a).__name__ for a in master.addons.chain]
        removed = await mitmaddons.remove_unused(master.addons)
        after = [type(a).__name__ for a in master.addons.chain]
        assert set(master.addons.lookup.values()) <= set(master.addons.chain)
        return before, removed, after

    return asyncio.run(run())


def test_every_removed_addon_is_switched_off_by_a_refused_option_or_has_nothing_to_do():
    assert set(SWITCHED_ON_BY) | NOTHING_TO_DO_IN_REVERSE_MODE | COMMANDS_ONLY == mitmaddons.UNUSED
    for addon, option in SWITCHED_ON_BY.items():
        assert option in _FORBIDDEN_OPTIONS, f"{addon} could be switched on with {option}"


def test_mitmdump_loses_exactly_those_and_keeps_what_the_proxy_needs():
    before, removed, after = chain_after_removal()
    # A mitmproxy release that renamed one of them would leave it running: this says so.
    assert set(before) >= mitmaddons.UNUSED
    assert set(removed) == mitmaddons.UNUSED
    assert not mitmaddons.UNUSED & set(after)
    assert set(after) >= NEEDED
    assert len(after) == len(before) - len(mitmaddons.UNUSED)


def test_removing_them_twice_is_harmless():
    async def run() -> list[str]:
        master = DumpMaster(options.Options(), with_termlog=False)
        await mitmaddons.remove_unused(master.addons)
        return await mitmaddons.remove_unused(master.addons)

    assert asyncio.run(run()) == []


def test_log_lines_stop_becoming_add_log_events_unless_an_addon_listens():
    async def run(listener: bool) -> tuple[bool, bool]:
        master = DumpMaster(options.Options(), with_termlog=False)
        if listener:

            class OldStyle:
                def add_log(self, entry):
                    pass

            master.addons.add(OldStyle())
        stopped = mitmaddons.stop_legacy_log_events(master)
        installed = master._legacy_log_events in logging.getLogger().handlers
        master._legacy_log_events.uninstall()
        return stopped, installed

    assert asyncio.run(run(listener=False)) == (True, False)
    assert asyncio.run(run(listener=True)) == (False, True)


def test_commands_of_removed_addons_still_work():
    async def run() -> object:
        master = DumpMaster(options.Options(), with_termlog=False)
        await mitmaddons.remove_unused(master.addons)
        return master.commands.call("export.formats")

    assert "curl" in asyncio.run(run())
