"""A/B upgrades of the disk images under qemu: a good bundle is kept, a bad one falls back.

Runs per arch (x86_64 on q35 with OVMF, aarch64 on virt with an emulated Cortex-A72 and
AAVMF: `tests/images/qemu.py`); the module-scoped `journey` fixture boots each arch once and
its three tests check that journey (ids `[x86_64]`, `[aarch64]`). Run by `./justw image-test`
after `./justw image-disk ARCH` and `python images/update/build.py ARCH` (the bundle
`dist/edgegw-ARCH.update`, signed with the key whose public half the image carries). Per
arch everything happens on one sparse copy of `dist/edgegw-ARCH.img`, booted four times (the
guest's reboots end qemu, `-no-reboot`, and the test starts it again on the same disk):

1. slot A (first boot of the image, entry `edgegw-a+3.conf`): once the boot is blessed,
   `edgegw upgrade` refuses three small bundles (one byte changed, signed by another key,
   built for the other arch), then writes the good bundle to slot B and reboots (`--reboot`);
2. slot B (entry `edgegw-b+1.conf`, one try): the gateway answers OPTIONS, the health check
   passes, systemd-bless-boot marks the boot good (the entry becomes `edgegw-b.conf`); then
   `edgegw upgrade` writes a bad bundle to slot A (the good root with its gateway launcher
   replaced by one that exits 1) and reboots;
3. slot A (entry `edgegw-a+1.conf`): the gateway never answers, the health check fails after
   its 120 s, the boot is not blessed and the box reboots itself;
4. slot B again (A's entry has no tries left): the gateway answers OPTIONS.

The commands run in the guest come from the kernel command line of the copy's loader entries
(systemd-run-generator's `systemd.run=`, with `systemd.unit=multi-user.target` so that the
box still boots its normal target), so the copies need no SSH key and the image no test
units; an engineer runs the same `edgegw upgrade FILE --reboot` over SSH. The bundles lie
on the copy's data partition, grown for them. The running slot of each boot is read
from the kernel's "Kernel command line:" on the serial console (ttyS0 or ttyAMA0, the
image's own `console=`).

Measured on the 2-core build machine, TCG, 2026-11-25, one arch at a time (x86_64, then
aarch64): the journey 561 s and 543 s; slot A's first boot, with three refusals and the
upgrade, 148-168 s to its reboot; the new slot blessed 50-90 s and 77 s after qemu started;
the bad path 223-246 s and 239 s from the bad boot's start to SIP answered again. In the
guest the emulated Cortex-A72 verifies (2.7 s) and writes and reads back (8-9 s) faster than
x86_64 (7.5-8 s, 17.5-25 s). BOOT_LIMIT leaves room for a machine several times slower.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.control import upgrade
from images.disk import build
from images.update import build as update_build
from tests.images.qemu import SIP_PORT, boot, missing
from tests.integration.netns import Namespace, Topology, root_skip_reason
from tests.integration.peers import sip_ping

DATA_MIB = 512  # the copy's data partition: room for the good and the bad bundle
# Per arch and boot, from qemu's start to the guest's reboot or the end of the checks. A TCG
# boot takes about 45 s (x86_64) or 60-100 s (aarch64, emulated) to the first SIP answer; the
# bad boot adds the health check's 120 s. Room for a machine several times slower.
BOOT_LIMIT = {"x86_64": 900.0, "aarch64": 1800.0}
UPDATES = "/data/updates"
TEST_OPTIONS = "systemd.journald.forward_to_console=1"
REPORT_OPTION = "systemd.wants=edgegw-console-report.service"
BLESSED = "Marked boot as 'good'"
REBOOTING = "reboot: Restarting system"
UNHEALTHY = "health: unhealthy after"
BROKEN_LAUNCHER = (
    "#!/bin/sh\n# A broken build, for the upgrade test: the gateway never starts.\n"
    'echo "edgegw: broken build (upgrade fallback test)" >&2\nexit 1\n'
)


def other_arch(arch: str) -> str:
    """The arch a wrong-arch bundle is built for."""
    return next(name for name in build.ARCHES if name != arch)


def refused(arch: str) -> dict[str, str]:
    """The small bundles a box of `arch` must refuse, with the reason `edgegw upgrade` gives."""
    return {
        "tampered": "checksum mismatch for root",
        "foreign": "bad signature",
        "wrong-arch": f"bundle is for {other_arch(arch)}, this box is {arch}",
    }


def _skip_reason() -> str | None:
    reason = root_skip_reason()
    if reason is not None:
        return f"{reason} (qemu's network runs in a namespace of its own)"
    if shutil.which("unsquashfs") is None:
        return "needs squashfs-tools (./justw image-test installs them)"
    return None


def _arch_param(arch: str) -> Any:
    absent = missing(arch)
    reason = f"{arch}: {absent}: ./justw image-test installs them"
    return pytest.param(arch, id=arch, marks=pytest.mark.skipif(absent is not None, reason=reason))


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


# -- the copy of the image and its bundles ------------------------------------------------


def _run(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def _copy_with_big_data(image: Path, dest: Path) -> Path:
    """A sparse copy of `image` whose data partition is DATA_MIB (a new GPT, same starts)."""
    subprocess.run(["cp", "--sparse=always", str(image), str(dest)], check=True)
    parts = list(build.partitions(dest).values())
    data = parts[-1]
    assert data.label == "data", parts
    parts[-1] = build.Partition(data.label, data.type_guid, data.start, DATA_MIB * build.MIB)
    with dest.open("r+b") as f:
        f.truncate(build.disk_size(parts))
    subprocess.run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(dest)],
        input=build.sfdisk_script(parts),
        text=True,
        check=True,
    )
    return dest


def _parts_of(bundle: Path, dest: Path) -> dict[str, Path]:
    """The parts of a (verified) bundle, copied out to `dest`."""
    key = update_build.public_key_pem(update_build.signing_key())
    read = upgrade.read_bundle(bundle, key)
    dest.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    with bundle.open("rb") as src:
        for name, part in read.manifest.parts.items():
            files[name] = dest / part.file
            src.seek(read.offsets[name])
            with files[name].open("wb") as out:
                left = part.size
                while left > 0:
                    block = src.read(min(upgrade.CHUNK, left))
                    out.write(block)
                    left -= len(block)
    return files


def _bad_bundle(arch: str, good: Path, work: Path) -> Path:
    """The good bundle with one file changed in its root: a gateway launcher that exits 1."""
    parts = _parts_of(good, work / "good")
    tree = work / "tree"
    _run("unsquashfs", "-q", "-n", "-d", str(tree), str(parts["root"]))
    (tree / "usr/local/lib/edgegw/edgegw-launch").write_text(BROKEN_LAUNCHER)
    parts["root"].unlink()
    bad_root = work / "bad-root.squashfs"
    _run(
        "mksquashfs",
        str(tree),
        str(bad_root),
        *("-noappend", "-quiet", "-no-progress", "-comp", "zstd", "-Xcompression-level", "3"),
        *("-b", "256K"),
    )
    shutil.rmtree(tree)
    read = upgrade.read_bundle(good, update_build.public_key_pem(update_build.signing_key()))
    out = work.parent / "bad.update"  # work is removed once the bundle is made
    update_build.write_bundle(
        out,
        version=f"{read.manifest.version}+broken",
        arch=arch,
        build=read.manifest.build,
        options=read.manifest.options,
        parts={**parts, "root": bad_root},
        key=update_build.signing_key(),
    )
    return out


def _small_bundles(arch: str, work: Path) -> dict[str, Path]:
    """Small bundles `edgegw upgrade` must refuse on a box of `arch` (see `refused`)."""
    parts = {}
    for name, size in (("root", 8192), ("kernel", 4096), ("initrd", 4096)):
        parts[name] = work / f"small-{name}"
        parts[name].write_bytes(bytes(range(256)) * (size // 256))
    signing = update_build.signing_key()
    made = {}
    for name, bundle_arch, key in (
        ("tampered", arch, signing),
        ("foreign", arch, Ed25519PrivateKey.generate()),
        ("wrong-arch", other_arch(arch), signing),
    ):
        made[name] = work / f"{name}.update"
        update_build.write_bundle(
            made[name], version="0", arch=bundle_arch, build="0", options="ro", parts=parts, key=key
        )
    read = upgrade.read_bundle(made["tampered"], update_build.public_key_pem(signing))
    with made["tampered"].open("r+b") as f:
        f.seek(read.offsets["root"] + 100)
        f.write(b"\xff")
    return made


def _prepare(arch: str, workdir: Path) -> tuple[Path, dict[str, Path]]:
    source = build.DIST / f"edgegw-{arch}.img"
    bundle = build.DIST / f"edgegw-{arch}.update"
    for path, recipe in ((source, "image-disk"), (bundle, "image-update")):
        if not path.is_file():
            pytest.fail(f"{path} is missing: build it with ./justw {recipe} {arch}")
    image = _copy_with_big_data(source, workdir / "disk.img")
    tree = build.data_tree(workdir / "data")
    updates = tree / "updates"
    updates.mkdir()
    bundles = {
        "good": bundle,
        "bad": _bad_bundle(arch, bundle, workdir / "bad"),
        **_small_bundles(arch, workdir),
    }
    for name, path in bundles.items():
        shutil.copyfile(path, updates / f"{name}.update")
    build.write_data_partition(image, tree, workdir)
    shutil.rmtree(tree)
    shutil.rmtree(workdir / "bad")
    return image, bundles


# -- loader entries on the copy's ESP -----------------------------------------------------


def _entries(image: Path) -> list[str]:
    listing = _run("mdir", "-b", "-i", build.esp_path(image), "::/loader/entries")
    return sorted(Path(line.strip()).name for line in listing.splitlines() if line.strip())


def _entry_of(image: Path, slot: str) -> str:
    names = [n for n in _entries(image) if (p := upgrade.parse_entry_name(n)) and p.slot == slot]
    assert len(names) == 1, _entries(image)
    return names[0]


def _set_test_options(image: Path, slot: str, extra: str = "") -> None:
    """Slot's entry gets the image's own options plus TEST_OPTIONS and `extra` (what an
    earlier call added is dropped first)."""
    esp = build.esp_path(image)
    name = f"::/loader/entries/{_entry_of(image, slot)}"
    lines = []
    for line in _run("mtype", "-i", esp, name).splitlines():
        if line.startswith("options "):
            line = line.split(f" {TEST_OPTIONS}")[0] + f" {TEST_OPTIONS} {extra}".rstrip()
        lines.append(line)
    local = image.with_name("entry.conf")
    local.write_text("\n".join(lines) + "\n")
    _run("mcopy", "-o", "-i", esp, str(local), name)
    local.unlink()


def _guest_commands(limit: float, *commands: str) -> str:
    """Kernel options that run `commands` in the guest once its boot is blessed, for at
    most `limit` seconds."""
    wait = "until systemctl -q is-active systemd-bless-boot.service; do sleep 2; done"
    script = "; ".join((wait, *commands))
    return (
        "systemd.unit=multi-user.target systemd.wants=kernel-command-line.service"
        " systemd.run_success_action=none systemd.run_failure_action=none"
        f" systemd.run=\"/usr/bin/timeout {int(limit)} /bin/sh -c '{script}'\""
    )


# -- booting ----------------------------------------------------------------------------


@dataclass
class Boot:
    """One boot: when things showed on the serial console (seconds after qemu started),
    the first SIP answer, whether the guest rebooted by itself, the loader entries after."""

    name: str
    serial: str = ""
    seconds: float = 0.0
    answer: str | None = None
    answered_at: float | None = None
    rebooted: bool = False
    seen: dict[str, float] = field(default_factory=dict)
    entries: list[str] = field(default_factory=list)

    @property
    def slot(self) -> str:
        # start_kernel's line, printed on every arch (x86 alone also prints "Command line:").
        match = re.search(r"Kernel command line: .*root=PARTLABEL=root-([ab])", self.serial)
        assert match, f"{self.name}: no kernel command line on the console"
        return match[1]

    def tail(self) -> str:
        return f"{self.name}, serial console (end):\n{self.serial[-6000:]}"


def _boot(
    arch: str,
    image: Path,
    workdir: Path,
    namespace: Namespace,
    name: str,
    *,
    markers: tuple[str, ...],
    until: str | None,
) -> Boot:
    """Boot the copy (an image of `arch`); ping its SIP and watch the console for `markers`
    until the guest reboots, or (with `until`) until it answered and showed `until`, then
    power it off."""
    record = Boot(f"{arch} {name}")
    folder = workdir / name
    folder.mkdir()
    with boot(image, folder, namespace, limit=BOOT_LIMIT[arch] + 180, arch=arch) as vm:
        deadline = vm.started + BOOT_LIMIT[arch]
        while vm.alive() and time.monotonic() < deadline:
            now = time.monotonic() - vm.started
            text = vm.serial()
            for marker in markers:
                if marker in text and marker not in record.seen:
                    record.seen[marker] = now
            if record.answer is None:
                with namespace.entered():
                    record.answer = sip_ping("127.0.0.1", SIP_PORT, 1.0)
                if record.answer is not None:
                    record.answered_at = now
            else:
                time.sleep(1.0)
            if until is not None and record.answer is not None and until in text:
                break
        record.rebooted = not vm.alive()
        record.seconds = time.monotonic() - vm.started
        vm.stop()
        record.serial = vm.serial()
    for marker in markers:  # shown between the last look and qemu's end
        if marker in record.serial:
            record.seen.setdefault(marker, record.seconds)
    record.rebooted = record.rebooted and REBOOTING in record.serial
    record.entries = _entries(image)
    answered = f"{record.answered_at:.0f} s" if record.answered_at is not None else "never"
    print(
        f"\n{record.name}: {record.seconds:.0f} s ({vm.accel}), first SIP answer {answered}, "
        f"{'rebooted' if record.rebooted else 'stopped'}; "
        + ", ".join(f"{m!r} at {t:.0f} s" for m, t in record.seen.items())
        + f"; entries {record.entries}"
    )
    return record


@dataclass(frozen=True)
class Journey:
    arch: str
    bundles: dict[str, Path]
    boots: list[Boot]
    # sha256 of the slot partitions ("a@0": all of root-a before boot 1...), and of the
    # bundles' roots (the start of the partition they were written to).
    slots: dict[str, str]
    roots: dict[str, str]


def _slot_digest(image: Path, label: str, size: int | None = None) -> str:
    """sha256 of the first `size` bytes (all, by default) of partition `label`."""
    part = build.partitions(image)[label]
    digest = hashlib.sha256()
    with image.open("rb") as f:
        f.seek(part.start)
        left = part.size if size is None else size
        while left > 0:
            block = f.read(min(upgrade.CHUNK, left))
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


@pytest.fixture(scope="module", params=[_arch_param(arch) for arch in build.ARCHES])
def journey(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Journey]:
    arch = str(request.param)
    workdir = tmp_path_factory.mktemp(f"upgrade-{arch}")
    image, bundles = _prepare(arch, workdir)
    boots: list[Boot] = []
    key = update_build.public_key_pem(update_build.signing_key())
    roots = {
        name: upgrade.read_bundle(bundles[name], key).manifest.parts["root"]
        for name in ("good", "bad")
    }
    slots = {"a@0": _slot_digest(image, "root-a")}
    with Topology() as topology:
        namespace = topology.namespace("vm")

        def run(name: str, markers: tuple[str, ...], until: str | None = None) -> Boot:
            boots.append(_boot(arch, image, workdir, namespace, name, markers=markers, until=until))
            return boots[-1]

        # 1: slot A refuses the small bundles, writes the good one to B, reboots.
        refusals = [
            f"/usr/local/bin/edgegw upgrade {UPDATES}/{name}.update"
            f" || echo EDGEGW-TEST {name} refused"
            for name in refused(arch)
        ]
        good = f"/usr/local/bin/edgegw upgrade {UPDATES}/good.update --reboot"
        _set_test_options(image, "a", _guest_commands(BOOT_LIMIT[arch], *refusals, good))
        first = run("1-slot-a", (BLESSED, REBOOTING))
        assert first.rebooted, first.tail()
        slots["a@1"] = _slot_digest(image, "root-a")
        slots["b@1"] = _slot_digest(image, "root-b")
        slots["b@1:good"] = _slot_digest(image, "root-b", roots["good"].size)

        # 2: slot B is blessed, then writes the bad bundle to A and reboots.
        _set_test_options(image, "a")
        bad = f"/usr/local/bin/edgegw upgrade {UPDATES}/bad.update --reboot"
        _set_test_options(image, "b", _guest_commands(BOOT_LIMIT[arch], bad))
        second = run("2-slot-b", (BLESSED, REBOOTING))
        assert second.rebooted, second.tail()
        slots["b@2"] = _slot_digest(image, "root-b")
        slots["a@2:bad"] = _slot_digest(image, "root-a", roots["bad"].size)

        # 3: the bad slot A fails its health check and reboots.
        _set_test_options(image, "b")
        _set_test_options(image, "a")
        third = run("3-slot-a-bad", (UNHEALTHY, REBOOTING))
        assert third.rebooted, third.tail()

        # 4: back on slot B.
        _set_test_options(image, "b", REPORT_OPTION)
        run("4-fallback", ("EDGEGW-REPORT failed",), until="EDGEGW-REPORT failed")
    yield Journey(arch, bundles, boots, slots, {name: p.sha256 for name, p in roots.items()})


def _upgrade_figure(serial: str, pattern: str) -> float:
    match = re.search(pattern, serial)
    assert match, f"{pattern!r} not on the console"
    return float(match[1])


def test_a_good_bundle_boots_slot_b_and_is_kept(journey: Journey) -> None:
    first, second = journey.boots[0], journey.boots[1]
    assert first.slot == "a"
    assert "running slot a (root=PARTLABEL=root-a); writing slot b" in first.serial, first.tail()
    assert "slot b is ready; slot a stays the fallback. rebooting" in first.serial, first.tail()
    verify = _upgrade_figure(first.serial, r"checksums good \((\d+\.\d) s\)")
    write = _upgrade_figure(first.serial, r"slot b written and read back in (\d+\.\d) s")
    # Slot A's own first boot was blessed before the upgrade ran.
    assert first.seen[BLESSED] < first.seen[REBOOTING]
    # The running slot was never written; the other one holds the bundle's root.
    assert journey.slots["a@1"] == journey.slots["a@0"]
    assert journey.slots["b@1:good"] == journey.roots["good"]

    assert second.slot == "b", second.tail()
    assert second.answer is not None and second.answer.startswith("SIP/2.0 200"), second.tail()
    assert "health: good after" in second.serial, second.tail()
    assert "Marked boot as 'good'. (Boot attempt counter is at 1.)" in second.serial
    # Slot B's entry lost its counter (blessed); A's is the one the bad bundle wrote next.
    assert "edgegw-b.conf" in second.entries, second.entries
    assert "running slot b (root=PARTLABEL=root-b); writing slot a" in second.serial
    assert journey.slots["b@2"] == journey.slots["b@1"]
    assert journey.slots["a@2:bad"] == journey.roots["bad"]
    size = journey.bundles["good"].stat().st_size
    print(
        f"\n{journey.arch}: good bundle {size / build.MIB:.1f} MiB; in the guest: signature "
        f"and checksums {verify:.1f} s, slot written and read back {write:.1f} s; slot B blessed "
        f"{second.seen[BLESSED]:.0f} s after qemu started (first SIP answer "
        f"{second.answered_at:.0f} s)"
    )


def test_the_box_refuses_bad_bundles_before_writing(journey: Journey) -> None:
    serial = journey.boots[0].serial
    for name, message in refused(journey.arch).items():
        assert f"EDGEGW-TEST {name} refused" in serial, journey.boots[0].tail()
        assert f"upgrade refused, nothing written: {message}" in serial, name


def test_a_bad_bundle_falls_back_to_the_previous_slot(journey: Journey) -> None:
    bad, back = journey.boots[2], journey.boots[3]
    assert bad.slot == "a", bad.tail()
    assert bad.answer is None, f"the broken slot answered SIP: {bad.answer}"
    assert "edgegw: broken build (upgrade fallback test)" in bad.serial, bad.tail()
    # The health check gave up after its 120 s (a little more: its last try is under way).
    unhealthy = re.search(r"health: unhealthy after (\d+) s", bad.serial)
    assert unhealthy and 120 <= int(unhealthy[1]) < 180, bad.tail()
    assert BLESSED not in bad.serial
    assert bad.rebooted, bad.tail()
    # Slot A's one try is used up; B's entry, still good, is booted.
    assert sorted(bad.entries) == ["edgegw-a+0-1.conf", "edgegw-b.conf"], bad.entries

    assert back.slot == "b", back.tail()
    assert back.answer is not None and back.answer.startswith("SIP/2.0 200"), back.tail()
    failed = re.search(r"EDGEGW-REPORT failed rc=(\d+) ?(.*)$", back.serial, re.M)
    assert failed and failed[1] == "0" and not failed[2].strip(), back.tail()
    assert re.search(r"EDGEGW-REPORT mounts rc=0 / /dev/vda3 squashfs ro", back.serial), back.tail()
    # A blessed entry does not count: no health gate, no renaming on this boot.
    assert back.entries == bad.entries
    assert back.answered_at is not None
    print(
        f"\n{journey.arch}: bad path: the broken slot rebooted {bad.seconds:.0f} s after qemu "
        f"started (health check failed at {bad.seen.get(UNHEALTHY, -1):.0f} s); "
        f"slot B answered SIP {back.answered_at:.0f} s into the next boot: "
        f"{bad.seconds + back.answered_at:.0f} s from the bad boot's start to service"
    )
