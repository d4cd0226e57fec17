"""Trunk and partner provisioning: the real `edgegw trunk|partner add|set|remove|show` against a
running `edgegw run --config FILE` (peers.gateway_process).

The gateway edits its own config file and reloads it. Checked from outside: a trunk added by
the CLI is listed by `edgegw trunks` and takes the next call to its prefix (a UDP socket of
the test as the carrier gets the INVITE), `set` moves the next call to its new port,
`remove` leaves that prefix without a route (404); the operator's comments stay, FILE.bak
holds the previous text. A partner added gets a key printed once that the HTTP API then
accepts (401 before, and again after `remove`). Every malformed request exits 1 with the
config's own reason and leaves the file byte for byte as it was. A gateway started without a
config file refuses every edit and says how to start it with one.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from gateway.config import load_config
from gateway.sip.auth import DigestServer
from gateway.sip.message import Request, Response, make_response
from tests.integration.peers import GatewayProcess, free_udp_port, gateway_process
from tests.integration.sipclient import (
    GatewaySettings,
    GatewayUnderTest,
    UdpPeer,
    ack_for_failure,
    gateway_config_text,
    media_range,
)

UK_NUMBER = "+442079460000"
OPERATOR_COMMENT = "# operator: carrier contracts are in the wiki, page 42"
TRUNK_SECRET = "trunk-secret-7731"
CLI = (sys.executable, "-m", "gateway.control.cli")
ADD_X = ("trunk", "add", "x", "--host", "127.0.0.1")


def config_text(tmp: Path) -> str:
    settings = GatewaySettings(ipv6=False)
    text = gateway_config_text(
        tmp / "var", free_udp_port(also_tcp=True), media_range(), free_udp_port(), settings
    )
    # The test carrier takes Chinese numbers only, so +44 has no route until a trunk has it.
    text = text.replace(
        'name = "test-carrier"\n',
        f'name = "test-carrier"  # the lab carrier\n{OPERATOR_COMMENT}\nprefixes = ["86"]\n',
    )
    return f"# edgegw at the lab interconnect\n{text}"


@pytest.fixture(scope="module")
def edited_gw() -> Iterator[GatewayProcess]:
    with tempfile.TemporaryDirectory(prefix="egw-") as name:
        tmp = Path(name)
        with gateway_process(tmp, config_text(tmp)) as running:
            yield running


def run_json(gw: GatewayProcess, *args: str) -> Any:
    done = gw.cli(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def backup_of(gw: GatewayProcess) -> Path:
    return gw.config_path.with_name(gw.config_path.name + ".bak")


async def call_status(gw: GatewayProcess, number: str, carrier: UdpPeer | None) -> Request | int:
    """1001 calls ``number``: the INVITE ``carrier`` got (it answers 486), or, with no carrier,
    the final status the caller got."""
    with contextlib.closing(await UdpPeer.open(gw.sip)) as caller:
        invite = caller.invite("1001", number)
        challenge = await caller.transact(invite)
        invite = caller.authorize(invite, challenge, "1001")
        await caller.send(invite)
        carried: Request | None = None
        if carrier is not None:
            carried = await carrier.expect_request("INVITE")
            await carrier.reply(carried, 486, to_tag="busy", to=gw.sip)
        response = await caller.expect_response(invite)
        await caller.send(ack_for_failure(invite, response))
        return response.status if carried is None else carried


async def test_added_trunk_takes_calls_set_moves_them_remove_leaves_no_route(
    edited_gw: GatewayProcess,
) -> None:
    gw = edited_gw
    first = await UdpPeer.open(("127.0.0.1", 9), host="127.0.0.1")
    second = await UdpPeer.open(("127.0.0.1", 9), host="127.0.0.1")
    with contextlib.closing(first), contextlib.closing(second):
        assert await call_status(gw, UK_NUMBER, None) == 404  # no trunk takes +44 yet
        before = gw.config_path.read_bytes()
        added = run_json(
            gw,
            "trunk",
            "add",
            "uk-carrier",
            "--host",
            "127.0.0.1",
            "--port",
            str(first.local[1]),
            "--prefixes",
            "44",
            "--codecs",
            "PCMA",
            "--price-per-minute",
            "0.01",
            "--set",
            "billing_increment=[6,6]",
            "--set",
            "options_ping=false",
        )
        assert added["trunk"]["port"] == first.local[1]
        assert added["trunk"]["billing_increment"] == [6, 6]
        assert added["changed"] == ["trunks"] and added["file"] == str(gw.config_path)
        assert backup_of(gw).read_bytes() == before
        listed = {row["name"]: row for row in run_json(gw, "trunks")}
        assert listed["uk-carrier"]["address"] == f"127.0.0.1:{first.local[1]}"
        carried = await call_status(gw, UK_NUMBER, first)
        assert isinstance(carried, Request)
        assert carried.uri == f"sip:{UK_NUMBER}@127.0.0.1:{first.local[1]}"

        text = gw.config_path.read_text()
        assert text.startswith("# edgegw at the lab interconnect\n")
        assert f'name = "test-carrier"  # the lab carrier\n{OPERATOR_COMMENT}\n' in text
        # The new table comes right after the last [[trunks]] one, before the subscribers.
        table = (
            f'\n[[trunks]]\nname = "uk-carrier"\nhost = "127.0.0.1"\nport = {first.local[1]}\n'
            'prefixes = ["44"]\ncodecs = ["PCMA"]\nprice_per_minute = "0.01"\n'
            "billing_increment = [6, 6]\noptions_ping = false\n\n"
        )
        assert table in text and text.index(table) < text.index("[[subscribers]]")
        assert text.replace(table, "\n") == before.decode()
        assert load_config(gw.config_path).trunks[-1].name == "uk-carrier"

        before = gw.config_path.read_bytes()
        done = gw.cli(
            "trunk",
            "set",
            "uk-carrier",
            "--port",
            str(second.local[1]),
            "--username",
            "lab",
            "--password",
            TRUNK_SECRET,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(
            f"trunk uk-carrier changed: 127.0.0.1:{second.local[1]} udp, prefixes 44, codecs PCMA"
        )
        assert f"previous version in {backup_of(gw)}; applied (trunks[1].port" in done.stdout
        assert backup_of(gw).read_bytes() == before
        carried = await call_status(gw, UK_NUMBER, second)
        assert isinstance(carried, Request) and carried.uri.endswith(f":{second.local[1]}")
        shown = gw.cli("trunk", "show", "uk-carrier", "--json")
        assert shown.returncode == 0 and TRUNK_SECRET not in shown.stdout
        assert json.loads(shown.stdout)["password"] == "***"
        assert json.loads(shown.stdout)["username"] == "lab"
        human = gw.cli("trunk", "show", "uk-carrier")
        assert human.returncode == 0 and "uk-carrier" in human.stdout
        assert TRUNK_SECRET not in human.stdout

        removed = run_json(gw, "trunk", "remove", "uk-carrier")
        assert removed["removed"] is True and removed["trunk"] is None
        assert "uk-carrier" not in {row["name"] for row in run_json(gw, "trunks")}
        assert await call_status(gw, UK_NUMBER, None) == 404
        text = gw.config_path.read_text()
        assert "uk-carrier" not in text and OPERATOR_COMMENT in text
        assert "uk-carrier" in backup_of(gw).read_text()


def test_bad_changes_exit_1_and_leave_the_file_as_it_was(edited_gw: GatewayProcess) -> None:
    gw = edited_gw
    file = gw.config_path
    index = len(run_json(gw, "trunks"))  # a new trunk's place in the file
    add = ("trunk", "add", "new-carrier", "--host", "127.0.0.1")
    cases: dict[tuple[str, ...], str] = {
        # What each malformed request gets: the config's own reason, file and key.
        (*add, "--port", "70000"): (
            f"{file}: trunks[{index}].port: must be a port number from 1 to 65535, got 70000"
        ),
        (*add, "--transport", "carrier-pigeon"): (
            f"{file}: trunks[{index}].transport: must be one of udp, tcp, tls"
        ),
        (*add, "--set", "foo=1"): f"{file}: trunks[{index}].foo: unknown key",
        (*add, "--set", "options_ping=maybe"): (
            f"{file}: trunks[{index}].options_ping: expected a bool, got str"
        ),
        (*add, "--set", "port"): "--set 'port': write KEY=VALUE",
        (*add, "--codecs", "speex"): f"trunks[{index}].codecs[0]: unknown codec 'speex'",
        ("trunk", "add", "test-carrier", "--host", "127.0.0.1"): (
            f"trunk 'test-carrier' already exists in {file}: change it with `edgegw trunk set`"
        ),
        ("trunk", "set", "no-such", "--port", "5070"): (
            f"no trunk 'no-such' in {file} (trunks: test-carrier)"
        ),
        ("trunk", "remove", "no-such"): "no trunk 'no-such'",
        ("trunk", "show", "no-such"): "no trunk 'no-such'",
        ("partner", "add", "acme", "--budget", "12.345"): "partners[0].budget:",
        ("partner", "add", "acme", "--callback-url", "ftp://x"): (
            "partners[0].callback_url: must be an http:// or https:// URL"
        ),
        ("partner", "set", "no-such", "--bill-user"): "no partner 'no-such'",
        ("partner", "remove", "no-such"): "no partner 'no-such' in",
    }
    before = file.read_bytes()
    backup = backup_of(gw).read_bytes() if backup_of(gw).exists() else None
    for args, reason in cases.items():
        done = gw.cli(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stdout == ""
        assert reason in done.stderr, (args, done.stderr)
        assert file.read_bytes() == before, args
        assert (backup_of(gw).read_bytes() if backup_of(gw).exists() else None) == backup
    assert "new-carrier" not in {row["name"] for row in run_json(gw, "trunks")}
    usage = gw.cli("trunk", "set", "test-carrier")
    assert usage.returncode == 2 and "nothing to change" in usage.stderr


def test_gateway_not_running_exits_3(tmp_path: Path) -> None:
    socket = tmp_path / "none.sock"
    done = subprocess.run(
        [*CLI, "--socket", str(socket), *ADD_X],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 3 and "gateway not running" in done.stderr


def api_status(gw: GatewayProcess, key: str) -> int:
    listen = load_config(gw.config_path).http.listen
    headers = {"Authorization": f"Bearer {key}"}
    response = httpx.get(f"http://{listen}/v1/cdrs", headers=headers, trust_env=False)
    return response.status_code


def test_partner_key_is_printed_once_and_works_until_removed(edited_gw: GatewayProcess) -> None:
    gw = edited_gw
    done = gw.cli("partner", "add", "acme", "--budget", "50.00", "--masked-pool", "+8617000000100")
    assert done.returncode == 0, done.stderr
    found = re.search(r"^API key \(shown only now\): (\S+)$", done.stdout, re.MULTILINE)
    assert found is not None, done.stdout
    key = found[1]
    assert len(key) >= 40
    assert done.stdout.startswith("partner acme added: budget 50.00, 1 masked numbers")
    assert api_status(gw, key) == 200

    for args in (("partner", "list"), ("partner", "show", "acme"), ("partner", "list", "--json")):
        shown = gw.cli(*args)
        assert shown.returncode == 0 and key not in shown.stdout, args
    shown = run_json(gw, "partner", "show", "acme")
    assert shown["api_key"] == "***" and shown["masked_pool"] == ["+8617000000100"]

    changed = run_json(gw, "partner", "set", "acme", "--bill-user", "--set", 'budget="60.00"')
    assert changed["partner"]["bill_user"] is True and changed["partner"]["budget"] == "60.00"
    assert "api_key" not in changed or changed["api_key"] == "***"
    assert key not in json.dumps(changed)
    assert api_status(gw, key) == 200

    given = run_json(gw, "partner", "add", "beta", "--api-key", "beta-key-0001")
    assert "beta-key-0001" not in json.dumps(given)  # a key given is not echoed back
    assert api_status(gw, "beta-key-0001") == 200
    assert run_json(gw, "partner", "remove", "beta")["removed"] is True

    removed = gw.cli("partner", "remove", "acme")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith("partner acme removed; its API key no longer works")
    assert api_status(gw, key) == 401
    assert "acme" not in {row["name"] for row in run_json(gw, "partner", "list")}


@pytest.fixture
def gateway_settings() -> GatewaySettings:
    return GatewaySettings(ipv6=False)


async def test_gateway_without_a_config_file_refuses_edits(gw: GatewayUnderTest) -> None:
    assert gw.config is not None  # started in-process with no file behind it
    done = await trio.run_process(
        [*CLI, "--socket", str(gw.config.control_socket_path), *ADD_X],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert "runs on the embedded default config, which has no file" in stderr
    assert "start the gateway with `edgegw run --config FILE`" in stderr


def register_with(expires: str) -> Callable[[Request | Response], bool]:
    def matches(message: Request | Response) -> bool:
        return (
            isinstance(message, Request)
            and message.method == "REGISTER"
            and "Authorization" in message.headers
            and message.headers.get("Expires") == expires
        )

    return matches


async def test_trunk_added_with_register_registers_and_remove_deregisters(
    edited_gw: GatewayProcess,
) -> None:
    """`trunk add --register` is applied by the reload at once: the REGISTER reaches the
    carrier (a UDP socket of the test that challenges it and checks the digest), and
    `trunk remove` sends Expires: 0 on the same Call-ID."""
    gw = edited_gw
    digest = DigestServer("carrier.test", b"carrier-secret-0123456789")
    with contextlib.closing(await UdpPeer.open(gw.sip, host="127.0.0.1")) as carrier:
        port = str(carrier.local[1])
        added = run_json(
            gw, "trunk", "add", "reg1", "--host", "127.0.0.1", "--port", port,
            "--register", "--username", "u", "--password", "p",
        )  # fmt: skip
        assert added["changed"] == ["trunks"] and added["trunk"]["register"] is True
        first = await carrier.expect_request("REGISTER")
        assert first.headers.get("To") == "<sip:u@127.0.0.1>"
        challenge = make_response(first, 401, to_tag="carrier")
        for value in digest.challenge(trio.current_time()):
            challenge.headers.add("WWW-Authenticate", value)
        await carrier.send(challenge, gw.sip)
        answered = await carrier.expect(register_with("3600"), "REGISTER with credentials")
        assert isinstance(answered, Request) and answered.call_id == first.call_id
        authorization = answered.headers.get("Authorization") or ""
        proof = digest.verify("REGISTER", authorization, {"u": "p"}.get, trio.current_time())
        assert proof.ok, proof.reason
        ok = make_response(answered, 200, to_tag="carrier")
        ok.headers.add("Expires", "3600")
        await carrier.send(ok, gw.sip)
        with trio.fail_after(5):
            while True:
                rows = {row["name"]: row for row in run_json(gw, "trunks")}
                if rows["reg1"]["registration"] == "registered":
                    break
                await trio.sleep(0.05)
        status = run_json(gw, "status")
        mine = [r for r in status["trunk_registrations"] if r["name"] == "reg1"]
        assert mine[0]["registered"] is True and mine[0]["expires"] == 3600
        assert mine[0]["registrar"] == f"udp:127.0.0.1:{port}"

        removed = gw.cli("trunk", "remove", "reg1")
        assert removed.returncode == 0, removed.stderr
        gone = await carrier.expect(register_with("0"), "REGISTER with Expires: 0")
        assert isinstance(gone, Request) and gone.call_id == first.call_id
        await carrier.send(make_response(gone, 200, to_tag="carrier"), gw.sip)
        assert "reg1" not in {row["name"] for row in run_json(gw, "trunks")}
        status = run_json(gw, "status")
        assert "reg1" not in {row["name"] for row in status["trunk_registrations"]}
