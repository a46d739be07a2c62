"""The report of a garbage collection as scripts get it (`sshreg gc --json`, `ssh reg.host gc
--json`, and the audit log)."""

from __future__ import annotations

import json

from sshreg.management.gc import GcReport


def test_the_json_report_has_every_count_and_the_seconds_to_the_millisecond():
    report = GcReport(dry_run=False, tags=["app:old"], manifests=["app@sha256:" + "a" * 64],
                      links=3, blobs=2, blob_bytes=5000, orphans=1, orphan_bytes=700, spared=4,
                      seconds=12.34567)
    assert json.loads(json.dumps(report.to_dict())) == {
        "dry_run": False, "tags": ["app:old"], "manifests": ["app@sha256:" + "a" * 64],
        "links": 3, "blobs": 2, "orphans": 1, "bytes_reclaimed": 5700, "spared": 4,
        "seconds": 12.346}


def test_a_dry_run_report_says_so():
    assert GcReport(dry_run=True).to_dict()["dry_run"] is True
