"""Retention against the real `edgegw run`: captures, exports and rotated logs pruned at start.

Before the gateway starts, files are placed in <var_dir>/captures, <var_dir>/exports and
beside its log file, with old mtimes set by os.utime. The gateway runs with small limits
(captures 1 MiB / 7 days, exports 30 days, logs 30 days); its first pruning pass runs before
it is ready. Checked: the right files are gone (and nothing outside, no symlink target, not
the live log), the log names each deletion, `edgegw status` (JSON and table) shows the use
and the last pruning, and `edgegw cdr export --to-var` writes into the exports directory.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from tests.integration.peers import free_udp_port
from tests.integration.test_lifecycle import cli, cli_json, gateway_config, running

DAY = 86400.0
MB = 1024 * 1024
DELETION = re.compile(r"retention deleted a file .* file=(\S+) place=\w+ reason='([^']*)'")

GENERAL = """log_file = "{var_dir}/edgegw.log"
log_max_age_days = 30
capture_max_mb = 1
capture_max_age_days = 7
export_max_mb = 0
export_max_age_days = 30
"""


def place(path: Path, size: int, age_days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    mtime = time.time() - age_days * DAY
    os.utime(path, (mtime, mtime))
    return path


async def test_the_first_pass_prunes_and_status_shows_it(short_tmp: Path) -> None:
    var = short_tmp / "var"
    captures = var / "captures"
    exports = var / "exports"
    aged = place(captures / "aged.pcap", 1000, 8)  # over 7 days
    big_old = place(captures / "big-old.pcap", 700 * 1024, 3)  # over 1 MiB in total
    recent = place(captures / "recent.pcap", 600 * 1024, 1)
    outside = place(short_tmp / "outside.pcap", 2 * MB, 100)
    (captures / "link.pcap").symlink_to(outside)
    old_export = place(exports / "cdrs-old.csv", 100, 31)
    new_export = place(exports / "cdrs-new.csv", 100, 29)
    live_log = place(var / "edgegw.log", 100, 60)  # the gateway appends to it
    old_log = place(var / "edgegw.log.1", 100, 31)
    new_log = place(var / "edgegw.log.2", 100, 29)

    text = gateway_config(free_udp_port(also_tcp=True), free_udp_port(), general=GENERAL)
    with running(short_tmp, text) as gw:
        status = await cli_json(gw, "status")
        gone = [aged, big_old, old_export, old_log]
        kept = [recent, new_export, live_log, new_log, outside]
        assert [p.name for p in gone if p.exists()] == []
        assert [p.name for p in kept if not p.exists()] == []
        assert (captures / "link.pcap").is_symlink()

        retention = status["retention"]
        assert retention["captures"] == {
            "dir": str(captures.absolute()),
            "files": 1,
            "mb": round(600 * 1024 / MB, 3),
            "max_mb": 1,
            "max_age_days": 7,
        }
        assert retention["exports"]["files"] == 1 and retention["exports"]["max_mb"] == 0
        last = retention["last_pruning"]
        assert last["time"] <= time.time() and last["errors"] == []
        assert sorted(last["deleted_files"]) == sorted(str(p.absolute()) for p in gone)
        assert last["deleted"] == 4 and retention["deleted_total"] == 4
        assert last["freed_mb"] == round((1000 + 700 * 1024 + 200) / MB, 3)

        table = await cli(gw, "status")
        assert table.returncode == 0, table.stderr
        assert "retention.captures.mb" in table.stdout
        assert "retention.last_pruning.deleted" in table.stdout

        exported = await cli(gw, "cdr", "export", "--since", "0", "--until", "86400", "--to-var")
        assert exported.returncode == 0, exported.stderr
        written = exports / "cdrs-19700101T000000Z-19700102T000000Z.csv"
        assert exported.stderr.strip() == f"{written.absolute()}: 0 CDRs"
        assert written.read_text().startswith("id,")

        both = await cli(gw, "cdr", "export", "--since", "0", "--to-var", "-o", "x.csv")
        assert both.returncode == 2 and "give --output or --to-var, not both" in both.stderr

    # The log (console format) names each deletion with its reason.
    deleted = dict(DELETION.findall(live_log.read_text()))
    assert deleted == {
        str(aged.absolute()): "older than 7 days",
        str(big_old.absolute()): "total over 1 MB",
        str(old_export.absolute()): "older than 30 days",
        str(old_log.absolute()): "older than 30 days",
    }
