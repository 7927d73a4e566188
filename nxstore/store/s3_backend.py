"""Sealed extent groups in an S3-compatible bucket (boto3), behind GroupBackend.

Object `name` is key `<prefix>/<name>` (`<name>` when the prefix is empty). put_once is a
conditional PUT (`If-None-Match: *`): the server refuses it (412 PreconditionFailed, or 409
ConditionalRequestConflict while another conditional PUT of the key is in flight) when the
key exists, so two writers can never overwrite a group. Reads are ranged GETs. S3 PUTs are
atomic: an object is complete or absent, never partial.

boto3 (the `s3` extra) is imported only when a store on S3 is opened: it costs ~0.3 s to
import, and `import nxstore` and the CLI's start stay fast; without it, opening such a
store raises ObjectStoreError saying what to install.
"""

from __future__ import annotations

import configparser
import logging
import os
import threading

from ..errors import AlreadyExists, AuthenticationError, InvalidArgument, NotFound, ObjectStoreError
from .group_backend import BackendConfig, GroupBackend, check_range

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5
_READ_TIMEOUT_S = 60
_ATTEMPTS = 3  # botocore's standard retry mode: attempts per call, with backoff
_EXISTS = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
           "InvalidToken", "ExpiredToken"}  # fmt: skip


def _credentials(config: BackendConfig) -> dict[str, str]:
    """Keyword arguments giving the client its keys: from the credentials file when the
    config names one, else from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and
    AWS_SESSION_TOKEN) as they are now, else {} (botocore's other sources)."""
    if config.credentials_file is None:
        env = {"aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
               "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
               "aws_session_token": os.environ.get("AWS_SESSION_TOKEN")}  # fmt: skip
        if not (env["aws_access_key_id"] and env["aws_secret_access_key"]):
            return {}
        return {k: v for k, v in env.items() if v}
    parser = configparser.ConfigParser()
    try:
        with open(config.credentials_file) as f:
            parser.read_file(f)
        section = parser["default"]
        return {"aws_access_key_id": section["aws_access_key_id"].strip(),
                "aws_secret_access_key": section["aws_secret_access_key"].strip()}  # fmt: skip
    except OSError as exc:
        raise InvalidArgument(f"S3 credentials file {config.credentials_file}: {exc}") from None
    except (KeyError, configparser.Error):
        raise InvalidArgument(
            f"S3 credentials file {config.credentials_file}: expected a [default] section with "
            "aws_access_key_id and aws_secret_access_key") from None  # fmt: skip


_session = None  # boto3.session.Session, one per process: a client from it costs ~10 ms
_session_lock = threading.Lock()  # boto3 sessions are not thread-safe; their clients are


def _boto() -> tuple[object, type, type]:
    """(boto3, botocore ClientError, botocore BotoCoreError), imported now."""
    try:
        import boto3
        import botocore.exceptions
    except ImportError as exc:
        raise ObjectStoreError(f"S3 needs boto3 (pip install 'nxstore[s3]'): {exc}") from None
    return boto3, botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError


def _client(config: BackendConfig) -> object:
    global _session
    boto3, _, _ = _boto()
    from botocore.config import Config

    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()  # type: ignore[attr-defined]
        return _session.client(
            "s3", endpoint_url=config.endpoint, region_name=config.region,
            config=Config(s3={"addressing_style": "path"},
                          retries={"max_attempts": _ATTEMPTS, "mode": "standard"},
                          connect_timeout=_CONNECT_TIMEOUT_S, read_timeout=_READ_TIMEOUT_S),
            **_credentials(config),
        )  # fmt: skip


def _code(exc: Exception) -> str:
    """The S3 error code of a botocore ClientError ("" for anything else)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class S3Backend(GroupBackend):
    """GroupBackend on bucket `config.bucket` under `config.prefix` (see the module
    docstring). Thread-safe (one boto3 client)."""

    def __init__(self, config: BackendConfig) -> None:
        self.bucket = config.bucket
        self._prefix = f"{config.prefix}/" if config.prefix else ""
        self.location = config.url
        self._where = f"{self.location} at {config.endpoint or 'the AWS endpoint'}"
        _, self._client_error, self._boto_error = _boto()
        try:
            self._client = _client(config)
        except ValueError as exc:  # botocore rejects a malformed endpoint URL
            raise InvalidArgument(f"S3 endpoint {config.endpoint!r}: {exc}") from None

    def _fail(self, exc: Exception, what: str) -> Exception:
        """The nxstore error for `exc`, raised by boto3 while doing `what` (any other
        exception is returned as it is)."""
        if type(exc).__name__ == "NoCredentialsError":
            return AuthenticationError(
                f"{self._where}: no S3 credentials (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or give a credentials file)")  # fmt: skip
        if isinstance(exc, self._client_error):
            code = _code(exc)
            if code in _DENIED:
                return AuthenticationError(f"{self._where}: {what}: credentials refused ({code})")
            if code == "NoSuchBucket":
                return NotFound(f"{self._where}: bucket {self.bucket} does not exist")
            return ObjectStoreError(f"{self._where}: {what}: {code or exc}")
        if isinstance(exc, self._boto_error):
            return ObjectStoreError(f"{self._where}: {what}: {exc}")
        return exc

    def check(self) -> None:
        """Prove the bucket exists and the credentials work (a HEAD of the bucket and a
        one-key listing). Raises NotFound, AuthenticationError, ObjectStoreError."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if _code(exc) in {"404", "NoSuchBucket"}:
                raise NotFound(f"{self._where}: bucket {self.bucket} does not exist") from None
            raise self._fail(exc, "checking the bucket") from None
        self._list(1)

    def put_once(self, name: str, data: bytes | memoryview) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._prefix + name,
                                    Body=bytes(data), IfNoneMatch="*")  # fmt: skip
        except Exception as exc:
            status = str(getattr(exc, "response", {}).get("ResponseMetadata", {})
                         .get("HTTPStatusCode", ""))  # fmt: skip
            if isinstance(exc, self._client_error) and (_code(exc) in _EXISTS or status in _EXISTS):
                raise AlreadyExists(f"{self._where}: {name} already exists") from None
            raise self._fail(exc, f"uploading {name}") from None

    def get(self, name: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        try:
            if length == 0:  # an empty range cannot be asked for; the object must exist
                self._client.head_object(Bucket=self.bucket, Key=self._prefix + name)
                return b""
            resp = self._client.get_object(Bucket=self.bucket, Key=self._prefix + name,
                                           Range=f"bytes={offset}-{offset + length - 1}")  # fmt: skip
            return resp["Body"].read()
        except Exception as exc:
            if _code(exc) in _MISSING:
                raise NotFound(f"{self._where}: {name} does not exist") from None
            if _code(exc) == "InvalidRange":  # at or past the end
                return b""
            raise self._fail(exc, f"reading {name}") from None

    def _list(self, limit: int | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        n = len(self._prefix)
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._prefix,
                PaginationConfig={"MaxItems": limit} if limit else {})  # fmt: skip
            for page in pages:
                for obj in page.get("Contents", ()):
                    name = obj["Key"][n:]
                    if name and "/" not in name:
                        out[name] = int(obj["Size"])
        except Exception as exc:
            raise self._fail(exc, "listing") from None
        return out

    def list(self) -> dict[str, int]:
        return self._list()

    def delete(self, name: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._prefix + name)
        except Exception as exc:
            if _code(exc) not in _MISSING:
                raise self._fail(exc, f"deleting {name}") from None

    def close(self) -> None:
        self._client.close()
