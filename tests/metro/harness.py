"""A world of real processes on 127.0.0.1 for the Metro scenario tests, and a model of the
writes they acknowledged.

    world = World(tmp_path)
    a, b = world.site("a"), world.site("b")     # `nxstore serve` each, clusters tmp_path/a, /b
    world.connect("a", "b")                     # a's site entry for b -> world.link("a", "b")
    w = world.start_process("w", [...witness argv...], r"listening on 127\\.0\\.0\\.1:(?P<port>\\d+)")
    world.link("a", "w").address                # the address a must be given for the witness
    world.link("a", "b").set_mode("stall")      # a LinkProxy (link_proxy.py)
    model = AckModel(8 << 20)
    writer = Writer(a, "db", model); writer.start(); writer.wait_acked(20); world.kill("a")
    model.check(world["b"].read("a:db"), where="b")
    world.close()

Every inter-node link has its own LinkProxy per direction of connection initiation:
`link(src, dst)` is the proxy `src` dials to reach `dst` (made on first use). A node that is
restarted (`World.restart`, `Site.start`) gets a new port and every link to it is re-pointed
there; a stopped or killed node's links point nowhere (connections to it are closed), so a
stale port another process reused is never dialled.

Commands run inside a site's daemon through its admin socket (nxstore.cli.admin), as
`nxstore` itself forwards them; a stopped site runs them in a subprocess. Every wait is
bounded and waits for a signal (a log line, a reply, a byte count), never for a guessed time.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from link_proxy import LinkProxy
from model import pattern

import nxstore
from nxstore.cli import admin
from nxstore.errors import NxError

sys.path.insert(0, str(Path(__file__).parent.parent / "replication"))
from sites_helper import NXSTORE, Daemon  # noqa: E402

SECRET = "the metro test secret, 32+ chars"
COMMAND_TIMEOUT_S = 120.0  # a command that takes longer is a hang, not a slow machine
START_TIMEOUT_S = 30.0
STATUSES = ("pending", "acked", "failed", "unsent")


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str

    @property
    def error(self) -> str:
        """The last `nxstore: error:` line ('' if none)."""
        lines = [x for x in self.stderr.splitlines() if x.startswith("nxstore: error: ")]
        return lines[-1] if lines else ""


def run_nx(args: list[str], timeout: float = COMMAND_TIMEOUT_S) -> Result:
    """`nxstore ARGS` as a subprocess (it forwards to a daemon by itself when one serves)."""
    p = subprocess.run([*NXSTORE, *args], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return Result(p.returncode, p.stdout, p.stderr)


def forwarded(path: str, args: list[str],
              timeout: float | None = COMMAND_TIMEOUT_S) -> Result | None:
    """`nxstore ARGS` run by the daemon serving `path` (admin socket); None when no daemon
    answers there; rc 1 when the daemon died before replying. AssertionError when no reply
    comes within `timeout` s (None: wait for ever); the command may still run on then: the
    daemon does not stop it."""
    box: list[Result | None | BaseException] = []

    def ask() -> None:
        try:
            reply = admin.forward(path, args)
            box.append(None if reply is None else Result(int(reply.get("rc", 1)),
                                                         str(reply.get("stdout", "")),
                                                         str(reply.get("stderr", ""))))
        except (OSError, ValueError, NxError) as exc:  # the daemon died mid-command
            box.append(exc)

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AssertionError(f"nxstore {' '.join(args)}: no reply from the daemon in {timeout} s")
    if isinstance(box[0], BaseException):
        return Result(1, "", f"nxstore: error: admin socket: {box[0]}\n")
    return box[0]


def wait_line(lines: list[str], regex: str | re.Pattern, timeout: float,
              start: int = 0, alive: Callable[[], bool] = lambda: True) -> re.Match:
    """The first line from index `start` of the growing list `lines` matching `regex`.
    AssertionError (with the lines) after `timeout` s or once `alive()` is False and no
    line matched."""
    rx = re.compile(regex)
    deadline = time.monotonic() + timeout
    i = start
    while True:
        while i < len(lines):
            m = rx.search(lines[i])
            if m:
                return m
            i += 1
        running = alive()
        if not running or time.monotonic() > deadline:
            if i < len(lines):  # lines that arrived just before it ended
                continue
            raise AssertionError(f"no line matching {rx.pattern!r} "
                                 f"({'exited' if not running else f'after {timeout:g} s'}):\n"
                                 + "\n".join(lines[start:]))
        time.sleep(0.01)  # polling a log a reader thread fills; bounded by the deadline


# -- nodes -----------------------------------------------------------------------------------
PortListener = Callable[[str, "int | None"], None]  # (node name, new port or None: down)


class Site:
    """One cluster directory and, while it runs, its `nxstore serve` daemon."""

    def __init__(self, path: Path, secret_file: Path, serve_args: tuple[str, ...],
                 on_port: PortListener) -> None:
        self.path = path
        self.name = path.name  # the site name: `nxstore create` makes it the basename
        self.secret_file = secret_file
        self.serve_args = serve_args
        self.daemon: Daemon | None = None
        self.log: list[str] = []  # stderr lines of every daemon this site ran, in order
        self._on_port = on_port
        self._scratch = path.parent / f".{path.name}.scratch"
        self._scratch.mkdir(exist_ok=True)
        self._exports = itertools.count()

    @property
    def running(self) -> bool:
        return self.daemon is not None and self.daemon.running

    @property
    def port(self) -> int:
        assert self.daemon is not None and self.daemon.running, f"site {self.name} is down"
        return self.daemon.port

    @property
    def lines(self) -> list[str]:
        """The running (or last) daemon's stderr lines."""
        return self.daemon.lines if self.daemon is not None else []

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start `nxstore serve` (a free port) and wait until it serves; links re-pointed."""
        assert not self.running, f"site {self.name} is already running"
        self._retire()
        self.daemon = Daemon.start(str(self.path), str(self.secret_file), *self.serve_args,
                                   timeout=timeout)
        self._on_port(self.name, self.daemon.port)

    def stop(self) -> str:
        """SIGTERM; asserts a clean exit (Daemon.stop); its stderr."""
        assert self.daemon is not None, f"site {self.name} never started"
        self._on_port(self.name, None)
        return self.daemon.stop()

    def kill(self) -> None:
        """SIGKILL: a crash."""
        assert self.daemon is not None, f"site {self.name} never started"
        self._on_port(self.name, None)
        self.daemon.kill()

    def wait_line(self, regex: str, timeout: float = 30.0, start: int = 0) -> re.Match:
        """A line the running daemon logged (from index `start` of `lines`)."""
        d = self.daemon
        assert d is not None, f"site {self.name} never started"
        return wait_line(d.lines, regex, timeout, start, alive=lambda: d.running)

    def nx(self, *args: object, rc: int | None = 0, timeout: float = COMMAND_TIMEOUT_S) -> Result:
        """`nxstore ARGS`, inside the daemon while it serves (else a subprocess). `rc`: the
        exit status asserted (None: any); a traceback always fails."""
        argv = [str(a) for a in args]
        result = forwarded(str(self.path), argv, timeout) if self.running else None
        if result is None:
            result = run_nx(argv, timeout)
        assert "Traceback" not in result.stderr, result.stderr
        assert rc is None or result.rc == rc, (
            f"site {self.name}: nxstore {' '.join(argv)}: rc {result.rc} != {rc}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def read(self, vdisk: str, timeout: float = COMMAND_TIMEOUT_S) -> bytes:
        """The whole image of `vdisk` (or VDISK@SNAP), read with `nxstore export`."""
        out = self._scratch / f"export-{next(self._exports)}.img"  # readers may overlap
        self.nx("export", self.path, vdisk, out, timeout=timeout)
        try:
            return out.read_bytes()
        finally:
            out.unlink()

    def scratch_file(self, name: str) -> Path:
        """A path for a temporary file of this site's commands."""
        return self._scratch / name

    def cleanup(self) -> None:
        """Kill the daemon if it still runs (teardown; no assertions)."""
        if self.daemon is not None:
            self.daemon.cleanup()
        self._retire()

    def _retire(self) -> None:
        if self.daemon is not None and not self.daemon.running:
            self.log.extend(self.daemon.lines)
            self.daemon = None


class Process:
    """A helper process (the witness) that prints a readiness line on stdout or stderr;
    `ready` may name a group `port`: the port it listens on (then links can reach it)."""

    def __init__(self, name: str, argv: list[str], ready: str, on_port: PortListener) -> None:
        self.name = name
        self.argv = argv
        self.ready = re.compile(ready)
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []  # stdout and stderr, of every run, in order
        self.match: re.Match | None = None
        self._on_port = on_port

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def port(self) -> int:
        assert self.running and self.match is not None, f"{self.name} is down"
        return int(self.match["port"])

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start it and wait for its readiness line; links re-pointed at its port."""
        assert not self.running, f"{self.name} is already running"
        start = len(self.lines)
        proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.proc = proc
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        try:
            self.match = wait_line(self.lines, self.ready, timeout, start,
                                   alive=lambda: proc.poll() is None)
        except AssertionError:
            self.cleanup()
            raise
        if "port" in self.ready.groupindex:
            self._on_port(self.name, self.port)

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; its exit status (a traceback in its output fails)."""
        assert self.proc is not None, f"{self.name} never started"
        self._on_port(self.name, None)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.cleanup()
            raise AssertionError(f"{self.name} did not stop on SIGTERM:\n"
                                 + "\n".join(self.lines)) from None
        assert not any("Traceback" in x for x in self.lines), "\n".join(self.lines)
        return rc

    def kill(self) -> None:
        """SIGKILL."""
        assert self.proc is not None, f"{self.name} never started"
        self._on_port(self.name, None)
        self.cleanup()

    def wait_line(self, regex: str, timeout: float = 30.0, start: int = 0) -> re.Match:
        return wait_line(self.lines, regex, timeout, start, alive=lambda: self.running)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()


Node = Site | Process


class World:
    """Sites, helper processes and the LinkProxies between them; `close()` ends them all."""

    def __init__(self, root: Path, *, block_size: int = 4096, secret: str = SECRET) -> None:
        self.root = root
        self.block_size = block_size
        self.secret_file = root / "secret"
        self.secret_file.write_text(secret + "\n")
        self.secret_file.chmod(0o600)  # nxstore refuses a secret file others can read
        self.nodes: dict[str, Node] = {}
        self.links: dict[tuple[str, str], LinkProxy] = {}

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def site(self, name: str, *serve_args: str, start: bool = True) -> Site:
        """A new cluster `root/name` (site `name`) served by `nxstore serve ... SERVE_ARGS`
        (started unless `start` is False)."""
        assert name not in self.nodes, name
        path = self.root / name
        nxstore.Cluster.create(str(path), block_size=self.block_size, background=False).close()
        s = Site(path, self.secret_file, serve_args, self._port_changed)
        self.nodes[name] = s
        if start:
            s.start()
        return s

    def start_process(self, name: str, argv: list[str], ready: str,
                      timeout: float = START_TIMEOUT_S) -> Process:
        """Start `argv` and wait for a line matching `ready` (see Process)."""
        assert name not in self.nodes, name
        p = Process(name, argv, ready, self._port_changed)
        self.nodes[name] = p
        p.start(timeout)
        return p

    def link(self, src: str, dst: str) -> LinkProxy:
        """The proxy `src` dials to reach node `dst` (made, pointing at dst, on first use)."""
        key = (src, dst)
        if key not in self.links:
            node = self.nodes[dst]
            self.links[key] = LinkProxy(node.port if node.running else None,
                                        name=f"{src}->{dst}")
        return self.links[key]

    def connect(self, a: str, b: str) -> None:
        """Register each of sites a and b as a remote site of the other, through its link."""
        for src, dst in ((a, b), (b, a)):
            site = self.nodes[src]
            assert isinstance(site, Site), src
            site.nx("site", "add", site.path, dst, self.link(src, dst).address,
                    "--secret-file", self.secret_file)

    def restart(self, name: str) -> None:
        """Stop node `name` cleanly (if running) and start it again (new port, links follow)."""
        node = self.nodes[name]
        if node.running:
            node.stop()
        node.start()

    def _port_changed(self, name: str, port: int | None) -> None:
        for (_, dst), proxy in self.links.items():
            if dst == name:
                proxy.set_target(port)

    def close(self) -> None:
        """Kill every node still running and close every link (teardown; no assertions)."""
        for node in self.nodes.values():
            node.cleanup()
        for proxy in self.links.values():
            proxy.close()


# -- the model of acknowledged writes -------------------------------------------------------
@dataclass(eq=False)
class Write:
    """One write of `length` bytes of pattern(`seed`) at `offset` of a logical vDisk, sent
    to `site` (where the vDisk is named `vdisk`). `status`: pending (sent, no answer yet),
    acked (the command returned 0: durable), failed (an error or a lost answer: it may or may
    not have landed), unsent (no daemon took it: it did not land)."""

    id: int
    site: str
    vdisk: str
    offset: int
    length: int
    seed: int
    issued: int  # AckModel event counter when sent
    settled: int | None = None  # ... when its outcome became known
    status: str = "pending"
    error: str = ""

    def data(self) -> bytes:
        return pattern(self.seed, self.length)


@dataclass
class AckModel:
    """What one logical vDisk of `size` bytes must hold, given the writes sent to it and
    those acknowledged, at `grain` granularity (every write covers whole grains).

    A grain must read as the newest acknowledged write covering it (or `initial`), or as
    another write that may have landed after it: any write covering the grain that was not
    settled when that acknowledged write was sent (pending, failed, or acknowledged but
    concurrent with it). Writes settled before it was sent are overwritten. Unsent writes
    never land. A grain holding anything else (a lost acknowledged write, a torn grain,
    foreign bytes) is a problem. Writers may share a model, concurrently too."""

    size: int
    grain: int = 4096
    initial: bytes | None = None
    writes: list[Write] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.size % self.grain == 0, "the size must be whole grains"
        self._expected = bytearray(self.initial if self.initial is not None else self.size)
        assert len(self._expected) == self.size
        self._maybe: dict[int, list[Write]] = {}  # grain -> writes that may be there instead
        self._events = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def acked(self) -> list[Write]:
        return [w for w in self.writes if w.status == "acked"]

    def issue(self, site: str, vdisk: str, offset: int, length: int, seed: int) -> Write:
        """Record a write about to be sent (pending: it may land from now on)."""
        assert offset % self.grain == 0 and length % self.grain == 0 and length > 0, \
            (offset, length)
        assert offset + length <= self.size, (offset, length)
        with self._lock:
            w = Write(len(self.writes), site, vdisk, offset, length, seed, next(self._events))
            self.writes.append(w)
            for g in self._grains(w):
                self._maybe.setdefault(g, []).append(w)
        return w

    def settle(self, w: Write, status: str, error: str = "") -> None:
        """Record the outcome of `w`: acked, failed or unsent (see Write)."""
        assert status in STATUSES[1:] and w.status == "pending", (status, w.status)
        with self._lock:
            w.status, w.error, w.settled = status, error, next(self._events)
            if status == "unsent":
                for g in self._grains(w):
                    self._maybe[g].remove(w)
            elif status == "acked":
                self._expected[w.offset:w.offset + w.length] = w.data()
                for g in self._grains(w):  # what settled before w was sent is overwritten
                    self._maybe[g] = [m for m in self._maybe[g]
                                      if m.settled is None or m.settled > w.issued]

    def problems(self, image: bytes, limit: int = 20) -> list[str]:
        """What is wrong with `image` (at most `limit` grains); [] when it holds every
        acknowledged write."""
        if len(image) != self.size:
            return [f"image is {len(image)} bytes, not {self.size}"]
        gs = self.grain
        with self._lock:
            have = np.frombuffer(image, np.uint8).reshape(-1, gs)
            want = np.frombuffer(bytes(self._expected), np.uint8).reshape(-1, gs)
            out = []
            for g in np.nonzero((have != want).any(axis=1))[0].tolist():
                got = image[g * gs:(g + 1) * gs]
                if any(got == m.data()[g * gs - m.offset:(g + 1) * gs - m.offset]
                       for m in self._maybe.get(g, ())):
                    continue
                out.append(self._explain(g, got))
                if len(out) >= limit:
                    break
            return out

    def check(self, image: bytes, where: str = "") -> None:
        """AssertionError listing the problems of `image` (read at `where`), if any."""
        found = self.problems(image)
        assert not found, f"{where or 'image'}: {len(found)}+ bad grains:\n" + "\n".join(found)

    def _grains(self, w: Write) -> range:
        return range(w.offset // self.grain, (w.offset + w.length) // self.grain)

    def _explain(self, g: int, got: bytes) -> str:
        last = next((w for w in reversed(self.writes) if w.status == "acked"
                     and g in self._grains(w)), None)
        who = f"acked write #{last.id} (site {last.site})" if last else "the initial content"
        what = "zeros" if got == bytes(len(got)) else "other bytes"
        return (f"grain {g} (offset {g * self.grain}): holds {what}, not {who} nor any of "
                f"{len(self._maybe.get(g, ()))} writes that may have landed after it")


def assert_identical(a: bytes, b: bytes, what: str = "", grain: int = 4096) -> None:
    """AssertionError naming the first differing grains of images `a` and `b`."""
    if a == b:
        return
    assert len(a) == len(b), f"{what}: sizes differ: {len(a)} != {len(b)}"
    diff = np.nonzero((np.frombuffer(a, np.uint8).reshape(-1, grain)
                       != np.frombuffer(b, np.uint8).reshape(-1, grain)).any(axis=1))[0]
    raise AssertionError(f"{what}: {len(diff)} grains of {grain} bytes differ, first at "
                         f"offsets {[int(g) * grain for g in diff[:8]]}")


# -- the writer ------------------------------------------------------------------------------
class Pending:
    """A write in flight: `wait(timeout)` -> its Write once settled, None if still pending."""

    def __init__(self, write: Write) -> None:
        self.write = write
        self.done = threading.Event()

    def wait(self, timeout: float) -> Write | None:
        return self.write if self.done.wait(timeout) else None


class Writer:
    """Writes to vDisk `vdisk` of a served site with `nxstore vdisk write` (run in its
    daemon through the admin socket: acked = the command returned 0 after its flush), one
    write at a time, each recorded in `model`. Writes cover whole grains of the model."""

    def __init__(self, site: Site, vdisk: str, model: AckModel, *, seed: int = 0,
                 max_grains: int = 8) -> None:
        self.site = site
        self.vdisk = vdisk
        self.model = model
        self.max_grains = max_grains
        self.writes: list[Write] = []
        self.stopped_by: Write | None = None  # the write that ended the background loop
        self._rng = random.Random(seed)
        self._seeds = itertools.count(seed * 1_000_003 + 1)
        self._current: Pending | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None

    @property
    def acked(self) -> list[Write]:
        return [w for w in self.writes if w.status == "acked"]

    def submit(self, offset: int, length: int) -> Pending:
        """Send one write now (in a thread); the previous one must have settled."""
        assert self._current is None or self._current.done.is_set(), \
            "one write at a time: the previous one is still pending"
        w = self.model.issue(self.site.name, self.vdisk, offset, length, next(self._seeds))
        self.writes.append(w)
        p = self._current = Pending(w)
        threading.Thread(target=self._send, args=(p,), daemon=True).start()
        return p

    def write(self, offset: int, length: int, timeout: float = COMMAND_TIMEOUT_S) -> Write:
        """Send one write and wait for its outcome (AssertionError if none in `timeout`)."""
        w = self.submit(offset, length).wait(timeout)
        assert w is not None, f"write at {offset} to {self.site.name}:{self.vdisk} still " \
                              f"pending after {timeout:g} s"
        return w

    def random_write(self) -> Pending:
        g = self.model.grain
        n = self._rng.randint(1, self.max_grains)
        return self.submit(self._rng.randrange(self.model.size // g - n + 1) * g, n * g)

    def start(self) -> None:
        """Write random ranges one after another in a thread until `stop()` or the first
        write that is not acknowledged (then `stopped_by` is that write)."""
        assert self._loop is None, "already started"
        self._stop.clear()
        self._loop = threading.Thread(target=self._run, daemon=True)
        self._loop.start()

    def stop(self, timeout: float = COMMAND_TIMEOUT_S) -> None:
        """End the loop after the current write settles, waiting at most `timeout` s; a
        write still pending then stays pending (recorded as possibly landed)."""
        self._stop.set()
        if self._loop is not None:
            self._loop.join(timeout)
            self._loop = None

    def wait_acked(self, n: int, timeout: float = COMMAND_TIMEOUT_S) -> None:
        """Block until this writer has `n` acknowledged writes. AssertionError after
        `timeout` s or if the loop ended first."""
        with self._changed:
            ok = self._changed.wait_for(
                lambda: len(self.acked) >= n or self.stopped_by is not None, timeout)
        assert ok and len(self.acked) >= n, (
            f"{len(self.acked)} of {n} writes acked; stopped by "
            f"{self.stopped_by and (self.stopped_by.status, self.stopped_by.error)}")

    def _run(self) -> None:
        while not self._stop.is_set():
            p = self.random_write()
            # Even once stop() is asked, the current write settles first (stop's contract);
            # stop() gives up on one that never ends after its timeout, leaving it pending.
            p.done.wait()
            if p.write.status != "acked":
                with self._changed:
                    self.stopped_by = p.write
                    self._changed.notify_all()
                return

    def _send(self, p: Pending) -> None:
        w = p.write
        f = self.site.scratch_file(f"write-{os.getpid()}-{id(self.model)}-{w.id}.bin")
        f.write_bytes(w.data())
        try:
            r = forwarded(str(self.site.path),
                          ["vdisk", "write", str(self.site.path), w.vdisk, str(w.offset), str(f)],
                          timeout=None)
        finally:
            f.unlink(missing_ok=True)
        if r is None:
            self.model.settle(w, "unsent", "no daemon serves the site")
        elif r.rc == 0:
            self.model.settle(w, "acked")
        else:
            self.model.settle(w, "failed", r.error or r.stderr.strip())
        p.done.set()
        with self._changed:
            self._changed.notify_all()
