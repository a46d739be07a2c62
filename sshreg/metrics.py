"""Prometheus metrics in the text exposition format, without a client library.

One `Metrics` object is created by the service and handed to the parts that count
(registry, bridge, gateway, `storage.instrumented`); `render()` is served on a loopback-only port,
the one the [metrics] section (`MetricsSettings`) names.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .settings import ConfigError, parse_address, parse_str, setting


def parse_loopback(value: Any, what: str) -> str:
    """Empty (no metrics), or HOST:PORT on a loopback address: the endpoints need no key."""
    listen = parse_str(value, what)
    if listen:
        host, _ = parse_address(listen, what)
        if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("127."):
            raise ConfigError(f"{what}: {listen!r} must be a loopback address (metrics are not "
                              "authenticated)")
    return listen


@dataclass(frozen=True)
class MetricsSettings:
    """The [metrics] section."""

    listen: str = setting("", "loopback HOST:PORT for /metrics and /health, e.g. 127.0.0.1:9419",
                          parse_loopback)


LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

Labels = tuple[tuple[str, str], ...]

# Label values must come from a fixed set, or a client could grow the metrics without bound
# (any token is a valid HTTP method): everything else is counted as "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in HTTP_METHODS else "other"


class Histogram:
    def __init__(self, buckets: Iterable[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value


class Metrics:
    """Counters, gauges and histograms keyed by (name, labels)."""

    HELP = {
        "sshreg_http_requests_total": ("counter", "HTTP requests by route, method and status"),
        "sshreg_http_received_bytes_total": ("counter", "bytes received from tunnels"),
        "sshreg_http_sent_bytes_total": ("counter", "bytes sent into tunnels"),
        "sshreg_ssh_connections": ("gauge", "open SSH connections"),
        "sshreg_ssh_channels": ("gauge", "open registry channels (tunnelled HTTP connections)"),
        "sshreg_ssh_auth_failures_total": ("counter", "refused logins"),
        "sshreg_ssh_refusals_total": ("counter", "refused channels and requests by kind"),
        "sshreg_uploads_active": ("gauge", "blob upload sessions in progress"),
        "sshreg_storage_seconds": ("histogram", "storage operation latency by operation"),
        "sshreg_storage_errors_total": ("counter", "failed storage operations by operation"),
        "sshreg_workers": ("gauge", "worker processes accepting connections"),
        "sshreg_worker_restarts_total": ("counter", "workers that died and were replaced"),
    }

    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.gauges: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.histograms: dict[str, dict[Labels, Histogram]] = defaultdict(dict)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self.counters[name][tuple(sorted(labels.items()))] += value

    def set(self, name: str, value: float, **labels: str) -> None:
        self.gauges[name][tuple(sorted(labels.items()))] = value

    def add(self, name: str, value: float, **labels: str) -> None:
        self.gauges[name][tuple(sorted(labels.items()))] += value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        series = self.histograms[name]
        if key not in series:
            series[key] = Histogram(LATENCY_BUCKETS)
        series[key].observe(value)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a counter or gauge series (for tests and health output)."""
        key = tuple(sorted(labels.items()))
        return self.counters.get(name, {}).get(key) or self.gauges.get(name, {}).get(key, 0.0)

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """Every series as JSON-ready lists, for `merge` in another process."""
        def series(table: dict[str, dict[Labels, Any]]) -> list[tuple[str, Labels, Any]]:
            return [(name, labels, value) for name, values in table.items()
                    for labels, value in values.items()]

        return {"counters": [[n, list(map(list, k)), v] for n, k, v in series(self.counters)],
                "gauges": [[n, list(map(list, k)), v] for n, k, v in series(self.gauges)],
                "histograms": [[n, list(map(list, k)), h.counts, h.sum]
                               for n, k, h in series(self.histograms)]}

    def merge(self, snapshot: dict[str, list[list[Any]]]) -> None:
        """Add another process's `snapshot`: counters, gauges and histograms all sum, as
        every gauge here counts something (connections, channels, uploads) per process."""
        for name, labels, value in snapshot["counters"]:
            self.counters[name][_label_key(labels)] += value
        for name, labels, value in snapshot["gauges"]:
            self.gauges[name][_label_key(labels)] += value
        for name, labels, counts, total in snapshot["histograms"]:
            series = self.histograms[name]
            hist = series.setdefault(_label_key(labels), Histogram(LATENCY_BUCKETS))
            hist.counts = [a + b for a, b in zip(hist.counts, counts, strict=True)]
            hist.sum += total

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted({*self.counters, *self.gauges, *self.histograms}):
            kind, text = self.HELP.get(name, ("untyped", name))
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for labels, value in sorted({**self.counters.get(name, {}),
                                         **self.gauges.get(name, {})}.items()):
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
            for labels, hist in sorted(self.histograms.get(name, {}).items()):
                cumulative = 0
                for bound, count in zip((*hist.buckets, float("inf")), hist.counts, strict=True):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else _number(bound)
                    lines.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {cumulative}")
                lines.append(f"{name}_sum{_labels(labels)} {_number(hist.sum)}")
                lines.append(f"{name}_count{_labels(labels)} {cumulative}")
        return "\n".join(lines) + "\n"


def _label_key(pairs: list[list[str]]) -> Labels:
    return tuple(sorted((str(k), str(v)) for k, v in pairs))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for _, v in labels)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(labels, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
