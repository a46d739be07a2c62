"""`sshreg gc` on the host, as the nightly timer runs it."""

from __future__ import annotations

import json
import subprocess
import sys

from sshreg.storage.filesystem import FilesystemDriver
from sshreg.store.registry_store import RegistryStore


async def _leave_orphan(root) -> str:
    store = RegistryStore(FilesystemDriver(root))
    upload = await store.blobs.begin_upload()
    await upload.write(b"bytes a crash left without a record")
    await upload.commit()
    await store.driver.close()
    return upload.key


def _gc(tmp_path, *flags: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.toml"
    config.write_text('[gc]\ngrace = "0s"\nsafety = "0s"\n')
    return subprocess.run([sys.executable, "-m", "sshreg", "gc", "--config", str(config),
                           "--storage", str(tmp_path / "data"), *flags],
                          capture_output=True, text=True, timeout=60)


async def test_sshreg_gc_dry_run_reports_and_a_real_run_removes(tmp_path):
    key = await _leave_orphan(tmp_path / "data")
    dry = _gc(tmp_path, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["orphans"] == 1
    assert (tmp_path / "data" / key).exists()
    real = _gc(tmp_path)
    assert real.returncode == 0, real.stderr
    assert "removed 0 tag(s), 0 manifest(s), 0 blob(s), 1 leftover object(s)" in real.stdout
    assert not (tmp_path / "data" / key).exists()


def test_sshreg_gc_with_a_bad_config_exits_2(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[gc]\ngrace = "soon"\n')
    result = subprocess.run([sys.executable, "-m", "sshreg", "gc", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "grace" in result.stderr
