"""authorized_keys: who may log in, with what rights, and how `sshreg keys` edits it.

`options` and `entries` parse a line as the server does; `lines` keeps every line of a file
as written; `edits` adds, replaces and removes a key's line; `local_file` and `bucket_file`
are the two places the file can live (each read, re-read and edited its own way); `listing`
shows it (`sshreg keys list`).
"""
