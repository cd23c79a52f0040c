"""Real certificates for TLS tests: a private CA (trustme) and a server
certificate it issued for the loopback addresses, written as PEM files."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["Certs", "make_certs"]


@dataclass(frozen=True)
class Certs:
    """PEM files: the CA to trust, and the server's chain and key."""

    ca_file: Path
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_certs(directory: Path) -> Certs:
    """A fresh CA and a server certificate for 127.0.0.1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    certs = Certs(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(certs.ca_file))
    leaf.private_key_pem.write_to_path(str(certs.key))
    with certs.cert.open("wb") as chain:
        for blob in leaf.cert_chain_pems:
            chain.write(blob.bytes())
    return certs
