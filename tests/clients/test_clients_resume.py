"""Resuming a cut download: the tunnel dies mid-layer (the ssh client is SIGKILLed, as when a
laptop drops off the network), is opened again on the same local port, and the client finishes
the layer with a `Range: bytes=N-` request instead of starting over.

The proof comes from outside the server process, through its `/metrics`: the blob GETs
answered 206, and the bytes the server sent into tunnels for the whole pull stay below
layer + what had been sent before the cut (a restart from zero would send both in full).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.containerd import Containerd
from tests.support.deployment import Deployment, deploy, generate_keys, unique
from tests.support.hashing import sha256
from tests.support.images import Image, make_image
from tests.support.processes import Process, free_port, wait_until
from tests.support.registry import RegistryHTTP

pytestmark = pytest.mark.integration

MiB = 1 << 20
LAYER_SIZE = 96 * MiB  # long enough (~0.5-1 s through the tunnel) to be cut in the middle
CUT_AFTER = LAYER_SIZE // 4  # bytes the server has sent when the tunnel is killed
SENT = "sshreg_http_sent_bytes_total"


@pytest.fixture(scope="module", params=["filesystem", "s3"])
def deployment(request, tmp_path_factory) -> Iterator[Deployment]:
    s3 = request.getfixturevalue("s3_server") if request.param == "s3" else None
    keys = generate_keys(tmp_path_factory.mktemp("resume-keys"), ("alice",))
    with deploy(tmp_path_factory.mktemp(f"resume-{request.param}"), request.param, keys,
                s3=s3, config={"storage": {"part_size": "8MiB"}}) as running:
        yield running



def push_image(deployment: Deployment, repository: str, tmp_path: Path) -> Image:
    """A one-big-layer image, pushed byte for byte (raw HTTP through a tunnel)."""
    image = make_image(tmp_path / "layout", [LAYER_SIZE], seed=unique("resume"),
                       docker_media_types=True)
    with deployment.tunnel() as tunnel:
        assert RegistryHTTP(tunnel.url).push_image(repository, "1", image) == image.digest
    return image


class Counters:
    """The server's count of ranged blob answers and of bytes sent, since creation."""

    def __init__(self, deployment: Deployment) -> None:
        self.server = deployment.server
        self.ranged0 = self.ranged()
        self.sent0 = self.server.metric(SENT)

    def ranged(self) -> float:
        return self.server.metric("sshreg_http_requests_total", method="GET", status="206")

    def sent(self) -> float:
        return self.server.metric(SENT) - self.sent0

    def new_ranged(self) -> float:
        return self.ranged() - self.ranged0


def start_and_cut(deployment: Deployment, port: int, start: Callable[[], Process], *,
                  interrupt: bool = False) -> tuple[Process, float]:
    """Open a tunnel on `port`, `start` a pull through it, wait until the server has sent
    CUT_AFTER bytes, then cut the tunnel: SIGKILL its ssh. With `interrupt`, the tunnel first
    hangs (SIGSTOP) and the user gives up on the stuck pull (SIGINT, as Ctrl-C) before the
    tunnel dies. Returns the pull and the bytes the server sent up to the cut."""
    counters = Counters(deployment)
    with deployment.tunnel(port=port) as tunnel:
        client = start()
        try:
            wait_until(lambda: counters.sent() >= CUT_AFTER or not client.alive(), 60,
                       "the layer download to start", interval=0.005)
            if interrupt and client.alive():
                tunnel.freeze()
                os.kill(client.pid, signal.SIGINT)
                wait_until(lambda: not client.alive(), 30, "the interrupted pull to exit")
        finally:
            tunnel.kill()
    sent = counters.sent()
    try:
        assert interrupt or client.alive(), f"the pull ended before the cut:\n{client.log_tail()}"
        assert sent < LAYER_SIZE, "the layer was sent whole before the tunnel could be cut"
    except BaseException:
        client.stop()
        raise
    return client, sent


def test_docker_resumes_a_cut_layer_download_with_a_range_request(deployment, docker,
                                                                   tmp_path):
    repository = unique("resume/docker")
    image = push_image(deployment, repository, tmp_path)
    port = free_port()
    ref = f"127.0.0.1:{port}/{repository}:1"
    counters = Counters(deployment)
    pull, sent_before_cut = start_and_cut(
        deployment, port, lambda: docker.popen("pull", ref, log_path=tmp_path / "pull.log"))
    try:
        # dockerd retries the layer 5 s later ("Retrying in 5 seconds"): be back by then.
        with deployment.tunnel(port=port):
            wait_until(lambda: not pull.alive(), 120, "docker pull to finish")
    finally:
        pull.stop()
    assert pull.returncode() == 0, pull.log_tail()
    assert f"Digest: {image.digest}" in pull.log_tail()
    assert docker.image_id(ref) == image.image_id
    assert docker.diff_ids(ref) == [image.layers[0].diff_id]
    assert counters.new_ranged() >= 1
    assert counters.sent() < LAYER_SIZE + sent_before_cut


def test_ctr_resumes_a_cut_fetch_with_a_range_request(deployment, containerd: Containerd,
                                                       tmp_path):
    repository = unique("resume/ctr")
    image = push_image(deployment, repository, tmp_path)
    ctr = containerd.client(unique("resume"))
    port = free_port()
    ref = f"127.0.0.1:{port}/{repository}:1"
    counters = Counters(deployment)
    # ctr (containerd 1.6) keeps a partial layer only while the fetch's lease lives: a fetch
    # that fails on its own deletes the lease and containerd's GC drops the partial layer a
    # moment later. A fetch stopped by the user (Ctrl-C) leaves both, and resumes.
    fetch, sent_before_cut = start_and_cut(
        deployment, port, lambda: ctr.popen_fetch(ref, tmp_path / "fetch.log"), interrupt=True)
    fetch.stop()
    assert fetch.returncode() == -signal.SIGINT
    layer = image.layers[0].digest
    assert layer not in ctr.content_digests()
    assert [row for row in ctr.active() if layer in row["ref"]], "no partial layer kept"
    with deployment.tunnel(port=port):
        ctr.fetch(ref)
    assert {image.digest, *image.blob_digests} <= ctr.content_digests()
    assert sha256(ctr.content_get(layer)) == layer
    assert counters.new_ranged() >= 1
    assert counters.sent() < LAYER_SIZE + sent_before_cut
