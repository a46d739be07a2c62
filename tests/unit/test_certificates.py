"""Which user certificates log in, through which cert-authority line, with which rights:
real certificates from `ssh-keygen -s`."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import asyncssh
import pytest

from sshreg.access import Action, Rights
from sshreg.keys.entries import parse_authorized_keys
from sshreg.keys.revocation import RevocationList
from sshreg.ssh.certificates import CertificateRefused, check_certificate

PEER = "127.0.0.1"


def keygen(*args: str | Path) -> None:
    result = subprocess.run(["ssh-keygen", *map(str, args)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    for name in ("ca", "other-ca", "user"):
        keygen("-q", "-t", "ed25519", "-N", "", "-f", root / name)
    return root


def sign(pki: Path, name: str, *options: str, ca: str = "ca", principals: str = "ml-team",
         serial: int = 7, key_id: str = "alice@corp") -> asyncssh.SSHCertificate:
    """A certificate of the user key, signed with `options` (ssh-keygen's flags)."""
    key = pki / f"{name}.pub"
    key.write_bytes((pki / "user.pub").read_bytes())
    keygen("-q", "-s", pki / ca, "-I", key_id, "-n", principals, "-z", str(serial), *options,
           key)
    return asyncssh.read_certificate(pki / f"{name}-cert.pub")


def lines(pki: Path, *texts: str) -> list:
    ca = (pki / "ca.pub").read_text().strip()
    return parse_authorized_keys("".join(f"{t} {ca}\n" for t in texts))


def test_a_certificate_with_a_listed_principal_logs_in_with_the_lines_rights(pki):
    login = check_certificate(sign(pki, "ok"), lines(pki, 'cert-authority,principals="ml-team",'
                                                        'sshreg-push="ml/*"'), {},
                              RevocationList(), PEER)
    identity = login.identity
    assert identity.may(Action.PUSH, "ml/model") and not identity.may(Action.PULL, "web/app")
    assert (identity.comment, identity.certificate.serial, identity.certificate.key_id) == (
        "alice@corp", 7, "alice@corp")
    assert identity.certificate.ca == asyncssh.read_public_key(pki / "ca.pub").get_fingerprint(
        "sha256")
    assert login.rules.port_forwarding


def test_principals_map_to_rights_and_several_principals_get_the_union(pki):
    mapping = {"ml-team": Rights(push=("ml/*",)), "web": Rights(pull=("web/**",), admin=True)}
    entries = lines(pki, 'cert-authority,principals="ml-team,web,ops"')
    both = check_certificate(sign(pki, "both", principals="ml-team,web"), entries, mapping,
                             RevocationList(), PEER).identity
    assert both.may(Action.PUSH, "ml/x") and both.may(Action.PULL, "web/a/b") and both.rights.admin
    ml = check_certificate(sign(pki, "ml"), entries, mapping, RevocationList(), PEER).identity
    assert ml.may(Action.PUSH, "ml/x") and not ml.may(Action.PULL, "web/a")
    unmapped = check_certificate(sign(pki, "ops", principals="ops"), entries, mapping,
                                 RevocationList(), PEER).identity
    assert unmapped.rights == Rights.full()  # the line's rights: a plain line is full access


@pytest.mark.parametrize("case,options,reason", [
    ("principal", ("-n", "someone-else"), "none of its principals (someone-else)"),
    ("expired", ("-V", "-2d:-1d"), "expired"),
    ("future", ("-V", "+1d:+2d"), "not valid yet"),
    ("host", ("-h",), "host certificate"),
    ("ca", ("--other-ca",), "signed by a CA no cert-authority line lists"),
    ("source", ("-O", "source-address=10.1.0.0/16"), "not valid from 127.0.0.1"),
    ("command", ("-O", "force-command=/bin/true"), "force-command"),
])
def test_a_certificate_that_breaks_a_rule_is_refused_saying_which(pki, case, options, reason):
    signing = {"ca": "other-ca"} if options == ("--other-ca",) else {}
    flags = () if signing else options
    principals = "ml-team"
    if flags[:1] == ("-n",):
        principals, flags = flags[1], ()
    cert = sign(pki, f"bad-{case}", *flags, principals=principals, **signing)
    with pytest.raises(CertificateRefused, match=re.escape(reason)):
        check_certificate(cert, lines(pki, 'cert-authority,principals="ml-team"'), {},
                          RevocationList(), PEER)


def test_a_certificate_without_permit_port_forwarding_logs_in_without_tunnels(pki):
    login = check_certificate(sign(pki, "noforward", "-O", "no-port-forwarding"),
                              lines(pki, 'cert-authority,principals="ml-team"'), {},
                              RevocationList(), PEER)
    assert not login.rules.port_forwarding


def test_the_lines_own_restrictions_apply_to_its_certificates(pki):
    cert = sign(pki, "restricted")
    with pytest.raises(CertificateRefused, match="does not allow"):
        check_certificate(cert, lines(pki, 'cert-authority,principals="ml-team",from="10.0.0.0/8"'),
                          {}, RevocationList(), PEER)
    with pytest.raises(CertificateRefused, match="has expired"):
        check_certificate(cert, lines(pki, 'cert-authority,principals="ml-team",'
                                           'expiry-time="20200101"'), {}, RevocationList(), PEER)
    restricted = check_certificate(cert, lines(pki, 'cert-authority,principals="ml-team",'
                                                    'restrict'), {}, RevocationList(), PEER)
    assert not restricted.rules.port_forwarding


def test_a_ca_key_never_logs_in_as_a_plain_key(pki):
    (entry,) = lines(pki, 'cert-authority,principals="ml-team"')
    assert entry.cert_authority  # connection.py only lets in plain lines that are not CAs


def test_a_revoked_certificate_is_refused_and_a_login_loses_validity_when_revoked(pki, tmp_path):
    entries = lines(pki, 'cert-authority,principals="ml-team"')
    cert = sign(pki, "revoked", serial=99, key_id="bob@corp")
    login = check_certificate(cert, entries, {}, RevocationList(), PEER)
    for spec in ("serial: 99", "id: bob@corp"):
        (tmp_path / "spec").write_text(spec + "\n")
        keygen("-k", "-f", tmp_path / "krl", "-s", pki / "ca.pub", tmp_path / "spec")
        revoked = RevocationList.parse((tmp_path / "krl").read_bytes())
        with pytest.raises(CertificateRefused, match="revoked"):
            check_certificate(cert, entries, {}, revoked, PEER)
        assert "revoked" in login.still_valid(revoked)
    by_key = RevocationList.parse((pki / "user.pub").read_bytes())
    assert login.still_valid(by_key) == "its key is revoked"
    assert login.still_valid(RevocationList()) is None


def test_a_login_stops_being_valid_when_its_certificate_expires(pki):
    login = check_certificate(sign(pki, "short", "-V", "-1m:+1h"),
                              lines(pki, 'cert-authority,principals="ml-team"'), {},
                              RevocationList(), PEER)
    assert login.still_valid(RevocationList()) is None
    assert login.still_valid(RevocationList(), now=time.time() + 7200) == \
        "its certificate expired"
