"""The exceptions nxstore raises. Every one derives from NxError."""

import errno
import os
from typing import NoReturn


class NxError(Exception):
    """Base class of every nxstore error."""


class NotFound(NxError, KeyError):
    """A named object (cluster, vDisk, snapshot, container, site...) does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AlreadyExists(NxError):
    """An object with that name already exists."""


class OutOfRange(NxError, ValueError):
    """An offset, length or size lies outside what the object allows."""


class InvalidArgument(NxError, ValueError):
    """An argument has the wrong type or an impossible value."""


class Locked(NxError):
    """The cluster is opened by another process (or another Cluster object)."""


class Corruption(NxError):
    """Stored data failed its checksum or fingerprint; the message names the object."""


class FormatError(NxError):
    """A file is of an unknown format or a newer format version than this build reads."""


class InUse(NxError):
    """The object cannot be removed or changed while something depends on it."""


class ReadOnly(NxError):
    """The object is read-only (a snapshot, a replica)."""


class ClosedError(NxError):
    """The cluster was closed."""


class NoSpace(NxError, OSError):
    """The file system holding the cluster is full (ENOSPC, or EDQUOT: quota). Raised
    with every acknowledged write intact: free space and retry, or close and reopen
    the cluster (the OpLog refuses further writes after a failed one until then)."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]"
        return str(self.strerror)


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def raise_os_error(exc: OSError, what: str) -> NoReturn:
    """Raise `exc`; as a NoSpace naming `what` if it reports a full file system."""
    if isinstance(exc, NoSpace) or exc.errno not in NO_SPACE_ERRNOS:
        raise exc
    raise NoSpace(exc.errno, f"{what}: {os.strerror(exc.errno)}") from exc


# --- replication wire ------------------------------------------------------------------


class ProtocolError(NxError):
    """The peer broke the replication protocol: garbage bytes, a bad frame header, an
    unexpected message, a connection closed mid-conversation or a timeout. The connection
    is unusable afterwards."""


class VersionMismatch(ProtocolError):
    """The two sides share no replication protocol version (or a frame has an unknown one)."""


class ConnectionClosed(ProtocolError):
    """The peer closed the connection (or it was closed locally) before the expected frame."""


class FrameCorruption(ProtocolError, Corruption):
    """A replication frame failed its checksum, or its payload does not decompress to the
    length the header states: bytes were changed on the wire. Both a ProtocolError (the
    connection is unusable) and a Corruption (nothing of it may be stored)."""


class AuthenticationError(NxError):
    """The peer failed the shared-secret challenge-response (or rejected ours), or an
    object store (S3) refused the credentials."""


class WitnessUnreachable(NxError):
    """The Metro witness gave no decision: it could not be reached, timed out, closed the
    connection mid-call, or could not store the change. A compare-and-set that raised this
    may or may not have been applied: ask again (`get`) to learn the outcome."""


class LinkDown(NxError):
    """A synchronous mirror link (Metro) is down: the peer did not confirm a flush in time,
    or the connection broke. Nothing written since the last confirmed flush is known to be
    durable at the peer, and the link confirms nothing more."""


class GenerationUnverifiable(Corruption):
    """The catalogue's generation file is missing or both its slots are damaged, so open
    cannot tell whether the catalogue lost committed transactions. `nxstore fsck --repair`
    rewrites it from the catalogue (trusting the catalogue)."""


class MetroFenced(NxError):
    """Metro: another site holds the epoch, so this site may not acknowledge writes."""


class ObjectStoreError(NxError):
    """The object store holding sealed extent groups (S3) failed or could not be reached:
    nothing acknowledged is lost (groups stay on the local disk until uploaded); retry once
    it is back."""


class CoordinationUnavailable(NxError):
    """etcd, the site's coordination service, could not be reached or refused a request
    (nxstore.coord): nothing was coordinated. A write that raised this may or may not have
    been applied: read it back to learn the outcome."""


class LeadershipLost(NxError):
    """This worker can no longer prove it leads the site (its etcd lease expired or could
    not be renewed in time, or another worker leads): it stopped coordinating."""
