"""SRTP/SDES layer: a=crypto grammar, negotiation, and packets through libsrtp.

Interop beyond a self round trip: a reference SRTP written here with the
``cryptography`` package (RFC 3711 4.1.1, 4.2, 4.3 and RFC 7714 8, 9, 11) is
first pinned to the published vectors (RFC 3711 B.2 and B.3, RFC 7714 16 and
17), then exchanges packets both ways with :class:`SrtpSender` and
:class:`SrtpReceiver` for every suite, RTP and RTCP. libsrtp's own reference
packets (test/srtp_driver.c, master keys in) are checked on the wire bytes.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import hmac
import os
import secrets
import struct
from dataclasses import dataclass

import pylibsrtp
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.media.srtp import (
    DEFAULT_SUITES,
    CryptoAttribute,
    KeyParams,
    SdesError,
    SrtpDrop,
    SrtpDropReason,
    SrtpReceiver,
    SrtpSender,
    SrtpSuite,
    accept_answer,
    choose_crypto,
    crypto_refusal,
    master_length,
    new_crypto,
    parse_crypto,
)

ALL_SUITES = tuple(SrtpSuite)
GCM_SUITES = (SrtpSuite.AEAD_AES_128_GCM, SrtpSuite.AEAD_AES_256_GCM)
# (SRTP tag, SRTCP tag) bytes: RFC 4568 6.2 and RFC 7714 12.
TAGS = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: (10, 10),
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: (4, 10),
    SrtpSuite.AEAD_AES_128_GCM: (16, 16),
    SrtpSuite.AEAD_AES_256_GCM: (16, 16),
}


def rtp(seq: int, ssrc: int = 0x1234ABCD, payload: bytes = bytes(160), *, csrc: int = 0) -> bytes:
    """An RTP packet (RFC 3550 5.1): 12-byte header, CSRCs, payload."""
    header = struct.pack("!BBHII", 0x80 | csrc, 8, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc)
    return header + b"".join(struct.pack("!I", 0x1000 + i) for i in range(csrc)) + payload


def rtcp_sr(ssrc: int = 0x1234ABCD) -> bytes:
    """An RTCP sender report without report blocks (RFC 3550 6.4.1): 28 bytes."""
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, 3, 4, 5)


def pair(suite: SrtpSuite, **receiver: int) -> tuple[SrtpSender, SrtpReceiver]:
    """A sender with a fresh key and a receiver holding the same key, as the
    peer would from our a=crypto line."""
    crypto = new_crypto(1, suite)
    return SrtpSender(crypto), SrtpReceiver(parse_crypto(crypto.to_value()), **receiver)


def with_key(suite: str, key: bytes, *params: str) -> CryptoAttribute:
    return CryptoAttribute(tag=1, suite=suite, keys=(KeyParams(key=key),), session_params=params)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def drop_reason(call: object, packet: bytes) -> SrtpDropReason:
    assert callable(call)
    with pytest.raises(SrtpDrop) as info:
        call(packet)
    return info.value.reason


# ---------------------------------------------------------------------------
# Reference SRTP (test side only), written from RFC 3711 and RFC 7714
# ---------------------------------------------------------------------------


def aes_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def kdf(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """RFC 3711 4.3.1 with KDR 0: AES-CM keyed by the master key, IV =
    (master salt XOR label at byte 7) * 2^16. RFC 7714 11: a 96-bit master
    salt is padded with zeros to 112 bits."""
    salt = bytearray(master_salt.ljust(14, b"\0"))
    salt[7] ^= label
    return aes_ctr(master_key, bytes(salt) + b"\0\0", bytes(length))


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def header_length(packet: bytes) -> int:
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        (words,) = struct.unpack_from("!H", packet, length + 2)
        length += 4 + 4 * words
    return length


@dataclass(frozen=True)
class RefKeys:
    """Session keys of one direction (RFC 3711 4.3.2 labels 0-5)."""

    suite: SrtpSuite
    enc: bytes
    auth: bytes
    salt: bytes
    rtcp_enc: bytes
    rtcp_auth: bytes
    rtcp_salt: bytes

    @classmethod
    def derive(cls, suite: SrtpSuite, master: bytes) -> RefKeys:
        gcm = suite in GCM_SUITES
        key_length = master_length(suite) - (12 if gcm else 14)
        key, salt = master[:key_length], master[key_length:]
        salt_length, auth_length = (12, 0) if gcm else (14, 20)
        return cls(
            suite,
            kdf(key, salt, 0, key_length),
            kdf(key, salt, 1, auth_length),
            kdf(key, salt, 2, salt_length),
            kdf(key, salt, 3, key_length),
            kdf(key, salt, 4, auth_length),
            kdf(key, salt, 5, salt_length),
        )


def cm_iv(salt: bytes, ssrc: bytes, index: int) -> bytes:
    """RFC 3711 4.1.1: IV = (salt * 2^16) XOR (SSRC * 2^64) XOR (index * 2^16)."""
    return xor(salt + b"\0\0", bytes(4) + ssrc + index.to_bytes(6, "big") + b"\0\0")


def gcm_rtp_iv(salt: bytes, ssrc: bytes, roc: int, seq: bytes) -> bytes:
    """RFC 7714 8.1: 00 00 || SSRC || ROC || SEQ, XOR the session salt."""
    return xor(salt, b"\0\0" + ssrc + roc.to_bytes(4, "big") + seq)


def gcm_rtcp_iv(salt: bytes, ssrc: bytes, index: int) -> bytes:
    """RFC 7714 9.1: 00 00 || SSRC || 00 00 || 0 || SRTCP index, XOR the salt."""
    return xor(salt, b"\0\0" + ssrc + b"\0\0" + index.to_bytes(4, "big"))


def ref_protect_rtp(keys: RefKeys, packet: bytes, roc: int = 0) -> bytes:
    length = header_length(packet)
    header, payload, ssrc = packet[:length], packet[length:], packet[8:12]
    if keys.suite in GCM_SUITES:
        iv = gcm_rtp_iv(keys.salt, ssrc, roc, packet[2:4])
        return header + AESGCM(keys.enc).encrypt(iv, payload, header)
    index = roc << 16 | int.from_bytes(packet[2:4], "big")
    protected = header + aes_ctr(keys.enc, cm_iv(keys.salt, ssrc, index), payload)
    mac = hmac.new(keys.auth, protected + roc.to_bytes(4, "big"), hashlib.sha1).digest()
    return protected + mac[: TAGS[keys.suite][0]]


def ref_unprotect_rtp(keys: RefKeys, packet: bytes, roc: int = 0) -> bytes:
    length = header_length(packet)
    header, ssrc = packet[:length], packet[8:12]
    if keys.suite in GCM_SUITES:
        iv = gcm_rtp_iv(keys.salt, ssrc, roc, packet[2:4])
        return header + AESGCM(keys.enc).decrypt(iv, packet[length:], header)
    tag_length = TAGS[keys.suite][0]
    protected, tag = packet[:-tag_length], packet[-tag_length:]
    mac = hmac.new(keys.auth, protected + roc.to_bytes(4, "big"), hashlib.sha1).digest()
    assert hmac.compare_digest(mac[:tag_length], tag), "reference: SRTP tag mismatch"
    index = roc << 16 | int.from_bytes(packet[2:4], "big")
    return header + aes_ctr(keys.enc, cm_iv(keys.salt, ssrc, index), protected[length:])


def ref_protect_rtcp(keys: RefKeys, packet: bytes, index: int) -> bytes:
    header, body, ssrc = packet[:8], packet[8:], packet[4:8]
    trailer = (0x8000_0000 | index).to_bytes(4, "big")  # E flag: encrypted
    if keys.suite in GCM_SUITES:
        iv = gcm_rtcp_iv(keys.rtcp_salt, ssrc, index)
        return header + AESGCM(keys.rtcp_enc).encrypt(iv, body, header + trailer) + trailer
    protected = header + aes_ctr(keys.rtcp_enc, cm_iv(keys.rtcp_salt, ssrc, index), body)
    mac = hmac.new(keys.rtcp_auth, protected + trailer, hashlib.sha1).digest()
    return protected + trailer + mac[:10]


def ref_unprotect_rtcp(keys: RefKeys, packet: bytes) -> tuple[bytes, int]:
    """The RTCP packet and its SRTCP index."""
    header, ssrc = packet[:8], packet[4:8]
    if keys.suite in GCM_SUITES:
        trailer = packet[-4:]
        index = int.from_bytes(trailer, "big") & 0x7FFF_FFFF
        iv = gcm_rtcp_iv(keys.rtcp_salt, ssrc, index)
        body = AESGCM(keys.rtcp_enc).decrypt(iv, packet[8:-4], header + trailer)
        return header + body, index
    protected, trailer, tag = packet[:-14], packet[-14:-10], packet[-10:]
    mac = hmac.new(keys.rtcp_auth, protected + trailer, hashlib.sha1).digest()
    assert hmac.compare_digest(mac[:10], tag), "reference: SRTCP tag mismatch"
    assert trailer[0] & 0x80, "reference: E flag clear"
    index = int.from_bytes(trailer, "big") & 0x7FFF_FFFF
    return header + aes_ctr(keys.rtcp_enc, cm_iv(keys.rtcp_salt, ssrc, index), protected[8:]), index


# ---------------------------------------------------------------------------
# The reference against the RFC vectors
# ---------------------------------------------------------------------------

H = bytes.fromhex


def test_reference_kdf_matches_rfc3711_b3() -> None:
    master_key = H("E1F97A0D3E018BE0D64FA32C06DE4139")
    master_salt = H("0EC675AD498AFEEBB6960B3AABE6")
    assert kdf(master_key, master_salt, 0, 16) == H("C61E7A93744F39EE10734AFE3FF7A087")
    assert kdf(master_key, master_salt, 2, 14) == H("30CBBC08863D8C85D49DB34A9AE1")
    assert kdf(master_key, master_salt, 1, 94) == H(
        "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE"
        "E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25"
        "6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2"
    )


def test_reference_aes_cm_matches_rfc3711_b2() -> None:
    iv = cm_iv(H("F0F1F2F3F4F5F6F7F8F9FAFBFCFD"), bytes(4), 0)
    assert iv == H("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")
    keystream = aes_ctr(H("2B7E151628AED2A6ABF7158809CF4F3C"), iv, bytes(48))
    assert keystream == H(
        "E03EAD0935C95E80E166B16DD92B4EB4"
        "D23513162B02D0F72A43A2FE4A5F97AB"
        "41E95B3BB0A2E8DD477901E4FCA894C0"
    )


RFC7714_KEY = H("000102030405060708090a0b0c0d0e0f")
RFC7714_SALT = H("517569642070726f2071756f")  # "Quid pro quo"


def rfc7714_keys() -> RefKeys:
    return RefKeys(
        SrtpSuite.AEAD_AES_128_GCM, RFC7714_KEY, b"", RFC7714_SALT, RFC7714_KEY, b"", RFC7714_SALT
    )


def test_reference_gcm_rtp_matches_rfc7714_16() -> None:
    plain = H("8040f17b8041f8d35501a0b2") + b"Gallia est omnis divisa in partes tres"
    expected = H(
        "8040f17b8041f8d35501a0b2"
        "f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833"
        "899d7f27beb16a9152cf765ee4390cce"
    )
    assert gcm_rtp_iv(RFC7714_SALT, plain[8:12], 0, plain[2:4]) == H("51753c6580c2726f20718414")
    assert ref_protect_rtp(rfc7714_keys(), plain) == expected
    assert ref_unprotect_rtp(rfc7714_keys(), expected) == plain


def test_reference_gcm_rtcp_matches_rfc7714_17() -> None:
    plain = H(
        "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61"
        "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef"
    )
    expected = H(
        "81c8000d4d617273"
        "63e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda"
        "4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4"
    )
    assert ref_protect_rtcp(rfc7714_keys(), plain, 0x5D4) == expected
    assert ref_unprotect_rtcp(rfc7714_keys(), expected) == (plain, 0x5D4)


# ---------------------------------------------------------------------------
# libsrtp's reference packets, through our classes (master key in, wire out)
# ---------------------------------------------------------------------------

LIBSRTP_RTP = H("800f1234decafbadcafebabe") + b"\xab" * 16
LIBSRTP_RTCP = H("81c8000bcafebabe") + b"\xab" * 16
LIBSRTP_VECTORS = [
    (
        SrtpSuite.AES_CM_128_HMAC_SHA1_80,
        H("e1f97a0d3e018be0d64fa32c06de41390ec675ad498afeebb6960b3aabe6"),
        H("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb"),
        H("81c8000bcafebabe7128035be487b9bdbef89041f977a5a880000001993e08cd54d6c1230798"),
    ),
    (
        SrtpSuite.AEAD_AES_128_GCM,
        H("000102030405060708090a0b0c0d0e0fa0a1a2a3a4a5a6a7a8a9aaab"),
        H(
            "800f1234decafbadcafebabe"
            "c5002ede04cfdd2eb91159e0880aa06ed2976826f796b201df3131a127e8a392"
        ),
        H(
            "81c8000bcafebabe"
            "c98b8b5df0392a55852b6c21ac8e7025c52c6fbea2b3b446ea31123ba88ce61e80000001"
        ),
    ),
]


@pytest.mark.parametrize(("suite", "master", "srtp", "srtcp"), LIBSRTP_VECTORS)
def test_libsrtp_reference_packets(
    suite: SrtpSuite, master: bytes, srtp: bytes, srtcp: bytes
) -> None:
    crypto = with_key(suite, master)
    sender, receiver = SrtpSender(crypto), SrtpReceiver(crypto)
    assert sender.protect_rtp(LIBSRTP_RTP) == srtp
    assert sender.protect_rtcp(LIBSRTP_RTCP) == srtcp
    assert receiver.unprotect_rtp(srtp) == LIBSRTP_RTP
    assert receiver.unprotect_rtcp(srtcp) == LIBSRTP_RTCP
    # The reference derives the same wire bytes from the master key.
    keys = RefKeys.derive(suite, master)
    assert ref_protect_rtp(keys, LIBSRTP_RTP) == srtp
    assert ref_protect_rtcp(keys, LIBSRTP_RTCP, 1) == srtcp


# ---------------------------------------------------------------------------
# Interop with the reference, every suite, both directions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_sender_output_opens_with_reference(suite: SrtpSuite) -> None:
    crypto = new_crypto(7, suite)
    keys = RefKeys.derive(suite, crypto.keys[0].key)
    sender = SrtpSender(crypto)
    # Across a sequence number wrap (ROC 0 -> 1, which the SRTP tag and IV
    # cover), and with a CSRC and a header extension left in clear.
    with_extension = bytearray(rtp(0xFFFF, csrc=1, payload=b"\x01\x02\x03\x04" + bytes(40)))
    with_extension[0] |= 0x10
    with_extension[16:20] = b"\xbe\xde\x00\x00"  # extension of 0 words
    cases = [(rtp(0xFFFE), 0), (bytes(with_extension), 0), (rtp(0x0000), 1), (rtp(0x0001), 1)]
    for plain, roc in cases:
        protected = sender.protect_rtp(plain)
        assert len(protected) == len(plain) + TAGS[suite][0]
        assert ref_unprotect_rtp(keys, protected, roc) == plain
    protected = sender.protect_rtcp(rtcp_sr())
    assert len(protected) == 28 + 4 + TAGS[suite][1]
    assert ref_unprotect_rtcp(keys, protected) == (rtcp_sr(), 1)


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_reference_output_opens_with_receiver(suite: SrtpSuite) -> None:
    crypto = new_crypto(3, suite)
    keys = RefKeys.derive(suite, crypto.keys[0].key)
    receiver = SrtpReceiver(crypto)
    for plain, roc in [(rtp(0xFFFF), 0), (rtp(0x0000), 1), (rtp(0x0002, csrc=2), 1)]:
        assert receiver.unprotect_rtp(ref_protect_rtp(keys, plain, roc)) == plain
    for index in (1, 2, 0x5D4):
        assert receiver.unprotect_rtcp(ref_protect_rtcp(keys, rtcp_sr(), index)) == rtcp_sr()


# ---------------------------------------------------------------------------
# Sender and receiver
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_round_trip_rtp_and_rtcp(suite: SrtpSuite) -> None:
    sender, receiver = pair(suite)
    for seq in range(100, 110):
        packet = rtp(seq, payload=os.urandom(160))
        protected = sender.protect_rtp(packet)
        assert protected[:12] == packet[:12] and protected[12:172] != packet[12:]
        assert receiver.unprotect_rtp(protected) == packet
    for _ in range(3):
        assert receiver.unprotect_rtcp(sender.protect_rtcp(rtcp_sr())) == rtcp_sr()


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_tag_lengths(suite: SrtpSuite) -> None:
    sender = SrtpSender(new_crypto(1, suite))
    rtp_tag, rtcp_tag = TAGS[suite]
    assert len(sender.protect_rtp(rtp(1))) == 172 + rtp_tag
    assert len(sender.protect_rtcp(rtcp_sr())) == 28 + 4 + rtcp_tag


def test_32_bit_suite_has_4_byte_rtp_tag_and_80_bit_rtcp_tag() -> None:
    sender = SrtpSender(new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_32))
    assert len(sender.protect_rtp(rtp(1))) - 172 == 4
    assert len(sender.protect_rtcp(rtcp_sr())) - 28 == 4 + 10


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_tampered_payload_or_tag_is_auth(suite: SrtpSuite) -> None:
    sender, receiver = pair(suite)
    for position in (20, -1, 1):  # payload, tag, header (marker/PT byte)
        protected = bytearray(sender.protect_rtp(rtp(200 + position)))
        protected[position] ^= 0x01
        assert drop_reason(receiver.unprotect_rtp, bytes(protected)) is SrtpDropReason.AUTH
    protected = bytearray(sender.protect_rtcp(rtcp_sr()))
    protected[12] ^= 0x80
    assert drop_reason(receiver.unprotect_rtcp, bytes(protected)) is SrtpDropReason.AUTH


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_replayed_and_too_old_are_replay(suite: SrtpSuite) -> None:
    crypto = new_crypto(1, suite)
    sender, receiver = SrtpSender(crypto), SrtpReceiver(crypto)
    first = sender.protect_rtp(rtp(5000))
    assert receiver.unprotect_rtp(first) == rtp(5000)
    assert drop_reason(receiver.unprotect_rtp, first) is SrtpDropReason.REPLAY
    srtcp = sender.protect_rtcp(rtcp_sr())
    assert receiver.unprotect_rtcp(srtcp) == rtcp_sr()
    assert drop_reason(receiver.unprotect_rtcp, srtcp) is SrtpDropReason.REPLAY
    # Our sender refuses to go far back, so a second one with the same key
    # makes the old indexes: 10 behind is inside the window, 2000 is not.
    other = SrtpSender(crypto)
    assert receiver.unprotect_rtp(other.protect_rtp(rtp(4990))) == rtp(4990)
    too_old = SrtpSender(crypto).protect_rtp(rtp(3000))
    assert drop_reason(receiver.unprotect_rtp, too_old) is SrtpDropReason.REPLAY


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_truncated_and_oversized_are_malformed(suite: SrtpSuite) -> None:
    sender, receiver = pair(suite)
    rtp_tag, rtcp_tag = TAGS[suite]
    protected = sender.protect_rtp(rtp(10))
    for length in (0, 11, 12, 12 + rtp_tag - 1):
        reason = drop_reason(receiver.unprotect_rtp, protected[:length])
        assert reason is SrtpDropReason.MALFORMED, length
    srtcp = sender.protect_rtcp(rtcp_sr())
    for length in (0, 7, 8 + 4 + rtcp_tag - 1):
        reason = drop_reason(receiver.unprotect_rtcp, srtcp[:length])
        assert reason is SrtpDropReason.MALFORMED, length
    # A header extension that claims 64 words in a 30-byte packet.
    overrun = struct.pack("!BBHII", 0x90, 8, 11, 0, 0x1234ABCD) + b"\xbe\xde\x00\x40" + bytes(14)
    assert drop_reason(receiver.unprotect_rtp, overrun) is SrtpDropReason.MALFORMED
    assert drop_reason(receiver.unprotect_rtp, rtp(12, payload=bytes(1489))) is (
        SrtpDropReason.MALFORMED
    )
    # pylibsrtp keeps 144 bytes of its 1500-byte buffer for the trailer.
    assert len(sender.protect_rtp(rtp(13, payload=bytes(1356 - 12)))) == 1356 + rtp_tag
    with pytest.raises(SrtpDrop, match="packet is too long") as info:
        sender.protect_rtp(rtp(14, payload=bytes(1357 - 12)))
    assert info.value.reason is SrtpDropReason.MALFORMED
    assert drop_reason(sender.protect_rtp, b"\x80\x08") is SrtpDropReason.MALFORMED
    assert drop_reason(sender.protect_rtcp, b"\x80\xc8") is SrtpDropReason.MALFORMED


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_wrong_key_is_auth(suite: SrtpSuite) -> None:
    sender = SrtpSender(new_crypto(1, suite))
    receiver = SrtpReceiver(new_crypto(1, suite))
    with pytest.raises(SrtpDrop, match="authentication failure") as info:
        receiver.unprotect_rtp(sender.protect_rtp(rtp(1)))
    assert info.value.reason is SrtpDropReason.AUTH
    assert drop_reason(receiver.unprotect_rtcp, sender.protect_rtcp(rtcp_sr())) is (
        SrtpDropReason.AUTH
    )


def test_srtcp_claiming_to_be_unencrypted_is_auth() -> None:
    # RFC 3711 3.4: the E flag must match the policy; libsrtp says it cannot
    # validate such a packet, which is a forgery as far as we are concerned.
    sender, receiver = pair(SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    protected = bytearray(sender.protect_rtcp(rtcp_sr()))
    protected[-14] &= 0x7F
    assert drop_reason(receiver.unprotect_rtcp, bytes(protected)) is SrtpDropReason.AUTH


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_sender_refuses_to_protect_an_index_twice(suite: SrtpSuite) -> None:
    sender = SrtpSender(new_crypto(1, suite))
    sender.protect_rtp(rtp(1))
    with pytest.raises(SrtpDrop, match="replay check failed") as info:
        sender.protect_rtp(rtp(1, payload=b"other content"))
    assert info.value.reason is SrtpDropReason.REPLAY


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_many_ssrcs_and_ssrc_changes(suite: SrtpSuite) -> None:
    sender, receiver = pair(suite)
    # Back to the first SSRC at the end: its stream (and index) carries on.
    for turn, ssrc in enumerate((0x1111, 0x2222, 0x3333, 0x1111)):
        for seq in range(100 * turn, 100 * turn + 3):
            packet = rtp(seq, ssrc=ssrc)
            assert receiver.unprotect_rtp(sender.protect_rtp(packet)) == packet
        assert receiver.unprotect_rtcp(sender.protect_rtcp(rtcp_sr(ssrc))) == rtcp_sr(ssrc)


def test_ssrc_limit_on_both_sides() -> None:
    crypto = new_crypto(1, SrtpSuite.AEAD_AES_128_GCM)
    sender = SrtpSender(crypto, max_ssrcs=2)
    receiver = SrtpReceiver(crypto, max_ssrcs=2)
    # A forged packet with a new SSRC takes no slot.
    forged = rtp(1, ssrc=0x9999) + bytes(16)
    assert drop_reason(receiver.unprotect_rtp, forged) is SrtpDropReason.AUTH
    for ssrc in (1, 2):
        assert receiver.unprotect_rtp(sender.protect_rtp(rtp(1, ssrc=ssrc))) == rtp(1, ssrc=ssrc)
    with pytest.raises(SrtpDrop, match="beyond the 2 admitted") as info:
        sender.protect_rtp(rtp(1, ssrc=3))
    assert info.value.reason is SrtpDropReason.SSRC_LIMIT
    assert drop_reason(sender.protect_rtcp, rtcp_sr(3)) is SrtpDropReason.SSRC_LIMIT
    third = SrtpSender(crypto).protect_rtp(rtp(1, ssrc=3))
    assert drop_reason(receiver.unprotect_rtp, third) is SrtpDropReason.SSRC_LIMIT
    # Admitted SSRCs carry on, RTCP included.
    assert receiver.unprotect_rtp(sender.protect_rtp(rtp(2, ssrc=2))) == rtp(2, ssrc=2)
    assert receiver.unprotect_rtcp(sender.protect_rtcp(rtcp_sr(1))) == rtcp_sr(1)


def rss_bytes() -> int:
    """Resident size, after handing free heap pages back to the kernel so
    that memory freed by earlier tests cannot absorb new allocations."""
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_forged_ssrc_spray_allocates_no_streams() -> None:
    """libsrtp authenticates a new SSRC with its template and clones a stream
    only once the packet passes, so forgeries cost no memory."""
    crypto = new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    receiver = SrtpReceiver(crypto, max_ssrcs=30_000)
    forged = [rtp(i, ssrc=0x1000_0000 + i, payload=secrets.token_bytes(170)) for i in range(10_000)]
    forged_rtcp = [rtcp_sr(0x1800_0000 + i) + secrets.token_bytes(14) for i in range(1_000)]
    sender = SrtpSender(crypto, max_ssrcs=30_000)
    authentic = [sender.protect_rtp(rtp(1, ssrc=0x2000_0000 + i)) for i in range(10_000)]

    before = rss_bytes()
    reasons: set[SrtpDropReason] = set()
    for packet in forged:
        try:
            receiver.unprotect_rtp(packet)
        except SrtpDrop as drop:
            reasons.add(drop.reason)
    for packet in forged_rtcp:
        try:
            receiver.unprotect_rtcp(packet)
        except SrtpDrop as drop:
            reasons.add(drop.reason)
    forged_growth = rss_bytes() - before
    assert reasons == {SrtpDropReason.AUTH}
    session = receiver._session
    for ssrc in (0x1000_0000, 0x1000_0000 + 4_999, 0x1000_0000 + 9_999, 0x1800_0000):
        with pytest.raises(pylibsrtp.Error, match="no appropriate context found"):
            session.remove_stream(ssrc)

    # The same measurement sees authentic SSRCs: each one is a stream.
    before = rss_bytes()
    for packet in authentic:
        receiver.unprotect_rtp(packet)
    authentic_growth = rss_bytes() - before
    session.remove_stream(0x2000_0000)
    print(f"RSS growth: {forged_growth} B forged, {authentic_growth} B authentic")
    assert forged_growth < 256 * 1024, forged_growth
    assert authentic_growth > 1024 * 1024, authentic_growth


def test_window_size_hint_widens_the_replay_window() -> None:
    crypto = new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80)
    hinted = CryptoAttribute(crypto.tag, crypto.suite, crypto.keys, ("WSH=2048",))
    assert hinted.window_size_hint == 2048 and crypto.window_size_hint is None
    late = SrtpSender(crypto).protect_rtp(rtp(3500))
    for receiver_crypto, reason in ((crypto, SrtpDropReason.REPLAY), (hinted, None)):
        receiver = SrtpReceiver(receiver_crypto)
        receiver.unprotect_rtp(SrtpSender(crypto).protect_rtp(rtp(5000)))
        if reason is None:
            assert receiver.unprotect_rtp(late) == rtp(3500)
        else:
            assert drop_reason(receiver.unprotect_rtp, late) is reason
    wide = SrtpReceiver(crypto, replay_window=4096)
    wide.unprotect_rtp(SrtpSender(crypto).protect_rtp(rtp(5000)))
    assert wide.unprotect_rtp(late) == rtp(3500)


@pytest.mark.parametrize("window", [0, 63, 32768])
def test_replay_window_out_of_range(window: int) -> None:
    with pytest.raises(ValueError, match=f"replay window {window} is outside 64 to 32767"):
        SrtpReceiver(new_crypto(1, SrtpSuite.AEAD_AES_256_GCM), replay_window=window)


@pytest.mark.parametrize(
    ("crypto", "message"),
    [
        (with_key("AES_256_CM_HMAC_SHA1_80", bytes(46)), "is not implemented"),
        (with_key("AEAD_AES_128_GCM", bytes(28), "UNENCRYPTED_SRTP"), "weaken"),
        (with_key("AEAD_AES_128_GCM", bytes(28), "KDR=4"), "KDR='4' is not supported"),
        (
            CryptoAttribute(1, "AEAD_AES_128_GCM", (KeyParams(bytes(28), None, (1, 4)),)),
            "MKI is not supported",
        ),
    ],
)
def test_sender_and_receiver_refuse_unusable_crypto(crypto: CryptoAttribute, message: str) -> None:
    for side in (SrtpSender, SrtpReceiver):
        with pytest.raises(SdesError, match=message):
            side(crypto)


# ---------------------------------------------------------------------------
# a=crypto grammar (RFC 4568 9.1)
# ---------------------------------------------------------------------------

K30 = b64(bytes(range(30)))
K28 = b64(bytes(range(28)))
K44 = b64(bytes(range(44)))
K20 = b64(bytes(range(20)))
CM80 = "AES_CM_128_HMAC_SHA1_80"


@pytest.mark.parametrize("suite", ALL_SUITES)
@pytest.mark.parametrize(
    ("extras", "lifetime", "mki"),
    [
        ("", None, None),
        ("|2^31", 2**31, None),
        ("|1:4", None, (1, 4)),
        ("|2^20|7:2", 2**20, (7, 2)),
        ("|1000000", 1_000_000, None),
        ("|2^48|255:1", 2**48, (255, 1)),
    ],
)
def test_parse_format_round_trip(
    suite: SrtpSuite, extras: str, lifetime: int | None, mki: tuple[int, int] | None
) -> None:
    key = secrets.token_bytes(master_length(suite))
    value = f"5 {suite} inline:{b64(key)}{extras} KDR=0 WSH=128"
    crypto = parse_crypto(value)
    assert (crypto.tag, crypto.suite, crypto.known_suite) == (5, suite.value, suite)
    assert crypto.keys == (KeyParams(key, lifetime, mki),)
    assert crypto.session_params == ("KDR=0", "WSH=128")
    assert crypto.to_value() == value
    assert parse_crypto(crypto.to_value()) == crypto


def test_parse_rfc4568_example_and_variants() -> None:
    # The example of RFC 4568 section 4.
    crypto = parse_crypto(
        "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:32"
    )
    assert len(crypto.keys[0].key) == 30
    assert (crypto.keys[0].lifetime, crypto.keys[0].mki) == (2**20, (1, 32))
    # Tabs, runs of blanks, a trailing CRLF; "inline" in any case.
    assert parse_crypto(f"2\t{CM80}   INLINE:{K30} \r\n").keys[0].key == bytes(range(30))
    # Base64 without its padding (some clients strip it).
    assert K28.endswith("=")
    assert parse_crypto(f"3 AEAD_AES_128_GCM inline:{K28.rstrip('=')}").keys[0].key == bytes(
        range(28)
    )
    # A decimal power-of-two lifetime is written back as 2^n.
    assert parse_crypto(f"4 {CM80} inline:{K30}|1024").to_value().endswith("|2^10")
    # Suite names compare without case.
    assert parse_crypto(f"5 aead_aes_256_gcm inline:{K44}").known_suite is (
        SrtpSuite.AEAD_AES_256_GCM
    )


def test_parse_several_keys_with_mki() -> None:
    value = f"1 {CM80} inline:{K30}|2^20|1:4;inline:{b64(bytes(30))}|2^20|2:4"
    crypto = parse_crypto(value)
    assert [key.mki for key in crypto.keys] == [(1, 4), (2, 4)]
    assert crypto.to_value() == value


def test_parse_unknown_suite_keeps_it_without_length_check() -> None:
    crypto = parse_crypto(f"9 AES_256_CM_HMAC_SHA1_80 inline:{K20} -FUTURE_PARAM=1")
    assert crypto.known_suite is None
    assert crypto.suite == "AES_256_CM_HMAC_SHA1_80" and crypto.keys[0].key == bytes(range(20))
    assert parse_crypto(crypto.to_value()) == crypto


MALFORMED = [
    ("", "needs a tag, a crypto suite and key parameters, got 1"),
    (f"1 {CM80}", "got 2 field(s)"),
    (f"x {CM80} inline:{K30}", "tag 'x' is not 1 to 9 digits"),
    (f"1234567890 {CM80} inline:{K30}", "tag '1234567890' is not 1 to 9 digits"),
    (f"-1 {CM80} inline:{K30}", "tag '-1'"),
    (f"1 AES-CM-128 inline:{K30}", "crypto suite 'AES-CM-128' is not a token"),
    (f"1 {CM80} {K30}", "key parameters must start with inline:"),
    (f"1 {CM80} uri:{K30}", "must start with inline:"),
    (f"1 {CM80} inline:", "key is not valid base64"),
    (f"1 {CM80} inline:{K30[:-1]}!", "key is not valid base64"),
    (f"1 {CM80} inline:{K30}=", "key is not valid base64"),
    (f"1 {CM80} inline:{K20}", "key is 20 bytes, AES_CM_128_HMAC_SHA1_80 needs 30"),
    (
        f"1 AES_CM_128_HMAC_SHA1_32 inline:{K28}",
        "key is 28 bytes, AES_CM_128_HMAC_SHA1_32 needs 30",
    ),
    (f"1 AEAD_AES_128_GCM inline:{K30}", "key is 30 bytes, AEAD_AES_128_GCM needs 28"),
    (f"1 AEAD_AES_256_GCM inline:{K30}", "key is 30 bytes, AEAD_AES_256_GCM needs 44"),
    (f"1 {CM80} inline:{K30}|0", "lifetime 0 allows no packet"),
    (f"1 {CM80} inline:{K30}|2^49", "lifetime 2^49 is above 2^48"),
    (f"1 {CM80} inline:{K30}|281474976710657", "lifetime 281474976710657 is above 2^48"),
    (f"1 {CM80} inline:{K30}|2^", "lifetime '2^' is not a number or 2^n"),
    (f"1 {CM80} inline:{K30}|forever", "lifetime 'forever' is not a number or 2^n"),
    (f"1 {CM80} inline:{K30}|{'9' * 5000}", "is not a number or 2^n"),
    (f"1 {CM80} inline:{K30}|1:129", "MKI length 129 is outside 1 to 128"),
    (f"1 {CM80} inline:{K30}|1:0", "MKI length 0 is outside 1 to 128"),
    (f"1 {CM80} inline:{K30}|256:1", "MKI value 256 does not fit in 1 byte(s)"),
    (f"1 {CM80} inline:{K30}|1:", "MKI '1:' is not value:length in digits"),
    (f"1 {CM80} inline:{K30}|1:1234", "MKI '1:1234' is not value:length"),
    (f"1 {CM80} inline:{K30}|2^20|2^20", "lifetime must come once, before the MKI"),
    (f"1 {CM80} inline:{K30}|1:4|2^20", "lifetime must come once, before the MKI"),
    (f"1 {CM80} inline:{K30}|1:4|2:4", "MKI given twice"),
    (f"1 {CM80} inline:{K30}|2^20|1:4|x", "more than a lifetime and an MKI"),
    (f"1 {CM80} inline:{K30};inline:{K30}", "2 keys need an MKI each"),
    (f"1 {CM80} inline:{K30}|1:4;inline:{K30}", "2 keys need an MKI each"),
    (f"1 {CM80} inline:{K30}|1:4;inline:{K30}|1:4", "duplicate MKI value"),
    (f"1 {CM80} inline:{K30}|1:4;inline:{K30}|2:2", "MKI lengths differ"),
    (f"1 {CM80} inline:{K30};", "must start with inline:"),
    (f"1 {CM80} inline:{K30} KDR=0 KDR=0", "session parameter 'KDR' given twice"),
    (f"1 {CM80} inline:{K30} WSH=64 wsh=128", "session parameter 'WSH' given twice"),
    (f"1 {CM80} inline:{K30} KDR=25", "KDR='25' is not 0 to 24"),
    (f"1 {CM80} inline:{K30} KDR", "KDR='' is not 0 to 24"),
    (f"1 {CM80} inline:{K30} WSH=32", "WSH='32' is not a number of at least 64"),
    (f"1 {CM80} inline:{K30} WSH=lots", "WSH='lots'"),
    (f"1 {CM80} inline:{K30} UNENCRYPTED_SRTP=1", "UNENCRYPTED_SRTP takes no value"),
    (f"1 {CM80} inline:{K30} FEC_ORDER=LAST", "FEC_ORDER='LAST' is not FEC_SRTP or SRTP_FEC"),
    (f"1 {CM80} inline:{K30} FEC_KEY=inline:{K20}", "key is 20 bytes"),
    (f"1 {CM80} inline:{K30} caf\u00e9", "characters outside ASCII"),
    (f"inline:{K30} {CM80} 1", "tag <redacted> is not 1 to 9 digits"),
]


@pytest.mark.parametrize(("value", "message"), MALFORMED)
def test_malformed_crypto_gets_sdes_error(value: str, message: str) -> None:
    with pytest.raises(SdesError) as info:
        parse_crypto(value)
    text = str(info.value)
    assert text.startswith("a=crypto: ")
    assert message in text
    for key in (K30, K28, K20, K30[:-1]):
        assert key not in text


def test_keys_never_shown() -> None:
    key = bytes(range(100, 130))
    fec_key = b64(bytes(range(30, 60)))
    crypto = CryptoAttribute(
        1, CM80, (KeyParams(key, 2**31, (1, 4)),), ("KDR=0", f"FEC_KEY=inline:{fec_key}")
    )
    for text in (repr(crypto), str(crypto), repr(crypto.keys[0]), str(crypto.keys[0])):
        assert "<key 30 bytes>" in text
        for secret in (b64(key), key.hex(), repr(key), fec_key, repr(key)[2:20]):
            assert secret not in text
    assert "FEC_KEY=<keys>" in repr(crypto)
    assert b64(key) in crypto.to_value() and fec_key in crypto.to_value()
    # Nor in what a drop or a refusal says.
    sender = SrtpSender(new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80))
    wrong = SrtpReceiver(new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80))
    with pytest.raises(SrtpDrop) as info:
        wrong.unprotect_rtp(sender.protect_rtp(rtp(1)))
    assert str(info.value) == "srtp-auth: SRTP: authentication failure"
    assert info.value.message == "SRTP: authentication failure"
    with pytest.raises(SdesError) as refusal:
        SrtpSender(CryptoAttribute(1, CM80, (KeyParams(key),), ("UNENCRYPTED_SRTCP",)))
    assert b64(key) not in str(refusal.value) and key.hex() not in str(refusal.value)


# ---------------------------------------------------------------------------
# Negotiation (RFC 4568 7.1)
# ---------------------------------------------------------------------------


def line(tag: int, suite: str = CM80, *params: str, key: str = K30) -> CryptoAttribute:
    return parse_crypto(" ".join([str(tag), suite, f"inline:{key}", *params]))


def test_choose_takes_first_offered_that_is_allowed() -> None:
    offered = [
        line(1, "AEAD_AES_128_GCM", key=K28),
        line(2, CM80),
        line(3, "AEAD_AES_256_GCM", key=K44),
    ]
    assert choose_crypto(offered, ALL_SUITES) is offered[0]
    assert choose_crypto(offered, [SrtpSuite.AES_CM_128_HMAC_SHA1_80]) is offered[1]
    allowed = [SrtpSuite.AEAD_AES_256_GCM, SrtpSuite.AES_CM_128_HMAC_SHA1_80]
    assert choose_crypto(offered, allowed) is offered[1]  # offerer's order wins
    assert choose_crypto(offered, [SrtpSuite.AES_CM_128_HMAC_SHA1_32]) is None
    assert choose_crypto([], ALL_SUITES) is None


@pytest.mark.parametrize(
    ("refused", "reason"),
    [
        (
            line(1, "AES_256_CM_HMAC_SHA1_80", key=K44),
            "crypto suite 'AES_256_CM_HMAC_SHA1_80' is not implemented",
        ),
        (line(1, "F8_128_HMAC_SHA1_80"), "crypto suite 'F8_128_HMAC_SHA1_80' is not implemented"),
        (line(1, CM80, "UNENCRYPTED_SRTP"), "UNENCRYPTED_SRTP would weaken protection"),
        (line(1, CM80, "UNENCRYPTED_SRTCP"), "UNENCRYPTED_SRTCP would weaken protection"),
        (
            line(1, CM80, "UNAUTHENTICATED_SRTP"),
            "UNAUTHENTICATED_SRTP would weaken protection",
        ),
        (line(1, CM80, "KDR=1"), "KDR='1' is not supported (only 0)"),
        (line(1, CM80, "FEC_KEY=inline:" + K30), "FEC_KEY is not supported"),
        (line(1, CM80, "SOMETHING_NEW"), "session parameter 'SOMETHING_NEW' is not supported"),
        (line(1, CM80, key=K30 + "|1:4"), "an MKI is not supported"),
        (
            parse_crypto(f"1 {CM80} inline:{K30}|1:4;inline:{K30}|2:4"),
            "2 master keys (MKI) are not supported",
        ),
    ],
)
def test_choose_skips_lines_it_cannot_support(refused: CryptoAttribute, reason: str) -> None:
    assert crypto_refusal(refused, ALL_SUITES) == reason
    acceptable = line(2, CM80)
    assert choose_crypto([refused, acceptable], ALL_SUITES) is acceptable
    assert choose_crypto([refused], ALL_SUITES) is None


def test_choose_accepts_parameters_it_implements() -> None:
    for params in (("KDR=0",), ("WSH=256",), ("FEC_ORDER=FEC_SRTP",), ("-LATER_EXTENSION",)):
        offered = line(4, CM80, *params)
        assert crypto_refusal(offered) is None
        assert choose_crypto([offered], ALL_SUITES) is offered
    assert crypto_refusal(line(1, CM80), [SrtpSuite.AEAD_AES_128_GCM]) == (
        "crypto suite AES_CM_128_HMAC_SHA1_80 is not allowed here"
    )


def test_choose_refuses_duplicate_tags() -> None:
    with pytest.raises(SdesError, match="tag 1 appears on two lines"):
        choose_crypto([line(1), line(1, "AEAD_AES_128_GCM", key=K28)], ALL_SUITES)


def test_offer_answer_then_media_both_ways() -> None:
    # We offer every suite; the peer allows GCM-128 and CM-80 and takes the
    # first of ours it allows; each side sends with its own key.
    offer = [new_crypto(tag, suite) for tag, suite in enumerate(DEFAULT_SUITES, start=1)]
    seen_by_peer = [parse_crypto(crypto.to_value()) for crypto in offer]
    allowed = [SrtpSuite.AEAD_AES_128_GCM, SrtpSuite.AES_CM_128_HMAC_SHA1_80]
    chosen = choose_crypto(seen_by_peer, allowed)
    assert chosen is not None and chosen.known_suite is SrtpSuite.AES_CM_128_HMAC_SHA1_80
    assert chosen.known_suite is not None
    answer = new_crypto(chosen.tag, chosen.known_suite)
    answer_seen = parse_crypto(answer.to_value())
    ours = accept_answer(offer, answer_seen)
    assert ours is offer[0]
    assert answer.keys[0].key != ours.keys[0].key

    to_peer, peer_in = SrtpSender(ours), SrtpReceiver(chosen)
    peer_out, from_peer = SrtpSender(answer), SrtpReceiver(answer_seen)
    assert peer_in.unprotect_rtp(to_peer.protect_rtp(rtp(1))) == rtp(1)
    assert from_peer.unprotect_rtp(peer_out.protect_rtp(rtp(9, ssrc=77))) == rtp(9, ssrc=77)
    assert from_peer.unprotect_rtcp(peer_out.protect_rtcp(rtcp_sr(77))) == rtcp_sr(77)
    # Keys do not cross: what we send does not open with the peer's key.
    assert drop_reason(from_peer.unprotect_rtp, to_peer.protect_rtp(rtp(2))) is (
        SrtpDropReason.AUTH
    )


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (line(5), "a=crypto answer: tag 5 was not offered"),
        (line(1, "AEAD_AES_128_GCM", key=K28), "tag 1 offered AES_CM_128_HMAC_SHA1_80, answered"),
        (line(1, CM80, "UNENCRYPTED_SRTCP"), "a=crypto answer: UNENCRYPTED_SRTCP would weaken"),
    ],
)
def test_accept_answer_refuses(answer: CryptoAttribute, message: str) -> None:
    offer = [new_crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80)]
    with pytest.raises(SdesError, match=message.replace("(", r"\(")):
        accept_answer(offer, answer)


# ---------------------------------------------------------------------------
# Keys and suites
# ---------------------------------------------------------------------------


def test_master_lengths_and_default_order() -> None:
    assert [master_length(suite) for suite in ALL_SUITES] == [30, 30, 28, 44]
    assert set(DEFAULT_SUITES) == set(ALL_SUITES) and len(DEFAULT_SUITES) == 4
    assert DEFAULT_SUITES[0] is SrtpSuite.AES_CM_128_HMAC_SHA1_80
    assert DEFAULT_SUITES[-1] is SrtpSuite.AES_CM_128_HMAC_SHA1_32


@pytest.mark.parametrize("suite", ALL_SUITES)
def test_new_crypto_fresh_keys_of_the_right_length(suite: SrtpSuite) -> None:
    made = [new_crypto(3, suite) for _ in range(50)]
    keys = {crypto.keys[0].key for crypto in made}
    assert len(keys) == 50
    assert {len(key) for key in keys} == {master_length(suite)}
    crypto = made[0]
    assert (crypto.tag, crypto.suite, crypto.known_suite) == (3, suite.value, suite)
    assert crypto.keys[0].lifetime is None and crypto.keys[0].mki is None
    assert crypto.session_params == ()
    assert parse_crypto(crypto.to_value()) == crypto


@pytest.mark.parametrize("tag", [-1, 1_000_000_000])
def test_new_crypto_tag_range(tag: int) -> None:
    with pytest.raises(SdesError, match=f"tag {tag} is outside 0 to 999999999"):
        new_crypto(tag, SrtpSuite.AES_CM_128_HMAC_SHA1_80)
