"""The gateway's TLS certificate: a configured pair checked, or a self-signed one made once.

SIP over TLS (RFC 3261 26.2, 26.3.1) needs a server certificate. An operator names a PEM
certificate (chain) and its unencrypted PEM key; `load_pair` reads both and refuses a
missing, unreadable or malformed file and a key that is not the certificate's. With none
configured, `ensure_self_signed` makes an EC P-256 pair under the var dir on first run
(RFC 5280 profile: subjectAltName with the listen IP addresses and DNS `localhost`,
serverAuth, ten years) and reuses it on later runs while it still covers those addresses.
No sockets and no Trio here; the Trio side is `gateway.transport.tls`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateError",
    "CertificatePair",
    "check_ca_file",
    "ensure_self_signed",
    "load_pair",
    "self_signed_ips",
]

log = structlog.get_logger("edgegw.tls")

VALIDITY = datetime.timedelta(days=3650)
# A client whose clock is a little behind must not see a certificate from the future.
_BACKDATE = datetime.timedelta(minutes=5)
_CERT_FILE = "cert.pem"
_KEY_FILE = "key.pem"
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CertificateError(OSError):
    """A certificate, key or CA file that cannot be used.

    An OSError because it is a start-up failure about files, which the service reports
    as one line like a port it cannot bind. `which` is "cert", "key" or "ca"; `reason`
    says what is wrong without the path, `str()` has both.
    """

    def __init__(self, which: str, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.which = which
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class CertificatePair:
    cert: Path
    key: Path


def load_pair(cert: Path | str, key: Path | str) -> CertificatePair:
    """Check that `cert` is a PEM certificate (chain) and `key` its unencrypted private key."""
    cert_path, key_path = Path(cert), Path(key)
    leaf = _read_certificate(cert_path)
    private = _read_key(key_path)
    if _spki(leaf.public_key()) != _spki(private.public_key()):
        raise CertificateError(
            "key", key_path, f"does not match the certificate in {cert_path} (another key pair)"
        )
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise CertificateError("cert", cert_path, f"OpenSSL refuses the pair: {exc}") from exc
    return CertificatePair(cert_path, key_path)


def check_ca_file(path: Path | str) -> None:
    """A CA bundle for verifying servers: readable PEM that OpenSSL loads."""
    ca_path = Path(path)
    _read_bytes("ca", ca_path)
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(ca_path))
    except ssl.SSLError as exc:
        raise CertificateError("ca", ca_path, f"not a PEM CA bundle: {exc}") from exc


def self_signed_ips(hosts: Sequence[str]) -> list[IpAddress]:
    """The IP SANs for listeners on `hosts`: each specific address once, in order.

    A wildcard listener (0.0.0.0, ::) has no one address to name; clients reaching it
    by an address not listed must be told to trust the certificate by its fingerprint
    or be given a configured one.
    """
    ips: list[IpAddress] = []
    for host in hosts:
        ip = ipaddress.ip_address(host)
        if not ip.is_unspecified and ip not in ips:
            ips.append(ip)
    return ips


def ensure_self_signed(
    directory: Path, hosts: Sequence[str], *, now: datetime.datetime | None = None
) -> CertificatePair:
    """`directory`/cert.pem and key.pem: reused when valid for `hosts`, else made anew."""
    pair = CertificatePair(directory / _CERT_FILE, directory / _KEY_FILE)
    when = now or datetime.datetime.now(datetime.UTC)
    wanted = self_signed_ips(hosts)
    problem = _reuse_problem(pair, wanted, when)
    if problem is None:
        _tighten_key_mode(pair.key)
        return pair
    if problem != "absent":
        log.warning("replacing the self-signed TLS certificate", path=str(pair.cert), why=problem)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = _self_signed(key, wanted, when)
    # Key first: a crash between the two leaves a pair that does not match, which the
    # next start replaces instead of serving.
    _write_atomically(pair.key, _key_pem(key), 0o600)
    _write_atomically(pair.cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info(
        "made a self-signed TLS certificate",
        path=str(pair.cert),
        sha256=certificate.fingerprint(hashes.SHA256()).hex(":"),
        ips=[str(ip) for ip in wanted],
    )
    return pair


def _reuse_problem(
    pair: CertificatePair, wanted: list[IpAddress], now: datetime.datetime
) -> str | None:
    if not pair.cert.exists() and not pair.key.exists():
        return "absent"
    try:
        load_pair(pair.cert, pair.key)
    except CertificateError as exc:
        return str(exc)
    leaf = _read_certificate(pair.cert)
    if leaf.not_valid_after_utc <= now:
        return f"expired on {leaf.not_valid_after_utc.isoformat()}"
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    missing = [str(ip) for ip in wanted if ip not in names.get_values_for_type(x509.IPAddress)]
    if missing:
        return f"does not name {', '.join(missing)}"
    return None


def _self_signed(
    key: ec.EllipticCurvePrivateKey, ips: list[IpAddress], now: datetime.datetime
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgegw self-signed")])
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    alt_names += [x509.IPAddress(ip) for ip in ips]
    public = key.public_key()
    start = now - _BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write to a temporary file with `mode` from the start, then rename over `path`."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not loosen nor tighten what we asked for
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _tighten_key_mode(path: Path) -> None:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("TLS key was readable by others; now 0600", path=str(path), was=oct(mode))


def _read_bytes(which: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(which, path, f"cannot read: {exc.strerror or exc}") from exc


def _read_certificate(path: Path) -> x509.Certificate:
    data = _read_bytes("cert", path)
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError("cert", path, f"no PEM certificate in the file ({exc})") from exc
    return chain[0]


def _read_key(path: Path) -> PrivateKeyTypes:
    data = _read_bytes("key", path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # raised for a key that needs a password
        raise CertificateError("key", path, "is encrypted; give an unencrypted key") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertificateError("key", path, "no PEM private key in the file") from exc
    return key


def _spki(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
