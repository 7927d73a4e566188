"""Replication wire throughput vs a plain socket, two processes on loopback (a script).

    .venv/bin/python benchmarks/wire_throughput.py [--mib 1024] [--runs 3] [--tls]

Ceiling: parent `sendall`s 1 MiB buffers, child `recv_into`s them and answers one byte at
the end. Wire: parent connects with nxstore.replication.connect (handshake included),
sends BLOCKS messages of 64 x 16 KiB incompressible blocks through a SendWindow; the child
(`serve`) decodes every frame (checksum verified) and ACKs every WIRE_ACK_EVERY. The lz4
attempt on incompressible data is included (it is what a real source pays unless it knows
the data does not compress); `--no-compress` shows the figure without it.
Each run also measures the same transfer with the frame MAC (HMAC-SHA256, protocol
version 2) patched out on both sides, i.e. what version 1 cost, to show the MAC's price,
and the CPU cost of the MAC and of the XXH3 checksum on one 4 MiB frame.
Reports MB/s of block bytes (MiB = 2**20; MB/s here = 10**6 bytes/s), the ratios to the
socket ceiling of the same run, and the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time

import numpy as np
import xxhash

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nxstore.replication import (  # noqa: E402
    Ack,
    AckBatcher,
    Blocks,
    Commit,
    Committed,
    SendWindow,
    SiteIdentity,
    connect,
    frames,
    serve,
)

BLOCK = 16 * 1024
BATCH = 64
SECRET = b"bench-secret-0123456789abcdef"
CHUNK = 1 << 20


def _ceiling_child(port_q: mp.Queue, total: int) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port_q.put(srv.getsockname()[1])
    conn, _ = srv.accept()
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    got = 0
    while got < total:
        n = conn.recv_into(mv)
        if not n:
            break
        got += n
    conn.sendall(b"k")
    conn.close()


def ceiling(total: int) -> float:
    q: mp.Queue = mp.Queue()
    p = mp.Process(target=_ceiling_child, args=(q, total))
    p.start()
    port = q.get()
    s = socket.create_connection(("127.0.0.1", port))
    data = os.urandom(CHUNK)
    t0 = time.perf_counter()
    sent = 0
    while sent < total:
        s.sendall(data)
        sent += CHUNK
    s.recv(1)
    dt = time.perf_counter() - t0
    s.close()
    p.join()
    return total / dt / 1e6


def _without_mac() -> None:
    """Patch the frame MAC out of this process (both sides must): every tag is zero."""
    frames.FrameKey.tag = lambda self, head, payload: frames.NO_TAG


def mac_costs() -> tuple[float, float]:
    """GB/s of the frame MAC (HMAC-SHA256) and of the XXH3-64 checksum on a 4 MiB frame."""
    data = os.urandom(4 << 20)
    key = frames.FrameKey(b"k" * 32)
    head = bytes(32)
    out = []
    for f in (lambda: key.tag(head, [data]), lambda: xxhash.xxh3_64_intdigest(data)):
        f()
        t0 = time.perf_counter()
        for _ in range(20):
            f()
        out.append(20 * len(data) / (time.perf_counter() - t0) / 1e9)
    return out[0], out[1]


def _wire_child(port_q: mp.Queue, tls: bool, mac: bool) -> None:
    if not mac:
        _without_mac()
    async def handler(t) -> None:
        acks = AckBatcher()
        while True:
            msg = await t.recv()
            if isinstance(msg, Blocks):
                a = acks.done(msg.req_id)
                if a is not None:
                    await t.send(a)
            elif isinstance(msg, Commit):
                a = acks.flush()
                if a is not None:
                    await t.send(a)
                await t.send(Committed(msg.transfer_id, "bench", req_id=msg.req_id))
                return

    async def main() -> None:
        ctx = _server_ctx() if tls else None
        srv = await serve(
            "127.0.0.1",
            0,
            handler,
            identity=SiteIdentity("c-target", "target"),
            secret=SECRET,
            ssl=ctx,
        )
        port_q.put(srv.port)
        await asyncio.sleep(3600)

    asyncio.run(main())


def _server_ctx():
    import ssl
    import subprocess
    import tempfile

    d = tempfile.mkdtemp()
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            f"{d}/k.pem",
            "-out",
            f"{d}/c.pem",
        ],
        check=True,
        capture_output=True,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"{d}/c.pem", f"{d}/k.pem")
    return ctx


def wire(total: int, compress: bool, tls: bool, mac: bool = True) -> tuple[float, float]:
    q: mp.Queue = mp.Queue()
    p = mp.Process(target=_wire_child, args=(q, tls, mac), daemon=True)
    p.start()
    port = q.get()
    n_batches = total // (BLOCK * BATCH)
    pool = [np.frombuffer(os.urandom(BLOCK * BATCH), np.uint8) for _ in range(8)]
    fps = []
    for d in pool:
        rows = d.reshape(BATCH, BLOCK)
        fps.append(np.frombuffer(b"".join(xxhash.xxh3_128_digest(r) for r in rows), np.uint8))

    async def run() -> tuple[float, float]:
        ctx = None
        if tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        t = await connect(
            "127.0.0.1",
            port,
            identity=SiteIdentity("c-source", "source"),
            secret=SECRET,
            ssl=ctx,
        )
        t.compress = compress
        win = SendWindow()
        done = asyncio.get_running_loop().create_future()

        async def reader() -> None:
            while True:
                m = await t.recv()
                if isinstance(m, Ack):
                    win.ack(m.upto, m.window)
                elif isinstance(m, Committed):
                    done.set_result(m)
                    return

        rt = asyncio.create_task(reader())
        wire0 = t.bytes_sent
        t0 = time.perf_counter()
        for i in range(n_batches):
            rid = await win.acquire()
            await t.send(Blocks(BLOCK, fps[i % 8], pool[i % 8], req_id=rid))
        await t.send(Commit(b"\0" * 16, 0, req_id=10**9))
        await done
        dt = time.perf_counter() - t0
        await rt
        wire_bytes = t.bytes_sent - wire0
        await t.close()
        return n_batches * BATCH * BLOCK / dt / 1e6, wire_bytes / (n_batches * BATCH * BLOCK)

    saved = frames.FrameKey.tag
    if not mac:
        _without_mac()
    try:
        return asyncio.run(run())
    finally:
        frames.FrameKey.tag = saved
        p.kill()
        p.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-compress", action="store_true")
    ap.add_argument("--tls", action="store_true")
    a = ap.parse_args()
    total = a.mib << 20
    ceil, wires, bare, overhead = [], [], [], 0.0
    for _ in range(a.runs):  # interleaved, so that load changes hit all three alike
        ceil.append(ceiling(total))
        w, overhead = wire(total, not a.no_compress, a.tls)
        wires.append(w)
        bare.append(wire(total, not a.no_compress, a.tls, mac=False)[0])
    c, w, b = statistics.median(ceil), statistics.median(wires), statistics.median(bare)
    name = f"BLOCKS 64 x 16 KiB{' TLS' if a.tls else ''}{' no-lz4' if a.no_compress else ''}"
    print(f"plain socket sendall, 2 processes : {c:8.0f} MB/s  (runs {[round(x) for x in ceil]})")
    print(f"{name}, frame MAC   : {w:8.0f} MB/s  (runs {[round(x) for x in wires]})")
    print(f"{name}, MAC patched out: {b:8.0f} MB/s  (runs {[round(x) for x in bare]})")
    print(f"ratio to the ceiling: {w / c:.0%} with the MAC, {b / c:.0%} without; "
          f"MAC / no MAC = {w / b:.2f}; wire bytes / block bytes = {overhead:.4f}")
    mac, xxh = mac_costs()
    print(f"one 4 MiB frame, one core: HMAC-SHA256 {mac:.2f} GB/s, XXH3-64 {xxh:.1f} GB/s")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
