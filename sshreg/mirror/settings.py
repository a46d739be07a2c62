"""`[[mirror]]` tables: one upstream registry each, cached under its own prefix."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..settings import (
    REQUIRED,
    ConfigError,
    parse_bool,
    parse_duration,
    parse_env_name,
    parse_section,
    parse_size,
    parse_str,
    setting,
)

_PREFIX = re.compile(r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*")
DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "docker.io", "index.docker.io"})


def parse_prefix(value: Any, what: str) -> str:
    prefix = parse_str(value, what).strip("/")
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError(f"{what}: {value!r} is not a repository name prefix (like docker.io)")
    return prefix


def parse_upstream(value: Any, what: str) -> str:
    url = parse_str(value, what).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ConfigError(f"{what}: {value!r} is not a registry URL (like https://ghcr.io)")
    return url


@dataclass(frozen=True)
class MirrorSettings:
    """One upstream registry, pulled through under `prefix`."""

    prefix: str = setting(REQUIRED, "names under this prefix are pulled through this mirror",
                          parse_prefix, example="docker.io")
    upstream: str = setting(REQUIRED, "the upstream registry's URL", parse_upstream,
                            example="https://registry-1.docker.io")
    username: str | None = setting(None, "user name for the upstream (token or Basic auth)",
                                   parse_str, example="me")
    password_env: str | None = setting(
        None, "the environment variable holding its password or token (never the secret "
        "itself)", parse_env_name, example="DOCKERHUB_TOKEN")
    tag_ttl: float = setting("5m", "a tag's manifest is served this long before upstream is "
                             "asked again (by a HEAD, which Docker Hub does not count)",
                             parse_duration)
    default: bool = setting(False, "serve names without a prefix that are no local "
                            "repository (docker's registry-mirrors); one mirror at most",
                            parse_bool)
    keep: float = setting("30d", "garbage collection evicts cached images not pulled this long",
                          parse_duration)
    max_bytes: int | None = setting(
        None, "beyond this, garbage collection evicts the least recently pulled images first",
        parse_size, example="200GiB")

    @property
    def pull_mark_interval(self) -> float:
        """How often a gateway notes that a repository was pulled: hourly, or sooner for a
        short `keep`, so eviction is never more than a tenth of `keep` early."""
        return min(3600.0, self.keep / 10)

    @property
    def host(self) -> str:
        return urlsplit(self.upstream).netloc

    @property
    def is_docker_hub(self) -> bool:
        """Docker Hub's one-segment names mean `library/NAME`."""
        return urlsplit(self.upstream).hostname in DOCKER_HUB_HOSTS

    def password(self) -> str | None:
        """The secret, read from the environment when it is needed."""
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(f"mirror {self.prefix}: ${self.password_env} is not set")
        return value


def parse_mirrors(value: Any, what: str) -> tuple[MirrorSettings, ...]:
    """The [[mirror]] tables of the configuration file."""
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{what}: use [[mirror]] tables")
    mirrors = tuple(parse_section(MirrorSettings, table, f"{what}[{i}]")
                    for i, table in enumerate(value))
    check_mirrors(mirrors, what)
    return mirrors


def check_mirrors(mirrors: tuple[MirrorSettings, ...], what: str) -> None:
    """What no single table can check: prefixes that overlap, several defaults, secrets."""
    prefixes = [m.prefix for m in mirrors]
    for prefix in prefixes:
        for other in prefixes:
            if prefix != other and other.startswith(prefix + "/"):
                raise ConfigError(f"{what}: prefixes {prefix!r} and {other!r} overlap")
    if len(prefixes) != len(set(prefixes)):
        raise ConfigError(f"{what}: a prefix is given twice")
    if sum(m.default for m in mirrors) > 1:
        raise ConfigError(f"{what}: only one mirror can be the default")
    for mirror in mirrors:
        if mirror.password_env and not mirror.username:
            raise ConfigError(f"{what}: mirror {mirror.prefix}: password_env needs username")
        mirror.password()  # a missing secret fails at start, not at the first pull


def parse_mirror_flag(value: str) -> MirrorSettings:
    """`--mirror PREFIX=URL`."""
    prefix, sep, url = value.partition("=")
    if not sep:
        raise ConfigError(f"--mirror {value!r}: expected PREFIX=URL")
    return MirrorSettings(prefix=parse_prefix(prefix, "--mirror"),
                          upstream=parse_upstream(url, "--mirror"))
