"""Several processes serving one SSH port: a supervisor and its workers.

`[server] workers = N` (N > 1) makes `sshreg serve` a supervisor (`supervisor.py`). It binds
the SSH port once per worker with `SO_REUSEPORT` and starts N worker processes
(`worker.py`), each a whole single-process sshreg (SSH gateway, registry, storage) that
accepts on the sockets it inherited. The kernel spreads new connections evenly over the
workers; a connection with all its channels (so every upload session started through it)
stays in the worker that accepted it.

Why sockets bound by the supervisor, one set per worker:
- One socket shared by every worker lets whichever worker wakes first take the connection:
  of 50 logins at once, one worker took 38 to 40 (measured here). `SO_REUSEPORT` spreads
  them by a hash of the client's address and port.
- The supervisor keeps each worker's sockets open while that worker is replaced, so the
  connections the kernel hands to it meanwhile wait in its queue rather than being reset,
  as they would be if the dying worker had bound its own.
- The supervisor creates the host key before any worker exists: nothing races on the first
  start, and a port that cannot be bound fails once, with one message.

The supervisor also does what one process must do for all: it tells systemd `READY=1` once
every worker listens, forwards SIGHUP and SIGTERM, replaces a worker that dies, and serves
/metrics and /health as the sum over the workers (each worker answers on a private Unix
socket). The hourly sweep of abandoned uploads runs in worker 0 only. Nothing authoritative
lives in one worker's memory: storage is shared by the rules that already let several
gateways share a bucket.
"""
