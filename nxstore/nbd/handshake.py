"""The NBD handshake: greeting, client flags and option haggling up to the transmission phase.

One export per server; it answers to its own name and to the empty (default) name. Options:
EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY, and LIST/SET_META_CONTEXT (nxstore.nbd.meta;
only once structured replies are on, else NBD_REP_ERR_INVALID). Any other (TLS, extended
headers) gets NBD_REP_ERR_UNSUP. What was settled is returned as a Session.
"""

from __future__ import annotations

import socket
import struct

from ..errors import ProtocolError
from . import meta
from . import protocol as p
from .export import Export
from .session import Session
from .stream import ClientStream

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def transmission_flags(export: Export, session: Session) -> int:
    """The flags sent with the export's size; SEND_DF only to a client that negotiated
    structured replies (the spec: the flag means nothing without them)."""
    df = p.TF_SEND_DF if session.structured else 0
    if export.read_only:
        return p.TF_HAS_FLAGS | p.TF_READ_ONLY | p.TF_SEND_FLUSH | p.TF_CAN_MULTI_CONN | df
    return (p.TF_HAS_FLAGS | p.TF_SEND_FLUSH | p.TF_SEND_FUA | p.TF_SEND_TRIM
            | p.TF_SEND_WRITE_ZEROES | p.TF_SEND_FAST_ZERO | p.TF_CAN_MULTI_CONN | df)


def negotiate(sock: socket.socket, stream: ClientStream, export: Export) -> Session | None:
    """Run the handshake on a new connection. A Session: the client chose `export` and the
    transmission phase starts with what it negotiated; None: it aborted or asked for an
    export we do not have. Raises ProtocolError (or ConnectionClosed) on a client that
    breaks the protocol."""
    sock.sendall(p.GREETING.pack(p.NBDMAGIC, p.IHAVEOPT, p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES))
    (client_flags,) = p.CLIENT_FLAGS.unpack(stream.read(p.CLIENT_FLAGS.size))
    if not client_flags & p.FLAG_FIXED_NEWSTYLE or client_flags & ~(
            p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES):
        raise ProtocolError(f"NBD client flags {client_flags:#x}: fixed newstyle is required")
    names = {"", export.name}
    session = Session()
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
            sock.sendall(p.EXPORT_NAME_REPLY.pack(export.size, transmission_flags(export, session))
                         + tail)
            return session
        if option == p.OPT_ABORT:
            sock.sendall(p.option_reply(option, p.REP_ACK))
            return None
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
                        p.INFO_EXPORT, export.size, transmission_flags(export, session)))
                    + p.option_reply(option, p.REP_INFO, p.INFO_BLOCK_SIZE_DATA.pack(
                        p.INFO_BLOCK_SIZE, 1, export.block_size, p.MAX_PAYLOAD))
                    + p.option_reply(option, p.REP_ACK))
                if option == p.OPT_GO:
                    return session
        elif option == p.OPT_STRUCTURED_REPLY:
            session.structured = session.structured or not data
            sock.sendall(p.option_reply(option, p.REP_ERR_INVALID if data else p.REP_ACK))
        elif option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            sock.sendall(_meta_context(option, data, names, session))
        else:
            sock.sendall(p.option_reply(option, p.REP_ERR_UNSUP))
    raise ProtocolError(f"NBD client sent more than {p.MAX_OPTIONS} options")


def _meta_context(option: int, data: bytes, names: set[str], session: Session) -> bytes:
    """The replies to a LIST/SET_META_CONTEXT option; a SET also replaces the session's
    contexts (with none when it fails, as the spec says)."""
    setting = option == p.OPT_SET_META_CONTEXT
    if setting:
        session.contexts = {}
    query = meta.parse(data)
    if not session.structured or query is None:
        return p.option_reply(option, p.REP_ERR_INVALID)
    if query.export_name not in names:
        return p.option_reply(option, p.REP_ERR_UNKNOWN)
    found = meta.selected(query, listing=not setting)
    if setting:
        session.contexts = {meta.BASE_ALLOCATION_ID: found[0]} if found else {}
    context_id = meta.BASE_ALLOCATION_ID if setting else meta.LIST_ID
    return (b"".join(meta.context_reply(option, context_id, name) for name in found)
            + p.option_reply(option, p.REP_ACK))


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
