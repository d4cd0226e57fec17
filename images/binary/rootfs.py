"""Debian 12 root file systems for building and checking the single binary.

Made with ``mmdebstrap --variant=essential`` (no container engine runs on the build
machines) and cached as tarballs under ``.cache/images/``, named by a digest of everything
that decides their content (suite, architecture, variant, extra packages), so a change of
the package list makes a new one and an unchanged list costs nothing. A foreign
architecture (arm64 on an x86_64 host) runs through qemu-user registered with binfmt_misc.

Processes run inside an unpacked tree with ``unshare --mount --mount-proc=ROOT/proc chroot
ROOT ...``: a private mount namespace gives the program a /proc that disappears with it,
while the network namespace stays the host's, so peers on the host's loopback (sipp) reach a
gateway inside. No pid namespace and no fork: unshare and chroot exec in turn, so the pid
the caller holds is the program's own and a SIGTERM reaches it directly.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "images"
SUITE = "bookworm"

# Our architecture names (DESIGN.md's outside contract) -> Debian's and qemu-user's.
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")


class RootfsError(RuntimeError):
    """A root file system could not be made, unpacked or entered; the message says why."""


def host_arch() -> str:
    """The machine's architecture in our naming (x86_64 or aarch64)."""
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def check_arch(arch: str) -> str:
    if arch not in DEBIAN_ARCH:
        raise RootfsError(f"unknown architecture {arch!r}: use one of {', '.join(DEBIAN_ARCH)}")
    return arch


def missing_tools(arch: str) -> list[str]:
    """The programs (and their Debian packages) this module needs for `arch` and lacks."""
    needed = {"mmdebstrap": "mmdebstrap", "unshare": "util-linux", "chroot": "coreutils"}
    if arch != host_arch():
        needed[f"qemu-{arch}-static"] = "qemu-user-static"
        needed["update-binfmts"] = "binfmt-support"
    return [
        f"{tool} (Debian package {package})"
        for tool, package in needed.items()
        if shutil.which(tool) is None
    ]


def rootfs_tarball(arch: str, packages: Sequence[str] = ()) -> Path:
    """The cached essential rootfs of `arch` with `packages` added, made if missing (and,
    for a foreign `arch`, qemu-user registered to run it)."""
    check_arch(arch)
    recipe = {
        "suite": SUITE,
        "variant": "essential",
        "arch": DEBIAN_ARCH[arch],
        "packages": sorted(set(packages)),
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    tarball = CACHE_DIR / f"{SUITE}-{DEBIAN_ARCH[arch]}-essential-{key}.tar"
    if arch != host_arch():
        # Every user of a foreign root runs its programs: registered here, once per boot.
        enable_binfmt(arch)
    if tarball.is_file():
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".tar.part")
    command = [
        "mmdebstrap",
        "--quiet",
        "--mode=root",
        # The name of the partial file does not end in .tar, so say the format.
        "--format=tar",
        "--variant=essential",
        f"--architectures={DEBIAN_ARCH[arch]}",
    ]
    if recipe["packages"]:
        command.append("--include=" + ",".join(recipe["packages"]))
    command += [SUITE, str(partial)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RootfsError(f"mmdebstrap failed ({done.returncode}):\n{done.stderr[-4000:]}")
    # Written aside and renamed, so an interrupted run never leaves a tarball that looks
    # complete.
    partial.rename(tarball)
    return tarball


def enable_binfmt(arch: str) -> None:
    """Make the kernel run `arch` binaries through qemu-user (binfmt_misc, qemu-user-static)."""
    entry = BINFMT_MISC / f"qemu-{arch}"
    if entry.exists():
        return
    if not (BINFMT_MISC / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_MISC)])
    _run(["update-binfmts", "--enable", f"qemu-{arch}"])
    if not entry.exists():
        raise RootfsError(f"binfmt_misc has no {entry.name} entry after update-binfmts")


def unpack(tarball: Path, dest: Path) -> Path:
    """Unpack `tarball` into the directory `dest` (made if missing), keeping owners/modes."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(["tar", "-C", str(dest), "--numeric-owner", "-xpf", str(tarball)])
    return dest


def temporary_root(prefix: str) -> Path:
    """A new empty directory on the repository's disk (unpacked roots are too big for a
    small /tmp), for the caller to remove with `remove_root`."""
    base = CACHE_DIR / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def remove_root(root: Path) -> None:
    """Remove an unpacked tree; refuses one with something still mounted below it."""
    mounts = Path("/proc/self/mounts").read_text(encoding="utf-8").split("\n")
    prefix = str(root.resolve()) + "/"
    busy = [line.split()[1] for line in mounts if line and line.split()[1].startswith(prefix)]
    if busy:
        raise RootfsError(f"{root}: still mounted below it: {', '.join(busy)}")
    shutil.rmtree(root, ignore_errors=True)


def chroot_command(root: Path, argv: Sequence[str]) -> list[str]:
    """The command line that runs `argv` inside `root` (see the module docstring)."""
    return [
        "unshare",
        "--mount",
        f"--mount-proc={root / 'proc'}",
        "chroot",
        str(root),
        *argv,
    ]


def chroot_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment for a program in the rootfs: nothing of the host's venv."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
    }
    env.update(extra or {})
    return env


def run_in_root(
    root: Path,
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in `root` to completion (text output), bounded by `timeout` seconds."""
    done = subprocess.run(
        chroot_command(root, argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=chroot_env(env),
        check=False,
    )
    if check and done.returncode != 0:
        raise RootfsError(
            f"{' '.join(argv)} in {root} exited {done.returncode}:\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


def _run(command: Sequence[str]) -> None:
    done = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RootfsError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")


if __name__ == "__main__":  # pragma: no cover - a manual way to warm the cache
    import sys

    print(rootfs_tarball(sys.argv[1], sys.argv[2:]))
