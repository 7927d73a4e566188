"""Field codecs of replication message payloads: bounded readers and writers.

Little-endian throughout; strings are u16 length + UTF-8 (0xFFFF = None); numpy arrays
pass through without per-element Python work. Every decoding failure is a ProtocolError.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from ..constants import FINGERPRINT_BYTES, WIRE_MAX_BATCH, WIRE_MAX_STRING_BYTES
from ..errors import InvalidArgument, ProtocolError
from .frames import Buffer

NONE_STR = 0xFFFF  # u16 string length that encodes None


class PayloadWriter:
    """Collects payload buffers; small fields are packed into one bytearray."""

    __slots__ = ("parts", "buf")

    def __init__(self) -> None:
        self.parts: list[Buffer] = []
        self.buf = bytearray()

    def pack(self, st: struct.Struct, *values: Any) -> None:
        self.buf += st.pack(*values)

    def raw(self, b: Buffer) -> None:
        self.buf += b

    def string(self, s: str | None) -> None:
        if s is None:
            self.buf += U16.pack(NONE_STR)
            return
        b = s.encode()
        if len(b) > WIRE_MAX_STRING_BYTES:
            raise InvalidArgument(f"string field of {len(b)} bytes exceeds {WIRE_MAX_STRING_BYTES}")
        self.buf += U16.pack(len(b))
        self.buf += b

    def big(self, b: Buffer) -> None:
        """Append a large buffer without copying it."""
        if self.buf:
            self.parts.append(bytes(self.buf))
            self.buf = bytearray()
        self.parts.append(b)

    def done(self) -> list[Buffer]:
        if self.buf or not self.parts:
            self.parts.append(bytes(self.buf))
        return self.parts


class PayloadReader:
    """Bounds-checked reader over a payload; every failure is a ProtocolError."""

    __slots__ = ("mv", "pos", "what")

    def __init__(self, payload: Buffer, what: str) -> None:
        self.mv = memoryview(payload).cast("B")
        self.pos = 0
        self.what = what

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.mv):
            raise ProtocolError(
                f"{self.what}: payload of {len(self.mv)} bytes too short (need {self.pos + n})"
            )

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        self._need(st.size)
        v = st.unpack_from(self.mv, self.pos)
        self.pos += st.size
        return v

    def raw(self, n: int) -> memoryview:
        self._need(n)
        v = self.mv[self.pos : self.pos + n]
        self.pos += n
        return v

    def string(self, optional: bool = False) -> str | None:
        (n,) = self.unpack(U16)
        if n == NONE_STR and optional:
            return None
        if n > WIRE_MAX_STRING_BYTES:
            raise ProtocolError(f"{self.what}: string of {n} bytes exceeds {WIRE_MAX_STRING_BYTES}")
        try:
            return str(self.raw(n), "utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(f"{self.what}: string field is not UTF-8") from e

    def count(self) -> int:
        (n,) = self.unpack(U32)
        if n > WIRE_MAX_BATCH:
            raise ProtocolError(f"{self.what}: batch of {n} exceeds {WIRE_MAX_BATCH}")
        return n

    def array(self, n: int, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        nbytes = n * np.dtype(dtype).itemsize
        return np.frombuffer(self.raw(nbytes), dtype=dtype).reshape(shape)

    def end(self) -> None:
        if self.pos != len(self.mv):
            raise ProtocolError(
                f"{self.what}: {len(self.mv) - self.pos} unexpected bytes after the message"
            )


U8 = struct.Struct("<B")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
F64 = struct.Struct("<d")
VERSIONS = struct.Struct("<BB")


def as_fingerprints(fps: Any) -> np.ndarray:
    """`fps` as a C-contiguous (n, 16) uint8 array (accepts bytes of n*16 or arrays)."""
    if isinstance(fps, (bytes, bytearray, memoryview)):
        a = np.frombuffer(fps, np.uint8)
    else:
        a = np.asarray(fps, dtype=np.uint8)
    if a.ndim == 1:
        if a.size % FINGERPRINT_BYTES:
            raise InvalidArgument(f"fingerprint buffer of {a.size} bytes is not n x 16")
        a = a.reshape(-1, FINGERPRINT_BYTES)
    if a.ndim != 2 or a.shape[1] != FINGERPRINT_BYTES:
        raise InvalidArgument(f"fingerprints must be (n, 16) uint8, got shape {a.shape}")
    return np.ascontiguousarray(a)


def check_batch(n: int, what: str) -> None:
    if n > WIRE_MAX_BATCH:
        raise InvalidArgument(f"{what}: batch of {n} exceeds WIRE_MAX_BATCH={WIRE_MAX_BATCH}")


def check_len(b: bytes, n: int, what: str) -> None:
    if len(b) != n:
        raise InvalidArgument(f"{what} must be {n} bytes, got {len(b)}")
