"""The gateway's disk against the real `edgegw run`: its log file rotated by size, disk_low.

The gateway runs with `general.log_file` (4 KiB, 2 backups) and a disk reserve larger than any
disk (1 PiB). Checked: `edgegw status` says disk_low (and the log says why); a call made while
the disk is low still gets its CDR; the log, written well past 3 x 4 KiB (one line per
reload), is rotated into edgegw.log, .1 and .2 of whole lines, none over the limit, nothing
older kept; a reload to a reserve of 0 clears the flag.
"""

from __future__ import annotations

from pathlib import Path

import trio

from gateway.control.client import ControlClient
from tests.integration.peers import free_udp_port
from tests.integration.test_lifecycle import (
    cli_json,
    establish,
    gateway_config,
    hang_up,
    running,
    two_agents,
    wait_for_cdrs,
)

MAX_BYTES = 4096
HUGE_RESERVE_MB = 1024**3  # 1 PiB: more than any test machine has free


def general(reserve_mb: int) -> str:
    return (
        'log_file = "{var_dir}/edgegw.log"\n'
        f"log_max_bytes = {MAX_BYTES}\nlog_backups = 2\ndisk_reserve_mb = {reserve_mb}\n"
    )


async def test_disk_low_keeps_cdrs_and_the_log_rotates(short_tmp: Path) -> None:
    sip_port = free_udp_port(also_tcp=True)
    async with two_agents(sip_port) as (caller, callee):
        text = gateway_config(sip_port, callee.peer.local[1], general=general(HUGE_RESERVE_MB))
        with running(short_tmp, text) as gw:
            status = await cli_json(gw, "status")
            assert status["disk_low"] is True
            assert status["disk_reserve_mb"] == HUGE_RESERVE_MB
            assert status["disk_free_mb"] > 0
            log_file = gw.var_dir / "edgegw.log"
            assert "disk nearly full" in log_file.read_text()

            # CDRs are never dropped for want of disk.
            call = await establish(caller, callee)
            await hang_up(caller, callee)
            [cdr] = await wait_for_cdrs(gw, 1)
            assert cdr["caller_call_id"] == call.invite.call_id

            # Fill the log: one line per reload that changes nothing.
            control = ControlClient(gw.control_socket)
            for _ in range(160):
                assert (await trio.to_thread.run_sync(control.call, "config_reload"))[
                    "changed"
                ] == []

            # A reserve of 0 is a live change: the flag clears.
            text = gw.config_path.read_text()
            gw.config_path.write_text(
                text.replace(f"disk_reserve_mb = {HUGE_RESERVE_MB}", "disk_reserve_mb = 0")
            )
            result = await cli_json(gw, "config", "reload")
            assert result["changed"] == ["general.disk_reserve_mb"]
            assert (await cli_json(gw, "status"))["disk_low"] is False

    files = sorted(p.name for p in gw.var_dir.iterdir() if p.name.startswith("edgegw.log"))
    assert files == ["edgegw.log", "edgegw.log.1", "edgegw.log.2"], files
    total = 0
    for name in files:
        data = (gw.var_dir / name).read_bytes()
        total += len(data)
        assert len(data) <= MAX_BYTES, (name, len(data))
        assert data.endswith(b"\n")
        for line in data.decode().splitlines():
            assert line[:4].isdigit(), line  # whole lines, each starting with its time
    assert total > 2 * MAX_BYTES
    # Nothing older than two backups is kept: the lines from before the reloads are gone.
    kept = "".join((gw.var_dir / name).read_text() for name in files)
    assert "disk nearly full" not in kept and "edgegw ready" not in kept
    assert "general.disk_reserve_mb" in kept  # the last reload, in the current file
