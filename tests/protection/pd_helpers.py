"""Shared helpers of the protection tests (imported by name; conftest puts this dir on sys.path)."""

from __future__ import annotations

import os
import stat

BS = 4096
MB = 1 << 20
HOUR = 3600.0
DAY = 24 * HOUR


def write_block(vd, index: int, value: int) -> None:
    vd.write(index * BS, value.to_bytes(8, "little") * (BS // 8))


def read_block(obj, index: int) -> int:
    return int.from_bytes(obj.read(index * BS, 8), "little")


def script(directory, name: str, body: str) -> str:
    """An executable /bin/sh script in `directory`; returns its path."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path
