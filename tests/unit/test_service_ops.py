"""The pieces of the service helpers that need no running gateway.

sd_notify: addresses (paths and abstract names), datagram text, WATCHDOG_USEC/WATCHDOG_PID,
and real datagrams on a socket of the test's own. Reload: which keys changed and which
changes are refused as needing a restart (with the key named). DiskMonitor: a real
filesystem against a reserve above and below its free space, looked at once per interval.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from gateway.config import (
    Config,
    LimitsConfig,
    ListenConfig,
    SipConfig,
    TrunkConfig,
    default_config,
)
from gateway.control.disk import DiskMonitor
from gateway.control.reload import ReloadRefused, changed_keys, check_reload
from gateway.control.sd_notify import (
    Notifier,
    NotifyError,
    notify_address,
    notify_message,
    watchdog_interval,
)

# ---- sd_notify ------------------------------------------------------------------------


def test_notify_addresses() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abc") == b"\0abc"
    for bad, reason in (("", "absolute path"), ("run/x", "absolute path"), ("@", "after '@'")):
        with pytest.raises(NotifyError, match=reason):
            notify_address(bad)
    with pytest.raises(NotifyError, match="more than a socket address holds"):
        notify_address("/" + "x" * 200)


def test_notify_messages() -> None:
    assert notify_message({"READY": "1", "STATUS": "serving"}) == b"READY=1\nSTATUS=serving\n"
    with pytest.raises(NotifyError, match="A-Z"):
        notify_message({"ready": "1"})
    with pytest.raises(NotifyError, match="one line"):
        notify_message({"STATUS": "a\nREADY=1"})  # no smuggled second field


def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid() -> None:
    assert watchdog_interval({}, 10) is None
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}, 10) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "10"}, 10) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "11"}, 10) is None
    for bad in ("ten", "0", "-5"):
        with pytest.raises(NotifyError, match="WATCHDOG_USEC"):
            watchdog_interval({"WATCHDOG_USEC": bad}, 10)


def test_notifier_sends_datagrams_and_survives_a_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(1.0)
        env = {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"}
        notifier = Notifier.from_environment(env, pid=1)
        assert notifier.enabled and notifier.watchdog_interval == 1.0
        assert notifier.ready("serving") and notifier.watchdog() and notifier.reloading()
        assert receiver.recv(512) == b"READY=1\nSTATUS=serving\n"
        assert receiver.recv(512) == b"WATCHDOG=1\n"
        reloading = receiver.recv(512).decode()
        assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")
    path.unlink()
    assert notifier.stopping() is False  # nobody listens any more: counted, not raised
    assert (notifier.sent, notifier.failed) == (3, 1)
    notifier.close()
    assert not Notifier.from_environment({}, pid=1).enabled
    # A bad NOTIFY_SOCKET is logged and ignored: the gateway runs without notifications.
    assert not Notifier.from_environment({"NOTIFY_SOCKET": "relative"}, pid=1).enabled


# ---- reload --------------------------------------------------------------------------


def _with(config: Config, **changes: object) -> Config:
    return Config(**{**{f: getattr(config, f) for f in config.__struct_fields__}, **changes})


def test_changed_keys_name_the_leaf_or_the_list() -> None:
    old = default_config()
    assert changed_keys(old, old) == []
    new = _with(old, limits=LimitsConfig(max_calls=5, cps_per_account=1000))
    assert changed_keys(old, new) == ["limits.max_calls"]
    extra = TrunkConfig(name="second", host="127.0.0.1", port=5090)
    assert changed_keys(old, _with(old, trunks=[*old.trunks, extra])) == ["trunks"]
    assert check_reload(old, new, "f.toml") == ["limits.max_calls"]


def test_restart_only_changes_are_refused_with_the_key() -> None:
    old = default_config()
    moved = SipConfig(listen=[ListenConfig(transport="udp", host="127.0.0.1", port=5070)])
    with pytest.raises(ReloadRefused, match=r"f.toml: sip.listen: changes only with a restart"):
        check_reload(old, _with(old, sip=moved), "f.toml")
    registering = TrunkConfig(
        name="reg", host="127.0.0.1", register=True, username="u", password="p"
    )
    # Outbound registrations change live (gateway.calls.trunk_registration.update).
    added = _with(old, trunks=[*old.trunks, registering])
    assert check_reload(old, added, "f.toml") == ["trunks"]
    quiet = _with(old, limits=LimitsConfig(max_cpu=0, max_loop_lag=0))
    with pytest.raises(ReloadRefused, match=r"limits\.max_cpu: load checks"):
        check_reload(quiet, old, "f.toml")


# ---- disk ----------------------------------------------------------------------------


def test_disk_low_against_the_real_free_space(tmp_path: Path) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    now = [0.0]
    monitor = DiskMonitor(tmp_path, free_mb + 10_000, clock=lambda: now[0])
    assert monitor.disk_low() is True
    assert monitor.snapshot()["disk_free_mb"] == pytest.approx(free_mb, abs=64)
    monitor.reserve_mb = 0
    assert monitor.disk_low() is True  # looked at once per interval
    now[0] = 1.0
    assert monitor.disk_low() is False
    monitor.set_reserve(free_mb + 10_000)  # a reload looks again at once
    assert monitor.disk_low() is True
    gone = DiskMonitor(tmp_path / "missing", 0)
    assert gone.disk_low() is True  # a disk that cannot be asked counts as low
