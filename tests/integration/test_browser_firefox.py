"""The registry browser in Firefox too (headless firefox-esr over WebDriver BiDi), through a
real SSH tunnel: the same facts as in Chromium, a delete after its confirmation, and no
script errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.firefox import Firefox, open_firefox
from tests.support.images import make_image
from tests.support.registry import RegistryHTTP
from tests.support.sshreg_server import ClientKey, SshregServer, Tunnel

pytestmark = pytest.mark.integration

TEAM = 'sshreg-pull="team/*",sshreg-push="team/*",sshreg-delete="team/*"'
READER = 'sshreg-pull="team/*"'


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[SshregServer, dict[str, Tunnel]]]:
    workdir = tmp_path_factory.mktemp("firefox")
    keys = {name: ClientKey.generate(workdir, name) for name in ("team", "reader")}
    server = SshregServer(workdir / "server")
    server.authorize(keys["team"].line(TEAM), keys["reader"].line(READER))
    server.start()
    image = make_image(workdir / "image", [4000], seed="firefox")
    with server.tunnel(keys["team"]) as team, server.tunnel(keys["reader"]) as reader:
        http = RegistryHTTP(team.url)
        for tag in ("1", "2"):
            http.push_image("team/app", tag, image)
        yield server, {"team": team, "reader": reader}
    server.stop()


@pytest.fixture
def firefox(tmp_path) -> Iterator[Firefox]:
    with open_firefox(tmp_path) as browser:
        yield browser


def test_firefox_shows_the_repositories_and_a_repositorys_tags_without_script_errors(
        served, firefox):
    _, tunnels = served
    firefox.navigate(f"{tunnels['reader'].url}/ui/")
    assert firefox.evaluate("document.querySelector('h1').textContent") == "Repositories"
    assert "team/app" in firefox.evaluate("document.querySelector('main table').textContent")
    firefox.navigate(f"{tunnels['reader'].url}/ui/r/team/app")
    tags = firefox.evaluate("[...document.querySelectorAll('main tbody tr strong')]"
                            ".map(e => e.textContent)")
    assert tags == ["1", "2"]
    assert firefox.evaluate("document.querySelectorAll('button.danger').length") == 0
    firefox.settle()
    assert firefox.problems == []


def test_firefox_deletes_a_tag_once_the_confirmation_is_accepted(served, firefox):
    _, tunnels = served
    firefox.navigate(f"{tunnels['team'].url}/ui/r/team/app")
    firefox.evaluate("document.querySelector('button.danger').click() || true")
    firefox.settle(2.0)  # the confirmation is accepted, the form posts, the page comes back
    assert RegistryHTTP(tunnels["team"].url).tags("team/app") == ["2"]
    assert firefox.evaluate("location.pathname") == "/ui/r/team/app"
    assert firefox.problems == []
