"""Client faults: clients that vanish, stall, crowd in or trickle, against a real server.

A real `sshreg serve` (filesystem storage) with small timeouts (`[registry]
body_idle_timeout = 2s`, `upload_idle_timeout = 3s`, `header_timeout = 3s`) and real ssh
tunnels. Each test measures the server's open file descriptors (/proc/PID/fd) and resident
memory before, and checks both return to (near) that baseline afterwards, with the gauges of
open SSH connections, channels and upload sessions back where they were.

- disconnects mid-upload (each upload style; the socket reset, or the whole ssh client
  killed), mid-pull and mid-manifest-PUT: nothing partial becomes visible, the same push
  succeeds afterwards, sessions and temporary files are freed (at once, or by the idle sweep
  for a PATCH/PUT session a client may still resume);
- a stalled upload (no byte for `body_idle_timeout`) is answered 408 and cut off, and its
  session and temporary file freed at once; a slow upload that still sends is not;
- 200 concurrent tunnels: 200 OpenSSH client processes, each its own SSH connection (10 keys,
  20 each), each running HEAD/GET loops for a bounded time;
- slowloris: clients sending their request headers one byte at a time are cut off after
  `header_timeout`, while other users are served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psutil
import pytest
from aiohttp.test_utils import RawTestServer, TestClient

from tests.support.hashing import sha256
from tests.support.rawhttp import Connection, HTTPError, request
from tests.support.rawpush import get_manifest, pieces, push_blob
from tests.support.sshreg_server import ClientKey, SshregServer, free_port, wait_for

pytestmark = pytest.mark.integration

MiB = 1 << 20
BODY_IDLE = 2.0
UPLOAD_IDLE = 3.0
HEADER_TIMEOUT = 3.0
SWEEP = max(1.0, UPLOAD_IDLE / 4)  # how often the server looks for idle sessions
TUNNELS = 200
KEYS = 10
LOOP_SECONDS = 3.0
FD_SLACK = 3
RSS_SLACK = 16 * MiB
CROWD_HIGH_WATER = 48 * MiB  # what 200 concurrent connections leave in the allocator: ~28 MiB
WAVE = 8  # tunnels logging in at once: the server refuses more than 10 per address
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> list[ClientKey]:
    directory = tmp_path_factory.mktemp("client-fault-keys")
    return [ClientKey.generate(directory, f"user{i}") for i in range(KEYS)]


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys) -> Iterator[SshregServer]:
    srv = SshregServer(tmp_path_factory.mktemp("client-faults"), metrics=True, config={
        "registry": {"body_idle_timeout": f"{BODY_IDLE}s", "upload_idle_timeout":
                     f"{UPLOAD_IDLE}s", "header_timeout": f"{HEADER_TIMEOUT}s"},
    })
    srv.authorize(*(key.line() for key in keys))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def content(server, keys) -> dict[str, bytes]:
    """A small image for the loops and a 16 MiB blob for pulls, pushed once."""
    layer, big = os.urandom(64 << 10), os.urandom(16 * MiB)
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    manifest = _manifest(config, layer)
    with server.tunnel(keys[0]) as tunnel, Connection(tunnel.port) as conn:
        for blob in (layer, big, config):
            assert push_blob(conn, "load/app", blob, "post_digest").status == 201
        put = conn.request("PUT", "/v2/load/app/manifests/v1", manifest,
                           headers={"Content-Type": OCI_MANIFEST})
        assert put.status == 201
    return {"layer": layer, "big": big, "config": config, "manifest": manifest}


def _manifest(config: bytes, *layers: bytes) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(layer), "size": len(layer)} for layer in layers],
    }).encode()


# -- resources ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    fds: int
    rss: int

    @classmethod
    def of(cls, server: SshregServer) -> Usage:
        process = psutil.Process(server.pid)
        return cls(len(os.listdir(f"/proc/{server.pid}/fd")), process.memory_info().rss)


def _gauges(server: SshregServer) -> tuple[float, float, float]:
    return (server.metric("sshreg_ssh_connections"), server.metric("sshreg_ssh_channels"),
            server.metric("sshreg_uploads_active"))


def _settled(server: SshregServer, before: Usage, rss_slack: int = RSS_SLACK) -> Usage:
    """Wait until connections, channels and sessions are gone and the descriptors back to
    `before`; check memory and temporary files; return the usage then."""
    wait_for(lambda: _gauges(server) == (0, 0, 0), UPLOAD_IDLE + 4 * SWEEP + 10,
             "connections, channels and sessions to be gone")
    wait_for(lambda: Usage.of(server).fds <= before.fds + FD_SLACK, 10,
             f"file descriptors back to {before.fds}")
    # The server hands freed heap back once it has been idle for half a second.
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: Usage.of(server).rss <= before.rss + rss_slack, 5, "memory")
    after = Usage.of(server)
    assert after.rss <= before.rss + rss_slack, (
        f"memory grew from {before.rss / MiB:.0f} to {after.rss / MiB:.0f} MiB")
    assert not server.temporary_files(), "temporary files left behind"
    assert server.proc is not None and server.proc.poll() is None
    return after


@pytest.fixture
def idle(server, content) -> Usage:
    """The server's usage with no client connected."""
    wait_for(lambda: _gauges(server) == (0, 0, 0), 30, "an idle server")
    return Usage.of(server)


@pytest.fixture
def baseline(server, idle) -> Iterator[Usage]:
    """The server's usage with no client connected; checked again after the test."""
    yield idle
    _settled(server, idle)


def _started_session(port: int, name: str) -> str:
    post = request(port, "POST", f"/v2/{name}/blobs/uploads/")
    assert post.status == 202
    location = post.header("location")
    assert location
    return location


def _upload_head(port: int, style: str, name: str, data: bytes) -> tuple[str, str,
                                                                          dict[str, str]]:
    """Method, target and headers that start uploading `data` in `style` (a session is
    opened first where the style needs one)."""
    digest = sha256(data)
    length = {"Content-Length": str(len(data))}
    if style == "post_digest":
        return "POST", f"/v2/{name}/blobs/uploads/?digest={digest}", length
    location = _started_session(port, name)
    if style == "put_monolithic":
        return "PUT", f"{location}?digest={digest}", length
    return "PATCH", location, {**length, "Content-Range": f"0-{len(data) - 1}"}


STYLES = ("patch_chunked", "put_monolithic", "post_digest")


# -- disconnects -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("style", "how"), [(style, "socket-reset") for style in STYLES]
                         + [("patch_chunked", "ssh-killed")])
def test_a_client_gone_mid_upload_leaves_nothing_and_the_push_succeeds_again(
        server, keys, baseline, style, how):
    name = f"gone/{style}"
    data = os.urandom(12 * MiB)
    with server.tunnel(keys[1]) as tunnel:
        method, target, headers = _upload_head(tunnel.port, style, name, data)
        conn = Connection(tunnel.port)
        conn.send_partial(method, target, data[:7 * MiB], headers)
        time.sleep(0.5)  # the server is receiving
        if how == "ssh-killed":
            tunnel.kill()
        conn.reset()
    with server.tunnel(keys[1]) as tunnel, Connection(tunnel.port) as conn:
        assert conn.request("HEAD", f"/v2/{name}/blobs/{sha256(data)}").status == 404
        assert push_blob(conn, name, data, style).status == 201
        blob = conn.request("GET", f"/v2/{name}/blobs/{sha256(data)}")
        assert blob.status == 200 and blob.body == data


@pytest.mark.parametrize("how", ["socket-reset", "ssh-killed"])
def test_a_client_gone_mid_pull_frees_its_channel(server, keys, content, baseline, how):
    big = sha256(content["big"])
    with server.tunnel(keys[2]) as tunnel:
        conn = Connection(tunnel.port)
        conn.send_head("GET", f"/v2/load/app/blobs/{big}")
        conn.wait_received(MiB)
        if how == "ssh-killed":
            tunnel.kill()
        conn.reset()
    with server.tunnel(keys[2]) as tunnel, Connection(tunnel.port) as conn:
        blob = conn.request("GET", f"/v2/load/app/blobs/{big}")
        assert blob.status == 200 and blob.body == content["big"]


def test_a_client_gone_mid_manifest_put_leaves_no_tag(server, keys, content, baseline):
    manifest = _manifest(content["config"], content["layer"], content["big"])
    with server.tunnel(keys[3]) as tunnel:
        conn = Connection(tunnel.port)
        conn.send_partial("PUT", "/v2/load/app/manifests/half", manifest[:len(manifest) // 2],
                          {"Content-Type": OCI_MANIFEST, "Content-Length": str(len(manifest))})
        time.sleep(0.3)
        conn.reset()
        with Connection(tunnel.port) as check:
            assert get_manifest(check, "load/app", "half").status == 404
            assert get_manifest(check, "load/app", sha256(manifest)).status == 404
            assert "half" not in (check.request("GET", "/v2/load/app/tags/list").json()["tags"])
            put = check.request("PUT", "/v2/load/app/manifests/half", manifest,
                                headers={"Content-Type": OCI_MANIFEST})
            assert put.status == 201
            assert get_manifest(check, "load/app", "half").body == manifest


# -- stalls --------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_a_stalled_upload_is_cut_off_and_its_session_freed(server, keys, baseline, style):
    name = f"stalled/{style}"
    data = os.urandom(6 * MiB)
    with server.tunnel(keys[4]) as tunnel, Connection(tunnel.port, timeout=30) as conn:
        method, target, headers = _upload_head(tunnel.port, style, name, data)
        conn.send_partial(method, target, data[:5 * MiB], headers)
        started = time.monotonic()
        answer = conn.read_response()  # and then nothing more is sent
        waited = time.monotonic() - started
        assert answer.status == 408 and answer.error_code == "BLOB_UPLOAD_INVALID", answer
        assert BODY_IDLE - 0.5 < waited < BODY_IDLE + 3, f"cut off after {waited:.1f}s"
        assert conn.closed_by_peer(5), "the stalled connection stays open"
        # Freed at once, not after upload_idle_timeout: no session, no temporary file.
        assert server.metric("sshreg_uploads_active") == 0
        assert not server.temporary_files()
        if style != "post_digest":
            assert request(tunnel.port, "GET", target.split("?")[0]).status == 404
        assert request(tunnel.port, "HEAD", f"/v2/{name}/blobs/{sha256(data)}").status == 404


def test_a_slow_upload_that_keeps_sending_outlives_the_idle_timeouts(server, keys, baseline):
    """A POST ?digest= sending bytes every 0.5 s for longer than upload_idle_timeout plus a
    sweep is never cut off. (A PATCH or PUT holds its session's lock, which the idle sweep
    respects; a POST ?digest= did not, and the sweep aborted it mid-body: a 500.)"""
    name = "slow/post"
    data = os.urandom(2 * MiB)
    duration = UPLOAD_IDLE + 3 * SWEEP

    def trickle() -> Iterator[bytes]:
        for chunk in pieces(data, len(data) // int(duration / 0.5) + 1):
            time.sleep(0.5)
            yield chunk

    with server.tunnel(keys[5]) as tunnel, Connection(tunnel.port, timeout=30) as conn:
        digest = sha256(data)
        answer = conn.request("POST", f"/v2/{name}/blobs/uploads/?digest={digest}", trickle(),
                              headers={"Content-Length": str(len(data))})
        assert answer.status == 201, answer
        blob = conn.request("GET", f"/v2/{name}/blobs/{digest}")
        assert blob.status == 200 and blob.body == data


# -- crowds ---------------------------------------------------------------------------------------


@dataclass
class Tunnel:
    port: int
    proc: subprocess.Popen[bytes]


def _open_tunnels(server: SshregServer, keys: list[ClientKey], count: int) -> list[Tunnel]:
    """`count` ssh -N -L processes, round-robin over `keys`, started WAVE at a time (as many
    as the server lets one address have logging in); one that died (its local port taken
    meanwhile, or refused) is started again."""
    tunnels: list[Tunnel] = []

    def launch(i: int) -> Tunnel:
        port = free_port()
        proc = subprocess.Popen(
            server.ssh_command(keys[i % len(keys)], "-N", "-L",
                               f"127.0.0.1:{port}:localhost:80", "user@127.0.0.1"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return Tunnel(port, proc)

    def wave_ready(first: int) -> bool:
        ready = True
        for i in range(first, len(tunnels)):
            if tunnels[i].proc.poll() is not None:
                tunnels[i] = launch(i)
                ready = False
            else:
                try:
                    ready = ready and request(tunnels[i].port, "GET", "/v2/",
                                              timeout=10).status == 200
                except (HTTPError, OSError):
                    ready = False
        return ready

    try:
        for first in range(0, count, WAVE):
            tunnels += [launch(i) for i in range(first, min(first + WAVE, count))]
            wait_for(lambda first=first: wave_ready(first), 60, "a wave of tunnels",
                     interval=0.1)
    except BaseException:
        _close_tunnels(tunnels)
        raise
    return tunnels


def _close_tunnels(tunnels: list[Tunnel]) -> None:
    for tunnel in tunnels:
        if tunnel.proc.poll() is None:
            tunnel.proc.terminate()
    for tunnel in tunnels:
        try:
            tunnel.proc.wait(10)
        except subprocess.TimeoutExpired:
            tunnel.proc.kill()
            tunnel.proc.wait(10)


def _loop(port: int, content: dict[str, bytes], until: float) -> int:
    """HEAD and GET the image over one keep-alive connection until `until`; returns rounds."""
    layer, manifest = sha256(content["layer"]), content["manifest"]
    rounds = 0
    with Connection(port, timeout=60) as conn:
        while time.monotonic() < until or rounds == 0:
            head = conn.request("HEAD", "/v2/load/app/manifests/v1",
                                headers={"Accept": OCI_MANIFEST})
            assert head.status == 200 and head.header("docker-content-digest") == \
                sha256(manifest)
            assert get_manifest(conn, "load/app", "v1").body == manifest
            assert conn.request("HEAD", f"/v2/load/app/blobs/{layer}").status == 200
            blob = conn.request("GET", f"/v2/load/app/blobs/{layer}")
            assert blob.status == 200 and blob.body == content["layer"]
            rounds += 1
    return rounds


def _crowd(server: SshregServer, keys: list[ClientKey], content: dict[str, bytes]) -> None:
    tunnels = _open_tunnels(server, keys, TUNNELS)
    try:
        assert server.metric("sshreg_ssh_connections") == TUNNELS
        until = time.monotonic() + LOOP_SECONDS
        with ThreadPoolExecutor(TUNNELS) as pool:
            rounds = list(pool.map(lambda t: _loop(t.port, content, until), tunnels,
                                   timeout=LOOP_SECONDS + 120))
        assert len(rounds) == TUNNELS and all(r >= 1 for r in rounds)
    finally:
        _close_tunnels(tunnels)


def test_200_concurrent_tunnels_doing_head_and_get_loops(server, keys, content, idle):
    """Two crowds, one after the other. The first raises the allocator's high-water mark
    (glibc keeps what 200 concurrent connections took, about 28 MiB here); the second must
    not raise it again, as anything kept per connection would."""
    _crowd(server, keys, content)
    after_first = _settled(server, idle, rss_slack=CROWD_HIGH_WATER)
    _crowd(server, keys, content)
    _settled(server, after_first)


# -- slowloris ---------------------------------------------------------------------------------------


def test_slowloris_headers_are_cut_off_after_the_header_timeout(server, keys, content,
                                                                baseline):
    """Ten clients trickle request headers one byte every 0.2 s (they never finish): each is
    closed by the server within header_timeout although bytes keep coming, and others are
    served meanwhile."""
    head = b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n" + b"X-Slow: " + b"a" * 10_000
    closed_after: list[float] = []
    lock = threading.Lock()

    def slowloris(port: int) -> None:
        started = time.monotonic()
        with Connection(port, timeout=30) as conn:
            try:
                for byte in head:
                    conn.sock.sendall(bytes([byte]))
                    if conn.answered():
                        break
                    time.sleep(0.2)
                    if time.monotonic() - started > HEADER_TIMEOUT + 10:
                        return  # never cut off
                conn.closed_by_peer(5)
            except OSError:
                pass  # reset by the server: cut off
        with lock:
            closed_after.append(time.monotonic() - started)

    with server.tunnel(keys[6]) as tunnel, server.tunnel(keys[7]) as other, \
            ThreadPoolExecutor(10) as pool:
        futures = [pool.submit(slowloris, tunnel.port) for _ in range(10)]
        time.sleep(1)
        assert server.metric("sshreg_ssh_channels") >= 10
        with Connection(other.port) as conn:  # others are served meanwhile
            assert get_manifest(conn, "load/app", "v1").body == content["manifest"]
        for future in futures:
            future.result(HEADER_TIMEOUT + 30)
    assert len(closed_after) == 10, "a slowloris client was never cut off"
    assert max(closed_after) < HEADER_TIMEOUT + 3, closed_after


# -- a client gone while its bytes are being stored (in-process, both storages) ---------------------


@pytest.fixture
async def cutting_client(registry) -> AsyncIterator[TestClient]:
    """The registry behind aiohttp's test server with the protocol options of the real one:
    a client that goes away cancels its handler, wherever it is."""
    async with TestClient(RawTestServer(registry.handle, handler_cancellation=True)) as client:
        yield client


async def test_a_patch_cut_while_a_batch_is_being_stored_resumes_without_losing_it(
        cutting_client, registry, monkeypatch):
    """Storage takes a second per batch; the client sends a whole PATCH body and goes away
    before the answer, while the handler waits for a batch to be stored. Resuming from the
    offset the session reports must give back exactly the bytes sent."""
    store = registry.store.driver
    begin = store.begin_upload

    async def slow_begin(key: str, part_size: int | None = None):
        upload = await begin(key, part_size)
        write = upload.write

        async def slow_write(data: bytes | bytearray) -> None:
            await asyncio.sleep(1.0)
            await write(data)

        upload.write = slow_write
        return upload

    monkeypatch.setattr(store, "begin_upload", slow_begin)
    client = cutting_client
    data = os.urandom(2 * registry.settings.upload_batch + 1000)
    resp = await client.post("/v2/app/blobs/uploads/")
    location = resp.headers["Location"]
    _reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"PATCH {location} HTTP/1.1\r\nHost: localhost\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    await asyncio.sleep(1.5)  # the body is in; its batches are still being stored
    writer.transport.abort()

    for _ in range(100):
        resp = await client.get(location)
        assert resp.status == 204
        offset = int(resp.headers["Range"].split("-")[1]) + 1
        if offset == len(data):
            break
        resp = await client.patch(location, data=data[offset:],
                                  headers={"Content-Range": f"{offset}-{len(data) - 1}"})
        if resp.status != 416:  # the cut request was still winding up: ask again
            assert resp.status == 202, await resp.text()
            break
        await asyncio.sleep(0.1)
    resp = await client.put(location, params={"digest": sha256(data)})
    assert resp.status == 201, await resp.text()
    resp = await client.get(f"/v2/app/blobs/{sha256(data)}")
    assert resp.status == 200 and await resp.read() == data, "the stored blob lost bytes"
