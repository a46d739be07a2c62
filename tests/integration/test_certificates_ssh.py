"""SSH user certificates end to end: real `ssh-keygen -s` certificates, the real OpenSSH
client, a real `sshreg serve` (README, "SSH certificates: a CA for the whole team").

One server for the module, with one CA line (`principals="ml-team,ops,infra"`,
`sshreg-pull="base/*"`), `[principals.ml-team]` and `[principals.ops]` tables, a plain
full-access key and a `revoked_keys` file. Every certificate is made for the test that uses
it, over a key of its own, so that a log line with its fingerprint can only be about it.
Tests that change authorized_keys or the revocation file put them back afterwards.

The module refuses logins on purpose, all from 127.0.0.1 (about two failed logins each:
OpenSSH offers the plain key too): the server's failed-login limit per address is raised so
that the refusals of one test never block the logins of the next. What a certificate login
itself counts is checked on a server of its own, with a tight limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from tests.support.deployment import unique
from tests.support.docker import Docker
from tests.support.images import make_image, write_docker_archive
from tests.support.registry import RegistryHTTP
from tests.support.sshreg_server import (
    ClientKey,
    S3Store,
    SshregServer,
    Tunnel,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.integration

DISCONNECT_WITHIN = 5.0  # seconds: a revoked, expired or de-listed certificate's tunnel ends
PRINCIPALS = ("ml-team", "ops", "infra")
CA_OPTIONS = f'cert-authority,principals="{",".join(PRINCIPALS)}",sshreg-pull="base/*"'
RIGHTS = {
    "principals.ml-team": {"push": ["ml/*"]},
    "principals.ops": {"pull": ["**"], "admin": True},
    # infra has no table: it gets the CA line's sshreg-pull="base/*"
}


@dataclass(frozen=True)
class Certificate:
    """A user key and the certificate a CA signed for it."""

    key: ClientKey
    path: Path  # the certificate file
    key_id: str
    serial: int
    valid_before: int


class Pki:
    """CAs and the certificates they sign, in one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = ClientKey.generate(root, "ca")
        self.other_ca = ClientKey.generate(root, "other-ca")
        self._serials = itertools.count(100)

    def certify(self, name: str, *flags: str, principals: str = "ml-team",
                ca: ClientKey | None = None, beside: bool = True) -> Certificate:
        """A new key `name` and its certificate (ssh-keygen `flags`: -V, -O, -h): as
        `name-cert.pub` beside the key (ssh finds it by itself), or elsewhere (`beside`
        False: for `-o CertificateFile=`)."""
        key = ClientKey.generate(self.root, name)
        public = key.path.with_name(f"{name}.pub")
        if not beside:
            folder = self.root / "elsewhere"
            folder.mkdir(exist_ok=True)
            public = Path(shutil.copy(public, folder / f"{name}.pub"))
        serial, key_id = next(self._serials), f"{name}@corp"
        keygen("-q", "-s", (ca or self.ca).path, "-I", key_id, "-n", principals,
               "-z", str(serial), *flags, public)
        path = public.with_name(f"{name}-cert.pub")
        valid_before = asyncssh.read_certificate(path)._valid_before
        return Certificate(key, path, key_id, serial, valid_before)

    def krl(self, target: Path, *specs: str) -> None:
        """Write an OpenSSH KRL revoking `specs` (ssh-keygen -k) over `target`, atomically."""
        spec = self.root / "krl-spec"
        spec.write_text("".join(s + "\n" for s in specs))
        fresh = target.with_name(target.name + ".new")
        fresh.unlink(missing_ok=True)
        keygen("-q", "-k", "-f", fresh, "-s", self.ca.path.with_name("ca.pub"), spec)
        os.replace(fresh, target)


def keygen(*args: str | Path) -> None:
    result = subprocess.run(["ssh-keygen", *map(str, args)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def admin(pki) -> ClientKey:
    return ClientKey.generate(pki.root, "admin")


def _lines(pki: Pki, admin: ClientKey) -> list[str]:
    return [admin.line(), pki.ca.line(CA_OPTIONS)]


@pytest.fixture(scope="module")
def server(tmp_path_factory, pki, admin) -> Iterator[SshregServer]:
    workdir = tmp_path_factory.mktemp("certificates")
    revoked = workdir / "revoked_keys"
    revoked.write_text("")
    srv = SshregServer(workdir, metrics=True, config={
        "server": {"revoked_keys": str(revoked)},
        "limits": {"max_auth_failures_per_minute": 1000},
        **RIGHTS,
    })
    srv.authorize(*_lines(pki, admin))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def restored(server, pki, admin) -> Iterator[None]:
    """authorized_keys and revoked_keys as the module set them, after each test; and the
    server still running."""
    yield
    assert server.running, server.log()[-3000:]
    if server.authorized_keys.read_text() != "".join(f"{x}\n" for x in _lines(pki, admin)):
        server.authorize(*_lines(pki, admin))
    revoked = server.workdir / "revoked_keys"
    if revoked.read_bytes():
        revoked.write_text("")


# -- helpers -----------------------------------------------------------------------------


def _ssh(server: SshregServer, cert: Certificate | ClientKey, *command: str,
         options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    key = cert.key if isinstance(cert, Certificate) else cert
    return server.ssh(key, *command, options=options)


def _whoami(server: SshregServer, cert: Certificate, options: tuple[str, ...] = ()) -> dict:
    result = _ssh(server, cert, "whoami", "--json", options=options)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _logged(server: SshregServer, *texts: str, timeout: float = 10.0) -> str:
    """The first line of the server log holding every one of `texts` (waiting for it)."""
    def find() -> str | None:
        return next((line for line in server.log().splitlines()
                     if all(text in line for text in texts)), None)
    wait_for(find, timeout, f"a log line with {texts}")
    return find() or ""


def _refused(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 255, (result.returncode, result.stdout, result.stderr)
    assert "Permission denied (publickey)" in result.stderr, result.stderr


@contextlib.contextmanager
def _tunnel(server: SshregServer, cert: Certificate, *options: str,
            timeout: float = 20.0) -> Iterator[Tunnel]:
    """`ssh [options] -N -L PORT:localhost:80` with the certificate's key, ready once the
    registry answers through it."""
    port = free_port()
    proc = subprocess.Popen(
        server.ssh_command(cert.key, *options, "-N", "-L", f"127.0.0.1:{port}:localhost:80",
                           "user@127.0.0.1"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    tunnel = Tunnel(port, proc)
    try:
        wait_for(lambda: tunnel.ready() or proc.poll() is not None, timeout, "the tunnel")
        if proc.poll() is not None:
            raise RuntimeError(f"ssh exited {proc.returncode}: {proc.stderr.read().decode()}")
        yield tunnel
    finally:
        tunnel.close()


def _http(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _push_blob(tunnel: Tunnel, repository: str, data: bytes) -> tuple[int, bytes]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return _http(f"{tunnel.url}/v2/{repository}/blobs/uploads/?digest={digest}", "POST", data)


def _ended_at(tunnel: Tunnel, timeout: float, what: str) -> float:
    """When the tunnel's ssh process ended (waiting at most `timeout` seconds)."""
    wait_for(lambda: tunnel.proc.poll() is not None, timeout, what, interval=0.02)
    return time.time()


def _sshreg(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sshreg", *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


# -- tunnels and docker ------------------------------------------------------------------


def _docker_push(docker: Docker, tmp_path: Path, tunnel: Tunnel, repository: str) -> str:
    """A fresh one-layer image pushed with docker through `tunnel`; its manifest digest."""
    image = make_image(tmp_path / "layout", [150_000], seed=unique("cert"))
    local = f"local/{unique('cert')}:1"
    docker.load(write_docker_archive(image, tmp_path / "image.tar", [local]))
    ref = f"{tunnel.registry}/{repository}:1"
    docker.tag(local, ref)
    pushed = docker.push(ref)
    manifest = RegistryHTTP(tunnel.url).manifest(repository, "1")
    assert manifest.digest == pushed.digest
    assert json.loads(manifest.body)["config"]["digest"] == image.config.digest
    return pushed.digest


def _manifest_put(server: SshregServer, repository: str) -> dict:
    """The audit record of the manifest PUT of `repository:1`."""
    path = f"/v2/{repository}/manifests/1"

    def found() -> list[dict]:
        return [e for e in server.audit() if e.get("method") == "PUT" and e.get("path") == path]
    wait_for(found, 10, f"the audit record of PUT {path}")
    (record,) = found()
    return record


def test_docker_pushes_through_a_tunnel_opened_with_the_certificate_beside_the_key(
        server, pki, docker, tmp_path):
    cert = pki.certify("docker-beside")
    repository = unique("ml/beside")
    with server.tunnel(cert.key) as tunnel:  # plain `ssh -i KEY`: ssh finds KEY-cert.pub
        _docker_push(docker, tmp_path, tunnel, repository)
    _logged(server, f"key {cert.key.fingerprint} ({cert.key_id}) logged in",
            f"with certificate '{cert.key_id}' serial {cert.serial}")
    record = _manifest_put(server, repository)
    assert (record["key"], record["key_id"], record["serial"], record["status"]) == (
        cert.key.fingerprint, cert.key_id, cert.serial, 201)


def test_docker_pushes_through_a_tunnel_opened_with_certificatefile(
        server, pki, docker, tmp_path):
    cert = pki.certify("docker-named", beside=False)
    assert not cert.key.path.with_name("docker-named-cert.pub").exists()
    repository = unique("ml/named")
    with _tunnel(server, cert, "-o", f"CertificateFile={cert.path}") as tunnel:
        _docker_push(docker, tmp_path, tunnel, repository)
    record = _manifest_put(server, repository)
    assert (record["key"], record["key_id"], record["serial"]) == (
        cert.key.fingerprint, cert.key_id, cert.serial)
    # without the option, the same key is not listed anywhere and logs in nowhere
    _refused(_ssh(server, cert, "whoami"))
    _logged(server, f"refused unknown key {cert.key.fingerprint}")


# -- principals and rights ---------------------------------------------------------------


def test_each_principal_gets_its_tables_rights_and_several_get_the_union(server, pki, admin):
    ml = pki.certify("ml-member", principals="ml-team")
    ops = pki.certify("ops-member", principals="ops")
    both = pki.certify("both-member", principals="ml-team,ops")
    infra = pki.certify("infra-member", principals="infra")
    model, web = unique("ml/model"), unique("web/app")
    with server.tunnel(admin) as tunnel:
        assert _push_blob(tunnel, web, b"web layer")[0] == 201
    with server.tunnel(ml.key) as tunnel:
        assert _push_blob(tunnel, model, b"model layer")[0] == 201
        status, _ = _push_blob(tunnel, web, b"not yours")
        assert status == 403

    assert {k: _whoami(server, ml)[k] for k in ("pull", "push", "delete", "admin")} == {
        "pull": [], "push": ["ml/*"], "delete": [], "admin": False}
    assert {k: _whoami(server, ops)[k] for k in ("pull", "push", "delete", "admin")} == {
        "pull": ["**"], "push": [], "delete": [], "admin": True}
    union = _whoami(server, both)
    assert (union["pull"], union["push"], union["admin"]) == (["**"], ["ml/*"], True)
    assert union["certificate"]["principals"] == ["ml-team", "ops"]
    # a principal without a [principals] table gets the CA line's own rights
    assert {k: _whoami(server, infra)[k] for k in ("pull", "push", "admin")} == {
        "pull": ["base/*"], "push": [], "admin": False}

    ml_repos = _ssh(server, ml, "repos", "--json")
    ops_repos = _ssh(server, ops, "repos", "--json")
    assert model in json.loads(ml_repos.stdout) and web not in json.loads(ml_repos.stdout)
    assert {model, web} <= set(json.loads(ops_repos.stdout))

    with server.tunnel(ops.key) as tunnel:  # ops pulls everything and pushes nothing
        digest = "sha256:" + hashlib.sha256(b"model layer").hexdigest()
        assert _http(f"{tunnel.url}/v2/{model}/blobs/{digest}") == (200, b"model layer")
        status, body = _push_blob(tunnel, model, b"ops layer")
        assert status == 403 and json.loads(body)["errors"][0]["code"] == "DENIED"
    denied = [e for e in server.audit() if e.get("key") == ops.key.fingerprint
              and e.get("error")]
    assert denied and {(e["status"], e["error"], e["key_id"]) for e in denied} == {
        (403, "DENIED", ops.key_id)}


# -- certificates that do not log in ---------------------------------------------------


REFUSALS = {
    "principal-not-listed": ((), "someone-else",
                             "none of its principals (someone-else) is listed on the "
                             "cert-authority line"),
    "expired": (("-V", "-2d:-1d"), "ml-team", "expired"),
    "not-yet-valid": (("-V", "+1d:+2d"), "ml-team", "is not valid yet"),
    "source-address": (("-O", "source-address=10.9.0.0/16"), "ml-team",
                       "is not valid from 127.0.0.1 (source-address)"),
    "force-command": (("-O", "force-command=/bin/true"), "ml-team",
                      "has a force-command, which sshreg cannot honour"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_certificate_breaking_a_rule_does_not_log_in_and_the_reason_is_logged(
        server, pki, case):
    flags, principals, reason = REFUSALS[case]
    cert = pki.certify(f"refused-{case}", *flags, principals=principals)
    _refused(_ssh(server, cert, "whoami"))
    line = _logged(server, f"refused certificate of key {cert.key.fingerprint} from 127.0.0.1")
    assert f"certificate '{cert.key_id}'" in line and reason in line, line
    assert f"key {cert.key.fingerprint} (" not in server.log()  # never logged in


def test_a_certificate_signed_by_a_ca_no_line_lists_does_not_log_in(server, pki):
    cert = pki.certify("unlisted-ca", ca=pki.other_ca)
    _refused(_ssh(server, cert, "whoami"))
    line = _logged(server, f"refused certificate of key {cert.key.fingerprint}")
    assert "is signed by a CA no cert-authority line lists" in line, line


async def test_a_host_certificate_offered_as_a_user_certificate_does_not_log_in(server, pki):
    """OpenSSH's client will not offer a host certificate for a login ("not a user
    certificate"), so asyncssh's offers it."""
    cert = pki.certify("host-cert", "-h")
    with pytest.raises(asyncssh.PermissionDenied):
        conn = await asyncio.wait_for(asyncssh.connect(
            "127.0.0.1", server.port, username="user", known_hosts=None, agent_path=None,
            client_keys=[(str(cert.key.path), str(cert.path))]), 15)
        conn.close()
    line = _logged(server, f"refused certificate of key {cert.key.fingerprint}")
    assert "a host certificate is not a user certificate" in line, line


def test_a_ca_key_offered_as_a_plain_key_does_not_log_in(server, pki):
    _refused(_ssh(server, pki.ca, "whoami"))
    _logged(server, f"refused unknown key {pki.ca.fingerprint} from 127.0.0.1")
    assert f"key {pki.ca.fingerprint} (" not in server.log()


def _forward_attempt(server: SshregServer, cert: Certificate) -> tuple[bool, str]:
    """`ssh -N -L` without ExitOnForwardFailure, one request through the local port:
    (whether the registry answered, what ssh printed)."""
    local = free_port()
    proc = subprocess.Popen(
        server.ssh_command(cert.key, "-N", "-o", "ExitOnForwardFailure=no",
                           "-L", f"127.0.0.1:{local}:localhost:80", "user@127.0.0.1",
                           log_level="INFO"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def listening() -> bool:
            with socket.socket() as sock:
                sock.settimeout(1)
                return sock.connect_ex(("127.0.0.1", local)) == 0
        wait_for(listening, 20, "the local forward to listen")
        answered = Tunnel(local, proc).ready()
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # OpenSSH 9.2 sometimes ignores SIGTERM here
            proc.kill()
            _, stderr = proc.communicate(timeout=5)
    return answered, stderr.decode()


def test_a_certificate_without_permit_port_forwarding_runs_commands_but_opens_no_tunnel(
        server, pki):
    cert = pki.certify("no-forwarding", "-O", "no-port-forwarding")
    assert _whoami(server, cert)["certificate"]["key_id"] == cert.key_id
    answered, stderr = _forward_attempt(server, cert)
    assert not answered and "administratively prohibited" in stderr, stderr
    _logged(server, "refused forwarding to localhost:80 (key may not forward)",
            f"for key {cert.key.fingerprint}")


# -- revocation ------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["serial", "key-id", "key"])
def test_a_certificate_revoked_in_the_krl_does_not_log_in_from_the_next_login(
        server, pki, by):
    cert = pki.certify(f"revoked-by-{by}")
    bystander = pki.certify(f"bystander-{by}")
    assert _whoami(server, cert)["certificate"]["serial"] == cert.serial
    spec, reason = {
        "serial": (f"serial: {cert.serial}", f"serial {cert.serial} is revoked"),
        "key-id": (f"id: {cert.key_id}", f"key ID '{cert.key_id}' is revoked"),
        "key": (f"key: {cert.key.public}", "its key is revoked"),
    }[by]
    pki.krl(server.workdir / "revoked_keys", spec)
    _refused(_ssh(server, cert, "whoami"))  # at once: no wait for the periodic re-read
    line = _logged(server, f"refused certificate of key {cert.key.fingerprint}", "revoked")
    assert reason in line, line
    assert _whoami(server, bystander)["certificate"]["serial"] == bystander.serial


def test_a_plain_key_listed_in_revoked_keys_does_not_log_in_from_the_next_login(
        server, pki, admin):
    plain = ClientKey.generate(pki.root, "plain-revoked")
    server.authorize(*_lines(pki, admin), plain.line())
    assert _ssh(server, plain, "whoami").returncode == 0
    revoked = server.workdir / "revoked_keys"
    listed = revoked.with_name("listed")
    listed.write_text(f"# public keys, one per line\n{plain.public}\n")
    os.replace(listed, revoked)
    _refused(_ssh(server, plain, "whoami"))
    _logged(server, f"refused key {plain.fingerprint} (plain-revoked@test) from 127.0.0.1",
            "revoked (revoked_keys)")
    assert _ssh(server, admin, "whoami").returncode == 0


def test_an_unreadable_revocation_file_keeps_the_revocations_read_before(server, pki):
    cert = pki.certify("revoked-then-garbled")
    revoked = server.workdir / "revoked_keys"
    pki.krl(revoked, f"serial: {cert.serial}")
    _refused(_ssh(server, cert, "whoami"))
    garbled = revoked.with_name("garbled")
    garbled.write_text("this is neither a KRL nor a public key\n")
    os.replace(garbled, revoked)
    _logged(server, f"cannot read {revoked}, the revocations read before stay in force")
    _refused(_ssh(server, cert, "whoami"))
    assert server.log().count(f"refused certificate of key {cert.key.fingerprint}") == 2


# -- open tunnels that lose their right ------------------------------------------------


def test_a_certificate_that_expires_during_a_tunnel_is_disconnected_within_5s(server, pki):
    cert = pki.certify("expiring", "-V", "-1m:+12s")
    with _tunnel(server, cert) as tunnel:
        assert _http(tunnel.url + "/v2/")[0] == 200
        wait_for(lambda: time.time() >= cert.valid_before - 1, 20, "a second before expiry")
        assert tunnel.proc.poll() is None, "disconnected before its valid-before"
        ended = _ended_at(tunnel, cert.valid_before - time.time() + DISCONNECT_WITHIN + 5,
                          "the expired certificate's ssh to end")
    assert ended - cert.valid_before <= DISCONNECT_WITHIN, ended - cert.valid_before
    _logged(server, f"(key {cert.key.fingerprint}): its certificate expired")
    _refused(_ssh(server, cert, "whoami"))
    assert "expired" in _logged(server, f"refused certificate of key {cert.key.fingerprint}")


def test_a_krl_written_during_a_tunnel_disconnects_it_within_5s(server, pki):
    cert = pki.certify("revoked-live")
    bystander = pki.certify("revoked-live-bystander")
    with _tunnel(server, cert) as tunnel, _tunnel(server, bystander) as other:
        assert _http(tunnel.url + "/v2/")[0] == 200
        pki.krl(server.workdir / "revoked_keys", f"serial: {cert.serial}")
        written = time.time()
        ended = _ended_at(tunnel, DISCONNECT_WITHIN + 5, "the revoked certificate's ssh to end")
        assert ended - written <= DISCONNECT_WITHIN, ended - written
        assert other.proc.poll() is None and other.ready()  # only the revoked one goes
    _logged(server, f"(key {cert.key.fingerprint}):", f"serial {cert.serial} is revoked")


def test_removing_the_ca_line_disconnects_its_certificates_within_5s(server, pki, admin):
    cert = pki.certify("ca-removed")
    with _tunnel(server, cert) as tunnel, server.tunnel(admin) as plain:
        assert _http(tunnel.url + "/v2/")[0] == 200
        server.authorize(admin.line())
        removed = time.time()
        ended = _ended_at(tunnel, DISCONNECT_WITHIN + 5, "the certificate's ssh to end")
        assert ended - removed <= DISCONNECT_WITHIN, ended - removed
        assert plain.proc.poll() is None and plain.ready()  # the plain key keeps its tunnel
    _logged(server, f"(key {cert.key.fingerprint}): key no longer authorized")
    _refused(_ssh(server, cert, "whoami"))
    assert "signed by a CA no cert-authority line lists" in _logged(
        server, f"refused certificate of key {cert.key.fingerprint}")


# -- who it was ------------------------------------------------------------------------


def test_whoami_the_login_line_and_the_audit_name_the_certificate(server, pki):
    cert = pki.certify("audited", principals="ml-team,infra")
    me = _whoami(server, cert)
    assert me["fingerprint"] == cert.key.fingerprint and me["comment"] == cert.key_id
    assert me["certificate"] == {"key_id": cert.key_id, "serial": cert.serial,
                                 "ca": pki.ca.fingerprint, "principals": ["ml-team", "infra"]}
    _logged(server, f"key {cert.key.fingerprint} ({cert.key_id}) logged in from 127.0.0.1",
            f"with certificate '{cert.key_id}' serial {cert.serial} of CA "
            f"{pki.ca.fingerprint} for ml-team,infra")
    repository = unique("ml/audited")
    with _tunnel(server, cert) as tunnel:
        assert _push_blob(tunnel, repository, os.urandom(2000))[0] == 201
    wait_for(lambda: any(e.get("repository") == repository for e in server.audit()), 10,
             "the audit record of the push")
    (record,) = [e for e in server.audit() if e.get("repository") == repository]
    assert (record["key"], record["key_id"], record["serial"], record["ca"],
            record["status"]) == (cert.key.fingerprint, cert.key_id, cert.serial,
                                  pki.ca.fingerprint, 201)


def test_certificate_logins_with_the_certificate_beside_the_key_never_block_their_address(
        tmp_path, pki):
    """OpenSSH offers the key before the certificate beside it (the layout the README
    recommends): the plain key is not listed, the certificate then logs in. That must not
    count as a failed login, or a team behind one address is locked out after as many
    logins as the per-address limit of failed logins allows."""
    limit = 4
    srv = SshregServer(tmp_path / "tight", config={
        "limits": {"max_auth_failures_per_minute": limit}})
    srv.authorize(pki.ca.line('cert-authority,principals="ml-team"'))
    srv.start()
    try:
        cert = pki.certify("frequent")
        for login in range(limit + 2):
            result = _ssh(srv, cert, "whoami", "--json")
            assert result.returncode == 0, (login, result.stderr)
            assert json.loads(result.stdout)["certificate"]["serial"] == cert.serial
        assert "too many failed logins" not in srv.log()
    finally:
        srv.stop()


# -- where CA lines come from ---------------------------------------------------------


def test_keys_add_ca_writes_a_line_a_certificate_logs_in_with_and_keys_list_shows_it(
        server, pki, admin):
    team_ca = ClientKey.generate(pki.root, "team-ca")
    added = _sshreg("keys", "add", "--ca", team_ca.path.with_name("team-ca.pub"),
                    "--principals", "ml-team", "--repos", "ml/*", "--keys", server.keys_dir,
                    cwd=server.workdir)
    assert added.returncode == 0, added.stderr
    assert f"added CA for principals ml-team {team_ca.fingerprint}" in added.stdout
    listed = _sshreg("keys", "list", "--keys", server.keys_dir, cwd=server.workdir)
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in listed.stdout.splitlines() if team_ca.fingerprint in r]
    assert "CA for principals ml-team" in row
    as_json = json.loads(_sshreg("keys", "list", "--json", "--keys", server.keys_dir,
                                 cwd=server.workdir).stdout)
    (entry,) = [k for k in as_json["keys"] if k["fingerprint"] == team_ca.fingerprint]
    assert (entry["cert_authority"], entry["principals"]) == (True, ["ml-team"])
    assert entry["rights"]["push"] == ["ml/*"]

    cert = pki.certify("team-member", ca=team_ca)
    me = _whoami(server, cert)
    assert me["certificate"]["ca"] == team_ca.fingerprint
    assert me["push"] == ["ml/*"]  # [principals.ml-team]
    _refused(_ssh(server, pki.certify("team-outsider", ca=team_ca, principals="ops"),
                  "whoami"))  # the new line accepts ml-team only


def test_a_ca_line_in_a_bucket_hosted_authorized_keys_lets_a_certificate_in(
        tmp_path, s3_server, pki):
    store = S3Store.fresh(s3_server, "certificates")
    store.client().put_object(Bucket=store.bucket, Key=f"{store.prefix}/authorized_keys",
                              Body=(pki.ca.line('cert-authority,principals="ml-team"') + "\n"
                                    ).encode())
    srv = SshregServer(tmp_path / "bucket-keys", store.url, env=store.env, config={
        "server": {"authorized_keys": f"{store.url}/authorized_keys",
                   "authorized_keys_poll": "1s"}})
    srv.start()
    try:
        cert = pki.certify("bucket-member")
        assert _whoami(srv, cert)["certificate"] == {
            "key_id": cert.key_id, "serial": cert.serial, "ca": pki.ca.fingerprint,
            "principals": ["ml-team"]}
        with _tunnel(srv, cert) as tunnel:
            assert _push_blob(tunnel, unique("ml/bucket"), b"through a bucket's CA")[0] == 201
        _refused(_ssh(srv, pki.certify("bucket-outsider", principals="ops"), "whoami"))
    finally:
        srv.stop()


def test_check_config_and_serve_refuse_an_unreadable_revoked_keys_file(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    garbage = tmp_path / "garbage"
    garbage.write_text("not a KRL and not a public key\n")
    for path, why in ((tmp_path / "missing", "No such file"),
                      (garbage, "neither a KRL nor a public key")):
        config = tmp_path / f"{path.name}.toml"
        config.write_text(f'[server]\nrevoked_keys = "{path}"\n')
        checked = _sshreg("check-config", "--config", config, "--keys", keys,
                          "--storage", tmp_path / "data", cwd=tmp_path)
        assert checked.returncode != 0, checked.stdout
        assert f"server.revoked_keys {path}" in checked.stderr and why in checked.stderr, (
            checked.stderr)
    served = SshregServer(tmp_path / "serve", extra_args=("--config", str(config)))
    with pytest.raises(RuntimeError, match=r"server\.revoked_keys: .*neither a KRL nor"):
        served.start()
    assert not served.running
