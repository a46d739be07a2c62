"""`Range` on blob GET (RFC 9110) and `Content-Range` on upload PATCH (OCI)."""

from __future__ import annotations

import pytest

from sshreg.registry.errors import Code, RegistryError
from sshreg.registry.ranges import parse_content_range, parse_range


def test_no_range_header_means_the_whole_blob():
    assert parse_range(None, 10) is None
    assert parse_range("", 10) is None


@pytest.mark.parametrize(("header", "expected"), [
    ("bytes=0-0", (0, 0)),
    ("bytes=0-9", (0, 9)),
    ("bytes=2-5", (2, 5)),
    ("bytes=9-9", (9, 9)),
    ("bytes=3-", (3, 9)),
    ("bytes=0-", (0, 9)),
    ("bytes=-1", (9, 9)),
    ("bytes=-4", (6, 9)),
    (" bytes=2-5 ", (2, 5)),
])
def test_satisfiable_range_is_returned_inclusive(header, expected):
    assert parse_range(header, 10) == expected


def test_range_past_the_end_is_clamped_to_the_last_byte():
    assert parse_range("bytes=5-1000", 10) == (5, 9)


def test_suffix_longer_than_the_blob_covers_the_whole_blob():
    assert parse_range("bytes=-100", 10) == (0, 9)


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=99-", "bytes=-0"])
def test_range_outside_the_blob_is_416_with_the_size_in_content_range(header):
    with pytest.raises(RegistryError) as raised:
        parse_range(header, 10)
    assert raised.value.status == 416
    assert raised.value.headers["Content-Range"] == "bytes */10"


def test_any_range_of_an_empty_blob_is_416():
    for header in ("bytes=0-", "bytes=0-0", "bytes=-1"):
        with pytest.raises(RegistryError) as raised:
            parse_range(header, 0)
        assert raised.value.status == 416


@pytest.mark.parametrize("header", [
    "bytes=5-2",            # last < first: syntactically invalid, ignored (RFC 9110 14.1.1)
    "bytes=0-1,4-5",        # multiple ranges: we may ignore them
    "items=0-1",            # another unit
    "bytes=-",
    "bytes=a-b",
    "bytes=" + "9" * 20 + "-",
    "0-5",
])
def test_invalid_or_multi_range_header_is_ignored(header):
    assert parse_range(header, 10) is None


@pytest.mark.parametrize(("header", "expected"), [
    ("0-0", (0, 0)),
    ("0-99", (0, 99)),
    ("100-199", (100, 199)),
    ("bytes 0-99", (0, 99)),    # Content-Range as RFC 9110 writes it
    ("bytes=0-99", (0, 99)),    # as some clients write it
    ("bytes 0-99/100", (0, 99)),
    ("bytes 0-99/*", (0, 99)),
])
def test_content_range_is_parsed_inclusive(header, expected):
    assert parse_content_range(header) == expected


@pytest.mark.parametrize("header", ["", "0-", "-5", "a-b", "0-5-6", "bytes", "1" * 20 + "-" + "1" * 20])
def test_malformed_content_range_is_blob_upload_invalid(header):
    with pytest.raises(RegistryError) as raised:
        parse_content_range(header)
    assert raised.value.code is Code.BLOB_UPLOAD_INVALID
    assert raised.value.status == 400


def test_backwards_content_range_is_416():
    with pytest.raises(RegistryError) as raised:
        parse_content_range("10-5")
    assert raised.value.status == 416
