"""The etcd client the site coordinates through: etcd's v3 JSON gateway over HTTP (the
etcd3gw package, imported on first use so the command line starts fast).

Error contract: every failure to reach etcd, a timeout, or a request etcd refuses raises
CoordinationUnavailable naming the endpoint; a transaction whose guards do not hold returns
False and changes nothing. A write that raised may or may not have been applied.

A watch (`DeletionWatch`) is a long-lived streaming request, so it has a connection of its
own (http.client, not the shared session): closing that socket is how another thread ends
the wait at once.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import CoordinationUnavailable, InvalidArgument
from .keys import KEY_FORMAT_VERSION

REQUEST_TIMEOUT_S = 2.0  # one HTTP request; a lease TTL is several of these


@dataclass(frozen=True)
class Entry:
    """One key as etcd holds it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int  # 0: not bound to a lease

    def json(self, versions: tuple[int, ...] = (KEY_FORMAT_VERSION,)) -> dict[str, Any]:
        """The value as a JSON object of this build's format (`keys.encode`);
        CoordinationUnavailable if it is not one or its "version" is not in `versions`."""
        try:
            out = json.loads(self.value)
        except ValueError:
            out = None
        if not isinstance(out, dict):
            raise CoordinationUnavailable(f"etcd key {self.key} does not hold a JSON object")
        if out.get("version") not in versions:
            raise CoordinationUnavailable(
                f"etcd key {self.key} holds format version {out.get('version')!r}; this build "
                f"reads version {' or '.join(map(str, versions))}")
        return out


@dataclass(frozen=True)
class Guard:
    """A transaction's condition: key `key`'s create (or mod) revision equals `revision`;
    create revision 0 means the key does not exist."""

    key: str
    revision: int
    target: str = "CREATE"  # or "MOD"

    def compare(self) -> dict[str, Any]:
        field = "create_revision" if self.target == "CREATE" else "mod_revision"
        return {"key": _b64(self.key), "result": "EQUAL", "target": self.target,
                field: self.revision}


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # keys are text; the last byte is never 0xff
    return base64.b64encode(bytes(raw)).decode("ascii")


def _entry(kv: dict[str, Any]) -> Entry:
    return Entry(base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")),
                 int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)),
                 int(kv.get("lease", 0)))


class Etcd:
    """A client of one etcd endpoint (`http://HOST:PORT`). Thread-safe: one HTTP session,
    used under a lock (requests' sessions are not documented as thread-safe)."""

    def __init__(self, url: str, timeout: float = REQUEST_TIMEOUT_S) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port \
                or parts.path not in ("", "/"):
            raise InvalidArgument(f"bad etcd endpoint {url!r}: expected http://HOST:PORT")
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port}"
        try:
            import etcd3gw  # here: the HTTP stack costs CLI start-up time
        except ImportError:
            raise InvalidArgument("coordination through etcd needs the etcd3gw package: "
                                  "pip install 'nxstore[etcd]'") from None

        self._client = etcd3gw.Etcd3Client(host=parts.hostname, port=parts.port,
                                           protocol=parts.scheme, timeout=timeout,
                                           api_path="/v3/")
        self._lock = threading.Lock()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        from etcd3gw.exceptions import Etcd3Exception

        try:
            with self._lock:
                out = self._client.post(self._client.get_url(path), json=body)
        except (Etcd3Exception, OSError, ValueError) as exc:
            detail = getattr(exc, "detail_text", None) or str(exc) or type(exc).__name__
            if "Connection refused" in detail:
                detail = "connection refused"
            raise CoordinationUnavailable(
                f"etcd at {self.url} is unreachable or refused {path}: {detail[:200]}"
            ) from None
        if not isinstance(out, dict):
            raise CoordinationUnavailable(f"etcd at {self.url} answered {path} with {out!r}")
        return out

    def close(self) -> None:
        with self._lock:
            self._client.session.close()

    # -- leases -------------------------------------------------------------------------
    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of `ttl` seconds: (lease id, TTL granted)."""
        out = self._post("/lease/grant", {"TTL": ttl})
        return int(out["ID"]), int(out["TTL"])

    def keepalive(self, lease: int) -> int:
        """Renew `lease`; its new TTL in seconds, 0 if it has expired (or never was)."""
        out = self._post("/lease/keepalive", {"ID": lease})
        return int(out.get("result", {}).get("TTL", 0))

    def time_to_live(self, lease: int) -> int:
        """Seconds `lease` has left; -1 if it has expired."""
        return int(self._post("/kv/lease/timetolive", {"ID": lease}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        """End `lease` now: the keys bound to it are deleted."""
        self._post("/kv/lease/revoke", {"ID": lease})

    # -- keys ---------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        kvs = self._post("/kv/range", {"key": _b64(key)}).get("kvs", [])
        return _entry(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> list[Entry]:
        """Every key under `prefix`, in key order."""
        out = self._post("/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return [_entry(kv) for kv in out.get("kvs", [])]

    def watch_deletion(self, key: str, start_revision: int) -> DeletionWatch:
        """A watch for the deletion of `key` at or after `start_revision` (see DeletionWatch)."""
        return DeletionWatch(self.url, key, start_revision)

    def txn(self, guards: Sequence[Guard], puts: Sequence[Put] = (),
            deletes: Sequence[str] = ()) -> int:
        """If every guard holds, apply `puts` and `deletes` atomically and return the
        store's revision after them (a key put here has it as its mod revision, and as its
        create revision if it was new); else change nothing and return 0."""
        ops: list[dict[str, Any]] = []
        for p in puts:
            put: dict[str, Any] = {"key": _b64(p.key), "value": _b64(p.value)}
            if p.lease:
                put["lease"] = p.lease
            ops.append({"request_put": put})
        ops += [{"request_delete_range": {"key": _b64(k)}} for k in deletes]
        out = self._post("/kv/txn", {"compare": [g.compare() for g in guards],
                                      "success": ops, "failure": []})
        return int(out["header"]["revision"]) if out.get("succeeded") else 0


class DeletionWatch:
    """etcd's watch of one key, from `start_revision` on, for its deletion only (the NOPUT
    filter): etcd replays the events since that revision first, so a deletion between the
    read that gave the revision and the watch is not missed.

    `wait(timeout)` blocks until the key is deleted (True) or `timeout` seconds pass or
    `cancel()` is called from another thread (False). It also returns True when etcd
    cancels the watch (the revision was compacted): the caller then looks at the key
    again, which is what the watch was for. Raises CoordinationUnavailable (etcd
    unreachable, the stream cut). One wait per watch."""

    def __init__(self, url: str, key: str, start_revision: int) -> None:
        parts = urlsplit(url)
        assert parts.hostname and parts.port
        cls = http.client.HTTPSConnection if parts.scheme == "https" else \
            http.client.HTTPConnection
        self.url = url
        self.key = key
        self._conn = cls(parts.hostname, parts.port, timeout=REQUEST_TIMEOUT_S)
        self._body = json.dumps({"create_request": {
            "key": _b64(key), "start_revision": start_revision, "filters": ["NOPUT"]}})
        self._cancelled = threading.Event()
        self._lock = threading.Lock()

    def cancel(self) -> None:
        """End a `wait` in progress (or the next one) at once; it returns False."""
        self._cancelled.set()
        with self._lock:
            sock = self._conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed
                    sock.shutdown(socket.SHUT_RDWR)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            with self._lock:
                if self._cancelled.is_set():
                    return False
                self._conn.connect()
            self._conn.request("POST", "/v3/watch", self._body,
                               {"Content-Type": "application/json"})
            response = self._conn.getresponse()
            if response.status != 200:
                raise CoordinationUnavailable(
                    f"etcd at {self.url} refused to watch {self.key}: HTTP {response.status}")
            while not self._cancelled.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                assert self._conn.sock is not None
                self._conn.sock.settimeout(left)
                try:
                    line = response.readline()
                except TimeoutError:  # no deletion in time: the stream is dropped below
                    return False
                if not line:
                    break
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("canceled") or any(e.get("type") == "DELETE"
                                                 for e in result.get("events", ())):
                    return True
            if self._cancelled.is_set():
                return False
            raise CoordinationUnavailable(f"etcd at {self.url} ended the watch of {self.key}")
        except (OSError, ValueError, http.client.HTTPException) as exc:
            if self._cancelled.is_set():
                return False
            raise CoordinationUnavailable(
                f"etcd at {self.url} is unreachable or cut the watch of {self.key}: "
                f"{str(exc)[:200] or type(exc).__name__}") from None
        finally:
            with self._lock:
                self._conn.close()
