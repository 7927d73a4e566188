"""Shared helpers for the pytest-benchmark suites in benchmarks/.

Benchmarks are measurements, not pass/fail tests. Each one reports its
throughput and its ratio to a ceiling measured in the same run through
`report()`, which writes both into `benchmark.extra_info` (so they land in
--benchmark-json output) and prints a one-line summary (visible with -s, and
collected in the terminal summary at the end of the run).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

_SUMMARY: list[str] = []


def measure(
    fn: Callable[[], Any], rounds: int = 5, setup: Callable[[], Any] | None = None
) -> float:
    """Median wall seconds of `fn()` over `rounds` runs (`setup()` untimed before each).

    For baselines and ceilings measured in the same run as the benchmark."""
    times = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _median_seconds(benchmark: Any) -> float | None:
    stats = getattr(benchmark, "stats", None)
    return None if stats is None else float(stats.stats.median)


def report(
    benchmark: Any,
    label: str,
    amount: float,
    unit: str,
    ceiling: float | None = None,
    ceiling_label: str = "ceiling",
    seconds: float | None = None,
    **extra: Any,
) -> float | None:
    """Record the throughput of the benchmarked call and its ratio to `ceiling`.

    `amount` is the work of one call: bytes when `unit` is "MB/s", operations
    when `unit` is "ops/s" (or anything else, divided by seconds). `ceiling`
    is in the same unit. `seconds` overrides the benchmark's median (for
    figures that are not timings, pass seconds=1). Extra keyword values are
    stored too. Returns the throughput, or None when benchmarks are disabled.
    """
    secs = seconds if seconds is not None else _median_seconds(benchmark)
    if secs is None or secs <= 0:
        return None
    rate = amount / secs / (1e6 if unit == "MB/s" else 1.0)
    info = {"label": label, "throughput": rate, "unit": unit, **extra}
    line = f"{label}: {rate:,.1f} {unit}"
    if ceiling:
        info.update(ceiling=ceiling, ceiling_label=ceiling_label, ratio=rate / ceiling)
        line += f" = {rate / ceiling:.2f} x {ceiling_label} ({ceiling:,.1f} {unit})"
    for key, value in extra.items():
        line += f", {key}={value:.2f}" if isinstance(value, float) else f", {key}={value}"
    benchmark.extra_info.update(info)
    print(f"\n[bench] {line}")
    _SUMMARY.append(line)
    return rate


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _SUMMARY:
        terminalreporter.section("throughput summary")
        for line in _SUMMARY:
            terminalreporter.write_line(line)
