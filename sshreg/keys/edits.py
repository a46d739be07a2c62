"""The edits `sshreg keys add` and `sshreg keys remove` make, and the line `add` writes.

An edit is a function from the file's lines to its new text (and what it did), so the same
edit applies to a local file (`local_file.edit_file`, under a lock) and to an object in a
bucket (`bucket_file.edit_shared`, with a conditional write). Every line an edit does not
change is kept byte for byte as it was: comments, blank lines and lines the server ignores
included.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .entries import KeyEntry, parse_line
from .lines import KeyAdminError, Line, after_options, comment_of, fingerprint_of, options_of
from .options import KeyLineError

_GLOB = re.compile(r"[a-z0-9._/*?-]+")


# -- what `keys add` writes -------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """The rights `keys add` writes: full access, or pull (and push, delete) on globs."""

    repos: tuple[str, ...] = ()
    pull_only: bool = False

    @classmethod
    def parse(cls, repos: list[str] | None, pull_only: bool) -> Grant:
        globs = tuple(g.strip() for value in repos or () for g in value.split(",") if g.strip())
        for glob in globs:
            if not _GLOB.fullmatch(glob):
                raise KeyAdminError(f"--repos {glob!r}: a repository glob uses only a-z 0-9 . _ - / "
                                    "and the wildcards * ? **")
        return cls(globs, pull_only)

    @property
    def is_default(self) -> bool:
        return not self.repos and not self.pull_only

    def options(self) -> str:
        """The `sshreg-*` options for the line; empty for full access."""
        if self.is_default:
            return ""
        globs = ",".join(self.repos or ("**",))
        names = ("sshreg-pull",) if self.pull_only else ("sshreg-pull", "sshreg-push",
                                                        "sshreg-delete")
        return ",".join(f'{name}="{globs}"' for name in names)


def read_key_source(source: str) -> str:
    """The key line given as `FILE_OR_LINE`: a file (one key in it), `-` for stdin, or a line."""
    if source == "-":
        text = sys.stdin.read()
    elif "\n" not in source and Path(source).is_file():
        try:
            text = Path(source).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyAdminError(f"{source}: cannot read: {exc}") from None
    elif len(source.split()) != 1:
        text = source
    else:  # one word was meant as a file name: a key line has at least two
        raise KeyAdminError(f"{source}: no such file")
    lines = [s.strip() for s in text.splitlines() if s.strip() and not s.strip().startswith("#")]
    if len(lines) != 1:
        raise KeyAdminError(f"expected exactly one public key, found {len(lines)} line(s)")
    return lines[0]


def new_line(source_line: str, grant: Grant, comment: str | None = None,
             principals: tuple[str, ...] = ()) -> tuple[str, KeyEntry]:
    """The text `keys add` will write for the key, and its parsed entry.

    A bare key gets the grant's options; a line that already carries options keeps them as
    written (and then takes no rights flags). `comment` replaces the key's comment. With
    `principals`, the key is a CA: its user certificates for those principals log in.
    """
    try:
        given = parse_line(source_line, 0)
    except KeyLineError as exc:
        raise KeyAdminError(f"not a usable key: {exc}") from None
    if comment is not None and (not comment.strip() or any(c in comment for c in "\r\n\0")):
        raise KeyAdminError("--comment must be a non-empty single line")
    existing = options_of(source_line)
    if existing and not grant.is_default:
        raise KeyAdminError("the line already has options: give a bare key with --pull-only or "
                            "--repos, or the full line without them")
    if principals and existing:
        raise KeyAdminError("--ca takes a bare CA public key, not a line with options")
    for name in principals:
        if not name or any(c in name for c in ',"\\ \t\r\n\0'):
            raise KeyAdminError(f"--principals: {name!r} is not a principal name")
    prefix = _options_prefix(source_line) if existing else grant.options()
    if principals:
        prefix = ",".join(p for p in ('cert-authority', f'principals="{",".join(principals)}"',
                                      prefix) if p)
    kind, blob = given.key.export_public_key().decode().split()[:2]
    text = " ".join(p for p in (prefix, kind, blob, (comment or given.comment).strip()) if p)
    try:
        return text, parse_line(text, 0)
    except KeyLineError as exc:  # pragma: no cover - every part was checked above
        raise KeyAdminError(f"cannot build the line: {exc}") from None


def _options_prefix(text: str) -> str:
    rest = after_options(text)
    return text[: len(text) - len(rest)].rstrip() if rest else ""


# -- editing the lines -----------------------------------------------------------------


@dataclass(frozen=True)
class Added:
    entry: KeyEntry
    line: int
    replaced: tuple[Line, ...] = ()


def with_key(lines: list[Line], text: str, new: KeyEntry, replace: bool, where: object
             ) -> tuple[str, Added]:
    """The file's text with the line `text` (the key `new`) added, or with `replace` put in
    place of the key's lines; refused if the key is there and `replace` is not given."""
    same = [ln for ln in lines if fingerprint_of(ln) == new.fingerprint]
    if same and not replace:
        lines_text = ", ".join(f"line {ln.number}" + (f" (ignored: {ln.error})" if ln.ignored
                                                       else "") for ln in same)
        raise KeyAdminError(f"{new.fingerprint} is already in {where} on {lines_text}; "
                            "use --replace to change its line")
    out, number = _with_line(lines, same, text)
    return "".join(ln.raw for ln in out), Added(new, number, tuple(same))


def _with_line(lines: list[Line], same: list[Line], text: str) -> tuple[list[Line], int]:
    """The lines with `text` in place of the first of `same` (the others dropped), or
    appended; and the new line's number."""
    ending = next((ln.ending for ln in lines if ln.ending), "\n")
    drop = {ln.number for ln in same}
    if same:
        new = Line(0, text + (same[0].ending or ending))
        out = [new if ln.number == same[0].number else ln
               for ln in lines if ln.number == same[0].number or ln.number not in drop]
    else:
        out = list(lines)
        if out and not out[-1].ending:
            out[-1] = Line(out[-1].number, out[-1].raw + ending)
        new = Line(0, text + ending)
        out.append(new)
    return out, next(i for i, ln in enumerate(out, start=1) if ln is new)


def without_key(lines: list[Line], selector: str, where: object) -> tuple[str, list[Line]]:
    """The file's text without the lines holding the key `selector` names, and those lines."""
    fingerprint = _select(lines, selector, where)
    gone = [ln for ln in lines if fingerprint_of(ln) == fingerprint]
    numbers = {ln.number for ln in gone}
    return "".join(ln.raw for ln in lines if ln.number not in numbers), gone


def _select(lines: list[Line], selector: str, path: object) -> str:
    """The one fingerprint that `selector` names (a fingerprint, with or without SHA256:, or
    a comment)."""
    wanted = selector.strip()
    prints = {fp for ln in lines if (fp := fingerprint_of(ln))}
    for fp in prints:
        if wanted in (fp, fp.removeprefix("SHA256:")):
            return fp
    by_comment = sorted({fp for ln in lines if (fp := fingerprint_of(ln)) and comment_of(ln) == wanted})
    if not by_comment:
        raise KeyAdminError(f"no key in {path} has the fingerprint or comment {wanted!r}")
    if len(by_comment) > 1:
        raise KeyAdminError(f"{len(by_comment)} keys have the comment {wanted!r} "
                            f"({', '.join(by_comment)}): remove one by its fingerprint")
    return by_comment[0]
