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


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=99-", "bytes=-0",
                                    f"bytes={2**63 - 1}-"])
def test_range_outside_the_blob_is_416_with_the_size_in_content_range(header):
    with pytest.raises(RegistryError) as raised:
        parse_range(header, 10)
    assert raised.value.status == 416
    assert raised.value.headers["Content-Range"] == "bytes */10"
    assert raised.value.detail == header  # the client sees which range was refused


def test_range_offsets_up_to_2_63_are_read():
    assert parse_range(f"bytes=0-{2**63 - 1}", 10) == (0, 9)  # 19 digits
    assert parse_range(f"bytes=-{2**63 - 1}", 10) == (0, 9)


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


# Digits of other scripts: `\d` matches most of them and int() reads them (U+0663 is 3).
OTHER_DIGITS = ["\u0663", "\uff13", "\u07c3", "\u00b2"]


@pytest.mark.parametrize("digit", OTHER_DIGITS)
def test_a_range_written_with_digits_other_than_ascii_is_ignored(digit):
    for header in (f"bytes={digit}-", f"bytes=0-{digit}", f"bytes=-{digit}"):
        assert parse_range(header, 10) is None, header


def test_range_whitespace_is_only_what_http_allows():
    assert parse_range("\tbytes=2-5 ", 10) == (2, 5)
    assert parse_range("\u00a0bytes=2-5", 10) is None  # NO-BREAK SPACE is not HTTP whitespace


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


def test_content_range_offsets_up_to_2_63_are_read():
    assert parse_content_range(f"{2**62}-{2**63 - 1}") == (2**62, 2**63 - 1)  # 19 digits each


@pytest.mark.parametrize("header", ["", "0-", "-5", "a-b", "0-5-6", "bytes",
                                    "1" * 20 + "-" + "1" * 20, "0-" + "1" * 20, "1" * 20 + "-0"])
def test_malformed_content_range_is_blob_upload_invalid_and_quoted_back(header):
    with pytest.raises(RegistryError) as raised:
        parse_content_range(header)
    assert raised.value.code is Code.BLOB_UPLOAD_INVALID
    assert raised.value.status == 400
    assert repr(header) in raised.value.detail  # the client sees which header was refused


@pytest.mark.parametrize("header", [f"{d}-9" for d in OTHER_DIGITS] + [
    f"0-{d}" for d in OTHER_DIGITS] + ["bytes 0-9/\u0663", "\u00a00-9", "0-9\u2003"])
def test_content_range_written_with_digits_other_than_ascii_is_blob_upload_invalid(header):
    with pytest.raises(RegistryError) as raised:
        parse_content_range(header)
    assert raised.value.code is Code.BLOB_UPLOAD_INVALID


def test_backwards_content_range_is_416_and_quoted_back():
    with pytest.raises(RegistryError) as raised:
        parse_content_range("10-5")
    assert raised.value.status == 416
    assert raised.value.code is Code.BLOB_UPLOAD_INVALID
    assert "'10-5'" in raised.value.detail
