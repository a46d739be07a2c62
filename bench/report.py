"""Medians, sshreg/reference ratios, the issue's targets, and the tables that show them."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STACKS = ("sshreg", "reference")
README_BEGIN = "<!-- results:begin (written by `python bench/run.py --write-readme`) -->"
README_END = "<!-- results:end -->"

# The metrics shown for each case, in table order.
HEADLINE: dict[str, tuple[str, ...]] = {
    "skopeo_push": ("mb_s", "seconds", "cpu_per_gib"),
    "skopeo_pull": ("mb_s", "seconds", "cpu_per_gib"),
    "raw_put": ("mb_s", "cpu_per_gib", "peak_rss_mib"),
    "raw_patch": ("mb_s", "cpu_per_gib", "peak_rss_mib"),
    "raw_get": ("mb_s", "cpu_per_gib", "peak_rss_mib"),
    "big_push": ("mb_s", "peak_rss_mib", "process_rss_mib", "cpu_per_gib"),
    "head_manifest": ("p50_ms", "p99_ms"),
    "head_blob": ("p50_ms", "p99_ms"),
    "concurrent_pull": ("mb_s", "failures", "tunnel_setup_s"),
    "mirror_cold_pull": ("mb_s", "seconds", "cpu_per_gib", "peak_rss_mib", "process_rss_mib",
                         "upstream_blob_gets"),
    "mirror_warm_pull": ("mb_s", "seconds", "cpu_per_gib", "peak_rss_mib", "process_rss_mib",
                         "upstream_blob_gets"),
    "mirror_normal_pull": ("mb_s", "seconds", "cpu_per_gib", "peak_rss_mib", "process_rss_mib"),
}
UNITS = {"mb_s": "MB/s", "seconds": "s", "cpu_per_gib": "CPU-s/GiB", "peak_rss_mib": "MiB",
         "process_rss_mib": "MiB one process",
         "p50_ms": "ms p50", "p99_ms": "ms p99", "failures": "failures",
         "tunnel_setup_s": "s setup", "upstream_blob_gets": "upstream blob GETs"}


@dataclass(frozen=True)
class Target:
    storage: str  # "fs", "s3" or "*"
    case: str
    metric: str
    kind: str  # "ratio>=", "ratio<=", ">=", "<", "=="
    value: float
    label: str
    # With a baseline case, a "ratio" is sshreg's `case` over sshreg's `baseline` (the same
    # metric, same run) instead of sshreg over the reference.
    baseline: str | None = None


TARGETS = (
    Target("fs", "skopeo_push", "mb_s", "ratio>=", 1.0, "skopeo push, filesystem"),
    Target("fs", "skopeo_pull", "mb_s", "ratio>=", 1.0, "skopeo pull, filesystem"),
    Target("s3", "skopeo_push", "mb_s", "ratio>=", 2.0, "skopeo push, S3"),
    Target("s3", "raw_put", "mb_s", "ratio>=", 2.0, "raw push (PUT), S3"),
    Target("s3", "raw_patch", "mb_s", "ratio>=", 2.0, "raw push (PATCH), S3"),
    Target("s3", "skopeo_pull", "mb_s", "ratio>=", 1.0, "skopeo pull, S3"),
    Target("s3", "raw_get", "mb_s", "ratio>=", 1.0, "raw pull, S3"),
    Target("*", "raw_put", "cpu_per_gib", "ratio<=", 0.8, "server CPU/GiB, push"),
    Target("*", "raw_get", "cpu_per_gib", "ratio<=", 0.8, "server CPU/GiB, pull"),
    Target("fs", "raw_put", "mb_s", ">=", 250, "raw push (PUT) MB/s, filesystem"),
    Target("fs", "raw_patch", "mb_s", ">=", 250, "raw push (PATCH) MB/s, filesystem"),
    Target("fs", "raw_get", "mb_s", ">=", 200, "raw pull MB/s, filesystem"),
    # The bound is the process that takes the push (with workers, the tree adds the
    # supervisor and the idle workers; its sum is shown beside it).
    Target("fs", "big_push", "process_rss_mib", "<", 150, "peak RSS pushing the big layer, fs"),
    Target("s3", "big_push", "process_rss_mib", "<", 300, "peak RSS pushing the big layer, S3"),
    Target("*", "head_manifest", "p50_ms", "ratio<=", 1.2, "manifest HEAD p50"),
    Target("*", "concurrent_pull", "failures", "==", 0, "concurrent pulls: failures"),
    Target("*", "concurrent_pull", "mb_s", "ratio>=", 1.0, "concurrent pulls: MB/s"),
    # The pull-through cache (issue: cold >= 1.0x, warm as fast as a normal pull, RSS bounded
    # as for pushes). "As fast as" allows 10%, the run-to-run spread of a pull here.
    Target("*", "mirror_cold_pull", "mb_s", "ratio>=", 1.0, "cold pull through the cache"),
    Target("*", "mirror_warm_pull", "mb_s", "ratio>=", 0.9,
           "warm pull through the cache / normal pull (sshreg)", baseline="mirror_normal_pull"),
    Target("*", "mirror_warm_pull", "mb_s", "ratio>=", 1.0, "warm pull through the cache"),
    Target("fs", "mirror_cold_pull", "process_rss_mib", "<", 150,
           "peak RSS of a cold pull through the cache, fs"),
    Target("s3", "mirror_cold_pull", "process_rss_mib", "<", 300,
           "peak RSS of a cold pull through the cache, S3"),
)


# -- aggregation -----------------------------------------------------------------------


def medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """{stack: [{case: metrics}]} -> {case: {metric: {sshreg, reference, ratio}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    cases = {case for stack_runs in runs.values() for r in stack_runs for case in r}
    for case in sorted(cases):
        metrics: dict[str, dict[str, float]] = {}
        names = {m for stack_runs in runs.values() for r in stack_runs
                 for m in r.get(case, {}) if m != "error"}
        for metric in sorted(names):
            row: dict[str, float] = {}
            for stack in STACKS:
                values = [r[case][metric] for r in runs.get(stack, ())
                          if isinstance(r.get(case, {}).get(metric), int | float)]
                if values:
                    row[stack] = statistics.median(values)
            if "sshreg" in row and row.get("reference"):
                row["ratio"] = row["sshreg"] / row["reference"]
            metrics[metric] = row
        out[case] = metrics
    return out


def check_targets(all_medians: dict[str, Any]) -> list[dict[str, Any]]:
    results = []
    for target in TARGETS:
        storages = list(all_medians) if target.storage == "*" else [target.storage]
        for storage in storages:
            cases = all_medians.get(storage, {})
            row = cases.get(target.case, {}).get(target.metric)
            if row is None:
                continue
            value = row.get("ratio") if target.kind.startswith("ratio") else row.get("sshreg")
            if target.baseline is not None:
                base = cases.get(target.baseline, {}).get(target.metric, {}).get("sshreg")
                if base is None or row.get("sshreg") is None:
                    continue  # the baseline case was not run
                value = row["sshreg"] / base if base else None
            results.append({"storage": storage, "what": target.label, "case": target.case,
                            "metric": target.metric, "kind": target.kind,
                            "target": target.value, "value": value,
                            "met": _met(target, value)})
    return results


def _met(target: Target, value: float | None) -> bool | None:
    if value is None:
        return None
    op = target.kind.removeprefix("ratio")
    return {">=": value >= target.value, "<=": value <= target.value,
            "<": value < target.value, "==": value == target.value}[op]


# -- rendering -------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value) and abs(value) >= 10:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def results_table(all_medians: dict[str, Any]) -> str:
    lines = ["| storage | case | metric | sshreg | reference | sshreg/ref |",
             "|---|---|---|---:|---:|---:|"]
    for storage, cases in all_medians.items():
        for case, wanted in HEADLINE.items():
            for metric in wanted:
                row = cases.get(case, {}).get(metric)
                if row is None:
                    continue
                ratio = row.get("ratio")
                lines.append(f"| {storage} | {case} | {UNITS[metric]} | {_fmt(row.get('sshreg'))} "
                             f"| {_fmt(row.get('reference'))} "
                             f"| {'-' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    lines = ["| storage | target | wanted | measured | met |", "|---|---|---:|---:|---|"]
    for t in targets:
        wanted = f"{t['kind']} {_fmt(t['target'])}"
        value = "-" if t["value"] is None else (
            f"{t['value']:.2f}x" if t["kind"].startswith("ratio") else _fmt(t["value"]))
        met = {True: "yes", False: "**no**", None: "?"}[t["met"]]
        lines.append(f"| {t['storage']} | {t['what']} | {wanted} | {value} | {met} |")
    return "\n".join(lines)


def errors_list(result: dict[str, Any]) -> list[str]:
    errors = []
    for storage, stacks in result["runs"].items():
        for stack, runs in stacks.items():
            for i, r in enumerate(runs):
                for case, metrics in r.items():
                    if "error" in metrics:
                        errors.append(f"{storage}/{stack}/run {i + 1}/{case}: {metrics['error']}")
    return errors


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    config = result["config"]
    ciphers = ", ".join(f"{s}: sshreg {c.get('sshreg', '?')}, reference {c.get('reference', '?')}"
                        for s, c in result.get("ciphers", {}).items())
    parts = [
        f"Measured {machine['date']} on {machine['nproc']} cores ({machine['cpu']}), "
        f"{machine['kernel']}; load average {machine['load_before']} before, "
        f"{machine['load_after']} after. sshreg at {machine.get('source', '?')}. "
        f"{config['runs']} run(s) per stack, alternating, "
        f"medians{' (quick mode: tiny sizes)' if config['quick'] else ''}. "
        f"Settings: {config.get('knobs', 'defaults')}. "
        f"Negotiated ciphers: {ciphers}. Versions: {machine['versions']}.",
        "",
        results_table(result["medians"]),
        "",
        "Targets of issue 5 and of the pull-through cache (ratios are sshreg / reference, "
        "same run, unless the target names another case):",
        "",
        targets_table(result["targets"]),
    ]
    errors = errors_list(result)
    if errors:
        parts += ["", "Errors:", "", *(f"- {e}" for e in errors)]
    return "\n".join(parts)


def write_readme(path: Path, result: dict[str, Any]) -> None:
    text = path.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"{path} lacks the results markers")
    path.write_text(text[:start + len(README_BEGIN)] + "\n\n" + markdown(result) + "\n\n"
                    + text[end:])


# -- the machine -----------------------------------------------------------------------


def _command_version(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def _package(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _cpu_model() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return platform.processor() or "?"
    return match[1].strip() if match else "?"


def source_state() -> str:
    """The commit measured, and whether sshreg/ had uncommitted changes (a shared tree)."""
    root = Path(__file__).resolve().parent.parent
    commit = _command_version(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = _command_version(["git", "-C", str(root), "status", "--porcelain", "--", "sshreg"])
    return f"{commit}{' + uncommitted changes in sshreg/' if dirty not in ('?', '') else ''}"


def machine_info() -> dict[str, Any]:
    versions = {
        "python": platform.python_version(), "asyncssh": _package("asyncssh"),
        "aiohttp": _package("aiohttp"), "uvloop": _package("uvloop"),
        "openssh": _command_version(["ssh", "-V"]),
        "distribution": _command_version(["docker-registry", "--version"]).split(" ")[-1],
        "skopeo": _command_version(["skopeo", "--version"]).split(" ")[-1],
        "seaweedfs": _command_version(["weed", "version"]).split(" ")[2:3],
    }
    versions["seaweedfs"] = "".join(versions["seaweedfs"]) or "?"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(), "cpu": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "load_before": _load(), "load_after": None, "source": source_state(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
    }


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
