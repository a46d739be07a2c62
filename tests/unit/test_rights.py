"""Rights of a key over repositories: which globs match which names, and which action a
right grants (push also grants pull; nothing else grants more than it names)."""

from __future__ import annotations

import pytest

from sshreg.access import Action, Identity, Rights, glob_matches


@pytest.mark.parametrize(("pattern", "name"), [
    ("team/*", "team/app"), ("team/**", "team/app/x"), ("**", "a/b/c"), ("*", "app"),
    ("team/ap?", "team/app"), ("a.b/c+d", "a.b/c+d"), ("team/**/base", "team/x/y/base"),
])
def test_globs_match_the_names_they_describe(pattern: str, name: str) -> None:
    assert glob_matches(pattern, name)


@pytest.mark.parametrize(("pattern", "name"), [
    ("team/*", "team/app/x"), ("team/*", "team"), ("team/*", "other/app"), ("*", "a/b"),
    ("team/ap?", "team/ap/"), ("team/ap?", "team/apps"), ("a.b", "axb"), ("team", "team/app"),
    ("app", "my-app"), ("team/*", "xteam/app"),
])
def test_globs_match_whole_names_and_star_stops_at_a_slash(pattern: str, name: str) -> None:
    assert not glob_matches(pattern, name)


def test_a_push_right_lets_the_key_pull_there_too() -> None:
    rights = Rights(push=("team/*",))
    assert rights.may(Action.PUSH, "team/app")
    assert rights.may(Action.PULL, "team/app")
    assert not rights.may(Action.PULL, "other/app")
    assert not rights.may(Action.DELETE, "team/app")


def test_pull_and_delete_rights_grant_only_what_they_name() -> None:
    reader = Rights(pull=("team/*",))
    assert reader.may(Action.PULL, "team/app")
    assert not reader.may(Action.PUSH, "team/app")
    assert not reader.may(Action.DELETE, "team/app")
    deleter = Rights(delete=("team/*",))
    assert deleter.may(Action.DELETE, "team/app")
    assert not deleter.may(Action.PULL, "team/app")
    assert not deleter.may(Action.PUSH, "team/app")


def test_each_right_is_checked_against_its_own_globs() -> None:
    rights = Rights(pull=("shared/*",), push=("team/*",), delete=("team/scratch",))
    assert rights.may(Action.PULL, "shared/base") and not rights.may(Action.PUSH, "shared/base")
    assert rights.may(Action.DELETE, "team/scratch") and not rights.may(Action.DELETE, "team/app")
    assert not rights.may(Action.PULL, "elsewhere/app")


def test_no_rights_grant_nothing_and_full_rights_everything() -> None:
    for action in Action:
        assert not Rights().may(action, "app")
        assert Rights.full().may(action, "any/where/app")
    assert Rights().read_only and Rights(pull=("**",)).read_only
    assert not Rights(push=("a",)).read_only and not Rights(delete=("a",)).read_only
    assert not Rights(admin=True).read_only and not Rights.full().read_only


def test_full_rights_are_every_right_everywhere_and_admin() -> None:
    assert Rights.full() == Rights(pull=("**",), push=("**",), delete=("**",), admin=True)
    assert Rights.full().admin
    for action in Action:  # each right on its own: pull is not only implied by push
        assert Rights.full().may(action, "a/b")


@pytest.mark.parametrize(("rights", "text"), [
    (Rights.full(), "full access (pull, push, delete everywhere; admin)"),
    (Rights(pull=("**",), push=("**",), delete=("**",), admin=True),
     "full access (pull, push, delete everywhere; admin)"),
    (Rights(pull=("**",), push=("**",), delete=("**",)), "pull **; push **; delete **"),
    (Rights(pull=("team/*", "base/*"), push=("team/*",)), "pull team/*, base/*; push team/*"),
    (Rights(delete=("team/scratch",), admin=True), "delete team/scratch; admin"),
    (Rights(admin=True), "admin"),
    (Rights(), "no registry access"),
])
def test_rights_read_as_one_line_a_human_can_check(rights: Rights, text: str) -> None:
    """What `sshreg keys list` and the help text show a key may do."""
    assert rights.describe() == text


def test_the_audit_log_names_the_key_its_comment_and_where_it_came_from() -> None:
    identity = Identity("SHA256:abc", "alice@laptop", Rights(), "192.0.2.1:50000")
    assert identity.log_fields() == {"key": "SHA256:abc", "comment": "alice@laptop",
                                     "peer": "192.0.2.1:50000"}
