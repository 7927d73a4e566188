"""The README's command examples, run as written: real `nxstore` processes, the lines taken
from README.md itself (only /srv/ becomes the test's directory, `nxstore` this checkout's
CLI, and each HOST:PORT a free 127.0.0.1 port), so the README cannot drift from what works.

* `--clock-file`: a schedule made before `nxstore serve --clock-file` fires on the simulated
  clock (its first slot is the scheduler's first pass, not the real time it was made at).
* NearSync: `nxstore lws /srv/france db log --name before-upgrade` over a PD's vDisks ships with
  the PD's next round and `pd restore-point /srv/canada pd-web before-upgrade` restores it, and
  the daemon does not log each routine round (nor "no snapshot: None").
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from test_cli import nx

README = Path(__file__).parent.parent / "README.md"
NXSTORE = [sys.executable, "-m", "nxstore.cli"]
_READY_RE = re.compile(r"serving site \S+ \(cluster \w+\) on 127\.0\.0\.1:\d+")


def readme_block(after: str) -> list[str]:
    """The commands of the first ```sh block after the text `after` in README.md: one per
    logical line (backslash continuations joined), comments dropped, [optional] parts kept."""
    text = README.read_text()
    start = text.index("```sh\n", text.index(after)) + len("```sh\n")
    body = text[start:text.index("```", start)].replace("\\\n", " ")
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in body.splitlines())
    return [re.sub(r"\[([^\]|]*)\]", r"\1", " ".join(line.split())) for line in lines if line]


def command(block: list[str], prefix: str) -> str:
    """The one line of `block` starting with `prefix`."""
    (line,) = [c for c in block if c.startswith(prefix)]
    return line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Shell:
    """Runs README lines in `root` with the substitutions of the module docstring."""

    def __init__(self, root: Path, addresses: dict[str, int]) -> None:
        self.root = root
        (root / "srv").mkdir()
        self.addresses = addresses  # README HOST:PORT -> the free port used instead
        self.daemons: list[Daemon] = []

    def _argv(self, line: str) -> list[str]:
        line = line.replace("/srv/", f"{self.root}/srv/")
        for address, port in self.addresses.items():
            line = line.replace(address, f"127.0.0.1:{port}")
        argv = shlex.split(line)
        assert argv[0] == "nxstore", line
        return [*NXSTORE, *argv[1:]]

    def run(self, line: str) -> subprocess.CompletedProcess:
        """A README line: an `nxstore` command (its exit status must be 0), else bash."""
        if not line.startswith("nxstore "):
            proc = subprocess.run(["bash", "-c", f"umask 077; {line}"], cwd=self.root,
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            return proc
        argv = self._argv(line)
        proc = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (
            f"{line}: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def serve(self, line: str) -> Daemon:
        """A README `nxstore serve` line (a trailing & is what this does), ready to serve."""
        d = Daemon(self._argv(line.removesuffix("&").strip()), self.root)
        self.daemons.append(d)
        d.wait_for(_READY_RE)
        return d

    def cleanup(self) -> None:
        for d in self.daemons:
            d.kill()


class Daemon:
    """A background `nxstore serve`; its stderr lines are kept in `lines`."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def matches(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        return [m for line in list(self.lines) if (m := pattern.search(line))]

    def wait_for(self, pattern: re.Pattern[str], count: int = 1, timeout: float = 90.0
                 ) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        while len(found := self.matches(pattern)) < count:
            assert self.proc.poll() is None, "\n".join(self.lines)
            assert time.monotonic() < deadline, (f"no {pattern.pattern!r} x{count} in:\n"
                                                 + "\n".join(self.lines))
            time.sleep(0.05)
        return found

    def stop(self) -> str:
        """SIGTERM; assert a clean exit; its stderr."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(60) == 0, "\n".join(self.lines)
        self._reader.join(10)
        text = "\n".join(self.lines)
        assert "Traceback" not in text, text
        return text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_until(what, timeout: float = 90.0):  # noqa: ANN001, ANN201
    """Poll `what()` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, f"timed out waiting for {what.__doc__ or what}"
        time.sleep(0.1)
    return value


def test_clock_file_example_fires_a_schedule_made_before(tmp_path):
    sh = Shell(tmp_path, {"127.0.0.1:7401": free_port()})
    france = tmp_path / "srv" / "france"
    try:
        sh.run(command(readme_block("## Replication between sites"), "(umask 077; "))  # the secret
        nx("create", france, "--block-size", "4K")
        nx("vdisk", "create", france, "db", "1M")
        nx("pd", "create", france, "pd-web", "db")
        # Made on the real clock, long after the README's simulated 2026-01-05 08:00.
        added = nx("pd", "schedule", france, "pd-web", "--every", "1h", "--keep", "2").stdout
        assert added.strip() == "added schedule 1: every 1h, keep 2"
        listed = nx("pd", "schedule", france, "pd-web").stdout
        assert "next at the scheduler's first pass" in listed, listed
        block = readme_block("--clock-file FILE` makes")
        assert len(block) == 3, block
        sh.run(block[0])                                   # echo 1767600000 > clock
        d = sh.serve(block[1])                             # nxstore serve ... --clock-file clock
        run_re = re.compile(r"schedule run: PD pd-web schedule 1: snapshot (\S+) ")
        d.wait_for(run_re)                                 # the first pass anchors the slot
        sh.run(block[2])                                   # one simulated hour later
        d.wait_for(run_re, 2)
        shown = json.loads(sh.run("nxstore pd show /srv/france pd-web --json").stdout)  # forwarded
        d.stop()
        assert [s["created_at"] for s in shown["snapshot_list"]] == [1767600000, 1767603600]
        (sched,) = shown["schedules"]
        assert sched["next_due"] == 1767603600 + 3600
        assert len(d.matches(run_re)) == 2                 # nothing fired on the real clock
    finally:
        sh.cleanup()


def test_named_lws_reaches_the_remote_and_restores(tmp_path):
    canada_port, france_port = free_port(), free_port()
    # The README has canada at canada.example:7400 and both daemons on 0.0.0.0:7400
    # (two machines); here one 127.0.0.1 port each.
    sh = Shell(tmp_path, {"canada.example:7400": canada_port})
    france, canada = tmp_path / "srv" / "france", tmp_path / "srv" / "canada"
    try:
        replication = readme_block("## Replication between sites")
        sh.run(command(replication, "(umask 077; "))
        for path in (france, canada):
            nx("create", path, "--block-size", "4K")
        for name in ("db", "log"):
            nx("vdisk", "create", france, name, "256K")
        nx("pd", "create", france, "pd-web", "db", "log")
        sh.addresses["0.0.0.0:7400"] = canada_port
        sh.serve(command(replication, "nxstore serve /srv/canada"))
        sh.run(command(replication, "nxstore site add /srv/france canada"))

        nearsync = readme_block("From the command line (on a live site")
        sh.run(command(nearsync, "nxstore pd schedule /srv/france"))
        sh.addresses["0.0.0.0:7400"] = france_port
        fr = sh.serve(command(nearsync, "nxstore serve /srv/france"))

        def state() -> dict:
            out = sh.run("nxstore pd nearsync /srv/france pd-web --json").stdout
            return json.loads(out).get("canada", {})

        wait_until(lambda: state().get("state") == "nearsync")  # seeded by the first pass

        image = tmp_path / "before.raw"
        image.write_bytes(os.urandom(256 << 10))
        nx("import", france, "db", image)                   # forwarded to france's daemon
        out = sh.run(command(nearsync, "nxstore lws /srv/france db log")).stdout
        m = re.match(r"LWS before-upgrade \(marker seq (\d+)\) of db, log at .*; protection "
                     r"domain pd-web ships it with its next NearSync round", out)
        assert m, out
        later = tmp_path / "after.raw"
        later.write_bytes(os.urandom(64 << 10))
        nx("import", france, "db", later)                   # a later write: not in the LWS
        wait_until(lambda: state().get("shipped_seq", 0) > int(m.group(1)), timeout=120)

        points = sh.run(command(nearsync, "nxstore pd restore-points /srv/canada")).stdout
        assert "before-upgrade" in [p["name"] for p in json.loads(points)], points
        restored = sh.run(command(nearsync, "nxstore pd restore-point /srv/canada")).stdout
        assert restored.startswith("restored lws before-upgrade of "), restored
        nx("export", canada, "restored-db", tmp_path / "out.raw")  # forwarded to canada's
        assert (tmp_path / "out.raw").read_bytes() == image.read_bytes()

        log = fr.stop()
        assert "no snapshot" not in log and ": None" not in log, log
        runs = [line for line in fr.lines if "schedule run:" in line]
        # Routine rounds (an LWS shipped, nothing else) are DEBUG; the seed is INFO.
        assert runs and all(": LWS " not in line or " with snapshot " in line for line in runs)
        assert "snapshot" in runs[0] and "replicated to canada" in runs[0], runs
    finally:
        sh.cleanup()
