"""TLS contexts for the admin API, the WebSocket server and its clients (docs/security.md).

Servers load a certificate chain and key (``ADMIN_TLS_CERT`` / ``ADMIN_TLS_KEY``,
``WEBSOCKET_TLS_CERT`` / ``WEBSOCKET_TLS_KEY``); a file that is not a usable
PEM certificate or key stops start-up with a :class:`ConfigError` naming the
variable. Clients verify the server against the system trust store, or against
one CA bundle (``broadcaster subscribe --ca-file``) for private or test CAs.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .exceptions import ConfigError

__all__ = ["client_ssl_context", "server_ssl_context"]


def server_ssl_context(cert: Path, key: Path, *, variable: str) -> ssl.SSLContext:
    """A server context holding ``cert`` (PEM chain) and ``key``. ``variable``
    is the settings prefix (``ADMIN`` or ``WEBSOCKET``) named in errors."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.0/1.1 are deprecated (RFC 8996); every client this serves has 1.2.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"{variable}_TLS_CERT", cert, f"cannot read: {exc.strerror}") from None
    except (ssl.SSLError, OSError) as exc:
        # OpenSSL cannot say which of the two files is wrong; name both.
        raise ConfigError(
            f"{variable}_TLS_CERT",
            cert,
            f"not a PEM certificate matching {variable}_TLS_KEY={key}: {exc}",
        ) from None
    return context


def client_ssl_context(ca_file: Path | str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name:
    against the system trust store, or only against the CAs in ``ca_file``.
    Raises :class:`ValueError` naming a ``ca_file`` that holds no usable CA."""
    if ca_file is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, FileNotFoundError) else str(exc)
        raise ValueError(f"not a PEM CA bundle: {ca_file} ({reason})") from None
