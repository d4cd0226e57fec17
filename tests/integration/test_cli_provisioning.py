"""Provisioning, backup/restore and the diag bundle: the real `edgegw` against a running gateway.

The gateway runs as `edgegw run --config FILE` (peers.gateway_process) with the test
subscribers 1001/1002, a partner `acme` with a two-number masked pool and a callback secret,
and a second trunk with a registration password, so the bundle has secrets to mask. Every
command runs as the real `edgegw` command (human tables and --json). A subscriber added by
the CLI then REGISTERs with the test SIP client, which proves the change reached the running
core; after `set` the old password is refused, after `remove` any password is.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.integration.peers import GatewayProcess, free_udp_port, gateway_process
from tests.integration.sipclient import (
    NUMBERS,
    PASSWORDS,
    GatewaySettings,
    UdpPeer,
    ack_for_failure,
    gateway_config_text,
    media_range,
)

NEW_USER = "2001"
NEW_NUMBER = "+8613900132001"
NEW_PASSWORD = "pw-2001-first"
CHANGED_PASSWORD = "pw-2001-second"
POOL = ["+8617000000000", "+8617000000001"]
PARTNER_KEY = "demo-acme-key-4711"
CALLBACK_SECRET = "cb-secret-0815"
TRUNK_PASSWORD = "trunk-pass-0042"
SECRETS = (*PASSWORDS.values(), NEW_PASSWORD, CHANGED_PASSWORD, PARTNER_KEY, CALLBACK_SECRET)
SECRETS += (TRUNK_PASSWORD,)

EXTRA = f"""
[[partners]]
name = "acme"
api_key = "{PARTNER_KEY}"
budget = "500.00"
masked_pool = {json.dumps(POOL)}
callback_url = "http://127.0.0.1:9/callbacks"
callback_secret = "{CALLBACK_SECRET}"

[[trunks]]
name = "registered-carrier"
host = "127.0.0.1"
port = 9
prefixes = ["999"]
username = "carrier-user"
password = "{TRUNK_PASSWORD}"
"""


def config_text(tmp: Path, trunk_port: int) -> str:
    settings = GatewaySettings(ipv6=False, extra_toml=EXTRA)
    text = gateway_config_text(
        tmp / "var", free_udp_port(also_tcp=True), media_range(), trunk_port, settings
    )
    # The gateway's own log file, so that the bundle has logs to take.
    return text.replace('log_level = "warning"', f'log_level = "info"\nlog_file = "{tmp}/gw.log"')


def run_json(gw: GatewayProcess, *args: str) -> Any:
    done = gw.cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def refused(gw: GatewayProcess, *args: str, code: int = 1) -> str:
    """The stderr of a command that must fail with ``code`` and print nothing on stdout."""
    done = gw.cli(*args)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert done.stdout == ""
    return done.stderr


async def register(gw: GatewayProcess, user: str, password: str) -> int:
    """The final status of a REGISTER of ``user`` answering the challenge with ``password``."""
    with contextlib.closing(await UdpPeer.open(gw.sip)) as peer:
        request = peer.request(
            "REGISTER",
            f"sip:{peer.domain}",
            from_user=user,
            to_user=user,
            extra=[("Expires", "300")],
        )
        challenge = await peer.transact(request)
        if challenge.status != 401:
            return challenge.status
        retry = peer.authorize(request, challenge, user, password=password)
        return (await peer.transact(retry)).status


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    with tempfile.TemporaryDirectory(prefix="egw-") as name:
        tmp = Path(name)
        with gateway_process(tmp, config_text(tmp, free_udp_port())) as running:
            yield running


def usernames(gw: GatewayProcess) -> list[str]:
    return [row["username"] for row in run_json(gw, "subscriber", "list")]


async def test_added_subscriber_registers_set_changes_it_remove_refuses_it(
    gw: GatewayProcess,
) -> None:
    added = run_json(
        gw,
        "subscriber",
        "add",
        NEW_USER,
        "--password",
        NEW_PASSWORD,
        "--numbers",
        NEW_NUMBER,
        "--srtp",
        "mandatory",
        "--codecs",
        "opus,PCMA",
    )
    assert added == {
        "username": NEW_USER,
        "numbers": [NEW_NUMBER],
        "srtp": "mandatory",
        "fallback": True,
        "codecs": ["opus", "PCMA"],
        "mobile": "",
        "balance": "0.00",
        "registrations": 0,
        "notes": [],
    }
    assert await register(gw, NEW_USER, NEW_PASSWORD) == 200  # the core knows it at once
    listed = {row["username"]: row for row in run_json(gw, "subscriber", "list")}
    assert listed[NEW_USER]["registrations"] == 1
    assert "password" not in listed[NEW_USER]
    table = gw.cli("subscriber", "list")
    assert table.returncode == 0 and NEW_NUMBER in table.stdout and "mandatory" in table.stdout
    assert NEW_PASSWORD not in table.stdout + json.dumps(listed)

    done = gw.cli("subscriber", "set", NEW_USER, "--password", CHANGED_PASSWORD, "--no-fallback")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"subscriber {NEW_USER} changed: {NEW_NUMBER}; srtp mandatory")
    assert CHANGED_PASSWORD not in done.stdout
    assert await register(gw, NEW_USER, NEW_PASSWORD) == 403  # the old one no longer works
    assert await register(gw, NEW_USER, CHANGED_PASSWORD) == 200
    # A config subscriber can be changed too; the CLI warns that the config wins on restart.
    done = gw.cli("subscriber", "set", "1002", "--mobile", "+8613800138002")
    assert done.returncode == 0, done.stderr
    assert "note: subscriber '1002' is also in the config file" in done.stderr

    numbers = {row["number"]: row for row in run_json(gw, "number", "list")}
    assert numbers[NEW_NUMBER] == {
        "number": NEW_NUMBER,
        "owner": f"subscriber:{NEW_USER}",
        "state": "registered",
        "binding": None,
        "expires_at": None,
    }
    removed = run_json(gw, "subscriber", "remove", NEW_USER)
    assert removed["registrations_dropped"] == 2  # one contact per client socket above
    assert await register(gw, NEW_USER, CHANGED_PASSWORD) == 403
    assert NEW_USER not in usernames(gw)
    assert NEW_NUMBER not in {row["number"] for row in run_json(gw, "number", "list")}
    assert "no subscriber '2001'" in refused(gw, "subscriber", "remove", NEW_USER)


DID = "+8613900132077"


async def ring_1001_at(gw: GatewayProcess, app: UdpPeer, number: str) -> bool:
    """1002 calls `number`; whether 1001's registered app (`app`) is rung (it answers 486)."""
    with contextlib.closing(await UdpPeer.open(gw.sip)) as caller:
        invite = caller.invite("1002", number)
        challenge = await caller.transact(invite)
        invite = caller.authorize(invite, challenge, "1002")
        await caller.send(invite)
        with trio.move_on_after(1.5):
            rung = await app.expect_request("INVITE", timeout=1.5)
            await app.reply(rung, 486, to_tag="busy")
            response = await caller.expect_response(invite)
            await caller.send(ack_for_failure(invite, response))
            return response.status == 486
        return False


async def test_number_add_rings_its_subscriber_and_remove_takes_it_back(
    gw: GatewayProcess,
) -> None:
    with contextlib.closing(await UdpPeer.open(gw.sip)) as app:
        request = app.request(
            "REGISTER",
            f"sip:{app.domain}",
            from_user="1001",
            to_user="1001",
            extra=[("Expires", "300")],
        )
        challenge = await app.transact(request)
        assert (await app.transact(app.authorize(request, challenge, "1001"))).status == 200

        added = run_json(gw, "number", "add", DID, "--subscriber", "1001")
        assert added["owner"] == "subscriber:1001"
        assert "also in the config file" in added["notes"][0]  # 1001 is a config subscriber
        numbers = {row["number"]: row["owner"] for row in run_json(gw, "number", "list")}
        assert numbers[DID] == "subscriber:1001"
        assert await ring_1001_at(gw, app, DID)  # the core routes it at once

        assert "already subscriber:1001's" in refused(
            gw, "number", "add", DID, "--subscriber", "1001"
        )
        assert refused(gw, "number", "add", DID, "--subscriber", "1002") == (
            f"edgegw: number add: number {DID} already belongs to subscriber '1001': "
            "nothing was changed\n"
        )
        assert "masked-number pool" in refused(gw, "number", "remove", POOL[0])
        assert "no subscriber '9999'" in refused(
            gw, "number", "add", "+8613900132078", "--subscriber", "9999"
        )
        assert "must be E.164: '+' then 8 to 15 digits, got '12345'" in refused(
            gw, "number", "add", "12345", "--subscriber", "1001"
        )
        assert "--subscriber" in refused(gw, "number", "add", DID, code=2)

        done = gw.cli("number", "remove", DID)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{DID} removed from subscriber:1001\n"
        assert DID not in {row["number"] for row in run_json(gw, "number", "list")}
        assert not await ring_1001_at(gw, app, DID)
        assert f"no subscriber owns {DID}" in refused(gw, "number", "remove", DID)


def test_bad_input_is_refused_and_nothing_is_written(gw: GatewayProcess) -> None:
    before = run_json(gw, "subscriber", "list")
    add = ("subscriber", "add", "3001", "--password", "pw-3001")
    cases = {
        # What each malformed request gets (exit 1 from the gateway's checks).
        ("subscriber", "add", "bad user", "--password", "x"): (
            "username: must be 1 to 64 letters, digits or . _ ~ + -"
        ),
        (*add, "--numbers", "0123"): (
            "numbers[0]: must be E.164: '+' then 8 to 15 digits, got '0123'"
        ),
        (*add, "--numbers", f"+8613900133001,{NUMBERS['1001']}"): (
            f"number {NUMBERS['1001']} already belongs to subscriber '1001': nothing was changed"
        ),
        (*add, "--numbers", POOL[1]): (
            f"number {POOL[1]} is in the masked-number pool of partner 'acme'"
        ),
        (*add, "--codecs", "speex"): "codecs[0]: unknown codec 'speex'",
        (*add, "--mobile", "+8613900133001", "--numbers", "+8613900133001"): (
            "mobile: must not be one of the subscriber's own numbers"
        ),
        ("subscriber", "add", "1001", "--password", "x"): (
            "subscriber '1001' already exists: change it with `edgegw subscriber set`"
        ),
        ("subscriber", "set", "nobody", "--srtp", "off"): (
            "no subscriber 'nobody': add it with `edgegw subscriber add`"
        ),
        ("subscriber", "set", "1001", "--numbers", NUMBERS["1002"]): (
            f"number {NUMBERS['1002']} already belongs to subscriber '1002'"
        ),
    }
    for args, message in cases.items():
        assert message in refused(gw, *args), args
    # Usage errors (exit 2), found before the gateway is asked.
    assert "nothing to change" in refused(gw, "subscriber", "set", "1001", code=2)
    assert "'sometimes' is not one of" in refused(gw, *add, "--srtp", "sometimes", code=2)
    assert run_json(gw, "subscriber", "list") == before


def test_topup_shows_in_balance_and_ledger(gw: GatewayProcess) -> None:
    since = time.time() - 0.5
    before = run_json(gw, "balance", "show", "subscriber:1001")
    assert (before["account"], before["reserved"]) == ("subscriber:1001", "0.00")
    topped = run_json(gw, "balance", "topup", "subscriber:1001", "25.50")
    expected = f"{float(before['balance']) + 25.5:.2f}"
    assert (topped["balance"], topped["amount"], topped["reason"]) == (expected, "25.50", "topup")
    assert run_json(gw, "balance", "show", "1001")["balance"] == expected  # a bare name works
    rows = run_json(gw, "balance", "ledger", "subscriber:1001", "--since", str(since))
    assert [(r["amount"], r["balance_after"], r["reason"]) for r in rows] == [
        ("25.50", expected, "topup")
    ]
    done = gw.cli("balance", "topup", "--reason", "adjustment", "partner:acme", "--", "-100.00")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "partner:acme: adjustment -100.00, balance now 400.00\n"
    accounts = {row["account"]: row for row in run_json(gw, "balance", "show")}
    assert accounts["partner:acme"]["balance"] == "400.00"
    ledger = gw.cli("balance", "ledger", "partner:acme")
    assert ledger.returncode == 0 and "adjustment" in ledger.stdout and "provision" in ledger.stdout

    assert "'1.234' is not a decimal of whole cents" in refused(
        gw, "balance", "topup", "subscriber:1001", "1.234", code=2
    )
    assert "write subscriber:NAME, partner:NAME or a bare NAME" in refused(
        gw, "balance", "topup", "carrier:x", "1", code=2
    )
    assert "no partner account 'nobody': nothing was changed" in refused(
        gw, "balance", "topup", "partner:nobody", "1"
    )
    assert "a top-up of subscriber '1001' must be positive" in refused(
        gw, "balance", "topup", "subscriber:1001", "--", "-1"
    )
    assert "cannot take -1000.00 (it would go below 0.00)" in refused(
        gw, "balance", "topup", "--reason", "adjustment", "partner:acme", "--", "-1000"
    )
    assert run_json(gw, "balance", "show", "partner:acme")["balance"] == "400.00"


def test_partners_and_numbers_never_show_a_key(gw: GatewayProcess) -> None:
    partners = run_json(gw, "partner", "list")
    assert [p["name"] for p in partners] == ["acme"]
    acme = partners[0]
    assert (acme["pool_size"], acme["bindings"], acme["callbacks"]) == (2, 0, True)
    table = gw.cli("partner", "list")
    assert table.returncode == 0 and "acme" in table.stdout
    assert PARTNER_KEY not in table.stdout + json.dumps(partners)
    numbers = {row["number"]: row for row in run_json(gw, "number", "list")}
    assert {n: numbers[n]["state"] for n in POOL} == {n: "free" for n in POOL}
    assert numbers[NUMBERS["1001"]]["owner"] == "subscriber:1001"
    assert "config file only" in gw.cli("partner", "--help").stdout


def test_diag_bundle_of_a_running_gateway(gw: GatewayProcess) -> None:
    with tempfile.TemporaryDirectory(dir=gw.var_dir.parent) as name:
        out = Path(name) / "bundle.tar.gz"
        done = gw.cli("diag", "bundle", "--output", str(out))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{out}: ")
        with tarfile.open(out) as tar:
            files = {m.name.removeprefix("bundle/"): tar.extractfile(m) for m in tar.getmembers()}
            contents = {k: v.read() for k, v in files.items() if v is not None}
    expected = {"README.txt", "config.json", "status.json", "calls.json", "cdrs.json"}
    expected |= {"versions.json", "logs/gw.log", "network/ip-addr.json", "network/ip-rule.json"}
    assert expected <= contents.keys()
    config = json.loads(contents["config.json"])
    assert {s["password"] for s in config["subscribers"]} == {"***"}
    assert (config["partners"][0]["api_key"], config["partners"][0]["callback_secret"]) == (
        "***",
        "***",
    )
    assert config["trunks"][1]["password"] == "***"
    assert config["trunks"][0]["password"] == ""  # nothing to mask stays empty
    assert json.loads(contents["status.json"])["registrations"] >= 0
    assert isinstance(json.loads(contents["cdrs.json"]), list)
    assert json.loads(contents["network/ip-addr.json"])  # the box's interfaces
    assert b"gateway: running" in contents["README.txt"]
    for secret in SECRETS:
        leaks = [k for k, data in contents.items() if secret.encode() in data]
        assert not leaks, (secret, leaks)


async def failed_calls(gw: GatewayProcess, carrier: UdpPeer, stop: trio.Event) -> int:
    """1001 calls 1002 (not registered: to the carrier, which answers 486) until ``stop``:
    each call writes a CDR. Returns how many calls ended."""
    ended = 0
    with contextlib.closing(await UdpPeer.open(gw.sip)) as caller:
        while not stop.is_set():
            invite = caller.invite("1001", "1002")
            challenge = await caller.transact(invite)
            invite = caller.authorize(invite, challenge, "1001")
            await caller.send(invite)
            carried = await carrier.expect_request("INVITE")
            await carrier.reply(carried, 486, to_tag=f"busy{ended}", to=gw.sip)
            response = await caller.expect_response(invite)
            assert response.status == 486
            await caller.send(ack_for_failure(invite, response))
            ended += 1
    return ended


def stored(path: Path) -> tuple[list[str], list[str], str]:
    """CDR ids, usernames and 1002's balance in a store file."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        cdrs = [row[0] for row in conn.execute("SELECT id FROM cdrs ORDER BY id")]
        users = [row[0] for row in conn.execute("SELECT username FROM subscribers ORDER BY 1")]
        (balance,) = conn.execute(
            "SELECT balance FROM accounts WHERE kind='subscriber' AND name='1002'"
        ).fetchone()
    finally:
        conn.close()
    return cdrs, users, str(balance)


async def test_backup_during_calls_then_restore_on_the_stopped_box(short_tmp: Path) -> None:
    backup = short_tmp / "backups" / "store.sqlite"
    backup.parent.mkdir()
    carrier = await UdpPeer.open(("127.0.0.1", 9), host="127.0.0.1")
    with contextlib.closing(carrier):
        await backup_restore_and_restart(short_tmp, backup, carrier)


async def backup_restore_and_restart(tmp: Path, backup: Path, carrier: UdpPeer) -> None:
    text = config_text(tmp, carrier.local[1])
    with gateway_process(tmp, text) as gw:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            calls: list[int] = []

            async def calling() -> None:
                calls.append(await failed_calls(gw, carrier, stop))

            nursery.start_soon(calling)
            with trio.fail_after(10):  # some CDRs before, more during the backup
                while not await trio.to_thread.run_sync(run_json_cdrs, gw):
                    await trio.sleep(0.05)
            done = await trio.to_thread.run_sync(gw.cli, "backup", str(backup))
            stop.set()
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{backup}: schema ")
        assert "integrity ok" in done.stdout
        assert backup.stat().st_mode & 0o777 == 0o600  # it holds every password
        assert calls[0] > 0
        backed_cdrs, backed_users, backed_balance = stored(backup)
        assert backed_cdrs and backed_users == ["1001", "1002"]
        # Changes after the backup, which the restore must undo.
        assert gw.cli("balance", "topup", "subscriber:1002", "7").returncode == 0
        assert gw.cli("subscriber", "add", "9009", "--password", "pw-9009").returncode == 0
        assert "is the live store" in refused(gw, "backup", str(gw.var_dir / "edgegw.sqlite"))
        config = str(gw.config_path)
        assert "the gateway is running" in refused(gw, "restore", str(backup), "--config", config)
    all_cdrs, users_after, balance_after = stored(gw.var_dir / "edgegw.sqlite")
    assert "9009" in users_after and balance_after != backed_balance
    # Calls went on writing CDRs while the backup was taken; it has every one before it.
    assert set(backed_cdrs) < set(all_cdrs)

    store = gw.var_dir / "edgegw.sqlite"
    done = gw.cli("restore", str(backup), "--config", config)
    assert done.returncode == 0, done.stderr
    assert f"the previous store is kept as {store}.before-restore" in done.stdout
    assert stored(store) == (backed_cdrs, backed_users, backed_balance)
    assert stored(store.with_name("edgegw.sqlite.before-restore"))[1] == users_after

    # What a bad backup file gets; the store in place stays as it is.
    not_a_store = tmp / "notes.txt"
    not_a_store.write_text("hello\n")
    assert "not an edgegw store (not an SQLite database)" in refused(
        gw, "restore", str(not_a_store), "--config", config
    )
    newer = tmp / "newer.sqlite"
    newer.write_bytes(backup.read_bytes())
    with contextlib.closing(sqlite3.connect(newer)) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
        conn.commit()
    assert "schema version 99 is newer than this edgegw understands" in refused(
        gw, "restore", str(newer), "--config", config
    )
    damaged = tmp / "damaged.sqlite"
    data = bytearray(backup.read_bytes())
    data[4096 * 2 : 4096 * 3] = b"\xff" * 4096  # a whole page of garbage
    damaged.write_bytes(bytes(data))
    assert f"{damaged}: cannot read the database: database disk image is malformed" in refused(
        gw, "restore", str(damaged), "--config", config
    )
    foreign = tmp / "foreign.sqlite"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert "not an edgegw store (no table schema_version" in refused(
        gw, "restore", str(foreign), "--config", config
    )
    assert stored(store) == (backed_cdrs, backed_users, backed_balance)

    # The bundle of a stopped box: from the config file and the store on disk.
    out = tmp / "offline.tar.gz"
    done = gw.cli("diag", "bundle", "--config", config, "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert "gateway not running" in done.stdout
    with tarfile.open(out) as tar:
        names = {m.name.removeprefix("offline/") for m in tar.getmembers()}
        readme = tar.extractfile("offline/README.txt")
        assert readme is not None
        notes = readme.read().decode()
        cdrs = tar.extractfile("offline/cdrs.json")
        assert cdrs is not None
        assert sorted(c["id"] for c in json.load(cdrs)) == backed_cdrs
    assert "status.json" not in names and "config.json" in names
    assert "gateway not running: no live status, calls or config" in notes
    assert f"config.json: read from {config}, secrets masked" in notes

    # The gateway starts on the restored store and serves what the backup had.
    with gateway_process(tmp, text) as restarted:
        shown = run_json(restarted, "balance", "show", "subscriber:1002")
        assert shown["balance"] == backed_balance
        assert "9009" not in usernames(restarted)


def run_json_cdrs(gw: GatewayProcess) -> list[Any]:
    done = gw.cli("cdr", "--json")
    assert done.returncode == 0, done.stderr
    result: list[Any] = json.loads(done.stdout)
    return result
