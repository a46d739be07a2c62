"""Storage: one driver contract (`base.py`), two backends, one registry layout (`store.py`)."""
