"""The referrers API: `GET /v2/<name>/referrers/<digest>[?artifactType=]`, kept right by deletes."""

from __future__ import annotations

from sshreg.oci import OCI_INDEX, OCI_MANIFEST
from tests.support.hashing import digest_of

from .helpers_api import (
    OCI_EMPTY,
    OCI_LAYER,
    UNKNOWN_DIGEST,
    Image,
    assert_error,
    descriptor,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
    put_manifest,
)

SBOM = "application/vnd.example.sbom.v1"
SIGNATURE = "application/vnd.example.signature.v1"


async def referrers(client, name: str, digest: str, query: str = ""):
    resp = await client.get(f"/v2/{name}/referrers/{digest}{query}")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == OCI_INDEX
    index = await resp.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    return resp, index["manifests"]


async def push_referrer(client, name: str, subject: Image | dict, *, artifact_type: str | None = None,
                        config_type: str = OCI_EMPTY, note: str = "") -> dict:
    """Push an artifact manifest whose subject is `subject`; return its expected descriptor."""
    config = await push_blob(client, name, b"{}")
    layer = await push_blob(client, name, f"payload {note}".encode())
    annotations = {"org.example.note": note}
    data = image_manifest({"mediaType": config_type, "digest": config, "size": 2},
                          [{"mediaType": OCI_LAYER, "digest": layer, "size": len(f"payload {note}")}],
                          subject=subject.descriptor if isinstance(subject, Image) else subject,
                          artifact_type=artifact_type, annotations=annotations)
    resp = await put_manifest(client, name, digest_of(data), data)
    assert resp.status == 201, await resp.text()
    subject_digest = subject.digest if isinstance(subject, Image) else subject["digest"]
    assert resp.headers["OCI-Subject"] == subject_digest
    return {"mediaType": OCI_MANIFEST, "digest": digest_of(data), "size": len(data),
            "artifactType": artifact_type or config_type, "annotations": annotations}


def by_digest(descriptors: list[dict]) -> list[dict]:
    return sorted(descriptors, key=lambda d: d["digest"])


async def test_referrers_of_a_digest_without_any_is_an_empty_index(client):
    _, manifests = await referrers(client, "app", UNKNOWN_DIGEST)
    assert manifests == []


async def test_referrers_of_an_unknown_repository_is_an_empty_index_not_404(client):
    _, manifests = await referrers(client, "never-pushed", UNKNOWN_DIGEST)
    assert manifests == []


async def test_referrers_with_a_malformed_digest_is_400(client):
    resp = await client.get("/v2/app/referrers/sha256:nothex")
    await assert_error(resp, 400, "DIGEST_INVALID")


async def test_referrers_lists_descriptors_with_artifact_type_and_annotations(client):
    subject = await push_image(client, "app", "latest")
    sbom = await push_referrer(client, "app", subject, artifact_type=SBOM, note="sbom")
    signature = await push_referrer(client, "app", subject, config_type=SIGNATURE, note="sig")
    resp, manifests = await referrers(client, "app", subject.digest)
    assert by_digest(manifests) == by_digest([sbom, signature])
    assert "OCI-Filters-Applied" not in resp.headers


async def test_index_referrer_is_listed_and_has_no_artifact_type_unless_it_declares_one(client):
    subject = await push_image(client, "app", "latest")
    child = await push_image(client, "app", seed="child")
    plain = index_manifest([child.descriptor], subject=subject.descriptor, annotations={"k": "plain"})
    typed = index_manifest([child.descriptor], subject=subject.descriptor, annotations={"k": "typed"},
                           artifact_type="application/x.bundle")
    for data in (plain, typed):
        resp = await put_manifest(client, "app", digest_of(data), data, OCI_INDEX)
        assert resp.status == 201
        assert resp.headers["OCI-Subject"] == subject.digest
    _, manifests = await referrers(client, "app", subject.digest)
    assert by_digest(manifests) == by_digest([
        {"mediaType": OCI_INDEX, "digest": digest_of(plain), "size": len(plain),
         "annotations": {"k": "plain"}},
        {"mediaType": OCI_INDEX, "digest": digest_of(typed), "size": len(typed),
         "artifactType": "application/x.bundle", "annotations": {"k": "typed"}},
    ])


async def test_artifact_type_filter_selects_matching_referrers_and_says_so(client):
    subject = await push_image(client, "app", "latest")
    sbom = await push_referrer(client, "app", subject, artifact_type=SBOM, note="1")
    sbom2 = await push_referrer(client, "app", subject, config_type=SBOM, note="2")
    await push_referrer(client, "app", subject, artifact_type=SIGNATURE, note="3")
    resp, manifests = await referrers(client, "app", subject.digest, f"?artifactType={SBOM}")
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert by_digest(manifests) == by_digest([sbom, sbom2])
    resp, manifests = await referrers(client, "app", subject.digest, "?artifactType=application/x.none")
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert manifests == []


async def test_referrers_to_a_subject_not_yet_pushed_are_listed(client):
    subject = descriptor(OCI_MANIFEST, b"pushed later")
    expected = await push_referrer(client, "app", subject, artifact_type=SBOM)
    _, manifests = await referrers(client, "app", subject["digest"])
    assert manifests == [expected]


async def test_referrers_are_scoped_to_their_repository(client):
    subject = await push_image(client, "app", "latest")
    await push_referrer(client, "app", subject, artifact_type=SBOM)
    _, manifests = await referrers(client, "other", subject.digest)
    assert manifests == []


async def test_deleting_a_referrer_removes_it_from_the_list(client):
    subject = await push_image(client, "app", "latest")
    keep = await push_referrer(client, "app", subject, artifact_type=SBOM, note="keep")
    gone = await push_referrer(client, "app", subject, artifact_type=SBOM, note="gone")
    assert (await client.delete(f"/v2/app/manifests/{gone['digest']}")).status == 202
    _, manifests = await referrers(client, "app", subject.digest)
    assert manifests == [keep]
    _, manifests = await referrers(client, "app", subject.digest, f"?artifactType={SBOM}")
    assert manifests == [keep]


async def test_deleting_a_tag_of_a_referrer_keeps_it_listed(client):
    subject = await push_image(client, "app", "latest")
    referrer = await push_referrer(client, "app", subject, artifact_type=SBOM)
    data = (await (await client.get(f"/v2/app/manifests/{referrer['digest']}")).read())
    assert (await put_manifest(client, "app", "sbom", data)).status == 201
    assert (await client.delete("/v2/app/manifests/sbom")).status == 202
    _, manifests = await referrers(client, "app", subject.digest)
    assert manifests == [referrer]


async def test_deleting_the_subject_keeps_its_referrers_listed(client):
    """Referrers may be pushed before their subject, so they may outlive it too."""
    subject = await push_image(client, "app", "latest")
    referrer = await push_referrer(client, "app", subject, artifact_type=SBOM)
    assert (await client.delete(f"/v2/app/manifests/{subject.digest}")).status == 202
    _, manifests = await referrers(client, "app", subject.digest)
    assert manifests == [referrer]


async def test_referrer_pushed_again_after_delete_is_listed_once(client):
    subject = await push_image(client, "app", "latest")
    referrer = await push_referrer(client, "app", subject, artifact_type=SBOM)
    data = await (await client.get(f"/v2/app/manifests/{referrer['digest']}")).read()
    assert (await client.delete(f"/v2/app/manifests/{referrer['digest']}")).status == 202
    _, manifests = await referrers(client, "app", subject.digest)
    assert manifests == []
    for _ in range(2):
        assert (await put_manifest(client, "app", referrer["digest"], data)).status == 201
    _, manifests = await referrers(client, "app", subject.digest)
    assert manifests == [referrer]


async def test_sha512_subject_and_referrer_are_supported(client):
    subject = await push_image(client, "app", "latest")
    subject_desc = {**subject.descriptor, "digest": digest_of(subject.manifest, "sha512")}
    assert (await put_manifest(client, "app", subject_desc["digest"], subject.manifest)).status == 201
    config = await push_blob(client, "app", b"{}")
    data = image_manifest({"mediaType": OCI_EMPTY, "digest": config, "size": 2}, [],
                          subject=subject_desc, artifact_type=SBOM)
    resp = await put_manifest(client, "app", digest_of(data, "sha512"), data)
    assert resp.status == 201
    assert resp.headers["OCI-Subject"] == subject_desc["digest"]
    _, manifests = await referrers(client, "app", subject_desc["digest"])
    assert [m["digest"] for m in manifests] == [digest_of(data, "sha512")]
