"""The SSH gateway end to end: a real `sshreg serve` process, real OpenSSH client, real tunnels."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.sshreg_server import ClientKey, SshregServer, free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, ClientKey]:
    directory = tmp_path_factory.mktemp("client-keys")
    names = ["alice", "reader", "team", "noforward", "restricted", "expired", "elsewhere",
             "permitted", "stranger", "newcomer", "restrictopen", "restrictforward"]
    return {name: ClientKey.generate(directory, name) for name in names}


def _authorized_lines(keys: dict[str, ClientKey]) -> list[str]:
    return [
        keys["alice"].line(),
        keys["reader"].line('sshreg-pull="**"'),
        keys["team"].line('sshreg-pull="team/*",sshreg-push="team/*",sshreg-delete="team/*"'),
        keys["noforward"].line("no-port-forwarding"),
        keys["restricted"].line("restrict"),
        keys["expired"].line('expiry-time="20200101"'),
        keys["elsewhere"].line('from="10.9.8.7"'),
        keys["permitted"].line('permitopen="localhost:80"'),
        keys["restrictopen"].line('restrict,permitopen="localhost:80"'),
        keys["restrictforward"].line('restrict,port-forwarding,permitopen="localhost:80"'),
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys) -> SshregServer:
    srv = SshregServer(tmp_path_factory.mktemp("gateway"))
    srv.authorize(*_authorized_lines(keys))
    srv.start()
    yield srv
    srv.stop()


def _request(url: str, method: str = "GET", data: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _push_blob(url: str, name: str, data: bytes) -> tuple[int, bytes]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, _, body = _request(f"{url}/v2/{name}/blobs/uploads/?digest={digest}", "POST", data)
    return status, body


def test_tunnel_serves_the_registry_and_audits_writes_with_the_key(server, keys):
    with server.tunnel(keys["alice"]) as tunnel:
        status, headers, body = _request(tunnel.url + "/v2/")
        assert (status, json.loads(body)) == (200, {})
        assert headers["Docker-Distribution-API-Version"] == "registry/2.0"
        data = os.urandom(300_000)
        status, _ = _push_blob(tunnel.url, "alice/app", data)
        assert status == 201
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, _, body = _request(f"{tunnel.url}/v2/alice/app/blobs/{digest}")
        assert status == 200 and body == data
    server.wait_for_log('"method": "POST"')
    audit = [json.loads(line.split("sshreg.audit: ", 1)[1]) for line in server.log().splitlines()
             if "sshreg.audit: " in line]
    push = next(e for e in audit if e["repository"] == "alice/app")
    assert push["key"] == keys["alice"].fingerprint
    assert push["comment"] == "alice@test"
    assert push["bytes"] == 300_000 and push["status"] == 201


def test_read_only_key_pulls_but_its_push_is_denied(server, keys):
    with server.tunnel(keys["alice"]) as tunnel:
        assert _push_blob(tunnel.url, "shared/base", b"base layer")[0] == 201
    digest = "sha256:" + hashlib.sha256(b"base layer").hexdigest()
    with server.tunnel(keys["reader"]) as tunnel:
        status, _, body = _request(f"{tunnel.url}/v2/shared/base/blobs/{digest}")
        assert (status, body) == (200, b"base layer")
        status, body = _push_blob(tunnel.url, "shared/base", b"another layer")
        assert status == 403
        assert json.loads(body)["errors"][0]["code"] == "DENIED"
    server.wait_for_log(f"refused POST /v2/shared/base/blobs/uploads/ for key {keys['reader'].fingerprint}")


def test_team_key_cannot_read_other_repositories_by_tag_digest_mount_or_catalog(server, keys):
    secret = b"other team's secret layer"
    digest = "sha256:" + hashlib.sha256(secret).hexdigest()
    with server.tunnel(keys["alice"]) as tunnel:
        assert _push_blob(tunnel.url, "other/app", secret)[0] == 201
    with server.tunnel(keys["team"]) as tunnel:
        assert _push_blob(tunnel.url, "team/app", b"team layer")[0] == 201
        status, _, _ = _request(f"{tunnel.url}/v2/other/app/blobs/{digest}")
        assert status == 403
        status, _, _ = _request(f"{tunnel.url}/v2/other/app/tags/list")
        assert status == 403
        # Knowing the digest is not enough: neither mount form links the blob into team/.
        status, headers, _ = _request(
            f"{tunnel.url}/v2/team/app/blobs/uploads/?mount={digest}&from=other/app", "POST")
        assert status == 202 and "/blobs/uploads/" in headers["Location"]
        status, _, _ = _request(f"{tunnel.url}/v2/team/app/blobs/uploads/?mount={digest}", "POST")
        assert status == 202
        status, _, _ = _request(f"{tunnel.url}/v2/team/app/blobs/{digest}")
        assert status == 404
        status, _, body = _request(f"{tunnel.url}/v2/_catalog")
        assert status == 200
        repositories = json.loads(body)["repositories"]
        assert "team/app" in repositories and not any(r.startswith("other/") for r in repositories)


def test_unknown_key_is_refused_and_logged_with_its_fingerprint(server, keys):
    result = server.ssh(keys["stranger"], "help")
    assert result.returncode == 255
    assert "Permission denied" in result.stderr
    server.wait_for_log(f"refused unknown key {keys['stranger'].fingerprint}")


def test_password_and_keyboard_interactive_logins_are_refused(server, keys):
    for method in ("password", "keyboard-interactive"):
        result = server.ssh(keys["alice"], "help", options=(
            "-o", f"PreferredAuthentications={method}", "-o", "PubkeyAuthentication=no"))
        assert result.returncode == 255
        assert "Permission denied (publickey)" in result.stderr


def test_expired_key_and_key_from_a_disallowed_address_are_refused(server, keys):
    for name, reason in (("expired", "expired"), ("elsewhere", "not allowed from 127.0.0.1")):
        result = server.ssh(keys[name], "help")
        assert result.returncode == 255, name
        server.wait_for_log(f"refused key {keys[name].fingerprint} ({name}@test) from 127.0.0.1")
        assert reason in server.log()


def _forward_attempt(server: SshregServer, key: ClientKey, target: str) -> tuple[int | None, str]:
    """Open `-L` to `target`, make one HTTP request through it: (status or None, ssh stderr)."""
    local = free_port()
    proc = subprocess.Popen(
        server.ssh_command(key, "-N", "-o", "ExitOnForwardFailure=no",
                           "-L", f"127.0.0.1:{local}:{target}", "user@127.0.0.1",
                           log_level="INFO"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _connects(local), 20, "the local forward to listen")
        status = _http_status_through(local)
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # OpenSSH 9.2 sometimes ignores SIGTERM here
            proc.kill()
            _, stderr = proc.communicate(timeout=5)
    return status, stderr.decode()


def test_forwarding_to_anything_but_the_registry_is_administratively_prohibited(server, keys):
    targets = [f"127.0.0.1:{server.port}", "localhost:22", "10.0.0.1:80", "example.com:80",
               "localhost:8080"]
    for target in targets:
        status, stderr = _forward_attempt(server, keys["alice"], target)
        assert status is None, f"{target} answered through the tunnel"
        assert "administratively prohibited" in stderr, target
        server.wait_for_log(f"refused forwarding to {target} for key {keys['alice'].fingerprint}")
    # The refusals did not disturb anyone: the registry still answers.
    with server.tunnel(keys["alice"]) as tunnel:
        assert _request(tunnel.url + "/v2/")[0] == 200


def _connects(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_status_through(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, urllib.error.URLError):
        return None


def test_remote_forwarding_is_refused(server, keys):
    result = server.ssh(keys["alice"], options=("-N", "-R", f"127.0.0.1:{free_port()}:127.0.0.1:22"))
    assert result.returncode == 255
    assert "remote port forwarding failed" in result.stderr.lower()
    server.wait_for_log("refused remote forwarding of 127.0.0.1:")


def test_keys_without_port_forwarding_cannot_open_a_tunnel(server, keys):
    for name in ("noforward", "restricted"):
        status, stderr = _forward_attempt(server, keys[name], "localhost:80")
        assert status is None and "administratively prohibited" in stderr
        server.wait_for_log(f"refused forwarding to localhost:80 (key may not forward) "
                            f"for key {keys[name].fingerprint}")
        help_text = server.ssh(keys[name]).stdout
        assert "may not open tunnels" in help_text


def test_permitopen_naming_the_registry_allows_the_tunnel(server, keys):
    with server.tunnel(keys["permitted"]) as tunnel:
        assert _request(tunnel.url + "/v2/")[0] == 200


def test_restrict_with_permitopen_opens_no_tunnel_unless_port_forwarding_follows(server, keys):
    """As in sshd: `permitopen` narrows forwarding, only `port-forwarding` turns it back on."""
    status, stderr = _forward_attempt(server, keys["restrictopen"], "localhost:80")
    assert status is None and "administratively prohibited" in stderr
    server.wait_for_log(f"refused forwarding to localhost:80 (key may not forward) "
                        f"for key {keys['restrictopen'].fingerprint}")
    with server.tunnel(keys["restrictforward"]) as tunnel:
        assert _request(tunnel.url + "/v2/")[0] == 200
    status, stderr = _forward_attempt(server, keys["restrictforward"], "127.0.0.1:80")
    assert status is None and "administratively prohibited" in stderr  # not in permitopen


def test_plain_ssh_prints_who_you_are_and_how_to_push(server, keys):
    result = server.ssh(keys["team"])
    assert result.returncode == 0
    out = result.stdout
    assert keys["team"].fingerprint in out and "team@test" in out
    assert "pull team/*" in out and "push team/*" in out
    assert f"ssh -N -L 5000:localhost:80 -p {server.port}" in out
    assert "docker push localhost:5000/" in out


def test_arbitrary_commands_and_sftp_are_refused(server, keys):
    result = server.ssh(keys["alice"], "cat /etc/passwd")
    assert result.returncode != 0
    assert "root:" not in result.stdout
    server.wait_for_log("refused command 'cat /etc/passwd'")
    sftp = subprocess.run(
        ["sftp", "-b", "-", "-P", str(server.port), "-i", str(keys["alice"].path),
         "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "user@127.0.0.1"],
        input="ls /\n", capture_output=True, text=True, timeout=30)
    assert sftp.returncode != 0
    server.wait_for_log("refused subsystem 'sftp'")


def test_editing_authorized_keys_takes_effect_on_the_next_connection(server, keys):
    assert server.ssh(keys["newcomer"], "help").returncode == 255
    server.authorize(*_authorized_lines(keys), keys["newcomer"].line())
    assert server.ssh(keys["newcomer"], "help").returncode == 0
    server.authorize(*_authorized_lines(keys))
    assert server.ssh(keys["newcomer"], "help").returncode == 255


def test_host_key_is_created_private_and_kept_across_restarts(tmp_path, keys):
    srv = SshregServer(tmp_path)
    srv.authorize(keys["alice"].line())
    srv.start()
    host_key = srv.keys_dir / "ssh_host_ed25519_key"
    first = host_key.read_bytes()
    assert oct(host_key.stat().st_mode & 0o777) == "0o600"
    srv.stop()
    srv.start()
    try:
        assert host_key.read_bytes() == first
        fingerprint = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(host_key)],
                                     capture_output=True, text=True, check=True).stdout.split()[1]
        assert f"host key {fingerprint}" in srv.log()
    finally:
        srv.stop()


def test_configuration_errors_exit_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[storage]\npart_size = "1MiB"\n')
    for args in (["--config", str(bad)], ["--listen", "nonsense"],
                 ["--config", str(tmp_path / "missing.toml")]):
        result = subprocess.run(["python", "-m", "sshreg", "serve", *args], capture_output=True,
                                text=True, timeout=30, cwd=Path(tmp_path))
        assert result.returncode == 2, args
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_default_openssh_client_settles_on_aes_gcm(server, keys):
    from sshreg.ssh.ciphers import cpu_has_aes, default_ciphers

    assert default_ciphers(has_aes=False)[0] == "chacha20-poly1305@openssh.com"
    assert default_ciphers(has_aes=True) == ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
    result = subprocess.run(server.ssh_command(keys["alice"], "-F", "/dev/null", "user@127.0.0.1",
                                               "help", log_level="DEBUG"),
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    expected = "aes128-gcm@openssh.com" if cpu_has_aes() else "chacha20-poly1305@openssh.com"
    assert f"kex: client->server cipher: {expected}" in result.stderr
