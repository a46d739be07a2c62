"""Test support: real servers and real clients for the integration tests; `bench/` uses it too.

Modules: processes (subprocess plumbing, bounded waits, ports), daemon (the start/stop life of
dockerd, containerd and distribution), hashing (sha256 digests, hashing and gzip writers), rss
(peak resident memory of processes), images (synthetic OCI/Docker images, no network),
registry (distribution 2.8 reference registry + tiny HTTP reader/pusher), docker (private
dockerd + CLI), containerd (containerd + ctr), podman (podman/skopeo/buildah in an isolated
config), oras_client (oras-py), seaweedfs (SeaweedFS S3, R2 part checks), sshreg_server
(`sshreg serve` and real `ssh` tunnels).
"""
