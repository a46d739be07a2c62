"""Revoked keys and certificates: OpenSSH's KRL format (`ssh-keygen -k`), or a text file of
public keys, as sshd's `RevokedKeys` takes them.

A KRL (PROTOCOL.krl) revokes plain keys by blob or by SHA1/SHA256 fingerprint, and
certificates by serial (lists, ranges, bitmaps) or key ID, per CA or for every CA. A
certificate is revoked when its serial or key ID is listed for its CA, when its own key is
revoked, or when the CA's key is. An unreadable file, or a KRL with a part this parser does
not know and must not skip (a critical extension), refuses the whole file: revocation fails
closed (`RevocationError`), and the caller keeps the list it had.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import asyncssh

MAGIC = b"SSHKRL\n\0"
FORMAT_VERSION = 1
CERTIFICATES, EXPLICIT_KEY, FINGERPRINT_SHA1, SIGNATURE, FINGERPRINT_SHA256 = 1, 2, 3, 4, 5
EXTENSION = 255
SERIAL_LIST, SERIAL_RANGE, SERIAL_BITMAP, KEY_ID = 0x20, 0x21, 0x22, 0x23
ANY_CA = b""


class RevocationError(ValueError):
    """The revocation file cannot be read as a KRL or as public keys."""


@dataclass
class _CertificateRules:
    serials: set[int] = field(default_factory=set)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    key_ids: set[str] = field(default_factory=set)

    def revokes(self, serial: int, key_id: str) -> str | None:
        if serial in self.serials or any(lo <= serial <= hi for lo, hi in self.ranges):
            return f"serial {serial} is revoked"
        if key_id in self.key_ids:
            return f"key ID {key_id!r} is revoked"
        return None


@dataclass
class RevocationList:
    """What is revoked; empty when no file is configured."""

    keys: set[bytes] = field(default_factory=set)  # public key blobs
    sha1: set[bytes] = field(default_factory=set)
    sha256: set[bytes] = field(default_factory=set)
    certificates: dict[bytes, _CertificateRules] = field(default_factory=dict)  # by CA blob

    @classmethod
    def parse(cls, data: bytes) -> RevocationList:
        if data.startswith(MAGIC):
            return _parse_krl(data)
        return _parse_keys(data)

    def key_revoked(self, blob: bytes) -> bool:
        return (blob in self.keys or hashlib.sha1(blob).digest() in self.sha1
                or hashlib.sha256(blob).digest() in self.sha256)

    def certificate_revoked(self, key_blob: bytes, ca_blob: bytes, serial: int, key_id: str
                            ) -> str | None:
        """Why a certificate is revoked, or None."""
        if self.key_revoked(key_blob):
            return "its key is revoked"
        if self.key_revoked(ca_blob):
            return "its CA is revoked"
        for ca in (ca_blob, ANY_CA):
            rules = self.certificates.get(ca)
            reason = rules.revokes(serial, key_id) if rules else None
            if reason:
                return reason
        return None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def __bool__(self) -> bool:
        return self.at < len(self.data)

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise RevocationError("the KRL is truncated")
        chunk = self.data[self.at:self.at + size]
        self.at += size
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def uint64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())

    def mpint(self) -> int:
        return int.from_bytes(self.string(), "big", signed=True)


def _parse_krl(data: bytes) -> RevocationList:
    reader = _Reader(data)
    reader.take(len(MAGIC))
    version = reader.uint32()
    if version != FORMAT_VERSION:
        raise RevocationError(f"KRL format version {version} is not supported")
    reader.uint64(), reader.uint64(), reader.uint64()  # krl_version, generated_date, flags
    reader.string(), reader.string()  # reserved, comment
    revoked = RevocationList()
    while reader:
        kind, body = reader.byte(), _Reader(reader.string())
        if kind == CERTIFICATES:
            _parse_certificates(body, revoked)
        elif kind in (EXPLICIT_KEY, FINGERPRINT_SHA1, FINGERPRINT_SHA256):
            into = {EXPLICIT_KEY: revoked.keys, FINGERPRINT_SHA1: revoked.sha1,
                    FINGERPRINT_SHA256: revoked.sha256}[kind]
            while body:
                into.add(body.string())
        elif kind == SIGNATURE:
            break  # signatures close the KRL; sshd does not require them either
        elif kind == EXTENSION:
            name, critical = body.string(), body.byte()
            if critical:
                raise RevocationError(f"KRL has a critical extension {name!r} sshreg "
                                      "does not know")
        else:
            raise RevocationError(f"KRL has an unknown section type {kind}")
    return revoked


def _parse_certificates(body: _Reader, revoked: RevocationList) -> None:
    ca = body.string()
    body.string()  # reserved
    rules = revoked.certificates.setdefault(ca, _CertificateRules())
    while body:
        kind, section = body.byte(), _Reader(body.string())
        if kind == SERIAL_LIST:
            while section:
                rules.serials.add(section.uint64())
        elif kind == SERIAL_RANGE:
            rules.ranges.append((section.uint64(), section.uint64()))
        elif kind == SERIAL_BITMAP:
            offset, bitmap = section.uint64(), section.mpint()
            rules.serials.update(offset + bit for bit in range(bitmap.bit_length())
                                 if bitmap >> bit & 1)
        elif kind == KEY_ID:
            while section:
                rules.key_ids.add(section.string().decode("utf-8", "replace"))
        elif kind == EXTENSION:
            name, critical = section.string(), section.byte()
            if critical:
                raise RevocationError(f"KRL has a critical extension {name!r} sshreg "
                                      "does not know")
        else:
            raise RevocationError(f"KRL has an unknown certificate section type {kind}")


def _parse_keys(data: bytes) -> RevocationList:
    revoked = RevocationList()
    for number, raw in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            revoked.keys.add(asyncssh.import_public_key(line).public_data)
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise RevocationError(f"line {number} is neither a KRL nor a public key: {exc}"
                                  ) from None
    return revoked
