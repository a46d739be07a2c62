"""`python bench/run.py`: sshreg against OpenSSH sshd + distribution, side by side.

For each storage (filesystem, S3 on a local SeaweedFS) and each run, both stacks are
started fresh, measured through an `ssh -N -L` tunnel in turn (sshreg, reference,
sshreg, reference, ...), stopped, and their storage wiped. Medians and ratios are printed
as a table and written to a JSON file (and to bench/README.md with --write-readme).
The pull-through cases (`mirror_cold_pull`, `mirror_warm_pull`, `mirror_normal_pull`) pull
from one upstream registry started once for the whole bench run (bench/mirror.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.seaweedfs import SeaweedFS

from . import report
from .cases import CASES, Metrics, RunContext, Sizes
from .image import build_oci_image
from .mirror import MIRROR_CASES, Upstream
from .stacks import Knobs, ReferenceStack, SshregStack, Stack, Storage, open_tunnel

BENCH_DIR = Path(__file__).resolve().parent
SKOPEO_CASES = ("skopeo_push", "skopeo_pull")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one run: the CI smoke test (timings meaningless)")
    parser.add_argument("--runs", type=int, help="runs per stack (default 3; 1 with --quick)")
    parser.add_argument("--big-runs", type=int,
                        help="runs of the big-layer case per stack (default: --runs)")
    parser.add_argument("--storage", choices=["fs", "s3", "both"], default="both")
    parser.add_argument("--stacks", choices=["both", "sshreg", "reference"], default="both",
                        help="measure only one stack (experiments; no ratios then)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated subset of: {', '.join(CASES)}")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest.json")
    parser.add_argument("--write-readme", action="store_true",
                        help="replace the results section of bench/README.md")
    parser.add_argument("--workdir", type=Path, help="where servers keep their data "
                        "(default: a new folder in the system temp dir)")
    parser.add_argument("--client-dir", type=Path, help="where skopeo's image and pulls go "
                        "(default: /dev/shm when present, to keep client disk I/O out)")
    knobs = parser.add_argument_group("experiments (the defaults are what users get)")
    knobs.add_argument("--cipher", help="force the ssh client's cipher (ssh -c) for both stacks")
    knobs.add_argument("--sshreg-config", type=Path, help="TOML file for sshreg serve --config")
    knobs.add_argument("--sshreg-uvloop", action="store_true", help="run sshreg on uvloop")
    knobs.add_argument("--sshreg-env", action="append", default=[], metavar="NAME=VALUE",
                       help="extra environment for sshreg (e.g. MALLOC_ARENA_MAX=2)")
    knobs.add_argument("--sshreg-workers", type=int, metavar="N",
                       help="sshreg serve --workers N (default: one per CPU)")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.sshreg_env):
        parser.error("--sshreg-env takes NAME=VALUE")
    args.knobs = Knobs(args.cipher, args.sshreg_config and args.sshreg_config.resolve(),
                       args.sshreg_uvloop, tuple(args.sshreg_env), args.sshreg_workers)
    args.runs = args.runs or (1 if args.quick else 3)
    args.big_runs = args.runs if args.big_runs is None else args.big_runs
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    return args


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _summary(metrics: Metrics) -> str:
    if "error" in metrics:
        return f"ERROR {metrics['error']}"
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _make_stack(name: str, directory: Path, storage: Storage, knobs: Knobs,
                mirror_upstream: str | None = None) -> Stack:
    cls = SshregStack if name == "sshreg" else ReferenceStack
    return cls(directory, storage, knobs, mirror_upstream)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, client_dir: Path,
                 upstream: Upstream | None = None) -> None:
        self.args = args
        self.upstream = upstream  # for the pull-through cases (set by main)
        self.sizes = Sizes.quick() if args.quick else Sizes.full()
        self.workdir = workdir
        self.client_dir = client_dir
        self.ciphers: dict[str, dict[str, str]] = {}
        self.troubled = False  # something failed in the current stack: keep its logs
        self.stacks = report.STACKS if args.stacks == "both" else (args.stacks,)

    def storage_for(self, kind: str, directory: Path, seaweed: SeaweedFS | None, name: str,
                    run: int) -> Storage:
        if kind == "s3":
            bucket = f"bench-{name}-{run}-{secrets.token_hex(3)}"
            return Storage("s3", s3=seaweed, bucket=bucket)
        return Storage("fs", path=directory / "storage")

    def cases_for(self, run: int) -> list[str]:
        return [c for c in self.args.cases if c != "big_push" or run < self.args.big_runs]

    def run_stack(self, kind: str, name: str, run: int, seaweed: SeaweedFS | None,
                  state: dict[str, Any]) -> dict[str, Metrics]:
        directory = self.workdir / f"{kind}-{name}-{run}"
        directory.mkdir(parents=True)
        storage = self.storage_for(kind, directory, seaweed, name, run)
        results: dict[str, Metrics] = {}
        self.troubled = False
        try:
            storage.prepare()
            stack = _make_stack(name, directory, storage, self.args.knobs,
                                self._mirror_upstream(run))
            try:
                stack.start()
                self._run_cases(kind, stack, run, directory, state, results)
            finally:
                stack.stop()
        except Exception as exc:
            self.troubled = True
            progress(f"{kind} {name} run {run + 1}: stack failed: {exc}")
            for case in self.cases_for(run):
                results.setdefault(case, {"error": f"stack: {type(exc).__name__}: {exc}"[:800]})
        finally:
            if self.troubled:
                self.keep_logs(directory)
            storage.cleanup()
            shutil.rmtree(directory, ignore_errors=True)
        return results

    def _mirror_upstream(self, run: int) -> str | None:
        """The upstream URL when this run has a pull-through case (stacks stay as they are
        for the other cases)."""
        if self.upstream is None or self.upstream.image is None:
            return None
        return self.upstream.image.url if set(MIRROR_CASES) & set(self.cases_for(run)) else None

    def keep_logs(self, directory: Path) -> None:
        """Copy the server and tunnel logs of a stack that had trouble next to the results."""
        target = self.args.out.parent / "logs" / directory.name
        target.mkdir(parents=True, exist_ok=True)
        for log in directory.rglob("*.log"):
            shutil.copy(log, target / log.name)
        progress(f"  logs kept in {target}")

    def _run_cases(self, kind: str, stack: Stack, run: int, directory: Path,
                   state: dict[str, Any], results: dict[str, Metrics]) -> None:
        tunnel = open_tunnel(stack, directory)
        try:
            self.ciphers.setdefault(kind, {})[stack.name] = tunnel.cipher()
            ctx = RunContext(stack, tunnel, self.client_dir, directory, self.sizes, run,
                             dict(state))
            for case in self.cases_for(run):
                try:
                    results[case] = CASES[case](ctx)
                except Exception as exc:
                    results[case] = {"error": f"{type(exc).__name__}: {exc}"[:800]}
                progress(f"{kind} run {run + 1} {stack.name} {case}: {_summary(results[case])}")
                for note in ctx.notes:
                    progress(f"  note: {note}")
                self.troubled |= bool(ctx.notes) or "error" in results[case]
                ctx.notes.clear()
        finally:
            tunnel.close()

    def run_storage(self, kind: str) -> dict[str, list[dict[str, Metrics]]]:
        runs: dict[str, list[dict[str, Metrics]]] = {s: [] for s in report.STACKS}
        with self._seaweed(kind) as seaweed:
            for run in range(self.args.runs):
                with self._image(run) as state:
                    if self.upstream is not None:
                        state["upstream"] = self.upstream
                    for name in self.stacks:  # alternating: sshreg, reference, sshreg, ...
                        runs[name].append(self.run_stack(kind, name, run, seaweed, state))
        return runs

    @contextlib.contextmanager
    def _seaweed(self, kind: str) -> Iterator[SeaweedFS | None]:
        if kind != "s3":
            yield None
            return
        progress("starting SeaweedFS")
        seaweed = SeaweedFS(self.workdir / "seaweedfs", bucket="bench-ready").start()
        try:
            yield seaweed
        finally:
            seaweed.stop()
            shutil.rmtree(self.workdir / "seaweedfs", ignore_errors=True)

    @contextlib.contextmanager
    def _image(self, run: int) -> Iterator[dict[str, Any]]:
        """The skopeo image of this run (shared by both stacks), removed afterwards."""
        if not set(SKOPEO_CASES) & set(self.args.cases):
            yield {}
            return
        directory = self.client_dir / f"image-{run}"
        try:
            progress(f"building a {self.sizes.image >> 20} MiB OCI image for run {run + 1}")
            yield {"image": build_oci_image(directory, self.sizes.image)}
        finally:
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def _upstream(args: argparse.Namespace, sizes: Sizes, workdir: Path,
              client_dir: Path) -> Iterator[Upstream | None]:
    """The upstream of the pull-through cases, if any is selected: started once, with its
    image pushed, and stopped when the bench ends."""
    if not set(MIRROR_CASES) & set(args.cases):
        yield None
        return
    progress(f"starting the upstream registry with a {sizes.mirror >> 20} MiB image in "
             f"{sizes.mirror_layers} layers")
    with Upstream(workdir / "upstream", client_dir, sizes.mirror, sizes.mirror_layers) as up:
        yield up


def _client_dir(args: argparse.Namespace) -> Path:
    base = args.client_dir
    if base is None:
        shm = Path("/dev/shm")
        free = shutil.disk_usage(shm).free if shm.is_dir() else 0
        base = shm if free > 3 * (1 << 30) else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix="sshreg-bench-client-", dir=base))


def _raise_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _raise_on_sigterm()
    kinds = ["fs", "s3"] if args.storage == "both" else [args.storage]
    machine = report.machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="sshreg-bench-", dir=args.workdir))
    client_dir = _client_dir(args)
    bench = Bench(args, workdir, client_dir)
    runs: dict[str, Any] = {}
    try:
        with _upstream(args, bench.sizes, workdir, client_dir) as bench.upstream:
            for kind in kinds:
                runs[kind] = bench.run_storage(kind)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(client_dir, ignore_errors=True)
    machine["load_after"] = report._load()
    all_medians = {kind: report.medians(r) for kind, r in runs.items()}
    result = {
        "machine": machine,
        "config": {"quick": args.quick, "runs": args.runs, "big_runs": args.big_runs,
                   "knobs": args.knobs.describe(), "stacks": args.stacks,
                   "cases": args.cases, "sizes": vars(bench.sizes)},
        "ciphers": bench.ciphers,
        "runs": runs,
        "medians": all_medians,
        "targets": report.check_targets(all_medians),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(report.markdown(result))
    if args.write_readme:
        report.write_readme(BENCH_DIR / "README.md", result)
    return 1 if report.errors_list(result) else 0
