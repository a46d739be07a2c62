"""The S3 / Cloudflare R2 backend, on boto3 (design.md section 4).

`settings` says where and how to reach the bucket, `client` runs boto3 in a bounded thread
pool with its errors in storage terms and R2's write backoff, `driver` is the `Driver`, and
`upload` the multipart writer that keeps R2's rules on part sizes.
"""

from .client import S3Client, S3StorageError
from .driver import S3Driver
from .settings import S3Settings
from .upload import S3Upload, UploadTooLarge

__all__ = ["S3Client", "S3Driver", "S3Settings", "S3StorageError", "S3Upload", "UploadTooLarge"]
