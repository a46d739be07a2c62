"""Blob uploads in every style clients use.

- `POST ?digest=` with the body: one request (oras, conformance tests).
- POST, then `PUT ?digest=` with the whole body (containerd, BuildKit, nerdctl).
- POST, one streamed PATCH (chunked encoding, no length), empty `PUT ?digest=` (docker,
  podman, skopeo, buildah): a 100 GB layer arrives as one body and is re-chunked here.
- POST, several `PATCH`es with `Content-Range: a-b`, then PUT (oras chunked, conformance).
- `POST ?mount=&from=`: cross-repository mount.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..access import Action
from ..references import Digest, is_valid_name
from ..storage.base import StorageError
from ..store.blobs import DigestMismatch
from .context import Context
from .errors import Code, RegistryError
from .params import blob_location, body_chunks, digest_param
from .ranges import parse_content_range
from .upload_sessions import UploadSession

log = logging.getLogger("sshreg.uploads")


def _session_headers(ctx: Context, session: UploadSession) -> dict[str, str]:
    return {
        "Location": f"/v2/{ctx.name}/blobs/uploads/{session.id}",
        "Range": f"0-{max(session.size - 1, 0)}",
        "Docker-Upload-UUID": session.id,
    }


def _session_response(status: int, ctx: Context, session: UploadSession) -> web.Response:
    return web.Response(status=status, headers=_session_headers(ctx, session))


def _blob_created(ctx: Context, digest: Digest) -> web.Response:
    ctx.reference = str(digest)
    return web.Response(status=201, headers={
        "Location": blob_location(ctx.name, digest),
        "Docker-Content-Digest": str(digest),
    })


async def _new_session(ctx: Context, algorithm: str = "sha256") -> UploadSession:
    owner = ctx.identity.fingerprint
    ctx.sessions.admit(owner)  # 429 past the per-key or total limit
    try:
        upload = await ctx.store.blobs.begin_upload(ctx.settings.part_size)
    except BaseException:
        ctx.sessions.withdraw(owner)
        raise
    session = UploadSession(ctx.name, upload, owner, algorithm)
    ctx.sessions.add(session)
    return session


def _session(ctx: Context) -> UploadSession:
    session = ctx.sessions.get(ctx.params["session"], ctx.name, ctx.identity.fingerprint)
    if session is None:
        raise RegistryError(Code.BLOB_UPLOAD_UNKNOWN, {"session": ctx.params["session"]})
    return session


async def _receive(request: web.BaseRequest, ctx: Context, session: UploadSession,
                   expected: int | None = None) -> int:
    """Stream the request body into the session; return the number of bytes received.

    A session whose bytes storage failed to take, or whose client stalled, is discarded at
    once (its temporary file or multipart upload with it): it cannot be committed, or nobody
    is coming back for it. A client that went away mid-body keeps its session until the idle
    sweep, and may ask where it stands and resume."""
    try:
        return await _receive_into(request, ctx, session, expected)
    except StorageError:
        await ctx.sessions.discard(session)
        raise
    except RegistryError as exc:
        if exc.status == 408:
            await ctx.sessions.discard(session)
        raise


async def _receive_into(request: web.BaseRequest, ctx: Context, session: UploadSession,
                        expected: int | None) -> int:
    batch_size = ctx.settings.upload_batch
    received = 0
    batch = bytearray()
    async for chunk in body_chunks(request, ctx.settings.body_idle_timeout):
        batch += chunk
        received += len(chunk)
        if expected is not None and received > expected:
            break
        if len(batch) >= batch_size:
            await session.append(batch)
            batch = bytearray()
    if expected is not None and received != expected:
        raise RegistryError(Code.BLOB_UPLOAD_INVALID, f"body has {received} bytes, "
                            f"Content-Range announced {expected}")
    if batch:
        await session.append(batch)
    await session.flush()
    ctx.bytes_in += received
    return received


async def _commit(ctx: Context, session: UploadSession, digest: Digest) -> web.Response:
    """Verify the digest, publish the blob and link it into the repository."""
    verified = digest.algorithm == session.algorithm
    if verified and session.hexdigest() != digest.hex:
        await ctx.sessions.discard(session)
        raise RegistryError(Code.DIGEST_INVALID, {"expected": str(digest),
                                                  "computed": f"{session.algorithm}:"
                                                              f"{session.hexdigest()}"})
    ctx.sessions.finish(session)
    with ctx.store.pins.hold([digest]):  # garbage collection keeps off it until it is linked
        try:
            await ctx.store.blobs.commit(digest, session.upload, verified=verified)
        except DigestMismatch as exc:
            raise RegistryError(Code.DIGEST_INVALID, str(exc)) from None
        except BaseException:
            await session.abort()
            raise
        session.closed = True
        await ctx.store.repositories.link_blob(ctx.name, digest)
    log.info("blob %(digest)s (%(bytes)d bytes) pushed to %(repository)s by %(fingerprint)s",
             {"digest": str(digest), "bytes": session.size, "repository": ctx.name,
              "fingerprint": ctx.identity.fingerprint})
    return _blob_created(ctx, digest)


async def _mount(ctx: Context, digest_text: str, source: str | None) -> web.Response | None:
    """Link a blob from another readable repository; None if it cannot be mounted.

    Only the repositories this key may read are looked at, before anything global: asking
    first whether the blob exists anywhere would answer, by the work that follows, whether a
    repository this key cannot read holds it. A key that may read every repository has
    nothing to hide from, and takes that shortcut."""
    try:
        digest = Digest.parse(digest_text)
    except ValueError:
        return None
    if source is not None:
        readable = [source] if is_valid_name(source) and ctx.may(Action.PULL, source) else []
        if not readable:
            log.warning("mount of %(digest)s from %(from_repository)s refused for key "
                        "%(fingerprint)s", {"digest": str(digest), "from_repository": source,
                                            "fingerprint": ctx.identity.fingerprint})
    else:
        everything = [ctx.name, *(await ctx.store.repositories.names())]
        readable = [r for r in everything if ctx.may(Action.PULL, r)]
        if len(readable) == len(everything) and await ctx.store.blobs.get(digest) is None:
            return None
    for repository in readable:
        if (await ctx.store.repositories.is_blob_linked(repository, digest)
                and await ctx.store.blobs.get(digest) is not None):
            with ctx.store.pins.hold([digest]):
                await ctx.store.repositories.link_blob(ctx.name, digest)
            return _blob_created(ctx, digest)
    return None


async def start_upload(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    query = request.query
    if "mount" in query:
        mounted = await _mount(ctx, query["mount"], query.get("from"))
        if mounted is not None:
            return mounted
    elif "digest" in query:
        digest = digest_param(query["digest"])
        session = await _new_session(ctx, digest.algorithm)
        async with session.busy():  # the idle sweep keeps off a long body still arriving
            try:
                await _receive(request, ctx, session)
            except BaseException:
                await ctx.sessions.discard(session)
                raise
            return await _commit(ctx, session, digest)
    session = await _new_session(ctx)
    return _session_response(202, ctx, session)


async def upload_status(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    session = _session(ctx)
    return _session_response(204, ctx, session)


def _chunk_range(request: web.BaseRequest, session: UploadSession) -> int | None:
    """Check a chunk's Content-Range against the session; return its announced length."""
    header = request.headers.get("Content-Range")
    if header is None:
        return None
    start, end = parse_content_range(header)
    if start != session.size:
        raise RegistryError(
            Code.BLOB_UPLOAD_INVALID, f"chunk starts at {start}, upload is at {session.size}",
            status=416, message="requested range not satisfiable")
    length = end - start + 1
    if request.content_length is not None and request.content_length != length:
        raise RegistryError(Code.SIZE_INVALID, f"Content-Length {request.content_length} "
                            f"does not match Content-Range {header}")
    return length


async def append_chunk(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    session = _session(ctx)
    async with session.busy():
        try:
            expected = _chunk_range(request, session)
        except RegistryError as exc:
            exc.headers.update(_session_headers(ctx, session))
            raise
        await _receive(request, ctx, session, expected)
    return _session_response(202, ctx, session)


async def finish_upload(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    session = _session(ctx)
    async with session.busy():
        digest = digest_param(request.query.get("digest"))
        if session.size == 0 and digest.algorithm != session.algorithm:
            session.switch_algorithm(digest.algorithm)
        expected = _chunk_range(request, session)
        await _receive(request, ctx, session, expected)
        return await _commit(ctx, session, digest)


async def cancel_upload(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    session = _session(ctx)
    async with session.busy():  # let a running PATCH or PUT of this session finish first
        if not session.closed:
            await ctx.sessions.discard(session)
    return web.Response(status=204)
