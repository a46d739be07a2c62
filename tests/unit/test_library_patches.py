"""The patches of asyncssh and aiohttp internals, and the library versions they were verified on.

Each patch below overrides or copies something the library does not promise to keep. They
were verified on the versions pyproject.toml pins with `==` (the one place those versions
are written). When another version is installed, these tests fail and name the patches to
re-verify against it; once that is done, move the pin.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement


@dataclass(frozen=True)
class Patch:
    library: str  # its distribution name, as pyproject.toml lists it
    ours: str  # module:attribute of the patch in sshreg
    theirs: str  # module:attribute of what it replaces, copies or relies on in the library
    what: str


PATCHES = [
    Patch("asyncssh", "sshreg.ssh.flow:FlowControlledTCPChannel._deliver_data",
          "asyncssh.channel:SSHChannel._deliver_data",
          "replaced: the receive window re-opens only for data delivered, not for data "
          "still queued on a paused channel (reads _recv_buf, _recv_window, "
          "_init_recv_window)"),
    Patch("asyncssh", "sshreg.ssh.flow:create_channel",
          "asyncssh.connection:SSHConnection.create_tcp_channel",
          "copied: builds the channel as create_tcp_channel does, with the class above "
          "(reads conn._loop and conn._options)"),
    Patch("asyncssh", "sshreg.ssh.cork:cork",
          "asyncssh.connection:SSHConnection.connection_made",
          "replaced: the connection's _transport (set by connection_made) by a "
          "CorkedTransport; connection.py's _send_disconnect reads it back"),
    Patch("asyncssh", "sshreg.ssh.slots:SlotChannel._cleanup",
          "asyncssh.channel:SSHChannel._cleanup",
          "extended: releases the channel slot on every way a channel ends"),
    Patch("asyncssh", "sshreg.ssh.exec_channel:SessionChannel._process_x11_req_request",
          "asyncssh.channel:SSHServerChannel._process_x11_req_request",
          "replaced (with the agent request below), on a channel whose __class__ is swapped "
          "after create_server_channel: X11 refused and logged with the key"),
    Patch("asyncssh",
          "sshreg.ssh.exec_channel:"
          "SessionChannel._process_auth_agent_req_at_openssh_dot_com_request",
          "asyncssh.channel:SSHServerChannel._process_auth_agent_req_at_openssh_dot_com_request",
          "replaced: agent forwarding refused and logged with the key"),
    Patch("aiohttp", "sshreg.registry.http_protocol:RegistryServer.__call__",
          "aiohttp.web_server:Server.__call__",
          "copied: builds the protocol as web.Server does, with RegistryProtocol"),
    Patch("aiohttp", "sshreg.registry.http_protocol:RegistryServer._make_request",
          "aiohttp.web_server:Server._make_request",
          "replaced: every parsed message becomes a request answerable with HTTP/1.1 "
          "(relies on aiohttp.web_protocol.ERROR, the parser's placeholder message)"),
    Patch("aiohttp", "sshreg.registry.http_protocol:RegistryProtocol.handle_error",
          "aiohttp.web_protocol:RequestHandler.handle_error",
          "extended: malformed requests answered with the JSON error envelope"),
    Patch("aiohttp", "sshreg.registry.http_protocol:RegistryProtocol.pause_writing",
          "aiohttp.web_protocol:RequestHandler.pause_writing",
          "extended, with resume_writing and connection_lost: a client that reads nothing "
          "is cut off after the write timeout (uses the handler's _loop)"),
]
LIBRARIES = sorted({patch.library for patch in PATCHES})


def _pyproject() -> dict:
    for directory in Path(__file__).resolve().parents:
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return tomllib.loads(candidate.read_text())
    raise AssertionError("no pyproject.toml above the tests")


def _pins() -> dict[str, Requirement]:
    requirements = (Requirement(line) for line in _pyproject()["project"]["dependencies"])
    return {requirement.name.lower(): requirement for requirement in requirements}


def _resolve(target: str) -> object:
    module, _, attributes = target.partition(":")
    value: object = importlib.import_module(module)
    for attribute in attributes.split("."):
        value = getattr(value, attribute)
    return value


def _to_reverify(library: str) -> str:
    return "\n".join(f"  {p.ours} ({p.what}; against {p.theirs})"
                     for p in PATCHES if p.library == library)


@pytest.mark.parametrize("library", LIBRARIES)
def test_a_patched_library_is_pinned_to_one_version(library):
    specifiers = list(_pins()[library].specifier)
    assert len(specifiers) == 1 and specifiers[0].operator == "==", (
        f"pyproject.toml must pin {library} with == (it has {specifiers}): these patch its "
        f"internals:\n{_to_reverify(library)}")


@pytest.mark.parametrize("library", LIBRARIES)
def test_the_installed_version_is_the_one_the_patches_were_verified_on(library):
    verified = next(iter(_pins()[library].specifier)).version
    installed = importlib.metadata.version(library)
    assert installed == verified, (
        f"{library} {installed} is installed, but the patches were verified on {verified} "
        f"(pyproject.toml). Re-verify each of these against {installed}, then move the "
        f"pin:\n{_to_reverify(library)}")


@pytest.mark.parametrize("patch", PATCHES, ids=lambda patch: patch.ours)
def test_each_patch_and_what_it_replaces_exist(patch):
    assert callable(_resolve(patch.ours))
    try:
        assert callable(_resolve(patch.theirs))
    except AttributeError as exc:
        pytest.fail(f"{patch.theirs} is gone from {patch.library} "
                    f"{importlib.metadata.version(patch.library)}: re-verify {patch.ours} "
                    f"({patch.what}): {exc}")
