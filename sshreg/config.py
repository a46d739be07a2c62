"""Configuration: embedded defaults, then a TOML file, then command-line flags.

Each [section] of the file is the frozen dataclass its component takes, declared next to
it with one `settings.setting()` per key (default, parser, bounds, doc). `reference()`
renders every key with its default and doc; README.md's configuration reference is that
text (a test checks it).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .access import Rights
from .events.settings import EventSettings, WebhookSettings, parse_webhooks
from .limits import Limits
from .logs import LogSettings
from .management.retention import RetentionPolicy, parse_policies
from .management.settings import GcSettings
from .metrics import MetricsSettings
from .mirror.settings import MirrorSettings, check_mirrors, parse_mirror_flag, parse_mirrors
from .registry.settings import RegistrySettings
from .settings import ConfigError, declarations, parse_section, render_section
from .ssh.settings import GatewaySettings, PrincipalRights, parse_principals
from .storage.settings import StorageSettings


@dataclass(frozen=True)
class Config:
    """The sections of the file (a field per [section], named as in the file) and where
    they came from."""

    server: GatewaySettings = field(default_factory=GatewaySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    limits: Limits = field(default_factory=Limits)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    gc: GcSettings = field(default_factory=GcSettings)
    events: EventSettings = field(default_factory=EventSettings)
    log: LogSettings = field(default_factory=LogSettings)
    mirrors: tuple[MirrorSettings, ...] = ()  # the [[mirror]] tables
    webhooks: tuple[WebhookSettings, ...] = ()  # the [[webhook]] tables
    source: str = field(default="defaults", compare=False)


SECTIONS: dict[str, type] = {
    "server": GatewaySettings, "storage": StorageSettings, "registry": RegistrySettings,
    "limits": Limits, "metrics": MetricsSettings, "gc": GcSettings, "events": EventSettings,
    "log": LogSettings}
# Command-line flags: flag -> (section, key)
FLAGS = {"listen": ("server", "listen"), "keys": ("server", "keys"), "storage": ("storage", "url"),
         "log_format": ("log", "format"), "log_level": ("log", "level"),
         "workers": ("server", "workers")}


def load_config(path: Path | None = None, *, mirrors: list[str] | None = None,
                **flags: str | None) -> Config:
    """Defaults, then the TOML file (if any), then the flags given (not None); `mirrors`
    (`--mirror PREFIX=URL`) add to the file's [[mirror]] tables."""
    config = Config() if path is None else _read_file(path)
    if mirrors:
        added = config.mirrors + tuple(parse_mirror_flag(m) for m in mirrors)
        check_mirrors(added, "--mirror")
        config = replace(config, mirrors=added)
    for flag, value in flags.items():
        if flag not in FLAGS:
            raise ConfigError(f"unknown setting: {flag}")
        if value is None:
            continue
        section, key = FLAGS[flag]
        parsed = declarations(SECTIONS[section])[key].check(value, f"{section}.{key}")
        config = replace(config, **{section: replace(getattr(config, section), **{key: parsed})})
    validate(config)
    return config


def _read_file(path: Path) -> Config:
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    sections: dict[str, Any] = {}
    retention: tuple[RetentionPolicy, ...] = ()
    principals: tuple[tuple[str, Rights], ...] = ()
    for section, table in doc.items():
        if section == "retention":
            retention = parse_policies(table, f"{path}: retention")
            continue
        if section == "mirror":
            sections["mirrors"] = parse_mirrors(table, f"{path}: mirror")
            continue
        if section == "webhook":
            sections["webhooks"] = parse_webhooks(table, f"{path}: webhook")
            continue
        if section == "principals":
            principals = parse_principals(table, f"{path}: principals")
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section!r} must be a [section]")
        cls = SECTIONS.get(section)
        if cls is None:
            for key in table:
                raise ConfigError(f"{path}: {section}.{key}: unknown setting")
            continue
        sections[section] = parse_section(cls, table, f"{path}: {section}")
    config = Config(**sections, source=str(path))
    return replace(config, gc=replace(config.gc, retention=retention),
                   server=replace(config.server, principals=principals))


def validate(config: Config) -> None:
    """What no single setting can check: bounds across sections."""
    storage, limits = config.storage, config.limits
    if storage.is_s3 and limits.upload_buffer_budget < storage.part_size * (
            storage.parts_in_flight + 1):
        raise ConfigError("limits.upload_buffer_budget must be at least storage.part_size x "
                          "(storage.parts_in_flight + 1)")


# Tables of which there may be many, each rendered after the section it belongs with.
TABLES_AFTER: dict[str, list[tuple[str, type, str]]] = {
    "gc": [("retention", RetentionPolicy, "any number of policies; none by default"),
           ("mirror", MirrorSettings, "any number of pull-through mirrors; none by default")],
    "events": [("webhook", WebhookSettings, "any number of webhooks; none by default")],
    "server": [("principals.ml-team", PrincipalRights, "the rights of a certificate "
                "principal, one table per principal; none by default")],
}


def reference() -> str:
    """The annotated reference of every key with its default (README.md shows it)."""
    lines = ["# Sizes accept 32MiB-style strings, durations 90s, 10m, 24h, 7d or plain seconds."]
    for name, cls in SECTIONS.items():
        lines += ["", *render_section(f"[{name}]", cls)]
        for table, table_cls, comment in TABLES_AFTER.get(name, []):
            brackets = "[{}]" if "." in table else "[[{}]]"
            lines += ["", *render_section(brackets.format(table), table_cls, comment)]
    lines += ["", "# Secrets (S3 keys) never live here: they come from the environment or "
              "AWS profiles."]
    return "\n".join(lines) + "\n"
