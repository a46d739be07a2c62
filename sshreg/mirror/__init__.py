"""The pull-through cache: repositories under a prefix (`docker.io/...`) are read from an
upstream registry on a miss, stored like any other repository, and served from storage after.

`settings.py` declares `[[mirror]]`; `names.py` maps a requested name to its mirror and the
name upstream; `upstream.py` speaks to the upstream registry (token and Basic auth,
redirects); `fills.py` copies a blob into storage while clients read it; `cache.py` decides
when a tag is asked again and puts it all together for the registry's handlers.
"""
