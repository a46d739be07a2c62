"""The pure parts of the worker processes: how many, how their metrics add up, how their
log lines say which worker wrote them, and what a supervisor hands a worker."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys

import pytest

from sshreg.config import load_config
from sshreg.logs import JsonFormatter, TextFormatter, _WorkerFilter
from sshreg.metrics import Metrics
from sshreg.settings import ConfigError
from sshreg.ssh.settings import MAX_WORKERS, parse_workers
from sshreg.workers.spec import WorkerSpec


def test_auto_is_one_worker_per_cpu_this_process_may_use():
    assert parse_workers("auto", "server.workers") == min(MAX_WORKERS,
                                                          len(os.sched_getaffinity(0)))
    assert load_config().server.workers == parse_workers("auto", "default")


@pytest.mark.parametrize("value, workers", [(1, 1), (4, 4), ("3", 3), (MAX_WORKERS, MAX_WORKERS)])
def test_a_count_is_taken_from_the_file_or_the_command_line(value, workers):
    assert parse_workers(value, "server.workers") == workers


@pytest.mark.parametrize("value", [0, -1, MAX_WORKERS + 1, "many", "", 1.5, True])
def test_anything_else_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"^server\.workers: "):
        parse_workers(value, "server.workers")


def test_the_workers_flag_wins_over_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[server]\nworkers = 4\n")
    assert load_config(path).server.workers == 4
    assert load_config(path, workers="2").server.workers == 2


def worker_metrics(received: int, connections: int, latency: float) -> Metrics:
    metrics = Metrics()
    metrics.inc("sshreg_http_received_bytes_total", received)
    metrics.inc("sshreg_http_requests_total", route="blob", method="GET", status="200")
    metrics.set("sshreg_ssh_connections", connections)
    metrics.observe("sshreg_storage_seconds", latency, operation="get")
    return metrics


def test_the_metrics_of_all_workers_add_up_series_by_series():
    """Through JSON, as a supervisor gets them: counters, gauges (connections open in each)
    and histogram buckets all sum; label order does not matter."""
    total = Metrics()
    for metrics in (worker_metrics(100, 2, 0.003), worker_metrics(50, 1, 0.2)):
        total.merge(json.loads(json.dumps(metrics.snapshot())))
    assert total.value("sshreg_http_received_bytes_total") == 150
    assert total.value("sshreg_http_requests_total", status="200", method="GET",
                       route="blob") == 2
    assert total.value("sshreg_ssh_connections") == 3
    (hist,) = total.histograms["sshreg_storage_seconds"].values()
    assert sum(hist.counts) == 2 and hist.sum == pytest.approx(0.203)
    rendered = total.render()
    assert 'sshreg_storage_seconds_bucket{operation="get",le="0.005"} 1' in rendered
    assert 'sshreg_storage_seconds_bucket{operation="get",le="0.25"} 2' in rendered


def test_an_empty_snapshot_changes_nothing():
    total = worker_metrics(10, 1, 0.01)
    before = total.render()
    total.merge(Metrics().snapshot())
    assert total.render() == before


def record(msg: object, args: object) -> logging.LogRecord:
    return logging.LogRecord("sshreg.audit", logging.INFO, __file__, 1, msg, (args,), None)


def test_a_workers_lines_name_it_in_text_before_the_logger_and_as_a_field_in_json():
    line = TextFormatter(worker=1).format(record("pushed %(what)s", {"what": "x"}))
    assert line.endswith("INFO [w1] sshreg.audit: pushed x")
    assert TextFormatter().format(record("pushed %(what)s", {"what": "x"})).endswith(
        "INFO sshreg.audit: pushed x")
    message = record("pushed %(what)s", {"what": "x"})
    _WorkerFilter(3).filter(message)
    assert json.loads(JsonFormatter().format(message))["worker"] == 3


def test_what_a_supervisor_hands_a_worker_survives_the_pipe(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[server]\nworkers = 2\n[[retention]]\nrepositories = "team/*"\n'
                    'keep_last = 3\n')
    spec = WorkerSpec(1, load_config(path), (3, 4), 5, "/run/sshreg/worker-1.sock")
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_the_supervisor_loads_neither_ssh_nor_http_nor_storage_unless_it_needs_them():
    """Its memory is overhead on top of the workers': asyncssh only to make a missing host
    key, aiohttp only for [metrics], never boto3 or the registry."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, sshreg.cli, sshreg.workers.supervisor; "
         "print(' '.join(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=60, check=True).stdout.split()
    for heavy in ("asyncssh", "aiohttp", "boto3", "botocore", "sshreg.registry.app",
                  "sshreg.store.registry_store", "sshreg.service"):
        assert heavy not in loaded, heavy
