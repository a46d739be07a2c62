"""One logged-in key cannot exhaust the server: attacks through a real server and real ssh
tunnels, with small limits so that they run in seconds.

- many `POST /blobs/uploads/` from one key: past `max_uploads_per_key` they are answered
  429 TOOMANYREQUESTS with Retry-After (logged once, with the key), while another key
  still pushes; and they open no file (the server's descriptors do not grow);
- S3: part buffers parked by upload sessions are counted against `upload_buffer_budget`,
  past which a PATCH is answered 429; cancelling gives the memory back;
- a manifest with 20,000 descriptors is refused at once with a handful of storage lookups;
  made-up digests cost one batch of lookups, a repeated digest one lookup;
- a pull whose client stops reading is cut off after `body_idle_timeout`, and the blob file
  it held is closed; a slow pull that keeps reading is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support.hashing import sha256
from tests.support.rawhttp import Connection, Response
from tests.support.rawpush import push_blob
from tests.support.sshreg_server import ClientKey, S3Store, SshregServer, wait_for

pytestmark = pytest.mark.integration

MiB = 1 << 20
BODY_IDLE = 2.0
PER_KEY = 20
TOTAL = 40
FD_SLACK = 3
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
STALLED = "read nothing of a response"  # the server's log line for a cut-off pull
LIMITS = {"max_uploads_per_key": PER_KEY, "max_uploads": TOTAL}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> list[ClientKey]:
    directory = tmp_path_factory.mktemp("limit-keys")
    return [ClientKey.generate(directory, name) for name in ("flooder", "neighbour")]


def _serve(workdir, keys: list[ClientKey], url: str | None = None,
           env: dict[str, str] | None = None, **extra: dict[str, object]) -> SshregServer:
    """A started server with small limits; `extra` adds settings by section."""
    config = {"registry": {"body_idle_timeout": f"{BODY_IDLE}s"}, "limits": dict(LIMITS)}
    for section, table in extra.items():
        config.setdefault(section, {}).update(table)
    srv = SshregServer(workdir, url, env=env, metrics=True, config=config)
    srv.authorize(*(key.line() for key in keys))
    return srv.start()


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys) -> Iterator[SshregServer]:
    srv = _serve(tmp_path_factory.mktemp("limits"), keys)
    yield srv
    srv.stop()


def open_fds(server: SshregServer) -> list[str]:
    """Where the server's file descriptors point."""
    fds = f"/proc/{server.pid}/fd"
    targets = []
    for fd in os.listdir(fds):
        try:
            targets.append(os.readlink(f"{fds}/{fd}"))
        except FileNotFoundError:
            continue  # closed meanwhile
    return targets


def storage_lookups(server: SshregServer) -> float:
    return server.metric("sshreg_storage_seconds_count")


def assert_limited(answer: Response) -> None:
    assert answer.status == 429 and answer.error_code == "TOOMANYREQUESTS", answer
    assert int(answer.header("retry-after") or 0) > 0


def _start_session(conn: Connection, name: str) -> Response:
    return conn.request("POST", f"/v2/{name}/blobs/uploads/", headers={"Content-Length": "0"})


# -- upload sessions ---------------------------------------------------------------------------


def test_a_key_past_its_upload_session_limit_gets_429_while_another_key_still_pushes(
        server, keys):
    flooder, neighbour = keys
    with server.tunnel(flooder) as tunnel, Connection(tunnel.port) as conn:
        fds_before = len(open_fds(server))
        locations = []
        for _ in range(PER_KEY):
            answer = _start_session(conn, "flood/app")
            assert answer.status == 202, answer
            locations.append(answer.header("location"))
        # Sessions without a byte hold no file: the descriptors did not grow with them.
        assert len(open_fds(server)) <= fds_before + FD_SLACK
        assert not server.temporary_files()
        assert server.metric("sshreg_uploads_active") == PER_KEY

        for _ in range(3):
            assert_limited(_start_session(conn, "flood/app"))
        with server.tunnel(neighbour) as other, Connection(other.port) as other_conn:
            blob = os.urandom(256 << 10)
            assert push_blob(other_conn, "neighbour/app", blob, "patch_chunked").status == 201
        refusals = [line for line in server.log().splitlines()
                    if "TOOMANYREQUESTS" in line and flooder.fingerprint in line]
        assert len(refusals) == 3, refusals  # one line per refusal, naming the key

        for location in locations:  # cancelling gives the slots back
            assert conn.request("DELETE", location).status == 204
        answer = _start_session(conn, "flood/app")
        assert answer.status == 202, answer
        assert conn.request("DELETE", answer.header("location")).status == 204
    wait_for(lambda: server.metric("sshreg_uploads_active") == 0, 10, "no session left")


# -- manifest fan-out ---------------------------------------------------------------------------


def _manifest(config: bytes, layers: list[tuple[str, int]]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER, "digest": digest, "size": size}
                   for digest, size in layers],
    }).encode()


def _made_up(count: int) -> list[tuple[str, int]]:
    return [("sha256:" + hashlib.sha256(str(i).encode()).hexdigest(), 1000) for i in range(count)]


@pytest.fixture(scope="module")
def config_blob(server, keys) -> bytes:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    with server.tunnel(keys[1]) as tunnel, Connection(tunnel.port) as conn:
        assert push_blob(conn, "fanout/app", config, "post_digest").status == 201
    return config


def _timed_put(server: SshregServer, conn: Connection, tag: str, manifest: bytes
               ) -> tuple[Response, float, float]:
    """The answer, the seconds it took and the storage operations it cost."""
    lookups = storage_lookups(server)
    started = time.monotonic()
    answer = conn.request("PUT", f"/v2/fanout/app/manifests/{tag}", manifest,
                          headers={"Content-Type": OCI_MANIFEST})
    return answer, time.monotonic() - started, storage_lookups(server) - lookups


def test_a_manifest_with_20000_descriptors_is_refused_at_once_without_lookups(
        server, keys, config_blob):
    manifest = _manifest(config_blob, _made_up(20_000))
    assert len(manifest) < 4 * MiB
    with server.tunnel(keys[1]) as tunnel, Connection(tunnel.port) as conn:
        answer, seconds, lookups = _timed_put(server, conn, "fanout", manifest)
    assert answer.status == 400 and answer.error_code == "MANIFEST_INVALID", answer
    assert "20001 distinct descriptors" in answer.json()["errors"][0]["detail"]
    assert seconds < 5, f"refused after {seconds:.1f}s"
    assert lookups == 0


def test_a_manifest_naming_many_missing_blobs_stops_after_one_batch_of_lookups(
        server, keys, config_blob):
    manifest = _manifest(config_blob, _made_up(999))  # 1000 descriptors: the limit
    with server.tunnel(keys[1]) as tunnel, Connection(tunnel.port) as conn:
        answer, _, lookups = _timed_put(server, conn, "missing", manifest)
    assert answer.status == 400 and answer.error_code == "MANIFEST_BLOB_UNKNOWN", answer
    assert lookups <= 2 * 16, f"{lookups:.0f} storage lookups for made-up digests"


def test_a_manifest_repeating_one_layer_looks_it_up_once(server, keys, config_blob):
    layer = os.urandom(1000)
    with server.tunnel(keys[1]) as tunnel, Connection(tunnel.port) as conn:
        assert push_blob(conn, "fanout/app", layer, "post_digest").status == 201
        manifest = _manifest(config_blob, [(sha256(layer), len(layer))] * 999)
        answer, _, lookups = _timed_put(server, conn, "repeated", manifest)
        assert answer.status == 201, answer
        assert conn.request("GET", "/v2/fanout/app/manifests/repeated",
                            headers={"Accept": OCI_MANIFEST}).body == manifest
    # The check before and after writing: a few lookups per distinct digest, plus the writes.
    assert lookups <= 40, f"{lookups:.0f} storage operations for 2 distinct digests"


# -- stalled pulls ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_blob(server, keys) -> tuple[str, bytes]:
    data = os.urandom(24 * MiB)
    with server.tunnel(keys[1]) as tunnel, Connection(tunnel.port) as conn:
        assert push_blob(conn, "pull/app", data, "put_monolithic").status == 201
    return sha256(data), data


def _blob_files(server: SshregServer) -> list[str]:
    data = os.path.realpath(os.path.join(server.storage, "data"))
    return [target for target in open_fds(server) if target.startswith(data + os.sep)]


def _small_receive_buffer(conn: Connection) -> None:
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)


def test_a_pull_whose_client_stops_reading_is_cut_off_and_its_file_closed(
        server, keys, big_blob):
    digest, data = big_blob
    with server.tunnel(keys[0]) as tunnel:
        fds_before = len(open_fds(server))
        conn = Connection(tunnel.port)
        _small_receive_buffer(conn)
        conn.send_head("GET", f"/v2/pull/app/blobs/{digest}")
        conn.wait_received(1)  # the answer has begun; from now on nothing is read
        wait_for(lambda: _blob_files(server), 5, "the blob file to be open")
        stalled = time.monotonic()
        server.wait_for_log(STALLED, timeout=BODY_IDLE + 10)
        waited = time.monotonic() - stalled
        assert waited >= BODY_IDLE - 0.5, f"cut off after {waited:.1f}s"
        wait_for(lambda: not _blob_files(server), 5, "the blob file to be closed")
        wait_for(lambda: len(open_fds(server)) <= fds_before + FD_SLACK, 10,
                 f"file descriptors back to {fds_before}")
        conn.close()
        lines = [line for line in server.log().splitlines()
                 if STALLED in line]
        assert len(lines) == 1 and keys[0].fingerprint in lines[0], lines
        # The key is not punished: the next pull through the same tunnel works.
        with Connection(tunnel.port) as again:
            blob = again.request("GET", f"/v2/pull/app/blobs/{digest}")
            assert blob.status == 200 and blob.body == data


def test_a_slow_pull_that_keeps_reading_outlives_the_idle_bound(server, keys, big_blob):
    """128 KiB every 0.1 s: the server writes 4 MiB at a time, which takes this reader
    longer than the bound to take in (once the client's buffers are full), but it keeps
    taking bytes."""
    digest, data = big_blob
    length = 16 * MiB
    cut_offs = server.log().count(STALLED)
    with server.tunnel(keys[0]) as tunnel, Connection(tunnel.port) as conn:
        _small_receive_buffer(conn)
        conn.send_head("GET", f"/v2/pull/app/blobs/{digest}", {"Range": f"bytes=0-{length - 1}"})
        head = conn.read_response(head_only=True)
        assert head.status == 206
        received = bytearray()
        started = time.monotonic()
        while len(received) < length:
            received += conn.read_some(128 << 10)
            time.sleep(0.1)
        assert time.monotonic() - started > 2 * BODY_IDLE, "the pull was not slow"
        assert bytes(received) == data[:length]
    assert server.log().count(STALLED) == cut_offs


# -- S3 part buffers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server_with_budget(tmp_path_factory, keys, s3_server) -> Iterator[SshregServer]:
    """S3 storage with 5 MiB parts, one in flight, and a budget of two part buffers."""
    store = S3Store.fresh(s3_server, "budget")
    srv = _serve(tmp_path_factory.mktemp("budget"), keys, store.url, store.env,
                 storage={"part_size": "5MiB", "parts_in_flight": 1},
                 limits={"upload_buffer_budget": "10MiB"})
    yield srv
    srv.stop()


def _park(conn: Connection, name: str, data: bytes) -> tuple[str, Response]:
    """Open a session and PATCH `data` into it (it stays in the part buffer)."""
    location = _start_session(conn, name).header("location")
    assert location
    return location, conn.request("PATCH", location, data,
                                  headers={"Content-Range": f"0-{len(data) - 1}"})


def test_s3_upload_buffers_past_the_budget_get_429_and_cancelling_gives_them_back(
        s3_server_with_budget, keys):
    server = s3_server_with_budget
    data = os.urandom(4 * MiB)
    with server.tunnel(keys[0]) as tunnel, Connection(tunnel.port) as conn:
        parked = []
        for _ in range(2):
            location, answer = _park(conn, "budget/app", data)
            assert answer.status == 202, answer
            parked.append(answer.header("location") or location)
        _, refused = _park(conn, "budget/app", data)
        assert_limited(refused)
        assert server.metric("sshreg_uploads_active") == 2  # the refused one was discarded

        assert conn.request("DELETE", parked[0]).status == 204
        done = conn.request("PUT", f"{parked[1]}?digest={sha256(data)}")
        assert done.status == 201, done
        # The whole budget is back: two more uploads can park their buffers again.
        for _ in range(2):
            location, answer = _park(conn, "budget/app", data)
            assert answer.status == 202, answer
            assert conn.request("DELETE", answer.header("location") or location).status == 204
