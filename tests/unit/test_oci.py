"""Manifest parsing: media types, referenced blobs and child manifests, subject, artifact type."""

from __future__ import annotations

import json

import pytest

from sshreg.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    ManifestError,
    parse_manifest,
)
from sshreg.references import Digest
from tests.http.helpers_api import (
    DOCKER_CONFIG,
    DOCKER_LAYER,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_LAYER,
    descriptor,
    image_manifest,
    index_manifest,
)

CONFIG = descriptor(OCI_CONFIG, b"{}")
LAYER = descriptor(OCI_LAYER, b"layer")
SUBJECT = descriptor(OCI_MANIFEST, b"subject manifest")


def test_oci_manifest_lists_config_and_layers_as_blobs():
    manifest = parse_manifest(image_manifest(CONFIG, [LAYER]), OCI_MANIFEST)
    assert manifest.media_type == OCI_MANIFEST
    assert [str(b.digest) for b in manifest.blobs] == [CONFIG["digest"], LAYER["digest"]]
    assert [b.size for b in manifest.blobs] == [CONFIG["size"], LAYER["size"]]
    assert manifest.children == ()


def test_docker_schema2_manifest_is_accepted():
    data = image_manifest(descriptor(DOCKER_CONFIG, b"{}"), [descriptor(DOCKER_LAYER, b"l")],
                          media_type=DOCKER_MANIFEST)
    manifest = parse_manifest(data, DOCKER_MANIFEST)
    assert manifest.media_type == DOCKER_MANIFEST
    assert len(manifest.blobs) == 2


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_MANIFEST_LIST])
def test_index_lists_its_manifests_as_children(media_type):
    child = descriptor(OCI_MANIFEST, b"child")
    manifest = parse_manifest(index_manifest([child], media_type=media_type), media_type)
    assert manifest.media_type == media_type
    assert [str(c.digest) for c in manifest.children] == [child["digest"]]
    assert manifest.blobs == ()


def test_media_type_comes_from_the_body_when_content_type_is_generic():
    data = image_manifest(CONFIG, [LAYER])
    for content_type in (None, "", "application/json", "application/octet-stream"):
        assert parse_manifest(data, content_type).media_type == OCI_MANIFEST


def test_content_type_parameters_are_ignored():
    assert parse_manifest(image_manifest(CONFIG, []), OCI_MANIFEST + "; charset=utf-8").media_type \
        == OCI_MANIFEST


def test_media_type_is_guessed_when_neither_body_nor_header_names_it():
    image = {"schemaVersion": 2, "config": CONFIG, "layers": [LAYER]}
    index = {"schemaVersion": 2, "manifests": []}
    assert parse_manifest(json.dumps(image).encode(), None).media_type == OCI_MANIFEST
    assert parse_manifest(json.dumps(index).encode(), None).media_type == OCI_INDEX


@pytest.mark.parametrize("doc", [{"schemaVersion": 2, "layers": [LAYER]},
                                 {"schemaVersion": 2, "config": CONFIG}])
def test_a_manifest_whose_type_nothing_names_is_refused_as_of_unknown_type(doc):
    """Neither header nor body names a type, and only config and layers together make an
    image manifest: the client is told the type is unknown, not which field is missing."""
    with pytest.raises(ManifestError, match="unsupported manifest media type None"):
        parse_manifest(json.dumps(doc).encode(), None)


def test_content_type_contradicting_the_body_media_type_is_rejected():
    with pytest.raises(ManifestError):
        parse_manifest(image_manifest(CONFIG, [LAYER]), DOCKER_MANIFEST)


def test_subject_is_parsed_and_artifact_type_defaults_to_config_media_type():
    manifest = parse_manifest(image_manifest(CONFIG, [LAYER], subject=SUBJECT), OCI_MANIFEST)
    assert manifest.subject is not None
    assert manifest.subject.digest == Digest.parse(SUBJECT["digest"])
    assert manifest.artifact_type == OCI_CONFIG


def test_explicit_artifact_type_wins_over_the_config_media_type():
    data = image_manifest(descriptor(OCI_EMPTY, b"{}"), [LAYER], artifact_type="application/x.sbom")
    assert parse_manifest(data, OCI_MANIFEST).artifact_type == "application/x.sbom"


def test_index_without_artifact_type_has_none():
    assert parse_manifest(index_manifest([]), OCI_INDEX).artifact_type is None
    data = index_manifest([], artifact_type="application/x.bundle")
    assert parse_manifest(data, OCI_INDEX).artifact_type == "application/x.bundle"


def test_annotations_are_kept():
    data = image_manifest(CONFIG, [], annotations={"org.example": "yes"})
    assert parse_manifest(data, OCI_MANIFEST).annotations == {"org.example": "yes"}


def test_layers_with_urls_or_non_distributable_types_are_external():
    foreign = descriptor("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", b"w")
    with_urls = descriptor(OCI_LAYER, b"u", urls=["https://example.com/layer"])
    manifest = parse_manifest(image_manifest(CONFIG, [LAYER, foreign, with_urls]), OCI_MANIFEST)
    assert [b.external for b in manifest.blobs] == [False, False, True, True]


def test_sha512_descriptors_are_accepted():
    layer = descriptor(OCI_LAYER, b"layer", "sha512")
    manifest = parse_manifest(image_manifest(CONFIG, [layer]), OCI_MANIFEST)
    assert manifest.blobs[1].digest.algorithm == "sha512"


@pytest.mark.parametrize(("data", "why"), [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[]", "not an object"),
    (json.dumps({"schemaVersion": 1, "mediaType": OCI_MANIFEST, "config": CONFIG,
                 "layers": []}).encode(), "schema 1"),
    (json.dumps({"schemaVersion": 2, "mediaType": "application/x.other"}).encode(), "unknown type"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}).encode(), "no config"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG}).encode(),
     "no layers"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG,
                 "layers": [{**LAYER, "digest": "sha256:nothex"}]}).encode(), "bad digest"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG,
                 "layers": [{**LAYER, "size": -1}]}).encode(), "negative size"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG,
                 "layers": [{**LAYER, "size": True}]}).encode(), "boolean size"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG,
                 "layers": [], "annotations": {"a": 1}}).encode(), "non-string annotation"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}}).encode(),
     "manifests not a list"),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG,
                 "layers": [], "subject": "sha256:abc"}).encode(), "subject not a descriptor"),
])
def test_invalid_manifest_is_rejected(data, why):
    with pytest.raises(ManifestError):
        parse_manifest(data, None)
