"""The S3 / R2 driver on a real S3 server (SeaweedFS), beyond the shared storage contract:
R2's multipart rules as the server received them, the single-PutObject path, aborts and
the stale-upload sweep, constant memory, O(1) commit, backpressure, errors, settings."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import sshreg.storage.s3.driver as s3_driver
import sshreg.storage.s3.upload as s3_upload
from sshreg.storage.base import StorageError
from sshreg.storage.s3 import S3Driver, S3Settings, UploadTooLarge
from sshreg.storage.s3.settings import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE
from tests.conftest import S3_TEST_BUCKET, s3_test_driver
from tests.support.processes import free_port
from tests.support.rss import PeakRss
from tests.support.seaweedfs import SeaweedFS, assert_r2_parts, list_parts

MiB = 1 << 20
ODD_WRITES = [1, 4 * MiB + 13, 777_777, 3 * MiB - 1, 65_536, 2 * MiB + 5, 11]


def odd_sized(data: bytes) -> list[bytes]:
    """`data` cut into writes of awkward sizes, none aligned to a part."""
    pieces, offset, i = [], 0, 0
    while offset < len(data):
        n = ODD_WRITES[i % len(ODD_WRITES)]
        pieces.append(data[offset:offset + n])
        offset += n
        i += 1
    return pieces


class Calls:
    """The S3 operations a driver's client made, by name (a botocore event hook)."""

    def __init__(self, driver: S3Driver) -> None:
        self.names: list[str] = []
        driver.client.meta.events.register("before-call.s3.*", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.names.append(model.name)


class PartChecker:
    """A `before_complete` hook: checks R2's rule on what the server holds, and remembers."""

    def __init__(self, server: SeaweedFS, part_size: int) -> None:
        self.client = server.client()
        self.part_size = part_size
        self.seen: list[list[int]] = []

    def __call__(self, key: str, upload_id: str) -> None:
        self.seen.append(assert_r2_parts(self.client, S3_TEST_BUCKET, key, upload_id,
                                         self.part_size))


def hold_parts(driver: S3Driver) -> threading.Event:
    """Make every UploadPart of `driver` wait (up to 30 s) until the returned event is set."""
    gate = threading.Event()
    real = driver.client.upload_part

    def held(**params: Any) -> Any:
        gate.wait(30)
        return real(**params)

    driver.client.upload_part = held
    return gate


@pytest.fixture
async def make_driver(s3_server) -> AsyncIterator[Callable[..., S3Driver]]:
    drivers: list[S3Driver] = []

    def make(**settings: Any) -> S3Driver:
        driver = s3_test_driver(s3_server, **settings)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        await driver.close()


def uploads_under(server: SeaweedFS, driver: S3Driver) -> list[dict[str, Any]]:
    page = server.client().list_multipart_uploads(Bucket=S3_TEST_BUCKET,
                                                  Prefix=driver.settings.prefix)
    return page.get("Uploads", [])


async def read_all(driver: S3Driver, key: str) -> bytes:
    return b"".join([chunk async for chunk in driver.read(key)])


# -- R2's multipart rules ----------------------------------------------------------------


async def test_parts_are_all_part_size_but_the_last_whatever_the_writes(s3_server, make_driver):
    checker = PartChecker(s3_server, MIN_PART_SIZE)
    driver = make_driver(part_size=MIN_PART_SIZE)
    driver.before_complete = checker
    data = os.urandom(23 * MiB + 12_345)
    up = await driver.begin_upload("data/aa/blob")
    for piece in odd_sized(data):
        await up.write(piece)
    await up.commit()
    assert checker.seen == [[MIN_PART_SIZE] * 4 + [3 * MiB + 12_345]]
    assert uploads_under(s3_server, driver) == []
    assert await read_all(driver, "data/aa/blob") == data


@pytest.mark.parametrize("parts", [1, 2])
async def test_a_blob_of_whole_parts_ends_with_a_full_part(s3_server, make_driver, parts):
    checker = PartChecker(s3_server, MIN_PART_SIZE)
    driver = make_driver(part_size=MIN_PART_SIZE)
    driver.before_complete = checker
    data = os.urandom(parts * MIN_PART_SIZE)
    up = await driver.begin_upload("data/aa/whole")
    for piece in odd_sized(data):
        await up.write(piece)
    await up.commit()
    assert checker.seen == [[MIN_PART_SIZE] * parts]
    assert await read_all(driver, "data/aa/whole") == data


async def test_a_part_size_per_upload_overrides_the_driver_default(s3_server, make_driver):
    checker = PartChecker(s3_server, 6 * MiB)
    driver = make_driver(part_size=MIN_PART_SIZE)
    driver.before_complete = checker
    up = await driver.begin_upload("data/aa/six", part_size=6 * MiB)
    await up.write(os.urandom(13 * MiB))
    await up.commit()
    assert checker.seen == [[6 * MiB, 6 * MiB, MiB]]


@pytest.mark.parametrize("size", [0, MIN_PART_SIZE - 1])  # 0: an empty blob, never written to
async def test_a_blob_smaller_than_a_part_is_one_put_object(s3_server, make_driver, size):
    driver = make_driver(part_size=MIN_PART_SIZE)
    calls = Calls(driver)
    data = os.urandom(size)
    up = await driver.begin_upload("data/bb/small")
    for piece in odd_sized(data):
        await up.write(piece)
    assert calls.names == []  # nothing sent before commit
    await up.commit()
    assert calls.names == ["PutObject"]
    assert await read_all(driver, "data/bb/small") == data


async def test_the_multipart_upload_is_created_with_the_first_full_part(make_driver):
    driver = make_driver(part_size=MIN_PART_SIZE)
    calls = Calls(driver)
    up = await driver.begin_upload("data/bb/lazy")
    await up.write(os.urandom(MIN_PART_SIZE - 10))
    assert up.upload_id is None and calls.names == []
    await up.write(os.urandom(20))
    assert up.upload_id is not None
    await up.commit()
    assert up.upload_id is None  # completed: there is no multipart upload any more
    assert calls.names == ["CreateMultipartUpload", "UploadPart", "UploadPart",
                           "CompleteMultipartUpload"]
    assert not any(name.startswith(("Copy", "UploadPartCopy", "Get")) for name in calls.names)


async def test_a_blob_beyond_10000_parts_is_refused_before_it_gets_there(
        s3_server, make_driver, monkeypatch):
    monkeypatch.setattr(s3_upload, "MAX_PARTS", 3)
    driver = make_driver(part_size=MIN_PART_SIZE)
    up = await driver.begin_upload("data/bb/huge")
    assert up.max_size == 3 * MIN_PART_SIZE
    await up.write(os.urandom(3 * MIN_PART_SIZE))  # exactly the limit is fine
    with pytest.raises(UploadTooLarge):
        await up.write(b"x")
    with pytest.raises(StorageError):
        await up.commit()
    assert uploads_under(s3_server, driver) == []
    assert await driver.stat("data/bb/huge") is None


def test_the_default_part_size_fits_300_gib_in_10000_parts():
    settings = S3Settings(bucket="b")
    assert settings.part_size * MAX_PARTS >= 300 << 30
    assert MIN_PART_SIZE <= settings.part_size <= MAX_PART_SIZE


# -- aborts and the stale-upload sweep ---------------------------------------------------


async def test_abort_leaves_no_multipart_upload(s3_server, make_driver):
    driver = make_driver(part_size=MIN_PART_SIZE)
    up = await driver.begin_upload("data/cc/gone")
    await up.write(os.urandom(12 * MiB))
    assert [u["Key"] for u in uploads_under(s3_server, driver)] == [
        driver.settings.prefix + "data/cc/gone"]
    calls = Calls(driver)
    await up.abort()
    await up.abort()
    assert uploads_under(s3_server, driver) == []
    assert await driver.stat("data/cc/gone") is None
    with pytest.raises(StorageError):
        await up.write(b"more")
    with pytest.raises(StorageError):
        await up.commit()
    assert calls.names.count("AbortMultipartUpload") == 1  # the rest find nothing to do


@pytest.mark.parametrize("size", [1000, MIN_PART_SIZE + 1])  # one PutObject; multipart
async def test_abort_after_commit_keeps_the_object_whichever_way_it_was_sent(make_driver, size):
    driver = make_driver(part_size=MIN_PART_SIZE)
    data = os.urandom(size)
    up = await driver.begin_upload("data/cc/committed")
    await up.write(data)
    await up.commit()
    await up.abort()  # what a request's cleanup does whatever happened
    assert await read_all(driver, "data/cc/committed") == data


async def test_abort_answers_soon_and_aborts_even_while_a_part_hangs(
        s3_server, make_driver, monkeypatch):
    """A part upload that does not return (a stuck connection) holds neither the caller of
    `abort` beyond ABORT_ANSWER_WAIT nor the abort itself beyond ABORT_WAIT_SECONDS."""
    monkeypatch.setattr(s3_upload, "ABORT_ANSWER_WAIT", 0.2)
    monkeypatch.setattr(s3_upload, "ABORT_WAIT_SECONDS", 2.0)
    driver = make_driver(part_size=MIN_PART_SIZE)
    gate = hold_parts(driver)
    try:
        up = await driver.begin_upload("data/cc/hanging")
        await up.write(os.urandom(MIN_PART_SIZE))
        assert len(uploads_under(s3_server, driver)) == 1
        started = time.monotonic()
        await up.abort()
        assert time.monotonic() - started < 1.5
        for _ in range(100):  # the abort goes on in the background, past the stuck part
            if not uploads_under(s3_server, driver):
                break
            await asyncio.sleep(0.1)
        assert uploads_under(s3_server, driver) == []
    finally:
        gate.set()


async def test_abort_stale_uploads_removes_old_ones_under_the_prefix_only(
        s3_server, make_driver, monkeypatch):
    monkeypatch.setattr(s3_driver, "LIST_PAGE", 2)  # several pages of uploads
    driver = make_driver()
    other = make_driver()
    raw = s3_server.client()
    for i in range(5):  # what a crashed gateway leaves behind
        raw.create_multipart_upload(Bucket=S3_TEST_BUCKET, Key=f"{driver.settings.prefix}data/{i}")
    raw.create_multipart_upload(Bucket=S3_TEST_BUCKET, Key=f"{other.settings.prefix}data/x")
    await asyncio.sleep(2.5)  # upload times have a resolution of one second
    fresh = raw.create_multipart_upload(Bucket=S3_TEST_BUCKET,
                                        Key=f"{driver.settings.prefix}data/fresh")
    assert await driver.abort_stale_uploads(3600) == 0
    assert await driver.abort_stale_uploads(1.5) == 5
    assert [u["UploadId"] for u in uploads_under(s3_server, driver)] == [fresh["UploadId"]]
    assert len(uploads_under(s3_server, other)) == 1
    assert await other.abort_stale_uploads(0) == 1


async def test_a_failed_part_fails_the_next_write_and_aborts(s3_server, make_driver):
    driver = make_driver(part_size=MIN_PART_SIZE)
    real = driver.client.upload_part

    def flaky(**params: Any) -> Any:
        if params["PartNumber"] == 2:
            raise ConnectionResetError("injected")
        return real(**params)

    driver.client.upload_part = flaky
    up = await driver.begin_upload("data/cc/flaky")
    with pytest.raises(StorageError, match="injected"):
        for _ in range(10):
            await up.write(os.urandom(MIN_PART_SIZE))
            await asyncio.sleep(0.05)
    assert uploads_under(s3_server, driver) == []
    with pytest.raises(StorageError):
        await up.commit()
    assert await driver.stat("data/cc/flaky") is None


async def test_a_failed_last_part_fails_commit_and_aborts(s3_server, make_driver):
    driver = make_driver(part_size=MIN_PART_SIZE)
    real = driver.client.upload_part

    def failing_last(**params: Any) -> Any:
        if params["ContentLength"] < MIN_PART_SIZE:
            raise ConnectionResetError("injected")
        return real(**params)

    driver.client.upload_part = failing_last
    up = await driver.begin_upload("data/cc/last")
    await up.write(os.urandom(MIN_PART_SIZE + 100))
    with pytest.raises(StorageError):
        await up.commit()
    assert uploads_under(s3_server, driver) == []
    assert await driver.stat("data/cc/last") is None


@pytest.mark.parametrize(("operation", "size"), [("put_object", 1000),
                                               ("complete_multipart_upload", MIN_PART_SIZE + 1)])
async def test_a_commit_whose_answer_is_lost_leaves_no_object(make_driver, operation, size):
    """The answer to the PutObject of a small blob, or to the CompleteMultipartUpload of a
    large one, is lost (the connection dropped after the server stored the object): the
    commit fails, and the object it may have written is gone."""
    driver = make_driver(part_size=MIN_PART_SIZE)
    real = getattr(driver.client, operation)

    def answer_lost(**params: Any) -> Any:
        real(**params)
        raise ConnectionResetError("injected after the write")

    setattr(driver.client, operation, answer_lost)
    up = await driver.begin_upload("data/cc/unanswered")
    await up.write(os.urandom(size))
    with pytest.raises(StorageError, match="injected"):
        await up.commit()
    assert await driver.stat("data/cc/unanswered") is None


async def test_a_cancelled_write_makes_the_upload_unusable(s3_server, make_driver):
    driver = make_driver(part_size=MIN_PART_SIZE, part_concurrency=1)
    gate = hold_parts(driver)
    up = await driver.begin_upload("data/cc/cancelled")
    await up.write(os.urandom(MIN_PART_SIZE))
    task = asyncio.create_task(up.write(os.urandom(MIN_PART_SIZE)))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    with pytest.raises(StorageError):
        await up.write(b"x")
    assert uploads_under(s3_server, driver) == []


async def test_a_write_waiting_for_a_part_slot_fails_once_the_upload_is_aborted(
        s3_server, make_driver):
    driver = make_driver(part_size=MIN_PART_SIZE, part_concurrency=1)
    gate = hold_parts(driver)
    up = await driver.begin_upload("data/cc/aborted-waiting")
    await up.write(os.urandom(MIN_PART_SIZE))  # part 1 in flight, held
    waiting = asyncio.create_task(up.write(os.urandom(MIN_PART_SIZE)))  # part 2: no slot
    await asyncio.sleep(0.3)
    aborting = asyncio.create_task(up.abort())
    await asyncio.sleep(0.1)
    gate.set()  # part 1 lands and frees the slot part 2 waits for
    with pytest.raises(StorageError, match="aborted"):
        await waiting
    await aborting
    assert uploads_under(s3_server, driver) == []
    assert await driver.stat("data/cc/aborted-waiting") is None


async def test_an_upload_whose_multipart_upload_vanished_fails_to_commit(s3_server, make_driver):
    driver = make_driver(part_size=MIN_PART_SIZE)
    up = await driver.begin_upload("data/cc/swept")
    await up.write(os.urandom(MIN_PART_SIZE + 1))
    await asyncio.sleep(0.5)
    assert await driver.abort_stale_uploads(-60) == 1
    with pytest.raises(StorageError):
        await up.commit()
    assert await driver.stat("data/cc/swept") is None


async def test_an_upload_swept_just_before_it_completes_fails_to_commit(s3_server, make_driver):
    """The stale-upload sweep of another gateway aborts the multipart upload between the
    last part and CompleteMultipartUpload (an async `before_complete` hook runs it there)."""
    driver = make_driver(part_size=MIN_PART_SIZE)
    swept: list[int] = []

    async def sweep(key: str, upload_id: str) -> None:
        swept.append(await driver.abort_stale_uploads(-60))

    driver.before_complete = sweep
    up = await driver.begin_upload("data/cc/swept-late")
    await up.write(os.urandom(MIN_PART_SIZE + 1))
    with pytest.raises(StorageError, match="gone"):
        await up.commit()
    assert swept == [1]
    assert uploads_under(s3_server, driver) == []
    assert await driver.stat("data/cc/swept-late") is None


# -- backpressure, memory, commit time ---------------------------------------------------


async def test_write_waits_for_a_free_part_slot(s3_server, make_driver):
    driver = make_driver(part_size=MIN_PART_SIZE, part_concurrency=2)
    gate = threading.Event()
    started: list[int] = []
    real = driver.client.upload_part

    def slow(**params: Any) -> Any:
        started.append(params["PartNumber"])
        gate.wait(30)
        return real(**params)

    driver.client.upload_part = slow
    up = await driver.begin_upload("data/dd/slow")
    part = os.urandom(MIN_PART_SIZE)
    await asyncio.wait_for(up.write(part), 10)  # part 1 in flight
    await asyncio.wait_for(up.write(part), 10)  # part 2 in flight: both slots taken
    third = asyncio.create_task(up.write(part))  # part 3 is full and must wait
    await asyncio.sleep(1.0)
    assert not third.done()
    assert sorted(started) == [1, 2]
    gate.set()
    await asyncio.wait_for(third, 30)
    await asyncio.wait_for(up.commit(), 60)
    assert sorted(started) == [1, 2, 3]
    info = await driver.stat("data/dd/slow")
    assert info is not None and info.size == 3 * MIN_PART_SIZE


async def test_concurrent_uploads_share_the_drivers_budget_of_parts_in_flight(make_driver):
    driver = make_driver(part_size=MIN_PART_SIZE, part_concurrency=2, parts_in_flight=2)
    lock = threading.Lock()
    active = [0, 0]  # now, peak
    real = driver.client.upload_part

    def counted(**params: Any) -> Any:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        try:
            time.sleep(0.2)
            return real(**params)
        finally:
            with lock:
                active[0] -= 1

    driver.client.upload_part = counted
    part = os.urandom(MIN_PART_SIZE)

    async def push(name: str) -> None:
        up = await driver.begin_upload(f"data/bb/{name}")
        for _ in range(3):
            await up.write(part)
        await up.commit()

    await asyncio.wait_for(asyncio.gather(*(push(f"u{i}") for i in range(4))), 120)
    assert active[1] == 2  # four uploads of up to two parts each, two parts at a time
    for i in range(4):
        assert (await driver.stat(f"data/bb/u{i}")).size == 3 * MIN_PART_SIZE


async def timed_upload(driver: S3Driver, key: str, size: int, source: bytes
                       ) -> tuple[float, float, str]:
    """Upload `size` bytes cut from `source`; returns (write seconds, commit seconds, sha256)."""
    up = await driver.begin_upload(key)
    digest = hashlib.sha256()
    view = memoryview(source)
    written, i = 0, 0
    started = time.monotonic()
    while written < size:
        n = min(ODD_WRITES[i % len(ODD_WRITES)] + 3 * MiB, size - written)
        offset = (written * 7) % (len(source) - n)
        piece = view[offset:offset + n]
        digest.update(piece)
        await up.write(piece)
        written += n
        i += 1
    wrote = time.monotonic()
    await up.commit()
    return wrote - started, time.monotonic() - wrote, digest.hexdigest()


async def test_a_2_gib_upload_runs_in_constant_memory_and_commits_in_constant_time(
        s3_server, make_driver):
    part_size = 8 * MiB
    checker = PartChecker(s3_server, part_size)
    driver = make_driver(part_size=part_size, part_concurrency=4)
    driver.before_complete = checker
    source = os.urandom(16 * MiB)
    _, small_commit, _ = await timed_upload(driver, "data/ee/small", 64 * MiB, source)
    with PeakRss(interval=0.02) as rss:
        seconds, big_commit, digest = await timed_upload(driver, "data/ee/big", 2 << 30, source)
    print(f"\n2 GiB: {2048 / seconds:.0f} MiB/s writing, commit {big_commit:.3f}s "
          f"(64 MiB: {small_commit:.3f}s), RSS {rss.baseline / MiB:.0f} MiB at the start, "
          f"peak growth {rss.growth / MiB:.0f} MiB")
    assert rss.growth < 100 * MiB, f"RSS grew by {rss.growth / MiB:.0f} MiB"
    assert big_commit < max(1.0, 4 * small_commit), (big_commit, small_commit)
    assert [len(seen) for seen in checker.seen] == [8, 256]
    info = await driver.stat("data/ee/big")
    assert info is not None and info.size == 2 << 30
    check = hashlib.sha256()
    async for chunk in driver.read("data/ee/big"):
        check.update(chunk)
    assert check.hexdigest() == digest


# -- small objects and listings ----------------------------------------------------------


async def test_list_pages_through_many_keys_in_order(make_driver, monkeypatch):
    monkeypatch.setattr(s3_driver, "LIST_PAGE", 3)
    driver = make_driver()
    names = [f"tags/v{i:02d}" for i in range(11)]
    for name in reversed(names):
        await driver.put(name, b"")
    assert [o.key async for o in driver.list("tags/")] == names
    assert [o.key async for o in driver.list("tags/", "tags/v04")] == names[5:]


async def test_keys_live_under_the_prefix_and_prefixes_are_isolated(s3_server, make_driver):
    one, two = make_driver(), make_driver()
    await one.put("catalog/x/_repository", b"1")
    assert await two.get("catalog/x/_repository") is None
    assert [o.key async for o in two.list("")] == []
    assert [o.key async for o in one.list("")] == ["catalog/x/_repository"]
    raw = s3_server.client().get_object(Bucket=S3_TEST_BUCKET,
                                        Key=one.settings.prefix + "catalog/x/_repository")
    assert raw["Body"].read() == b"1"


async def test_presigned_url_serves_the_object(make_driver):
    driver = make_driver()
    await driver.put("data/ff/p", b"presigned bytes")
    url = await driver.presign("data/ff/p", 60)
    assert url is not None and "X-Amz-Signature=" in url
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    assert body == b"presigned bytes"
    forever = await driver.presign("data/ff/p", 10**9)
    assert "X-Amz-Expires=604800" in forever


@pytest.mark.parametrize("key", ["", "/a", "a//b", "a/../b", "a/./b"])
async def test_invalid_keys_are_refused(make_driver, key):
    driver = make_driver()
    with pytest.raises(ValueError):
        await driver.put(key, b"")


# -- errors ------------------------------------------------------------------------------


async def test_an_unreachable_endpoint_is_a_storage_error(tmp_path):
    port = free_port()
    driver = S3Driver(S3Settings(bucket="b", endpoint_url=f"http://127.0.0.1:{port}",
                                 access_key_id="a", secret_access_key="s", max_attempts=2,
                                 connect_timeout=1, read_timeout=2))
    try:
        with pytest.raises(StorageError):
            await driver.get("x")
        with pytest.raises(StorageError):
            await driver.put("x", b"1", if_none_match=True)
        with pytest.raises(StorageError):
            [o async for o in driver.list("")]
    finally:
        await driver.close()


async def test_a_missing_bucket_or_bad_credentials_are_storage_errors(s3_server):
    missing = S3Driver(S3Settings(bucket="no-such-bucket", endpoint_url=s3_server.endpoint_url,
                                  access_key_id=s3_server.access_key,
                                  secret_access_key=s3_server.secret_key, max_attempts=1))
    wrong = S3Driver(S3Settings(bucket=S3_TEST_BUCKET, endpoint_url=s3_server.endpoint_url,
                                access_key_id=s3_server.access_key,
                                secret_access_key="not-the-secret", max_attempts=1))
    try:
        # Not None: a missing bucket must not pass for a missing object. (HEAD cannot tell:
        # its 404 has no body, so `stat` on a missing bucket is None.)
        attempts = [(d, op) for d in (missing, wrong) for op in ("put", "get", "list")]
        attempts.append((wrong, "stat"))
        for driver, op in attempts:
            with pytest.raises(StorageError) as err:
                if op == "put":
                    await driver.put("x", b"1")
                elif op == "list":
                    [o async for o in driver.list("")]
                else:
                    await getattr(driver, op)("x")
            assert "not-the-secret" not in str(err.value), op
            assert s3_server.secret_key not in str(err.value), op
    finally:
        await missing.close()
        await wrong.close()


async def test_a_server_that_stops_mid_upload_fails_the_upload(tmp_path):
    server = SeaweedFS(tmp_path, bucket="stopping").start()
    driver: S3Driver | None = None
    try:
        driver = S3Driver(S3Settings(bucket="stopping", endpoint_url=server.endpoint_url,
                                     access_key_id=server.access_key,
                                     secret_access_key=server.secret_key,
                                     part_size=MIN_PART_SIZE, max_attempts=2,
                                     connect_timeout=1, read_timeout=5))
        up = await driver.begin_upload("data/x")
        await up.write(os.urandom(MIN_PART_SIZE + 1))
        server.stop()
        started = time.monotonic()
        with pytest.raises(StorageError):
            for _ in range(5):
                await up.write(os.urandom(MIN_PART_SIZE))
            await up.commit()
        with contextlib.suppress(StorageError):  # the abort cannot reach the server either
            await up.abort()
        assert time.monotonic() - started < 60
    finally:
        server.stop()
        if driver is not None:
            await driver.close()


# -- configuration -----------------------------------------------------------------------


def test_settings_from_an_s3_url():
    settings = S3Settings.from_url("s3://my-bucket/some/prefix/", endpoint_url=None,
                                   region="", part_size=8 * MiB, part_concurrency=3)
    assert (settings.bucket, settings.prefix, settings.region) == ("my-bucket", "some/prefix/",
                                                                   "auto")
    assert (settings.part_size, settings.part_concurrency, settings.pool_threads) == (
        8 * MiB, 3, 14)
    assert S3Settings.from_url("s3://b").prefix == ""
    with pytest.raises(ValueError):
        S3Settings.from_url("https://b/x")
    with pytest.raises(TypeError):
        S3Settings.from_url("s3://b", colour="blue")
    with pytest.raises(ValueError):
        S3Settings(bucket="b", part_size=4 * MiB)
    with pytest.raises(ValueError):
        S3Settings(bucket="b", part_size=(5 << 30) + 1)
    with pytest.raises(ValueError):
        S3Settings(bucket="b", access_key_id="only-half")


def test_secrets_stay_out_of_reprs():
    settings = S3Settings(bucket="b", endpoint_url="https://acct.r2.cloudflarestorage.com",
                          access_key_id="AKIDSECRETISH", secret_access_key="very-secret-value")
    driver = S3Driver(settings)
    try:
        assert "very-secret-value" not in repr(settings) + repr(driver)
        assert "AKIDSECRETISH" not in repr(settings) + repr(driver)
    finally:
        driver._pool.shutdown()


@pytest.mark.parametrize(("endpoint", "setting", "signed"), [
    ("https://acct.r2.cloudflarestorage.com", None, False),
    ("http://127.0.0.1:9000", None, False),
    ("http://localhost:9000", None, False),
    ("http://10.1.2.3:9000", None, True),
    ("https://acct.r2.cloudflarestorage.com", True, True),
    ("http://10.1.2.3:9000", False, False),
])
def test_payload_signing_is_skipped_only_where_the_body_is_protected(endpoint, setting, signed):
    driver = S3Driver(S3Settings(bucket="b", endpoint_url=endpoint, access_key_id="a",
                                 secret_access_key="s", sign_payload=setting))
    try:
        assert driver.signs_payload is signed
        config = driver.client.meta.config
        assert config.s3["payload_signing_enabled"] is signed
        assert config.request_checksum_calculation == "when_required"
        assert config.response_checksum_validation == "when_required"
        assert config.retries["mode"] == "standard"
        assert config.max_pool_connections >= driver.settings.part_concurrency + 4
    finally:
        driver._pool.shutdown()


@pytest.mark.parametrize("sign_payload", [False, True])
async def test_part_bodies_are_sent_as_configured_and_accepted(s3_server, make_driver,
                                                               sign_payload):
    driver = make_driver(part_size=MIN_PART_SIZE, sign_payload=sign_payload)
    sent: list[tuple[str, bytes, bool]] = []

    def capture(request: Any, **_: Any) -> None:
        headers = request.headers
        sent.append((request.method, headers.get("x-amz-content-sha256", b""),
                     any(h.lower().startswith("x-amz-checksum") or h.lower() == "content-md5"
                         for h in headers)))

    driver.client.meta.events.register("before-send.s3.UploadPart", capture)
    up = await driver.begin_upload("data/gg/signed")
    await up.write(os.urandom(MIN_PART_SIZE + 5))
    await up.commit()
    assert len(sent) == 2
    for method, sha, checksum in sent:
        assert method == "PUT" and not checksum
        assert (sha != b"UNSIGNED-PAYLOAD") is sign_payload
    assert await driver.stat("data/gg/signed") is not None


async def test_endpoint_and_credentials_come_from_the_environment(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    driver = S3Driver.from_url(f"s3://{S3_TEST_BUCKET}/env-test", endpoint_url=None)
    try:
        assert driver.endpoint_url == s3_server.endpoint_url
        await driver.put("k", b"from the environment")
        blob = await driver.get("k")
        assert blob is not None and blob.data == b"from the environment"
        await driver.delete("k")
    finally:
        await driver.close()


async def test_list_parts_helper_sees_uploaded_parts(s3_server, make_driver):
    """The test hook's own view: ListParts reports each part's size (SeaweedFS does)."""
    driver = make_driver(part_size=MIN_PART_SIZE)
    seen: list[list[int]] = []

    def hook(key: str, upload_id: str) -> None:
        seen.append([p["Size"] for p in list_parts(s3_server.client(), S3_TEST_BUCKET, key,
                                                   upload_id)])

    driver.before_complete = hook
    up = await driver.begin_upload("data/hh/parts")
    await up.write(os.urandom(2 * MIN_PART_SIZE + 1))
    await up.commit()
    assert seen == [[MIN_PART_SIZE, MIN_PART_SIZE, 1]]
