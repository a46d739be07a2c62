"""Every key the registry writes on a `Driver`, and the parsing of keys back into names and
digests: the only module that knows the layout.

Layout (every key below is a small object unless noted):

    data/<xx>/<uuid>                                   blob bytes (large; written by an Upload)
    blobs/<alg>/<xx>/<hex>                             blob record: {"key": data key, "size": n}
    catalog/<name>/_repository                         marker: the repository exists
    repositories/<name>/_layers/<alg>/<hex>            the repository may serve this blob
    repositories/<name>/_manifests/revisions/<alg>/<hex>   manifest link: {"mediaType", "size", ...}
    repositories/<name>/_manifests/tags/<tag>          the tag's digest
    repositories/<name>/_referrers/<alg>/<hex>/<alg>/<hex> a descriptor of a manifest whose
                                                       subject is the first digest
    gc/running                                         the lease of a collection that deletes
    gc/clock                                           written to read the storage's clock
    mirror/checked/<name>/_tags/<tag>                  a mirrored tag was checked upstream at
                                                       this object's modification time
    mirror/pulled/<name>/_pulled                       a mirrored repository was pulled about
                                                       then (written at most hourly)
    events/log/<ms>-<gateway>-<n>                      one event (JSON), in time order
    events/deliveries/<webhook>/lease|cursor           who delivers to a webhook, and how far
"""

from __future__ import annotations

import uuid

from ..references import Digest

BLOB_DATA = "data/"
BLOB_RECORDS = "blobs/"
CATALOG = "catalog/"
REPOSITORY_MARKER = "_repository"
HEALTH_PROBE = "catalog/_health"  # read, never written: any answer means storage is up
GC_LEASE_KEY = "gc/running"  # held by a garbage collection that deletes (management/lease.py)
GC_CLOCK_KEY = "gc/clock"
MIRROR_CHECKED = "mirror/checked/"
MIRROR_PULLED = "mirror/pulled/"


def _digest_path(digest: Digest) -> str:
    return f"{digest.algorithm}/{digest.hex}"


def digest_from_path(path: str) -> Digest:
    """The digest of `<alg>/<hex>` (the end of a link key); ValueError if it is not one."""
    algorithm, _, encoded = path.partition("/")
    return Digest.parse(f"{algorithm}:{encoded}")


def new_blob_data() -> str:
    """A fresh key for the bytes of one upload."""
    name = uuid.uuid4().hex
    return f"{BLOB_DATA}{name[:2]}/{name}"


def blob_record(digest: Digest) -> str:
    return f"{BLOB_RECORDS}{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def blob_record_digest(key: str) -> Digest:
    """The digest a blob record key names; ValueError if it names none."""
    algorithm, _, rest = key[len(BLOB_RECORDS):].partition("/")
    return Digest.parse(f"{algorithm}:{rest.rpartition('/')[2]}")


def repository_marker(name: str) -> str:
    return f"{CATALOG}{name}/{REPOSITORY_MARKER}"


def marked_repository(key: str) -> str | None:
    """The repository a catalog key marks, or None if it is no marker."""
    suffix = "/" + REPOSITORY_MARKER
    return key[len(CATALOG): -len(suffix)] if key.endswith(suffix) else None


def _repository(name: str) -> str:
    return f"repositories/{name}"


def layer_links(name: str) -> str:
    return f"{_repository(name)}/_layers/"


def layer_link(name: str, digest: Digest) -> str:
    return layer_links(name) + _digest_path(digest)


def manifest_revisions(name: str) -> str:
    return f"{_repository(name)}/_manifests/revisions/"


def manifest_revision(name: str, digest: Digest) -> str:
    return manifest_revisions(name) + _digest_path(digest)


def tags(name: str) -> str:
    return f"{_repository(name)}/_manifests/tags/"


def tag(name: str, tag: str) -> str:
    return tags(name) + tag


def referrers(name: str, subject: Digest) -> str:
    return f"{_repository(name)}/_referrers/{_digest_path(subject)}/"


def referrer(name: str, subject: Digest, digest: Digest) -> str:
    return referrers(name, subject) + _digest_path(digest)


def tag_of(name: str, key: str) -> str:
    """The tag a key under `tags(name)` names."""
    return key[len(tags(name)):]


def mirror_checked(name: str, tag: str) -> str:
    """`_tags` cannot be a name's component (they start with a letter or digit), so no key
    here is also the folder of another repository's keys."""
    return f"{MIRROR_CHECKED}{name}/_tags/{tag}"


def mirror_pulled(name: str) -> str:
    """As mirror_checked: `_pulled` is no name's component."""
    return f"{MIRROR_PULLED}{name}/_pulled"


EVENTS = "events/log/"
EVENT_DELIVERIES = "events/deliveries/"


def event(event_id: str) -> str:
    return EVENTS + event_id


def event_delivery(webhook: str, what: str) -> str:
    """The lease or the cursor of one webhook's deliveries."""
    return f"{EVENT_DELIVERIES}{webhook}/{what}"
