"""Operating a real `sshreg serve`: metrics that move with a push, /health, and SIGTERM
arriving while an upload is streaming (it finishes within `[server] shutdown_grace`, or is
aborted with nothing visible and no temporary file left)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.hashing import sha256
from tests.support.rawhttp import Connection, request
from tests.support.rawpush import push_blob
from tests.support.sshreg_server import ClientKey, SshregServer, wait_for

pytestmark = pytest.mark.integration

MiB = 1 << 20
PIECE = 256 << 10


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> ClientKey:
    return ClientKey.generate(tmp_path_factory.mktemp("ops-keys"), "alice")


def start(workdir: Path, key: ClientKey, **server: object) -> SshregServer:
    srv = SshregServer(workdir, metrics=True, config={"server": dict(server)} if server else None)
    srv.authorize(key.line())
    return srv.start()


def test_metrics_count_a_push_and_health_reports_the_storage(tmp_path, key):
    srv = start(tmp_path, key)
    try:
        data = os.urandom(3 * MiB)
        requests_before = srv.metric("sshreg_http_requests_total")
        received_before = srv.metric("sshreg_http_received_bytes_total")
        with srv.tunnel(key) as tunnel, Connection(tunnel.port) as conn:
            push_blob(conn, "team/app", data, "patch_chunked")
            assert srv.metric("sshreg_ssh_connections") >= 1
        assert srv.metric("sshreg_http_requests_total") >= requests_before + 3
        assert srv.metric("sshreg_http_requests_total", method="PUT", status="201") >= 1
        assert srv.metric("sshreg_http_received_bytes_total") >= received_before + len(data)
        assert srv.metric("sshreg_uploads_active") == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/health",
                                    timeout=10) as answer:
            assert answer.status == 200
            assert json.load(answer)["status"] == "ok"
    finally:
        srv.stop()


# llhttp (aiohttp's C parser) knows some 40 methods; aiohttp's pure-Python parser, used
# where the C extension is missing or AIOHTTP_NO_EXTENSIONS is set, takes any token.
UNKNOWN_METHODS = {
    "llhttp": ["PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "PURGE",
               "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "NOTIFY", "SUBSCRIBE", "LINK", "BIND"],
    "python": [f"MADEUP{i}" for i in range(40)],
}


@pytest.mark.parametrize("parser", sorted(UNKNOWN_METHODS))
def test_request_metrics_label_every_unknown_method_as_other(tmp_path, key, parser):
    """Labelled as sent, each method a client makes up would be a new series: the metrics
    would grow without bound."""
    env = {"AIOHTTP_NO_EXTENSIONS": "1"} if parser == "python" else {}
    srv = SshregServer(tmp_path, metrics=True, env=env)
    srv.authorize(key.line())
    srv.start()
    try:
        with srv.tunnel(key) as tunnel:
            for method in UNKNOWN_METHODS[parser]:
                assert request(tunnel.port, method, "/v2/").status < 500
            assert request(tunnel.port, "GET", "/v2/").status == 200
        methods = {labels["method"] for name, labels, _ in srv.metrics()
                   if name == "sshreg_http_requests_total"}
        assert methods == {"GET", "other"}
        assert srv.metric("sshreg_http_requests_total", method="other") == len(
            UNKNOWN_METHODS[parser])
    finally:
        srv.stop()


class SlowUpload:
    """A single-request upload (`POST ?digest=`, chunked) sent in pieces from a thread;
    `release` lets it send the rest, `answer` is the server's reply (or the error)."""

    def __init__(self, port: int, name: str, data: bytes) -> None:
        self.data = data
        self.sent_first = threading.Event()
        self.release = threading.Event()
        self.answer: object = None
        self.sigterm_at = 0.0  # when the server was told to stop
        self._conn = Connection(port, timeout=30)
        self._target = f"/v2/{name}/blobs/uploads/?digest={sha256(data)}"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _pieces(self) -> Iterator[bytes]:
        for i in range(0, len(self.data), PIECE):
            if i == len(self.data) // 2:
                self.sent_first.set()
                self.release.wait(30)
            yield self.data[i:i + PIECE]

    def _run(self) -> None:
        try:
            self.answer = self._conn.request("POST", self._target, self._pieces(), chunked=True)
        except Exception as exc:
            self.answer = exc
        finally:
            self._conn.close()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the upload thread did not finish"


def blob_status(srv: SshregServer, key: ClientKey, digest: str) -> int:
    with srv.tunnel(key) as tunnel:
        return request(tunnel.port, "HEAD", f"/v2/team/app/blobs/{digest}").status


@contextlib.contextmanager
def sigterm_mid_upload(srv: SshregServer, key: ClientKey, data: bytes) -> Iterator[SlowUpload]:
    """Start a slow upload of `data` through a tunnel and SIGTERM the server once half of
    the body is sent; the tunnel stays open for the block, the server is stopped after it."""
    try:
        with srv.tunnel(key) as tunnel:
            upload = SlowUpload(tunnel.port, "team/app", data)
            assert upload.sent_first.wait(20)
            assert srv.proc is not None
            upload.sigterm_at = time.monotonic()
            srv.proc.terminate()
            yield upload
    finally:
        srv.stop()


def test_sigterm_lets_a_running_upload_finish_within_the_grace(tmp_path, key):
    srv = start(tmp_path, key, shutdown_grace="30s")
    data = os.urandom(8 * MiB)
    with sigterm_mid_upload(srv, key, data) as upload:
        srv.wait_for_log("stopping", timeout=10)
        upload.release.set()
        upload.join(30)
        assert getattr(upload.answer, "status", upload.answer) == 201
        assert srv.proc.wait(30) == 0
    srv.start()
    try:
        assert blob_status(srv, key, sha256(data)) == 200
        with srv.tunnel(key) as tunnel:
            got = request(tunnel.port, "GET", f"/v2/team/app/blobs/{sha256(data)}")
            assert got.status == 200 and got.body == data
        assert srv.temporary_files() == []
    finally:
        srv.stop()


def test_sigterm_aborts_an_upload_still_running_after_the_grace_and_nothing_is_visible(
        tmp_path, key):
    grace = 1.0
    srv = start(tmp_path, key, shutdown_grace=f"{grace:.0f}s")
    data = os.urandom(8 * MiB)
    with sigterm_mid_upload(srv, key, data) as upload:
        assert srv.proc.wait(30) == 0  # the stalled upload does not hold the shutdown
        stopped_after = time.monotonic() - upload.sigterm_at
        # It waits the grace, then closes: 1.17 to 1.23 s measured here, 0.2 s past the
        # grace; the margin of 1 s leaves room for a box five times slower.
        assert grace <= stopped_after < grace + 1.0, stopped_after
        assert "aborting them" in srv.log()
        upload.release.set()
        upload.join(30)
        assert getattr(upload.answer, "status", None) != 201
    assert srv.temporary_files() == []
    srv.start()
    try:
        assert blob_status(srv, key, sha256(data)) == 404
        wait_for(lambda: not srv.temporary_files(), 10, "no temporary files")
    finally:
        srv.stop()
