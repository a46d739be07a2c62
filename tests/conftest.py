"""Shared fixtures: storage drivers, the registry behind aiohttp's test server, identities."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient

from sshreg.access import Identity, Rights
from sshreg.registry.app import Registry, RegistrySettings
from sshreg.storage.filesystem import FilesystemDriver
from sshreg.storage.store import RegistryStore

# HTTP-level tests pick the caller's identity with this header; the registry itself only
# ever reads identities from the SSH bridge (see `identify_from_test_header`).
TEST_IDENTITY_HEADER = "X-Test-Identity"

IDENTITIES = {
    "full": Identity("SHA256:full-access-test-key", "full@test", Rights.full()),
    "reader": Identity("SHA256:read-only-test-key", "reader@test", Rights(pull=("**",))),
    "team": Identity("SHA256:team-test-key", "team@test",
                     Rights(pull=("team/*",), push=("team/*",), delete=("team/*",))),
}


def identify_from_test_header(request: web.BaseRequest) -> Identity | None:
    return IDENTITIES.get(request.headers.get(TEST_IDENTITY_HEADER, "full"))


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


@pytest.fixture(params=["filesystem"])
async def driver(request, tmp_path) -> AsyncIterator[FilesystemDriver]:
    """Every storage backend; tests using it run once per backend."""
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
