"""What the supervisor hands a worker, apart from the worker so that the supervisor can
name it without loading the service."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config


@dataclass(frozen=True)
class WorkerSpec:
    """What the supervisor tells a worker."""

    index: int  # 0..N-1; a replacement takes the number of the worker it replaces
    config: Config
    listener_fds: tuple[int, ...]  # the SSH port's listening sockets, inherited
    control_fd: int  # the write end of the pipe the supervisor reads reports from
    metrics_socket: str  # where this worker serves /metrics.json and /health to the supervisor
