"""Control socket: wire format, the Trio server and the blocking client over a real Unix socket."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from gateway.control.client import ControlClient, ControlError, GatewayNotRunning
from gateway.control.protocol import (
    MAX_LINE,
    MAX_RESPONSE,
    ControlRequest,
    ControlResponse,
    LineBuffer,
    ProtocolError,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from gateway.control.server import ControlServer, ControlSocketInUse

# --- wire format -------------------------------------------------------------------------


def test_request_round_trip() -> None:
    line = encode_request(ControlRequest(cmd="cdr", args={"limit": 5, "since": None}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_request(line) == ControlRequest(cmd="cdr", args={"limit": 5, "since": None})


def test_request_args_default_to_empty() -> None:
    request = decode_request(b'{"cmd": "status"}')
    assert request.cmd == "status"
    assert request.args == {}


def test_response_wire_shapes() -> None:
    assert encode_response(ControlResponse(ok=True, result=[1, 2])) == (
        b'{"ok":true,"result":[1,2]}\n'
    )
    assert encode_response(ControlResponse(ok=True)) == b'{"ok":true,"result":null}\n'
    assert encode_response(ControlResponse(ok=False, error="nope")) == (
        b'{"ok":false,"error":"nope"}\n'
    )


def test_response_encodes_structs() -> None:
    class Row(msgspec.Struct):
        id: str
        duration: float

    line = encode_response(ControlResponse(ok=True, result=[Row("c1", 1.5)]))
    assert decode_response(line).result == [{"id": "c1", "duration": 1.5}]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "malformed request"),
        (b"[1, 2]", "Expected `object`"),
        (b'{"args": {}}', "missing required field `cmd`"),
        (b'{"cmd": 7}', "Expected `str`"),
        (b'{"cmd": "status", "args": []}', "$.args"),
        (b'{"cmd": "status", "extra": 1}', "unknown field `extra`"),
    ],
)
def test_malformed_requests_are_named(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match="malformed request") as info:
        decode_request(line)
    assert reason in str(info.value)


def test_error_response_without_message_is_malformed() -> None:
    with pytest.raises(ProtocolError, match="no error"):
        decode_response(b'{"ok": false}')


def test_unencodable_result_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not JSON-encodable"):
        encode_response(ControlResponse(ok=True, result=object()))


def test_oversized_message_is_refused() -> None:
    with pytest.raises(ProtocolError, match="too large"):
        encode_response(ControlResponse(ok=True, result="x" * MAX_RESPONSE))


def test_line_buffer_splits_chunks() -> None:
    lines = LineBuffer()
    lines.feed(b'{"a"')
    assert lines.next_line() is None
    lines.feed(b":1}\nsecond\nthi")
    assert lines.next_line() == b'{"a":1}'
    assert lines.next_line() == b"second"
    assert lines.next_line() is None
    assert lines.pending == 3


def test_line_buffer_reports_long_line_once_and_recovers() -> None:
    lines = LineBuffer(max_line=8)
    lines.feed(b"0123456789")
    with pytest.raises(ProtocolError, match="line too long"):
        lines.next_line()
    lines.feed(b"more junk without end")
    assert lines.next_line() is None
    assert lines.pending == 0  # the junk is not kept
    lines.feed(b"tail\nok\n")
    assert lines.next_line() == b"ok"


def test_line_buffer_long_line_in_one_chunk() -> None:
    lines = LineBuffer(max_line=4)
    lines.feed(b"toolong\nfine\n")
    with pytest.raises(ProtocolError):
        lines.next_line()
    assert lines.next_line() == b"fine"


# --- server and client over a real socket -------------------------------------------------


async def _status(args: dict[str, Any]) -> Any:
    return {"version": "test", "args": args}


async def _boom(args: dict[str, Any]) -> Any:
    raise RuntimeError("database is locked")


async def _silent_failure(args: dict[str, Any]) -> Any:
    raise KeyError()


async def _unencodable(args: dict[str, Any]) -> Any:
    return object()


async def _hang(args: dict[str, Any]) -> Any:
    await trio.sleep_forever()


HANDLERS = {
    "status": _status,
    "boom": _boom,
    "silent": _silent_failure,
    "unencodable": _unencodable,
    "hang": _hang,
}


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "control.sock"


@pytest.fixture
async def server(nursery: trio.Nursery, sock_path: Path) -> AsyncIterator[ControlServer]:
    srv = ControlServer(sock_path, HANDLERS)
    await nursery.start(srv.serve)
    yield srv


async def call(path: Path, cmd: str, *, timeout: float = 5.0, **args: Any) -> Any:
    client = ControlClient(path, timeout=timeout)
    return await trio.to_thread.run_sync(partial(client.call, cmd, **args))


async def exchange(path: Path, data: bytes, answers: int) -> list[dict[str, Any]]:
    """Send raw bytes on one connection and read ``answers`` response lines."""
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(data)
        lines = LineBuffer()
        out: list[dict[str, Any]] = []
        with trio.fail_after(5):
            while len(out) < answers:
                line = lines.next_line()
                if line is None:
                    chunk = await stream.receive_some(65536)
                    assert chunk, "server closed the connection early"
                    lines.feed(chunk)
                    continue
                out.append(msgspec.json.decode(line))
    return out


async def test_dispatch_to_handler_with_args(server: ControlServer, sock_path: Path) -> None:
    result = await call(sock_path, "status", limit=3, since=None)
    assert result == {"version": "test", "args": {"limit": 3, "since": None}}


async def test_socket_is_private(server: ControlServer, sock_path: Path) -> None:
    info = os.stat(sock_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    # No temporary bind names are left behind next to it.
    assert sorted(p.name for p in sock_path.parent.iterdir()) == ["control.sock"]


async def test_unknown_command(server: ControlServer, sock_path: Path) -> None:
    with pytest.raises(ControlError, match=r"^unknown command: reboot$"):
        await call(sock_path, "reboot")


async def test_handler_error_is_reported_and_server_keeps_serving(
    server: ControlServer, sock_path: Path
) -> None:
    with pytest.raises(ControlError, match=r"^database is locked$"):
        await call(sock_path, "boom")
    with pytest.raises(ControlError, match=r"^KeyError$"):
        await call(sock_path, "silent")
    assert (await call(sock_path, "status"))["version"] == "test"


async def test_unencodable_result_gets_an_error(server: ControlServer, sock_path: Path) -> None:
    with pytest.raises(ControlError, match="not JSON-encodable"):
        await call(sock_path, "unencodable")


async def test_bad_lines_get_errors_and_connection_is_kept(
    server: ControlServer, sock_path: Path
) -> None:
    data = (
        b'{"cmd": "status"}\n'
        b"this is not json\n"
        b"\n"  # blank lines are skipped, not answered
        b'{"cmd": "boom"}\n'
        b'{"cmd": "nope"}\n'
        + b"x" * (MAX_LINE + 10)
        + b"\n"
        + b'{"cmd": "status", "args": {"n": 2}}\n'
    )
    answers = await exchange(sock_path, data, 6)
    assert answers[0] == {"ok": True, "result": {"version": "test", "args": {}}}
    assert answers[1]["ok"] is False
    assert answers[1]["error"].startswith("malformed request: ")
    assert answers[2] == {"ok": False, "error": "database is locked"}
    assert answers[3] == {"ok": False, "error": "unknown command: nope"}
    assert answers[4] == {"ok": False, "error": f"line too long (max {MAX_LINE} bytes)"}
    assert answers[5] == {"ok": True, "result": {"version": "test", "args": {"n": 2}}}


async def test_client_hangup_does_not_stop_server(server: ControlServer, sock_path: Path) -> None:
    stream = await trio.open_unix_socket(str(sock_path))
    await stream.send_all(b'{"cmd": "sta')
    await stream.aclose()
    assert (await call(sock_path, "status"))["version"] == "test"


async def test_socket_removed_on_exit(sock_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(sock_path, HANDLERS).serve)
        assert sock_path.exists()
        nursery.cancel_scope.cancel()
    assert not sock_path.exists()
    with pytest.raises(GatewayNotRunning):
        await call(sock_path, "status")


def _make_stale_socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: a gateway killed with -9


async def test_stale_socket_is_replaced(nursery: trio.Nursery, sock_path: Path) -> None:
    _make_stale_socket(sock_path)
    with pytest.raises(GatewayNotRunning):
        await call(sock_path, "status")
    await nursery.start(ControlServer(sock_path, HANDLERS).serve)
    assert (await call(sock_path, "status"))["version"] == "test"


async def test_live_socket_is_not_taken_over(
    nursery: trio.Nursery, server: ControlServer, sock_path: Path
) -> None:
    second = ControlServer(sock_path, {})
    with pytest.raises(ControlSocketInUse, match="in use by a running gateway") as info:
        await nursery.start(second.serve)
    assert str(sock_path) in str(info.value)
    assert info.value.path == sock_path
    assert isinstance(info.value, OSError)  # start-up reports it like a port in use
    # The first gateway's socket is untouched and still answers.
    assert (await call(sock_path, "status"))["version"] == "test"


async def test_non_socket_file_is_not_replaced(sock_path: Path) -> None:
    sock_path.parent.mkdir(parents=True)
    sock_path.write_text("precious")
    with pytest.raises(FileExistsError, match="not a socket"):
        await ControlServer(sock_path, HANDLERS).serve()
    assert sock_path.read_text() == "precious"


async def test_too_long_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / ("d" * 120) / "control.sock"
    with pytest.raises(OSError, match="too long for a Unix socket") as info:
        await ControlServer(path, HANDLERS).serve()
    assert info.value.filename == str(path)


def test_client_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "nothing.sock"
    with pytest.raises(GatewayNotRunning) as info:
        ControlClient(path).call("status")
    assert info.value.path == path
    assert str(path) in str(info.value)


def test_client_refused_by_plain_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(GatewayNotRunning):
        ControlClient(path).call("status")


def test_client_refuses_unencodable_args(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="not JSON-encodable"):
        ControlClient(tmp_path / "x.sock").call("status", when=object())


async def test_client_times_out(server: ControlServer, sock_path: Path) -> None:
    with pytest.raises(ControlError, match=r"did not answer 'hang' within 0\.3 s"):
        await call(sock_path, "hang", timeout=0.3)


async def _fake_gateway(nursery: trio.Nursery, path: Path, reply: bytes) -> None:
    """A listener that answers every connection with ``reply`` and hangs up."""
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(str(path))
    listener.listen(8)

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(reply)

    nursery.start_soon(trio.serve_listeners, answer, [trio.SocketListener(listener)])


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"garbage\n", "malformed response"),
        (b"", "closed the control connection without answering"),
        (b'{"ok": true, "result": 1}', "closed the control connection without answering"),
    ],
)
async def test_client_reports_broken_gateway(
    nursery: trio.Nursery, tmp_path: Path, reply: bytes, message: str
) -> None:
    path = tmp_path / "fake.sock"
    await _fake_gateway(nursery, path, reply)
    with pytest.raises(ControlError, match=message):
        await call(path, "status")


async def test_client_skips_blank_lines(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "fake.sock"
    await _fake_gateway(nursery, path, b'\n{"ok": true, "result": [1]}\n')
    assert await call(path, "status") == [1]
