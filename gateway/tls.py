"""TLS contexts for the HL7 (MLLP) and FHIR links, built from a ``[... .tls]`` configuration section.

Certificates are read when the context is built (at start, and again on each new connection where
the caller builds one per connection), so a renewed certificate is picked up without a restart. A
file that cannot be read or is not PEM is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import ssl

from .config import TlsFiles
from .errors import ConfigError


def client_context(tls: TlsFiles | None, key: str) -> ssl.SSLContext | None:
    """A client context verifying the peer (``ca_file``, or the system's CAs), with an optional
    client certificate. ``key`` is where the section sits in the config, e.g. ``epr.hl7[0]``."""
    if tls is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("config", f"{key}.tls.ca_file", str(tls.ca_file),
                          f"a readable PEM CA bundle ({exc})") from None  # fmt: skip
    _load_pair(context, tls, key)
    return context


def server_context(tls: TlsFiles | None, key: str) -> ssl.SSLContext | None:
    """A server context with the server's certificate; with ``ca_file``, clients must present a
    certificate issued by that CA."""
    if tls is None:
        return None
    if tls.cert_file is None:
        raise ConfigError("config", f"{key}.tls.cert_file", None, "the server's certificate (PEM)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_pair(context, tls, key)
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("config", f"{key}.tls.ca_file", str(tls.ca_file),
                              f"a readable PEM CA bundle ({exc})") from None  # fmt: skip
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_pair(context: ssl.SSLContext, tls: TlsFiles, key: str) -> None:
    if tls.cert_file is None or tls.key_file is None:
        return
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("config", f"{key}.tls.cert_file", str(tls.cert_file),
                          f"a readable PEM certificate matching key_file ({exc})") from None  # fmt: skip
