"""Several gateways on one bucket (issue 9): two `sshreg serve` processes on different ports,
one SeaweedFS bucket and prefix, one authorized_keys object in that bucket, one host key.
Each of the two runs two workers (issue 17), so every race here is between processes of
one box as well as between boxes; the third box, started to be killed, is one process.

Everything goes through real `ssh` tunnels; images are pushed and pulled with skopeo, the
races with raw HTTP through a tunnel to each gateway. What is checked from outside: what
each gateway answers, the bucket's objects and multipart uploads, the gateways' logs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from sshreg.ssh.hostkey import HOST_KEY_NAME
from tests.support.deployment import unique
from tests.support.hashing import sha256
from tests.support.images import (
    OCI_MANIFEST,
    Image,
    layout_blobs,
    make_image,
    manifest_for,
    verify_layout,
)
from tests.support.processes import CommandError, wait_until
from tests.support.sshreg_server import ClientKey, S3Store, SshregServer, Tunnel

pytestmark = pytest.mark.integration

MiB = 1 << 20
POLL = "1s"  # authorized_keys_poll: a key change reaches every gateway within about this
GRACE = 3.0  # [gc] grace, seconds
STALE_UPLOAD_AGE = 8.0  # [storage] stale_upload_age, seconds


@dataclass
class Gateways:
    """Two gateways (and the means to start more) on one bucket prefix."""

    store: S3Store
    keys_url: str
    config: dict
    admin: ClientKey
    keys: dict[str, ClientKey]
    servers: list[SshregServer]
    workdir: Path

    def start_another(self, name: str) -> SshregServer:
        """One more box: the same configuration, bucket and host key."""
        server = SshregServer(self.workdir / name, self.store.url, env=self.store.env,
                              config=self.config)
        copy_host_key(self.servers[0], server)
        return server.start()

    def sshreg_keys(self, server: SshregServer, *args: str) -> subprocess.CompletedProcess[str]:
        """`sshreg keys ...` run on that gateway's box, with its configuration."""
        return subprocess.run(
            [sys.executable, "-m", "sshreg", "keys", *args, "--config", str(server.config_path)],
            capture_output=True, text=True, timeout=60, env={**os.environ, **self.store.env},
            cwd=server.workdir)


def copy_host_key(source: SshregServer, target: SshregServer) -> None:
    for name in (HOST_KEY_NAME, f"{HOST_KEY_NAME}.pub"):
        shutil.copy2(source.keys_dir / name, target.keys_dir / name)
    os.chmod(target.keys_dir / HOST_KEY_NAME, 0o600)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory, s3_server) -> Iterator[Gateways]:
    workdir = tmp_path_factory.mktemp("gateways")
    keys_dir = tmp_path_factory.mktemp("gateway-keys")
    keys = {name: ClientKey.generate(keys_dir, name) for name in ("alice", "bob")}
    store = S3Store.fresh(s3_server, "gateways")
    keys_url = f"{store.url}/authorized_keys"
    store.client().put_object(Bucket=store.bucket, Key=f"{store.prefix}/authorized_keys",
                              Body=(keys["alice"].line() + "\n").encode())
    config = {
        "server": {"authorized_keys": keys_url, "authorized_keys_poll": POLL},
        "storage": {"part_size": "5MiB", "stale_upload_age": f"{STALE_UPLOAD_AGE:.0f}s"},
        "gc": {"grace": f"{GRACE:.0f}s", "safety": "3s"},
    }
    first = SshregServer(workdir / "gw1", store.url, env=store.env, config=config,
                         workers=2).start()
    running = Gateways(store, keys_url, config, keys["alice"], keys, [first], workdir)
    try:
        second = SshregServer(workdir / "gw2", store.url, env=store.env, config=config,
                              workers=2)
        copy_host_key(first, second)
        running.servers.append(second.start())
        yield running
    finally:
        for server in running.servers:
            server.stop()


@pytest.fixture
def tunnels(gateways) -> Iterator[tuple[Tunnel, Tunnel]]:
    """A tunnel to each gateway, as alice."""
    one, two = gateways.servers[:2]
    with one.tunnel(gateways.admin) as first, two.tunnel(gateways.admin) as second:
        yield first, second


@pytest.fixture
def skopeo(containers_env):
    return containers_env.skopeo()


# -- HTTP through a tunnel ----------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str | None:
        try:
            return json.loads(self.body)["errors"][0]["code"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None


def call(tunnel: Tunnel, method: str, path: str, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> Answer:
    url = path if path.startswith("http") else tunnel.url + path
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, dict(exc.headers), exc.read())



def push_blob(tunnel: Tunnel, repository: str, data: bytes) -> Answer:
    return call(tunnel, "POST", f"/v2/{repository}/blobs/uploads/?digest={sha256(data)}", data,
                {"Content-Type": "application/octet-stream"})


def put_manifest(tunnel: Tunnel, repository: str, reference: str, body: bytes) -> Answer:
    return call(tunnel, "PUT", f"/v2/{repository}/manifests/{reference}", body,
                {"Content-Type": OCI_MANIFEST})


def write_one_tag_at_once(tunnels: tuple[Tunnel, Tunnel], repository: str, tag: str,
                          count: int) -> list[tuple[str, int]]:
    """`count` PUTs of different manifests (one config and layer) to `tag`, alternating
    between the tunnels, all released at once; (digest, status) of each."""
    config, layer = b'{"architecture":"amd64","os":"linux"}', os.urandom(2000)
    for blob in (config, layer):
        assert push_blob(tunnels[0], repository, blob).status == 201
    manifests = [manifest_for(config, [layer], note=f"writer {i}") for i in range(count)]
    start = threading.Barrier(count)

    def write(i: int) -> tuple[str, int]:
        start.wait(30)
        answer = put_manifest(tunnels[i % 2], repository, tag, manifests[i])
        return sha256(manifests[i]), answer.status

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(write, range(count)))


# -- skopeo ---------------------------------------------------------------------------------


def push(skopeo, image: Image, tag: str, tunnel: Tunnel, repository: str) -> str:
    return skopeo.copy(f"oci:{image.layout}:{tag}",
                       f"docker://{tunnel.registry}/{repository}:{tag}", timeout=120)


def assert_pulls_byte_identical(skopeo, image: Image, tag: str, tunnel: Tunnel,
                                repository: str, into: Path) -> None:
    """skopeo copies the image back into a fresh layout: same manifest digest, every blob
    there and hashing to its name, the same set of blobs as the original."""
    digest = skopeo.copy(f"docker://{tunnel.registry}/{repository}:{tag}", f"oci:{into}:{tag}",
                         timeout=120)
    assert digest == image.digest
    verify_layout(into)
    assert layout_blobs(into) == {d: s for d, s in layout_blobs(image.layout).items()
                                  if d in {image.digest, *image.blob_digests}}


# -- the tests ------------------------------------------------------------------------------


def test_both_gateways_present_one_host_key_so_one_known_hosts_entry_fits_both(
        gateways, tmp_path):
    one, two = gateways.servers[:2]
    fingerprints = set()
    for server in (one, two):
        ready = next(line for line in server.log().splitlines() if "sshreg ready" in line)
        fingerprints.add(ready.split("host key ")[1].split(",")[0])
    assert len(fingerprints) == 1
    known_hosts = tmp_path / "known_hosts"
    public = (one.keys_dir / f"{HOST_KEY_NAME}.pub").read_text().split()[:2]
    known_hosts.write_text(f"registry.example {' '.join(public)}\n")
    for server in (one, two):  # as a client behind one DNS name would connect to either
        result = subprocess.run(
            ["ssh", "-p", str(server.port), "-i", str(gateways.admin.path),
             "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "HostKeyAlias=registry.example",
             "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
             "-o", "ConnectTimeout=10", "user@127.0.0.1", "whoami"],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        assert gateways.admin.fingerprint in result.stdout


def test_an_image_pushed_through_one_gateway_pulls_byte_identical_through_the_other(
        gateways, tunnels, skopeo, tmp_path):
    first, second = tunnels
    image = make_image(tmp_path / "layout", [6 * MiB, 300_000], seed=unique("gw"), tag="1")
    repository = unique("gw/app")
    assert push(skopeo, image, "1", first, repository) == image.digest
    assert_pulls_byte_identical(skopeo, image, "1", second, repository, tmp_path / "back")
    assert json.loads(call(second, "GET", f"/v2/{repository}/tags/list").body)["tags"] == ["1"]
    catalog = json.loads(call(second, "GET", "/v2/_catalog").body)["repositories"]
    assert repository in catalog


def test_an_upload_session_is_unknown_on_the_other_gateway_and_a_restart_there_succeeds(
        gateways, tunnels):
    first, second = tunnels
    repository = unique("gw/session")
    blob = os.urandom(300_000)
    started = call(first, "POST", f"/v2/{repository}/blobs/uploads/", b"")
    assert started.status == 202
    location = started.headers["Location"]
    chunk = call(first, "PATCH", location, blob[:100_000],
                 {"Content-Type": "application/octet-stream", "Content-Range": "0-99999"})
    assert chunk.status == 202
    # The client's next request reaches the other box (a new tunnel, a round-robin answer).
    for method, data, extra in (("GET", None, ""), ("PATCH", blob[100_000:], ""),
                                ("PUT", blob[100_000:], f"?digest={sha256(blob)}")):
        answer = call(second, method, location + extra, data,
                      {"Content-Type": "application/octet-stream"})
        assert (answer.status, answer.code) == (404, "BLOB_UPLOAD_UNKNOWN"), (method, answer)
    # So the client starts the blob again, there.
    assert push_blob(second, repository, blob).status == 201
    assert call(first, "GET", f"/v2/{repository}/blobs/{sha256(blob)}").body == blob
    assert call(first, "GET", location).status == 204  # the first box still has its session
    assert call(first, "DELETE", location).status == 204


def test_concurrent_tag_writes_through_both_gateways_leave_the_tag_on_a_written_manifest(
        gateways, tunnels):
    """16 PUTs of different manifests to one tag, half through each gateway, all at once:
    every PUT answered 201 left its manifest readable on both gateways, every other PUT was
    reported as failed, and both gateways agree the tag is on one of the 201 manifests."""
    first, second = tunnels
    repository = unique("gw/race")
    results = write_one_tag_at_once(tunnels, repository, "race", 16)
    created = {digest for digest, status in results if status == 201}
    assert created, results
    assert all(status == 201 or status in (429, 503) for _, status in results), results
    for digest in created:
        for tunnel in (first, second):
            answer = call(tunnel, "GET", f"/v2/{repository}/manifests/{digest}",
                          headers={"Accept": OCI_MANIFEST})
            assert answer.status == 200 and sha256(answer.body) == digest
    final = {call(t, "HEAD", f"/v2/{repository}/manifests/race",
                  headers={"Accept": OCI_MANIFEST}).headers["Docker-Content-Digest"]
             for t in (first, second)}
    assert len(final) == 1 and final <= created


TWENTY_TAG_WRITES_SECONDS = 30.0


def test_twenty_concurrent_writes_of_one_tag_through_both_gateways_all_succeed_within_30s(
        gateways, tunnels):
    """20 PUTs of different manifests to one tag, half through each gateway, all at once,
    on R2's one write per second per key: each gateway coalesces its writers (the latest
    wins) and waits out R2's 429s, so every PUT gets 201, none a 4xx or 5xx, all within
    30 s, and both gateways agree the tag is on one of them."""
    repository = unique("gw/twenty")
    began = time.monotonic()
    results = write_one_tag_at_once(tunnels, repository, "latest", 20)
    took = time.monotonic() - began
    assert [status for _, status in results] == [201] * 20
    assert took < TWENTY_TAG_WRITES_SECONDS, f"20 tag writes took {took:.1f}s"
    final = {call(t, "HEAD", f"/v2/{repository}/manifests/latest",
                  headers={"Accept": OCI_MANIFEST}).headers["Docker-Content-Digest"]
             for t in tunnels}
    assert len(final) == 1 and final <= {digest for digest, _ in results}


def test_one_blob_pushed_through_both_gateways_at_once_is_stored_once(gateways, tunnels):
    """Both pushes succeed; one blob record; the losing gateway removed its copy at once: no
    bytes and no multipart upload are left behind (nothing for gc to find later)."""
    first, second = tunnels
    store = gateways.store
    repository = unique("gw/same")
    blob = os.urandom(12 * MiB)  # 3 parts of 5 MiB on each gateway
    start = threading.Barrier(2)
    uploads = {u["UploadId"] for u in store.multipart_uploads()}

    def upload(tunnel: Tunnel) -> int:
        start.wait(30)
        return push_blob(tunnel, repository, blob).status

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(upload, (first, second))) == [201, 201]
    stored = [key for key, size in store.objects("data/").items() if size == len(blob)]
    assert stored == [store.blob_object(sha256(blob))]
    assert {u["UploadId"] for u in store.multipart_uploads()} <= uploads
    for tunnel in (first, second):
        assert call(tunnel, "GET", f"/v2/{repository}/blobs/{sha256(blob)}").body == blob


def gc_clock(store: S3Store) -> str | None:
    """The ETag of the object gc writes when it starts (None before the first run)."""
    try:
        return store.client().head_object(Bucket=store.bucket,
                                          Key=f"{store.prefix}/gc/clock")["ETag"]
    except ClientError:
        return None


def test_gc_on_one_gateway_while_the_other_pushes_leaves_every_pushed_image_complete(
        gateways, tunnels, skopeo, tmp_path):
    first, second = tunnels
    one = gateways.servers[0]
    repository = unique("gw/gc")
    # Garbage older than the grace period: an untagged image, and one whose layers a push
    # during the collection uses again (the client finds them still there and skips them).
    layout = tmp_path / "layout"
    doomed = make_image(layout, [200_000], seed=unique("doomed"), tag="doomed")
    reused = make_image(layout, [300_000, 100_000], seed="reused", tag="old", label="old")
    again = make_image(layout, [300_000, 100_000], seed="reused", tag="again", label="again")
    assert again.layers == reused.layers and again.digest != reused.digest
    for image, tag in ((doomed, "doomed"), (reused, "old")):
        push(skopeo, image, tag, second, repository)
        assert call(second, "DELETE", f"/v2/{repository}/manifests/{tag}").status == 202
    time.sleep(GRACE + 1.5)  # + S3's whole-second modification times

    fresh = [make_image(layout, [150_000], seed=unique("fresh"), tag=f"fresh{i}")
             for i in range(3)]
    pushes: list[tuple[Image, str]] = [(again, "again"), *((f, f"fresh{i}")
                                                             for i, f in enumerate(fresh))]
    clock = gc_clock(gateways.store)
    succeeded_during_gc = []
    failed: list[tuple[Image, str, str]] = []
    with ThreadPoolExecutor(1) as pool:
        collection = pool.submit(one.ssh, gateways.admin, "gc", "--json", timeout=120)
        wait_until(lambda: gc_clock(gateways.store) != clock, 30, "gc to start")
        for image, tag in pushes:  # through the other gateway, while gc runs
            try:
                push(skopeo, image, tag, second, repository)
            except CommandError as exc:  # lost a race with gc: reported to the client
                failed.append((image, tag, str(exc)))
            else:
                if not collection.done():
                    succeeded_during_gc.append(tag)
            if image is again:
                assert not collection.done(), "the push must overlap the collection"
        result = collection.result(timeout=150)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert f"{repository}@{doomed.digest}" in report["manifests"]
    assert call(second, "HEAD", f"/v2/{repository}/blobs/{doomed.layers[0].digest}").status == 404
    # Pushes go on during a collection: not every one may lose a race with it.
    assert succeeded_during_gc, f"no push succeeded during gc; {[t for _, t, _ in failed]} failed"
    for image, tag, error in failed:
        # A lost race is the spec's error for the manifest PUT, and leaves no tag behind;
        # the client's retry succeeds.
        assert "manifest blob unknown" in error.lower(), error
        assert call(second, "HEAD", f"/v2/{repository}/manifests/{tag}").status == 404
        assert push(skopeo, image, tag, second, repository) == image.digest
    for image, tag in pushes:
        assert_pulls_byte_identical(skopeo, image, tag, first, repository, tmp_path / tag)


def test_a_gateway_killed_mid_push_leaves_the_push_through_another_intact_and_its_upload_swept(
        gateways, tunnels, skopeo, tmp_path):
    first, second = tunnels
    store = gateways.store
    doomed_box = gateways.start_another("gw3")
    repository = unique("gw/killed")
    image = make_image(tmp_path / "layout", [24 * MiB], seed=unique("killed"), tag="1")
    layer = image.blob_path(image.layers[0].digest).read_bytes()
    before = {u["UploadId"] for u in store.multipart_uploads()}
    with doomed_box.tunnel(gateways.admin) as tunnel:
        started = call(tunnel, "POST", f"/v2/{repository}/blobs/uploads/", b"")
        assert started.status == 202
        connection = HTTPConnection("127.0.0.1", tunnel.port, timeout=30)
        connection.putrequest("PATCH", started.headers["Location"])
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Transfer-Encoding", "chunked")  # as docker streams a layer
        connection.endheaders()
        sent = 0
        while sent < 16 * MiB:  # three parts' worth: a multipart upload is under way
            piece = layer[sent:sent + MiB]
            connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
        abandoned = wait_until(lambda: {u["UploadId"] for u in store.multipart_uploads()}
                               - before, 30, "a multipart upload on the third gateway")
        doomed_box.kill()  # kill -9, mid-body
        connection.close()
    assert doomed_box.proc is not None and doomed_box.proc.returncode == -9

    # The client pushes again, through a gateway that is alive: it starts the blob over.
    assert push(skopeo, image, "1", first, repository) == image.digest
    assert_pulls_byte_identical(skopeo, image, "1", second, repository, tmp_path / "back")
    # The upload the dead box left is aborted by the others' stale-upload sweep.
    wait_until(lambda: not abandoned & {u["UploadId"] for u in store.multipart_uploads()},
               STALE_UPLOAD_AGE + 30, "the abandoned multipart upload to be aborted")
    # The abort is seen in S3 a moment before the sweeping gateway's log line is written.
    wait_until(lambda: any(f"aborted stale multipart upload {upload}" in server.log()
                           for server in gateways.servers[:2] for upload in abandoned),
               10, "the sweep's log line")


def test_a_key_added_on_one_box_logs_in_on_the_other_and_a_removed_key_nowhere(gateways):
    one, two = gateways.servers[:2]
    bob = gateways.keys["bob"]
    pids = (one.pid, two.pid)
    assert one.ssh(bob, "whoami").returncode == 255  # not yet authorized

    added = gateways.sshreg_keys(one, "add", str(bob.path) + ".pub", "--pull-only")
    assert added.returncode == 0, added.stderr
    for server in (two, one):
        wait_until(lambda s=server: s.ssh(bob, "whoami").returncode == 0, 15,
                   f"bob to log in on port {server.port}")
    assert bob.fingerprint in two.ssh(bob, "whoami").stdout

    removed = gateways.sshreg_keys(two, "remove", bob.fingerprint)
    assert removed.returncode == 0, removed.stderr
    for server in (one, two):
        wait_until(lambda s=server: s.ssh(bob, "whoami").returncode == 255, 15,
                   f"bob to be refused on port {server.port}")
    assert (one.pid, two.pid) == pids and one.proc.poll() is None and two.proc.poll() is None
    assert gateways.admin.fingerprint in one.ssh(gateways.admin, "whoami").stdout
    assert not (one.keys_dir / "authorized_keys").exists()
    assert not (two.keys_dir / "authorized_keys").exists()
    assert list(gateways.store.objects("authorized_keys")) == [
        f"{gateways.store.prefix}/authorized_keys"]  # the one copy, in the bucket
