"""Loading certificates, keys and CA bundles into SSL contexts, a file that cannot be loaded
being a ConfigurationError that names the setting (used by the HTTPS listener and DICOM TLS)."""

from __future__ import annotations

import ssl

from app.settings import ConfigurationError

# TLS 1.2 cipher suites: forward-secret AEAD only, the ones RFC 9325 (BCP 195) recommends
# (TLS 1.3 suites are OpenSSL's, all AEAD). Used by the HTTPS listener and every DICOM TLS
# context, so both legs offer the same set.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


def load_chain(context: ssl.SSLContext, cert: str, key: str | None, password: str | None,
               what: str) -> None:
    """``context.load_cert_chain``, a failure a ConfigurationError naming ``what``."""
    try:
        context.load_cert_chain(cert, key, password)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"{what}: cannot load the certificate {cert!r} with its key "
                                 f"{key!r}: {exc}") from None


def load_ca(context: ssl.SSLContext, ca_file: str, what: str) -> None:
    """``context.load_verify_locations``, a failure a ConfigurationError naming ``what``."""
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"{what}: cannot load the CA certificates {ca_file!r}: {exc}"
                                 ) from None


def server_context(cert_file: str, key_file: str | None, password: str | None,
                   ca_file: str | None, what: str) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+): our certificate; with ``ca_file``, clients must present
    a certificate issued by one of its CAs (mutual TLS)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    load_chain(context, cert_file, key_file, password, f"{what}_cert_file")
    if ca_file is not None:
        load_ca(context, ca_file, f"{what}_ca_file")
        context.verify_mode = ssl.CERT_REQUIRED
    return context
