"""Mutation sweep (LevelDB corruption_test style): damage one file of a cluster and
demand "detected or harmless, never wrong data" (sweep_oracle.py has the exact rules).

Two pristine clusters are built once per module by sweep_workload.py in a child
process: `clean` (closed cleanly) and `kill` (SIGKILLed after a flush and some unflushed
writes: the catalogue WAL, OpLog tails and extent group tails are as a crash leaves
them). Hypothesis picks the state, file class, file, mutation and offset; each example
copies the pristine cluster (on /dev/shm when it exists), damages the copy and checks it.
Every outcome is tallied; the test fails at the end if any was silent, read-silent, raw,
a hang or degraded, printing the table by file class and every failure.

Environment: NXSTORE_SWEEP_EXAMPLES (examples of the bounded run, default 60),
NXSTORE_TORTURE=1 (enables the torture run, NXSTORE_TORTURE_EXAMPLES default 1000),
NXSTORE_SWEEP_REPORT=PATH (write PATH: JSON of every outcome, PATH.txt: table and
failures, PATH.jsonl: one line per outcome as it happens).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sweep_oracle import (
    CHOPS,
    KINDS,
    REGIONS,
    Mutation,
    Outcome,
    Tally,
    check,
    file_classes,
    summarize,
)

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "sweep_workload.py")
TORTURE = os.environ.get("NXSTORE_TORTURE") == "1"


@dataclass
class Pristine:
    path: str
    truth: dict
    classes: dict[str, list[str]]


def _scratch_root() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="nxstore-sweep-", dir=base)


def _build(root: str, mode: str) -> Pristine:
    path, truth_path = os.path.join(root, mode), os.path.join(root, f"{mode}.json")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]))
    proc = subprocess.Popen([sys.executable, WORKLOAD, path, mode, truth_path], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # READY once the truth file is complete
        if mode == "kill" and line.strip() == "READY":
            proc.send_signal(signal.SIGKILL)
        proc.stdin.close()
        rc = proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert line.strip() == "READY", f"workload {mode} failed (rc {rc}):\n{err[-3000:]}"
    assert rc == (-signal.SIGKILL if mode == "kill" else 0), f"workload {mode}: rc {rc}\n{err}"
    with open(truth_path) as f:
        truth = json.load(f)
    return Pristine(path, truth, file_classes(path, truth["layers"]))


@pytest.fixture(scope="module")
def pristine():
    root = _scratch_root()
    try:
        yield {mode: _build(root, mode) for mode in ("clean", "kill")}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_pristine_states_read_the_truth(pristine):
    """The undamaged clusters read exactly the truth, scrub clean, and have every file
    class the sweep is meant to damage (otherwise the sweep would prove less)."""
    for mode, p in pristine.items():
        work = tempfile.mkdtemp(prefix="nxstore-pristine-", dir=os.path.dirname(p.path))
        try:
            copy = os.path.join(work, "c")
            shutil.copytree(p.path, copy)
            v = check(copy, "", p.truth)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        assert v.category == "harmless", f"{mode}: {summarize(v)}"
    want = {"catalog.db", "LOCK", "oplog-newest", "oplog-older", "eg-newest", "eg-older",
            "extent_table.bin", "fpindex.bin", "map-base-head", "map-base-frozen",
            "map-delta-head", "map-delta-frozen"}
    assert want <= set(pristine["clean"].classes), sorted(pristine["clean"].classes)
    assert {"catalog.db-wal", "catalog.db-shm"} | want <= set(pristine["kill"].classes), (
        sorted(pristine["kill"].classes))


def _sweep(pristine: dict[str, Pristine], examples: int) -> None:
    tally = Tally()
    report = os.environ.get("NXSTORE_SWEEP_REPORT")
    if report:
        open(report + ".jsonl", "w").close()

    @settings(max_examples=examples, deadline=None, derandomize=False, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data) -> None:
        state = data.draw(st.sampled_from(sorted(pristine)), label="state")
        p = pristine[state]
        cls = data.draw(st.sampled_from(sorted(p.classes)), label="class")
        rel = data.draw(st.sampled_from(p.classes[cls]), label="file")
        kind = data.draw(st.sampled_from(KINDS), label="mutation")
        region = data.draw(st.sampled_from(REGIONS), label="region")
        where = data.draw(st.integers(0, 2**32), label="where")
        arg = data.draw({"bit": st.integers(0, 7), "zero": st.integers(1, 4096),
                         "chop": st.integers(0, len(CHOPS) - 1)}.get(kind, st.just(0)),
                        label="arg")
        work = tempfile.mkdtemp(prefix="nxstore-mut-", dir=os.path.dirname(p.path))
        try:
            copy = os.path.join(work, "c")
            shutil.copytree(p.path, copy)
            what = Mutation(kind, region, where, arg).apply(os.path.join(copy, rel))
            v = check(copy, rel, p.truth)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        outcome = Outcome(state, cls, rel, kind, what, v.category, summarize(v))
        tally.add(outcome)
        if report:
            with open(report + ".jsonl", "a") as f:
                f.write(json.dumps(asdict(outcome)) + "\n")

    one()
    if report:
        tally.write(report)
    print("\n" + tally.table())
    failures = tally.failures()
    assert not failures, (f"{len(failures)} of {len(tally.outcomes)} mutations gave wrong data, "
                          f"a raw exception, a hang or lost availability after a reopen:\n"
                          f"{tally.table()}\n\n"
                          f"{tally.failure_lines()}")


def test_mutation_sweep(pristine):
    _sweep(pristine, int(os.environ.get("NXSTORE_SWEEP_EXAMPLES", "60")))


@pytest.mark.torture
@pytest.mark.skipif(not TORTURE, reason="the long sweep runs with NXSTORE_TORTURE=1")
def test_mutation_sweep_torture(pristine):
    _sweep(pristine, int(os.environ.get("NXSTORE_TORTURE_EXAMPLES", "1000")))
