"""The Metro witness: a real `nxstore witness` on 127.0.0.1 and `WitnessClient`.

Compare-and-set semantics, exactly one winner among concurrent CASes, durability across
SIGKILL, a damaged state file (every byte) that keeps it from starting, the client's errors
(wrong secret, garbage, closed port, silent server, wrong answers) and the CLI's."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time

import pytest
from test_cli import nx, one_error_line
from witness_helper import SECRET, InProcessWitness, LoopThread, WitnessDaemon

import nxstore.metro.witness as witness_module
from nxstore.errors import (
    AuthenticationError,
    ConnectionClosed,
    Corruption,
    InvalidArgument,
    Locked,
    NxError,
    ProtocolError,
    WitnessUnreachable,
)
from nxstore.metro.witness import WitnessRecord, WitnessStore, read_state, serve_until
from nxstore.metro.witness_client import WitnessClient
from nxstore.replication import SiteIdentity, connect, serve
from nxstore.replication.messages import (
    Error,
    ErrorCode,
    GetSnapshots,
    Pong,
    WitnessCas,
    WitnessGet,
    WitnessState,
)

PAIR = "5f0c8e2a9b7d4c1e8a6f3b2d1c0e9f8a"


def client(address: str, site: str = "paris", secret: str = SECRET,
           timeout: float = 10.0) -> WitnessClient:
    return WitnessClient(address, secret, site, f"cluster-{site}", timeout=timeout)


# --- semantics ------------------------------------------------------------------------


def test_get_and_compare_and_set(start_witness):
    w = start_witness()
    paris, tokyo = client(w.address, "paris"), client(w.address, "tokyo")
    assert paris.get(PAIR) is None
    assert paris.witness_id == w.witness_id

    ok, rec = paris.cas(PAIR, 0, 1, "paris")
    assert ok and (rec.pair, rec.epoch, rec.active_site, rec.changed_by) == (PAIR, 1, "paris",
                                                                               "paris")
    # The loser learns who won; nothing changes.
    assert tokyo.cas(PAIR, 0, 2, "tokyo") == (False, rec)
    assert tokyo.cas(PAIR, 3, 4, "tokyo") == (False, rec)
    # A site may install another site (a planned switch); epochs may skip.
    ok, rec2 = tokyo.cas(PAIR, 1, 5, "tokyo")
    assert ok and (rec2.epoch, rec2.active_site, rec2.changed_by) == (5, "tokyo", "tokyo")
    assert rec2.changed_at >= rec.changed_at
    assert paris.get(PAIR) == rec2
    # A pair without a record: not applied, epoch 0, no names.
    assert paris.cas("other", 1, 2, "paris") == (False, WitnessRecord("other", 0, "", "", 0.0))
    assert paris.get("other") is None
    assert 0 < paris.ping() < 10

    for bad in [(PAIR, 5, 5, "paris"), (PAIR, 5, 4, "paris"), (PAIR, -1, 1, "paris"),
                (PAIR, 0, 2**63, "paris"), (PAIR, 0, 1, ""), (PAIR, 0, 1, "a:b"),
                ("", 0, 1, "paris"), (PAIR, True, 2, "paris"), (PAIR, 0, 1.0, "paris")]:
        with pytest.raises(InvalidArgument):
            paris.cas(*bad)
    assert paris.get(PAIR) == rec2
    assert "pair " + PAIR + ": epoch 1 -> 5, active site tokyo (asked by tokyo)" in w.stop()


def _race(clients: list[WitnessClient], sites: list[str], expect: int, spread: bool) -> list:
    """Every client's cas(PAIR, expect, ...) at once (a barrier); their answers in order.
    The new epochs are all expect + 1, or (spread) expect + 1 + the client's index."""
    barrier = threading.Barrier(len(clients))
    results: list = [None] * len(clients)

    def one(i: int) -> None:
        barrier.wait(30)
        results[i] = clients[i].cas(PAIR, expect, expect + 1 + (i if spread else 0), sites[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in results), results
    return results


def test_concurrent_cas_exactly_one_wins(start_witness):
    w = start_witness()
    sites = [f"site{i}" for i in range(8)]
    clients = [client(w.address, s) for s in sites]
    epoch = 0
    for round_ in range(6):
        results = _race(clients, sites, epoch, spread=bool(round_ % 2))
        winners = [i for i, (ok, _) in enumerate(results) if ok]
        assert len(winners) == 1, results
        won = results[winners[0]][1]
        assert won.active_site == sites[winners[0]] == won.changed_by
        assert all(rec == won for _, rec in results)
        assert clients[0].get(PAIR) == won
        epoch = won.epoch
    w.stop()


def test_every_answered_cas_survives_sigkill(start_witness, tmp_path):
    data = str(tmp_path / "witness")
    w = start_witness(data)
    witness_id = w.witness_id
    expected: dict[str, WitnessRecord] = {}
    for n in range(3):
        pair = f"pair{n}"
        ok, rec = client(w.address).cas(pair, 0, 10 + n, "paris")
        assert ok
        expected[pair] = rec
        w.kill()  # right after the answer: no chance to write anything more
        w = start_witness(data)
        assert w.witness_id == witness_id
        c = client(w.address, "tokyo")
        assert {p: c.get(p) for p in expected} == expected
    # The restarted witness goes on from the stored epoch, not from scratch.
    assert client(w.address).cas("pair0", 0, 1, "tokyo") == (False, expected["pair0"])
    w.stop()


def test_stop_keeps_the_state_and_status_shows_it(start_witness, tmp_path):
    data = str(tmp_path / "witness")
    w = start_witness(data)
    client(w.address, "paris").cas(PAIR, 0, 3, "paris")
    client(w.address, "tokyo").cas("b" + PAIR[1:], 0, 1, "tokyo")
    # status works while the witness runs (the file is replaced atomically)
    doc = json.loads(nx("witness", "status", "--data", data, "--json").stdout)
    assert doc["witness_id"] == w.witness_id
    assert [(p["pair"], p["epoch"], p["active_site"], p["changed_by"]) for p in doc["pairs"]] == [
        (PAIR, 3, "paris", "paris"), ("b" + PAIR[1:], 1, "tokyo", "tokyo")]
    w.stop()
    out = nx("witness", "--data", data, "status").stdout.splitlines()
    assert out[0] == f"witness {w.witness_id}: 2 Metro pairs in {data}/witness.state"
    assert out[1].split() == ["PAIR", "EPOCH", "ACTIVE", "SITE", "CHANGED", "BY", "CHANGED"]
    assert out[2].split()[:4] == [PAIR, "3", "paris", "paris"]
    w = start_witness(data)
    assert "serving 2 Metro pairs from" in w.stderr
    assert client(w.address).get(PAIR).epoch == 3
    w.stop()


# --- the state file -----------------------------------------------------------------


def _state_file(tmp_path) -> tuple[str, bytes]:
    """A data directory whose state file holds two records; (directory, file bytes)."""
    data = str(tmp_path / "state")
    with WitnessStore.open(data) as store:
        assert store.cas(PAIR, 0, 4, "paris", "paris")[0]
        assert store.cas("second", 0, 1, "tokyo", "paris")[0]
    with open(os.path.join(data, "witness.state"), "rb") as f:
        return data, f.read()


def _mutations(good: bytes):
    """(name, bytes): every byte flipped, every truncation, an extension."""
    for i in range(len(good)):
        yield f"flip byte {i}", good[:i] + bytes([good[i] ^ 0x01]) + good[i + 1:]
    for n in range(len(good)):
        yield f"truncated to {n}", good[:n]
    yield "extended", good + b"\0"


def test_every_damage_of_the_state_file_is_refused(tmp_path):
    data, good = _state_file(tmp_path)
    path = os.path.join(data, "witness.state")
    assert len(good) > 100  # header (40) + payload
    for name, bad in _mutations(good):
        with open(path, "wb") as f:
            f.write(bad)
        with pytest.raises(Corruption, match="witness state .* is damaged") as ei:
            WitnessStore.open(data)
        assert "two sites active" in str(ei.value), name
        with open(path, "rb") as f:
            assert f.read() == bad, f"{name}: the damaged file was changed"
    with open(path, "wb") as f:
        f.write(good)
    assert read_state(data)[1][0] == WitnessRecord(PAIR, 4, "paris", "paris",
                                                   read_state(data)[1][0].changed_at)


def test_checksummed_but_wrong_payload_is_refused(tmp_path):
    from nxstore.constants import WITNESS_STATE_MAGIC, WITNESS_STATE_VERSION
    from nxstore.store.fileutil import write_checksummed

    data = str(tmp_path / "state")
    os.makedirs(data)
    for payload in [b"not json", b'{"pairs": []}', b'{"witness_id": "x", "pairs": [["p", 0, '
                    b'"a", "a", 1.0]]}', b'{"witness_id": "x", "pairs": [["p", 1, "a", "a", 1.0],'
                    b' ["p", 2, "a", "a", 1.0]]}']:
        write_checksummed(os.path.join(data, "witness.state"), WITNESS_STATE_MAGIC,
                          WITNESS_STATE_VERSION, [payload])
        with pytest.raises(Corruption, match="not a witness state"):
            WitnessStore.open(data)


@pytest.mark.parametrize("where", ["header", "body", "truncated", "empty"])
def test_damaged_state_file_stops_the_cli(tmp_path, secret_file, where):
    data, good = _state_file(tmp_path)
    bad = {"header": b"X" + good[1:], "body": good[:-2] + b"]]",
           "truncated": good[:60], "empty": b""}[where]
    with open(os.path.join(data, "witness.state"), "wb") as f:
        f.write(bad)
    err = one_error_line(nx("witness", "--listen", "127.0.0.1:0", "--secret-file", secret_file,
                            "--data", data, rc=1), "witness state", "is damaged")
    assert "witness.state" in err
    one_error_line(nx("witness", "status", "--data", data, rc=1), "is damaged")
    with open(os.path.join(data, "witness.state"), "rb") as f:
        assert f.read() == bad


def test_one_witness_per_data_directory(start_witness, secret_file, tmp_path):
    data = str(tmp_path / "witness")
    w = start_witness(data)
    one_error_line(nx("witness", "--listen", "127.0.0.1:0", "--secret-file", secret_file,
                      "--data", data, rc=1), "in use by another witness")
    with pytest.raises(Locked):
        WitnessStore.open(data)
    w.stop()
    WitnessStore.open(data).close()


def test_leftover_temporary_file_is_removed(tmp_path):
    data, good = _state_file(tmp_path)
    tmp = os.path.join(data, "witness.state.tmp.12345")
    with open(tmp, "wb") as f:
        f.write(good[:10])
    with WitnessStore.open(data) as store:
        assert store.get(PAIR).epoch == 4
    assert not os.path.exists(tmp)


def test_a_state_that_cannot_be_written_stops_the_witness(tmp_path, monkeypatch):
    data, good = _state_file(tmp_path)
    w = InProcessWitness(data)
    try:
        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(witness_module, "write_checksummed", no_space)
        c = client(w.address)
        with pytest.raises(WitnessUnreachable, match="could not decide.*No space left"):
            c.cas(PAIR, 4, 5, "tokyo")
        assert w.server.failed.is_set()
        with pytest.raises(NxError, match="No space left"):
            w.loop.run(serve_until(w.server, w.loop.run(_event())))
        with pytest.raises(NxError, match="witness stops"):
            w.store.cas(PAIR, 4, 5, "tokyo", "tokyo")  # the store stays stopped too
    finally:
        w.close()
    with open(os.path.join(data, "witness.state"), "rb") as f:
        assert f.read() == good


async def _event():
    import asyncio

    return asyncio.Event()


def test_pair_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(witness_module, "WITNESS_MAX_PAIRS", 2)
    with InProcessWitness(str(tmp_path / "w")) as w:
        c = client(w.address)
        assert c.cas("a", 0, 1, "paris")[0] and c.cas("b", 0, 1, "paris")[0]
        with pytest.raises(InvalidArgument, match="refused the request.*most Metro pairs"):
            c.cas("c", 0, 1, "paris")
        assert c.cas("a", 1, 2, "tokyo")[0]  # existing pairs still change
        assert c.get("c") is None


# --- the server under raw requests --------------------------------------------------


def test_raw_requests(tmp_path, monkeypatch):
    """Requests the client never sends: refused ones keep the connection, unexpected ones
    close it, an idle connection is closed."""
    monkeypatch.setattr(witness_module, "WITNESS_IDLE_TIMEOUT_S", 0.5)
    identity = SiteIdentity("cluster-raw", "raw")
    with InProcessWitness(str(tmp_path / "w")) as w:
        async def talk():
            t = await connect("127.0.0.1", w.server.port, identity=identity, secret=SECRET)
            replies = []
            for msg in [WitnessCas(PAIR, 3, 3, "paris", req_id=1), WitnessGet("a/b", req_id=2),
                        WitnessCas(PAIR, 0, 1, "x:y", req_id=3),
                        WitnessCas(PAIR, 0, 2, "paris", req_id=4)]:
                await t.send(msg)
                replies.append(await t.recv())
            await t.send(GetSnapshots("raw", "db", "default", req_id=9))
            replies.append(await t.recv())
            with pytest.raises(ConnectionClosed):
                await t.recv()
            await t.close()
            idle = await connect("127.0.0.1", w.server.port, identity=identity, secret=SECRET)
            with pytest.raises(ConnectionClosed):
                await idle.recv()  # closed by the witness after 0.5 s without a request
            await idle.close()
            return replies

        replies = w.loop.run(talk())
        assert [(type(r).__name__, getattr(r, "code", None), r.req_id) for r in replies[:3]] == [
            ("Error", ErrorCode.INVALID, 1), ("Error", ErrorCode.INVALID, 2),
            ("Error", ErrorCode.INVALID, 3)]
        assert replies[3] == WitnessState(PAIR, True, 2, "paris", "raw", replies[3].changed_at,
                                          req_id=4)
        assert isinstance(replies[4], Error) and replies[4].code == ErrorCode.PROTOCOL
        assert client(w.address).get(PAIR).epoch == 2


# --- client errors ------------------------------------------------------------------


def test_wrong_secret(start_witness):
    w = start_witness()
    assert client(w.address).cas(PAIR, 0, 1, "paris")[0]
    wrong = client(w.address, "tokyo", secret="another secret of enough bytes")
    with pytest.raises(AuthenticationError, match=f"witness at {w.address} failed: the shared "
                                                  "secrets differ"):
        wrong.cas(PAIR, 1, 2, "tokyo")
    with pytest.raises(AuthenticationError):
        wrong.ping()
    assert client(w.address).get(PAIR).epoch == 1
    assert "failed authentication" in w.stop()


@contextlib.contextmanager
def raw_server(behave):
    """A plain TCP listener on 127.0.0.1; each accepted socket goes to behave(sock) on a
    thread. Yields the address."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    threads: list[threading.Thread] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            t = threading.Thread(target=behave, args=(conn,), daemon=True)
            t.start()
            threads.append(t)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"127.0.0.1:{lsock.getsockname()[1]}"
    finally:
        stop.set()
        lsock.shutdown(socket.SHUT_RDWR)
        lsock.close()
        acceptor.join(10)
        for t in threads:
            t.join(10)


def _drain(conn: socket.socket) -> None:
    conn.settimeout(30)
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass
    conn.close()


def test_garbage_answer_is_a_protocol_error():
    def junk(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(range(256)))
        _drain(conn)

    with raw_server(junk) as address:
        for call in (lambda c: c.get(PAIR), lambda c: c.cas(PAIR, 0, 1, "paris"),
                     lambda c: c.ping()):
            with pytest.raises(ProtocolError) as ei:
                call(client(address))
            assert not isinstance(ei.value, ConnectionClosed)


def test_closed_port_is_unreachable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(WitnessUnreachable, match=f"cannot reach the witness at 127.0.0.1:{port}: "
                                                 "Connection refused"):
        client(f"127.0.0.1:{port}").cas(PAIR, 0, 1, "paris")


def test_silent_server_is_unreachable_after_the_timeout():
    with raw_server(_drain) as address:
        started = time.monotonic()
        with pytest.raises(WitnessUnreachable, match="did not answer within 0.5 s"):
            client(address, timeout=0.5).get(PAIR)
        assert time.monotonic() - started < 10  # bounded by the timeout, not the handshake's


def test_connection_closed_mid_call_is_unreachable():
    def close_after_hello(conn: socket.socket) -> None:
        conn.recv(10)
        conn.close()

    with raw_server(close_after_hello) as address, \
            pytest.raises(WitnessUnreachable, match="closed the connection"):
        client(address).get(PAIR)


class FakeWitness:
    """A peer that completes the handshake (as `site`) and answers with `answer(request)`."""

    def __init__(self, answer, site: str = "witness") -> None:
        self.loop = LoopThread()

        async def handle(t):
            msg = await t.recv()
            await t.send(answer(msg))
            with contextlib.suppress(NxError):
                await t.recv()

        self.server = self.loop.run(serve("127.0.0.1", 0, handle,
                                          identity=SiteIdentity("fake", site), secret=SECRET))
        self.address = f"127.0.0.1:{self.server.port}"

    def close(self) -> None:
        self.loop.run(self.server.close())
        self.loop.close()


@pytest.mark.parametrize("answer, call, match", [
    (lambda m: WitnessState("other", False, 0, "", "", 0.0, req_id=m.req_id),
     "get", "record of 'other' answers a request about"),
    (lambda m: WitnessState(m.pair, True, 1, "paris", "paris", 0.0, req_id=m.req_id),
     "get", "says ok"),
    (lambda m: WitnessState(m.pair, False, 1, "", "paris", 0.0, req_id=m.req_id),
     "get", "inconsistent record"),
    (lambda m: WitnessState(m.pair, False, 0, "paris", "", 0.0, req_id=m.req_id),
     "get", "inconsistent record"),
    (lambda m: WitnessState(m.pair, True, 2, "tokyo", "tokyo", 0.0, req_id=m.req_id),
     "cas", "answered with epoch 2"),
    (lambda m: WitnessState(m.pair, False, 0, "", "", 0.0, req_id=m.req_id),
     "cas", "although that is the stored epoch"),
    (lambda m: WitnessState(m.pair, False, 1, "a", "a", 0.0, req_id=m.req_id + 1),
     "cas", r"WitnessState \(req 2\) answers WitnessCas \(req 1\)"),
    (lambda m: Pong(0, req_id=m.req_id), "cas", "Pong"),
    (lambda m: Error(int(ErrorCode.NOT_FOUND), "what pair", req_id=m.req_id),
     "get", "answered ERROR 4: what pair"),
])
def test_wrong_answers_are_protocol_errors(answer, call, match):
    fake = FakeWitness(answer)
    try:
        c = client(fake.address)
        with pytest.raises(ProtocolError, match=match):
            c.get(PAIR) if call == "get" else c.cas(PAIR, 0, 1, "paris")
    finally:
        fake.close()


def test_a_site_that_is_not_a_witness_is_refused():
    fake = FakeWitness(lambda m: Pong(0, req_id=m.req_id), site="tokyo")
    try:
        with pytest.raises(ProtocolError, match="is site 'tokyo', not a witness"):
            client(fake.address).ping()
    finally:
        fake.close()


def test_client_arguments():
    for kwargs in [dict(address="nohost"), dict(secret="short"), dict(site_name=""),
                   dict(timeout=0), dict(timeout=float("nan")), dict(timeout=True)]:
        args = dict(address="127.0.0.1:1", secret=SECRET, site_name="paris", cluster_id="c")
        with pytest.raises(InvalidArgument):
            WitnessClient(**{**args, **kwargs})
    c = client("127.0.0.1:1")
    with pytest.raises(InvalidArgument):
        c.get("bad/pair")

    async def from_a_coroutine():
        c.get(PAIR)

    loop = LoopThread()
    try:
        with pytest.raises(InvalidArgument, match="from a thread"):
            loop.run(from_a_coroutine())
    finally:
        loop.close()


# --- the command line ---------------------------------------------------------------


def test_cli_input_errors(tmp_path, secret_file):
    data = str(tmp_path / "w")

    def witness(*args: str, rc: int = 1):
        return nx("witness", *args, rc=rc)

    one_error_line(witness("--listen", "127.0.0.1:0", "--secret-file", str(tmp_path / "none"),
                           "--data", data), "cannot read secret file")
    loose = tmp_path / "loose"
    loose.write_text(SECRET)
    loose.chmod(0o644)
    one_error_line(witness("--listen", "127.0.0.1:0", "--secret-file", str(loose), "--data", data),
                   "is mode 644", "chmod 600")
    short = tmp_path / "short"
    short.write_text("tiny")
    short.chmod(0o600)
    one_error_line(witness("--listen", "127.0.0.1:0", "--secret-file", str(short), "--data", data),
                   "at least 16")
    for address in ("nohost", "127.0.0.1:99999", "127.0.0.1:", ":5"):
        one_error_line(witness("--listen", address, "--secret-file", secret_file, "--data", data),
                       "bad address")
    one_error_line(witness("--secret-file", secret_file, rc=2), "needs --listen and --secret-file")
    one_error_line(witness("status", "--data", str(tmp_path / "nothing")), "no witness state")
    assert not os.path.exists(data)  # nothing was created by a refused start


def test_cli_port_in_use(start_witness, secret_file, tmp_path):
    w = start_witness()
    err = nx("witness", "--listen", w.address, "--secret-file", secret_file, "--data",
             str(tmp_path / "other"), rc=1).stderr.splitlines()
    # The daemon logs at INFO (the new state file), then fails with one error line.
    assert [line for line in err if "error" in line] == [err[-1]]
    assert err[-1] == f"nxstore: error: cannot listen on {w.address}: Address already in use"
    err = nx("witness", "--listen", "nosuchhost.invalid:5000", "--secret-file", secret_file,
             "--data", str(tmp_path / "other"), rc=1).stderr.splitlines()
    assert err[-1].startswith("nxstore: error: cannot listen on nosuchhost.invalid:5000: "), err
    w.stop()


def test_sigint_stops_cleanly(start_witness):
    import signal

    w = start_witness()
    w.proc.send_signal(signal.SIGINT)
    assert "witness stopped" in w.stop()


def test_daemon_helper_is_a_witness(start_witness):
    w = start_witness()
    assert isinstance(w, WitnessDaemon) and len(w.witness_id) == 32
    w.stop()
