"""Build the single executable `dist/edgegw-ARCH` (ARCH = x86_64 | aarch64).

Usage: `python images/binary/build.py ARCH [--force]` (what `./justw binary ARCH` runs).

The executable holds the Python runtime, the `gateway` package with its cffi codec modules
(`gateway/_native_*.abi3.so`), the C libraries they link (libopus, libspandsp, libbcg729,
libspeexdsp, and through their wheels pylibsrtp's libsrtp and cryptography's OpenSSL), the
package's data files and the metadata of the distributions it reports versions of. It runs
on a Debian 12 system without Python (checked by `images/binary/check.py`).

Why PyInstaller (one-file mode):
* it freezes the interpreter itself, so the target needs no Python at all; shiv and PEX
  only zip the code and need a system Python of the right version at run time;
* it finds and bundles the shared libraries of extension modules (here the codec
  libraries behind our cffi modules and their own dependencies), with hooks maintained for
  the third-party packages we use (cryptography, trio, hypercorn, certifi...);
* it builds in minutes with no C compiler for our code and no project changes; Nuitka
  compiles the whole program to C, which costs far longer builds (very long under qemu for
  aarch64) for a start-up time that is not the bottleneck of a long-running gateway;
  PyOxidizer is no longer maintained and needs its own Rust toolchain downloaded.
The price of one-file mode is that each start unpacks the bundle to a temporary directory
(the cold start is measured by check.py) and that the gateway runs as a child of the
bootloader process, which forwards signals to it.

The native build happens on the architecture itself: PyInstaller cannot cross-build, so
aarch64 is built inside an arm64 Debian 12 rootfs run through qemu-user (binfmt_misc), with
a venv of Debian's python3 made there. On the host the project venv (`./justw` made it)
is used as it is.

The build is skipped when the binary is newer than every input (the package, the native
sources, pyproject.toml/setup.py, these build files, and the venv's installed packages);
`--force` builds anyway.
"""

from __future__ import annotations

import argparse
import os
import shutil
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from images.binary.rootfs import (  # noqa: E402
    RootfsError,
    check_arch,
    host_arch,
    missing_tools,
    remove_root,
    rootfs_tarball,
    run_in_root,
    temporary_root,
    unpack,
)

DIST = REPO_ROOT / "dist"
WORK = REPO_ROOT / "build" / "pyinstaller"

# Data files the package reads at run time (Path(__file__)-relative), as (source, folder in
# the bundle). The partner API serves its OpenAPI description from the package.
DATA_FILES = (("gateway/control/openapi.yaml", "gateway/control"),)

# Never needed at run time: test and build tools of the venv, and big optional modules some
# libraries try to import. numpy is only a test dependency (PESQ, benchmarks); the gateway
# does not import it.
EXCLUDES = (
    "tkinter",
    "numpy",
    "pesq",
    "pytest",
    "_pytest",
    "hypothesis",
    "mypy",
    "mypyc",
    "ruff",
    "yaml",
    "setuptools",
    "pip",
    "lib2to3",
    "IPython",
)

# Debian packages of the arm64 build root: Debian's Python (with libpython for PyInstaller),
# a compiler and the codec headers for the cffi build, certificates for pip.
BUILD_PACKAGES = (
    "python3",
    "python3-venv",
    "python3-dev",
    "gcc",
    "libc6-dev",
    "binutils",
    "ca-certificates",
    "libopus-dev",
    "libspeexdsp-dev",
    "libspandsp-dev",
    "libbcg729-dev",
)

# What the arm64 build root gets of the repository.
SOURCE_PARTS = ("gateway", "native", "images/binary", "pyproject.toml", "setup.py", "README.md")
SKIPPED_SOURCES = ("__pycache__", ".so", ".o", ".pyc")

FOREIGN_BUILD_TIMEOUT = 4 * 3600.0


class BuildError(RuntimeError):
    """The binary could not be built; the message says which step failed and why."""


def output_path(arch: str) -> Path:
    return DIST / f"edgegw-{arch}"


def _source_files() -> Iterator[Path]:
    for part in ("gateway", "native", "images/binary"):
        for folder, dirs, files in os.walk(REPO_ROOT / part):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                # The build files' documentation does not change the binary.
                if not name.endswith((".pyc", ".md")):
                    yield Path(folder, name)
    for name in ("pyproject.toml", "setup.py"):
        yield REPO_ROOT / name
    # The venv's package directory changes (mtime) whenever a distribution is added,
    # removed or upgraded: a new dependency version must rebuild the binary too.
    yield from (REPO_ROOT / ".venv" / "lib").glob("python3*/site-packages")


def is_up_to_date(binary: Path) -> bool:
    """True when `binary` exists and is newer than every input of the build."""
    try:
        built = binary.stat().st_mtime
    except FileNotFoundError:
        return False
    for source in _source_files():
        try:
            if source.stat().st_mtime > built:
                return False
        except FileNotFoundError:
            continue
    return True


def _images_requirements() -> list[str]:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras: dict[str, list[str]] = pyproject["project"]["optional-dependencies"]
    return list(extras["images"])


def ensure_pyinstaller() -> None:
    """Install the `images` extra's tools into this interpreter's venv when missing."""
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        requirements = _images_requirements()
        print(f"binary: installing {' '.join(requirements)}", file=sys.stderr)
        _check_call([sys.executable, "-m", "pip", "install", "-q", *requirements])


def _check_native_modules() -> None:
    missing = [
        script.stem.removeprefix("build_")
        for script in sorted((REPO_ROOT / "native").glob("build_*.py"))
        if not list((REPO_ROOT / "gateway").glob(f"_native_{script.stem[6:]}.*.so"))
    ]
    if missing:
        raise BuildError(
            f"native modules not built: {', '.join(missing)} "
            "(run ./justw, or pip install -e . in the venv)"
        )


def pyinstaller_args(arch: str, distpath: Path) -> list[str]:
    """PyInstaller's command line for the one-file build of `arch` into `distpath`."""
    workdir = WORK / arch
    args = [
        "--onefile",
        "--noconfirm",
        "--clean",
        "--log-level=WARN",
        f"--name=edgegw-{arch}",
        f"--distpath={distpath}",
        f"--workpath={workdir}",
        f"--specpath={workdir}",
        f"--paths={REPO_ROOT}",
        # The CLI and the service import some modules lazily (per command, per feature):
        # take every module of the package, not only those the entry point reaches.
        "--collect-submodules=gateway",
        # importlib.metadata versions (diagnostics bundle) of the project and its deps.
        "--recursive-copy-metadata=edgegw",
        "--strip",
    ]
    for source, folder in DATA_FILES:
        args.append(f"--add-data={REPO_ROOT / source}{os.pathsep}{folder}")
    for module in EXCLUDES:
        args.append(f"--exclude-module={module}")
    args.append(str(HERE / "entry.py"))
    return args


def build_here(arch: str) -> Path:
    """Build with this interpreter (its venv holds the project) on its own architecture."""
    _check_native_modules()
    ensure_pyinstaller()
    staging = WORK / arch / "dist"
    shutil.rmtree(staging, ignore_errors=True)
    _check_call([sys.executable, "-m", "PyInstaller", *pyinstaller_args(arch, staging)])
    built = staging / f"edgegw-{arch}"
    version = subprocess.run(
        [str(built), "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    from gateway import __version__

    if version.returncode != 0 or version.stdout.strip() != f"edgegw {__version__}":
        raise BuildError(
            f"{built} --version gave {version.returncode}: {version.stdout!r} {version.stderr!r}"
        )
    DIST.mkdir(exist_ok=True)
    target = output_path(arch)
    # Renamed into place: a reader of dist/ (the OCI recipe) never sees a half-written file.
    os.replace(built, target)
    return target


def _copy_sources(dest: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIPPED_SOURCES or n.endswith(SKIPPED_SOURCES)}

    for part in SOURCE_PARTS:
        source = REPO_ROOT / part
        if source.is_dir():
            shutil.copytree(source, dest / part, ignore=ignore)
        elif source.is_file():
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / part)
    # The gateway's generated C sources are build products of the native step.
    for stale in (dest / "gateway").glob("_native_*.c"):
        stale.unlink()


def build_foreign(arch: str, keep_root: bool) -> Path:
    """Build inside an `arch` Debian 12 rootfs through qemu-user, then take the binary out."""
    missing = missing_tools(arch)
    if missing:
        raise BuildError(f"building {arch} here needs {', '.join(missing)}")
    started = time.monotonic()
    tarball = rootfs_tarball(arch, BUILD_PACKAGES)
    print(f"binary: build root {tarball.name} ready after {_since(started)}", file=sys.stderr)
    root = temporary_root(f"build-{arch}-")
    try:
        unpack(tarball, root)
        _copy_sources(root / "src")
        shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
        # pip in the root trusts what the host's pip trusts: the way to PyPI here may be
        # through a TLS proxy whose CA only the host's bundle holds.
        shutil.copy2(_host_ca_bundle(), root / "etc" / "ssl" / "host-ca.crt")
        script = (
            "set -e; python3 -m venv /venv; "
            "/venv/bin/pip install -q --disable-pip-version-check --upgrade pip; "
            "/venv/bin/pip install -q --disable-pip-version-check -e '/src[images]'; "
            f"/venv/bin/python /src/images/binary/build.py {arch} --force"
        )
        print(f"binary: venv and PyInstaller build in {root} (emulated)", file=sys.stderr)
        run_in_root(
            root,
            ["sh", "-c", script],
            timeout=FOREIGN_BUILD_TIMEOUT,
            env={"PIP_CERT": "/etc/ssl/host-ca.crt"},
        )
        DIST.mkdir(exist_ok=True)
        target = output_path(arch)
        partial = target.with_name(target.name + ".part")
        shutil.copy2(root / "src" / "dist" / target.name, partial)
        os.replace(partial, target)
    except (RootfsError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{arch} build in {root} failed after {_since(started)}: {exc}") from exc
    finally:
        if keep_root:
            print(f"binary: build root kept at {root}", file=sys.stderr)
        else:
            remove_root(root)
    return target


def _host_ca_bundle() -> str:
    bundle = os.environ.get("PIP_CERT") or ssl.get_default_verify_paths().cafile
    return bundle or "/etc/ssl/certs/ca-certificates.crt"


def _since(started: float) -> str:
    return f"{time.monotonic() - started:.0f} s"


def _check_call(command: list[str]) -> None:
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(command[:4])}... exited {done.returncode}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build dist/edgegw-ARCH, the single binary.")
    parser.add_argument("arch", help="x86_64 or aarch64")
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    parser.add_argument(
        "--keep-root", action="store_true", help="keep the foreign build root (debugging)"
    )
    options = parser.parse_args(argv)
    try:
        arch = check_arch(options.arch)
    except RootfsError as exc:
        parser.error(str(exc))
    target = output_path(arch)
    if not options.force and is_up_to_date(target):
        print(f"binary: {target.relative_to(REPO_ROOT)} is up to date", file=sys.stderr)
        return 0
    started = time.monotonic()
    try:
        native = arch == host_arch()
        built = build_here(arch) if native else build_foreign(arch, options.keep_root)
    except BuildError as exc:
        print(f"binary: {exc}", file=sys.stderr)
        return 1
    size = built.stat().st_size / 1e6
    print(f"binary: {built} ({size:.1f} MB) built in {_since(started)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
