"""Manifests: GET/HEAD/PUT/DELETE by tag or digest, stored exactly as sent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..oci import INDEXES, Manifest, ManifestError, parse_manifest
from ..references import Digest, is_digest, is_valid_tag
from ..store.manifests import ManifestLink
from .context import Context
from .errors import Code, RegistryError
from .params import body_chunks, digest_param, manifest_location

log = logging.getLogger("sshreg.manifests")

LOOKUP_BATCH = 8  # storage lookups one manifest PUT runs at once


async def _resolve(ctx: Context, reference: str) -> Digest:
    """The digest a tag or digest reference names in this repository."""
    if is_digest(reference):
        return digest_param(reference)
    if not is_valid_tag(reference):
        raise RegistryError(Code.MANIFEST_UNKNOWN, {"tag": reference})
    digest = await ctx.store.tags.get(ctx.name, reference)
    if digest is None:
        raise RegistryError(Code.MANIFEST_UNKNOWN, {"tag": reference})
    return digest


async def get_manifest(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    digest = await _resolve(ctx, ctx.params["reference"])
    if request.method == "HEAD":  # the repository's link has all a HEAD answers with
        link = await ctx.store.manifests.link(ctx.name, digest)
        if link is None:
            raise RegistryError(Code.MANIFEST_UNKNOWN, {"digest": str(digest)})
        return web.Response(status=200, headers={
            **_manifest_headers(link), "Content-Length": str(link.size)})
    found = await ctx.store.manifests.get(ctx.name, digest)
    if found is None:
        raise RegistryError(Code.MANIFEST_UNKNOWN, {"digest": str(digest)})
    link, data = found
    return web.Response(status=200, body=data, headers=_manifest_headers(link))


def _manifest_headers(link: ManifestLink) -> dict[str, str]:
    return {
        "Content-Type": link.media_type,
        "Docker-Content-Digest": str(link.digest),
        "ETag": f'"{link.digest}"',
    }


async def _read_limited(request: web.BaseRequest, limit: int, idle_timeout: float) -> bytes:
    too_large = RegistryError(Code.MANIFEST_INVALID, f"manifests are limited to {limit} bytes",
                              status=413, message="manifest too large")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    data = bytearray()
    async for chunk in body_chunks(request, idle_timeout, Code.MANIFEST_INVALID):
        data += chunk
        if len(data) > limit:
            raise too_large
    return bytes(data)


async def put_manifest(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    reference = ctx.params["reference"]
    tags = request.query.getall("tag", [])
    if is_digest(reference):
        claimed: Digest | None = digest_param(reference)
    else:
        claimed = None
        tags = [reference, *tags]
    for tag in tags:
        if not is_valid_tag(tag):
            raise RegistryError(Code.MANIFEST_INVALID, f"invalid tag {tag!r}",
                                message="invalid tag")

    data = await _read_limited(request, ctx.settings.max_manifest_size,
                              ctx.settings.body_idle_timeout)
    ctx.bytes_in = len(data)
    digest = Digest.of(data, claimed.algorithm if claimed else "sha256")
    if claimed is not None and claimed != digest:
        raise RegistryError(Code.DIGEST_INVALID, {"expected": str(claimed),
                                                  "computed": str(digest)})
    try:
        manifest = parse_manifest(data, request.headers.get("Content-Type"))
    except ManifestError as exc:
        raise RegistryError(Code.MANIFEST_INVALID, str(exc)) from None
    _check_fan_out(manifest, ctx.settings.max_manifest_descriptors)
    references = {d.digest for d in (*manifest.blobs, *manifest.children)}
    with ctx.store.pins.hold([digest, *references]):  # garbage collection keeps off them
        await _check_references(ctx, manifest)

        link = ManifestLink(
            digest=digest,
            media_type=manifest.media_type,
            size=len(data),
            artifact_type=manifest.artifact_type,
            subject=manifest.subject.digest if manifest.subject else None,
            annotations=manifest.annotations or None,
        )
        await ctx.store.manifests.put(ctx.name, link, data)
        previous = {tag: await ctx.store.tags.set(ctx.name, tag, digest) for tag in tags}
        missing = await _missing_after_write(ctx, digest, manifest)
        if missing:
            for tag, before in previous.items():
                await ctx.store.tags.undo(ctx.name, tag, digest, before)
            log.warning("manifest %(digest)s for %(repository)s: %(missing)s removed while it was "
                        "written (garbage collection on another gateway?); push refused",
                        {"digest": str(digest), "repository": ctx.name,
                         "missing": ", ".join(missing)})
            raise RegistryError(Code.MANIFEST_BLOB_UNKNOWN, {"removed_meanwhile": missing})
    ctx.reference = ", ".join([str(digest), *tags])
    log.info("manifest %(digest)s pushed to %(repository)s as %(tags)s by %(fingerprint)s"
             if tags else "manifest %(digest)s pushed to %(repository)s by %(fingerprint)s",
             {"digest": str(digest), "repository": ctx.name, "tags": ", ".join(tags),
              "fingerprint": ctx.identity.fingerprint})

    response = web.Response(status=201, headers={
        "Location": manifest_location(ctx.name, digest),
        "Docker-Content-Digest": str(digest),
    })
    if link.subject is not None:
        response.headers["OCI-Subject"] = str(link.subject)
    if claimed is not None:
        for tag in tags:
            response.headers.add("OCI-Tag", tag)
    return response


async def _check_references(ctx: Context, manifest: Manifest) -> None:
    """Every blob and child manifest a manifest names must be in this repository.

    Each digest is looked up once, a few at a time, and the first missing one ends the
    check: a manifest naming thousands of made-up digests costs a handful of lookups."""
    sizes: dict[Digest, set[int]] = {}
    for desc in manifest.blobs:
        if not desc.external:
            sizes.setdefault(desc.digest, set()).add(desc.size)

    async def blob_found(digest: Digest) -> bool:
        record = await ctx.store.repositories.blob(ctx.name, digest)
        if record is not None and sizes[digest] != {record.size}:
            wrong = min(sizes[digest] - {record.size})
            raise RegistryError(Code.MANIFEST_INVALID,
                                f"{digest} is {record.size} bytes, not {wrong}")
        return record is not None

    async def child_found(digest: Digest) -> bool:
        return await ctx.store.manifests.link(ctx.name, digest) is not None

    missing = await _first_missing(list(sizes), blob_found)
    if not missing:
        children = list(dict.fromkeys(d.digest for d in manifest.children))
        missing = await _first_missing(children, child_found)
    if missing:
        kind = "manifests" if manifest.media_type in INDEXES else "blobs"
        raise RegistryError(Code.MANIFEST_BLOB_UNKNOWN, {kind: [str(d) for d in missing]})


async def _first_missing(digests: list[Digest], found: Callable[[Digest], Awaitable[bool]]
                         ) -> list[Digest]:
    """Look `digests` up `LOOKUP_BATCH` at a time; the misses of the first batch that has
    any (an empty list if every digest is found)."""
    for start in range(0, len(digests), LOOKUP_BATCH):
        batch = digests[start:start + LOOKUP_BATCH]
        results = await asyncio.gather(*(found(d) for d in batch), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        missing = [d for d, ok in zip(batch, results, strict=True) if not ok]
        if missing:
            return missing
    return []


def _check_fan_out(manifest: Manifest, limit: int) -> None:
    """Refuse a manifest naming more distinct digests than any image needs: each costs
    lookups. (A digest named many times is looked up once, so repeats are not counted.)"""
    named = {d.digest for d in (*manifest.blobs, *manifest.children)}
    if manifest.subject is not None:
        named.add(manifest.subject.digest)
    if len(named) > limit:
        raise RegistryError(Code.MANIFEST_INVALID, f"{len(named)} distinct descriptors; "
                            f"manifests are limited to {limit} (config, layers, subject, "
                            "index entries)")


async def _missing_after_write(ctx: Context, digest: Digest, manifest: Manifest) -> list[str]:
    """What the manifest needs that is gone now, checked after writing it and its tags.

    Garbage collection on another gateway may remove what `_check_references` found between
    that check and the writes. It puts back what a manifest or tag written meanwhile uses
    only if its last look comes after the write (see `management/gc.py`): when everything is
    still here after the write, any later deletion is followed by such a look. Otherwise the
    push fails and the client pushes again, rather than get a 201 for a broken image.
    """
    store, name = ctx.store, ctx.name
    seen: set[Digest] = set()

    async def manifest_ok(target: Digest) -> bool:
        return (await store.manifests.link(name, target) is not None
                and await store.blobs.get(target) is not None)

    async def blob_ok(target: Digest) -> bool:
        return await store.repositories.blob(name, target) is not None

    async def child_missing(child: Digest) -> list[str]:
        if child in seen:
            return []
        seen.add(child)
        found = await store.manifests.get(name, child)
        if found is None:
            return [str(child)]
        try:
            parsed = parse_manifest(found[1], found[0].media_type)
        except ManifestError:
            return []  # accepted when it was pushed; nothing more to check through it
        return await references_missing(parsed)

    async def references_missing(parsed: Manifest) -> list[str]:
        blobs = list(dict.fromkeys(d.digest for d in parsed.blobs if not d.external))
        gone = [str(d) for d in await _first_missing(blobs, blob_ok)]
        children = list(dict.fromkeys(c.digest for c in parsed.children))
        for start in range(0, len(children), LOOKUP_BATCH):
            if gone:
                break
            batch = children[start:start + LOOKUP_BATCH]
            for found in await asyncio.gather(*(child_missing(c) for c in batch)):
                gone += found
        return gone

    missing = [] if await manifest_ok(digest) else [str(digest)]
    return missing + await references_missing(manifest)


async def delete_manifest(request: web.BaseRequest, ctx: Context) -> web.StreamResponse:
    reference = ctx.params["reference"]
    ctx.reference = reference
    if is_digest(reference):
        digest = digest_param(reference)
        if await ctx.store.manifests.delete(ctx.name, digest) is None:
            raise RegistryError(Code.MANIFEST_UNKNOWN, {"digest": reference})
    elif not is_valid_tag(reference) or not await ctx.store.tags.delete(ctx.name, reference):
        raise RegistryError(Code.MANIFEST_UNKNOWN, {"tag": reference})
    log.info("manifest %(reference)s deleted from %(repository)s by %(fingerprint)s",
             {"reference": reference, "repository": ctx.name,
              "fingerprint": ctx.identity.fingerprint})
    return web.Response(status=202)
