"""`edgegw cdr export` against a running gateway: CSV and JSON read back, windows, paging, errors.

The gateway runs as `edgegw run --config FILE` (peers.gateway_process). Its store holds 240
rated CDRs and one with awkward text, written through the store before it started; one more
comes from a real call (1001 calls 1002, who is not registered, so it goes to the carrier on
1002's number and the carrier answers 486). The export runs as the real `edgegw` command; its
CSV is read back with the csv module and its JSON with json.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from gateway.store.model import Cdr
from gateway.store.sqlite import SqliteStore
from tests.integration.peers import GatewayProcess, free_udp_port, gateway_process
from tests.integration.sipclient import (
    NUMBERS,
    GatewaySettings,
    UdpPeer,
    ack_for_failure,
    gateway_config_text,
    media_range,
)

START = 1_714_564_800.0  # 2024-05-01T12:00:00Z
BULK = 240  # rated CDRs, call n starting at START + 10 n: more than the listing's 100
PARTNER_EVERY = 4  # every 4th of them is the demo partner's
ODD_CALLER = 'O\'Brien, "Bob"\r\nsecond line'
ODD_REASON = 'Normal, "clearing"; 16'


def bulk_cdr(n: int) -> Cdr:
    minutes = 1 + n % 3
    partner = "demo" if n % PARTNER_EVERY == 0 else None
    return Cdr(
        id=f"bulk-{n:03d}",
        caller="1001",
        callee=f"+86138001{n:05d}",
        route="trunk",
        trunk="test-carrier",
        start=START + 10 * n,
        answer=START + 10 * n + 1.5,
        end=START + 10 * n + 1.5 + 55 * minutes,
        duration=55.0 * minutes,
        disposition="answered",
        end_reason="caller-bye",
        sip_status=200,
        caller_call_id=f"a{n}@client",
        callee_call_id=f"b{n}@gw",
        payer="partner:demo" if partner else "subscriber:1001",
        partner=partner,
        tariff_prefix="86138",
        rate_per_minute="0.10",
        billing_increment=[60, 60],
        billable_seconds=60 * minutes,
        cost=f"0.{minutes}0",
        trunks_tried=["test-carrier"],
    )


ODD = Cdr(
    id="odd-1",
    caller=ODD_CALLER,
    callee="+8613800138000",
    route="trunk",
    trunk="cheap",
    start=START - 100.25,
    answer=START - 98.0,
    end=START - 8.0,
    duration=90.0,
    disposition="answered",
    end_reason="callee-bye",
    sip_status=200,
    caller_call_id='a,"1"@client',
    callee_call_id=None,
    payer="partner:acme",
    partner="acme",
    tariff_prefix=None,
    rate_per_minute="0.06",
    billing_increment=[6, 6],
    billable_seconds=90,
    cost="0.09",
    q850_cause=16,
    reason_text=ODD_REASON,
    trunks_tried=["dead", "cheap"],
)


async def write_cdrs(path: Path, cdrs: list[Cdr]) -> None:
    async with SqliteStore(path) as store:
        for cdr in cdrs:
            await store.write_cdr(cdr)


def config(tmp: Path, trunk_port: int) -> str:
    settings = GatewaySettings(ipv6=False)
    return gateway_config_text(
        tmp / "var", free_udp_port(also_tcp=True), media_range(), trunk_port, settings
    )


@pytest.fixture(scope="module")
def stocked() -> Iterator[GatewayProcess]:
    """A gateway whose store holds the bulk CDRs and the odd one from before it started."""
    with tempfile.TemporaryDirectory(prefix="egw-") as name:
        tmp = Path(name)
        (tmp / "var").mkdir()
        trio.run(write_cdrs, tmp / "var" / "edgegw.sqlite", [ODD, *map(bulk_cdr, range(BULK))])
        with gateway_process(tmp, config(tmp, free_udp_port())) as running:
            yield running


def export(gw: GatewayProcess, *args: str) -> str:
    """What `edgegw cdr export ARGS --output FILE` wrote, exactly (CRLF line ends kept)."""
    with tempfile.TemporaryDirectory(dir=gw.var_dir.parent) as name:
        out = Path(name) / "export"
        done = gw.cli("cdr", "export", *args, "--output", str(out))
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        assert not [entry for entry in os.listdir(name) if entry != "export"]  # no temp file
        return out.read_bytes().decode("utf-8")


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def builtins_of(cdr: Cdr) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(cdr)
    return result


def bulk_ids(rows: list[dict[str, Any]]) -> list[int]:
    return [int(row["id"].removeprefix("bulk-")) for row in rows]


def test_csv_reads_back_every_field_in_time_order(stocked: GatewayProcess) -> None:
    text = export(stocked, "--since", str(START - 1000), "--until", "2024-05-01T13:00:00+00:00")
    assert "\r\n" in text  # RFC 4180 line ends
    rows = read_csv(text)
    assert [row["id"] for row in rows] == ["odd-1"] + [f"bulk-{n:03d}" for n in range(BULK)]
    odd, first, second = rows[:3]
    assert (odd["caller"], odd["caller_call_id"], odd["reason_text"]) == (
        ODD_CALLER,
        'a,"1"@client',
        ODD_REASON,
    )
    assert (odd["callee_call_id"], odd["tariff_prefix"], odd["q850_cause"]) == ("", "", "16")
    assert (odd["trunks_tried"], odd["billing_increment"]) == ("dead;cheap", "6/6")
    assert float(odd["start"]) == ODD.start
    assert (first["payer"], first["partner"], first["cost"], first["billable_seconds"]) == (
        "partner:demo",
        "demo",
        "0.10",
        "60",
    )
    assert (second["payer"], second["partner"], second["cost"], second["billable_seconds"]) == (
        "subscriber:1001",
        "",
        "0.20",
        "120",
    )
    assert (first["tariff_prefix"], first["rate_per_minute"], first["billing_increment"]) == (
        "86138",
        "0.10",
        "60/60",
    )


def test_more_than_a_hundred_rows_come_in_pages(stocked: GatewayProcess) -> None:
    window = ("--since", str(START), "--until", str(START + 10 * BULK))
    whole = export(stocked, *window)
    assert bulk_ids(read_csv(whole)) == list(range(BULK))
    # In pages of 64 (the last one short) the export is the same, byte for byte.
    assert export(stocked, *window, "--page-size", "64") == whole
    assert export(stocked, *window, "--page-size", str(BULK)) == whole  # last page empty
    # To stdout, the same text (GatewayProcess.cli reads text, so CRLF arrives as LF).
    done = stocked.cli("cdr", "export", *window)
    assert done.returncode == 0, done.stderr
    assert done.stdout == whole.replace("\r\n", "\n")


def test_window_since_inclusive_until_exclusive(stocked: GatewayProcess) -> None:
    # 2024-05-01T12:08:20Z is call 50's start, 12:10:00Z call 60's.
    text = export(
        stocked, "--since", "2024-05-01T12:08:20+00:00", "--until", "2024-05-01T12:10:00+00:00"
    )
    assert bulk_ids(read_csv(text)) == list(range(50, 60))
    text = export(stocked, "--since", str(START + 10 * BULK), "--until", str(START + 10 * BULK + 9))
    assert read_csv(text) == []
    assert text == ",".join(Cdr.__struct_fields__) + "\r\n"  # the header only


def test_partner_as_json_to_a_file(stocked: GatewayProcess) -> None:
    text = export(
        stocked,
        *("--since", str(START - 1000), "--until", str(START + 10 * BULK)),
        *("--partner", "demo", "--format", "json", "--page-size", "16"),
    )
    exported = json.loads(text)
    assert bulk_ids(exported) == list(range(0, BULK, PARTNER_EVERY))
    assert {(c["partner"], c["payer"]) for c in exported} == {("demo", "partner:demo")}
    assert exported[1] == builtins_of(bulk_cdr(PARTNER_EVERY))
    assert sum(int(c["cost"].replace(".", "")) for c in exported) == sum(
        10 * (1 + n % 3) for n in range(0, BULK, PARTNER_EVERY)
    )

    acme = json.loads(export(stocked, "--since", "0", "--partner", "acme", "--format", "json"))
    assert [c["id"] for c in acme] == ["odd-1"]
    assert (acme[0]["caller"], acme[0]["reason_text"]) == (ODD_CALLER, ODD_REASON)
    assert (acme[0]["billing_increment"], acme[0]["q850_cause"]) == ([6, 6], 16)


def test_listing_still_works_and_its_json_has_the_money(stocked: GatewayProcess) -> None:
    done = stocked.cli("cdr", "--json", "--since", str(START), "--limit", "3")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [c["id"] for c in listed] == ["bulk-239", "bulk-238", "bulk-237"]  # newest first
    assert listed[0] == builtins_of(bulk_cdr(239))
    for key in ("payer", "partner", "tariff_prefix", "rate_per_minute", "billing_increment"):
        assert key in listed[0]
    assert (listed[0]["cost"], listed[0]["billable_seconds"]) == ("0.30", 180)
    done = stocked.cli("cdr", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 100  # the listing's own default stays
    done = stocked.cli("cdr", "--since", str(START))
    assert done.returncode == 0, done.stderr
    assert "bulk-239" in done.stdout and "end reason" in done.stdout


def test_bad_since_is_a_usage_error_naming_the_formats(stocked: GatewayProcess) -> None:
    done = stocked.cli("cdr", "export", "--since", "last tuesday")
    assert done.returncode == 2
    assert "Invalid value for '--since'" in done.stderr
    assert "neither epoch seconds nor an ISO 8601 time (e.g. 2024-05-01T12:00:00)" in done.stderr
    assert done.stdout == ""
    done = stocked.cli("cdr", "export", "--since", str(START), "--until", str(START - 1))
    assert done.returncode == 2
    assert "'--until': must be later than --since" in done.stderr


async def test_a_real_call_then_the_gateway_stopped(short_tmp: Path) -> None:
    since = time.time() - 1
    trunk = await UdpPeer.open(("127.0.0.1", 9), host="127.0.0.1")
    with (
        contextlib.closing(trunk),
        gateway_process(short_tmp, config(short_tmp, trunk.local[1])) as gw,
    ):
        with contextlib.closing(await UdpPeer.open(gw.sip)) as caller:
            invite = caller.invite("1001", "1002")
            challenge = await caller.transact(invite)
            invite = caller.authorize(invite, challenge, "1001")
            await caller.send(invite)
            carried = await trunk.expect_request("INVITE")
            await trunk.reply(carried, 486, to_tag="carrier", to=gw.sip)
            response = await caller.expect_response(invite)
            assert response.status == 486
            await caller.send(ack_for_failure(invite, response))
        with trio.fail_after(10):  # the CDR is written once the call has ended
            while not (
                rows := read_csv(await trio.to_thread.run_sync(export, gw, "--since", str(since)))
            ):
                await trio.sleep(0.1)
        (row,) = rows
        assert (row["caller"], row["callee"], row["route"]) == ("1001", NUMBERS["1002"], "fallback")
        assert (row["trunk"], row["sip_status"], row["disposition"]) == (
            "test-carrier",
            "486",
            "busy",
        )
        assert (row["trunks_tried"], row["cost"], row["billable_seconds"]) == (
            "test-carrier",
            "0.00",
            "0",
        )
        socket = gw.control_socket
    done = gw.cli("cdr", "export", "--since", str(since))
    assert done.returncode == 3, done.stderr
    assert done.stderr == (
        f"edgegw: gateway not running (no control socket at {socket}): start it with `edgegw run`\n"
    )
    assert done.stdout == ""
