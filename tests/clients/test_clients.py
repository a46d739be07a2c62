"""Real clients through real `ssh -N -L` tunnels into a real `sshreg serve`, on both storages.

docker, podman, skopeo, buildah, ctr and oras each push an image (skopeo and ctr a multi-arch
index, oras an artifact with a `subject`) and pull it back, and the test compares digests with
what the synthetic image was made of. Access rights are checked with the clients' own
error paths: a read-only key and a key limited to `team/*`.

One server per storage for the module (S3: a fresh prefix on the session's SeaweedFS, with
5 MiB parts so that larger blobs are multipart); every test uses its own repositories.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deployment import Deployment, deploy, generate_keys, unique
from tests.support.docker import Docker
from tests.support.hashing import sha256
from tests.support.images import (
    Image,
    layout_blobs,
    make_image,
    make_multiarch_image,
    verify_layout,
    write_docker_archive,
    write_oci_archive,
)
from tests.support.oras_client import Oras
from tests.support.podman import ContainersEnv
from tests.support.processes import free_port
from tests.support.registry import RegistryHTTP
from tests.support.sshreg_server import ClientKey, SshregServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client_keys(tmp_path_factory) -> dict[str, ClientKey]:
    return generate_keys(tmp_path_factory.mktemp("client-keys"))


@pytest.fixture(scope="module", params=["filesystem", "s3"])
def deployment(request, tmp_path_factory, client_keys) -> Iterator[Deployment]:
    """sshreg on each storage; on S3 with 5 MiB parts, so that larger blobs are multipart
    (R2's part rule is checked on every blob object when the module is done)."""
    s3 = request.getfixturevalue("s3_server") if request.param == "s3" else None
    with deploy(tmp_path_factory.mktemp(f"clients-{request.param}"), request.param,
                client_keys, s3=s3, config={"storage": {"part_size": "5MiB"}}) as running:
        yield running



def check_image_in_registry(http: RegistryHTTP, repository: str, reference: str,
                            image: Image, manifest_digest: str) -> dict:
    """What the registry serves for `reference` is the manifest `manifest_digest` over the
    image's config, and layers whose uncompressed bytes are the image's diff_ids."""
    manifest = http.manifest(repository, reference)
    assert manifest.digest == manifest.docker_digest == manifest_digest
    doc = json.loads(manifest.body)
    assert doc["config"]["digest"] == image.config.digest
    assert http.blob(repository, image.config.digest).body == image.config_bytes()
    diff_ids = []
    for layer in doc["layers"]:
        blob = http.blob(repository, layer["digest"])
        assert (blob.digest, len(blob.body)) == (layer["digest"], layer["size"])
        tar = gzip.decompress(blob.body) if layer["mediaType"].endswith("gzip") else blob.body
        diff_ids.append(sha256(tar))
    assert diff_ids == [layer.diff_id for layer in image.layers]
    return doc


# -- docker ------------------------------------------------------------------------------


def test_docker_push_and_pull_keep_image_id_and_repo_digest(deployment, docker, tmp_path):
    image = make_image(tmp_path / "layout", [400_000, 150_000], seed=unique("docker"))
    local = f"local/{unique('docker')}:1"
    docker.load(write_docker_archive(image, tmp_path / "image.tar", [local]))
    repository = unique("docker/app")
    with deployment.tunnel() as tunnel:
        ref = f"{tunnel.registry}/{repository}:1"
        docker.tag(local, ref)
        pushed = docker.push(ref)
        check_image_in_registry(RegistryHTTP(tunnel.url), repository, "1", image, pushed.digest)
        docker.rmi(ref, local)
        assert not docker.exists(ref)
        assert docker.pull(ref) == pushed.digest
        assert docker.image_id(ref) == image.image_id
        assert docker.repo_digest(ref, f"{tunnel.registry}/{repository}") == pushed.digest
        assert docker.diff_ids(ref) == [layer.diff_id for layer in image.layers]


# -- podman, skopeo, buildah -------------------------------------------------------------


@pytest.fixture
def containers(containers_env) -> Iterator[ContainersEnv]:
    """The session's podman/skopeo/buildah environment, emptied of images after each test."""
    yield containers_env
    containers_env.podman().remove_all_images()


def test_podman_push_and_pull_keep_image_id_and_manifest_digest(deployment, containers,
                                                                tmp_path):
    podman = containers.podman()
    image = make_image(tmp_path / "layout", [300_000, 120_000], seed=unique("podman"))
    local = f"localhost/{unique('podman')}:1"
    podman.load(write_docker_archive(image, tmp_path / "image.tar", [local]))
    repository = unique("podman/app")
    with deployment.tunnel() as tunnel:
        ref = f"{tunnel.registry}/{repository}:1"
        digest = podman.push(local, ref)
        check_image_in_registry(RegistryHTTP(tunnel.url), repository, "1", image, digest)
        podman.rmi(local)
        assert podman.pull(ref) == image.image_id
        assert podman.digest(ref) == digest


def test_skopeo_copies_an_image_and_a_multiarch_index_both_ways_byte_for_byte(
        deployment, containers, tmp_path):
    skopeo = containers.skopeo()
    layout = tmp_path / "layout"
    single = make_image(layout, [250_000, 90_000], seed=unique("skopeo"), tag="single")
    multi = make_multiarch_image(layout, [200_000], seed=unique("skopeo"), tag="multi")
    repository = unique("skopeo/app")
    with deployment.tunnel() as tunnel:
        remote = f"docker://{tunnel.registry}/{repository}"
        assert skopeo.copy(f"oci:{layout}:single", f"{remote}:single") == single.digest
        assert skopeo.copy(f"oci:{layout}:multi", f"{remote}:multi",
                           all_images=True) == multi.digest
        http = RegistryHTTP(tunnel.url)
        assert http.manifest(repository, "single").body == single.manifest_bytes()
        assert http.manifest(repository, "multi").body == multi.index_bytes()
        back = tmp_path / "back"
        assert skopeo.copy(f"{remote}:single", f"oci:{back}:single") == single.digest
        assert skopeo.copy(f"{remote}:multi", f"oci:{back}:multi",
                           all_images=True) == multi.digest
    verify_layout(back)
    assert layout_blobs(back) == layout_blobs(layout)


def test_buildah_pushes_a_built_image_and_pulls_it_back(deployment, containers, tmp_path):
    buildah = containers.buildah()
    payload = tmp_path / "payload.bin"
    payload.write_bytes(uuid.uuid4().bytes * 20_000)
    working = buildah.from_image("scratch")
    try:
        buildah.copy(working, payload, "/payload.bin")
        buildah.config(working, "--label", "org.sshreg.test=buildah")
        local = f"localhost/{unique('buildah')}:1"
        image_id = buildah.commit(working, local)
    finally:
        buildah.rm(working)
    repository = unique("buildah/app")
    with deployment.tunnel() as tunnel:
        ref = f"{tunnel.registry}/{repository}:1"
        digest = buildah.push(local, ref)
        manifest = RegistryHTTP(tunnel.url).manifest(repository, "1")
        assert manifest.digest == manifest.docker_digest == digest
        assert json.loads(manifest.body)["config"]["digest"] == image_id
        buildah.rmi(local)
        assert buildah.pull(ref) == image_id
    inspected = buildah.inspect_image(ref)
    assert inspected["FromImageDigest"] == digest


# -- ctr ---------------------------------------------------------------------------------


def test_ctr_pushes_a_multiarch_index_and_pulls_every_blob_back(deployment, containerd,
                                                                 tmp_path):
    multi = make_multiarch_image(tmp_path / "layout", [300_000, 80_000], seed=unique("ctr"),
                                 full_name=f"sshreg.test/{unique('ctr')}:1")
    pusher = containerd.client(unique("push"))
    (local,) = pusher.import_archive(write_oci_archive(multi.layout, tmp_path / "image.tar"))
    repository = unique("ctr/app")
    with deployment.tunnel() as tunnel:
        ref = f"{tunnel.registry}/{repository}:1"
        pusher.tag(local, ref)
        pusher.push(ref)
        assert RegistryHTTP(tunnel.url).manifest(repository, "1").body == multi.index_bytes()
        puller = containerd.client(unique("pull"))
        puller.pull(ref, all_platforms=True)
    assert puller.image_digest(ref) == multi.digest
    expected = {multi.digest} | {d for image in multi.images
                                 for d in (image.digest, *image.blob_digests)}
    assert puller.content_digests() == expected
    for digest in expected:  # the content store verified each digest; the bytes, once more
        assert sha256(puller.content_get(digest)) == digest


# -- oras --------------------------------------------------------------------------------

SIGNATURE_TYPE = "application/vnd.sshreg.test.signature.v1+json"


def test_oras_pushes_an_artifact_and_a_referrer_that_the_referrers_api_lists(deployment,
                                                                              tmp_path):
    files = {"model.bin": os.urandom(700_000), "README.txt": b"weights for the test model\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    signature = tmp_path / "signature.json"
    signature.write_text(json.dumps({"signed": unique("by")}))
    config = tmp_path / "config.json"
    config.write_text("{}")
    repository = unique("oras/model")
    with deployment.tunnel() as tunnel:
        oras = Oras(tunnel.registry)
        artifact = oras.push(repository, "v1", [tmp_path / name for name in files],
                             media_type="application/vnd.sshreg.test.layer.v1")
        assert artifact.status == 201
        body, _, digest = oras.manifest_bytes(repository, "v1")
        assert sha256(body) == digest == artifact.digest
        pulled = oras.pull(repository, "v1", tmp_path / "out")
        assert {path.name: path.read_bytes() for path in pulled} == files

        subject = oras.subject_of(repository, "v1")
        assert subject.digest == artifact.digest
        referrer = oras.push(repository, "v1-signature", [signature], config=config,
                             config_media_type=SIGNATURE_TYPE, subject=subject)
        assert referrer.status == 201
        listed = oras.referrers(repository, artifact.digest)
        assert listed.status_code == 200
        assert listed.headers["Content-Type"].startswith("application/vnd.oci.image.index.v1+json")
        index = listed.json()
        assert [(m["digest"], m.get("artifactType")) for m in index["manifests"]] == [
            (referrer.digest, SIGNATURE_TYPE)]
        filtered = oras.referrers(repository, artifact.digest, artifact_type=SIGNATURE_TYPE)
        assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
        assert [m["digest"] for m in filtered.json()["manifests"]] == [referrer.digest]
        other = oras.referrers(repository, artifact.digest, artifact_type="application/x-none")
        assert other.json()["manifests"] == []
        assert oras.referrers(repository, referrer.digest).json()["manifests"] == []


# -- access rights through real clients --------------------------------------------------


def load_docker_image(docker: Docker, tmp_path: Path, sizes: list[int]) -> tuple[Image, str]:
    """A synthetic image loaded into dockerd under a local name; returns (image, name)."""
    image = make_image(tmp_path / "layout", sizes, seed=unique("docker"))
    local = f"local/{unique('docker')}:1"
    docker.load(write_docker_archive(image, tmp_path / "image.tar", [local]))
    return image, local


def refusals(server: SshregServer, key: ClientKey) -> list[dict]:
    return [e for e in server.audit() if e.get("key") == key.fingerprint and e.get("error")]


def test_read_only_key_pulls_with_docker_but_its_push_is_denied(deployment, docker, tmp_path):
    image, local = load_docker_image(docker, tmp_path, [200_000])
    repository = unique("shared/base")
    with deployment.tunnel("alice") as tunnel:
        docker.tag(local, f"{tunnel.registry}/{repository}:1")
        pushed = docker.push(f"{tunnel.registry}/{repository}:1")
    docker.remove_all_images()
    reader = deployment.keys["reader"]
    with deployment.tunnel("reader") as tunnel:
        ref = f"{tunnel.registry}/{repository}:1"
        assert docker.pull(ref) == pushed.digest
        assert docker.image_id(ref) == image.image_id
        target = f"{tunnel.registry}/{unique('reader/app')}:1"
        docker.tag(ref, target)
        result = docker.run("push", target, check=False)
    assert result.returncode != 0
    # docker words any DENIED answer to a push this way; the audit log has the registry's.
    assert "denied: requested access to the resource is denied" in result.stderr
    refused = refusals(deployment.server, reader)
    assert refused and {(e["status"], e["error"]) for e in refused} == {(403, "DENIED")}
    assert not [e for e in deployment.server.audit()
                if e.get("key") == reader.fingerprint and not e.get("error")]


def test_team_key_pushes_team_repositories_but_cannot_pull_or_mount_from_others(
        deployment, docker, tmp_path):
    image, local = load_docker_image(docker, tmp_path, [600_000])
    other = unique("other/app")
    port = free_port()  # both tunnels on one port: docker sees one registry and tries mounts
    with deployment.tunnel("alice", port) as tunnel:
        docker.tag(local, f"{tunnel.registry}/{other}:1")
        pushed_other = docker.push(f"{tunnel.registry}/{other}:1")
        manifest = json.loads(RegistryHTTP(tunnel.url).manifest(other, "1").body)
        (layer,) = manifest["layers"]
    team = deployment.keys["team"]
    mine = f"team/{unique('app')}"
    with deployment.tunnel("team", port) as tunnel:
        registry = tunnel.registry
        docker.tag(local, f"{registry}/{mine}:1")
        pushed = docker.push(f"{registry}/{mine}:1")
        # docker asked to mount the layer from other/… (it pushed it there), was refused,
        # and sent the bytes itself.
        deployment.server.wait_for_log(
            f"mount of {layer['digest']} from {other} refused for key {team.fingerprint}")
        sent = sum(e["bytes"] for e in deployment.server.audit()
                   if e.get("key") == team.fingerprint and e["repository"] == mine
                   and e["method"] == "PATCH")
        assert sent == layer["size"] + manifest["config"]["size"]
        docker.remove_all_images()
        denied = [docker.run("pull", f"{registry}/{other}:1", check=False),
                  docker.run("pull", f"{registry}/{other}@{pushed_other.digest}", check=False)]
        for result in denied:
            assert result.returncode != 0
            assert "pull access denied" in result.stderr, result.stderr
        assert not docker.exists(f"{registry}/{other}:1")
        assert docker.pull(f"{registry}/{mine}:1") == pushed.digest
        assert docker.image_id(f"{registry}/{mine}:1") == image.image_id
    denied_paths = {e["path"] for e in refusals(deployment.server, team) if e["error"] == "DENIED"}
    assert {f"/v2/{other}/manifests/1", f"/v2/{other}/manifests/{pushed_other.digest}"} <= \
        denied_paths
