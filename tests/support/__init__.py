"""Test support: real servers and real clients for the integration tests.

Modules: processes (subprocess plumbing, bounded waits, ports), images (synthetic OCI/Docker
images, no network), registry (distribution 2.8 reference registry + tiny HTTP reader/pusher),
docker (private dockerd + CLI), containerd (containerd + ctr), podman (podman/skopeo/buildah in
an isolated config), oras_client (oras-py), seaweedfs (SeaweedFS S3, R2 part checks),
sshreg_server (`sshreg serve` and real `ssh` tunnels).
"""
