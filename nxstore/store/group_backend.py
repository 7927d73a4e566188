"""Where sealed extent groups live: a narrow back-end interface and its configuration.

A *sealed* extent group (full, or left behind by gc/relocate: never appended to again) is an
immutable object named `EG<8 hex>.eg`. The extent store keeps the group being filled and its
OpLog on the local disk; with a remote back end it uploads each sealed group once
(`put_once`), reads it back with ranged gets through a bounded local cache
(extent_remote.py), and deletes it only after a checkpoint stopped naming it.

Two implementations share one conformance suite (tests/store/test_group_backend.py):
`DirectoryBackend` here (a directory; put-once with link(2), which fails on an existing
name) and `S3Backend` (s3_backend.py, boto3, imported only when an S3 store is opened).

The extent store's choice is recorded in `extents/backend.conf` (BACKEND_FILE, see
docs/format.md); a store without that file keeps every group in `extents/` as it always
did.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

from ..constants import (
    EXTENT_BACKEND_FILE,
    EXTENT_BACKEND_VERSION,
    EXTENT_CACHE_DIR,
    EXTENT_GROUP_BYTES,
    S3_CACHE_BYTES,
)
from ..errors import (
    AlreadyExists,
    Corruption,
    FormatError,
    InvalidArgument,
    NotFound,
)
from .extent_group import parse_group_name
from .fileutil import (
    fsync_dir,
    make_private_dirs,
    open_private,
    read_checksummed,
    write_checksummed,
)

_BACKEND_MAGIC = b"NXBACKND"
# S3 bucket names: 3-63 of lower-case letters, digits, dots, hyphens; a letter or digit at
# each end (the path-style rules every S3-compatible server accepts)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._/-]{0,512}$")


class GroupBackend(ABC):
    """A flat namespace of immutable objects (extent groups), each written once.

    Names are extent group file names (`EG<8 hex>.eg`). Every method may raise
    ObjectStoreError when the store cannot be reached or answers with an unexpected
    failure (nothing was changed, or - for put_once - the object is absent or complete,
    never partial) and AuthenticationError when it refuses the credentials."""

    location: str  # where the objects live, for messages (a path or an s3:// URL)

    @abstractmethod
    def put_once(self, name: str, data: bytes | memoryview) -> None:
        """Store `data` under `name`, complete or not at all, durable on return. Raises
        AlreadyExists if `name` exists (whatever its content; it is left unchanged), so
        two writers can never overwrite each other."""

    @abstractmethod
    def get(self, name: str, offset: int, length: int) -> bytes:
        """Bytes offset..offset+length of object `name`: fewer when the object ends
        before (b"" at or past its end). Raises NotFound if `name` does not exist,
        InvalidArgument for a negative offset or length."""

    @abstractmethod
    def list(self) -> dict[str, int]:
        """{name: size in bytes} of every object."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove object `name`; durable on return. Idempotent: a missing name is no
        error (a crash may repeat a delete)."""

    def close(self) -> None:  # noqa: B027 (optional: most back ends hold nothing)
        """Release connections. Idempotent."""


def check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise InvalidArgument(f"range offset {offset} length {length}: both must be >= 0")


class DirectoryBackend(GroupBackend):
    """Objects as files in a directory (owner-only). put_once writes a temporary file,
    fsyncs it and links it into place (link fails on an existing name), then fsyncs the
    directory."""

    def __init__(self, directory: str) -> None:
        if not os.path.isdir(directory):
            raise NotFound(f"no directory {directory}")
        self.directory = self.location = directory

    def _path(self, name: str) -> str:
        if "/" in name or name.startswith("."):
            raise InvalidArgument(f"object name {name!r}")
        return os.path.join(self.directory, name)

    def put_once(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        tmp = f"{path}.tmp.{os.getpid()}.{id(data)}"
        fd = open_private(tmp, os.O_WRONLY | os.O_EXCL)
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            os.link(tmp, path)
        except FileExistsError:
            raise AlreadyExists(f"{path} already exists") from None
        finally:
            os.close(fd)
            os.unlink(tmp)
        fsync_dir(self.directory)

    def get(self, name: str, offset: int, length: int) -> bytes:
        check_range(offset, length)
        try:
            with open(self._path(name), "rb") as f:
                return os.pread(f.fileno(), length, offset)
        except FileNotFoundError:
            raise NotFound(f"{self._path(name)} does not exist") from None

    def list(self) -> dict[str, int]:
        out = {}
        for name in os.listdir(self.directory):
            if ".tmp." not in name:
                with contextlib.suppress(FileNotFoundError):
                    out[name] = os.stat(self._path(name)).st_size
        return out

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            return
        fsync_dir(self.directory)


@dataclass(frozen=True)
class BackendConfig:
    """Where a store's sealed groups live (recorded in extents/backend.conf).

    kind "s3": bucket and prefix (keys are `<prefix>/EG<8 hex>.eg`, or `EG<8 hex>.eg` for
    an empty prefix), endpoint URL (None: the AWS default), region, credentials_file (an
    AWS-style INI file with aws_access_key_id / aws_secret_access_key in [default];
    None: the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY environment variables when the
    store is opened), cache_bytes (the local read cache's bound), group_bytes (the size
    past which a group is sealed; None: EXTENT_GROUP_BYTES)."""

    kind: str
    bucket: str = ""
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"
    credentials_file: str | None = None
    cache_bytes: int = S3_CACHE_BYTES
    group_bytes: int | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_extent_store(url: str, *, endpoint: str | None = None,
                       credentials_file: str | None = None,
                       cache_bytes: int | None = None) -> BackendConfig:  # fmt: skip
    """The BackendConfig of `s3://bucket[/prefix]`. Raises InvalidArgument for any other
    form, a bad bucket name or prefix, an endpoint that is not an http(s) URL, a
    credentials file that does not exist, or a cache smaller than one byte."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise InvalidArgument(f"extent store {url!r}: expected s3://BUCKET[/PREFIX]")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InvalidArgument(f"extent store {url!r}: {bucket!r} is not a valid bucket name")
    if not _PREFIX_RE.match(prefix) or "//" in prefix or ".." in prefix.split("/"):
        raise InvalidArgument(f"extent store {url!r}: prefix {prefix!r} is not allowed "
                              "(letters, digits, . _ - /)")  # fmt: skip
    if endpoint is not None and not re.match(r"^https?://[^\s/]+(/.*)?$", str(endpoint)):
        raise InvalidArgument(f"S3 endpoint {endpoint!r}: expected http://HOST[:PORT] or https://...")
    if credentials_file is not None:
        credentials_file = os.path.abspath(credentials_file)
        if not os.path.isfile(credentials_file):
            raise InvalidArgument(f"S3 credentials file {credentials_file} does not exist")
    if cache_bytes is not None and (not isinstance(cache_bytes, int) or cache_bytes < 1):
        raise InvalidArgument(f"S3 read cache size {cache_bytes!r}: expected bytes >= 1")
    return BackendConfig("s3", bucket, prefix, endpoint, credentials_file=credentials_file,
                         cache_bytes=cache_bytes or S3_CACHE_BYTES)  # fmt: skip


def save_config(directory: str, config: BackendConfig) -> None:
    """Record `config` in `directory`/backend.conf (atomic, durable)."""
    payload = json.dumps(asdict(config), sort_keys=True).encode()
    write_checksummed(os.path.join(directory, EXTENT_BACKEND_FILE), _BACKEND_MAGIC,
                      EXTENT_BACKEND_VERSION, [payload])  # fmt: skip


def load_config(directory: str) -> BackendConfig | None:
    """The recorded config of the store in `directory`; None for a local store (no file).
    Raises Corruption (bad checksum, unknown fields), FormatError (newer version)."""
    path = os.path.join(directory, EXTENT_BACKEND_FILE)
    try:
        _, payload = read_checksummed(path, _BACKEND_MAGIC, EXTENT_BACKEND_VERSION)
    except FileNotFoundError:
        return None
    try:
        config = BackendConfig(**json.loads(payload))
    except (ValueError, TypeError) as exc:
        raise Corruption(f"{path}: unreadable back-end config ({exc})") from None
    if config.group_bytes is not None and not 0 < config.group_bytes <= EXTENT_GROUP_BYTES:
        raise Corruption(f"{path}: group size {config.group_bytes} out of range")
    if config.kind != "s3":
        raise FormatError(f"{path}: unknown extent back end {config.kind!r}")
    return config


def open_backend(config: BackendConfig, *, check: bool = False) -> GroupBackend:
    """Connect to the back end of `config` (imports boto3 only now; ObjectStoreError if it
    is not installed). With `check`, prove it works first: the bucket exists and the
    credentials are accepted (NotFound, AuthenticationError, ObjectStoreError otherwise)."""
    from .s3_backend import S3Backend
    backend = S3Backend(config)
    if check:
        backend.check()
    return backend


def check_empty_backend(config: BackendConfig) -> None:
    """Connect to the back end of `config` and check that it works and holds no extent
    group yet (a new store must not adopt or overwrite another's). Raises NotFound,
    AuthenticationError, ObjectStoreError, AlreadyExists."""
    backend = open_backend(config, check=True)
    try:
        if any(parse_group_name(name) is not None for name in backend.list()):
            raise AlreadyExists(f"{config.url} already holds extent groups (another store's); "
                                "choose another bucket or prefix")  # fmt: skip
    finally:
        backend.close()


def cache_dir(directory: str) -> str:
    """The read cache of the store in `directory` (made if missing)."""
    path = os.path.join(directory, EXTENT_CACHE_DIR)
    make_private_dirs(path)
    return path
