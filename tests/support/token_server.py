"""A token server like Docker Hub's (auth.docker.io), for distribution's `auth: token` mode.

An upstream registry that asks for bearer tokens is what a pull-through cache meets on Docker
Hub, GHCR or Quay; `TokenServer` lets the mirror's tests meet one locally, with
`DistributionRegistry(auth="token", token_server=...)` behind it. It runs in the test process
(`http.server` on a thread, 127.0.0.1, a free port):

- at construction it makes an EC P-256 key and a self-signed certificate; `start()` writes the
  certificate (PEM) to `cert_path`, the `auth.token.rootcertbundle` distribution trusts;
- `GET /token?service=S&scope=repository:NAME:pull,push[&scope=...][&account=U]` answers
  `{"token", "access_token", "expires_in", "issued_at"}`: a JWT signed ES256 whose header
  carries the certificate (`x5c`) and whose claims are those distribution checks (`iss`,
  `aud` = the service asked for, `exp`/`nbf`/`iat`, `access`); `account` is accepted and
  ignored, the subject being whoever authenticated;
- `POST /token` (OAuth2 password grant: form `grant_type=password&username&password&service&
  scope`), as containerd tries first when it has credentials, answers `access_token` alike;
- `users` ({name: password}): HTTP Basic with a right password gets every action it asks for;
  anonymous requests get `pull` only, or no access at all with `anonymous=False` (a token
  granting nothing, as Docker Hub answers for a private repository: the registry refuses it);
  a wrong password, or credentials when there are no users, get 401.

`requests` records every request served (`TokenRequest`), so a test can assert that a client
caches its tokens. What distribution 2.8 insists on (tried): `iss` and `aud` equal to its
config, `aud` a string (a list is a malformed token), `exp` and `nbf` integers, a 64-byte r||s
signature, a signing key it trusts (`x5c` here); `sub`, `jti`, `iat` and `typ` may be absent.
It allows 60 s of leeway on `exp` and `nbf`: a short `expires_in` changes what a client
believes, not what the registry enforces.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.support.processes import free_port

DEFAULT_SERVICE = "sshreg-test-registry"
DEFAULT_ISSUER = "sshreg-test-token-server"
DEFAULT_EXPIRES_IN = 300
STOP_TIMEOUT = 10.0
ALL_ACTIONS = ("pull", "push", "delete", "*")


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered."""

    method: str
    account: str | None  # who authenticated; None when anonymous (or refused)
    service: str
    scopes: tuple[str, ...]
    status: int


@dataclass(frozen=True)
class Access:
    """One entry of the token's `access` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def parse_scope(scope: str) -> Access | None:
    """`repository:NAME:pull,push` as an `Access`; NAME may hold a colon (a registry port)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return Access(kind, name, tuple(a for a in actions.split(",") if a))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rfc3339(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def self_signed_certificate(key: ec.EllipticCurvePrivateKey, name: str) -> x509.Certificate:
    """A CA certificate of `key` valid from a day ago for a year (both ends of the chain)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))


class TokenSigner:
    """Signs JWTs with ES256 and names its certificate in the header (`x5c`)."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.certificate = self_signed_certificate(self.key, issuer)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def header(self) -> dict[str, Any]:
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return {"alg": "ES256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}

    def sign(self, claims: Mapping[str, Any]) -> str:
        """`header.claims.signature`; the signature is JOSE's raw r||s, not DER."""
        signing_input = ".".join(b64url(json.dumps(part, separators=(",", ":")).encode())
                                 for part in (self.header(), claims))
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


class TokenServer:
    """Docker Hub's token endpoint in miniature; `start()`/`stop()`, or a context manager."""

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None,
                 anonymous: bool = True, expires_in: int = DEFAULT_EXPIRES_IN,
                 service: str = DEFAULT_SERVICE, issuer: str = DEFAULT_ISSUER,
                 port: int | None = None) -> None:
        self.workdir = workdir
        self.users = dict(users or {})
        self.anonymous = anonymous
        self.expires_in = expires_in
        self.service = service  # the audience when a request names none
        self.issuer = issuer
        self.port = port or free_port()
        self.signer = TokenSigner(issuer)
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realm(self) -> str:
        """The token endpoint, distribution's `auth.token.realm`."""
        return self.url + "/token"

    @property
    def cert_path(self) -> Path:
        """The certificate distribution trusts (`auth.token.rootcertbundle`)."""
        return self.workdir / "token-signer.pem"

    @property
    def tokens_issued(self) -> int:
        return sum(1 for r in self.requests if r.status == 200)

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(self.signer.certificate_pem)
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="token-server",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- policy --------------------------------------------------------------------------

    def authenticate(self, username: str | None, password: str | None) -> str | None:
        """The account, `""` for anonymous; None if the credentials are wrong."""
        if username is None:
            return ""
        if self.users.get(username) == password:
            return username
        return None

    def grant(self, account: str, wanted: Access) -> Access:
        """What `account` ("" = anonymous) gets of what it asked for."""
        if account:
            allowed: tuple[str, ...] = ALL_ACTIONS
        else:
            allowed = ("pull",) if self.anonymous and wanted.type == "repository" else ()
        return Access(wanted.type, wanted.name, tuple(a for a in wanted.actions if a in allowed))

    def issue(self, account: str, service: str, scopes: list[str]) -> dict[str, Any]:
        """The token answer for `account` asking `scopes` of `service`."""
        now = int(time.time())
        access = [self.grant(account, wanted) for wanted in _merged(scopes)]
        claims = {"iss": self.issuer, "sub": account, "aud": service,
                  "exp": now + self.expires_in, "nbf": now, "iat": now,
                  "jti": secrets.token_hex(16),
                  "access": [a.to_json() for a in access if a.actions]}
        token = self.signer.sign(claims)
        return {"token": token, "access_token": token, "expires_in": self.expires_in,
                "issued_at": rfc3339(now)}

    def record(self, request: TokenRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _merged(scopes: list[str]) -> list[Access]:
    """The scopes asked for (repeated, or space-separated as OAuth2 has them), one `Access`
    per resource with the union of its actions, in the order first asked."""
    merged: dict[tuple[str, str], list[str]] = {}
    for scope in (s for item in scopes for s in item.split()):
        access = parse_scope(scope)
        if access is None:
            continue
        actions = merged.setdefault((access.type, access.name), [])
        actions.extend(a for a in access.actions if a not in actions)
    return [Access(kind, name, tuple(actions)) for (kind, name), actions in merged.items()]


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except ValueError:
        return None
    username, _, password = decoded.partition(":")
    return username, password


def _handler_for(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_TokenHandler):
        token_server = server

    return Handler


class _TokenHandler(BaseHTTPRequestHandler):
    token_server: TokenServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # `requests` is the log

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path != "/token":
            self._answer(404, {"details": "not found"})
            return
        credentials = _basic_credentials(self.headers.get("Authorization"))
        username, password = credentials or (None, None)
        self._serve_token("GET", username, password, query)

    def do_POST(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(min(length, 1 << 16)).decode())
        if url.path != "/token":
            self._answer(404, {"details": "not found"})
            return
        if form.get("grant_type", [""])[0] != "password":
            self._answer(400, {"error": "unsupported_grant_type"})
            return
        self._serve_token("POST", form.get("username", [""])[0] or None,
                          form.get("password", [""])[0], form)

    def _serve_token(self, method: str, username: str | None, password: str | None,
                     params: dict[str, list[str]]) -> None:
        server = self.token_server
        service = params.get("service", [server.service])[0]
        scopes = params.get("scope", [])
        account = server.authenticate(username, password)
        if account is None:
            server.record(TokenRequest(method, None, service, tuple(scopes), 401))
            self._answer(401, {"details": "incorrect username or password"},
                         {"WWW-Authenticate": f'Basic realm="{server.realm}"'})
            return
        answer = server.issue(account, service, scopes)
        server.record(TokenRequest(method, account or None, service, tuple(scopes), 200))
        self._answer(200, answer)

    def _answer(self, status: int, document: Mapping[str, Any],
                headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
