"""The gateway's bounded caches keep within their budget and drop the least recently used."""

from __future__ import annotations

from sshreg.store.lru import Lru


def test_values_beyond_the_budget_push_out_the_least_recently_used():
    cache: Lru[int, bytes] = Lru(1000, weight=len)
    for i in range(5):
        cache.put(i, bytes(200))
    assert cache.get(0) is not None  # now the most recently used
    cache.put(5, bytes(200))
    assert cache.get(1) is None
    assert [k for k in range(6) if cache.get(k) is not None] == [0, 2, 3, 4, 5]


def test_a_value_heavier_than_a_quarter_of_the_budget_is_not_kept():
    cache: Lru[str, bytes] = Lru(1000, weight=len)
    cache.put("small", bytes(250))
    cache.put("big", bytes(251))
    assert cache.get("big") is None and cache.get("small") is not None


def test_replacing_or_popping_a_value_gives_back_its_weight():
    cache: Lru[str, bytes] = Lru(1000, weight=len)
    for _ in range(10):
        cache.put("same", bytes(250))
    cache.put("a", bytes(250))
    cache.put("b", bytes(250))
    cache.put("c", bytes(250))
    assert all(cache.get(k) is not None for k in ("same", "a", "b", "c"))
    cache.pop("same")
    cache.pop("missing")
    cache.put("d", bytes(250))
    assert len(cache) == 4 and all(cache.get(k) is not None for k in "abcd")


def test_without_a_weight_the_budget_counts_values():
    cache: Lru[int, str] = Lru(8)
    for i in range(20):
        cache.put(i, str(i))
    assert len(cache) == 8 and cache.get(19) == "19" and cache.get(11) is None
