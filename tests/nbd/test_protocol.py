"""The wire protocol below what qemu lets us see, with a raw socket client: option haggling,
errno values of bad requests (EINVAL, ENOSPC, EPERM), pipelined requests answered with their
own cookies, and a broken request stream closing the connection. Each case also runs against
nbdkit's memory plugin (the reference), except where nbdkit's behaviour is its own choice."""

from __future__ import annotations

import errno
import struct
import threading

import pytest
from nbd_helpers import READY_TIMEOUT_S, Client, MiB, NbdProcess, start_nbdkit_memory

from nxstore.nbd import protocol as p

SIZE = 4 * MiB


@pytest.fixture(params=["nxstore", "nbdkit"])
def server(request, cluster, exported, tmp_path):
    """start(read_only) -> (socket path, export name) of a SIZE-byte export."""
    procs: list[NbdProcess] = []

    def start(read_only: bool = False) -> tuple[str, str]:
        if request.param == "nxstore":
            if "disk" not in {vd.name for vd in cluster.vdisks()}:
                cluster.create_vdisk("disk", SIZE)
            uri, name = exported(cluster, "disk", read_only=read_only).uri, "disk"
        else:
            procs.append(start_nbdkit_memory(tmp_path, SIZE, read_only=read_only,
                                             name=f"kit{len(procs)}"))
            uri, name = procs[-1].uri, ""
        return uri.split("socket=")[1], name

    start.kind = request.param
    yield start
    for proc in procs:
        proc.kill()


def test_options_list_unsupported_info_and_go(server):
    path, name = server()
    c = Client(path)
    assert c.option(99)[-1][0] == p.REP_ERR_UNSUP  # an option nobody defined
    listed = c.option(p.OPT_LIST)
    assert listed[-1][0] == p.REP_ACK
    assert any(kind == p.REP_SERVER and d[4:].decode().startswith(name) for kind, d in listed)
    if server.kind == "nxstore":  # nbdkit serves any name by default
        bad = c.option(p.OPT_INFO, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0))
        assert bad[-1][0] == p.REP_ERR_UNKNOWN
        assert c.option(p.OPT_GO, b"\0\0")[-1][0] == p.REP_ERR_INVALID  # malformed data
    size, flags = c.go(name)
    assert size == SIZE
    for flag in (p.TF_HAS_FLAGS, p.TF_SEND_FLUSH, p.TF_SEND_FUA, p.TF_SEND_TRIM,
                 p.TF_SEND_WRITE_ZEROES, p.TF_CAN_MULTI_CONN):
        assert flags & flag, f"flag {flag:#x} missing from {flags:#x}"
    assert not flags & p.TF_READ_ONLY


def test_errno_of_bad_requests(server):
    path, name = server()
    c = Client(path)
    c.go(name)
    assert c.request(p.CMD_READ, SIZE - 512, 1024) == errno.EINVAL  # past the end
    assert c.request(p.CMD_WRITE, SIZE - 512, 1024, payload=bytes(1024)) == errno.ENOSPC
    assert c.request(p.CMD_WRITE_ZEROES, SIZE, 4096) == errno.ENOSPC
    assert c.request(p.CMD_TRIM, SIZE - 512, 1024) == errno.EINVAL
    assert c.request(99, 0, 0) == errno.EINVAL  # an unknown command
    assert c.request(p.CMD_WRITE, 0, 4, payload=b"ok!!") == 0  # the connection still works
    assert c.request(p.CMD_FLUSH, 0, 0) == 0


def test_writes_to_a_read_only_export_get_eperm(server):
    path, name = server(read_only=True)
    c = Client(path)
    _, flags = c.go(name)
    assert flags & p.TF_READ_ONLY
    assert c.request(p.CMD_WRITE, 0, 512, payload=bytes(512)) == errno.EPERM
    assert c.request(p.CMD_TRIM, 0, 4096) == errno.EPERM
    assert c.request(p.CMD_WRITE_ZEROES, 0, 4096) == errno.EPERM
    assert c.request(p.CMD_READ, 0, 512) == 0


def test_pipelined_requests_are_answered_by_cookie(server):
    path, name = server()
    c = Client(path)
    c.go(name)
    n = 200
    for i in range(n):  # all sent before any reply is read
        c.send(p.CMD_WRITE, i * 4096, 4096, cookie=1000 + i, payload=bytes([i % 256]) * 4096)
    assert sorted(c.reply()[1] for _ in range(n)) == list(range(1000, 1000 + n))
    sender = threading.Thread(  # replies fill the socket meanwhile: read them concurrently
        target=lambda: [c.send(p.CMD_READ, i * 4096, 4096, cookie=i) for i in range(n)])
    sender.start()
    for _ in range(n):
        error, cookie, data = c.reply(4096)
        assert error == 0 and data == bytes([cookie % 256]) * 4096
    sender.join(READY_TIMEOUT_S)


def test_bad_request_magic_closes_the_connection(server):
    path, name = server()
    c = Client(path)
    c.go(name)
    c.sock.sendall(p.REQUEST.pack(0x12345678, 0, p.CMD_READ, 1, 0, 512))
    with pytest.raises(ConnectionError):
        c.reply()
    Client(path).go(name)  # the server still takes new clients
