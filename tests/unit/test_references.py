"""Digest, repository name and tag parsing against the distribution spec's grammar."""

from __future__ import annotations

import hashlib

import pytest

from sshreg.references import Digest, is_digest, is_valid_name, is_valid_tag

SHA256_HEX = hashlib.sha256(b"x").hexdigest()
SHA512_HEX = hashlib.sha512(b"x").hexdigest()


def test_sha256_digest_parses_into_algorithm_and_hex():
    digest = Digest.parse(f"sha256:{SHA256_HEX}")
    assert (digest.algorithm, digest.hex) == ("sha256", SHA256_HEX)
    assert str(digest) == f"sha256:{SHA256_HEX}"


def test_sha512_digest_parses_into_algorithm_and_hex():
    digest = Digest.parse(f"sha512:{SHA512_HEX}")
    assert (digest.algorithm, digest.hex) == ("sha512", SHA512_HEX)


@pytest.mark.parametrize("text", [
    "",
    SHA256_HEX,                              # no algorithm
    f"sha256:{SHA256_HEX[:-1]}",             # too short
    f"sha256:{SHA256_HEX}0",                 # too long
    f"sha256:{SHA256_HEX.upper()}",          # the spec's encoding is lowercase hex
    f"sha256:{SHA512_HEX}",                  # sha512 length under sha256
    f"sha512:{SHA256_HEX}",                  # sha256 length under sha512
    f"md5:{hashlib.md5(b'x').hexdigest()}",  # an algorithm we cannot verify
    f"sha256:{'g' * 64}",                    # not hex
    f"sha256:../../{'a' * 58}",              # a path in disguise
    f"SHA256:{SHA256_HEX}",
    f" sha256:{SHA256_HEX}",
    f"sha256:{SHA256_HEX}\n",
    "sha256:totallywrong",
])
def test_malformed_or_unsupported_digest_is_rejected(text):
    with pytest.raises(ValueError):
        Digest.parse(text)


def test_digest_of_bytes_matches_hashlib_for_both_algorithms():
    assert Digest.of(b"abc") == Digest("sha256", hashlib.sha256(b"abc").hexdigest())
    assert Digest.of(b"abc", "sha512") == Digest("sha512", hashlib.sha512(b"abc").hexdigest())


def test_digest_hasher_uses_the_digest_algorithm():
    hasher = Digest.parse(f"sha512:{SHA512_HEX}").hasher()
    hasher.update(b"x")
    assert hasher.hexdigest() == SHA512_HEX


@pytest.mark.parametrize("name", [
    "a", "library/ubuntu", "a0/b1/c2", "my-app", "my--app", "my.app", "my_app", "my__app",
    "team/app/x", "0", "a" * 255,
])
def test_valid_repository_names_are_accepted(name):
    assert is_valid_name(name)


@pytest.mark.parametrize("name", [
    "", "../x", "x/..", "x/../y", "..", ".", "./x", "a//b", "/a", "a/", "A", "Library/ubuntu",
    "a___b", "a_-b", "-a", "a-", "_a", "a.", ".a", "a..b", "a b", "a%2fb", "a\\b", "a\nb",
    "a" * 256, "ü",
])
def test_invalid_repository_names_are_rejected(name):
    assert not is_valid_name(name)


@pytest.mark.parametrize("tag", ["latest", "v1.0.0", "_private", "A", "1", "a-b_c.D", "a" * 128])
def test_valid_tags_are_accepted(tag):
    assert is_valid_tag(tag)


@pytest.mark.parametrize("tag", ["", "-a", ".a", "..", "a/b", "a:b", "a" * 129, "a b", "ü",
                                 f"sha256:{SHA256_HEX}"])
def test_invalid_tags_are_rejected(tag):
    assert not is_valid_tag(tag)


def test_a_reference_with_a_colon_is_a_digest_and_a_tag_is_not():
    assert is_digest(f"sha256:{SHA256_HEX}")
    assert is_digest("sha256:nonsense")  # meant as a digest, rejected later as malformed
    assert not is_digest("latest")
