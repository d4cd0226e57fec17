"""The TLS certificate of the gateway: the self-signed pair made once and reused, a
configured pair loaded, and every file problem refused with the key and the reason."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.config import ConfigError, default_config, parse_config
from gateway.service import tls_contexts
from gateway.transport.certificates import (
    VALIDITY,
    CertificateError,
    ensure_self_signed,
    load_pair,
    self_signed_ips,
)
from gateway.transport.tls import client_context, server_context


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def san_of(path: Path) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def write_pair(
    directory: Path, name: str, *, rsa_key: bool = False, password: bytes | None = None
) -> tuple[Path, Path]:
    """A certificate and key as an operator would bring them (not made by the gateway)."""
    key = (
        rsa.generate_private_key(65537, 2048)
        if rsa_key
        else ec.generate_private_key(ec.SECP384R1())
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return cert_path, key_path


def sip_tls(**keys: str) -> str:
    return "[sip]\n" + "".join(f'{name} = "{value}"\n' for name, value in keys.items())


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="x.toml")
    return str(info.value)


# ---- the self-signed pair ------------------------------------------------------------------


def test_first_run_makes_an_ec_p256_pair_with_private_key_mode(tmp_path: Path) -> None:
    directory = tmp_path / "var" / "tls"
    pair = ensure_self_signed(directory, ["127.0.0.1", "::1", "0.0.0.0"])
    assert (pair.cert, pair.key) == (directory / "cert.pem", directory / "key.pem")
    assert (mode(directory), mode(pair.key), mode(pair.cert)) == (0o700, 0o600, 0o644)
    assert sorted(p.name for p in directory.iterdir()) == ["cert.pem", "key.pem"]  # no temp

    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    names = san_of(pair.cert)
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    # A wildcard listener has no address of its own to name.
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == VALIDITY
    assert VALIDITY.days == 3650
    assert cert.not_valid_before_utc <= datetime.datetime.now(datetime.UTC)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    assert key.public_key() == public
    assert load_pair(pair.cert, pair.key) == pair


def test_second_run_reuses_the_pair(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path, ["127.0.0.1"])
    cert, key = first.cert.read_bytes(), first.key.read_bytes()
    inode = first.cert.stat().st_ino
    again = ensure_self_signed(tmp_path, ["127.0.0.1"])
    assert again == first
    assert (again.cert.read_bytes(), again.key.read_bytes()) == (cert, key)
    assert again.cert.stat().st_ino == inode  # not even rewritten


def test_a_pair_that_no_longer_fits_is_replaced(tmp_path: Path) -> None:
    original = ensure_self_signed(tmp_path, ["127.0.0.1"]).cert.read_bytes()

    # A listener on an address the certificate does not name.
    moved = ensure_self_signed(tmp_path, ["127.0.0.1", "198.51.100.7"])
    assert moved.cert.read_bytes() != original
    assert ipaddress.ip_address("198.51.100.7") in san_of(moved.cert).get_values_for_type(
        x509.IPAddress
    )

    # Expired.
    current = moved.cert.read_bytes()
    later = datetime.datetime.now(datetime.UTC) + VALIDITY + datetime.timedelta(days=1)
    renewed = ensure_self_signed(tmp_path, ["127.0.0.1"], now=later)
    assert renewed.cert.read_bytes() != current

    # Half a pair (a crash between the two writes, or a key deleted by hand).
    current = renewed.cert.read_bytes()
    renewed.key.unlink()
    remade = ensure_self_signed(tmp_path, ["127.0.0.1"])
    assert remade.cert.read_bytes() != current
    assert load_pair(remade.cert, remade.key) == remade

    # A key that is not the certificate's.
    other = ensure_self_signed(tmp_path / "other", ["127.0.0.1"])
    remade.key.write_bytes(other.key.read_bytes())
    fixed = ensure_self_signed(tmp_path, ["127.0.0.1"])
    assert load_pair(fixed.cert, fixed.key) == fixed


def test_a_key_readable_by_others_is_tightened_on_reuse(tmp_path: Path) -> None:
    pair = ensure_self_signed(tmp_path, ["127.0.0.1"])
    pair.key.chmod(0o644)
    ensure_self_signed(tmp_path, ["127.0.0.1"])
    assert mode(pair.key) == 0o600


def test_self_signed_ips_skip_wildcards_and_repeats() -> None:
    assert [str(ip) for ip in self_signed_ips(["::", "10.0.0.1", "0.0.0.0", "10.0.0.1"])] == [
        "10.0.0.1"
    ]


def test_gateway_start_makes_the_pair_under_var_dir_only_for_tls_listeners(tmp_path: Path) -> None:
    config = default_config(tmp_path / "var")
    contexts = tls_contexts(config, tmp_path / "var", ["127.0.0.1"])
    assert contexts.server is not None
    assert contexts.server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert (tmp_path / "var" / "tls" / "cert.pem").exists()
    assert contexts.handshake_timeout == config.sip.tls_handshake_timeout

    elsewhere = tmp_path / "no-tls"
    without = tls_contexts(config, elsewhere, [])
    assert without.server is None
    assert not (elsewhere / "tls").exists()
    assert without.client.verify_mode == ssl.CERT_REQUIRED


# ---- a configured pair -------------------------------------------------------------------


@pytest.mark.parametrize("rsa_key", [False, True], ids=["ec", "rsa"])
def test_configured_pair_is_loaded(tmp_path: Path, rsa_key: bool) -> None:
    cert, key = write_pair(tmp_path, "operator", rsa_key=rsa_key)
    config = parse_config(
        sip_tls(tls_cert=str(cert), tls_key=str(key)) + f'[general]\nvar_dir = "{tmp_path}/var"\n',
        source="x.toml",
    )
    assert (config.sip.tls_cert, config.sip.tls_key) == (str(cert), str(key))
    contexts = tls_contexts(config, tmp_path / "var", ["127.0.0.1"])
    assert contexts.server is not None
    # The configured pair is served: nothing self-signed is made.
    assert not (tmp_path / "var" / "tls").exists()
    served = server_context(load_pair(cert, key))
    assert served.minimum_version == ssl.TLSVersion.TLSv1_2


def test_configured_pair_removed_after_the_check_fails_start_with_the_path(
    tmp_path: Path,
) -> None:
    cert, key = write_pair(tmp_path, "operator")
    config = parse_config(sip_tls(tls_cert=str(cert), tls_key=str(key)), source="x.toml")
    key.unlink()
    with pytest.raises(CertificateError) as info:
        tls_contexts(config, tmp_path / "var", ["127.0.0.1"])
    assert str(info.value) == f"{key}: cannot read: No such file or directory"
    assert isinstance(info.value, OSError)  # reported like a port that cannot be bound


# ---- refusals at `edgegw config check` ---------------------------------------------------


def test_mismatched_pair_is_refused(tmp_path: Path) -> None:
    cert, _key = write_pair(tmp_path, "a")
    _cert, other_key = write_pair(tmp_path, "b")
    assert config_error(sip_tls(tls_cert=str(cert), tls_key=str(other_key))) == (
        f"x.toml: sip.tls_key: {other_key}: does not match the certificate in {cert}"
        " (another key pair)"
    )


def test_missing_files_are_refused(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path, "a")
    gone = tmp_path / "gone.pem"
    assert config_error(sip_tls(tls_cert=str(cert), tls_key=str(gone))) == (
        f"x.toml: sip.tls_key: {gone}: cannot read: No such file or directory"
    )
    assert config_error(sip_tls(tls_cert=str(gone), tls_key=str(key))) == (
        f"x.toml: sip.tls_cert: {gone}: cannot read: No such file or directory"
    )
    # Tests run as root, where permissions do not stop a read; a directory does.
    assert config_error(sip_tls(tls_cert=str(tmp_path), tls_key=str(key))) == (
        f"x.toml: sip.tls_cert: {tmp_path}: cannot read: Is a directory"
    )


def test_half_a_pair_is_refused(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path, "a")
    assert config_error(sip_tls(tls_cert=str(cert))) == (
        "x.toml: sip.tls_key: must be set when sip.tls_cert is set"
    )
    assert config_error(sip_tls(tls_key=str(key))) == (
        "x.toml: sip.tls_cert: must be set when sip.tls_key is set"
    )


def test_files_that_are_not_pem_are_refused(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path, "a")
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"hello\n")
    cert_error = config_error(sip_tls(tls_cert=str(junk), tls_key=str(key)))
    assert cert_error.startswith(f"x.toml: sip.tls_cert: {junk}: no PEM certificate in the file")
    # The key where the certificate should be, and the other way round.
    assert config_error(sip_tls(tls_cert=str(key), tls_key=str(key))).startswith(
        f"x.toml: sip.tls_cert: {key}: no PEM certificate in the file"
    )
    assert config_error(sip_tls(tls_cert=str(cert), tls_key=str(cert))) == (
        f"x.toml: sip.tls_key: {cert}: no PEM private key in the file"
    )


def test_encrypted_key_is_refused(tmp_path: Path) -> None:
    cert, key = write_pair(tmp_path, "locked", password=b"secret")
    assert config_error(sip_tls(tls_cert=str(cert), tls_key=str(key))) == (
        f"x.toml: sip.tls_key: {key}: is encrypted; give an unencrypted key"
    )


def test_ca_file_is_checked(tmp_path: Path) -> None:
    cert, _key = write_pair(tmp_path, "ca")
    assert parse_config(sip_tls(tls_ca_file=str(cert)), source="x").sip.tls_ca_file == str(cert)
    gone = tmp_path / "gone.pem"
    assert config_error(sip_tls(tls_ca_file=str(gone))) == (
        f"x.toml: sip.tls_ca_file: {gone}: cannot read: No such file or directory"
    )
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate\n")
    assert config_error(sip_tls(tls_ca_file=str(junk))).startswith(
        f"x.toml: sip.tls_ca_file: {junk}: not a PEM CA bundle"
    )


def test_handshake_timeout_must_be_positive() -> None:
    assert config_error("[sip]\ntls_handshake_timeout = 0.0\n") == (
        "x.toml: sip.tls_handshake_timeout: must be a number of seconds greater than 0, got 0.0"
    )


def test_default_listens_for_tls_on_5061_and_verifies_servers() -> None:
    sip = default_config().sip
    assert ("tls", "127.0.0.1", 5061) in [(e.transport, e.host, e.port) for e in sip.listen]
    assert (sip.tls_cert, sip.tls_key, sip.tls_verify_server, sip.tls_ca_file) == (
        "",
        "",
        True,
        "",
    )


# ---- client contexts ---------------------------------------------------------------------


def test_client_context_verifies_unless_told_not_to(tmp_path: Path) -> None:
    strict = client_context()
    assert (strict.verify_mode, strict.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert strict.minimum_version == ssl.TLSVersion.TLSv1_2
    lax = client_context(verify=False)
    assert (lax.verify_mode, lax.check_hostname) == (ssl.CERT_NONE, False)
    cert, _key = write_pair(tmp_path, "trunk")
    with_ca = client_context(ca_file=cert)
    # The system store stays; the CA file comes on top.
    assert with_ca.cert_store_stats()["x509"] == strict.cert_store_stats()["x509"] + 1
    with pytest.raises(CertificateError, match="cannot read"):
        client_context(ca_file=tmp_path / "gone.pem")
