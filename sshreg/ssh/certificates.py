"""Logging in with an OpenSSH user certificate: which CA line lets it in, with what rights.

A certificate logs in when a `cert-authority` line of authorized_keys holds the key that
signed it and every one of OpenSSH's rules holds:

- it is a user certificate (a host certificate is refused), inside its validity window;
- at least one of its principals is in the line's `principals=` (the SSH login name means
  nothing here; `keys/options.py` refuses a CA line without `principals=`);
- the line itself is usable from this address and unexpired (`from=`, `expiry-time=`);
- its critical options are honoured: `source-address` is enforced, `force-command` refuses
  it (sshreg cannot run a forced command), and an unknown one refuses it (asyncssh already
  refuses to decode such a certificate; the refusal is logged here);
- neither it, its key nor its CA is revoked (`keys/revocation.py`).

Rights: each accepted principal brings the rights `[principals]` maps it to, or, when it is
not mapped, the rights of the CA line's `sshreg-*` options (full rights without any, as for
any key line). The certificate gets the union. The tunnel needs both the line's forwarding
and the certificate's `permit-port-forwarding` extension.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import ip_address

import asyncssh
from asyncssh.public_key import SSHOpenSSHCertificate, decode_ssh_certificate

from ..access import Certificate, Identity, Rights, union
from ..keys.entries import KeyEntry
from ..keys.revocation import RevocationList

log = logging.getLogger("sshreg.ssh")

CERT_TYPE_USER = 1  # PROTOCOL.certkeys: SSH2_CERT_TYPE_USER


class CertificateRefused(Exception):
    """Why a certificate does not log in (logged with its key's fingerprint)."""


@dataclass(frozen=True)
class CertificateLogin:
    """A certificate that logged in: the CA line it came through (what reloads are checked
    against), the rules its tunnels follow, and the identity of its requests."""

    line: KeyEntry
    rules: KeyEntry  # the line with the certificate's rights and forwarding
    identity: Identity
    valid_before: float
    key: asyncssh.SSHKey  # the certified key, which signs the login
    ca_blob: bytes

    @property
    def key_blob(self) -> bytes:
        return self.key.public_data

    def still_valid(self, revoked: RevocationList, now: float | None = None) -> str | None:
        """Why the login is no longer valid, or None."""
        if (now or time.time()) >= self.valid_before:
            return "its certificate expired"
        cert = self.identity.certificate
        assert cert is not None
        return revoked.certificate_revoked(self.key_blob, self.ca_blob, cert.serial,
                                           cert.key_id)


def is_certificate(key_data: bytes) -> bool:
    """Whether a public key blob offered in a login is a certificate (by its algorithm)."""
    size = int.from_bytes(key_data[:4], "big")
    algorithm = key_data[4:4 + size] if len(key_data) >= 4 + size else b""
    return algorithm.endswith(b"-cert-v01@openssh.com") or algorithm.startswith(b"x509v3-")


def certificate_login(key_data: bytes, entries: Iterable[KeyEntry],
                      principal_rights: Mapping[str, Rights], revoked: RevocationList,
                      peer: str, where: str) -> CertificateLogin | None:
    """The login a certificate offered from `where` makes, or None (the refusal logged,
    with the key's fingerprint when the certificate could be read)."""
    try:
        cert = decode_ssh_certificate(key_data)
    except (asyncssh.KeyImportError, ValueError) as exc:
        log.warning("refused an unusable certificate from %(peer)s: %(reason)s",
                    {"peer": where, "reason": str(exc)})
        return None
    fingerprint = cert.key.get_fingerprint("sha256")
    try:
        return check_certificate(cert, entries, principal_rights, revoked, peer)
    except Exception as exc:  # a refusal, or a case the checks missed: never a login
        if not isinstance(exc, CertificateRefused):
            log.exception("checking the certificate of key %(fingerprint)s failed",
                          {"fingerprint": fingerprint})
        log.warning("refused certificate of key %(fingerprint)s from %(peer)s: %(reason)s",
                    {"fingerprint": fingerprint, "peer": where, "reason": str(exc)})
        return None


def check_certificate(cert: asyncssh.SSHCertificate, entries: Iterable[KeyEntry],
                      principal_rights: Mapping[str, Rights], revoked: RevocationList,
                      peer: str, now: float | None = None) -> CertificateLogin:
    """The login `cert` makes from `peer`; CertificateRefused saying why if it makes none."""
    now = time.time() if now is None else now
    if not isinstance(cert, SSHOpenSSHCertificate):
        raise CertificateRefused("only OpenSSH certificates are accepted")
    if cert._cert_type != CERT_TYPE_USER:  # asyncssh keeps these attributes private
        raise CertificateRefused("a host certificate is not a user certificate")
    serial, key_id = cert._serial, cert._key_id
    if now < cert._valid_after:
        raise CertificateRefused(f"certificate {key_id!r} is not valid yet")
    if now >= cert._valid_before:
        raise CertificateRefused(f"certificate {key_id!r} expired")
    ca_blob = cert.signing_key.public_data
    lines = [e for e in entries if e.cert_authority and e.key.public_data == ca_blob]
    if not lines:
        raise CertificateRefused(f"certificate {key_id!r} is signed by a CA no "
                                 "cert-authority line lists")
    _check_options(cert, peer, key_id)
    reason = revoked.certificate_revoked(cert.key.public_data, ca_blob, serial, key_id)
    if reason:
        raise CertificateRefused(f"certificate {key_id!r} (serial {serial}): {reason}")
    problems = []
    for line in lines:
        accepted = [p for p in cert.principals if p in line.principals]
        if line.expired(now):
            problems.append(f"the cert-authority line {line.line} has expired")
        elif not line.allows_address("", peer):
            problems.append(f"the cert-authority line {line.line} does not allow {peer}")
        elif not accepted:
            problems.append(f"none of its principals ({', '.join(cert.principals) or 'none'})"
                            f" is listed on the cert-authority line {line.line}")
        else:
            return _login(cert, line, accepted, principal_rights, peer)
    raise CertificateRefused(f"certificate {key_id!r}: {'; '.join(problems)}")


def _check_options(cert: SSHOpenSSHCertificate, peer: str, key_id: str) -> None:
    if "force-command" in cert.options:
        raise CertificateRefused(f"certificate {key_id!r} has a force-command, which sshreg "
                                 "cannot honour")
    networks = cert.options.get("source-address")
    if networks:
        try:
            address = ip_address(peer)
        except ValueError:
            address = None
        if address is None or not any(address in network for network in networks):
            raise CertificateRefused(f"certificate {key_id!r} is not valid from {peer} "
                                     "(source-address)")


def _login(cert: SSHOpenSSHCertificate, line: KeyEntry, accepted: list[str],
           principal_rights: Mapping[str, Rights], peer: str) -> CertificateLogin:
    rights = union(*(principal_rights.get(p, line.rights) for p in accepted))
    forwarding = line.port_forwarding and bool(cert.options.get("permit-port-forwarding"))
    fingerprint = cert.key.get_fingerprint("sha256")
    identity = Identity(fingerprint, cert._key_id, rights, peer,
                        Certificate(cert._key_id, cert._serial,
                                    line.fingerprint, tuple(accepted)))
    return CertificateLogin(
        line=line, rules=replace(line, rights=rights, port_forwarding=forwarding),
        identity=identity, valid_before=float(cert._valid_before),
        key=cert.key, ca_blob=cert.signing_key.public_data)
