"""The NBD wire protocol, the subset nxstore serves: fixed newstyle handshake, simple and
structured replies, the base:allocation meta context and block status.

Numbers and layouts from the protocol document (github.com/NetworkBlockDevice/nbd,
doc/proto.md); every integer is big-endian. docs/format.md ("NBD export") lists what this
server sends and accepts. TLS and extended headers are not offered: a client asking for
them is told NBD_REP_ERR_UNSUP.
"""

from __future__ import annotations

import errno
import struct

# -- handshake ------------------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT": starts the server greeting and every option
OPT_REPLY_MAGIC = 0x0003E889045565A9

FLAG_FIXED_NEWSTYLE = 1 << 0  # handshake flags (server) and client flags
FLAG_NO_ZEROES = 1 << 1

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_TOO_BIG = (1 << 31) + 9

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

MAX_OPTION_BYTES = 64 << 10  # an option's data; a longer one is refused unread (ERR_TOO_BIG)
MAX_OPTIONS = 256  # options one connection may send before its transmission phase

# -- transmission ---------------------------------------------------------------------------
TF_HAS_FLAGS = 1 << 0  # transmission flags, sent with the export's size
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7  # only once structured replies are negotiated
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_FAST_ZERO = 1 << 11

REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2  # READ: at most one content chunk
CMD_FLAG_REQ_ONE = 1 << 3  # BLOCK_STATUS: exactly one extent, within the request
CMD_FLAG_FAST_ZERO = 1 << 4

# structured reply chunks (flags, types) and base:allocation states
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

BASE_ALLOCATION = "base:allocation"  # the one meta context served
MAX_EXTENTS = 1 << 20  # descriptors per BLOCK_STATUS chunk at most (the spec's SHOULD)
MAX_ERROR_MESSAGE = 4096  # bytes of an error chunk's message (the spec's string limit)

MAX_PAYLOAD = 32 << 20  # bytes: largest read or write a client may ask for (advertised)

# The errno values the protocol defines; anything else goes out as EIO (never EROFS: a
# write to a read-only export is EPERM on the wire, as nbdkit sends it too).
WIRE_ERRNOS = frozenset({errno.EPERM, errno.EIO, errno.ENOMEM, errno.EINVAL, errno.ENOSPC,
                         errno.EOVERFLOW, errno.ENOTSUP, errno.ESHUTDOWN})

GREETING = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPTION = struct.Struct(">QII")  # IHAVEOPT, option, data length
OPTION_REPLY = struct.Struct(">QIII")  # OPT_REPLY_MAGIC, option, reply type, data length
INFO_EXPORT_DATA = struct.Struct(">HQH")  # INFO_EXPORT, size, transmission flags
INFO_BLOCK_SIZE_DATA = struct.Struct(">HIII")  # INFO_BLOCK_SIZE, minimum, preferred, maximum
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags (+124 zeros unless NO_ZEROES)
REQUEST = struct.Struct(">IHHQQI")  # magic, command flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, errno, cookie
CHUNK = struct.Struct(">IHHQI")  # magic, reply flags, reply type, cookie, payload length
OFFSET = struct.Struct(">Q")  # OFFSET_DATA payload head (the data follows)
HOLE = struct.Struct(">QI")  # OFFSET_HOLE payload: offset, hole size
ERROR_HEAD = struct.Struct(">IH")  # ERROR(_OFFSET) payload head: errno, message length
EXTENT = struct.Struct(">II")  # BLOCK_STATUS descriptor: length, state flags


def wire_errno(code: int) -> int:
    """`code` if the protocol defines it, else EIO (EROFS becomes EPERM)."""
    if code == errno.EROFS:
        return errno.EPERM
    return code if code in WIRE_ERRNOS else errno.EIO


def option_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(OPT_REPLY_MAGIC, option, reply_type, len(data)) + data
