"""The browser's pages as HTML strings: one layout, one inline style sheet, escaped text.

Everything a pusher wrote (names, media types, labels, environment, history) goes through
`escape`. The little script a page has (copy buttons, the delete confirmation) runs under a
per-response nonce: the pages' Content-Security-Policy allows no other script.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from html import escape, unescape
from typing import Any
from urllib.parse import quote, urlencode

from ..inspection import human_size

STYLE = """
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #ffffff; --muted: #57606a;
  --line: #d0d7de; --accent: #0550ae; --own: #54aeff; --shared: #0a3069; --bad: #a40e26; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --bg: #0d1117; --muted: #9198a1;
  --line: #3d444d; --accent: #4493f8; --own: #1f6feb; --shared: #a5d6ff; --bad: #ff7b72; } }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
a { color: var(--accent); }
a:focus, button:focus, input:focus { outline: 3px solid var(--accent); outline-offset: 2px; }
.skip { position: absolute; left: -999px; } .skip:focus { left: 8px; top: 8px; }
header, main, footer { max-width: 1100px; margin: 0 auto; padding: 12px 16px; }
header { display: flex; flex-wrap: wrap; gap: 16px; align-items: baseline;
  border-bottom: 1px solid var(--line); }
header nav a { margin-right: 12px; }
h1 { font-size: 1.5rem; margin: 8px 0; word-break: break-all; } h2 { font-size: 1.2rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
/* A long tag without spaces (cosign's sha256-….sig) must not widen a table. */
.ref { overflow-wrap: anywhere; }
td.num, th.num { text-align: right; white-space: nowrap; }
code, .digest { font-family: ui-monospace, monospace; font-size: 0.9em; word-break: break-all; }
.muted { color: var(--muted); } .mirror { font-size: 0.85em; color: var(--muted); }
form.inline { display: inline; }
button { font: inherit; padding: 2px 10px; border: 1px solid var(--line); border-radius: 6px;
  background: transparent; color: var(--fg); cursor: pointer; }
button.danger { color: var(--bad); border-color: var(--bad); }
input[type=search] { font: inherit; padding: 4px 8px; width: min(100%, 320px); }
svg text { fill: var(--fg); font-size: 12px; } svg rect.own { fill: var(--own); }
svg rect.shared { fill: var(--shared); }
.pager a { margin-right: 12px; }
time { white-space: nowrap; }
/* A phone: each row a card of labelled lines, nothing wider than the screen; the chart's
   labels would shrink below reading size, and the table under it has the same numbers. */
@media (max-width: 640px) { .wide, .chart { display: none; }
  table, caption, tbody, tr, td { display: block; } caption { text-align: left; }
  thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); }
  tr { border-bottom: 1px solid var(--line); padding: 6px 0; }
  td, td.num { border: 0; padding: 2px 0; text-align: left; overflow-wrap: anywhere; }
  td::before { content: attr(data-label) ": "; color: var(--muted); } }
"""

SCRIPT = """
document.querySelectorAll('button[data-copy]').forEach(function (b) {
  b.addEventListener('click', function () {
    navigator.clipboard.writeText(b.dataset.copy).then(function () {
      b.textContent = 'Copied';
    }, function () { b.textContent = 'Copy failed'; });
  });
});
document.querySelectorAll('form[data-confirm]').forEach(function (f) {
  f.addEventListener('submit', function (e) {
    if (!window.confirm(f.dataset.confirm)) { e.preventDefault(); }
  });
});
"""


IMAGE_CONFIGS = ("application/vnd.oci.image.config.v1+json",
                 "application/vnd.docker.container.image.v1+json")  # an image, no artifact


def plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    text = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))
    return f'<time datetime="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))}">{text}</time>'


def breakable(text: str) -> str:
    """Escaped, with a line allowed to break after each `/`, `.` and `+` (media types)."""
    return re.sub(r"([/.+])", r"\1<wbr>", escape(text))


def repo_link(name: str) -> str:
    return f'<a href="/ui/r/{quote(name)}">{escape(name)}</a>'


def manifest_link(name: str, digest: str, text: str | None = None) -> str:
    return (f'<a class="digest" href="/ui/m/{quote(name)}@{quote(digest)}">'
            f'{escape(text or digest)}</a>')


def copy_button(label: str, command: str) -> str:
    return (f'<button type="button" data-copy="{escape(command)}" '
            f'aria-label="Copy: {escape(command)}">{escape(label)}</button>')


def layout(title: str, body: str, nonce: str, identity_text: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} - sshreg</title>
<link rel="icon" href="data:,">
<style nonce="{nonce}">{STYLE}</style></head>
<body><a class="skip" href="#main">Skip to content</a>
<header><strong>sshreg</strong><nav aria-label="Main"><a href="/ui/">Repositories</a>
<a href="/ui/storage">Storage</a></nav><span class="muted">{escape(identity_text)}</span></header>
<main id="main">{body}</main>
<script nonce="{nonce}">{SCRIPT}</script></body></html>"""


def table(header: Iterable[str], rows: Iterable[Iterable[str]], caption: str,
          numeric: Iterable[int] = (), wide: Iterable[int] = ()) -> str:
    """Cells are HTML already (escaped by the caller)."""
    numeric, wide = set(numeric), set(wide)

    def cls(i: int) -> str:
        names = (["num"] if i in numeric else []) + (["wide"] if i in wide else [])
        return f' class="{" ".join(names)}"' if names else ""

    columns = list(header)
    # Each cell names its column too, for the phone layout (a column per line, labelled).
    labels = [escape(unescape(re.sub(r"<[^>]*>", "", h))) for h in columns]
    head = "".join(f'<th scope="col"{cls(i)}>{h}</th>' for i, h in enumerate(columns))
    body = "".join("<tr>" + "".join(f'<td{cls(i)} data-label="{labels[i]}">{c}</td>'
                                    for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return (f'<table><caption class="muted">{escape(caption)}</caption><thead><tr>{head}</tr>'
            f"</thead><tbody>{body}</tbody></table>")


def repositories_page(rows: list[dict[str, Any]], query: str, page: int, pages: int,
                      total: int, recent: list[dict[str, Any]]) -> str:
    search = (f'<form role="search" method="get" action="/ui/"><label for="q">Filter '
              f'repositories</label> <input type="search" id="q" name="q" '
              f'value="{escape(query)}"> <button type="submit">Filter</button></form>')
    listed = table(
        ["Repository", "Tags", "Size", "Last push"],
        [[repo_link(r["name"]) + (f' <span class="mirror">mirror of {escape(r["mirror"])}</span>'
                                  if r["mirror"] else ""),
          str(r["tags"]), human_size(r["bytes"]), when(r["last_push"])] for r in rows],
        f"{plural(total, 'repository', 'repositories')} you may pull"
        + (f" matching “{query}”" if query else ""),
        numeric=(1, 2))
    pager = []
    if page > 1:
        pager.append(f'<a href="/ui/?{urlencode({"q": query, "page": page - 1})}" '
                     'rel="prev">Previous</a>')
    if page < pages:
        pager.append(f'<a href="/ui/?{urlencode({"q": query, "page": page + 1})}" '
                     'rel="next">Next</a>')
    pager_html = (f'<nav class="pager" aria-label="Pages">Page {page} of {max(pages, 1)} '
                  f'{" ".join(pager)}</nav>')
    recent_html = table(
        ["When", "What", "Repository", "By"],
        [[when(e["time"]), escape(e["type"]), repo_link(e["repository"]) +
          (f'<span class="ref">{escape(":" + ",".join(e["tags"]))}</span>' if e["tags"]
           else ""),
          escape(e["comment"] or e["fingerprint"] or "-")] for e in recent],
        "The latest pushes and deletes you may see") if recent else "<p>No events yet.</p>"
    return (f"<h1>Repositories</h1>{search}{listed}{pager_html}"
            f"<h2>Recent pushes</h2>{recent_html}")


def repository_page(name: str, mirror: str | None, tags: list[dict[str, Any]], host: str,
                    can_delete: bool, token_for: Any) -> str:
    rows = []
    for tag in tags:
        reference = f"{host}/{name}:{tag['tag']}"
        commands = (copy_button("docker pull", f"docker pull {reference}") + " " +
                    copy_button("skopeo copy", f"skopeo copy --src-tls-verify=false "
                                               f"docker://{reference} oci:{name.split('/')[-1]}"))
        delete = ""
        if can_delete:
            delete = (f'<form class="inline" method="post" action="/ui/r/{quote(name)}/delete" '
                      f'data-confirm="Delete the tag {escape(tag["tag"])} of {escape(name)}?">'
                      f'<input type="hidden" name="tag" value="{escape(tag["tag"])}">'
                      f'<input type="hidden" name="token" value="{token_for(tag["tag"])}">'
                      f'<button class="danger" type="submit" aria-label="Delete tag '
                      f'{escape(tag["tag"])}">Delete</button></form>')
        referrers = ", ".join(f'{manifest_link(name, r["digest"], r["artifactType"] or "referrer")}'
                              for r in tag["referrers"]) or "-"
        rows.append([
            f"<strong class=\"ref\">{escape(tag['tag'])}</strong>",
            manifest_link(name, tag["digest"], tag["digest"][:19] + "…"),
            breakable(tag["media_type"]),
            escape(", ".join(tag["platforms"]) or "-"),
            human_size(tag["size"]), when(tag["pushed"]) + (
                f'<br><span class="muted">{escape(tag["by"])}</span>' if tag["by"] else ""),
            referrers, commands + " " + delete])
    heading = f"<h1>{escape(name)}</h1>"
    if mirror:
        heading += f'<p class="mirror">Pulled through the mirror of {escape(mirror)}</p>'
    return heading + table(
        ["Tag", "Digest", "Media type", "Platforms", "Size", "Pushed", "Referrers", "Commands"],
        rows, plural(len(tags), "tag", "tags"), numeric=(4,), wide=(2, 6))


def manifest_page(name: str, info: dict[str, Any], config: dict[str, Any] | None) -> str:
    parts = [f'<h1>{escape(name)}@<span class="digest">{escape(info["digest"])}</span></h1>',
             f"<p>{escape(info['mediaType'])}"
             + (f" · artifact type {escape(info['artifactType'])}"
                if info.get("artifactType") not in (None, *IMAGE_CONFIGS)
                else "")
             + (f" · subject {manifest_link(name, info['subject'])}" if "subject" in info
                else "") + "</p>"]
    if "manifests" in info:
        parts.append(table(["Platform", "Manifest", "Size"],
                           [[escape(m["platform"] or "-"), manifest_link(name, m["digest"]),
                             human_size(m["size"])] for m in info["manifests"]],
                           "Platforms of this index", numeric=(2,)))
    else:
        parts.append(table(["Part", "Digest", "Media type", "Size"],
                           [["config", f'<span class="digest">{escape(info["config"]["digest"])}'
                             "</span>", escape(info["config"]["mediaType"]),
                             human_size(info["config"]["size"])]] +
                           [[f"layer {i + 1}", f'<span class="digest">{escape(layer["digest"])}'
                             "</span>", escape(layer["mediaType"]), human_size(layer["size"])]
                            for i, layer in enumerate(info["layers"])],
                           f"Total {human_size(info['totalSize'])}", numeric=(3,), wide=(2,)))
    if config:
        parts.append(_config_section(config))
    if info["referrers"]:
        parts.append("<h2>Referrers</h2>" + table(
            ["Artifact type", "Manifest"],
            [[escape(r["artifactType"] or "-"), manifest_link(name, r["digest"])]
             for r in info["referrers"]], "Signatures, SBOMs and attestations"))
    return "".join(parts)


def _config_section(config: dict[str, Any]) -> str:
    settings = config.get("config") if isinstance(config.get("config"), dict) else {}
    rows = []
    for key, label in (("Env", "Environment"), ("Entrypoint", "Entrypoint"), ("Cmd", "Command"),
                       ("WorkingDir", "Working directory"), ("User", "User")):
        value = settings.get(key)
        if value:
            text = "\n".join(map(str, value)) if isinstance(value, list) else str(value)
            rows.append([escape(label), f"<code>{escape(text)}</code>".replace("\n", "<br>")])
    labels = settings.get("Labels")
    if isinstance(labels, dict):
        rows += [[f"Label <code>{escape(str(k))}</code>", f"<code>{escape(str(v))}</code>"]
                 for k, v in labels.items()]
    platform = "/".join(str(config[k]) for k in ("os", "architecture", "variant")
                        if config.get(k))
    if platform:
        rows.insert(0, ["Platform", escape(platform)])
    section = "<h2>Configuration</h2>" + (table(["Setting", "Value"], rows, "From the image "
                                                "configuration") if rows else "<p>Empty.</p>")
    history = config.get("history")
    if isinstance(history, list) and history:
        section += "<h2>History</h2>" + table(
            ["Created", "Created by"],
            [[escape(str(h.get("created", ""))), f"<code>{escape(str(h.get('created_by', '')))}"
              "</code>"] for h in history if isinstance(h, dict)], "How the layers were made")
    return section


def storage_page(chart: str, rows: list[dict[str, Any]], gc: dict[str, Any] | None,
                 dry_run: dict[str, Any] | None, admin: bool) -> str:
    total = sum(r["bytes"] for r in rows)
    parts = ["<h1>Storage</h1>", f"<p>{len(rows)} repositories you may pull link "
             f"{human_size(total)} (shared blobs counted in each).</p>", chart,
             table(["Repository", "Stored", "Shared", "Blobs"],
                   [[repo_link(r["repository"]), human_size(r["bytes"]),
                     human_size(r["shared"]), str(r["blobs"])] for r in rows],
                   "Bytes per repository", numeric=(1, 2, 3))]
    if admin:
        parts.append("<h2>Garbage collection</h2>")
        if gc:
            parts.append(f"<p>Last run {when(gc['time'])}: "
                         f"{escape(json.dumps(gc['report'], sort_keys=True))}</p>")
        else:
            parts.append("<p>No run in the event log.</p>")
        if dry_run is None:
            parts.append('<p><a href="/ui/storage?dry_run=1">What would a run free now?</a> '
                         '(a dry run: it reads everything, deletes nothing)</p>')
        else:
            parts.append(f"<p>A run now would free {human_size(dry_run['bytes_reclaimed'])}: "
                         f"{len(dry_run['manifests'])} manifests, {dry_run['blobs']} blobs.</p>")
    return "".join(parts)


def error_page(status: int, message: str) -> str:
    return f"<h1>{status}</h1><p>{escape(message)}</p><p><a href=\"/ui/\">Repositories</a></p>"
