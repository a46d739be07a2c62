"""S3 storage (SeaweedFS) seen through real clients and real tunnels (issue 4).

- A 2 GiB layer pushed by docker (one streamed, chunked PATCH) and by ctr (one PUT with the
  whole body), with 8 MiB parts: the completed object's parts are all 8 MiB but the last (read
  back with GetObjectAttributes `ObjectParts`, which SeaweedFS answers for completed multipart
  objects: ListParts is gone once the upload completed, and the server process's own hook is
  out of reach from here); the server's peak RSS stays under 200 MiB (psutil, sampled every
  50 ms); and the time from the last byte to the 201 is no longer than for a 64 MiB layer
  plus a twentieth of the upload's time (a commit that copied or re-read the blob takes a good
  part of the upload's time).
  "Last byte" is when the server's `sshreg_http_received_bytes_total` (its `/metrics`, sampled
  every 10 ms) has counted the whole blob; "201" is the time on the audit line of the PUT that
  published the blob.
- Failures: a digest mismatch, a client that disconnects mid-upload and SeaweedFS stopped
  mid-upload give the client an error, publish no blob and no tag, leave no multipart upload
  behind, and the server keeps serving.
- Two pushes of different manifests to one tag at once, through two tunnels.
- Redirect mode: pulls get 307s to presigned URLs, and the blob bytes do not cross the tunnel.
"""

from __future__ import annotations

import contextlib
import http.client as http_client
import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.support.containerd import Ctr
from tests.support.deployment import Deployment, deploy, generate_keys, unique
from tests.support.docker import Docker
from tests.support.hashing import sha256
from tests.support.images import (
    OCI_CONFIG,
    OCI_MANIFEST,
    Image,
    layout_blobs,
    make_image,
    verify_layout,
    write_docker_archive,
    write_oci_archive,
)
from tests.support.processes import wait_until
from tests.support.registry import Answer, RegistryHTTP, StreamedPatch
from tests.support.rss import PeakRss
from tests.support.seaweedfs import SeaweedFS, assert_r2_object_parts
from tests.support.sshreg_server import SshregServer

pytestmark = pytest.mark.integration

MiB = 1 << 20
GiB = 1 << 30
PART_SIZE = 8 * MiB
BIG = 2 * GiB
SMALL = 64 * MiB
RSS_LIMIT = 200 * MiB
RECEIVED = "sshreg_http_received_bytes_total"
SENT = "sshreg_http_sent_bytes_total"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, s3_server) -> Iterator[Deployment]:
    """sshreg on S3 with 8 MiB parts (R2's part rule is checked on every blob at the end)."""
    keys = generate_keys(tmp_path_factory.mktemp("s3-keys"), ("alice",))
    with deploy(tmp_path_factory.mktemp("s3-clients"), "s3", keys, s3=s3_server,
                config={"storage": {"part_size": "8MiB"}}) as running:
        yield running



# -- a 2 GiB layer -----------------------------------------------------------------------


class ReceiveClock:
    """Samples the server's received-bytes counter in a thread; `reached(n)` is the wall
    time of the first sample that had counted `n` more bytes than at the start."""

    def __init__(self, server: SshregServer, interval: float = 0.01) -> None:
        self.server = server
        self.interval = interval
        self.base = server.metric(RECEIVED)
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):  # a slow answer is a missed sample, no more
                value = self.server.metric(RECEIVED) - self.base
                self.samples.append((time.time(), value))
            self._stop.wait(self.interval)

    def reached(self, count: int) -> float:
        first = next((t for t, value in self.samples if value >= count), None)
        assert first is not None, f"the server never counted {count} bytes received"
        return first

    def __enter__(self) -> ReceiveClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@dataclass(frozen=True)
class BigPush:
    digest: str  # the layer blob as pushed
    size: int
    parts: list[int]  # the sizes of the parts of its S3 object
    uploads: list[dict]  # the audit lines of the requests that carried its bytes
    commit_seconds: float  # from the server having received the blob to its 201
    peak_rss: int


def measure_push(deployment: Deployment, repository: str, push: Callable[[str], str]
                 ) -> BigPush:
    """Run `push(registry)` (which returns the pushed layer's digest) through a tunnel while
    sampling the server's memory and received bytes."""
    server, store = deployment.server, deployment.store
    assert store is not None
    with deployment.tunnel() as tunnel, PeakRss(server.pid) as rss, ReceiveClock(server) as clock:
        digest = push(tunnel.registry)
    parts = store.blob_parts(digest, PART_SIZE)
    size = sum(parts)
    events = [e for e in server.audit() if e.get("repository") == repository]
    (published,) = [e for e in events if e["method"] == "PUT" and e.get("reference") == digest]
    uploads = [e for e in events if e["method"] in ("PATCH", "PUT") and e["bytes"] >= PART_SIZE]
    return BigPush(digest, size, parts, uploads, published["time"] - clock.reached(size),
                   rss.peak)


def check_big_push(big: BigPush, small: BigPush, method: str) -> None:
    """One request carried the whole blob; its object is in equal parts but the last; memory
    stayed bounded; the commit did not move the bytes again. A commit that re-read or copied
    the blob would take a good part of its upload's time; completing 256 parts instead of 8
    costs SeaweedFS a second or two here, varying with the disk's writeback, so the bound is
    the small blob's commit plus a twentieth of the upload time (at least a second)."""
    assert [(e["method"], e["bytes"]) for e in big.uploads] == [(method, big.size)]
    assert len(big.parts) == math.ceil(big.size / PART_SIZE) > 200
    assert big.parts[:-1] == [PART_SIZE] * (len(big.parts) - 1)
    assert big.peak_rss < RSS_LIMIT, f"peak RSS {big.peak_rss / MiB:.0f} MiB"
    (upload,) = big.uploads
    allowance = max(1.0, upload["seconds"] / 20)
    assert big.commit_seconds <= small.commit_seconds + allowance, (big, small)


LOCAL_NAME = "sshreg.test/big:1"


@pytest.fixture(scope="module")
def layer_images(tmp_path_factory) -> Iterator[dict[int, Image]]:
    """A one-layer image per size (uncompressed: ctr pushes it as it is, docker gzips it),
    made once for docker and ctr, and removed at the end (2 GiB on disk)."""
    directory = tmp_path_factory.mktemp("layer-images")
    yield {size: make_image(directory / str(size), [size], seed=unique("big"),
                            compressed=False, full_name=LOCAL_NAME) for size in (SMALL, BIG)}
    shutil.rmtree(directory)


def docker_push(docker: Docker, deployment: Deployment) -> BigPush:
    """Push the image loaded as LOCAL_NAME with docker (POST, one chunked PATCH, empty PUT)."""
    repository = unique("big/docker")

    def push(registry: str) -> str:
        docker.tag(LOCAL_NAME, f"{registry}/{repository}:1")
        docker.push(f"{registry}/{repository}:1", timeout=900)
        manifest = RegistryHTTP(f"http://{registry}").manifest(repository, "1")
        return str(json.loads(manifest.body)["layers"][0]["digest"])

    return measure_push(deployment, repository, push)


def ctr_push(ctr: Ctr, deployment: Deployment, local: str) -> BigPush:
    """Push the image `local` with ctr (POST, one PUT with the whole blob)."""
    repository = unique("big/ctr")

    def push(registry: str) -> str:
        ctr.tag(local, f"{registry}/{repository}:1")
        ctr.push(f"{registry}/{repository}:1", timeout=900)
        manifest = RegistryHTTP(f"http://{registry}").manifest(repository, "1")
        return str(json.loads(manifest.body)["layers"][0]["digest"])

    return measure_push(deployment, repository, push)


def test_the_part_check_sees_each_part_of_a_completed_object_and_catches_unequal_ones(
        s3_server):
    """What the 2 GiB test relies on: SeaweedFS reports the parts of a completed object (so
    the check is not vacuous), and a split R2 would refuse fails it. The objects are made
    around the R2 rules' proxy, which would refuse the unequal split itself."""
    client, bucket = s3_server.client(direct=True), s3_server.bucket
    for sizes, r2_accepts in (([5 * MiB, 5 * MiB, 7], True), ([5 * MiB + 1, 5 * MiB, 7], False)):
        key = f"part-check/{unique('object')}"
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = [{"PartNumber": n, "ETag": client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=n, Body=os.urandom(size))["ETag"]}
            for n, size in enumerate(sizes, start=1)]
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                         MultipartUpload={"Parts": parts})
        try:
            if r2_accepts:
                assert assert_r2_object_parts(client, bucket, key) == sizes
            else:
                with pytest.raises(AssertionError, match="unequal parts"):
                    assert_r2_object_parts(client, bucket, key)
        finally:
            client.delete_object(Bucket=bucket, Key=key)


def test_a_2gib_layer_pushed_by_docker_and_by_ctr_lands_in_equal_parts_in_bounded_memory(
        deployment, docker, containerd, layer_images):
    """docker streams it in one chunked PATCH, ctr sends it in one PUT. For both: the S3
    object's parts are 8 MiB but the last, the server's RSS stays under 200 MiB, and the
    commit takes no longer than a 64 MiB layer's."""
    ctrs = {size: containerd.client(unique("big")) for size in layer_images}
    pushed: dict[tuple[str, int], BigPush] = {}
    try:
        with ThreadPoolExecutor(1) as background:  # ctr's imports run while docker works
            imports = [background.submit(
                ctrs[size].import_stream,
                lambda pipe, layout=image.layout: write_oci_archive(layout, pipe))
                for size, image in layer_images.items()]
            for size, image in layer_images.items():
                docker.load_stream(
                    lambda pipe, image=image: write_docker_archive(image, pipe, [LOCAL_NAME]))
                pushed["docker", size] = docker_push(docker, deployment)
                docker.remove_all_images()
            for done in imports:
                done.result()
        for size in layer_images:
            pushed["ctr", size] = ctr_push(ctrs[size], deployment, LOCAL_NAME)
    finally:
        for ctr in ctrs.values():  # --sync: the 2 GiB leave containerd's content store now
            ctr.run("images", "rm", "--sync", *(r.name for r in ctr.images()), check=False)
    assert pushed["ctr", BIG].digest == layer_images[BIG].layers[0].digest
    check_big_push(pushed["docker", BIG], pushed["docker", SMALL], "PATCH")
    check_big_push(pushed["ctr", BIG], pushed["ctr", SMALL], "PUT")


# -- failures: nothing published, nothing left behind, still serving ---------------------


def assert_not_published(http: RegistryHTTP, repository: str, digest: str, size: int) -> None:
    """No blob `digest` in `repository`, and no manifest or tag can be made to use it."""
    assert http.call("HEAD", f"/v2/{repository}/blobs/{digest}").status == 404
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                           "config": {"mediaType": OCI_CONFIG, "digest": digest, "size": size}})
    answer = http.call("PUT", f"/v2/{repository}/manifests/latest", manifest.encode(),
                       {"Content-Type": OCI_MANIFEST})
    assert (answer.status, answer.error_codes()) == (400, ["MANIFEST_BLOB_UNKNOWN"])
    assert http.call("GET", f"/v2/{repository}/manifests/latest").status == 404


def assert_serving(deployment: Deployment) -> None:
    """A fresh tunnel still pushes and pulls a blob."""
    data = os.urandom(100_000)
    digest = sha256(data)
    with deployment.tunnel() as tunnel:
        http = RegistryHTTP(tunnel.url)
        answer = http.call("POST", f"/v2/alive/blobs/uploads/?digest={digest}", data)
        assert answer.status == 201, answer
        assert http.blob("alive", digest).body == data


@pytest.fixture(scope="module")
def quick_cleanup(tmp_path_factory, s3_server) -> Iterator[Deployment]:
    """sshreg on S3 whose upload sessions expire after 2 s without a request (the default
    10 min lets a client whose connection died resume its upload)."""
    keys = generate_keys(tmp_path_factory.mktemp("s3-keys"), ("alice",))
    config = {"storage": {"part_size": "8MiB"}, "registry": {"upload_idle_timeout": "2s"}}
    with deploy(tmp_path_factory.mktemp("s3-cleanup"), "s3", keys, s3=s3_server,
                config=config) as running:
        yield running


def test_a_digest_mismatch_is_refused_publishes_nothing_and_aborts_the_upload(quick_cleanup):
    deployment = quick_cleanup
    store = deployment.store
    stored = store.objects("data/")
    data = os.urandom(3 * PART_SIZE + 12_345)  # three full parts: a multipart upload
    wrong = sha256(data + b"!")
    repository = unique("fail/mismatch")
    with deployment.tunnel() as tunnel:
        http = RegistryHTTP(tunnel.url)
        upload = StreamedPatch(tunnel.url, repository)
        try:
            for offset in range(0, len(data), MiB):
                upload.send(data[offset:offset + MiB])
            assert upload.finish().status == 202
        finally:
            upload.close()
        answer = http.call("PUT", f"{upload.location}?digest={wrong}", b"")
        assert (answer.status, answer.error_codes()) == (400, ["DIGEST_INVALID"])
        for digest in (wrong, sha256(data)):
            assert_not_published(http, repository, digest, len(data))
    assert store.multipart_uploads() == []
    assert store.objects("data/") == stored
    assert_serving(deployment)


def test_a_client_cut_off_mid_upload_publishes_nothing_and_its_upload_is_aborted(
        quick_cleanup):
    """The session outlives the cut connection (the client could ask where it stands and
    resume) until its idle timeout; then its multipart upload is aborted."""
    deployment = quick_cleanup
    server, store = deployment.server, deployment.store
    stored = store.objects("data/")
    data = os.urandom(3 * PART_SIZE)
    repository = unique("fail/cut")
    received = server.metric(RECEIVED)
    with deployment.tunnel() as tunnel:
        upload = StreamedPatch(tunnel.url, repository)
        for offset in range(0, len(data), MiB):
            upload.send(data[offset:offset + MiB])
        wait_until(lambda: server.metric(RECEIVED) - received >= len(data), 30,
                   "the server to receive the first parts")
        wait_until(store.multipart_uploads, 30, "the multipart upload to start")
        tunnel.kill()  # the client's SSH connection drops mid-body
        upload.close()
    wait_until(lambda: not store.multipart_uploads(), 30, "the multipart upload to be aborted")
    assert server.metric("sshreg_uploads_active") == 0
    assert f"to {repository}: idle for 2s" in server.log()
    assert store.objects("data/") == stored
    with deployment.tunnel() as tunnel:
        assert_not_published(RegistryHTTP(tunnel.url), repository, sha256(data), len(data))
    assert_serving(deployment)


def send_and_finish(upload: StreamedPatch, data: bytes) -> Answer | Exception:
    """The rest of a PATCH body, then its answer; or how the connection failed."""
    try:
        for offset in range(0, len(data), MiB):
            upload.send(data[offset:offset + MiB])
        return upload.finish()
    except (OSError, http_client.HTTPException) as exc:
        return exc


@pytest.fixture
def own_seaweedfs(tmp_path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own, to be stopped and restarted under sshreg's feet
    (behind R2's rules, which stay up meanwhile)."""
    with SeaweedFS(tmp_path / "seaweedfs", bucket="stopping") as server:
        rules = server.enforce_r2_rules()
        try:
            yield server
        finally:
            rules.stop()


def test_seaweedfs_stopped_mid_upload_fails_the_push_and_nothing_is_left_after_cleanup(
        own_seaweedfs, tmp_path):
    keys = generate_keys(tmp_path / "keys", ("alice",))
    config = {"storage": {"part_size": "8MiB", "stale_upload_age": "8s"}}
    with deploy(tmp_path / "sshreg", "s3", keys, s3=own_seaweedfs, config=config) as running:
        server, store = running.server, running.store
        before = make_image(tmp_path / "layout", [50_000], seed=unique("kept"))
        data = os.urandom(6 * PART_SIZE)
        repository = unique("fail/outage")
        with running.tunnel() as tunnel:
            http = RegistryHTTP(tunnel.url)
            http.push_image(repository, "kept", before)
            upload = StreamedPatch(tunnel.url, repository)
            try:
                for offset in range(0, 2 * PART_SIZE, MiB):
                    upload.send(data[offset:offset + MiB])
                wait_until(store.multipart_uploads, 30, "the multipart upload to start")
                own_seaweedfs.kill()
                outcome = send_and_finish(upload, data[2 * PART_SIZE:])
                assert isinstance(outcome, Exception) or outcome.status >= 500, outcome
            finally:
                upload.close()
            assert http.call("GET", "/v2/").status == 200  # S3 is down; the server is not
            own_seaweedfs.restart()
            assert http.manifest(repository, "kept").body == before.manifest_bytes()
            assert_not_published(http, repository, sha256(data), len(data))
        # The server's own abort failed while S3 was down, so the multipart upload stayed
        # behind, for the stale-upload sweep (every stale_upload_age / 4) to abort.
        wait_until(lambda: not store.multipart_uploads(), 30, "stale uploads to be aborted")
        server.wait_for_log("aborted 1 abandoned upload(s) older than 8s")
        assert_serving(running)


# -- two pushes to one tag at once -------------------------------------------------------


def put_manifest_retrying(http: RegistryHTTP, repository: str, tag: str, body: bytes,
                          media_type: str) -> Answer:
    """PUT a manifest; on 429 (a concurrent update) try again, as a client told so would
    (sooner than its Retry-After asks, to keep the test short)."""
    for _ in range(20):
        answer = http.call("PUT", f"/v2/{repository}/manifests/{tag}", body,
                           {"Content-Type": media_type})
        if answer.status != 429:
            return answer
        time.sleep(0.05)
    return answer


def test_concurrent_pushes_of_two_manifests_to_one_tag_end_at_one_of_them(deployment,
                                                                          tmp_path):
    repository = unique("race/app")
    images = [make_image(tmp_path / "layout", [40_000], seed="race", tag=None, label=label)
              for label in ("a", "b")]
    bodies = {image.digest: image.manifest_bytes() for image in images}
    with deployment.tunnel() as one, deployment.tunnel() as two:
        clients = [RegistryHTTP(one.url), RegistryHTTP(two.url)]
        for client, image in zip(clients, images, strict=True):
            client.push_image(repository, image.digest, image)
        for round_ in range(8):
            tag = f"race-{round_}"
            barrier = threading.Barrier(2)

            def push(client: RegistryHTTP, image: Image, tag: str = tag,
                     barrier: threading.Barrier = barrier) -> Answer:
                barrier.wait(10)
                return put_manifest_retrying(client, repository, tag, image.manifest_bytes(),
                                             image.manifest.media_type)

            with ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(push, clients, images))
            assert [a.status for a in answers] == [201, 201], answers
            for client in clients:
                got = client.manifest(repository, tag)
                assert got.digest == got.docker_digest and got.body == bodies[got.digest]
                head = client.call("HEAD", f"/v2/{repository}/manifests/{tag}")
                assert head.headers["Docker-Content-Digest"] == got.digest
                assert int(head.headers["Content-Length"]) == len(got.body)
        for digest, body in bodies.items():
            assert clients[0].manifest(repository, digest).body == body
        assert sorted(clients[1].tags(repository)) == [f"race-{i}" for i in range(8)]


# -- redirect mode -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def redirecting(tmp_path_factory, s3_server) -> Iterator[Deployment]:
    """sshreg on S3 that answers blob GETs with 307 to presigned URLs valid 5 minutes."""
    keys = generate_keys(tmp_path_factory.mktemp("s3-keys"), ("alice",))
    config = {"storage": {"part_size": "8MiB", "redirect_expiry": "5m"}}
    with deploy(tmp_path_factory.mktemp("s3-redirect"), "s3", keys, s3=s3_server,
                config=config) as running:
        yield running


class PullTraffic:
    """What the server sent into tunnels, and how many blob GETs it redirected, meanwhile."""

    def __init__(self, server: SshregServer) -> None:
        self.server = server
        self.sent0 = server.metric(SENT)
        self.redirects0 = self.redirects()

    def redirects(self) -> float:
        return self.server.metric("sshreg_http_requests_total", method="GET", status="307",
                                  route="/v2/{name}/blobs/{digest}")

    def sent(self) -> float:
        return self.server.metric(SENT) - self.sent0

    def redirected(self) -> float:
        return self.redirects() - self.redirects0


REDIRECT_LAYER = 24 * MiB


def test_redirect_mode_skopeo_and_docker_pull_blob_bytes_from_presigned_urls(
        redirecting, containers_env, docker, tmp_path):
    server = redirecting.server
    image = make_image(tmp_path / "layout", [REDIRECT_LAYER], seed=unique("redirect"))
    repository = unique("redirect/app")
    with redirecting.tunnel() as tunnel:
        assert RegistryHTTP(tunnel.url).push_image(repository, "1", image) == image.digest
        ref = f"{tunnel.registry}/{repository}:1"

        traffic = PullTraffic(server)
        copied = containers_env.skopeo().copy(f"docker://{ref}", f"oci:{tmp_path / 'back'}:1")
        assert copied == image.digest
        assert traffic.redirected() >= 2  # the config and the layer
        assert traffic.sent() < MiB, f"{traffic.sent()} bytes went through the tunnel"

        traffic = PullTraffic(server)
        assert docker.pull(ref) == image.digest
        assert docker.image_id(ref) == image.image_id
        assert traffic.redirected() >= 2
        assert traffic.sent() < MiB, f"{traffic.sent()} bytes went through the tunnel"
    verify_layout(tmp_path / "back")
    assert layout_blobs(tmp_path / "back") == layout_blobs(image.layout)
