"""The registry's layout on a storage driver: one module per concern (see `registry_store.py`)."""
