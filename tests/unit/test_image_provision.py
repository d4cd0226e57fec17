"""The checks `./justw image-provision` runs before it writes anything to a disk's ESP
(images/disk/provision.py): what each unfit config or key file gets. The writing itself
(mtools on a real image) and the box taking the files are in tests/images/test_disk_boot.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from images.disk import build, provision
from images.disk.provision import ProvisionError, check_authorized_keys, check_config


def _openssh_public(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


@pytest.fixture
def ed25519_line() -> str:
    return _openssh_public(ed25519.Ed25519PrivateKey.generate()) + " engineer@laptop"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_keys_with_comments_options_and_several_types_are_counted(
    tmp_path: Path, ed25519_line: str
) -> None:
    ecdsa = _openssh_public(ec.generate_private_key(ec.SECP256R1()))
    text = (
        "# field engineers\n\n"
        f"{ed25519_line}\n"
        f'from="198.51.100.0/24",no-agent-forwarding {ecdsa} noc\n'
    )
    assert check_authorized_keys(_write(tmp_path, "keys", text)) == 2


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no public key in it"),
        ("# only a comment\n", "no public key in it"),
        ("hello world\n", ":1: not an SSH public key line: 'hello world'"),
        ("ssh-ed25519 AAAAnotbase64!!\n", ":1: bad ssh-ed25519 key"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbg==\n-----END OPENSSH PRIVATE KEY-----\n",
            "holds a private key; give the public one (.pub)",
        ),
    ],
)
def test_unfit_key_files_are_refused_with_the_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    path = _write(tmp_path, "keys", text)
    with pytest.raises(ProvisionError) as caught:
        check_authorized_keys(path)
    assert str(caught.value).startswith(str(path)), caught.value
    assert reason in str(caught.value), caught.value


def test_a_bad_line_among_good_keys_is_refused_by_number(tmp_path: Path, ed25519_line: str) -> None:
    path = _write(tmp_path, "keys", f"{ed25519_line}\nssh-rsa\n")
    with pytest.raises(ProvisionError, match=r"keys:2: not an SSH public key line: 'ssh-rsa'"):
        check_authorized_keys(path)


def test_unreadable_key_file(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="cannot read"):
        check_authorized_keys(tmp_path / "missing")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ProvisionError, match="cannot read"):
        check_authorized_keys(binary)


@pytest.mark.parametrize("var_dir", ["/var/lib/edgegw", "/var/lib/edgegw/", "state"])
def test_configs_whose_state_lands_on_the_data_partition_pass(tmp_path: Path, var_dir: str) -> None:
    check_config(_write(tmp_path, "edgegw.toml", f'[general]\nvar_dir = "{var_dir}"\n'))


def test_a_config_with_state_on_the_read_only_root_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, "edgegw.toml", '[general]\nvar_dir = "/srv/edgegw"\n')
    with pytest.raises(ProvisionError) as caught:
        check_config(path)
    assert str(caught.value) == (
        f'{path}: [general] var_dir = "/srv/edgegw" is on the read-only root of the box;'
        ' use "/var/lib/edgegw" (the data partition)'
    )


def test_an_invalid_config_is_refused_with_the_gateways_reason(tmp_path: Path) -> None:
    path = _write(tmp_path, "edgegw.toml", "[sip]\nno_such_key = 1\n")
    with pytest.raises(ProvisionError, match=r"edgegw.toml: not a valid config: .*no_such_key"):
        check_config(path)


def test_the_command_writes_nothing_when_a_file_is_unfit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ed25519_line: str
) -> None:
    target = _write(tmp_path, "disk.img", "")  # never reached: the checks come first
    keys = _write(tmp_path, "keys", "not a key\n")
    config = _write(tmp_path, "edgegw.toml", '[general]\nvar_dir = "/var/lib/edgegw"\n')
    code = provision.main([str(target), "--config", str(config), "--authorized-keys", str(keys)])
    assert code == 1
    assert capsys.readouterr().err == (
        f"image-provision: {keys}:1: not an SSH public key line: 'not a key'; nothing written\n"
    )
    assert target.read_text() == ""
    good = _write(tmp_path, "good", ed25519_line + "\n")
    missing = tmp_path / "no-such.img"
    assert provision.main([str(missing), "--authorized-keys", str(good)]) == 1
    assert capsys.readouterr().err == (
        f"image-provision: {missing}: no such image or device; nothing written\n"
    )


def test_the_command_needs_a_file_to_provision(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        provision.main([str(tmp_path / "disk.img")])
    assert exited.value.code == 2


def test_a_target_without_an_esp_or_without_mtools_gets_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_disk = _write(tmp_path, "notes.txt", "not a disk image\n")
    with pytest.raises(ProvisionError, match=r"notes.txt: cannot find its ESP \(GPT name esp\)"):
        provision.write_seed(not_a_disk, {})
    monkeypatch.setattr(build, "esp_path", lambda target: f"{target}@@1048576")
    monkeypatch.setenv("PATH", str(tmp_path))  # no mtools on it
    with pytest.raises(ProvisionError, match=r"^mmd: No such file or directory \(Debian: mtools\)"):
        provision.write_seed(not_a_disk, {})
