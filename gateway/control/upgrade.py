"""A/B upgrades of the disk image: the update bundle, its checks, the slot switch, and the
health check that decides whether a new slot's boot counts as good.

The disk image (images/disk/README.md) has two read-only root slots, GPT partitions
`root-a` and `root-b`, and an ESP with systemd-boot. Each slot has a Boot Loader
Specification entry `loader/entries/edgegw-<slot>[+LEFT[-DONE]].conf` and its kernel and
initrd under `/EFI/edgegw/<slot>/`. systemd-boot counts a counting entry's tries down in its
file name, sorts entries without tries left last, and otherwise prefers the entry with the
highest `version`; systemd-bless-boot drops the counter once boot-complete.target is
reached, and the health check gates that target (`edgegw-health.service`). A failed check
reboots the box only when another slot can take over (`fallback_slot`): a box with nowhere
to fall back to keeps running, reachable over SSH, rather than rebooting for ever.

An update bundle is an uncompressed tar with, in this order:
  manifest.json   format, product, version, arch, build stamp, kernel options, and per part
                  its file, size and sha256
  manifest.sig    the raw 64-byte ed25519 signature (RFC 8032) of manifest.json's bytes
  root.squashfs, vmlinuz, initrd.img   the parts
Nothing of a bundle is trusted before its signature verifies against the running image's
public key; nothing is written before every part's checksum matches the manifest.

`upgrade()` writes the slot that is not running: it drops that slot's old entry first (so a
half-written slot is never bootable), writes the root partition and reads it back, writes
kernel and initrd to the ESP and reads them back, and then adds the slot's entry with one
try and a version above every other entry's: the next boot tries the new slot once, and
if that boot is not blessed the old slot's entry, still good, is booted again.

The pure parts (manifest parsing, signature, entry names, slot choice, the plan of the
writes) take bytes and strings in; the I/O is in `read_bundle`, `verify_parts` and
`apply_plan`, which take every path from a `Box`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.config import Config
from gateway.net.check import SipTarget
from gateway.sip.message import Response

__all__ = [
    "BUNDLE_FORMAT",
    "CHUNK",
    "DEFAULT_PUBLIC_KEY",
    "ESP_FILES",
    "MANIFEST_MEMBER",
    "NEW_SLOT_TRIES",
    "PART_FILES",
    "SIGNATURE_MEMBER",
    "SLOTS",
    "Box",
    "Bundle",
    "BundleError",
    "ChecksumError",
    "EntryName",
    "HealthResult",
    "Manifest",
    "Part",
    "Plan",
    "PlanError",
    "SignatureError",
    "UpgradeError",
    "WriteError",
    "Written",
    "apply_plan",
    "entry_text",
    "entry_version",
    "fallback_slot",
    "health_targets",
    "load_public_key",
    "local_box",
    "parse_entry_name",
    "plan_upgrade",
    "read_bundle",
    "running_slot",
    "sign_manifest",
    "upgrade",
    "verify_parts",
    "verify_signature",
    "wait_healthy",
]

BUNDLE_FORMAT = 1
PRODUCT = "edgegw"
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.sig"
# Part name -> member file name; the root goes to the slot's partition, the others to the ESP.
PART_FILES = {"root": "root.squashfs", "kernel": "vmlinuz", "initrd": "initrd.img"}
ESP_FILES = {"kernel": "vmlinuz", "initrd": "initrd.img"}
SLOTS = ("a", "b")
# One try: a new slot whose first boot is not blessed is not booted again.
NEW_SLOT_TRIES = 1
DEFAULT_PUBLIC_KEY = Path("/usr/share/edgegw/update.pub")
MAX_MANIFEST_BYTES = 64 * 1024
SIGNATURE_BYTES = 64
CHUNK = 1024 * 1024
_STAMP_FORMAT = "%Y%m%d%H%M%S"
_ENTRY_NAME = re.compile(r"^edgegw-(?P<slot>[ab])(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.conf$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class UpgradeError(Exception):
    """An upgrade was refused or failed; the message says what and why."""


class BundleError(UpgradeError):
    """The file is not a well-formed update bundle."""


class SignatureError(UpgradeError):
    """The manifest's signature does not verify against the image's public key."""


class ChecksumError(UpgradeError):
    """A part's bytes do not match the size or sha256 its manifest names."""


class PlanError(UpgradeError):
    """The bundle does not fit this box, or the box's boot state does not allow an upgrade."""


class WriteError(UpgradeError):
    """Writing the slot failed, or what was written does not read back the same."""


# -- manifest and signature -------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One part of a bundle: its member file, size in bytes and sha256 (hex)."""

    file: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds and what it is for. `options` is the kernel command line of the
    new root without `root=` and `edgegw.slot=`, which the slot switch adds."""

    version: str
    arch: str
    build: str
    options: str
    parts: Mapping[str, Part]

    def to_bytes(self) -> bytes:
        document = {
            "format": BUNDLE_FORMAT,
            "product": PRODUCT,
            "version": self.version,
            "arch": self.arch,
            "build": self.build,
            "options": self.options,
            "parts": {
                name: {"file": p.file, "size": p.size, "sha256": p.sha256}
                for name, p in sorted(self.parts.items())
            },
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"manifest is not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise BundleError("manifest is not a JSON object")
        if document.get("format") != BUNDLE_FORMAT or document.get("product") != PRODUCT:
            raise BundleError(
                f"manifest is not an {PRODUCT} bundle of format {BUNDLE_FORMAT}: "
                f"format {document.get('format')!r}, product {document.get('product')!r}"
            )
        text = {key: _text(document, key) for key in ("version", "arch", "build", "options")}
        parts = document.get("parts")
        if not isinstance(parts, dict) or set(parts) != set(PART_FILES):
            raise BundleError(f"manifest parts must be exactly {', '.join(sorted(PART_FILES))}")
        return cls(parts={name: _part(name, parts[name]) for name in PART_FILES}, **text)


def _text(document: Mapping[str, Any], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value or "\n" in value:
        raise BundleError(f"manifest {key}: want a one-line string, got {value!r}")
    return value


def _part(name: str, value: Any) -> Part:
    if not isinstance(value, dict):
        raise BundleError(f"manifest part {name}: not an object")
    file, size, digest = value.get("file"), value.get("size"), value.get("sha256")
    if file != PART_FILES[name]:
        raise BundleError(f"manifest part {name}: file {file!r}, want {PART_FILES[name]!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise BundleError(f"manifest part {name}: size {size!r} is not a positive integer")
    if not isinstance(digest, str) or not _HEX64.match(digest):
        raise BundleError(f"manifest part {name}: sha256 {digest!r} is not 64 hex digits")
    return Part(file, size, digest)


def sign_manifest(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    return key.sign(manifest_bytes)


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SignatureError(f"the image's public key is unreadable: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the image's public key is not an ed25519 key")
    return key


def verify_signature(manifest_bytes: bytes, signature: bytes, public_key_pem: bytes) -> None:
    """SignatureError("bad signature ...") unless `signature` is the key's over the bytes."""
    key = load_public_key(public_key_pem)
    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(
            "bad signature: the bundle is not signed by the key of this image"
        ) from None


# -- boot entries and the plan ----------------------------------------------------------


@dataclass(frozen=True)
class EntryName:
    """A slot's loader entry file name: `tries_left` is None for an entry that does not
    count (blessed, or never counted)."""

    slot: str
    tries_left: int | None
    tries_done: int | None

    @property
    def counting(self) -> bool:
        return self.tries_left is not None

    @property
    def exhausted(self) -> bool:
        return self.tries_left == 0


def parse_entry_name(name: str) -> EntryName | None:
    """The slot and counters of an `edgegw-<slot>[+LEFT[-DONE]].conf` name; None otherwise."""
    match = _ENTRY_NAME.match(name)
    if match is None:
        return None
    left, done = match["left"], match["done"]
    return EntryName(
        match["slot"], None if left is None else int(left), None if done is None else int(done)
    )


def fallback_slot(entry_names: Iterable[str], running: str) -> str | None:
    """The other slot systemd-boot would boot if this boot failed: one whose entry is blessed
    or still has tries left; None when there is none (a freshly flashed box, or the other
    slot used up its tries)."""
    for name in entry_names:
        entry = parse_entry_name(name)
        if entry is not None and entry.slot != running and not entry.exhausted:
            return entry.slot
    return None


def running_slot(cmdline: str) -> str:
    """The slot the box runs: root=PARTLABEL=root-<slot> on the kernel command line."""
    roots = [word for word in cmdline.split() if word.startswith("root=")]
    if len(roots) != 1:
        raise PlanError(f"cannot tell the running slot: kernel command line {cmdline.strip()!r}")
    match = re.fullmatch(r"root=PARTLABEL=root-([ab])", roots[0])
    if match is None:
        raise PlanError(f"cannot tell the running slot: {roots[0]} is not a root slot")
    return match[1]


def entry_version(text: str) -> int | None:
    for line in text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "version" and words[1].isdigit():
            return int(words[1])
    return None


def entry_text(manifest: Manifest, slot: str, version: str) -> str:
    """The loader entry of `slot` booting the bundle's root, kernel and initrd."""
    return (
        f"title edgegw {manifest.version} (slot {slot})\n"
        "sort-key edgegw\n"
        f"version {version}\n"
        f"linux /EFI/edgegw/{slot}/{ESP_FILES['kernel']}\n"
        f"initrd /EFI/edgegw/{slot}/{ESP_FILES['initrd']}\n"
        f"options root=PARTLABEL=root-{slot} {manifest.options} edgegw.slot={slot}\n"
    )


@dataclass(frozen=True)
class Plan:
    """The writes of an upgrade: the slot written, the entries dropped first, the new entry."""

    running: str
    target: str
    partition: str
    esp_dir: str
    remove_entries: tuple[str, ...]
    entry_name: str
    entry_text: str


def plan_upgrade(
    manifest: Manifest, *, box_arch: str, cmdline: str, entries: Mapping[str, str], now: float
) -> Plan:
    """Which slot to write and how to switch to it, or PlanError saying why not.

    `entries` maps the loader entry file names on the ESP to their text. The running slot's
    entry must be blessed (not counting): it is the fallback if the new slot fails."""
    if manifest.arch != box_arch:
        raise PlanError(f"bundle is for {manifest.arch}, this box is {box_arch}")
    running = running_slot(cmdline)
    target = next(slot for slot in SLOTS if slot != running)
    names = {name: parse_entry_name(name) for name in entries}
    ours = [name for name, parsed in names.items() if parsed and parsed.slot == running]
    if not ours:
        raise PlanError(
            f"no boot entry for the running slot {running}: the box would have no fallback"
        )
    for name in ours:
        parsed = names[name]
        if parsed is not None and parsed.counting:
            raise PlanError(
                f"the running slot's entry {name} is not marked good yet (boot-complete.target"
                " not reached): wait for the health check, or reboot into a good slot"
            )
    stamp = int(time.strftime(_STAMP_FORMAT, time.gmtime(now)))
    versions = [entry_version(text) for text in entries.values()]
    # Above every other entry even when the box's clock is behind (no battery, no NTP yet).
    version = max([stamp, *(v + 1 for v in versions if v is not None)])
    remove = tuple(
        sorted(name for name, parsed in names.items() if parsed and parsed.slot == target)
    )
    return Plan(
        running=running,
        target=target,
        partition=f"root-{target}",
        esp_dir=f"EFI/edgegw/{target}",
        remove_entries=remove,
        entry_name=f"edgegw-{target}+{NEW_SLOT_TRIES}.conf",
        entry_text=entry_text(manifest, target, str(version)),
    )


# -- reading a bundle -------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A bundle whose manifest signature verified: where each part's bytes are in the file."""

    path: Path
    manifest: Manifest
    offsets: Mapping[str, int]


def read_bundle(path: Path, public_key_pem: bytes) -> Bundle:
    """Read the bundle's table of contents and manifest and verify the signature; the parts
    are not read (verify_parts does that)."""
    try:
        with tarfile.open(path, "r:") as archive:
            members = archive.getmembers()
            by_name = {member.name: member for member in members}
            expected = {MANIFEST_MEMBER, SIGNATURE_MEMBER, *PART_FILES.values()}
            if len(members) != len(expected) or set(by_name) != expected:
                found = ", ".join(member.name for member in members)
                raise BundleError(
                    f"{path}: members {found or 'none'}; want {', '.join(sorted(expected))}"
                )
            for member in members:
                if not member.isreg():
                    raise BundleError(f"{path}: {member.name} is not a regular file")
            manifest_bytes = _member_bytes(archive, by_name[MANIFEST_MEMBER], MAX_MANIFEST_BYTES)
            signature = _member_bytes(archive, by_name[SIGNATURE_MEMBER], SIGNATURE_BYTES)
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{path}: not an update bundle: {exc}") from exc
    except OSError as exc:
        raise BundleError(f"{path}: {exc.strerror or exc}") from exc
    verify_signature(manifest_bytes, signature, public_key_pem)
    manifest = Manifest.from_bytes(manifest_bytes)
    offsets: dict[str, int] = {}
    for name, part in manifest.parts.items():
        member = by_name[part.file]
        if member.size != part.size:
            raise ChecksumError(
                f"checksum mismatch for {name}: {member.size} bytes in the bundle,"
                f" the manifest says {part.size}"
            )
        offsets[name] = member.offset_data
    return Bundle(path, manifest, offsets)


def _member_bytes(archive: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise BundleError(f"{member.name}: {member.size} bytes, at most {limit} expected")
    stream = archive.extractfile(member)
    if stream is None:
        raise BundleError(f"{member.name}: cannot be read")
    return stream.read()


def _copy_hashing(src: BinaryIO, size: int, dst: BinaryIO | None = None) -> str:
    """sha256 of the next `size` bytes of `src`, written to `dst` on the way if given."""
    digest = hashlib.sha256()
    left = size
    while left > 0:
        block = src.read(min(CHUNK, left))
        if not block:
            raise ChecksumError(f"ended {left} bytes early")
        digest.update(block)
        if dst is not None:
            dst.write(block)
        left -= len(block)
    return digest.hexdigest()


def verify_parts(bundle: Bundle) -> None:
    """ChecksumError("checksum mismatch for PART") unless every part's sha256 matches."""
    with bundle.path.open("rb") as f:
        for name, part in bundle.manifest.parts.items():
            f.seek(bundle.offsets[name])
            try:
                digest = _copy_hashing(f, part.size)
            except ChecksumError as exc:
                raise ChecksumError(f"checksum mismatch for {name}: {exc}") from None
            if digest != part.sha256:
                raise ChecksumError(f"checksum mismatch for {name}")


# -- writing the slot -------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """Where a box keeps what an upgrade reads and writes (real paths on a box; a tree of
    plain files in tests): the image's public key, the kernel command line, the directory
    of partitions by GPT name, the mounted ESP, the box's architecture and its root."""

    public_key: Path
    cmdline: Path
    partitions: Path
    esp: Path
    arch: str
    root: Path = Path("/")

    def entries(self) -> dict[str, str]:
        folder = self.esp / "loader" / "entries"
        if not folder.is_dir():
            raise PlanError(f"{folder}: no loader entries: is {self.esp} the ESP?")
        return {
            path.name: path.read_text(encoding="utf-8", errors="replace")
            for path in sorted(folder.iterdir())
            if path.name.endswith(".conf")
        }


@dataclass(frozen=True)
class Written:
    """What an upgrade did, with its figures."""

    plan: Plan
    root_bytes: int
    verify_seconds: float
    write_seconds: float


def _device_size(f: BinaryIO) -> int:
    return f.seek(0, os.SEEK_END)


def _drop_cache(fd: int) -> None:
    # So that the read-back comes from the device, not from the page cache just written.
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _write_and_check(source: BinaryIO, offset: int, part: Part, dest: BinaryIO, what: str) -> None:
    source.seek(offset)
    dest.seek(0)
    try:
        written = _copy_hashing(source, part.size, dest)
    except ChecksumError as exc:
        raise WriteError(f"{what}: the bundle {exc}") from None
    if written != part.sha256:
        raise WriteError(f"{what}: the bundle changed while it was written (sha256 {written})")
    dest.flush()
    os.fsync(dest.fileno())
    _drop_cache(dest.fileno())
    dest.seek(0)
    read_back = _copy_hashing(dest, part.size)
    if read_back != part.sha256:
        raise WriteError(f"{what}: read back sha256 {read_back}, wrote {part.sha256}")


def _refuse_running_root(device: Path, box: Box) -> None:
    """Never write the device the running root is mounted from."""
    info = device.stat()
    if stat.S_ISBLK(info.st_mode) and info.st_rdev == box.root.stat().st_dev:
        raise PlanError(f"{device} holds the running root: refusing to write it")


def _write_root(plan: Plan, bundle: Bundle, box: Box) -> None:
    device = box.partitions / plan.partition
    part = bundle.manifest.parts["root"]
    try:
        _refuse_running_root(device, box)
        with bundle.path.open("rb") as source, device.open("r+b") as dest:
            room = _device_size(dest)
            if part.size > room:
                raise WriteError(f"{device}: root of {part.size} bytes does not fit {room} bytes")
            _write_and_check(source, bundle.offsets["root"], part, dest, str(device))
    except FileNotFoundError as exc:
        raise WriteError(f"{device}: no such partition") from exc
    except OSError as exc:
        raise WriteError(f"{device}: {exc.strerror or exc}") from exc


def _write_esp_files(plan: Plan, bundle: Bundle, box: Box) -> None:
    folder = box.esp / plan.esp_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # The slot's entry is gone: its old kernel and initrd are unused, and the ESP has no
        # room for both slots plus a second copy of one.
        for file in ESP_FILES.values():
            (folder / file).unlink(missing_ok=True)
        with bundle.path.open("rb") as source:
            for name, file in ESP_FILES.items():
                with (folder / file).open("w+b") as dest:
                    _write_and_check(
                        source, bundle.offsets[name], bundle.manifest.parts[name], dest, file
                    )
    except OSError as exc:
        raise WriteError(f"{folder}: {exc.strerror or exc}") from exc


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # FAT directories do not all take fsync
            os.fsync(fd)
    finally:
        os.close(fd)


def _switch_entries(plan: Plan, box: Box, *, add: bool) -> None:
    folder = box.esp / "loader" / "entries"
    try:
        if not add:
            for name in plan.remove_entries:
                (folder / name).unlink(missing_ok=True)
        else:
            partial = folder / f"{plan.entry_name}.part"  # not *.conf: never read as an entry
            with partial.open("w", encoding="utf-8") as f:
                f.write(plan.entry_text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, folder / plan.entry_name)
        _fsync_dir(folder)
    except OSError as exc:
        raise WriteError(f"{folder}: {exc.strerror or exc}") from exc


def apply_plan(plan: Plan, bundle: Bundle, box: Box, report: Callable[[str], None]) -> float:
    """Write the target slot as planned (bundle parts verified before); seconds taken."""
    started = time.monotonic()
    if plan.target == plan.running:
        raise PlanError(f"slot {plan.target} is running: refusing to write it")
    _switch_entries(plan, box, add=False)
    report(
        f"writing {plan.partition} ({bundle.manifest.parts['root'].size} bytes) and reading it back"
    )
    _write_root(plan, bundle, box)
    report(f"writing kernel and initrd to {box.esp / plan.esp_dir}")
    _write_esp_files(plan, bundle, box)
    _switch_entries(plan, box, add=True)
    os.sync()
    return time.monotonic() - started


def upgrade(path: Path, box: Box, *, now: float, report: Callable[[str], None]) -> Written:
    """Verify the bundle at `path` and write it to the slot that is not running."""
    try:
        public_key = box.public_key.read_bytes()
    except OSError as exc:
        raise SignatureError(
            f"no public key to check bundles with: {box.public_key}: {exc.strerror or exc}"
        ) from exc
    started = time.monotonic()
    bundle = read_bundle(path, public_key)
    report(f"signature good: edgegw {bundle.manifest.version} for {bundle.manifest.arch}")
    try:
        cmdline = box.cmdline.read_text()
    except OSError as exc:
        raise PlanError(f"{box.cmdline}: {exc.strerror or exc}") from exc
    plan = plan_upgrade(
        bundle.manifest, box_arch=box.arch, cmdline=cmdline, entries=box.entries(), now=now
    )
    report(
        f"running slot {plan.running} (root=PARTLABEL=root-{plan.running});"
        f" writing slot {plan.target}"
    )
    verify_parts(bundle)
    verify_seconds = time.monotonic() - started
    report(f"checksums good ({verify_seconds:.1f} s)")
    write_seconds = apply_plan(plan, bundle, box, report)
    report(
        f"slot {plan.target} written and read back in {write_seconds:.1f} s;"
        f" entry {plan.entry_name}"
    )
    return Written(plan, bundle.manifest.parts["root"].size, verify_seconds, write_seconds)


# -- the box itself ---------------------------------------------------------------------

# Where the ESP may be mounted (gpt-auto mounts it on /efi when the loader reports it).
ESP_MOUNTS = (Path("/efi"), Path("/boot/efi"), Path("/boot"))
PARTITIONS = Path("/dev/disk/by-partlabel")


def _find_esp(candidates: tuple[Path, ...]) -> Path | None:
    for path in candidates:
        with contextlib.suppress(OSError):  # an automount that cannot mount
            if (path / "loader" / "entries").is_dir():
                return path
    return None


@contextlib.contextmanager
def local_box() -> Iterator[Box]:
    """This box, with its ESP mounted (where it already is, else on a temporary directory,
    unmounted afterwards)."""
    arch = platform.machine()
    found = _find_esp(ESP_MOUNTS)
    if found is not None:
        yield Box(DEFAULT_PUBLIC_KEY, Path("/proc/cmdline"), PARTITIONS, found, arch)
        return
    with tempfile.TemporaryDirectory(prefix="edgegw-esp-") as tmp:
        device = PARTITIONS / "esp"
        done = subprocess.run(
            ["mount", "-t", "vfat", str(device), tmp], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise PlanError(f"cannot mount the ESP {device}: {done.stderr.strip()}")
        try:
            yield Box(DEFAULT_PUBLIC_KEY, Path("/proc/cmdline"), PARTITIONS, Path(tmp), arch)
        finally:
            subprocess.run(["umount", tmp], capture_output=True, check=False)


# -- the health check -------------------------------------------------------------------


def health_targets(config: Config) -> list[SipTarget]:
    """The gateway's own SIP addresses to ask: each UDP listener (a wildcard one on
    127.0.0.1)."""
    return [
        SipTarget("listener", "127.0.0.1" if entry.host == "0.0.0.0" else entry.host, entry.port)
        for entry in config.sip.listen
        if entry.transport == "udp"
    ]


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    seconds: float
    problems: tuple[str, ...]


def wait_healthy(
    targets: list[SipTarget],
    status: Callable[[], str | None],
    *,
    ping: Callable[[SipTarget], Response | None],
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    pause: float = 1.0,
) -> HealthResult:
    """Healthy once every target answered OPTIONS and `status` (None when `edgegw status`
    works, else why not) succeeded, within `timeout`; what was still failing otherwise."""
    started = clock()
    pending = list(targets)
    problems: tuple[str, ...] = ()
    while True:
        pending = [target for target in pending if ping(target) is None]
        status_problem = status()
        problems = tuple(
            [f"no answer to SIP OPTIONS from {t.host}:{t.port}" for t in pending]
            + ([f"status: {status_problem}"] if status_problem else [])
        )
        elapsed = clock() - started
        if not problems:
            return HealthResult(True, elapsed, ())
        if elapsed >= timeout:
            return HealthResult(False, elapsed, problems)
        sleep(min(pause, max(timeout - elapsed, 0.0)))
