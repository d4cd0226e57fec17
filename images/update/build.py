"""Build the update bundle `dist/edgegw-ARCH.update` from the disk image `dist/edgegw-ARCH.img`.

Usage: `python images/update/build.py ARCH` (what `./justw image-update ARCH` runs after
building the disk image). The bundle holds exactly what the image's slot A holds: the root
squashfs (read from the `root-a` partition, cut at the size its superblock gives), the kernel
and initrd (from the ESP's /EFI/edgegw/a/), and a manifest naming the version, build stamp and
kernel options (from slot A's loader entry) with each part's size and sha256, signed with
ed25519. The format is `gateway.control.upgrade`'s, which `edgegw upgrade` reads on the box.

Signing key: the PEM file named by $EDGEGW_SIGNING_KEY (production builds pass their own),
else a development key made once under `.cache/images/`. The disk image build puts the
matching public key at /usr/share/edgegw/update.pub, so a box takes only bundles signed
with the key its image was built with.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from gateway.control import upgrade  # noqa: E402
from images.disk import build as disk  # noqa: E402

SIGNING_KEY_ENV = "EDGEGW_SIGNING_KEY"
DEV_KEY = disk.CACHE_DIR / "update-signing-dev.pem"
WORK = REPO_ROOT / "build" / "update"
SQUASHFS_MAGIC = b"hsqs"
SQUASHFS_BYTES_USED = 40  # offset of the superblock's bytes_used (little-endian u64)
SQUASHFS_PAD = 4096  # mksquashfs pads its output to 4 KiB


class UpdateBuildError(RuntimeError):
    """Making the bundle failed; the message names the step."""


# -- keys -------------------------------------------------------------------------------


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise UpdateBuildError(f"signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UpdateBuildError(f"signing key {path}: not an ed25519 private key")
    return key


def _new_dev_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    partial = path.with_name(path.name + f".{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    try:
        os.link(partial, path)  # the first build to get here wins; the others use its key
    except FileExistsError:
        pass
    finally:
        partial.unlink()


def signing_key_path() -> Path:
    """$EDGEGW_SIGNING_KEY, else the development key (made on first use)."""
    named = os.environ.get(SIGNING_KEY_ENV)
    if named:
        return Path(named)
    if not DEV_KEY.is_file():
        _new_dev_key(DEV_KEY)
    return DEV_KEY


def signing_key() -> Ed25519PrivateKey:
    return _load_private(signing_key_path())


def public_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -- the bundle -------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(upgrade.CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed owner, mode and time: the same parts give the same bundle.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info


def write_bundle(
    out: Path,
    *,
    version: str,
    arch: str,
    build: str,
    options: str,
    parts: Mapping[str, Path],
    key: Ed25519PrivateKey,
) -> upgrade.Manifest:
    """Write a signed bundle of `parts` (part name -> file) to `out`; its manifest."""
    manifest = upgrade.Manifest(
        version=version,
        arch=arch,
        build=build,
        options=options,
        parts={
            name: upgrade.Part(file, parts[name].stat().st_size, _sha256_file(parts[name]))
            for name, file in upgrade.PART_FILES.items()
        },
    )
    manifest_bytes = manifest.to_bytes()
    signature = upgrade.sign_manifest(manifest_bytes, key)
    partial = out.with_name(out.name + ".part")
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in (
            (upgrade.MANIFEST_MEMBER, manifest_bytes),
            (upgrade.SIGNATURE_MEMBER, signature),
        ):
            archive.addfile(_tar_info(name, len(data)), io.BytesIO(data))
        for name, file in upgrade.PART_FILES.items():
            with parts[name].open("rb") as f:
                archive.addfile(_tar_info(file, manifest.parts[name].size), f)
    partial.rename(out)
    return manifest


# -- what slot A of the image holds -----------------------------------------------------


@dataclass(frozen=True)
class SlotContent:
    version: str
    build: str
    options: str
    parts: dict[str, Path]


def squashfs_size(image: Path, offset: int) -> int:
    """The size of the squashfs at `offset` of `image`, padded as mksquashfs writes it."""
    with image.open("rb") as f:
        f.seek(offset)
        superblock = f.read(96)
    if superblock[:4] != SQUASHFS_MAGIC:
        raise UpdateBuildError(f"{image}: no squashfs at byte {offset} (slot A)")
    (used,) = struct.unpack_from("<Q", superblock, SQUASHFS_BYTES_USED)
    return -(-int(used) // SQUASHFS_PAD) * SQUASHFS_PAD


def _mtools(*command: str) -> str:
    done = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UpdateBuildError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


def slot_a(image: Path, work: Path) -> SlotContent:
    """Copy slot A's root, kernel and initrd out of `image`; its version and options."""
    work.mkdir(parents=True, exist_ok=True)
    part = disk.partitions(image)["root-a"]
    size = squashfs_size(image, part.start)
    root = work / "root.squashfs"
    with image.open("rb") as src, root.open("wb") as dst:
        src.seek(part.start)
        left = size
        while left > 0:
            block = src.read(min(upgrade.CHUNK, left))
            dst.write(block)
            left -= len(block)
    esp = disk.esp_path(image)
    parts = {"root": root}
    for name, file in upgrade.ESP_FILES.items():
        parts[name] = work / file
        _mtools("mcopy", "-o", "-n", "-i", esp, f"::/EFI/edgegw/a/{file}", str(parts[name]))
    listing = _mtools("mdir", "-b", "-i", esp, "::/loader/entries")
    names = [Path(line.strip()).name for line in listing.splitlines() if line.strip()]
    entries = [n for n in names if (p := upgrade.parse_entry_name(n)) and p.slot == "a"]
    if len(entries) != 1:
        raise UpdateBuildError(f"{image}: want one loader entry of slot a, found {names}")
    text = _mtools("mtype", "-i", esp, f"::/loader/entries/{entries[0]}")
    fields = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    title = fields.get("title", "").split()
    if len(title) < 2 or title[0] != "edgegw":
        raise UpdateBuildError(f"{entries[0]}: no edgegw version in its title {title}")
    options = " ".join(
        word
        for word in fields.get("options", "").split()
        if not word.startswith(("root=", "edgegw.slot="))
    )
    return SlotContent(title[1], fields.get("version", "").strip(), options, parts)


def build(arch: str) -> tuple[Path, upgrade.Manifest, float]:
    started = time.monotonic()
    image = disk.DIST / f"edgegw-{arch}.img"
    if not image.is_file():
        raise UpdateBuildError(f"{image} is missing: build it with ./justw image-disk {arch}")
    work = WORK / arch
    content = slot_a(image, work)
    out = disk.DIST / f"edgegw-{arch}.update"
    manifest = write_bundle(
        out,
        version=content.version,
        arch=arch,
        build=content.build,
        options=content.options,
        parts=content.parts,
        key=signing_key(),
    )
    for path in content.parts.values():
        path.unlink()
    return out, manifest, time.monotonic() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("arch", choices=sorted(disk.ARCHES))
    args = parser.parse_args(argv)
    try:
        out, manifest, seconds = build(args.arch)
    except (UpdateBuildError, disk.BuildError, OSError) as exc:
        print(f"image-update: {exc}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{name} {p.size / disk.MIB:.1f} MiB" for name, p in manifest.parts.items())
    print(
        f"{out}: {out.stat().st_size / disk.MIB:.1f} MiB ({sizes}); edgegw {manifest.version}"
        f" build {manifest.build}, signed with {signing_key_path()}; made in {seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
