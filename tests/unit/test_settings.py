"""The setting declarations: every key parses, bounds refuse, the reference renders and the
README shows it."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields, replace
from pathlib import Path

import pytest

from sshreg.access import Rights
from sshreg.config import SECTIONS, Config, load_config, reference
from sshreg.events.settings import WebhookSettings
from sshreg.management.retention import RetentionPolicy
from sshreg.mirror.settings import MirrorSettings
from sshreg.settings import Address, ConfigError, declarations
from sshreg.ssh.settings import PrincipalRights

README = Path(__file__).resolve().parents[2] / "README.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sshreg.toml"
    path.write_text(text)
    return path


def test_the_reference_is_a_config_file_of_the_defaults(tmp_path, monkeypatch):
    """Every key renders with a value its parser takes, and that value is the default."""
    monkeypatch.setenv("DOCKERHUB_TOKEN", "a secret")  # the example mirror's password_env
    loaded = load_config(write(tmp_path, reference()))
    example = RetentionPolicy("team/*", keep_last=10, keep_tags="v[0-9.]+", max_age=90 * 86400.0)
    mirror = MirrorSettings("docker.io", "https://registry-1.docker.io", username="me",
                            password_env="DOCKERHUB_TOKEN", max_bytes=200 << 30)
    webhook = WebhookSettings("https://ci.example/hooks/registry", events=("manifest.pushed",),
                              repos=("team/**",), secret_env="WEBHOOK_SECRET")
    ml_team = Rights(pull=("ml/**",), push=("ml/*",))
    assert loaded == replace(Config(), gc=replace(Config().gc, retention=(example,)),
                             mirrors=(mirror,), webhooks=(webhook,),
                             server=replace(Config().server, principals=(("ml-team", ml_team),)))


def test_the_reference_names_every_key_once_with_a_doc():
    doc = tomllib.loads(reference())
    assert list(doc) == ["server", "principals", "storage", "registry", "limits", "metrics",
                         "gc", "retention", "mirror", "events", "webhook", "log"]
    assert set(SECTIONS) == set(doc) - {"retention", "mirror", "webhook", "principals"}
    for name, cls in SECTIONS.items():
        assert list(doc[name]) == list(declarations(cls)), name
        assert all(d.doc for d in declarations(cls).values()), name
    assert list(doc["retention"][0]) == [f.name for f in fields(RetentionPolicy)]
    assert list(doc["mirror"][0]) == [f.name for f in fields(MirrorSettings)]
    assert list(doc["webhook"][0]) == [f.name for f in fields(WebhookSettings)]
    assert list(doc["principals"]["ml-team"]) == [f.name for f in fields(PrincipalRights)]


def test_the_readme_shows_the_reference():
    text = README.read_text()
    match = re.search(r"<!-- config-reference[^\n]*-->\n```toml\n(.*?)```\n<!-- /config-reference -->",
                      text, re.DOTALL)
    assert match, "README.md lost its config-reference markers"
    assert match[1] == reference(), ("README.md's configuration reference is out of date: "
                                     "paste sshreg.config.reference() between the markers")


def test_values_in_the_file_reach_their_sections(tmp_path):
    config = load_config(write(tmp_path, """
        [server]
        listen = "[::1]:2022"
        keys = "/etc/sshreg/keys"
        registry_port = 8080
        ciphers = ["aes128-gcm@openssh.com"]
        proxy_protocol = ["10.0.0.0/8", "192.0.2.1"]
        [storage]
        url = "s3://bucket/prefix"
        part_size = "64MiB"
        parts_in_flight = 2
        redirect_expiry = "5m"
        [registry]
        hosts = ["Registry.Example"]
        body_idle_timeout = 30
        [limits]
        max_pending = 10
        idle_timeout = "2h"
        [metrics]
        listen = "127.0.0.1:9419"
        [gc]
        keep_untagged = true
        [[retention]]
        repositories = "a/*"
        [[retention]]
        repositories = "b/*"
        max_age = "7d"
        [log]
        format = "json"
        """))
    assert config.server.listen == Address("::1", 2022) and str(config.server.listen) == "::1:2022"
    assert config.server.keys == Path("/etc/sshreg/keys") and config.server.registry_port == 8080
    assert config.server.ciphers == ("aes128-gcm@openssh.com",)
    assert config.server.proxy_protocol == ("10.0.0.0/8", "192.0.2.1")
    assert config.storage.is_s3 and config.storage.part_size == 64 << 20
    assert (config.storage.parts_in_flight, config.storage.redirect_expiry) == (2, 300.0)
    assert config.registry.hosts == ("registry.example",)
    assert config.registry.body_idle_timeout == 30.0
    assert (config.limits.max_pending, config.limits.idle_timeout) == (10, 7200.0)
    assert config.metrics.listen == "127.0.0.1:9419"
    assert config.gc.keep_untagged
    assert config.gc.retention == (RetentionPolicy("a/*"), RetentionPolicy("b/*", max_age=604800.0))
    assert config.log == replace(Config().log, format="json")
    assert config.source.endswith("sshreg.toml")


@pytest.mark.parametrize("text, message", [
    ('[storage]\npart_size = "1MiB"', "storage.part_size must be between 5MiB and 5GiB"),
    ('[storage]\npart_size = "6GiB"', "storage.part_size must be between 5MiB and 5GiB"),
    ('[server]\nauthorized_keys_poll = "0.5s"', "authorized_keys_poll must be between 1s and 1h"),
    ('[server]\nauthorized_keys_poll = "2h"', "authorized_keys_poll must be between 1s and 1h"),
    ('[registry]\nmax_manifest_size = "1MiB"', "max_manifest_size must be at least 4MiB"),
    ("[storage]\nconnect_timeout = 0", "storage.connect_timeout must be positive"),
    ('[storage]\nread_timeout = "0s"', "storage.read_timeout must be positive"),
])
def test_bounds_refuse(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as refused:
        load_config(write(tmp_path, text))
    assert str(refused.value).startswith(f"{tmp_path / 'sshreg.toml'}: ")


@pytest.mark.parametrize("text", [
    '[storage]\npart_size = "5MiB"', '[storage]\npart_size = "5GiB"',
    '[server]\nauthorized_keys_poll = "1s"', '[server]\nauthorized_keys_poll = "1h"',
    '[registry]\nmax_manifest_size = "4MiB"', '[storage]\nread_timeout = "0.1s"',
])
def test_bounds_take_their_limits(tmp_path, text):
    load_config(write(tmp_path, text))


@pytest.mark.parametrize("text, message", [
    ('[storage]\npart_size = "big"', "storage.part_size: 'big' is not a size"),
    ('[gc]\ngrace = "soon"', "gc.grace: 'soon' is not a duration"),
    ("[limits]\nmax_uploads = 0", "limits.max_uploads: expected a positive integer"),
    ("[limits]\nmax_connections = true", "expected a positive integer, got True"),
    ("[server]\nregistry_port = 70000", "server.registry_port: 70000 is not a port"),
    ("[server]\npublic_name = 1", "server.public_name: expected a string, got 1"),
    ('[server]\nciphers = "aes"', "server.ciphers: expected a list of strings"),
    ('[server]\nlisten = "nowhere"', "server.listen: 'nowhere' is not HOST:PORT"),
    ('[server]\nlisten = "h:99999"', "is not HOST:PORT"),
    ('[server]\nproxy_protocol = ["lb"]', "server.proxy_protocol: 'lb' is not an address or network"),
    ('[server]\nauthorized_keys = "s3://bucket"', "'s3://bucket' is not s3://BUCKET/KEY"),
    ('[storage]\nurl = "s3://Bad_Bucket/x"', "storage.url: 's3://Bad_Bucket/x' is not s3://BUCKET"),
    ('[registry]\nhosts = ["a:1"]', "registry.hosts: 'a:1' is not a host name"),
    ('[gc]\nkeep_untagged = "yes"', "gc.keep_untagged: expected true or false, got 'yes'"),
    ('[log]\nlevel = "loud"', "log.level: 'loud' is not one of debug, info, warning, error"),
    ('[log]\nformat = "xml"', "log.format: 'xml' is not one of text, json, logfmt"),
    ('[metrics]\nlisten = "0.0.0.0:9419"', "metrics.listen: '0.0.0.0:9419' must be a loopback"),
    ('[metrics]\nlisten = "localhost"', "metrics.listen: 'localhost' is not HOST:PORT"),
    ('[server]\nlissten = "x"', "server.lissten: unknown setting"),
    ('[nonsense]\nkey = 1', "nonsense.key: unknown setting"),
    ('server = "x"', "'server' must be a [section]"),
    ('[retention]\nrepositories = "x"', "retention: use [[retention]] tables"),
    ('[[retention]]\nkeep_last = 1', "retention[0]: repositories is required"),
    ('[[retention]]\nrepositories = "x"\n[[retention]]\nrepositories = "y"\nkeep = 1',
     "retention[1].keep: unknown setting"),
    ('[[retention]]\nrepositories = "x"\nkeep_last = 0', "retention[0].keep_last: expected a positive"),
    ('[[retention]]\nrepositories = "x"\nkeep_tags = "(["', "retention[0].keep_tags: invalid regex"),
    ('[[retention]]\nrepositories = "x"\nmax_age = "old"', "retention[0].max_age: 'old' is not a"),
])
def test_wrong_values_are_refused_in_one_line_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as refused:
        load_config(write(tmp_path, text))
    assert "\n" not in str(refused.value)


def test_an_empty_unknown_section_is_ignored(tmp_path):
    assert load_config(write(tmp_path, "[nonsense]\n")) == Config()


def test_flags_win_over_the_file_and_are_parsed_as_its_keys(tmp_path):
    path = write(tmp_path, '[server]\nlisten = "127.0.0.1:22"\n[log]\nlevel = "debug"\n')
    config = load_config(path, listen=":2222", keys="k", storage="s3://bucket", log_level=None,
                         log_format="logfmt")
    assert config.server.listen == Address("0.0.0.0", 2222) and config.server.keys == Path("k")
    assert config.storage.url == "s3://bucket"
    assert (config.log.level, config.log.format) == ("debug", "logfmt")
    with pytest.raises(ConfigError, match=re.escape("server.listen: 'x' is not HOST:PORT")):
        load_config(listen="x")
    with pytest.raises(ConfigError, match="is not s3://BUCKET"):
        load_config(storage="s3://B")
    with pytest.raises(ConfigError, match="unknown setting: port"):
        load_config(port="1")


def test_the_defaults_need_no_file():
    config = load_config()
    assert config == Config() and config.source == "defaults"
    assert str(config.server.listen) == "0.0.0.0:2222"
    assert config.server.authorized_keys_location == "keys/authorized_keys"
