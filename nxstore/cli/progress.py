"""Progress bars: a tqdm bar on stderr when stderr is a terminal, nothing otherwise."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A byte or item counter. Use as a context manager; `update(n)` adds n done,
    `set(done, total)` sets both (for callbacks that report absolute progress)."""

    def __init__(self, total: int | None, desc: str, *, unit: str = "B",
                 enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            scale = unit == "B"
            self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=scale,
                             unit_divisor=1024 if scale else 1000, file=sys.stderr,
                             dynamic_ncols=True, leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set(self, done: int, total: int) -> None:
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
