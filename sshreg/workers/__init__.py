"""Several processes serving one SSH port: a supervisor and its workers.

`[server] workers = N` (N > 1) makes `sshreg serve` a supervisor (`supervisor.py`). It binds
the SSH port once and starts N worker processes (`worker.py`), each a whole single-process
sshreg (SSH gateway, registry, storage) that accepts on the inherited sockets; the kernel
gives each new connection to one worker, and the connection with all its channels (so every
upload session started through it) stays there.

Why one bound socket passed down rather than `SO_REUSEPORT` with N binds: the supervisor
creates the host key before any worker exists (nothing races on first start), a port that
cannot be bound fails once with one message, and a worker that dies takes only its own
connections: with `SO_REUSEPORT` the kernel drops the connections still queued on a dead
socket's accept backlog, with one shared socket another worker accepts them.

The supervisor also does what one process must do for all: it tells systemd `READY=1` once
every worker listens, forwards SIGHUP and SIGTERM, replaces a worker that dies, and serves
/metrics and /health as the sum over the workers (each worker answers on a private Unix
socket). The hourly sweep of abandoned uploads runs in worker 0 only. Nothing authoritative
lives in one worker's memory: storage is shared by the rules that already let several
gateways share a bucket.
"""
