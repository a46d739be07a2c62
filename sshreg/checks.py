"""`sshreg check-config`: is this configuration ready to serve?

Checks, without starting the server and without changing anything it would not change
itself: the keys folder (authorized_keys parses, with a warning per ignored line; the
host key exists with mode 0600 and loads, or can be generated), and the storage (a folder
that is writable or can be created; an S3 bucket that answers a listing). Run it as the
user the service runs as (`sudo -u sshreg ...`): root can write where the service cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .config import Config
from .keys.local_file import FILE_NAME, read_lines
from .keys.revocation import RevocationError, RevocationList
from .ssh.hostkey import HOST_KEY_NAME, HostKeyError, load_or_create_host_key
from .storage.base import StorageError

STORAGE_TIMEOUT = 60.0
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; the service reads them "
                    "from /etc/sshreg/secrets.env")
PROBE_KEY = "_sshreg-check/probe"


@dataclass
class Report:
    """What the checks found: facts for the summary, warnings, and errors (fatal)."""

    facts: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def run_checks(config: Config) -> Report:
    report = Report()
    report.facts.append(("config", config.source))
    report.facts.append(("listen", str(config.server.listen)))
    if config.server.port < 1024 and os.geteuid() != 0:
        report.warnings.append(f"port {config.server.port} needs CAP_NET_BIND_SERVICE "
                               "(the systemd unit grants it)")
    check_keys(config.server.keys, report, config.server.authorized_keys_location)
    if config.server.revoked_keys:
        check_revoked_keys(Path(config.server.revoked_keys), report)
    if config.server.shared_keys:
        asyncio.run(check_shared_keys(config, report))
    asyncio.run(check_storage(config, report))
    return report


# -- the keys folder --------------------------------------------------------------------


def check_keys(folder: Path, report: Report, authorized_keys: str | None = None) -> None:
    """The keys folder: the host key, and authorized_keys unless it is in a bucket."""
    if folder.exists() and not folder.is_dir():
        report.errors.append(f"keys: {folder} is not a folder")
        return
    location = authorized_keys or str(folder / FILE_NAME)
    if location.startswith("s3://"):
        keys = f"authorized_keys in {location}"
    else:
        keys = _check_authorized_keys(Path(location), report)
    host = _check_host_key(folder, report)
    if host is not None:
        report.facts.append(("keys", f"{folder}: {keys}; {host}"))


async def check_shared_keys(config: Config, report: Report) -> None:
    """authorized_keys in a bucket: it can be read, and how the server would take it."""
    from .keys.bucket_file import open_bucket_file, read_shared

    source = open_bucket_file(config.server.authorized_keys, endpoint_url=config.storage.endpoint_url or None,
                              region=config.storage.region)
    try:
        lines = await asyncio.wait_for(read_shared(source), STORAGE_TIMEOUT)
    except Exception as exc:
        report.errors.append(f"authorized_keys {source}: {_one_line(exc)}")
        return
    finally:
        await source.close()
    for line in lines:
        if line.ignored:
            report.warnings.append(f"{source} line {line.number} ignored: {line.error}")
    usable = sum(1 for line in lines if line.is_key)
    if not usable:
        report.warnings.append(f"{source} has no usable key: no key can log in "
                               "(add one with `sshreg keys add --config ...`)")
    report.facts.append(("authorized_keys", f"{source}: {usable} authorized key(s)"))


def _check_authorized_keys(path: Path, report: Report) -> str:
    if not path.exists():
        report.warnings.append(f"{path} does not exist: no key can log in "
                               "(add one with `sshreg keys add`)")
        return "no authorized_keys"
    try:
        path.read_text(encoding="utf-8")  # the server reads it as UTF-8
        lines = read_lines(path)
        mode = stat.S_IMODE(path.stat().st_mode)
    except (OSError, UnicodeDecodeError) as exc:
        report.errors.append(f"keys: cannot read {path}: {_one_line(exc)}")
        return "authorized_keys unreadable"
    for line in lines:
        if line.ignored:
            report.warnings.append(f"{path} line {line.number} ignored: {line.error}")
    usable = sum(1 for line in lines if line.is_key)
    authorities = sum(1 for line in lines if line.entry is not None and line.entry.cert_authority)
    if not usable:
        report.warnings.append(f"{path} has no usable key: no key can log in")
    if mode & 0o022:
        report.warnings.append(f"{path} is writable by group or others (mode {mode:04o}): "
                               "whoever can write it can grant themselves access")
    if authorities:
        return f"{usable} authorized key(s), {authorities} of them certificate authorities"
    return f"{usable} authorized key(s)"


def check_revoked_keys(path: Path, report: Report) -> None:
    """`[server] revoked_keys`: a KRL or public keys the server can read (it will not start
    otherwise)."""
    try:
        revoked = RevocationList.parse(path.read_bytes())
    except (OSError, RevocationError) as exc:
        report.errors.append(f"server.revoked_keys {path}: {_one_line(exc)}")
        return
    rules = sum(len(r.serials) + len(r.ranges) + len(r.key_ids)
                for r in revoked.certificates.values())
    keys = len(revoked.keys) + len(revoked.sha1) + len(revoked.sha256)
    report.facts.append(("revoked_keys", f"{path}: {keys} key(s), {rules} certificate rule(s)"))


def _check_host_key(folder: Path, report: Report) -> str | None:
    path = folder / HOST_KEY_NAME
    if path.exists():
        try:
            key = load_or_create_host_key(folder)  # exists: only loads and checks the mode
        except (HostKeyError, OSError) as exc:
            report.errors.append(f"host key: {exc}")
            return None
        return f"host key {key.get_fingerprint('sha256')}"
    problem = creatable(folder)
    if problem:
        report.errors.append(f"host key: cannot create {path}: {problem}")
        return None
    return "no host key yet (generated on first start)"


# -- storage ----------------------------------------------------------------------------


def creatable(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (created with its parents), or None.

    Probes the folder, or its nearest existing ancestor, by really creating and removing a
    temporary folder in it: permission bits do not tell the truth to root or on read-only
    mounts.
    """
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return "no existing parent"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sshreg-check-", dir=probe))
    except OSError as exc:
        return f"{probe}: {exc.strerror or exc}"
    return None


async def check_storage(config: Config, report: Report) -> None:
    try:
        fact = await asyncio.wait_for(_storage_fact(config), STORAGE_TIMEOUT)
    except TimeoutError:
        report.errors.append(f"storage {config.storage.url}: no answer within "
                             f"{STORAGE_TIMEOUT:.0f}s")
        return
    except Exception as exc:
        report.errors.append(f"storage {config.storage.url}: {_one_line(exc)}")
        return
    report.facts.append(("storage", fact))


async def _storage_fact(config: Config) -> str:
    """Probe the storage; return the summary line or raise with what is wrong."""
    from .storage.factory import open_driver

    if not config.storage.is_s3:
        root = Path(config.storage.url)
        if not root.exists():
            problem = creatable(root)
            if problem:
                raise OSError(f"cannot create the folder: {problem}")
            return f"{root.resolve()}: does not exist yet, will be created"
        if not root.is_dir():
            raise OSError(f"{root} is not a folder")
    driver = open_driver(config.storage, config.limits)
    try:
        return await _probe(driver, config)
    finally:
        await driver.close()


async def _probe(driver, config: Config) -> str:
    """A listing (and, on a folder, a write) through the driver the server will use."""
    objects = driver.list("")
    try:
        first = await anext(objects, None)
    finally:
        with contextlib.suppress(Exception):
            await objects.aclose()
    await driver.stat(PROBE_KEY)
    if config.storage.is_s3:
        return f"{driver!r}: bucket listed ({'not empty' if first else 'empty'})"
    upload = await driver.begin_upload(PROBE_KEY)
    try:
        await upload.write(b"sshreg check-config\n")
    finally:
        await upload.abort()
    return f"{Path(config.storage.url).resolve()}: writable ({'not empty' if first else 'empty'})"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "credentials" in text.lower():
        text += f" ({CREDENTIALS_HINT})"
    return text if isinstance(exc, OSError | StorageError) else f"{type(exc).__name__}: {text}"


def format_report(report: Report) -> tuple[list[str], list[str]]:
    """(summary lines for stdout, warning and error lines for stderr)."""
    width = max((len(label) for label, _ in report.facts), default=0)
    out = [f"{label.ljust(width)}  {text}" for label, text in report.facts]
    err = [f"warning: {w}" for w in report.warnings] + [f"error: {e}" for e in report.errors]
    out.append("ok" if report.ok else f"{len(report.errors)} problem(s) found")
    return out, err
