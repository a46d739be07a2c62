"""A reference registry and a tiny HTTP reader for checking what clients pushed.

`DistributionRegistry(workdir).start()` runs Debian's `docker-registry` (distribution 2.8) on a
free 127.0.0.1 port with a filesystem root under `workdir`, deletes enabled, debug log with the
access log. It is the yardstick the client helpers were verified against, and lets a test
compare sshreg's behaviour with distribution's. It is also the upstream a pull-through cache's
tests pull from, with the authentication real upstreams ask for: `auth="htpasswd"` (HTTP Basic,
`users`) or `auth="token"` (bearer tokens from a `TokenServer`, as Docker Hub). `blob_fetches`
counts, from its access log, the blob GETs it answered per digest.

`RegistryHTTP(base_url)` fetches manifests and blobs over plain HTTP (urllib, bounded timeouts),
so a test can check that what a client pushed is byte for byte what it had; `call` makes any
request and returns error statuses as answers. With `username`/`password` (or none, for an
anonymous token) it answers the registry's challenges: Basic, or Bearer by fetching a token from
the realm named, cached per repository; the Authorization header never follows a redirect.
`StreamedPatch` is docker's upload (POST, one chunked PATCH) under the test's control, to cut
it mid-body.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tests.support.daemon import Daemon
from tests.support.images import Image, MultiArchImage
from tests.support.processes import free_port, run, wait_until

if TYPE_CHECKING:
    from tests.support.token_server import TokenServer

START_TIMEOUT = 30.0
HTTP_TIMEOUT = 60.0

MANIFEST_ACCEPT = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
))


def distribution_binary() -> str | None:
    return shutil.which("docker-registry") or shutil.which("registry")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def http_answers(url: str, statuses: Collection[int] = (200, 401), timeout: float = 2.0) -> bool:
    """Whether `url` answers one of `statuses` (a registry asking for credentials is up too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status in statuses
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code in statuses
    except (OSError, urllib.error.URLError):
        return False


CONFIG = """\
version: 0.1
log:
  level: {level}
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:{port}
  headers:
    X-Content-Type-Options: [nosniff]
"""


AuthMode = Literal["token", "htpasswd"]
HTPASSWD_REALM = "sshreg-test-upstream"

# The access log distribution writes (gorilla's combined log format), one line per answer:
# 127.0.0.1 - - [03/Dec/2026:18:57:18 +0000] "GET /v2/a/b/blobs/sha256:0c69… HTTP/1.1" 200 4119 "" "UA"
ACCESS_LINE = re.compile(r'^(?P<remote>\S+) \S+ \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<uri>\S+) '
                         r'HTTP/[\d.]+" (?P<status>\d{3}) (?P<written>\d+|-)')
LOG_MARKER = "/v2/?log-marker="  # access_log's own requests, left out of what it returns
BLOB_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)$")


@dataclass(frozen=True)
class AccessEntry:
    """One line of distribution's access log."""

    method: str
    uri: str  # path and query as requested
    status: int
    written: int  # body bytes sent

    @property
    def path(self) -> str:
        return self.uri.partition("?")[0]


def parse_access_log(text: str) -> list[AccessEntry]:
    """The access log lines among distribution's other output."""
    entries = []
    for line in text.splitlines():
        match = ACCESS_LINE.match(line)
        if match:
            written = match["written"]
            entries.append(AccessEntry(match["method"], match["uri"], int(match["status"]),
                                       0 if written == "-" else int(written)))
    return entries


def htpasswd_file(users: Mapping[str, str]) -> str:
    """htpasswd lines with bcrypt hashes, the only kind distribution 2.8 accepts: from
    `htpasswd -nbB` (apache2-utils), else the `bcrypt` package."""
    binary = shutil.which("htpasswd")
    lines = []
    for name, password in users.items():
        if binary is not None:
            line = run([binary, "-nbB", name, password], timeout=30).stdout.strip()
        else:
            try:
                import bcrypt
            except ImportError as exc:
                raise RuntimeError("htpasswd needs apache2-utils or the bcrypt package") from exc
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
            line = f"{name}:{hashed}"
        lines.append(line)
    return "\n".join(lines) + "\n"


class DistributionRegistry(Daemon):
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, plain HTTP, no auth by default.

    `config`: distribution's whole configuration instead of the filesystem one above (the
    bench's S3 driver), written as JSON, which is valid YAML.
    `auth="htpasswd"` with `users` ({name: password}): HTTP Basic, every user may do anything.
    `auth="token"` with `token_server`: bearer tokens from it (realm, service, issuer and its
    certificate); the token server decides who may do what."""

    def __init__(self, workdir: Path, *, port: int | None = None, debug: bool = True,
                 config: dict[str, object] | None = None, auth: AuthMode | None = None,
                 token_server: TokenServer | None = None,
                 users: Mapping[str, str] | None = None) -> None:
        super().__init__(workdir)
        if auth == "token" and token_server is None:
            raise ValueError('auth="token" needs a token_server')
        if auth == "htpasswd" and not users:
            raise ValueError('auth="htpasswd" needs users')
        if auth not in (None, "token", "htpasswd"):
            raise ValueError(f"unknown auth mode {auth!r}")
        self.port = port or free_port()
        self.debug = debug
        self.config = config
        self.auth = auth
        self.token_server = token_server
        self.users = dict(users or {})

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def htpasswd_path(self) -> Path:
        return self.workdir / "htpasswd"

    def auth_config(self) -> dict[str, Any] | None:
        """distribution's `auth` section for the mode chosen (None: no auth)."""
        if self.auth == "htpasswd":
            return {"htpasswd": {"realm": HTPASSWD_REALM, "path": str(self.htpasswd_path)}}
        if self.auth == "token":
            assert self.token_server is not None
            if not self.token_server.cert_path.exists():
                raise RuntimeError("start the token server first: it writes its certificate")
            server = self.token_server
            return {"token": {"realm": server.realm, "service": server.service,
                              "issuer": server.issuer,
                              "rootcertbundle": str(server.cert_path)}}
        return None

    def start(self, timeout: float = START_TIMEOUT) -> DistributionRegistry:
        binary = distribution_binary()
        if binary is None:
            raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.auth == "htpasswd":
            self.htpasswd_path.write_text(htpasswd_file(self.users))
        auth = self.auth_config()
        config = self.workdir / "config.yml"
        if self.config is None:
            text = CONFIG.format(level="debug" if self.debug else "info",
                                 root=self.workdir / "data", port=self.port)
            config.write_text(text + (f"auth: {json.dumps(auth)}\n" if auth else ""))
        else:
            whole = dict(self.config, auth=auth) if auth else self.config
            config.write_text(json.dumps(whole, indent=1))
            config.chmod(0o600)  # it may hold S3 credentials
        # distribution's S3 driver panics when AWS_CA_BUNDLE is set; only its env drops it.
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self._launch([binary, "serve", config], lambda: http_answers(self.url + "/v2/"), timeout,
                     "docker-registry to answer /v2/", env=env)
        return self

    # -- what it served ------------------------------------------------------------------

    def log_offset(self) -> int:
        """Where the log ends now: pass it as `since` to count only what comes after."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def access_log(self, since: int = 0, timeout: float = 10.0) -> list[AccessEntry]:
        """The requests answered (after byte `since` of the log), up to now.

        distribution writes a line once the answer is sent, so a client that just read its
        last byte may be a line ahead: this first sends a marker request and waits (at most
        `timeout`) until the marker's line is in the log."""
        if self.process is None:  # stopped: its log is complete
            return parse_access_log(self.log_path.read_bytes()[since:].decode(errors="replace"))
        marker = f"{LOG_MARKER}{secrets.token_hex(8)}"
        http_answers(self.url + marker, statuses=range(100, 600))

        def read() -> str | None:
            with open(self.log_path, "rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
            return text if f'"GET {marker} ' in text else None

        text = wait_until(read, timeout, "docker-registry to log a marker request",
                          on_timeout=self.log_tail)
        return [e for e in parse_access_log(text) if not e.uri.startswith(LOG_MARKER)]

    def blob_fetches(self, repository: str | None = None, *, since: int = 0,
                     statuses: Collection[int] = (200, 307)) -> Counter[str]:
        """How many `GET /v2/<name>/blobs/<digest>` it answered with one of `statuses`, per
        digest (of `repository` only, if given). HEADs and failed GETs do not count."""
        counts: Counter[str] = Counter()
        for entry in self.access_log(since):
            match = BLOB_PATH.match(entry.path)
            if (match and entry.method == "GET" and entry.status in statuses
                    and repository in (None, match["name"])):
                counts[match["digest"]] += 1
        return counts


@dataclass(frozen=True)
class Fetched:
    body: bytes
    content_type: str
    docker_digest: str | None  # the Docker-Content-Digest header

    @property
    def digest(self) -> str:
        """sha256 of the body as received."""
        return "sha256:" + hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, whatever its status."""

    status: int
    headers: dict[str, str]
    body: bytes

    def error_codes(self) -> list[str]:
        """The spec's error codes in a JSON error body."""
        try:
            return [e["code"] for e in json.loads(self.body)["errors"]]
        except (ValueError, KeyError, TypeError):
            return []


@dataclass(frozen=True)
class Challenge:
    """A `WWW-Authenticate` header: `Basic realm=..` or `Bearer realm=..,service=..,scope=..`."""

    scheme: str  # lower case
    params: dict[str, str]


def parse_challenge(header: str | None) -> Challenge | None:
    if not header or not header.strip():
        return None
    scheme, _, rest = header.strip().partition(" ")
    return Challenge(scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest)))


def repository_of(path: str) -> str:
    """The repository a /v2/ path names; "" for /v2/ itself and the catalog."""
    match = re.match(r"^/v2/(.+)/(?:blobs|manifests|tags|referrers)/", path)
    return match[1] if match else ""


def basic_authorization(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class RegistryHTTP:
    """Minimal reader for a registry at `base_url` (http://127.0.0.1:PORT).

    `username`/`password`: sent as HTTP Basic from the start; when the registry challenges
    with Bearer instead, they go to the token realm, and the token is cached per repository
    (renewed on the next 401, e.g. a pull token that a push needs widened). Without them a
    Bearer challenge gets an anonymous token. Credentials only go to `base_url`, and never
    follow a redirect (urllib's unredirected headers). A token request the realm refuses
    raises its HTTPError (which `call` returns as the answer, like any other)."""

    def __init__(self, base_url: str, timeout: float = HTTP_TIMEOUT, *,
                 username: str | None = None, password: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.username = username
        self.password = password
        self._scheme: str | None = "basic" if username is not None else None
        self._tokens: dict[str, str] = {}  # repository -> bearer token
        self.token_fetches = 0

    # -- authentication ------------------------------------------------------------------

    def _authorization(self, url: str) -> str | None:
        if not url.startswith(self.base_url + "/"):
            return None
        if self._scheme == "bearer":
            token = self._tokens.get(repository_of(urllib.parse.urlsplit(url).path))
            return f"Bearer {token}" if token else None
        if self._scheme == "basic" and self.username is not None:
            return basic_authorization(self.username, self.password or "")
        return None

    def _authorize(self, request: urllib.request.Request) -> None:
        header = self._authorization(request.full_url)
        if header is not None:
            request.add_unredirected_header("Authorization", header)

    def _answer_challenge(self, header: str | None, url: str) -> bool:
        """Get what a 401's challenge asks for; False if there is nothing new to try."""
        challenge = parse_challenge(header)
        if challenge is None:
            return False
        if challenge.scheme == "bearer":
            self._scheme = "bearer"
            repository = repository_of(urllib.parse.urlsplit(url).path)
            self._tokens[repository] = self.fetch_token(challenge)
            return True
        return False  # Basic: the credentials we sent (if any) were refused

    def fetch_token(self, challenge: Challenge) -> str:
        """A token from the challenge's realm for its service and scope (Basic credentials if
        we have them, else anonymous)."""
        query = {k: challenge.params[k] for k in ("service", "scope") if k in challenge.params}
        request = urllib.request.Request(
            challenge.params["realm"] + "?" + urllib.parse.urlencode(query))
        if self.username is not None:
            request.add_header("Authorization",
                               basic_authorization(self.username, self.password or ""))
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            answer = json.loads(response.read())
        self.token_fetches += 1
        return str(answer.get("token") or answer["access_token"])

    def _open(self, request: urllib.request.Request) -> http.client.HTTPResponse:
        """urlopen with credentials; a 401 whose challenge we can answer is retried once.
        A request that brings its own Authorization header is sent as it is."""
        if request.has_header("Authorization"):
            response: http.client.HTTPResponse = urllib.request.urlopen(request,
                                                                        timeout=self.timeout)
            return response
        self._authorize(request)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
            return response
        except urllib.error.HTTPError as exc:
            challenge = exc.headers.get("WWW-Authenticate")
            if exc.code != 401 or not self._answer_challenge(challenge, request.full_url):
                raise
            exc.close()
        seek = getattr(request.data, "seek", None)
        if seek is not None:
            seek(0)  # a file body is sent again from its start
        self._authorize(request)
        response = urllib.request.urlopen(request, timeout=self.timeout)
        return response

    # -- requests ------------------------------------------------------------------------

    def call(self, method: str, path: str, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        """Any request; error statuses are answers too (not exceptions)."""
        url = path if path.startswith("http") else self.base_url + path
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        try:
            with self._open(request) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, dict(exc.headers), exc.read())

    def _get(self, path: str, method: str = "GET", accept: str | None = None) -> Fetched:
        request = urllib.request.Request(self.base_url + path, method=method)
        if accept:
            request.add_header("Accept", accept)
        with self._open(request) as response:
            body = response.read()
            return Fetched(body, response.headers.get("Content-Type", ""),
                           response.headers.get("Docker-Content-Digest"))

    def manifest(self, repository: str, reference: str, accept: str = MANIFEST_ACCEPT) -> Fetched:
        return self._get(f"/v2/{repository}/manifests/{reference}", accept=accept)

    def blob(self, repository: str, digest: str) -> Fetched:
        return self._get(f"/v2/{repository}/blobs/{digest}")

    def has_blob(self, repository: str, digest: str) -> bool:
        try:
            self._get(f"/v2/{repository}/blobs/{digest}", method="HEAD")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True

    def tags(self, repository: str) -> list[str]:
        return list(json.loads(self._get(f"/v2/{repository}/tags/list").body).get("tags") or [])

    def push_blob(self, repository: str, path: Path, digest: str) -> None:
        """Monolithic upload (POST, then PUT with the whole body), skipped if present."""
        if self.has_blob(repository, digest):
            return
        post = urllib.request.Request(f"{self.base_url}/v2/{repository}/blobs/uploads/",
                                      method="POST", data=b"")
        with self._open(post) as response:
            location = response.headers["Location"]
        if location.startswith("/"):
            location = self.base_url + location
        separator = "&" if "?" in location else "?"
        with open(path, "rb") as body:
            put = urllib.request.Request(f"{location}{separator}digest={digest}", method="PUT",
                                         data=body, headers={
                                             "Content-Length": str(path.stat().st_size),
                                             "Content-Type": "application/octet-stream"})
            with self._open(put) as response:
                if response.status != 201:
                    raise RuntimeError(f"blob PUT answered {response.status}")

    def push_manifest(self, repository: str, reference: str, body: bytes,
                      media_type: str) -> str:
        """PUT a manifest; returns the Docker-Content-Digest the registry answered."""
        request = urllib.request.Request(f"{self.base_url}/v2/{repository}/manifests/{reference}",
                                         method="PUT", data=body,
                                         headers={"Content-Type": media_type})
        with self._open(request) as response:
            return str(response.headers.get("Docker-Content-Digest", ""))

    def push_image(self, repository: str, tag: str, image: Image | MultiArchImage) -> str:
        """Upload a synthetic image (or index with all its images) exactly as generated."""
        if isinstance(image, MultiArchImage):
            for child in image.images:
                self.push_image(repository, child.digest, child)
            return self.push_manifest(repository, tag, image.index_bytes(),
                                      image.index.media_type)
        for digest in image.blob_digests:
            self.push_blob(repository, image.blob_path(digest), digest)
        return self.push_manifest(repository, tag, image.manifest_bytes(),
                                  image.manifest.media_type)

    def wait_ready(self, timeout: float = 10.0) -> None:
        wait_until(lambda: http_ok(self.base_url + "/v2/"), timeout, f"{self.base_url}/v2/")


class StreamedPatch:
    """A blob upload as docker sends it: POST, then one PATCH whose chunked body the test
    sends piece by piece (`send`), and can leave unfinished to cut it, or `finish`."""

    def __init__(self, base_url: str, repository: str, timeout: float = HTTP_TIMEOUT) -> None:
        started = RegistryHTTP(base_url, timeout).call(
            "POST", f"/v2/{repository}/blobs/uploads/", b"")
        if started.status != 202:
            raise RuntimeError(f"POST answered {started.status}: {started.body!r}")
        self.location = started.headers["Location"]
        self.base_url = base_url
        parts = urllib.parse.urlsplit(base_url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.connection.putrequest("PATCH", self.location, skip_accept_encoding=True)
        self.connection.putheader("Content-Type", "application/octet-stream")
        self.connection.putheader("Transfer-Encoding", "chunked")
        self.connection.endheaders()
        self.sent = 0

    def send(self, data: bytes) -> None:
        self.connection.send(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.sent += len(data)

    def finish(self) -> Answer:
        """End the body and read the PATCH's answer."""
        self.connection.send(b"0\r\n\r\n")
        response = self.connection.getresponse()
        return Answer(response.status, dict(response.headers), response.read())

    def close(self) -> None:
        self.connection.close()
