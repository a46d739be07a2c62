"""`GET /v2/<name>/tags/list` and `GET /v2/_catalog`: sorted, paginated with `n`, `last`, `Link`."""

from __future__ import annotations

import re

import pytest

from .helpers_api import assert_error, push_blob, push_image, put_manifest

TAGS = ["v1", "latest", "A", "Z", "_x", "v10", "v2", "a.b", "a-b", "a_b", "1.0"]
LINK = re.compile(r'<(?P<url>[^>]+)>; rel="next"')


@pytest.fixture
async def tagged(client) -> list[str]:
    """An `app` repository carrying TAGS; returns them in the order the registry must list them."""
    image = await push_image(client, "app")
    for tag in TAGS:
        assert (await put_manifest(client, "app", tag, image.manifest)).status == 201
    return sorted(TAGS)  # byte order, as distribution's sort.Strings


async def list_tags(client, query: str = "", name: str = "app"):
    resp = await client.get(f"/v2/{name}/tags/list{query}")
    assert resp.status == 200, await resp.text()
    return resp, await resp.json()


async def test_tags_list_is_sorted_lexically(client, tagged):
    _, body = await list_tags(client)
    assert body == {"name": "app", "tags": tagged}
    assert body["tags"][:3] == ["1.0", "A", "Z"]  # digits, then upper case, then `_` and lower case


async def test_tags_list_n_limits_the_page_and_links_to_the_next(client, tagged):
    resp, body = await list_tags(client, "?n=4")
    assert body["tags"] == tagged[:4]
    match = LINK.fullmatch(resp.headers["Link"])
    assert match is not None
    assert match["url"] == f"/v2/app/tags/list?n=4&last={tagged[3]}"


async def test_following_link_headers_walks_every_tag_once_in_order(client, tagged):
    seen: list[str] = []
    url = "/v2/app/tags/list?n=3"
    pages = 0
    while url:
        resp = await client.get(url)
        assert resp.status == 200
        page = (await resp.json())["tags"]
        assert 0 < len(page) <= 3
        seen += page
        pages += 1
        link = resp.headers.get("Link")
        url = LINK.fullmatch(link)["url"] if link else ""
    assert seen == tagged
    assert pages == -(-len(tagged) // 3)


async def test_tags_list_last_starts_after_the_given_tag(client, tagged):
    _, body = await list_tags(client, f"?n=3&last={tagged[2]}")
    assert body["tags"] == tagged[3:6]
    _, body = await list_tags(client, f"?last={tagged[2]}")  # `n` is optional with `last`
    assert body["tags"] == tagged[3:]
    _, body = await list_tags(client, f"?last={tagged[0]}")
    assert body["tags"] == tagged[1:]


async def test_tags_list_last_need_not_be_an_existing_tag(client, tagged):
    _, body = await list_tags(client, "?last=b")
    assert body["tags"] == [t for t in tagged if t > "b"]


async def test_tags_list_last_page_has_no_link(client, tagged):
    resp, body = await list_tags(client, f"?n={len(tagged)}")
    assert body["tags"] == tagged
    assert "Link" not in resp.headers
    resp, body = await list_tags(client, f"?n=100&last={tagged[-2]}")
    assert body["tags"] == tagged[-1:]
    assert "Link" not in resp.headers
    resp, body = await list_tags(client, f"?n=5&last={tagged[-1]}")
    assert body["tags"] == []
    assert "Link" not in resp.headers


async def test_tags_list_n_zero_is_an_empty_list_without_link(client, tagged):
    resp, body = await list_tags(client, "?n=0")
    assert body == {"name": "app", "tags": []}
    assert "Link" not in resp.headers


async def test_tags_list_of_an_unknown_repository_is_404_name_unknown(client):
    resp = await client.get("/v2/nothing-here/tags/list")
    await assert_error(resp, 404, "NAME_UNKNOWN")


async def test_tags_list_of_a_repository_without_tags_is_empty(client):
    await push_blob(client, "blobs-only", b"data")
    _, body = await list_tags(client, name="blobs-only")
    assert body == {"name": "blobs-only", "tags": []}


async def test_tags_list_of_a_nested_repository_lists_only_its_own_tags(client):
    await push_image(client, "a", "parent")
    await push_image(client, "a/b", "child", seed="c")
    assert (await list_tags(client, name="a"))[1]["tags"] == ["parent"]
    assert (await list_tags(client, name="a/b"))[1] == {"name": "a/b", "tags": ["child"]}


@pytest.mark.parametrize("n", ["-1", "abc", "1.5"])
async def test_tags_list_with_a_malformed_n_is_400(client, tagged, n):
    resp = await client.get(f"/v2/app/tags/list?n={n}")
    assert resp.status == 400


# Digits of other scripts, which str.isdigit() takes and int() refuses (superscript two) or
# reads (Arabic-Indic three, fullwidth one, NKo zero), and what int() tolerates around ASCII
# digits (spaces, sign, underscore).
NOT_ASCII_DIGITS = ["\u00b2", "\u0663", "\uff11", "1\u00b2", "\u07c0", " 1", "1 ", "+1", "1_0",
                    "\u00a01"]


@pytest.mark.parametrize("n", NOT_ASCII_DIGITS)
async def test_tags_list_and_catalog_with_an_n_not_in_ascii_digits_are_400_size_invalid(
        client, tagged, n):
    for path in ("/v2/app/tags/list", "/v2/_catalog"):
        resp = await client.get(path, params={"n": n})
        await assert_error(resp, 400, "SIZE_INVALID")


# -- _catalog ----------------------------------------------------------------------------


REPOSITORIES = ["zeta", "alpha", "team/app", "team/base", "a/b/c", "alpha-2", "b"]


@pytest.fixture
async def repositories(client) -> list[str]:
    for name in REPOSITORIES:
        await push_blob(client, name, name.encode())
    return sorted(REPOSITORIES)


async def test_catalog_lists_every_repository_sorted(client, repositories):
    resp = await client.get("/v2/_catalog")
    assert resp.status == 200
    assert await resp.json() == {"repositories": repositories}


async def test_catalog_of_an_empty_registry_is_an_empty_list(client):
    resp = await client.get("/v2/_catalog")
    assert await resp.json() == {"repositories": []}


async def test_catalog_pagination_follows_link_headers(client, repositories):
    resp = await client.get("/v2/_catalog?n=2")
    assert (await resp.json())["repositories"] == repositories[:2]
    assert LINK.fullmatch(resp.headers["Link"])["url"] == \
        f"/v2/_catalog?n=2&last={repositories[1].replace('/', '%2F')}"
    seen: list[str] = []
    url = "/v2/_catalog?n=2"
    while url:
        resp = await client.get(url)
        seen += (await resp.json())["repositories"]
        link = resp.headers.get("Link")
        url = LINK.fullmatch(link)["url"] if link else ""
    assert seen == repositories


async def test_catalog_last_and_n_zero(client, repositories):
    resp = await client.get(f"/v2/_catalog?last={repositories[2]}")
    assert (await resp.json())["repositories"] == repositories[3:]
    resp = await client.get("/v2/_catalog?n=0")
    assert await resp.json() == {"repositories": []}
    assert "Link" not in resp.headers


async def test_repository_appears_in_catalog_once_a_manifest_is_pushed(client):
    await push_image(client, "fresh", "v1")
    resp = await client.get("/v2/_catalog")
    assert (await resp.json())["repositories"] == ["fresh"]
