"""Remote sites: the peer clusters this cluster replicates to (seed 001's "remote sites").

A site has an address (HOST:PORT of its `nxstore serve`), the shared secret
both sides authenticate with, a vstore mapping (local container -> the
target's container, default: same name) and a network mapping (local network
-> the target's, used by the recovery workflows). The secret is kept in the
catalogue like any other configuration, protected by the catalogue's owner-only
mode (docs/format.md); it must be at least MIN_SECRET_BYTES long.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field

from ..errors import InvalidArgument, NotFound
from ..store.catalog import Catalog
from .rows import RemoteSiteRow

MIN_SECRET_BYTES = 16  # a weak secret can be guessed offline from one observed handshake


@dataclass(frozen=True)
class RemoteSite:
    name: str
    address: str
    secret: str = field(repr=False)
    network_mapping: dict[str, str] = field(default_factory=dict)
    vstore_mapping: dict[str, str] = field(default_factory=dict)
    tls_ca: str = ""  # "" = plain TCP; else PEM CA file the site's certificate must chain to

    def host_port(self) -> tuple[str, int]:
        return parse_address(self.address)

    def ssl_context(self) -> ssl.SSLContext | None:
        """Client TLS context for this site (None: plain TCP). The peer is
        authenticated by the shared-secret handshake; TLS adds confidentiality and
        checks the certificate against `tls_ca` (not the host name: sites are often
        addressed by IP)."""
        if not self.tls_ca:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(f"site {self.name}: cannot load CA file {self.tls_ca}: {exc}") from exc
        ctx.check_hostname = False
        return ctx


def parse_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:PORT') -> (host, port); InvalidArgument otherwise."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"bad address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _mapping(value: dict[str, str] | None, what: str) -> dict[str, str]:
    value = value or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidArgument(f"{what} must map names to names")
    return dict(value)


def check_secret(secret: object) -> str:
    """`secret` if it is text of at least MIN_SECRET_BYTES UTF-8 bytes, else InvalidArgument
    (which never shows the secret)."""
    try:
        size = len(secret.encode()) if isinstance(secret, str) else -1
    except UnicodeEncodeError:
        size = -1
    if size < 0:
        raise InvalidArgument("a shared secret must be valid UTF-8 text")
    if size < MIN_SECRET_BYTES:
        raise InvalidArgument(f"the shared secret is {size} bytes long: it needs at least "
                              f"{MIN_SECRET_BYTES} (for example 32 random hex digits)")
    return secret


def add_site(catalog: Catalog, site: RemoteSite) -> RemoteSite:
    parse_address(site.address)
    check_secret(site.secret)
    row = RemoteSiteRow(
        0, site.name, site.address, site.secret,
        json.dumps(_mapping(site.network_mapping, "network_mapping"), sort_keys=True),
        json.dumps(_mapping(site.vstore_mapping, "vstore_mapping"), sort_keys=True),
        site.tls_ca,
    )
    site.ssl_context()  # a bad CA file is refused now, not at the first replication
    with catalog.transaction():
        catalog.insert(row)
    return site


def list_sites(catalog: Catalog) -> list[RemoteSite]:
    return [
        RemoteSite(r.name, r.address, r.secret, json.loads(r.network_mapping),
                   json.loads(r.vstore_mapping), r.tls_ca or "")
        for r in catalog.rows(RemoteSiteRow)
    ]


def get_site(catalog: Catalog, name: str) -> RemoteSite:
    for site in list_sites(catalog):
        if site.name == name:
            return site
    raise NotFound(f"no remote site {name!r}")


def remove_site(catalog: Catalog, name: str) -> None:
    rows = catalog.rows(RemoteSiteRow, "name = ?", (name,))
    if not rows:
        raise NotFound(f"no remote site {name!r}")
    with catalog.transaction():
        catalog.delete(RemoteSiteRow, rows[0].id)
