"""Mutation runs and their scores per module (tests/MUTATION.md).

    python -m tests.support.mutation run [MUTMUT ARGS]
    python -m tests.support.mutation [--survivors]

`run` is `mutmut run` with one SeaweedFS for every mutant: mutmut runs a test session per
mutant, and each would otherwise start its own (5 to 10 s, most of a mutant's time in
`storage/s3/upload.py`). It also bounds each test to `MUTANT_TEST_TIMEOUT` seconds
(`$PYTEST_TIMEOUT`, which pytest-timeout prefers to the 600 s of pyproject.toml): mutmut
stops a mutant by the CPU time it uses, so one that makes a test wait forever (a part
slot never released) would otherwise idle for ten minutes. And it shortens the lease tests'
second on the filesystem (`FS_SECOND`) and puts the tests' temporary directories on tmpfs
(`MEMORY_DIR`): tests/MUTATION.md says what each saves.

Without `run`, it reads mutmut's results under `mutants/` and prints, per mutated module,
how many mutants the fast tests killed (a timeout counts as killed: the mutant hung the
code) and the score, killed / checked; with `--survivors`, the name of every mutant that
lived.

It is also the pytest plugin of every mutant's session (`-p tests.support.mutation` in
`[tool.mutmut]`): see `pytest_configure` and `pytest_collection_modifyitems` below.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from tests.support.seaweedfs import SHARED_ENV, TEST_BUCKET

MUTANT_TEST_TIMEOUT = "60"  # the slowest fast test takes 8 s on a quiet box
# A second of the lease tests' waits on the filesystem ($SSHREG_TEST_FS_SECOND, read by
# tests/http/test_gc_while_another_gateway_pushes.py): most mutants of the push path re-run them.
FS_SECOND = "0.25"
# The tests' temporary directories ($TMPDIR): on tmpfs, the fsyncs of the filesystem backend
# cost nothing. On this box's disk, with other work writing, they took half a mutant's time.
MEMORY_DIR = "/dev/shm"

KILLED = {1: "killed", 3: "killed", 24: "timeout", -24: "timeout", 36: "timeout", 152: "timeout",
          255: "timeout"}
SURVIVED = {0: "survived", 5: "no tests", 33: "no tests"}


def outcomes(mutants: Path) -> dict[str, dict[str, str]]:
    """Per module (`sshreg/x.py`), each mutant's outcome; mutants not run are left out."""
    found: dict[str, dict[str, str]] = {}
    for meta in sorted(mutants.glob("sshreg/**/*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        module = str(meta.relative_to(mutants)).removesuffix(".meta")
        found[module] = {name: KILLED.get(code) or SURVIVED.get(code) or f"exit {code}"
                         for name, code in codes.items() if code is not None}
    return found


def table(found: dict[str, dict[str, str]]) -> str:
    rows = ["| module | mutants | killed | timeouts | survived | no tests | score |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    total: Counter[str] = Counter()
    for module, results in found.items():
        counts = Counter(results.values())
        total.update(counts)
        rows.append(_row(f"`{module}`", counts))
    rows.append(_row("**all**", total))
    return "\n".join(rows)


def _row(label: str, counts: Counter[str]) -> str:
    checked = sum(counts.values())
    caught = counts["killed"] + counts["timeout"]
    score = f"{100 * caught / checked:.1f} %" if checked else "-"
    return (f"| {label} | {checked} | {counts['killed']} | {counts['timeout']} | "
            f"{counts['survived']} | {counts['no tests']} | {score} |")


def run_with_shared_s3(mutmut_args: list[str]) -> int:
    """`mutmut run MUTMUT_ARGS` with $SSHREG_TEST_S3 naming one SeaweedFS started here, and
    the tests' temporary directories (the filesystem backend's stores) in memory."""
    workdir = Path(tempfile.mkdtemp(prefix="mutation-s3-"))
    scratch = Path(tempfile.mkdtemp(prefix="mutation-tmp-",
                                    dir=MEMORY_DIR if os.path.isdir(MEMORY_DIR) else None))
    server = subprocess.Popen([sys.executable, "-m", "tests.support.seaweedfs", str(workdir),
                               TEST_BUCKET], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        description = server.stdout.readline()  # ends when it serves, or when it gave up
        if not description:
            raise RuntimeError(f"SeaweedFS did not start (exit {server.wait(30)})")
        env = {"PYTEST_TIMEOUT": MUTANT_TEST_TIMEOUT, "SSHREG_TEST_FS_SECOND": FS_SECOND,
               **os.environ, SHARED_ENV: description.strip(), "TMPDIR": str(scratch)}
        return subprocess.run(["mutmut", "run", *mutmut_args], env=env).returncode
    finally:
        server.terminate()
        server.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    """Every object that exists before the session starts lives until it ends: frozen, the
    garbage collector skips them. mutmut forks each mutant's session from a process that
    collected every test module, and pytest collects five times at the end of a session
    (unraisable exceptions): over that heap, 0.29 s of the 0.41 s a one-test mutant took."""
    gc.freeze()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fastest tests first, by the durations mutmut measured. mutmut runs a mutant's tests
    with -x, so a killed mutant ends at its first failing test; its forkserver passes them in
    set order, which ran a lease test of seconds before the 0.05 s test that fails."""
    from mutmut.state import state

    durations = state().duration_by_test
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


def main(argv: list[str]) -> None:
    if argv[:1] == ["run"]:
        sys.exit(run_with_shared_s3(argv[1:]))
    found = outcomes(Path("mutants"))
    print(table(found))
    if "--survivors" in argv:
        for results in found.values():
            for name, outcome in results.items():
                if outcome not in ("killed", "timeout"):
                    print(f"{outcome}: {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
