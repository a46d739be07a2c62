"""The registry browser: server-rendered pages at `/` on the same tunnel as `/v2/`.

The key that opened the tunnel decides what is shown, exactly as for the API: there is no
login page. `app.py` routes and guards the pages (same-origin only, a token on the one
form that changes anything), `pages.py` renders them, `chart.py` draws the storage chart.
No external assets and no build step: HTML, one inline style sheet and a few lines of
script, so the box and the laptop may both be offline.
"""
