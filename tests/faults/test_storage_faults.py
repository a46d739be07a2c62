"""Storage faults mid-push and mid-pull: S3 answering 500/503, hung, stopped or slow; a full disk.

S3: a SeaweedFS of this module's own sits behind `FaultProxy` (tests/support/faultproxy.py),
which answers 500/503, slows or passes on command; "hung" is the real SeaweedFS process
SIGSTOPped, "stopped" is it killed (and started again on the same ports and data). sshreg is
told to give up on a call after 1 s timeouts and 2 attempts, so that the bound asserted here is
a few seconds; `test_the_default_s3_settings_bound_a_call_to_a_dead_service` checks what the
defaults bound it to.

In each case, with alice pushing a blob in a streamed PATCH and bob pulling a 32 MiB blob when
the fault strikes: both get an answer within the bound, a spec error (5xx, with Retry-After if
503 or 429) or, for a pull whose headers were already sent, a short body on a closed
connection; never wrong bytes. carol is served meanwhile, the server stays up, nothing of
alice's blob becomes visible, and once the fault clears the same push and pull succeed and the
stale-upload sweep aborts the multipart upload the fault left behind.

Filesystem: the storage is a 20 MiB tmpfs mounted by the test (it runs as root), filled up by
a ballast file: a push and a manifest PUT get 503, pulls still work, the temporary file of the
failed upload is removed at once, and after the ballast goes the same push succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from sshreg.storage.s3 import S3Settings
from sshreg.storage.s3.upload import ABORT_ANSWER_WAIT
from tests.support.faultproxy import FaultProxy
from tests.support.hashing import sha256
from tests.support.rawhttp import Connection, HTTPError, Response
from tests.support.rawpush import PushError, pieces, push_blob, push_manifest
from tests.support.seaweedfs import SeaweedFS
from tests.support.sshreg_server import ClientKey, SshregServer, Tunnel, wait_for

pytestmark = pytest.mark.integration

MiB = 1 << 20
CALL_DEADLINE = S3Settings(bucket="x", connect_timeout=1, read_timeout=1,
                           max_attempts=2).call_deadline  # 5 s
# A failing upload: the call that fails, then its abort and the session's (each holding the
# request at most ABORT_ANSWER_WAIT), and some slack for a loaded machine.
BOUND = CALL_DEADLINE + 2 * ABORT_ANSWER_WAIT + 5
SERVED_WITHIN = 2.0  # another user's request while the fault lasts
STALE_AGE = 6.0
PULLED_SIZE = 96 * MiB  # more than all the buffers between SeaweedFS and the puller hold
SHARED = "faults/shared"
PUSHED_SIZE = 12 * MiB  # three 5 MiB parts


@dataclass
class Users:
    alice: ClientKey  # pushes
    bob: ClientKey  # pulls
    carol: ClientKey  # only looks


@pytest.fixture(scope="module")
def users(tmp_path_factory) -> Users:
    directory = tmp_path_factory.mktemp("fault-keys")
    return Users(*(ClientKey.generate(directory, name) for name in ("alice", "bob", "carol")))


# -- S3 -------------------------------------------------------------------------------------


@dataclass
class S3Rig:
    weed: SeaweedFS
    proxy: FaultProxy
    server: SshregServer
    prefix: str

    def objects(self, under: str) -> list[str]:
        page = self.weed.client().list_objects_v2(Bucket=self.weed.bucket,
                                                  Prefix=f"{self.prefix}/{under}")
        return [o["Key"] for o in page.get("Contents", ())]

    def multipart_uploads(self) -> list[str]:
        page = self.weed.client().list_multipart_uploads(Bucket=self.weed.bucket,
                                                         Prefix=f"{self.prefix}/")
        return [u["Key"] for u in page.get("Uploads", ())]


@pytest.fixture(scope="module")
def s3_rig(tmp_path_factory, users) -> Iterator[S3Rig]:
    weed = SeaweedFS(tmp_path_factory.mktemp("fault-weed"), bucket="sshreg-faults").start()
    rules = weed.enforce_r2_rules()  # faults on top of R2's rules
    proxy = FaultProxy(rules.port).start()
    server = SshregServer(tmp_path_factory.mktemp("fault-s3"), "s3://sshreg-faults/reg",
                          env={**weed.env(), "AWS_ENDPOINT_URL": proxy.url}, config={
                              "storage": {"part_size": "5MiB", "connect_timeout": "1s",
                                          "read_timeout": "1s", "max_attempts": 2,
                                          "stale_upload_age": f"{STALE_AGE}s"},
                          })
    server.authorize(users.alice.line(), users.bob.line(), users.carol.line())
    try:
        server.start()
        yield S3Rig(weed, proxy, server, "reg")
    finally:
        server.stop()
        proxy.stop()
        weed.stop(timeout=0.5)
        rules.stop()


@pytest.fixture(scope="module")
def pulled(s3_rig, users) -> bytes:
    """A blob for bob to pull, pushed once."""
    data = os.urandom(PULLED_SIZE)
    with s3_rig.server.tunnel(users.bob) as bob, Connection(bob.port) as conn:
        assert push_blob(conn, SHARED, data, "put_monolithic").status == 201
    return data


def _hang(weed: SeaweedFS) -> None:
    assert weed.process is not None
    os.killpg(weed.process.pid, signal.SIGSTOP)


def _resume(weed: SeaweedFS) -> None:
    assert weed.process is not None
    os.killpg(weed.process.pid, signal.SIGCONT)


# fault name -> (inject, clear)
FAULTS: dict[str, tuple[Callable[[S3Rig], None], Callable[[S3Rig], None]]] = {
    "503": (lambda rig: rig.proxy.set("error", status=503), lambda rig: rig.proxy.set("pass")),
    "500": (lambda rig: rig.proxy.set("error", status=500), lambda rig: rig.proxy.set("pass")),
    "slower-than-the-timeout": (lambda rig: rig.proxy.set("slow", delay=3.0),
                                lambda rig: rig.proxy.set("pass")),
    "hung": (lambda rig: _hang(rig.weed), lambda rig: _resume(rig.weed)),
    "stopped": (lambda rig: rig.weed.stop(timeout=0.5), lambda rig: rig.weed.restart()),
}


@dataclass
class Outcome:
    response: Response | None
    error: str | None
    seconds: float  # from the fault to the end of the answer

    def describe(self) -> str:
        if self.response is None:
            return f"{self.error} after {self.seconds:.1f}s"
        return f"{self.response.status} {self.response.body[:200]!r} after {self.seconds:.1f}s"


def assert_spec_error(outcome: Outcome) -> None:
    """A 5xx or 429 with the JSON envelope, and Retry-After where the status calls for it."""
    response = outcome.response
    assert response is not None, outcome.describe()
    assert response.status >= 500 or response.status == 429, outcome.describe()
    assert response.error_code is not None, outcome.describe()
    if response.status in (429, 503):
        assert response.header("retry-after"), outcome.describe()


def paced(data: bytes, pause: float) -> Iterator[bytes]:
    for piece in pieces(data):
        time.sleep(pause)
        yield piece


def slow_patch_push(port: int, name: str, data: bytes, fault_at: list[float]) -> Outcome:
    """POST, then one chunked PATCH fed 1 MiB per 50 ms, then the closing PUT."""
    try:
        with Connection(port, timeout=60) as conn:
            post = conn.request("POST", f"/v2/{name}/blobs/uploads/")
            if post.status != 202:
                return Outcome(post, None, time.monotonic() - fault_at[0])
            location = post.header("location")
            answer = conn.request("PATCH", location, paced(data, 0.05), chunked=True)
            if answer.status == 202:
                location = answer.header("location")
                answer = conn.request("PUT", f"{location}&digest={sha256(data)}"
                                      if "?" in location else
                                      f"{location}?digest={sha256(data)}")
            return Outcome(answer, None, time.monotonic() - fault_at[0])
    except (HTTPError, OSError) as exc:
        return Outcome(None, repr(exc), time.monotonic() - fault_at[0])


def slow_pull(port: int, name: str, digest: str, fault_at: list[float],
              struck: threading.Event) -> Outcome:
    """GET a blob, wait for its first MiB, wait for the fault, then read on."""
    try:
        with Connection(port, timeout=60) as conn:
            conn.send_head("GET", f"/v2/{name}/blobs/{digest}")
            conn.wait_received(MiB)
            assert struck.wait(30)
            answer = conn.read_response(allow_short=True)
            return Outcome(answer, None, time.monotonic() - fault_at[0])
    except (HTTPError, OSError) as exc:
        return Outcome(None, repr(exc), time.monotonic() - fault_at[0])


def push_again(conn: Connection, name: str, data: bytes, attempts: int = 3) -> None:
    """Push as a client does after a 503: again, after a pause, a few times (a SeaweedFS
    just started again may not answer its first requests within the test's 1 s timeout)."""
    for attempt in range(attempts):
        try:
            assert push_blob(conn, name, data, "patch_chunked").status == 201
            return
        except PushError as exc:
            if exc.response.status != 503 or attempt == attempts - 1:
                raise
            time.sleep(1)


def _v2_time(tunnel: Tunnel) -> float:
    started = time.monotonic()
    with Connection(tunnel.port, timeout=SERVED_WITHIN + 5) as conn:
        assert conn.request("GET", "/v2/").status == 200
    return time.monotonic() - started


@pytest.mark.parametrize("fault", list(FAULTS))
def test_s3_fault_mid_push_and_mid_pull_is_a_prompt_error_and_heals(s3_rig, users, pulled,
                                                                    fault):
    inject, clear = FAULTS[fault]
    server, proxy = s3_rig.server, s3_rig.proxy
    repo = f"faults/{fault}"
    pulled_digest = sha256(pulled)
    pushed = os.urandom(PUSHED_SIZE)
    with server.tunnel(users.alice) as alice, server.tunnel(users.bob) as bob, \
            server.tunnel(users.carol) as carol:
        fault_at = [time.monotonic()]
        struck = threading.Event()
        with ThreadPoolExecutor(2) as pool:
            up_before = proxy.bytes_up
            push: Future[Outcome] = pool.submit(slow_patch_push, alice.port, repo, pushed,
                                                fault_at)
            pull: Future[Outcome] = pool.submit(slow_pull, bob.port, SHARED, pulled_digest,
                                                fault_at, struck)
            # The first part is on its way to S3, the pull has started: strike.
            wait_for(lambda: proxy.bytes_up - up_before > 6 * MiB, 30, "the push under way")
            fault_at[0] = time.monotonic()
            inject(s3_rig)
            struck.set()
            try:
                assert _v2_time(carol) < SERVED_WITHIN, "another user waits on the fault"
                pushed_outcome = push.result(BOUND + 30)
                pulled_outcome = pull.result(BOUND + 30)
                assert _v2_time(carol) < SERVED_WITHIN
            finally:
                clear(s3_rig)
    assert server.proc is not None and server.proc.poll() is None, "the server died"

    assert_spec_error(pushed_outcome)
    assert pushed_outcome.seconds < BOUND, pushed_outcome.describe()
    pull_answer = pulled_outcome.response
    assert pull_answer is not None, pulled_outcome.describe()
    assert pulled_outcome.seconds < BOUND, pulled_outcome.describe()
    if pull_answer.status == 200:  # headers went out before the fault: a short body
        assert len(pull_answer.body) < len(pulled), "the pull did not meet the fault"
        assert pulled.startswith(pull_answer.body), "a pull served wrong bytes"
    else:
        assert_spec_error(pulled_outcome)

    with server.tunnel(users.alice) as alice, server.tunnel(users.bob) as bob:
        with Connection(alice.port) as conn:
            assert conn.request("HEAD", f"/v2/{repo}/blobs/{sha256(pushed)}").status == 404
            assert s3_rig.objects("blobs/") and not any(
                key.endswith(sha256(pushed).split(":")[1]) for key in s3_rig.objects("blobs/"))
            push_again(conn, repo, pushed)
            blob = conn.request("GET", f"/v2/{repo}/blobs/{sha256(pushed)}")
            assert blob.status == 200 and blob.body == pushed
        with Connection(bob.port) as conn:
            blob = conn.request("GET", f"/v2/{SHARED}/blobs/{pulled_digest}")
            assert blob.status == 200 and blob.body == pulled


def test_a_slow_s3_slows_pushes_and_pulls_down_without_failing_them(s3_rig, users):
    """Slower than usual but within the timeouts: everything succeeds, only later."""
    repo = "faults/slow"
    data = os.urandom(6 * MiB)
    with s3_rig.server.tunnel(users.alice) as alice, s3_rig.server.tunnel(users.carol) as carol:
        s3_rig.proxy.set("slow", delay=0.02)
        try:
            started = time.monotonic()
            with Connection(alice.port, timeout=60) as conn:
                assert push_blob(conn, repo, data, "patch_chunked").status == 201
                assert _v2_time(carol) < SERVED_WITHIN
                blob = conn.request("GET", f"/v2/{repo}/blobs/{sha256(data)}")
                assert blob.status == 200 and blob.body == data
            assert time.monotonic() - started < 60
        finally:
            s3_rig.proxy.set("pass")


def test_the_stale_upload_sweep_aborts_what_the_faults_left(s3_rig):
    """The aborts of failed uploads could not reach S3 while it was down; the sweep
    (`stale_upload_age`, looking every quarter of it) gets them once it is back."""
    wait_for(lambda: not s3_rig.multipart_uploads(), 3 * STALE_AGE,
             "the stale-upload sweep to abort what the faults left")


def test_the_default_s3_settings_bound_a_request_to_a_dead_service():
    """With the default timeouts and retries, a push meeting a service that never answers
    gets its 503 within a minute and a half (botocore's own defaults, 60 s x 5 attempts for
    each of the call and its aborts, took more than twenty)."""
    assert S3Settings(bucket="x").call_deadline + 2 * ABORT_ANSWER_WAIT <= 90


# -- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Path]:
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], check=True,
                   timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True, timeout=30)


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _fill(path: Path, leave: int) -> None:
    """Write a ballast file until only `leave` bytes are free."""
    st = os.statvfs(path.parent)
    size = st.f_bavail * st.f_frsize - leave
    with open(path, "wb") as f:
        f.write(b"\0" * max(size, 0))


def test_a_full_disk_is_a_prompt_503_nothing_partial_and_the_push_succeeds_after(
        tmp_path, tmpfs, users):
    server = SshregServer(tmp_path / "server", str(tmpfs / "data"))
    server.authorize(users.alice.line(), users.carol.line())
    repo = "faults/disk"
    kept = os.urandom(2 * MiB)
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    data = os.urandom(8 * MiB)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(data), "size": len(data)}]}).encode()
    server.start()
    try:
        with server.tunnel(users.alice) as alice, server.tunnel(users.carol) as carol:
            with Connection(alice.port) as conn:
                assert push_blob(conn, repo, kept, "post_digest").status == 201
                assert push_blob(conn, repo, config, "post_digest").status == 201
            ballast = tmpfs / "ballast"
            _fill(ballast, 3 * MiB)
            used = _used(tmpfs)
            for style in ("patch_chunked", "put_monolithic", "post_digest"):
                started = time.monotonic()
                with Connection(alice.port) as conn:
                    try:
                        answer = push_blob(conn, repo, data, style)
                    except Exception as exc:  # PushError carries the answer
                        answer = getattr(exc, "response", None)
                    outcome = Outcome(answer, None, time.monotonic() - started)
                    assert_spec_error(outcome)
                    assert outcome.seconds < 15, outcome.describe()
                    assert conn.request("HEAD", f"/v2/{repo}/blobs/{sha256(data)}").status == 404
                # The temporary file of the failed upload is gone at once.
                wait_for(lambda: _used(tmpfs) <= used, 10, "the failed upload's space back")
                assert not list((tmpfs / "data" / "_tmp").iterdir())
                assert _v2_time(carol) < SERVED_WITHIN
                with Connection(carol.port) as conn:  # reads work on a full disk
                    blob = conn.request("GET", f"/v2/{repo}/blobs/{sha256(kept)}")
                    assert blob.status == 200 and blob.body == kept
            _fill(tmpfs / "ballast-2", 0)
            with Connection(alice.port) as conn:
                # A blob small enough to wait in a write buffer fails only at commit.
                tiny = os.urandom(1000)
                answer = conn.request("POST", f"/v2/{repo}/blobs/uploads/?digest={sha256(tiny)}",
                                      tiny)
                assert_spec_error(Outcome(answer, None, 0))
                assert not list((tmpfs / "data" / "_tmp").iterdir())
                answer = conn.request("PUT", f"/v2/{repo}/manifests/full", manifest,
                                      headers={"Content-Type":
                                               "application/vnd.oci.image.manifest.v1+json"})
                assert answer.status in (400, 503), answer  # the layer is not there either
                (tmpfs / "ballast-2").unlink()
                _fill(tmpfs / "ballast-2", 64 << 10)
                put = conn.request("PUT", f"/v2/{repo}/manifests/cfg-only", json.dumps({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": sha256(config), "size": len(config)},
                    "layers": [], "annotations": {"pad": "x" * (128 << 10)}}).encode(),
                    headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
                assert_spec_error(Outcome(put, None, 0))
                assert conn.request("GET", f"/v2/{repo}/tags/list").json().get("tags") in (
                    None, [])
            ballast.unlink()
            (tmpfs / "ballast-2").unlink()
            with Connection(alice.port) as conn:
                assert push_blob(conn, repo, data, "patch_chunked").status == 201
                assert push_manifest(conn, repo, "healed", manifest,
                                     "application/vnd.oci.image.manifest.v1+json").status == 201
                blob = conn.request("GET", f"/v2/{repo}/blobs/{sha256(data)}")
                assert blob.status == 200 and blob.body == data
        assert server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()
