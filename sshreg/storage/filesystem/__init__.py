"""The zero-config backend: objects are files under one root directory.

Writes go to a temporary file under `<root>/_tmp/` (same filesystem), are fsynced and
renamed into place, so readers never see partial data and a crash leaves at most a
temporary file that `abort_stale_uploads` removes. All file I/O runs in a bounded
thread pool, never on the event loop.
"""

from .driver import FilesystemDriver
from .upload import FilesystemUpload

__all__ = ["FilesystemDriver", "FilesystemUpload"]
