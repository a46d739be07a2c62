"""The options in front of a key in `authorized_keys`: split as OpenSSH quotes them, and each
one checked before it is honoured.

A line whose options cannot be honoured exactly is refused as a whole (`KeyLineError`, with
the reason), as sshd refuses it: a restriction must never be silently dropped, and a grant
must never be guessed. So an empty or bare `from` / `expiry-time` / `permitopen`, a value
that is not a date, an address pattern or a port, a flag given a value (`sshreg-admin="x"`,
`restrict="no"`), an `sshreg-*` glob list that is empty, has an empty glob or is given twice,
a `cert-authority` line without `principals=` (or `principals=` without it), and
`verify-required` (FIDO user verification, which asyncssh does not let a server check)
each reject the line. Every failure here is a `KeyLineError`: one bad line costs that line,
never the rest of the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from asyncssh.misc import ip_network
from asyncssh.pattern import HostPatternList

from ..access import Rights


class KeyLineError(ValueError):
    """A line of authorized_keys that cannot be used; `fingerprint` names its key when the
    key itself could be read."""

    def __init__(self, reason: str, fingerprint: str | None = None) -> None:
        super().__init__(reason)
        self.fingerprint = fingerprint


GLOB_OPTIONS = ("sshreg-pull", "sshreg-push", "sshreg-delete")
RIGHTS_OPTIONS = {*GLOB_OPTIONS, "sshreg-admin"}
UNSUPPORTED_OPTIONS = {"command", "environment", "tunnel"}
REFUSED_OPTIONS = {
    "verify-required": "verify-required is not supported (sshreg cannot check FIDO user "
                       "verification)",
}
HARMLESS_OPTIONS = {
    "no-pty", "pty", "no-agent-forwarding", "agent-forwarding", "no-x11-forwarding",
    "x11-forwarding", "no-user-rc", "user-rc", "no-touch-required",
}
FLAG_OPTIONS = {"restrict", "no-port-forwarding", "port-forwarding", "sshreg-admin",
                "cert-authority", *HARMLESS_OPTIONS}
VALUE_OPTIONS = {"from", "expiry-time", "permitopen", "principals", *GLOB_OPTIONS}
EXPIRY_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}

Option = tuple[str, str | None]


@dataclass(frozen=True)
class KeyOptions:
    """What a line's options let its key do."""

    rights: Rights
    from_patterns: tuple[str, ...] = ()
    expires: float | None = None
    port_forwarding: bool = True
    permit_open: frozenset[tuple[str, int | None]] = field(default_factory=frozenset)
    cert_authority: bool = False  # the key is a CA whose user certificates log in
    principals: tuple[str, ...] = ()  # of a CA line: the certificate principals it accepts


def split_options(text: str) -> tuple[list[Option], str]:
    """Split the leading `opt,opt="v, v",...` of a line from the rest (OpenSSH quoting)."""
    options: list[Option] = []
    current = ""
    quoted = escaped = False
    end = len(text)
    for index, ch in enumerate(text):
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif quoted:
            current += ch
        elif ch in " \t":
            end = index
            break
        elif ch == ",":
            options.append(_option(current))
            current = ""
        else:
            current += ch
    if quoted:
        raise KeyLineError("unbalanced quote in options")
    options.append(_option(current))
    return options, text[end:].strip()


def _option(text: str) -> Option:
    name, sep, value = text.partition("=")
    if not name:
        raise KeyLineError("empty option")
    return name.lower(), value if sep else None


def parse_options(options: list[Option]) -> KeyOptions:
    """Check every option and return what they grant; raise KeyLineError otherwise."""
    _check_names(options)
    values: dict[str, list[str]] = {}
    for name, value in options:
        if name in FLAG_OPTIONS and value is not None:
            raise KeyLineError(f"{name} takes no value (given {value!r})")
        if name in VALUE_OPTIONS:
            if value is None:
                raise KeyLineError(f"{name} needs a value")
            if not value.strip():
                raise KeyLineError(f"{name} has an empty value")
            values.setdefault(name, []).append(value)
    from_patterns = tuple(_check_from(v) for v in values.get("from", []))
    expiries = [parse_expiry(v) for v in values.get("expiry-time", [])]
    permit_open = frozenset(parse_permitopen(v) for v in values.get("permitopen", []))
    cert_authority = any(name == "cert-authority" for name, _ in options)
    return KeyOptions(
        rights=_rights(options, values),
        from_patterns=from_patterns,
        expires=min(expiries) if expiries else None,
        port_forwarding=_port_forwarding(options),
        permit_open=permit_open,
        cert_authority=cert_authority,
        principals=_principals(values.get("principals", []), cert_authority),
    )


def _principals(given: list[str], cert_authority: bool) -> tuple[str, ...]:
    """The principals of a CA line. Required: sshreg ignores the SSH login name, so a CA
    line without them would let in every user certificate the CA ever signed (sshd would
    at least match the login name)."""
    if not cert_authority:
        if given:
            raise KeyLineError("principals= is only for cert-authority lines")
        return ()
    if not given:
        raise KeyLineError("cert-authority needs principals=\"...\" (the login name means "
                           "nothing here, so it would accept every certificate of the CA)")
    if len(given) > 1:
        raise KeyLineError("principals is given more than once (put every name in one)")
    names = tuple(name.strip() for name in given[0].split(","))
    if not all(names):
        raise KeyLineError(f"principals={given[0]!r} has an empty name")
    return names


def _check_names(options: list[Option]) -> None:
    names = {name for name, _ in options}
    unsupported = names & UNSUPPORTED_OPTIONS
    if unsupported:
        raise KeyLineError(f"unsupported option(s) {', '.join(sorted(unsupported))}")
    refused = sorted(names & REFUSED_OPTIONS.keys())
    if refused:
        raise KeyLineError(REFUSED_OPTIONS[refused[0]])
    unknown = names - FLAG_OPTIONS - VALUE_OPTIONS
    if unknown:
        raise KeyLineError(f"unknown option(s) {', '.join(map(repr, sorted(unknown)))}")


def _port_forwarding(options: list[Option]) -> bool:
    """As sshd reads them, left to right: `restrict` turns forwarding off and a later
    `port-forwarding` on again; `permitopen` only narrows forwarding that is on. Stricter
    than sshd in one case: `no-port-forwarding` anywhere on the line wins."""
    forwarding = True
    for name, _ in options:
        if name == "no-port-forwarding":
            return False
        if name in ("restrict", "port-forwarding"):
            forwarding = name == "port-forwarding"
    return forwarding


def _rights(options: list[Option], values: dict[str, list[str]]) -> Rights:
    names = [name for name, _ in options if name in RIGHTS_OPTIONS]
    if not names:
        return Rights.full()
    for name in GLOB_OPTIONS:
        if len(values.get(name, [])) > 1:
            raise KeyLineError(f"{name} is given more than once (put every glob in one)")
    globs = {name: _globs(name, values[name][0]) for name in GLOB_OPTIONS if name in values}
    return Rights(pull=globs.get("sshreg-pull", ()), push=globs.get("sshreg-push", ()),
                  delete=globs.get("sshreg-delete", ()), admin="sshreg-admin" in names)


def _globs(name: str, value: str) -> tuple[str, ...]:
    globs = tuple(g.strip() for g in value.split(","))
    if not all(globs):
        raise KeyLineError(f"{name}={value!r} has an empty glob")
    return globs


def _check_from(value: str) -> str:
    """A `from` pattern list: no empty pattern (`1.2.3.4,` is a typo, not "anywhere"), and
    every `addr/len` a network (asyncssh would take `10.0.0.1/8` for a name that never
    matches; sshd refuses it)."""
    for pattern in (p.removeprefix("!") for p in value.split(",")):
        if not pattern.strip():
            raise KeyLineError(f"from={value!r} has an empty pattern")
        if "/" in pattern:
            try:
                ip_network(pattern)
            except ValueError as exc:
                raise KeyLineError(f"from={value!r}: {pattern!r} is not a network ({exc})"
                                   ) from None
    try:
        HostPatternList(value)  # as it will be matched on every login
    except Exception as exc:  # whatever asyncssh makes of it, the line is refused
        raise KeyLineError(f"invalid from {value!r}: {exc}") from None
    return value


def parse_expiry(value: str) -> float:
    """OpenSSH `expiry-time`: YYYYMMDD[HHMM[SS]], local time unless it ends with Z."""
    utc = value.endswith(("Z", "z"))
    digits = value[:-1] if utc else value
    if not (digits.isascii() and digits.isdigit()) or len(digits) not in EXPIRY_FORMATS:
        raise KeyLineError(f"invalid expiry-time {value!r} (YYYYMMDD[HHMM[SS]][Z])")
    try:
        moment = datetime.strptime(digits, EXPIRY_FORMATS[len(digits)])
        return (moment.replace(tzinfo=UTC) if utc else moment.astimezone()).timestamp()
    except (ValueError, OverflowError, OSError) as exc:  # 20260230, year 0, out of range
        raise KeyLineError(f"invalid expiry-time {value!r}: {exc}") from None


def parse_permitopen(value: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port` or `host:*`; the port 1-65535 in ASCII digits. A bracket
    anywhere but around the whole host (`[::1:80`) refuses the line, as sshd does."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host.strip() or "[" in host or "]" in host:
        raise KeyLineError(f"invalid permitopen {value!r} (host:port)")
    if port == "*":
        return host, None
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise KeyLineError(f"invalid permitopen {value!r} (port 1-65535 or *)")
    return host, int(port)
