"""/metrics and /health of a supervisor: the sum over its workers, each asked on its private
Unix socket at every request (so what is shown is never older than the request)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from ..metrics import Metrics
from ..settings import ConfigError, parse_address

log = logging.getLogger("sshreg.supervisor")

QUERY_TIMEOUT = 5.0  # for a worker's /metrics.json and /health


class Worker(Protocol):
    index: int
    metrics_socket: str  # where it answers /metrics.json and /health


class Workers(Protocol):
    """What the relay needs of a supervisor."""

    count: int  # workers it runs
    restarts: int  # workers it replaced

    def accepting(self) -> list[Worker]: ...


class MetricsRelay:
    def __init__(self, supervisor: Workers) -> None:
        self.supervisor = supervisor
        self._runner: web.AppRunner | None = None

    async def start(self, listen: str) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/health", self._serve_health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = parse_address(listen, "metrics.listen")
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen} for metrics: "
                              f"{exc.strerror or exc}") from None
        bound = self._runner.addresses[0]
        log.info("metrics on http://%(host)s:%(port)d/metrics", {"host": bound[0], "port": bound[1]})

    async def _ask(self, worker: Worker, path: str) -> tuple[int, Any]:
        """A worker's answer to GET `path` on its private socket: (status, JSON)."""
        connector = aiohttp.UnixConnector(path=worker.metrics_socket)
        timeout = aiohttp.ClientTimeout(total=QUERY_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
                session.get(f"http://localhost{path}") as answer:
            return answer.status, await answer.json()

    async def _ask_all(self, path: str) -> list[tuple[Worker, int, Any]]:
        """Every accepting worker's answer; a worker that does not answer gives (0, error)."""
        workers = self.supervisor.accepting()
        answers = await asyncio.gather(*(self._ask(w, path) for w in workers),
                                       return_exceptions=True)
        return [(w, 0, str(a) or type(a).__name__) if isinstance(a, BaseException)
                else (w, *a) for w, a in zip(workers, answers, strict=True)]

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        total = Metrics()
        answered = 0
        for worker, status, body in await self._ask_all("/metrics.json"):
            if status == 200:
                total.merge(body)
                answered += 1
            else:
                log.warning("worker %(worker)d gave no metrics: %(error)s",
                            {"worker": worker.index, "error": body})
        total.set("sshreg_workers", answered)
        total.inc("sshreg_worker_restarts_total", self.supervisor.restarts)
        return web.Response(text=total.render(), content_type="text/plain", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def _serve_health(self, request: web.Request) -> web.Response:
        """200 when every worker is up and its storage answers; 503 otherwise, saying why."""
        answers = await self._ask_all("/health")
        failed = [(w, body) for w, status, body in answers if status != 200]
        if failed or len(answers) < self.supervisor.count:
            reasons = {f"worker {w.index}": body for w, body in failed}
            return web.json_response({"status": "unhealthy", "workers": len(answers) - len(failed),
                                      **reasons}, status=503)
        return web.json_response({
            "status": "ok", "storage": answers[0][2]["storage"], "workers": len(answers),
            "connections": sum(body["connections"] for _, _, body in answers),
            "uploads": sum(body["uploads"] for _, _, body in answers)})

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
