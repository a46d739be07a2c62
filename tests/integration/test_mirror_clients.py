"""The pull-through cache through real `ssh -N -L` tunnels, with real clients, from real
upstreams: Debian's distribution anonymous, behind a Docker-Hub-like token flow, behind
htpasswd, behind a proxy that redirects blob downloads to another host, and behind one that
corrupts them.

skopeo, docker, podman and ctr pull `PREFIX/NAME` (the upstream's `NAME`); docker's
`registry-mirrors` and containerd's `hosts.toml` mirror pull Docker Hub names through the
default mirror. What each client got is compared with what the upstream holds, and what the
upstream served is counted from its own access log.

One sshreg per storage for the module (two workers, every mirror below configured), and one
set of upstreams shared by both; every test pulls its own images (their seeds differ), so a
blob one test filled is never what another test counts.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sshreg.references import Digest
from sshreg.store import paths
from tests.support.containerd import Containerd
from tests.support.deployment import Deployment, deploy, generate_keys, unique
from tests.support.docker import Docker, Dockerd
from tests.support.images import (
    Image,
    layout_blobs,
    make_image,
    make_multiarch_image,
    verify_layout,
)
from tests.support.podman import ContainersEnv, Skopeo
from tests.support.processes import free_port
from tests.support.redirector import BLOB_HOST, EVERY_BLOB, Redirector
from tests.support.registry import DistributionRegistry, RegistryHTTP
from tests.support.sshreg_server import ClientKey, Tunnel
from tests.support.token_server import TokenServer

pytestmark = pytest.mark.integration

USERS = {"alice": "alice-secret", "bob": "b:o b"}  # a colon and a space in bob's password
TOKEN_PASSWORD_ENV = "SSHREG_TEST_TOKEN_UPSTREAM_PASSWORD"
BASIC_PASSWORD_ENV = "SSHREG_TEST_BASIC_UPSTREAM_PASSWORD"
GONE_TTL = 1  # seconds: the tag_ttl of the mirror whose upstream a test stops
MOVING_TTL = 5  # seconds: the tag_ttl of the mirror whose upstream tag a test moves
CONCURRENT_PULLS = 20
LARGE_LAYER = 200_000_000  # bytes of the one layer twenty tunnels pull at once
CONCURRENT_TIMEOUT = 300.0


@dataclass
class Upstreams:
    """The registries the mirrors pull from, for the whole module."""

    plain: DistributionRegistry  # anonymous: up.test, ttl.test
    hub: DistributionRegistry  # anonymous, Docker Hub names: hub.test, the default mirror
    tokens: TokenServer  # no anonymous access
    token: DistributionRegistry  # the token flow: tok.test (credentials), anon.test (none)
    basic: DistributionRegistry  # htpasswd: basic.test
    redirector: Redirector  # blob GETs of `token` sent to 127.0.0.2: redir.test
    corrupting: Redirector  # every blob of `plain` with its last byte flipped: bad.test
    gone_port: int  # where a test runs (and stops) an upstream of its own: gone.test

    def mirrors(self) -> list[dict[str, object]]:
        """The `[[mirror]]` tables of the module's sshreg."""
        return [
            {"prefix": "up.test", "upstream": self.plain.url},
            {"prefix": "hub.test", "upstream": self.hub.url, "default": True},
            {"prefix": "ttl.test", "upstream": self.plain.url, "tag_ttl": MOVING_TTL},
            {"prefix": "gone.test", "upstream": f"http://127.0.0.1:{self.gone_port}",
             "tag_ttl": GONE_TTL},
            {"prefix": "tok.test", "upstream": self.token.url, "username": "alice",
             "password_env": TOKEN_PASSWORD_ENV},
            {"prefix": "anon.test", "upstream": self.token.url},
            {"prefix": "basic.test", "upstream": self.basic.url, "username": "bob",
             "password_env": BASIC_PASSWORD_ENV},
            {"prefix": "redir.test", "upstream": self.redirector.url, "username": "alice",
             "password_env": TOKEN_PASSWORD_ENV},
            {"prefix": "bad.test", "upstream": self.corrupting.url},
        ]


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory) -> Iterator[Upstreams]:
    root = tmp_path_factory.mktemp("upstreams")
    with contextlib.ExitStack() as stack:
        plain = stack.enter_context(DistributionRegistry(root / "plain", debug=False))
        hub = stack.enter_context(DistributionRegistry(root / "hub", debug=False))
        tokens = stack.enter_context(TokenServer(root / "tokens", users=USERS, anonymous=False))
        token = stack.enter_context(DistributionRegistry(root / "token", auth="token",
                                                         token_server=tokens, debug=False))
        basic = stack.enter_context(DistributionRegistry(root / "basic", auth="htpasswd",
                                                         users=USERS, debug=False))
        redirector = stack.enter_context(Redirector(token.url))
        corrupting = stack.enter_context(Redirector(plain.url, corrupt={EVERY_BLOB}))
        yield Upstreams(plain, hub, tokens, token, basic, redirector, corrupting,
                        free_port(outside_ephemeral=True))


@pytest.fixture(scope="module")
def client_keys(tmp_path_factory) -> dict[str, ClientKey]:
    return generate_keys(tmp_path_factory.mktemp("mirror-keys"), ("alice",))


@pytest.fixture(scope="module", params=["filesystem", "s3"])
def deployment(request, tmp_path_factory, client_keys, upstreams) -> Iterator[Deployment]:
    """sshreg on each storage with two workers and every mirror of `upstreams`; the
    mirrors' passwords in its environment."""
    s3 = request.getfixturevalue("s3_server") if request.param == "s3" else None
    config = {"server": {"workers": 2}, "storage": {"part_size": "5MiB"},
              "mirror": upstreams.mirrors()}
    env = {TOKEN_PASSWORD_ENV: USERS["alice"], BASIC_PASSWORD_ENV: USERS["bob"]}
    with deploy(tmp_path_factory.mktemp(f"mirror-{request.param}"), request.param,
                client_keys, s3=s3, config=config, env=env) as running:
        yield running


@pytest.fixture
def containers(containers_env) -> Iterator[ContainersEnv]:
    """The session's podman/skopeo environment, emptied of images after each test."""
    yield containers_env
    containers_env.podman().remove_all_images()


@pytest.fixture
def skopeo(containers) -> Skopeo:
    return containers.skopeo()


# -- helpers -----------------------------------------------------------------------------


def upstream_image(tmp_path: Path, name: str, sizes: tuple[int, ...] = (200_000, 60_000)
                   ) -> Image:
    """A synthetic image of its own (`name` seeds its bytes) in a layout of its own."""
    return make_image(tmp_path / f"image-{name}", list(sizes), seed=f"mirror-clients-{name}",
                      tag="1")


def push(registry_url: str, repository: str, tag: str, image: Image, *,
         username: str | None = None) -> None:
    http = RegistryHTTP(registry_url, username=username,
                        password=USERS[username] if username else None)
    assert http.push_image(repository, tag, image) == image.digest


def copy_out(skopeo: Skopeo, tunnel: Tunnel, name: str, tag: str, destination: Path) -> str:
    """skopeo copy of `name:tag` through the tunnel into an OCI layout; the manifest digest."""
    return skopeo.copy(f"docker://{tunnel.registry}/{name}:{tag}", f"oci:{destination}:{tag}",
                       timeout=120)


def copy_fails(skopeo: Skopeo, source: str, destination: str) -> str:
    """What skopeo says when the copy fails (it must)."""
    result = skopeo.run("copy", "--quiet", "--src-tls-verify=false",
                        "--dest-tls-verify=false", source, destination, check=False,
                        timeout=120)
    assert result.returncode != 0, f"skopeo copy succeeded:\n{result.stdout}"
    return result.stderr


def assert_same_blobs(layout: Path, image: Image) -> None:
    """`layout` holds exactly the image's manifest, config and layers, byte for byte."""
    assert layout_blobs(layout) == layout_blobs(image.layout)
    for digest in layout_blobs(image.layout):
        copied = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
        assert copied.read_bytes() == image.blob_path(digest).read_bytes(), digest


def all_blobs(image: Image) -> list[str]:
    return image.blob_digests


def blob_stored(deployment: Deployment, digest: str) -> bool:
    """Whether sshreg published a blob record for `digest` (on its storage, seen from
    outside the process)."""
    if deployment.store is not None:
        return deployment.store.blob_object(digest) is not None
    record = paths.blob_record(Digest.parse(digest))
    return (Path(deployment.server.storage) / record).is_file()


def fetched_once_each(image: Image) -> dict[str, int]:
    return dict.fromkeys(all_blobs(image), 1)


# -- skopeo, docker, podman, ctr ---------------------------------------------------------


def test_skopeo_copies_an_image_by_prefix_byte_for_byte_and_a_second_copy_fetches_no_blob(
        deployment, upstreams, skopeo, tmp_path):
    image = upstream_image(tmp_path, "skopeo")
    push(upstreams.plain.url, "library/app", "1", image)
    since = upstreams.plain.log_offset()
    with deployment.tunnel() as tunnel:
        assert copy_out(skopeo, tunnel, "up.test/library/app", "1",
                        tmp_path / "first") == image.digest
    assert_same_blobs(tmp_path / "first", image)
    assert upstreams.plain.blob_fetches("library/app", since=since) == fetched_once_each(image)
    assert all(blob_stored(deployment, digest) for digest in all_blobs(image))

    with deployment.tunnel() as other:  # another tunnel, another connection (maybe worker)
        assert copy_out(skopeo, other, "up.test/library/app", "1",
                        tmp_path / "second") == image.digest
    assert_same_blobs(tmp_path / "second", image)
    assert upstreams.plain.blob_fetches("library/app", since=since) == fetched_once_each(image)


def test_docker_pulls_by_prefix_the_image_id_and_repo_digest_the_upstream_holds(
        deployment, upstreams, docker: Docker, tmp_path):
    image = upstream_image(tmp_path, "docker")
    push(upstreams.plain.url, "library/docker-app", "1", image)
    since = upstreams.plain.log_offset()
    with deployment.tunnel() as tunnel:
        repository = f"{tunnel.registry}/up.test/library/docker-app"
        assert docker.pull(f"{repository}:1") == image.digest
        assert docker.image_id(f"{repository}:1") == image.image_id
        assert docker.repo_digest(f"{repository}:1", repository) == image.digest
        assert docker.diff_ids(f"{repository}:1") == [layer.diff_id for layer in image.layers]
    assert upstreams.plain.blob_fetches("library/docker-app", since=since) == \
        fetched_once_each(image)


def test_docker_registry_mirrors_pull_a_docker_hub_name_through_the_default_mirror(
        deployment, upstreams, tmp_path):
    image = upstream_image(tmp_path, "registry-mirrors")
    push(upstreams.hub.url, "library/app", "1", image)
    since = upstreams.hub.log_offset()
    port = free_port(outside_ephemeral=True)  # chosen before dockerd, which is told it
    with Dockerd(tmp_path / "dockerd", registry_mirrors=[f"http://127.0.0.1:{port}"]) as daemon, \
            deployment.tunnel(port=port) as tunnel:
        docker = daemon.client()
        assert docker.pull("library/app:1") == image.digest
        assert docker.image_id("library/app:1") == image.image_id
        assert f"app@{image.digest}" in docker.repo_digests("library/app:1")
        assert docker.diff_ids("library/app:1") == [layer.diff_id for layer in image.layers]
        assert upstreams.hub.blob_fetches("library/app", since=since) == \
            fetched_once_each(image)
        # Stored under the default mirror's prefix: served from there with no blob fetched.
        http = RegistryHTTP(tunnel.url)
        assert http.manifest("hub.test/library/app", "1").digest == image.digest
        assert http.blob("hub.test/library/app", image.config.digest).body == \
            image.config_bytes()
    assert upstreams.hub.blob_fetches("library/app", since=since) == fetched_once_each(image)


def test_ctr_pulls_a_docker_hub_index_through_a_hosts_toml_mirror_that_gets_ns_docker_io(
        deployment, upstreams, containerd: Containerd, tmp_path):
    index = make_multiarch_image(tmp_path / "image-ctr", [150_000, 40_000],
                                 seed="mirror-clients-ctr", tag="2")
    push(upstreams.hub.url, "library/app", "2", index)
    since = upstreams.hub.log_offset()
    port = free_port(outside_ephemeral=True)
    hosts = tmp_path / "hosts"
    (hosts / "docker.io").mkdir(parents=True)
    (hosts / "docker.io" / "hosts.toml").write_text(
        'server = "https://registry-1.docker.io"\n\n'
        f'[host."http://127.0.0.1:{port}"]\n  capabilities = ["pull", "resolve"]\n')
    ctr = containerd.client(unique("mirror"))
    with deployment.tunnel(port=port):
        pulled = ctr.pull("docker.io/library/app:2", plain_http=False, all_platforms=True,
                          hosts_dir=hosts, http_dump=True, timeout=180)
    blobs = [digest for image in index.images for digest in image.blob_digests]
    assert ctr.image_digest("docker.io/library/app:2") == index.digest
    assert ctr.content_digests() == {index.digest, *(i.digest for i in index.images), *blobs}
    # containerd names the registry it mirrors in every request (the index by tag, each
    # platform's manifest by digest, the blobs); the mirror answered them all.
    dump = pulled.stdout + pulled.stderr
    asked = ["manifests/2", *(f"manifests/{i.digest}" for i in index.images),
             *(f"blobs/{digest}" for digest in blobs)]
    for path in asked:
        assert f"/v2/library/app/{path}?ns=docker.io" in dump, (path, dump[-3000:])
    assert upstreams.hub.blob_fetches("library/app", since=since) == dict.fromkeys(blobs, 1)


def test_podman_pulls_by_prefix_the_image_the_upstream_holds(deployment, upstreams, containers,
                                                              tmp_path):
    image = upstream_image(tmp_path, "podman")
    push(upstreams.plain.url, "library/podman-app", "1", image)
    podman = containers.podman()
    with deployment.tunnel() as tunnel:
        reference = f"{tunnel.registry}/up.test/library/podman-app:1"
        assert podman.pull(reference) == image.image_id
        assert podman.digest(reference) == image.digest


# -- upstream authentication and redirects ------------------------------------------------


def test_a_token_flow_upstream_is_pulled_with_the_mirrors_credentials(
        deployment, upstreams, skopeo, tmp_path):
    image = upstream_image(tmp_path, "token")
    push(upstreams.token.url, "library/app", "1", image, username="alice")
    issued = len(upstreams.tokens.requests)
    with deployment.tunnel() as tunnel:
        assert copy_out(skopeo, tunnel, "tok.test/library/app", "1",
                        tmp_path / "copy") == image.digest
    assert_same_blobs(tmp_path / "copy", image)
    asked = upstreams.tokens.requests[issued:]
    assert asked and {(r.account, r.status) for r in asked} == {("alice", 200)}
    assert all(r.scopes == ("repository:library/app:pull",) for r in asked)


def test_without_credentials_a_token_flow_upstream_fails_the_pull_with_503_unavailable(
        deployment, upstreams, skopeo, tmp_path):
    image = upstream_image(tmp_path, "anonymous")
    push(upstreams.token.url, "library/private", "1", image, username="alice")
    with deployment.tunnel() as tunnel:
        said = copy_fails(skopeo, f"docker://{tunnel.registry}/anon.test/library/private:1",
                          f"oci:{tmp_path / 'copy'}:1")
        # skopeo words a 503 by its status alone; the body is the registry's UNAVAILABLE.
        assert "reading manifest 1 in" in said and "503 Service Unavailable" in said, said
        answer = RegistryHTTP(tunnel.url).call(
            "GET", "/v2/anon.test/library/private/manifests/1")
    assert answer.status == 503 and answer.error_codes() == ["UNAVAILABLE"], answer
    assert "refused our credentials" in answer.body.decode(), answer.body
    deployment.server.wait_for_log(
        "GET /v2/anon.test/library/private/manifests/1 -> 503 UNAVAILABLE")
    assert not any(blob_stored(deployment, digest) for digest in all_blobs(image))


def test_an_htpasswd_upstream_is_pulled_with_basic_credentials(deployment, upstreams, skopeo,
                                                                tmp_path):
    image = upstream_image(tmp_path, "htpasswd")
    push(upstreams.basic.url, "library/app", "1", image, username="bob")
    since = upstreams.basic.log_offset()
    with deployment.tunnel() as tunnel:
        assert copy_out(skopeo, tunnel, "basic.test/library/app", "1",
                        tmp_path / "copy") == image.digest
    assert_same_blobs(tmp_path / "copy", image)
    assert upstreams.basic.blob_fetches("library/app", since=since) == fetched_once_each(image)


def test_a_redirected_blob_is_pulled_and_the_blob_host_gets_no_authorization(
        deployment, upstreams, skopeo, tmp_path):
    image = upstream_image(tmp_path, "redirect")
    push(upstreams.token.url, "library/redirected", "1", image, username="alice")
    proxy = upstreams.redirector
    seen = len(proxy.blob_requests)
    with deployment.tunnel() as tunnel:
        assert copy_out(skopeo, tunnel, "redir.test/library/redirected", "1",
                        tmp_path / "copy") == image.digest
    assert_same_blobs(tmp_path / "copy", image)
    sent = proxy.blob_requests[seen:]
    assert sorted(r.digest for r in sent) == sorted(all_blobs(image))  # each one redirected
    assert all(r.status == 200 for r in sent)
    assert [r.authorization for r in sent] == [None] * len(sent), f"{BLOB_HOST} got credentials"


def test_a_corrupting_upstream_fails_skopeos_pull_and_stores_nothing_for_its_blobs(
        deployment, upstreams, skopeo, tmp_path):
    image = upstream_image(tmp_path, "corrupt")
    push(upstreams.plain.url, "library/bad", "1", image)
    before = dict(upstreams.corrupting.corrupted)
    with deployment.tunnel() as tunnel:
        said = copy_fails(skopeo, f"docker://{tunnel.registry}/bad.test/library/bad:1",
                          f"oci:{tmp_path / 'copy'}:1")
    # A blob whose fill failed before its answer began is a 503; one being streamed is cut
    # short of its last byte, which waits for the digest check.
    assert ("503" in said and "Service Unavailable" in said) or "unexpected EOF" in said, said
    # skopeo gives up at the first bad blob: those the upstream sent corrupted are checked.
    sent_bad = [d for d in all_blobs(image)
                if upstreams.corrupting.corrupted[d] > before.get(d, 0)]
    assert sent_bad, said
    for digest in sent_bad:
        deployment.server.wait_for_log(f"fill of bad.test/library/bad@{digest} failed: "
                                       f"upstream bytes do not match {digest}: nothing stored")
        assert not blob_stored(deployment, digest), digest


# -- tags: stale and moved ---------------------------------------------------------------


def test_a_pulled_tag_is_served_stale_once_the_upstream_is_gone_and_its_ttl_passed(
        deployment, upstreams, skopeo, tmp_path):
    image = upstream_image(tmp_path, "stale")
    with DistributionRegistry(tmp_path / "gone", port=upstreams.gone_port,
                              debug=False) as gone, deployment.tunnel() as tunnel:
        push(gone.url, "library/app", "1", image)
        assert copy_out(skopeo, tunnel, "gone.test/library/app", "1",
                        tmp_path / "before") == image.digest
    stale = deployment.server.metric("sshreg_mirror_stale_total", mirror="gone.test")
    served_stale = "mirror gone.test: serving gone.test/library/app:1 as stored, not checked"
    assert served_stale not in deployment.server.log()  # within the ttl: upstream not asked
    time.sleep(GONE_TTL + 0.5)  # past the tag's ttl: the next look asks the (gone) upstream
    with deployment.tunnel() as tunnel:
        reference = f"docker://{tunnel.registry}/gone.test/library/app:1"
        assert skopeo.inspect(reference)["Digest"] == image.digest
        assert copy_out(skopeo, tunnel, "gone.test/library/app", "1",
                        tmp_path / "after") == image.digest
    assert_same_blobs(tmp_path / "after", image)
    deployment.server.wait_for_log(served_stale)
    assert deployment.server.metric("sshreg_mirror_stale_total", mirror="gone.test") > stale


def test_a_tag_moved_upstream_is_seen_after_its_ttl_and_not_before(deployment, upstreams,
                                                                    skopeo, tmp_path):
    first = upstream_image(tmp_path, "moving-first")
    second = upstream_image(tmp_path, "moving-second")
    repository = unique("library/moving")
    push(upstreams.plain.url, repository, "1", first)
    with deployment.tunnel() as tunnel:
        reference = f"docker://{tunnel.registry}/ttl.test/{repository}:1"
        started = time.monotonic()
        assert skopeo.inspect(reference)["Digest"] == first.digest
        checked = time.monotonic()  # the mirror asked upstream before this
        push(upstreams.plain.url, repository, "1", second)
        within = skopeo.inspect(reference)["Digest"]
        elapsed = time.monotonic() - started
        assert elapsed < MOVING_TTL, f"the second look ended {elapsed:.1f}s in: past the ttl"
        assert within == first.digest  # within the ttl: as stored, upstream not asked
        time.sleep(max(0.0, checked + MOVING_TTL + 0.5 - time.monotonic()))
        assert skopeo.inspect(reference)["Digest"] == second.digest
        assert copy_out(skopeo, tunnel, f"ttl.test/{repository}", "1",
                        tmp_path / "moved") == second.digest
    assert_same_blobs(tmp_path / "moved", second)


# -- read-only prefixes ------------------------------------------------------------------


def test_pushing_under_a_mirror_prefix_fails_with_405_unsupported(deployment, upstreams, skopeo,
                                                                   tmp_path):
    image = upstream_image(tmp_path, "push")
    since = upstreams.plain.log_offset()
    with deployment.tunnel() as tunnel:
        said = copy_fails(skopeo, f"oci:{image.layout}:1",
                          f"docker://{tunnel.registry}/up.test/x:1")
    assert "unsupported: pushing to a mirror is unsupported" in said, said
    deployment.server.wait_for_log("POST /v2/up.test/x/blobs/uploads/ -> 405 UNSUPPORTED")
    assert not [e for e in upstreams.plain.access_log(since) if e.method in ("POST", "PUT",
                                                                              "PATCH")]


# -- many pulls at once ------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_image(tmp_path_factory) -> Image:
    return make_image(tmp_path_factory.mktemp("large") / "image", [LARGE_LAYER],
                      seed="mirror-clients-large", tag="1", gzip_level=0)


def test_twenty_tunnels_pulling_one_large_image_at_once_cause_one_upstream_fetch_per_blob(
        deployment, upstreams, large_image, containers, tmp_path):
    image = large_image
    push(upstreams.plain.url, "library/large", "1", image)
    since = upstreams.plain.log_offset()
    received = deployment.server.metric("sshreg_mirror_upstream_bytes_total", mirror="up.test")
    skopeo = containers.skopeo()
    server = deployment.server
    copies = [tmp_path / f"copy-{i}" for i in range(CONCURRENT_PULLS)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with contextlib.ExitStack() as stack:
            tunnels = [stack.enter_context(deployment.tunnel()) for _ in copies]
            by_worker = server.clients_by_worker()
            assert len(by_worker) == 2 and all(by_worker.values()), by_worker  # both take some
            for tunnel, copy in zip(tunnels, copies, strict=True):
                command = skopeo.command(
                    "copy", "--quiet", "--src-tls-verify=false",
                    f"--digestfile={copy}.digest",
                    f"docker://{tunnel.registry}/up.test/library/large:1", f"oci:{copy}:1")
                with open(f"{copy}.log", "wb") as log:
                    processes.append(subprocess.Popen(command, env=containers.env(),
                                                      stdin=subprocess.DEVNULL, stdout=log,
                                                      stderr=subprocess.STDOUT))
            deadline = time.monotonic() + CONCURRENT_TIMEOUT
            codes = [p.wait(max(1.0, deadline - time.monotonic())) for p in processes]
        failed = {i: Path(f"{copies[i]}.log").read_text() for i, c in enumerate(codes) if c}
        assert not failed, failed
        assert upstreams.plain.blob_fetches("library/large", since=since) == \
            fetched_once_each(image)
        size = sum(layout_blobs(image.layout)[d] for d in all_blobs(image))
        assert server.metric("sshreg_mirror_upstream_bytes_total",
                             mirror="up.test") - received == size
        expected = layout_blobs(image.layout)
        for copy in copies:
            assert Path(f"{copy}.digest").read_text().strip() == image.digest
            assert layout_blobs(copy) == expected
            verify_layout(copy)  # every blob's bytes hash to its name
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        for copy in copies:
            shutil.rmtree(copy, ignore_errors=True)  # 200 MB each
