"""The OCI layout writer of images/oci/build.py, on small inputs.

Debian packages are real ones made here with `dpkg-deb --build` (read back by the script's
own ar/tar reader and compared with `dpkg-deb --contents`); layers, configs, manifests and
indexes are checked against the OCI image spec's rules (digests over the exact bytes,
diff_ids over the uncompressed tar, platforms in the index) and for reproducibility: the
same entries in any order give the same digest. Malformed inputs and what they get: not an
ar archive, a cut ar header, a member running past the end, an ar without debian-binary
(DebError each); a file where a directory must be, a tampered blob, an archive that is not
a tar, two images of one platform, a provisioned default config (BuildError each).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from images.oci.build import (
    ARCHES,
    BASE_PACKAGES,
    CA_BUNDLE,
    DEFAULT_CONFIG,
    ENTRYPOINT,
    HEALTHCHECK,
    MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST,
    UID,
    Blob,
    BuildError,
    DebError,
    Entry,
    ImageInfo,
    Kind,
    Layout,
    app_entries,
    ar_members,
    base_entries,
    build_image,
    build_index,
    check_config,
    deb_entries,
    image_config,
    keep_path,
    layer,
    read_layout,
    with_parents,
)

INFO = ImageInfo(version="9.9.9", revision="0" * 40, source="", epoch=1_700_000_000)
X86 = ARCHES["x86_64"]
ARM = ARCHES["aarch64"]
needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def make_deb(tmp: Path, package: str, files: Mapping[str, bytes | str]) -> Path:
    """A real .deb of `package` holding `files` (str values are symlink targets)."""
    root = tmp / f"{package}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: test <test@example.invalid>\nDescription: test package\n"
    )
    for path, content in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.symlink_to(content)
        else:
            target.write_bytes(content)
            target.chmod(0o755 if path.endswith(".so.6") else 0o644)
    out = tmp / f"{package}_1.0_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def tar_members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


# ---- Debian packages ---------------------------------------------------------------------


@needs_dpkg
def test_deb_entries_match_what_dpkg_deb_lists(tmp_path: Path) -> None:
    deb = make_deb(
        tmp_path,
        "libc6",
        {
            "lib/x86_64-linux-gnu/libc.so.6": b"\x7fELF fake libc",
            "lib64/ld-linux-x86-64.so.2": "../lib/x86_64-linux-gnu/libc.so.6",
            "usr/share/doc/libc6/copyright": b"copyright text\n",
        },
    )
    entries = {entry.path: entry for entry in deb_entries(deb)}
    listed = subprocess.run(
        ["dpkg-deb", "--contents", str(deb)], check=True, capture_output=True, text=True
    ).stdout
    names = {line.split()[5].removeprefix("./").rstrip("/") for line in listed.splitlines()}
    assert set(entries) == names - {""}
    libc = entries["lib/x86_64-linux-gnu/libc.so.6"]
    assert (libc.kind, libc.mode, libc.data) == (Kind.FILE, 0o755, b"\x7fELF fake libc")
    link = entries["lib64/ld-linux-x86-64.so.2"]
    assert (link.kind, link.target) == (Kind.SYMLINK, "../lib/x86_64-linux-gnu/libc.so.6")
    assert entries["usr/share/doc"].kind is Kind.DIR
    assert all(entry.uid == entry.gid == 0 for entry in entries.values())


def test_ar_reader_refuses_what_is_not_an_ar_archive() -> None:
    with pytest.raises(DebError, match=r"x\.deb: not an ar archive"):
        ar_members(b"PK\x03\x04 a zip file", "x.deb")


def test_ar_reader_refuses_a_cut_header_and_a_member_past_the_end() -> None:
    with pytest.raises(DebError, match="truncated or corrupt ar header at byte 8"):
        ar_members(b"!<arch>\ndebian-binary   0", "x.deb")
    header = b"debian-binary   0           0     0     100644  40        `\n"
    with pytest.raises(DebError, match="'debian-binary' runs past the end"):
        ar_members(b"!<arch>\n" + header + b"2.0\n", "x.deb")


def test_ar_reader_reads_padded_members_and_deb_entries_wants_debian_binary(
    tmp_path: Path,
) -> None:
    def member(name: str, data: bytes) -> bytes:
        head = f"{name:<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n".encode()
        return head + data + (b"\n" if len(data) % 2 else b"")

    archive = b"!<arch>\n" + member("odd", b"abc") + member("even", b"de")
    assert ar_members(archive, "a") == {"odd": b"abc", "even": b"de"}
    fake = tmp_path / "fake.deb"
    fake.write_bytes(archive)
    with pytest.raises(DebError, match=r"not a Debian 2\.0 binary package"):
        deb_entries(fake)


def test_keep_path_drops_docs_gconv_and_tools_but_keeps_copyrights() -> None:
    def kept(path: str, kind: Kind = Kind.FILE) -> bool:
        return keep_path(Entry(path, kind, 0o644), X86)

    assert kept("lib/x86_64-linux-gnu/libc.so.6")
    assert kept("usr/share/doc/libc6/copyright")
    assert kept("usr/share/doc/libc6", Kind.DIR)
    assert not kept("usr/share/doc/libc6/changelog.Debian.gz")
    assert not kept("usr/share/doc/libgcc-s1", Kind.SYMLINK)
    assert not kept("usr/lib/x86_64-linux-gnu/gconv/UTF-16.so")
    assert not kept("usr/lib/x86_64-linux-gnu/gconv", Kind.DIR)
    assert not kept("usr/share/lintian/overrides/libc6")
    assert not kept("usr/sbin/update-ca-certificates")
    assert keep_path(Entry("usr/lib/x86_64-linux-gnu/gconv/X.so", Kind.FILE, 0o644), ARM)


@needs_dpkg
def test_base_layer_joins_the_certificates_and_adds_the_user(tmp_path: Path) -> None:
    contents: dict[str, dict[str, bytes | str]] = {
        "libc6": {
            "lib/x86_64-linux-gnu/libc.so.6": b"libc",
            "usr/lib/x86_64-linux-gnu/gconv/UTF-7.so": b"gconv",
        },
        "ca-certificates": {
            "usr/share/ca-certificates/mozilla/B.crt": b"-----BEGIN CERTIFICATE-----\nB\n",
            "usr/share/ca-certificates/mozilla/A.crt": b"-----BEGIN CERTIFICATE-----\nA",
            "usr/sbin/update-ca-certificates": b"#!/bin/sh\n",
        },
    }
    debs = {
        package: make_deb(tmp_path, package, contents.get(package, {"usr/share/x": b"x"}))
        for package in BASE_PACKAGES
    }
    entries = {entry.path: entry for entry in base_entries(debs, X86)}
    bundle = entries[CA_BUNDLE].data
    assert bundle == b"-----BEGIN CERTIFICATE-----\nA\n-----BEGIN CERTIFICATE-----\nB\n"
    assert f"edgegw:x:{UID}:{UID}:".encode() in entries["etc/passwd"].data
    assert f"edgegw:x:{UID}:".encode() in entries["etc/group"].data
    assert entries["tmp"].mode == 0o1777
    assert entries["usr/lib/ssl/cert.pem"].target == "/" + CA_BUNDLE
    assert "lib/x86_64-linux-gnu/libc.so.6" in entries
    assert not any("gconv" in path or path.startswith("usr/sbin") for path in entries)
    assert all(entry.uid == entry.gid == 0 for entry in entries.values())
    del debs["libgcc-s1"]
    with pytest.raises(BuildError, match=r"no \.deb for libgcc-s1 \(amd64\)"):
        base_entries(debs, X86)


# ---- layers ------------------------------------------------------------------------------


def test_layers_are_sorted_complete_and_reproducible() -> None:
    entries = [
        Entry.file("usr/local/bin/tool", b"#!binary", 0o755),
        Entry.dir("var/lib/edgegw", 0o750, owner=UID),
        Entry.symlink("lib64/ld.so", "/lib/ld.so"),
        Entry.file("etc/a.conf", b"a=1\n"),
    ]
    made = layer(entries, INFO.epoch)
    assert layer(list(reversed(entries)), INFO.epoch).blob.digest == made.blob.digest
    assert layer(entries, INFO.epoch + 1).blob.digest != made.blob.digest
    # No time and no name in the gzip header (RFC 1952 2.3: MTIME bytes 4..7, FLG byte 3).
    assert made.blob.data[4:8] == b"\0\0\0\0" and made.blob.data[3] & 0x08 == 0
    raw = gzip.decompress(made.blob.data)
    assert made.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert made.blob.digest == "sha256:" + hashlib.sha256(made.blob.data).hexdigest()
    members = tar_members(raw)
    names = [member.name for member in members]
    assert names == sorted(names)
    assert names[:3] == ["etc", "etc/a.conf", "lib64"]
    assert {"usr", "usr/local", "usr/local/bin", "var", "var/lib"} <= set(names)
    by_name = {member.name: member for member in members}
    assert all(member.mtime == INFO.epoch and member.uname == "" for member in members)
    state = by_name["var/lib/edgegw"]
    assert (state.isdir(), state.uid, state.gid, state.mode) == (True, UID, UID, 0o750)
    assert by_name["usr/local/bin/tool"].mode == 0o755 and by_name["usr/local/bin/tool"].uid == 0
    assert by_name["lib64/ld.so"].issym() and by_name["lib64/ld.so"].linkname == "/lib/ld.so"
    assert made.unpacked_size == len(b"#!binary") + len(b"a=1\n")


def test_a_file_where_a_directory_must_be_is_refused() -> None:
    with pytest.raises(BuildError, match="etc/passwd/x: its parent etc/passwd is a file"):
        with_parents([Entry.file("etc/passwd", b""), Entry.file("etc/passwd/x", b"")])


def test_app_layer_and_image_config() -> None:
    app = {entry.path: entry for entry in app_entries(b"ELF", b"[general]\n")}
    assert app["usr/local/bin/edgegw"].mode == 0o755
    assert app["var/lib/edgegw"].uid == UID
    layers = [layer([Entry.file("a", b"1")], 0), layer([Entry.file("b", b"2")], 0)]
    config = image_config(ARM, layers, INFO)
    assert (config["architecture"], config["os"], config["variant"]) == ("arm64", "linux", "v8")
    assert "variant" not in image_config(X86, layers, INFO)
    assert config["rootfs"]["diff_ids"] == [made.diff_id for made in layers]
    run = config["config"]
    assert run["User"] == "5060:5060" and run["Entrypoint"] == ENTRYPOINT
    assert run["Healthcheck"]["Test"] == ["CMD", *HEALTHCHECK]
    assert run["Labels"]["org.opencontainers.image.version"] == "9.9.9"
    assert "org.opencontainers.image.source" not in run["Labels"]
    assert config["created"] == "2023-11-14T22:13:20Z"


# ---- layouts and the index -----------------------------------------------------------------


def small_layout(tmp_path: Path, arch_name: str) -> Path:
    """A one-image layout archive without the Debian base (an app layer only)."""
    arch = ARCHES[arch_name]
    made = layer(app_entries(arch_name.encode(), b""), INFO.epoch)
    layout = Layout()
    layout.add(made.blob)
    config = layout.add(
        Blob(
            "application/vnd.oci.image.config.v1+json",
            json.dumps(image_config(arch, [made], INFO)).encode(),
        )
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config.descriptor(),
        "layers": [made.blob.descriptor()],
    }
    top = layout.add(Blob(MEDIA_TYPE_MANIFEST, json.dumps(manifest).encode()))
    out = tmp_path / f"{arch_name}.oci.tar"
    layout.write(out, top.descriptor(), INFO.epoch)
    return out


def test_layout_archive_is_an_oci_image_layout(tmp_path: Path) -> None:
    archive = small_layout(tmp_path, "x86_64")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        layout_file = tar.extractfile("oci-layout")
        assert layout_file is not None
        assert json.loads(layout_file.read()) == {"imageLayoutVersion": "1.0.0"}
    assert names == sorted(names) and names[:3] == ["blobs", "blobs/sha256", names[2]]
    assert {"index.json", "oci-layout"} <= set(names)
    layout, top = read_layout(archive)
    assert top["mediaType"] == MEDIA_TYPE_MANIFEST
    assert all(blob.digest == digest for digest, blob in layout.blobs.items())
    assert small_layout(tmp_path / "again", "x86_64").read_bytes() == archive.read_bytes()


def test_index_lists_each_platform_and_holds_every_blob(tmp_path: Path) -> None:
    x86, arm = small_layout(tmp_path, "x86_64"), small_layout(tmp_path, "aarch64")
    joined, top = build_index([arm, x86])
    assert top["mediaType"] == MEDIA_TYPE_INDEX
    assert top["annotations"] == {"org.opencontainers.image.ref.name": "edgegw"}
    index = json.loads(joined.blobs[top["digest"]].data)
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    for archive in (x86, arm):
        layout, manifest = read_layout(archive)
        assert set(layout.blobs) <= set(joined.blobs)
        assert manifest["digest"] in {m["digest"] for m in index["manifests"]}
    with pytest.raises(BuildError, match="two archives of the same platform"):
        build_index([x86, x86])


def test_read_layout_refuses_tampered_blobs_and_non_tars(tmp_path: Path) -> None:
    archive = small_layout(tmp_path, "x86_64")
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m)) for m in tar.getmembers()]
        tampered = tmp_path / "tampered.oci.tar"
        with tarfile.open(tampered, "w") as out:
            for member, content in members:
                data = content.read() if content is not None else b""
                if member.name.startswith("blobs/sha256/") and member.isreg():
                    data = data + b"!"
                    member.size = len(data)
                out.addfile(member, io.BytesIO(data) if member.isreg() else None)
    with pytest.raises(BuildError, match="content does not match its digest"):
        read_layout(tampered)
    junk = tmp_path / "junk.oci.tar"
    junk.write_bytes(b"not a tar at all")
    with pytest.raises(BuildError, match=r"junk\.oci\.tar: not a readable tar"):
        read_layout(junk)


# ---- the default config --------------------------------------------------------------------


def test_default_config_is_valid_and_unprovisioned(tmp_path: Path) -> None:
    text = check_config(DEFAULT_CONFIG).decode()
    assert "0.0.0.0" in text and "/var/lib/edgegw" in text
    provisioned = tmp_path / "provisioned.toml"
    provisioned.write_text(
        DEFAULT_CONFIG.read_text()
        + '\n[[subscribers]]\nusername = "1001"\npassword = "a-long-secret"\n'
    )
    with pytest.raises(BuildError, match=r"ships unprovisioned, but it has \['subscribers'\]"):
        check_config(provisioned)
    broken = tmp_path / "broken.toml"
    broken.write_text("[media]\nport_min = 'low'\n")
    with pytest.raises(BuildError, match=r"media\.port_min"):
        check_config(broken)


def test_built_image_manifest_points_at_its_config_and_layers(tmp_path: Path) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("needs dpkg-deb")
    debs = {
        package: make_deb(
            tmp_path,
            package,
            {"usr/share/ca-certificates/mozilla/A.crt": b"A\n"}
            if package == "ca-certificates"
            else {"usr/share/x": b"x"},
        )
        for package in BASE_PACKAGES
    }
    layout, top, layers = build_image(X86, b"ELF", b"", debs, INFO)
    assert top["annotations"] == {"org.opencontainers.image.ref.name": "edgegw"}
    manifest = json.loads(layout.blobs[top["digest"]].data)
    assert [d["digest"] for d in manifest["layers"]] == [m.blob.digest for m in layers]
    config = json.loads(layout.blobs[manifest["config"]["digest"]].data)
    assert config["rootfs"]["diff_ids"] == [m.diff_id for m in layers]
    assert manifest["annotations"]["org.opencontainers.image.revision"] == "0" * 40
    again = build_image(X86, b"ELF", b"", debs, INFO)[1]
    assert again["digest"] == top["digest"]
