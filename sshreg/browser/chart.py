"""A horizontal bar chart in SVG, drawn by the server: bytes per repository, and the part
of them another repository links too."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

BAR, GAP, LABEL, WIDTH = 18, 6, 220, 640


def bars(rows: list[tuple[str, int, int]], size_text: Callable[[int], str]) -> str:
    """An SVG of (name, bytes, shared bytes) rows, biggest first; `size_text` formats bytes."""
    if not rows:
        return "<p>Nothing is stored yet.</p>"
    top = max(total for _, total, _ in rows) or 1
    height = len(rows) * (BAR + GAP)
    parts = [f'<svg class="chart" role="img" aria-labelledby="chart-title" '
             f'viewBox="0 0 {LABEL + WIDTH + 90} {height}" width="100%" '
             'xmlns="http://www.w3.org/2000/svg">',
             '<title id="chart-title">Bytes stored per repository; the darker part is '
             'shared with other repositories</title>']
    for i, (name, total, shared) in enumerate(rows):
        y = i * (BAR + GAP)
        full = max(1, round(WIDTH * total / top))
        part = round(WIDTH * shared / top)
        parts.append(f'<text x="{LABEL - 8}" y="{y + BAR - 4}" text-anchor="end">'
                     f'{escape(name)}</text>')
        parts.append(f'<rect class="own" x="{LABEL}" y="{y}" width="{full}" height="{BAR}">'
                     f'<title>{escape(name)}: {size_text(total)}</title></rect>')
        if part:
            parts.append(f'<rect class="shared" x="{LABEL}" y="{y}" width="{part}" '
                         f'height="{BAR}"><title>shared: {size_text(shared)}</title></rect>')
        parts.append(f'<text x="{LABEL + full + 6}" y="{y + BAR - 4}">'
                     f'{escape(size_text(total))}</text>')
    parts.append("</svg>")
    return "".join(parts)
