"""Where sshreg's time goes: py-spy attached to `sshreg serve` during raw push and pull.

    python bench/profile.py [--size-mib 1024] [--storage fs|s3] [--native] [--gil] [--mirror]

Starts sshreg (and SeaweedFS for s3) on loopback, opens an `ssh -N -L` tunnel, and for each
of the raw cases (PUT, PATCH, GET) attaches `py-spy record --pid` for exactly that
transfer, then prints the top functions by self time (share of all samples), the share of
each thread, and the share by package. Raw stacks are kept in --out-dir for flame graphs.
With `--mirror`, the cases are a cold and a warm pull through the pull-through cache of an
image of --size-mib in --mirror-layers layers on a local upstream (bench/mirror.py).
py-spy itself needs CPU: on 2 cores the profiled throughput is lower than the bench's.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cases import RunContext, Sizes, mirror_cold_pull, mirror_warm_pull, raw_get, raw_patch, raw_put
from bench.mirror import Upstream
from bench.stacks import Knobs, SshregStack, Storage, open_tunnel
from tests.support.processes import wait_until
from tests.support.seaweedfs import SeaweedFS

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
CASES: dict[str, Callable[[RunContext], dict[str, float]]] = {
    "raw_put": raw_put, "raw_patch": raw_patch, "raw_get": raw_get}
MIRROR_CASES: dict[str, Callable[[RunContext], dict[str, float]]] = {
    "mirror_cold_pull": mirror_cold_pull, "mirror_warm_pull": mirror_warm_pull}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/profile.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--storage", choices=["fs", "s3"], default="fs")
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--mirror", action="store_true",
                        help="profile a cold and a warm pull through the pull-through cache")
    parser.add_argument("--mirror-layers", type=int, default=4)
    parser.add_argument("--out-dir", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "profile")
    return parser.parse_args()


# -- reading py-spy's raw (collapsed) stacks --------------------------------------------


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def frame_name(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (file.py)`; native frames stay as they are."""
    match = FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    short = "/".join(Path(file).parts[-2:]) if file else "?"
    return f"{match['func']} ({short})"


IDLE = ("select (selectors.py)", "epoll_wait", "_worker (futures/thread.py)",
        "wait (threading.py)")
THREAD = re.compile(r"^thread \(\d+\): (?P<name>.+?)(?:_\d+)?$")


def thread_name(frames: list[str]) -> str:
    """`thread (123): sshreg-hash_2` -> `sshreg-hash` (the pool, not the worker)."""
    for frame in frames:
        match = THREAD.match(frame)
        if match:
            return match["name"]
    return "?"


def is_idle(leaf: str) -> bool:
    return any(name in leaf for name in IDLE)


def _top(counter: collections.Counter[str], top: int, total: int, grand: int) -> list[str]:
    return [f"  {100 * c / total:5.1f}% ({100 * c / grand:4.1f}% of all)  {name}"
            for name, c in counter.most_common(top)]


def summarize(stacks: list[tuple[list[str], int]], top: int) -> str:
    """Self time per function, overall and per thread pool; idle waits set apart."""
    overall: collections.Counter[str] = collections.Counter()
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    idle: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        code = [f for f in frames if not f.startswith(("process ", "thread "))]
        leaf = frame_name(code[-1]) if code else "?"
        thread = thread_name(frames)
        if is_idle(leaf):
            idle[thread] += count
            continue
        overall[leaf] += count
        per_thread[thread][leaf] += count
    busy = sum(overall.values()) or 1
    grand = busy + sum(idle.values())
    lines = [f"{grand} samples, {busy} busy ({100 * busy / grand:.0f}%); idle waits by thread: "
             + ", ".join(f"{t} {c}" for t, c in idle.most_common()),
             "", "top functions by self time (% of busy samples):",
             *_top(overall, top, busy, busy)]
    for thread, counter in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(counter.values())
        lines += ["", f"thread {thread}: {100 * total / busy:.1f}% of busy samples",
                  *_top(counter, 12, total, busy)]
    return "\n".join(lines)


# -- running -------------------------------------------------------------------------


@contextlib.contextmanager
def pyspy(pid: int, out: Path, args: argparse.Namespace) -> Iterator[None]:
    """`py-spy record` attached to `pid` for the duration of the block."""
    command = ["py-spy", "record", "--pid", str(pid), "--rate", str(args.rate), "--format",
               "raw", "--output", str(out), "--threads"]
    # --native needs the process stopped while its stack is read; otherwise do not stop it.
    command += ["--native"] if args.native else ["--nonblocking"]
    command += ["--gil"] if args.gil else []
    log = out.with_suffix(".log")
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_until(lambda: "Sampling process" in log.read_text(errors="replace")
                   or proc.poll() is not None, 30, "py-spy to attach")
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def profile_cases(ctx: RunContext, args: argparse.Namespace) -> None:
    for name, case in (MIRROR_CASES if args.mirror else CASES).items():
        out = args.out_dir / f"{args.storage}-{name}.txt"
        with pyspy(ctx.stack.server_pids()[0], out, args):
            metrics = case(ctx)
        print(f"\n=== {name}: {metrics['mb_s']:.0f} MB/s under py-spy, "
              f"{metrics['cpu_per_gib']:.2f} server CPU-s/GiB ({out})")
        print(summarize(read_stacks(out), args.top), flush=True)


def main() -> int:
    args = parse_args()
    if shutil.which("py-spy") is None:
        print("py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="sshreg-profile-"))
    sizes = Sizes(raw=args.size_mib << 20, image=0, big=0, small_image=0, heads=0, tunnels=0,
                  mirror=args.size_mib << 20, mirror_layers=args.mirror_layers)
    seaweed = (SeaweedFS(workdir / "seaweedfs", bucket="bench-ready").start()
               if args.storage == "s3" else None)
    storage = (Storage("s3", s3=seaweed, bucket="profile") if seaweed
               else Storage("fs", path=workdir / "storage"))
    try:
        with contextlib.ExitStack() as cleanup:
            state: dict[str, object] = {}
            if args.mirror:
                state["upstream"] = cleanup.enter_context(
                    Upstream(workdir / "upstream", workdir, sizes.mirror, sizes.mirror_layers))
            upstream = state.get("upstream")
            storage.prepare()
            stack = SshregStack(workdir, storage, Knobs(sshreg_workers=1),  # py-spy: one pid
                                upstream.image.url if isinstance(upstream, Upstream)
                                and upstream.image else None)
            stack.start()
            cleanup.callback(stack.stop)
            tunnel = open_tunnel(stack, workdir)
            cleanup.callback(tunnel.close)
            print(f"cipher: {tunnel.cipher()}")
            profile_cases(RunContext(stack, tunnel, workdir, workdir, sizes, 0, state), args)
    finally:
        if seaweed is not None:
            seaweed.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
