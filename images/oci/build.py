"""The OCI container image of edgegw, written as an OCI image layout by this script.

``build.py image --arch ARCH --binary dist/edgegw-ARCH --out dist/edgegw-ARCH.oci.tar``
writes one architecture's image; ``build.py index --out dist/edgegw.oci.tar A.oci.tar
B.oci.tar`` joins per-arch archives into one layout whose image index lists them with their
platforms. Both are tar'd OCI image layouts (OCI Image Format Specification v1.1:
image-layout.md for ``oci-layout``, ``index.json`` and ``blobs/sha256/``; manifest.md,
image-index.md, config.md; layer.md for the gzip'd tar changesets), read by ``skopeo
inspect oci-archive:FILE`` and ``umoci unpack --image DIR:edgegw``.

Why write the layout here rather than with umoci: umoci makes a layer by diffing an
unpacked root file system, so owners (root, and 5060 for the state directory) need root or
a rootless mapping, and times, entry order and gzip headers follow the host; writing each
tar header here fixes them (entries sorted, owner 0 except the state directory, mtime
SOURCE_DATE_EPOCH, gzip header without name or time). The same binary, config and
cached .deb files therefore give the same digests, with no root and no container engine.

The image has two layers. The base holds only what the PyInstaller binary needs from the
system: glibc and its loader (Debian bookworm ``libc6`` without its gconv modules, which
nothing here uses), ``libgcc-s1`` (glibc loads it to unwind threads), ``zlib1g``
(PyInstaller's bootloader links libz.so.1 to unpack the binary's archive), the Mozilla CA
certificates of ``ca-certificates`` joined into /etc/ssl/certs/ca-certificates.crt (what
its postinst would do) for TLS trunks, and /etc/passwd and /etc/group with the user
``edgegw`` (uid/gid 5060). No tzdata: the gateway keeps its times in UTC. The packages come
for the target architecture from mmdebstrap (extract variant: nothing is run, so no
emulation) and are cached under .cache/images/debs/. The app layer holds the binary as
/usr/local/bin/edgegw, the unprovisioned default config /etc/edgegw/edgegw.toml (no
subscribers, trunks, partners or secrets) and the state directory /var/lib/edgegw.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import hashlib
import io
import json
import os
import posixpath
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[2]
HERE: Final = Path(__file__).resolve().parent
DEFAULT_CONFIG: Final = HERE / "edgegw.toml"
DEB_CACHE: Final = REPO / ".cache" / "images" / "debs"
SUITE: Final = "bookworm"

MEDIA_TYPE_INDEX: Final = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME: Final = "org.opencontainers.image.ref.name"
IMAGE_REF: Final = "edgegw"

USER: Final = "edgegw"
UID: Final = 5060
BINARY_PATH: Final = "usr/local/bin/edgegw"
CONFIG_PATH: Final = "etc/edgegw/edgegw.toml"
STATE_DIR: Final = "var/lib/edgegw"
CA_BUNDLE: Final = "etc/ssl/certs/ca-certificates.crt"
MEDIA_PORTS: Final = (20000, 20199)
ENTRYPOINT: Final = ["/usr/local/bin/edgegw", "run", "--config", "/etc/edgegw/edgegw.toml"]
HEALTHCHECK: Final = ["/usr/local/bin/edgegw", "status", "--config", "/etc/edgegw/edgegw.toml"]
# Docker's Healthcheck durations are nanoseconds. The interval is long because each run of
# the one-file binary unpacks itself first (0.5 s of CPU on the x86_64 build machine).
_SECOND: Final = 1_000_000_000
HEALTHCHECK_TIMING: Final = {
    "Interval": 30 * _SECOND,
    "Timeout": 10 * _SECOND,
    "StartPeriod": 30 * _SECOND,
    "Retries": 3,
}
# The Debian packages of the base, and what of them the image keeps (see `keep_path`).
BASE_PACKAGES: Final = ("libc6", "libgcc-s1", "gcc-12-base", "zlib1g", "ca-certificates")
_DROPPED_TREES: Final = (
    "usr/share/lintian",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/sbin",  # update-ca-certificates, a shell script: the bundle is made here instead
    "etc/ca-certificates/update.d",
)
# gzip level: the binary is mostly PyInstaller's zlib streams already, so 9 gains little.
GZIP_LEVEL: Final = 6


class BuildError(Exception):
    """The image could not be built: the message names the input and what was wrong."""


class DebError(BuildError):
    """A .deb file that is not a Debian binary package this script can read."""


@dataclass(frozen=True)
class Arch:
    """A target: the project's name for it, Debian's, OCI's (GOARCH) and its multiarch triplet."""

    name: str
    debian: str
    oci: str
    variant: str
    triplet: str


ARCHES: Final = {
    "x86_64": Arch("x86_64", "amd64", "amd64", "", "x86_64-linux-gnu"),
    "aarch64": Arch("aarch64", "arm64", "arm64", "v8", "aarch64-linux-gnu"),
}


class Kind(Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True, order=True)
class Entry:
    """One entry of a layer: `path` is relative to / without a leading "./" or "/"."""

    path: str
    kind: Kind = dataclasses.field(compare=False)
    mode: int = dataclasses.field(compare=False)
    uid: int = dataclasses.field(default=0, compare=False)
    gid: int = dataclasses.field(default=0, compare=False)
    data: bytes = dataclasses.field(default=b"", compare=False, repr=False)
    target: str = dataclasses.field(default="", compare=False)

    @staticmethod
    def dir(path: str, mode: int = 0o755, owner: int = 0) -> Entry:
        return Entry(path, Kind.DIR, mode, owner, owner)

    @staticmethod
    def file(path: str, data: bytes, mode: int = 0o644) -> Entry:
        return Entry(path, Kind.FILE, mode, data=data)

    @staticmethod
    def symlink(path: str, target: str) -> Entry:
        return Entry(path, Kind.SYMLINK, 0o777, target=target)


@dataclass(frozen=True)
class Blob:
    """Content addressed by its sha256 digest, with the descriptor that names it."""

    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


@dataclass(frozen=True)
class Layer:
    """A gzip'd layer tar; `diff_id` is the digest of the uncompressed tar (config.md)."""

    blob: Blob
    diff_id: str
    unpacked_size: int


@dataclass(frozen=True)
class ImageInfo:
    """What goes into the image config and the manifest's annotations."""

    version: str
    revision: str
    source: str
    epoch: int


# ---- Debian packages -----------------------------------------------------------------------


def ar_members(data: bytes, name: str) -> dict[str, bytes]:
    """The members of an ar(5) archive (a .deb's outer format), by name."""
    magic = b"!<arch>\n"
    if not data.startswith(magic):
        raise DebError(f"{name}: not an ar archive (a .deb starts with {magic!r})")
    members: dict[str, bytes] = {}
    offset = len(magic)
    while offset < len(data):
        header = data[offset : offset + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise DebError(f"{name}: truncated or corrupt ar header at byte {offset}")
        member = header[:16].decode("ascii").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError as exc:
            raise DebError(f"{name}: bad size in the ar header of {member!r}") from exc
        start = offset + 60
        if start + size > len(data):
            raise DebError(f"{name}: member {member!r} runs past the end of the file")
        members[member] = data[start : start + size]
        offset = start + size + (size % 2)  # members are padded to an even offset
    return members


def deb_entries(path: Path) -> list[Entry]:
    """The files of a Debian binary package (its data.tar), as layer entries owned by root."""
    members = ar_members(path.read_bytes(), str(path))
    if members.get("debian-binary", b"").strip() != b"2.0":
        raise DebError(f"{path}: not a Debian 2.0 binary package (debian-binary member)")
    data_name = next((m for m in members if m.startswith("data.tar")), None)
    if data_name is None:
        raise DebError(f"{path}: no data.tar member")
    try:
        with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as tar:
            return list(_tar_entries(tar, f"{path}:{data_name}"))
    except tarfile.TarError as exc:
        raise DebError(f"{path}: {data_name}: {exc}") from exc


def _tar_entries(tar: tarfile.TarFile, name: str) -> Iterator[Entry]:
    files: dict[str, bytes] = {}
    for member in tar:
        path = _member_path(member.name)
        if path == ".":
            continue
        mode = member.mode & 0o7777
        if member.isdir():
            yield Entry(path, Kind.DIR, mode)
        elif member.isreg():
            extracted = tar.extractfile(member)
            assert extracted is not None  # a regular member always has content
            files[path] = extracted.read()
            yield Entry(path, Kind.FILE, mode, data=files[path])
        elif member.issym():
            yield Entry.symlink(path, member.linkname)
        elif member.islnk():
            # A hard link becomes a copy: layers stay plain, and the image is small anyway.
            target = _member_path(member.linkname)
            if target not in files:
                raise DebError(f"{name}: hard link {path} to {target}, which comes later")
            yield Entry(path, Kind.FILE, mode, data=files[target])
        else:
            raise DebError(f"{name}: {path}: unexpected tar member type {member.type!r}")


def _member_path(name: str) -> str:
    """A data.tar name ("./usr/lib/x", "./") as a layer path ("usr/lib/x", ".")."""
    return posixpath.normpath("/" + name).lstrip("/") or "."


def keep_path(entry: Entry, arch: Arch) -> bool:
    """Whether the base keeps a packaged file: no docs but copyrights, no gconv, no tools."""
    dropped = (*_DROPPED_TREES, f"usr/lib/{arch.triplet}/gconv", f"lib/{arch.triplet}/gconv")
    if any(entry.path == tree or entry.path.startswith(tree + "/") for tree in dropped):
        return False
    if entry.path.startswith("usr/share/doc/") and entry.kind is not Kind.DIR:
        return entry.kind is Kind.FILE and entry.path.endswith("/copyright")
    return True


def fetch_debs(arch: Arch, cache: Path = DEB_CACHE) -> dict[str, Path]:
    """The base packages for `arch`, from the cache or downloaded with mmdebstrap."""
    directory = cache / arch.debian
    found = _cached_debs(directory)
    if set(found) >= set(BASE_PACKAGES):
        return found
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap not found (Debian package mmdebstrap; ./justw installs it)")
    with tempfile.TemporaryDirectory(prefix="edgegw-debs-") as tmp:
        target = Path(tmp) / "root"
        # extract: apt resolves and unpacks, runs nothing (no emulation for a foreign arch);
        # the skips keep the downloaded .debs in the target's apt cache.
        command = [
            "mmdebstrap",
            "--quiet",
            "--variant=extract",
            f"--architectures={arch.debian}",
            "--include=" + ",".join(BASE_PACKAGES),
            "--skip=download/empty",
            "--skip=cleanup/apt/cache",
            "--format=directory",
            SUITE,
            str(target),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BuildError(f"mmdebstrap failed ({done.returncode}):\n{done.stderr[-3000:]}")
        downloaded = _cached_debs(target / "var/cache/apt/archives")
        missing = set(BASE_PACKAGES) - set(downloaded)
        if missing:
            raise BuildError(f"mmdebstrap did not download {sorted(missing)} for {arch.debian}")
        directory.mkdir(parents=True, exist_ok=True)
        for package in BASE_PACKAGES:
            shutil.copy2(downloaded[package], directory / downloaded[package].name)
    return _cached_debs(directory)


def _cached_debs(directory: Path) -> dict[str, Path]:
    """Package name -> .deb in `directory` (the last in name order if there are several).

    The cache pins the base: delete .cache/images/debs/ARCH to take Debian's updates."""
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("*.deb")) if directory.is_dir() else []:
        package = path.name.split("_", 1)[0]
        if package in BASE_PACKAGES:
            found[package] = path
    return found


# ---- layer contents ------------------------------------------------------------------------


def base_entries(debs: Mapping[str, Path], arch: Arch) -> list[Entry]:
    """The base layer: the kept files of the packages, then the files made here."""
    entries: dict[str, Entry] = {}
    for package in BASE_PACKAGES:
        if package not in debs:
            raise BuildError(f"no .deb for {package} ({arch.debian})")
        for entry in deb_entries(debs[package]):
            if keep_path(entry, arch):
                entries[entry.path] = entry
    certificates = sorted(
        e for e in entries.values() if e.path.startswith("usr/share/ca-certificates/mozilla/")
    )
    if not certificates:
        raise BuildError(f"{debs['ca-certificates']}: no certificates under mozilla/")
    made = [
        Entry.file("etc/passwd", _passwd()),
        Entry.file("etc/group", _group()),
        Entry.file("etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n"),
        Entry.file(CA_BUNDLE, b"".join(_with_newline(c.data) for c in certificates)),
        # A Debian-built OpenSSL (bundled in the binary) looks in /usr/lib/ssl first.
        Entry.symlink("usr/lib/ssl/certs", "/etc/ssl/certs"),
        Entry.symlink("usr/lib/ssl/cert.pem", "/" + CA_BUNDLE),
        # The one-file binary unpacks itself under $TMPDIR or /tmp at every start.
        Entry.dir("tmp", 0o1777),
        Entry.dir("var/tmp", 0o1777),
        Entry.dir("root", 0o700),
        *(Entry.dir(mount) for mount in ("dev", "proc", "sys", "run")),
    ]
    for entry in made:
        entries[entry.path] = entry
    return list(entries.values())


def _passwd() -> bytes:
    return (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"{USER}:x:{UID}:{UID}:edgegw gateway:/{STATE_DIR}:/usr/sbin/nologin\n"
    ).encode()


def _group() -> bytes:
    return f"root:x:0:\n{USER}:x:{UID}:\n".encode()


def _with_newline(data: bytes) -> bytes:
    return data if data.endswith(b"\n") else data + b"\n"


def app_entries(binary: bytes, config: bytes) -> list[Entry]:
    """The app layer: the binary, the default config and the user's state directory."""
    return [
        Entry(BINARY_PATH, Kind.FILE, 0o755, data=binary),
        Entry.file(CONFIG_PATH, config),
        Entry.dir(STATE_DIR, 0o750, owner=UID),
    ]


def with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """`entries` sorted by path, each parent directory present (root, 0755, if not given)."""
    by_path = {entry.path: entry for entry in entries}
    for path in list(by_path):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            existing = by_path.setdefault(parent, Entry.dir(parent))
            if existing.kind is not Kind.DIR:
                raise BuildError(f"{path}: its parent {parent} is a {existing.kind.value}")
    return sorted(by_path.values())


def layer(entries: Iterable[Entry], epoch: int) -> Layer:
    """A gzip'd tar of `entries` with parents, sorted, every time `epoch`."""
    raw = io.BytesIO()
    unpacked = 0
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in with_parents(entries):
            info = tarfile.TarInfo(entry.path)
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            info.uname = info.gname = ""
            info.mtime = epoch
            if entry.kind is Kind.DIR:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind is Kind.SYMLINK:
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                unpacked += info.size
                tar.addfile(info, io.BytesIO(entry.data))
    data = raw.getvalue()
    compressed = io.BytesIO()
    # No file name and time 0 in the gzip header: the blob depends on the content only.
    with gzip.GzipFile(
        filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=GZIP_LEVEL
    ) as gz:
        gz.write(data)
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    return Layer(Blob(MEDIA_TYPE_LAYER, compressed.getvalue()), diff_id, unpacked)


# ---- image config, manifest and layout ------------------------------------------------------


def iso_time(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def labels(info: ImageInfo) -> dict[str, str]:
    """The image's labels: OCI's annotation keys, and what a runtime should grant it."""
    found = {
        "org.opencontainers.image.title": "edgegw",
        "org.opencontainers.image.description": "Edge SIP/RTP media gateway (unprovisioned)",
        "org.opencontainers.image.version": info.version,
        "org.opencontainers.image.revision": info.revision,
        "org.opencontainers.image.created": iso_time(info.epoch),
        # Capabilities: the default ports are all above 1024, so none is needed.
        "io.edgegw.capabilities.required": "",
        "io.edgegw.capabilities.optional": "CAP_NET_BIND_SERVICE",
        "io.edgegw.capabilities": (
            "drop ALL; add CAP_NET_BIND_SERVICE only when sip.listen or http.listen binds a "
            "port below 1024. `edgegw net apply` (CAP_NET_ADMIN) is for hosts, not containers."
        ),
        "io.edgegw.media-ports": f"{MEDIA_PORTS[0]}-{MEDIA_PORTS[1]}/udp",
        "io.edgegw.healthcheck": " ".join(HEALTHCHECK),
        "io.edgegw.config": "/" + CONFIG_PATH,
    }
    if info.source:
        found["org.opencontainers.image.source"] = info.source
    return found


def exposed_ports() -> dict[str, dict[str, str]]:
    """SIP (UDP, TCP, TLS), HTTP, and every port of the media range (OCI lists ports singly)."""
    ports = ["5060/udp", "5060/tcp", "5061/tcp", "8080/tcp"]
    ports += [f"{port}/udp" for port in range(MEDIA_PORTS[0], MEDIA_PORTS[1] + 1)]
    return {port: {} for port in ports}


def image_config(arch: Arch, layers: Sequence[Layer], info: ImageInfo) -> dict[str, Any]:
    """The image configuration (config.md); Healthcheck is Docker's field, which podman and
    docker read from the config blob too."""
    created = iso_time(info.epoch)
    platform: dict[str, Any] = {"architecture": arch.oci, "os": "linux"}
    if arch.variant:
        platform["variant"] = arch.variant
    return {
        "created": created,
        **platform,
        "config": {
            "User": f"{UID}:{UID}",
            "Env": [
                "PATH=/usr/local/bin:/usr/bin:/bin",
                "SSL_CERT_FILE=/" + CA_BUNDLE,
                "EDGEGW_SOCKET=/var/lib/edgegw/control.sock",
            ],
            "Entrypoint": list(ENTRYPOINT),
            "WorkingDir": "/" + STATE_DIR,
            "ExposedPorts": exposed_ports(),
            "Volumes": {"/" + STATE_DIR: {}},
            "StopSignal": "SIGTERM",
            "Labels": labels(info),
            "Healthcheck": {"Test": ["CMD", *HEALTHCHECK], **HEALTHCHECK_TIMING},
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {
                "created": created,
                "created_by": "images/oci/build.py: base from Debian "
                + f"{SUITE} {arch.debian}: "
                + ", ".join(BASE_PACKAGES),
            },
            {"created": created, "created_by": "images/oci/build.py: edgegw binary and config"},
        ],
    }


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def platform_of(config: Mapping[str, Any]) -> dict[str, str]:
    """An image index's platform field (image-index.md) from an image config."""
    platform = {"architecture": str(config["architecture"]), "os": str(config["os"])}
    if config.get("variant"):
        platform["variant"] = str(config["variant"])
    return platform


@dataclass
class Layout:
    """Blobs of an OCI image layout and the descriptor index.json points to."""

    blobs: dict[str, Blob] = dataclasses.field(default_factory=dict)

    def add(self, blob: Blob) -> Blob:
        self.blobs[blob.digest] = blob
        return blob

    def write(self, out: Path, top: Mapping[str, Any], epoch: int) -> None:
        """Write the tar'd layout to `out` (atomically): index.json lists only `top`."""
        index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [top]}
        files = {
            "oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}),
            "index.json": canonical_json(index),
        }
        for digest, blob in self.blobs.items():
            files["blobs/sha256/" + digest.removeprefix("sha256:")] = blob.data
        entries = [Entry.file(path, data) for path, data in files.items()]
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for entry in with_parents(entries):
                info = tarfile.TarInfo(entry.path)
                info.mtime, info.uname, info.gname = epoch, "", ""
                if entry.kind is Kind.DIR:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.mode, info.size = 0o644, len(entry.data)
                    tar.addfile(info, io.BytesIO(entry.data))
        partial.replace(out)


def build_image(
    arch: Arch, binary: bytes, config: bytes, debs: Mapping[str, Path], info: ImageInfo
) -> tuple[Layout, dict[str, Any], list[Layer]]:
    """The layout of one architecture's image and its manifest descriptor."""
    layers = [
        layer(base_entries(debs, arch), info.epoch),
        layer(app_entries(binary, config), info.epoch),
    ]
    layout = Layout()
    for made in layers:
        layout.add(made.blob)
    config_blob = layout.add(
        Blob(MEDIA_TYPE_CONFIG, canonical_json(image_config(arch, layers, info)))
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [made.blob.descriptor() for made in layers],
        "annotations": {
            key: value
            for key, value in labels(info).items()
            if key.startswith("org.opencontainers.image.")
        },
    }
    manifest_blob = layout.add(Blob(MEDIA_TYPE_MANIFEST, canonical_json(manifest)))
    top = manifest_blob.descriptor(annotations={REF_NAME: IMAGE_REF})
    return layout, top, layers


def read_layout(path: Path) -> tuple[Layout, dict[str, Any]]:
    """A tar'd single-image layout: its blobs (digests checked) and its one manifest's
    descriptor."""
    layout = Layout()
    try:
        with tarfile.open(path) as tar:
            files = {}
            for member in tar:
                extracted = tar.extractfile(member) if member.isreg() else None
                if extracted is not None:
                    files[member.name.removeprefix("./")] = extracted.read()
    except (OSError, tarfile.TarError) as exc:
        raise BuildError(f"{path}: not a readable tar: {exc}") from exc
    if "index.json" not in files:
        raise BuildError(f"{path}: no index.json (not an OCI image layout)")
    manifests = json.loads(files["index.json"]).get("manifests", [])
    if len(manifests) != 1 or manifests[0].get("mediaType") != MEDIA_TYPE_MANIFEST:
        raise BuildError(f"{path}: index.json must list exactly one image manifest")
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            blob = Blob("", data)
            if blob.digest != "sha256:" + name.rsplit("/", 1)[1]:
                raise BuildError(f"{path}: {name}: content does not match its digest")
            layout.add(blob)
    return layout, dict(manifests[0])


def build_index(archives: Sequence[Path]) -> tuple[Layout, dict[str, Any]]:
    """One layout holding every image of `archives` and an image index listing their
    manifests with their platforms; index.json points to that index as "edgegw"."""
    joined = Layout()
    entries = []
    for archive in archives:
        layout, top = read_layout(archive)
        manifest = json.loads(layout.blobs[top["digest"]].data)
        config = json.loads(layout.blobs[manifest["config"]["digest"]].data)
        for blob in layout.blobs.values():
            joined.add(blob)
        entries.append(
            {
                "mediaType": MEDIA_TYPE_MANIFEST,
                "digest": top["digest"],
                "size": top["size"],
                "platform": platform_of(config),
            }
        )
    platforms = [json.dumps(entry["platform"], sort_keys=True) for entry in entries]
    if len(set(platforms)) != len(platforms):
        raise BuildError(f"two archives of the same platform: {platforms}")
    entries.sort(key=lambda entry: entry["platform"]["architecture"])
    index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": entries}
    index_blob = joined.add(Blob(MEDIA_TYPE_INDEX, canonical_json(index)))
    return joined, index_blob.descriptor(annotations={REF_NAME: IMAGE_REF})


# ---- inputs from the repository -------------------------------------------------------------


def source_date_epoch() -> int:
    """$SOURCE_DATE_EPOCH, else the last commit's time (reproducible-builds.org's rule)."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value:
        try:
            return int(value)
        except ValueError as exc:
            raise BuildError(f"SOURCE_DATE_EPOCH must be an integer, got {value!r}") from exc
    done = _git("log", "-1", "--format=%ct")
    return int(done) if done else 0


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def repo_info(epoch: int) -> ImageInfo:
    """Version from pyproject.toml, revision and source from git ($EDGEGW_IMAGE_SOURCE wins)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    urls = project.get("urls", {})
    source = (
        os.environ.get("EDGEGW_IMAGE_SOURCE")
        or _git("remote", "get-url", "origin")
        or urls.get("Source", "")
        or urls.get("Homepage", "")
    )
    return ImageInfo(
        version=str(project["version"]),
        revision=_git("rev-parse", "HEAD") or "unknown",
        source=source,
        epoch=epoch,
    )


def check_config(path: Path) -> bytes:
    """The default config, refused unless the gateway's own loader accepts it and it carries
    no subscribers, trunks or partners (an image ships unprovisioned)."""
    sys.path.insert(0, str(REPO))
    from gateway.config import ConfigError, parse_config

    text = path.read_text(encoding="utf-8")
    try:
        config = parse_config(text, source=str(path))
    except ConfigError as exc:
        raise BuildError(str(exc)) from exc
    provisioned = [name for name in ("subscribers", "trunks", "partners") if getattr(config, name)]
    if provisioned:
        raise BuildError(f"{path}: an image ships unprovisioned, but it has {provisioned}")
    return text.encode()


# ---- command line -----------------------------------------------------------------------------


def _image_command(args: argparse.Namespace) -> None:
    started = time.monotonic()
    arch = ARCHES[args.arch]
    if not args.binary.is_file():
        raise BuildError(
            f"{args.binary}: no such binary (build it with ./justw binary {arch.name})"
        )
    config = check_config(args.config)
    debs = fetch_debs(arch)
    info = repo_info(source_date_epoch())
    layout, top, layers = build_image(arch, args.binary.read_bytes(), config, debs, info)
    layout.write(args.out, top, info.epoch)
    compressed = sum(len(made.blob.data) for made in layers)
    unpacked = sum(made.unpacked_size for made in layers)
    print(
        f"{args.out}: {arch.oci} {top['digest']}; layers {compressed / 1e6:.1f} MB "
        f"compressed, {unpacked / 1e6:.1f} MB of files; {time.monotonic() - started:.1f} s"
    )


def _index_command(args: argparse.Namespace) -> None:
    layout, top = build_index(args.archives)
    layout.write(args.out, top, source_date_epoch())
    print(f"{args.out}: image index {top['digest']} of {len(args.archives)} images")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    image = commands.add_parser("image", help="one architecture's image")
    image.add_argument("--arch", choices=sorted(ARCHES), required=True)
    image.add_argument("--binary", type=Path, required=True)
    image.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    image.add_argument("--out", type=Path, required=True)
    image.set_defaults(run=_image_command)
    index = commands.add_parser("index", help="a multi-arch index of per-arch archives")
    index.add_argument("--out", type=Path, required=True)
    index.add_argument("archives", type=Path, nargs="+")
    index.set_defaults(run=_index_command)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
