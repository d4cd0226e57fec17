"""Build the flashable disk image `dist/edgegw-ARCH.img` and its compressed copy `.img.zst`.

Usage: `python images/disk/build.py ARCH` (what `./justw image-disk ARCH` runs, as root).

The image is a raw GPT disk, put together from partition images without loop mounts:
* `esp`     FAT32 EFI system partition: systemd-boot (Debian's systemd-boot-efi) as the
            removable-media loader, `loader/loader.conf`, and one entry per slot with that
            slot's kernel and initrd under `/EFI/edgegw/<slot>/`. The entry of slot A is
            `loader/entries/edgegw-a+3.conf`: systemd-boot counts its tries down in the name
            and systemd-bless-boot drops the counter once boot-complete.target is reached.
            A `provision/` folder written there (images/disk/provision.py, or by hand) is
            taken onto the data partition at boot.
* `root-a`  the read-only root file system (squashfs), Debian 12 with systemd as init;
* `root-b`  the same size, left empty (zeros, sparse in the raw file): the upgrade writes it,
            and only then gets slot B an entry;
* `data`    ext4, writable: the gateway's config (/var/lib/edgegw/edgegw.toml), SQLite store,
            CDR exports, captures and logs, systemd's state (timesyncd's clock file) and
            sshd's keys (root's authorized_keys, the box's own host keys). It is
            small in the image; systemd-repart grows it to the end of the disk on first boot.
Partitions are found by their GPT partition names (PARTLABEL), which is the interface the
upgrade uses; the kernel command line names the slot's root as root=PARTLABEL=root-<slot>.

The root file system comes from `mmdebstrap` (variant essential plus the packages below),
cached as a tarball under `.cache/images/` named by a digest of its recipe. The files under
`images/disk/rootfs/`, the one-file binary `dist/edgegw-ARCH` (at /usr/local/bin/edgegw) and
`images/edgegw.service` are added on top of an unpacked copy at each build, so changing them
costs no new debootstrap. Everything runs on the build host (no chroot): sysusers and unit
enabling use `systemd-sysusers --root` and `systemctl --root`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from images.binary.rootfs import RootfsError, enable_binfmt, host_arch  # noqa: E402

DIST = REPO_ROOT / "dist"
CACHE_DIR = REPO_ROOT / ".cache" / "images"
WORK = REPO_ROOT / "build" / "disk"
OVERLAY = HERE / "rootfs"
SERVICE = REPO_ROOT / "images" / "edgegw.service"
SUITE = "bookworm"

MIB = 1024 * 1024
SECTOR = 512
FIRST_MIB = 1  # partitions start 1 MiB aligned; the primary GPT lives before
TAIL_MIB = 1  # room for the backup GPT at the end of the disk

# Partition sizes (MiB). The root slots leave room for later, bigger releases: an upgrade
# rewrites a slot and cannot grow it.
# The ESP holds both slots' kernel and initrd (about 28 MiB a slot with the cloud kernel).
# 1 + 72 + 2 x 128 + 32 + 1 = 362 MiB (380 MB) in all. An arch can need more (Arch.esp_mib).
ESP_MIB = 72
SLOT_MIB = 128
DATA_MIB = 32

ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_DATA_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
SLOTS = ("a", "b")
TRIES = 3  # boot attempts of a new slot before systemd-boot prefers the other
DATA_FS_LABEL = "edgegw-data"
EDGEGW_UID = 900  # usr/lib/sysusers.d/edgegw.conf

# Services enabled in the image (besides what the Debian packages enable themselves).
ENABLED_UNITS = (
    "systemd-networkd.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
    "edgegw.service",
    "edgegw-net.service",
    "edgegw-provision-hint.service",
    "edgegw-provision.service",  # takes a config and SSH keys from the ESP's provision/
    "ssh.service",  # starts only once root has keys (ssh.service.d/edgegw.conf)
    "edgegw-health.service",  # required by boot-complete.target: gates the blessing of a boot
)

# What never goes into the image (dpkg path filters): documentation, manuals, translations.
DPKG_FILTERS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/zsh/*",
)

# Kernel modules of hardware and file systems a gateway box never has (InfiniBand, RAID,
# storage targets, network and cluster file systems...), dropped from the root (not from
# the initrd, made before): about 35 MB unpacked.
UNNEEDED_MODULES = (
    "drivers/infiniband",
    "drivers/md",
    "drivers/target",
    "drivers/comedi",
    "drivers/nvdimm",
    "drivers/vfio",
    "drivers/vhost",
    "drivers/soundwire",
    "drivers/cxl",
    "drivers/media",
    "fs/btrfs",
    "fs/xfs",
    "fs/nfs",
    "fs/nfsd",
    "fs/lockd",
    "fs/nfs_common",
    "fs/smb",
    "fs/ceph",
    "fs/orangefs",
    "fs/cachefiles",
    "fs/fscache",
    "fs/netfs",
    "fs/udf",
    "fs/zonefs",
    "fs/sysv",
    "fs/romfs",
    "net/sunrpc",
    "net/ceph",
    "net/rds",
    "net/smc",
    "net/tipc",
)

# initramfs-tools, set before the kernel is installed: zstd (smaller than gzip) and the root
# file system's module, which `MODULES=most` does not add by itself.
INITRAMFS_HOOK = (
    'mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"'
    ' && echo COMPRESS=zstd > "$1/etc/initramfs-tools/conf.d/edgegw.conf"'
    ' && echo squashfs > "$1/usr/share/initramfs-tools/modules.d/edgegw.conf"'
)
# apt satisfies init-system-helpers' "usrmerge | usr-is-merged" with usrmerge even when
# usr-is-merged is installed too; usrmerge brings the whole of perl (50 MB): out with them.
PURGE_HOOK = (
    'chroot "$1" dpkg --purge usrmerge libfile-find-rule-perl libnumber-compare-perl'
    " libtext-glob-perl perl libperl5.36 perl-modules-5.36"
)


@dataclass(frozen=True)
class Arch:
    """What differs between the architectures: Debian's name, the kernel flavour, the EFI
    loader's file names, the root partition type and the serial console."""

    debian: str
    kernel_package: str
    efi_loader: str  # under /usr/lib/systemd/boot/efi in the root file system
    efi_removable: str  # under /EFI/BOOT on the ESP: what firmware boots without NVRAM
    root_type: str  # "Root Partition" type of the Discoverable Partitions Specification
    console: str
    esp_mib: int = ESP_MIB

    @property
    def packages(self) -> tuple[str, ...]:
        return (
            self.kernel_package,
            "initramfs-tools",
            "zstd",
            "systemd",
            "systemd-sysv",
            "systemd-timesyncd",
            "systemd-resolved",
            "systemd-boot",
            "udev",
            "dbus",
            "kmod",
            "e2fsprogs",
            "nftables",
            "iproute2",
            "ca-certificates",
            "procps",
            "openssh-server",
            "usr-is-merged",  # see PURGE_HOOK
        )


ARCHES = {
    "x86_64": Arch(
        debian="amd64",
        kernel_package="linux-image-cloud-amd64",
        efi_loader="systemd-bootx64.efi",
        efi_removable="BOOTX64.EFI",
        root_type="4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        console="ttyS0,115200",
    ),
    "aarch64": Arch(
        debian="arm64",
        kernel_package="linux-image-cloud-arm64",
        efi_loader="systemd-bootaa64.efi",
        efi_removable="BOOTAA64.EFI",
        root_type="B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
        console="ttyAMA0,115200",
        # arm64 kernels are uncompressed Images (EFI stub, 27 MB; systemd-boot 252 cannot
        # load a compressed one): 39 MiB a slot with the initrd. 378 MiB (396 MB) in all.
        esp_mib=88,
    ),
}


TAR_OPTIONS = ("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*")
SQUASHFS_OPTIONS = (
    *("-noappend", "-quiet", "-no-progress"),
    *("-comp", "zstd", "-Xcompression-level", "19", "-b", "256K"),
)
MKFS_EXT4 = ("mkfs.ext4", "-q", "-F", "-L", DATA_FS_LABEL, "-E", "root_owner=0:0")


class BuildError(RuntimeError):
    """A step of the image build failed; the message names the step and the tool's words."""


@dataclass(frozen=True)
class Partition:
    """One GPT partition: its name (PARTLABEL), type GUID, first byte and size in bytes."""

    label: str
    type_guid: str
    start: int
    size: int


def layout(arch: Arch) -> list[Partition]:
    """The partitions of the image, in disk order, 1 MiB aligned."""
    parts: list[Partition] = []
    offset = FIRST_MIB * MIB
    for label, type_guid, mib in (
        ("esp", ESP_TYPE, arch.esp_mib),
        ("root-a", arch.root_type, SLOT_MIB),
        ("root-b", arch.root_type, SLOT_MIB),
        ("data", LINUX_DATA_TYPE, DATA_MIB),
    ):
        parts.append(Partition(label, type_guid, offset, mib * MIB))
        offset += mib * MIB
    return parts


def disk_size(parts: Sequence[Partition]) -> int:
    return parts[-1].start + parts[-1].size + TAIL_MIB * MIB


def run(command: Sequence[str], *, step: str, timeout: float = 1800, **kwargs: object) -> str:
    """Run a tool to completion; BuildError with its stderr when it fails."""
    try:
        done = subprocess.run(
            list(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"{step}: {command[0]}: {exc}") from exc
    if done.returncode != 0:
        raise BuildError(f"{step}: {' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return str(done.stdout)


# -- root file system ---------------------------------------------------------------------


def rootfs_tarball(arch: Arch) -> Path:
    """The cached Debian root of `arch` (mmdebstrap), made when its recipe is new."""
    recipe = {
        "suite": SUITE,
        "arch": arch.debian,
        "variant": "essential",
        "packages": sorted(arch.packages),
        "dpkg": list(DPKG_FILTERS),
        "hooks": [INITRAMFS_HOOK, PURGE_HOOK],
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    tarball = CACHE_DIR / f"disk-{SUITE}-{arch.debian}-{key}.tar"
    if tarball.is_file():
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".part")
    command = [
        "mmdebstrap",
        "--quiet",
        "--mode=root",
        "--format=tar",
        "--variant=essential",
        f"--architectures={arch.debian}",
        "--aptopt=APT::Install-Recommends false",
        *(f"--dpkgopt={rule}" for rule in DPKG_FILTERS),
        f"--essential-hook={INITRAMFS_HOOK}",
        f"--customize-hook={PURGE_HOOK}",
        "--include=" + ",".join(arch.packages),
        SUITE,
        str(partial),
    ]
    try:
        run(command, step="mmdebstrap")
    except BuildError:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(tarball)  # only a finished tarball ever has the cache's name
    return tarball


def unpack(tarball: Path, root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    run(
        [*TAR_OPTIONS, "-C", str(root), "-xpf", str(tarball)],
        step="unpack the root file system",
    )


def binary_version(binary: Path, root: Path) -> str:
    """`edgegw --version`; a binary of another architecture runs under qemu-user, which
    finds its dynamic loader and C library in `root` (the image's Debian) by QEMU_LD_PREFIX."""
    env = {**os.environ, "QEMU_LD_PREFIX": str(root)}
    out = run([str(binary), "--version"], step="edgegw --version", timeout=120, env=env)
    return out.strip().split()[-1]


def customize(root: Path, binary: Path, version: str) -> None:
    """Turn the Debian root into the gateway's read-only root (see the module docstring)."""
    shutil.copytree(OVERLAY, root, dirs_exist_ok=True, symlinks=True)
    local_bin = root / "usr/local/bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, local_bin / "edgegw")
    (local_bin / "edgegw").chmod(0o755)
    shutil.copy2(SERVICE, root / "usr/local/lib/systemd/system/edgegw.service")
    trim_modules(root)
    _no_host_keys(root)
    run(["systemd-sysusers", f"--root={root}"], step="systemd-sysusers")
    run(["systemctl", f"--root={root}", "enable", *ENABLED_UNITS], step="systemctl enable")
    _read_only_root(root)
    _stamp(root, version)
    install_update_key(root)


def install_update_key(root: Path) -> None:
    """The public key `edgegw upgrade` checks bundles against: that of the key
    images/update/build.py signs with ($EDGEGW_SIGNING_KEY, else the development key)."""
    from images.update.build import public_key_pem, signing_key

    dest = root / "usr/share/edgegw/update.pub"
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        dest.write_bytes(public_key_pem(signing_key()))
    except RuntimeError as exc:  # UpdateBuildError: the named key is unreadable
        raise BuildError(f"update key: {exc}") from exc


def _no_host_keys(root: Path) -> None:
    """Drop the SSH host keys openssh-server's postinst made in the build root: every box
    would share them. Each box makes its own on the data partition (ssh-prepare)."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()


def trim_modules(root: Path) -> None:
    """Drop UNNEEDED_MODULES and rebuild the module index (depmod on the host)."""
    for release in sorted((root / "usr/lib/modules").iterdir()):
        for rel in UNNEEDED_MODULES:
            shutil.rmtree(release / "kernel" / rel, ignore_errors=True)
        run(["depmod", "-b", str(root), release.name], step="depmod")


def _read_only_root(root: Path) -> None:
    """What a read-only root needs: mount points, a transient machine id, no update jobs."""
    for mount_point in ("data", "efi", "var/lib/edgegw"):
        (root / mount_point).mkdir(parents=True, exist_ok=True)
    # Empty: systemd makes a transient id at boot on a read-only /etc (machine-id(5)).
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"  # dbus's tmpfiles.d link, made ahead of time
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    if dbus_id.exists() or dbus_id.is_symlink():
        dbus_id.unlink()
    dbus_id.symlink_to("/etc/machine-id")
    resolv = root / "etc/resolv.conf"
    if resolv.exists() or resolv.is_symlink():
        resolv.unlink()
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    for leftover in ("var/cache/apt", "var/lib/apt/lists", "var/log"):
        path = root / leftover
        if path.is_dir():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


def _stamp(root: Path, version: str) -> None:
    """The image's identity (os-release IMAGE_ID/IMAGE_VERSION) and clock floor."""
    os_release = root / "usr/lib/os-release"
    text = os_release.read_text()
    os_release.write_text(text + f"IMAGE_ID=edgegw\nIMAGE_VERSION={version}\n")
    # systemd never sets the clock before this file's time (a board without a battery
    # boots in 1970 otherwise); ConditionNeedsUpdate= jobs are done: /etc and /var are
    # read-only and the image is complete.
    for stamp in ("usr/lib/clock-epoch", "etc/.updated", "var/.updated"):
        (root / stamp).touch()


def kernel_files(root: Path) -> tuple[Path, Path]:
    """The kernel and initrd in the root's /boot (exactly one of each)."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise BuildError(f"want one kernel and one initrd in /boot, got {kernels} {initrds}")
    return kernels[0], initrds[0]


def squashfs(root: Path, out: Path) -> None:
    out.unlink(missing_ok=True)
    run(
        ["mksquashfs", str(root), str(out), *SQUASHFS_OPTIONS],
        step="mksquashfs",
    )


# -- the other partitions -----------------------------------------------------------------


def boot_entry(arch: Arch, slot: str, version: str, stamp: str) -> str:
    """The systemd-boot entry of `slot` (Boot Loader Specification type #1)."""
    return (
        f"title edgegw {version} (slot {slot})\n"
        "sort-key edgegw\n"
        # Newest first among entries with tries left: the upgrade gives its slot a later one.
        f"version {stamp}\n"
        f"linux /EFI/edgegw/{slot}/vmlinuz\n"
        f"initrd /EFI/edgegw/{slot}/initrd.img\n"
        f"options root=PARTLABEL=root-{slot} rootfstype=squashfs ro"
        f" console=tty0 console={arch.console} panic=30 edgegw.slot={slot}\n"
    )


LOADER_CONF = (
    # No menu (a key held at boot shows it); no editing of the kernel command line.
    "timeout 0\neditor no\nconsole-mode keep\n"
)


def esp_image(arch: Arch, root: Path, out: Path, version: str, stamp: str) -> None:
    """The FAT32 ESP with systemd-boot and slot A's entry, kernel and initrd (mtools)."""
    out.unlink(missing_ok=True)
    run(
        ["mkfs.vfat", "-F", "32", "-n", "EDGEGW-ESP", "-C", str(out), str(arch.esp_mib * 1024)],
        step="mkfs.vfat",
    )
    kernel, initrd = kernel_files(root)
    loader = root / "usr/lib/systemd/boot/efi" / arch.efi_loader
    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(tmp) / f"edgegw-a+{TRIES}.conf"
        entry.write_text(boot_entry(arch, "a", version, stamp))
        conf = Path(tmp) / "loader.conf"
        conf.write_text(LOADER_CONF)
        image = f"{out}"
        for folder in ("EFI", "EFI/BOOT", "EFI/systemd", "EFI/edgegw", "EFI/edgegw/a"):
            run(["mmd", "-i", image, f"::/{folder}"], step="mmd")
        for folder in ("loader", "loader/entries"):
            run(["mmd", "-i", image, f"::/{folder}"], step="mmd")
        for source, dest in (
            (loader, f"EFI/BOOT/{arch.efi_removable}"),
            (loader, f"EFI/systemd/{arch.efi_loader}"),
            (kernel, "EFI/edgegw/a/vmlinuz"),
            (initrd, "EFI/edgegw/a/initrd.img"),
            (conf, "loader/loader.conf"),
            (entry, f"loader/entries/{entry.name}"),
        ):
            run(["mcopy", "-i", image, str(source), f"::/{dest}"], step="mcopy")


def data_image(source: Path, out: Path, size: int) -> None:
    """An ext4 file system of `size` bytes holding the tree `source` (mkfs.ext4 -d)."""
    out.unlink(missing_ok=True)
    run(
        [*MKFS_EXT4, "-d", str(source), str(out), f"{size // 1024}k"],
        step="mkfs.ext4",
    )


def data_tree(dest: Path, config: Path | None = None) -> Path:
    """The data partition's content: the gateway's state directory (with `config` as its
    edgegw.toml if given) and systemd's state directory."""
    if dest.exists():
        shutil.rmtree(dest)
    state = dest / "edgegw"
    state.mkdir(parents=True)
    (dest / "system").mkdir()
    if config is not None:
        shutil.copy2(config, state / "edgegw.toml")
        (state / "edgegw.toml").chmod(0o640)
    for path in (state, *state.iterdir()):
        os.chown(path, EDGEGW_UID, EDGEGW_UID)
    state.chmod(0o750)
    return dest


# -- assembling the disk ------------------------------------------------------------------


def sfdisk_script(parts: Iterable[Partition]) -> str:
    lines = ["label: gpt", "unit: sectors", f"first-lba: {FIRST_MIB * MIB // SECTOR}"]
    lines += [
        f'start={p.start // SECTOR}, size={p.size // SECTOR}, type={p.type_guid}, name="{p.label}"'
        for p in parts
    ]
    return "\n".join(lines) + "\n"


def copy_into(image: Path, offset: int, source: Path, limit: int) -> None:
    """Write `source` into `image` at `offset` (dd conv=notrunc,sparse: zero blocks skipped)."""
    size = source.stat().st_size
    if size > limit:
        raise BuildError(f"{source.name}: {size} bytes do not fit its {limit}-byte partition")
    with source.open("rb") as src, image.open("r+b") as dst:
        position = offset
        while block := src.read(MIB):
            if block.count(0) != len(block):
                dst.seek(position)
                dst.write(block)
            position += len(block)


def assemble(out: Path, parts: Sequence[Partition], contents: dict[str, Path]) -> None:
    """A sparse raw disk with the GPT of `parts`, each filled from `contents` (by label)."""
    partial = out.with_name(out.name + ".part")
    partial.unlink(missing_ok=True)
    with partial.open("wb") as f:
        f.truncate(disk_size(parts))
    run(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(partial)],
        step="sfdisk",
        input=sfdisk_script(parts),
    )
    for part in parts:
        if part.label in contents:
            copy_into(partial, part.start, contents[part.label], part.size)
    partial.rename(out)


def partitions(image: Path) -> dict[str, Partition]:
    """The partitions of a disk image by GPT name (sfdisk --json)."""
    table = json.loads(run(["sfdisk", "--json", str(image)], step="sfdisk --json"))
    found: dict[str, Partition] = {}
    for entry in table["partitiontable"]["partitions"]:
        name = entry.get("name", "")
        found[name] = Partition(
            name, entry["type"], entry["start"] * SECTOR, entry["size"] * SECTOR
        )
    return found


def write_data_partition(image: Path, tree: Path, work: Path) -> None:
    """Replace the data partition of `image` with an ext4 holding `tree` (no mounts)."""
    part = partitions(image)["data"]
    fs = work / "data.ext4"
    data_image(tree, fs, part.size)
    copy_into(image, part.start, fs, part.size)
    fs.unlink()


def esp_path(image: Path) -> str:
    """The mtools `-i` argument that reaches the ESP inside a whole-disk image."""
    return f"{image}@@{partitions(image)['esp'].start}"


def compress(image: Path) -> Path:
    out = image.with_name(image.name + ".zst")
    run(["zstd", "-q", "-f", "-T0", "-12", str(image), "-o", str(out)], step="zstd")
    return out


# -- the build ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    image: Path
    compressed: Path
    seconds: float
    root_bytes: int


def run_foreign(arch_name: str) -> None:
    """Let the host run `arch_name`'s programs through qemu-user (binfmt_misc), as the
    build needs for a foreign root: its maintainer scripts and hooks (the initramfs is made
    there, once per cached root) and the binary's `--version`."""
    if arch_name == host_arch():
        return
    try:
        enable_binfmt(arch_name)
    except RootfsError as exc:
        raise BuildError(f"qemu-user for {arch_name}: {exc}") from exc


def build(arch_name: str) -> Result:
    started = time.monotonic()
    arch = ARCHES[arch_name]
    binary = DIST / f"edgegw-{arch_name}"
    if not binary.is_file():
        raise BuildError(f"{binary} is missing: build it first with ./justw binary {arch_name}")
    work = WORK / arch_name
    work.mkdir(parents=True, exist_ok=True)
    run_foreign(arch_name)
    tarball = rootfs_tarball(arch)
    root = work / "root"
    unpack(tarball, root)
    version = binary_version(binary, root)
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    customize(root, binary, version)
    squashfs(root, work / "root-a.squashfs")
    esp_image(arch, root, work / "esp.vfat", version, stamp)
    data_image(data_tree(work / "data"), work / "data.ext4", DATA_MIB * MIB)
    parts = layout(arch)
    DIST.mkdir(parents=True, exist_ok=True)
    image = DIST / f"edgegw-{arch_name}.img"
    assemble(
        image,
        parts,
        {
            "esp": work / "esp.vfat",
            "root-a": work / "root-a.squashfs",
            "data": work / "data.ext4",
        },
    )
    compressed = compress(image)
    root_bytes = (work / "root-a.squashfs").stat().st_size
    shutil.rmtree(root)
    return Result(image, compressed, time.monotonic() - started, root_bytes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("arch", choices=sorted(ARCHES))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("image-disk: needs root (mmdebstrap, file ownership in the image)", file=sys.stderr)
        return 1
    try:
        result = build(args.arch)
    except BuildError as exc:
        print(f"image-disk: {exc}", file=sys.stderr)
        return 1
    print(
        f"{result.image}: {result.image.stat().st_size / MIB:.0f} MiB raw "
        f"(root squashfs {result.root_bytes / MIB:.1f} MiB); {result.compressed}: "
        f"{result.compressed.stat().st_size / MIB:.1f} MiB; built in {result.seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
