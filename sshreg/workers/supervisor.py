"""The supervisor of `[server] workers = N` (the package docstring says why it is built so).

It owns no connection: it binds the SSH port, makes the host key, starts and replaces the
workers, passes signals on, and serves /metrics and /health for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..ready import log_ready, notify_systemd
from ..settings import EXIT_CONFIG, ConfigError
from ..ssh.hostkey import HOST_KEY_NAME, HostKeyError, load_or_create_host_key
from ..ssh.listeners import bind_worker_listeners
from .spec import WorkerSpec

log = logging.getLogger("sshreg.supervisor")

START_TIMEOUT = 60.0  # a worker must accept connections this soon after it was started
STOP_MARGIN = 10.0  # past shutdown_grace, before a worker that has not stopped is killed
SHORT_LIFE = 10.0  # a worker that dies younger than this is restarted after a back-off
MAX_BACKOFF = 30.0

@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process
    metrics_socket: str
    started: float = field(default_factory=time.monotonic)
    ready: asyncio.Future[dict[str, Any]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def pid(self) -> int:
        return self.process.pid


class WorkerFailed(Exception):
    def __init__(self, worker: Worker, code: int | None) -> None:
        super().__init__(f"worker {worker.index} exited with {exit_text(code)} before it "
                         "accepted connections")
        self.code = code


def exit_text(code: int | None) -> str:
    if code is None:
        return "no status"
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.count = config.server.workers
        self.workers: dict[int, Worker] = {}
        self.restarts = 0  # workers replaced since the start
        self.stopping = False
        self.serving = False  # every worker of the first start accepted connections
        self._exits: asyncio.Queue[Worker] = asyncio.Queue()
        self._listeners: list[list[socket.socket]] = []  # one set per worker number
        self._rundir = ""
        self._relay: Any = None  # relay.MetricsRelay, when [metrics] listen is set
        self._watchers: set[asyncio.Task[None]] = set()

    def accepting(self) -> list[Worker]:
        """The workers that said they accept connections and still run."""
        return [w for w in self.workers.values()
                if w.ready.done() and w.process.returncode is None]

    # -- lifetime ----------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit status of `sshreg serve`."""
        if not (self.config.server.keys / HOST_KEY_NAME).exists():
            try:  # once, before any worker; the workers check and load it
                load_or_create_host_key(self.config.server.keys)
            except (HostKeyError, OSError) as exc:
                raise ConfigError(f"host key: {exc}") from None
        try:
            self._listeners = bind_worker_listeners(
                self.config.server.host, self.config.server.port, self.count)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.config.server.listen}: "
                              f"{exc.strerror or exc}") from None
        self._rundir = tempfile.mkdtemp(prefix="sshreg-workers-",
                                        dir=os.environ.get("RUNTIME_DIRECTORY") or None)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._signal_all, signal.SIGHUP)
        try:
            if self.config.metrics.listen:  # aiohttp is loaded only then
                from .relay import MetricsRelay

                self._relay = MetricsRelay(self)
                await self._relay.start(self.config.metrics.listen)
            try:
                fields = await self._start_all()
            except WorkerFailed as exc:
                log.error("%(error)s", {"error": str(exc)})
                return EXIT_CONFIG if exc.code == EXIT_CONFIG else 1
            self.serving = True
            for worker in self.workers.values():  # died between its report and the others'
                if worker.process.returncode is not None:
                    self._exits.put_nowait(worker)
            log_ready(fields, self.count)
            notify_systemd("READY=1")
            await self._keep_running(stop)
            notify_systemd("STOPPING=1")
            return 0
        finally:
            self.stopping = True
            await self._stop_all()
            if self._relay is not None:
                await self._relay.close()
            for listener in (s for group in self._listeners for s in group):
                listener.close()
            shutil.rmtree(self._rundir, ignore_errors=True)

    async def _start_all(self) -> dict[str, Any]:
        """Start every worker; worker 0's report once all of them accept connections."""
        for index in range(self.count):
            await self._spawn(index)
        ready = [asyncio.ensure_future(self._until_ready(w)) for w in self.workers.values()]
        try:
            reports = await asyncio.gather(*ready)
        finally:
            for task in ready:
                task.cancel()
        return reports[0]

    async def _until_ready(self, worker: Worker) -> dict[str, Any]:
        exited = asyncio.ensure_future(worker.process.wait())
        try:
            done, _ = await asyncio.wait({worker.ready, exited}, timeout=START_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if worker.ready in done:
            return worker.ready.result()
        raise WorkerFailed(worker, worker.process.returncode)

    async def _keep_running(self, stop: asyncio.Event) -> None:
        """Until `stop`: replace each worker that exits (after a back-off if it keeps dying
        young)."""
        backoff = 1.0
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while True:
                exited = asyncio.ensure_future(self._exits.get())
                await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
                if stopped.done():
                    exited.cancel()
                    return
                worker = exited.result()
                lived = time.monotonic() - worker.started
                self.restarts += 1
                delay = 0.0 if lived >= SHORT_LIFE else backoff
                backoff = 1.0 if lived >= SHORT_LIFE else min(MAX_BACKOFF, backoff * 2)
                log.warning("worker %(worker)d (pid %(pid)d) exited with %(status)s; "
                            "starting a new one in %(seconds).0fs",
                            {"worker": worker.index, "pid": worker.pid,
                             "status": exit_text(worker.process.returncode), "seconds": delay})
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stopped), delay)
                if stopped.done():
                    return
                await self._spawn(worker.index)
        finally:
            stopped.cancel()

    async def _stop_all(self) -> None:
        """SIGTERM to every worker; each has shutdown_grace to finish its requests."""
        self._signal_all(signal.SIGTERM)
        deadline = self.config.server.shutdown_grace + STOP_MARGIN
        for worker in list(self.workers.values()):
            try:
                await asyncio.wait_for(worker.process.wait(), deadline)
            except TimeoutError:
                log.warning("worker %(worker)d did not stop; killing it", {"worker": worker.index})
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
        for task in list(self._watchers):
            task.cancel()

    def _signal_all(self, sig: int) -> None:
        for worker in self.workers.values():
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    # -- one worker ----------------------------------------------------------------------

    async def _spawn(self, index: int) -> Worker:
        report_read, report_write = os.pipe()
        fds = tuple(listener.fileno() for listener in self._listeners[index])
        metrics_socket = os.path.join(self._rundir, f"worker-{index}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(metrics_socket)  # the socket of the worker this one replaces
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sshreg.workers.worker", stdin=asyncio.subprocess.PIPE,
                pass_fds=(*fds, report_write))
        finally:
            os.close(report_write)
        worker = Worker(index, process, metrics_socket)
        self.workers[index] = worker
        assert process.stdin is not None
        spec = WorkerSpec(index, self.config, fds, report_write, metrics_socket)
        process.stdin.write(pickle.dumps(spec))  # stdin stays open: its end tells the worker
        self._watch(self._read_reports(worker, report_read))
        self._watch(self._wait_exit(worker))
        return worker

    def _watch(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _read_reports(self, worker: Worker, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), pipe)
            try:
                while line := await reader.readline():
                    state, _, detail = line.decode().strip().partition(" ")
                    if state == "READY=1" and not worker.ready.done():
                        worker.ready.set_result(json.loads(detail or "{}"))
            finally:
                transport.close()

    async def _wait_exit(self, worker: Worker) -> None:
        await worker.process.wait()
        if self.serving and not self.stopping and self.workers.get(worker.index) is worker:
            self._exits.put_nowait(worker)

async def supervise(config: Config) -> int:
    return await Supervisor(config).run()
