"""Digests a write of this process is using right now, which garbage collection keeps.

Pins only cover this process: another gateway on the same bucket has its own, and the
collector's last look (`management/gc.py`) covers what they write."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator

from ..references import Digest


class Pins:
    def __init__(self) -> None:
        self._pins: Counter[Digest] = Counter()

    @contextlib.contextmanager
    def hold(self, digests: Iterable[Digest]) -> Iterator[None]:
        """Mark digests as being referenced by a write in progress, for garbage collection."""
        held = list(digests)
        self._pins.update(held)
        try:
            yield
        finally:
            self._pins.subtract(held)
            for digest in held:
                if self._pins[digest] <= 0:
                    del self._pins[digest]

    def __contains__(self, digest: Digest) -> bool:
        return self._pins[digest] > 0 if digest in self._pins else False
