"""The upstreams a pull-through cache's tests pull from work as real ones do.

distribution 2.8 behind a Docker-Hub-like token server, behind htpasswd, and behind a proxy
that redirects blob downloads to another host or corrupts them: each is checked with
`RegistryHTTP` (and skopeo, a real client, for the token mode), so that a failing mirror test
means the mirror, not its fixtures.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.hashing import sha256
from tests.support.images import Image, make_image
from tests.support.podman import ContainersEnv
from tests.support.redirector import BLOB_HOST, EVERY_BLOB, Redirector
from tests.support.registry import (
    MANIFEST_ACCEPT,
    DistributionRegistry,
    RegistryHTTP,
)
from tests.support.token_server import TokenServer

pytestmark = pytest.mark.integration

USERS = {"alice": "alice-secret", "bob": "b:o b"}  # a colon and a space in a password
REPO = "library/app"
MANIFEST = {"Accept": MANIFEST_ACCEPT}


@pytest.fixture
def image(tmp_path: Path) -> Image:
    return make_image(tmp_path / "image", [1000, 300_000], seed="upstream-support")


@pytest.fixture
def tokens(tmp_path: Path) -> Iterator[TokenServer]:
    with TokenServer(tmp_path / "tokens", users=USERS) as server:
        yield server


@pytest.fixture
def token_registry(tmp_path: Path, tokens: TokenServer) -> Iterator[DistributionRegistry]:
    with DistributionRegistry(tmp_path / "registry", auth="token", token_server=tokens,
                              debug=False) as registry:
        yield registry


@pytest.fixture
def plain_registry(tmp_path: Path) -> Iterator[DistributionRegistry]:
    with DistributionRegistry(tmp_path / "plain", debug=False) as registry:
        yield registry


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    def decode(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    header, claims, signature = token.split(".")
    return json.loads(decode(header)), json.loads(decode(claims)), decode(signature)


def raw_get(url: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One GET that does not follow redirects; the caller reads and closes the answer."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                       headers=headers or {})
    return connection.getresponse()


# -- token mode ------------------------------------------------------------------------


def test_token_mode_pushes_with_credentials_and_pulls_anonymously(
        token_registry: DistributionRegistry, tokens: TokenServer, image: Image) -> None:
    pusher = RegistryHTTP(token_registry.url, username="alice", password="alice-secret")
    assert pusher.push_image(REPO, "1", image) == image.digest

    anonymous = RegistryHTTP(token_registry.url)
    assert anonymous.manifest(REPO, "1").digest == image.digest
    assert all(anonymous.blob(REPO, d).digest == d for d in image.blob_digests)
    refused = anonymous.call("POST", f"/v2/{REPO}/blobs/uploads/", b"")
    assert refused.status == 401
    assert 'error="insufficient_scope"' in refused.headers["Www-Authenticate"]

    no_token = raw_get(token_registry.url + "/v2/")
    no_token.read()
    assert no_token.status == 401
    assert no_token.headers["WWW-Authenticate"] == (
        f'Bearer realm="{tokens.realm}",service="{tokens.service}"')

    wrong = RegistryHTTP(token_registry.url, username="alice", password="wrong")
    assert wrong.call("GET", f"/v2/{REPO}/manifests/1", headers=MANIFEST).status == 401
    assert tokens.requests[-1].status == 401


def test_tokens_carry_the_claims_distribution_checks_and_a_client_can_cache_them(
        token_registry: DistributionRegistry, tokens: TokenServer, image: Image) -> None:
    RegistryHTTP(token_registry.url, username="bob", password="b:o b").push_image(REPO, "1", image)
    issued = tokens.tokens_issued

    client = RegistryHTTP(token_registry.url, username="bob", password="b:o b")
    client.manifest(REPO, "1")
    for digest in image.blob_digests:
        client.blob(REPO, digest)
    assert tokens.tokens_issued == issued + 1  # one token for the whole pull

    answer = RegistryHTTP(tokens.url).call(
        "GET", f"/token?service={tokens.service}&scope=repository:{REPO}:pull,push"
        f"&scope=repository:other/repo:pull",
        headers={"Authorization": "Basic " + base64.b64encode(b"bob:b:o b").decode()})
    document = json.loads(answer.body)
    assert document["token"] == document["access_token"]
    assert document["expires_in"] == 300 and document["issued_at"].endswith("Z")
    header, claims, signature = jwt_parts(document["token"])
    assert header["alg"] == "ES256" and header["typ"] == "JWT" and len(header["x5c"]) == 1
    assert len(signature) == 64  # JOSE's r||s, not DER
    assert claims["iss"] == tokens.issuer and claims["aud"] == tokens.service
    assert claims["sub"] == "bob" and claims["nbf"] <= claims["iat"] < claims["exp"]
    assert claims["access"] == [
        {"type": "repository", "name": REPO, "actions": ["pull", "push"]},
        {"type": "repository", "name": "other/repo", "actions": ["pull"]}]


def test_without_anonymous_access_only_credentials_pull(tmp_path: Path, image: Image) -> None:
    with TokenServer(tmp_path / "tokens", users=USERS, anonymous=False) as tokens, \
            DistributionRegistry(tmp_path / "registry", auth="token", token_server=tokens,
                                 debug=False) as registry:
        RegistryHTTP(registry.url, username="alice",
                     password="alice-secret").push_image(REPO, "1", image)
        refused = RegistryHTTP(registry.url).call("GET", f"/v2/{REPO}/manifests/1",
                                                  headers=MANIFEST)
        assert refused.status == 401
        assert refused.error_codes() == ["UNAUTHORIZED"]
        assert RegistryHTTP(registry.url, username="alice",
                            password="alice-secret").manifest(REPO, "1").digest == image.digest


def test_skopeo_pulls_from_the_token_mode_with_and_without_credentials(
        token_registry: DistributionRegistry, image: Image, containers_env: ContainersEnv,
        tmp_path: Path) -> None:
    RegistryHTTP(token_registry.url, username="alice",
                 password="alice-secret").push_image(REPO, "1", image)
    containers_env.add_insecure(token_registry.address)
    skopeo = containers_env.skopeo()
    reference = f"docker://{token_registry.address}/{REPO}:1"

    inspected = json.loads(skopeo.run("inspect", "--tls-verify=false", "--creds",
                                      "alice:alice-secret", reference).stdout)
    assert inspected["Digest"] == image.digest
    assert skopeo.inspect(reference)["Digest"] == image.digest  # anonymous pull scope
    copied = skopeo.copy(reference, f"oci:{tmp_path / 'copy'}:1",
                         extra=["--src-creds", "alice:alice-secret"])
    assert copied == image.digest


# -- htpasswd mode -----------------------------------------------------------------------


def test_htpasswd_mode_needs_the_right_password(tmp_path: Path, image: Image) -> None:
    with DistributionRegistry(tmp_path / "registry", auth="htpasswd", users=USERS,
                              debug=False) as registry:
        assert RegistryHTTP(registry.url, username="bob",
                            password="b:o b").push_image(REPO, "1", image) == image.digest
        anonymous = RegistryHTTP(registry.url).call("GET", f"/v2/{REPO}/manifests/1",
                                                    headers=MANIFEST)
        assert anonymous.status == 401
        assert anonymous.headers["Www-Authenticate"].startswith("Basic realm=")
        wrong = RegistryHTTP(registry.url, username="bob", password="b:o")
        assert wrong.call("GET", f"/v2/{REPO}/manifests/1", headers=MANIFEST).status == 401
        reader = RegistryHTTP(registry.url, username="alice", password="alice-secret")
        assert reader.manifest(REPO, "1").digest == image.digest


# -- redirects and corruption ------------------------------------------------------------


def test_blob_gets_are_redirected_to_another_host_that_gets_no_credentials(
        token_registry: DistributionRegistry, image: Image) -> None:
    with Redirector(token_registry.url) as proxy:
        client = RegistryHTTP(proxy.url, username="alice", password="alice-secret")
        assert client.push_image(REPO, "1", image) == image.digest  # uploads go through
        layer = image.layers[-1].digest
        since = token_registry.log_offset()

        unauthorized = raw_get(f"{proxy.url}/v2/{REPO}/blobs/{layer}")
        unauthorized.read()
        assert unauthorized.status == 401  # the registry's own answer, not a redirect
        assert unauthorized.headers["WWW-Authenticate"].startswith("Bearer realm=")

        fetched = client.blob(REPO, layer)  # follows the 307
        assert fetched.digest == layer and fetched.docker_digest == layer
        redirect = [r for r in proxy.requests if r.redirected]
        assert len(redirect) == 1 and redirect[0].status == 307
        assert proxy.blob_authorizations() == [None]
        assert proxy.blob_fetches == {layer: 1}
        assert token_registry.blob_fetches(REPO, since=since) == {layer: 1}

        answer = raw_get(f"{proxy.url}/v2/{REPO}/blobs/{layer}",
                         {"Authorization": f"Bearer {client._tokens[REPO]}"})
        answer.read()
        location = urllib.parse.urlsplit(answer.headers["Location"])
        assert answer.status == 307 and location.hostname == BLOB_HOST
        assert location.port == proxy.blob_port and location.path == f"/blobs/{layer}"
        forged = raw_get(f"{proxy.blob_url}/blobs/{layer}?repository={REPO}&ticket=forged")
        forged.read()
        assert forged.status == 403


@pytest.mark.parametrize("redirect", [True, False])
def test_a_corrupted_blob_keeps_its_length_and_headers_with_one_byte_flipped(
        plain_registry: DistributionRegistry, image: Image, redirect: bool) -> None:
    RegistryHTTP(plain_registry.url).push_image(REPO, "1", image)
    layer = image.layers[-1].digest
    original = image.blob_path(layer).read_bytes()
    with Redirector(plain_registry.url, redirect=redirect, corrupt={layer}) as proxy:
        client = RegistryHTTP(proxy.url)
        bad = client.blob(REPO, layer)
        assert len(bad.body) == len(original) and bad.digest != layer
        assert bad.docker_digest == layer  # the header still names the true digest
        assert [i for i, (a, b) in enumerate(zip(bad.body, original, strict=True)) if a != b] \
            == [len(original) - 1]
        assert client.blob(REPO, image.config.digest).digest == image.config.digest

        proxy.corrupt = {EVERY_BLOB}
        proxy.corrupt_offset = 0
        first = client.blob(REPO, image.config.digest).body
        assert first[0] != image.config_bytes()[0] and first[1:] == image.config_bytes()[1:]
        assert proxy.corrupted == {layer: 1, image.config.digest: 1}
        assert sha256(client.manifest(REPO, "1").body) == image.digest  # only blobs


# -- counting fetches --------------------------------------------------------------------


def test_the_access_log_counts_each_blob_get_that_was_served(
        plain_registry: DistributionRegistry, image: Image) -> None:
    client = RegistryHTTP(plain_registry.url)
    client.push_image(REPO, "1", image)
    assert plain_registry.blob_fetches() == {}  # a push only HEADs blobs
    since = plain_registry.log_offset()
    for _ in range(3):
        client.manifest(REPO, "1")
        for digest in image.blob_digests:
            client.blob(REPO, digest)
            assert client.has_blob(REPO, digest)
    assert client.call("GET", f"/v2/{REPO}/blobs/sha256:{'0' * 64}").status == 404

    assert plain_registry.blob_fetches(REPO) == {d: 3 for d in image.blob_digests}
    assert plain_registry.blob_fetches("other/repo") == {}
    client.blob(REPO, image.config.digest)
    assert plain_registry.blob_fetches(since=since)[image.config.digest] == 4
    last = plain_registry.access_log()[-1]
    assert (last.method, last.path, last.status) == (
        "GET", f"/v2/{REPO}/blobs/{image.config.digest}", 200)
