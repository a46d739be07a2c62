"""The registry browser over HTTP: what each key sees, the pages' facts, and the delete form's
guards. (tests/integration/test_browser_chromium.py drives it in a real browser.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient

from sshreg.browser.app import Browser
from sshreg.events.log import EventLog
from sshreg.registry.app import Registry
from sshreg.registry.settings import RegistrySettings
from sshreg.store.registry_store import RegistryStore
from tests.conftest import identify_from_test_header
from tests.http.helpers_api import as_identity, push_image, push_index, started, tags_of

SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}


@pytest.fixture
async def site(driver) -> AsyncIterator[TestClient]:
    store = RegistryStore(driver)
    events = EventLog(driver, "box-a")
    async with started(Registry(store, RegistrySettings(), identify=identify_from_test_header,
                                events=events, browser=Browser(store, events))) as (_, client):
        yield client


async def page(client, path, identity="full", **headers) -> str:
    resp = await client.get(path, headers={**as_identity(identity), **headers},
                            allow_redirects=False)
    assert resp.status == 200, (resp.status, await resp.text())
    assert resp.content_type == "text/html"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    return await resp.text()


async def test_the_root_leads_to_the_repositories_a_key_may_pull_and_no_others(site):
    await push_image(site, "team/app", "1")
    await push_image(site, "secret/app", "1", seed="secret")
    root = await site.get("/", headers=as_identity("team"), allow_redirects=False)
    assert root.status == 302 and root.headers["Location"] == "/ui/"
    team = await page(site, "/ui/", "team")
    assert "team/app" in team and "secret/app" not in team
    full = await page(site, "/ui/")
    assert "team/app" in full and "secret/app" in full
    hidden = await site.get("/ui/r/secret/app", headers=as_identity("team"))
    missing = await site.get("/ui/r/nothing/here", headers=as_identity("team"))
    assert hidden.status == missing.status == 404  # no difference a name could leak through
    by_digest = await site.get("/ui/m/secret/app@sha256:" + "0" * 64, headers=as_identity("team"))
    assert by_digest.status == 404


async def test_a_repository_page_shows_tags_platforms_sizes_referrers_and_who_pushed(site):
    amd = await push_image(site, "team/multi", seed="amd64")
    arm = await push_image(site, "team/multi", seed="arm64")
    index = await push_index(site, "team/multi", [amd, arm], "1")
    await push_image(site, "team/multi", seed="sig", subject=index.descriptor,
                     artifact_type="application/vnd.example.sig")
    text = await page(site, "/ui/r/team/multi")
    assert index.digest[:19] in text and "application/vnd.example.sig" in text
    assert "full@test" in text  # from the event log
    assert "docker pull" in text and "skopeo copy" in text


async def test_a_manifest_page_shows_layers_and_the_configuration(site):
    image = await push_image(site, "team/app", "1")
    text = await page(site, f"/ui/m/team/app@{image.digest}")
    assert "layer 1" in text and "amd64" in text  # the config's platform


async def test_a_tag_is_deleted_with_the_right_and_a_token_and_not_otherwise(site):
    await push_image(site, "team/app", "1")
    await push_image(site, "team/app", "2", seed="2")
    text = await page(site, "/ui/r/team/app", "team")
    token = re.search(r'name="tag" value="1"><input type="hidden" name="token" value="(\w+)"',
                      text)[1]
    origin = {"Origin": f"http://{site.host}:{site.port}", **SAME_ORIGIN}
    forged = await site.post("/ui/r/team/app/delete", data={"tag": "1", "token": "0" * 40},
                             headers={**as_identity("team"), **origin})
    assert forged.status == 403
    reader = await site.post("/ui/r/team/app/delete", data={"tag": "1", "token": token},
                             headers={**as_identity("reader"), **origin})
    assert reader.status == 403
    cross = await site.post("/ui/r/team/app/delete", data={"tag": "1", "token": token},
                            headers={**as_identity("team"), "Origin": "http://evil.example",
                                     "Sec-Fetch-Site": "cross-site"})
    assert cross.status == 403
    assert await tags_of(site, "team/app") == ["1", "2"]
    done = await site.post("/ui/r/team/app/delete", data={"tag": "1", "token": token},
                           headers={**as_identity("team"), **origin}, allow_redirects=False)
    assert done.status == 303 and done.headers["Location"] == "/ui/r/team/app"
    assert await tags_of(site, "team/app") == ["2"]
    assert "Delete" not in await page(site, "/ui/r/team/app", "reader")


async def test_the_storage_page_draws_bytes_per_repository(site):
    await push_image(site, "team/app", "1")
    text = await page(site, "/ui/storage")
    assert "<svg" in text and "team/app" in text and "Garbage collection" in text
    assert "Garbage collection" not in await page(site, "/ui/storage", "reader")


async def test_pages_are_paged_and_filtered(site):
    for n in range(55):
        await push_image(site, f"team/r{n:02d}", "1", seed=str(n))
    def listed(text: str) -> str:  # the repositories table, not the recent pushes
        return text.split("<h2>Recent pushes")[0]

    first = listed(await page(site, "/ui/"))
    assert "team/r49" in first and "team/r50" not in first and "Page 1 of 2" in first
    second = listed(await page(site, "/ui/?page=2"))
    assert "team/r54" in second and "team/r00" not in second
    filtered = listed(await page(site, "/ui/?q=r5"))
    assert "team/r51" in filtered and "team/r41" not in filtered


async def test_a_page_from_another_site_is_refused(site):
    resp = await site.get("/ui/", headers={**as_identity("full"), "Sec-Fetch-Site": "cross-site"})
    assert resp.status == 403
