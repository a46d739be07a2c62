"""A least-recently-used map within a budget, for what a gateway may keep of storage:
facts that cannot become false (content-addressed bytes), or that are checked again when
used (blob records)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """Values by key, the least recently used dropped first once their total weight (one
    per value unless `weight` says otherwise) exceeds `budget`. A value heavier than a
    quarter of the budget is not kept: it would push out many others."""

    def __init__(self, budget: int, weight: Callable[[V], int] = lambda _: 1) -> None:
        self.budget = budget
        self._weight = weight
        self._items: OrderedDict[K, V] = OrderedDict()
        self._total = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        weight = self._weight(value)
        if weight > self.budget // 4:
            return
        self.pop(key)
        self._items[key] = value
        self._total += weight
        while self._total > self.budget:
            _, evicted = self._items.popitem(last=False)
            self._total -= self._weight(evicted)

    def pop(self, key: K) -> None:
        value = self._items.pop(key, None)
        if value is not None:
            self._total -= self._weight(value)
