"""Manifests: PUT, GET, HEAD and DELETE by tag and by digest, in every media type."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
from aiohttp.test_utils import RawTestServer, TestClient

from sshreg.oci import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST
from sshreg.references import Digest
from sshreg.registry.app import Registry
from sshreg.store import paths
from sshreg.store.registry_store import RegistryStore
from tests.conftest import identify_from_test_header
from tests.support.hashing import digest_of

from .helpers_api import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_UNCOMPRESSED,
    UNKNOWN_DIGEST,
    assert_error,
    descriptor,
    error_detail,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
    push_index,
    put_manifest,
    raw_request,
    serving,
    tags_of,
)


async def get_manifest(client, name: str, reference: str, method: str = "GET"):
    return await client.request(method, f"/v2/{name}/manifests/{reference}")


async def assert_serves(client, name: str, reference: str, data: bytes, media_type: str) -> None:
    """GET returns the exact bytes; HEAD the same headers and no body. The ETag (what
    caches revalidate with) is the digest."""
    digest = digest_of(data)
    resp = await get_manifest(client, name, reference)
    assert resp.status == 200, await resp.text()
    assert await resp.read() == data
    assert resp.headers["Content-Type"] == media_type
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["ETag"] == f'"{digest}"'
    assert resp.headers["Content-Length"] == str(len(data))
    resp = await get_manifest(client, name, reference, "HEAD")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == media_type
    assert resp.headers["Docker-Content-Digest"] == digest
    assert resp.headers["ETag"] == f'"{digest}"'
    assert resp.headers["Content-Length"] == str(len(data))
    assert await resp.read() == b""


# -- push and pull ------------------------------------------------------------------------


async def test_oci_manifest_put_by_tag_is_201_and_served_by_tag_and_digest(client):
    image = await push_image(client, "app", "latest")
    await assert_serves(client, "app", "latest", image.manifest, OCI_MANIFEST)
    await assert_serves(client, "app", image.digest, image.manifest, OCI_MANIFEST)


async def test_manifest_put_answers_location_and_digest(client):
    config = await push_blob(client, "app", b"{}")
    data = image_manifest({"mediaType": OCI_CONFIG, "digest": config, "size": 2}, [])
    resp = await put_manifest(client, "app", "v1", data)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == digest_of(data)
    assert resp.headers["Location"] == f"/v2/app/manifests/{digest_of(data)}"
    assert "OCI-Subject" not in resp.headers


async def test_manifest_put_by_digest_is_201_and_creates_no_tag(client):
    image = await push_image(client, "app")
    await assert_serves(client, "app", image.digest, image.manifest, OCI_MANIFEST)
    assert await tags_of(client, "app") == []


async def test_docker_schema2_manifest_is_stored_and_served_as_docker(client):
    image = await push_image(client, "app", "docker", docker=True)
    assert image.media_type == DOCKER_MANIFEST
    await assert_serves(client, "app", "docker", image.manifest, DOCKER_MANIFEST)


@pytest.mark.parametrize(("docker", "media_type"), [(False, OCI_INDEX), (True, DOCKER_MANIFEST_LIST)])
async def test_index_of_pushed_manifests_is_stored_and_served(client, docker, media_type):
    amd = await push_image(client, "app", seed="amd64", docker=docker)
    arm = await push_image(client, "app", seed="arm64", docker=docker)
    index = await push_index(client, "app", [amd, arm], "multi", docker=docker)
    await assert_serves(client, "app", "multi", index.manifest, media_type)
    await assert_serves(client, "app", index.digest, index.manifest, media_type)


async def test_manifest_bytes_are_returned_exactly_as_sent(client):
    config = await push_blob(client, "app", b"{}")
    # Odd spacing, key order, unicode escapes, trailing newline: none may be normalized.
    data = (b'{ "layers":[ ],\n\t"schemaVersion" : 2 ,"config": {"size":2, "digest":"' + config.encode()
            + b'", "mediaType": "' + OCI_CONFIG.encode() + b'"},'
            + b'"annotations":{"k":"\\u00e9t\\u00e9"}, "mediaType":"' + OCI_MANIFEST.encode() + b'"}\n')
    resp = await put_manifest(client, "app", "odd", data)
    assert resp.status == 201
    await assert_serves(client, "app", "odd", data, OCI_MANIFEST)


async def test_manifest_without_content_type_takes_its_body_media_type(client):
    image = await push_image(client, "app", seed="x", docker=True)
    resp = await put_manifest(client, "app", "untyped", image.manifest, media_type=None)
    assert resp.status == 201
    resp = await get_manifest(client, "app", "untyped")
    assert resp.headers["Content-Type"] == DOCKER_MANIFEST


async def test_content_type_contradicting_the_manifest_is_400_manifest_invalid(client):
    image = await push_image(client, "app")
    resp = await put_manifest(client, "app", "wrong", image.manifest, DOCKER_MANIFEST)
    await assert_error(resp, 400, "MANIFEST_INVALID")


async def test_multiple_accept_header_lines_are_all_honoured(client):
    """docker sends one Accept line per media type; the manifest's type may be in any of them."""
    image = await push_image(client, "app", "latest")
    index = await push_index(client, "app", [image], "multi")
    accept = [("Accept", t) for t in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
                                      "application/vnd.docker.distribution.manifest.v1+prettyjws",
                                      "application/json", OCI_MANIFEST, OCI_INDEX)]
    for reference, data, media_type in (("latest", image.manifest, OCI_MANIFEST),
                                        ("multi", index.manifest, OCI_INDEX)):
        resp = await raw_request(client, "GET", f"/v2/app/manifests/{reference}", headers=accept)
        assert resp.status == 200
        assert resp.body == data
        assert resp.headers["Content-Type"] == media_type
        assert resp.headers["Docker-Content-Digest"] == digest_of(data)


async def test_manifest_is_served_whatever_the_accept_header_without_conversion(client):
    image = await push_image(client, "app", "latest", docker=True)
    resp = await client.get("/v2/app/manifests/latest", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == DOCKER_MANIFEST
    assert await resp.read() == image.manifest


async def test_uncompressed_layers_and_unusual_configs_are_accepted(client):
    """An empty `{}` config and a config that is itself a layer both occur in the wild."""
    empty = await push_blob(client, "app", b"{}")
    tar = await push_blob(client, "app", b"tar bytes" * 50)
    layers = [{"mediaType": OCI_LAYER_UNCOMPRESSED, "digest": tar, "size": 450}]
    for config in ({"mediaType": OCI_CONFIG, "digest": empty, "size": 2},
                   {"mediaType": OCI_LAYER_UNCOMPRESSED, "digest": tar, "size": 450}):
        data = image_manifest(config, layers)
        resp = await put_manifest(client, "app", digest_of(data), data)
        assert resp.status == 201, await resp.text()


async def test_manifest_with_no_layers_is_accepted(client):
    config = await push_blob(client, "app", b"{}")
    data = image_manifest({"mediaType": OCI_CONFIG, "digest": config, "size": 2}, [])
    assert (await put_manifest(client, "app", "empty", data)).status == 201


async def test_pushing_the_same_manifest_again_is_idempotent(client):
    image = await push_image(client, "app", "v1")
    resp = await put_manifest(client, "app", "v1", image.manifest)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == image.digest
    await assert_serves(client, "app", "v1", image.manifest, OCI_MANIFEST)


async def test_a_manifest_whose_bytes_were_lost_is_stored_again_by_its_next_push(
        client, registry, driver):
    """A record left pointing at bytes storage no longer has must not make the next PUT of
    the manifest a no-op: the PUT stores the bytes again, and a gateway that never cached
    the manifest serves it."""
    image = await push_image(client, "app", "v1")
    record = await registry.store.blobs.get(Digest.parse(image.digest))
    assert record is not None
    await driver.delete(record.key)  # the record is kept
    resp = await put_manifest(client, "app", "v1", image.manifest)
    assert resp.status == 201, await resp.text()
    other = Registry(RegistryStore(driver), identify=identify_from_test_header)
    await other.start()
    try:
        async with TestClient(RawTestServer(other.handle)) as other_client:
            await assert_serves(other_client, "app", "v1", image.manifest, OCI_MANIFEST)
    finally:
        await other.close()


async def test_retagging_moves_the_tag_to_the_new_manifest(client):
    first = await push_image(client, "app", "latest", seed="1")
    second = await push_image(client, "app", "latest", seed="2")
    await assert_serves(client, "app", "latest", second.manifest, OCI_MANIFEST)
    await assert_serves(client, "app", first.digest, first.manifest, OCI_MANIFEST)


async def test_manifest_put_by_sha512_digest_is_served_under_it(client):
    image = await push_image(client, "app")
    digest = digest_of(image.manifest, "sha512")
    resp = await put_manifest(client, "app", digest, image.manifest)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == digest
    resp = await get_manifest(client, "app", digest)
    assert resp.status == 200
    assert resp.headers["Docker-Content-Digest"] == digest
    assert await resp.read() == image.manifest


async def test_manifest_referencing_sha512_blobs_is_accepted(client):
    config = await push_blob(client, "app", b"{}", algorithm="sha512")
    layer = await push_blob(client, "app", b"layer", algorithm="sha512")
    data = image_manifest({"mediaType": OCI_CONFIG, "digest": config, "size": 2},
                          [{"mediaType": OCI_LAYER, "digest": layer, "size": 5}])
    assert (await put_manifest(client, "app", "sha512", data)).status == 201


async def test_manifest_put_by_wrong_digest_is_400_digest_invalid_and_not_stored(client):
    """The error names both digests: the one in the URL and the one of the body."""
    image = await push_image(client, "app")
    config = json.loads(image.manifest)["config"]
    other = image_manifest(config, [])
    resp = await put_manifest(client, "app", digest_of(other), image.manifest)
    await assert_error(resp, 400, "DIGEST_INVALID")
    assert await error_detail(resp) == {"expected": digest_of(other),
                                        "computed": digest_of(image.manifest)}
    assert (await get_manifest(client, "app", digest_of(other))).status == 404


async def test_tag_query_on_digest_put_tags_the_manifest_and_answers_oci_tag(client):
    image = await push_image(client, "app", seed="t")
    resp = await put_manifest(client, "app", image.digest, image.manifest,
                              params=[("tag", "v1"), ("tag", "stable")])
    assert resp.status == 201
    assert sorted(resp.headers.getall("OCI-Tag")) == ["stable", "v1"]
    for tag in ("v1", "stable"):
        await assert_serves(client, "app", tag, image.manifest, OCI_MANIFEST)
    assert await tags_of(client, "app") == ["stable", "v1"]


async def test_invalid_tag_query_is_rejected_and_nothing_tagged(client):
    image = await push_image(client, "app")
    resp = await put_manifest(client, "app", image.digest, image.manifest, params={"tag": "-bad"})
    await assert_error(resp, 400, "MANIFEST_INVALID")
    assert await tags_of(client, "app") == []


@pytest.mark.parametrize("tag", ["-bad", ".bad", "a" * 129, "b%20ad"])
async def test_manifest_put_with_an_invalid_tag_is_400(client, tag):
    image = await push_image(client, "app")
    resp = await put_manifest(client, "app", tag, image.manifest)
    assert resp.status == 400
    assert await tags_of(client, "app") == []


# -- references --------------------------------------------------------------------------


async def test_manifest_with_a_missing_layer_is_400_manifest_blob_unknown(client):
    config = await push_blob(client, "app", b"{}")
    data = image_manifest({"mediaType": OCI_CONFIG, "digest": config, "size": 2},
                          [descriptor(OCI_LAYER, b"never pushed")])
    resp = await put_manifest(client, "app", "latest", data)
    await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
    assert await error_detail(resp) == {"blobs": [digest_of(b"never pushed")]}
    assert (await get_manifest(client, "app", "latest")).status == 404
    assert (await get_manifest(client, "app", digest_of(data))).status == 404


async def test_manifest_with_a_missing_config_is_400_manifest_blob_unknown(client):
    layer = await push_blob(client, "app", b"layer")
    data = image_manifest(descriptor(DOCKER_CONFIG, b"{}"),
                          [{"mediaType": DOCKER_LAYER, "digest": layer, "size": 5}],
                          media_type=DOCKER_MANIFEST)
    resp = await put_manifest(client, "app", "latest", data, DOCKER_MANIFEST)
    await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_manifest_referencing_a_blob_of_another_repository_is_rejected(client):
    await push_image(client, "other", "latest")
    image = await push_image(client, "other", seed="s")
    resp = await put_manifest(client, "app", "latest", image.manifest)
    await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")


async def test_index_with_a_missing_child_manifest_is_400_manifest_blob_unknown(client):
    child = await push_image(client, "app", seed="child")
    data = index_manifest([child.descriptor, descriptor(OCI_MANIFEST, b"never pushed")])
    resp = await put_manifest(client, "app", "multi", data, OCI_INDEX)
    await assert_error(resp, 400, "MANIFEST_BLOB_UNKNOWN")
    assert await error_detail(resp) == {"manifests": [digest_of(b"never pushed")]}
    assert (await get_manifest(client, "app", "multi")).status == 404


async def test_layer_size_disagreeing_with_the_blob_is_400_manifest_invalid(client):
    config = await push_blob(client, "app", b"{}")
    layer = await push_blob(client, "app", b"layer")
    data = image_manifest({"mediaType": OCI_CONFIG, "digest": config, "size": 2},
                          [{"mediaType": OCI_LAYER, "digest": layer, "size": 6}])
    resp = await put_manifest(client, "app", "latest", data)
    await assert_error(resp, 400, "MANIFEST_INVALID")


async def test_layers_stored_elsewhere_need_not_exist(client):
    config = await push_blob(client, "app", b"{}")
    foreign = descriptor("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", b"windows",
                         urls=["https://example.com/base"])
    data = image_manifest({"mediaType": DOCKER_CONFIG, "digest": config, "size": 2}, [foreign],
                          media_type=DOCKER_MANIFEST)
    assert (await put_manifest(client, "app", "win", data, DOCKER_MANIFEST)).status == 201


async def test_manifest_whose_subject_is_missing_is_accepted_with_oci_subject(client):
    subject = descriptor(OCI_MANIFEST, b"a manifest pushed later")
    config = await push_blob(client, "app", b"{}")
    data = image_manifest({"mediaType": "application/x.sig", "digest": config, "size": 2}, [],
                          subject=subject)
    resp = await put_manifest(client, "app", digest_of(data), data)
    assert resp.status == 201
    assert resp.headers["OCI-Subject"] == subject["digest"]


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'{"schemaVersion": 1}',
    json.dumps({"schemaVersion": 2, "mediaType": "application/x.unknown"}).encode(),
])
async def test_malformed_manifest_is_400_manifest_invalid(client, body):
    resp = await put_manifest(client, "app", "latest", body, media_type=None)
    await assert_error(resp, 400, "MANIFEST_INVALID")


# -- size limit --------------------------------------------------------------------------


async def padded_manifest(client, size: int) -> bytes:
    """An OCI manifest of exactly `size` bytes (padded with an annotation)."""
    config = await push_blob(client, "app", b"{}")
    base = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
            "layers": [], "annotations": {"pad": ""}}
    padding = size - len(json.dumps(base).encode())
    base["annotations"]["pad"] = "x" * padding
    data = json.dumps(base).encode()
    assert len(data) == size
    return data


async def test_manifest_of_4_mib_is_accepted(client, registry):
    data = await padded_manifest(client, registry.settings.max_manifest_size)
    resp = await put_manifest(client, "app", "big", data)
    assert resp.status == 201
    await assert_serves(client, "app", "big", data, OCI_MANIFEST)


async def test_manifest_over_4_mib_is_413(client, registry):
    data = await padded_manifest(client, registry.settings.max_manifest_size + 1)
    resp = await put_manifest(client, "app", "big", data)
    await assert_error(resp, 413, "MANIFEST_INVALID")
    assert (await get_manifest(client, "app", "big")).status == 404


async def test_manifest_over_4_mib_streamed_without_length_is_413(client, registry):
    data = await padded_manifest(client, registry.settings.max_manifest_size + 1000)

    async def body():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    resp = await client.put("/v2/app/manifests/big", data=body(),
                            headers={"Content-Type": OCI_MANIFEST})
    await assert_error(resp, 413, "MANIFEST_INVALID")


async def test_manifest_of_4_mib_streamed_without_length_is_accepted(client, registry):
    data = await padded_manifest(client, registry.settings.max_manifest_size)

    async def body():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    resp = await client.put("/v2/app/manifests/big", data=body(),
                            headers={"Content-Type": OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    await assert_serves(client, "app", "big", data, OCI_MANIFEST)


@pytest.mark.parametrize("named, accepted", [(5, True), (6, False)])
async def test_a_manifest_may_name_as_many_distinct_digests_as_configured(driver, named, accepted):
    """Config, layers and subject count, each distinct digest once (a layer named twice
    counts once): five are allowed here, a sixth is refused."""
    async with serving(driver, max_manifest_descriptors=5) as (_registry, client):
        config = await push_blob(client, "app", b"{}")
        layers = [descriptor(OCI_LAYER, f"layer {i}".encode()) for i in range(named - 2)]
        for i in range(named - 2):
            await push_blob(client, "app", f"layer {i}".encode())
        subject = descriptor(OCI_MANIFEST, b"a subject nobody pushed")
        data = image_manifest({"mediaType": OCI_CONFIG, "digest": config, "size": 2},
                              layers + layers[:1], subject=subject)
        resp = await put_manifest(client, "app", "latest", data)
        if accepted:
            assert resp.status == 201, await resp.text()
        else:
            await assert_error(resp, 400, "MANIFEST_INVALID")


# -- unknown and delete ------------------------------------------------------------------


async def test_unknown_manifest_is_404_manifest_unknown_naming_it(client):
    await push_image(client, "app", "latest")
    for reference, kind in (("nope", "tag"), (UNKNOWN_DIGEST, "digest")):
        resp = await get_manifest(client, "app", reference)
        await assert_error(resp, 404, "MANIFEST_UNKNOWN")
        assert await error_detail(resp) == {kind: reference}
        assert (await get_manifest(client, "app", reference, "HEAD")).status == 404
    resp = await get_manifest(client, "never-pushed", "latest")
    assert resp.status == 404


async def test_a_reference_that_is_neither_a_digest_nor_a_valid_tag_is_404_manifest_unknown(client):
    await push_image(client, "app", "latest")
    for reference in ("-latest", ".latest", "l" * 129, "lat%21est"):
        for method in ("GET", "HEAD", "DELETE"):
            resp = await client.request(method, f"/v2/app/manifests/{reference}")
            assert resp.status == 404, (method, reference)
            if method != "HEAD":
                await assert_error(resp, 404, "MANIFEST_UNKNOWN")
                assert await error_detail(resp) == {"tag": resp.url.path.rsplit("/", 1)[1]}


async def test_malformed_digest_reference_is_400_digest_invalid(client):
    resp = await get_manifest(client, "app", "sha256:totallywrong")
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_manifest_of_another_repository_is_404(client):
    image = await push_image(client, "app", "latest")
    await push_image(client, "other", "v1", seed="o")
    assert (await get_manifest(client, "other", image.digest)).status == 404
    assert (await get_manifest(client, "other", "latest")).status == 404


async def test_delete_by_tag_is_202_and_removes_only_the_tag(client):
    image = await push_image(client, "app", "latest")
    await put_manifest(client, "app", "stable", image.manifest)
    resp = await client.delete("/v2/app/manifests/latest")
    assert resp.status == 202
    await assert_error(await get_manifest(client, "app", "latest"), 404, "MANIFEST_UNKNOWN")
    await assert_serves(client, "app", image.digest, image.manifest, OCI_MANIFEST)
    await assert_serves(client, "app", "stable", image.manifest, OCI_MANIFEST)
    assert await tags_of(client, "app") == ["stable"]


async def test_delete_by_digest_is_202_then_the_digest_and_its_tags_are_404(client):
    image = await push_image(client, "app", "latest")
    other = await push_image(client, "app", "other", seed="2")
    await put_manifest(client, "app", "stable", image.manifest)
    resp = await client.delete(f"/v2/app/manifests/{image.digest}")
    assert resp.status == 202
    for reference in (image.digest, "latest", "stable"):
        await assert_error(await get_manifest(client, "app", reference), 404, "MANIFEST_UNKNOWN")
    assert await tags_of(client, "app") == ["other"]
    await assert_serves(client, "app", "other", other.manifest, OCI_MANIFEST)


async def test_manifest_pushes_and_deletes_are_audited_with_what_they_named(client, caplog):
    caplog.set_level(logging.INFO, logger="sshreg.audit")
    image = await push_image(client, "app", "latest")
    caplog.clear()
    assert (await put_manifest(client, "app", "stable", image.manifest)).status == 201
    assert (await client.delete("/v2/app/manifests/stable")).status == 202
    assert (await client.delete(f"/v2/app/manifests/{image.digest}")).status == 202
    events = [r.msg for r in caplog.records if r.name == "sshreg.audit"]
    assert [(e["method"], e["reference"]) for e in events] == [
        ("PUT", f"{image.digest}, stable"), ("DELETE", "stable"), ("DELETE", image.digest)]
    assert events[0]["bytes"] == len(image.manifest)


async def test_deleted_manifest_can_be_pushed_again(client):
    image = await push_image(client, "app", "latest")
    assert (await client.delete(f"/v2/app/manifests/{image.digest}")).status == 202
    assert (await put_manifest(client, "app", "latest", image.manifest)).status == 201
    await assert_serves(client, "app", "latest", image.manifest, OCI_MANIFEST)


async def test_delete_of_an_unknown_manifest_is_404_manifest_unknown_naming_it(client):
    image = await push_image(client, "app", "latest")
    for reference, kind in (("nope", "tag"), (UNKNOWN_DIGEST, "digest")):
        resp = await client.delete(f"/v2/app/manifests/{reference}")
        await assert_error(resp, 404, "MANIFEST_UNKNOWN")
        assert await error_detail(resp) == {kind: reference}
    assert (await client.delete(f"/v2/app/manifests/{image.digest}")).status == 202
    resp = await client.delete(f"/v2/app/manifests/{image.digest}")
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")
    resp = await client.delete("/v2/app/manifests/latest")
    await assert_error(resp, 404, "MANIFEST_UNKNOWN")


async def test_deleting_a_manifest_in_one_repository_keeps_it_in_another(client):
    image = await push_image(client, "app", "latest")
    for digest, data in image.blobs.items():
        await push_blob(client, "copy", data)
        assert digest_of(data) == digest
    assert (await put_manifest(client, "copy", "latest", image.manifest)).status == 201
    assert (await client.delete(f"/v2/app/manifests/{image.digest}")).status == 202
    await assert_serves(client, "copy", "latest", image.manifest, OCI_MANIFEST)


async def test_manifest_with_wrong_sha512_digest_reference_is_400(client):
    image = await push_image(client, "app")
    wrong = "sha512:" + hashlib.sha512(b"x").hexdigest()
    resp = await put_manifest(client, "app", wrong, image.manifest)
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_a_tag_whose_manifest_link_vanished_is_unknown_naming_the_digest(client, registry):
    """What a tag names may be unlinked between the tag read and the link read (a delete or
    a collection on another gateway): HEAD and GET then name the digest they missed."""
    image = await push_image(client, "app", "latest")
    await registry.store.driver.delete(paths.manifest_revision("app", Digest.parse(image.digest)))
    for method in ("HEAD", "GET"):
        resp = await client.request(method, "/v2/app/manifests/latest")
        assert resp.status == 404
        if method == "GET":
            await assert_error(resp, 404, "MANIFEST_UNKNOWN")
            assert await error_detail(resp) == {"digest": image.digest}
