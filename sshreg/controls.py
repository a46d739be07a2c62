"""Control characters made visible, for text that clients write and people read.

Request paths, forward destinations, command arguments, key comments and manifest fields
all reach logs and terminals; raw, a newline there forges a log line and an ESC sequence
rewrites a terminal. `visible()` replaces each one with a backslash escape.
"""

from __future__ import annotations

import re

# C0, DEL, C1, and the Unicode line and paragraph separators (log viewers break lines there).
CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str, keep: str = "") -> str:
    """`text` with every control character except those in `keep` as a backslash escape."""
    if CONTROLS.search(text) is None:
        return text
    if not keep:
        return CONTROLS.sub(_escape, text)
    return CONTROLS.sub(lambda m: m[0] if m[0] in keep else _escape(m), text)
