"""Replication transport: one narrow interface, two implementations, one fault injector.

`StreamTransport` implements it over an asyncio StreamReader + writer: TCP (`connect`,
`serve`, optional TLS with a stdlib ssl.SSLContext) and the in-memory `memory_pair()` share
every line of the framing code. `serve` caps its connections (WIRE_MAX_CONNECTIONS, of
them WIRE_MAX_UNAUTHENTICATED still in the handshake: the oldest of those is closed to make
room). Before the peer is authenticated a connection buffers at most a few KiB (small
reader limit and receive buffer). Both read through a `PayloadStreamReader`: large frame
payloads land in a fresh buffer of their own, over TCP/TLS straight from the socket
payloads land in a fresh buffer of their own, over TCP/TLS straight from the socket
(`BufferedStreamProtocol`, recv_into), not through StreamReader's copies. `inject_faults`
puts a `FaultyWriter` under a transport to flip a byte, stall or cut the outgoing stream at
a chosen offset (tests).

`blocking.detach` takes an authenticated TCP connection off its event loop and continues
it with blocking calls from threads (`SocketStream`, same frames and keys: for streams whose
latency is thread hops, the Metro mirror); `LoopStream` offers the same blocking calls over
a transport that stays on its loop (TLS).

Modules: `stream` (the `Transport` contract, `StreamTransport`, `TokenBucket`), `reader`
(`PayloadStreamReader`, `BufferedStreamProtocol`), `tcp` (`connect`, `serve`, `Server`),
`blocking` (`FrameStream`, `SocketStream`, `LoopStream`, `detach`), `fakes` (`memory_pair`,
`FaultyWriter`, `inject_faults`). Import the names from this package.
"""

from __future__ import annotations

from .blocking import FrameStream, LoopStream, SocketStream, detach
from .fakes import FaultyWriter, inject_faults, memory_pair
from .reader import PayloadStreamReader
from .stream import StreamTransport, TokenBucket, Transport
from .tcp import Handler, Server, connect, serve

__all__ = [
    "FaultyWriter",
    "FrameStream",
    "Handler",
    "LoopStream",
    "PayloadStreamReader",
    "Server",
    "SocketStream",
    "StreamTransport",
    "TokenBucket",
    "Transport",
    "connect",
    "detach",
    "inject_faults",
    "memory_pair",
    "serve",
]
