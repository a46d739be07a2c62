"""One worker process: `python -m sshreg.workers.worker`, started by the supervisor.

The supervisor writes a pickled `WorkerSpec` to the worker's stdin and keeps stdin open: its
end of file means the supervisor is gone (even by SIGKILL), and the worker stops as on
SIGTERM. The worker reports on its control pipe: `READY=1 {json}` once it accepts
connections (the JSON: what the ready line says about it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle
import socket
import sys

from .. import logs
from ..memory import tune_malloc
from ..service import Service
from ..settings import run_main
from .spec import WorkerSpec

log = logging.getLogger("sshreg.worker")

class _EndOfInput(asyncio.Protocol):
    def __init__(self, done: asyncio.Event) -> None:
        self.done = done

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set()


async def run(spec: WorkerSpec) -> None:
    listeners = [socket.socket(fileno=fd) for fd in spec.listener_fds]
    for listener in listeners:
        listener.setblocking(False)
    service = Service(spec.config, housekeeping=spec.index == 0)
    await service.start(listeners, metrics_socket=spec.metrics_socket)
    stop = service.stop_on_signals()
    await asyncio.get_running_loop().connect_read_pipe(lambda: _EndOfInput(stop), sys.stdin)
    report = f"READY=1 {json.dumps(service.ready_fields(), default=str)}\n"
    os.write(spec.control_fd, report.encode())
    log.info("worker %(worker)d accepting connections", {"worker": spec.index})
    await stop.wait()
    await service.stop(spec.config.server.shutdown_grace)


def main() -> int:
    tune_malloc()  # before any thread exists
    spec: WorkerSpec = pickle.load(sys.stdin.buffer)
    logs.configure(spec.config.log.level, spec.config.log.format, worker=spec.index)
    return run_main(run(spec), log)


if __name__ == "__main__":
    sys.exit(main())
