"""The NBD handshake: greeting, client flags and option haggling up to the transmission phase.

One export per server; it answers to its own name and to the empty (default) name. Options
other than EXPORT_NAME, ABORT, LIST, INFO and GO get NBD_REP_ERR_UNSUP (structured replies,
meta contexts and TLS among them), so clients go on with simple replies.
"""

from __future__ import annotations

import socket
import struct

from ..errors import ProtocolError
from . import protocol as p
from .export import Export
from .stream import ClientStream

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def transmission_flags(export: Export) -> int:
    if export.read_only:
        return p.TF_HAS_FLAGS | p.TF_READ_ONLY | p.TF_SEND_FLUSH | p.TF_CAN_MULTI_CONN
    return (p.TF_HAS_FLAGS | p.TF_SEND_FLUSH | p.TF_SEND_FUA | p.TF_SEND_TRIM
            | p.TF_SEND_WRITE_ZEROES | p.TF_SEND_FAST_ZERO | p.TF_CAN_MULTI_CONN)


def negotiate(sock: socket.socket, stream: ClientStream, export: Export) -> bool:
    """Run the handshake on a new connection. True: the client chose `export` and the
    transmission phase starts; False: it aborted or asked for an export we do not have.
    Raises ProtocolError (or ConnectionClosed) on a client that breaks the protocol."""
    sock.sendall(p.GREETING.pack(p.NBDMAGIC, p.IHAVEOPT, p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES))
    (client_flags,) = p.CLIENT_FLAGS.unpack(stream.read(p.CLIENT_FLAGS.size))
    if not client_flags & p.FLAG_FIXED_NEWSTYLE or client_flags & ~(
            p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES):
        raise ProtocolError(f"NBD client flags {client_flags:#x}: fixed newstyle is required")
    names = {"", export.name}
    for _ in range(p.MAX_OPTIONS):
        magic, option, length = p.OPTION.unpack(stream.read(p.OPTION.size))
        if magic != p.IHAVEOPT:
            raise ProtocolError(f"bad NBD option magic {magic:#x}")
        if length > p.MAX_OPTION_BYTES:
            raise ProtocolError(f"NBD option {option} carries {length} bytes")
        data = stream.read(length)
        if option == p.OPT_EXPORT_NAME:
            if data.decode(errors="replace") not in names:
                return False  # the protocol has no error reply here: the connection closes
            tail = b"" if client_flags & p.FLAG_NO_ZEROES else bytes(124)
            sock.sendall(p.EXPORT_NAME_REPLY.pack(export.size, transmission_flags(export)) + tail)
            return True
        if option == p.OPT_ABORT:
            sock.sendall(p.option_reply(option, p.REP_ACK))
            return False
        if option == p.OPT_LIST:
            reply = (p.option_reply(option, p.REP_SERVER, _U32.pack(len(export.name.encode()))
                                    + export.name.encode()) if not data else b"")
            sock.sendall(reply + p.option_reply(option, p.REP_ACK if not data else p.REP_ERR_INVALID))
        elif option in (p.OPT_INFO, p.OPT_GO):
            name = _info_request_name(data)
            if name is None:
                sock.sendall(p.option_reply(option, p.REP_ERR_INVALID))
            elif name not in names:
                sock.sendall(p.option_reply(option, p.REP_ERR_UNKNOWN))
            else:
                sock.sendall(
                    p.option_reply(option, p.REP_INFO, p.INFO_EXPORT_DATA.pack(
                        p.INFO_EXPORT, export.size, transmission_flags(export)))
                    + p.option_reply(option, p.REP_INFO, p.INFO_BLOCK_SIZE_DATA.pack(
                        p.INFO_BLOCK_SIZE, 1, export.block_size, p.MAX_PAYLOAD))
                    + p.option_reply(option, p.REP_ACK))
                if option == p.OPT_GO:
                    return True
        else:
            sock.sendall(p.option_reply(option, p.REP_ERR_UNSUP))
    raise ProtocolError(f"NBD client sent more than {p.MAX_OPTIONS} options")


def _info_request_name(data: bytes) -> str | None:
    """The export name of an INFO/GO option's data, or None if the data is malformed."""
    if len(data) < 4:
        return None
    (n,) = _U32.unpack_from(data)
    if len(data) < 4 + n + 2:
        return None
    (count,) = _U16.unpack_from(data, 4 + n)
    if len(data) != 4 + n + 2 + 2 * count:
        return None
    return data[4:4 + n].decode(errors="replace")
