"""CLI start-up benchmark of issue 17 ("Fast CLI"; run: pytest benchmarks/bench_cli_startup.py
--benchmark-only -s).

Wall time of one `nxstore` process, start to exit, for `nxstore --help`, `snapshot create`,
`clone` and `info` on a small local cluster (target: < 150 ms each), median of ROUNDS.
Side by side, measured in the same run: the interpreter floor (`python -c pass`, the
ceiling: no command can start faster), `python -c "import numpy"` (the engine's array
library, imported by every command that opens a cluster) and `python -c "import
nxstore.store.engine"` (everything such a command must import before it opens anything).
The ratio reported is floor / command (1.0: as fast as an empty interpreter).

The commands run through the console script installed next to the interpreter (what a
user types); the benchmark fails if it is missing. They run with byte code cached, as an
installed package has it: PYTHONDONTWRITEBYTECODE is dropped from their environment (with
it set, every start compiles every module again, which costs more than the imports
themselves) and an untimed first run of each case writes the cache.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from _util import scratch_dir
from conftest import measure, report

import nxstore

ROUNDS = int(os.environ.get("NXSTORE_BENCH_CLI_ROUNDS", "21"))
TARGET_S = 0.150
PEERS = (("python", "pass"), ("numpy", "import numpy"),
         ("engine import", "import nxstore.store.engine"))


_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, env=_ENV)


@pytest.fixture(scope="module")
def nxstore_script() -> str:
    path = os.path.join(os.path.dirname(sys.executable), "nxstore")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no nxstore console script at {path}: install the package (make setup)")
    return path


@pytest.fixture(scope="module")
def cluster_path() -> Iterator[str]:
    with scratch_dir("cli") as root:
        path = os.path.join(root, "c")
        with nxstore.Cluster.create(path, background=False) as c:
            vd = c.create_vdisk("db", 64 << 20)
            vd.write(0, os.urandom(1 << 20))
            vd.flush()
            c.drain()  # the steady state: the OpLog holds nothing to replay at open
            vd.snapshot("base")
        yield path


def _floors() -> dict[str, float]:
    """Median seconds of the peers (an empty interpreter, numpy, the engine's imports),
    measured right before each case: on a shared machine the load changes within a run."""
    floors = {}
    for name, code in PEERS:
        _run([sys.executable, "-c", code])  # writes the byte code cache
        floors[name] = measure(lambda c=code: _run([sys.executable, "-c", c]), ROUNDS)
    return floors


def _commands(script: str, path: str) -> dict[str, Iterator[list[str]]]:
    """Per case, an endless supply of command lines (a new name each round)."""
    n = itertools.count()
    return {
        "--help": itertools.repeat([script, "--help"]),
        "snapshot create": ([script, "snapshot", "create", path, f"db@s{next(n)}"]
                            for _ in itertools.count()),
        "clone": ([script, "clone", path, "db@base", f"clone{next(n)}"]
                  for _ in itertools.count()),
        "info": itertools.repeat([script, "info", path]),
    }


@pytest.mark.parametrize("case", ["--help", "snapshot create", "clone", "info"])
def test_cli_startup(benchmark, nxstore_script: str, cluster_path: str, case: str) -> None:
    floors = _floors()
    lines = _commands(nxstore_script, cluster_path)[case]
    _run(next(lines))  # warm: byte code compiled, pages cached
    benchmark.pedantic(lambda: _run(next(lines)), rounds=ROUNDS, iterations=1)
    median = benchmark.stats.stats.median if benchmark.stats else 0.0
    report(benchmark, f"nxstore {case} start-to-exit", 1, "commands/s",
           ceiling=1 / floors["python"], ceiling_label="python -c pass",
           median_ms=median * 1e3, python_ms=floors["python"] * 1e3,
           numpy_ms=floors["numpy"] * 1e3, engine_import_ms=floors["engine import"] * 1e3,
           over_engine_import_ms=(median - floors["engine import"]) * 1e3,
           target_ms=TARGET_S * 1e3, meets_target=bool(median and median < TARGET_S),
           load=os.getloadavg()[0])
