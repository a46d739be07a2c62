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


def test_media_type_comes_from_content_type_when_the_body_names_none():
    doc = {"schemaVersion": 2, "config": descriptor(DOCKER_CONFIG, b"{}"), "layers": [LAYER]}
    assert parse_manifest(json.dumps(doc).encode(), DOCKER_MANIFEST).media_type == DOCKER_MANIFEST


def test_media_type_comes_from_the_body_when_content_type_is_absent():
    data = image_manifest(descriptor(DOCKER_CONFIG, b"{}"), [LAYER], media_type=DOCKER_MANIFEST)
    assert parse_manifest(data, None).media_type == DOCKER_MANIFEST


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


def _doc(**fields) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": CONFIG,
                       "layers": [], **fields}).encode()


NO_DIGEST = {"mediaType": OCI_MANIFEST, "size": 1}


@pytest.mark.parametrize(("data", "told"), [
    (b"not json", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    (b"\xff\xfe", "not JSON: "),  # not UTF-8
    (b"[]", "not a JSON object"),
    (_doc(mediaType=5), "mediaType is not a string"),
    (_doc(schemaVersion=1), "schemaVersion must be 2"),
    (_doc(mediaType="application/x.other"),
     "unsupported manifest media type 'application/x.other'"),
    (_doc(config=None), "config is not a descriptor object"),
    (_doc(layers=None), "layers must be a list"),
    (_doc(layers=[{**LAYER, "digest": "sha256:nothex"}]), "layers[0] has an invalid digest: "),
    (_doc(layers=[LAYER, {**LAYER, "digest": 5}]), "layers[1] has an invalid digest: not a digest: ''"),
    (_doc(layers=[{**LAYER, "size": -1}]), "layers[0] has an invalid size"),
    (_doc(layers=[{**LAYER, "size": True}]), "layers[0] has an invalid size"),
    (_doc(layers=[{**LAYER, "mediaType": ""}]), "layers[0] has no mediaType"),
    (_doc(layers=[{**LAYER, "mediaType": 5}]), "layers[0] has no mediaType"),
    (_doc(annotations={"a": 1}), "annotations must map strings to strings"),
    (_doc(artifactType=5), "artifactType is not a string"),
    (_doc(subject="sha256:abc"), "subject is not a descriptor object"),
    (_doc(mediaType=OCI_INDEX, manifests={}), "manifests must be a list"),
    (_doc(mediaType=OCI_INDEX, manifests=[SUBJECT, NO_DIGEST]),
     "manifests[1] has an invalid digest: not a digest: ''"),
])
def test_an_invalid_manifest_is_rejected_and_the_client_told_why(data, told):
    """What is wrong reaches the client as the detail of MANIFEST_INVALID (a reason ending
    in ": " is followed by the parser's own words)."""
    with pytest.raises(ManifestError) as raised:
        parse_manifest(data, None)
    assert str(raised.value).startswith(told) if told.endswith(": ") else str(raised.value) == told


def test_a_content_type_contradicting_the_body_names_both():
    with pytest.raises(ManifestError) as raised:
        parse_manifest(image_manifest(CONFIG, [LAYER]), DOCKER_MANIFEST)
    assert str(raised.value) == f"Content-Type {DOCKER_MANIFEST} does not match mediaType {OCI_MANIFEST}"


def test_a_descriptor_may_describe_an_empty_blob():
    empty = descriptor(OCI_LAYER, b"")
    assert parse_manifest(image_manifest(CONFIG, [empty]), OCI_MANIFEST).blobs[1].size == 0


def test_an_index_keeps_its_subject_and_annotations():
    data = index_manifest([], subject=SUBJECT, annotations={"org.example": "yes"})
    manifest = parse_manifest(data, OCI_INDEX)
    assert manifest.subject is not None and manifest.subject.digest == Digest.parse(SUBJECT["digest"])
    assert manifest.annotations == {"org.example": "yes"}
