"""Declaring settings: one dataclass field per setting, carrying its default, parser, bounds
and one-line doc.

A section of the configuration file is a frozen dataclass whose fields are declared with
`setting()`. `parse_section` turns a TOML table into that dataclass, and `render_section`
writes its part of the annotated reference (README.md holds the rendered text). Defaults
are written as in the file (`"32MiB"`, `"10m"`) and parsed once, so the reference shows
them the way a user writes them. Fields declared with plain `field()` are not file keys:
the service fills them in (values of other sections) or they are fixed internals.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import textwrap
from collections.abc import Callable, Coroutine
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple


class ConfigError(Exception):
    """A configuration problem, explained in one line."""


EXIT_CONFIG = 2  # the exit status of a configuration error: restarting cannot fix it


def run_main(main: Coroutine[Any, Any, int | None], log: logging.Logger) -> int:
    """Run `main` to its exit status (None: 0); a ConfigError is logged as its one line and
    ends in EXIT_CONFIG (the systemd unit does not restart on it)."""
    try:
        return asyncio.run(main) or 0
    except ConfigError as exc:
        log.error("%(error)s", {"error": str(exc)})
        return EXIT_CONFIG


Parser = Callable[[Any, str], Any]

REQUIRED: Any = object()  # the default of a setting that must be given


@dataclass(frozen=True)
class Declaration:
    """What `setting()` records about one key, beside the field's default."""

    doc: str
    parse: Parser
    shown: Any  # the value the reference shows: the default as written, or an example
    low: str | None = None  # inclusive bounds, written as in the file
    high: str | None = None
    positive: bool = False  # must be more than zero
    why: str = ""  # why the bound is there, said when it refuses a value

    def check(self, value: Any, what: str) -> Any:
        """`value` parsed, and within the bounds."""
        parsed = self.parse(value, what)
        why = f" ({self.why})" if self.why else ""
        low = None if self.low is None else self.parse(self.low, what)
        high = None if self.high is None else self.parse(self.high, what)
        if self.positive and parsed <= 0:
            raise ConfigError(f"{what} must be positive{why}")
        if (low is not None and parsed < low) or (high is not None and parsed > high):
            raise ConfigError(f"{what} must be {self.bound_text()}{why}")
        return parsed

    def bound_text(self) -> str:
        if self.low is not None and self.high is not None:
            return f"between {self.low} and {self.high}"
        if self.low is not None:
            return f"at least {self.low}"
        if self.high is not None:
            return f"at most {self.high}"
        return "positive" if self.positive else ""


def setting(default: Any, doc: str, parse: Parser, *, example: Any = None,
            low: str | None = None, high: str | None = None, positive: bool = False,
            why: str = "") -> Any:
    """A dataclass field for one file key. `default` is written as in the file and parsed
    here (None stays None; REQUIRED makes the key mandatory); `example` is shown in the
    reference instead of the default."""
    declaration = Declaration(doc, parse, default if example is None else example,
                              low, high, positive, why)
    metadata = {"setting": declaration}
    if default is REQUIRED:
        return field(metadata=metadata)
    value = None if default is None else parse(default, "default")
    return field(default=value, metadata=metadata)


def declarations(cls: type) -> dict[str, Declaration]:
    """The file keys of a section dataclass, in declaration order."""
    return {f.name: f.metadata["setting"] for f in fields(cls) if "setting" in f.metadata}


def parse_section(cls: type, table: dict[str, Any], where: str) -> Any:
    """A section's dataclass from its TOML table; `where` prefixes messages (`FILE: server`)."""
    known = declarations(cls)
    values = {}
    for key, value in table.items():
        declaration = known.get(key)
        if declaration is None:
            raise ConfigError(f"{where}.{key}: unknown setting")
        values[key] = declaration.check(value, f"{where}.{key}")
    for f in fields(cls):
        if f.name in known and f.name not in values and f.default is MISSING:
            raise ConfigError(f"{where}: {f.name} is required")
    return cls(**values)


def render_section(title: str, cls: type, comment: str = "") -> list[str]:
    """The annotated reference of one section: a line per key with its default and doc."""
    lines = [_annotated(title, comment)]
    for key, declaration in declarations(cls).items():
        doc = declaration.doc
        if declaration.bound_text():
            doc += f"; {declaration.bound_text()}"
        lines.append(_annotated(f"{key} = {toml_value(declaration.shown)}", doc))
    return lines


COMMENT_COLUMN = 30
WIDTH = 92


def _annotated(text: str, comment: str) -> str:
    if not comment:
        return text
    pad = " " * COMMENT_COLUMN
    start = text.ljust(COMMENT_COLUMN - 2) + "  # "
    return "\n".join(textwrap.wrap(comment, WIDTH, initial_indent=start,
                                   subsequent_indent=pad + "# "))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


# -- parsers: (value from the file, "FILE: section.key") -> the field's value --------------

_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
_HOST_NAME = re.compile(r"[a-zA-Z0-9_]([a-zA-Z0-9_-]*[a-zA-Z0-9_])?"
                        r"(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]*[a-zA-Z0-9_])?)*")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match[2].lower() not in _SIZE_UNITS:
        raise ConfigError(f"{what}: {value!r} is not a size (like 32MiB)")
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def parse_duration(value: Any, what: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
    if not match:
        raise ConfigError(f"{what}: {value!r} is not a duration (like 90s, 10m, 24h)")
    return float(match[1]) * _DURATION_UNITS[match[2]]


class Address(NamedTuple):
    """HOST:PORT to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(value: Any, what: str) -> Address:
    """HOST:PORT; an empty host (`:2222`) is every IPv4 address, `[::1]:22` an IPv6 one."""
    host, sep, port = parse_str(value, what).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what}: {value!r} is not HOST:PORT")
    return Address(host.strip("[]") or "0.0.0.0", int(port))


def parse_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what}: expected a string, got {value!r}")
    return value


def parse_env_name(value: Any, what: str) -> str:
    """The name of an environment variable (where a secret is read from)."""
    name = parse_str(value, what)
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(f"{what}: {value!r} is not the name of an environment variable")
    return name


def parse_path(value: Any, what: str) -> Path:
    return Path(parse_str(value, what))


def parse_str_list(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what}: expected a list of strings")
    return tuple(value)


def parse_host_names(value: Any, what: str) -> tuple[str, ...]:
    names = parse_str_list(value, what)
    for name in names:
        if not _HOST_NAME.fullmatch(name):
            raise ConfigError(f"{what}: {name!r} is not a host name (no port, no wildcard)")
    return tuple(name.lower() for name in names)


def parse_networks(value: Any, what: str) -> tuple[str, ...]:
    """A list of addresses or networks, kept as written."""
    networks = parse_str_list(value, what)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"{what}: {network!r} is not an address or network") from None
    return networks


def parse_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{what}: expected true or false, got {value!r}")
    return value


def parse_positive(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{what}: expected a positive integer, got {value!r}")
    return value


def parse_port(value: Any, what: str) -> int:
    port = parse_positive(value, what)
    if port > 65535:
        raise ConfigError(f"{what}: {port} is not a port")
    return port


def path_or_s3(form: str, tail: str) -> Parser:
    """A parser of a local path, or of an s3:// URL of the given form: s3://BUCKET, then
    what the regex `tail` matches."""
    pattern = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,62}" + tail)

    def parse(value: Any, what: str) -> str:
        location = parse_str(value, what)
        if location.startswith("s3://") and not pattern.fullmatch(location):
            raise ConfigError(f"{what}: {location!r} is not {form}")
        return location

    return parse


def parse_regex(value: Any, what: str) -> str:
    """A regular expression, kept as written once it compiles."""
    try:
        re.compile(parse_str(value, what))
    except re.error as exc:
        raise ConfigError(f"{what}: invalid regex: {exc}") from None
    return value


def choice(*choices: str) -> Parser:
    """A parser that takes one of `choices`."""

    def parse(value: Any, what: str) -> str:
        if value not in choices:
            raise ConfigError(f"{what}: {value!r} is not one of {', '.join(choices)}")
        return value

    return parse
