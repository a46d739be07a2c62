"""The registry browser in a real browser, through real SSH tunnels.

`sshreg serve` with three keys: alice may pull, push and delete in `team/*`, oscar may pull
and push in `ops/*` (no delete), admin has full access. Each has its own `ssh -L` tunnel, and
Debian's headless chromium, driven through its DevTools protocol (tests/support/devtools.py),
opens the pages on the tunnel's port as a person would: it follows links by clicking them,
answers the delete confirmation, uses the keyboard alone, looks at the pages at 1280 and at
390 pixels wide, and reports every console error.

Images are pushed as clients push them: a two-platform index (RegistryHTTP) signed with a
referrer (oras-py with a `subject`, cosign's artifact type and tag). The page with 5,000
repositories reads a storage filled through the store layer before the server starts.
Screenshots of each page go to each test's tmp dir; the repositories page at 1280x800 too,
and with SSHREG_UPDATE_SCREENSHOT=1 also to tests/screenshots/repositories.png (the
README's picture), which a normal run leaves alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import statistics
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sshreg.oci import parse_manifest
from sshreg.references import Digest
from sshreg.storage.filesystem import FilesystemDriver
from sshreg.store.manifests import ManifestLink
from sshreg.store.registry_store import RegistryStore
from tests.support.browser import AttackSite
from tests.support.devtools import Chromium, DevToolsError, Page, open_chromium
from tests.support.hashing import sha256
from tests.support.images import (
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    MultiArchImage,
    make_image,
    make_multiarch_image,
    manifest_for,
)
from tests.support.oras_client import Oras
from tests.support.rawhttp import request
from tests.support.registry import RegistryHTTP
from tests.support.sshreg_server import ClientKey, SshregServer, Tunnel, free_port, wait_for

pytestmark = pytest.mark.integration

TEAM = 'sshreg-pull="team/*",sshreg-push="team/*",sshreg-delete="team/*"'
OPS = 'sshreg-pull="ops/*",sshreg-push="ops/*"'
SIGNATURE_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SIGNATURE_LAYER = "application/vnd.dev.cosign.simplesigning.v1+json"
README_SCREENSHOT = Path(__file__).resolve().parents[1] / "screenshots" / "repositories.png"
DESKTOP = (1280, 800)
PHONE = (390, 844)
MANY = 5000
LOADS = 5  # timed loads of the page of 5,000 repositories (after one to warm up)
WAIT = 15.0

# The repositories table's names (the first table of the page; the second is recent pushes).
LISTED = ("[...document.querySelector('main table').tBodies[0].rows]"
          ".map(row => row.cells[0].querySelector('a').textContent)")
# Each row of the table SELECTOR finds, as {column header: cell text}.
ROWS = """[...document.querySelector(SELECTOR).tBodies[0].rows].map(row =>
    Object.fromEntries([...row.cells].map((cell, i) =>
        [row.closest('table').tHead.rows[0].cells[i].textContent.trim(), cell.innerText.trim()])))"""
# Inputs, buttons and links a person cannot name: no label, no text, no aria-label.
UNNAMED = """[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
    .filter(e => !e.labels.length && !e.getAttribute('aria-label')
                 && !e.getAttribute('aria-labelledby')).map(e => e.outerHTML)
  .concat([...document.querySelectorAll('button, a[href]')]
    .filter(e => !e.textContent.trim() && !e.getAttribute('aria-label')).map(e => e.outerHTML))"""
# Text drawn less than 12 px high (about a 10 px font): too small to read on a phone.
TINY_TEXT = """(() => {
    const tiny = [], walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
        const text = walker.currentNode.textContent.trim();
        if (!text) continue;
        const range = document.createRange();
        range.selectNodeContents(walker.currentNode);
        for (const r of range.getClientRects()) {
            if (r.width > 0 && r.height < 12) tiny.push([text, r.height]);
        }
    }
    return tiny;
})()"""
# Tables and charts that stick out of the page's column.
STICKING_OUT = """(() => {
    const column = document.querySelector('main').getBoundingClientRect();
    return [...document.querySelectorAll('main table, main svg')]
        .filter(e => e.getBoundingClientRect().right > column.right + 1)
        .map(e => e.tagName + ' ' + (e.caption ? e.caption.textContent : ''));
})()"""
HEADINGS = "[...document.querySelectorAll('h1, h2, h3, h4')].map(h => [h.tagName, h.innerText.trim()])"


@dataclass(frozen=True)
class Content:
    """What the module's pushes put in the registry."""

    index: MultiArchImage  # team/app:1.0, linux/amd64 and linux/arm64/v8
    signature: str  # the digest of the index's signature, a referrer pushed by oras
    tools: Image  # team/tools:2.3
    secret: Image  # ops/secret:v1, pushed by oscar
    base: Image  # base/debian:bookworm, pushed by admin

    @property
    def arm64(self) -> Image:
        return self.index.for_platform("arm64")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, ClientKey]:
    directory = tmp_path_factory.mktemp("browser-keys")
    return {name: ClientKey.generate(directory, name) for name in ("alice", "oscar", "admin")}


@pytest.fixture(scope="module")
def server(tmp_path_factory, keys) -> Iterator[SshregServer]:
    srv = SshregServer(tmp_path_factory.mktemp("browser"))
    srv.authorize(keys["alice"].line(TEAM), keys["oscar"].line(OPS), keys["admin"].line())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tunnels(server, keys) -> Iterator[dict[str, Tunnel]]:
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(server.tunnel(key)) for name, key in keys.items()}


@pytest.fixture(scope="module")
def content(tmp_path_factory, tunnels) -> Content:
    work = tmp_path_factory.mktemp("browser-images")
    alice = RegistryHTTP(tunnels["alice"].url)
    index = make_multiarch_image(work / "app", [1500, 3000], seed="app", tag="1.0")
    alice.push_image("team/app", "1.0", index)
    alice.push_manifest("team/app", "latest", index.index_bytes(), OCI_INDEX)
    # What `oras attach` / cosign do: a manifest whose subject is the index, under cosign's
    # tag for it (oras-py pushes to a tag; the artifact type comes from the config).
    oras = Oras(tunnels["alice"].registry)
    signature, config = work / "signature.json", work / "config.json"
    signature.write_text(json.dumps({"critical": {"image": {"docker-manifest-digest":
                                                            index.digest}}}))
    config.write_text("{}")
    signed = oras.push("team/app", index.digest.replace(":", "-") + ".sig", [signature],
                       media_type=SIGNATURE_LAYER, config=config,
                       config_media_type=SIGNATURE_TYPE,
                       subject=oras.subject_of("team/app", "1.0", OCI_INDEX))
    assert signed.status == 201, signed
    tools = make_image(work / "tools", [800], seed="tools", tag="2.3")
    alice.push_image("team/tools", "2.3", tools)
    secret = make_image(work / "secret", [700], seed="secret", tag="v1")
    RegistryHTTP(tunnels["oscar"].url).push_image("ops/secret", "v1", secret)
    base = make_image(work / "base", [2500], seed="base", tag="bookworm")
    RegistryHTTP(tunnels["admin"].url).push_image("base/debian", "bookworm", base)
    return Content(index, signed.digest, tools, secret, base)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory) -> Iterator[Chromium]:
    with open_chromium(tmp_path_factory.mktemp("chromium")) as browser:
        yield browser


@pytest.fixture
def page(chromium) -> Iterator[Page]:
    with chromium.new_page() as tab:
        tab.viewport(*DESKTOP)
        yield tab


# -- helpers ------------------------------------------------------------------------------


def visit(page: Page, tunnel: Tunnel, path: str) -> int:
    """Open a page through `tunnel`; its HTTP status."""
    page.navigate(tunnel.url + path)
    return int(page.navigation()["status"])


def follow(page: Page, selector: str) -> None:
    """Click the element and wait for the page it leads to."""
    before = page.loads
    page.click(selector)
    page.wait_for_load(before)


def rows(page: Page, selector: str = "main table") -> list[dict[str, str]]:
    value: list[dict[str, str]] = page.evaluate(ROWS.replace("SELECTOR", json.dumps(selector)))
    return value


def tab_to(page: Page, wanted: Callable[[dict[str, str]], bool],
           limit: int = 60) -> list[dict[str, str] | None]:
    """Press Tab until the focused element is `wanted`; what got the focus on the way."""
    seen: list[dict[str, str] | None] = []
    for _ in range(limit):
        page.press("Tab")
        focused = page.focused()
        seen.append(focused)
        if focused is not None and wanted(focused):
            return seen
    raise AssertionError(f"{limit} presses of Tab never got there; they went through {seen}")


def current_url(page: Page) -> str:
    """The page's address, or "" while a navigation replaces its document."""
    try:
        return page.url
    except DevToolsError:
        return ""


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def refusals(server: SshregServer, key: ClientKey, path: str) -> list[str]:
    mark = f"refused POST {path} for key {key.fingerprint}: DENIED: request from a web page"
    return [line for line in server.log().splitlines() if mark in line]


def hex_of(digest: str) -> str:
    return digest.split(":", 1)[1]


# -- what each key sees ---------------------------------------------------------------------


def test_each_key_lists_exactly_the_repositories_it_may_pull(page, tunnels, content, keys):
    seen, texts = {}, {}
    for who, tunnel in tunnels.items():
        page.navigate(tunnel.url + "/")
        assert page.url == tunnel.url + "/ui/"  # the root leads to the repositories
        seen[who] = page.evaluate(LISTED)
        texts[who] = page.text("body")
        assert f"{who}@test" in page.text("header")  # the key the tunnel was opened with
    assert seen == {"alice": ["team/app", "team/tools"], "oscar": ["ops/secret"],
                    "admin": ["base/debian", "ops/secret", "team/app", "team/tools"]}
    # Nowhere on the page (recent pushes included) does another key's repository show.
    assert "ops/" not in texts["alice"] and "base/" not in texts["alice"]
    assert "team/" not in texts["oscar"] and "base/" not in texts["oscar"]
    assert not page.problems(), page.problems()


def test_the_repositories_page_at_1280_pixels_is_saved_for_the_readme(page, tunnels, content,
                                                                      tmp_path):
    assert visit(page, tunnels["admin"], "/ui/") == 200
    shot = README_SCREENSHOT if os.environ.get("SSHREG_UPDATE_SCREENSHOT") else (
        tmp_path / "repositories.png")
    page.screenshot(shot)
    assert png_size(shot) == DESKTOP
    assert shot.stat().st_size < 400 << 10
    assert not page.problems(), page.problems()


@pytest.mark.parametrize("who, private, digest_of", [
    ("alice", "ops/secret", lambda c: c.secret.digest),
    ("alice", "base/debian", lambda c: c.base.digest),
    ("oscar", "team/app", lambda c: c.index.digest),
], ids=["alice-ops", "alice-base", "oscar-team"])
def test_a_private_repository_answers_exactly_as_one_that_does_not_exist(
        page, tunnels, content, who, private, digest_of):
    tunnel = tunnels[who]
    missing = private.split("/")[0] + "/no-such-repository"
    digest = digest_of(content)

    def answer(name: str, path: str) -> tuple[int, str, str]:
        status = visit(page, tunnel, path.format(name=name))
        return (status, page.evaluate("document.title").replace(name, "NAME"),
                page.text("main").replace(name, "NAME"))

    for path in ("/ui/r/{name}", f"/ui/m/{{name}}@{digest}"):
        hidden, absent = answer(private, path), answer(missing, path)
        assert hidden == absent, (path, hidden, absent)
        assert hidden[0] == 404 and "There is no repository NAME you may see." in hidden[2]


# -- what the pages show --------------------------------------------------------------------


def test_a_signed_multi_arch_image_shows_platforms_signature_layers_and_configuration(
        page, tunnels, content):
    alice = tunnels["alice"]
    index, arm64 = content.index, content.arm64
    assert visit(page, alice, "/ui/r/team/app") == 200
    tags = {row["Tag"]: row for row in rows(page)}
    assert {"1.0", "latest", index.digest.replace(":", "-") + ".sig"} <= set(tags)
    assert tags["1.0"]["Media type"] == OCI_INDEX
    assert tags["1.0"]["Platforms"] == "linux/amd64, linux/arm64/v8"
    assert tags["1.0"]["Referrers"] == SIGNATURE_TYPE
    assert tags["1.0"]["Digest"] == index.digest[:19] + "…"
    assert "alice@test" in tags["1.0"]["Pushed"]  # who pushed it, from the event log

    # The index: its platforms, each a link to its manifest, and the signature.
    follow(page, f'main a.digest[href$="{hex_of(index.digest)}"]')
    assert page.evaluate("document.querySelector('h1').innerText") == f"team/app@{index.digest}"
    platforms = rows(page)
    assert [(p["Platform"], p["Manifest"]) for p in platforms] == [
        (str(image.platform), image.digest) for image in index.images]
    assert rows(page, "main h2 + table") == [{"Artifact type": SIGNATURE_TYPE,
                                             "Manifest": content.signature}]

    # One platform's image: its configuration and layers, and how they were made.
    follow(page, f'main a[href$="{hex_of(arm64.digest)}"]')
    assert page.evaluate("document.querySelector('h1').innerText") == f"team/app@{arm64.digest}"
    parts = rows(page)
    assert [(p["Part"], p["Digest"]) for p in parts] == [
        ("config", arm64.config.digest),
        *((f"layer {i + 1}", layer.digest) for i, layer in enumerate(arm64.layers))]
    settings = {row["Setting"]: row["Value"] for row in rows(page, "main h2 + table")}
    assert settings["Platform"] == "linux/arm64/v8"
    assert settings["Command"] == "/bin/sh"
    assert settings["Environment"].startswith("PATH=/usr/local/sbin")
    assert settings["Label org.sshreg.test"] == "synthetic"
    assert page.evaluate(HEADINGS)[1:] == [["H2", "Configuration"], ["H2", "History"]]
    assert len(rows(page, "main h2:last-of-type + table")) == len(arm64.layers)

    # The signature: its artifact type and the image it signs, a link back to the index.
    page.navigate(alice.url + f"/ui/m/team/app@{index.digest}")
    follow(page, f'main a[href$="{hex_of(content.signature)}"]')
    summary = page.text("main p")
    assert f"artifact type {SIGNATURE_TYPE}" in summary and f"subject {index.digest}" in summary
    assert [row["Media type"] for row in rows(page)][1:] == [SIGNATURE_LAYER]
    follow(page, f'main p a[href$="{hex_of(index.digest)}"]')
    assert page.url.endswith(hex_of(index.digest))
    assert not page.problems(), page.problems()


# -- deleting a tag -------------------------------------------------------------------------


def test_a_key_with_the_delete_right_deletes_a_tag_once_the_confirmation_is_accepted(
        page, server, tunnels, content, keys):
    alice = tunnels["alice"]
    registry = RegistryHTTP(alice.url)
    registry.push_manifest("team/app", "doomed", content.index.index_bytes(), OCI_INDEX)
    assert visit(page, alice, "/ui/r/team/app") == 200
    button = 'button[aria-label="Delete tag doomed"]'

    page.accept_dialogs = False  # the person thinks again: nothing happens
    page.click(button)
    wait_for(lambda: page.dialogs, WAIT, "the confirmation")
    assert page.dialogs == ["Delete the tag doomed of team/app?"]
    assert "doomed" in registry.tags("team/app")
    assert page.url == alice.url + "/ui/r/team/app"

    page.accept_dialogs = True
    follow(page, button)
    assert page.dialogs == ["Delete the tag doomed of team/app?"] * 2
    assert page.url == alice.url + "/ui/r/team/app"  # back on the repository, after a 303
    assert page.navigation()["status"] == 200
    shown = {row["Tag"] for row in rows(page)}
    assert "doomed" not in shown and {"1.0", "latest"} <= shown
    assert "doomed" not in registry.tags("team/app") and "1.0" in registry.tags("team/app")
    audited = [{k: v for k, v in entry.items() if k != "time"} for entry in server.audit()
               if entry.get("command") == "browser delete tag"
               and entry.get("reference") == "doomed"]
    assert audited == [{"command": "browser delete tag", "repository": "team/app",
                        "reference": "doomed", "key": keys["alice"].fingerprint,
                        "comment": "alice@test", "peer": "127.0.0.1"}]
    assert not page.problems(), page.problems()


def test_a_key_without_the_delete_right_gets_no_delete_button_and_its_post_is_refused(
        page, tunnels, content):
    oscar = tunnels["oscar"]
    assert visit(page, oscar, "/ui/r/ops/secret") == 200
    assert [row["Tag"] for row in rows(page)] == ["v1"]
    assert page.evaluate("document.querySelectorAll('main form[method=post], "
                         "main button.danger').length") == 0
    assert "Delete" not in page.text("main")
    # A form made by hand in the page, as in the browser's developer tools (same origin, so
    # past the origin check; the pages' CSP lets no script fetch) ...
    before = page.loads
    page.evaluate("""(() => {
        const form = Object.assign(document.createElement('form'),
                                   {method: 'post', action: '/ui/r/ops/secret/delete'});
        for (const [name, value] of [['tag', 'v1'], ['token', '0'.repeat(40)]]) {
            form.append(Object.assign(document.createElement('input'),
                                      {type: 'hidden', name, value}));
        }
        document.body.append(form);
        form.submit();
    })()""")
    page.wait_for_load(before)
    assert page.navigation()["status"] == 403
    assert page.text("main p") == "This key may not delete in ops/secret."
    # ... and by a script, with no browser headers at all.
    posted = request(oscar.port, "POST", "/ui/r/ops/secret/delete", b"tag=v1&token=" + b"0" * 40,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert posted.status == 403 and b"This key may not delete in ops/secret." in posted.body
    assert RegistryHTTP(oscar.url).tags("ops/secret") == ["v1"]


ATTACK_PAGE = """<!doctype html><html><body>
<form id="attack" method="POST" action="TUNNEL/ui/r/team/app/delete">
  <input type="hidden" name="tag" value="victim">TOKEN_FIELD</form>
<script>document.getElementById("attack").submit();</script>
</body></html>"""


def test_a_cross_origin_page_cannot_delete_a_tag_even_with_a_scraped_token(
        page, server, tunnels, content, keys):
    alice = tunnels["alice"]
    registry = RegistryHTTP(alice.url)
    registry.push_manifest("team/app", "victim", content.index.index_bytes(), OCI_INDEX)
    assert visit(page, alice, "/ui/r/team/app") == 200
    token = page.evaluate("document.querySelector('main form input[name=tag][value=victim]')"
                          ".form.elements.token.value")
    assert len(token) == 40
    field = f'<input type="hidden" name="token" value="{token}">'
    pages = {"/with-token": ATTACK_PAGE.replace("TOKEN_FIELD", field),
             "/without-token": ATTACK_PAGE.replace("TOKEN_FIELD", "")}
    path = "/ui/r/team/app/delete"
    before = len(refusals(server, keys["alice"], path))
    with AttackSite("127.0.0.2", free_port(), {
            name: html.replace("TUNNEL", alice.url) for name, html in pages.items()}) as site:
        for attack in pages:
            page.navigate(site.origin + attack)  # the page posts its form as it loads
            wait_for(lambda: current_url(page) == alice.url + path, WAIT,
                     f"the {attack} form's answer")
            assert page.navigation()["status"] == 403
            assert "request from a web page refused" in page.text()
    lines = refusals(server, keys["alice"], path)[before:]
    assert len(lines) == 2 and all(site.origin in line for line in lines), lines
    assert "victim" in registry.tags("team/app")
    # The token was good: without a browser's Origin, the same form deletes the tag.
    done = request(alice.port, "POST", path, f"tag=victim&token={token}".encode(),
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert done.status == 303
    assert "victim" not in registry.tags("team/app")


# -- a person's way through the pages -------------------------------------------------------


def test_the_keyboard_alone_filters_follows_links_and_reaches_the_delete_button(
        page, tunnels, content):
    alice = tunnels["alice"]
    assert visit(page, alice, "/ui/") == 200
    way = tab_to(page, lambda f: f["id"] == "q")
    assert way[0] is not None and way[0]["text"] == "Skip to content"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.type_text("tool")
    before = page.loads
    page.press("Enter")  # submits the filter
    page.wait_for_load(before)
    assert page.url == alice.url + "/ui/?q=tool"
    assert page.evaluate(LISTED) == ["team/tools"]

    tab_to(page, lambda f: f["href"] == "/ui/r/team/tools")
    before = page.loads
    page.press("Enter")  # follows the link
    page.wait_for_load(before)
    assert page.url == alice.url + "/ui/r/team/tools"
    assert page.evaluate("document.querySelector('h1').innerText") == "team/tools"

    tab_to(page, lambda f: f["tag"] == "button" and f["label"] == "Delete tag 2.3")
    page.accept_dialogs = False
    page.press("Enter")
    wait_for(lambda: page.dialogs, WAIT, "the confirmation")
    assert page.dialogs == ["Delete the tag 2.3 of team/tools?"]
    assert RegistryHTTP(alice.url).tags("team/tools") == ["2.3"]
    assert not page.problems(), page.problems()


PAGES: dict[str, Callable[[Content], str]] = {
    "repositories": lambda c: "/ui/",
    "repository": lambda c: "/ui/r/team/app",
    "manifest": lambda c: f"/ui/m/team/app@{c.arm64.digest}",
    "storage": lambda c: "/ui/storage",
}


@pytest.mark.parametrize("name", PAGES)
def test_each_page_has_headings_named_controls_and_no_console_errors(
        page, tunnels, content, name, tmp_path):
    assert visit(page, tunnels["admin"], PAGES[name](content)) == 200
    shot = page.screenshot(tmp_path / "screenshots" / f"{name}.png")
    assert png_size(shot) == DESKTOP
    headings = page.evaluate(HEADINGS)
    assert [h for h in headings if h[0] == "H1"] == [headings[0]] and headings[0][1], headings
    levels = [int(tag[1]) for tag, _ in headings]
    assert all(b <= a + 1 for a, b in itertools.pairwise(levels)), headings  # none skipped
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.evaluate("document.title").endswith(" - sshreg")
    assert page.evaluate(UNNAMED) == []
    assert page.evaluate(STICKING_OUT) == []
    assert not page.problems(), page.problems()


@pytest.mark.parametrize("name", PAGES)
def test_each_page_fits_a_phone_screen_without_scrolling_sideways(
        page, tunnels, content, name, tmp_path):
    page.viewport(*PHONE, mobile=True)
    assert visit(page, tunnels["admin"], PAGES[name](content)) == 200
    widths = page.evaluate("({scroll: document.scrollingElement.scrollWidth, inner: innerWidth})")
    # A page wider than the screen also widens the layout viewport past the device's width.
    assert widths["inner"] == PHONE[0] and widths["scroll"] <= widths["inner"] + 1, widths
    page.screenshot(tmp_path / "screenshots" / f"{name}-phone.png")
    assert page.evaluate(TINY_TEXT) == []
    assert not page.problems(), page.problems()


# -- many repositories ----------------------------------------------------------------------


async def fill(storage: str, names: list[str]) -> None:
    """Give each repository one tagged manifest (sharing one config and one layer) through
    the store layer, as pushes would leave them."""
    driver = FilesystemDriver(storage, threads=16)
    store = RegistryStore(driver)
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer" * 200
    body = manifest_for(config, [layer])
    digest = Digest.parse(sha256(body))
    link = ManifestLink.describing(digest, parse_manifest(body, OCI_MANIFEST), len(body))
    blobs = [Digest.parse(sha256(data)) for data in (config, layer)]
    for blob, data in zip(blobs, (config, layer), strict=True):
        await store.blobs.put_bytes(blob, data)
    gate = asyncio.Semaphore(64)

    async def one(name: str) -> None:
        async with gate:
            for blob in blobs:
                await store.repositories.link_blob(name, blob)
            await store.manifests.put(name, link, body)
            await store.tags.set(name, "latest", digest)

    try:
        await asyncio.gather(*(one(name) for name in names))
    finally:
        await driver.close()


def test_the_repositories_page_of_5000_repositories_loads_in_under_a_second(
        chromium, keys, tmp_path):
    srv = SshregServer(tmp_path / "many")
    asyncio.run(fill(srv.storage, [f"team/app-{n:04d}" for n in range(MANY)]))
    srv.authorize(keys["alice"].line(TEAM))
    srv.start()
    try:
        with srv.tunnel(keys["alice"]) as tunnel, chromium.new_page() as page:
            page.viewport(*DESKTOP)
            assert visit(page, tunnel, "/ui/") == 200  # warms the server's caches up
            assert f"{MANY} repositories you may pull" in page.text("main")
            assert f"Page 1 of {MANY // 50}" in page.text("main")
            timings: list[dict[str, Any]] = []
            for _ in range(LOADS):
                page.navigate(tunnel.url + "/ui/")
                timings.append(page.navigation())
            loaded, waited = [t["loaded"] for t in timings], [t["waited"] for t in timings]
            median = statistics.median(loaded)
            (tmp_path / "load-times.json").write_text(json.dumps({"timings": timings,
                                                                  "median": median}))
            print(f"\n{MANY} repositories: load event after {median:.0f} ms (median of "
                  f"{', '.join(f'{ms:.0f}' for ms in loaded)}; the answer's first byte "
                  f"after {', '.join(f'{ms:.0f}' for ms in waited)} ms)")
            assert all(t["status"] == 200 for t in timings)
            assert median < 1000, loaded
            assert page.evaluate(LISTED)[:2] == ["team/app-0000", "team/app-0001"]
            assert not page.problems(), page.problems()
    finally:
        srv.stop()
