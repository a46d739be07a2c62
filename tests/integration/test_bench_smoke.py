"""The benchmark keeps working: `python bench/run.py --quick` end to end (no timing asserted).

It starts sshreg, OpenSSH sshd + distribution and SeaweedFS itself on loopback (and an
upstream distribution for the pull-through cases), runs every case with tiny sizes on both
storages, and must produce a number for every case and both stacks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NEEDED = ("ssh", "ssh-keygen", "/usr/sbin/sshd", "docker-registry", "skopeo", "weed")
sys.path.insert(0, str(REPO))

from bench.cases import CASES  # noqa: E402
from bench.report import HEADLINE, STACKS  # noqa: E402

pytestmark = pytest.mark.integration


def test_quick_bench_reports_every_case_for_both_stacks(tmp_path: Path) -> None:
    missing = [tool for tool in NEEDED if shutil.which(tool) is None]
    assert not missing, f"install {', '.join(missing)} (.ci/run does)"
    out = tmp_path / "quick.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick",
                           "--out", str(out), "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    result = json.loads(out.read_text())
    assert set(result["medians"]) == {"fs", "s3"}
    for storage, cases in result["medians"].items():
        for case in CASES:
            for metric in HEADLINE[case]:
                row = cases[case][metric]
                for stack in STACKS:
                    assert isinstance(row.get(stack), int | float), (storage, case, metric, row)
    assert all(t["value"] is not None for t in result["targets"])
    blobs = result["config"]["sizes"]["mirror_layers"] + 1  # and the config
    for storage, cases in result["medians"].items():
        # through each stack's cache: first cold (the upstream sends every blob; distribution's
        # proxy fetches each twice, the second time to store it, which may end later), then
        # warm (sshreg's upstream sends none)
        cold = cases["mirror_cold_pull"]["upstream_blob_gets"]
        warm = cases["mirror_warm_pull"]["upstream_blob_gets"]
        assert cold["sshreg"] == blobs and cold["reference"] >= blobs, (storage, cold)
        assert warm["sshreg"] == 0, (storage, warm)
    assert "sshreg/ref" in proc.stdout  # the table was printed
