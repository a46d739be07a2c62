"""`[server] workers = 2` (issue 17): one port served by a supervisor and two worker
processes, seen from outside through real `ssh` tunnels and real clients.

Which worker holds a tunnel is read from the processes' sockets (psutil): the tests open
tunnels until each worker holds one, so every check runs across both workers. The
supervisor's /metrics and /health are the sum over the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from sshreg.ssh.hostkey import HOST_KEY_NAME
from tests.support.deployment import Deployment, deploy, generate_keys, unique
from tests.support.hashing import sha256
from tests.support.images import OCI_MANIFEST, layout_blobs, make_image, manifest_for, verify_layout
from tests.support.processes import wait_until
from tests.support.registry import RegistryHTTP, StreamedPatch
from tests.support.sshreg_server import SshregServer, Tunnel, connect

pytestmark = pytest.mark.integration

MiB = 1 << 20
STALE_UPLOAD_AGE = 4  # seconds: the sweep of abandoned uploads runs every second
MAX_TUNNELS = 24  # tunnels opened, at most, to find one on each worker


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_keys(tmp_path_factory.mktemp("worker-keys"), ("alice", "bob"))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, keys) -> Iterator[Deployment]:
    config = {"server": {"workers": 2},
              "storage": {"stale_upload_age": f"{STALE_UPLOAD_AGE}s"}}
    with deploy(tmp_path_factory.mktemp("workers"), "filesystem", keys, config=config,
                options={}) as running:
        assert len(running.server.worker_pids()) == 2
        yield running


@contextlib.contextmanager
def tunnels_on_both_workers(server: SshregServer, key) -> Iterator[dict[int, Tunnel]]:
    """A tunnel held by each worker ({worker pid: tunnel}); the others opened on the way
    are closed at once (and the server has seen them close when this yields)."""
    found: dict[int, Tunnel] = {}
    with contextlib.ExitStack() as kept:
        for _ in range(MAX_TUNNELS):
            with contextlib.ExitStack() as attempt:
                tunnel = attempt.enter_context(server.tunnel(key))
                worker = server.worker_serving(tunnel)
                if worker not in found:
                    found[worker] = tunnel
                    kept.enter_context(attempt.pop_all())
            if len(found) == 2:
                break
        assert len(found) == 2, f"{MAX_TUNNELS} tunnels, all held by one worker"
        wait_until(lambda: server.metric("sshreg_ssh_connections") == 2, 10,
                   "the other tunnels' connections to close")
        yield found


def push_blob(http: RegistryHTTP, repository: str, data: bytes) -> int:
    return http.call("POST", f"/v2/{repository}/blobs/uploads/?digest={sha256(data)}", data,
                     {"Content-Type": "application/octet-stream"}).status


def worker_lines(server: SshregServer, text: str) -> set[str]:
    """The workers (`w0`, `w1`) that logged a line containing `text`."""
    return {m.group(1) for line in server.log().splitlines() if text in line
            for m in [re.search(r" \[(w\d+)\] ", line)] if m}


# -- serving ----------------------------------------------------------------------------


def test_an_image_pushed_through_one_worker_pulls_byte_identical_through_the_other(
        deployment, containers_env, tmp_path):
    server = deployment.server
    skopeo = containers_env.skopeo()
    image = make_image(tmp_path / "image", [300_000, 50_000], seed=unique("workers"))
    repository = unique("team/app")
    with tunnels_on_both_workers(server, deployment.keys["alice"]) as tunnels:
        first, second = tunnels.values()
        for tag, (source, target) in (("1", (first, second)), ("2", (second, first))):
            pushed = skopeo.copy(f"oci:{image.layout}:latest",
                                 f"docker://{source.registry}/{repository}:{tag}", timeout=120)
            assert pushed == image.digest
            back = tmp_path / f"back-{tag}"
            assert skopeo.copy(f"docker://{target.registry}/{repository}:{tag}",
                               f"oci:{back}:{tag}", timeout=120) == image.digest
            verify_layout(back)
            assert layout_blobs(back) == layout_blobs(image.layout)
        assert server.metric("sshreg_workers") == 2
    assert {"w0", "w1"} <= worker_lines(server, "sshreg.audit:")


def test_concurrent_writes_of_one_tag_through_both_workers_leave_one_manifest_tagged(
        deployment):
    server = deployment.server
    repository, tag, count = unique("race/tag"), "latest", 8
    config, layer = b'{"architecture":"amd64","os":"linux"}', os.urandom(2000)
    manifests = [manifest_for(config, [layer], f"writer {i}") for i in range(count)]
    with tunnels_on_both_workers(server, deployment.keys["alice"]) as tunnels:
        https = [RegistryHTTP(t.url) for t in tunnels.values()]
        for blob in (config, layer):
            assert push_blob(https[0], repository, blob) == 201
        start = threading.Barrier(count)

        def write(i: int) -> int:
            start.wait(30)
            return https[i % 2].call("PUT", f"/v2/{repository}/manifests/{tag}", manifests[i],
                                     {"Content-Type": OCI_MANIFEST}).status

        with ThreadPoolExecutor(count) as pool:
            assert list(pool.map(write, range(count))) == [201] * count
        for http in https:  # both workers read the same winner
            assert http.tags(repository) == [tag]
            assert http.manifest(repository, tag).body in manifests
            for manifest in manifests:
                assert http.manifest(repository, sha256(manifest)).body == manifest
        assert https[0].manifest(repository, tag).body == https[1].manifest(repository, tag).body


def test_sixty_logins_at_once_are_spread_over_both_workers(deployment):
    """SO_REUSEPORT spreads connections by a hash of the client's port: each worker gets
    about half (a quarter is more than 5 standard deviations below half). One socket shared
    by both let the first worker to wake take 38 to 40 of 50."""
    server = deployment.server

    async def spread() -> list[int]:
        conns = await asyncio.gather(*(connect(server, deployment.keys["alice"])
                                       for _ in range(60)))
        try:
            return [len(ports) for ports in server.clients_by_worker().values()]
        finally:
            for conn in conns:
                conn.close()

    held = asyncio.run(spread())
    assert sum(held) == 60 and min(held) >= 15, held


# -- a worker dies ----------------------------------------------------------------------


def test_a_worker_killed_mid_push_loses_only_its_connections_and_is_replaced(deployment):
    """kill -9 of the worker holding a push: that push fails, publishes nothing and succeeds
    when retried; the other worker's tunnel goes on throughout; a new worker takes the dead
    one's place; its abandoned upload is swept, by worker 0 only."""
    server = deployment.server
    data = os.urandom(6 * MiB)
    repository = unique("killed/push")
    restarts = server.metric("sshreg_worker_restarts_total")
    with tunnels_on_both_workers(server, deployment.keys["alice"]) as tunnels:
        (victim, doomed), (survivor, other) = tunnels.items()
        upload = StreamedPatch(doomed.url, repository)
        try:
            for offset in range(0, 4 * MiB, MiB):
                upload.send(data[offset:offset + MiB])
            wait_until(lambda: server.temporary_files(), 30, "the upload to reach storage")
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(OSError):
                for offset in range(4 * MiB, len(data), MiB):
                    upload.send(data[offset:offset + MiB])
                upload.finish()
        finally:
            upload.close()
        http = RegistryHTTP(other.url)
        assert http.call("HEAD", f"/v2/{repository}/blobs/{sha256(data)}").status == 404
        blob = os.urandom(100_000)
        assert push_blob(http, unique("survivor"), blob) == 201  # the other worker goes on
        assert psutil.pid_exists(survivor)
    wait_until(lambda: len(server.worker_pids()) == 2 and victim not in server.worker_pids(),
               30, "a new worker")
    assert survivor in server.worker_pids()
    wait_until(lambda: server.metric("sshreg_workers") == 2, 30, "two workers in /metrics")
    assert server.metric("sshreg_worker_restarts_total") == restarts + 1
    assert re.search(rf"worker \d \(pid {victim}\) exited with signal SIGKILL; starting a new "
                     "one", server.log())
    with deployment.tunnel() as tunnel:  # the client retries
        assert push_blob(RegistryHTTP(tunnel.url), repository, data) == 201
        assert RegistryHTTP(tunnel.url).blob(repository, sha256(data)).body == data
    wait_until(lambda: not server.temporary_files(), 3 * STALE_UPLOAD_AGE + 10,
               "the abandoned upload to be swept")
    assert worker_lines(server, "abandoned upload") == {"w0"}


# -- signals ----------------------------------------------------------------------------


def test_sighup_after_a_key_is_removed_disconnects_its_tunnels_on_every_worker(
        tmp_path, keys):
    alice, bob = keys["alice"], keys["bob"]
    server = SshregServer(tmp_path, workers=2, metrics=True)
    server.authorize(alice.line(), bob.line())
    server.start()
    try:
        with tunnels_on_both_workers(server, alice) as tunnels, server.tunnel(bob) as kept:
            loaded = server.log().count("loaded 1 key(s)")
            server.authorize(bob.line())
            os.kill(server.pid, signal.SIGHUP)
            for tunnel in tunnels.values():
                wait_until(lambda t=tunnel: t.proc.poll() is not None, 20,
                           "alice's tunnel to close")
            assert server.log().count("loaded 1 key(s)") >= loaded + 2
            assert worker_lines(server, "loaded 1 key(s)") == {"w0", "w1"}
            assert push_blob(RegistryHTTP(kept.url), "bob/app", os.urandom(1000)) == 201
        assert server.ssh(alice, "help").returncode != 0
    finally:
        server.stop()


def test_sigterm_stops_every_worker_and_a_killed_supervisor_leaves_no_worker_behind(
        tmp_path, keys):
    server = SshregServer(tmp_path, workers=2, metrics=True)
    server.authorize(keys["alice"].line())
    server.start()
    workers = server.worker_pids()
    assert len(workers) == 2
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 10
    assert not any(psutil.pid_exists(pid) for pid in workers)

    server.start()
    workers = server.worker_pids()
    server.kill()  # SIGKILL: no chance to stop the workers; their stdin ends
    wait_until(lambda: not any(psutil.pid_exists(pid) for pid in workers), 20,
               "the workers to exit")


def test_the_host_key_is_made_once_and_every_worker_serves_it(tmp_path, keys):
    server = SshregServer(tmp_path, workers=2, metrics=True)
    server.authorize(keys["alice"].line())
    server.start()
    try:
        assert server.log().count("generated a new host key") == 1
        public = (server.keys_dir / f"{HOST_KEY_NAME}.pub").read_text().split()[1]

        async def host_key_by_worker() -> dict[int, set[str]]:
            seen: dict[int, set[str]] = {}
            for _ in range(MAX_TUNNELS):
                async with await connect(server, keys["alice"]) as conn:
                    worker = server.worker_holding(conn.get_extra_info("sockname")[1])
                    key = conn.get_server_host_key().export_public_key().decode().split()[1]
                    seen.setdefault(worker, set()).add(key)
                if len(seen) == 2:
                    break
            return seen

        assert asyncio.run(host_key_by_worker()) == {pid: {public} for pid in server.worker_pids()}
    finally:
        server.stop()
