"""Provision a disk image (or a flashed disk) before its first boot: put a config and root's
SSH public keys into the `provision/` folder of its ESP.

Usage: `python images/disk/provision.py TARGET [--config FILE] [--authorized-keys FILE]`
(what `./justw image-provision` runs). TARGET is `dist/edgegw-ARCH.img` or a copy of it, or
the block device a card or disk was flashed to; its ESP is found by GPT name and written
with mtools (no mounts, nothing else on the disk is touched).

Both files are checked here first, so that a mistake shows on the build machine and not on
a box in a rack: the config with the gateway's own rules plus the image's (its state must
land on the data partition), the keys one line at a time. At boot,
`edgegw-provision.service` checks them again, moves them to the data partition and deletes
them from the ESP (images/disk/rootfs/usr/local/lib/edgegw/provision).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_ssh_public_key

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # run as a script: the repo's packages

from gateway.config import ConfigError, load_config  # noqa: E402
from images.disk import build  # noqa: E402

SEED = "provision"
BOX_STATE = "/var/lib/edgegw"  # the data partition's edgegw/ (images/disk/rootfs/etc/fstab)
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
# cryptography reads these; the sk- (security key) types it does not: their blob is only
# checked to be there.
_SK_PREFIX = "sk-"


class ProvisionError(ValueError):
    """A file to provision is not fit for the box; the message names the file and why."""


def check_config(path: Path) -> None:
    """The gateway's own checks, and where the state goes: a box's root is read-only, so an
    absolute `[general] var_dir` other than /var/lib/edgegw would leave the gateway unable
    to start (a relative one lands on the data partition: the unit's working directory)."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise ProvisionError(f"{path}: not a valid config: {exc}") from exc
    var_dir = str(config.general.var_dir)
    if var_dir.startswith("/") and var_dir.rstrip("/") != BOX_STATE:
        raise ProvisionError(
            f'{path}: [general] var_dir = "{var_dir}" is on the read-only root of the box;'
            f' use "{BOX_STATE}" (the data partition)'
        )


def _key_of(line: str) -> tuple[str, str] | None:
    """(type, base64 blob) of an authorized_keys line, whatever options precede them."""
    words = line.split()
    for i, word in enumerate(words[:-1]):
        if word in KEY_TYPES:
            return word, words[i + 1]
    return None


def check_authorized_keys(path: Path) -> int:
    """The number of public keys in `path`; refused if it has none, holds a private key, or
    has a line that is not a key (the box's sshd would skip it: a key silently not let in)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"{path}: cannot read: {exc}") from exc
    if "PRIVATE KEY" in text:
        raise ProvisionError(f"{path}: holds a private key; give the public one (.pub)")
    count = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key = _key_of(line)
        if key is None:
            raise ProvisionError(f"{path}:{number}: not an SSH public key line: {line[:60]!r}")
        if not key[0].startswith(_SK_PREFIX):
            try:
                load_ssh_public_key(f"{key[0]} {key[1]}".encode())
            except (ValueError, TypeError) as exc:
                raise ProvisionError(f"{path}:{number}: bad {key[0]} key: {exc}") from exc
        count += 1
    if count == 0:
        raise ProvisionError(f"{path}: no public key in it")
    return count


def _mtools(*command: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:  # not installed: ./justw image-provision installs mtools
        raise ProvisionError(f"{command[0]}: {exc.strerror or exc} (Debian: mtools)") from exc


def write_seed(target: Path, files: dict[str, Path]) -> list[str]:
    """Copy `files` (name on the ESP: local file) into the ESP's provision/ folder; return
    what the folder holds afterwards. A stale ERRORS.txt from an earlier boot is removed."""
    try:
        esp = build.esp_path(target)
    except (build.BuildError, KeyError) as exc:
        raise ProvisionError(f"{target}: cannot find its ESP (GPT name esp): {exc}") from exc
    _mtools("mmd", "-i", esp, f"::/{SEED}")  # fails only when it exists: checked below
    _mtools("mdel", "-i", esp, f"::/{SEED}/ERRORS.txt")
    for name, source in files.items():
        done = _mtools("mcopy", "-o", "-i", esp, str(source), f"::/{SEED}/{name}")
        if done.returncode != 0:
            raise ProvisionError(f"{target}: writing {SEED}/{name} failed: {done.stderr.strip()}")
    listing = _mtools("mdir", "-b", "-i", esp, f"::/{SEED}")
    if listing.returncode != 0:
        raise ProvisionError(f"{target}: cannot list {SEED}/: {listing.stderr.strip()}")
    return sorted(Path(line.strip()).name for line in listing.stdout.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", type=Path, help="disk image or block device")
    parser.add_argument("--config", type=Path, help="the box's edgegw.toml")
    parser.add_argument(
        "--authorized-keys", type=Path, help="root's SSH public keys (authorized_keys format)"
    )
    args = parser.parse_args(argv)
    if args.config is None and args.authorized_keys is None:
        parser.error("give --config, --authorized-keys or both")
    files: dict[str, Path] = {}
    try:
        if args.config is not None:
            check_config(args.config)
            files["edgegw.toml"] = args.config
        if args.authorized_keys is not None:
            keys = check_authorized_keys(args.authorized_keys)
            files["authorized_keys"] = args.authorized_keys
        if not args.target.exists():
            raise ProvisionError(f"{args.target}: no such image or device")
    except ProvisionError as exc:
        print(f"image-provision: {exc}; nothing written", file=sys.stderr)
        return 1
    try:
        present = write_seed(args.target, files)
    except ProvisionError as exc:
        print(f"image-provision: {exc}", file=sys.stderr)
        return 1
    if args.authorized_keys is not None:
        print(f"{args.authorized_keys}: {keys} key(s) for root")
    print(f"{args.target}: ESP {SEED}/ now holds {', '.join(present)};")
    print("the box checks them and moves them to its data partition at its next boot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
