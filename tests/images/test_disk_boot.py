"""Boot tests of the flashable disk images `dist/edgegw-ARCH.img` under qemu with UEFI: x86_64
on q35 with OVMF, aarch64 on virt (Cortex-A72, emulated) with AAVMF; each test runs per arch.

Run by `./justw image-test` after `./justw image-disk ARCH`, never by `./justw test`. Each
test boots a sparse copy of the image (dist/ itself is never booted), grown by DISK_GROWTH so
that the first boot has room to grow the data partition (systemd-repart, x-systemd.growfs),
with two options added to its loader entry on the copy's ESP: the journal forwarded to the
serial console, and `edgegw-console-report.service` (shipped, not enabled) pulled in, which
prints `edgegw net show --json`, `edgegw status --json` and more as EDGEGW-REPORT lines.

The test sends SIP OPTIONS over UDP to the forwarded port until the gateway answers, then
reads the serial log: systemd saw the gateway's READY (a Type=notify unit is "Started" only
then), time sync and the network unit ran, and the box came up either
* unprovisioned, with the hint, refusing a key file with no key that was dropped into the
  ESP's provision/ folder (left there with ERRORS.txt), and with no sshd; or
* provisioned before its first boot by `images/disk/provision.py` (`./justw
  image-provision`) with a config and an SSH key: both moved from the ESP to the data
  partition, the config's [network] section applied (a VLAN 100 sub-interface of the virtio
  NIC with its address: the build machines' kernel has no 8021q, so VLANs are checked here,
  in the booted image), and the engineer's key lets `ssh root@BOX edgegw status` in through
  the forwarded port while a password login is refused; or
* (x86_64) provisioned with a config whose gateway never gets healthy: with no other slot
  to fall back to, the health gate keeps the boot instead of rebooting, and the engineer
  gets in over SSH and sees why.

Measured on the 2-core build machine, TCG (its nested KVM fails at the first instruction):
x86_64 about 45 s from starting qemu to the first SIP answer, 70 s to the report; aarch64
(emulated Cortex-A72, MTTCG on 2 vCPUs) 55-62 s to the first answer, 100 s with the other
core busy. The timeouts leave room for a machine several times slower.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from images.disk import build, provision
from tests.images.qemu import SIP_PORT, SSH_PORT, BootedMachine, boot, missing
from tests.integration.netns import Topology, root_skip_reason
from tests.integration.peers import sip_ping

DISK_GROWTH = 256 * build.MIB
# Per arch: seconds from starting qemu to the first SIP answer, and from there to the end
# of the console report.
BOOT_TIMEOUT = {"x86_64": 600.0, "aarch64": 1200.0}
REPORT_TIMEOUT = {"x86_64": 300.0, "aarch64": 600.0}
TEST_OPTIONS = "systemd.journald.forward_to_console=1 systemd.wants=edgegw-console-report.service"
ENTRY = f"edgegw-a+{build.TRIES}.conf"
# The virtio NIC sits in PCI slot 6 (tests/images/qemu.py), so udev names it enp0s6 (on
# both machine types: bus 0 of the first PCI segment).
NIC = "enp0s6"
VLAN_ADDRESS = "198.51.100.10/24"

# SIP on every address: what the forwarded port reaches. The tests' configs add to it.
BOX_CONFIG = """\
[general]
var_dir = "/var/lib/edgegw"

[[sip.listen]]
transport = "udp"
host = "0.0.0.0"
port = 5060
"""
VLAN_CONFIG = f"""{BOX_CONFIG}
[[network.interfaces]]
role = "carrier"
name = "{NIC}"
vlan = 100
addresses = ["{VLAN_ADDRESS}"]
"""
# A config the box takes but whose gateway never gets healthy: one UDP listener on an
# address the box does not have (ip_nonlocal_bind lets it bind; the health check's OPTIONS
# to it leave by the default route and are never answered).
UNREACHABLE_HOST, UNREACHABLE_PORT = "198.51.100.99", 5070
UNREACHABLE_LISTENER = f"{UNREACHABLE_HOST}:{UNREACHABLE_PORT}"
UNHEALTHY_CONFIG = f"""{BOX_CONFIG}
[[sip.listen]]
transport = "udp"
host = "{UNREACHABLE_HOST}"
port = {UNREACHABLE_PORT}
"""
KEPT = "no other slot to fall back to: this boot of slot a is kept"


def _skip_reason() -> str | None:
    reason = root_skip_reason()
    if reason is not None:
        return f"{reason} (qemu's network runs in a namespace of its own)"
    return None


def _arch_param(arch: str) -> Any:
    absent = missing(arch)
    reason = f"{absent}: ./justw image-test installs them"
    return pytest.param(arch, id=arch, marks=pytest.mark.skipif(absent is not None, reason=reason))


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.fixture(params=[_arch_param(arch) for arch in build.ARCHES])
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass(frozen=True)
class BootRecord:
    """What one boot showed: the SIP answer, when it came, the serial log, qemu's exit."""

    arch: str
    answer: str
    seconds_to_answer: float
    serial: str
    exit_code: int | None
    accel: str
    entries: list[str]
    # What `during` (run once the console report is out, before power-off) gave back.
    found: dict[str, str] = field(default_factory=dict)


def _copy_image(arch: str, dest: Path) -> Path:
    image = build.DIST / f"edgegw-{arch}.img"
    if not image.is_file():
        pytest.fail(f"{image} is missing: build it with ./justw image-disk {arch}")
    subprocess.run(["cp", "--sparse=always", str(image), str(dest)], check=True)
    with dest.open("r+b") as f:
        f.truncate(dest.stat().st_size + DISK_GROWTH)
    _add_options(dest, TEST_OPTIONS)
    return dest


def _add_options(image: Path, options: str) -> None:
    """Append kernel options to slot A's loader entry on the image's ESP (mtools)."""
    esp = build.esp_path(image)
    name = f"::/loader/entries/{ENTRY}"
    entry = subprocess.run(
        ["mtype", "-i", esp, name], capture_output=True, text=True, check=True
    ).stdout
    lines = [
        f"{line} {options}" if line.startswith("options ") else line for line in entry.splitlines()
    ]
    local = image.with_name(ENTRY)
    local.write_text("\n".join(lines) + "\n")
    subprocess.run(["mcopy", "-o", "-i", esp, str(local), name], check=True)
    local.unlink()


def _entries(image: Path) -> list[str]:
    listing = subprocess.run(
        ["mdir", "-b", "-i", build.esp_path(image), "::/loader/entries"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(Path(line.strip()).name for line in listing.splitlines() if line.strip())


def _wait_for_options(machine: BootedMachine, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not machine.alive():
            raise AssertionError(f"qemu ended early:\n{machine.serial()[-4000:]}")
        with machine.namespace.entered():
            answer = sip_ping("127.0.0.1", SIP_PORT, 1.0)
        if answer is not None:
            return answer
        time.sleep(1.0)
    raise AssertionError(
        f"no answer to SIP OPTIONS within {timeout:g} s:\n{machine.serial()[-4000:]}"
    )


During = Callable[[BootedMachine], dict[str, str]]


def _boot(arch: str, image: Path, workdir: Path, during: During | None = None) -> BootRecord:
    limit = BOOT_TIMEOUT[arch] + REPORT_TIMEOUT[arch] + 600
    with Topology() as topology:
        namespace = topology.namespace("vm")
        with boot(image, workdir, namespace, limit=limit, arch=arch) as vm:
            answer = _wait_for_options(vm, BOOT_TIMEOUT[arch])
            seconds = time.monotonic() - vm.started
            try:
                vm.wait_for_serial("EDGEGW-REPORT failed", REPORT_TIMEOUT[arch])
            except TimeoutError as exc:
                raise AssertionError(f"{exc}:\n{vm.serial()[-4000:]}") from exc
            found = during(vm) if during is not None else {}
            exit_code = vm.stop()
            serial = vm.serial()
    print(f"\n{arch}: first SIP answer {seconds:.0f} s after qemu started ({vm.accel})")
    entries = _entries(image)
    return BootRecord(arch, answer, seconds, serial, exit_code, vm.accel, entries, found)


def _key_pair(workdir: Path) -> Path:
    """A field engineer's key: the private half for ssh, `.pub` for the box."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = workdir / "engineer"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (workdir / "engineer.pub").write_bytes(public + b" engineer@laptop\n")
    return private


def _provisioned_copy(arch: str, workdir: Path, config_text: str) -> tuple[Path, Path]:
    """A copy of the image provisioned as before flashing (images/disk/provision.py, what
    `./justw image-provision` runs) with `config_text` and a new key; the copy and the
    private key."""
    image = _copy_image(arch, workdir / "disk.img")
    config = workdir / "edgegw.toml"
    config.write_text(config_text)
    key = _key_pair(workdir)
    args = [str(image), "--config", str(config), "--authorized-keys", f"{key}.pub"]
    assert provision.main(args) == 0
    return image, key


def _ssh(
    vm: BootedMachine, key: Path, command: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """`ssh root@BOX COMMAND` through the forwarded port, as an engineer would."""
    args = [
        "ssh",
        *("-p", str(SSH_PORT), "-i", str(key)),
        *("-o", "BatchMode=yes", "-o", "ConnectTimeout=60"),
        *("-o", "StrictHostKeyChecking=accept-new"),
        *("-o", f"UserKnownHostsFile={key.parent / 'known_hosts'}"),
        *options,
        "root@127.0.0.1",
        command,
    ]
    return vm.namespace.run(args, timeout=300)


def _ssh_session(key: Path) -> During:
    def session(vm: BootedMachine) -> dict[str, str]:
        status = _ssh(vm, key, "edgegw status --json")
        files = _ssh(
            vm, key, "stat -c '%U %a %n' /var/lib/edgegw/edgegw.toml /data/ssh/authorized_keys"
        )
        password = _ssh(
            vm, key, "true", "-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=yes"
        )
        fingerprint = subprocess.run(
            ["ssh-keygen", "-l", "-f", str(key.parent / "known_hosts")],
            capture_output=True,
            text=True,
            check=False,
        )
        # Exit code, a space, then stdout (stderr, with ssh's own notes, when it failed).
        return {
            name: f"{done.returncode} {done.stderr if done.returncode else done.stdout}"
            for name, done in (("status", status), ("files", files), ("password", password))
        } | {"host-key": fingerprint.stdout}

    return session


def _esp_listing(image: Path, folder: str) -> list[str]:
    """The names in an ESP folder, sorted; [] when the folder is not there."""
    done = subprocess.run(
        ["mdir", "-b", "-i", build.esp_path(image), f"::/{folder}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return sorted(Path(line).name for line in done.stdout.split()) if done.returncode == 0 else []


_REPORT = re.compile(r"EDGEGW-REPORT (?P<name>\S+) rc=(?P<rc>\d+) ?(?P<text>.*)$", re.M)


def reports(serial: str) -> dict[str, tuple[int, str]]:
    """The console report's lines by name: (exit code, text); the last of each wins."""
    return {m["name"]: (int(m["rc"]), m["text"].strip()) for m in _REPORT.finditer(serial)}


def report_json(serial: str, name: str) -> Any:
    rc, text = reports(serial)[name]
    assert rc == 0, f"{name} failed ({rc}): {text}"
    return json.loads(text)


def _assert_common(record: BootRecord) -> None:
    """What every boot shows, provisioned or not."""
    serial = record.serial
    assert record.answer.startswith("SIP/2.0 200"), record.answer
    # The image's own kernel flavour booted (the banner names it: 6.1.0-N-cloud-arm64).
    flavour = build.ARCHES[record.arch].kernel_package.removeprefix("linux-image")
    assert re.search(rf"Linux version \S+{flavour} ", serial), serial[:4000]
    # Type=notify: "Started" only once the gateway sent READY=1.
    assert "Started edgegw.service - edgegw edge SIP/RTP media gateway" in serial
    assert "edgegw ready" in serial
    assert "Started systemd-timesyncd.service" in serial
    lines = reports(serial)
    assert lines["failed"] == (0, ""), f"failed units: {lines['failed']}"
    unit = lines["gateway-unit"][1]
    assert "NRestarts=0" in unit and "StatusText=serving" in unit, unit
    # The watchdog is fed (the timestamp of the last WATCHDOG=1 is set).
    assert "WatchdogTimestampMonotonic=0" not in unit, unit
    mounts = lines["mounts"][1]
    assert mounts.startswith("/ /dev/vda2 squashfs ro,"), mounts
    assert "/var/lib/edgegw /dev/vda4[/edgegw] ext4 rw" in mounts, mounts
    assert lines["clock-file"][0] == 0, lines["clock-file"]
    # systemd-repart grew the data partition into the added space, growfs its ext4.
    size_kib = int(lines["data-size"][1].split()[2])
    assert size_kib > (build.DATA_MIB * build.MIB + DISK_GROWTH // 2) // 1024, lines["data-size"]
    status = report_json(serial, "status")
    assert not status["disk_low"], status
    # No demo accounts: the embedded loopback demo is never what the box runs.
    assert report_json(serial, "subscribers") == []
    assert report_json(serial, "partners") == []
    assert status["trunks"] == []
    # Boot counting: systemd-boot took one try off slot A's entry, the boot was blessed.
    counting = lines["boot-counting"][1]
    assert "Marked boot as 'good'. (Boot attempt counter is at 1.)" in counting, counting
    assert record.entries == ["edgegw-a.conf"], record.entries
    assert record.exit_code == 0, f"qemu did not power off cleanly: {record.exit_code}"


def test_unprovisioned_boot_answers_sip_and_says_how_to_provision(
    arch: str, tmp_path: Path
) -> None:
    workdir = tmp_path
    image = _copy_image(arch, workdir / "disk.img")
    # What a laptop could drop into the ESP without ./justw image-provision's checks: a key
    # file with no key. The box refuses it, says why, and stays without SSH.
    bad_keys = workdir / "authorized_keys"
    bad_keys.write_text("paste your key here\n")
    esp = build.esp_path(image)
    subprocess.run(["mmd", "-i", esp, "::/provision"], check=True)
    subprocess.run(["mcopy", "-i", esp, str(bad_keys), "::/provision/"], check=True)
    record = _boot(arch, image, workdir)
    _assert_common(record)
    serial = record.serial
    assert "EDGEGW-HINT edgegw is NOT PROVISIONED" in serial
    assert "EDGEGW-HINT       ./justw image-provision dist/edgegw-ARCH.img" in serial
    assert "edgegw: not provisioned: no /var/lib/edgegw/edgegw.toml" in serial
    assert "skipped because of an unmet condition check (ConditionPathExists=/var/lib/edgegw" in (
        serial
    )
    assert "EDGEGW-PROVISION authorized_keys refused: no public key in it" in serial
    assert "(ConditionPathExists=/data/ssh/authorized_keys)" in serial, "sshd started"
    assert _esp_listing(image, "provision") == ["ERRORS.txt", "authorized_keys"]
    assert reports(serial)["units"][1] == "active inactive active active"
    network = report_json(serial, "net-show")
    assert network["managed"] is False
    assert not network["firewall"]["present"]


def test_provisioned_box_applies_its_vlan_and_lets_its_engineer_in(
    arch: str, tmp_path: Path
) -> None:
    """Provisioned the way a field engineer does it before flashing (./justw
    image-provision: a config with a VLAN 100 carrier interface and root's SSH key), then
    reached over SSH with that key; passwords are refused."""
    workdir = tmp_path
    image, key = _provisioned_copy(arch, workdir, VLAN_CONFIG)
    assert _esp_listing(image, "provision") == ["authorized_keys", "edgegw.toml"]
    record = _boot(arch, image, workdir, during=_ssh_session(key))
    _assert_common(record)
    serial = record.serial
    assert "EDGEGW-HINT" not in serial
    assert "EDGEGW-PROVISION config installed: /var/lib/edgegw/edgegw.toml" in serial
    assert "EDGEGW-PROVISION SSH key for root: 256 SHA256:" in serial
    # Moved to the data partition: the config (it holds secrets) is gone from the ESP.
    assert _esp_listing(image, "provision") == []
    assert "Finished edgegw-net.service - edgegw network set-up and firewall" in serial
    assert f"SIP OPTIONS answered: carrier {VLAN_ADDRESS.split('/')[0]}:5060" in serial
    assert reports(serial)["units"][1] == "active active active active"
    network = report_json(serial, "net-show")
    carrier = network["roles"]["carrier"]
    assert carrier["interface"] == f"{NIC}.100"
    assert carrier["present"] and carrier["up"], carrier
    assert VLAN_ADDRESS in carrier["addresses"], carrier
    assert network["firewall"]["present"]
    found = record.found
    rc, _, text = found["status"].partition(" ")
    assert rc == "0", found["status"]
    assert json.loads(text)["trunks"] == [], text
    assert found["files"] == (
        "0 edgegw 640 /var/lib/edgegw/edgegw.toml\nroot 600 /data/ssh/authorized_keys\n"
    ), found["files"]
    assert found["password"].startswith("255 "), found["password"]
    assert "Permission denied (publickey)" in found["password"], found["password"]
    # The host key the client was shown is the one the box printed on its console.
    fingerprint = found["host-key"].split()[1]
    assert fingerprint.startswith("SHA256:"), found["host-key"]
    assert re.search(rf"EDGEGW-SSH host key \d+ {re.escape(fingerprint)} ", serial), serial[-3000:]
    assert "EDGEGW-SSH sshd on port 22" in serial


def _engineer_checks(key: Path) -> During:
    def checks(vm: BootedMachine) -> dict[str, str]:
        health = _ssh(vm, key, "edgegw health --timeout 5 --config /var/lib/edgegw/edgegw.toml")
        state = _ssh(vm, key, "systemctl is-system-running")
        return {
            "health": f"{health.returncode} {health.stdout}{health.stderr}",
            "state": f"{state.returncode} {state.stdout.strip()}",
        }

    return checks


def test_an_unhealthy_fresh_box_stays_up_for_its_engineer(tmp_path: Path) -> None:
    """A freshly flashed box has no other slot to fall back to: when its gateway is not
    healthy within the 2 minutes, the health gate keeps the boot (rebooting would only come
    back to the same slot, every few minutes, out of reach) and the engineer gets in over
    SSH to see why. x86_64 only: the decision is the same Python on both arches, and the
    aarch64 upgrade journey (tests/images/test_upgrade.py) already boots that code."""
    arch = "x86_64"
    absent = missing(arch)
    if absent is not None:
        pytest.skip(f"{absent}: ./justw image-test installs them")
    workdir = tmp_path
    image, key = _provisioned_copy(arch, workdir, UNHEALTHY_CONFIG)
    record = _boot(arch, image, workdir, during=_engineer_checks(key))
    _assert_common(record)  # blessed, powered off cleanly, no failed unit
    serial = record.serial
    unhealthy = (
        rf"health: unhealthy after 12\d s: no answer to SIP OPTIONS from {UNREACHABLE_LISTENER}"
    )
    assert re.search(unhealthy, serial), serial[-4000:]
    assert KEPT in serial
    assert "reboot: Restarting system" not in serial
    health = record.found["health"]
    assert health.startswith("1 "), health
    assert f"no answer to SIP OPTIONS from {UNREACHABLE_LISTENER}" in health, health
    assert record.found["state"] == "0 running", record.found
