"""`sshreg keys list`: every key with its rights, then the lines the server ignores and why,
as text or as JSON."""

from __future__ import annotations

from ..access import Rights
from .lines import Line, fingerprint_of, other_options


def rights_json(rights: Rights) -> dict[str, object]:
    return {"pull": list(rights.pull), "push": list(rights.push), "delete": list(rights.delete),
            "admin": rights.admin}


def listing_json(lines: list[Line]) -> dict[str, object]:
    """`keys list --json`: usable keys and ignored lines."""
    keys = [{
        "line": ln.number,
        "fingerprint": ln.entry.fingerprint,
        "type": ln.entry.key.get_algorithm(),
        "comment": ln.entry.comment,
        "rights": rights_json(ln.entry.rights),
        "rights_text": ln.entry.rights.describe(),
        "options": other_options(ln),
        "expired": ln.entry.expired(),
        "cert_authority": ln.entry.cert_authority,
        "principals": list(ln.entry.principals),
    } for ln in lines if ln.entry is not None]
    ignored = [{"line": ln.number, "reason": ln.error, "fingerprint": fingerprint_of(ln),
                "text": ln.text} for ln in lines if ln.ignored]
    return {"keys": keys, "ignored": ignored}


def listing_text(lines: list[Line]) -> list[str]:
    """`keys list`: one line per key, then the ignored lines with their reason."""
    out = []
    for ln in lines:
        if ln.entry is None:
            continue
        extra = [o for o in other_options(ln) if not o.startswith(("cert-authority", "principals"))]
        extra += ["EXPIRED"] if ln.entry.expired() else []
        kind = (f"CA for principals {','.join(ln.entry.principals)}  "
                if ln.entry.cert_authority else "")
        out.append(f"{ln.number:>4}  {kind}{ln.entry.fingerprint}  {ln.entry.comment or '-'}  "
                   f"[{ln.entry.rights.describe()}]" + (f"  {' '.join(extra)}" if extra else ""))
    for ln in lines:
        if ln.ignored:
            out.append(f"{ln.number:>4}  ignored: {ln.error}: {_shorten(ln.text)}")
    return out or ["no keys"]


def _shorten(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
