"""The measured cases. Each takes a running stack and returns flat metrics (numbers)."""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.hashing import sha256_file
from tests.support.processes import run

from .httpclient import HttpConnection
from .image import OciImage
from .metrics import Measure, Measured
from .mirror import Upstream, UpstreamImage
from .payload import Payload
from .regclient import (
    PushedImage,
    get_blob,
    head_blob,
    head_manifest,
    pull_image,
    push_chunked,
    push_image,
    push_monolithic,
)
from .stacks import Stack, Tunnel, open_tunnel, wait_tunnels

MIB = 1 << 20
SKOPEO_TIMEOUT = 1800.0
BIG_TIMEOUT = 1800.0  # a 10 GiB commit on distribution's S3 driver copies the object
TUNNELS_TIMEOUT = 180.0
CONCURRENT_TIMEOUT = 900.0

Metrics = dict[str, float]


@dataclass(frozen=True)
class Sizes:
    raw: int
    image: int
    big: int
    small_image: int
    heads: int
    tunnels: int
    mirror: int = 0  # the upstream image of the pull-through cases, in `mirror_layers` layers
    mirror_layers: int = 1

    @classmethod
    def full(cls) -> Sizes:
        return cls(raw=1 << 30, image=1 << 30, big=10 << 30, small_image=20 * MIB, heads=2000,
                   tunnels=50, mirror=1 << 30, mirror_layers=4)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(raw=32 * MIB, image=32 * MIB, big=64 * MIB, small_image=2 * MIB, heads=50,
                   tunnels=3, mirror=16 * MIB, mirror_layers=2)


@dataclass
class RunContext:
    """One stack, running, with one established tunnel and a scratch folder."""

    stack: Stack
    tunnel: Tunnel
    scratch: Path
    log_dir: Path
    sizes: Sizes
    run_index: int
    state: dict[str, Any] = field(default_factory=dict)  # what one case leaves for the next
    notes: list[str] = field(default_factory=list)  # what went wrong, for the log

    def measure(self) -> Measure:
        return Measure(self.stack.server_pids())

    def connect(self, timeout: float = 300.0) -> HttpConnection:
        return HttpConnection(self.tunnel.port, timeout)


def transfer_metrics(m: Measured) -> Metrics:
    return {"mb_s": m.mb_per_s, "seconds": m.seconds, "cpu_per_gib": m.cpu_per_gib,
            "peak_rss_mib": m.peak_rss / MIB, "process_rss_mib": m.process_rss / MIB}


# -- raw HTTP client -------------------------------------------------------------------


def raw_put(ctx: RunContext) -> Metrics:
    """POST + one PUT with Content-Length carrying the blob (containerd's way)."""
    payload = Payload(ctx.sizes.raw)
    _ = payload.digest  # hashed before the clock starts
    with ctx.connect() as conn, ctx.measure() as m:
        push_monolithic(conn, "bench/raw", payload)
    ctx.state["raw_blob"] = payload
    return transfer_metrics(m.result(payload.size))


def raw_patch(ctx: RunContext) -> Metrics:
    """POST + one streamed PATCH in chunked encoding + empty PUT (docker's, skopeo's way)."""
    payload = Payload(ctx.sizes.raw)
    _ = payload.digest
    with ctx.connect() as conn, ctx.measure() as m:
        push_chunked(conn, "bench/raw", payload)
    return transfer_metrics(m.result(payload.size))


def raw_get(ctx: RunContext) -> Metrics:
    """A streamed GET of the blob `raw_put` pushed."""
    payload: Payload = ctx.state["raw_blob"]
    with ctx.connect() as conn, ctx.measure() as m:
        get_blob(conn, "bench/raw", payload.digest, payload.size)
    return transfer_metrics(m.result(payload.size))


def big_push(ctx: RunContext) -> Metrics:
    """A big layer (10 GiB) as one streamed PATCH, server RSS sampled every 100 ms."""
    payload = Payload(ctx.sizes.big)
    _ = payload.digest
    with ctx.connect(BIG_TIMEOUT) as conn, ctx.measure() as m:
        push_chunked(conn, "bench/big", payload)
    return transfer_metrics(m.result(payload.size))


# -- skopeo ----------------------------------------------------------------------------


def _skopeo(*args: str) -> None:
    run(["skopeo", "--insecure-policy", "copy", "--retry-times", "0", *args],
        timeout=SKOPEO_TIMEOUT)


def skopeo_push(ctx: RunContext) -> Metrics:
    image: OciImage = ctx.state["image"]
    dest = f"docker://127.0.0.1:{ctx.tunnel.port}/bench/skopeo:1"
    with ctx.measure() as m:
        _skopeo("--dest-tls-verify=false", image.reference, dest)
    return transfer_metrics(m.result(image.layer_size))


def skopeo_pull(ctx: RunContext) -> Metrics:
    image: OciImage = ctx.state["image"]
    out = ctx.scratch / f"pulled-{ctx.stack.name}"
    try:
        with ctx.measure() as m:
            _skopeo("--src-tls-verify=false",
                    f"docker://127.0.0.1:{ctx.tunnel.port}/bench/skopeo:1", f"dir:{out}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return transfer_metrics(m.result(image.layer_size))


# -- pull-through cache ---------------------------------------------------------------


def _verify_pulled(out: Path, image: UpstreamImage) -> None:
    """The OCI layout skopeo wrote holds the manifest and every blob, each hashing to its
    digest (checked after the clock stopped)."""
    for digest, size in [(image.manifest_digest, None), *image.blobs.items()]:
        path = out / "blobs" / Path(*digest.split(":", 1))
        if not path.is_file():
            raise RuntimeError(f"the pull lacks {digest}")
        if size is not None and path.stat().st_size != size:
            raise RuntimeError(f"{digest}: {path.stat().st_size} bytes pulled, not {size}")
        if sha256_file(path) != digest:
            raise RuntimeError(f"{digest}: the bytes pulled do not match it")


def _pull_oci(ctx: RunContext, target: str, repo: str, pids: list[int]) -> Metrics:
    """skopeo pulls the upstream's image as `repo` through a tunnel of its own to `target`,
    into an OCI layout (layers fetched concurrently, as docker and containerd do; `dir:`
    fetches one at a time); metrics, and the blob GETs the upstream answered meanwhile."""
    upstream: Upstream = ctx.state["upstream"]
    image = upstream.image
    assert image is not None
    out = ctx.scratch / f"mirror-{ctx.stack.name}"
    index = ctx.state["mirror_tunnels"] = ctx.state.get("mirror_tunnels", 100) + 1
    tunnel = open_tunnel(ctx.stack, ctx.log_dir, index, target=target)
    try:
        since = upstream.log_offset()
        with Measure(pids) as m:
            _skopeo("--src-tls-verify=false", f"docker://127.0.0.1:{tunnel.port}/{repo}:{image.tag}",
                    f"oci:{out}:{image.tag}")
        _verify_pulled(out, image)
    finally:
        tunnel.close()
        shutil.rmtree(out, ignore_errors=True)
    gets = sum(upstream.blob_gets(since).values())
    return {**transfer_metrics(m.result(image.size)), "upstream_blob_gets": gets}


def _mirror_pull(ctx: RunContext) -> Metrics:
    """A pull of the upstream's image through the stack's cache."""
    image: UpstreamImage = ctx.state["upstream"].image
    stack = ctx.stack
    metrics = _pull_oci(ctx, stack.mirror_target, stack.mirror_repo(image.repo),
                        stack.mirror_pids())
    ctx.state["mirror_pulls"] = ctx.state.get("mirror_pulls", 0) + 1
    return metrics


def mirror_cold_pull(ctx: RunContext) -> Metrics:
    """The first pull through the cache of a stack started on empty storage: the upstream
    sends every blob (distribution's proxy fetches each twice: one stream for the client,
    one to store), the cache stores them while the client receives them."""
    if ctx.state.get("mirror_pulls") or ctx.state.get("mirror_local"):
        raise RuntimeError("the cache is not cold: run mirror_cold_pull before "
                           "mirror_warm_pull and mirror_normal_pull")
    metrics = _mirror_pull(ctx)
    blobs = len(ctx.state["upstream"].image.blobs)
    gets = metrics["upstream_blob_gets"]
    if gets < blobs or (ctx.stack.name == "sshreg" and gets != blobs):
        ctx.notes.append(f"cold pull: the upstream answered {gets:.0f} blob GETs for {blobs} "
                         "blobs")
    return metrics


def mirror_warm_pull(ctx: RunContext) -> Metrics:
    """The same pull again, served from the cache (a cold pull goes first, unmeasured, if
    mirror_cold_pull was not selected)."""
    if not ctx.state.get("mirror_pulls"):
        _mirror_pull(ctx)
    metrics = _mirror_pull(ctx)
    # distribution's proxy stores a blob by a second fetch that may still run when the
    # client has it all (its lines then land here): only sshreg's count must be 0
    if ctx.stack.name == "sshreg" and metrics["upstream_blob_gets"]:
        ctx.notes.append(f"warm pull: the upstream answered {metrics['upstream_blob_gets']:.0f} "
                         "blob GETs")
    return metrics


def mirror_normal_pull(ctx: RunContext) -> Metrics:
    """The baseline of "a warm pull is as fast as a normal pull": the same image pushed
    (untimed, skopeo from the upstream) into a repository of the stack's own, then pulled
    exactly as the cases above pull it (same client, layout, tunnel set-up)."""
    image: UpstreamImage = ctx.state["upstream"].image
    stack = ctx.stack
    local = f"{image.repo}-local"
    if not ctx.state.get("mirror_local"):
        index = ctx.state["mirror_tunnels"] = ctx.state.get("mirror_tunnels", 100) + 1
        tunnel = open_tunnel(stack, ctx.log_dir, index)
        try:
            _skopeo("--src-tls-verify=false", "--dest-tls-verify=false", "--preserve-digests",
                    f"docker://{image.url.removeprefix('http://')}/{image.repo}:{image.tag}",
                    f"docker://127.0.0.1:{tunnel.port}/{local}:{image.tag}")
        finally:
            tunnel.close()
        ctx.state["mirror_local"] = True
    return _pull_oci(ctx, stack.target, local, stack.server_pids())


# -- small requests --------------------------------------------------------------------


def _small_image(ctx: RunContext) -> PushedImage:
    state = ctx.state
    if "small" not in state:
        with ctx.connect() as conn:
            state["small"] = push_image(conn, "bench/small", "1", Payload(ctx.sizes.small_image))
    return state["small"]


def _percentiles(samples: list[float]) -> Metrics:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": statistics.median(ordered) * 1000, "p99_ms": p99 * 1000}


def _latencies(ctx: RunContext, call: Callable[[HttpConnection], None]) -> Metrics:
    samples: list[float] = []
    with ctx.connect(60) as conn:
        call(conn)  # the connection (SSH channel) is established before timing
        for _ in range(ctx.sizes.heads):
            started = time.perf_counter()
            call(conn)
            samples.append(time.perf_counter() - started)
    return _percentiles(samples)


def head_manifests(ctx: RunContext) -> Metrics:
    """Sequential manifest HEADs on one keep-alive connection through the tunnel."""
    image = _small_image(ctx)
    return _latencies(ctx, lambda conn: head_manifest(conn, image.repo, image.tag))


def head_blobs(ctx: RunContext) -> Metrics:
    """Sequential blob HEADs on one keep-alive connection through the tunnel."""
    image = _small_image(ctx)
    return _latencies(ctx, lambda conn: head_blob(conn, image.repo, image.layer_digest))


# -- many tunnels ----------------------------------------------------------------------


def _pull_all(tunnels: list[Tunnel], image: PushedImage) -> tuple[int, int, float]:
    """Pull `image` through every tunnel at once; (bytes, failures, seconds)."""
    barrier = threading.Barrier(len(tunnels) + 1, timeout=60)
    received = [0] * len(tunnels)
    failed = [False] * len(tunnels)

    def worker(i: int) -> None:
        try:
            conn = HttpConnection(tunnels[i].port, 120)
        except OSError:
            failed[i] = True
            barrier.wait()
            return
        with conn:
            barrier.wait()
            try:
                received[i] = pull_image(conn, image.repo, image.tag)
            except Exception:
                failed[i] = True

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(tunnels))]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(max(0.0, started + CONCURRENT_TIMEOUT - time.perf_counter()))
    seconds = time.perf_counter() - started
    failures = sum(failed) + sum(thread.is_alive() for thread in threads)
    return sum(r for r, f in zip(received, failed, strict=True) if not f), failures, seconds


def concurrent_pulls(ctx: RunContext) -> Metrics:
    """N tunnels (N SSH connections), each pulling the small image, all at once. A tunnel
    that does not come up counts as a failed pull."""
    image = _small_image(ctx)
    started = time.perf_counter()
    tunnels = [Tunnel(ctx.stack, ctx.log_dir, i + 1) for i in range(ctx.sizes.tunnels)]
    try:
        broken = wait_tunnels(tunnels, TUNNELS_TIMEOUT)
        setup = time.perf_counter() - started
        for tunnel in broken:
            ctx.notes.append(f"tunnel {tunnel.port} failed: {tunnel.proc.log_tail(8)}")
        working = [t for t in tunnels if t not in broken]
        with ctx.measure() as m:
            nbytes, failures, seconds = _pull_all(working, image)
    finally:
        for tunnel in tunnels:
            tunnel.close()
    return {"mb_s": nbytes / seconds / 1e6 if seconds > 0 else 0.0,
            "failures": failures + len(broken),
            "seconds": seconds, "tunnel_setup_s": setup,
            "cpu_per_gib": m.cpu_seconds / (nbytes / (1 << 30)) if nbytes else 0}


CASES: dict[str, Callable[[RunContext], Metrics]] = {
    "raw_put": raw_put,
    "raw_patch": raw_patch,
    "raw_get": raw_get,
    "skopeo_push": skopeo_push,
    "skopeo_pull": skopeo_pull,
    "head_manifest": head_manifests,
    "head_blob": head_blobs,
    "concurrent_pull": concurrent_pulls,
    "mirror_cold_pull": mirror_cold_pull,
    "mirror_warm_pull": mirror_warm_pull,
    "mirror_normal_pull": mirror_normal_pull,
    "big_push": big_push,
}
