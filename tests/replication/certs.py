"""Self-signed certificates for the TLS tests (openssl CLI, installed by make setup)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def self_signed(directory: Path, name: str = "localhost") -> tuple[str, str]:
    """(certificate path, key path) of a new self-signed RSA certificate for `name`."""
    assert shutil.which("openssl"), "openssl CLI missing: make setup installs it"
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return str(cert), str(key)
