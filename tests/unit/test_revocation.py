"""Revocation lists as `ssh-keygen -k` writes them, checked against `ssh-keygen -Q`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import asyncssh
import pytest

from sshreg.keys.revocation import RevocationError, RevocationList


def keygen(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh-keygen", *map(str, args)], capture_output=True, text=True,
                          timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, three user keys and certificates of serials 1-40 with key IDs user-N."""
    root = tmp_path_factory.mktemp("pki")
    for name in ("ca", "other-ca", "a", "b", "c"):
        assert keygen("-q", "-t", "ed25519", "-N", "", "-f", root / name).returncode == 0
    for serial in range(1, 41):
        key = root / f"cert{serial}"
        key.write_bytes((root / "abc"[serial % 3]).with_suffix(".pub").read_bytes())
        result = keygen("-q", "-s", root / "ca", "-I", f"user-{serial}", "-n", "ml-team",
                        "-z", str(serial), key)
        assert result.returncode == 0, result.stderr
    return root


def certificate(pki: Path, serial: int) -> asyncssh.SSHCertificate:
    return asyncssh.read_certificate(pki / f"cert{serial}-cert.pub")


def revoked_by_openssh(krl: Path, path: Path) -> bool:
    return keygen("-Q", "-f", krl, path).returncode != 0


def check(pki: Path, spec: str, name: str, *, ca: bool = True) -> RevocationList:
    (pki / f"{name}.spec").write_text(spec)
    krl = pki / f"{name}.krl"
    args = ["-k", "-f", krl, *(["-s", pki / "ca.pub"] if ca else []), pki / f"{name}.spec"]
    result = keygen(*args)
    assert result.returncode == 0, result.stderr
    revoked = RevocationList.parse(krl.read_bytes())
    for serial in range(1, 41):
        cert = certificate(pki, serial)
        ours = revoked.certificate_revoked(cert.key.public_data, cert.signing_key.public_data,
                                           serial, f"user-{serial}")
        theirs = revoked_by_openssh(krl, pki / f"cert{serial}-cert.pub")
        assert bool(ours) == theirs, (spec, serial, ours)
    return revoked


def test_serials_listed_ranged_and_scattered_match_openssh(pki):
    check(pki, "serial: 3\nserial: 7\nserial: 10-25\nserial: 31\nserial: 33\nserial: 35\n",
          "serials")


def test_key_ids_match_openssh(pki):
    revoked = check(pki, "id: user-4\nid: user-9\n", "ids")
    assert revoked.certificates  # scoped to the CA


def test_a_key_revoked_revokes_its_certificates_and_a_plain_login(pki):
    spec = f"key: {(pki / 'b.pub').read_text()}"
    revoked = check(pki, spec, "key", ca=False)
    assert revoked.key_revoked(asyncssh.read_public_key(pki / "b.pub").public_data)
    assert not revoked.key_revoked(asyncssh.read_public_key(pki / "a.pub").public_data)


def test_sha1_and_sha256_fingerprints_match_openssh(pki):
    fingerprint = keygen("-l", "-E", "sha256", "-f", pki / "c.pub").stdout.split()[1]
    check(pki, f"hash: {fingerprint}\n", "hash", ca=False)
    check(pki, f"sha256: {(pki / 'b.pub').read_text()}", "sha256", ca=False)
    check(pki, f"sha1: {(pki / 'a.pub').read_text()}", "sha1", ca=False)


def test_a_revoked_ca_revokes_every_certificate_it_signed(pki):
    revoked = RevocationList.parse((pki / "ca.pub").read_bytes())
    cert = certificate(pki, 1)
    assert revoked.certificate_revoked(cert.key.public_data, cert.signing_key.public_data,
                                       1, "user-1") == "its CA is revoked"


def test_a_serial_of_another_ca_is_not_revoked(pki):
    (pki / "other.spec").write_text("serial: 1-40\n")
    krl = pki / "other.krl"
    assert keygen("-k", "-f", krl, "-s", pki / "other-ca.pub", pki / "other.spec").returncode == 0
    revoked = RevocationList.parse(krl.read_bytes())
    cert = certificate(pki, 5)
    assert revoked.certificate_revoked(cert.key.public_data, cert.signing_key.public_data,
                                       5, "user-5") is None


def test_a_plain_list_of_public_keys_revokes_those_keys(pki):
    revoked = RevocationList.parse((pki / "a.pub").read_bytes() + b"# a comment\n\n")
    assert revoked.key_revoked(asyncssh.read_public_key(pki / "a.pub").public_data)


@pytest.mark.parametrize("data", [b"SSHKRL\n\0\0\0", b"not a key\n",
                                  b"SSHKRL\n\0\0\0\0\x02" + b"\0" * 40])
def test_an_unreadable_file_is_refused_whole(data):
    with pytest.raises(RevocationError):
        RevocationList.parse(data)
