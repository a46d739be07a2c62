"""The OCI Distribution error codes as data, and the one error type handlers raise.

Every refusal a handler makes is a `RegistryError`; the error middleware turns it
into the spec's JSON envelope `{"errors": [{"code", "message", "detail"}]}`.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any


class Code(Enum):
    """Spec error codes with their HTTP status and default message."""

    BLOB_UNKNOWN = (404, "blob unknown to registry")
    BLOB_UPLOAD_INVALID = (400, "blob upload invalid")
    BLOB_UPLOAD_UNKNOWN = (404, "blob upload unknown to registry")
    DIGEST_INVALID = (400, "provided digest did not match uploaded content")
    MANIFEST_BLOB_UNKNOWN = (400, "manifest references a manifest or blob unknown to registry")
    MANIFEST_INVALID = (400, "manifest invalid")
    MANIFEST_UNKNOWN = (404, "manifest unknown to registry")
    NAME_INVALID = (400, "invalid repository name")
    NAME_UNKNOWN = (404, "repository name not known to registry")
    SIZE_INVALID = (400, "provided length did not match content length")
    UNAUTHORIZED = (401, "authentication required")
    DENIED = (403, "requested access to the resource is denied")
    UNSUPPORTED = (405, "the operation is unsupported")
    TOOMANYREQUESTS = (429, "too many requests")
    # Not in the spec's table, but the envelope is the same: storage trouble.
    UNAVAILABLE = (503, "storage is unavailable, retry later")

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def message(self) -> str:
        return self.value[1]


LIMIT_RETRY_AFTER = "10"  # seconds a client refused by a limit (429) is told to wait
INTERNAL_ERROR = json.dumps({"errors": [{"code": "UNKNOWN", "message": "internal error",
                                          "detail": None}]}).encode()


class RegistryError(Exception):
    """A refusal with a spec code; `status` and `headers` override the code's defaults."""

    def __init__(
        self,
        code: Code,
        detail: Any = None,
        *,
        status: int | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message or code.message}" + (f" ({detail})" if detail else ""))
        self.code = code
        self.detail = detail
        self.status = status or code.status
        self.message = message or code.message
        self.headers = headers or {}

    def body(self) -> bytes:
        error = {"code": self.code.name, "message": self.message, "detail": self.detail}
        return json.dumps({"errors": [error]}).encode()


def range_not_satisfiable(detail: str, size: int | None = None) -> RegistryError:
    """416 for a blob GET range that lies outside the blob."""
    headers = {"Content-Range": f"bytes */{size}"} if size is not None else {}
    return RegistryError(
        Code.SIZE_INVALID, detail, status=416, message="requested range not satisfiable",
        headers=headers,
    )
