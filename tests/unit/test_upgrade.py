"""`edgegw upgrade` without a box: bundles made by the real builder (images/update/build.py)
and signed with real ed25519 keys, applied to a box made of plain files (partitions by GPT
name, a mounted ESP, /proc/cmdline, the image's public key). Each refusal names what was
wrong and leaves every partition and the ESP as they were; the health check's wait is
driven with a fake clock."""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import load_config
from gateway.control import upgrade
from gateway.control.cli import cli
from gateway.net.check import SipTarget
from gateway.sip.message import Headers, Response
from images.update.build import public_key_pem, write_bundle

SLOT_BYTES = 256 * 1024
OPTIONS = "rootfstype=squashfs ro console=ttyS0,115200 panic=30"
NOW = 1_795_000_000.0  # 2026-11-18


def _entry(slot: str, version: str) -> str:
    manifest = upgrade.Manifest("0.9", "x86_64", version, OPTIONS, {})
    return upgrade.entry_text(manifest, slot, version)


def _box(tmp: Path, key: Ed25519PrivateKey, running: str = "a") -> upgrade.Box:
    parts = tmp / "by-partlabel"
    parts.mkdir()
    (parts / "root-a").write_bytes(b"A" * SLOT_BYTES)
    (parts / "root-b").write_bytes(bytes(SLOT_BYTES))
    esp = tmp / "esp"
    (esp / "loader" / "entries").mkdir(parents=True)
    (esp / "loader" / "entries" / f"edgegw-{running}.conf").write_text(
        _entry(running, "20261101000000")
    )
    cmdline = tmp / "cmdline"
    cmdline.write_text(f"root=PARTLABEL=root-{running} {OPTIONS} edgegw.slot={running}\n")
    public = tmp / "update.pub"
    public.write_bytes(public_key_pem(key))
    return upgrade.Box(public, cmdline, parts, esp, "x86_64", root=tmp)


def _bundle(
    tmp: Path, key: Ed25519PrivateKey, *, arch: str = "x86_64", root_size: int = 100_000
) -> Path:
    files = tmp / "parts"
    files.mkdir(exist_ok=True)
    contents = {
        "root": os.urandom(root_size),
        "kernel": b"MZ kernel " + os.urandom(5000),
        "initrd": os.urandom(7000),
    }
    parts = {}
    for name, data in contents.items():
        parts[name] = files / name
        parts[name].write_bytes(data)
    out = tmp / f"edgegw-{arch}.update"
    write_bundle(
        out,
        version="1.2.3",
        arch=arch,
        build="20261120000000",
        options=OPTIONS,
        parts=parts,
        key=key,
    )
    return out


def _snapshot(box: upgrade.Box) -> dict[str, bytes]:
    """Every file of the box's partitions and ESP, by path."""
    files: dict[str, bytes] = {}
    for top in (box.partitions, box.esp):
        for path in sorted(top.rglob("*")):
            if path.is_file():
                files[str(path.relative_to(box.root))] = path.read_bytes()
    return files


def _member_offset(bundle: Path, name: str) -> int:
    with tarfile.open(bundle) as archive:
        return archive.getmember(name).offset_data


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _run(bundle: Path, box: upgrade.Box) -> upgrade.Written:
    return upgrade.upgrade(bundle, box, now=NOW, report=lambda line: None)


def test_upgrade_from_a_writes_slot_b_and_adds_its_entry_with_one_try(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    box = _box(tmp_path, key)
    bundle = _bundle(tmp_path, key)
    lines: list[str] = []
    written = upgrade.upgrade(bundle, box, now=NOW, report=lines.append)

    assert written.plan.running == "a" and written.plan.target == "b"
    root = (tmp_path / "parts" / "root").read_bytes()
    slot_b = (box.partitions / "root-b").read_bytes()
    assert slot_b[: len(root)] == root
    assert (box.partitions / "root-a").read_bytes() == b"A" * SLOT_BYTES  # never touched
    assert (box.esp / "EFI/edgegw/b/vmlinuz").read_bytes() == (
        tmp_path / "parts" / "kernel"
    ).read_bytes()
    assert (box.esp / "EFI/edgegw/b/initrd.img").read_bytes() == (
        tmp_path / "parts" / "initrd"
    ).read_bytes()
    entries = sorted(p.name for p in (box.esp / "loader/entries").iterdir())
    assert entries == ["edgegw-a.conf", "edgegw-b+1.conf"]
    text = (box.esp / "loader/entries/edgegw-b+1.conf").read_text()
    assert "options root=PARTLABEL=root-b rootfstype=squashfs ro" in text
    assert text.rstrip().endswith("edgegw.slot=b")
    assert "linux /EFI/edgegw/b/vmlinuz\n" in text and "title edgegw 1.2.3 (slot b)" in text
    # Preferred by systemd-boot: same sort key, a higher version than the fallback's.
    assert upgrade.entry_version(text) == int(time.strftime("%Y%m%d%H%M%S", time.gmtime(NOW)))
    assert any("running slot a (root=PARTLABEL=root-a)" in line for line in lines)


def test_upgrade_from_b_replaces_slot_a_and_its_exhausted_entry(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    box = _box(tmp_path, key, running="b")
    entries = box.esp / "loader/entries"
    (entries / "edgegw-a+0-1.conf").write_text(_entry("a", "20261125000000"))
    written = _run(_bundle(tmp_path, key), box)
    assert written.plan.target == "a"
    assert written.plan.remove_entries == ("edgegw-a+0-1.conf",)
    assert sorted(p.name for p in entries.iterdir()) == ["edgegw-a+1.conf", "edgegw-b.conf"]
    # The clock is behind the old entry's version: the new one still sorts above it.
    assert upgrade.entry_version((entries / "edgegw-a+1.conf").read_text()) == 20261125000001


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        ("root", upgrade.ChecksumError, "checksum mismatch for root"),
        ("vmlinuz", upgrade.ChecksumError, "checksum mismatch for kernel"),
        ("manifest", upgrade.SignatureError, "bad signature"),
        ("signature", upgrade.SignatureError, "bad signature"),
    ],
)
def test_a_tampered_bundle_is_refused_and_nothing_is_written(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    damage: str,
    error: type[upgrade.UpgradeError],
    message: str,
) -> None:
    box = _box(tmp_path, key)
    bundle = _bundle(tmp_path, key)
    member = {
        "root": "root.squashfs",
        "vmlinuz": "vmlinuz",
        "manifest": "manifest.json",
        "signature": "manifest.sig",
    }[damage]
    _flip_byte(bundle, _member_offset(bundle, member) + 10)
    before = _snapshot(box)
    with pytest.raises(error, match=message):
        _run(bundle, box)
    assert _snapshot(box) == before


def test_a_bundle_signed_by_another_key_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    box = _box(tmp_path, key)
    bundle = _bundle(tmp_path, Ed25519PrivateKey.generate())
    before = _snapshot(box)
    with pytest.raises(upgrade.SignatureError, match="bad signature"):
        _run(bundle, box)
    assert _snapshot(box) == before


def test_a_bundle_for_another_arch_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    box = _box(tmp_path, key)
    bundle = _bundle(tmp_path, key, arch="aarch64")
    before = _snapshot(box)
    with pytest.raises(upgrade.PlanError, match="bundle is for aarch64, this box is x86_64"):
        _run(bundle, box)
    assert _snapshot(box) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a tar at all" * 100, "not an update bundle"),
        (b"", "members none"),
    ],
)
def test_a_file_that_is_no_bundle_is_refused(
    tmp_path: Path, key: Ed25519PrivateKey, content: bytes, message: str
) -> None:
    box = _box(tmp_path, key)
    bundle = tmp_path / "junk.update"
    bundle.write_bytes(content if content else bytes(10240))  # an empty tar: two zero blocks
    with pytest.raises(upgrade.BundleError, match=message):
        _run(bundle, box)


def test_a_truncated_bundle_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    box = _box(tmp_path, key)
    bundle = _bundle(tmp_path, key)
    data = bundle.read_bytes()
    bundle.write_bytes(data[: _member_offset(bundle, "root.squashfs") + 500])
    before = _snapshot(box)
    with pytest.raises(upgrade.BundleError, match="not an update bundle: unexpected end of data"):
        _run(bundle, box)
    assert _snapshot(box) == before


def test_no_public_key_in_the_image_refuses(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    box = _box(tmp_path, key)
    box.public_key.unlink()
    with pytest.raises(upgrade.SignatureError, match="no public key to check bundles with"):
        _run(_bundle(tmp_path, key), box)


def test_the_running_slot_must_be_blessed_first(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    box = _box(tmp_path, key)
    entries = box.esp / "loader/entries"
    (entries / "edgegw-a.conf").rename(entries / "edgegw-a+2-1.conf")
    before = _snapshot(box)
    with pytest.raises(upgrade.PlanError, match=r"edgegw-a\+2-1.conf is not marked good yet"):
        _run(_bundle(tmp_path, key), box)
    assert _snapshot(box) == before


def test_no_entry_for_the_running_slot_refuses(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    box = _box(tmp_path, key)
    (box.esp / "loader/entries/edgegw-a.conf").unlink()
    with pytest.raises(upgrade.PlanError, match="no boot entry for the running slot a"):
        _run(_bundle(tmp_path, key), box)


@pytest.mark.parametrize(
    ("cmdline", "message"),
    [
        ("console=ttyS0 ro", "cannot tell the running slot"),
        ("root=/dev/vda2 ro", "root=/dev/vda2 is not a root slot"),
        ("root=PARTLABEL=root-a root=PARTLABEL=root-b", "cannot tell the running slot"),
    ],
)
def test_running_slot_from_the_kernel_command_line(cmdline: str, message: str) -> None:
    assert upgrade.running_slot("BOOT_IMAGE=x root=PARTLABEL=root-b ro\n") == "b"
    with pytest.raises(upgrade.PlanError, match=message):
        upgrade.running_slot(cmdline)


def test_a_root_larger_than_the_slot_fails_and_leaves_no_bootable_entry(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    box = _box(tmp_path, key)
    bundle = _bundle(tmp_path, key, root_size=SLOT_BYTES + 1)
    with pytest.raises(upgrade.WriteError, match="does not fit"):
        _run(bundle, box)
    assert sorted(p.name for p in (box.esp / "loader/entries").iterdir()) == ["edgegw-a.conf"]
    assert (box.partitions / "root-a").read_bytes() == b"A" * SLOT_BYTES


def test_a_missing_target_partition_is_a_write_error(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    box = _box(tmp_path, key)
    (box.partitions / "root-b").unlink()
    with pytest.raises(upgrade.WriteError, match="root-b: no such partition"):
        _run(_bundle(tmp_path, key), box)


def test_entry_names_with_and_without_counters() -> None:
    parse = upgrade.parse_entry_name
    assert parse("edgegw-a.conf") == upgrade.EntryName("a", None, None)
    assert parse("edgegw-b+1.conf") == upgrade.EntryName("b", 1, None)
    exhausted = parse("edgegw-b+0-1.conf")
    assert exhausted is not None and exhausted.exhausted and exhausted.counting
    assert parse("edgegw-c.conf") is None
    assert parse("other-a.conf") is None
    assert parse("edgegw-a+1.conf.part") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("parts"), "parts must be exactly"),
        (lambda d: d.update(format=2), "of format 1"),
        (lambda d: d.update(version=""), "version: want a one-line string"),
        (lambda d: d["parts"]["root"].update(sha256="xyz"), "is not 64 hex digits"),
        (lambda d: d["parts"]["root"].update(size=-1), "is not a positive integer"),
        (lambda d: d["parts"]["kernel"].update(file="../x"), "file '../x', want 'vmlinuz'"),
    ],
)
def test_malformed_manifests_are_refused(
    change: Callable[[dict[str, object]], object], message: str
) -> None:
    part = {"file": "root.squashfs", "size": 1, "sha256": "0" * 64}
    document = {
        "format": 1,
        "product": "edgegw",
        "version": "1",
        "arch": "x86_64",
        "build": "1",
        "options": "ro",
        "parts": {
            "root": dict(part),
            "kernel": dict(part, file="vmlinuz"),
            "initrd": dict(part, file="initrd.img"),
        },
    }
    assert upgrade.Manifest.from_bytes(json.dumps(document).encode()).arch == "x86_64"
    change(document)
    with pytest.raises(upgrade.BundleError, match=message):
        upgrade.Manifest.from_bytes(json.dumps(document).encode())


def test_the_plan_writes_only_the_other_slot() -> None:
    manifest = upgrade.Manifest("1", "x86_64", "1", "ro", {})
    plan = upgrade.plan_upgrade(
        manifest,
        box_arch="x86_64",
        cmdline="root=PARTLABEL=root-a ro",
        entries={"edgegw-a.conf": _entry("a", "1"), "loader-other.conf": "version 99999999999999"},
        now=NOW,
    )
    assert (plan.running, plan.target, plan.partition) == ("a", "b", "root-b")
    assert plan.remove_entries == ()
    with pytest.raises(upgrade.PlanError, match="slot a is running"):
        upgrade.apply_plan(
            replace(plan, target="a"),
            upgrade.Bundle(Path("/nonexistent"), manifest, {}),
            upgrade.Box(Path("k"), Path("c"), Path("p"), Path("e"), "x86_64"),
            report=lambda line: None,
        )


# -- health check -----------------------------------------------------------------------


def test_health_targets_are_the_udp_listeners(tmp_path: Path) -> None:
    config_file = tmp_path / "edgegw.toml"
    config_file.write_text(
        '[general]\nvar_dir = "var"\n\n'
        '[[sip.listen]]\ntransport = "udp"\nhost = "0.0.0.0"\nport = 5060\n\n'
        '[[sip.listen]]\ntransport = "tcp"\nhost = "0.0.0.0"\nport = 5060\n\n'
        '[[sip.listen]]\ntransport = "udp"\nhost = "198.51.100.7"\nport = 5070\n'
    )
    targets = upgrade.health_targets(load_config(config_file))
    assert [(t.host, t.port) for t in targets] == [("127.0.0.1", 5060), ("198.51.100.7", 5070)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


_ANSWER = Response(200, "OK", Headers([]))


def test_healthy_once_sip_and_status_answer() -> None:
    clock = FakeClock()
    target = SipTarget("listener", "127.0.0.1", 5060)

    def ping(t: SipTarget) -> Response | None:
        return _ANSWER if clock.now >= 30 else None

    def status() -> str | None:
        return None if clock.now >= 40 else "gateway not running"

    result = upgrade.wait_healthy(
        [target], status, ping=ping, timeout=120, clock=clock, sleep=clock.sleep
    )
    assert result.healthy and result.seconds == 40


def test_unhealthy_after_the_timeout_names_what_failed() -> None:
    clock = FakeClock()
    target = SipTarget("listener", "127.0.0.1", 5060)
    result = upgrade.wait_healthy(
        [target],
        lambda: None,
        ping=lambda t: None,
        timeout=120,
        clock=clock,
        sleep=clock.sleep,
    )
    assert not result.healthy
    assert result.seconds == 120
    assert result.problems == ("no answer to SIP OPTIONS from 127.0.0.1:5060",)


def test_fallback_slot_is_another_entry_with_tries_or_blessed() -> None:
    fallback = upgrade.fallback_slot
    assert fallback(["edgegw-a.conf", "edgegw-b+1.conf"], "b") == "a"  # upgraded: A is good
    assert fallback(["edgegw-a+2-1.conf", "edgegw-b.conf"], "b") == "a"
    assert fallback(["edgegw-a+3.conf"], "a") is None  # freshly flashed: nothing else
    assert fallback(["edgegw-a+0-3.conf", "edgegw-b.conf"], "b") is None  # A used up
    assert fallback(["edgegw-a.conf", "loader.conf", "other-b.conf"], "a") is None


def _health_on_box(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, entries: list[str], running: str
) -> Result:
    """`edgegw health --boot-assessment` against a gateway that never answers, on a box
    whose ESP holds `entries`."""
    box = _box(tmp_path, Ed25519PrivateKey.generate(), running=running)
    folder = box.esp / "loader" / "entries"
    for old in folder.iterdir():
        old.unlink()
    for name in entries:
        (folder / name).write_text(_entry(name[7], "20261101000000"))

    @contextlib.contextmanager
    def local_box() -> Iterator[upgrade.Box]:
        yield box

    monkeypatch.setattr(upgrade, "local_box", local_box)
    config = tmp_path / "edgegw.toml"
    config.write_text(
        f'[general]\nvar_dir = "{tmp_path}"\n\n'
        '[[sip.listen]]\ntransport = "udp"\nhost = "127.0.0.1"\nport = 9\n'
    )
    args = ["health", "--boot-assessment", "--timeout", "0", "--config", str(config)]
    return CliRunner().invoke(cli, args, prog_name="edgegw")


def test_an_unhealthy_boot_with_a_fallback_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = _health_on_box(monkeypatch, tmp_path, ["edgegw-a.conf", "edgegw-b+0-1.conf"], "b")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("edgegw: health: unhealthy after 0 s: no answer to SIP OPTIONS")
    assert result.stderr.endswith("; slot a takes over after the reboot\n"), result.stderr


def test_an_unhealthy_boot_without_a_fallback_is_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = _health_on_box(monkeypatch, tmp_path, ["edgegw-a+2-1.conf"], "a")
    assert result.exit_code == 0, result.output
    assert "no other slot to fall back to: this boot of slot a is kept" in result.stdout
