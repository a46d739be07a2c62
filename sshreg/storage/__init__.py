"""Storage drivers: one contract (`base.py`) and two backends (`filesystem/`, `s3/`).

The registry's layout on top of them is `sshreg/store/`.
"""
