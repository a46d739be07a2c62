"""What a handler is given: the caller's identity, its route and the registry's parts.

Handlers and the route table import this module, never `app`: `app` imports the routes,
which import the handlers, so the handlers' view of the registry is the `RegistryParts`
protocol below, which `app.Registry` satisfies. The SSH bridge imports only
`IDENTITY_INFO` from here, the key under which it attaches the caller's identity to the
connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from ..access import Action, Identity

if TYPE_CHECKING:  # types only: the SSH bridge imports this module without the storage
    from ..store.registry_store import RegistryStore
    from .settings import RegistrySettings
    from .upload_sessions import UploadSessions

IDENTITY_INFO = "sshreg.identity"


def identity_from_transport(request: web.BaseRequest) -> Identity | None:
    """The identity the SSH bridge attached to this request's connection."""
    transport = request.transport
    return transport.get_extra_info(IDENTITY_INFO) if transport is not None else None


Handler = Callable[[web.BaseRequest, "Context"], Awaitable[web.StreamResponse]]


class Access(Enum):
    ANY_KEY = "any key"
    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # `{name}` is a repository name; other `{x}` match one path segment
    access: Access
    handler: Handler


class RegistryParts(Protocol):
    """What handlers reach through `Context.registry` (the `Registry` of app.py)."""

    @property
    def store(self) -> RegistryStore: ...

    @property
    def sessions(self) -> UploadSessions: ...

    @property
    def settings(self) -> RegistrySettings: ...


@dataclass
class Context:
    """What a handler needs to answer one request."""

    registry: RegistryParts
    identity: Identity
    route: Route
    params: dict[str, str]
    bytes_in: int = 0
    reference: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def store(self) -> RegistryStore:
        return self.registry.store

    @property
    def sessions(self) -> UploadSessions:
        return self.registry.sessions

    @property
    def settings(self) -> RegistrySettings:
        return self.registry.settings

    @property
    def name(self) -> str:
        return self.params["name"]

    def may(self, action: Action, repository: str) -> bool:
        return self.identity.may(action, repository)
