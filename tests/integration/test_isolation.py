"""Cross-tenant isolation: a key limited to `a/*` learns nothing about `b/*`.

Tenant b pushes images, a referrer, an untagged manifest and leaves an upload session open.
Key a then tries every way in: by tag, by digest, by mount with and without `from`, through
`_catalog` (every page), referrers, tags/list, b's upload session URLs, manifests that name
b's blobs, and the management commands (`repos`, `tags`, `inspect`, `du`, `rm`, `gc`).

Two properties are checked on every answer:
- no leak: no name, tag, digest or byte of b appears in a body or a header (Location and
  Link included) unless the request itself carried it;
- no oracle: the same probe aimed at something of b that exists and at something that does
  not gives the same status, the same body and headers (up to the names it was given and
  fresh session ids), and the same sequence of storage calls, so neither the answer nor
  its timing tells a that b's thing exists.

HTTP-level on both storages; then the management commands and the catalog once more through
real ssh.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import RawTestServer, TestClient

from sshreg.access import Identity, Rights
from sshreg.management.commands import Management
from sshreg.management.gc import GarbageCollector, GcSettings
from sshreg.oci import OCI_INDEX, OCI_MANIFEST
from sshreg.registry.app import Registry
from sshreg.registry.settings import RegistrySettings
from sshreg.store.registry_store import RegistryStore
from tests.conftest import IDENTITIES, TEST_IDENTITY_HEADER
from tests.http.helpers_api import (
    descriptor,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
)
from tests.support.hashing import digest_of

TENANTS = {
    **IDENTITIES,
    "a": Identity("SHA256:tenant-a", "a@test", Rights(pull=("a/*",), push=("a/*",),
                                                      delete=("a/*",))),
    "b": Identity("SHA256:tenant-b", "b@test", Rights(pull=("b/*",), push=("b/*",),
                                                      delete=("b/*",))),
    "b2": Identity("SHA256:tenant-b-other-key", "b2@test", Rights(pull=("b/*",), push=("b/*",))),
    "admin-a": Identity("SHA256:admin-of-a", "admin-a@test", Rights(pull=("a/*",), admin=True)),
}
UNKNOWN = digest_of(b"nothing of anyone's")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def as_(identity: str) -> dict[str, str]:
    return {TEST_IDENTITY_HEADER: identity}


class CountingDriver:
    """A driver that records the name of every storage call, in order."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return value(*args, **kwargs)

        return call


@dataclass
class Tenants:
    client: TestClient
    registry: Registry
    driver: CountingDriver
    management: Management
    secrets: dict[str, str]  # what of b's must never reach a, by what it is
    layer: bytes
    upload: str  # b's open upload session

    def leaked(self, text: str, asked: str = "") -> list[str]:
        """The secrets in `text` that `asked` (the request) did not carry itself."""
        return [name for name, value in self.secrets.items()
                if value in text and value not in asked]


@pytest.fixture
async def tenants(driver) -> AsyncIterator[Tenants]:
    counting = CountingDriver(driver)
    store = RegistryStore(counting)  # type: ignore[arg-type]
    registry = Registry(store, RegistrySettings(),
                        identify=lambda request: TENANTS.get(
                            request.headers.get(TEST_IDENTITY_HEADER, "full")))
    await registry.start()
    collector = GarbageCollector(store, GcSettings(grace=0, safety=0))
    async with TestClient(RawTestServer(registry.handle)) as client:
        await push_image(client, "a/app", "1", seed="a")
        image = await push_image(client, "b/app", "secret-tag", seed="b")
        await push_image(client, "b/private", "v1", seed="b-private")
        layer = next(b for b in image.blobs.values() if b.startswith(b"layer"))
        signature = image_manifest(descriptor("application/vnd.oci.empty.v1+json", b"{}"), [],
                                   subject=image.descriptor, artifact_type="application/x-sig")
        await push_blob(client, "b/app", b"{}")
        resp = await client.put(f"/v2/b/app/manifests/{digest_of(signature)}", data=signature,
                                headers={"Content-Type": OCI_MANIFEST})
        assert resp.status == 201
        untagged = await push_image(client, "b/app", seed="b-untagged")
        upload = (await client.post("/v2/b/app/blobs/uploads/", headers=as_("b"))).headers[
            "Location"]
        secrets = {
            "repository b/app": "b/app", "repository b/private": "b/private",
            "tag": "secret-tag", "manifest": image.digest, "signature": digest_of(signature),
            "untagged manifest": untagged.digest, "layer bytes": layer.decode(),
            **{f"blob {d}": d for d in image.blobs},
            "upload session": upload.rsplit("/", 1)[1],
        }
        yield Tenants(client, registry, counting, Management(store, collector), secrets,
                      layer, upload)
    await registry.close()


async def _probe(t: Tenants, method: str, path: str, identity: str = "a",
                 body: bytes = b"", headers: dict[str, str] | None = None
                 ) -> tuple[int, str, dict[str, str], list[str]]:
    """One request: status, body, headers and the storage calls it made; checked for leaks."""
    t.driver.calls.clear()
    resp = await t.client.request(method, path, data=body,
                                  headers={**as_(identity), **(headers or {})}, allow_redirects=False)
    text = await resp.text()
    calls = list(t.driver.calls)
    header_text = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
    asked = path + body.decode(errors="replace")
    assert not t.leaked(text + header_text, asked), (method, path, resp.status, text, header_text)
    kept = {k: v for k, v in resp.headers.items()
            if k.lower() not in ("date", "content-length", "server")}
    return resp.status, text, kept, calls


def _same_answer(secret: tuple[int, str, dict[str, str], list[str]],
                 ghost: tuple[int, str, dict[str, str], list[str]],
                 replace: dict[str, str]) -> None:
    """The answers to a probe of something of b's and of something that does not exist are
    the same, once what each request named itself is put back to a placeholder."""

    def normal(text: str) -> str:
        for value, placeholder in replace.items():
            text = text.replace(value, placeholder)
        return UUID.sub("<uuid>", text)

    s_status, s_body, s_headers, s_calls = secret
    g_status, g_body, g_headers, g_calls = ghost
    assert s_status == g_status, (secret, ghost)
    assert normal(s_body) == normal(g_body), (s_body, g_body)
    assert {k: normal(v) for k, v in s_headers.items()} == {
        k: normal(v) for k, v in g_headers.items()}
    assert s_calls == g_calls, "different storage work reveals existence"


# -- over HTTP ------------------------------------------------------------------------------

PROBES = [
    # (method, path template, body template): {repo}, {tag}, {digest} are b's or a ghost's.
    ("GET", "/v2/{repo}/manifests/{tag}", ""),
    ("HEAD", "/v2/{repo}/manifests/{tag}", ""),
    ("GET", "/v2/{repo}/manifests/{digest}", ""),
    ("HEAD", "/v2/{repo}/blobs/{digest}", ""),
    ("GET", "/v2/{repo}/blobs/{digest}", ""),
    ("GET", "/v2/{repo}/tags/list", ""),
    ("GET", "/v2/{repo}/tags/list?n=1&last={tag}", ""),
    ("GET", "/v2/{repo}/referrers/{digest}", ""),
    ("DELETE", "/v2/{repo}/manifests/{tag}", ""),
    ("DELETE", "/v2/{repo}/manifests/{digest}", ""),
    ("DELETE", "/v2/{repo}/blobs/{digest}", ""),
    ("PUT", "/v2/{repo}/manifests/{tag}", "{manifest}"),
    ("POST", "/v2/{repo}/blobs/uploads/", ""),
    # a's own repository, b's digests
    ("GET", "/v2/a/app/blobs/{digest}", ""),
    ("HEAD", "/v2/a/app/blobs/{digest}", ""),
    ("GET", "/v2/a/app/manifests/{digest}", ""),
    ("HEAD", "/v2/a/app/manifests/{digest}", ""),
    ("GET", "/v2/a/app/referrers/{digest}", ""),
    ("GET", "/v2/a/app/referrers/{digest}?artifactType=application/x-sig", ""),
    ("DELETE", "/v2/a/app/manifests/{digest}", ""),
    ("DELETE", "/v2/a/app/blobs/{digest}", ""),
    ("POST", "/v2/a/app/blobs/uploads/?mount={digest}&from={repo}", ""),
    ("POST", "/v2/a/app/blobs/uploads/?mount={digest}", ""),
    ("POST", "/v2/a/app/blobs/uploads/?mount={digest}&from=a/app", ""),
    ("PUT", "/v2/a/app/manifests/probe", "{manifest}"),
    ("PUT", "/v2/a/app/manifests/probe", "{index}"),
]


def _fill(template: str, repo: str, tag: str, digest: str) -> str:
    manifest = image_manifest({"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": digest, "size": 10},
                              [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                "digest": digest, "size": 10}], indent=None).decode()
    index = index_manifest([{"mediaType": OCI_MANIFEST, "digest": digest, "size": 10}]).decode()
    return (template.replace("{manifest}", manifest).replace("{index}", index)
            .replace("{repo}", repo).replace("{tag}", tag).replace("{digest}", digest))


@pytest.mark.parametrize("target", ["manifest", "layer", "signature", "untagged"])
async def test_every_probe_of_b_answers_as_if_b_did_not_exist(tenants, target):
    t = tenants
    digests = {"manifest": t.secrets["manifest"], "signature": t.secrets["signature"],
               "untagged": t.secrets["untagged manifest"],
               "layer": next(v for k, v in t.secrets.items() if k.startswith("blob ")
                             and v != digest_of(b"{}"))}
    digest = digests[target]
    for method, path, body in PROBES:
        headers = {"Content-Type": OCI_INDEX if "{index}" in body else OCI_MANIFEST}
        secret = await _probe(t, method, _fill(path, "b/app", "secret-tag", digest), "a",
                              _fill(body, "b/app", "secret-tag", digest).encode(), headers)
        ghost = await _probe(t, method, _fill(path, "b/ghost", "no-such-tag", UNKNOWN), "a",
                             _fill(body, "b/ghost", "no-such-tag", UNKNOWN).encode(), headers)
        _same_answer(secret, ghost, {"b/app": "<repo>", "b/ghost": "<repo>",
                                     "secret-tag": "<tag>", "no-such-tag": "<tag>",
                                     digest: "<digest>", UNKNOWN: "<digest>"})
    # Nothing of b's got into a's repository, and b's things are all still there.
    for key, value in t.secrets.items():
        if key.startswith("blob "):
            assert (await t.client.get(f"/v2/a/app/blobs/{value}", headers=as_("a"))).status == 404
            assert (await t.client.head(f"/v2/b/app/blobs/{value}", headers=as_("b"))).status == 200
    resp = await t.client.get("/v2/b/app/manifests/secret-tag", headers=as_("b"))
    assert resp.status == 200


async def test_the_catalog_shows_a_nothing_of_b_on_any_page(tenants):
    t = tenants
    names: list[str] = []
    url = "/v2/_catalog?n=1"
    while url:
        status, text, headers, _ = await _probe(t, "GET", url)
        assert status == 200
        names += json.loads(text)["repositories"]
        link = headers.get("Link")
        url = link[1:link.index(">")] if link else ""
    assert names == ["a/app"]
    for query in ("last=b", "last=b/app", "last=a/app", "n=100", "last=0"):
        status, text, _, _ = await _probe(t, "GET", f"/v2/_catalog?{query}")
        assert status == 200 and "b/" not in text.replace(query, "")


async def test_upload_sessions_of_another_key_are_unknown_and_stay_intact(tenants):
    t = tenants
    session = t.upload.rsplit("/", 1)[1]
    ghost = "00000000-0000-4000-8000-000000000000"
    blob = b"b's upload, finished by b alone"
    for identity, repo in (("a", "b/app"), ("a", "a/app"), ("b2", "b/app")):
        for method, query, body in (("GET", "", b""), ("PATCH", "", b"from a"),
                                    ("PUT", f"?digest={digest_of(b'x')}", b"x"),
                                    ("DELETE", "", b"")):
            secret = await _probe(t, method, f"/v2/{repo}/blobs/uploads/{session}{query}",
                                  identity, body)
            other = await _probe(t, method, f"/v2/{repo}/blobs/uploads/{ghost}{query}",
                                 identity, body)
            _same_answer(secret, other, {session: "<id>", ghost: "<id>"})
            assert secret[0] in (403, 404), (identity, repo, method, secret)
    # b's session was neither fed nor cancelled by any of that: b finishes it.
    resp = await t.client.patch(t.upload, data=blob, headers=as_("b"))
    assert resp.status == 202 and resp.headers["Range"] == f"0-{len(blob) - 1}"
    resp = await t.client.put(t.upload, params={"digest": digest_of(blob)}, headers=as_("b"))
    assert resp.status == 201
    assert (await t.client.get(f"/v2/b/app/blobs/{digest_of(blob)}", headers=as_("b"))).status == 200


# -- the management commands ------------------------------------------------------------------

COMMANDS = ["repos", "repos --json", "tags {repo}", "tags {repo} --json", "inspect {repo}:{tag}",
            "inspect {repo}@{digest}", "inspect a/app@{digest}", "du", "du --json", "du {repo}",
            "rm {repo}:{tag}", "rm {repo}@{digest}", "rm a/app@{digest}", "gc --dry-run",
            "gc --dry-run --json", "whoami"]


@pytest.mark.parametrize("identity", ["a", "admin-a"])
async def test_management_commands_show_a_nothing_of_b(tenants, identity):
    t = tenants
    who = TENANTS[identity]
    for template in COMMANDS:
        answers = []
        for repo, tag, digest in (("b/app", "secret-tag", t.secrets["manifest"]),
                                  ("b/ghost", "no-such-tag", UNKNOWN)):
            command = template.replace("{repo}", repo).replace("{tag}", tag).replace(
                "{digest}", digest)
            t.driver.calls.clear()
            result = await t.management.run(who, command)
            output = result.stdout + result.stderr
            assert not t.leaked(output, command), (identity, command, output)
            assert "Traceback" not in output
            normal = output
            for value, placeholder in ((repo, "<repo>"), (tag, "<tag>"), (digest, "<digest>")):
                normal = normal.replace(value, placeholder)
            answers.append((result.status, re.sub(r"[\d.]+ ?(s|KiB|B)\b", "<n>", normal),
                            list(t.driver.calls)))
        if not template.startswith("gc"):  # gc: the same command twice, only the leak matters
            assert answers[0] == answers[1], (identity, template, answers)
    # rm did nothing to b, and gc (as admin-a) removed b's garbage without naming it.
    resp = await t.client.get("/v2/b/app/manifests/secret-tag", headers=as_("b"))
    assert resp.status == 200


async def test_a_limited_admin_collects_everywhere_but_is_told_only_about_its_repositories(
        tenants):
    t = tenants
    await asyncio.sleep(1.1)  # gc counts what S3 dates to this very second as new
    result = await t.management.run(TENANTS["admin-a"], "gc --json")
    assert result.status == 0, result.stderr
    assert not t.leaked(result.stdout), result.stdout
    report = json.loads(result.stdout)
    assert report["blobs"] >= 1  # b's untagged manifest and its layer went
    resp = await t.client.get(f"/v2/b/app/manifests/{t.secrets['untagged manifest']}",
                              headers=as_("b"))
    assert resp.status == 404
    assert (await t.client.get("/v2/b/app/manifests/secret-tag", headers=as_("b"))).status == 200


# -- through real ssh ---------------------------------------------------------------------------


@pytest.mark.integration
def test_over_ssh_a_sees_nothing_of_b(tmp_path):
    from tests.support.images import make_image
    from tests.support.registry import RegistryHTTP
    from tests.support.sshreg_server import ClientKey, SshregServer

    (tmp_path / "keys").mkdir()
    keys = {n: ClientKey.generate(tmp_path / "keys", n) for n in ("a", "b", "admin")}
    server = SshregServer(tmp_path / "srv", config={"gc": {"grace": "0s", "safety": "0s"}})
    server.authorize(keys["a"].line('sshreg-pull="a/*",sshreg-push="a/*",sshreg-delete="a/*"'),
                     keys["b"].line('sshreg-pull="b/*",sshreg-push="b/*"'),
                     keys["admin"].line('sshreg-admin,sshreg-pull="a/*"'))
    server.start()
    try:
        image = make_image(tmp_path / "img", [3000], seed="b-over-ssh")
        with server.tunnel(keys["b"]) as tunnel:
            RegistryHTTP(tunnel.url).push_image("b/secret", "hidden", image)
        with server.tunnel(keys["a"]) as tunnel:
            RegistryHTTP(tunnel.url).push_image("a/app", "1",
                                                make_image(tmp_path / "a", [1000], seed="a"))
            catalog = _get(f"{tunnel.url}/v2/_catalog")
            assert json.loads(catalog) == {"repositories": ["a/app"]}
        secrets = ["b/secret", "hidden", image.digest, *(layer.digest for layer in image.layers)]
        for key, command in [(keys["a"], c) for c in (
                "repos", "du", "du --json", "tags b/secret", "inspect b/secret:hidden",
                f"inspect b/secret@{image.digest}", "rm b/secret:hidden", "gc --dry-run")] + [
                (keys["admin"], "gc --dry-run --json"), (keys["admin"], "repos")]:
            result = server.ssh(key, *command.split())
            output = result.stdout + result.stderr
            assert not [s for s in secrets if s in output and s not in command], (command, output)
        with server.tunnel(keys["b"]) as tunnel:
            assert RegistryHTTP(tunnel.url).manifest("b/secret", "hidden")
    finally:
        server.stop()


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=20) as response:
        return response.read()
