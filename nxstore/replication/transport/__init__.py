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

Modules: `stream` (the `Transport` contract, `StreamTransport`, `TokenBucket`), `reader`
(`PayloadStreamReader`, `BufferedStreamProtocol`), `tcp` (`connect`, `serve`, `Server`),
`fakes` (`memory_pair`, `FaultyWriter`, `inject_faults`). Import the names from this package.
"""

from __future__ import annotations

from .fakes import FaultyWriter, inject_faults, memory_pair
from .reader import PayloadStreamReader
from .stream import StreamTransport, TokenBucket, Transport
from .tcp import Handler, Server, connect, serve

__all__ = [
    "FaultyWriter",
    "Handler",
    "PayloadStreamReader",
    "Server",
    "StreamTransport",
    "TokenBucket",
    "Transport",
    "connect",
    "inject_faults",
    "memory_pair",
    "serve",
]
