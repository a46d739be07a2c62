"""`[[mirror]]` tables and `--mirror`: what is accepted, and every refusal in one line."""

from __future__ import annotations

import pytest

from sshreg.config import load_config
from sshreg.mirror.settings import MirrorSettings
from sshreg.settings import ConfigError


def config_file(tmp_path, text):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_mirror_tables_and_flags_add_up(tmp_path):
    path = config_file(tmp_path, '[[mirror]]\nprefix = "docker.io"\n'
                                 'upstream = "https://registry-1.docker.io"\ndefault = true\n'
                                 'tag_ttl = "1h"\n')
    config = load_config(path, mirrors=["ghcr.io=https://ghcr.io/"])
    assert config.mirrors == (
        MirrorSettings("docker.io", "https://registry-1.docker.io", tag_ttl=3600.0, default=True),
        MirrorSettings("ghcr.io", "https://ghcr.io"))


@pytest.mark.parametrize("tables,refusal", [
    ('prefix = "a"\nupstream = "https://a"\n[[mirror]]\nprefix = "a/b"\nupstream = "https://b"',
     "overlap"),
    ('prefix = "a"\nupstream = "https://a"\n[[mirror]]\nprefix = "a"\nupstream = "https://b"',
     "given twice"),
    ('prefix = "a"\nupstream = "https://a"\ndefault = true\n[[mirror]]\nprefix = "b"\n'
     'upstream = "https://b"\ndefault = true', "only one mirror can be the default"),
    ('prefix = "a"\nupstream = "ftp://a"', "is not a registry URL"),
    ('prefix = "a"\nupstream = "https://a/v2/"', "is not a registry URL"),
    ('prefix = "A B"\nupstream = "https://a"', "is not a repository name prefix"),
    ('prefix = "a"\nupstream = "https://a"\npassword_env = "TOKEN"', "password_env needs username"),
    ('prefix = "a"\nupstream = "https://a"\nusername = "me"\npassword_env = "NOT_SET_HERE"',
     "$NOT_SET_HERE is not set"),
    ('prefix = "a"\nupstream = "https://a"\npassword = "secret"', "password: unknown setting"),
    ('upstream = "https://a"', "prefix is required"),
])
def test_a_bad_mirror_table_is_refused_saying_why(tmp_path, tables, refusal):
    with pytest.raises(ConfigError, match=refusal.replace("$", r"\$")):
        load_config(config_file(tmp_path, f"[[mirror]]\n{tables}\n"))


def test_a_mirror_flag_without_a_url_is_refused():
    with pytest.raises(ConfigError, match="expected PREFIX=URL"):
        load_config(mirrors=["docker.io"])
